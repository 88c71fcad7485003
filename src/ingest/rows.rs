//! The index rows and layer-wide records an ingest builds as its packer goes,
//! in stream order and already encoded: new CHUNKS rows with their dense
//! numbers, the layer's number map (LAYER_MAPS value) and the files section
//! of its layer object (which holds every new FILES row).
//!
//! Built encoded, not as maps of recipes to be encoded at the commit: a
//! layer of many small files used to hold each file three or four times
//! over (~1.1 KB a file), and its commit ran out of the memory bound
//! (docs/benchmarks.md, "Layers of many small files"). The records only the
//! commit reads go through a [`Spill`] or, the rows it inserts in key
//! order, [`SortedRuns`].

use super::claims::{Claims, NOT_NUMBERED, NOT_PLACED};
use crate::error::{Error, Result};
use crate::ids::{ChunkId, FileId, PackId};
use crate::index::{self, CHUNKS, FILES, META};
use crate::pack::ChunkLoc;
use crate::recipe::FileRecipe;
use crate::spill::{Merge, SortedRuns, Spill, Spilled};
use std::path::{Path, PathBuf};

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
    /// New CHUNKS rows, numbered `first_chunk..`: `id [32] | ChunkLoc [28]` each.
    chunks: SortedRuns,
    /// Packs the backend stored under another id: (asked, given).
    renamed: Vec<(PackId, PackId)>,
    /// The LAYER_MAPS value's head: `version | count` (filled in by `finish`).
    map_head: [u8; 5],
    /// Its entries: 12 bytes a file or more, so they spill too.
    map: Spill,
    entries: u32,
    /// The layer object's files section: `(id [32] | len u32 | FILES value)`
    /// per distinct content item, in first-use order.
    files: Spill,
    pub file_count: u32,
    /// New FILES rows: `id [32] | value`.
    new_files: SortedRuns,
}

impl Default for LayerRows {
    fn default() -> Self {
        LayerRows::new(0, 0, None)
    }
}

/// What the commit writes, read back from [`LayerRows`].
pub(crate) struct Records {
    /// New CHUNKS rows, in key order: `id [32] | ChunkLoc [28]` each, the
    /// pack not yet renamed (see [`LayerRows::renamed`]).
    pub chunks: Merge,
    /// New FILES rows, in key order: `id [32] | value` each.
    pub new_files: Merge,
    /// The layer object's files section.
    pub files: Spilled,
}

impl LayerRows {
    /// `spill_dir`: where records past `spill::SPILL_AT` go (the store's `tmp/`).
    pub fn new(next_chunk: u32, next_file: u32, spill_dir: Option<PathBuf>) -> Self {
        LayerRows {
            first_chunk: next_chunk,
            first_file: next_file,
            next_chunk,
            next_file,
            chunks: SortedRuns::new(spill_dir.clone()),
            renamed: Vec::new(),
            map_head: crate::layermap::head(),
            map: Spill::new(spill_dir.clone()),
            entries: 0,
            files: Spill::new(spill_dir.clone()),
            file_count: 0,
            new_files: SortedRuns::new(spill_dir),
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
        claims.numbered(&id, loc.num);
        self.chunks.push(id.as_bytes(), &loc.encode())
    }

    /// Rows of pack `old`, which the backend stored as `new` (another writer
    /// of a shared backend had taken `old`).
    pub fn renamed_pack(&mut self, old: PackId, new: PackId) {
        self.renamed.push((old, new));
    }

    /// The pack a chunk row's pack was stored as.
    pub fn renamed(&self, pack: PackId) -> PackId {
        self.renamed.iter().find(|(old, _)| *old == pack).map_or(pack, |(_, new)| *new)
    }

    /// A content item met before in this layer: repeat its map entry and
    /// return its chunk count; `None` if it is new to the layer.
    pub fn repeat(&mut self, claims: &Claims, id: &FileId) -> Result<Option<u64>> {
        let Some(at) = claims.placed(id)? else { return Ok(None) };
        let mut head = [0u8; 8];
        self.map.read_at(at as usize, &mut head)?;
        let n = u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize;
        let mut entry = vec![0u8; 8 + 4 * n];
        self.map.read_at(at as usize, &mut entry)?;
        self.map.extend(&entry)?;
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
                let value = index::encode_file(num, r);
                self.new_files.push(id.as_bytes(), &value)?;
                (value, num, &r.chunks)
            }
            FileValue::Held(v) => {
                decoded = index::decode_file(&v)?;
                (v, decoded.0, &decoded.1.chunks)
            }
        };
        let at = self.map.len();
        let mut entry = Vec::with_capacity(8 + 4 * chunks.len());
        entry.extend_from_slice(&num.to_le_bytes());
        entry.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for (cid, _) in chunks {
            let n = match claims.chunk(cid)? {
                Some(Some(n)) => n,
                // Claimed chunks are packed before any file that uses them.
                Some(None) => return Err(Error::corrupt(format!("internal: chunk {cid} used before it was packed"))),
                None => {
                    held.chunk_num(cid)?.ok_or_else(|| Error::corrupt(format!("chunk {cid} vanished during ingest")))?
                }
            };
            entry.extend_from_slice(&n.to_le_bytes());
        }
        self.map.extend(&entry)?;
        self.entries = self.entries.checked_add(1).ok_or_else(full)?;
        let at = u32::try_from(at).ok().filter(|at| *at < NOT_PLACED).ok_or_else(full)?;
        claims.place(&id, at);
        self.files.extend(id.as_bytes())?;
        self.files.extend(&(value.len() as u32).to_le_bytes())?;
        self.files.extend(&value)?;
        self.file_count = self.file_count.checked_add(1).ok_or_else(full)?;
        Ok(chunks.len() as u64)
    }

    /// The last content item is in: fill in the map's count.
    pub fn finish(&mut self) {
        let entries = self.entries.to_le_bytes();
        self.map_head[1..5].copy_from_slice(&entries);
    }

    /// The LAYER_MAPS value (after [`LayerRows::finish`]): its head and its entries.
    pub fn take_map(&mut self) -> Result<([u8; 5], Spilled)> {
        Ok((self.map_head, std::mem::take(&mut self.map).finish()?))
    }

    /// The new rows and the files section, to be read back (from memory,
    /// or the spill files). Called once, by the commit; the walk's maps are
    /// gone by then.
    pub fn take_records(&mut self) -> Result<Records> {
        Ok(Records {
            chunks: std::mem::take(&mut self.chunks).finish()?,
            new_files: std::mem::take(&mut self.new_files).finish()?,
            files: std::mem::take(&mut self.files).finish()?,
        })
    }
}

