//! A tar walk that keeps every byte: headers, extension records, padding and
//! whatever follows the end-of-archive marker come out verbatim as "raw"
//! bytes, and each entry's data comes out as a content region to chunk. Raw
//! bytes and contents, concatenated in order, are the input exactly (the idea
//! of tar-split). Written by hand because the `tar` crate hides exactly these
//! bytes (padding, raw extension records, the tail) that a rebuild needs.

use crate::error::{Error, Result};
use std::io::{self, Read};

const BLOCK: usize = 512;
/// Largest PAX record set or GNU long name/link we accept.
pub(crate) const MAX_EXTENSION: u64 = 1 << 20;
/// Largest stretch of bytes after the first zero block of the end-of-archive marker we keep.
pub(crate) const MAX_TAIL: u64 = 16 << 20;

/// What an entry's data region holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentKind {
    /// A regular file's bytes (including GNU sparse files' stored form).
    File,
    /// Data of an entry type that is not a regular file (e.g. GNU dumpdir).
    Data,
}

/// A content region: `size` bytes follow, read them through [`TarSplitter::content`].
#[derive(Debug)]
pub(crate) struct Content {
    pub kind: ContentKind,
    pub size: u64,
    pub path: Vec<u8>,
    /// Offset of the region in the uncompressed stream.
    pub offset: u64,
}

/// What [`TarSplitter::next_step`] found.
#[derive(Debug)]
pub(crate) enum Step {
    /// A content region follows: read it through [`TarSplitter::content`].
    Content(Content),
    /// The raw bytes reached the limit set by [`TarSplitter::with_raw_limit`]
    /// before the next content region: take them, and call again.
    More,
    /// The stream ended (the end marker and tail were appended).
    End,
}

/// Pending extension values that apply to the next real entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    size: Option<u64>,
}

/// Walks a tar stream; see the module docs.
pub(crate) struct TarSplitter<R> {
    inner: R,
    pos: u64,
    /// Bytes of the current content region not yet read by the caller.
    remaining: u64,
    /// Padding owed after the current content region.
    pad: usize,
    region_start: u64,
    region_size: u64,
    done: bool,
    entries: u64,
    /// Most header bytes one `next` call may gather (see [`TarSplitter::with_header_limit`]).
    header_limit: u64,
    /// Raw bytes after which `next_step` returns [`Step::More`].
    raw_limit: u64,
    /// Header bytes handed over since the last content region, in earlier
    /// [`Step::More`] parts (counted against `header_limit`).
    header_run: u64,
    /// Extension values read, for the entry still to come.
    pending: Pending,
}

impl<R: Read> TarSplitter<R> {
    pub fn new(inner: R) -> Self {
        TarSplitter {
            inner,
            pos: 0,
            remaining: 0,
            pad: 0,
            region_start: 0,
            region_size: 0,
            done: false,
            entries: 0,
            header_limit: u64::MAX,
            raw_limit: u64::MAX,
            header_run: 0,
            pending: Pending::default(),
        }
    }

    /// Have [`TarSplitter::next_step`] hand over raw bytes once it has
    /// gathered `limit` of them, even where no content region follows yet,
    /// so that any number of header-only entries (directories, links) in a
    /// row costs bounded memory.
    pub fn with_raw_limit(mut self, limit: u64) -> Self {
        self.raw_limit = limit.max(1);
        self
    }

    /// Refuse more than `limit` bytes of headers (header-only entries and
    /// extension records) before one content region. A layer may have any
    /// number; a dedup tarball, whose entries all carry data, a few.
    pub fn with_header_limit(mut self, limit: u64) -> Self {
        self.header_limit = limit;
        self
    }

