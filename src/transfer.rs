//! What crosses the network between stores, independent of HTTP (see
//! docs/protocol.md): recipe bundles, chunk batches, verified chunks, and the
//! rebuild of a layer from a bundle plus local chunks.

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ChunkId, FileId, LayerId};
use crate::index::{self, CHUNKS, FILES, META, PACKS, RECIPES};
use crate::pack::{self, ChunkLoc, PackWriter, MAX_CHUNK};
use crate::recipe::{FileRecipe, RecipeItem, RecipeReader};
use crate::store::Store;
use crate::wire::Reader;
use redb::ReadableTable;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

/// Response header of a resumed dedup tarball (`GET …/dedup?offset=N`): the
/// BLAKE3 (hex) of the N bytes of the tarball the response leaves out.
#[cfg(any(feature = "client", feature = "server"))]
pub(crate) const PREFIX_HEADER: &str = "chunkstore-prefix-blake3";

/// Response headers of the recipe bundle and the dedup tarball: the digest
/// (`sha256:…`) of the compressed blob the hub's record names the layer by,
/// and its compression (`gzip`, `zstd`), so that an edge finds the layer by
/// the digest an image manifest uses. Absent when the hub knows no blob.
#[cfg(any(feature = "client", feature = "server"))]
pub(crate) const BLOB_HEADER: &str = "chunkstore-layer-blob";
/// See [`BLOB_HEADER`].
#[cfg(any(feature = "client", feature = "server"))]
pub(crate) const BLOB_COMPRESSION_HEADER: &str = "chunkstore-layer-compression";

const BUNDLE_MAGIC: &[u8; 8] = b"CSBUNDL1";
/// Most chunks one batch request may name.
pub const MAX_BATCH: usize = 1024;
/// Most ids in one "which are missing" query.
pub const MAX_QUERY: usize = 65_536;
/// Largest recipe bundle accepted (a layer of ~1M files).
pub const MAX_BUNDLE: u64 = 256 << 20;
const BATCH_ENTRY_HEADER: usize = 40;

/// A chunk whose bytes were checked against its id. Only these enter a pack
/// through [`Store::put_chunks`].
#[derive(Debug, Clone)]
pub struct VerifiedChunk {
    id: ChunkId,
    raw_len: u32,
    /// Stored form: zstd frame, or the raw bytes when `stored.len() == raw_len`.
    stored: Vec<u8>,
}

impl VerifiedChunk {
    /// Check `stored` (zstd or raw, by the pack rule) against `id`.
    pub fn check(id: ChunkId, raw_len: u32, stored: Vec<u8>) -> Result<Self> {
        Self::check_keep(id, raw_len, stored).map(|(c, _)| c)
    }

    /// [`VerifiedChunk::check`], also giving back the raw bytes it decoded.
    pub(crate) fn check_keep(id: ChunkId, raw_len: u32, stored: Vec<u8>) -> Result<(Self, Vec<u8>)> {
        if raw_len == 0 || raw_len > MAX_CHUNK {
            return Err(Error::invalid(format!("chunk {id}: length {raw_len} out of range")));
        }
        let raw = pack::decode_chunk(&stored, raw_len).map_err(|e| e.context(format!("chunk {id}")))?;
        if ChunkId::of(&raw) != id {
            return Err(Error::new(ErrorKind::Corrupt, format!("chunk {id}: received bytes do not match its id")));
        }
        Ok((VerifiedChunk { id, raw_len, stored }, raw))
    }

    /// The chunk's id.
    pub fn id(&self) -> &ChunkId {
        &self.id
    }

    /// Bytes of its stored (possibly compressed) form.
    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }
}

/// How many times a layer's rebuild reads each of its chunks.
pub(crate) type ChunkUses = HashMap<ChunkId, u32>;

/// A layer's recipe with the recipes of all its files.
#[derive(Debug, Clone)]
pub struct RecipeBundle {
    /// The layer.
    pub layer: LayerId,
    /// Its encoded layer recipe.
    pub recipe: Vec<u8>,
    /// Every content item's file recipe.
    pub files: HashMap<FileId, FileRecipe>,
}

