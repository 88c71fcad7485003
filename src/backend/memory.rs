//! Packs held in memory, for tests and fuzzing.

use super::{check_range, Backend, PackBytes};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::LayerId;
use crate::ids::PackId;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A backend that keeps every pack in a map.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    packs: Mutex<BTreeMap<PackId, Arc<Vec<u8>>>>,
    layers: Mutex<BTreeMap<LayerId, Vec<u8>>>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, id: PackId) -> Result<Arc<Vec<u8>>> {
        self.packs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("pack {id} is not in the backend")))
    }
}

impl Backend for MemoryBackend {
    fn put_pack(&self, id: PackId, staged: &Path) -> Result<()> {
        let data = std::fs::read(staged).map_err(|e| Error::io(format!("reading {}", staged.display()), e))?;
        let mut packs = self.packs.lock().unwrap_or_else(|p| p.into_inner());
        if packs.contains_key(&id) {
            return Err(Error::new(ErrorKind::AlreadyExists, format!("pack {id} already exists")));
        }
        packs.insert(id, Arc::new(data));
        let _ = std::fs::remove_file(staged);
        Ok(())
    }

    fn read_pack(&self, id: PackId, offset: u64, len: usize) -> Result<PackBytes> {
        let data = self.get(id)?;
        let (s, e) = check_range(id, data.len(), offset, len)?;
        Ok(PackBytes::new(data, s, e))
    }

    fn read_whole_pack(&self, id: PackId) -> Result<PackBytes> {
        let data = self.get(id)?;
        let n = data.len();
        Ok(PackBytes::new(data, 0, n))
    }

    fn list_packs(&self) -> Result<Vec<PackId>> {
        Ok(self.packs.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect())
    }

    fn delete_pack(&self, id: PackId) -> Result<()> {
        self.packs.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        Ok(())
    }

    fn put_layer(&self, id: &LayerId, object: &[u8]) -> Result<()> {
        self.layers.lock().unwrap_or_else(|p| p.into_inner()).insert(*id, object.to_vec());
        Ok(())
    }

    fn get_layer(&self, id: &LayerId) -> Result<Vec<u8>> {
        let layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        layers.get(id).cloned().ok_or_else(|| Error::not_found(format!("layer object {id} is not in the backend")))
    }

    fn list_layers(&self) -> Result<Vec<LayerId>> {
        Ok(self.layers.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect())
    }

    fn delete_layer(&self, id: &LayerId) -> Result<()> {
        self.layers.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }
}
