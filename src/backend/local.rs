//! Packs as files under `<store>/packs/<xx>/<id>.pack`, read through mmap.

use super::{check_range, Backend, PackBytes};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::PackId;
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The embedded default: a directory of sealed pack files.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    maps: RwLock<HashMap<PackId, Arc<Mmap>>>,
}

impl LocalBackend {
    /// Use (and create) `root` as the pack directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        Ok(LocalBackend { root, maps: RwLock::new(HashMap::new()) })
    }

    fn path(&self, id: PackId) -> PathBuf {
        self.root.join(format!("{:02x}", id.0 & 0xff)).join(id.file_name())
    }

    fn map(&self, id: PackId) -> Result<Arc<Mmap>> {
        if let Some(m) = self.maps.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(m.clone());
        }
        let path = self.path(id);
        let file = File::open(&path).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound { ErrorKind::NotFound } else { ErrorKind::Io };
            Error::new(kind, format!("opening pack {}", path.display())).with_source(e)
        })?;
        // SAFETY: sealed packs are immutable: this process never writes to a
        // path under packs/ after the rename that publishes it, and deletes
        // only packs no index entry names. Outside tampering would be caught
        // by hash checks, but could fault the mapping; that is the usual mmap
        // contract for stores that own their directory.
        let map =
            Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(format!("mapping {}", path.display()), e))?);
        self.maps.write().unwrap_or_else(|p| p.into_inner()).insert(id, map.clone());
        Ok(map)
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

impl Backend for LocalBackend {
    fn put_pack(&self, id: PackId, staged: &Path) -> Result<()> {
        let dest = self.path(id);
        let dir = dest.parent().expect("pack path has a parent");
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            // A new fan-out directory's own entry must be durable too, or a
            // power loss can drop a pack the index already names.
            sync_dir(&self.root)?;
        }
        if dest.exists() {
            return Err(Error::new(ErrorKind::Config, format!("pack {} already exists", dest.display())));
        }
        File::open(staged)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(format!("syncing {}", staged.display()), e))?;
        fs::rename(staged, &dest).map_err(|e| Error::io(format!("publishing {}", dest.display()), e))?;
        sync_dir(dir)
    }

    fn read_pack(&self, id: PackId, offset: u64, len: usize) -> Result<PackBytes> {
        let map = self.map(id)?;
        let (s, e) = check_range(id, map.len(), offset, len)?;
        Ok(PackBytes::new(map, s, e))
    }

    fn read_whole_pack(&self, id: PackId) -> Result<PackBytes> {
        let map = self.map(id)?;
        let n = map.len();
        Ok(PackBytes::new(map, 0, n))
    }

    fn list_packs(&self) -> Result<Vec<PackId>> {
        let mut out = Vec::new();
        let rd = |p: &Path| fs::read_dir(p).map_err(|e| Error::io(format!("listing {}", p.display()), e));
        for sub in rd(&self.root)? {
            let sub = sub.map_err(|e| Error::io("listing packs", e))?;
            if !sub.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            for f in rd(&sub.path())? {
                let f = f.map_err(|e| Error::io("listing packs", e))?;
                if let Some(id) = f.file_name().to_str().and_then(PackId::from_file_name) {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete_pack(&self, id: PackId) -> Result<()> {
        self.maps.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(format!("deleting pack {id}"), e)),
            _ => Ok(()),
        }
    }
}
