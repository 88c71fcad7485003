//! The one seam for pack storage. Packs are written and sealed locally, then
//! handed whole to a backend as immutable objects, and read back by byte range:
//! a local directory today, an S3-compatible object store next.

mod fault;
mod local;
mod memory;

pub use fault::FaultyBackend;
pub use local::LocalBackend;
pub use memory::MemoryBackend;

use crate::error::Result;
use crate::ids::PackId;
use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// Where sealed packs live.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Store the sealed pack at `staged` (a local file the backend may consume)
    /// as pack `id`. Durable when this returns. Never overwrites an existing pack.
    fn put_pack(&self, id: PackId, staged: &Path) -> Result<()>;
    /// `len` bytes of pack `id` starting at `offset`.
    fn read_pack(&self, id: PackId, offset: u64, len: usize) -> Result<PackBytes>;
    /// The whole pack.
    fn read_whole_pack(&self, id: PackId) -> Result<PackBytes>;
    /// Every pack the backend holds.
    fn list_packs(&self) -> Result<Vec<PackId>>;
    /// Remove a pack; removing an absent pack is not an error.
    fn delete_pack(&self, id: PackId) -> Result<()>;
}

/// Bytes read from a pack, sharing the backend's buffer or mapping.
#[derive(Clone)]
pub struct PackBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    end: usize,
}

impl PackBytes {
    pub(crate) fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, start: usize, end: usize) -> Self {
        debug_assert!(start <= end && end <= (*owner).as_ref().len());
        PackBytes { owner, start, end }
    }
}

impl Deref for PackBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.end]
    }
}

/// Check a requested range against an object's length.
pub(crate) fn check_range(id: PackId, total: usize, offset: u64, len: usize) -> Result<(usize, usize)> {
    let start = usize::try_from(offset).ok().filter(|s| *s <= total);
    match start.and_then(|s| s.checked_add(len).filter(|e| *e <= total).map(|e| (s, e))) {
        Some(r) => Ok(r),
        None => Err(crate::Error::corrupt(format!("pack {id}: range {offset}+{len} is past its end ({total} bytes)"))),
    }
}
