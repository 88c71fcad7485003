//! Ingest batch buffers. Each batch of the tar walk is one run of the stream,
//! headers and contents in order, in one buffer: the walk reads contents
//! straight into it, the SHA-256 thread hashes it whole, and the parallel
//! pass and the packer read pieces of it in place.
//!
//! Buffers are anonymous maps that go back to a pool when their batch is done
//! with, and the pool hands out the one returned last: its pages are the
//! ones most recently touched, so a long ingest cycles through as little
//! memory as the pipeline needs, and once the pool is warm a batch of the
//! usual size makes no page faults (a buffer that held more than
//! `KEEP_TOUCHED` is unmapped instead). Fresh pages are faulted in a megabyte at a time
//! (`MADV_POPULATE_WRITE`), not one exception per 4 KiB page: half of
//! base.tar's 16,000 page faults were these. (Huge pages were tried:
//! zeroing 2 MiB per first touch cost a small layer more than the faults
//! they save; docs/benchmarks.md.)

use crate::error::{Error, Result};
use memmap2::{MmapMut, MmapOptions};
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Address space of one buffer. Only what a batch writes is ever touched; a
/// batch is sent once it holds `BATCH_BYTES`, so this must exceed that plus
/// the largest region held whole (`chunker::WINDOW`).
pub(crate) const CAPACITY: usize = 16 << 20;
/// A buffer that has held more than this goes back to the system, not to the
/// pool: its pages stay touched, and a pool of such buffers would keep a
/// large region's worth of memory per buffer for the rest of the ingest.
const KEEP_TOUCHED: usize = 4 << 20;

/// Hands out buffers, and takes them back when their batch is dropped.
#[derive(Clone)]
pub(crate) struct Pool {
    spare: Arc<Mutex<Spare>>,
}

struct Spare {
    /// Idle maps and how much of each has ever been written.
    maps: Vec<(MmapMut, usize)>,
    keep: usize,
}

impl Pool {
    /// A pool that keeps up to `keep` idle buffers (more are unmapped).
    pub fn new(keep: usize) -> Pool {
        Pool { spare: Arc::new(Mutex::new(Spare { maps: Vec::new(), keep })) }
    }

    /// An empty buffer: the spare one returned last, or a new map.
    pub fn take(&self) -> Result<Buffer> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).maps.pop();
        let (map, touched) = match spare {
            Some(m) => m,
            None => (
                MmapOptions::new()
                    .len(CAPACITY)
                    .map_anon()
                    .map_err(|e| Error::io("mapping memory for an ingest batch", e))?,
                0,
            ),
        };
        Ok(Buffer { map: Some(map), len: 0, touched, home: self.clone() })
    }
}

/// A run of bytes written front to back; see the module docs.
pub(crate) struct Buffer {
    /// `None` only while being dropped.
    map: Option<MmapMut>,
    len: usize,
    /// How much of the map any use has written.
    touched: usize,
    home: Pool,
}

impl Buffer {
    fn map(&self) -> &MmapMut {
        self.map.as_ref().expect("present until drop")
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes that still fit.
    pub fn room(&self) -> usize {
        CAPACITY - self.len
    }

    /// Append `n` bytes that `fill` writes into the slice it is given; returns
    /// their range. Nothing is appended if `fill` fails. `n` must fit.
    pub fn append_with(&mut self, n: usize, fill: impl FnOnce(&mut [u8]) -> Result<()>) -> Result<Range<usize>> {
        assert!(n <= self.room(), "batch buffer overflow: {n} bytes into {} of room", self.room());
        let r = self.len..self.len + n;
        self.populate(r.end);
        fill(&mut self.map.as_mut().expect("present until drop")[r.clone()])?;
        self.len = r.end;
        Ok(r)
    }

    /// Fault in the pages up to `end` not yet touched, in one call rather
    /// than one fault per page as they are written.
    fn populate(&mut self, end: usize) {
        const STEP: usize = 1 << 20;
        if end <= self.touched {
            return;
        }
        // Whole steps, so that small appends do not each make a call.
        let to = end.div_ceil(STEP).saturating_mul(STEP).min(CAPACITY);
        #[cfg(target_os = "linux")]
        {
            // Advice only: a kernel without it (before 5.14) faults pages in as they are written.
            let from = self.touched / 4096 * 4096;
            let _ = self.map().advise_range(memmap2::Advice::PopulateWrite, from, to - from);
        }
        self.touched = to;
    }

    /// Append a copy of `b` (which must fit); returns its range.
    pub fn append(&mut self, b: &[u8]) -> Range<usize> {
        self.append_with(b.len(), |dst| {
            dst.copy_from_slice(b);
            Ok(())
        })
        .expect("copying cannot fail")
    }

    /// Everything written.
    pub fn bytes(&self) -> &[u8] {
        &self.map()[..self.len]
    }

    /// The bytes of a range `append` returned.
    pub fn get(&self, r: &Range<usize>) -> &[u8] {
        &self.bytes()[r.clone()]
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let touched = self.touched.max(self.len);
        if let Some(m) = self.map.take().filter(|_| touched <= KEEP_TOUCHED) {
            let mut spare = self.home.spare.lock().unwrap_or_else(|p| p.into_inner());
            if spare.maps.len() < spare.keep {
                spare.maps.push((m, touched));
            } // else unmapped here
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_hold_what_was_appended_and_return_to_the_pool() {
        let pool = Pool::new(1);
        let mut b = pool.take().unwrap();
        let r1 = b.append(b"header");
        let r2 = b
            .append_with(4, |d| {
                d.copy_from_slice(b"data");
                Ok(())
            })
            .unwrap();
        assert_eq!((b.get(&r1), b.get(&r2), b.bytes()), (&b"header"[..], &b"data"[..], &b"headerdata"[..]));
        // A failed fill appends nothing.
        assert!(b.append_with(3, |_| Err(Error::invalid("no"))).is_err());
        assert_eq!(b.len(), 10);
        assert_eq!(b.room(), CAPACITY - 10);
        let first = b.bytes().as_ptr();
        let other = pool.take().unwrap();
        drop(b);
        drop(other); // the pool keeps one; this one is unmapped
        let again = pool.take().unwrap();
        assert_eq!(again.len(), 0, "a recycled buffer starts empty");
        assert_eq!(again.map().as_ptr(), first, "the buffer returned first is the one kept");
        assert!(pool.spare.lock().unwrap().maps.is_empty());
        // One that held a large region is not kept.
        drop(again);
        let mut big = pool.take().unwrap();
        big.append_with(KEEP_TOUCHED + 1, |_| Ok(())).unwrap();
        drop(big);
        assert!(pool.spare.lock().unwrap().maps.is_empty());
    }
}
