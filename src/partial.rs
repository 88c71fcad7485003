//! Resuming an interrupted dedup pull. The bytes of the hub's dedup tarball
//! an edge has received are kept in `<store>/partial/`; run again, the pull
//! asks the hub for the rest (`?offset=N`) and goes on only if the BLAKE3 of
//! the N bytes the hub leaves out is that of the bytes kept (see
//! docs/protocol.md). The kept bytes are read back from disk and applied
//! with the rest, so what crosses the network is only what was missing.

use crate::error::{Error, Result};
use crate::ids::{ClientId, LayerId};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// How long kept bytes stay for a pull to resume from.
const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The kept bytes of one client's dedup tarball of one layer.
pub(crate) struct Partial {
    path: PathBuf,
}

impl Partial {
    pub fn new(store_dir: &Path, client: &ClientId, layer: &LayerId) -> Partial {
        // Client names are [a-z0-9._-] and never start with a dot.
        let name = format!("dedup-{client}-{}", hex::encode(layer.as_bytes()));
        Partial { path: store_dir.join("partial").join(name) }
    }

    /// Bytes kept from an interrupted pull, and their BLAKE3 (hex).
    pub fn held(&self) -> Result<Option<(u64, String)>> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("opening", e)),
        };
        let mut h = blake3::Hasher::new();
        let n = std::io::copy(&mut f, &mut h).map_err(|e| self.io("reading", e))?;
        Ok((n > 0).then(|| (n, h.finalize().to_hex().to_string())))
    }

    /// Keep the first `keep` bytes (0 starts over): returns a reader of them
    /// and a writer that appends what arrives next.
    pub fn start(&self, keep: u64) -> Result<(std::io::Take<File>, File)> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io("creating the directory of", e))?;
        }
        let mut out = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
            .map_err(|e| self.io("opening", e))?;
        out.set_len(keep).map_err(|e| self.io("truncating", e))?;
        out.seek(std::io::SeekFrom::End(0)).map_err(|e| self.io("seeking in", e))?;
        let kept = File::open(&self.path).map_err(|e| self.io("opening", e))?.take(keep);
        Ok((kept, out))
    }

    /// Delete what interrupted pulls of any layer left in `store_dir` more
    /// than [`KEEP_FOR`] ago: a pull never run again must not leave its bytes
    /// for good.
    pub fn expire(store_dir: &Path) {
        let Ok(dir) = std::fs::read_dir(store_dir.join("partial")) else { return };
        for e in dir.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if old.is_some_and(|age| age > KEEP_FOR) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Forget the kept bytes (the layer is here, or they cannot be used).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    fn io(&self, what: &str, e: std::io::Error) -> Error {
        Error::io(format!("{what} {}", self.path.display()), e)
    }
}

/// Reads from `inner` and appends what it reads to `out`. A failed write
/// only stops the copying (the pull goes on; it just cannot resume).
pub(crate) struct Tee<R> {
    pub inner: R,
    pub out: Option<File>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(b)?;
        if let Some(out) = &mut self.out {
            if let Err(e) = out.write_all(&b[..n]) {
                tracing::warn!(error = %e, "cannot keep the dedup tarball for a resume");
                self.out = None;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_bytes_are_hashed_truncated_and_appended() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partial::new(dir.path(), &ClientId::new("edge-1").unwrap(), &LayerId::from_bytes([7; 32]));
        assert!(p.held().unwrap().is_none());
        let (mut kept, out) = p.start(0).unwrap();
        let mut t = Tee { inner: &b"hello world"[..], out: Some(out) };
        std::io::copy(&mut t, &mut std::io::sink()).unwrap();
        assert_eq!(std::io::copy(&mut kept, &mut std::io::sink()).unwrap(), 0);
        let (n, h) = p.held().unwrap().unwrap();
        assert_eq!((n, h), (11, blake3::hash(b"hello world").to_hex().to_string()));

        let (mut kept, out) = p.start(5).unwrap();
        let mut back = Vec::new();
        kept.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"hello");
        let mut t = Tee { inner: &b", there"[..], out: Some(out) };
        std::io::copy(&mut t, &mut std::io::sink()).unwrap();
        assert_eq!(std::fs::read(&p.path).unwrap(), b"hello, there");
        p.remove();
        assert!(p.held().unwrap().is_none());
    }

    #[test]
    fn only_old_kept_bytes_expire() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = Partial::new(dir.path(), &ClientId::new("e").unwrap(), &LayerId::from_bytes([1; 32]));
        let old = Partial::new(dir.path(), &ClientId::new("e").unwrap(), &LayerId::from_bytes([2; 32]));
        for p in [&fresh, &old] {
            let (_, mut out) = p.start(0).unwrap();
            out.write_all(b"kept").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - KEEP_FOR - std::time::Duration::from_secs(60);
        File::options().write(true).open(&old.path).unwrap().set_modified(long_ago).unwrap();
        Partial::expire(dir.path());
        assert!(fresh.held().unwrap().is_some());
        assert!(old.held().unwrap().is_none());
    }
}
