//! Apply a dedup tarball on an edge store. The tarball is untrusted: it is
//! parsed with the hardened tar walk, every reference is resolved in the
//! edge's own store, carried chunks are checked against their ids before use,
//! each rebuilt file against its FileId, and the rebuilt stream goes through
//! the ordinary ingest, which records it only if its diff_id is the one the
//! tarball names. Names inside the original tar stay data: nothing is ever
//! written to the filesystem but the store.

use crate::chunker::ChunkerParams;
use crate::dedup::{self, MAGIC_LINE, MAGIC_NAME, MAX_TABLE_ROWS, TABLE_ROW, VERSION};
use crate::delta::DELTA_MAX;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ChunkId, FileId, LayerId};
use crate::index::{self, CHUNKS, FILES};
use crate::ingest::{IngestOptions, IngestSummary};
use crate::pack::{ChunkLoc, MAX_CHUNK};
use crate::store::Store;
use crate::tarsplit::{ContentKind, TarSplitter};
use redb::ReadOnlyTable;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

/// Largest magic record a dedup tarball may carry.
const MAX_MAGIC: u64 = 64 * 1024;
/// Largest raw entry: the writer emits one per recipe raw item, which may be
/// this long (a run of many header-only entries, or the tail).
const MAX_RAW: u64 = crate::recipe::MAX_RAW as u64;
/// Most header bytes before one entry's content: a PAX record set and a
/// header or two (header-only entries are refused, but only once read).
const MAX_HEADERS: u64 = crate::tarsplit::MAX_EXTENSION + 8 * 512;

/// Something a dedup tarball referenced that this store does not hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MissingRef {
    /// `file` or `chunk`.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
}

/// How an apply ended.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum ApplyOutcome {
    /// The layer was rebuilt, verified and recorded.
    Applied(IngestSummary),
    /// References this store cannot resolve; nothing was recorded.
    Missing {
        /// The layer the tarball rebuilds.
        layer: LayerId,
        /// Everything missing, each once.
        missing: Vec<MissingRef>,
    },
}

/// What the magic record says.
#[derive(Debug)]
struct Magic {
    layer: LayerId,
    tar_size: u64,
    chunker: ChunkerParams,
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{DTAR}: {msg}"))
}

const DTAR: &str = "dedup tarball";

/// Say that an error from reading the tarball's own tar structure is about
/// the tarball (its offsets are offsets in the decompressed tarball).
fn in_dtar(e: Error) -> Error {
    if e.message().starts_with(DTAR) {
        e
    } else {
        e.context(DTAR)
    }
}

fn parse_magic(text: &[u8]) -> Result<Magic> {
    let text = std::str::from_utf8(text).map_err(|_| bad("magic record is not text"))?;
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let version =
        first.strip_prefix(MAGIC_LINE).and_then(|v| v.strip_prefix(' ')).ok_or_else(|| bad("bad magic record"))?;
    if version != VERSION.to_string() {
        return Err(bad(format!("unsupported version {version:?} (this build reads {VERSION})")));
    }
    let (mut layer, mut tar_size, mut chunker) = (None, None, None);
    for l in lines {
        let (k, v) = l.split_once(' ').unwrap_or((l, ""));
        match k {
            "layer" => layer = Some(LayerId::parse(v)?),
            "tar-size" => tar_size = Some(v.parse().map_err(|_| bad("bad tar-size"))?),
            "chunker" => {
                let n: Vec<u32> =
                    v.split(' ').map(|x| x.parse().map_err(|_| bad("bad chunker"))).collect::<Result<_>>()?;
                if let [min, avg, max] = n[..] {
                    chunker = Some(ChunkerParams { min, avg, max });
                } else {
                    return Err(bad("bad chunker"));
                }
            }
            _ => {} // client and future keys: informational
        }
    }
    Ok(Magic {
        layer: layer.ok_or_else(|| bad("magic record names no layer"))?,
        tar_size: tar_size.ok_or_else(|| bad("magic record gives no tar-size"))?,
        chunker: chunker.ok_or_else(|| bad("magic record gives no chunker"))?,
    })
}

