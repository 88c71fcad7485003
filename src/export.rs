//! Export: stream a layer's original tar from its recipe, checking its
//! SHA-256 against the diff_id as it goes.

use crate::error::{Error, Result};
use crate::ids::{ChunkId, FileId, LayerId};
use crate::index::{self, CHUNKS, FILES, RECIPES};
use crate::pack::ChunkLoc;
use crate::recipe::{FileRecipe, RecipeItem, RecipeReader};
use crate::store::Store;
use redb::ReadOnlyTable;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::{self, Read, Write};

/// Reads a layer's original uncompressed tar, byte for byte. The final read
/// fails if the bytes do not hash to the layer's diff_id.
pub struct LayerReader<'s> {
    store: &'s Store,
    id: LayerId,
    items: RecipeReader<'static>,
    files: ReadOnlyTable<&'static [u8], &'static [u8]>,
    chunks: ReadOnlyTable<&'static [u8], &'static [u8]>,
    queue: VecDeque<(ChunkId, u32)>,
    buf: Vec<u8>,
    pos: usize,
    sha: Sha256,
    done: bool,
}

impl Store {
    /// Open a layer for reading.
    pub fn open_layer(&self, id: &LayerId) -> Result<LayerReader<'_>> {
        let tx = self.db.begin_read()?;
        // Streamed part by part: a layer of many files has a recipe of tens of MB.
        let recipe = index::PartedReader::open(tx.open_table(RECIPES)?, &id.as_bytes()[..])?
            .ok_or_else(|| Error::not_found(format!("layer {id} is not in the store")))?;
        Ok(LayerReader {
            store: self,
            id: *id,
            items: RecipeReader::stream(recipe).map_err(|e| e.context(format_args!("layer {id}")))?,
            files: tx.open_table(FILES)?,
            chunks: tx.open_table(CHUNKS)?,
            queue: VecDeque::new(),
            buf: Vec::new(),
            pos: 0,
            sha: Sha256::new(),
            done: false,
        })
    }

    /// Write a layer's original tar to `out`; returns its length.
    pub fn export(&self, id: &LayerId, mut out: impl Write) -> Result<u64> {
        let mut r = self.open_layer(id)?;
        io::copy(&mut r, &mut out).map_err(|e| crate::error::from_io(e, format!("exporting layer {id}")))
    }

    /// A stored file's whole content (for deltas: bounded by their size limit).
    pub(crate) fn read_file(&self, id: &FileId) -> Result<Vec<u8>> {
        let r = self.file_recipe(id)?.ok_or_else(|| Error::not_found(format!("file {id} is not in the store")))?;
        let tx = self.db.begin_read()?;
        let chunks = tx.open_table(CHUNKS)?;
        let mut out = Vec::with_capacity(r.size as usize);
        for (c, _) in &r.chunks {
            let v = chunks.get(&c.as_bytes()[..])?.ok_or_else(|| Error::corrupt(format!("chunk {c} is missing")))?;
            out.extend_from_slice(&self.read_chunk(&ChunkLoc::decode(v.value())?)?);
        }
        if out.len() as u64 != r.size {
            return Err(Error::corrupt(format!("file {id} rebuilt to {} bytes, expected {}", out.len(), r.size)));
        }
        Ok(out)
    }

    /// A stored file's recipe.
    pub fn file_recipe(&self, id: &FileId) -> Result<Option<FileRecipe>> {
        let tx = self.db.begin_read()?;
        let v = tx.open_table(FILES)?.get(&id.as_bytes()[..])?;
        v.map(|v| crate::index::decode_file(v.value()).map(|(_, r)| r)).transpose()
    }
}

impl LayerReader<'_> {
    /// The layer being read.
    pub fn id(&self) -> &LayerId {
        &self.id
    }

    /// Load the next piece of output into `buf`; false at the end.
    fn refill(&mut self) -> Result<bool> {
        loop {
            if let Some((cid, len)) = self.queue.pop_front() {
                let loc = self
                    .chunks
                    .get(&cid.as_bytes()[..])?
                    .map(|v| ChunkLoc::decode(v.value()))
                    .transpose()?
                    .ok_or_else(|| Error::corrupt(format!("layer {}: chunk {cid} is missing", self.id)))?;
                if loc.raw_len != len {
                    return Err(Error::corrupt(format!("chunk {cid}: index says {} bytes, recipe {len}", loc.raw_len)));
                }
                self.buf = self.store.read_chunk(&loc)?;
                self.pos = 0;
                return Ok(true);
            }
            match self.items.next_item().map_err(|e| e.context(format_args!("layer {}", self.id)))? {
                None => return Ok(false),
                Some(RecipeItem::Raw(b)) => {
                    self.buf = b;
                    self.pos = 0;
                    return Ok(true);
                }
                Some(RecipeItem::File { id, size, .. } | RecipeItem::Data { id, size }) => {
                    if size == 0 {
                        continue;
                    }
                    let r = self
                        .files
                        .get(&id.as_bytes()[..])?
                        .map(|v| crate::index::decode_file(v.value()).map(|(_, r)| r))
                        .transpose()?
                        .ok_or_else(|| Error::corrupt(format!("layer {}: file {id} is missing", self.id)))?;
                    if r.size != size || !r.consistent() {
                        return Err(Error::corrupt(format!("file {id}: recipe does not add up to {size} bytes")));
                    }
                    self.queue.extend(r.chunks);
                }
            }
        }
    }
}

impl Read for LayerReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            if !self.refill()? {
                self.done = true;
                let got: [u8; 32] = std::mem::take(&mut self.sha).finalize().into();
                if got != *self.id.as_bytes() {
                    return Err(Error::corrupt(format!(
                        "layer {} rebuilt to sha256:{}; the store is damaged",
                        self.id,
                        hex::encode(got)
                    ))
                    .into());
                }
                return Ok(0);
            }
            self.sha.update(&self.buf);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
