//! A backend wrapper that fails on demand, to test that failures lose nothing.

use super::{Backend, PackBytes};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{LayerId, PackId};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Passes calls to an inner backend; `put_pack` fails once its budget is spent.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    puts_left: AtomicI64,
    reads_left: AtomicI64,
    layer_puts_left: AtomicI64,
}

impl FaultyBackend {
    /// Allow `puts` successful `put_pack` and `reads` successful reads (negative: unlimited).
    pub fn new(inner: Arc<dyn Backend>, puts: i64, reads: i64) -> Self {
        FaultyBackend {
            inner,
            puts_left: AtomicI64::new(puts),
            reads_left: AtomicI64::new(reads),
            layer_puts_left: AtomicI64::new(-1),
        }
    }

    /// Also allow only `n` successful `put_layer` calls (negative: unlimited, the default).
    pub fn with_layer_puts(self, n: i64) -> Self {
        self.layer_puts_left.store(n, Ordering::SeqCst);
        self
    }

    fn spend(budget: &AtomicI64, what: &str) -> Result<()> {
        if budget.load(Ordering::SeqCst) < 0 {
            return Ok(());
        }
        if budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            budget.store(0, Ordering::SeqCst);
            return Err(Error::new(ErrorKind::Io, format!("injected fault: {what}")));
        }
        Ok(())
    }
}

impl Backend for FaultyBackend {
    fn put_pack(&self, id: PackId, staged: &Path) -> Result<()> {
        Self::spend(&self.puts_left, "put_pack")?;
        self.inner.put_pack(id, staged)
    }
    fn read_pack(&self, id: PackId, offset: u64, len: usize) -> Result<PackBytes> {
        Self::spend(&self.reads_left, "read_pack")?;
        self.inner.read_pack(id, offset, len)
    }
    fn read_whole_pack(&self, id: PackId) -> Result<PackBytes> {
        Self::spend(&self.reads_left, "read_whole_pack")?;
        self.inner.read_whole_pack(id)
    }
    fn list_packs(&self) -> Result<Vec<PackId>> {
        self.inner.list_packs()
    }
    fn delete_pack(&self, id: PackId) -> Result<()> {
        self.inner.delete_pack(id)
    }
    fn pack_modified(&self, id: PackId) -> Result<Option<std::time::SystemTime>> {
        self.inner.pack_modified(id)
    }
    fn read_pack_ranges(&self, id: PackId, ranges: &[(u64, usize)]) -> Result<Vec<PackBytes>> {
        Self::spend(&self.reads_left, "read_pack_ranges")?;
        self.inner.read_pack_ranges(id, ranges)
    }
    fn put_layer(&self, id: &LayerId, object: &[u8]) -> Result<()> {
        Self::spend(&self.layer_puts_left, "put_layer")?;
        self.inner.put_layer(id, object)
    }
    fn put_layer_from(&self, id: &LayerId, len: u64, object: &mut dyn std::io::Read) -> Result<()> {
        Self::spend(&self.layer_puts_left, "put_layer")?;
        self.inner.put_layer_from(id, len, object)
    }
    fn get_layer(&self, id: &LayerId) -> Result<Vec<u8>> {
        self.inner.get_layer(id)
    }
    fn list_layers(&self) -> Result<Vec<LayerId>> {
        self.inner.list_layers()
    }
    fn delete_layer(&self, id: &LayerId) -> Result<()> {
        self.inner.delete_layer(id)
    }
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
}