/// One parsed entry name.
enum Kind {
    Magic,
    Raw,
    Ref { id: FileId, size: u64 },
    File { id: FileId },
    Chunks { id: FileId, size: u64 },
    Delta { id: FileId, size: u64, base: FileId, base_size: u64 },
}

fn parse_name(name: &[u8]) -> Result<Kind> {
    let name = std::str::from_utf8(name).map_err(|_| bad("entry name is not UTF-8"))?;
    let parts: Vec<&str> = name.split('/').collect();
    let size = |s: &str| {
        let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| s.parse::<u64>().ok()).flatten().ok_or_else(|| bad(format!("bad size in entry {name:?}")))
    };
    Ok(match parts[..] {
        [MAGIC_NAME] => Kind::Magic,
        ["raw"] => Kind::Raw,
        ["ref", id, s] => Kind::Ref { id: dedup::parse_file_id(id)?, size: size(s)? },
        ["file", id] => Kind::File { id: dedup::parse_file_id(id)? },
        ["chunks", id, s] => Kind::Chunks { id: dedup::parse_file_id(id)?, size: size(s)? },
        ["delta", id, s, base, bs] => Kind::Delta {
            id: dedup::parse_file_id(id)?,
            size: size(s)?,
            base: dedup::parse_file_id(base)?,
            base_size: size(bs)?,
        },
        _ => return Err(bad(format!("unknown entry {name:?}"))),
    })
}

/// Where the bytes of the current rebuilt file come from.
enum Cur {
    /// Stream `left` bytes of the tarball's current entry, hashing them.
    Stream { id: FileId, left: u64, hasher: blake3::Hasher },
    /// Chunks: (id, len, carried in the tarball?).
    Chunks { id: FileId, rows: VecDeque<(ChunkId, u32, bool)>, hasher: blake3::Hasher },
    /// A file from this store.
    Local { rows: VecDeque<(ChunkId, u32)> },
}

/// Rebuilds the original layer tar from a dedup tarball; a `Read`.
struct Rebuild<'s> {
    store: &'s Store,
    split: TarSplitter<Box<dyn Read + 's>>,
    entries_seen: u64,
    files: ReadOnlyTable<&'static [u8], &'static [u8]>,
    chunks: ReadOnlyTable<&'static [u8], &'static [u8]>,
    cur: Option<Cur>,
    buf: Vec<u8>,
    pos: usize,
    produced: u64,
    tar_size: u64,
    missing: Arc<Mutex<Missing>>,
}

/// What a tarball references that the store lacks, each once: a set
/// beside the list, since a tarball for a store that holds nothing
/// references every file (a 700,000-file layer took 700 s to list).
#[derive(Default)]
struct Missing {
    list: Vec<MissingRef>,
    seen: std::collections::HashSet<String>,
}

impl<'s> Rebuild<'s> {
    /// Next entry of the tarball: its kind and content size.
    fn next_entry(&mut self) -> Result<Option<(Kind, u64)>> {
        let mut ours = Vec::new(); // our own headers: not part of the layer
        let c = self.split.next(&mut ours).map_err(in_dtar)?;
        let Some(c) = c else {
            if self.split.entries() != self.entries_seen {
                return Err(bad("unexpected non-file entry"));
            }
            return Ok(None);
        };
        self.entries_seen += 1;
        if c.kind != ContentKind::File || self.split.entries() != self.entries_seen {
            return Err(bad(format!(
                "unexpected entry that is not a regular file, at or before the content at offset {}",
                c.offset
            )));
        }
        Ok(Some((parse_name(&c.path)?, c.size)))
    }

    fn read_content(&mut self, n: u64, limit: u64, what: &str) -> Result<Vec<u8>> {
        if n > limit {
            return Err(bad(format!("{what} of {n} bytes is over the {limit}-byte limit")));
        }
        let mut v = vec![0u8; n as usize];
        self.split.content().read_exact(&mut v).map_err(|e| crate::error::from_io(e, "reading dedup tarball"))?;
        Ok(v)
    }

