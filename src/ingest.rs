//! Ingest: tar walk and chunking on the caller's thread; hashing, dedup,
//! compression (rayon) and pack writing on a second thread; one index
//! transaction at the end, after every pack it names is durable.

use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::{BlobDigest, ChunkId, FileId, LayerId, PackId};
use crate::index::{self, LayerInfo, PackInfo, BLOBS, CHUNKS, FILES, LAYERS, LAYER_MAPS, META, PACKS, RECIPES};
use crate::input;
use crate::layermap::{LayerMap, MapEntry};
use crate::pack::{self, ChunkLoc, PackWriter};
use crate::recipe::{FileRecipe, RecipeWriter};
use crate::store::Store;
use crate::tarsplit::{ContentKind, TarSplitter};
use crossbeam_channel::{bounded, Receiver};
use rayon::prelude::*;
use redb::ReadableTable;
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// Options for one ingest.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// Receives the count of input bytes consumed so far, for progress display.
    pub progress: Option<Arc<AtomicU64>>,
    /// Refuse to record the layer unless its diff_id is this one.
    pub expect: Option<LayerId>,
}

/// What an ingest did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestSummary {
    /// The layer as recorded.
    #[serde(flatten)]
    pub layer: LayerInfo,
    /// Whether the store already held this layer.
    pub already_present: bool,
    /// Input bytes read (the compressed size for compressed input).
    pub input_bytes: u64,
    /// Chunks this ingest added.
    pub new_chunks: u64,
    /// Raw bytes of the chunks it added.
    pub new_chunk_bytes: u64,
    /// Bytes it added to packs (compressed chunks and framing).
    pub new_stored_bytes: u64,
    /// Files it added.
    pub new_files: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Chunk data and file boundaries, in stream order.
enum Piece {
    Chunk { data: Vec<u8>, id: Option<ChunkId> },
    FileEnd { id: FileId, size: u64 },
}

/// Send a batch once it holds this much chunk data.
const BATCH_BYTES: usize = 4 << 20;

/// What the writer thread produced, to be committed.
#[derive(Default)]
struct Written {
    chunks: HashMap<ChunkId, ChunkLoc>,
    /// New chunks in stream order, so their dense numbers follow the layer.
    chunk_order: Vec<ChunkId>,
    files: HashMap<FileId, FileRecipe>,
    packs: Vec<(PackId, PackInfo)>,
    chunk_bytes: u64,
}

