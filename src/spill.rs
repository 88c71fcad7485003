//! Bytes an ingest appends during its walk and streams back at its commit
//! (the layer recipe, its number map, read back in places for repeated
//! files, and the layer object's files section; new index rows in
//! [`SortedRuns`]): in memory up to [`SPILL_AT`], then in a file in the
//! store's `tmp/`, so that a layer of millions of small files holds neither
//! them beside the walk's maps nor all of them at once at its commit. The
//! file is unlinked as soon as it is open: a killed ingest leaves nothing
//! behind.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes kept in memory before the rest goes to a file: a layer of a few
/// thousand files never touches the disk for this. The crate's unit tests
/// spill past 64 KiB, so that their ingests do.
pub(crate) const SPILL_AT: usize = if cfg!(test) { 64 << 10 } else { 4 << 20 };

#[derive(Default)]
pub(crate) struct Spill {
    /// Where to create the file; `None`: keep everything in memory.
    dir: Option<PathBuf>,
    mem: Vec<u8>,
    file: Option<BufWriter<File>>,
    len: usize,
}

impl Spill {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Spill { dir, ..Spill::default() }
    }

    /// Bytes appended so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn extend(&mut self, b: &[u8]) -> Result<()> {
        if self.file.is_none() && self.mem.len() + b.len() > SPILL_AT {
            if let Some(dir) = &self.dir {
                let mut f = BufWriter::with_capacity(1 << 20, unlinked_file(dir)?);
                f.write_all(&self.mem).map_err(|e| io_err(dir, e))?;
                self.mem = Vec::new();
                self.file = Some(f);
            }
        }
        match &mut self.file {
            Some(f) => f.write_all(b).map_err(|e| io_err(self.dir.as_ref().expect("a file has a dir"), e))?,
            None => self.mem.extend_from_slice(b),
        }
        self.len += b.len();
        Ok(())
    }

    /// Bytes `at..at + buf.len()` of those appended so far.
    pub fn read_at(&mut self, at: usize, buf: &mut [u8]) -> Result<()> {
        let end = at + buf.len();
        if end > self.len {
            return Err(Error::corrupt(format!("internal: reading {at}..{end} of a {}-byte spill", self.len)));
        }
        let Some(f) = &mut self.file else {
            buf.copy_from_slice(&self.mem[at..end]);
            return Ok(());
        };
        let dir = self.dir.as_ref().expect("a file has a dir");
        if end > self.len - f.buffer().len() {
            f.flush().map_err(|e| io_err(dir, e))?;
        }
        std::os::unix::fs::FileExt::read_exact_at(f.get_ref(), buf, at as u64).map_err(|e| io_err(dir, e))
    }

    /// Everything appended, to be read back (any number of times).
    pub fn finish(self) -> Result<Spilled> {
        let Some(f) = self.file else { return Ok(Spilled::Mem(self.mem)) };
        let dir = self.dir.expect("a file has a dir");
        let file = f.into_inner().map_err(|e| io_err(&dir, e.into_error()))?;
        Ok(Spilled::File { file, len: self.len as u64, dir })
    }

    /// Everything appended, in order, in memory.
    #[cfg(test)]
    pub fn into_vec(self) -> Result<Vec<u8>> {
        self.finish()?.into_vec()
    }
}

/// What a [`Spill`] holds once written.
pub(crate) enum Spilled {
    Mem(Vec<u8>),
    File { file: File, len: u64, dir: PathBuf },
}

impl Default for Spilled {
    fn default() -> Self {
        Spilled::Mem(Vec::new())
    }
}

impl Spilled {
    pub fn len(&self) -> u64 {
        match self {
            Spilled::Mem(v) => v.len() as u64,
            Spilled::File { len, .. } => *len,
        }
    }