    fn local_file(&self, id: &FileId) -> Result<Option<crate::recipe::FileRecipe>> {
        let v = self.files.get(&id.as_bytes()[..])?;
        v.map(|v| index::decode_file(v.value()).map(|(_, r)| r)).transpose()
    }

    fn local_chunk(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        let v = self.chunks.get(&id.as_bytes()[..])?;
        v.map(|v| ChunkLoc::decode(v.value())).transpose()
    }

    fn note_missing(&self, kind: &'static str, id: String, size: u64) {
        let mut m = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        if m.seen.insert(id.clone()) {
            m.list.push(MissingRef { kind, id, size });
        }
    }

    /// Read a chunk table entry; `size` is the file size it must add up to.
    fn read_table(&mut self, size: u64, content: u64) -> Result<VecDeque<(ChunkId, u32, bool)>> {
        if content < 4 {
            return Err(bad("chunk table is longer than its entry"));
        }
        let head = self.read_content(4, 4, "chunk table")?;
        let n = u32::from_le_bytes(head.try_into().expect("4 bytes")) as u64;
        if n > MAX_TABLE_ROWS {
            return Err(bad(format!("chunk table of {n} rows is over the {MAX_TABLE_ROWS}-row limit")));
        }
        if 4 + n * TABLE_ROW > content {
            return Err(bad("chunk table is longer than its entry"));
        }
        let raw = self.read_content(n * TABLE_ROW, content, "chunk table")?;
        let (mut total, mut carried) = (0u64, 0u64);
        let mut rows = VecDeque::with_capacity(n as usize);
        for r in raw.chunks_exact(TABLE_ROW as usize) {
            let id = ChunkId::from_bytes(r[..32].try_into().expect("32 bytes"));
            let len = u32::from_le_bytes(r[32..36].try_into().expect("4 bytes"));
            let carry = match r[36] {
                0 => false,
                1 => true,
                _ => return Err(bad("bad carried flag in chunk table")),
            };
            if len == 0 || len > MAX_CHUNK {
                return Err(bad(format!("chunk length {len} out of range")));
            }
            total += len as u64;
            if carry {
                carried += len as u64;
            }
            rows.push_back((id, len, carry));
        }
        if total != size || 4 + n * TABLE_ROW + carried != content {
            return Err(bad("chunk table does not add up to its sizes"));
        }
        Ok(rows)
    }

