//! Content-defined chunking (FastCDC v2020) of one file's bytes, streamed.

use crate::error::{Error, Result};
use fastcdc::v2020::{self, FastCDC};
use std::io::Read;

/// FastCDC sizes, fixed for the life of a store (they decide every cut point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChunkerParams {
    /// Smallest chunk, except a file's last.
    pub min: u32,
    /// Target average.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl Default for ChunkerParams {
    /// Chosen by measurement on the public corpus; see docs/benchmarks.md.
    fn default() -> Self {
        ChunkerParams { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 }
    }
}

impl std::fmt::Display for ChunkerParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "min {} / avg {} / max {} bytes", self.min, self.avg, self.max)
    }
}

impl ChunkerParams {
    /// Check the sizes against what FastCDC accepts.
    pub fn validate(&self) -> Result<()> {
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&self.min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&self.avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&self.max)
            && self.min <= self.avg
            && self.avg <= self.max;
        if ok {
            Ok(())
        } else {
            Err(Error::new(crate::ErrorKind::Config, format!("invalid chunker sizes {self}")))
        }
    }

    pub(crate) fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.min.to_le_bytes());
        b[4..8].copy_from_slice(&self.avg.to_le_bytes());
        b[8..].copy_from_slice(&self.max.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != 12 {
            return Err(Error::corrupt("stored chunker parameters are malformed"));
        }
        let at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let p = ChunkerParams { min: at(0), avg: at(4), max: at(8) };
        p.validate()?;
        Ok(p)
    }
}

/// Files up to this size are read whole; larger ones stream through a window.
pub(crate) const WINDOW: usize = 8 << 20;

/// Splits file contents into chunks; reuses one window buffer across files.
pub(crate) struct Chunker {
    p: ChunkerParams,
    window: Vec<u8>,
}

impl Chunker {
    pub fn new(p: ChunkerParams) -> Self {
        Chunker { p, window: Vec::new() }
    }

    /// Cut points of a whole file held in memory, as `(offset, length)`; none
    /// for an empty file, one for a file of at most `min` bytes.
    pub fn cuts(&self, data: &[u8]) -> Vec<(usize, usize)> {
        let ChunkerParams { min, avg, max } = self.p;
        if data.len() <= min as usize {
            return if data.is_empty() { Vec::new() } else { vec![(0, data.len())] };
        }
        FastCDC::new(data, min, avg, max).map(|c| (c.offset, c.length)).collect()
    }

    /// Read exactly `size` bytes from `r` and hand each chunk, in order, to `emit`.
    /// Cut points equal those of FastCDC over the whole file at once: a cut is
    /// only sought while at least `max` bytes (or the file's end) are in view.
    pub fn chunk<R: Read>(&mut self, r: R, size: u64, mut emit: impl FnMut(Vec<u8>) -> Result<()>) -> Result<()> {
        self.chunk_slices(r, size, |b| emit(b.to_vec()))
    }

    /// As [`Chunker::chunk`], lending each chunk instead of giving it.
    pub fn chunk_slices<R: Read>(
        &mut self,
        mut r: R,
        size: u64,
        mut emit: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let ChunkerParams { min, avg, max } = self.p;
        if size <= WINDOW as u64 {
            let mut data = vec![0u8; size as usize];
            r.read_exact(&mut data).map_err(|e| crate::error::from_io(e, "reading file content"))?;
            for (off, len) in self.cuts(&data) {
                emit(&data[off..off + len])?;
            }
            return Ok(());
        }
        self.window.resize(WINDOW, 0);
        let (mut start, mut end) = (0usize, 0usize);
        let mut left = size;
        loop {
            // Refill: slide the unconsumed bytes to the front, then read.
            if left > 0 && end - start < max as usize {
                self.window.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while left > 0 && end < WINDOW {
                    let want = (WINDOW - end).min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = r
                        .read(&mut self.window[end..end + want])
                        .map_err(|e| crate::error::from_io(e, "reading file content"))?;
                    if n == 0 {
                        return Err(Error::invalid("file content ended early"));
                    }
                    end += n;
                    left -= n as u64;
                }
            }
            if start == end {
                return Ok(());
            }
            let view = &self.window[start..end];
            let cdc = FastCDC::new(view, min, avg, max);
            let (_, cut) = cdc.cut(0, view.len());
            emit(&view[..cut])?;
            start += cut;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::noise;

    fn cuts(p: ChunkerParams, data: &[u8]) -> Vec<usize> {
        let mut c = Chunker::new(p);
        let mut out = Vec::new();
        c.chunk(data, data.len() as u64, |v| {
            out.push(v.len());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn streaming_matches_whole_file_cuts() {
        let p = ChunkerParams::default();
        let data = noise(WINDOW * 2 + 12345, 7);
        let whole: Vec<usize> = FastCDC::new(&data, p.min, p.avg, p.max).map(|c| c.length).collect();
        assert_eq!(cuts(p, &data), whole);
        assert_eq!(cuts(p, &data).iter().sum::<usize>(), data.len());
    }

    #[test]
    fn small_and_empty_files() {
        let p = ChunkerParams::default();
        assert_eq!(cuts(p, b""), Vec::<usize>::new());
        assert_eq!(cuts(p, b"abc"), vec![3]);
    }

    #[test]
    fn params_round_trip_and_validate() {
        let p = ChunkerParams::default();
        assert_eq!(ChunkerParams::decode(&p.encode()).unwrap(), p);
        assert!(ChunkerParams { min: 10, avg: 64, max: 100 }.validate().is_err());
    }
}
