//! Layer and file recipes (docs/format.md): how to rebuild a layer tar from
//! raw header bytes and stored files, and a file from its chunks.

use crate::error::{Error, Result};
use crate::ids::{ChunkId, FileId};
use crate::spill::Spill;
use std::borrow::Cow;
use std::io::{Read, Write};

pub(crate) const MAGIC: &[u8; 8] = b"CSRECIPE";
pub(crate) const VERSION: u32 = 1;
const TAG_END: u8 = 0;
const TAG_RAW: u8 = 1;
const TAG_FILE: u8 = 2;
const TAG_DATA: u8 = 3;
/// Bounds on what a recipe may declare, so a damaged one cannot exhaust memory.
pub(crate) const MAX_RAW: u32 = 32 << 20;
const MAX_PATH: u32 = 1 << 20;

/// One step of a layer rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipeItem {
    /// Bytes copied verbatim: headers, extension records, padding, the tail.
    Raw(Vec<u8>),
    /// A regular file's content, with the entry's path as the tar names it.
    File {
        /// The file's content id.
        id: FileId,
        /// Its length.
        size: u64,
        /// Its path in the tar (PAX or GNU long name when present), as bytes.
        path: Vec<u8>,
    },
    /// Data of a non-file entry, stored like a file but not counted as one.
    Data {
        /// The content id.
        id: FileId,
        /// Its length.
        size: u64,
    },
}

/// Builds a layer recipe, compressing as it goes.
pub(crate) struct RecipeWriter {
    enc: zstd::stream::write::Encoder<'static, Spill>,
    /// Raw bytes given since the last item: consecutive `raw` calls make one
    /// item, so a recipe does not depend on how its caller split them.
    pending: Vec<u8>,
}

impl RecipeWriter {
    /// A writer that keeps its output in memory.
    #[cfg(test)]
    pub fn new() -> Result<Self> {
        Self::spilling(None)
    }

    /// A writer whose output past `spill::SPILL_AT` goes to a file in
    /// `dir` (an ingest's recipe for a layer of a million files is ~50 MB).
    pub fn spilling(dir: Option<std::path::PathBuf>) -> Result<Self> {
        let mut head = Spill::new(dir);
        head.extend(MAGIC)?;
        head.extend(&VERSION.to_le_bytes())?;
        head.extend(&0u32.to_le_bytes())?;
        // Level 3: level 9 made the corpus base layer's recipe 8.5% smaller for ~3x the CPU;
        // level 1 costs base.tar no less CPU and makes header-heavy recipes 20-35% larger
        // (docs/benchmarks.md).
        let enc = zstd::stream::write::Encoder::new(head, 3).map_err(|e| Error::io("recipe encoder", e))?;
        Ok(RecipeWriter { enc, pending: Vec::new() })
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.enc.write_all(b).map_err(|e| Error::io("writing recipe", e))
    }

    pub fn raw(&mut self, mut b: &[u8]) -> Result<()> {
        // Full items go out at once; the rest waits for more, or the next item.
        while self.pending.len() + b.len() >= MAX_RAW as usize {
            let take = MAX_RAW as usize - self.pending.len();
            self.pending.extend_from_slice(&b[..take]);
            b = &b[take..];
            self.flush_raw()?;
        }
        self.pending.extend_from_slice(b);
        Ok(())
    }

    /// One raw item of exactly `b`, even right after another: how a forged
    /// recipe splits raw bytes, for tests of what readers refuse.
    #[cfg(test)]
    pub fn raw_item(&mut self, b: &[u8]) -> Result<()> {
        self.flush_raw()?;
        self.pending.extend_from_slice(b);
        self.flush_raw()
    }

    fn flush_raw(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let b = std::mem::take(&mut self.pending);
        self.put(&[TAG_RAW])?;
        self.put(&(b.len() as u32).to_le_bytes())?;
        self.put(&b)?;
        // Keep a small buffer for the next run; a long one's (up to MAX_RAW) goes.
        if b.capacity() <= 1 << 20 {
            self.pending = b;
            self.pending.clear();
        }
        Ok(())
    }

    pub fn file(&mut self, id: &FileId, size: u64, path: &[u8]) -> Result<()> {
        self.flush_raw()?;
        let plen = u32::try_from(path.len()).ok().filter(|l| *l <= MAX_PATH);
        let plen = plen.ok_or_else(|| Error::invalid(format!("entry path of {} bytes is too long", path.len())))?;
        self.put(&[TAG_FILE])?;
        self.put(id.as_bytes())?;
        self.put(&size.to_le_bytes())?;
        self.put(&plen.to_le_bytes())?;
        self.put(path)
    }

    pub fn data(&mut self, id: &FileId, size: u64) -> Result<()> {
        self.flush_raw()?;
        self.put(&[TAG_DATA])?;
        self.put(id.as_bytes())?;
        self.put(&size.to_le_bytes())
    }