    /// Load the next piece of rebuilt output into `buf`; false at the end.
    fn refill(&mut self) -> Result<bool> {
        loop {
            match self.cur.take() {
                Some(Cur::Stream { id, left, mut hasher }) => {
                    if left == 0 {
                        if FileId::from_bytes(*hasher.finalize().as_bytes()) != id {
                            return Err(bad(format!("content of file {id} does not match its id")));
                        }
                        continue;
                    }
                    let n = left.min(1 << 20);
                    self.buf = self.read_content(n, n, "file content")?;
                    hasher.update(&self.buf);
                    self.cur = Some(Cur::Stream { id, left: left - n, hasher });
                    return Ok(true);
                }
                Some(Cur::Chunks { id, mut rows, mut hasher }) => {
                    let Some((cid, len, carried)) = rows.pop_front() else {
                        if FileId::from_bytes(*hasher.finalize().as_bytes()) != id {
                            return Err(bad(format!("rebuilt file {id} does not match its id")));
                        }
                        continue;
                    };
                    self.buf = if carried {
                        let data = self.read_content(len as u64, MAX_CHUNK as u64, "chunk")?;
                        if ChunkId::of(&data) != cid {
                            return Err(bad(format!("carried chunk does not match its id {cid}")));
                        }
                        data
                    } else {
                        match self.local_chunk(&cid)? {
                            Some(loc) if loc.raw_len == len => self.store.read_chunk(&loc)?,
                            Some(_) => return Err(bad(format!("chunk {cid} has another length here"))),
                            None => {
                                self.note_missing("chunk", cid.to_string(), len as u64);
                                // The table's other rows (and carried bytes) are drained too.
                                self.cur = Some(Cur::Chunks { id, rows, hasher });
                                return self.drain();
                            }
                        }
                    };
                    hasher.update(&self.buf);
                    self.cur = Some(Cur::Chunks { id, rows, hasher });
                    return Ok(true);
                }
                Some(Cur::Local { mut rows }) => {
                    let Some((cid, _)) = rows.pop_front() else { continue };
                    let loc =
                        self.local_chunk(&cid)?.ok_or_else(|| Error::corrupt(format!("chunk {cid} is missing")))?;
                    self.buf = self.store.read_chunk(&loc)?;
                    self.cur = Some(Cur::Local { rows });
                    return Ok(true);
                }
                None => {}
            }
            let Some((kind, size)) = self.next_entry()? else { return Ok(false) };
            match kind {
                Kind::Magic => return Err(bad("a second magic record")),
                Kind::Raw => {
                    self.buf = self.read_content(size, MAX_RAW, "raw entry")?;
                    return Ok(true);
                }
                Kind::File { id } => self.cur = Some(Cur::Stream { id, left: size, hasher: blake3::Hasher::new() }),
                Kind::Ref { id, size: fsize } => {
                    if size != 0 {
                        return Err(bad(format!("reference to {id} carries content")));
                    }
                    match self.local_file(&id)? {
                        Some(r) if r.size == fsize => {
                            self.cur = Some(Cur::Local { rows: r.chunks.into_iter().collect() })
                        }
                        Some(r) => {
                            return Err(bad(format!("reference to {id} says {fsize} bytes, the file has {}", r.size)))
                        }
                        None => {
                            self.note_missing("file", id.to_string(), fsize);
                            return self.drain();
                        }
                    }
                }
                Kind::Chunks { id, size: fsize } => {
                    let rows = self.read_table(fsize, size)?;
                    self.cur = Some(Cur::Chunks { id, rows, hasher: blake3::Hasher::new() });
                }
                Kind::Delta { id, size: fsize, base, base_size } => {
                    let delta = self.read_content(size, DELTA_MAX, "delta")?;
                    match self.local_file(&base)? {
                        Some(r) if r.size != base_size => {
                            return Err(bad(format!(
                                "delta base {base} says {base_size} bytes, the file has {}",
                                r.size
                            )))
                        }
                        Some(r) if r.size <= DELTA_MAX => {
                            let out = crate::delta::decode(&self.store.read_file(&base)?, &delta, fsize)?;
                            if FileId::of(&out) != id {
                                return Err(bad(format!("delta for file {id} does not rebuild it")));
                            }
                            self.buf = out;
                            return Ok(true);
                        }
                        Some(_) => return Err(bad(format!("delta base {base} is over the size limit"))),
                        None => {
                            self.note_missing("file", base.to_string(), base_size);
                            return self.drain();
                        }
                    }
                }
            }
        }
    }

    /// After something is missing: walk the rest of the tarball, checking its
    /// structure and every carried byte that can be checked without what is
    /// missing (chunks, whole files, deltas on a base held here), and noting
    /// every other missing reference, then stop.
    fn drain(&mut self) -> Result<bool> {
        match self.drain_rest() {
            Ok(()) => Err(Error::new(ErrorKind::NotFound, "dedup tarball references data this store lacks")),
            Err(e) => {
                // A damaged tarball is an error, not a (necessarily incomplete) list of what is missing.
                *self.missing.lock().unwrap_or_else(|p| p.into_inner()) = Missing::default();
                Err(e)
            }
        }
    }

