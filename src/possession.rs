//! Possession maps: which layers each client holds and, derived from them,
//! which files and chunks (roaring bitmaps over the store's dense numbers).
//! A diff of a layer against a client decides, per content item, whether it
//! travels as a reference, as missing chunks, or as content.

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ClientId, FileId, LayerId};
use crate::index::{self, LayerInfo, CLIENTS, FILES, LAYERS, LAYER_MAPS, LAYER_SETS, RECIPES};
use crate::layermap::{LayerMap, MapEntry};
use crate::recipe::{RecipeItem, RecipeReader};
use crate::store::Store;
use redb::{ReadableTable, ReadableTableMetadata};
use roaring::RoaringBitmap;

/// Client records hold only the layers: a file or chunk set is stored once
/// per layer (LAYER_SETS), so each (client, layer) pair costs 32 bytes.
const RECORD_VERSION: u8 = 2;
/// Version 1 records also carried the union of their layers' sets; read
/// for old stores, their bitmaps are checked and ignored.
const RECORD_V1: u8 = 1;

/// A client's possession record: the layers it holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Possession {
    pub layers: Vec<LayerId>,
}

impl Possession {
    /// `version u8 = 2 | n u32 | layer id [32] * n`
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![RECORD_VERSION];
        b.extend_from_slice(&(self.layers.len() as u32).to_le_bytes());
        for l in &self.layers {
            b.extend_from_slice(l.as_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = || Error::corrupt("client record is malformed");
        if b.len() < 5 || !matches!(b[0], RECORD_V1 | RECORD_VERSION) {
            return Err(bad());
        }
        let n = u32::from_le_bytes(b[1..5].try_into().expect("4 bytes")) as usize;
        let ids = b.get(5..).filter(|r| r.len() / 32 >= n).ok_or_else(bad)?;
        let layers =
            ids[..32 * n].chunks_exact(32).map(|c| LayerId::from_bytes(c.try_into().expect("32 bytes"))).collect();
        let rest = &ids[32 * n..];
        match b[0] {
            RECORD_VERSION if rest.is_empty() => Ok(Possession { layers }),
            RECORD_V1 if decode_sets(rest).is_ok() => Ok(Possession { layers }),
            _ => Err(bad()),
        }
    }
}

/// `len u32 | files bitmap | len u32 | chunks bitmap` (portable roaring format,
/// run-compressed); each bitmap must fill exactly its declared length.
fn encode_sets(files: &RoaringBitmap, chunks: &RoaringBitmap) -> Vec<u8> {
    let mut b = Vec::new();
    for set in [files, chunks] {
        let mut set = set.clone();
        set.optimize();
        b.extend_from_slice(&(set.serialized_size() as u32).to_le_bytes());
        set.serialize_into(&mut b).expect("writing to a Vec cannot fail");
    }
    b
}

fn decode_sets(mut b: &[u8]) -> Result<(RoaringBitmap, RoaringBitmap)> {
    let bad = || Error::corrupt("layer set record is malformed");
    let mut sets = Vec::with_capacity(2);
    for _ in 0..2 {
        let len = b.get(..4).ok_or_else(bad)?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let bytes = b.get(4..4 + len).ok_or_else(bad)?;
        let mut cur = bytes;
        sets.push(RoaringBitmap::deserialize_from(&mut cur).map_err(|_| bad())?);
        if !cur.is_empty() {
            return Err(bad());
        }
        b = &b[4 + len..];
    }
    if !b.is_empty() {
        return Err(bad());
    }
    let chunks = sets.pop().expect("two sets");
    Ok((sets.pop().expect("two sets"), chunks))
}

/// What a client holds, derived from its layers.
#[derive(Debug, Default)]
pub(crate) struct Holdings {
    pub layers: Vec<LayerId>,
    pub files: RoaringBitmap,
    pub chunks: RoaringBitmap,
}

/// A layer's file and chunk sets: stored in LAYER_SETS once a client holds
/// it, else derived from its number map.
fn sets_of(
    sets: &impl ReadableTable<&'static [u8], &'static [u8]>,
    maps: &impl ReadableTable<&'static [u8], &'static [u8]>,
    l: &LayerId,
) -> Result<(RoaringBitmap, RoaringBitmap)> {
    if let Some(v) = sets.get(&l.as_bytes()[..])? {
        return decode_sets(v.value());
    }
    let m = index::get_parted(maps, &l.as_bytes()[..], "number map")?
        .ok_or_else(|| Error::not_found(format!("layer {l} is not in the store")))?;
    let m = LayerMap::decode(&m)?;
    Ok((m.file_set(), m.chunk_set()))
}

/// Rows of LAYER_SETS that disagree with their layer's number map (or have
/// none), as `(layer key in hex, problem)`: for `verify`.
pub(crate) fn stale_layer_sets(tx: &redb::ReadTransaction) -> Result<Vec<(String, String)>> {
    let (sets, maps) = (tx.open_table(LAYER_SETS)?, tx.open_table(LAYER_MAPS)?);
    let mut bad = Vec::new();
    for e in sets.iter()? {
        let (k, v) = e?;
        let key = hex::encode(k.value());
        let map = match index::get_parted(&maps, k.value(), "number map") {
            Ok(m) => m,
            // The map's own damage is reported by the layer check.
            Err(e) if e.kind() == crate::ErrorKind::Corrupt => continue,
            Err(e) => return Err(e),
        };
        let problem = match (map, decode_sets(v.value())) {
            (None, _) => "file and chunk sets of a layer the index lacks".to_string(),
            (_, Err(e)) => format!("file and chunk sets: {e}"),
            (Some(m), Ok(got)) => match LayerMap::decode(&m) {
                Ok(m) if (m.file_set(), m.chunk_set()) == got => continue,
                Ok(_) => "file and chunk sets disagree with the number map".to_string(),
                Err(_) => continue, // the map's own damage is reported by the layer check
            },
        };
        bad.push((key, problem));
    }
    Ok(bad)
}

/// Make sure LAYER_SETS holds each layer's sets (in the transaction that
/// records a client holding them).
fn store_sets(tx: &redb::WriteTransaction, layers: &[LayerId]) -> Result<()> {
    let mut sets = tx.open_table(LAYER_SETS)?;
    let maps = tx.open_table(LAYER_MAPS)?;
    for l in layers {
        if sets.get(&l.as_bytes()[..])?.is_some() {
            continue;
        }
        let m = index::get_parted(&maps, &l.as_bytes()[..], "number map")?
            .ok_or_else(|| Error::not_found(format!("layer {l} is not in the store")))?;
        let m = LayerMap::decode(&m)?;
        sets.insert(&l.as_bytes()[..], &encode_sets(&m.file_set(), &m.chunk_set())[..])?;
    }
    Ok(())
}

/// A client and what it holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClientInfo {
    /// The client's name.
    pub name: ClientId,
    /// Layers it holds.
    pub layers: Vec<LayerId>,
    /// Distinct files it holds.
    pub files: u64,
    /// Distinct chunks it holds.
    pub chunks: u64,
    /// Sum of its layers' uncompressed sizes.
    pub layer_bytes: u64,
    /// Bytes of index this client's record takes.
    pub record_bytes: u64,
}