impl RecipeBundle {
    /// `magic | layer [32] | recipe len u64 | recipe | n u32 | (file id [32] | len u32 | file recipe) * n`
    pub fn encode(&self) -> Vec<u8> {
        let mut b = BUNDLE_MAGIC.to_vec();
        b.extend_from_slice(self.layer.as_bytes());
        b.extend_from_slice(&(self.recipe.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.recipe);
        b.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        let mut ids: Vec<_> = self.files.keys().collect();
        ids.sort();
        for id in ids {
            let r = self.files[id].encode();
            b.extend_from_slice(id.as_bytes());
            b.extend_from_slice(&(r.len() as u32).to_le_bytes());
            b.extend_from_slice(&r);
        }
        b
    }

    /// Parse an untrusted bundle.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = |w: &str| Error::invalid(format!("recipe bundle: {w}"));
        let mut r = Reader::new(b, bad);
        if r.take(8)? != BUNDLE_MAGIC {
            return Err(bad("bad magic"));
        }
        let layer = LayerId::from_bytes(r.array()?);
        let recipe = r.bytes_u64("recipe")?.to_vec();
        let n = r.u32()?;
        let mut files = HashMap::new();
        for _ in 0..n {
            let id = FileId::from_bytes(r.array()?);
            let len = r.u32()? as usize;
            let fr = FileRecipe::decode(r.take(len)?)?;
            if !fr.consistent() || fr.chunks.iter().any(|(_, l)| *l == 0 || *l > MAX_CHUNK) {
                return Err(bad(&format!("file {id}: chunk lengths do not add up")));
            }
            files.insert(id, fr);
        }
        r.finish()?;
        Ok(RecipeBundle { layer, recipe, files })
    }

    /// Every distinct chunk the layer needs, in first-use order.
    pub fn chunk_ids(&self) -> Result<Vec<(ChunkId, u32)>> {
        Ok(self.chunk_uses()?.0)
    }

    /// [`RecipeBundle::chunk_ids`], and how many times a rebuild of the layer reads each.
    pub(crate) fn chunk_uses(&self) -> Result<(Vec<(ChunkId, u32)>, ChunkUses)> {
        let mut uses: HashMap<ChunkId, u32> = HashMap::new();
        let mut out = Vec::new();
        for item in RecipeReader::new(self.recipe.clone())? {
            if let RecipeItem::File { id, .. } | RecipeItem::Data { id, .. } = item? {
                let r = self.files.get(&id).ok_or_else(|| Error::invalid(format!("recipe bundle lacks file {id}")))?;
                for (c, len) in &r.chunks {
                    let n = uses.entry(*c).or_insert(0);
                    if *n == 0 {
                        out.push((*c, *len));
                    }
                    *n = n.saturating_add(1);
                }
            }
        }
        Ok((out, uses))
    }
}

/// Read one chunk batch response: `(id [32] | raw_len u32 | stored_len u32 | stored) *`.
/// Each chunk is verified before it is returned; `expect` lists what was asked.
pub fn read_chunk_batch(r: impl Read, expect: &[ChunkId]) -> Result<Vec<VerifiedChunk>> {
    Ok(read_chunk_batch_keep(r, expect)?.into_iter().map(|(c, _)| c).collect())
}

/// [`read_chunk_batch`], also giving back each chunk's raw bytes (a pull
/// rebuilds its layer from them rather than decompress them again).
pub(crate) fn read_chunk_batch_keep(mut r: impl Read, expect: &[ChunkId]) -> Result<Vec<(VerifiedChunk, Vec<u8>)>> {
    let mut out = Vec::with_capacity(expect.len());
    let wanted: HashSet<&ChunkId> = expect.iter().collect();
    let rd = |e: io::Error| crate::error::from_io(e, "reading chunk batch");
    for _ in 0..expect.len() {
        let mut h = [0u8; BATCH_ENTRY_HEADER];
        r.read_exact(&mut h).map_err(rd)?;
        let id = ChunkId::from_bytes(h[..32].try_into().expect("32 bytes"));
        let raw_len = u32::from_le_bytes(h[32..36].try_into().expect("4 bytes"));
        let stored_len = u32::from_le_bytes(h[36..40].try_into().expect("4 bytes"));
        if !wanted.contains(&id) {
            return Err(Error::invalid(format!("chunk batch: unrequested chunk {id}")));
        }
        if stored_len > MAX_CHUNK + 1024 || raw_len > MAX_CHUNK {
            return Err(Error::invalid(format!("chunk batch: chunk {id} declares {stored_len} bytes")));
        }
        let mut stored = Vec::with_capacity(stored_len as usize);
        (&mut r).take(stored_len as u64).read_to_end(&mut stored).map_err(rd)?;
        if stored.len() != stored_len as usize {
            return Err(rd(io::ErrorKind::UnexpectedEof.into()));
        }
        out.push(VerifiedChunk::check_keep(id, raw_len, stored)?);
    }
    Ok(out)
}

