//! Ingest input plumbing: compression by magic bytes, byte counting for
//! progress and error offsets, and SHA-256 digests computed as the bytes pass.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// SHA-256 of everything read through it, hashed inline: no copies and no
/// thread (the ingest pipeline keeps both cores busy anyway).
pub(crate) struct HashingReader<R> {
    inner: R,
    state: Arc<Mutex<(Sha256, u64)>>,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> (Self, DigestHandle) {
        let state = Arc::new(Mutex::new((Sha256::new(), 0)));
        (HashingReader { inner, state: state.clone() }, DigestHandle(state))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.0.update(&buf[..n]);
            s.1 += n as u64;
        }
        Ok(n)
    }
}

/// The digest of a [`HashingReader`], read once the stream is consumed.
pub(crate) struct DigestHandle(Arc<Mutex<(Sha256, u64)>>);

impl DigestHandle {
    /// The SHA-256 and byte count of everything read so far.
    pub fn finish(self) -> ([u8; 32], u64) {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (s.0.clone().finalize().into(), s.1)
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
            } else {
                format!("corrupt {} data near compressed offset {at}: {e}", self.format)
            };
            Error::invalid(msg).into()
        })
    }
}

/// The decompressed stream with its digests.
pub(crate) struct OpenedInput<'a> {
    pub reader: Box<dyn Read + 'a>,
    pub compression: Compression,
    /// SHA-256 of the uncompressed tar (the diff_id).
    pub tar_digest: DigestHandle,
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
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
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
            let (tee, digest) = HashingReader::new(raw);
            let buffered = BufReader::with_capacity(256 * 1024, tee);
            let (format, dec): (_, Box<dyn Read + 'a>) = if c == Compression::Gzip {
                ("gzip", Box::new(flate2::bufread::MultiGzDecoder::new(buffered)))
            } else {
                let d = zstd::stream::read::Decoder::with_buffer(buffered).map_err(|e| Error::io("zstd decoder", e))?;
                ("zstd", Box::new(d))
            };
            (Box::new(DecodeErrors { inner: dec, format, count: counter }), Some(digest))
        }
    };
    let (tee, tar_digest) = HashingReader::new(reader);
    let reader = Box::new(BufReader::with_capacity(1 << 20, tee));
    Ok(OpenedInput { reader, compression, tar_digest, blob_digest })
}
