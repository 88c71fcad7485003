//! The store: opening, configuration, layer lookup and statistics.

use crate::backend::{Backend, LocalBackend};
use crate::chunker::ChunkerParams;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ChunkId, LayerId, PackId};
use crate::index::{self, LayerInfo, PackInfo, BLOBS, CHUNKS, FILES, LAYERS, META, PACKS, RECIPES};
use crate::pack::{self, ChunkLoc};
use crate::unsettled::Unsettled;
use redb::{Database, ReadableTable, ReadableTableMetadata};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The index's file name in a store directory.
const INDEX_FILE: &str = "chunkstore.redb";
/// redb's cache: pages read, and (a tenth of it) pages written but not yet
/// committed. redb's default of 1 GiB let one ingest commit grow the
/// process by the pages it touched (~170 MiB for a layer of 500,000 files).
/// The commit inserts its rows in key order, so this smaller cache costs it
/// nothing measurable; reads past it come from the OS page cache, which
/// costs a diff against a store of a million chunks ~15% (15 -> 18 ms,
/// docs/benchmarks.md).
const INDEX_CACHE: usize = 64 << 20;

/// What a store directory may hold besides its index (`lost+found`: a store
/// on a volume of its own).
const STORE_ENTRIES: &[&str] = &["packs", "layers", "tmp", "partial", "unsettled", "token.key", "lost+found"];

/// Refuse to open a store where one cannot be: a path that is not a
/// directory, or a directory holding files no store would, since opening
/// creates directories there and clears staged packs from its `tmp/`.
pub(crate) fn check_store_dir(dir: &Path) -> Result<()> {
    let io = |e| Error::io(format!("opening {}", dir.display()), e);
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::new(ErrorKind::Config, format!("{} is not a directory", dir.display())));
        }
        Ok(_) => {}
    }
    if dir.join(INDEX_FILE).exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        // `token.key.<pid>`: a key being written; an index set aside.
        let ours = name.starts_with("token.key.") || name.starts_with("chunkstore.redb.damaged-");
        if !STORE_ENTRIES.contains(&&*name) && !ours {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{} is not a chunkstore store and is not empty (it holds {name:?}): \
                     give a new or empty directory, or an existing store",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Run a redb call that reads the index file's own structures. redb asserts
/// on some damage (a file cut short, a garbled allocator page) instead of
/// returning an error: such a panic is reported as corruption.
fn guard_redb<T>(
    path: &Path,
    f: impl FnOnce() -> std::result::Result<T, redb::DatabaseError>,
) -> std::result::Result<T, redb::DatabaseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a failed check".into());
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(format!(
            "{} failed redb's check: {why}",
            path.display()
        ))))
    })
}

/// What a failure to open the index means for the user.
pub(crate) fn open_error(dir: &Path, db_path: &Path, e: redb::DatabaseError) -> Error {
    if matches!(e, redb::DatabaseError::DatabaseAlreadyOpen) {
        return Error::new(ErrorKind::Busy, format!("store {} is in use by another process", dir.display()));
    }
    if is_damaged_index(&e) {
        return Error::new(
            ErrorKind::Corrupt,
            format!(
                "index {} is damaged ({e}): `chunkstore reindex` sets it aside and rebuilds it \
                 from the packs and layer objects",
                db_path.display()
            ),
        );
    }
    Error::index(e).context(format!("opening {}", db_path.display()))
}

/// Whether redb's refusal means the file's bytes are damaged (not locked,
/// unreadable, or of an unknown version).
fn is_damaged_index(e: &redb::DatabaseError) -> bool {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof)
        }
        _ => false,
    }
}

impl Store {
    /// Move a damaged index aside (to `chunkstore.redb.damaged-<unix seconds>`)
    /// so that the next open rebuilds it from the packs and layer objects.
    /// `None` when there is no index, or it opens and passes redb's integrity
    /// check (repaired if need be). Possession records live
    /// only in the index: they stay in the file set aside.
    pub fn set_aside_damaged_index(dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
        let dir = dir.as_ref();
        let db_path = dir.join(INDEX_FILE);
        if !db_path.exists() {
            return Ok(None);
        }
        // redb checks pages as it reads them: damage inside the file shows
        // only to a full check (which repairs what it can).
        let e = match guard_redb(&db_path, || Database::open(&db_path).and_then(|mut db| db.check_integrity())) {
            Ok(_) => return Ok(None),
            Err(e) => e,
        };
        if !is_damaged_index(&e) {
            return Err(open_error(dir, &db_path, e));
        }
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let aside = dir.join(format!("{INDEX_FILE}.damaged-{secs}"));
        std::fs::rename(&db_path, &aside).map_err(|e| Error::io(format!("moving {} aside", db_path.display()), e))?;
        crate::backend::sync_dir(dir)?;
        tracing::warn!("index {} was damaged ({e}): moved to {}", db_path.display(), aside.display());
        Ok(Some(aside))
    }
}

