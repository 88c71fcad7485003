//! Recording a layer from a recipe bundle whose chunks this store holds (the
//! end of a pull via chunks, or of a push on the hub), without a full ingest
//! of the rebuilt tar, and without trusting the bundle for anything:
//!
//! - the tar walk (`tarsplit`) runs over the bundle's raw bytes and must find
//!   a content region exactly where each content item of the layer recipe is,
//!   with its kind, size and path, the raw bytes split as this store's own
//!   recipes split them, and nothing after the end marker: the recipe is
//!   then the one an ingest of the tar writes, item for item, and is recorded;
//! - every content item's bytes are rebuilt (from the raw chunks a pull has
//!   just verified, or from local packs, decompressed in parallel) and each
//!   new item is checked: its FileId is their BLAKE3 (a one-chunk item's id
//!   is its chunk's id, checked when the chunk was verified), and its chunks
//!   are the ones this store's FastCDC parameters cut; a file the index
//!   holds must have the same chunks;
//! - the SHA-256 of the rebuilt stream, on a helper thread, must be the
//!   layer's id (diff_id).
//!
//! Only then is the layer recorded, through the same code as an ingest.

use crate::bundle_check::{check_item, forged, RecipeStream};
use crate::chunker::WINDOW;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::{ChunkId, FileId, LayerId};
use crate::index::{self, LayerInfo, CHUNKS, FILES};
use crate::ingest::{IngestOptions, IngestSummary};
use crate::input::Compression;
use crate::pack::{self, ChunkLoc};
use crate::recipe::FileRecipe;
use crate::store::Store;
use crate::tarsplit::{ContentKind, Step, TarSplitter};
use crate::transfer::RecipeBundle;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Content bytes rebuilt per parallel step.
const STEP_BYTES: usize = 4 << 20;
/// Steps in flight to the SHA-256 thread.
const STEPS_AHEAD: usize = 3;
/// Chunks of a streamed (larger than [`WINDOW`]) item decompressed at once.
const STREAM_AHEAD: usize = 32;

type ChunkTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Chunks a pull is fetching, handed over raw (verified) as they arrive, so
/// the rebuild runs while the fetch goes on, and never decompresses them.
/// Each is let go once the rebuild has read it as many times as the layer
/// uses it (memory is then reused, not grown by the whole layer).
#[cfg_attr(not(feature = "client"), allow(dead_code))]
pub(crate) struct Arrivals {
    expected: HashSet<ChunkId>,
    state: Mutex<Arrived>,
    cond: Condvar,
}

/// The chunks arrived and not yet used up, and whether the fetch has ended.
#[derive(Default)]
#[cfg_attr(not(feature = "client"), allow(dead_code))]
struct Arrived {
    chunks: HashMap<ChunkId, (Arc<Vec<u8>>, u32)>,
    uses: HashMap<ChunkId, u32>,
    closed: bool,
}

#[cfg_attr(not(feature = "client"), allow(dead_code))]
impl Arrivals {
    /// For chunks the store does not hold yet, each with the number of times
    /// the rebuild reads it.
    pub fn new(uses: HashMap<ChunkId, u32>) -> Self {
        let expected = uses.keys().copied().collect();
        Arrivals { expected, state: Mutex::new(Arrived { uses, ..Arrived::default() }), cond: Condvar::new() }
    }

    /// Chunks arrived (and verified).
    pub fn add(&self, chunks: impl IntoIterator<Item = (ChunkId, Vec<u8>)>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (id, raw) in chunks {
            if let Some(n) = st.uses.remove(&id) {
                st.chunks.insert(id, (Arc::new(raw), n));
            }
        }
        self.cond.notify_all();
    }

    /// No more will arrive (the fetch ended or failed).
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.cond.notify_all();
    }

    /// Chunk `id`, once it has arrived; `None` if it is not expected here.
    fn wait(&self, id: &ChunkId) -> Result<Option<Arc<Vec<u8>>>> {
        if !self.expected.contains(id) {
            return Ok(None);
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((r, left)) = st.chunks.get_mut(id) {
                *left = left.saturating_sub(1);
                let r = r.clone();
                if *left == 0 {
                    st.chunks.remove(id);
                }
                return Ok(Some(r));
            }
            if st.closed {
                return Err(Error::not_found(format!("chunk {id} did not arrive, or was read more often than used")));
            }
            st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Bytes of the rebuilt stream, on their way to the SHA-256.
enum Bytes {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(b) => b,
            Bytes::Shared(b) => b,
        }
    }
}

/// One piece of the rebuilt stream, in order.
enum Seg {
    /// Header bytes, padding, the tail: as the tar walk read them.
    Raw(Vec<u8>),
    /// A content item; `check`: its first sighting, not already recorded
    /// here with the same chunks. Held whole unless `stream`.
    Item { id: FileId, check: bool, stream: bool },
}

