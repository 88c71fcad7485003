//! Bytes an ingest appends during its walk and reads back whole at its
//! commit (new chunk rows, the layer object's files section, the layer
//! recipe): in memory up
//! to [`SPILL_AT`], then in a file in the store's `tmp/`, so that a layer of
//! a million small files does not hold them beside the walk's maps. The file
//! is unlinked as soon as it is open: a killed ingest leaves nothing behind.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes kept in memory before the rest goes to a file: a layer of a few
/// thousand files never touches the disk for this.
pub(crate) const SPILL_AT: usize = 16 << 20;

#[derive(Default)]
pub(crate) struct Spill {
    /// Where to create the file; `None`: keep everything in memory.
    dir: Option<PathBuf>,
    mem: Vec<u8>,
    file: Option<BufWriter<File>>,
    len: usize,
}

impl Spill {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Spill { dir, ..Spill::default() }
    }

    /// Bytes appended so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn extend(&mut self, b: &[u8]) -> Result<()> {
        if self.file.is_none() && self.mem.len() + b.len() > SPILL_AT {
            if let Some(dir) = &self.dir {
                let mut f = BufWriter::with_capacity(1 << 20, unlinked_file(dir)?);
                f.write_all(&self.mem).map_err(|e| io_err(dir, e))?;
                self.mem = Vec::new();
                self.file = Some(f);
            }
        }
        match &mut self.file {
            Some(f) => f.write_all(b).map_err(|e| io_err(self.dir.as_ref().expect("a file has a dir"), e))?,
            None => self.mem.extend_from_slice(b),
        }
        self.len += b.len();
        Ok(())
    }

    /// Everything appended, in order.
    pub fn into_vec(self) -> Result<Vec<u8>> {
        let Some(f) = self.file else { return Ok(self.mem) };
        let dir = self.dir.expect("a file has a dir");
        let mut f = f.into_inner().map_err(|e| io_err(&dir, e.into_error()))?;
        let mut out = Vec::with_capacity(self.len);
        f.seek(SeekFrom::Start(0)).and_then(|_| f.read_to_end(&mut out)).map_err(|e| io_err(&dir, e))?;
        if out.len() != self.len {
            return Err(Error::io(
                format!("reading back an ingest's spill file in {}", dir.display()),
                std::io::Error::other(format!("{} bytes written, {} read", self.len, out.len())),
            ));
        }
        Ok(out)
    }
}

impl Write for Spill {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.extend(b).map_err(std::io::Error::other)?;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A new file in `dir`, already unlinked. The store is one process's at a
/// time (redb's lock), so the pid and a counter make its name unique.
fn unlinked_file(dir: &std::path::Path) -> Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!("spill-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    std::fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    Ok(f)
}

fn io_err(dir: &std::path::Path, e: std::io::Error) -> Error {
    Error::io(format!("an ingest's spill file in {}", dir.display()), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_past_the_limit_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::new(Some(dir.path().to_path_buf()));
        let mut want = Vec::new();
        for i in 0..(SPILL_AT / 1000 + 500) {
            let b = format!("{i:0999}\n");
            s.extend(b.as_bytes()).unwrap();
            want.extend_from_slice(b.as_bytes());
        }
        assert!(s.file.is_some(), "spilled");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the file is unlinked");
        assert_eq!(s.len(), want.len());
        assert!(s.into_vec().unwrap() == want);
        // Without a directory, or under the limit: memory only.
        let mut m = Spill::new(None);
        m.extend(&vec![7; SPILL_AT + 1]).unwrap();
        assert!(m.file.is_none());
        assert_eq!(m.into_vec().unwrap().len(), SPILL_AT + 1);
    }
}
