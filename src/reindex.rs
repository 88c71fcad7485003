//! Rebuild the index from the backend alone: the packs give every chunk's
//! location, the layer objects every layer's record, recipes, file recipes
//! and file numbers. Chunk numbers follow (pack id, offset) order, which is
//! the order commits hand them out, so a store one writer filled gets back
//! exactly the index it had (possession records, which live only in the
//! index, are kept as they are).

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ChunkId, FileId, LayerId, PackId};
use crate::index::{self, PackInfo, BLOBS, CHUNKS, FILES, LAYERS, LAYER_MAPS, LAYER_SETS, META, PACKS, RECIPES};
use crate::layermap::{LayerMap, MapEntry};
use crate::layerobj::LayerObject;
use crate::pack::{self, ChunkLoc};
use crate::recipe::{RecipeItem, RecipeReader};
use crate::store::Store;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What [`Store::reindex`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReindexSummary {
    /// Packs read.
    pub packs: u64,
    /// Distinct chunks indexed.
    pub chunks: u64,
    /// Distinct files indexed.
    pub files: u64,
    /// Layers indexed.
    pub layers: u64,
    /// Objects left out, and why (an unsealed pack, a layer whose data is missing).
    pub skipped: Vec<String>,
    /// Readable packs left out of the index because no layer needs a chunk
    /// they hold (a crashed writer's, or an upload not yet committed).
    pub unneeded_packs: Vec<PackId>,
    /// Whether file numbers had to be handed out anew (layer objects from
    /// more than one writer disagreed about them).
    pub renumbered_files: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Map `f` over `items` on `workers` threads, keeping order.
fn parallel_map<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                out.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    out.into_inner().unwrap_or_else(|p| p.into_inner()).into_iter().map(|r| r.expect("every item mapped")).collect()
}

impl Store {
    /// Rebuild every table of the index except possession records from the
    /// backend's packs and layer objects, in one transaction.
    pub fn reindex(&self) -> Result<ReindexSummary> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let mut summary = ReindexSummary::default();
        let workers = if self.backend.is_shared() { 8 } else { 2 };

        // 1. Every chunk, from the packs, in (pack id, offset) order.
        let pack_ids = self.backend.list_packs()?;
        let scanned = parallel_map(&pack_ids, workers, |id| -> Result<(u64, Vec<pack::ScannedEntry>)> {
            let b = self.backend.read_whole_pack(*id)?;
            Ok((b.len() as u64, pack::scan(*id, &b)?))
        });
        let mut readable: Vec<(PackId, u64, Vec<pack::ScannedEntry>)> = Vec::new();
        // Every chunk some pack holds, and its length.
        let mut held: HashMap<ChunkId, u32> = HashMap::new();
        for (id, r) in pack_ids.iter().zip(scanned) {
            let (len, entries) = match r {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => {
                    summary.skipped.push(format!("pack {id}: {e}"));
                    continue;
                }
                Err(e) => return Err(e.context(format!("reading pack {id}"))),
            };
            for e in &entries {
                held.entry(e.id).or_insert(e.loc.raw_len);
            }
            readable.push((*id, len, entries));
        }

        // 2. Every layer object.
        let layer_ids = self.backend.list_layers()?;
        let fetched = parallel_map(&layer_ids, workers, |id| {
            self.backend.get_layer(id).and_then(|b| LayerObject::decode(&b, id))
        });
        let mut objects: Vec<LayerObject> = Vec::new();
        for (id, r) in layer_ids.iter().zip(fetched) {
            match r {
                Ok(o) if o.chunker != self.params => {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "layer object {id} was chunked with {}, this store uses {}; open it with those sizes",
                            o.chunker, self.params
                        ),
                    ))
                }
                Ok(o) => objects.push(o),
                Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => {
                    summary.skipped.push(format!("layer {id}: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        // Oldest first, so a renumbering follows commit order as closely as it can.
        objects.sort_by_key(|o| (o.info.ingested_at, o.info.id));

        // 3. Keep the layers whose every chunk some pack holds.
        let mut kept: Vec<LayerObject> = Vec::new();
        'layers: for o in objects {
            for (fid, v) in &o.files {
                let (_, r) = index::decode_file(v)?;
                for (c, len) in &r.chunks {
                    match held.get(c) {
                        Some(l) if l == len => {}
                        _ => {
                            summary
                                .skipped
                                .push(format!("layer {}: file {fid} needs chunk {c}, which no pack holds", o.info.id));
                            continue 'layers;
                        }
                    }
                }
            }
            kept.push(o);
        }

        // 4. The chunks of the packs that hold some chunk a kept layer needs,
        //    numbered in (pack id, offset) order. A pack no layer needs is
        //    left out: it is a crashed writer's, or another writer's upload
        //    not yet committed, which `gc` may delete once it is old; an
        //    index that named it would let an ingest reuse chunks that then
        //    vanish.
        let mut needed: HashSet<ChunkId> = HashSet::new();
        for o in &kept {
            o.add_chunks(&mut needed)?;
        }
        let mut chunks: HashMap<ChunkId, ChunkLoc> = HashMap::new();
        let mut chunk_order: Vec<ChunkId> = Vec::new();
        let mut packs: BTreeMap<PackId, PackInfo> = BTreeMap::new();
        for (id, len, entries) in readable {
            if !entries.iter().any(|e| needed.contains(&e.id)) {
                summary.unneeded_packs.push(id);
                continue;
            }
            packs.insert(id, PackInfo { len, chunks: entries.len() as u64 });
            for e in entries {
                if let std::collections::hash_map::Entry::Vacant(v) = chunks.entry(e.id) {
                    let mut loc = e.loc;
                    loc.num = u32::try_from(chunk_order.len())
                        .map_err(|_| Error::new(ErrorKind::Config, "store is full: more than 2^32 chunks"))?;
                    v.insert(loc);
                    chunk_order.push(e.id);
                }
            }
        }

        // 5. Files and their numbers, as the layer objects recorded them; anew
        //    if they disagree.
        let mut files: HashMap<FileId, Vec<u8>> = HashMap::new();
        let mut by_num: HashMap<u32, FileId> = HashMap::new();
        let mut conflict = false;
        for o in &kept {
            for (fid, v) in &o.files {
                let num = u32::from_le_bytes(v[..4].try_into().expect("checked by decode"));
                match files.get(fid) {
                    Some(old) if old != v => conflict = true,
                    Some(_) => {}
                    None => {
                        if by_num.insert(num, *fid).is_some() {
                            conflict = true;
                        }
                        files.insert(*fid, v.clone());
                    }
                }
            }
        }
        if conflict {
            summary.renumbered_files = true;
            files.clear();
            let mut next = 0u32;
            for o in &kept {
                for (fid, v) in &o.files {
                    files.entry(*fid).or_insert_with(|| {
                        let mut nv = next.to_le_bytes().to_vec();
                        nv.extend_from_slice(&v[4..]);
                        next += 1;
                        nv
                    });
                }
            }
        }
        let next_file = files
            .values()
            .map(|v| u32::from_le_bytes(v[..4].try_into().expect("4 bytes")) as u64 + 1)
            .max()
            .unwrap_or(0);

        // 6. One transaction replaces everything but the possession records.
        let tx = self.db.begin_write()?;
        // LAYER_SETS hold numbers the rebuild may have changed; diffs derive
        // them again from LAYER_MAPS, and holding a layer stores them anew.
        for t in [CHUNKS, FILES, LAYERS, RECIPES, BLOBS, LAYER_MAPS, LAYER_SETS] {
            tx.delete_table(t)?;
        }
        tx.delete_table(PACKS)?;
        tx.open_table(LAYER_SETS)?;
        {
            let mut t = tx.open_table(CHUNKS)?;
            for id in &chunk_order {
                t.insert(&id.as_bytes()[..], &chunks[id].encode()[..])?;
            }
            let mut t = tx.open_table(PACKS)?;
            for (id, p) in &packs {
                t.insert(id.0, &p.encode()[..])?;
            }
            let mut t = tx.open_table(FILES)?;
            for (id, v) in &files {
                t.insert(&id.as_bytes()[..], &v[..])?;
            }
            let mut layers = tx.open_table(LAYERS)?;
            let mut recipes = tx.open_table(RECIPES)?;
            let mut blobs = tx.open_table(BLOBS)?;
            let mut maps = tx.open_table(LAYER_MAPS)?;
            for o in &kept {
                let key = &o.info.id.as_bytes()[..];
                layers.insert(key, &o.info_bytes[..])?;
                index::put_parted(&mut recipes, key, o.recipe.len() as u64, &mut &o.recipe[..])?;
                for b in &o.blobs {
                    blobs.insert(&b.as_bytes()[..], key)?;
                }
                let map = layer_map(&o.info.id, &o.recipe, &files, &chunks)?.encode();
                index::put_parted(&mut maps, key, map.len() as u64, &mut &map[..])?;
            }
            let mut meta = tx.open_table(META)?;
            let next_chunk = u32::try_from(chunk_order.len()).expect("checked above");
            meta.insert(index::NEXT_CHUNK_KEY, &next_chunk.to_le_bytes()[..])?;
            let next_file = u32::try_from(next_file)
                .map_err(|_| Error::new(ErrorKind::Config, "store is full: more than 2^32 files"))?;
            meta.insert(index::NEXT_FILE_KEY, &next_file.to_le_bytes()[..])?;
        }
        tx.commit()?;
        if let Some(max) = pack_ids.iter().map(|p| p.0).max() {
            self.pack_ids_past(max);
        }
        summary.packs = packs.len() as u64;
        summary.chunks = chunk_order.len() as u64;
        summary.files = files.len() as u64;
        summary.layers = kept.len() as u64;
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }
}

/// A layer's number map from its recipe and the rebuilt tables.
fn layer_map(
    layer: &LayerId,
    recipe: &[u8],
    files: &HashMap<FileId, Vec<u8>>,
    chunks: &HashMap<ChunkId, ChunkLoc>,
) -> Result<LayerMap> {
    let mut map = LayerMap::default();
    for item in RecipeReader::borrowed(recipe)? {
        if let RecipeItem::File { id, .. } | RecipeItem::Data { id, .. } = item? {
            let v = files.get(&id).ok_or_else(|| Error::corrupt(format!("layer {layer}: file {id} is missing")))?;
            let (num, r) = index::decode_file(v)?;
            let nums = r.chunks.iter().map(|(c, _)| chunks[c].num).collect();
            map.entries.push(MapEntry { file: num, chunks: nums });
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use crate::backend::{Backend, MemoryBackend};
    use crate::index::{BLOBS, CHUNKS, FILES, LAYERS, LAYER_MAPS, META, PACKS, RECIPES};
    use crate::testutil::noise;
    use crate::{IngestOptions, Store, StoreOptions};
    use redb::ReadableTable;
    use std::sync::Arc;

    fn tar(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, p, &d[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Every table but the possession records, as bytes.
    fn dump(s: &Store) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let tx = s.db.begin_read().unwrap();
        let mut out = Vec::new();
        for t in [CHUNKS, FILES, LAYERS, RECIPES, BLOBS, LAYER_MAPS] {
            for e in tx.open_table(t).unwrap().iter().unwrap() {
                let (k, v) = e.unwrap();
                out.push((t.to_string(), k.value().to_vec(), v.value().to_vec()));
            }
        }
        for e in tx.open_table(PACKS).unwrap().iter().unwrap() {
            let (k, v) = e.unwrap();
            out.push(("packs".into(), k.value().to_le_bytes().to_vec(), v.value().to_vec()));
        }
        for e in tx.open_table(META).unwrap().iter().unwrap() {
            let (k, v) = e.unwrap();
            out.push(("meta".into(), k.value().as_bytes().to_vec(), v.value().to_vec()));
        }
        out
    }

    #[test]
    fn rebuilds_every_table_exactly() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let opts = || StoreOptions { backend: Some(backend.clone()), pack_size: 64 << 10, ..Default::default() };
        let d1 = tempfile::tempdir().unwrap();
        let hub = Store::open_with(d1.path(), opts()).unwrap();
        let shared = noise(300_000, 1);
        let a = tar(&[("a", shared.clone()), ("b", noise(90_000, 2)), ("c", b"x".repeat(10)), ("e", Vec::new())]);
        let b = tar(&[("b2", noise(90_000, 2)), ("a", shared), ("d", noise(200_000, 3))]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &a).unwrap();
        let a_gz = gz.finish().unwrap();
        hub.ingest(&a[..], &IngestOptions::default()).unwrap();
        hub.ingest(&b[..], &IngestOptions::default()).unwrap();
        hub.ingest(&a_gz[..], &IngestOptions::default()).unwrap();
        // Chunks that arrive on their own (a push), then their layer.
        let c = tar(&[("f", noise(150_000, 4)), ("a", noise(300_000, 1))]);
        let d2 = tempfile::tempdir().unwrap();
        let other = Store::open(d2.path()).unwrap();
        let cid = other.ingest(&c[..], &IngestOptions::default()).unwrap().layer.id;
        let bundle = other.recipe_bundle(&cid).unwrap();
        let mut want: Vec<_> = bundle.chunk_ids().unwrap().into_iter().map(|(c, _)| c).collect();
        want.reverse();
        let mut batch = Vec::new();
        other.write_chunk_batch(&want, &mut batch).unwrap();
        hub.put_chunks(&crate::read_chunk_batch(&batch[..], &want).unwrap()).unwrap();
        hub.commit_bundle(&bundle, &IngestOptions::default()).unwrap();
        let before = dump(&hub);
        drop(hub);

        // A new index over the same backend rebuilds itself on open…
        let d3 = tempfile::tempdir().unwrap();
        let fresh = Store::open_with(d3.path(), opts()).unwrap();
        assert_eq!(dump(&fresh), before);
        // …and an explicit reindex over a populated index changes nothing.
        let s = fresh.reindex().unwrap();
        assert_eq!((s.layers, s.skipped.len(), s.renumbered_files), (3, 0, false));
        assert_eq!(dump(&fresh), before);
        assert!(fresh.verify(crate::VerifyOptions { full: true, ..Default::default() }).unwrap().is_clean());
    }

    /// A reindex that renumbers chunks must not leave a client's diff on the
    /// old numbers (the layer sets stored when it came to hold a layer).
    #[test]
    fn renumbering_reindex_drops_stale_layer_sets() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let d1 = tempfile::tempdir().unwrap();
        let s =
            Store::open_with(d1.path(), StoreOptions { backend: Some(backend.clone()), ..Default::default() }).unwrap();
        let (x, y) = (noise(200_000, 7), noise(200_000, 8));
        let a = s.ingest(&tar(&[("x", x.clone())])[..], &IngestOptions::default()).unwrap().layer.id;
        // Another writer's committed layer, whose pack lands before this
        // store's packs: the rebuild numbers its chunks first. And a pack no
        // layer object needs (a crashed writer's): the rebuild leaves it out.
        let d2 = tempfile::tempdir().unwrap();
        let other = Store::open(d2.path()).unwrap();
        let f = other.ingest(&tar(&[("f", noise(300_000, 9))])[..], &IngestOptions::default()).unwrap().layer.id;
        other.ingest(&tar(&[("g", noise(100_000, 11))])[..], &IngestOptions::default()).unwrap();
        let (f_pack, g_pack) = (other.backend.list_packs().unwrap()[0], other.backend.list_packs().unwrap()[1]);
        for (from, to) in [(f_pack, 0), (g_pack, 100)] {
            let staged = d2.path().join("foreign.pack");
            std::fs::write(&staged, &other.backend.read_whole_pack(from).unwrap()[..]).unwrap();
            backend.put_pack(crate::ids::PackId(to), &staged).unwrap();
        }
        backend.put_layer(&f, &other.backend.get_layer(&f).unwrap()).unwrap();
        let b = s.ingest(&tar(&[("y", y.clone())])[..], &IngestOptions::default()).unwrap().layer.id;
        // y2 shares y's leading chunks: the diff credits them by chunk number.
        let y2 = [&y[..150_000], &noise(100_000, 10)[..]].concat();
        let c = s.ingest(&tar(&[("x", x), ("y2", y2)])[..], &IngestOptions::default()).unwrap();
        let client = crate::ClientId::new("edge").unwrap();
        s.add_client(&client).unwrap();
        s.hold(&client, &[a, b]).unwrap();
        let before = s.diff(&client, &c.layer.id).unwrap().summary;
        let r = s.reindex().unwrap();
        assert_eq!(r.layers, 4, "{r:?}");
        assert_eq!(r.unneeded_packs, vec![crate::ids::PackId(100)], "{r:?}");
        assert!(!s.has_chunk(&crate::ChunkId::of(&noise(100_000, 11))).unwrap(), "the orphan's chunks are not indexed");
        assert_eq!(s.layer(&f).unwrap().unwrap().id, f);
        let after = s.diff(&client, &c.layer.id).unwrap().summary;
        assert_eq!(
            (after.held_files, after.partial_held_bytes, after.missing_bytes),
            (before.held_files, before.partial_held_bytes, before.missing_bytes)
        );
        assert_eq!(after.held_files, 1);
        assert!(after.partial_held_bytes > 0, "{after:?}");
        // The sets stored when the client came to hold a and b are gone with
        // their numbers (verify compares any that are kept with the maps).
        assert!(s.verify(crate::VerifyOptions::default()).unwrap().is_clean());
    }
}