    fn drain_rest(&mut self) -> Result<()> {
        let pending = self.cur.take();
        if let Some(Cur::Chunks { rows, .. }) = pending {
            self.drain_rows(rows)?;
        } else if let Some(Cur::Stream { id, left, hasher }) = pending {
            self.drain_file(id, left, hasher)?;
        }
        while let Some((kind, size)) = self.next_entry()? {
            match kind {
                Kind::Magic => return Err(bad("a second magic record")),
                Kind::Raw => {
                    self.read_content(size, MAX_RAW, "raw entry")?;
                }
                Kind::File { id } => self.drain_file(id, size, blake3::Hasher::new())?,
                Kind::Ref { id, size: fsize } => {
                    if self.local_file(&id)?.is_none() {
                        self.note_missing("file", id.to_string(), fsize);
                    }
                }
                Kind::Chunks { size: fsize, .. } => {
                    let rows = self.read_table(fsize, size)?;
                    self.drain_rows(rows)?;
                }
                Kind::Delta { id, size: fsize, base, base_size } => {
                    let delta = self.read_content(size, DELTA_MAX, "delta")?;
                    match self.local_file(&base)? {
                        None => self.note_missing("file", base.to_string(), base_size),
                        // Checked as an apply checks it.
                        Some(r) if r.size == base_size && r.size <= DELTA_MAX => {
                            let out = crate::delta::decode(&self.store.read_file(&base)?, &delta, fsize)?;
                            if FileId::of(&out) != id {
                                return Err(bad(format!("delta for file {id} does not rebuild it")));
                            }
                        }
                        Some(_) => return Err(bad(format!("delta base {base} does not fit the delta"))),
                    }
                }
            }
        }
        Ok(())
    }

    /// The rest (`left` bytes) of a file carried whole, checked against its id.
    fn drain_file(&mut self, id: FileId, left: u64, mut hasher: blake3::Hasher) -> Result<()> {
        let n = io::copy(&mut self.split.content().take(left), &mut hasher)
            .map_err(|e| crate::error::from_io(e, "reading dedup tarball"))?;
        if n != left {
            return Err(bad("truncated file content"));
        }
        if FileId::from_bytes(*hasher.finalize().as_bytes()) != id {
            return Err(bad(format!("carried file {id} does not match its id")));
        }
        Ok(())
    }

    fn drain_rows(&mut self, rows: VecDeque<(ChunkId, u32, bool)>) -> Result<()> {
        for (cid, len, carried) in rows {
            if carried {
                let data = self.read_content(len as u64, MAX_CHUNK as u64, "chunk")?;
                if ChunkId::of(&data) != cid {
                    return Err(bad(format!("carried chunk does not match its id {cid}")));
                }
            } else if self.local_chunk(&cid)?.is_none() {
                self.note_missing("chunk", cid.to_string(), len as u64);
            }
        }
        Ok(())
    }
}

