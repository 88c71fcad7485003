//! The pack file format (docs/format.md): a header, chunk entries, a trailer.
//!
//! ```text
//! header  16 B: "CSPACK\0\0" | version u32 = 1 | reserved u32 = 0
//! entry   40 B + data: chunk id [32] | raw_len u32 | stored_len u32 | data
//!         codec: stored_len == raw_len means raw bytes, else one zstd frame
//! trailer 24 B: "CSPKEND\0" | entry count u64 | data end offset u64
//! ```

use crate::error::{Error, Result};
use crate::ids::{ChunkId, PackId};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub(crate) const MAGIC: &[u8; 8] = b"CSPACK\0\0";
pub(crate) const TRAILER_MAGIC: &[u8; 8] = b"CSPKEND\0";
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: u64 = 16;
pub(crate) const ENTRY_HEADER_LEN: u64 = 40;
pub(crate) const TRAILER_LEN: u64 = 24;
/// Largest raw chunk a pack entry may declare; bounds decompression buffers.
pub(crate) const MAX_CHUNK: u32 = 16 << 20;
/// What a multipart pack upload first puts under the pack's name, to claim
/// it (`CLAIM_MAGIC` and 16 random bytes), before the parts replace it.
pub(crate) const CLAIM_MAGIC: &[u8; 8] = b"CSCLAIM1";
pub(crate) const CLAIM_LEN: usize = 24;

/// Whether `b` is an upload's claim marker, not a pack.
pub(crate) fn is_upload_claim(b: &[u8]) -> bool {
    b.len() == CLAIM_LEN && b.starts_with(CLAIM_MAGIC)
}

/// Where a chunk lives: the index's value for a ChunkId.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkLoc {
    pub pack: PackId,
    /// Offset of the entry's data (after its 40-byte entry header).
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    /// The chunk's dense number in this store (for possession bitmaps),
    /// assigned when the ingest that added it commits.
    pub num: u32,
}

impl ChunkLoc {
    pub const ENCODED_LEN: usize = 28;

    pub fn encode(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[0..8].copy_from_slice(&self.pack.0.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.stored_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.raw_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.num.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != Self::ENCODED_LEN {
            return Err(Error::corrupt(format!("chunk location of {} bytes", b.len())));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Ok(ChunkLoc {
            pack: PackId(u64_at(0)),
            offset: u64_at(8),
            stored_len: u32_at(16),
            raw_len: u32_at(20),
            num: u32_at(24),
        })
    }
}

/// Turn a chunk's stored bytes back into its raw bytes.
pub(crate) fn decode_chunk(stored: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decode_chunk_into(stored, raw_len, &mut out)?;
    Ok(out)
}

/// Append a chunk's raw bytes, decoded from its stored bytes, to `out`. zstd
/// writes straight into `out`'s spare capacity: no zeroed buffer, no copy.
pub(crate) fn decode_chunk_into(stored: &[u8], raw_len: u32, out: &mut Vec<u8>) -> Result<()> {
    if stored.len() == raw_len as usize {
        out.extend_from_slice(stored);
        return Ok(());
    }
    if raw_len > MAX_CHUNK {
        return Err(Error::corrupt(format!("chunk declares {raw_len} raw bytes, over the {MAX_CHUNK} limit")));
    }
    thread_local! {
        // One decompression context per thread: creating one per chunk cost
        // ~7% of a pull's CPU (docs/benchmarks.md).
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let start = out.len();
    out.reserve(raw_len as usize);
    // A frame that decodes to more than `raw_len` bytes (a damaged pack) may
    // write into the rest of the spare room, never past it, and is cut off below.
    let mut cur = std::io::Cursor::new(std::mem::take(out));
    cur.set_position(start as u64);
    let result = DCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        cell.as_mut().expect("set above").decompress_to_buffer(stored, &mut cur)
    });
    *out = cur.into_inner();
    let n = result.map_err(|e| {
        out.truncate(start);
        Error::corrupt("chunk does not decompress").with_source(e)
    })?;
    if n != raw_len as usize {
        out.truncate(start);
        return Err(Error::corrupt(format!("chunk decompressed to {n} bytes, expected {raw_len}")));
    }
    Ok(())
}

/// Choose how to store a chunk: zstd when that shrinks it, raw otherwise.
/// Returns `None` for raw (the caller keeps its own bytes).
pub(crate) fn compress_chunk(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    thread_local! {
        // One compression context per rayon worker: creating one per chunk costs more than small chunks do.
        static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
    }
    let c = CCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _)| *l != level) {
            *cell = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        cell.as_mut()?.1.compress(raw).ok()
    })?;
    // Equal lengths would read back as raw, so only strictly smaller wins.
    (c.len() < raw.len()).then_some(c)
}

/// Appends chunk entries to a new pack in the staging directory.
pub(crate) struct PackWriter {
    pub id: PackId,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    count: u64,
    /// Bytes already made durable by [`SYNC_EVERY`] syncs along the way.
    synced: u64,
}

/// Sync a pack being written every this many bytes, so that sealing it only
/// waits for the last few MiB: one fsync of a 64 MiB pack at the end of an
/// ingest stalls the whole pipeline (measured 18-32 ms for a 52 MB pack here).
const SYNC_EVERY: u64 = 8 << 20;

