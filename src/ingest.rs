//! Ingest. The caller's thread walks the tar and reads each content region
//! whole (regions over [`WINDOW`] are cut into chunks as they stream by), in
//! batches: each batch is one run of the stream in one buffer (`batchbuf`),
//! which a helper thread hashes for the diff_id. A writer
//! thread runs one parallel pass (rayon) per batch: BLAKE3 of every region;
//! content the index holds, or another piece of this ingest claimed, stops
//! there; the rest is cut, its chunks hashed, and chunks neither held nor
//! claimed are compressed. A packer thread appends the new chunks to packs
//! and writes file recipes and the layer recipe, in stream order. One index
//! transaction at the end, after every pack it names is durable.

use crate::batchbuf::{self, Buffer};
use crate::chunker::{Chunker, WINDOW};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::{BlobDigest, ChunkId, FileId, LayerId, PackId};
use crate::index::{self, LayerInfo, PackInfo, BLOBS, CHUNKS, FILES, LAYERS, LAYER_MAPS, META, PACKS, RECIPES};
use crate::input;
use crate::layerobj::EncodedObject;
use crate::pack;
use crate::pack::ChunkLoc;
use crate::recipe::FileRecipe;
use crate::spill::Spilled;
use crate::store::Store;
use crate::tarsplit::{Content, ContentKind, Step, TarSplitter};
use claims::Claims;
use crossbeam_channel::{bounded, Receiver};
use rayon::prelude::*;
use redb::ReadableTable;
use rows::{FileValue, HeldIndex, LayerRows};
use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
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
    /// Refuse to record the layer unless the input as given (compressed or
    /// not) has this SHA-256: the digest a registry checks a pushed blob
    /// against. For a plain tar it is the diff_id.
    pub expect_blob: Option<BlobDigest>,
}

/// What an ingest did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestSummary {
    /// The layer as recorded.
    #[serde(flatten)]
    pub layer: LayerInfo,
    /// Whether the store already held this layer (then `layer` shows the
    /// record's blob and compression: the first compressed form it came in).
    pub already_present: bool,
    /// How this input was compressed.
    pub input_compression: crate::Compression,
    /// SHA-256 of this input as given, when it was compressed.
    pub input_blob: Option<BlobDigest>,
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

/// The walk's output, in stream order; byte ranges are of the batch's buffer.
enum Piece {
    /// Tar bytes kept verbatim: headers, extension records, padding, the tail.
    Raw(Range<usize>),
    /// A content region held whole.
    Whole { kind: ContentKind, path: Vec<u8>, data: Range<usize> },
    /// The next chunk of a region too large to hold whole.
    Part(Range<usize>),
    /// The end of a region that arrived as parts.
    PartsEnd { kind: ContentKind, path: Vec<u8>, size: u64 },
}

/// A run of the tar stream: its bytes, in order, and the pieces they make.
struct Batch {
    buf: Buffer,
    pieces: Vec<Piece>,
}

impl Batch {
    /// The bytes of a raw, whole or part piece; none for a `PartsEnd`.
    fn data(&self, p: &Piece) -> &[u8] {
        match p {
            Piece::Raw(r) | Piece::Whole { data: r, .. } | Piece::Part(r) => self.buf.get(r),
            Piece::PartsEnd { .. } => &[],
        }
    }
}

impl AsRef<[u8]> for Batch {
    fn as_ref(&self) -> &[u8] {
        self.buf.bytes()
    }
}

/// Send a batch once it holds this many bytes. Small enough that a small
/// layer fills the pipeline quickly, large enough to give rayon work.
const BATCH_BYTES: usize = 2 << 20;
/// Batches in flight between the walk and the writer, and between the walk
/// and the SHA-256 thread (bounds memory).
const BATCHES_IN_FLIGHT: usize = 4;
/// Prepared batches in flight between the writer and the packer.
const PREPARED_IN_FLIGHT: usize = 2;
/// Batch buffers kept for reuse: more than can be in use at once (in each
/// queue, plus one being filled, prepared, packed and hashed).
const BUFFERS_KEPT: usize = 2 * BATCHES_IN_FLIGHT + PREPARED_IN_FLIGHT + 4;
/// The walk's read buffer. Content regions larger than this are read straight
/// into their batch's buffer.
const READ_BUFFER: usize = 128 << 10;
/// Header bytes the walk gathers before it moves them into the batch, so a
/// run of header-only entries (a million directories) costs bounded memory:
/// this much here, and at most one recipe item (`recipe::MAX_RAW`) in the
/// recipe writer.
const RAW_LIMIT: usize = 1 << 20;
const _: () = assert!(BATCH_BYTES + WINDOW <= batchbuf::CAPACITY);