/// Read an uploaded chunk batch of any ids (at most [`MAX_BATCH`]), verifying each.
pub fn read_chunk_batch_any(mut b: &[u8]) -> Result<Vec<VerifiedChunk>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if out.len() >= MAX_BATCH {
            return Err(Error::invalid(format!("chunk batch: more than {MAX_BATCH} chunks")));
        }
        if b.len() < BATCH_ENTRY_HEADER {
            return Err(Error::invalid("chunk batch: truncated entry header"));
        }
        let id = ChunkId::from_bytes(b[..32].try_into().expect("32 bytes"));
        let raw_len = u32::from_le_bytes(b[32..36].try_into().expect("4 bytes"));
        let stored_len = u32::from_le_bytes(b[36..40].try_into().expect("4 bytes")) as usize;
        let rest = &b[BATCH_ENTRY_HEADER..];
        if stored_len > rest.len() {
            return Err(Error::invalid(format!("chunk batch: chunk {id} runs past the end")));
        }
        out.push(VerifiedChunk::check(id, raw_len, rest[..stored_len].to_vec())?);
        b = &rest[stored_len..];
    }
    Ok(out)
}

/// Parse a list of chunk ids (a request body of 32-byte ids).
pub fn parse_chunk_ids(b: &[u8], max: usize) -> Result<Vec<ChunkId>> {
    if b.len() % 32 != 0 || b.len() / 32 > max {
        return Err(Error::invalid(format!("expected at most {max} 32-byte chunk ids, got {} bytes", b.len())));
    }
    Ok(b.chunks_exact(32).map(|c| ChunkId::from_bytes(c.try_into().expect("32 bytes"))).collect())
}

impl Store {
    /// The bundle of a layer's recipe and its files' recipes.
    pub fn recipe_bundle(&self, layer: &LayerId) -> Result<RecipeBundle> {
        let tx = self.db.begin_read()?;
        let recipe = index::get_parted(&tx.open_table(RECIPES)?, &layer.as_bytes()[..], "recipe")?
            .ok_or_else(|| Error::not_found(format!("layer {layer} is not in the store")))?;
        let files_t = tx.open_table(FILES)?;
        let mut files = HashMap::new();
        for item in RecipeReader::new(recipe.clone())? {
            if let RecipeItem::File { id, .. } | RecipeItem::Data { id, .. } = item? {
                if files.contains_key(&id) {
                    continue;
                }
                let v =
                    files_t.get(&id.as_bytes()[..])?.ok_or_else(|| Error::corrupt(format!("file {id} is missing")))?;
                files.insert(id, index::decode_file(v.value())?.1);
            }
        }
        Ok(RecipeBundle { layer: *layer, recipe, files })
    }

