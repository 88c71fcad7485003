//! The index rows and layer-wide records an ingest builds as its packer goes,
//! in stream order and already encoded: new CHUNKS rows with their dense
//! numbers, the layer's number map (LAYER_MAPS value) and the files section
//! of its layer object (which holds every new FILES row).
//!
//! Built encoded, not as maps of recipes to be encoded at the commit: a
//! layer of many small files used to hold each file three or four times
//! over (~1.1 KB a file), and its commit ran out of the memory bound
//! (docs/benchmarks.md, "Layers of many small files"). The records only the
//! commit reads go through a [`Spill`].

use crate::error::{Error, Result};
use crate::ids::{ChunkId, FileId, PackId};
use crate::index::{self, CHUNKS, FILES, META};
use crate::pack::ChunkLoc;
use crate::recipe::FileRecipe;
use crate::spill::Spill;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A content item's FILES value: a recipe new to the index (numbered here),
/// or the value the index holds.
pub(crate) enum FileValue<'a> {
    New(&'a FileRecipe),
    Held(Vec<u8>),
}

/// See the module docs. Dense numbers continue from the counters the index
/// held when the ingest began; the ingest holds the store's write lock, so
/// nothing else numbers chunks or files meanwhile (the commit checks).
pub(crate) struct LayerRows {
    pub first_chunk: u32,
    pub first_file: u32,
    next_chunk: u32,
    next_file: u32,
    /// New CHUNKS rows, numbered `first_chunk..`, in stream order:
    /// `id [32] | ChunkLoc [28]` each.
    chunks: Spill,
    /// Packs the backend stored under another id: (asked, given).
    renamed: Vec<(PackId, PackId)>,
    /// The LAYER_MAPS value: `version | count` (filled in by `finish`), then entries.
    map: Vec<u8>,
    entries: u32,
    /// The layer object's files section: `(id [32] | len u32 | FILES value)`
    /// per distinct content item, in first-use order.
    files: Spill,
    pub file_count: u32,
    /// Where in `files` the entries new to the index are.
    new_files: Vec<usize>,
}

impl Default for LayerRows {
    fn default() -> Self {
        LayerRows::new(0, 0, None)
    }
}

/// What the commit writes, read back from [`LayerRows`].
pub(crate) struct Records {
    /// New CHUNKS rows.
    pub chunks: Vec<(ChunkId, ChunkLoc)>,
    /// The layer object's files section.
    pub files: Vec<u8>,
    /// Where in `files` the entries new to the index are.
    pub new_files: Vec<usize>,
}

impl LayerRows {
    /// `spill_dir`: where records past `spill::SPILL_AT` go (the store's `tmp/`).
    pub fn new(next_chunk: u32, next_file: u32, spill_dir: Option<PathBuf>) -> Self {
        LayerRows {
            first_chunk: next_chunk,
            first_file: next_file,
            next_chunk,
            next_file,
            chunks: Spill::new(spill_dir.clone()),
            renamed: Vec::new(),
            map: crate::layermap::head().to_vec(),
            entries: 0,
            files: Spill::new(spill_dir),
            file_count: 0,
            new_files: Vec::new(),
        }
    }

    /// The next dense numbers, for META.
    pub fn next(&self) -> (u32, u32) {
        (self.next_chunk, self.next_file)
    }

    /// A new chunk, stored at `loc`: number it.
    pub fn add_chunk(&mut self, claims: &Claims, id: ChunkId, mut loc: ChunkLoc) -> Result<()> {
        // u32::MAX is never a number (as before): in `Claims` it marks a chunk not yet numbered.
        if self.next_chunk == NOT_NUMBERED {
            return Err(full());
        }
        loc.num = self.next_chunk;
        self.next_chunk += 1;
        lock(&claims.chunks).insert(id, loc.num);
        self.chunks.extend(id.as_bytes())?;
        self.chunks.extend(&loc.encode())?;
        Ok(())
    }

    /// Rows of pack `old`, which the backend stored as `new` (another writer
    /// of a shared backend had taken `old`).
    pub fn renamed_pack(&mut self, old: PackId, new: PackId) {
        self.renamed.push((old, new));
    }

