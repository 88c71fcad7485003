//! The redb index: table definitions and the encodings of their values.

use crate::error::{Error, Result};
use crate::ids::{BlobDigest, LayerId};
use crate::input::Compression;
use crate::recipe::FileRecipe;
use redb::{ReadableTable, TableDefinition};

/// Store-wide settings: format version, chunker parameters.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// ChunkId → ChunkLoc (28 bytes).
pub(crate) const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunks");
/// FileId → file number u32 | FileRecipe.
pub(crate) const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
/// LayerId → LayerInfo.
pub(crate) const LAYERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("layers");
/// LayerId → encoded layer recipe.
pub(crate) const RECIPES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("recipes");
/// Compressed blob digest → LayerId.
pub(crate) const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// LayerId → LayerMap (dense file and chunk numbers in recipe order).
pub(crate) const LAYER_MAPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("layer_maps");
/// LayerId → the layer's file and chunk sets (roaring bitmaps), stored once a
/// client holds the layer.
pub(crate) const LAYER_SETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("layer_sets");
/// Client name → possession record (the layers it holds).
pub(crate) const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
/// PackId → pack length u64 | chunk count u64.
pub(crate) const PACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("packs");

pub(crate) const FORMAT_KEY: &str = "format";
pub(crate) const CHUNKER_KEY: &str = "chunker";
/// Next dense chunk number (u32).
pub(crate) const NEXT_CHUNK_KEY: &str = "next_chunk_num";
/// Next dense file number (u32).
pub(crate) const NEXT_FILE_KEY: &str = "next_file_num";
/// Present (value 1) once every layer the index holds has its layer object
/// in the backend: stores made before layer objects existed lack it.
pub(crate) const LAYER_OBJECTS_KEY: &str = "layer_objects";
/// Index format version; bump on any incompatible change to a table's encoding.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// What the store knows about one layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerInfo {
    /// The diff_id.
    pub id: LayerId,
    /// The compressed blob's digest, when the layer arrived compressed.
    pub blob: Option<BlobDigest>,
    /// How it arrived.
    pub compression: Compression,
    /// Length of the uncompressed tar.
    pub tar_size: u64,
    /// Tar entries (extension headers not counted).
    pub entries: u64,
    /// Regular files with content.
    pub files: u64,
    /// Bytes of regular-file content.
    pub file_bytes: u64,
    /// Chunk references (with repeats).
    pub chunks: u64,
    /// Seconds since the Unix epoch when the ingest committed.
    pub ingested_at: u64,
}

const LAYER_INFO_VERSION: u8 = 1;

impl LayerInfo {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(120);
        b.push(LAYER_INFO_VERSION);
        b.push(self.compression.code());
        b.push(self.blob.is_some() as u8);
        b.extend_from_slice(self.id.as_bytes());
        b.extend_from_slice(self.blob.as_ref().map_or(&[0u8; 32], |d| d.as_bytes()));
        for v in [self.tar_size, self.entries, self.files, self.file_bytes, self.chunks, self.ingested_at] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != 3 + 64 + 48 || b[0] != LAYER_INFO_VERSION {
            return Err(Error::corrupt("layer record is malformed"));
        }
        let id = LayerId::from_bytes(b[3..35].try_into().expect("32 bytes"));
        let blob = (b[2] != 0).then(|| BlobDigest::from_bytes(b[35..67].try_into().expect("32 bytes")));
        let n = |i: usize| u64::from_le_bytes(b[67 + 8 * i..75 + 8 * i].try_into().expect("8 bytes"));
        Ok(LayerInfo {
            id,
            blob,
            compression: Compression::from_code(b[1])?,
            tar_size: n(0),
            entries: n(1),
            files: n(2),
            file_bytes: n(3),
            chunks: n(4),
            ingested_at: n(5),
        })
    }
}

/// FILES value: the file's dense number, then its recipe.
pub(crate) fn encode_file(num: u32, r: &FileRecipe) -> Vec<u8> {
    let mut b = num.to_le_bytes().to_vec();
    b.extend_from_slice(&r.encode());
    b
}

pub(crate) fn decode_file(b: &[u8]) -> Result<(u32, FileRecipe)> {
    if b.len() < 4 {
        return Err(Error::corrupt("file record is malformed"));
    }
    Ok((u32::from_le_bytes(b[..4].try_into().expect("4 bytes")), FileRecipe::decode(&b[4..])?))
}