impl PackWriter {
    pub fn create(staging: &Path, id: PackId) -> Result<Self> {
        let path = staging.join(id.file_name());
        let file = File::create(&path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut w = PackWriter { id, path, out: BufWriter::with_capacity(1 << 20, file), len: 0, count: 0, synced: 0 };
        let mut h = [0u8; HEADER_LEN as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        w.write(&h)?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
        self.len += b.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Append one chunk; `stored` is its zstd frame, or its raw bytes when `stored.len() == raw_len`.
    pub fn append(&mut self, id: &ChunkId, raw_len: u32, stored: &[u8]) -> Result<ChunkLoc> {
        let stored_len = u32::try_from(stored.len()).map_err(|_| Error::invalid("chunk too large"))?;
        let mut h = [0u8; ENTRY_HEADER_LEN as usize];
        h[..32].copy_from_slice(id.as_bytes());
        h[32..36].copy_from_slice(&raw_len.to_le_bytes());
        h[36..40].copy_from_slice(&stored_len.to_le_bytes());
        self.write(&h)?;
        let offset = self.len;
        self.write(stored)?;
        self.count += 1;
        if self.len - self.synced >= SYNC_EVERY {
            self.out.flush().map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
            self.out.get_ref().sync_data().map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))?;
            self.synced = self.len;
        }
        Ok(ChunkLoc { pack: self.id, offset, stored_len, raw_len, num: 0 })
    }

    /// Write the trailer and flush (not sync); returns the staged file's path,
    /// its length and its entry count.
    pub fn finish(mut self) -> Result<(PathBuf, u64, u64)> {
        let mut t = [0u8; TRAILER_LEN as usize];
        t[..8].copy_from_slice(TRAILER_MAGIC);
        t[8..16].copy_from_slice(&self.count.to_le_bytes());
        t[16..24].copy_from_slice(&self.len.to_le_bytes());
        self.write(&t)?;
        // No fsync here: the backend's `put_pack` makes the pack durable where
        // it keeps it (the local one fsyncs this file; S3 uploads it).
        self.out.into_inner().map_err(|e| Error::io("flushing pack", e.into_error()))?;
        Ok((self.path, self.len, self.count))
    }
}

/// One entry found by [`scan`].
pub(crate) struct ScannedEntry {
    pub id: ChunkId,
    pub loc: ChunkLoc,
}

/// Walk a whole sealed pack, checking its framing (not the chunk hashes).
pub(crate) fn scan(pack: PackId, b: &[u8]) -> Result<Vec<ScannedEntry>> {
    let bad = |what: String| Error::corrupt(format!("pack {pack}: {what}"));
    let total = b.len() as u64;
    if total < HEADER_LEN + TRAILER_LEN || &b[..8] != MAGIC {
        return Err(bad("not a chunkstore pack (bad magic or too short)".into()));
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(format!("unsupported pack version {version}")));
    }
    let t = &b[(total - TRAILER_LEN) as usize..];
    if &t[..8] != TRAILER_MAGIC {
        return Err(bad("missing trailer (pack was not sealed)".into()));
    }
    let count = u64::from_le_bytes(t[8..16].try_into().expect("8 bytes"));
    let end = u64::from_le_bytes(t[16..24].try_into().expect("8 bytes"));
    if end != total - TRAILER_LEN {
        return Err(bad(format!("trailer says data ends at {end}, file has {}", total - TRAILER_LEN)));
    }
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < end {
        if end - pos < ENTRY_HEADER_LEN {
            return Err(bad(format!("truncated entry header at offset {pos}")));
        }
        let h = &b[pos as usize..(pos + ENTRY_HEADER_LEN) as usize];
        let id = ChunkId::from_bytes(h[..32].try_into().expect("32 bytes"));
        let raw_len = u32::from_le_bytes(h[32..36].try_into().expect("4 bytes"));
        let stored_len = u32::from_le_bytes(h[36..40].try_into().expect("4 bytes"));
        let offset = pos + ENTRY_HEADER_LEN;
        if offset + stored_len as u64 > end {
            return Err(bad(format!("entry at offset {pos} runs past the data end")));
        }
        out.push(ScannedEntry { id, loc: ChunkLoc { pack, offset, stored_len, raw_len, num: 0 } });
        pos = offset + stored_len as u64;
    }
    if out.len() as u64 != count {
        return Err(bad(format!("trailer counts {count} entries, found {}", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path(), PackId(3)).unwrap();
        let a = vec![7u8; 5000];
        let b = b"incompressible?".to_vec();
        let ca = compress_chunk(&a, 3).unwrap();
        assert!(compress_chunk(&b, 3).is_none());
        let la = w.append(&ChunkId::of(&a), a.len() as u32, &ca).unwrap();
        let lb = w.append(&ChunkId::of(&b), b.len() as u32, &b).unwrap();
        let (path, len, count) = w.finish().unwrap();
        assert_eq!(count, 2);
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.len() as u64, len);
        let e = scan(PackId(3), &bytes).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].loc, e[1].loc), (la, lb));
        let s = &bytes[la.offset as usize..][..la.stored_len as usize];
        assert_eq!(decode_chunk(s, la.raw_len).unwrap(), a);
        assert_eq!(ChunkLoc::decode(&la.encode()).unwrap(), la);
        // Truncation is detected, not mis-read.
        assert!(scan(PackId(3), &bytes[..bytes.len() - 1]).is_err());
    }
}