/// Feed the records of `m` (in key order) to `insert`, in the order a
/// B-tree takes best: in key order, so that a large commit visits each
/// page once and needs no large cache; but each run of `INSERT_BLOCK`
/// records in a fixed shuffled order, since keys appended in order leave
/// every leaf half full (redb splits a full leaf in two): 49,488 pages
/// against 39,314 in stream order for a 500,000-file layer, and 39,560 so.
pub(crate) fn insert_in_blocks(m: &mut Merge, mut insert: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut shuffle = BlockShuffle::default();
    let (mut block, mut at) = (Vec::new(), Vec::with_capacity(INSERT_BLOCK));
    loop {
        block.clear();
        at.clear();
        while at.len() < INSERT_BLOCK {
            let Some(r) = m.next_record()? else { break };
            at.push((block.len(), r.len()));
            block.extend_from_slice(r);
        }
        if at.is_empty() {
            return Ok(());
        }
        shuffle.shuffle(&mut at);
        for &(start, len) in &at {
            insert(&block[start..start + len])?;
        }
    }
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

/// Shuffles blocks of items in place, the same way every time (splitmix64
/// from a fixed seed, going on from block to block: the index's layout is
/// reproducible).
struct BlockShuffle {
    x: u64,
}

impl Default for BlockShuffle {
    fn default() -> Self {
        BlockShuffle { x: 0x9e37_79b9_7f4a_7c15 }
    }
}

impl BlockShuffle {
    fn shuffle<T>(&mut self, b: &mut [T]) {
        for i in (1..b.len()).rev() {
            self.x = self.x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            b.swap(i, (z % (i as u64 + 1)) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::spill::SortedRuns;

    fn key(i: u32) -> [u8; 32] {
        let mut k = [0; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    /// The keys `insert_in_blocks` hands over for keys 0..n pushed backwards.
    fn inserted(n: u32) -> Vec<u32> {
        let mut runs = SortedRuns::new(None);
        for i in (0..n).rev() {
            runs.push(&key(i), &i.to_le_bytes()).unwrap();
        }
        let mut got = Vec::new();
        super::insert_in_blocks(&mut runs.finish().unwrap(), |r| {
            assert_eq!(r[..32], key(u32::from_le_bytes(r[32..].try_into().unwrap())), "the record whole");
            got.push(u32::from_le_bytes(r[32..36].try_into().unwrap()));
            Ok(())
        })
        .unwrap();
        got
    }

    #[test]
    fn blocks_go_in_key_order_each_shuffled() {
        let v = inserted(10_000);
        assert_ne!(v[..4096], (0..4096).collect::<Vec<_>>()[..], "shuffled");
        for (i, b) in v.chunks(4096).enumerate() {
            let mut b = b.to_vec();
            b.sort();
            let start = i as u32 * 4096;
            assert_eq!(b, (start..start + b.len() as u32).collect::<Vec<_>>(), "block {i} holds its own items");
        }
        assert_eq!(v, inserted(10_000), "the same order every time");
    }
}
