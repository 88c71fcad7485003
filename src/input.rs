//! Ingest input plumbing: compression by magic bytes, byte counting for
//! progress and error offsets, and SHA-256 digests computed on helper threads
//! (of the compressed blob here, of the tar over the walk's batches).

use crate::error::{Error, Result};
use crossbeam_channel::{bounded, Sender};
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How a layer blob arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    pub(crate) fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Zstd => 2,
        }
    }
    pub(crate) fn from_code(c: u8) -> Result<Self> {
        Ok(match c {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Zstd,
            _ => return Err(Error::corrupt(format!("unknown compression code {c}"))),
        })
    }

    /// The inverse of `Display`.
    #[cfg(feature = "client")]
    pub(crate) fn from_name(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Counts bytes read, for progress and for error offsets in compressed input.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Bytes read from the input at a time: each block is hashed whole on a
/// helper thread while the walk consumes it.
const BLOCK: usize = 1 << 20;
/// Blocks read ahead of the hashing thread.
const BLOCKS_AHEAD: usize = 4;

/// Reads compressed input in blocks and hands each block, shared rather than
/// copied, to a thread that computes the blob's SHA-256 beside the decoder.
/// Also the decoder's input buffer: it implements [`BufRead`].
pub(crate) struct HashedBlocks<R> {
    inner: R,
    block: Arc<Vec<u8>>,
    pos: usize,
    tx: Option<Sender<Arc<Vec<u8>>>>,
    /// An input error met after part of a block was read, reported once that part is consumed.
    pending: Option<io::Error>,
}

impl<R: Read> HashedBlocks<R> {
    fn new(inner: R) -> Result<(Self, DigestHandle)> {
        let (tx, handle) = hash_beside(BLOCKS_AHEAD)?;
        let r = HashedBlocks { inner, block: Arc::new(Vec::new()), pos: 0, tx: Some(tx), pending: None };
        Ok((r, handle))
    }

    /// Read the next block (up to [`BLOCK`] bytes; empty at the end of input).
    fn refill(&mut self) -> io::Result<()> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        // Reuse the last block once the hashing thread is done with it.
        let mut b = match Arc::try_unwrap(std::mem::take(&mut self.block)) {
            Ok(mut b) => {
                b.resize(BLOCK, 0);
                b
            }
            Err(_) => vec![0u8; BLOCK],
        };
        let mut n = 0;
        while n < BLOCK {
            match self.inner.read(&mut b[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if n == 0 => return Err(e),
                Err(e) => {
                    self.pending = Some(e);
                    break;
                }
            }
        }
        b.truncate(n);
        self.block = Arc::new(b);
        self.pos = 0;
        if n > 0 {
            if let Some(tx) = &self.tx {
                // The hashing thread only stops when we drop the sender.
                let _ = tx.send(self.block.clone());
            }
        }
        Ok(())
    }
}

impl<R: Read> BufRead for HashedBlocks<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.block.len() {
            self.refill()?;
        }
        Ok(&self.block[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.block.len());
    }
}

impl<R: Read> Read for HashedBlocks<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// SHA-256 of the byte runs sent to the returned channel, in order, computed
/// on a helper thread; `ahead` runs may wait for it. Drop the sender, then
/// [`DigestHandle::finish`].
pub(crate) fn hash_beside<T: AsRef<[u8]> + Send + Sync + 'static>(
    ahead: usize,
) -> Result<(Sender<Arc<T>>, DigestHandle)> {
    let (tx, rx) = bounded::<Arc<T>>(ahead);
    let handle = std::thread::Builder::new()
        .name("chunkstore-sha256".into())
        .spawn(move || {
            let mut h = Sha256::new();
            let mut n = 0u64;
            for b in rx {
                let b = (*b).as_ref();
                n += b.len() as u64;
                h.update(b);
            }
            (h.finalize().into(), n)
        })
        .map_err(|e| Error::io("spawning the hashing thread", e))?;
    Ok((tx, DigestHandle(handle)))
}

/// The digest of a [`HashedBlocks`] stream or a [`hash_beside`] channel,
/// ready once the stream or sender is dropped.
pub(crate) struct DigestHandle(JoinHandle<([u8; 32], u64)>);

impl DigestHandle {
    /// The SHA-256 and byte count of everything read from the input.
    pub fn finish(self) -> ([u8; 32], u64) {
        self.0.join().expect("the hashing thread does not panic")
    }
}

/// Turns decoder failures into input errors that say where.
struct DecodeErrors<R> {
    inner: R,
    format: &'static str,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for DecodeErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let at = self.count.load(Ordering::Relaxed);
            let msg = if e.kind() == io::ErrorKind::UnexpectedEof {
                format!("truncated {} stream (input ends at compressed offset {at})", self.format)
            } else if e.get_ref().is_some_and(|i| i.is::<AfterGzip>()) {
                format!("{e} (near compressed offset {at})")
            } else if self.format == "zstd" && e.to_string().contains("too much memory") {
                // zstd's default limit: a window of 2^27 bytes (`zstd --long=27`).
                format!(
                    "zstd frame near compressed offset {at} needs a window over 128 MiB (made with \
                     `zstd --long=28` or more?); chunkstore decodes windows up to 128 MiB to bound its memory"
                )
            } else {
                format!("corrupt {} data near compressed offset {at}: {e}", self.format)
            };
            Error::invalid(msg).into()
        })
    }
}

