//! Layer objects: everything the index knows about one layer, as one object
//! in the backend, so the index can be rebuilt from the backend alone (see
//! `reindex.rs` and docs/format.md, "Layer objects").
//!
//! ```text
//! magic "CSLAYER\0" | version u32 = 1 | chunker [12] | LAYERS value [115]
//! | n_blobs u32 | blob digest [32] * n_blobs
//! | recipe_len u64 | RECIPES value
//! | n_files u32 | (file id [32] | len u32 | FILES value) * n_files
//! | BLAKE3 [32] of everything before it
//! ```

use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};
use crate::ids::{BlobDigest, FileId, LayerId};
use crate::index::{self, LayerInfo, BLOBS, FILES, LAYERS, RECIPES};
use crate::recipe::{RecipeItem, RecipeReader};
use crate::spill::SpillReader;
use crate::store::Store;
use crate::wire::Reader;
use redb::ReadableTable;
use std::collections::HashSet;
use std::io::Read;

const MAGIC: &[u8; 8] = b"CSLAYER\0";
const VERSION: u32 = 1;
const INFO_LEN: usize = 115;

/// A decoded layer object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerObject {
    pub chunker: ChunkerParams,
    pub info: LayerInfo,
    /// The raw LAYERS value (kept for exact rebuilds).
    pub info_bytes: Vec<u8>,
    pub blobs: Vec<BlobDigest>,
    /// The RECIPES value.
    pub recipe: Vec<u8>,
    /// `(file id, FILES value)` for each distinct content item, in first-use order.
    pub files: Vec<(FileId, Vec<u8>)>,
}

impl LayerObject {
    pub fn encode(&self) -> Vec<u8> {
        let mut files = Vec::with_capacity(self.files.iter().map(|(_, v)| 36 + v.len()).sum());
        for (id, v) in &self.files {
            files.extend_from_slice(id.as_bytes());
            files.extend_from_slice(&(v.len() as u32).to_le_bytes());
            files.extend_from_slice(v);
        }
        let count = (self.files.len() as u32).to_le_bytes();
        let mut o = EncodedObject::new(
            self.chunker,
            &self.info_bytes,
            &self.blobs,
            SpillReader::bytes(&self.recipe),
            &count,
            SpillReader::bytes(&files),
        );
        let mut out = Vec::with_capacity(o.len() as usize);
        o.read_to_end(&mut out).expect("reading from memory");
        out
    }

    /// Parse an object read back from a backend; `want` is the layer its name says.
    pub fn decode(b: &[u8], want: &LayerId) -> Result<Self> {
        let v = LayerObjectView::parse(b, want)?;
        let files = v.files().map(|(f, value)| (f, value.to_vec())).collect();
        Ok(LayerObject {
            chunker: v.chunker,
            info: v.info,
            info_bytes: v.info_bytes.to_vec(),
            blobs: v.blobs.chunks_exact(32).map(|d| BlobDigest::from_bytes(d.try_into().expect("32 bytes"))).collect(),
            recipe: v.recipe.to_vec(),
            files,
        })
    }
}

/// A layer object checked and read in place: what [`LayerObject::decode`]
/// makes of it, without copying its recipe and files (verify reads a
/// million-file layer's ~140 MB object so).
pub(crate) struct LayerObjectView<'a> {
    pub chunker: ChunkerParams,
    pub info: LayerInfo,
    pub info_bytes: &'a [u8],
    /// The blob digests, 32 bytes each.
    pub blobs: &'a [u8],
    pub recipe: &'a [u8],
    /// The files section after its count, every entry checked.
    files: &'a [u8],
}

impl<'a> LayerObjectView<'a> {
    /// See [`LayerObject::decode`].
    pub fn parse(b: &'a [u8], want: &LayerId) -> Result<Self> {
        let bad = |w: &str| Error::corrupt(format!("layer object {want}: {w}"));
        if b.len() < 8 + 4 + 12 + INFO_LEN + 4 + 8 + 4 + 32 || &b[..8] != MAGIC {
            return Err(bad("not a chunkstore layer object (bad magic or too short)"));
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(bad("checksum does not match (truncated or damaged)"));
        }
        let mut r = Reader::new(&body[8..], bad);
        let version = r.u32()?;
        if version != VERSION {
            return Err(bad(&format!("unsupported version {version}")));
        }
        let chunker = ChunkerParams::decode(r.take(12)?)?;
        let info_bytes = r.take(INFO_LEN)?;
        let info = LayerInfo::decode(info_bytes)?;
        if info.id != *want {
            return Err(bad(&format!("holds layer {}", info.id)));
        }
        let nb = r.u32()? as usize;
        let blobs = r.take(nb.checked_mul(32).ok_or_else(|| bad("truncated"))?)?;
        let recipe = r.bytes_u64("recipe")?;
        let nf = r.u32()?;
        let files = r.rest();
        for _ in 0..nf {
            r.take(32)?;
            let l = r.u32()? as usize;
            index::decode_file(r.take(l)?)?;
        }
        r.finish()?;
        Ok(LayerObjectView { chunker, info, info_bytes, blobs, recipe, files })
    }

