//! The store: opening, configuration, layer lookup and statistics.

use crate::backend::{Backend, LocalBackend};
use crate::chunker::ChunkerParams;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ChunkId, LayerId, PackId};
use crate::index::{self, LayerInfo, PackInfo, BLOBS, CHUNKS, FILES, LAYERS, META, PACKS, RECIPES};
use crate::pack::{self, ChunkLoc};
use redb::{Database, ReadableTable, ReadableTableMetadata};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Chunker sizes for a new store; an existing store must match if set.
    pub chunker: Option<ChunkerParams>,
    /// zstd level for new chunks.
    pub compression_level: i32,
    /// Seal a pack once it reaches this many bytes.
    pub pack_size: u64,
    /// Where packs live; `None` is `<dir>/packs` on the local filesystem.
    pub backend: Option<Arc<dyn Backend>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { chunker: None, compression_level: 3, pack_size: 64 << 20, backend: None }
    }
}

/// A chunk store. `Send + Sync`: share it behind an `Arc`; reads run while an
/// ingest is under way, ingests run one at a time.
#[derive(Debug)]
pub struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) db: Database,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) params: ChunkerParams,
    pub(crate) opts: StoreOptions,
    pub(crate) staging: PathBuf,
    next_pack: AtomicU64,
    pub(crate) write_lock: Mutex<()>,
}

/// Totals over the whole store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStats {
    /// Layers held.
    pub layers: u64,
    /// Sum of the layers' uncompressed tar sizes.
    pub logical_bytes: u64,
    /// Bytes in sealed packs.
    pub stored_bytes: u64,
    /// Bytes of the recipes in the index.
    pub recipe_bytes: u64,
    /// `logical_bytes / (stored_bytes + recipe_bytes)`.
    pub dedup_ratio: f64,
    /// Distinct chunks.
    pub chunks: u64,
    /// Sum of distinct chunks' raw sizes.
    pub chunk_bytes: u64,
    /// Distinct files.
    pub files: u64,
    /// Pack files.
    pub packs: u64,
    /// The chunker sizes this store was created with.
    pub chunker: ChunkerParams,
}

