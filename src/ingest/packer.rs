//! The packer thread of an ingest: appends each prepared batch's new chunks
//! to packs and writes the file recipes and the layer recipe, in stream order.

use super::claims::Claims;
use super::rows::{FileValue, HeldIndex};
use super::{Batch, Done, Piece, Prepared, Written};
use crate::error::Result;
use crate::failpoint;
use crate::ids::{ChunkId, FileId};
use crate::index::PackInfo;
use crate::pack::PackWriter;
use crate::recipe::{FileRecipe, RecipeWriter};
use crate::store::Store;
use crate::tarsplit::ContentKind;
use crossbeam_channel::Receiver;
use std::collections::HashMap;

impl Store {
    /// The packer thread: packs each prepared batch's new chunks and writes
    /// its file recipes and layer recipe entries, in stream order.
    pub(super) fn pack_batches(&self, rx: Receiver<Prepared>, claims: &Claims) -> Result<Written> {
        let tx = self.db.begin_read()?;
        let held = HeldIndex::open(&tx)?;
        let mut st = PackerState {
            w: Written { rows: held.rows(&self.staging)?, ..Written::default() },
            claims,
            held: &held,
            pack: None,
            recipe: RecipeWriter::spilling(Some(self.staging.clone()))?,
            streamed_chunks: Vec::new(),
        };
        let result = (|| -> Result<()> {
            for p in rx {
                self.pack_batch(&mut st, p)?;
                claims.freeze_if_full()?;
            }
            if let Some(pw) = st.pack.take() {
                self.seal(pw, &mut st.w)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                let mut w = st.w;
                w.rows.finish();
                w.recipe = st.recipe.finish_spilled()?;
                Ok(w)
            }
            Err(e) => {
                self.unpublish_packs(&st.w.packs);
                if let Some(pw) = st.pack.take() {
                    self.discard(pw);
                }
                Err(e)
            }
        }
    }

    fn pack_batch(&self, st: &mut PackerState, p: Prepared) -> Result<()> {
        let Prepared { batch, mut done } = p;
        // What this batch claimed, by id: packed at its first sighting in stream order.
        let mut files_here: HashMap<FileId, usize> = HashMap::new();
        let mut chunks_here: HashMap<ChunkId, (usize, usize)> = HashMap::new();
        for (i, d) in done.iter().enumerate() {
            match d {
                Done::New(id, cuts) => {
                    files_here.insert(*id, i);
                    for (k, c) in cuts.iter().enumerate() {
                        if c.stored.is_some() {
                            chunks_here.insert(c.id, (i, k));
                        }
                    }
                }
                Done::Part(c) if c.stored.is_some() => {
                    chunks_here.insert(c.id, (i, 0));
                }
                _ => {}
            }
        }
        for i in 0..batch.pieces.len() {
            let (id, n) = match &done[i] {
                Done::Skip => {
                    if let Piece::Raw(r) = &batch.pieces[i] {
                        st.recipe.raw(batch.buf.get(r))?;
                    }
                    continue;
                }
                Done::Part(c) => {
                    let (cid, len) = (c.id, c.len as u32);
                    self.pack_chunk(st, &batch, &mut done, &mut chunks_here, cid)?;
                    st.streamed_chunks.push((cid, len));
                    continue;
                }
                Done::Indexed(id) => {
                    let id = *id;
                    let n = match st.repeat(&id)? {
                        Some(n) => n,
                        None => st.add_held(id)?,
                    };
                    (id, n)
                }
                Done::Claimed(id) | Done::New(id, _) => {
                    let id = *id;
                    let n = match (st.repeat(&id)?, files_here.get(&id)) {
                        (Some(n), _) => n,
                        // The first sighting of content this batch claimed.
                        (None, Some(&j)) => self.pack_file(st, &batch, &mut done, &mut chunks_here, j)?,
                        (None, None) => unreachable!("claimed content is packed in its claimer's batch"),
                    };
                    (id, n)
                }
                Done::PartsEnd(id, indexed) => {
                    let (id, indexed) = (*id, *indexed);
                    let chunks = std::mem::take(&mut st.streamed_chunks);
                    let n = match st.repeat(&id)? {
                        Some(n) => n,
                        None if indexed => st.add_held(id)?,
                        None => {
                            let size = chunks.iter().map(|c| c.1 as u64).sum();
                            st.add_new(id, &FileRecipe { size, chunks })?
                        }
                    };
                    (id, n)
                }
            };
            let (kind, path, size) = match &batch.pieces[i] {
                Piece::Whole { kind, path, data } => (*kind, path, data.len() as u64),
                Piece::PartsEnd { kind, path, size } => (*kind, path, *size),
                _ => unreachable!("only whole regions and streamed ends are content"),
            };
            match kind {
                ContentKind::File => {
                    st.w.files_count += 1;
                    st.w.file_bytes += size;
                    st.recipe.file(&id, size, path)?;
                }
                ContentKind::Data => st.recipe.data(&id, size)?,
            }
            st.w.chunk_refs += n;
        }
        Ok(())
    }

    /// Pack the chunks of the whole region `batch[j]`, which this batch
    /// claimed, and record its file recipe; returns its chunk count.
    fn pack_file(
        &self,
        st: &mut PackerState,
        batch: &Batch,
        done: &mut [Done],
        chunks_here: &mut HashMap<ChunkId, (usize, usize)>,
        j: usize,
    ) -> Result<u64> {
        let Done::New(id, cuts) = &done[j] else { unreachable!("files_here names claimed regions") };
        let id = *id;
        let list: Vec<(ChunkId, u32)> = cuts.iter().map(|c| (c.id, c.len as u32)).collect();
        for (cid, _) in &list {
            self.pack_chunk(st, batch, done, chunks_here, *cid)?;
        }
        let size = batch.data(&batch.pieces[j]).len() as u64;
        st.add_new(id, &FileRecipe { size, chunks: list })
    }

    /// Pack chunk `id` if this is its first sighting and this batch claimed it.
    fn pack_chunk(
        &self,
        st: &mut PackerState,
        batch: &Batch,
        done: &mut [Done],
        chunks_here: &mut HashMap<ChunkId, (usize, usize)>,
        id: ChunkId,
    ) -> Result<()> {
        let Some((j, k)) = chunks_here.remove(&id) else {
            return Ok(()); // packed already, or held by the index
        };
        let c = match &mut done[j] {
            Done::New(_, cuts) => &mut cuts[k],
            Done::Part(c) => c,
            _ => unreachable!("chunks_here names cuts"),
        };
        let stored = c.stored.take().expect("claimed cuts carry their stored form");
        let raw = &batch.data(&batch.pieces[j])[c.off..c.off + c.len];
        if st.pack.is_none() {
            st.pack = Some(PackWriter::create(&self.staging, self.allocate_pack())?);
        }
        let pw = st.pack.as_mut().expect("created above");
        let loc = pw.append(&id, raw.len() as u32, stored.as_deref().unwrap_or(raw))?;
        st.w.rows.add_chunk(st.claims, id, loc)?;
        st.w.chunk_bytes += raw.len() as u64;
        if pw.len() >= self.opts.pack_size {
            self.seal(st.pack.take().expect("present"), &mut st.w)?;
        }
        Ok(())
    }

    /// Drop an unsealed pack and its staged file.
    fn discard(&self, pw: PackWriter) {
        let staged = self.staging.join(pw.id.file_name());
        drop(pw);
        let _ = std::fs::remove_file(staged);
    }

    fn seal(&self, pw: PackWriter, w: &mut Written) -> Result<()> {
        let id = pw.id;
        let (stored, len, count) = self.publish_staged(pw)?;
        if stored != id {
            // Another writer of a shared backend had taken `id`.
            w.rows.renamed_pack(id, stored);
        }
        w.packs.push((stored, PackInfo { len, chunks: count }));
        failpoint::hit("after-pack-put");
        Ok(())
    }
}

/// The packer thread's working state across batches.
struct PackerState<'a> {
    w: Written,
    claims: &'a Claims,
    held: &'a HeldIndex,
    pack: Option<PackWriter>,
    recipe: RecipeWriter,
    /// The chunks of the region being streamed, so far.
    streamed_chunks: Vec<(ChunkId, u32)>,
}

impl PackerState<'_> {
    /// See [`super::rows::LayerRows::repeat`].
    fn repeat(&mut self, id: &FileId) -> Result<Option<u64>> {
        self.w.rows.repeat(self.claims, id)
    }

    /// The first sighting of content the index holds; its chunk count.
    fn add_held(&mut self, id: FileId) -> Result<u64> {
        let value = self.held.file(&id)?;
        self.w.rows.add_content(id, FileValue::Held(value), self.claims, self.held)
    }

    /// The first sighting of content new to the index; its chunk count.
    fn add_new(&mut self, id: FileId, recipe: &FileRecipe) -> Result<u64> {
        self.w.rows.add_content(id, FileValue::New(recipe), self.claims, self.held)
    }
}
