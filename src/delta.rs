//! Deltas: a changed file encoded against a similar file the client holds, as
//! one zstd frame with the base as a referenced prefix and long-distance
//! matching (the mechanism behind `zstd --patch-from`).

use crate::error::{Error, Result};
use crate::ids::FileId;
use std::collections::HashMap;
use std::io::{Read, Write};

/// Files (base or target) larger than this are never delta-encoded: the
/// decoder's window must cover base plus target.
pub(crate) const DELTA_MAX: u64 = 48 << 20;
/// The decoder's window limit (128 MiB), also what an encoder may use.
pub(crate) const WINDOW_LOG_MAX: u32 = 27;
/// zstd level for deltas; measured against pack time in docs/benchmarks.md.
const LEVEL: i32 = 12;

fn window_log(base: usize, target: usize) -> u32 {
    let need = (base + target).max(1 << 20).next_power_of_two().trailing_zeros();
    need.clamp(20, WINDOW_LOG_MAX)
}

/// Encode `target` as a delta against `base`.
pub(crate) fn encode(base: &[u8], target: &[u8]) -> Result<Vec<u8>> {
    let err = |e| Error::io("delta encoder", e);
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), LEVEL, base).map_err(err)?;
    enc.long_distance_matching(true).map_err(err)?;
    enc.window_log(window_log(base.len(), target.len())).map_err(err)?;
    enc.set_pledged_src_size(Some(target.len() as u64)).map_err(err)?;
    enc.write_all(target).map_err(err)?;
    enc.finish().map_err(err)
}

/// Decode a delta against `base`; the result must be exactly `size` bytes.
pub(crate) fn decode(base: &[u8], delta: &[u8], size: u64) -> Result<Vec<u8>> {
    let bad = |what: String| Error::invalid(format!("dedup tarball: delta {what}"));
    if size > DELTA_MAX {
        return Err(bad(format!("declares {size} bytes, over the {DELTA_MAX}-byte limit")));
    }
    let mut dec =
        zstd::stream::read::Decoder::with_ref_prefix(delta, base).map_err(|e| Error::io("delta decoder", e))?;
    dec.window_log_max(WINDOW_LOG_MAX).map_err(|e| Error::io("delta decoder", e))?;
    let mut out = Vec::with_capacity(size as usize);
    dec.take(size + 1).read_to_end(&mut out).map_err(|e| bad(format!("does not decode: {e}")))?;
    if out.len() as u64 != size {
        return Err(bad(format!("decodes to {} bytes, declared {size}", out.len())));
    }
    Ok(out)
}

/// What a client holds, indexed for base selection: by full path and by
/// file name. Built once per diff.
#[derive(Default)]
pub(crate) struct BaseIndex {
    by_path: HashMap<Vec<u8>, Vec<(FileId, u64)>>,
    by_name: HashMap<Vec<u8>, Vec<(FileId, u64)>>,
}

fn file_name(path: &[u8]) -> &[u8] {
    let p = path.strip_suffix(b"/").unwrap_or(path);
    p.rsplit(|&c| c == b'/').next().unwrap_or(p)
}

impl BaseIndex {
    pub fn add(&mut self, path: &[u8], id: FileId, size: u64) {
        if size == 0 || size > DELTA_MAX {
            return;
        }
        self.by_path.entry(path.to_vec()).or_default().push((id, size));
        self.by_name.entry(file_name(path).to_vec()).or_default().push((id, size));
    }

    /// The base for a file the client lacks: the same path first, else the
    /// same file name with a similar size (within 2x), closest in size.
    pub fn pick(&self, path: &[u8], size: u64) -> Option<(FileId, u64)> {
        if size == 0 || size > DELTA_MAX {
            return None;
        }
        let closest = |v: &Vec<(FileId, u64)>, similar: bool| {
            v.iter()
                .filter(|(_, s)| !similar || (*s <= size * 2 && size <= *s * 2))
                .min_by_key(|(id, s)| (s.abs_diff(size), *id))
                .copied()
        };
        self.by_path
            .get(path)
            .and_then(|v| closest(v, false))
            .or_else(|| self.by_name.get(file_name(path)).and_then(|v| closest(v, true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_round_trip_and_is_small() {
        let base: Vec<u8> = (0..200_000u32).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect();
        let mut target = base.clone();
        target[1000..1010].copy_from_slice(b"0123456789");
        target.extend_from_slice(b"tail");
        let d = encode(&base, &target).unwrap();
        assert!(d.len() < 1000, "delta is {} bytes", d.len());
        assert_eq!(decode(&base, &d, target.len() as u64).unwrap(), target);
        assert!(decode(&base, &d, target.len() as u64 - 1).is_err());
        assert!(decode(&base[1..], &d, target.len() as u64).map(|o| o != target).unwrap_or(true));
    }

    #[test]
    fn picks_same_path_then_similar_name() {
        let mut ix = BaseIndex::default();
        let (a, b, c) = (FileId::of(b"a"), FileId::of(b"b"), FileId::of(b"c"));
        ix.add(b"usr/lib/x/index.js", a, 1000);
        ix.add(b"usr/lib/y/main.js", b, 5000);
        ix.add(b"usr/lib/z/main.js", c, 900);
        assert_eq!(ix.pick(b"usr/lib/x/index.js", 50_000), Some((a, 1000)));
        assert_eq!(ix.pick(b"other/main.js", 1000), Some((c, 900)));
        assert_eq!(ix.pick(b"other/main.js", 100_000), None);
        assert_eq!(ix.pick(b"nothing.txt", 10), None);
    }
}