/// A bundle checked against the layer it rebuilds, ready to record.
pub(crate) struct Verified {
    info: LayerInfo,
    contents: Vec<FileId>,
    recipe: Vec<u8>,
    /// The file recipes the index lacked when the walk looked.
    new_files: HashMap<FileId, FileRecipe>,
    started: Instant,
}

/// Where a rebuild finds chunks: arriving ones, else the index and packs.
struct Source<'a> {
    store: &'a Store,
    chunks: ChunkTable,
    arrivals: Option<&'a Arrivals>,
}

impl Store {
    /// Record a layer from a recipe bundle whose chunks this store holds. The
    /// tar is rebuilt and walked, every content item and the diff_id are
    /// checked (see the module docs); nothing is recorded unless all agree.
    pub fn commit_bundle(&self, bundle: &RecipeBundle, opts: &IngestOptions) -> Result<IngestSummary> {
        let v = self.verify_bundle(bundle, opts, None)?;
        self.record_verified(v)
    }

    /// Record a verified bundle.
    pub(crate) fn record_verified(&self, v: Verified) -> Result<IngestSummary> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.check_writable()?;
        let Verified { info, contents, recipe, mut new_files, started } = v;
        {
            // Another writer may have recorded some of them since the walk looked.
            let tx = self.db.begin_read()?;
            let files = tx.open_table(FILES)?;
            let mut held = Vec::new();
            for id in new_files.keys() {
                if files.get(&id.as_bytes()[..])?.is_some() {
                    held.push(*id);
                }
            }
            held.iter().for_each(|id| drop(new_files.remove(id)));
        }
        failpoint::hit("before-commit");
        let summary = self.commit_walked(info, contents, recipe, new_files, started)?;
        failpoint::hit("after-commit");
        Ok(summary)
    }

    /// Rebuild and check the layer of a bundle (see the module docs); its
    /// chunks are in this store or, when given, among `arrivals`.
    pub(crate) fn verify_bundle(
        &self,
        bundle: &RecipeBundle,
        opts: &IngestOptions,
        arrivals: Option<&Arrivals>,
    ) -> Result<Verified> {
        let started = Instant::now();
        self.check_writable()?;
        let tx = self.db.begin_read()?;
        let src = Source { store: self, chunks: tx.open_table(CHUNKS)?, arrivals };
        let files = tx.open_table(FILES)?;
        // Three stages: the tar walk (this thread), the rebuild and checks of
        // content (a thread driving rayon), the SHA-256 of the stream.
        let (step_tx, step_rx) = crossbeam_channel::bounded::<Vec<Seg>>(STEPS_AHEAD);
        let (sha_tx, sha_rx) = crossbeam_channel::bounded::<Vec<Bytes>>(STEPS_AHEAD);
        let spawn_err = |e| Error::io("spawning a rebuild thread", e);
        let (walked, built, digest) = std::thread::scope(|s| {
            let sha = std::thread::Builder::new().name("chunkstore-sha256".into()).spawn_scoped(s, move || {
                let mut h = Sha256::new();
                for step in sha_rx {
                    for b in step {
                        h.update(&*b);
                    }
                }
                <[u8; 32]>::from(h.finalize())
            });
            let sha = match sha {
                Ok(h) => h,
                Err(e) => return (Err(spawn_err(e)), Ok(()), [0; 32]),
            };
            let src = &src;
            let rebuild = std::thread::Builder::new().name("chunkstore-rebuild".into()).spawn_scoped(s, move || {
                for step in step_rx {
                    src.rebuild_step(bundle, step, opts, &sha_tx)?;
                }
                Ok(())
            });
            let (walked, built) = match rebuild {
                Ok(h) => {
                    let walked = self.walk_bundle(bundle, &files, started, |step| {
                        step_tx.send(step).map_err(|_| Error::io("rebuilding", io::Error::other("the rebuild stopped")))
                    });
                    drop(step_tx);
                    (walked, h.join().unwrap_or_else(|_| Err(Error::io("rebuild", io::Error::other("panicked")))))
                }
                Err(e) => (Err(spawn_err(e)), Ok(())),
            };
            (walked, built, sha.join().expect("the hashing thread does not panic"))
        });
        // The rebuild's error first: the walk then only sees "the rebuild stopped".
        built?;
        let walked = walked?;
        let got = LayerId::from_bytes(digest);
        if got != bundle.layer {
            return Err(Error::corrupt(format!("rebuilt layer is {got}, expected {}", bundle.layer)));
        }
        Ok(walked)
    }

    /// Walk the bundle's tar (see [`RecipeStream`]), check what it names
    /// against this store, and hand the stream's pieces, in order and in
    /// steps, to `send`.
    fn walk_bundle(
        &self,
        bundle: &RecipeBundle,
        files: &ChunkTable,
        started: Instant,
        mut send: impl FnMut(Vec<Seg>) -> Result<()>,
    ) -> Result<Verified> {
        // Header bytes move on in steps of bounded size, however many header-only entries there are.
        let mut split = TarSplitter::new(RecipeStream::new(bundle.recipe.clone())?).with_raw_limit(STEP_BYTES as u64);
        let mut raw = Vec::new();
        let mut step: Vec<Seg> = Vec::new();
        let mut step_bytes = 0usize;
        let mut seen: HashSet<FileId> = HashSet::new();
        let mut new_files = HashMap::new();
        let mut contents = Vec::new();
        let (mut files_count, mut file_bytes, mut chunk_refs) = (0u64, 0u64, 0u64);
        loop {
            let next = split.next_step(&mut raw)?;
            if !raw.is_empty() {
                step_bytes += raw.len();
                step.push(Seg::Raw(std::mem::take(&mut raw)));
            }
            let c = match next {
                Step::Content(c) => c,
                Step::More => {
                    if step_bytes >= STEP_BYTES {
                        send(std::mem::take(&mut step))?;
                        step_bytes = 0;
                    }
                    continue;
                }
                Step::End => break,
            };
            let mut found = None;
            split.skip_content(|s, n| {
                debug_assert_eq!(n, c.size);
                found = Some(s.skip(c.kind, c.size, &c.path)?);
                Ok(())
            })?;
            let id = found.expect("set by skip_content");
            let r = bundle.files.get(&id).ok_or_else(|| forged(format!("it lacks the recipe of file {id}")))?;
            if r.size != c.size {
                return Err(forged(format!("file {id} is {} bytes in the layer, {} in its recipe", c.size, r.size)));
            }
            match c.kind {
                ContentKind::File => {
                    files_count += 1;
                    file_bytes += c.size;
                }
                ContentKind::Data => {}
            }
            chunk_refs += r.chunks.len() as u64;
            contents.push(id);
            let mut check = false;
            if seen.insert(id) {
                match files.get(&id.as_bytes()[..])? {
                    Some(v) if index::decode_file(v.value())?.1 == *r => {}
                    Some(_) => return Err(forged(format!("file {id} is made of other chunks here"))),
                    None => {
                        check = true;
                        new_files.insert(id, r.clone());
                    }
                }
            }
            let stream = c.size > WINDOW as u64;
            if stream && !step.is_empty() {
                send(std::mem::take(&mut step))?;
                step_bytes = 0;
            }
            step.push(Seg::Item { id, check, stream });
            step_bytes += c.size as usize;
            if stream || step_bytes >= STEP_BYTES {
                send(std::mem::take(&mut step))?;
                step_bytes = 0;
            }
        }
        if !step.is_empty() {
            send(step)?;
        }
        split.get_mut().finish()?;
        Ok(Verified {
            started,
            info: LayerInfo {
                id: bundle.layer,
                blob: None,
                compression: Compression::None,
                tar_size: split.position(),
                entries: split.entries(),
                files: files_count,
                file_bytes,
                chunks: chunk_refs,
                ingested_at: 0,
            },
            contents,
            // The walk found exactly the items an ingest writes, and nothing after.
            recipe: bundle.recipe.clone(),
            new_files,
        })
    }
}