/// Remove the packs staged in `staging` (named as [`PackId::file_name`]
/// names them) and leftover ingest spill files (`spill-*`); anything else
/// there is not ours to delete.
fn clear_staged_packs(staging: &Path) -> Result<()> {
    let io = |e| Error::io(format!("clearing {}", staging.display()), e);
    for entry in std::fs::read_dir(staging).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let name = name.to_str();
        // Packs, and an ingest's spill file killed before it was unlinked (src/spill.rs).
        let ours = name.and_then(PackId::from_file_name).is_some() || name.is_some_and(|n| n.starts_with("spill-"));
        if ours && entry.file_type().map_err(io)?.is_file() {
            std::fs::remove_file(entry.path()).map_err(io)?;
        }
    }
    Ok(())
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Chunker sizes for a new store; an existing store must match if set.
    pub chunker: Option<ChunkerParams>,
    /// zstd level for new chunks (default 2: see docs/benchmarks.md).
    pub compression_level: i32,
    /// Seal a pack once it reaches this many bytes.
    pub pack_size: u64,
    /// Where packs and layer objects live; `None` is `<dir>/packs` and
    /// `<dir>/layers` on the local filesystem.
    pub backend: Option<Arc<dyn Backend>>,
    /// Never write to the backend: ingests are refused, and opening deletes
    /// nothing. The local index (possession records, `reindex`) stays writable.
    pub read_only: bool,
    /// Rebuild an empty index from the backend's layer objects on open
    /// (see [`Store::reindex`]).
    pub auto_reindex: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            chunker: None,
            compression_level: 2,
            pack_size: 64 << 20,
            backend: None,
            read_only: false,
            auto_reindex: true,
        }
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
    pub(crate) unsettled: Unsettled,
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
    /// Size of the index file (`chunkstore.redb`, in the cache directory for
    /// an object-store store): row data, B-tree pages and free pages redb
    /// keeps for reuse.
    pub index_bytes: u64,
    /// The chunker sizes this store was created with.
    pub chunker: ChunkerParams,
}