    /// Bytes `start..end`, streamed.
    pub fn range(&self, start: u64, end: u64) -> SpillReader<'_> {
        let src = match self {
            Spilled::Mem(v) => Src::Mem(v),
            Spilled::File { file, .. } => Src::File(file),
        };
        SpillReader { src, at: start, end: end.min(self.len()) }
    }

    /// All of it, streamed.
    pub fn reader(&self) -> SpillReader<'_> {
        self.range(0, self.len())
    }

    /// All of it in memory.
    #[cfg(test)]
    pub fn into_vec(self) -> Result<Vec<u8>> {
        match self {
            Spilled::Mem(v) => Ok(v),
            Spilled::File { len, .. } => {
                let mut out = Vec::with_capacity(len as usize);
                self.reader().read_to_end(&mut out).map_err(|e| self.err(e))?;
                Ok(out)
            }
        }
    }

    fn err(&self, e: std::io::Error) -> Error {
        match self {
            Spilled::Mem(_) => Error::io("reading an ingest's records", e),
            Spilled::File { dir, .. } => io_err(dir, e),
        }
    }
}

/// Reads a range of a [`Spilled`] (or of bytes in memory); a short file is
/// an error, not an early end.
pub(crate) struct SpillReader<'a> {
    src: Src<'a>,
    at: u64,
    end: u64,
}

enum Src<'a> {
    Mem(&'a [u8]),
    File(&'a File),
}

impl<'a> SpillReader<'a> {
    /// Reads `b`.
    pub fn bytes(b: &'a [u8]) -> Self {
        SpillReader { src: Src::Mem(b), at: 0, end: b.len() as u64 }
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> u64 {
        self.end - self.at
    }
}

impl Read for SpillReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min((self.end - self.at) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = match self.src {
            Src::Mem(v) => {
                let at = self.at as usize;
                buf[..want].copy_from_slice(&v[at..at + want]);
                want
            }
            Src::File(file) => {
                let n = std::os::unix::fs::FileExt::read_at(file, &mut buf[..want], self.at)?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("spill file ends at {} of {} bytes", self.at, self.end),
                    ));
                }
                n
            }
        };
        self.at += n as u64;
        Ok(n)
    }
}

impl Write for Spill {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.extend(b).map_err(std::io::Error::other)?;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of records one run of [`SortedRuns`] sorts in memory.
/// (256 KiB in the crate's unit tests, so that their ingests make runs).
pub(crate) const RUN_BYTES: usize = if cfg!(test) { 256 << 10 } else { 4 << 20 };

/// Records, each a 32-byte key and some bytes, appended in any order and
/// read back in key order: an external merge sort. Runs of up to
/// [`RUN_BYTES`] are sorted in memory and appended to one spill file; the
/// commit merges them ([`Merge`]), holding one record of each run at a time.
/// By hand: the crates for this (e.g. extsort) keep runs in named temporary
/// files, which a killed ingest would leave behind.
#[derive(Default)]
pub(crate) struct SortedRuns {
    /// Where to create the file; `None`: one run, in memory.
    dir: Option<PathBuf>,
    /// The current run: `len u32 | key | bytes` per record.
    buf: Vec<u8>,
    starts: Vec<usize>,
    file: Option<BufWriter<File>>,
    written: u64,
    /// Byte ranges of the runs in the file.
    runs: Vec<(u64, u64)>,
    count: u64,
}

impl SortedRuns {
    pub fn new(dir: Option<PathBuf>) -> Self {
        SortedRuns { dir, ..SortedRuns::default() }
    }

    pub fn push(&mut self, key: &[u8; 32], rest: &[u8]) -> Result<()> {
        let len = u32::try_from(32 + rest.len())
            .map_err(|_| Error::invalid(format!("an index record of {} bytes", 32 + rest.len())))?;
        if self.dir.is_some() && !self.buf.is_empty() && self.buf.len() + 4 + len as usize > RUN_BYTES {
            self.write_run()?;
        }
        self.starts.push(self.buf.len());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(rest);
        self.count += 1;
        Ok(())
    }

    /// Write the current run to `out` sorted, as framed records, and empty it.
    fn sort_run_into(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let buf = &self.buf;
        self.starts.sort_by(|&a, &b| buf[a + 4..a + 36].cmp(&buf[b + 4..b + 36]));
        for &at in &self.starts {
            let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            out.write_all(&buf[at..at + 4 + len])?;
        }
        self.buf.clear();
        self.starts.clear();
        Ok(())
    }

    fn write_run(&mut self) -> Result<()> {
        let dir = self.dir.clone().expect("runs are written only with a dir");
        let mut f = match self.file.take() {
            Some(f) => f,
            None => BufWriter::with_capacity(1 << 20, unlinked_file(&dir)?),
        };
        let len = self.buf.len() as u64;
        let r = self.sort_run_into(&mut f);
        self.file = Some(f);
        r.map_err(|e| io_err(&dir, e))?;
        self.runs.push((self.written, self.written + len));
        self.written += len;
        Ok(())
    }

