//! Content ids an ingest has met so far, shared by the parallel pass and
//! the packer. The parallel pass claims new content (whoever claims an id
//! first chunks or compresses it, once); the packer then records where it
//! put it: a file's entry in the number map, a chunk's number. One map for
//! both kinds and both jobs, since for a layer of many small files it is
//! most of the ingest's memory (a one-chunk file's id is its chunk's too).
//!
//! Bounded: once the maps hold [`FREEZE_AT`] ids, the packer moves the
//! settled ones (placed, numbered) to sorted runs in an unlinked spill file,
//! each with a Bloom filter and every 64th id in memory (~1.75 bytes an id
//! instead of ~75). A lookup the maps miss asks the runs; for a new id (the
//! common case) the filters answer without reading.

use crate::error::{Error, Result};
use crate::ids::{ChunkId, FileId};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// In shards that each grow on their own, of unequal shares of the ids
/// (shard `i` takes a share growing as 2^(i/64)): a hash table doubles its
/// room when 7/8 full, and equal shards of random ids would all double at
/// once. So the maps' room grows smoothly (on average ~75 bytes an id,
/// where all at once it would swing between 51 and 103), and no doubling
/// holds all maps three times over: the walk of a layer of 2,000,000 small
/// files peaked at 331 MiB with equal shards, 275 MiB so (before freezing).
pub(crate) struct Claims {
    shards: Box<[Mutex<Shard>]>,
    /// Shard `i` takes ids whose first two bytes (big-endian) are below
    /// `bounds[i]` and not below `bounds[i - 1]`.
    bounds: Box<[u32]>,
    /// Ids in the shards' maps, all together.
    in_maps: AtomicUsize,
    /// Where frozen runs go; `None`: all stays in memory.
    dir: Option<PathBuf>,
    file: OnceLock<File>,
    /// The frozen file's length (only the packer freezes).
    end: Mutex<u64>,
}

#[derive(Default)]
struct Shard {
    map: HashMap<[u8; 32], Claim>,
    /// Frozen runs of this shard's ids, oldest first.
    runs: Vec<Run>,
}

/// What an ingest knows of one id: as a content item, the offset of its
/// number map entry, `NOT_PLACED` while only claimed, or `NONE`; as a chunk
/// (if `chunk_claimed`), its number, or `NOT_NUMBERED` until the packer
/// gives it one.
#[derive(Clone, Copy)]
struct Claim {
    file: u32,
    chunk: u32,
    /// Whether the id is claimed as a chunk (a flag, since every u32 but
    /// u32::MAX is a chunk number).
    chunk_claimed: bool,
}

impl Claim {
    fn settled(&self) -> bool {
        self.file != NOT_PLACED && !(self.chunk_claimed && self.chunk == NOT_NUMBERED)
    }

    /// `self`, with what it lacks taken from `older` (an id frozen as a
    /// file can be claimed as a chunk later, and the other way round).
    fn or(self, older: Claim) -> Claim {
        Claim {
            file: if self.file != NONE { self.file } else { older.file },
            chunk: if self.chunk_claimed { self.chunk } else { older.chunk },
            chunk_claimed: self.chunk_claimed || older.chunk_claimed,
        }
    }
}

const UNCLAIMED: Claim = Claim { file: NONE, chunk: NOT_NUMBERED, chunk_claimed: false };
const NONE: u32 = u32::MAX;
pub(crate) const NOT_PLACED: u32 = u32::MAX - 1;
pub(crate) const NOT_NUMBERED: u32 = u32::MAX;
const SHARDS: usize = 64;
/// Ids the maps hold before the settled ones are frozen: ~40 MB of maps.
/// The crate's unit tests freeze past 256, so that their ingests do.
const FREEZE_AT: usize = if cfg!(test) { 256 } else { 1 << 19 };
/// A frozen record: `id [32] | file u32 | chunk u32 | chunk_claimed u8`.
const RECORD: usize = 41;
/// Records per block of a run: every block's first id is kept in memory.
const BLOCK: usize = 64;