    /// Real entries seen so far (extension headers not counted).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes consumed from the stream.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn truncated(&self, what: &str) -> Error {
        Error::invalid(format!("truncated tar: input ends at offset {} inside {what}", self.pos))
    }

    /// Read exactly `buf.len()` bytes; `Ok(n < len)` only at end of input.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    self.pos += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(crate::error::from_io(e, format!("reading input at offset {}", self.pos))),
            }
        }
        Ok(n)
    }

    fn read_exact_into(&mut self, out: &mut Vec<u8>, len: usize, what: &str) -> Result<()> {
        let start = out.len();
        out.resize(start + len, 0);
        if self.fill(&mut out[start..])? < len {
            return Err(self.truncated(what));
        }
        Ok(())
    }

    /// Append raw bytes to `raw` until the next content region (returned) or
    /// the end of the stream (`None`, with the end marker and tail appended).
    pub fn next(&mut self, raw: &mut Vec<u8>) -> Result<Option<Content>> {
        loop {
            match self.next_step(raw)? {
                Step::Content(c) => return Ok(Some(c)),
                Step::End => return Ok(None),
                Step::More => {}
            }
        }
    }

    /// As [`TarSplitter::next`], but may stop early with [`Step::More`] (see
    /// [`TarSplitter::with_raw_limit`]).
    pub fn next_step(&mut self, raw: &mut Vec<u8>) -> Result<Step> {
        if self.remaining > 0 {
            return Err(Error::invalid("internal: content region not fully read"));
        }
        if self.pad > 0 {
            let pad = self.pad;
            self.pad = 0;
            self.read_exact_into(raw, pad, "the padding after an entry's data")?;
        }
        if self.done {
            return Ok(Step::End);
        }
        let start = raw.len();
        let too_many_headers = |s: &Self, raw: &Vec<u8>, at: u64| {
            (s.header_run + (raw.len() - start) as u64 > s.header_limit).then(|| {
                Error::invalid(format!("more than {} bytes of headers before the entry at offset {at}", s.header_limit))
            })
        };
        loop {
            if (raw.len() - start) as u64 >= self.raw_limit {
                self.header_run += (raw.len() - start) as u64;
                return Ok(Step::More);
            }
            let hstart = raw.len();
            let at = self.pos;
            if let Some(e) = too_many_headers(self, raw, at) {
                return Err(e);
            }
            let n = {
                raw.resize(hstart + BLOCK, 0);
                let mut block = [0u8; BLOCK];
                let n = self.fill(&mut block)?;
                raw[hstart..].copy_from_slice(&block);
                n
            };
            if n == 0 && at == 0 {
                raw.truncate(hstart);
                return Err(Error::invalid("empty input: not a tar archive"));
            }
            if n < BLOCK {
                raw.truncate(hstart + n);
                return Err(if n == 0 {
                    Error::invalid(format!("truncated tar: no end-of-archive marker (input ends at offset {at})"))
                } else if at == 0 {
                    Error::invalid(format!(
                        "not a tar archive: the input is only {n} bytes, less than one header block"
                    ))
                } else {
                    self.truncated("a header block")
                });
            }
            let h: [u8; BLOCK] = raw[hstart..].try_into().expect("one block");
            if h.iter().all(|&b| b == 0) {
                self.read_tail(raw)?;
                self.done = true;
                return Ok(Step::End);
            }
            check_checksum(&h, at)?;
            let typeflag = h[156];
            let header_size = parse_number(&h[124..136]).ok_or_else(|| bad_field("size", at))?;
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    if header_size > MAX_EXTENSION {
                        return Err(Error::invalid(format!(
                            "oversized extension header at offset {at}: {header_size} bytes (limit {MAX_EXTENSION})"
                        )));
                    }
                    let dstart = raw.len();
                    let len = header_size as usize;
                    self.read_exact_into(raw, len, "an extension header's data")?;
                    let data = &raw[dstart..dstart + len];
                    match typeflag {
                        b'x' => parse_pax(data, &mut self.pending, at)?,
                        b'L' => self.pending.path = Some(until_nul(data).to_vec()),
                        _ => {} // global PAX records and long link names don't move data
                    }
                    let pad = padding(header_size);
                    self.read_exact_into(raw, pad, "an extension header's padding")?;
                    continue;
                }
                _ => {}
            }
            self.entries += 1;
            if typeflag == b'S' && h[482] != 0 {
                // Old GNU sparse: extension blocks of sparse maps follow the header
                // (21 holes each), bounded like the other extension records.
                let mut blocks = 0u64;
                loop {
                    blocks += 1;
                    if blocks * BLOCK as u64 > MAX_EXTENSION {
                        return Err(Error::invalid(format!(
                            "oversized GNU sparse map at offset {at}: more than {MAX_EXTENSION} bytes"
                        )));
                    }
                    if let Some(e) = too_many_headers(self, raw, at) {
                        return Err(e);
                    }
                    let s = raw.len();
                    self.read_exact_into(raw, BLOCK, "a GNU sparse extension block")?;
                    if raw[s + 504] == 0 {
                        break;
                    }
                }
            }
            let size = self.pending.size.unwrap_or(header_size);
            let kind = match typeflag {
                b'0' | 0 | b'7' | b'S' => Some(ContentKind::File),
                // Header-only types: their size field never moves data (as Go and Python read them).
                b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => None,
                _ => (size > 0).then_some(ContentKind::Data),
            };
            let Some(kind) = kind else {
                // Extension records apply to the one entry after them, data or not.
                self.pending = Pending::default();
                continue;
            };
            let path = std::mem::take(&mut self.pending).path.unwrap_or_else(|| header_path(&h));
            self.remaining = size;
            self.pad = padding(size);
            self.region_start = self.pos;
            self.region_size = size;
            self.header_run = 0;
            return Ok(Step::Content(Content { kind, size, path, offset: self.pos }));
        }
    }

    /// Everything after the first zero block, verbatim.
    fn read_tail(&mut self, raw: &mut Vec<u8>) -> Result<()> {
        let start = raw.len();
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = self.fill(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            raw.extend_from_slice(&buf[..n]);
            if (raw.len() - start) as u64 > MAX_TAIL {
                return Err(Error::invalid(format!(
                    "more than {MAX_TAIL} bytes after the end-of-archive marker's first zero block (at offset {})",
                    self.pos
                )));
            }
        }
    }

    /// A reader over the current content region.
    pub fn content(&mut self) -> ContentReader<'_, R> {
        ContentReader { s: self }
    }

    /// Pass over the current content region without reading it: `skip` must
    /// move the input on by exactly the bytes it is given (for an input that
    /// can do so without copying them, e.g. a rebuild that knows its regions).
    pub fn skip_content(&mut self, skip: impl FnOnce(&mut R, u64) -> Result<()>) -> Result<()> {
        let n = self.remaining;
        skip(&mut self.inner, n)?;
        self.pos += n;
        self.remaining = 0;
        Ok(())
    }

    /// The input.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Reads the current content region; errors if the input ends early.