    /// Every record, to be read back in key order.
    pub fn finish(mut self) -> Result<Merge> {
        let src = if self.file.is_none() {
            let mut run = Vec::with_capacity(self.buf.len());
            self.sort_run_into(&mut run).expect("writing to memory");
            self.runs.push((0, run.len() as u64));
            Spilled::Mem(run)
        } else {
            if !self.buf.is_empty() {
                self.write_run()?;
            }
            let dir = self.dir.take().expect("a file has a dir");
            let f = self.file.take().expect("checked");
            let file = f.into_inner().map_err(|e| io_err(&dir, e.into_error()))?;
            Spilled::File { file, len: self.written, dir }
        };
        let mut m = Merge {
            runs: self
                .runs
                .iter()
                .map(|&(at, end)| Run { at, end, buf: Vec::new(), pos: 0, cur: Vec::new() })
                .collect(),
            src,
            heap: std::collections::BinaryHeap::new(),
            out: Vec::new(),
            count: self.count,
        };
        for i in 0..m.runs.len() {
            m.advance(i)?;
        }
        Ok(m)
    }
}

/// The records of a [`SortedRuns`], in key order (equal keys: in run order).
pub(crate) struct Merge {
    src: Spilled,
    runs: Vec<Run>,
    /// The key of each run's current record (least first).
    heap: std::collections::BinaryHeap<std::cmp::Reverse<([u8; 32], usize)>>,
    out: Vec<u8>,
    count: u64,
}

/// One run being merged: what is read of it and not yet taken, and its
/// current record.
struct Run {
    at: u64,
    end: u64,
    buf: Vec<u8>,
    pos: usize,
    cur: Vec<u8>,
}

/// Bytes read from a run at a time.
const RUN_READ: usize = 64 << 10;

impl Merge {
    /// How many records there are (taken or not).
    pub fn len(&self) -> u64 {
        self.count
    }

    /// The next record (key and bytes), or `None` after the last.
    pub fn next_record(&mut self) -> Result<Option<&[u8]>> {
        let Some(std::cmp::Reverse((_, i))) = self.heap.pop() else { return Ok(None) };
        std::mem::swap(&mut self.out, &mut self.runs[i].cur);
        self.advance(i)?;
        Ok(Some(&self.out))
    }

    /// Read run `i`'s next record into its `cur`, and queue its key.
    fn advance(&mut self, i: usize) -> Result<()> {
        let Some(head) = self.take(i, 4)? else { return Ok(()) };
        let len = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
        if len < 32 {
            return Err(truncated());
        }
        let rec = self.take(i, len)?.ok_or_else(truncated)?;
        let key: [u8; 32] = rec[..32].try_into().expect("32 bytes");
        let run = &mut self.runs[i];
        run.cur.clear();
        run.cur.extend_from_slice(&run.buf[run.pos - len..run.pos]);
        self.heap.push(std::cmp::Reverse((key, i)));
        Ok(())
    }