/// One shard's settled ids at one freeze, sorted, in the frozen file.
struct Run {
    /// Where its records start in the file.
    at: u64,
    count: usize,
    /// The first id of each block.
    firsts: Vec<[u8; 32]>,
    filter: Bloom,
}

impl Claims {
    /// Claims that freeze to a file in `dir` (the store's `tmp/`) past
    /// [`FREEZE_AT`] ids; `None`: never.
    pub fn new(dir: Option<PathBuf>) -> Self {
        let weight = |i: usize| (i as f64 / SHARDS as f64).exp2();
        let total: f64 = (0..SHARDS).map(weight).sum();
        let mut sum = 0.0;
        let bounds = (0..SHARDS)
            .map(|i| {
                sum += weight(i);
                if i + 1 == SHARDS {
                    1 << 16
                } else {
                    (sum / total * 65536.0) as u32
                }
            })
            .collect();
        Claims {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            bounds,
            in_maps: AtomicUsize::new(0),
            dir,
            file: OnceLock::new(),
            end: Mutex::new(0),
        }
    }

    fn shard(&self, id: &[u8; 32]) -> std::sync::MutexGuard<'_, Shard> {
        let top = u32::from(u16::from_be_bytes([id[0], id[1]]));
        lock(&self.shards[self.bounds.partition_point(|b| *b <= top)])
    }

    /// All this ingest knows of `id`, from the map and the frozen runs.
    fn get(&self, s: &Shard, id: &[u8; 32]) -> Result<Option<Claim>> {
        let mut got = s.map.get(id).copied();
        // Both halves known here: the runs could add nothing.
        if got.is_some_and(|c| c.file != NONE && c.chunk_claimed) {
            return Ok(got);
        }
        for run in s.runs.iter().rev() {
            if let Some(c) = self.lookup(run, id)? {
                got = Some(got.map_or(c, |g| g.or(c)));
            }
        }
        Ok(got)
    }

    fn lookup(&self, run: &Run, id: &[u8; 32]) -> Result<Option<Claim>> {
        if !run.filter.may_hold(id) {
            return Ok(None);
        }
        let block = match run.firsts.partition_point(|f| f <= id) {
            0 => return Ok(None),
            b => b - 1,
        };
        let first = block * BLOCK;
        let n = BLOCK.min(run.count - first);
        let mut buf = [0u8; BLOCK * RECORD];
        let file = self.file.get().expect("a run is in the file");
        file.read_exact_at(&mut buf[..n * RECORD], run.at + (first * RECORD) as u64).map_err(|e| self.io_err(e))?;
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let r = &buf[mid * RECORD..(mid + 1) * RECORD];
            match r[..32].cmp(&id[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    return Ok(Some(Claim {
                        file: u32::from_le_bytes(r[32..36].try_into().expect("4 bytes")),
                        chunk: u32::from_le_bytes(r[36..40].try_into().expect("4 bytes")),
                        chunk_claimed: r[40] != 0,
                    }))
                }
            }
        }
        Ok(None)
    }

    fn io_err(&self, e: std::io::Error) -> Error {
        let dir = self.dir.as_ref().map_or_else(String::new, |d| d.display().to_string());
        Error::io(format!("the ingest's claims file in {dir}"), e)
    }

    /// Change `id`'s claim in its shard's map (made first if there is none).
    fn edit(&self, s: &mut Shard, id: &[u8; 32], f: impl FnOnce(&mut Claim)) {
        let c = s.map.entry(*id).or_insert_with(|| {
            self.in_maps.fetch_add(1, Ordering::Relaxed);
            UNCLAIMED
        });
        f(c);
    }

    /// Where content `id`'s number map entry is, once placed.
    pub fn placed(&self, id: &FileId) -> Result<Option<u32>> {
        let s = self.shard(id.as_bytes());
        let c = self.get(&s, id.as_bytes())?;
        Ok(c.map(|c| c.file).filter(|at| *at != NONE && *at != NOT_PLACED))
    }

    /// Chunk `id` if claimed: its number once the packer gave it one.
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<Option<u32>>> {
        let s = self.shard(id.as_bytes());
        let c = self.get(&s, id.as_bytes())?.filter(|c| c.chunk_claimed);
        Ok(c.map(|c| Some(c.chunk).filter(|n| *n != NOT_NUMBERED)))
    }

    /// Chunk `id` is number `num` (claimed, if it was not: a commit from a
    /// recipe bundle places content no parallel pass claimed).
    pub fn numbered(&self, id: &ChunkId, num: u32) {
        let mut s = self.shard(id.as_bytes());
        self.edit(&mut s, id.as_bytes(), |c| {
            c.chunk = num;
            c.chunk_claimed = true;
        });
    }

    /// Content `id`'s number map entry is at `at`.
    pub fn place(&self, id: &FileId, at: u32) {
        let mut s = self.shard(id.as_bytes());
        self.edit(&mut s, id.as_bytes(), |c| c.file = at);
    }

    /// Whether this ingest has met content `id` already.
    pub fn has_file(&self, id: &FileId) -> Result<bool> {
        let s = self.shard(id.as_bytes());
        Ok(self.get(&s, id.as_bytes())?.is_some_and(|c| c.file != NONE))
    }

    /// Claim content `id`; false if it was met already.
    pub fn claim_file(&self, id: FileId) -> Result<bool> {
        let mut s = self.shard(id.as_bytes());
        if self.get(&s, id.as_bytes())?.is_some_and(|c| c.file != NONE) {
            return Ok(false);
        }
        self.edit(&mut s, id.as_bytes(), |c| c.file = NOT_PLACED);
        Ok(true)
    }

    /// Whether this ingest has claimed chunk `id` already.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        let s = self.shard(id.as_bytes());
        Ok(self.get(&s, id.as_bytes())?.is_some_and(|c| c.chunk_claimed))
    }

    /// Claim chunk `id`; false if it was claimed already.
    pub fn claim_chunk(&self, id: ChunkId) -> Result<bool> {
        let mut s = self.shard(id.as_bytes());
        if self.get(&s, id.as_bytes())?.is_some_and(|c| c.chunk_claimed) {
            return Ok(false);
        }
        self.edit(&mut s, id.as_bytes(), |c| c.chunk_claimed = true);
        Ok(true)
    }

    /// If the maps hold [`FREEZE_AT`] ids or more, move their settled ids
    /// to frozen runs. Called by the packer between batches; the maps keep
    /// their room for the ids to come.
    pub fn freeze_if_full(&self) -> Result<()> {
        if self.in_maps.load(Ordering::Relaxed) < FREEZE_AT {
            return Ok(());
        }
        let Some(dir) = &self.dir else { return Ok(()) };
        let file = match self.file.get() {
            Some(f) => f,
            None => {
                let f = crate::spill::unlinked_file(dir)?;
                self.file.get_or_init(|| f)
            }
        };
        let mut end = lock(&self.end);
        let mut records = Vec::new();
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            let mut settled: Vec<([u8; 32], Claim)> =
                s.map.iter().filter(|(_, c)| c.settled()).map(|(id, c)| (*id, *c)).collect();
            if settled.is_empty() {
                continue;
            }
            settled.sort_unstable_by_key(|s| s.0);
            records.clear();
            let mut filter = Bloom::new(settled.len());
            let mut firsts = Vec::with_capacity(settled.len().div_ceil(BLOCK));
            for (i, (id, c)) in settled.iter().enumerate() {
                if i % BLOCK == 0 {
                    firsts.push(*id);
                }
                filter.add(id);
                records.extend_from_slice(id);
                records.extend_from_slice(&c.file.to_le_bytes());
                records.extend_from_slice(&c.chunk.to_le_bytes());
                records.push(c.chunk_claimed as u8);
            }
            // Written before the run is visible: lookups in this shard wait for its lock.
            file.write_all_at(&records, *end).map_err(|e| self.io_err(e))?;
            s.runs.push(Run { at: *end, count: settled.len(), firsts, filter });
            *end += records.len() as u64;
            for (id, _) in &settled {
                s.map.remove(id);
            }
            self.in_maps.fetch_sub(settled.len(), Ordering::Relaxed);
        }
        tracing::debug!(frozen_bytes = *end, "ingest: claims frozen");
        Ok(())
    }
}