    /// `(file id, FILES value)` for each distinct content item, in first-use order.
    pub fn files(&self) -> impl Iterator<Item = (FileId, &'a [u8])> {
        let mut rest = self.files;
        std::iter::from_fn(move || {
            // Checked by `parse`.
            let (id, tail) = rest.split_first_chunk::<32>()?;
            let (len, tail) = tail.split_first_chunk::<4>()?;
            let (value, tail) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)?;
            rest = tail;
            Some((FileId::from_bytes(*id), value))
        })
    }

    /// Whether this object describes the layer the index holds (given its
    /// record, recipe and FILES table): the same chunker, tar, recipe and
    /// file recipes. What each writer of a shared bucket records in its own
    /// way may differ: file numbers (dense per index), when the layer was
    /// first ingested, the compressed blobs that writer met. Read in place,
    /// holding only a bitmap of the layer's file numbers. An error is the
    /// index's damage.
    pub fn same_as_index<F>(&self, chunker: ChunkerParams, info: &LayerInfo, recipe: &[u8], files: &F) -> Result<bool>
    where
        F: ReadableTable<&'static [u8], &'static [u8]>,
    {
        let facts = |i: &LayerInfo| (i.id, i.tar_size, i.entries, i.files, i.file_bytes, i.chunks);
        if self.chunker != chunker || facts(&self.info) != facts(info) || self.recipe != recipe {
            return Ok(false);
        }
        let mut stored = self.files();
        // First uses by the index's file numbers (dense, one per file): a
        // bitmap, where a set of ids would cost ~70 bytes a file.
        let mut seen = roaring::RoaringBitmap::new();
        for item in RecipeReader::borrowed(recipe)? {
            if let RecipeItem::File { id: f, .. } | RecipeItem::Data { id: f, .. } = item? {
                let v = files.get(&f.as_bytes()[..])?.ok_or_else(|| Error::corrupt(format!("file {f} is missing")))?;
                // A FILES value is the file's number (each index's own), then
                // its recipe; one too short to hold a number is not what any
                // object holds.
                let Some(num) = v.value().first_chunk::<4>().map(|n| u32::from_le_bytes(*n)) else {
                    return Ok(false);
                };
                if seen.insert(num) {
                    let same = |s: &[u8]| s.get(4..).unwrap_or_default() == v.value().get(4..).unwrap_or_default();
                    if !stored.next().is_some_and(|(sf, sv)| sf == f && same(sv)) {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(stored.next().is_none())
    }
}

/// A layer object's encoding, streamed: the recipe and the files section
/// (`(file id | len u32 | FILES value)` per file, already encoded) are read
/// from where the ingest left them, so neither (together ~140 MB for a
/// layer of a million files) is copied to make one buffer.
pub(crate) struct EncodedObject<'a> {
    body: Body<'a>,
    len: u64,
    hash: blake3::Hasher,
    /// The checksum once the body is read, and how much of it is read.
    sum: Option<([u8; 32], usize)>,
}

/// Head, recipe, file count, files section.
type Body<'a> = std::io::Chain<
    std::io::Chain<std::io::Chain<std::io::Cursor<Vec<u8>>, SpillReader<'a>>, &'a [u8]>,
    SpillReader<'a>,
>;

impl<'a> EncodedObject<'a> {
    pub fn new(
        chunker: ChunkerParams,
        info_bytes: &[u8],
        blobs: &[BlobDigest],
        recipe: SpillReader<'a>,
        count: &'a [u8; 4],
        files: SpillReader<'a>,
    ) -> Self {
        let mut head = Vec::with_capacity(8 + 4 + 12 + info_bytes.len() + 4 + 32 * blobs.len() + 8);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&chunker.encode());
        head.extend_from_slice(info_bytes);
        head.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
        for d in blobs {
            head.extend_from_slice(d.as_bytes());
        }
        head.extend_from_slice(&recipe.remaining().to_le_bytes());
        let len = head.len() as u64 + recipe.remaining() + 4 + files.remaining() + 32;
        let body = std::io::Cursor::new(head).chain(recipe).chain(&count[..]).chain(files);
        EncodedObject { body, len, hash: blake3::Hasher::new(), sum: None }
    }

    /// The object's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
}

/// The object's bytes, in order: the body, then its BLAKE3.
impl Read for EncodedObject<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.sum.is_none() {
            let n = self.body.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.hash.update(&buf[..n]);
                return Ok(n);
            }
            self.sum = Some((*self.hash.finalize().as_bytes(), 0));
        }
        let (sum, at) = self.sum.as_mut().expect("set above");
        let n = buf.len().min(32 - *at);
        buf[..n].copy_from_slice(&sum[*at..*at + n]);
        *at += n;
        Ok(n)
    }
}