impl Store {
    /// Ingest a layer (tar, tar+gzip or tar+zstd, detected by magic bytes) from
    /// any reader. Nothing is recorded unless the whole input is a valid tar.
    pub fn ingest<R: Read>(&self, reader: R, opts: &IngestOptions) -> Result<IngestSummary> {
        let started = Instant::now();
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.check_writable()?;
        let counter = opts.progress.clone().unwrap_or_default();
        let (tx, rx) = bounded::<Vec<Piece>>(4);
        let (walked, written) = std::thread::scope(|s| {
            let writer = std::thread::Builder::new()
                .name("chunkstore-writer".into())
                .spawn_scoped(s, || self.write_pieces(rx))
                .map_err(|e| Error::io("spawning the writer thread", e));
            let writer = match writer {
                Ok(h) => h,
                Err(e) => return (Err(e), Ok(Written::default())),
            };
            let walked = self.walk(reader, counter.clone(), |b| tx.send(b).is_ok());
            drop(tx);
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(Error::io("writer thread panicked", std::io::Error::other("panic"))));
            (walked, written)
        });
        let (walked, written) = match (walked, written) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                // Packs already published but never committed: remove them now
                // (the next open would reclaim them too).
                if let Ok(w) = &b {
                    for (p, _) in &w.packs {
                        let _ = self.backend.delete_pack(*p);
                    }
                }
                // The writer's error first: when it fails, the walk only sees
                // "the writer thread stopped", which hides the cause.
                return Err(b.err().or(a.err()).expect("one side failed"));
            }
        };
        if let Some(want) = opts.expect.filter(|w| *w != walked.info.id) {
            for (p, _) in &written.packs {
                let _ = self.backend.delete_pack(*p);
            }
            return Err(Error::corrupt(format!("rebuilt layer is {}, expected {want}", walked.info.id)));
        }
        failpoint::hit("before-commit");
        let summary = self.commit(walked, &written, counter.load(std::sync::atomic::Ordering::Relaxed), started)?;
        failpoint::hit("after-commit");
        Ok(summary)
    }

    /// The tar walk: returns the layer's facts and recipe; `send` ships batches
    /// to the writer and returns false if it has stopped.
    fn walk<R: Read>(
        &self,
        reader: R,
        counter: Arc<AtomicU64>,
        mut send: impl FnMut(Vec<Piece>) -> bool,
    ) -> Result<Walked> {
        let opened = input::open(reader, counter)?;
        let mut split = TarSplitter::new(opened.reader);
        let mut chunker = Chunker::new(self.params);
        let mut recipe = RecipeWriter::new()?;
        let mut raw = Vec::new();
        let mut batch: Vec<Piece> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut contents = Vec::new();
        let (mut files, mut file_bytes, mut chunks) = (0u64, 0u64, 0u64);
        let stopped = || Error::io("the writer thread stopped", std::io::Error::other("writer stopped"));
        loop {
            raw.clear();
            let content = split.next(&mut raw)?;
            recipe.raw(&raw)?;
            let Some(c) = content else { break };
            // Hold back a file's first chunk until we know whether it is its only
            // one: a one-chunk file's FileId is that chunk's id (hash once).
            let mut first: Option<Vec<u8>> = None;
            let mut whole: Option<blake3::Hasher> = None;
            let mut n = 0u64;
            chunker
                .chunk(split.content(), c.size, |data| {
                    n += 1;
                    match (first.take(), whole.as_mut()) {
                        (None, None) => first = Some(data),
                        (held, _) => {
                            let h = whole.get_or_insert_with(blake3::Hasher::new);
                            if let Some(f) = held {
                                h.update(&f);
                                batch_bytes += f.len();
                                batch.push(Piece::Chunk { data: f, id: None });
                            }
                            h.update(&data);
                            batch_bytes += data.len();
                            batch.push(Piece::Chunk { data, id: None });
                        }
                    }
                    if batch_bytes >= BATCH_BYTES {
                        batch_bytes = 0;
                        if !send(std::mem::take(&mut batch)) {
                            return Err(stopped());
                        }
                    }
                    Ok(())
                })
                .map_err(|e| {
                    e.context(format!("entry {:?} at offset {}", String::from_utf8_lossy(&c.path), c.offset))
                })?;
            let id = match (first, whole) {
                (Some(f), _) => {
                    let cid = ChunkId::of(&f);
                    batch_bytes += f.len();
                    batch.push(Piece::Chunk { data: f, id: Some(cid) });
                    FileId::from_chunk(cid)
                }
                (None, Some(h)) => FileId::from_bytes(*h.finalize().as_bytes()),
                (None, None) => FileId::of(b""),
            };
            batch.push(Piece::FileEnd { id, size: c.size });
            chunks += n;
            match c.kind {
                ContentKind::File => {
                    files += 1;
                    file_bytes += c.size;
                    recipe.file(&id, c.size, &c.path)?;
                    contents.push(id);
                }
                ContentKind::Data => {
                    recipe.data(&id, c.size)?;
                    contents.push(id);
                }
            }
        }
        if !batch.is_empty() && !send(batch) {
            return Err(stopped());
        }
        let entries = split.entries();
        let tar_size = split.position();
        drop(split);
        let (sha, hashed) = opened.tar_digest.finish();
        debug_assert_eq!(hashed, tar_size);
        let blob = opened.blob_digest.map(|d| BlobDigest::from_bytes(d.finish().0));
        Ok(Walked {
            contents,
            info: LayerInfo {
                id: LayerId::from_bytes(sha),
                blob,
                compression: opened.compression,
                tar_size,
                entries,
                files,
                file_bytes,
                chunks,
                ingested_at: 0,
            },
            recipe: recipe.finish()?,
        })
    }

    /// The writer thread: hash, dedup, compress and pack each batch.
    fn write_pieces(&self, rx: Receiver<Vec<Piece>>) -> Result<Written> {
        let mut w = Written::default();
        let tx = self.db.begin_read()?;
        let known_chunks = tx.open_table(CHUNKS)?;
        let known_files = tx.open_table(FILES)?;
        let mut pack: Option<PackWriter> = None;
        let mut cur_file: Vec<(ChunkId, u32)> = Vec::new();
        let level = self.opts.compression_level;
        let result = (|| -> Result<()> {
            for mut batch in rx {
                // Hash the chunks of multi-chunk files in parallel.
                batch.par_iter_mut().for_each(|p| {
                    if let Piece::Chunk { data, id: id @ None } = p {
                        *id = Some(ChunkId::of(data));
                    }
                });
                // Which chunks are new (first sighting in this batch wins)?
                let mut new: Vec<usize> = Vec::new();
                for (i, p) in batch.iter().enumerate() {
                    if let Piece::Chunk { id: Some(id), data } = p {
                        if !w.chunks.contains_key(id) && known_chunks.get(&id.as_bytes()[..])?.is_none() {
                            // Placeholder until packed; marks it as seen.
                            w.chunks.insert(
                                *id,
                                ChunkLoc {
                                    pack: PackId(0),
                                    offset: 0,
                                    stored_len: 0,
                                    raw_len: data.len() as u32,
                                    num: 0,
                                },
                            );
                            w.chunk_order.push(*id);
                            new.push(i);
                        }
                    }
                }
                let compressed: Vec<Option<Vec<u8>>> = new
                    .par_iter()
                    .map(|&i| match &batch[i] {
                        Piece::Chunk { data, .. } => pack::compress_chunk(data, level),
                        Piece::FileEnd { .. } => None,
                    })
                    .collect();
                for (&i, c) in new.iter().zip(compressed) {
                    let Piece::Chunk { data, id: Some(id) } = &batch[i] else {
                        continue;
                    };
                    if pack.is_none() {
                        pack = Some(PackWriter::create(&self.staging, self.allocate_pack())?);
                    }
                    let pw = pack.as_mut().expect("created above");
                    let loc = pw.append(id, data.len() as u32, c.as_deref().unwrap_or(data))?;
                    w.chunks.insert(*id, loc);
                    w.chunk_bytes += data.len() as u64;
                    if pw.len() >= self.opts.pack_size {
                        self.seal(pack.take().expect("present"), &mut w)?;
                    }
                }
                for p in &batch {
                    match p {
                        Piece::Chunk { data, id: Some(id) } => cur_file.push((*id, data.len() as u32)),
                        Piece::Chunk { id: None, .. } => unreachable!("hashed above"),
                        Piece::FileEnd { id, size } => {
                            let chunks = std::mem::take(&mut cur_file);
                            if !w.files.contains_key(id) && known_files.get(&id.as_bytes()[..])?.is_none() {
                                w.files.insert(*id, FileRecipe { size: *size, chunks });
                            }
                        }
                    }
                }
            }
            if let Some(pw) = pack.take() {
                self.seal(pw, &mut w)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(w),
            Err(e) => {
                for (p, _) in &w.packs {
                    let _ = self.backend.delete_pack(*p);
                }
                if let Some(pw) = pack.take() {
                    let staged = self.staging.join(pw.id.file_name());
                    drop(pw);
                    let _ = std::fs::remove_file(staged);
                }
                Err(e)
            }
        }
    }

    fn seal(&self, pw: PackWriter, w: &mut Written) -> Result<()> {
        let id = pw.id;
        let (path, len, count) = pw.finish()?;
        // Leave neither a staged file nor a half-published pack behind.
        let stored = self.put_pack_fresh(id, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
        if stored != id {
            // Another writer of a shared backend had taken `id`.
            w.chunks.values_mut().filter(|l| l.pack == id).for_each(|l| l.pack = stored);
        }
        w.packs.push((stored, PackInfo { len, chunks: count }));
        failpoint::hit("after-pack-put");
        Ok(())
    }

    fn commit(&self, walked: Walked, w: &Written, input_bytes: u64, started: Instant) -> Result<IngestSummary> {
        let Walked { mut info, recipe, contents } = walked;
        let tx = self.db.begin_write()?;
        let already_present;
        {
            let mut meta = tx.open_table(META)?;
            let mut next_chunk = index::get_counter(&meta, index::NEXT_CHUNK_KEY)?;
            let mut next_file = index::get_counter(&meta, index::NEXT_FILE_KEY)?;
            let overflow = || Error::new(crate::ErrorKind::Config, "store is full: more than 2^32 chunks or files");
            // Dense numbers: new chunks in stream order, new files in first-seen order.
            let mut chunks = tx.open_table(CHUNKS)?;
            let mut new_chunk_nums: HashMap<ChunkId, u32> = HashMap::with_capacity(w.chunk_order.len());
            for id in &w.chunk_order {
                let mut loc = w.chunks[id];
                loc.num = next_chunk;
                next_chunk = next_chunk.checked_add(1).ok_or_else(overflow)?;
                new_chunk_nums.insert(*id, loc.num);
                chunks.insert(&id.as_bytes()[..], &loc.encode()[..])?;
            }
            let mut files = tx.open_table(FILES)?;
            let mut seen: HashMap<FileId, MapEntry> = HashMap::new();
            let mut map = LayerMap::default();
            for fid in &contents {
                if let Some(e) = seen.get(fid) {
                    map.entries.push(e.clone());
                    continue;
                }
                let (num, r) = match w.files.get(fid) {
                    Some(r) => {
                        let num = next_file;
                        next_file = next_file.checked_add(1).ok_or_else(overflow)?;
                        files.insert(&fid.as_bytes()[..], &index::encode_file(num, r)[..])?;
                        (num, r.clone())
                    }
                    None => {
                        let v = files.get(&fid.as_bytes()[..])?;
                        let v = v.ok_or_else(|| Error::corrupt(format!("file {fid} vanished during ingest")))?;
                        index::decode_file(v.value())?
                    }
                };
                let mut e = MapEntry { file: num, chunks: Vec::with_capacity(r.chunks.len()) };
                for (cid, _) in &r.chunks {
                    let n = match new_chunk_nums.get(cid) {
                        Some(n) => *n,
                        None => {
                            let v = chunks.get(&cid.as_bytes()[..])?;
                            let v = v.ok_or_else(|| Error::corrupt(format!("chunk {cid} vanished during ingest")))?;
                            ChunkLoc::decode(v.value())?.num
                        }
                    };
                    e.chunks.push(n);
                }
                seen.insert(*fid, e.clone());
                map.entries.push(e);
            }
            meta.insert(index::NEXT_CHUNK_KEY, &next_chunk.to_le_bytes()[..])?;
            meta.insert(index::NEXT_FILE_KEY, &next_file.to_le_bytes()[..])?;
            let mut packs = tx.open_table(PACKS)?;
            for (id, p) in &w.packs {
                packs.insert(id.0, &p.encode()[..])?;
            }
            let mut layers = tx.open_table(LAYERS)?;
            let key = &info.id.as_bytes()[..];
            let prev = layers.get(key)?.map(|v| LayerInfo::decode(v.value())).transpose()?;
            already_present = prev.is_some();
            // This input's compressed digest names the layer even when the
            // record keeps the digest it arrived with first.
            let arrived_blob = info.blob;
            match prev {
                Some(p) => {
                    info.ingested_at = p.ingested_at;
                    if info.blob.is_none() || p.blob.is_some() {
                        info.blob = p.blob;
                        info.compression = p.compression;
                    }
                }
                None => {
                    info.ingested_at =
                        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                }
            }
            layers.insert(key, &info.encode()[..])?;
            tx.open_table(RECIPES)?.insert(key, &recipe[..])?;
            tx.open_table(LAYER_MAPS)?.insert(key, &map.encode()[..])?;
            if let Some(b) = arrived_blob.or(info.blob) {
                tx.open_table(BLOBS)?.insert(&b.as_bytes()[..], key)?;
            }
        }
        // The layer object goes to the backend before the index names the layer.
        self.publish_layer(&tx, &info.id, already_present, &w.packs)?;
        tx.commit()?;
        Ok(IngestSummary {
            layer: info,
            already_present,
            input_bytes,
            new_chunks: w.chunks.len() as u64,
            new_chunk_bytes: w.chunk_bytes,
            new_stored_bytes: w.packs.iter().map(|(_, p)| p.len).sum(),
            new_files: w.files.len() as u64,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

struct Walked {
    info: LayerInfo,
    /// Each content item's FileId, in recipe order.
    contents: Vec<FileId>,
    recipe: Vec<u8>,
}