/// What the writer thread produced, to be committed.
#[derive(Default)]
struct Written {
    /// New index rows, the number map and the layer object's files section.
    rows: LayerRows,
    packs: Vec<(PackId, PackInfo)>,
    chunk_bytes: u64,
    /// The encoded layer recipe.
    recipe: Spilled,
    /// Regular files, their bytes, and chunk references (with repeats).
    files_count: u64,
    file_bytes: u64,
    chunk_refs: u64,
}

/// What the walk learned about the layer as a whole.
struct Walk {
    info: LayerInfo,
}

/// What the parallel pass made of one piece of a batch.
enum Done {
    /// Nothing to store: raw bytes.
    Skip,
    /// A whole region the index already holds.
    Indexed(FileId),
    /// A whole region whose content another piece of this ingest claimed.
    Claimed(FileId),
    /// A whole region this piece claimed (first sighting, not in the index): its chunks.
    New(FileId, Vec<Cut>),
    /// A chunk of a streamed region.
    Part(Cut),
    /// The end of a streamed region: its id, and whether the index holds it.
    PartsEnd(FileId, bool),
}

/// A chunk of a piece: where it lies in the piece's data and its id; when this
/// piece claimed it (first sighting in this ingest, not in the index), how it
/// is stored: its zstd frame, or `None` for raw.
struct Cut {
    off: usize,
    len: usize,
    id: ChunkId,
    stored: Option<Option<Vec<u8>>>,
}

/// A batch on its way from the parallel pass to the packer.
struct Prepared {
    batch: Arc<Batch>,
    done: Vec<Done>,
}