/// [`build`] over the tables of a read or a write transaction (whose table
/// types differ, so a function would need both spelled out).
macro_rules! build_in {
    ($store:expr, $tx:expr, $id:expr) => {
        build(
            $store.params,
            $id,
            &$tx.open_table(LAYERS)?,
            &$tx.open_table(RECIPES)?,
            &$tx.open_table(FILES)?,
            &$tx.open_table(BLOBS)?,
        )
    };
}

/// Build layer `id`'s object from index tables (of a read or a write transaction).
pub(crate) fn build<L, R, F, B>(
    chunker: ChunkerParams,
    id: &LayerId,
    layers: &L,
    recipes: &R,
    files: &F,
    blobs: &B,
) -> Result<LayerObject>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    R: ReadableTable<&'static [u8], &'static [u8]>,
    F: ReadableTable<&'static [u8], &'static [u8]>,
    B: ReadableTable<&'static [u8], &'static [u8]>,
{
    let key = &id.as_bytes()[..];
    let info_bytes =
        layers.get(key)?.ok_or_else(|| Error::not_found(format!("layer {id} is not in the index")))?.value().to_vec();
    let info = LayerInfo::decode(&info_bytes)?;
    let recipe = index::get_parted(recipes, key, "recipe")?
        .ok_or_else(|| Error::corrupt(format!("layer {id} has no recipe")))?;
    let mut seen = HashSet::new();
    let mut fs = Vec::new();
    for item in RecipeReader::new(recipe.clone())? {
        if let RecipeItem::File { id: f, .. } | RecipeItem::Data { id: f, .. } = item? {
            if seen.insert(f) {
                let v = files.get(&f.as_bytes()[..])?.ok_or_else(|| Error::corrupt(format!("file {f} is missing")))?;
                fs.push((f, v.value().to_vec()));
            }
        }
    }
    // Scanning BLOBS costs time in proportion to the store's layers: a commit
    // of a new layer builds its object without it (see `ingest.rs`).
    let mut bl = Vec::new();
    for e in blobs.iter()? {
        let (k, v) = e?;
        if v.value() == key {
            bl.push(BlobDigest::from_bytes(k.value().try_into().map_err(|_| Error::corrupt("bad blob key"))?));
        }
    }
    bl.sort();
    Ok(LayerObject { chunker, info, info_bytes, blobs: bl, recipe, files: fs })
}

impl LayerObject {
    /// Add every chunk the layer's files use to `needed`.
    pub(crate) fn add_chunks(&self, needed: &mut HashSet<crate::ChunkId>) -> Result<()> {
        for (_, v) in &self.files {
            needed.extend(index::decode_file(v)?.1.chunks.into_iter().map(|(c, _)| c));
        }
        Ok(())
    }
}