/// A u32 counter kept in META.
pub(crate) fn get_counter(meta: &impl redb::ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<u32> {
    match meta.get(key)? {
        None => Ok(0),
        Some(v) => v
            .value()
            .try_into()
            .map(u32::from_le_bytes)
            .map_err(|_| Error::corrupt(format!("counter {key} is malformed"))),
    }
}

/// Whether META flag `key` is set (see [`set_flag`]).
pub(crate) fn flag(db: &redb::Database, key: &str) -> Result<bool> {
    let tx = db.begin_read()?;
    let meta = tx.open_table(META)?;
    Ok(meta.get(key)?.is_some_and(|v| v.value() == [1]))
}

/// Set META flag `key` (one write transaction).
pub(crate) fn set_flag(db: &redb::Database, key: &str) -> Result<()> {
    let tx = db.begin_write()?;
    tx.open_table(META)?.insert(key, &[1u8][..])?;
    tx.commit()?;
    Ok(())
}

/// RECIPES and LAYER_MAPS values longer than this are stored in parts, under
/// the layer id followed by the part's number (u32 big-endian), from 0 on:
/// redb builds a value in one page run of the next power of two, and a
/// layer of 2,000,000 small files has a 100 MB recipe. Just under 1 MiB, so
/// that a part and its leaf header fit a 1 MiB page. The crate's unit tests
/// use 1 KiB, so that their layers' recipes and maps go in parts.
pub(crate) const PART_BYTES: usize = if cfg!(test) { 1 << 10 } else { (1 << 20) - (4 << 10) };

fn part_key(key: &[u8], n: u32) -> Vec<u8> {
    let mut k = key.to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

type BytesTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// Store `len` bytes from `src` as `key`'s value: whole when they fit in
/// [`PART_BYTES`], else in parts. What `key` held before goes, in either form.
pub(crate) fn put_parted(t: &mut BytesTable<'_>, key: &[u8], len: u64, src: &mut dyn std::io::Read) -> Result<()> {
    remove_parted(t, key)?;
    let fill = |dst: &mut [u8], src: &mut dyn std::io::Read| {
        src.read_exact(dst).map_err(|e| Error::io("reading a large index value back", e))
    };
    if len <= PART_BYTES as u64 {
        return fill(t.insert_reserve(key, len as u32)?.as_mut(), src);
    }
    let (mut left, mut n) = (len, 0u32);
    while left > 0 {
        let take = left.min(PART_BYTES as u64);
        fill(t.insert_reserve(&part_key(key, n)[..], take as u32)?.as_mut(), src)?;
        left -= take;
        n = n.checked_add(1).ok_or_else(|| Error::invalid("an index value of more than 2^32 parts"))?;
    }
    Ok(())
}

/// Remove `key`'s value, whole or in parts.
pub(crate) fn remove_parted(t: &mut BytesTable<'_>, key: &[u8]) -> Result<()> {
    t.remove(key)?;
    let parts: Vec<Vec<u8>> = t
        .range(&part_key(key, 0)[..]..=&part_key(key, u32::MAX)[..])?
        .map(|e| e.map(|(k, _)| k.value().to_vec()))
        .collect::<std::result::Result<_, _>>()?;
    for k in parts {
        t.remove(&k[..])?;
    }
    Ok(())
}

/// `key`'s value, whole or put together from its parts; an error if its
/// parts are not numbered 0, 1, ... or it is stored both ways. `what` names
/// the value in that error ("recipe", "number map").
pub(crate) fn get_parted<T>(t: &T, key: &[u8], what: &str) -> Result<Option<Vec<u8>>>
where
    T: redb::ReadableTable<&'static [u8], &'static [u8]>,
{
    let whole = t.get(key)?.map(|v| v.value().to_vec());
    let mut parts = t.range(&part_key(key, 0)[..]..=&part_key(key, u32::MAX)[..])?;
    let Some(first) = parts.next() else { return Ok(whole) };
    let damaged = |problem: String| Error::corrupt(format!("{what} of layer {}: {problem}", hex::encode(key)));
    if whole.is_some() {
        return Err(damaged("stored both whole and in parts".into()));
    }
    let mut v = Vec::new();
    for (i, e) in std::iter::once(first).chain(parts).enumerate() {
        let (k, part) = e?;
        let Some(n) = k.value().get(key.len()..).and_then(|n| <[u8; 4]>::try_from(n).ok()) else {
            return Err(damaged(format!("a key of {} bytes among its parts", k.value().len())));
        };
        let n = u32::from_be_bytes(n);
        if n as usize != i {
            return Err(damaged(format!("part {i} is missing (part {n} follows)")));
        }
        v.extend_from_slice(part.value());
    }
    Ok(Some(v))
}

/// Reads a value stored whole or in parts, one part at a time (a layer of
/// 2,000,000 small files has a 100 MB recipe): for readers that stream it.
/// Parts missing at the end read as a short value; `verify` names them
/// ([`get_parted`]).
pub(crate) struct PartedReader {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    key: Vec<u8>,
    /// The next part to read; `None` once the last is in `buf`.
    next: Option<u32>,
    buf: Vec<u8>,
    pos: usize,
}

impl PartedReader {
    /// `key`'s value, if the table holds it, whole or in parts.
    pub fn open(table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>, key: &[u8]) -> Result<Option<Self>> {
        let (buf, next) = match table.get(key)? {
            Some(v) => (v.value().to_vec(), None),
            None if table.get(&part_key(key, 0)[..])?.is_some() => (Vec::new(), Some(0)),
            None => return Ok(None),
        };
        Ok(Some(PartedReader { table, key: key.to_vec(), next, buf, pos: 0 }))
    }
}

impl std::io::Read for PartedReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(n) = self.next else { return Ok(0) };
            let part = self.table.get(&part_key(&self.key, n)[..]).map_err(std::io::Error::other)?;
            self.buf.clear();
            self.pos = 0;
            match part {
                Some(v) => {
                    self.buf.extend_from_slice(v.value());
                    self.next = n.checked_add(1);
                }
                None => self.next = None,
            }
        }
        let k = out.len().min(self.buf.len() - self.pos);
        out[..k].copy_from_slice(&self.buf[self.pos..self.pos + k]);
        self.pos += k;
        Ok(k)
    }
}