impl Store {
    /// Open the store at `dir`, creating it if needed, with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Open with options. Reclaims data an interrupted ingest left behind.
    pub fn open_with(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let mkdir =
            |p: &Path| std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e));
        mkdir(&dir)?;
        let staging = dir.join("tmp");
        let backend: Arc<dyn Backend> = match &opts.backend {
            Some(b) => b.clone(),
            None => Arc::new(LocalBackend::new(dir.join("packs"))?),
        };
        let db_path = dir.join("chunkstore.redb");
        let db = Database::create(&db_path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                Error::new(ErrorKind::Busy, format!("store {} is in use by another process", dir.display()))
            }
            e => Error::index(e).context(format!("opening {}", db_path.display())),
        })?;
        // Anything in tmp/ is a pack an ingest never sealed. Cleared only once
        // the index lock is ours: another process's live ingest stages there.
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(format!("clearing {}", staging.display()), e))?;
        }
        mkdir(&staging)?;
        let params = Self::init_meta(&db, &opts)?;
        let mut store =
            Store { dir, db, backend, params, opts, staging, next_pack: AtomicU64::new(1), write_lock: Mutex::new(()) };
        store.reclaim()?;
        Ok(store)
    }

    fn init_meta(db: &Database, opts: &StoreOptions) -> Result<ChunkerParams> {
        let tx = db.begin_write()?;
        let params = {
            let mut meta = tx.open_table(META)?;
            let found = meta.get(index::FORMAT_KEY)?.map(|v| v.value().to_vec());
            if let Some(b) = found {
                let ver = (b.len() == 4).then(|| u32::from_le_bytes(b[..].try_into().expect("4 bytes")));
                if ver != Some(index::FORMAT_VERSION) {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "store index format {ver:?} is not supported (this build reads {})",
                            index::FORMAT_VERSION
                        ),
                    ));
                }
            } else {
                meta.insert(index::FORMAT_KEY, &index::FORMAT_VERSION.to_le_bytes()[..])?;
            }
            let stored = meta.get(index::CHUNKER_KEY)?.map(|v| ChunkerParams::decode(v.value())).transpose()?;
            match (stored, opts.chunker) {
                (Some(s), Some(want)) if s != want => {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!("store was created with chunker {s:?}; refusing to mix in {want:?}"),
                    ))
                }
                (Some(s), _) => s,
                (None, want) => {
                    let p = want.unwrap_or_default();
                    p.validate()?;
                    meta.insert(index::CHUNKER_KEY, &p.encode()[..])?;
                    p
                }
            }
        };
        // Create every table so readers never meet a missing one.
        tx.open_table(CHUNKS)?;
        tx.open_table(FILES)?;
        tx.open_table(LAYERS)?;
        tx.open_table(RECIPES)?;
        tx.open_table(BLOBS)?;
        tx.open_table(PACKS)?;
        tx.open_table(index::LAYER_MAPS)?;
        tx.open_table(index::CLIENTS)?;
        tx.commit()?;
        Ok(params)
    }

    /// Delete packs the index does not name (left by an ingest that never
    /// committed) and set the next pack number past every existing one.
    fn reclaim(&mut self) -> Result<()> {
        let known: std::collections::BTreeSet<u64> = {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(PACKS)?;
            let r: Result<_> = t.iter()?.map(|e| Ok(e?.0.value())).collect();
            r?
        };
        let present = self.backend.list_packs()?;
        for p in &present {
            if !known.contains(&p.0) {
                self.backend.delete_pack(*p)?;
            }
        }
        let max = known.iter().copied().chain(present.iter().map(|p| p.0)).max().unwrap_or(0);
        self.next_pack = AtomicU64::new(max + 1);
        Ok(())
    }

    pub(crate) fn allocate_pack(&self) -> PackId {
        PackId(self.next_pack.fetch_add(1, Ordering::SeqCst))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chunker sizes fixed at creation.
    pub fn chunker_params(&self) -> ChunkerParams {
        self.params
    }

    /// Every layer, oldest first.
    pub fn layers(&self) -> Result<Vec<LayerInfo>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LAYERS)?;
        let mut v: Vec<LayerInfo> = t.iter()?.map(|e| LayerInfo::decode(e?.1.value())).collect::<Result<_>>()?;
        v.sort_by_key(|l| (l.ingested_at, l.id));
        Ok(v)
    }

    /// One layer's record.
    pub fn layer(&self, id: &LayerId) -> Result<Option<LayerInfo>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LAYERS)?;
        let v = t.get(&id.as_bytes()[..])?;
        v.map(|v| LayerInfo::decode(v.value())).transpose()
    }

    /// Find a layer by diff_id or compressed digest, whole or a unique hex prefix
    /// (`sha256:` optional).
    pub fn resolve_layer(&self, s: &str) -> Result<LayerId> {
        let want = s.strip_prefix("sha256:").unwrap_or(s).to_ascii_lowercase();
        if want.is_empty() || want.len() > 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!("{s:?} is not a layer digest or a hex prefix of one")));
        }
        let tx = self.db.begin_read()?;
        let mut found = std::collections::BTreeSet::new();
        for e in tx.open_table(LAYERS)?.iter()? {
            let (k, _) = e?;
            if hex::encode(k.value()).starts_with(&want) {
                found.insert(LayerId::from_bytes(k.value().try_into().map_err(|_| Error::corrupt("bad layer key"))?));
            }
        }
        for e in tx.open_table(BLOBS)?.iter()? {
            let (k, v) = e?;
            if hex::encode(k.value()).starts_with(&want) {
                found.insert(LayerId::from_bytes(v.value().try_into().map_err(|_| Error::corrupt("bad blob record"))?));
            }
        }
        match found.len() {
            0 => Err(Error::not_found(format!("no layer matches {s:?}"))),
            1 => Ok(*found.iter().next().expect("one element")),
            n => Err(Error::new(ErrorKind::Ambiguous, format!("{s:?} matches {n} layers; give more digits"))),
        }
    }

    /// Totals over the store.
    pub fn stats(&self) -> Result<StoreStats> {
        let tx = self.db.begin_read()?;
        let layers = tx.open_table(LAYERS)?;
        let mut logical_bytes = 0;
        for e in layers.iter()? {
            logical_bytes += LayerInfo::decode(e?.1.value())?.tar_size;
        }
        let mut stored_bytes = 0;
        let packs = tx.open_table(PACKS)?;
        for e in packs.iter()? {
            stored_bytes += PackInfo::decode(e?.1.value())?.len;
        }
        let mut recipe_bytes = 0;
        for e in tx.open_table(RECIPES)?.iter()? {
            recipe_bytes += e?.1.value().len() as u64;
        }
        let chunks = tx.open_table(CHUNKS)?;
        let mut chunk_bytes = 0;
        for e in chunks.iter()? {
            chunk_bytes += ChunkLoc::decode(e?.1.value())?.raw_len as u64;
        }
        let denom = stored_bytes + recipe_bytes;
        Ok(StoreStats {
            layers: layers.len()?,
            logical_bytes,
            stored_bytes,
            recipe_bytes,
            dedup_ratio: if denom == 0 { 0.0 } else { logical_bytes as f64 / denom as f64 },
            chunks: chunks.len()?,
            chunk_bytes,
            files: tx.open_table(FILES)?.len()?,
            packs: packs.len()?,
            chunker: self.params,
        })
    }

    /// Read and decode one chunk (not hash-checked; callers verify).
    pub(crate) fn read_chunk(&self, loc: &ChunkLoc) -> Result<Vec<u8>> {
        let stored = self.backend.read_pack(loc.pack, loc.offset, loc.stored_len as usize)?;
        pack::decode_chunk(&stored, loc.raw_len)
    }

    /// Whether the store holds a chunk.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CHUNKS)?;
        let found = t.get(&id.as_bytes()[..])?.is_some();
        Ok(found)
    }
}