impl Store {
    /// Ingest a layer (tar, tar+gzip or tar+zstd, detected by magic bytes) from
    /// any reader. Nothing is recorded unless the whole input is a valid tar.
    pub fn ingest<R: Read>(&self, reader: R, opts: &IngestOptions) -> Result<IngestSummary> {
        let started = Instant::now();
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.check_writable()?;
        let counter = opts.progress.clone().unwrap_or_default();
        let (tx, rx) = bounded::<Arc<Batch>>(BATCHES_IN_FLIGHT);
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
            tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "ingest: tar walked");
            let written = writer.join().unwrap_or_else(|_| {
                // What it published is not known here: leave it to the next open.
                self.unsettled.keep();
                Err(Error::io("writer thread panicked", std::io::Error::other("panic")))
            });
            (walked, written)
        });
        let (walked, mut written) = match (walked, written) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                // Packs already published but never committed: remove them now
                // (the next open would reclaim them too).
                if let Ok(w) = &b {
                    self.unpublish_packs(&w.packs);
                }
                // The writer's error first: when it fails, the walk only sees
                // "the writer thread stopped", which hides the cause.
                return Err(b.err().or(a.err()).expect("one side failed"));
            }
        };
        if let Some(want) = opts.expect.filter(|w| *w != walked.info.id) {
            self.unpublish_packs(&written.packs);
            return Err(Error::corrupt(format!("the layer's diff_id is {}, not the expected {want}", walked.info.id)));
        }
        if let Some(want) = opts.expect_blob {
            let got = walked.info.blob.unwrap_or(BlobDigest::from_bytes(*walked.info.id.as_bytes()));
            if got != want {
                self.unpublish_packs(&written.packs);
                return Err(Error::invalid(format!("the input's digest is {got}, not the expected {want}")));
            }
        }
        let mut info = walked.info;
        info.files = written.files_count;
        info.file_bytes = written.file_bytes;
        info.chunks = written.chunk_refs;
        let walked = Walked { info, recipe: std::mem::take(&mut written.recipe) };
        tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "ingest: packs sealed");
        failpoint::hit("before-commit");
        let summary = self.commit(walked, written, counter.load(std::sync::atomic::Ordering::Relaxed), started)?;
        failpoint::hit("after-commit");
        Ok(summary)
    }

    /// The tar walk: reads content regions and ships them in batches; `send`
    /// returns false if the writer has stopped.
    fn walk<R: Read>(
        &self,
        reader: R,
        counter: Arc<AtomicU64>,
        mut send: impl FnMut(Arc<Batch>) -> bool,
    ) -> Result<Walk> {
        let opened = input::open(reader, counter)?;
        let (sha, tar_digest) = input::hash_beside::<Batch>(BATCHES_IN_FLIGHT)?;
        let pool = batchbuf::Pool::new(BUFFERS_KEPT);
        let mut split = TarSplitter::new(std::io::BufReader::with_capacity(READ_BUFFER, opened.reader))
            .with_raw_limit(RAW_LIMIT as u64);
        let mut chunker = Chunker::new(self.params);
        let mut raw = Vec::new();
        let mut cur = Batch { buf: pool.take()?, pieces: Vec::new() };
        // Hand a full batch to the hashing thread and the writer.
        let mut send_batch = |full: Batch| -> Result<()> {
            let full = Arc::new(full);
            if sha.send(full.clone()).is_err() {
                return Err(Error::io("the hashing thread stopped", std::io::Error::other("hashing stopped")));
            }
            if !send(full) {
                return Err(Error::io("the writer thread stopped", std::io::Error::other("writer stopped")));
            }
            Ok(())
        };
        // Send the batch being filled and start the next.
        let mut ship = |cur: &mut Batch| -> Result<()> {
            send_batch(std::mem::replace(cur, Batch { buf: pool.take()?, pieces: Vec::new() }))
        };
        loop {
            let step = split.next_step(&mut raw)?;
            // Raw bytes run on into the next buffer if need be; the recipe joins them up again.
            let mut rest = &raw[..];
            while !rest.is_empty() {
                if cur.buf.room() == 0 {
                    ship(&mut cur)?;
                }
                let n = rest.len().min(cur.buf.room());
                let r = cur.buf.append(&rest[..n]);
                cur.pieces.push(Piece::Raw(r));
                rest = &rest[n..];
            }
            raw.clear();
            match step {
                Step::End => break,
                // Only header bytes so far: the batch may be full all the same.
                Step::More => {}
                Step::Content(c) => read_content(c, &mut split, &mut chunker, &mut cur, &mut ship)?,
            }
            if cur.buf.len() >= BATCH_BYTES {
                ship(&mut cur)?;
            }
        }
        if !cur.pieces.is_empty() {
            send_batch(cur)?;
        }
        drop(sha);
        let entries = split.entries();
        let tar_size = split.position();
        drop(split);
        let (sha, hashed) = tar_digest.finish();
        // The diff_id is only right if every byte the walk consumed went into a batch.
        if hashed != tar_size {
            return Err(Error::corrupt(format!("internal: hashed {hashed} bytes of a {tar_size}-byte tar")));
        }
        let blob = opened.blob_digest.map(|d| BlobDigest::from_bytes(d.finish().0));
        Ok(Walk {
            info: LayerInfo {
                id: LayerId::from_bytes(sha),
                blob,
                compression: opened.compression,
                tar_size,
                entries,
                files: 0,
                file_bytes: 0,
                chunks: 0,
                ingested_at: 0,
            },
        })
    }

    /// The writer thread: runs the parallel pass over each batch (hash, skip
    /// held content, chunk, compress), and hands it to a packer thread that
    /// packs and describes it in stream order.
    fn write_pieces(&self, rx: Receiver<Arc<Batch>>) -> Result<Written> {
        let (ptx, prx) = bounded::<Prepared>(PREPARED_IN_FLIGHT);
        let claims = Claims::new(Some(self.staging.clone()));
        std::thread::scope(|s| {
            let packer = std::thread::Builder::new()
                .name("chunkstore-packer".into())
                .spawn_scoped(s, || self.pack_batches(prx, &claims))
                .map_err(|e| Error::io("spawning the packer thread", e))?;
            let prepared = self.prepare_batches(rx, &claims, |p| ptx.send(p).is_ok());
            drop(ptx);
            let packed = packer.join().unwrap_or_else(|_| {
                self.unsettled.keep();
                Err(Error::io("packer thread panicked", std::io::Error::other("panic")))
            });
            match (prepared, packed) {
                (Ok(()), Ok(w)) => Ok(w),
                (Ok(()), Err(e)) | (Err(_), Err(e)) => Err(e),
                (Err(e), Ok(w)) => {
                    self.unpublish_packs(&w.packs);
                    Err(e)
                }
            }
        })
    }

    /// The parallel pass, batch by batch; `send` returns false if the packer stopped.
    fn prepare_batches(
        &self,
        rx: Receiver<Arc<Batch>>,
        claims: &Claims,
        mut send: impl FnMut(Prepared) -> bool,
    ) -> Result<()> {
        let tx = self.db.begin_read()?;
        let known_chunks = tx.open_table(CHUNKS)?;
        let known_files = tx.open_table(FILES)?;
        let chunker = Chunker::new(self.params);
        let mut streamed: Option<blake3::Hasher> = None;
        for batch in rx {
            let done = self.prepare(&batch, &chunker, claims, &mut streamed, &known_chunks, &known_files)?;
            if !send(Prepared { batch, done }) {
                return Err(Error::io("the packer thread stopped", std::io::Error::other("packer stopped")));
            }
        }
        Ok(())
    }

    /// One batch's parallel pass (rayon): BLAKE3 of every whole region; those
    /// the index holds or another piece claimed stop there; the rest are cut
    /// and their chunks hashed; chunks neither in the index nor claimed are
    /// compressed. Meanwhile the parts of a streamed region feed its hash.
    fn prepare(
        &self,
        batch: &Batch,
        chunker: &Chunker,
        claims: &Claims,
        streamed: &mut Option<blake3::Hasher>,
        known_chunks: &redb::ReadOnlyTable<&[u8], &[u8]>,
        known_files: &redb::ReadOnlyTable<&[u8], &[u8]>,
    ) -> Result<Vec<Done>> {
        let level = self.opts.compression_level;
        let cut = |data: &[u8], off: usize, len: usize, id: ChunkId| -> Result<Cut> {
            let first =
                !claims.has_chunk(&id)? && known_chunks.get(&id.as_bytes()[..])?.is_none() && claims.claim_chunk(id)?;
            let stored = first.then(|| pack::compress_chunk(&data[off..off + len], level));
            Ok(Cut { off, len, id, stored })
        };
        let (done, ends) = rayon::join(
            || {
                batch
                    .pieces
                    .par_iter()
                    .map(|p| match p {
                        Piece::Whole { data, .. } => {
                            let data = batch.buf.get(data);
                            let id = FileId::from_bytes(*blake3::hash(data).as_bytes());
                            if claims.has_file(&id)? {
                                return Ok(Done::Claimed(id));
                            }
                            if known_files.get(&id.as_bytes()[..])?.is_some() {
                                return Ok(Done::Indexed(id));
                            }
                            if !claims.claim_file(id)? {
                                return Ok(Done::Claimed(id));
                            }
                            let cuts = chunker.cuts(data);
                            let cuts = if cuts.len() == 1 {
                                // A one-chunk file's id is its chunk's id: hash once.
                                vec![cut(data, 0, data.len(), id.as_chunk())?]
                            } else {
                                cuts.into_par_iter()
                                    .map(|(o, l)| cut(data, o, l, ChunkId::of(&data[o..o + l])))
                                    .collect::<Result<_>>()?
                            };
                            Ok(Done::New(id, cuts))
                        }
                        Piece::Part(r) => {
                            let data = batch.buf.get(r);
                            Ok(Done::Part(cut(data, 0, data.len(), ChunkId::of(data))?))
                        }
                        Piece::Raw(_) | Piece::PartsEnd { .. } => Ok(Done::Skip),
                    })
                    .collect::<Result<Vec<_>>>()
            },
            || {
                // In stream order: a batch may end one streamed region and begin the next.
                let mut ends = Vec::new();
                for (i, p) in batch.pieces.iter().enumerate() {
                    match p {
                        Piece::Part(r) => {
                            streamed.get_or_insert_with(blake3::Hasher::new).update(batch.buf.get(r));
                        }
                        Piece::PartsEnd { .. } => {
                            let h = streamed.take().unwrap_or_default();
                            ends.push((i, FileId::from_bytes(*h.finalize().as_bytes())));
                        }
                        _ => {}
                    }
                }
                ends
            },
        );
        let mut done = done?;
        for (i, id) in ends {
            done[i] = Done::PartsEnd(id, known_files.get(&id.as_bytes()[..])?.is_some());
        }
        Ok(done)
    }

    /// Record a layer whose chunks this store already holds, walked and
    /// verified elsewhere (a recipe bundle, `bundle_commit`), with the same
    /// index records and layer object as an ingest. `files` holds the file
    /// recipes the index lacks; the caller holds the write lock.
    pub(crate) fn commit_walked(
        &self,
        info: LayerInfo,
        contents: Vec<FileId>,
        recipe: Vec<u8>,
        files: HashMap<FileId, FileRecipe>,
        started: Instant,
    ) -> Result<IngestSummary> {
        let input_bytes = info.tar_size;
        let rows = {
            let tx = self.db.begin_read()?;
            let held = HeldIndex::open(&tx)?;
            let mut rows = held.rows(&self.staging)?;
            let claims = Claims::new(Some(self.staging.clone()));
            for id in &contents {
                claims.freeze_if_full()?;
                if rows.repeat(&claims, id)?.is_none() {
                    let value = match files.get(id) {
                        Some(r) => FileValue::New(r),
                        None => FileValue::Held(held.file(id)?),
                    };
                    rows.add_content(*id, value, &claims, &held)?;
                }
            }
            rows.finish();
            rows
        };
        let recipe = Spilled::Mem(recipe);
        self.commit(Walked { info, recipe }, Written { rows, ..Written::default() }, input_bytes, started)
    }

    fn commit(&self, walked: Walked, w: Written, input_bytes: u64, started: Instant) -> Result<IngestSummary> {
        let Walked { mut info, recipe } = walked;
        let Written { mut rows, packs: new_packs, chunk_bytes, .. } = w;
        let rows::Records { chunks: mut new_chunk_rows, new_files: mut new_file_rows, files: files_section } =
            rows.take_records()?;
        let (new_chunks, new_files) = (new_chunk_rows.len(), new_file_rows.len());
        // Parts would store more, but recipe bundles and layer objects are read whole.
        if recipe.len() > u64::from(u32::MAX) {
            return Err(Error::invalid(format!("the layer's recipe is {} bytes: more than 4 GiB", recipe.len())));
        }
        let (input_compression, input_blob) = (info.compression, info.blob);
        let tx = self.db.begin_write()?;
        let already_present;
        let new_blob;
        {
            let mut meta = tx.open_table(META)?;
            let counters =
                (index::get_counter(&meta, index::NEXT_CHUNK_KEY)?, index::get_counter(&meta, index::NEXT_FILE_KEY)?);
            // The rows were numbered from the counters the walk began with,
            // under the write lock: nothing may have numbered anything since.
            if counters != (rows.first_chunk, rows.first_file) {
                return Err(Error::corrupt(format!(
                    "internal: the index's chunk and file counters moved during the ingest ({}, {} to {}, {})",
                    rows.first_chunk, rows.first_file, counters.0, counters.1
                )));
            }
            // Near key order: a B-tree takes them with far fewer page visits
            // (a 500,000-file layer's rows: 1.8 instead of 2.5 s), and they
            // need no large cache (see `INDEX_CACHE` and `insert_in_blocks`).
            let mut chunks = tx.open_table(CHUNKS)?;
            rows::insert_in_blocks(&mut new_chunk_rows, |r| {
                let mut loc = ChunkLoc::decode(&r[32..])?;
                loc.pack = rows.renamed(loc.pack);
                chunks.insert(&r[..32], &loc.encode()[..])?;
                Ok(())
            })?;
            let mut files = tx.open_table(FILES)?;
            rows::insert_in_blocks(&mut new_file_rows, |r| {
                files.insert(&r[..32], &r[32..])?;
                Ok(())
            })?;
            // Their spill files' disk space too: the layer object is yet to be written.
            drop((new_chunk_rows, new_file_rows));
            let (next_chunk, next_file) = rows.next();
            meta.insert(index::NEXT_CHUNK_KEY, &next_chunk.to_le_bytes()[..])?;
            meta.insert(index::NEXT_FILE_KEY, &next_file.to_le_bytes()[..])?;
            let mut packs = tx.open_table(PACKS)?;
            for (id, p) in &new_packs {
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
            // The layer's two large values last (a layer of 2,000,000 small
            // files: a 100 MB recipe, a 24 MB map): inserted first, they were
            // pushed out to the file by the rows after them, then read back
            // whole to checksum them at the commit (368-376 MB instead of
            // 314-341 peak).
            // Both go in parts of under 1 MiB (`index::PART_BYTES`): whole, each
            // was one power-of-two page, and the 2,000,000-file layer's commit
            // peaked at 310 MiB for it, against 252 for its walk.
            index::put_parted(&mut tx.open_table(RECIPES)?, key, recipe.len(), &mut recipe.reader())?;
            let (head, map) = rows.take_map()?;
            let mut value = (&head[..]).chain(map.reader());
            index::put_parted(&mut tx.open_table(LAYER_MAPS)?, key, head.len() as u64 + map.len(), &mut value)?;
            new_blob = arrived_blob.or(info.blob);
            if let Some(b) = new_blob {
                tx.open_table(BLOBS)?.insert(&b.as_bytes()[..], key)?;
            }
        }
        tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "ingest: index rows written");
        // The layer object goes to the backend before the index names the layer,
        // streamed from the walk's records: for a layer the index holds, they
        // are what the index holds once this commit is in (its rows and recipe
        // are written again above; its files' values are the index's own).
        // Built from the index instead, it cost a copy of every record: a
        // re-ingest of 1,000,000 small files peaked at 433-545 MB.
        let blobs: Vec<BlobDigest> = if already_present {
            // The blobs that named it before, in BLOBS.
            let mut blobs = Vec::new();
            for e in tx.open_table(BLOBS)?.iter()? {
                let (k, v) = e?;
                if v.value() == &info.id.as_bytes()[..] {
                    blobs.push(BlobDigest::from_bytes(
                        k.value().try_into().map_err(|_| Error::corrupt("bad blob key"))?,
                    ));
                }
            }
            blobs.sort();
            blobs
        } else {
            // Only this commit can have named a layer new to the index; but
            // another writer of a shared bucket may have committed it under
            // blobs this index never met: the object this one replaces keeps
            // them, here too.
            let mut blobs: Vec<BlobDigest> = new_blob.into_iter().collect();
            let theirs = self.blobs_in_backend(&info.id);
            if !theirs.is_empty() {
                let mut table = tx.open_table(BLOBS)?;
                for b in theirs.iter().filter(|b| !blobs.contains(b)) {
                    table.insert(&b.as_bytes()[..], &info.id.as_bytes()[..])?;
                }
                blobs.extend(theirs);
                blobs.sort();
                blobs.dedup();
            }
            blobs
        };
        let count = rows.file_count.to_le_bytes();
        let mut object =
            EncodedObject::new(self.params, &info.encode(), &blobs, recipe.reader(), &count, files_section.reader());
        self.publish_layer(&info.id, (object.len(), &mut object), already_present, &new_packs)?;
        // Before redb's commit writes its pages: a large layer's recipe and map are tens of MB.
        drop((recipe, rows, files_section));
        // On failure the packs and layer object stay: the next open reclaims them.
        tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "ingest: layer object stored");
        tx.commit().inspect_err(|_| self.unsettled.keep())?;
        tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "ingest: committed");
        Ok(IngestSummary {
            layer: info,
            already_present,
            input_compression,
            input_blob,
            input_bytes,
            new_chunks,
            new_chunk_bytes: chunk_bytes,
            new_stored_bytes: new_packs.iter().map(|(_, p)| p.len).sum(),
            new_files,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

struct Walked {
    info: LayerInfo,
    recipe: Spilled,
}

/// Read content region `c` into the batch being filled: whole, or cut into
/// chunks as it streams by when it is larger than [`WINDOW`].
fn read_content<R: Read>(
    c: Content,
    split: &mut TarSplitter<R>,
    chunker: &mut Chunker,
    cur: &mut Batch,
    ship: &mut impl FnMut(&mut Batch) -> Result<()>,
) -> Result<()> {
    let at = |e: Error| e.context(format!("entry {:?} at offset {}", String::from_utf8_lossy(&c.path), c.offset));
    if c.size <= WINDOW as u64 {
        let size = c.size as usize;
        if cur.buf.room() < size {
            ship(cur)?;
        }
        let data = cur
            .buf
            .append_with(size, |dst| {
                split.content().read_exact(dst).map_err(|e| crate::error::from_io(e, "reading file content"))
            })
            .map_err(at)?;
        cur.pieces.push(Piece::Whole { kind: c.kind, path: c.path, data });
    } else {
        chunker
            .chunk_slices(split.content(), c.size, |data| {
                if cur.buf.room() < data.len() {
                    ship(cur)?;
                }
                let r = cur.buf.append(data);
                cur.pieces.push(Piece::Part(r));
                if cur.buf.len() >= BATCH_BYTES {
                    ship(cur)?;
                }
                Ok(())
            })
            .map_err(at)?;
        cur.pieces.push(Piece::PartsEnd { kind: c.kind, path: c.path, size: c.size });
    }
    Ok(())
}

mod claims;
mod packer;
mod rows;

#[cfg(test)]
mod tests;
