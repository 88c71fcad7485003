//! Verify: re-hash every chunk, check every file and layer recipe, and
//! optionally rebuild every layer against its diff_id.

use crate::error::{ErrorKind, Result};
use crate::ids::{ChunkId, FileId, LayerId, PackId};
use crate::index::{self, LayerInfo, PackInfo, CHUNKS, FILES, LAYERS, LAYER_MAPS, PACKS, RECIPES};
use crate::layermap::{LayerMap, MapEntry};
use crate::layerobj::LayerObjectView;
use crate::pack::{self, ChunkLoc};
use crate::recipe::{RecipeItem, RecipeReader};
use crate::store::Store;
use rayon::prelude::*;
use redb::{ReadableTable, ReadableTableMetadata};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Also rebuild every layer and compare its SHA-256 with the diff_id.
    pub full: bool,
    /// Receives the count of bytes checked so far: each pack's stored bytes
    /// once re-hashed, then (with `full`) each layer's tar bytes once rebuilt.
    pub progress: Option<Arc<AtomicU64>>,
}

/// One damaged object.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    /// `chunk`, `file`, `layer` or `pack`.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// What is wrong.
    pub problem: String,
}

/// The outcome of [`Store::verify`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Chunks re-hashed.
    pub chunks: u64,
    /// File recipes checked.
    pub files: u64,
    /// Layer recipes checked.
    pub layers: u64,
    /// Layers rebuilt and compared with their diff_id (with `full`).
    pub layers_rebuilt: u64,
    /// Everything found wrong.
    pub damaged: Vec<Damage>,
}