impl Source<'_> {
    /// Rebuild one step's pieces (in parallel), check them, and send them on in order.
    fn rebuild_step(
        &self,
        bundle: &RecipeBundle,
        step: Vec<Seg>,
        opts: &IngestOptions,
        sha: &crossbeam_channel::Sender<Vec<Bytes>>,
    ) -> Result<()> {
        let mut send = |b: Vec<Bytes>| {
            if let Some(p) = &opts.progress {
                p.fetch_add(b.iter().map(|b| b.len() as u64).sum(), Ordering::Relaxed);
            }
            sha.send(b).map_err(|_| Error::io("hashing", io::Error::other("the hashing thread stopped")))
        };
        if let [Seg::Item { id, check, stream: true }] = &step[..] {
            return self.stream_item(id, &bundle.files[id], *check, &mut send);
        }
        let built = step
            .into_par_iter()
            .map(|seg| match seg {
                Seg::Raw(b) => Ok(Bytes::Owned(b)),
                Seg::Item { id, check, .. } => self.rebuild_item(&id, &bundle.files[&id], check),
            })
            .collect::<Result<Vec<_>>>()?;
        send(built)
    }

    /// Chunk `id` of `len` raw bytes, if it is (or will be) among the arrivals.
    fn arrived(&self, id: &ChunkId, len: u32) -> Result<Option<Arc<Vec<u8>>>> {
        let Some(r) = self.arrivals.map(|a| a.wait(id)).transpose()?.flatten() else { return Ok(None) };
        if r.len() != len as usize {
            return Err(forged(format!("chunk {id} is {} bytes, the bundle says {len}", r.len())));
        }
        Ok(Some(r))
    }

    /// Append chunk `id` of `len` raw bytes to `out`.
    fn chunk_into(&self, id: &ChunkId, len: u32, out: &mut Vec<u8>) -> Result<()> {
        if let Some(r) = self.arrived(id, len)? {
            out.extend_from_slice(&r);
            return Ok(());
        }
        let v =
            self.chunks.get(&id.as_bytes()[..])?.ok_or_else(|| Error::not_found(format!("chunk {id} is not here")))?;
        let loc = ChunkLoc::decode(v.value())?;
        if loc.raw_len != len {
            return Err(forged(format!("chunk {id} is {} bytes, the bundle says {len}", loc.raw_len)));
        }
        let stored = self.store.backend.read_pack(loc.pack, loc.offset, loc.stored_len as usize)?;
        pack::decode_chunk_into(&stored, loc.raw_len, out)
    }

    /// Chunk `id` of `len` raw bytes.
    fn chunk(&self, id: &ChunkId, len: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.chunk_into(id, len, &mut out)?;
        Ok(out)
    }

    /// A content item's bytes from local chunks; with `check`, verified
    /// against its id and this store's chunk boundaries.
    fn rebuild_item(&self, id: &FileId, r: &FileRecipe, check: bool) -> Result<Bytes> {
        if let [(c, len)] = &r.chunks[..] {
            // One chunk: its bytes as they are, no copy.
            if let Some(raw) = self.arrived(c, *len)? {
                if check {
                    check_item(self.store.params, id, r, &raw)?;
                }
                return Ok(Bytes::Shared(raw));
            }
        }
        let mut data = Vec::with_capacity(r.size as usize);
        let local = match self.arrivals {
            Some(a) => r.chunks.iter().filter(|(c, _)| !a.expected.contains(c)).count(),
            None => r.chunks.len(),
        };
        if local < 4 {
            for (c, len) in &r.chunks {
                self.chunk_into(c, *len, &mut data)?;
            }
        } else {
            // Several to decompress: in parallel, then in order.
            let parts = r.chunks.par_iter().map(|(c, len)| self.chunk(c, *len)).collect::<Result<Vec<_>>>()?;
            parts.iter().for_each(|p| data.extend_from_slice(p));
        }
        if check {
            check_item(self.store.params, id, r, &data)?;
        }
        Ok(Bytes::Owned(data))
    }

    /// A content item too large to hold whole: its chunks in order, through
    /// the same streaming cutter as an ingest, each handed to `send`.
    fn stream_item(
        &self,
        id: &FileId,
        r: &FileRecipe,
        check: bool,
        send: &mut dyn FnMut(Vec<Bytes>) -> Result<()>,
    ) -> Result<()> {
        let reader =
            ItemReader { src: self, list: &r.chunks, next: 0, ready: VecDeque::new(), cur: Vec::new(), pos: 0 };
        if !check {
            let mut reader = reader;
            while let Some(b) = reader.next_chunk()? {
                send(vec![Bytes::Owned(b)])?;
            }
            return Ok(());
        }
        let mut hasher = blake3::Hasher::new();
        let mut cut = 0usize;
        crate::chunker::Chunker::new(self.store.params).chunk(reader, r.size, |b| {
            if r.chunks.get(cut).map(|c| c.1 as usize) != Some(b.len()) {
                return Err(forged(format!("file {id}: its chunks are not cut where this store cuts")));
            }
            cut += 1;
            hasher.update_rayon(&b);
            send(vec![Bytes::Owned(b)])
        })?;
        if cut != r.chunks.len() {
            return Err(forged(format!("file {id}: its chunks are not cut where this store cuts")));
        }
        if FileId::from_bytes(*hasher.finalize().as_bytes()) != *id {
            return Err(Error::corrupt(format!("file {id}: the bytes rebuilt do not match its id")));
        }
        Ok(())
    }
}

/// Reads a content item's bytes from local chunks, decompressing a few ahead in parallel.
struct ItemReader<'a> {
    src: &'a Source<'a>,
    list: &'a [(ChunkId, u32)],
    next: usize,
    ready: VecDeque<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ItemReader<'_> {
    /// The next chunk whole (only before any `read`).
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.ready.is_empty() && self.next < self.list.len() {
            let end = (self.next + STREAM_AHEAD).min(self.list.len());
            let got = self.list[self.next..end]
                .par_iter()
                .map(|(c, len)| self.src.chunk(c, *len))
                .collect::<Result<Vec<_>>>()?;
            self.ready.extend(got);
            self.next = end;
        }
        Ok(self.ready.pop_front())
    }
}

impl Read for ItemReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.next_chunk()? {
                Some(b) => (self.cur, self.pos) = (b, 0),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
