//! The "unsettled" marker: a file in the store directory that exists while
//! the backend may hold packs or layer objects the index does not name.
//!
//! A writer creates it (durably) before its first backend write and removes it
//! when the store closes cleanly. Opening a store scans the backend for
//! orphans only when the marker is there, so an open costs the same for ten
//! layers or a hundred thousand, and a crash at any instant is still cleaned
//! up: whatever a killed writer published, it had marked first.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const NAME: &str = "unsettled";

#[derive(Debug)]
pub(crate) struct Unsettled {
    dir: PathBuf,
    /// The marker was there when the store opened (a writer did not finish).
    found: bool,
    /// This process created (or found) the marker and it is still there.
    marked: Mutex<bool>,
    /// Something this process published may be left unnamed (a failed
    /// clean-up): leave the marker for the next open.
    keep: AtomicBool,
}

impl Unsettled {
    /// Look for the marker in store directory `dir`.
    pub fn open(dir: &Path) -> Unsettled {
        let found = dir.join(NAME).exists();
        Unsettled { dir: dir.to_path_buf(), found, marked: Mutex::new(found), keep: AtomicBool::new(false) }
    }

    /// Whether a writer left the marker behind: the open must reclaim.
    pub fn found(&self) -> bool {
        self.found
    }

    /// Make sure the marker exists and is durable; call before any backend write.
    pub fn mark(&self) -> Result<()> {
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        if *marked {
            return Ok(());
        }
        let path = self.dir.join(NAME);
        let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
        std::fs::File::create(&path).map_err(|e| io("creating", e))?;
        // The directory entry must be on disk before anything it guards is.
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing the directory of", e))?;
        *marked = true;
        Ok(())
    }

    /// Leave the marker for the next open, which then reclaims what is unnamed.
    pub fn keep(&self) {
        self.keep.store(true, Ordering::SeqCst);
    }

    /// Remove the marker: the open reclaimed everything unnamed, or the
    /// store is closing with nothing left unnamed. Not synced: if the removal
    /// is lost, the next open merely scans once more.
    pub fn clear(&self) {
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        if *marked && !self.keep.load(Ordering::SeqCst) && std::fs::remove_file(self.dir.join(NAME)).is_ok() {
            *marked = false;
        }
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        // A panicking writer may have published what it could not clean up.
        if !std::thread::panicking() {
            self.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_outlives_a_writer_that_keeps_it_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join(NAME);
        let u = Unsettled::open(dir.path());
        assert!(!u.found());
        u.mark().unwrap();
        assert!(marker.exists());
        drop(u);
        assert!(!marker.exists(), "a clean close removes it");

        let u = Unsettled::open(dir.path());
        u.mark().unwrap();
        u.keep();
        drop(u);
        assert!(marker.exists(), "a failed clean-up leaves it");
        let u = Unsettled::open(dir.path());
        assert!(u.found());
        u.clear();
        assert!(!marker.exists(), "an open that reclaimed clears it");
    }
}