    /// The next `n` bytes of run `i`; `None` at its end.
    fn take(&mut self, i: usize, n: usize) -> Result<Option<&[u8]>> {
        let run = &mut self.runs[i];
        if run.buf.len() - run.pos < n {
            run.buf.drain(..run.pos);
            run.pos = 0;
            let want = (n - run.buf.len()).max(RUN_READ).min((run.end - run.at) as usize);
            let have = run.buf.len();
            run.buf.resize(have + want, 0);
            self.src.range(run.at, run.end).read_exact(&mut run.buf[have..]).map_err(|e| self.src.err(e))?;
            run.at += want as u64;
            if run.buf.len() < n {
                // The run's end: clean between records only.
                return if run.buf.is_empty() { Ok(None) } else { Err(truncated()) };
            }
        }
        run.pos += n;
        Ok(Some(&run.buf[run.pos - n..run.pos]))
    }
}

/// A new file in `dir`, already unlinked. The store is one process's at a
/// time (redb's lock), so the pid and a counter make its name unique.
pub(crate) fn unlinked_file(dir: &std::path::Path) -> Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!("spill-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    std::fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    Ok(f)
}

fn truncated() -> Error {
    Error::corrupt("internal: an ingest's spill file holds a truncated record")
}

fn io_err(dir: &std::path::Path, e: std::io::Error) -> Error {
    Error::io(format!("an ingest's spill file in {}", dir.display()), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_past_the_limit_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::new(Some(dir.path().to_path_buf()));
        let mut want = Vec::new();
        for i in 0..(SPILL_AT / 1000 + 500) {
            let b = format!("{i:0999}\n");
            s.extend(b.as_bytes()).unwrap();
            want.extend_from_slice(b.as_bytes());
        }
        assert!(s.file.is_some(), "spilled");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the file is unlinked");
        assert_eq!(s.len(), want.len());
        // Read back while written: from the file, from the writer's buffer, across both.
        for at in [0, 1000, SPILL_AT - 3, want.len() - 5000, want.len() - 10] {
            let mut b = vec![0u8; 10];
            s.read_at(at, &mut b).unwrap();
            assert_eq!(b, want[at..at + 10], "at {at}");
        }
        assert!(s.read_at(want.len() - 5, &mut [0u8; 10]).is_err(), "past the end");
        s.extend(b"tail").unwrap();
        want.extend_from_slice(b"tail");
        assert!(s.into_vec().unwrap() == want);
        // Without a directory, or under the limit: memory only.
        let mut m = Spill::new(None);
        m.extend(&vec![7; SPILL_AT + 1]).unwrap();
        assert!(m.file.is_none());
        let mut b = [0u8; 2];
        m.read_at(SPILL_AT - 1, &mut b).unwrap();
        assert_eq!(b, [7, 7]);
        assert_eq!(m.into_vec().unwrap().len(), SPILL_AT + 1);
    }

    /// Records of `n` random keys with bytes of random length (some longer
    /// than a run's read-ahead or a whole run), pushed to `runs`; returned
    /// in key order.
    fn push_random(runs: &mut SortedRuns, n: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut x = seed;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut want = Vec::new();
        for i in 0..n {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&next().to_le_bytes());
            let len = match (i, i % 5000) {
                (500, _) => RUN_BYTES + 3,
                (_, 7) => RUN_READ + 5,
                _ => (next() % 40) as usize,
            };
            let rest: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
            runs.push(&key, &rest).unwrap();
            want.push([&key[..], &rest].concat());
        }
        want.sort_by(|a, b| a[..32].cmp(&b[..32]));
        want
    }

    fn merged(m: &mut Merge) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while let Some(r) = m.next_record().unwrap() {
            got.push(r.to_vec());
        }
        got
    }

    #[test]
    fn sorted_runs_merge_back_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        // Many runs in a file (each record ~30 bytes, runs of `RUN_BYTES`), and a
        // record longer than a whole run.
        let mut runs = SortedRuns::new(Some(dir.path().to_path_buf()));
        let want = push_random(&mut runs, 600_000, 1);
        let mut m = runs.finish().unwrap();
        assert!(m.runs.len() > 2, "{} runs", m.runs.len());
        assert!(matches!(m.src, Spilled::File { .. }));
        assert_eq!(m.len(), want.len() as u64);
        assert!(merged(&mut m) == want);
        assert!(m.next_record().unwrap().is_none(), "stays at the end");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the file is unlinked");
        // Few records: one run, in memory; none: nothing.
        let mut small = SortedRuns::new(Some(dir.path().to_path_buf()));
        let want = push_random(&mut small, 300, 2);
        let mut m = small.finish().unwrap();
        assert!(matches!(m.src, Spilled::Mem(_)));
        assert!(merged(&mut m) == want);
        assert!(merged(&mut SortedRuns::new(None).finish().unwrap()).is_empty());
    }

    #[test]
    fn a_truncated_run_is_an_error_not_an_early_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = SortedRuns::new(Some(dir.path().to_path_buf()));
        push_random(&mut runs, 400_000, 3);
        let mut m = runs.finish().unwrap();
        let Spilled::File { file, len, .. } = &m.src else { panic!("spilled") };
        file.set_len(len / 2).unwrap();
        let err = loop {
            match m.next_record() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without an error"),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("spill file"), "{err}");
    }
}