/// How one content item of a layer would travel to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// The client holds the whole file: a reference.
    Held,
    /// The client holds some of its chunks: the rest travel.
    Partial,
    /// The client holds none of it: its content travels.
    Missing,
    /// It travels as a delta against a similar file the client holds.
    Delta,
}

/// What a diff works out.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiffOptions {
    /// Encode files the client lacks as deltas against similar files it holds,
    /// where that is smaller (costs compression work; `pack` always does it).
    pub deltas: bool,
}

/// One content item in a diff.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileDiff {
    /// Path in the layer (lossy UTF-8); empty for non-file data.
    pub path: String,
    /// Content id.
    pub id: FileId,
    /// Length.
    pub size: u64,
    /// How it travels.
    pub state: FileState,
    /// Bytes the client already holds.
    pub held_bytes: u64,
    /// Content bytes that must travel.
    pub carried_bytes: u64,
    /// Chunks that must travel (for partly held files).
    pub carried_chunks: u32,
    /// The held file a delta is against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<FileId>,
    /// The base's size.
    #[serde(skip_serializing_if = "is_zero")]
    pub base_size: u64,
    #[serde(skip)]
    pub(crate) entry: MapEntry,
    /// For a partly held file: which chunks travel.
    #[serde(skip)]
    pub(crate) carried: Vec<bool>,
    /// For a delta: the encoded delta, reused by the tarball writer.
    #[serde(skip)]
    pub(crate) delta: Option<Vec<u8>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Totals of a diff.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DiffSummary {
    /// Content items in the layer.
    pub files: u64,
    /// Items held whole, and their bytes.
    pub held_files: u64,
    /// Bytes of items held whole.
    pub held_bytes: u64,
    /// Items held in part.
    pub partial_files: u64,
    /// Bytes of partly held items the client has.
    pub partial_held_bytes: u64,
    /// Bytes of partly held items that must travel.
    pub partial_carried_bytes: u64,
    /// Items not held at all.
    pub missing_files: u64,
    /// Their bytes.
    pub missing_bytes: u64,
    /// Items sent as deltas.
    pub delta_files: u64,
    /// Their full size.
    pub delta_file_bytes: u64,
    /// Bytes of their deltas.
    pub delta_bytes: u64,
    /// All content bytes that travel.
    pub carried_bytes: u64,
    /// Exact length of the dedup tarball's uncompressed stream.
    pub dedup_tar_bytes: u64,
    /// The layer's uncompressed tar size.
    pub layer_bytes: u64,
}