    /// The recipe, in memory.
    #[cfg(test)]
    pub fn finish(self) -> Result<Vec<u8>> {
        self.finish_spilled()?.into_vec()
    }

    /// The recipe, where the writer left it.
    pub fn finish_spilled(mut self) -> Result<crate::spill::Spilled> {
        self.flush_raw()?;
        self.put(&[TAG_END])?;
        self.enc.finish().map_err(|e| Error::io("finishing recipe", e))?.finish()
    }
}

/// A recipe's first 16 bytes: magic, version, reserved.
fn check_head(b: &[u8]) -> Result<()> {
    if &b[..8] != MAGIC {
        return Err(Error::corrupt("not a layer recipe (bad magic)"));
    }
    let v = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if v != VERSION {
        return Err(Error::corrupt(format!("unsupported recipe version {v}")));
    }
    // Refused rather than ignored: a recipe from a hub is stored as it came,
    // and a field no writer sets must not carry anything into this store.
    if b[12..16] != [0; 4] {
        return Err(Error::corrupt("layer recipe: reserved header bytes are not zero"));
    }
    Ok(())
}

/// Streams the items of a stored layer recipe, held, borrowed or read.
pub struct RecipeReader<'a> {
    dec: zstd::stream::read::Decoder<'static, std::io::BufReader<Box<dyn Read + Send + 'a>>>,
    ended: bool,
}

impl RecipeReader<'static> {
    /// Open an encoded recipe.
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        RecipeReader::open(Cow::Owned(bytes))
    }
}

impl<'a> RecipeReader<'a> {
    /// Open an encoded recipe in place (a million-file layer's is ~50 MB).
    pub fn borrowed(bytes: &'a [u8]) -> Result<Self> {
        RecipeReader::open(Cow::Borrowed(bytes))
    }

    /// Open an encoded recipe read from `r` (e.g. [`crate::index::PartedReader`]).
    pub(crate) fn stream(mut r: impl Read + Send + 'a) -> Result<Self> {
        let mut head = [0u8; 16];
        r.read_exact(&mut head).map_err(|_| Error::corrupt("not a layer recipe (bad magic)"))?;
        check_head(&head)?;
        RecipeReader::decode(Box::new(r))
    }

    fn open(bytes: Cow<'a, [u8]>) -> Result<Self> {
        check_head(bytes.get(..16).ok_or_else(|| Error::corrupt("not a layer recipe (bad magic)"))?)?;
        let mut cur = std::io::Cursor::new(bytes);
        cur.set_position(16);
        RecipeReader::decode(Box::new(cur))
    }

    fn decode(r: Box<dyn Read + Send + 'a>) -> Result<Self> {
        let dec = zstd::stream::read::Decoder::new(r).map_err(|e| Error::io("recipe decoder", e))?;
        Ok(RecipeReader { dec, ended: false })
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.dec
            .read_exact(&mut b)
            .map_err(|e| Error::corrupt("layer recipe is truncated or damaged").with_source(e))?;
        Ok(b)
    }

    fn take_vec(&mut self, n: u32, limit: u32) -> Result<Vec<u8>> {
        if n > limit {
            return Err(Error::corrupt(format!("layer recipe declares a {n}-byte item (limit {limit})")));
        }
        let mut v = vec![0u8; n as usize];
        self.dec
            .read_exact(&mut v)
            .map_err(|e| Error::corrupt("layer recipe is truncated or damaged").with_source(e))?;
        Ok(v)
    }

    /// The next item, or `None` after the end marker.
    pub fn next_item(&mut self) -> Result<Option<RecipeItem>> {
        if self.ended {
            return Ok(None);
        }
        let [tag] = self.take::<1>()?;
        Ok(Some(match tag {
            TAG_END => {
                self.ended = true;
                return Ok(None);
            }
            TAG_RAW => {
                let n = u32::from_le_bytes(self.take()?);
                RecipeItem::Raw(self.take_vec(n, MAX_RAW)?)
            }
            TAG_FILE | TAG_DATA => {
                let id = FileId::from_bytes(self.take()?);
                let size = u64::from_le_bytes(self.take()?);
                if tag == TAG_DATA {
                    RecipeItem::Data { id, size }
                } else {
                    let n = u32::from_le_bytes(self.take()?);
                    RecipeItem::File { id, size, path: self.take_vec(n, MAX_PATH)? }
                }
            }
            t => return Err(Error::corrupt(format!("layer recipe has unknown item tag {t}"))),
        }))
    }
}

impl RecipeReader<'_> {
    /// After the end marker: whether nothing follows it (no bytes, no
    /// further frames), its frame's checksum checked.
    pub(crate) fn at_end(&mut self) -> Result<bool> {
        let mut b = [0u8; 1];
        loop {
            match self.dec.read(&mut b) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::corrupt("layer recipe is damaged after its end").with_source(e)),
            }
        }
    }
}