impl VerifyReport {
    /// True when nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

impl Store {
    /// What is wrong with layer `info`'s object in the backend, against the
    /// index's record, `recipe` and `files`; `None` also when the index is
    /// what is damaged (reported on its own).
    fn check_layer_object<F>(&self, info: &LayerInfo, recipe: Option<&[u8]>, files: &F) -> Option<String>
    where
        F: ReadableTable<&'static [u8], &'static [u8]>,
    {
        let bytes = match self.backend.get_layer(&info.id) {
            Ok(b) => b,
            Err(e) => return Some(format!("layer object: {e}")),
        };
        let got = match LayerObjectView::parse(&bytes, &info.id) {
            Ok(v) => v,
            Err(e) => return Some(format!("layer object: {e}")),
        };
        match got.same_as_index(self.params, info, recipe?, files) {
            Ok(true) | Err(_) => None,
            Ok(false) => Some("its layer object in the backend differs from the index".into()),
        }
    }
}

/// The index's chunk rows, in key order.
struct Chunks(Vec<(ChunkId, ChunkLoc)>);

impl Chunks {
    fn get(&self, id: &ChunkId) -> Option<&ChunkLoc> {
        let i = self.0.binary_search_by(|(c, _)| c.as_bytes().cmp(id.as_bytes())).ok()?;
        Some(&self.0[i].1)
    }
}

fn damage(kind: &'static str, id: impl ToString, problem: impl Into<String>) -> Damage {
    Damage { kind, id: id.to_string(), problem: problem.into() }
}

impl Store {
    /// Check the whole store; damage is reported, not returned as an error.
    pub fn verify(&self, opts: VerifyOptions) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let tx = self.db.begin_read()?;
        // Every chunk row once, in key order (looked up by binary search),
        // and each pack's rows as indexes into it: ~70 bytes a chunk, where
        // a copy per pack and a hash map of lengths took ~150-190.
        let chunk_table = tx.open_table(CHUNKS)?;
        let mut all = Chunks(Vec::with_capacity(usize::try_from(chunk_table.len()?).unwrap_or(0)));
        let mut by_pack: BTreeMap<PackId, Vec<u32>> = BTreeMap::new();
        for e in chunk_table.iter()? {
            let (k, v) = e?;
            let id = ChunkId::from_bytes(k.value().try_into().map_err(|_| crate::Error::corrupt("bad chunk key"))?);
            let loc = ChunkLoc::decode(v.value())?;
            let at = u32::try_from(all.0.len()).map_err(|_| crate::Error::corrupt("more than 2^32 chunk rows"))?;
            by_pack.entry(loc.pack).or_default().push(at);
            all.0.push((id, loc));
        }
        let packs: BTreeMap<PackId, PackInfo> = tx
            .open_table(PACKS)?
            .iter()?
            .map(|e| {
                let (k, v) = e?;
                Ok((PackId(k.value()), PackInfo::decode(v.value())?))
            })
            .collect::<Result<_>>()?;
        // Each pack once: the packs chunks name, then those only the PACKS table names.
        let none = Vec::new();
        let named = by_pack.keys().copied().collect::<Vec<_>>();
        let others = packs.keys().filter(|p| !by_pack.contains_key(p)).copied().collect::<Vec<_>>();
        for pid in named.into_iter().chain(others) {
            let chunks: Vec<(ChunkId, ChunkLoc)> =
                by_pack.get(&pid).unwrap_or(&none).iter().map(|&i| all.0[i as usize]).collect();
            report.chunks += chunks.len() as u64;
            let bytes = match self.backend.read_whole_pack(pid) {
                Ok(b) => b,
                Err(e) => {
                    report.damaged.push(damage("pack", pid, format!("unreadable: {e}")));
                    for (id, _) in &chunks {
                        report.damaged.push(damage("chunk", id, format!("in unreadable pack {pid}")));
                    }
                    continue;
                }
            };
            report.damaged.extend(check_pack(pid, &bytes, packs.get(&pid), &chunks));
            if let Some(p) = &opts.progress {
                p.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
        let files = tx.open_table(FILES)?;
        for e in files.iter()? {
            let (k, v) = e?;
            report.files += 1;
            let id = FileId::from_bytes(k.value().try_into().map_err(|_| crate::Error::corrupt("bad file key"))?);
            let r = match crate::index::decode_file(v.value()) {
                Ok(r) => r,
                Err(e) => {
                    report.damaged.push(damage("file", id, e.to_string()));
                    continue;
                }
            };
            let (_, r) = r;
            if !r.consistent() {
                report.damaged.push(damage("file", id, "chunk lengths do not add up to its size"));
            }
            if r.chunks.len() == 1 && r.chunks[0].0 != id.as_chunk() {
                report.damaged.push(damage("file", id, "one-chunk file whose chunk id differs from its id"));
            }
            for (c, len) in &r.chunks {
                match all.get(c) {
                    None => report.damaged.push(damage("file", id, format!("chunk {c} is missing"))),
                    Some(loc) if loc.raw_len != *len => {
                        report.damaged.push(damage("file", id, format!("chunk {c} length differs")))
                    }
                    _ => {}
                }
            }
        }
        let recipes = tx.open_table(RECIPES)?;
        let maps = tx.open_table(LAYER_MAPS)?;
        for e in tx.open_table(LAYERS)?.iter()? {
            let (k, v) = e?;
            report.layers += 1;
            let info = match LayerInfo::decode(v.value()) {
                Ok(i) if i.id.as_bytes()[..] == *k.value() => i,
                Ok(i) => {
                    report.damaged.push(damage(
                        "layer",
                        hex::encode(k.value()),
                        format!("its record names layer {}", i.id),
                    ));
                    continue;
                }
                Err(e) => {
                    report.damaged.push(damage("layer", hex::encode(k.value()), e.to_string()));
                    continue;
                }
            };
            let (recipe, map) = match (
                index::get_parted(&recipes, k.value(), "recipe"),
                index::get_parted(&maps, k.value(), "number map"),
            ) {
                (Ok(r), Ok(m)) => (r, m),
                (r, m) => {
                    // Parts out of order or missing: named as such.
                    for e in [r.err(), m.err()].into_iter().flatten() {
                        if e.kind() != ErrorKind::Corrupt {
                            return Err(e);
                        }
                        report.damaged.push(damage("layer", info.id, e.to_string()));
                    }
                    continue;
                }
            };
            let (recipe, map) = (recipe.as_deref(), map.as_deref());
            if let Err(problem) = check_recipe(&info, recipe, map, &files, &all) {
                report.damaged.push(damage("layer", info.id, problem));
            }
            if let Some(problem) = self.check_layer_object(&info, recipe, &files) {
                report.damaged.push(damage("layer", info.id, problem));
            }
        }
        for (id, problem) in crate::possession::stale_layer_sets(&tx)? {
            report.damaged.push(damage("layer", id, problem));
        }
        if opts.full {
            let ids: Vec<LayerId> = self.layers()?.into_iter().map(|l| l.id).collect();
            let bad: Vec<Damage> = ids
                .par_iter()
                .filter_map(|id| {
                    let mut sink = CountingSink(opts.progress.as_deref());
                    let r = self.open_layer(id).and_then(|mut r| {
                        std::io::copy(&mut r, &mut sink).map_err(|e| crate::error::from_io(e, "rebuild"))
                    });
                    r.err().map(|e| damage("layer", id, format!("rebuild failed: {e}")))
                })
                .collect();
            report.layers_rebuilt = ids.len() as u64;
            report.damaged.extend(bad);
        }
        Ok(report)
    }
}

/// Discards what it is given, counting it into a progress counter.
struct CountingSink<'a>(Option<&'a AtomicU64>);

impl std::io::Write for CountingSink<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Some(c) = self.0 {
            c.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One pack's damage: its chunks re-hashed, its length and framing against
/// the index (`info`: its PACKS row, if any).
fn check_pack(pid: PackId, bytes: &[u8], info: Option<&PackInfo>, chunks: &[(ChunkId, ChunkLoc)]) -> Vec<Damage> {
    let mut bad: Vec<Damage> = chunks
        .par_iter()
        .filter_map(|(id, loc)| {
            let end = loc.offset as usize + loc.stored_len as usize;
            let stored = bytes.get(loc.offset as usize..end)?;
            match pack::decode_chunk(stored, loc.raw_len) {
                Ok(raw) if ChunkId::of(&raw) == *id => None,
                Ok(_) => Some(damage("chunk", id, "content does not match its id")),
                Err(e) => Some(damage("chunk", id, e.to_string())),
            }
        })
        .collect();
    for (id, loc) in chunks {
        if loc.offset as usize + loc.stored_len as usize > bytes.len() {
            bad.push(damage("chunk", id, format!("lies past the end of pack {pid}")));
        }
    }
    let Some(info) = info else {
        bad.push(damage("pack", pid, format!("named by {} chunks but not recorded", chunks.len())));
        return bad;
    };
    if bytes.len() as u64 != info.len {
        bad.push(damage("pack", pid, format!("is {} bytes, index says {}", bytes.len(), info.len)));
        return bad;
    }
    match pack::scan(pid, bytes) {
        Err(e) => bad.push(damage("pack", pid, e.to_string())),
        Ok(entries) => {
            // Every index entry must point at the data of an entry with its id.
            let framed: HashMap<u64, ChunkId> = entries.iter().map(|e| (e.loc.offset, e.id)).collect();
            for (id, loc) in chunks {
                if framed.get(&loc.offset) != Some(id) {
                    bad.push(damage(
                        "chunk",
                        id,
                        format!("index points into pack {pid} where no entry of that id starts"),
                    ));
                }
            }
        }
    }
    bad
}

/// The layer recipe against the layer's record (its size), FILES (each
/// file's size) and its number map (each content item's file and chunk
/// numbers, from FILES and `chunks`), read one item at a time.
fn check_recipe<F>(
    info: &LayerInfo,
    recipe: Option<&[u8]>,
    map: Option<&[u8]>,
    files: &F,
    chunks: &Chunks,
) -> Result<(), String>
where
    F: ReadableTable<&'static [u8], &'static [u8]>,
{
    let recipe = recipe.ok_or("recipe is missing")?;
    let map = map.ok_or("number map is missing")?;
    // A malformed map is named as such, whatever else disagrees.
    for e in LayerMap::entries(map).map_err(|e| e.to_string())? {
        e.map_err(|e| e.to_string())?;
    }
    let mut entries = LayerMap::entries(map).map_err(|e| e.to_string())?;
    let mut total = 0u64;
    for item in RecipeReader::borrowed(recipe).map_err(|e| e.to_string())? {
        match item.map_err(|e| e.to_string())? {
            RecipeItem::Raw(b) => total += b.len() as u64,
            RecipeItem::File { id, size, .. } | RecipeItem::Data { id, size } => {
                total += size;
                // A FILES value that does not decode is reported on its own.
                let missing = || format!("file {id} is missing");
                let value = files.get(&id.as_bytes()[..]).map_err(|e| e.to_string())?.ok_or_else(missing)?;
                let (num, r) = crate::index::decode_file(value.value()).map_err(|_| missing())?;
                if r.size != size {
                    return Err(format!("file {id} is {} bytes, recipe says {size}", r.size));
                }
                let nums = r.chunks.iter().map(|(c, _)| chunks.get(c).map_or(u32::MAX, |l| l.num)).collect();
                match entries.next() {
                    Some(Ok(e)) if e == MapEntry { file: num, chunks: nums } => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    _ => return Err(format!("number map disagrees with the index at file {id}")),
                }
            }
        }
    }
    match entries.next() {
        None => {}
        Some(Err(e)) => return Err(e.to_string()),
        Some(Ok(_)) => return Err("number map has more entries than the recipe".into()),
    }
    if total != info.tar_size {
        return Err(format!("recipe rebuilds {total} bytes, layer is {}", info.tar_size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::index::{self, CHUNKS, FILES, LAYER_MAPS};
    use crate::layermap::LayerMap;
    use crate::{FileId, IngestOptions, Store, VerifyOptions};
    use redb::ReadableTable;

    /// A fresh store holding one layer (two files, one of them twice), with
    /// `damage` done to its index; what verify then says, problem by problem.
    fn problems(damage: impl FnOnce(&redb::WriteTransaction, &[u8])) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let big = crate::testutil::noise(200_000, 9);
        let tar = crate::testutil::tar_of(&[("a", b"alpha"), ("b", &big), ("c", b"alpha")]);
        let id = store.ingest(&tar[..], &IngestOptions::default()).unwrap().layer.id;
        assert!(store.verify(VerifyOptions::default()).unwrap().is_clean());
        let tx = store.db.begin_write().unwrap();
        damage(&tx, &id.as_bytes()[..]);
        tx.commit().unwrap();
        let r = store.verify(VerifyOptions::default()).unwrap();
        r.damaged.iter().map(|d| format!("{} {}", d.kind, d.problem)).collect()
    }

    fn edit_map(tx: &redb::WriteTransaction, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
        let mut t = tx.open_table(LAYER_MAPS).unwrap();
        let mut v = t.get(key).unwrap().unwrap().value().to_vec();
        f(&mut v);
        t.insert(key, &v[..]).unwrap();
    }

    fn one(p: Vec<String>, want: &str) {
        assert!(p.len() == 1 && p[0].contains(want), "want one problem with {want:?}: {p:?}");
    }

    #[test]
    fn index_damage_is_named() {
        // The number map: an entry off, one too many, cut short.
        one(
            problems(|tx, key| {
                edit_map(tx, key, |v| {
                    let m = LayerMap::decode(v).unwrap();
                    let mut m2 = m.clone();
                    m2.entries[2].file += 1;
                    *v = m2.encode();
                })
            }),
            "number map disagrees with the index at file",
        );
        one(
            problems(|tx, key| {
                edit_map(tx, key, |v| {
                    let mut m = LayerMap::decode(v).unwrap();
                    m.entries.push(m.entries[0].clone());
                    *v = m.encode();
                })
            }),
            "number map has more entries than the recipe",
        );
        one(problems(|tx, key| edit_map(tx, key, |v| v.truncate(v.len() - 4))), "layer number map is malformed");
        one(
            problems(|tx, key| {
                edit_map(tx, key, |v| {
                    let n = u32::from_le_bytes(v[1..5].try_into().unwrap()) + 1;
                    v[1..5].copy_from_slice(&n.to_le_bytes());
                })
            }),
            "layer number map is malformed",
        );
        // FILES: a file of another size, a file gone.
        let a = FileId::of(b"alpha");
        let p = problems(|tx, _| {
            let mut t = tx.open_table(FILES).unwrap();
            let (num, mut r) = index::decode_file(t.get(&a.as_bytes()[..]).unwrap().unwrap().value()).unwrap();
            r.size += 1;
            t.insert(&a.as_bytes()[..], &index::encode_file(num, &r)[..]).unwrap();
        });
        assert!(p.iter().any(|p| p.contains(&format!("file {a} is 6 bytes, recipe says 5"))), "{p:?}");
        assert!(p.iter().any(|p| p.contains("chunk lengths do not add up")), "{p:?}");
        one(
            problems(|tx, _| {
                tx.open_table(FILES).unwrap().remove(&a.as_bytes()[..]).unwrap();
            }),
            &format!("file {a} is missing"),
        );
        // A FILES value too short to decode: the file, and the layer object no longer matching.
        let p = problems(|tx, _| {
            tx.open_table(FILES).unwrap().insert(&a.as_bytes()[..], &[1u8, 2][..]).unwrap();
        });
        assert!(p.iter().any(|p| p == "file file record is malformed"), "{p:?}");
        assert!(p.iter().any(|p| p.contains("differs from the index")), "{p:?}");
        // A malformed map is named so even when a file disagrees too.
        let p = problems(|tx, key| {
            edit_map(tx, key, |v| v.truncate(v.len() - 4));
            let mut t = tx.open_table(FILES).unwrap();
            let (num, mut r) = index::decode_file(t.get(&a.as_bytes()[..]).unwrap().unwrap().value()).unwrap();
            r.size += 1;
            t.insert(&a.as_bytes()[..], &index::encode_file(num, &r)[..]).unwrap();
        });
        assert!(p.iter().any(|p| p.contains("layer number map is malformed")), "{p:?}");
        // Values in parts: one missing, or a stray part beside the whole value.
        let part = |key: &[u8], n: u32| [key, &n.to_be_bytes()[..]].concat();
        one(
            problems(|tx, key| {
                let mut t = tx.open_table(index::RECIPES).unwrap();
                let v = t.remove(key).unwrap().unwrap().value().to_vec();
                t.insert(&part(key, 0)[..], &v[..10]).unwrap();
                t.insert(&part(key, 2)[..], &v[10..]).unwrap();
            }),
            "part 1 is missing",
        );
        one(
            problems(|tx, key| {
                tx.open_table(LAYER_MAPS).unwrap().insert(&part(key, 0)[..], &b"stray"[..]).unwrap();
            }),
            "number map of layer",
        );
        // A layer record under another layer's key.
        one(
            problems(|tx, key| {
                let mut t = tx.open_table(crate::index::LAYERS).unwrap();
                let mut info = crate::index::LayerInfo::decode(t.get(key).unwrap().unwrap().value()).unwrap();
                info.id = crate::LayerId::from_bytes([7; 32]);
                t.insert(key, &info.encode()[..]).unwrap();
            }),
            &format!("its record names layer {}", crate::LayerId::from_bytes([7; 32])),
        );
        // CHUNKS: a chunk row gone is named by the file that uses it.
        let p = problems(|tx, _| {
            tx.open_table(CHUNKS).unwrap().remove(&a.as_bytes()[..]).unwrap();
        });
        assert!(
            p.iter().any(|p| p.starts_with("file") && p.ends_with(&format!("chunk {} is missing", a.as_chunk()))),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.contains("number map disagrees")),
            "the map's chunk number no longer matches: {p:?}"
        );
    }
}
