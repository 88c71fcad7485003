//! The one seam for storage objects. Packs are written and sealed locally,
//! then handed whole to a backend as immutable objects, and read back by byte
//! range. Every layer also has a **layer object** (its record and recipes,
//! see [`crate::Store::reindex`]) so the index can be rebuilt from the backend
//! alone. Implementations: a local directory (the default), memory, a
//! fault-injecting wrapper, and an S3-compatible object store (feature `s3`).

mod fault;
mod local;
mod memory;
#[cfg(feature = "s3")]
mod s3;

pub use fault::FaultyBackend;
pub(crate) use local::sync_dir;
pub use local::LocalBackend;
pub use memory::MemoryBackend;
#[cfg(feature = "s3")]
pub use s3::{S3Backend, S3Options, S3Stats};

use crate::error::{Error, Result};
use crate::ids::{LayerId, PackId};
use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// Where sealed packs and layer objects live.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Store the sealed pack at `staged` (a local file the backend may consume)
    /// as pack `id`. Never overwrites an existing pack: that fails with
    /// [`crate::ErrorKind::AlreadyExists`], and the caller picks another id.
    /// Durable when this returns, or, for a backend that uploads in the
    /// background, once [`Backend::flush`] returns Ok.
    fn put_pack(&self, id: PackId, staged: &Path) -> Result<()>;
    /// Wait until every pack `put_pack` accepted is durable; the first that
    /// could not be stored is reported (and is not in the backend).
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    /// `len` bytes of pack `id` starting at `offset`.
    fn read_pack(&self, id: PackId, offset: u64, len: usize) -> Result<PackBytes>;
    /// Several ranges `(offset, len)` of one pack, in the order asked. Remote
    /// backends fetch them in as few requests as they can.
    fn read_pack_ranges(&self, id: PackId, ranges: &[(u64, usize)]) -> Result<Vec<PackBytes>> {
        ranges.iter().map(|&(o, l)| self.read_pack(id, o, l)).collect()
    }
    /// The whole pack.
    fn read_whole_pack(&self, id: PackId) -> Result<PackBytes>;
    /// Every pack the backend holds.
    fn list_packs(&self) -> Result<Vec<PackId>>;
    /// Remove a pack; removing an absent pack is not an error.
    fn delete_pack(&self, id: PackId) -> Result<()>;
    /// When pack `id` was last written, if the backend knows (`gc` deletes
    /// an unnamed pack only once it is old enough; unknown counts as new).
    fn pack_modified(&self, id: PackId) -> Result<Option<std::time::SystemTime>> {
        let _ = id;
        Ok(None)
    }
    /// Store (or atomically replace) layer `id`'s layer object. Durable when
    /// this returns.
    fn put_layer(&self, id: &LayerId, object: &[u8]) -> Result<()>;
    /// [`Backend::put_layer`] of the `len` bytes `object` reads: a backend
    /// that can write them as they come spares holding them (an ingest's
    /// object for a layer of a million files is ~140 MB, read from its
    /// spill files). An error reading `object` fails the put.
    fn put_layer_from(&self, id: &LayerId, len: u64, object: &mut dyn std::io::Read) -> Result<()> {
        self.put_layer(id, &read_object(id, len, object)?)
    }
    /// Layer `id`'s layer object; [`crate::ErrorKind::NotFound`] if absent.
    fn get_layer(&self, id: &LayerId) -> Result<Vec<u8>>;
    /// Every layer object the backend holds.
    fn list_layers(&self) -> Result<Vec<LayerId>>;
    /// Remove a layer object; removing an absent one is not an error.
    fn delete_layer(&self, id: &LayerId) -> Result<()>;
    /// True when other processes may write to the same backend (a shared
    /// bucket): a pack this store's index does not name may then be another
    /// writer's upload in flight, so opening never deletes "orphans".
    fn is_shared(&self) -> bool {
        false
    }
}

/// Bytes read from a pack, sharing the backend's buffer or mapping.
#[derive(Clone)]
pub struct PackBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    end: usize,
}

impl PackBytes {
    /// Bytes `start..end` of `owner` (for backends outside this crate).
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, start: usize, end: usize) -> Self {
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

/// The file or object name of a layer object: `<64 hex diff_id>.layer`.
pub(crate) fn layer_object_name(id: &LayerId) -> String {
    format!("{}.layer", id.to_hex())
}

/// Parse a name made by [`layer_object_name`].
pub(crate) fn parse_layer_object_name(name: &str) -> Option<LayerId> {
    let h = name.strip_suffix(".layer")?;
    if h.len() != 64 || !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    LayerId::parse(h).ok()
}

/// The `len` bytes of layer `id`'s object that `r` reads, in memory.
pub(crate) fn read_object(id: &LayerId, len: u64, r: &mut dyn std::io::Read) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    std::io::Read::read_to_end(&mut std::io::Read::take(r, len), &mut out)
        .map_err(|e| Error::io(format!("reading layer object {id} to store it"), e))?;
    if out.len() as u64 != len {
        return Err(Error::io(
            format!("reading layer object {id} to store it"),
            std::io::Error::other(format!("{} of {len} bytes", out.len())),
        ));
    }
    Ok(out)
}