impl Iterator for RecipeReader<'_> {
    type Item = Result<RecipeItem>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_item().transpose()
    }
}

/// A file recipe: its size and its chunks in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecipe {
    /// The file's length in bytes.
    pub size: u64,
    /// Each chunk's id and raw length.
    pub chunks: Vec<(ChunkId, u32)>,
}

impl FileRecipe {
    /// `size u64 | count u32 | (chunk id [32] | len u32) * count`
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + 36 * self.chunks.len());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for (id, len) in &self.chunks {
            b.extend_from_slice(id.as_bytes());
            b.extend_from_slice(&len.to_le_bytes());
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        let bad = || Error::corrupt("file recipe is malformed");
        if b.len() < 12 {
            return Err(bad());
        }
        let size = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let n = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) as usize;
        if b.len() != 12 + 36 * n {
            return Err(bad());
        }
        let chunks = b[12..]
            .chunks_exact(36)
            .map(|c| {
                let id = ChunkId::from_bytes(c[..32].try_into().expect("32 bytes"));
                (id, u32::from_le_bytes(c[32..].try_into().expect("4 bytes")))
            })
            .collect();
        Ok(FileRecipe { size, chunks })
    }

    /// Whether the chunk lengths add up to the size.
    pub(crate) fn consistent(&self) -> bool {
        self.chunks.iter().map(|(_, l)| *l as u64).sum::<u64>() == self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_recipe_round_trip() {
        let mut w = RecipeWriter::new().unwrap();
        // Raw bytes given in parts are one item.
        w.raw(&[1]).unwrap();
        w.raw(&[]).unwrap();
        w.raw(&[2, 3]).unwrap();
        w.file(&FileId::of(b"x"), 1, b"etc/x").unwrap();
        w.data(&FileId::of(b"yy"), 2).unwrap();
        let bytes = w.finish().unwrap();
        let items: Vec<_> = RecipeReader::new(bytes.clone()).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(
            items,
            vec![
                RecipeItem::Raw(vec![1, 2, 3]),
                RecipeItem::File { id: FileId::of(b"x"), size: 1, path: b"etc/x".to_vec() },
                RecipeItem::Data { id: FileId::of(b"yy"), size: 2 },
            ]
        );
        // Streamed from a reader, the same.
        let streamed: Vec<_> = RecipeReader::stream(&bytes[..]).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(streamed, items);
        // A damaged recipe is an error, not a panic or a silent short read.
        for cut in [10, 17, bytes.len() - 1] {
            let r = RecipeReader::new(bytes[..cut].to_vec());
            assert!(r.map(|r| r.collect::<Result<Vec<_>>>()).and_then(|x| x).is_err());
            let r = RecipeReader::stream(&bytes[..cut]);
            assert!(r.map(|r| r.collect::<Result<Vec<_>>>()).and_then(|x| x).is_err());
        }
        // The reserved header word must be zero (found by the `bundle` fuzz
        // target: a hub could otherwise plant bytes in this store's recipes).
        let mut planted = bytes.clone();
        planted[13] = 43;
        assert!(RecipeReader::stream(&planted[..]).is_err());
        assert!(RecipeReader::new(planted).is_err());
    }

    /// A raw run longer than an item holds is cut every `MAX_RAW` bytes,
    /// however its parts were given.
    #[test]
    fn long_raw_runs_are_cut_at_the_item_limit() {
        let run: Vec<u8> = (0..MAX_RAW as usize * 2 + 1000).map(|i| (i % 251) as u8).collect();
        let items = |parts: &[usize]| {
            let mut w = RecipeWriter::new().unwrap();
            let mut at = 0;
            for &n in parts {
                w.raw(&run[at..at + n]).unwrap();
                at += n;
            }
            w.raw(&run[at..]).unwrap();
            let items: Vec<_> = RecipeReader::new(w.finish().unwrap()).unwrap().collect::<Result<_>>().unwrap();
            items.iter().map(|i| if let RecipeItem::Raw(b) = i { b.len() } else { 0 }).collect::<Vec<_>>()
        };
        let want = vec![MAX_RAW as usize, MAX_RAW as usize, 1000];
        assert_eq!(items(&[]), want);
        assert_eq!(items(&[5, MAX_RAW as usize, 7 << 20]), want);
    }

    #[test]
    fn file_recipe_round_trip() {
        let r = FileRecipe { size: 5, chunks: vec![(ChunkId::of(b"ab"), 2), (ChunkId::of(b"cde"), 3)] };
        assert_eq!(FileRecipe::decode(&r.encode()).unwrap(), r);
        assert!(r.consistent());
        assert!(FileRecipe::decode(&r.encode()[1..]).is_err());
    }
}