/// A pack's record in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackInfo {
    pub len: u64,
    pub chunks: u64,
}

impl PackInfo {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..].copy_from_slice(&self.chunks.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != 16 {
            return Err(Error::corrupt("pack record is malformed"));
        }
        Ok(PackInfo {
            len: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            chunks: u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_info_round_trip() {
        let l = LayerInfo {
            id: LayerId::from_bytes([1; 32]),
            blob: Some(BlobDigest::from_bytes([2; 32])),
            compression: Compression::Gzip,
            tar_size: 10,
            entries: 2,
            files: 1,
            file_bytes: 5,
            chunks: 1,
            ingested_at: 99,
        };
        assert_eq!(LayerInfo::decode(&l.encode()).unwrap(), l);
        assert!(LayerInfo::decode(&l.encode()[1..]).is_err());
        let p = PackInfo { len: 5, chunks: 1 };
        assert_eq!(PackInfo::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn large_values_go_in_parts() {
        const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let (key, other) = ([7u8; 32], [8u8; 32]);
        let big: Vec<u8> = (0..PART_BYTES * 3 + 5).map(|i| (i * 7 % 251) as u8).collect();
        let put = |k: &[u8], v: &[u8]| {
            let tx = db.begin_write().unwrap();
            put_parted(&mut tx.open_table(T).unwrap(), k, v.len() as u64, &mut &v[..]).unwrap();
            tx.commit().unwrap();
        };
        let get = |k: &[u8]| get_parted(&db.begin_read().unwrap().open_table(T).unwrap(), k, "recipe");
        let keys = || -> Vec<Vec<u8>> {
            let tx = db.begin_read().unwrap();
            let t = tx.open_table(T).unwrap();
            t.iter().unwrap().map(|e| e.unwrap().0.value().to_vec()).collect()
        };
        let stream = |k: &[u8]| {
            let r = PartedReader::open(db.begin_read().unwrap().open_table(T).unwrap(), k).unwrap();
            r.map(|mut r| {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut r, &mut v).unwrap();
                v
            })
        };
        put(&other, b"neighbour");
        put(&key, &big);
        assert_eq!(keys().len(), 5, "four parts and the neighbour");
        assert!(stream(&key).unwrap() == big);
        assert_eq!(stream(&other).unwrap(), b"neighbour");
        assert_eq!(stream(&[9u8; 32]), None);
        assert!(keys().iter().filter(|k| k.len() == 36).all(|k| k[..32] == key), "parts under the key");
        assert_eq!(get(&key).unwrap().unwrap(), big);
        assert_eq!(get(&other).unwrap().unwrap(), b"neighbour");
        assert_eq!(get(&[9u8; 32]).unwrap(), None);
        // A small value replaces the parts; parts replace a whole value.
        put(&key, b"small");
        assert_eq!(keys().len(), 2);
        assert_eq!(get(&key).unwrap().unwrap(), b"small");
        put(&key, &big);
        assert_eq!(get(&key).unwrap().unwrap(), big);
        // Damage: a part gone, or the value stored both ways.
        let tx = db.begin_write().unwrap();
        tx.open_table(T).unwrap().remove(&part_key(&key, 1)[..]).unwrap();
        tx.commit().unwrap();
        assert_eq!(stream(&key).unwrap().len(), PART_BYTES, "streamed, it ends at the gap");
        let e = get(&key).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        assert!(
            e.to_string().contains("recipe of layer 0707")
                && e.to_string().contains("part 1 is missing (part 2 follows)"),
            "{e}"
        );
        put(&key, &big);
        let tx = db.begin_write().unwrap();
        tx.open_table(T).unwrap().insert(&[&part_key(&key, 0)[..], &[0][..]].concat()[..], &b"x"[..]).unwrap();
        tx.commit().unwrap();
        assert!(get(&key).unwrap_err().to_string().contains("a key of 37 bytes among its parts"));
        put(&key, &big);
        let tx = db.begin_write().unwrap();
        tx.open_table(T).unwrap().insert(&key[..], &b"whole"[..]).unwrap();
        tx.commit().unwrap();
        assert!(get(&key).unwrap_err().to_string().contains("both whole and in parts"));
    }
}