/// A Bloom filter over ids, ~10 bits an id and 7 probes (~1% false
/// positives). By hand: ids are BLAKE3 hashes already, so two of their
/// words make the probes, where the crates hash every key again.
struct Bloom {
    bits: Vec<u64>,
}

impl Bloom {
    fn new(n: usize) -> Self {
        Bloom { bits: vec![0; (n * 10).div_ceil(64).max(1)] }
    }

    /// The probes: from bytes 8.. (the first two pick the shard, so are alike in one).
    fn probes(words: usize, id: &[u8; 32]) -> impl Iterator<Item = usize> {
        let m = (words * 64) as u64;
        let h1 = u64::from_le_bytes(id[8..16].try_into().expect("8 bytes"));
        let h2 = u64::from_le_bytes(id[16..24].try_into().expect("8 bytes")) | 1;
        (0..7u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    fn add(&mut self, id: &[u8; 32]) {
        for p in Bloom::probes(self.bits.len(), id) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    fn may_hold(&self, id: &[u8; 32]) -> bool {
        Bloom::probes(self.bits.len(), id).all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> [u8; 32] {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn frozen_claims_answer_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let c = Claims::new(Some(dir.path().to_path_buf()));
        let n = 3 * FREEZE_AT as u32;
        for i in 0..n {
            let (f, k) = (FileId::from_bytes(id(i)), ChunkId::from_bytes(id(i)));
            assert!(c.claim_file(f).unwrap() && c.claim_chunk(k).unwrap());
            assert!(!c.claim_file(f).unwrap() && !c.claim_chunk(k).unwrap(), "claimed once");
            c.numbered(&k, i);
            // Every third file stays claimed, not placed: it must stay in the maps.
            if i % 3 != 0 {
                c.place(&f, 10 * i);
            }
            c.freeze_if_full().unwrap();
        }
        assert!(c.shards.iter().any(|s| !lock(s).runs.is_empty()), "some froze");
        assert!(c.in_maps.load(Ordering::Relaxed) < FREEZE_AT + n as usize / 3, "settled ids left the maps");
        for i in 0..n {
            let (f, k) = (FileId::from_bytes(id(i)), ChunkId::from_bytes(id(i)));
            assert!(c.has_file(&f).unwrap() && c.has_chunk(&k).unwrap(), "{i}");
            assert!(!c.claim_file(f).unwrap() && !c.claim_chunk(k).unwrap(), "{i}");
            assert_eq!(c.chunk(&k).unwrap(), Some(Some(i)));
            assert_eq!(c.placed(&f).unwrap(), (i % 3 != 0).then_some(10 * i));
        }
        for i in n..n + 1000 {
            let f = FileId::from_bytes(id(i));
            assert!(
                !c.has_file(&f).unwrap()
                    && c.chunk(&f.as_chunk()).unwrap().is_none()
                    && c.placed(&f).unwrap().is_none()
            );
        }
        // An id frozen as a chunk only, later claimed and placed as a file: both halves answer.
        let late = FileId::from_bytes(id(n + 5000));
        c.numbered(&late.as_chunk(), 7);
        for i in 0..FREEZE_AT as u32 {
            c.numbered(&ChunkId::from_bytes(id(n + 10_000 + i)), i);
        }
        c.freeze_if_full().unwrap();
        assert!(c.claim_file(late).unwrap(), "new as a file");
        c.place(&late, 99);
        assert_eq!((c.placed(&late).unwrap(), c.chunk(&late.as_chunk()).unwrap()), (Some(99), Some(Some(7))));
    }

    #[test]
    fn without_a_dir_nothing_freezes() {
        let c = Claims::new(None);
        for i in 0..2 * FREEZE_AT as u32 {
            c.numbered(&ChunkId::from_bytes(id(i)), i);
            c.freeze_if_full().unwrap();
        }
        assert_eq!(c.in_maps.load(Ordering::Relaxed), 2 * FREEZE_AT);
    }
}
