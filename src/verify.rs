//! Verify: re-hash every chunk, check every file and layer recipe, and
//! optionally rebuild every layer against its diff_id.

use crate::error::Result;
use crate::ids::{ChunkId, FileId, LayerId, PackId};
use crate::index::{LayerInfo, PackInfo, CHUNKS, FILES, LAYERS, LAYER_MAPS, PACKS, RECIPES};
use crate::layermap::{LayerMap, MapEntry};
use crate::pack::{self, ChunkLoc};
use crate::recipe::{RecipeItem, RecipeReader};
use crate::store::Store;
use rayon::prelude::*;
use redb::ReadableTable;
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
    /// The backend's layer object must exist and say what the index says.
    fn check_layer_object(&self, id: &LayerId) -> Option<String> {
        let want = match self.layer_object_from_index(id) {
            Ok(o) => o,
            Err(_) => return None, // the index's own damage is reported above
        };
        match self.backend.get_layer(id).and_then(|b| crate::layerobj::LayerObject::decode(&b, id)) {
            Ok(got) if got.same_layer(&want) => None,
            Ok(_) => Some("its layer object in the backend differs from the index".into()),
            Err(e) => Some(format!("layer object: {e}")),
        }
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
        let mut by_pack: BTreeMap<PackId, Vec<(ChunkId, ChunkLoc)>> = BTreeMap::new();
        let mut raw_len: HashMap<ChunkId, (u32, u32)> = HashMap::new();
        for e in tx.open_table(CHUNKS)?.iter()? {
            let (k, v) = e?;
            let id = ChunkId::from_bytes(k.value().try_into().map_err(|_| crate::Error::corrupt("bad chunk key"))?);
            let loc = ChunkLoc::decode(v.value())?;
            raw_len.insert(id, (loc.raw_len, loc.num));
            by_pack.entry(loc.pack).or_default().push((id, loc));
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
            let chunks = by_pack.get(&pid).unwrap_or(&none);
            report.chunks += chunks.len() as u64;
            let bytes = match self.backend.read_whole_pack(pid) {
                Ok(b) => b,
                Err(e) => {
                    report.damaged.push(damage("pack", pid, format!("unreadable: {e}")));
                    for (id, _) in chunks {
                        report.damaged.push(damage("chunk", id, format!("in unreadable pack {pid}")));
                    }
                    continue;
                }
            };
            report.damaged.extend(check_pack(pid, &bytes, packs.get(&pid), chunks));
            if let Some(p) = &opts.progress {
                p.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        }
        // What each file's layer-map entry must say: size, file number, chunk numbers.
        let mut file_size: HashMap<FileId, (u64, MapEntry)> = HashMap::new();
        for e in tx.open_table(FILES)?.iter()? {
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
            let (num, r) = r;
            let nums = r.chunks.iter().map(|(c, _)| raw_len.get(c).map_or(u32::MAX, |x| x.1)).collect();
            file_size.insert(id, (r.size, MapEntry { file: num, chunks: nums }));
            if !r.consistent() {
                report.damaged.push(damage("file", id, "chunk lengths do not add up to its size"));
            }
            if r.chunks.len() == 1 && r.chunks[0].0 != id.as_chunk() {
                report.damaged.push(damage("file", id, "one-chunk file whose chunk id differs from its id"));
            }
            for (c, len) in &r.chunks {
                match raw_len.get(c) {
                    None => report.damaged.push(damage("file", id, format!("chunk {c} is missing"))),
                    Some((l, _)) if l != len => {
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
                Ok(i) => i,
                Err(e) => {
                    report.damaged.push(damage("layer", hex::encode(k.value()), e.to_string()));
                    continue;
                }
            };
            let recipe = recipes.get(k.value())?.map(|r| r.value().to_vec());
            let map = maps.get(k.value())?.map(|m| LayerMap::decode(m.value()));
            if let Err(problem) = check_recipe(&info, recipe, map, &file_size) {
                report.damaged.push(damage("layer", info.id, problem));
            }
            if let Some(problem) = self.check_layer_object(&info.id) {
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

fn check_recipe(
    info: &LayerInfo,
    recipe: Option<Vec<u8>>,
    map: Option<Result<LayerMap>>,
    files: &HashMap<FileId, (u64, MapEntry)>,
) -> Result<(), String> {
    let recipe = recipe.ok_or("recipe is missing")?;
    let map = map.ok_or("number map is missing")?.map_err(|e| e.to_string())?;
    let mut entries = map.entries.iter();
    let mut total = 0u64;
    for item in RecipeReader::new(recipe).map_err(|e| e.to_string())? {
        match item.map_err(|e| e.to_string())? {
            RecipeItem::Raw(b) => total += b.len() as u64,
            RecipeItem::File { id, size, .. } | RecipeItem::Data { id, size } => {
                total += size;
                let (s, want) = files.get(&id).ok_or_else(|| format!("file {id} is missing"))?;
                if *s != size {
                    return Err(format!("file {id} is {s} bytes, recipe says {size}"));
                }
                if entries.next() != Some(want) {
                    return Err(format!("number map disagrees with the index at file {id}"));
                }
            }
        }
    }
    if entries.next().is_some() {
        return Err("number map has more entries than the recipe".into());
    }
    if total != info.tar_size {
        return Err(format!("recipe rebuilds {total} bytes, layer is {}", info.tar_size));
    }
    Ok(())
}
