//! What a bundle commit checks (see `bundle_commit`): that the layer
//! recipe describes the tar it rebuilds as this store's own tar walk would
//! ([`RecipeStream`]), and that each content item's bytes match its id and
//! are cut where this store's FastCDC parameters cut them ([`check_item`]).

use crate::error::{Error, Result};
use crate::ids::{ChunkId, FileId};
use crate::recipe::{FileRecipe, RecipeItem, RecipeReader, MAX_RAW};
use crate::tarsplit::ContentKind;
use crate::ChunkerParams;
use fastcdc::v2020::FastCDC;
use rayon::prelude::*;
use std::io::{self, Read};

pub(crate) fn forged(what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("recipe bundle: {what}"))
}

/// Check a content item's bytes against its id and its chunk list against
/// the cuts FastCDC makes with `params` (each cut from the one before, as
/// FastCDC over the whole item makes them, checked in parallel).
pub(crate) fn check_item(params: ChunkerParams, id: &FileId, r: &FileRecipe, data: &[u8]) -> Result<()> {
    if data.len() as u64 != r.size {
        return Err(forged(format!("file {id}: rebuilt {} bytes, its recipe says {}", data.len(), r.size)));
    }
    let ok_id = match &r.chunks[..] {
        // A one-chunk item's id is its chunk's id: hashed when the chunk was stored.
        [(c, _)] => *c == id.as_chunk(),
        _ if data.len() >= 1 << 20 => {
            FileId::from_bytes(*blake3::Hasher::new().update_rayon(data).finalize().as_bytes()) == *id
        }
        _ => FileId::of(data) == *id,
    };
    if !ok_id {
        return Err(Error::corrupt(format!("file {id}: the bytes rebuilt do not match its id")));
    }
    if !cuts_match(params, data, &r.chunks) {
        return Err(forged(format!("file {id}: its chunks are not cut where this store cuts")));
    }
    Ok(())
}

/// Whether `chunks` (in order, lengths adding up to `data.len()`) are the
/// chunks FastCDC with `params` cuts `data` into.
fn cuts_match(params: ChunkerParams, data: &[u8], chunks: &[(ChunkId, u32)]) -> bool {
    if data.is_empty() || chunks.is_empty() {
        return data.is_empty() && chunks.is_empty();
    }
    let ChunkerParams { min, avg, max } = params;
    let cdc = FastCDC::new(data, min, avg, max);
    let mut starts = Vec::with_capacity(chunks.len());
    let mut at = 0usize;
    for (_, len) in chunks {
        starts.push((at, *len as usize));
        at += *len as usize;
    }
    if at != data.len() {
        return false;
    }
    let check = |&(start, len): &(usize, usize)| len > 0 && cdc.cut(start, data.len() - start).1 == start + len;
    if chunks.len() < 8 {
        starts.iter().all(check)
    } else {
        starts.par_iter().all(check)
    }
}

/// The rebuilt layer as its tar walk sees it: the recipe's raw bytes, and a
/// content region wherever the recipe puts a content item, passed over (see
/// [`TarSplitter::skip_content`]) rather than read. A walk that reads into a
/// content item, or finds a content region where the recipe has raw bytes,
/// means the recipe does not describe the tar it rebuilds.
pub(crate) struct RecipeStream {
    items: RecipeReader<'static>,
    raw: Vec<u8>,
    pos: usize,
    /// Length of the last raw item since the last content item: an ingest
    /// splits raw bytes into items of [`MAX_RAW`] bytes and one shorter.
    gap_last: Option<usize>,
    /// The content item met after the raw bytes read so far.
    content: Option<RecipeItem>,
    ended: bool,
}

impl RecipeStream {
    pub fn new(recipe: Vec<u8>) -> Result<Self> {
        let items = RecipeReader::new(recipe)?;
        Ok(RecipeStream { items, raw: Vec::new(), pos: 0, gap_last: None, content: None, ended: false })
    }

    /// Past the raw bytes read, to the next item.
    fn advance(&mut self) -> Result<()> {
        match self.items.next_item().map_err(forged)? {
            None => self.ended = true,
            Some(RecipeItem::Raw(b)) => {
                if b.is_empty() || self.gap_last.is_some_and(|l| l != MAX_RAW as usize) {
                    return Err(forged("its raw bytes are not split as this store's recipes split them"));
                }
                self.gap_last = Some(b.len());
                self.raw = b;
                self.pos = 0;
            }
            Some(item) => self.content = Some(item),
        }
        Ok(())
    }

    /// The walk found a content region here: it must be the recipe's next
    /// item, of the same kind, size and path. Returns its id.
    pub fn skip(&mut self, kind: ContentKind, size: u64, path: &[u8]) -> Result<FileId> {
        if self.pos == self.raw.len() && self.content.is_none() && !self.ended {
            self.advance()?;
        }
        if self.pos < self.raw.len() {
            return Err(forged("the tar has a content region where its recipe has raw bytes"));
        }
        let item = self.content.take().ok_or_else(|| forged("the tar has a content region after its recipe ends"))?;
        self.gap_last = None;
        match item {
            RecipeItem::File { id, size: s, path: p } if kind == ContentKind::File && s == size && p == path => Ok(id),
            RecipeItem::Data { id, size: s } if kind == ContentKind::Data && s == size => Ok(id),
            _ => Err(forged("a content item of its recipe is not the one the tar walk finds")),
        }
    }

    /// After the walk: the recipe must have ended with it.
    pub fn finish(&mut self) -> Result<()> {
        if self.pos < self.raw.len() || self.content.is_some() || !self.ended {
            return Err(forged("its recipe goes on after the tar ends"));
        }
        if !self.items.at_end().map_err(forged)? {
            return Err(forged("its recipe has bytes after its end marker"));
        }
        Ok(())
    }
}

impl Read for RecipeStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.raw.len() {
                let n = out.len().min(self.raw.len() - self.pos);
                out[..n].copy_from_slice(&self.raw[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.content.is_some() {
                return Err(forged("the tar walk reads raw bytes where its recipe puts content").into());
            }
            if self.ended {
                return Ok(0);
            }
            self.advance()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::noise;

    #[test]
    fn cuts_match_fastcdc_exactly() {
        let p = ChunkerParams::default();
        let c = crate::chunker::Chunker::new(p);
        for (n, seed) in [(0, 1), (1, 2), (p.min as usize, 3), (p.min as usize + 1, 4), (700_000, 5), (2_000_000, 6)] {
            let data = noise(n, seed);
            let zeros = vec![0u8; n];
            for d in [&data, &zeros] {
                let chunks: Vec<(ChunkId, u32)> =
                    c.cuts(d).into_iter().map(|(o, l)| (ChunkId::of(&d[o..o + l]), l as u32)).collect();
                assert!(cuts_match(p, d, &chunks), "n={n}");
                if chunks.len() >= 2 {
                    let mut other = chunks.clone();
                    other[0].1 -= 1;
                    other[1].1 += 1;
                    assert!(!cuts_match(p, d, &other), "n={n}: a moved cut");
                    let mut merged = chunks.clone();
                    let second = merged.remove(1).1;
                    merged[0].1 += second;
                    assert!(!cuts_match(p, d, &merged), "n={n}: merged chunks");
                }
            }
        }
    }
}