/// Data after the last gzip member that is neither padding nor a member.
#[derive(Debug)]
struct AfterGzip;

impl std::fmt::Display for AfterGzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("data after the end of the gzip stream that is not another gzip member")
    }
}

impl std::error::Error for AfterGzip {}

/// gzip members one after another, read as `gzip -d` reads them: zero bytes
/// after a member are padding (tape blocking, some registries' writers), so
/// they end the stream; anything else there must be another member.
/// (flate2's MultiGzDecoder refuses the padding as a bad header.)
enum GzMembers<R: BufRead> {
    Member(Box<flate2::bufread::GzDecoder<R>>),
    Between(R),
    Padding(R),
    Poisoned,
}

impl<R: BufRead> GzMembers<R> {
    fn new(r: R) -> Self {
        GzMembers::Member(Box::new(flate2::bufread::GzDecoder::new(r)))
    }
}

impl<R: BufRead> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match std::mem::replace(self, GzMembers::Poisoned) {
                GzMembers::Member(mut d) => {
                    let n = match d.read(buf) {
                        Ok(n) => n,
                        Err(e) => {
                            // Interrupted is retried by the caller.
                            *self = GzMembers::Member(d);
                            return Err(e);
                        }
                    };
                    *self = if n == 0 && !buf.is_empty() {
                        GzMembers::Between(d.into_inner())
                    } else {
                        GzMembers::Member(d)
                    };
                    if n > 0 || buf.is_empty() {
                        return Ok(n);
                    }
                }
                GzMembers::Between(mut r) => match r.fill_buf()?.first() {
                    None => {
                        *self = GzMembers::Between(r);
                        return Ok(0);
                    }
                    Some(0) => *self = GzMembers::Padding(r),
                    Some(0x1f) => *self = GzMembers::new(r),
                    Some(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, AfterGzip)),
                },
                GzMembers::Padding(mut r) => {
                    let b = r.fill_buf()?;
                    if b.iter().any(|&x| x != 0) {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, AfterGzip));
                    }
                    let n = b.len();
                    r.consume(n);
                    *self = GzMembers::Padding(r);
                    if n == 0 {
                        return Ok(0);
                    }
                }
                GzMembers::Poisoned => return Err(io::Error::other("gzip reader used after an error")),
            }
        }
    }
}

/// The decompressed stream, unbuffered, and the compressed blob's digest.
/// (The walk hashes the tar itself: see `batchbuf`.)
pub(crate) struct OpenedInput<'a> {
    pub reader: Box<dyn Read + 'a>,
    pub compression: Compression,
    /// SHA-256 of the compressed blob, when it was compressed.
    pub blob_digest: Option<DigestHandle>,
}

/// Detect compression and build the reading pipeline. `counter` receives the
/// count of input bytes consumed.
pub(crate) fn open<'a, R: Read + 'a>(mut r: R, counter: Arc<AtomicU64>) -> Result<OpenedInput<'a>> {
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(crate::error::from_io(e, "reading input")),
        }
    }
    let head_bytes = head[..n].to_vec();
    let compression = match &head[..n] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        // A zstd frame, or a skippable frame (magic 0x184D2A50-5F) that a zstd stream may begin with.
        [0x28, 0xb5, 0x2f, 0xfd, ..] | [0x50..=0x5f, 0x2a, 0x4d, 0x18, ..] => Compression::Zstd,
        [0xfd, b'7', b'z', b'X', b'Z', 0] => {
            return Err(Error::invalid("unsupported compression: xz (use tar, gzip or zstd)"))
        }
        [b'B', b'Z', b'h', ..] => return Err(Error::invalid("unsupported compression: bzip2 (use tar, gzip or zstd)")),
        [0x04, 0x22, 0x4d, 0x18, ..] => {
            return Err(Error::invalid("unsupported compression: lz4 (use tar, gzip or zstd)"))
        }
        _ => Compression::None,
    };
    let raw = Counting { inner: io::Cursor::new(head_bytes).chain(r), count: counter.clone() };
    let (reader, blob_digest): (Box<dyn Read + 'a>, _) = match compression {
        Compression::None => (Box::new(raw), None),
        c => {
            let (blocks, digest) = HashedBlocks::new(raw)?;
            let (format, dec): (_, Box<dyn Read + 'a>) = if c == Compression::Gzip {
                ("gzip", Box::new(GzMembers::new(blocks)))
            } else {
                let d = zstd::stream::read::Decoder::with_buffer(blocks).map_err(|e| Error::io("zstd decoder", e))?;
                ("zstd", Box::new(d))
            };
            (Box::new(DecodeErrors { inner: dec, format, count: counter }), Some(digest))
        }
    };
    Ok(OpenedInput { reader, compression, blob_digest })
}