impl Read for Rebuild<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if !self.refill()? {
                if self.produced != self.tar_size {
                    return Err(bad(format!(
                        "rebuilds {} bytes, the magic record says {}",
                        self.produced, self.tar_size
                    ))
                    .into());
                }
                return Ok(0);
            }
            self.produced += self.buf.len() as u64;
            if self.produced > self.tar_size {
                return Err(bad(format!("rebuilds more than the {} bytes the magic record says", self.tar_size)).into());
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Store {
    /// Apply a dedup tarball: rebuild its layer from the tarball and this
    /// store's own files and chunks, verify it and record it. When references
    /// cannot be resolved, records nothing and lists them.
    pub fn apply<R: Read>(&self, reader: R, opts: &IngestOptions) -> Result<ApplyOutcome> {
        let mut head = [0u8; 4];
        let mut reader = io::BufReader::new(reader);
        let n = reader.read(&mut head).map_err(|e| Error::io("reading dedup tarball", e))?;
        if n < 4 || head != [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(bad("not a dedup tarball (it is not zstd-compressed)"));
        }
        let chained = io::Cursor::new(head).chain(reader);
        let mut dec = zstd::stream::read::Decoder::new(chained).map_err(|e| Error::io("zstd decoder", e))?;
        dec.window_log_max(27).map_err(|e| Error::io("zstd decoder", e))?;
        let decoded: Box<dyn Read> = Box::new(DecodeErr(dec));
        let tx = self.db.begin_read()?;
        let mut rb = Rebuild {
            store: self,
            split: TarSplitter::new(decoded).with_header_limit(MAX_HEADERS),
            entries_seen: 0,
            files: tx.open_table(FILES)?,
            chunks: tx.open_table(CHUNKS)?,
            cur: None,
            buf: Vec::new(),
            pos: 0,
            produced: 0,
            tar_size: 0,
            missing: Arc::new(Mutex::new(Missing::default())),
        };
        let magic = match rb.next_entry()? {
            Some((Kind::Magic, size)) => {
                // The first entry must be the magic record, by name and content.
                let text = rb.read_content(size, MAX_MAGIC, "magic record")?;
                parse_magic(&text)?
            }
            _ => return Err(bad("does not begin with its magic record")),
        };
        if magic.chunker != self.params {
            return Err(Error::new(
                ErrorKind::Config,
                format!("dedup tarball was built for chunker {}; this store uses {}", magic.chunker, self.params),
            ));
        }
        rb.tar_size = magic.tar_size;
        let missing = rb.missing.clone();
        let result = self.ingest(rb, &IngestOptions { expect: Some(magic.layer), ..opts.clone() });
        let missing = std::mem::take(&mut *missing.lock().unwrap_or_else(|p| p.into_inner())).list;
        match result {
            _ if !missing.is_empty() => Ok(ApplyOutcome::Missing { layer: magic.layer, missing }),
            Ok(s) => Ok(ApplyOutcome::Applied(s)),
            // What the rebuilt bytes themselves fail (their tar structure, the diff_id).
            Err(e) if !e.message().contains(DTAR) => Err(e.context("the layer the dedup tarball rebuilds")),
            Err(e) => Err(e),
        }
    }
}

/// Names zstd failures as what they are: a damaged tarball. An error the
/// input itself already named (a broken transfer) passes through as it is.
struct DecodeErr<R>(R);

impl<R: Read> Read for DecodeErr<R> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b).map_err(|e| {
            if e.get_ref().is_some_and(|r| r.is::<Error>()) {
                e
            } else {
                bad(format!("corrupt or truncated zstd stream: {e}")).into()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientId, DiffOptions};

    #[test]
    fn magic_first_line_is_exact() {
        let rest = "layer sha256:".to_string() + &"ab".repeat(32) + "\ntar-size 1\nchunker 16384 65536 262144\n";
        assert!(parse_magic(format!("chunkstore-dedup-tar 1\n{rest}").as_bytes()).is_ok());
        for first in ["chunkstore-dedup-tar1", "chunkstore-dedup-tar  1", "chunkstore-dedup-tar 2", "x 1"] {
            assert!(parse_magic(format!("{first}\n{rest}").as_bytes()).is_err(), "{first:?} accepted");
        }
    }

    /// A layer whose one raw run is longer than the old 18 MiB limit (37,000
    /// directories in a row) still travels: raw entries are bounded by the
    /// recipe's raw item limit, not the tail's.
    #[test]
    fn long_raw_run_applies() {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..37_000 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_cksum();
            b.append_data(&mut h, format!("d{i:06}/"), &[][..]).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let (hub_dir, edge_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hub = Store::open(hub_dir.path()).unwrap();
        let id = hub.ingest(&tar[..], &IngestOptions::default()).unwrap().layer.id;
        let c = ClientId::new("edge").unwrap();
        hub.add_client(&c).unwrap();
        let mut dtar = Vec::new();
        hub.write_dedup_tar(&hub.diff_with(&c, &id, DiffOptions { deltas: true }).unwrap(), &mut dtar).unwrap();
        let edge = Store::open(edge_dir.path()).unwrap();
        assert!(matches!(edge.apply(&dtar[..], &IngestOptions::default()).unwrap(), ApplyOutcome::Applied(_)));
        let mut back = Vec::new();
        edge.export(&id, &mut back).unwrap();
        assert!(back == tar);
    }
}