impl Store {
    /// Open the store at `dir`, creating it if needed, with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Open with options. Reclaims data an interrupted ingest left behind
    /// (not on a shared backend, nor when read-only), writes layer objects a
    /// store made before they existed lacks, and rebuilds an empty index from
    /// the backend's layer objects if there are any.
    pub fn open_with(dir: impl AsRef<Path>, mut opts: StoreOptions) -> Result<Store> {
        let started = std::time::Instant::now();
        let dir = dir.as_ref().to_path_buf();
        let mkdir =
            |p: &Path| std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e));
        check_store_dir(&dir)?;
        mkdir(&dir)?;
        let staging = dir.join("tmp");
        let backend: Arc<dyn Backend> = match &opts.backend {
            Some(b) => b.clone(),
            None => Arc::new(LocalBackend::with_dirs(dir.join("packs"), dir.join("layers"))?),
        };
        let db_path = dir.join(INDEX_FILE);
        let db = guard_redb(&db_path, || Database::builder().set_cache_size(INDEX_CACHE).create(&db_path))
            .map_err(|e| open_error(&dir, &db_path, e))?;
        let unsettled = Unsettled::open(&dir);
        // A pack staged in tmp/ is one an ingest never sealed. Cleared only
        // once the index lock is ours: another process's live ingest stages there.
        mkdir(&staging)?;
        clear_staged_packs(&staging)?;
        if opts.backend.is_none() && !opts.read_only {
            LocalBackend::clear_partial_layer_objects(&dir.join("layers"))?;
        }
        // A fresh index over a backend that already holds layers takes the
        // chunker sizes they were made with.
        let fresh = Self::index_is_empty(&db)?;
        let existing = if fresh { backend.list_layers()? } else { Vec::new() };
        let rebuild = !existing.is_empty() && opts.auto_reindex;
        if let (Some(first), None) = (existing.first(), opts.chunker) {
            let obj = crate::layerobj::LayerObject::decode(&backend.get_layer(first)?, first)?;
            opts.chunker = Some(obj.chunker);
        }
        let params = Self::init_meta(&db, &opts)?;
        let mut store = Store {
            dir,
            db,
            backend,
            params,
            opts,
            staging,
            next_pack: AtomicU64::new(1),
            write_lock: Mutex::new(()),
            unsettled,
        };
        if rebuild {
            tracing::info!("index is empty and the backend holds {} layers: rebuilding the index", existing.len());
            store.reindex()?;
        } else if !store.opts.read_only && existing.is_empty() {
            // Scanning the backend costs time in proportion to its size: only
            // after a writer that did not finish (see `unsettled`).
            let found = store.unsettled.found() || fresh;
            if found {
                if store.unsettled.found() {
                    tracing::info!("the last writer did not finish: reclaiming what the index does not name");
                }
                store.reclaim()?;
            } else {
                store.number_packs_past_index()?;
            }
            if !index::flag(&store.db, index::LAYER_OBJECTS_KEY)? {
                store.backfill_layer_objects()?;
                index::set_flag(&store.db, index::LAYER_OBJECTS_KEY)?;
            } else if found {
                store.backfill_layer_objects()?;
            }
            store.unsettled.clear();
        }
        if !store.opts.read_only && store.backend.is_shared() {
            store.number_packs_past_backend()?;
        }
        tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "store opened");
        Ok(store)
    }

    /// True when the index records no layer, chunk or pack.
    fn index_is_empty(db: &Database) -> Result<bool> {
        let tx = db.begin_read()?;
        let empty = |r: std::result::Result<redb::ReadOnlyTable<&[u8], &[u8]>, redb::TableError>| -> Result<bool> {
            match r {
                Ok(t) => Ok(t.is_empty()?),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(true),
                Err(e) => Err(e.into()),
            }
        };
        let packs_empty = match tx.open_table(PACKS) {
            Ok(t) => t.is_empty()?,
            Err(redb::TableError::TableDoesNotExist(_)) => true,
            Err(e) => return Err(e.into()),
        };
        Ok(empty(tx.open_table(LAYERS))? && empty(tx.open_table(CHUNKS))? && packs_empty)
    }

    /// Refuse a write when the store was opened read-only.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.opts.read_only {
            return Err(Error::new(ErrorKind::Config, "the store is open read-only"));
        }
        Ok(())
    }

    /// Whether the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.opts.read_only
    }

    /// Write the layer object of every layer the backend lacks one for (a
    /// store made before layer objects existed).
    fn backfill_layer_objects(&self) -> Result<()> {
        if self.backend.is_shared() {
            return Ok(());
        }
        let have: std::collections::HashSet<LayerId> = self.backend.list_layers()?.into_iter().collect();
        for l in self.layers()? {
            if !have.contains(&l.id) {
                let obj = self.layer_object_from_index(&l.id)?;
                self.backend.put_layer(&l.id, &obj.encode())?;
            }
        }
        Ok(())
    }

    /// Number new packs past every pack the index names.
    fn number_packs_past_index(&self) -> Result<()> {
        let tx = self.db.begin_read()?;
        if let Some((k, _)) = tx.open_table(PACKS)?.last()? {
            self.pack_ids_past(k.value());
        }
        Ok(())
    }

    /// Remove pack `id`, which this process published but will not commit;
    /// if that fails, the next open reclaims it.
    pub(crate) fn unpublish_pack(&self, id: PackId) {
        if self.backend.delete_pack(id).is_err() {
            self.unsettled.keep();
        }
    }

    /// [`Self::unpublish_pack`] each of `packs` (as a writer lists what it published).
    pub(crate) fn unpublish_packs(&self, packs: &[(PackId, PackInfo)]) {
        for (p, _) in packs {
            self.unpublish_pack(*p);
        }
    }

    /// Number new packs past every pack the backend holds.
    fn number_packs_past_backend(&self) -> Result<()> {
        if let Some(max) = self.backend.list_packs()?.iter().map(|p| p.0).max() {
            self.pack_ids_past(max);
        }
        Ok(())
    }

    /// Make sure new pack ids are greater than `max`.
    pub(crate) fn pack_ids_past(&self, max: u64) {
        self.next_pack.fetch_max(max.saturating_add(1), Ordering::SeqCst);
    }

    /// Finish a staged pack and store it under a fresh id (see
    /// [`Self::put_pack_fresh`]), leaving no staged file behind if either
    /// fails. Returns the id it was stored under, its length and entry count.
    pub(crate) fn publish_staged(&self, pw: pack::PackWriter) -> Result<(PackId, u64, u64)> {
        let staged = self.staging.join(pw.id.file_name());
        let id = pw.id;
        let (path, len, count) = pw.finish().inspect_err(|_| {
            let _ = std::fs::remove_file(&staged);
        })?;
        let stored = self.put_pack_fresh(id, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
        Ok((stored, len, count))
    }

    /// Store a sealed pack under a fresh id. `id` is tried first; if another
    /// writer of a shared backend took it meanwhile, new ids are tried.
    /// Returns the id the pack was stored under.
    pub(crate) fn put_pack_fresh(&self, mut id: PackId, staged: &Path) -> Result<PackId> {
        self.check_writable()?;
        self.unsettled.mark()?;
        for _ in 0..64 {
            match self.backend.put_pack(id, staged) {
                Ok(()) => return Ok(id),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    tracing::info!("pack {id} already exists in the backend; taking another id");
                    self.pack_ids_past(id.0);
                    id = self.allocate_pack();
                }
                Err(e) => {
                    // A backend publishes a pack whole or not at all; this only
                    // makes sure (the id was ours: nobody else's pack is there).
                    self.unpublish_pack(id);
                    return Err(e);
                }
            }
        }
        Err(Error::new(ErrorKind::AlreadyExists, "64 pack ids in a row were already taken in the backend"))
    }

    /// An existing store's chunker sizes, read without a write transaction
    /// (which costs an fsync on every open); `None` if anything is missing or
    /// differs, for [`Self::init_meta`] to create or report.
    fn settled_meta(db: &Database, opts: &StoreOptions) -> Option<ChunkerParams> {
        let tx = db.begin_read().ok()?;
        let meta = tx.open_table(META).ok()?;
        let ver = meta.get(index::FORMAT_KEY).ok()??;
        if ver.value() != index::FORMAT_VERSION.to_le_bytes() {
            return None;
        }
        let params = ChunkerParams::decode(meta.get(index::CHUNKER_KEY).ok()??.value()).ok()?;
        if opts.chunker.is_some_and(|want| want != params) {
            return None;
        }
        let all = tx.open_table(CHUNKS).is_ok()
            && tx.open_table(FILES).is_ok()
            && tx.open_table(LAYERS).is_ok()
            && tx.open_table(RECIPES).is_ok()
            && tx.open_table(BLOBS).is_ok()
            && tx.open_table(PACKS).is_ok()
            && tx.open_table(index::LAYER_MAPS).is_ok()
            && tx.open_table(index::CLIENTS).is_ok()
            && tx.open_table(index::LAYER_SETS).is_ok();
        all.then_some(params)
    }

    fn init_meta(db: &Database, opts: &StoreOptions) -> Result<ChunkerParams> {
        if let Some(params) = Self::settled_meta(db, opts) {
            return Ok(params);
        }
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
                // A new index: no layer lacks its object.
                meta.insert(index::LAYER_OBJECTS_KEY, &[1u8][..])?;
            }
            let stored = meta.get(index::CHUNKER_KEY)?.map(|v| ChunkerParams::decode(v.value())).transpose()?;
            match (stored, opts.chunker) {
                (Some(s), Some(want)) if s != want => {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!("store was created with chunker {s}; refusing to mix in {want}"),
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
        tx.open_table(index::LAYER_SETS)?;
        tx.commit()?;
        Ok(params)
    }

    /// Delete layer objects and packs the index does not name (left by an
    /// ingest that never committed; layer objects first, as they name packs)
    /// and set the next pack number past every existing one. On a shared
    /// backend nothing is deleted: another writer's uploads are not orphans.
    fn reclaim(&mut self) -> Result<()> {
        let known: std::collections::BTreeSet<u64> = {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(PACKS)?;
            let r: Result<_> = t.iter()?.map(|e| Ok(e?.0.value())).collect();
            r?
        };
        // A shared backend is listed once, by `number_packs_past_backend`.
        let present = if self.backend.is_shared() { Vec::new() } else { self.backend.list_packs()? };
        if !self.backend.is_shared() {
            let layers: std::collections::HashSet<LayerId> = self.layers()?.into_iter().map(|l| l.id).collect();
            for l in self.backend.list_layers()? {
                if !layers.contains(&l) {
                    self.backend.delete_layer(&l)?;
                }
            }
            for p in &present {
                if !known.contains(&p.0) {
                    self.backend.delete_pack(*p)?;
                }
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
            index_bytes: std::fs::metadata(self.dir.join(INDEX_FILE)).map_or(0, |m| m.len()),
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