    /// Which of `ids` this store lacks.
    pub fn missing_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CHUNKS)?;
        let mut out = Vec::new();
        for id in ids {
            if t.get(&id.as_bytes()[..])?.is_none() {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// Write a chunk batch (the wire form of [`read_chunk_batch`]) of `ids`.
    /// Fails before writing anything if one is missing.
    pub fn write_chunk_batch(&self, ids: &[ChunkId], mut out: impl Write) -> Result<()> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CHUNKS)?;
        let mut locs = Vec::with_capacity(ids.len());
        for id in ids {
            let v = t.get(&id.as_bytes()[..])?.ok_or_else(|| Error::not_found(format!("chunk {id} is not here")))?;
            locs.push(ChunkLoc::decode(v.value())?);
        }
        // One batched read per pack (a remote backend fetches its ranges at once).
        let mut by_pack: HashMap<crate::ids::PackId, Vec<usize>> = HashMap::new();
        for (i, loc) in locs.iter().enumerate() {
            by_pack.entry(loc.pack).or_default().push(i);
        }
        let mut data: Vec<Option<crate::backend::PackBytes>> = vec![None; locs.len()];
        for (pack, idx) in by_pack {
            let ranges: Vec<(u64, usize)> =
                idx.iter().map(|&i| (locs[i].offset, locs[i].stored_len as usize)).collect();
            for (i, b) in idx.into_iter().zip(self.backend.read_pack_ranges(pack, &ranges)?) {
                data[i] = Some(b);
            }
        }
        for ((id, loc), stored) in ids.iter().zip(locs).zip(data) {
            let stored = stored.expect("every chunk was read");
            let mut h = [0u8; BATCH_ENTRY_HEADER];
            h[..32].copy_from_slice(id.as_bytes());
            h[32..36].copy_from_slice(&loc.raw_len.to_le_bytes());
            h[36..40].copy_from_slice(&loc.stored_len.to_le_bytes());
            let w = |e| crate::error::from_io(e, "writing chunk batch");
            out.write_all(&h).map_err(w)?;
            out.write_all(&stored).map_err(w)?;
        }
        Ok(())
    }

    /// Store verified chunks not yet held, durably; returns how many were new.
    pub fn put_chunks(&self, chunks: &[VerifiedChunk]) -> Result<u64> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let new: Vec<&VerifiedChunk> = {
            let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
            let missing: HashSet<ChunkId> = self.missing_chunks(&ids)?.into_iter().collect();
            let mut seen = HashSet::new();
            chunks.iter().filter(|c| missing.contains(&c.id) && seen.insert(c.id)).collect()
        };
        if new.is_empty() {
            return Ok(0);
        }
        let mut pw = PackWriter::create(&self.staging, self.allocate_pack())?;
        let mut entries = Vec::with_capacity(new.len());
        for c in &new {
            match pw.append(&c.id, c.raw_len, &c.stored) {
                Ok(loc) => entries.push((c.id, loc)),
                Err(e) => {
                    self.discard_staged(pw);
                    return Err(e);
                }
            }
        }
        self.commit_pack(pw, entries)
    }

    /// Seal a staged pack of new chunks, publish it durably, then index its
    /// chunks (those still missing; the caller holds the write lock).
    fn commit_pack(&self, pw: PackWriter, entries: Vec<(ChunkId, ChunkLoc)>) -> Result<u64> {
        let (id, len, count) = self.publish_staged(pw)?;
        if let Err(e) = self.backend.flush() {
            self.unpublish_pack(id);
            return Err(e);
        }
        let result = (|| -> Result<u64> {
            let tx = self.db.begin_write()?;
            let mut added = 0;
            {
                let mut meta = tx.open_table(META)?;
                let mut next = index::get_counter(&meta, index::NEXT_CHUNK_KEY)?;
                let mut t = tx.open_table(CHUNKS)?;
                for (c, mut loc) in entries {
                    if t.get(&c.as_bytes()[..])?.is_some() {
                        continue; // stored meanwhile by another writer
                    }
                    loc.pack = id;
                    loc.num = next;
                    next = next.checked_add(1).ok_or_else(|| Error::new(ErrorKind::Config, "store is full"))?;
                    t.insert(&c.as_bytes()[..], &loc.encode()[..])?;
                    added += 1;
                }
                meta.insert(index::NEXT_CHUNK_KEY, &next.to_le_bytes()[..])?;
                tx.open_table(PACKS)?.insert(id.0, &index::PackInfo { len, chunks: count }.encode()[..])?;
            }
            tx.commit()?;
            Ok(added)
        })();
        if result.is_err() {
            self.unpublish_pack(id);
        }
        result
    }

    /// Drop an unsealed pack and its staged file.
    fn discard_staged(&self, pw: PackWriter) {
        let staged = self.staging.join(pw.id.file_name());
        drop(pw);
        let _ = std::fs::remove_file(staged);
    }
}

