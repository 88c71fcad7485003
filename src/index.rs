//! The redb index: table definitions and the encodings of their values.

use crate::error::{Error, Result};
use crate::ids::{BlobDigest, LayerId};
use crate::input::Compression;
use crate::recipe::FileRecipe;
use redb::TableDefinition;

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
}