impl Store {
    /// Write a layer's object, as the write transaction about to commit it
    /// holds it: called by every commit that records a layer, after its
    /// packs are stored and before the index names it, so the backend never
    /// holds a recipe whose data it lacks. If the write fails, the packs this
    /// commit stored (`packs`) are removed, after the layer object when the
    /// layer is new, so nothing is left that names them.
    pub(crate) fn publish_layer(
        &self,
        id: &LayerId,
        object: (u64, &mut dyn Read),
        already_present: bool,
        packs: &[(crate::ids::PackId, crate::index::PackInfo)],
    ) -> Result<()> {
        // Every pack first (a backend may still be uploading some), then the object.
        let r = self
            .check_writable()
            .and_then(|()| self.unsettled.mark())
            .and_then(|()| self.backend.flush())
            .and_then(|()| self.backend.put_layer_from(id, object.0, object.1));
        if r.is_err() {
            if already_present || self.backend.delete_layer(id).is_ok() {
                self.unpublish_packs(packs);
            } else {
                self.unsettled.keep();
            }
        }
        r
    }

    /// Record that the compressed blob `blob` holds layer `id`, which this
    /// store has: what a hub told an edge that pulled the layer, so that the
    /// digest an image manifest names finds it here too. The layer's record
    /// takes `blob` and `compression` unless it names a blob already. Returns
    /// false when `blob` named `id` already; a blob naming another layer is
    /// refused (a blob decompresses to one tar only).
    #[cfg(feature = "client")]
    pub(crate) fn name_blob(&self, id: &LayerId, blob: BlobDigest, compression: crate::Compression) -> Result<bool> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.check_writable()?;
        let tx = self.db.begin_write()?;
        let key = &id.as_bytes()[..];
        {
            let mut blobs = tx.open_table(BLOBS)?;
            if let Some(v) = blobs.get(&blob.as_bytes()[..])? {
                if v.value() == key {
                    return Ok(false);
                }
                let other = LayerId::from_bytes(v.value().try_into().map_err(|_| Error::corrupt("bad blob record"))?);
                return Err(Error::invalid(format!("blob {blob} names layer {other} here, not {id}")));
            }
            blobs.insert(&blob.as_bytes()[..], key)?;
            let mut layers = tx.open_table(LAYERS)?;
            let info = layers.get(key)?.map(|v| LayerInfo::decode(v.value())).transpose()?;
            let mut info = info.ok_or_else(|| Error::not_found(format!("layer {id} is not in the store")))?;
            if info.blob.is_none() {
                info.blob = Some(blob);
                info.compression = compression;
                layers.insert(key, &info.encode()[..])?;
            }
        }
        let mut object = self.layer_object_in(&tx, id)?;
        // Other writers' blobs, which this index may not know, stay named.
        object.blobs.extend(self.blobs_in_backend(id));
        object.blobs.sort();
        object.blobs.dedup();
        let object = object.encode();
        self.publish_layer(id, (object.len() as u64, &mut &object[..]), true, &[])?;
        tx.commit().inspect_err(|_| self.unsettled.keep())?;
        Ok(true)
    }

    /// On a shared backend, the blobs the object of layer `id` names that
    /// another writer stored; none if it has not (or it does not decode), or
    /// the backend is this store's alone.
    pub(crate) fn blobs_in_backend(&self, id: &LayerId) -> Vec<BlobDigest> {
        if !self.backend.is_shared() {
            return Vec::new();
        }
        match self.backend.get_layer(id).and_then(|b| LayerObject::decode(&b, id)) {
            Ok(o) => o.blobs,
            Err(e) if e.kind() == crate::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(layer = %id, error = %e, "replacing a layer object that does not read");
                Vec::new()
            }
        }
    }

    /// Layer `id`'s object as the committed index would write it.
    pub(crate) fn layer_object_from_index(&self, id: &LayerId) -> Result<LayerObject> {
        let tx = self.db.begin_read()?;
        build_in!(self, tx, id)
    }

    /// Layer `id`'s object as the write transaction `tx` would commit it
    /// (for naming a blob: an ingest streams its object from its records).
    #[cfg(feature = "client")]
    pub(crate) fn layer_object_in(&self, tx: &redb::WriteTransaction, id: &LayerId) -> Result<LayerObject> {
        build_in!(self, tx, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Compression;

    #[test]
    fn round_trip_and_damage() {
        let info = LayerInfo {
            id: LayerId::from_bytes([1; 32]),
            blob: None,
            compression: Compression::None,
            tar_size: 1024,
            entries: 1,
            files: 1,
            file_bytes: 5,
            chunks: 1,
            ingested_at: 7,
        };
        let o = LayerObject {
            chunker: ChunkerParams::default(),
            info_bytes: info.encode(),
            info,
            blobs: vec![BlobDigest::from_bytes([2; 32])],
            recipe: b"recipe bytes".to_vec(),
            files: vec![(
                FileId::from_bytes([3; 32]),
                index::encode_file(
                    4,
                    &crate::recipe::FileRecipe { size: 5, chunks: vec![(crate::ChunkId::from_bytes([3; 32]), 5)] },
                ),
            )],
        };
        let b = o.encode();
        let id = LayerId::from_bytes([1; 32]);
        assert_eq!(LayerObject::decode(&b, &id).unwrap(), o);
        assert!(LayerObject::decode(&b[..b.len() - 1], &id).is_err());
        assert!(LayerObject::decode(&b, &LayerId::from_bytes([9; 32])).is_err());
        let mut d = b.clone();
        d[40] ^= 1;
        assert!(LayerObject::decode(&d, &id).is_err());
    }

    #[cfg(feature = "client")]
    #[test]
    fn naming_a_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let opts = crate::IngestOptions::default();
        let a = store.ingest(&crate::testutil::tar_of(&[("a", b"one")])[..], &opts).unwrap().layer.id;
        let b = store.ingest(&crate::testutil::tar_of(&[("b", b"two")])[..], &opts).unwrap().layer.id;
        let blob = BlobDigest::from_bytes([7; 32]);
        assert!(store.name_blob(&a, blob, Compression::Gzip).unwrap());
        assert!(!store.name_blob(&a, blob, Compression::Gzip).unwrap(), "named already");
        let info = store.layer(&a).unwrap().unwrap();
        assert_eq!((info.blob, info.compression), (Some(blob), Compression::Gzip));
        assert_eq!(store.resolve_layer(&blob.to_string()).unwrap(), a);
        // One blob decompresses to one tar: it cannot name another layer.
        let e = store.name_blob(&b, blob, Compression::Gzip).unwrap_err();
        assert!(e.to_string().contains("names layer"), "{e}");
        // A second blob is recorded for lookups; the record keeps the first.
        let other = BlobDigest::from_bytes([8; 32]);
        assert!(store.name_blob(&a, other, Compression::Zstd).unwrap());
        assert_eq!(store.layer(&a).unwrap().unwrap().blob, Some(blob));
        assert_eq!(store.resolve_layer(&other.to_string()).unwrap(), a);
        assert_eq!(store.layer_object_from_index(&a).unwrap().blobs, vec![blob, other]);
        let missing = LayerId::from_bytes([9; 32]);
        assert_eq!(
            store.name_blob(&missing, BlobDigest::from_bytes([6; 32]), Compression::Gzip).unwrap_err().kind(),
            crate::ErrorKind::NotFound
        );
        assert!(store.verify(crate::VerifyOptions::default()).unwrap().is_clean());
    }

    /// verify compares what a layer object says about the layer, not what
    /// each writer of a shared bucket numbers or dates its own way.
    #[test]
    fn verify_compares_what_layer_objects_say() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = crate::testutil::tar_of(&[("a", b"one"), ("b", &crate::testutil::noise(100_000, 3))]);
        let id = store.ingest(&tar[..], &crate::IngestOptions::default()).unwrap().layer.id;
        let want = store.layer_object_from_index(&id).unwrap();
        let problems = |o: &LayerObject| {
            store.backend.put_layer(&id, &o.encode()).unwrap();
            let r = store.verify(crate::VerifyOptions::default()).unwrap();
            r.damaged.iter().map(|d| d.problem.clone()).collect::<Vec<_>>()
        };
        // Another writer's numbers, date and blobs.
        let mut other = want.clone();
        other.info.ingested_at += 1000;
        other.info_bytes = other.info.encode();
        other.blobs = vec![BlobDigest::from_bytes([5; 32])];
        for (n, (_, v)) in other.files.iter_mut().enumerate() {
            v[..4].copy_from_slice(&(n as u32 + 70).to_le_bytes());
        }
        assert_eq!(problems(&other), Vec::<String>::new());
        // Another recipe, or another file recipe: damage.
        let mut bad = want.clone();
        *bad.recipe.last_mut().unwrap() ^= 1;
        let p = problems(&bad);
        assert!(p.len() == 1 && p[0].contains("differs from the index"), "{p:?}");
        let mut bad = want.clone();
        *bad.files[0].1.last_mut().unwrap() ^= 1;
        assert_eq!(problems(&bad).len(), 1);
        assert_eq!(problems(&want), Vec::<String>::new());
    }
}
