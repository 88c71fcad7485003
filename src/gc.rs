//! `gc`: delete packs nothing can use, from a crashed writer of a shared
//! bucket (which no open deletes: another writer's upload in flight looks
//! the same) or any backend.
//!
//! A pack is deleted only when all of these hold: this store's index does
//! not name it; no layer object in the backend needs any chunk it holds; and
//! it was last written longer ago than the grace period (an upload in
//! flight, or a pull another writer of the bucket will resume, is younger).

use crate::error::Result;
use crate::ids::{ChunkId, PackId};
use crate::index::PACKS;
use crate::layerobj::LayerObject;
use crate::pack;
use crate::store::Store;
use redb::ReadableTable;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// Options for [`Store::gc`].
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Keep unnamed packs written less than this long ago.
    pub grace: Duration,
    /// Report what would be deleted; delete nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { grace: Duration::from_secs(7 * 24 * 3600), dry_run: false }
    }
}

/// What [`Store::gc`] found and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcSummary {
    /// Packs in the backend.
    pub packs: u64,
    /// Packs the index does not name.
    pub unnamed: u64,
    /// Unnamed packs kept: younger than the grace period, or of unknown age.
    pub kept_young: Vec<PackId>,
    /// Unnamed packs kept: some layer object needs a chunk they hold.
    pub kept_needed: Vec<PackId>,
    /// Unnamed objects kept that are not readable packs (damaged, or not
    /// chunkstore's), each with why; deleting them is left to people.
    pub kept_unreadable: Vec<String>,
    /// Packs deleted (or, with `dry_run`, that would be).
    pub deleted: Vec<PackId>,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl Store {
    /// Delete packs nothing can use (see the module docs). Layer objects are
    /// left alone: in a shared bucket, those the index lacks are other
    /// writers' layers.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcSummary> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !opts.dry_run {
            self.check_writable()?;
        }
        let named: HashSet<u64> = {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(PACKS)?;
            let r: Result<_> = t.iter()?.map(|e| Ok(e?.0.value())).collect();
            r?
        };
        let all = self.backend.list_packs()?;
        let mut s = GcSummary { packs: all.len() as u64, dry_run: opts.dry_run, ..GcSummary::default() };
        let unnamed: Vec<PackId> = all.into_iter().filter(|p| !named.contains(&p.0)).collect();
        s.unnamed = unnamed.len() as u64;
        let now = SystemTime::now();
        let old: Vec<PackId> = unnamed
            .into_iter()
            .filter_map(|p| match self.backend.pack_modified(p) {
                Ok(Some(t)) if now.duration_since(t).unwrap_or_default() >= opts.grace => Some(Ok(p)),
                Ok(_) => {
                    s.kept_young.push(p);
                    None
                }
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_>>()?;
        if old.is_empty() {
            return Ok(s);
        }
        let needed = self.chunks_layer_objects_need()?;
        for p in old {
            let bytes = self.backend.read_whole_pack(p)?;
            // A claim an upload killed midway left (see the S3 backend) is
            // garbage once old; anything else unreadable is reported and kept.
            let is_claim = pack::is_upload_claim(&bytes);
            if !is_claim {
                match pack::scan(p, &bytes) {
                    Ok(entries) if entries.iter().any(|e| needed.contains(&e.id)) => {
                        s.kept_needed.push(p);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
                        tracing::warn!(pack = %p, error = %e, "kept an unreadable object among the packs");
                        s.kept_unreadable.push(e.to_string());
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !opts.dry_run {
                self.backend.delete_pack(p)?;
                let what = if is_claim { "deleted an upload's abandoned claim" } else { "deleted an unused pack" };
                tracing::info!(pack = %p, bytes = bytes.len(), "{what}");
            }
            s.deleted.push(p);
            s.deleted_bytes += bytes.len() as u64;
        }
        Ok(s)
    }

    /// Every chunk some layer object in the backend needs.
    fn chunks_layer_objects_need(&self) -> Result<HashSet<ChunkId>> {
        let mut needed = HashSet::new();
        for id in self.backend.list_layers()? {
            LayerObject::decode(&self.backend.get_layer(&id)?, &id)?.add_chunks(&mut needed)?;
        }
        Ok(needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::IngestOptions;
    use crate::testutil::{noise, tar_of};
    use crate::verify::VerifyOptions;

    fn pack_path(dir: &std::path::Path, id: PackId) -> std::path::PathBuf {
        dir.join("packs").join(format!("{:02x}", id.0 & 0xff)).join(id.file_name())
    }

    #[test]
    fn only_old_packs_nothing_needs_go() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Store::open(a.path()).unwrap();
        store.ingest(&tar_of(&[("x", &noise(300_000, 1))])[..], &IngestOptions::default()).unwrap();
        let other = Store::open(b.path()).unwrap();
        other.ingest(&tar_of(&[("y", &noise(200_000, 2))])[..], &IngestOptions::default()).unwrap();
        drop(other);
        // An orphan nothing needs (another store's pack), and a copy of this
        // store's own pack under an unnamed id (its chunks are needed).
        let (orphan, copy) = (PackId(100), PackId(101));
        for (from, to) in [(pack_path(b.path(), PackId(1)), orphan), (pack_path(a.path(), PackId(1)), copy)] {
            let dst = pack_path(a.path(), to);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(from, dst).unwrap();
        }

        let young = store.gc(&GcOptions { grace: Duration::from_secs(3600), dry_run: false }).unwrap();
        assert_eq!((young.packs, young.unnamed, young.kept_young.len()), (3, 2, 2));
        assert!(young.deleted.is_empty());

        let dry = store.gc(&GcOptions { grace: Duration::ZERO, dry_run: true }).unwrap();
        assert_eq!((dry.deleted.clone(), dry.kept_needed.clone()), (vec![orphan], vec![copy]));
        assert!(pack_path(a.path(), orphan).exists(), "a dry run deletes nothing");

        // A claim a killed multipart upload left is garbage; an object that
        // is no pack is reported and kept, and neither stops gc.
        let (claim, junk) = (PackId(102), PackId(103));
        let mut marker = pack::CLAIM_MAGIC.to_vec();
        marker.extend_from_slice(&[7; 16]);
        for (id, bytes) in [(claim, &marker[..]), (junk, &b"not a pack"[..])] {
            std::fs::create_dir_all(pack_path(a.path(), id).parent().unwrap()).unwrap();
            std::fs::write(pack_path(a.path(), id), bytes).unwrap();
        }

        let done = store.gc(&GcOptions { grace: Duration::ZERO, dry_run: false }).unwrap();
        assert_eq!(done.deleted, vec![orphan, claim]);
        assert_eq!(done.kept_unreadable.len(), 1, "{:?}", done.kept_unreadable);
        assert!(done.kept_unreadable[0].contains(&junk.to_string()), "{:?}", done.kept_unreadable);
        assert!(pack_path(a.path(), junk).exists() && !pack_path(a.path(), claim).exists());
        std::fs::remove_file(pack_path(a.path(), junk)).unwrap();
        assert!(done.deleted_bytes > 200_000);
        assert!(!pack_path(a.path(), orphan).exists());
        assert!(pack_path(a.path(), copy).exists() && pack_path(a.path(), PackId(1)).exists());
        assert!(store.verify(VerifyOptions { full: true, ..Default::default() }).unwrap().is_clean());
    }
}