/// A layer compared with what one client holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diff {
    /// The layer.
    pub layer: LayerId,
    /// The client.
    pub client: ClientId,
    /// Totals.
    pub summary: DiffSummary,
    /// Per content item, in layer order.
    pub files: Vec<FileDiff>,
}

impl Store {
    fn read_possession(&self, tx: &redb::ReadTransaction, c: &ClientId) -> Result<Possession> {
        let t = tx.open_table(CLIENTS)?;
        let v = t.get(c.as_str())?;
        let v = v.ok_or_else(|| Error::not_found(format!("no client named {c}")))?;
        Possession::decode(v.value())
    }

    /// A client's layers with the union of their file and chunk sets.
    fn holdings(&self, tx: &redb::ReadTransaction, c: &ClientId) -> Result<Holdings> {
        let p = self.read_possession(tx, c)?;
        let (sets, maps) = (tx.open_table(LAYER_SETS)?, tx.open_table(LAYER_MAPS)?);
        let mut h = Holdings::default();
        for l in &p.layers {
            let (f, ch) = sets_of(&sets, &maps, l)?;
            h.files |= f;
            h.chunks |= ch;
        }
        h.layers = p.layers;
        Ok(h)
    }

    /// Register a client holding nothing.
    pub fn add_client(&self, c: &ClientId) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(CLIENTS)?;
            if t.get(c.as_str())?.is_some() {
                return Err(Error::new(ErrorKind::Config, format!("client {c} already exists")));
            }
            t.insert(c.as_str(), &Possession::default().encode()[..])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forget a client and its possession map.
    pub fn remove_client(&self, c: &ClientId) -> Result<()> {
        let tx = self.db.begin_write()?;
        if tx.open_table(CLIENTS)?.remove(c.as_str())?.is_none() {
            return Err(Error::not_found(format!("no client named {c}")));
        }
        tx.commit()?;
        Ok(())
    }

    /// Every client, by name.
    pub fn clients(&self) -> Result<Vec<ClientInfo>> {
        let tx = self.db.begin_read()?;
        let names: Vec<String> =
            tx.open_table(CLIENTS)?.iter()?.map(|e| Ok(e?.0.value().to_string())).collect::<Result<_>>()?;
        names.iter().map(|n| self.client_in(&tx, &ClientId::new(n)?)).collect()
    }

    /// One client's holdings.
    pub fn client(&self, c: &ClientId) -> Result<ClientInfo> {
        self.client_in(&self.db.begin_read()?, c)
    }

