//! Per-layer number map: each content item's dense file number and chunk
//! numbers, in recipe order. A cache of what FILES and CHUNKS say, kept so a
//! diff against a client's possession bitmaps needs no per-file lookups.

use crate::error::{Error, Result};
use roaring::RoaringBitmap;

const VERSION: u8 = 1;

/// One content item of a layer: its file number and its chunks' numbers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct MapEntry {
    pub file: u32,
    pub chunks: Vec<u32>,
}

/// The number map of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct LayerMap {
    pub entries: Vec<MapEntry>,
}

/// The encoding's head for an empty map: `version u8 | count u32`. An
/// encoder that appends entries as it goes starts from it and fills in the
/// count at the end.
pub(crate) fn head() -> [u8; 5] {
    [VERSION, 0, 0, 0, 0]
}

impl LayerMap {
    /// `version u8 | count u32 | (file u32 | n u32 | chunk u32 * n) * count`
    pub fn encode(&self) -> Vec<u8> {
        let n: usize = self.entries.iter().map(|e| 8 + 4 * e.chunks.len()).sum();
        let mut b = Vec::with_capacity(5 + n);
        b.extend_from_slice(&head()[..1]);
        b.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            b.extend_from_slice(&e.file.to_le_bytes());
            b.extend_from_slice(&(e.chunks.len() as u32).to_le_bytes());
            for c in &e.chunks {
                b.extend_from_slice(&c.to_le_bytes());
            }
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = || Error::corrupt("layer number map is malformed");
        if b.len() < 5 || b[0] != VERSION {
            return Err(bad());
        }
        let mut words = b[5..].chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")));
        if (b.len() - 5) % 4 != 0 {
            return Err(bad());
        }
        let count = u32::from_le_bytes(b[1..5].try_into().expect("4 bytes")) as usize;
        let mut entries = Vec::with_capacity(count.min(b.len() / 8));
        for _ in 0..count {
            let file = words.next().ok_or_else(bad)?;
            let n = words.next().ok_or_else(bad)? as usize;
            if n > words.len() {
                return Err(bad());
            }
            entries.push(MapEntry { file, chunks: words.by_ref().take(n).collect() });
        }
        if words.next().is_some() {
            return Err(bad());
        }
        Ok(LayerMap { entries })
    }

    /// The entries of encoded map `b` one at a time: what [`LayerMap::decode`]
    /// makes of it, without holding them all (verify of a million-file layer).
    pub fn entries(b: &[u8]) -> Result<impl Iterator<Item = Result<MapEntry>> + '_> {
        let bad = || Error::corrupt("layer number map is malformed");
        if b.len() < 5 || b[0] != VERSION || (b.len() - 5) % 4 != 0 {
            return Err(bad());
        }
        let mut count = u32::from_le_bytes(b[1..5].try_into().expect("4 bytes"));
        let mut words = b[5..].chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")));
        let mut failed = false;
        Ok(std::iter::from_fn(move || {
            if failed {
                return None;
            }
            let entry = if count == 0 {
                // Past the last entry: only the end may follow.
                words.next()?;
                Err(bad())
            } else {
                count -= 1;
                match (words.next(), words.next()) {
                    (Some(file), Some(n)) if n as usize <= words.len() => {
                        Ok(MapEntry { file, chunks: words.by_ref().take(n as usize).collect() })
                    }
                    _ => Err(bad()),
                }
            };
            failed = entry.is_err();
            Some(entry)
        }))
    }

    /// The layer's distinct file numbers.
    pub fn file_set(&self) -> RoaringBitmap {
        self.entries.iter().map(|e| e.file).collect()
    }

    /// The layer's distinct chunk numbers.
    pub fn chunk_set(&self) -> RoaringBitmap {
        self.entries.iter().flat_map(|e| e.chunks.iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_damage() {
        let m =
            LayerMap { entries: vec![MapEntry { file: 3, chunks: vec![1, 2] }, MapEntry { file: 4, chunks: vec![] }] };
        let b = m.encode();
        assert_eq!(LayerMap::decode(&b).unwrap(), m);
        assert!(LayerMap::decode(&b[..b.len() - 4]).is_err());
        assert_eq!(m.chunk_set().len(), 2);
        assert_eq!(m.file_set().len(), 2);
    }
}