    /// A content item met before in this layer: repeat its map entry and
    /// return its chunk count; `None` if it is new to the layer.
    pub fn repeat(&mut self, claims: &Claims, id: &FileId) -> Result<Option<u64>> {
        let Some(at) = lock(&claims.files).get(id).copied().filter(|at| *at != NOT_PLACED) else {
            return Ok(None);
        };
        let at = at as usize;
        let n = u32::from_le_bytes(self.map[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        self.map.extend_from_within(at..at + 8 + 4 * n);
        self.entries = self.entries.checked_add(1).ok_or_else(full)?;
        Ok(Some(n as u64))
    }

    /// A content item first met in this layer; `held` numbers the chunks
    /// this ingest did not add. Returns its chunk count.
    pub fn add_content(&mut self, id: FileId, value: FileValue<'_>, claims: &Claims, held: &HeldIndex) -> Result<u64> {
        let decoded;
        let (value, num, chunks) = match value {
            FileValue::New(r) => {
                let num = self.next_file;
                self.next_file = self.next_file.checked_add(1).ok_or_else(full)?;
                self.new_files.push(self.files.len());
                (index::encode_file(num, r), num, &r.chunks)
            }
            FileValue::Held(v) => {
                decoded = index::decode_file(&v)?;
                (v, decoded.0, &decoded.1.chunks)
            }
        };
        let at = self.map.len();
        self.map.extend_from_slice(&num.to_le_bytes());
        self.map.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for (cid, _) in chunks {
            let n = match lock(&claims.chunks).get(cid) {
                // Claimed chunks are packed before any file that uses them.
                Some(&NOT_NUMBERED) => {
                    return Err(Error::corrupt(format!("internal: chunk {cid} used before it was packed")))
                }
                Some(n) => *n,
                None => {
                    held.chunk_num(cid)?.ok_or_else(|| Error::corrupt(format!("chunk {cid} vanished during ingest")))?
                }
            };
            self.map.extend_from_slice(&n.to_le_bytes());
        }
        self.entries = self.entries.checked_add(1).ok_or_else(full)?;
        lock(&claims.files).insert(id, at as u64);
        self.files.extend(id.as_bytes())?;
        self.files.extend(&(value.len() as u32).to_le_bytes())?;
        self.files.extend(&value)?;
        self.file_count = self.file_count.checked_add(1).ok_or_else(full)?;
        Ok(chunks.len() as u64)
    }

    /// The last content item is in: fill in the map's count.
    pub fn finish(&mut self) {
        let entries = self.entries.to_le_bytes();
        self.map[1..5].copy_from_slice(&entries);
    }

    /// The LAYER_MAPS value (after [`LayerRows::finish`]).
    pub fn map(&self) -> &[u8] {
        &self.map
    }

    /// The new rows and the files section, read back (from memory, or the
    /// spill files). Called once, by the commit; the walk's maps are gone by then.
    pub fn take_records(&mut self) -> Result<Records> {
        let raw = std::mem::take(&mut self.chunks).into_vec()?;
        let mut chunks = Vec::with_capacity(raw.len() / CHUNK_ROW);
        for r in raw.chunks_exact(CHUNK_ROW) {
            let id = ChunkId::from_bytes(r[..32].try_into().expect("32 bytes"));
            let mut loc = ChunkLoc::decode(&r[32..])?;
            if let Some((_, new)) = self.renamed.iter().find(|(old, _)| *old == loc.pack) {
                loc.pack = *new;
            }
            chunks.push((id, loc));
        }
        drop(raw);
        let files = std::mem::take(&mut self.files).into_vec()?;
        Ok(Records { chunks, files, new_files: std::mem::take(&mut self.new_files) })
    }
}

const CHUNK_ROW: usize = 32 + ChunkLoc::ENCODED_LEN;

impl Records {
    /// Order the new CHUNKS and FILES rows for insertion (their numbers
    /// stay): in key order, so that a large commit visits each B-tree page
    /// once and needs no large cache; but each run of `INSERT_BLOCK` rows in
    /// a fixed shuffled order, since keys appended in order leave every leaf
    /// half full (redb splits a full leaf in two): 49,488 pages against
    /// 39,314 in stream order for a 500,000-file layer, and 39,560 so.
    pub fn sort_for_insert(&mut self) {
        self.chunks.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let files = &self.files;
        self.new_files.sort_unstable_by(|&a, &b| files[a..a + 32].cmp(&files[b..b + 32]));
        shuffle_blocks(&mut self.chunks, INSERT_BLOCK);
        shuffle_blocks(&mut self.new_files, INSERT_BLOCK);
    }

    /// The new FILES rows: `(id, value)` slices of `files`.
    pub fn new_file_rows(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.new_files.iter().map(|&at| {
            let len = u32::from_le_bytes(self.files[at + 32..at + 36].try_into().expect("4 bytes")) as usize;
            (&self.files[at..at + 32], &self.files[at + 36..at + 36 + len])
        })
    }
}

/// Content ids this ingest has met so far, shared by the parallel pass and
/// the packer. The parallel pass claims new content (whoever claims an id
/// first chunks or compresses it, once); the packer then records where it
/// put it: a file's entry in the number map, a chunk's number. One map per
/// kind for both jobs, since for a layer of many small files these maps are
/// most of the ingest's memory.
#[derive(Default)]
pub(crate) struct Claims {
    /// Content item → offset of its entry in [`LayerRows`]' map, or
    /// `NOT_PLACED` while only claimed.
    files: Mutex<HashMap<FileId, u64>>,
    /// New chunk → its number, or `NOT_NUMBERED` while only claimed.
    chunks: Mutex<HashMap<ChunkId, u32>>,
}

const NOT_PLACED: u64 = u64::MAX;
const NOT_NUMBERED: u32 = u32::MAX;

impl Claims {
    /// Whether this ingest has met content `id` already.
    pub fn has_file(&self, id: &FileId) -> bool {
        lock(&self.files).contains_key(id)
    }

    /// Claim content `id`; false if it was met already.
    pub fn claim_file(&self, id: FileId) -> bool {
        claim(&self.files, id, NOT_PLACED)
    }

    /// Whether this ingest has claimed chunk `id` already.
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        lock(&self.chunks).contains_key(id)
    }

    /// Claim chunk `id`; false if it was claimed already.
    pub fn claim_chunk(&self, id: ChunkId) -> bool {
        claim(&self.chunks, id, NOT_NUMBERED)
    }
}

/// Insert `key` with `value` unless it is there; whether it was inserted.
fn claim<K: std::hash::Hash + Eq, V>(m: &Mutex<HashMap<K, V>>, key: K, value: V) -> bool {
    match lock(m).entry(key) {
        std::collections::hash_map::Entry::Occupied(_) => false,
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(value);
            true
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn full() -> Error {
    Error::new(crate::ErrorKind::Config, "store is full: more than 2^32 chunks or files")
}

/// What the index held when an ingest began: chunk numbers and FILES values
/// of the content it meets again.
pub(crate) struct HeldIndex {
    chunks: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    files: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    meta: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl HeldIndex {
    pub fn open(tx: &redb::ReadTransaction) -> Result<Self> {
        Ok(HeldIndex { chunks: tx.open_table(CHUNKS)?, files: tx.open_table(FILES)?, meta: tx.open_table(META)? })
    }

    /// A fresh [`LayerRows`], numbering on from the index's counters.
    pub fn rows(&self, spill_dir: &Path) -> Result<LayerRows> {
        let chunk = index::get_counter(&self.meta, index::NEXT_CHUNK_KEY)?;
        let file = index::get_counter(&self.meta, index::NEXT_FILE_KEY)?;
        Ok(LayerRows::new(chunk, file, Some(spill_dir.to_path_buf())))
    }

    fn chunk_num(&self, id: &ChunkId) -> Result<Option<u32>> {
        match self.chunks.get(&id.as_bytes()[..])? {
            Some(v) => Ok(Some(ChunkLoc::decode(v.value())?.num)),
            None => Ok(None),
        }
    }

    /// The FILES value of content the index holds.
    pub fn file(&self, id: &FileId) -> Result<Vec<u8>> {
        let v = self.files.get(&id.as_bytes()[..])?;
        Ok(v.ok_or_else(|| Error::corrupt(format!("file {id} vanished during ingest")))?.value().to_vec())
    }
}

/// Rows shuffled together before insertion: a few dozen leaves' worth, so
/// a run's pages stay in redb's cache while it goes in.
const INSERT_BLOCK: usize = 4096;

/// Shuffle each run of `block` items of `v` in place, the same way every
/// time (splitmix64 from a fixed seed: the index's layout is reproducible).
fn shuffle_blocks<T>(v: &mut [T], block: usize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in v.chunks_mut(block) {
        for i in (1..b.len()).rev() {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            b.swap(i, (z % (i as u64 + 1)) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shuffled_blocks_keep_their_items() {
        let mut v: Vec<u32> = (0..10_000).collect();
        super::shuffle_blocks(&mut v, 4096);
        assert_ne!(v[..4096], (0..4096).collect::<Vec<_>>()[..], "shuffled");
        for (i, b) in v.chunks(4096).enumerate() {
            let mut b = b.to_vec();
            b.sort();
            let start = i as u32 * 4096;
            assert_eq!(b, (start..start + b.len() as u32).collect::<Vec<_>>(), "block {i} holds its own items");
        }
        let mut again: Vec<u32> = (0..10_000).collect();
        super::shuffle_blocks(&mut again, 4096);
        assert_eq!(v, again, "the same order every time");
    }
}