/// Stores verified chunks as they come: each is appended to a staged pack at
/// once (so its buffer is freed and reused), and [`ChunkSink::seal`] makes
/// the pack durable and indexes its chunks; an interrupted pull keeps every
/// sealed pack. An unsealed pack is removed when the sink is dropped.
#[cfg_attr(not(feature = "client"), allow(dead_code))]
pub(crate) struct ChunkSink<'a> {
    store: &'a Store,
    pack: Option<PackWriter>,
    entries: Vec<(ChunkId, ChunkLoc)>,
    seen: HashSet<ChunkId>,
    bytes: usize,
}

#[cfg_attr(not(feature = "client"), allow(dead_code))]
impl<'a> ChunkSink<'a> {
    pub fn new(store: &'a Store) -> Self {
        ChunkSink { store, pack: None, entries: Vec::new(), seen: HashSet::new(), bytes: 0 }
    }

    /// Append a chunk (once per id) to the staged pack.
    pub fn push(&mut self, c: &VerifiedChunk) -> Result<()> {
        if !self.seen.insert(c.id) {
            return Ok(());
        }
        let pw = match &mut self.pack {
            Some(pw) => pw,
            None => self.pack.insert(PackWriter::create(&self.store.staging, self.store.allocate_pack())?),
        };
        self.entries.push((c.id, pw.append(&c.id, c.raw_len, &c.stored)?));
        self.bytes += c.stored.len();
        Ok(())
    }

    /// Stored bytes appended since the last seal.
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// Make the staged pack durable and index its chunks; returns how many were new.
    pub fn seal(&mut self) -> Result<u64> {
        let Some(pw) = self.pack.take() else { return Ok(0) };
        let entries = std::mem::take(&mut self.entries);
        self.bytes = 0;
        let _guard = self.store.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.store.commit_pack(pw, entries)
    }
}

impl Drop for ChunkSink<'_> {
    fn drop(&mut self) {
        if let Some(pw) = self.pack.take() {
            self.store.discard_staged(pw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_round_trip_and_hostile() {
        let mut files = HashMap::new();
        files.insert(FileId::of(b"ab"), FileRecipe { size: 2, chunks: vec![(ChunkId::of(b"ab"), 2)] });
        let b = RecipeBundle { layer: LayerId::from_bytes([1; 32]), recipe: b"CSRECIPE....".to_vec(), files };
        let e = b.encode();
        let d = RecipeBundle::decode(&e).unwrap();
        assert_eq!((d.layer, d.recipe.clone(), d.files.len()), (b.layer, b.recipe.clone(), 1));
        for cut in [0, 7, 20, e.len() - 1] {
            assert!(RecipeBundle::decode(&e[..cut]).is_err());
        }
        let mut longer = e.clone();
        longer.push(0);
        assert!(RecipeBundle::decode(&longer).is_err());
    }

    #[test]
    fn chunk_sink_seals_groups_and_drops_what_it_did_not_seal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let chunk = |b: &[u8]| VerifiedChunk::check(ChunkId::of(b), b.len() as u32, b.to_vec()).unwrap();
        let (a, b, c) = (chunk(b"aaaa"), chunk(b"bbbb"), chunk(b"cccc"));
        store.put_chunks(std::slice::from_ref(&a)).unwrap();
        let mut sink = ChunkSink::new(&store);
        for x in [&a, &b, &b] {
            sink.push(x).unwrap();
        }
        assert_eq!(sink.pending_bytes(), 8, "each id once");
        assert_eq!(sink.seal().unwrap(), 1, "a was held already");
        assert!(store.has_chunk(b.id()).unwrap());
        sink.push(&c).unwrap();
        drop(sink);
        assert!(!store.has_chunk(c.id()).unwrap());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "the unsealed pack is gone");
        assert!(store.verify(Default::default()).unwrap().is_clean());
    }

    #[test]
    fn verified_chunks_refuse_wrong_bytes() {
        let id = ChunkId::of(b"hello");
        assert!(VerifiedChunk::check(id, 5, b"hello".to_vec()).is_ok());
        assert_eq!(VerifiedChunk::check(id, 5, b"hellO".to_vec()).unwrap_err().kind(), ErrorKind::Corrupt);
        assert!(VerifiedChunk::check(id, 0, vec![]).is_err());
    }
}