    fn client_in(&self, tx: &redb::ReadTransaction, c: &ClientId) -> Result<ClientInfo> {
        let p = self.holdings(tx, c)?;
        let layers = tx.open_table(LAYERS)?;
        let mut layer_bytes = 0;
        for l in &p.layers {
            if let Some(v) = layers.get(&l.as_bytes()[..])? {
                layer_bytes += LayerInfo::decode(v.value())?.tar_size;
            }
        }
        Ok(ClientInfo {
            name: c.clone(),
            files: p.files.len(),
            chunks: p.chunks.len(),
            layer_bytes,
            record_bytes: Possession { layers: p.layers.clone() }.encode().len() as u64,
            layers: p.layers,
        })
    }

    /// Record that a client holds these layers (already-held ones are no-ops).
    pub fn hold(&self, c: &ClientId, layers: &[LayerId]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut clients = tx.open_table(CLIENTS)?;
            let mut p = match clients.get(c.as_str())? {
                Some(v) => Possession::decode(v.value())?,
                None => return Err(Error::not_found(format!("no client named {c}"))),
            };
            store_sets(&tx, layers)?;
            for l in layers {
                if !p.layers.contains(l) {
                    p.layers.push(*l);
                }
            }
            clients.insert(c.as_str(), &p.encode()[..])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replace what a client holds with exactly these layers (its own report).
    pub fn set_possession(&self, c: &ClientId, layers: &[LayerId]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut clients = tx.open_table(CLIENTS)?;
            if clients.get(c.as_str())?.is_none() {
                return Err(Error::not_found(format!("no client named {c}")));
            }
            let mut unique = Vec::with_capacity(layers.len());
            for l in layers {
                if !unique.contains(l) {
                    unique.push(*l);
                }
            }
            store_sets(&tx, &unique)?;
            clients.insert(c.as_str(), &Possession { layers: unique }.encode()[..])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Record that a client no longer holds these layers; its file and chunk
    /// sets are rebuilt from the layers it still holds.
    pub fn evict(&self, c: &ClientId, layers: &[LayerId]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut clients = tx.open_table(CLIENTS)?;
            let old = match clients.get(c.as_str())? {
                Some(v) => Possession::decode(v.value())?,
                None => return Err(Error::not_found(format!("no client named {c}"))),
            };
            if let Some(l) = layers.iter().find(|l| !old.layers.contains(l)) {
                return Err(Error::not_found(format!("client {c} does not hold layer {l}")));
            }
            let keep = old.layers.iter().filter(|l| !layers.contains(l)).copied().collect();
            clients.insert(c.as_str(), &Possession { layers: keep }.encode()[..])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Compare a layer with what a client holds (possession only, no deltas).
    pub fn diff(&self, c: &ClientId, layer: &LayerId) -> Result<Diff> {
        self.diff_with(c, layer, DiffOptions::default())
    }

    /// Compare a layer with what a client holds, deciding each item's encoding.
    pub fn diff_with(&self, c: &ClientId, layer: &LayerId, opts: DiffOptions) -> Result<Diff> {
        let tx = self.db.begin_read()?;
        let p = self.holdings(&tx, c)?;
        let key = &layer.as_bytes()[..];
        let missing = || Error::not_found(format!("layer {layer} is not in the store"));
        let info = LayerInfo::decode(tx.open_table(LAYERS)?.get(key)?.ok_or_else(missing)?.value())?;
        let recipe = index::PartedReader::open(tx.open_table(RECIPES)?, key)?.ok_or_else(missing)?;
        let map = index::get_parted(&tx.open_table(LAYER_MAPS)?, key, "number map")?.ok_or_else(missing)?;
        let map = LayerMap::decode(&map).map_err(|e| e.context(format_args!("layer {layer}")))?;
        let files_t = tx.open_table(FILES)?;
        let mut entries = map.entries.into_iter();
        let magic = crate::dedup::magic_text(layer, info.tar_size, c, self.params);
        let mut raw_bytes = crate::dedup::entry_bytes(magic.len() as u64) + crate::dedup::END_BYTES;
        let mut files = Vec::new();
        let named = |e: Error| e.context(format_args!("layer {layer}"));
        for item in RecipeReader::stream(recipe).map_err(named)? {
            let (id, size, path) = match item.map_err(named)? {
                RecipeItem::Raw(b) => {
                    raw_bytes += crate::dedup::raw_entry_bytes(b.len() as u64);
                    continue;
                }
                RecipeItem::File { id, size, path } => (id, size, String::from_utf8_lossy(&path).into_owned()),
                RecipeItem::Data { id, size } => (id, size, String::new()),
            };
            let entry = entries.next().ok_or_else(|| Error::corrupt(format!("layer {layer}: number map is short")))?;
            let mut d = FileDiff {
                path,
                id,
                size,
                state: FileState::Missing,
                held_bytes: 0,
                carried_bytes: size,
                carried_chunks: entry.chunks.len() as u32,
                base: None,
                base_size: 0,
                entry,
                carried: Vec::new(),
                delta: None,
            };
            if p.files.contains(d.entry.file) {
                d.state = FileState::Held;
                (d.held_bytes, d.carried_bytes, d.carried_chunks) = (size, 0, 0);
            } else if d.entry.chunks.iter().any(|n| p.chunks.contains(*n)) {
                let v =
                    files_t.get(&id.as_bytes()[..])?.ok_or_else(|| Error::corrupt(format!("file {id} is missing")))?;
                let (_, r) = index::decode_file(v.value())?;
                let (mut held, mut carried, mut n) = (0u64, 0u64, 0u32);
                let mut mask = Vec::with_capacity(r.chunks.len());
                for ((_, len), num) in r.chunks.iter().zip(&d.entry.chunks) {
                    let carry = !p.chunks.contains(*num);
                    mask.push(carry);
                    if carry {
                        carried += *len as u64;
                        n += 1;
                    } else {
                        held += *len as u64;
                    }
                }
                // A chunk list costs its table; only worth it when it saves bytes
                // (and a table past the row limit would not apply).
                if held > crate::dedup::chunk_table_bytes(r.chunks.len())
                    && r.chunks.len() as u64 <= crate::dedup::MAX_TABLE_ROWS
                {
                    d.state = FileState::Partial;
                    d.carried = mask;
                    (d.held_bytes, d.carried_bytes, d.carried_chunks) = (held, carried, n);
                }
            }
            files.push(d);
        }
        if opts.deltas && files.iter().any(|d| d.state != FileState::Held) {
            let mut bases = crate::delta::BaseIndex::default();
            for l in &p.layers {
                let Some(r) = index::PartedReader::open(tx.open_table(RECIPES)?, &l.as_bytes()[..])? else { continue };
                for item in RecipeReader::stream(r)? {
                    if let RecipeItem::File { id, size, path } = item? {
                        bases.add(&path, id, size);
                    }
                }
            }
            self.choose_deltas(&mut files, &bases)?;
        }
        let mut s = DiffSummary { layer_bytes: info.tar_size, dedup_tar_bytes: raw_bytes, ..Default::default() };
        for d in &files {
            s.files += 1;
            match d.state {
                FileState::Held => {
                    s.held_files += 1;
                    s.held_bytes += d.size;
                }
                FileState::Partial => {
                    s.partial_files += 1;
                    s.partial_held_bytes += d.held_bytes;
                    s.partial_carried_bytes += d.carried_bytes;
                }
                FileState::Delta => {
                    s.delta_files += 1;
                    s.delta_file_bytes += d.size;
                    s.delta_bytes += d.carried_bytes;
                }
                FileState::Missing => {
                    s.missing_files += 1;
                    s.missing_bytes += d.size;
                }
            }
            s.carried_bytes += d.carried_bytes;
            s.dedup_tar_bytes += crate::dedup::item_entry_bytes(d);
        }
        Ok(Diff { layer: *layer, client: c.clone(), summary: s, files })
    }

    /// For each file the client lacks that has a base, encode a delta in
    /// parallel and keep it where it beats the file's own encoding (its
    /// carried bytes, zstd-compressed as the tarball would compress them).
    fn choose_deltas(&self, files: &mut [FileDiff], bases: &crate::delta::BaseIndex) -> Result<()> {
        use rayon::prelude::*;
        let path_bytes = |d: &FileDiff| d.path.as_bytes().to_vec();
        let work: Vec<(usize, (FileId, u64))> = files
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d.state, FileState::Missing | FileState::Partial) && !d.path.is_empty())
            .filter_map(|(i, d)| bases.pick(&path_bytes(d), d.size).filter(|b| b.0 != d.id).map(|b| (i, b)))
            .collect();
        type Chosen = Option<(usize, (FileId, u64), Vec<u8>)>;
        let results: Vec<Chosen> = work
            .par_iter()
            .map(|(i, base)| -> Result<_> {
                let d = &files[*i];
                let target = self.read_file(&d.id)?;
                let own = match d.state {
                    FileState::Partial => self.carried_content(d)?,
                    _ => target.clone(),
                };
                let own_len = crate::pack::compress_chunk(&own, 3).map_or(own.len(), |c| c.len());
                let delta = crate::delta::encode(&self.read_file(&base.0)?, &target)?;
                Ok((delta.len() < own_len).then_some((*i, *base, delta)))
            })
            .collect::<Result<_>>()?;
        for (i, base, delta) in results.into_iter().flatten() {
            let d = &mut files[i];
            d.state = FileState::Delta;
            d.base = Some(base.0);
            d.base_size = base.1;
            d.held_bytes = 0;
            d.carried_bytes = delta.len() as u64;
            d.carried_chunks = 0;
            d.carried = Vec::new();
            d.delta = Some(delta);
        }
        Ok(())
    }

    /// The bytes of a partly held file's carried chunks, concatenated.
    fn carried_content(&self, d: &FileDiff) -> Result<Vec<u8>> {
        let r = self.file_recipe(&d.id)?.ok_or_else(|| Error::corrupt(format!("file {} is missing", d.id)))?;
        let mut out = Vec::with_capacity(d.carried_bytes as usize);
        let tx = self.db.begin_read()?;
        let chunks = tx.open_table(crate::index::CHUNKS)?;
        for ((c, _), carry) in r.chunks.iter().zip(&d.carried) {
            if *carry {
                let v =
                    chunks.get(&c.as_bytes()[..])?.ok_or_else(|| Error::corrupt(format!("chunk {c} is missing")))?;
                out.extend_from_slice(&self.read_chunk(&crate::pack::ChunkLoc::decode(v.value())?)?);
            }
        }
        Ok(out)
    }

    /// Number of clients.
    pub fn client_count(&self) -> Result<u64> {
        Ok(self.db.begin_read()?.open_table(CLIENTS)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let p = Possession { layers: vec![LayerId::from_bytes([5; 32]), LayerId::from_bytes([6; 32])] };
        let b = p.encode();
        assert_eq!(b.len(), 5 + 64, "32 bytes a held layer");
        assert_eq!(Possession::decode(&b).unwrap(), p);
        assert!(Possession::decode(&b[..b.len() - 1]).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(Possession::decode(&longer).is_err());
    }

    #[test]
    fn version_1_records_still_read() {
        let (mut files, mut chunks) = (RoaringBitmap::new(), RoaringBitmap::new());
        files.insert_range(0..1000);
        chunks.insert(77);
        let mut v1 = vec![RECORD_V1];
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&[5; 32]);
        v1.extend_from_slice(&encode_sets(&files, &chunks));
        assert_eq!(Possession::decode(&v1).unwrap().layers, vec![LayerId::from_bytes([5; 32])]);
        v1.push(0);
        assert!(Possession::decode(&v1).is_err(), "a v1 bitmap must fill its length exactly");
    }

    #[test]
    fn sets_round_trip_and_reject_padding() {
        let (mut files, mut chunks) = (RoaringBitmap::new(), RoaringBitmap::new());
        files.insert_range(0..1000);
        chunks.insert(77);
        let b = encode_sets(&files, &chunks);
        assert_eq!(decode_sets(&b).unwrap(), (files.clone(), chunks));
        assert!(b.len() < 64, "runs compress: {}", b.len());
        assert!(decode_sets(&b[..b.len() - 1]).is_err());
        // A bitmap shorter than its declared length (a stray byte after it) is refused.
        let flen = files.serialized_size();
        let mut padded = ((flen + 1) as u32).to_le_bytes().to_vec();
        padded.extend_from_slice(&b[4..4 + flen]);
        padded.push(0);
        padded.extend_from_slice(&b[4 + flen..]);
        assert!(decode_sets(&padded).is_err());
    }
}