pub(crate) struct ContentReader<'a, R> {
    s: &'a mut TarSplitter<R>,
}

impl<R: Read> Read for ContentReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = &mut *self.s;
        if s.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(s.remaining).unwrap_or(usize::MAX));
        let n = loop {
            match s.inner.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(crate::error::from_io(e, format!("reading input at offset {}", s.pos)).into()),
                Ok(n) => break n,
            }
        };
        if n == 0 {
            return Err(Error::invalid(format!(
                "truncated tar: an entry at offset {} declares {} bytes, but the input ends at offset {}",
                s.region_start, s.region_size, s.pos
            ))
            .into());
        }
        s.pos += n as u64;
        s.remaining -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

fn bad_field(field: &str, at: u64) -> Error {
    Error::invalid(format!("malformed tar header at offset {at}: bad {field} field"))
}

fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

/// A numeric header field: octal (NUL/space padded) or GNU base-256.
pub(crate) fn parse_number(f: &[u8]) -> Option<u64> {
    if f.first().is_some_and(|b| b & 0x80 != 0) {
        if f[0] == 0xff {
            return None; // negative
        }
        let mut v: u64 = (f[0] & 0x7f) as u64;
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let mut v: u64 = 0;
    let mut seen = false;
    for &b in f {
        match b {
            b'0'..=b'7' => {
                v = v.checked_mul(8)?.checked_add((b - b'0') as u64)?;
                seen = true;
            }
            b' ' if !seen => {}
            b' ' | 0 => break,
            _ => return None,
        }
    }
    Some(v)
}

fn check_checksum(h: &[u8; BLOCK], at: u64) -> Result<()> {
    let stored = parse_number(&h[148..156]);
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    match stored {
        Some(s) if s == unsigned || s as i64 == signed => Ok(()),
        _ if at == 0 => Err(Error::invalid("not a tar archive: the header at offset 0 has a bad checksum")),
        _ => Err(Error::invalid(format!("tar header checksum mismatch at offset {at}"))),
    }
}

/// Name from a ustar/GNU/v7 header: POSIX ustar joins prefix and name.
fn header_path(h: &[u8; BLOCK]) -> Vec<u8> {
    let name = until_nul(&h[..100]);
    let posix = &h[257..263] == b"ustar\0";
    let prefix = until_nul(&h[345..500]);
    if posix && !prefix.is_empty() {
        let mut p = prefix.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    } else {
        name.to_vec()
    }
}

/// PAX records: "LEN KEY=VALUE\n"; we need `path` and `size`.
fn parse_pax(mut d: &[u8], pending: &mut Pending, at: u64) -> Result<()> {
    let bad = || Error::invalid(format!("malformed PAX extended header at offset {at}"));
    while !d.is_empty() {
        if d.iter().all(|&b| b == 0) {
            break; // some writers pad the record set with NULs
        }
        let sp = d.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&d[..sp]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        if len <= sp + 1 || len > d.len() || d[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = &d[sp + 1..len - 1];
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        match k {
            b"path" => pending.path = Some(v.to_vec()),
            b"size" => {
                let s = std::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok());
                pending.size = Some(s.ok_or_else(|| bad_field("PAX size", at))?);
            }
            _ => {}
        }
        d = &d[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Split `tar` into raw bytes and contents and glue them back together.
    type Split = (Vec<u8>, Vec<(ContentKind, Vec<u8>)>);

    fn resplit(tar: &[u8]) -> Result<Split> {
        let mut s = TarSplitter::new(tar);
        let mut out = Vec::new();
        let mut files = Vec::new();
        loop {
            let mut raw = Vec::new();
            let c = s.next(&mut raw)?;
            out.extend_from_slice(&raw);
            let Some(c) = c else { break };
            let mut data = Vec::new();
            s.content().read_to_end(&mut data).map_err(|e| crate::error::from_io(e, "content"))?;
            assert_eq!(data.len() as u64, c.size);
            out.extend_from_slice(&data);
            files.push((c.kind, data));
        }
        Ok((out, files))
    }

    fn sample() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "a/hello.txt", &b"hello"[..]).unwrap();
        let long = format!("{}/x", "d".repeat(150));
        let mut h = tar::Header::new_gnu();
        h.set_size(700);
        h.set_cksum();
        b.append_data(&mut h, long, &[9u8; 700][..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn rebuilds_exactly() {
        let mut t = sample();
        t.extend_from_slice(b"trailing junk");
        let (out, files) = resplit(&t).unwrap();
        assert_eq!(out, t);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].1, b"hello");
    }

    #[test]
    fn truncation_is_an_error_at_every_cut() {
        let t = sample();
        let end = t.len() - 1024; // the end-of-archive blocks
        for cut in (0..end).step_by(97) {
            assert!(resplit(&t[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn rejects_non_tar_and_bad_checksum() {
        let e = resplit(&[b'x'; 4096]).unwrap_err();
        assert!(e.to_string().contains("not a tar"), "{e}");
        let mut t = sample();
        t[512 + 512 + 10] ^= 1; // second header's name
        let e = resplit(&t).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch at offset 1024"), "{e}");
    }

    #[test]
    fn extension_records_apply_to_the_next_entry_only() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_pax_extensions([("path", &b"a-long-directory-name/"[..])]).unwrap();
        b.append_data(&mut h, "d/", &[][..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        b.append_data(&mut h, "f.txt", &b"hi"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut s = TarSplitter::new(&tar[..]);
        let c = s.next(&mut Vec::new()).unwrap().unwrap();
        assert_eq!((c.path.as_slice(), c.size), (&b"f.txt"[..], 2));
    }

    /// A tar builder holding ten directory entries.
    fn ten_dirs() -> tar::Builder<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..10 {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, format!("d{i}/"), &[][..]).unwrap();
        }
        b
    }

    #[test]
    fn header_limit_bounds_header_only_runs() {
        let b = ten_dirs();
        let tar = b.into_inner().unwrap();
        assert!(TarSplitter::new(&tar[..]).next(&mut Vec::new()).unwrap().is_none());
        let e = TarSplitter::new(&tar[..]).with_header_limit(4 * 512).next(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("bytes of headers"), "{e}");
    }

    /// A GNU sparse header's chain of extension blocks is bounded like any
    /// extension record, and counts against a header limit, with or without
    /// a raw limit (a forged chain made one step gather 10 MB).
    #[test]
    fn sparse_extension_chains_are_bounded() {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(0);
        h.as_mut_bytes()[482] = 1; // "is extended"
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        let mut ext = [0u8; 512];
        ext[504] = 1;
        for _ in 0..3000 {
            tar.extend_from_slice(&ext);
        }
        let e = TarSplitter::new(&tar[..]).next(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("oversized GNU sparse map at offset 0"), "{e}");
        let e = TarSplitter::new(&tar[..]).with_header_limit(8 * 512).next(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("bytes of headers"), "{e}");
        // The header limit holds across the parts a raw limit makes.
        let dirs = ten_dirs().into_inner().unwrap();
        let mut s = TarSplitter::new(&dirs[..]).with_raw_limit(1024).with_header_limit(4 * 512);
        let mut raw = Vec::new();
        let e = loop {
            match s.next_step(&mut raw) {
                Ok(Step::More) => {}
                Ok(other) => panic!("{other:?}"),
                Err(e) => break e,
            }
        };
        assert!(e.to_string().contains("bytes of headers"), "{e}");
    }

    /// With a raw limit, a run of header-only entries comes out in parts of
    /// about that size, which together are the bytes `next` gives at once;
    /// extension records read before a part ends still apply after it.
    #[test]
    fn raw_limit_hands_over_header_runs_in_parts() {
        let mut b = ten_dirs();
        b.append_pax_extensions([("path", &b"the-real-name"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        b.append_data(&mut h, "f.txt", &b"hi"[..]).unwrap();
        let tar = b.into_inner().unwrap();

        let mut whole = Vec::new();
        let c = TarSplitter::new(&tar[..]).next(&mut whole).unwrap().unwrap();
        let mut s = TarSplitter::new(&tar[..]).with_raw_limit(1500);
        let (mut parts, mut raw) = (0, Vec::new());
        let c2 = loop {
            let before = raw.len();
            match s.next_step(&mut raw).unwrap() {
                Step::More => {
                    assert!(raw.len() - before >= 1500 && raw.len() - before < 1500 + 512);
                    parts += 1;
                }
                Step::Content(c) => break c,
                Step::End => panic!("the file was not found"),
            }
        };
        assert!(parts >= 3, "{parts} parts");
        assert_eq!(raw, whole);
        assert_eq!((c2.path, c2.size, c2.offset), (c.path, c.size, c.offset));
        assert_eq!(c2.offset, tar.len() as u64 - 1024 - 512);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"   12 \0"), Some(0o12));
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_number(&[0xff; 12]), None);
        assert_eq!(parse_number(b"12x"), None);
    }
}
