//! Hostile and broken input through the real binary. Every case must fail
//! with exit status 1 and a message naming the problem (and the byte offset
//! where there is one), never panic, record no layer, leave no pack or
//! staging file behind; afterwards the store verifies clean and still
//! ingests a good layer.

use crate::common::*;
use std::path::{Path, PathBuf};

/// One stretch of a tar's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Header,
    ExtData,
    ExtPad,
    Data,
    Pad,
    End,
}

#[derive(Debug, Clone, Copy)]
struct Region {
    kind: Kind,
    start: usize,
    end: usize,
    /// For `Data`: the entry's declared size.
    size: u64,
}

/// Split a simple tar (ustar/GNU/PAX headers, no sparse entries) into regions.
fn layout(t: &[u8]) -> Vec<Region> {
    let mut v = Vec::new();
    let mut pos = 0;
    loop {
        let h = &t[pos..pos + 512];
        if h.iter().all(|&b| b == 0) {
            v.push(Region { kind: Kind::End, start: pos, end: t.len(), size: 0 });
            return v;
        }
        let size_field = std::str::from_utf8(&h[124..136]).unwrap().trim_matches(|c| c == '\0' || c == ' ');
        let size = u64::from_str_radix(size_field, 8).unwrap();
        v.push(Region { kind: Kind::Header, start: pos, end: pos + 512, size: 0 });
        pos += 512;
        let (data, padk) = match h[156] {
            b'x' | b'g' | b'L' | b'K' => (Kind::ExtData, Kind::ExtPad),
            b'0' | 0 | b'7' => (Kind::Data, Kind::Pad),
            _ => continue,
        };
        let padded = (size as usize).div_ceil(512) * 512;
        if size > 0 {
            v.push(Region { kind: data, start: pos, end: pos + size as usize, size });
        }
        if padded > size as usize {
            v.push(Region { kind: padk, start: pos + size as usize, end: pos + padded, size: 0 });
        }
        pos += padded;
    }
}

/// What ingesting `t[..cut]` must say, or `None` if the cut leaves a valid tar
/// (at or after the first zero block of the end marker).
fn expected_error(regions: &[Region], cut: usize) -> Option<Vec<String>> {
    if cut == 0 {
        return Some(vec!["empty input: not a tar archive".into()]);
    }
    let r = regions.iter().find(|r| r.start <= cut && cut < r.end).expect("cut inside the tar");
    let at = format!("offset {cut}");
    let inside = cut > r.start;
    Some(match r.kind {
        Kind::Header if !inside => vec!["truncated tar: no end-of-archive marker".into(), at],
        Kind::Header if r.start == 0 => vec![format!("not a tar archive: the input is only {cut} bytes")],
        Kind::Header => vec!["truncated tar".into(), "inside a header block".into(), at],
        Kind::ExtData => vec!["truncated tar".into(), "inside an extension header's data".into(), at],
        Kind::ExtPad => vec!["truncated tar".into(), "inside an extension header's padding".into(), at],
        Kind::Data => vec![
            "truncated tar".into(),
            format!("an entry at offset {} declares {} bytes, but the input ends at {at}", r.start, r.size),
        ],
        Kind::Pad => vec!["truncated tar".into(), "inside the padding after an entry's data".into(), at],
        Kind::End if !inside => vec!["truncated tar: no end-of-archive marker".into(), at],
        Kind::End if cut < r.start + 512 => vec!["truncated tar".into(), "inside a header block".into(), at],
        Kind::End => return None,
    })
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// A GNU tar (POSIX format, 512-byte records) with PAX headers, a file whose
/// data needs padding, an aligned file, a link and a symlink.
fn gnu_posix_tar(dir: &Path) -> Vec<u8> {
    let root = dir.join("tree");
    let long = format!("{}/file.bin", "l".repeat(120));
    std::fs::create_dir_all(root.join("l".repeat(120))).unwrap();
    std::fs::write(root.join("a.txt"), pseudo_random(700, 1)).unwrap();
    std::fs::write(root.join(&long), pseudo_random(1536, 2)).unwrap();
    std::fs::hard_link(root.join("a.txt"), root.join("a.hard")).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("a.sym")).unwrap();
    sh(&root, &format!("tar --format=posix -b 1 -cf ../posix.tar a.txt {long} a.hard a.sym"));
    std::fs::read(dir.join("posix.tar")).unwrap()
}

#[test]
fn truncated_tars_fail_at_every_kind_of_cut() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    let t = gnu_posix_tar(d);
    let regions = layout(&t);
    for k in [Kind::Header, Kind::ExtData, Kind::ExtPad, Kind::Data, Kind::Pad, Kind::End] {
        assert!(regions.iter().any(|r| r.kind == k), "fixture lacks {k:?}: {regions:?}");
    }
    // Through the library (fast): every region's edges and a stride of cut
    // points between them, the exact message each time.
    {
        let lib = chunkstore::Store::open(d.join("lib-store")).unwrap();
        let mut cuts: std::collections::BTreeSet<usize> = (0..t.len()).step_by(61).collect();
        for r in &regions {
            cuts.extend([r.start, r.start + 1, r.start + 2, (r.start + r.end) / 2, r.end - 2, r.end - 1]);
        }
        let mut rejected = 0;
        for &cut in &cuts {
            let Some(needles) = expected_error(&regions, cut) else { continue };
            let e = match lib.ingest(&t[..cut], &chunkstore::IngestOptions::default()) {
                Ok(s) => panic!("cut at {cut} of {} accepted as {}", t.len(), s.layer.id),
                Err(e) => e,
            };
            assert_eq!(e.kind(), chunkstore::ErrorKind::InvalidInput, "cut at {cut}: {e}");
            let msg = e.to_string();
            for n in &needles {
                assert!(msg.contains(n.as_str()), "cut at {cut}: want {n:?} in {msg:?}");
            }
            rejected += 1;
        }
        assert!(rejected > 100, "only {rejected} cuts tried");
        assert!(lib.layers().unwrap().is_empty());
        assert!(lib.verify(Default::default()).unwrap().is_clean());
    }
    // Through the binary: one cut at the start of and one inside each kind of
    // region (every region's kind and position, once).
    let mut classes = std::collections::BTreeMap::new();
    for r in &regions {
        classes.entry((format!("{:?}", r.kind), r.start == 0, true)).or_insert(r.start);
        classes.entry((format!("{:?}", r.kind), r.start == 0, false)).or_insert((r.start + r.end) / 2);
    }
    assert!(classes.len() >= 12, "{classes:?}");
    for &cut in classes.values() {
        let Some(needles) = expected_error(&regions, cut) else { continue };
        let p = write(d, &format!("cut-{cut}.tar"), &t[..cut]);
        let n: Vec<&str> = needles.iter().map(String::as_str).collect();
        reject(&store, &p, &n);
    }
    assert!(layer_ids(&store).is_empty(), "no truncated input became a layer");
    // A cut after the first zero block of the end marker is a complete tar
    // (a lone zero block ends an archive for GNU tar, Go and Python too).
    let p = write(d, "lone-zero-block.tar", &t[..t.len() - 512]);
    assert_eq!(ingest(&store, &p)["id"], diff_id(&t[..t.len() - 512]).as_str());
    assert_store_healthy(&store);
}

#[test]
fn truncated_big_file_leaves_no_pack_behind() {
    // 9 MiB: past the chunker's streaming window and the writer's batch size,
    // so chunks reach a pack before the input runs out.
    let data = pseudo_random(9 << 20, 3);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "big.bin", &data[..]).unwrap();
    let t = b.into_inner().unwrap();
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    let cut = 7 << 20;
    let p = write(d, "big-cut.tar", &t[..cut]);
    reject(&store, &p, &[&format!("declares {} bytes, but the input ends at offset {cut}", data.len())]);
    write(d, "big-cut.tar.full", &t);
    sh(d, "head -c 4000000 big-cut.tar.full | gzip -1 > big-cut.tar.gz");
    reject(&store, &d.join("big-cut.tar.gz"), &["declares", "input ends at offset 4000000"]);
    assert_eq!(cs_json(&store, &["stat"])["stats"]["stored_bytes"], 0, "nothing stored");
    assert!(layer_ids(&store).is_empty(), "a rejected input became a layer");
    assert_store_healthy(&store);
}

#[test]
fn truncated_and_corrupt_compressed_streams() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    // Compressible, several blocks: text plus some random bytes.
    let root = d.join("tree");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("text"), "a line of text that compresses well\n".repeat(4000)).unwrap();
    std::fs::write(root.join("rand"), pseudo_random(60_000, 4)).unwrap();
    sh(d, "tar -cf l.tar -C tree . && gzip -c l.tar > l.tar.gz && zstd -q -c l.tar > l.tar.zst");
    for (name, format) in [("l.tar.gz", "gzip"), ("l.tar.zst", "zstd")] {
        let z = std::fs::read(d.join(name)).unwrap();
        // Cuts in the header, the body, the trailer (checksum), and one byte short.
        for cut in [4, 10, 100, z.len() / 3, z.len() / 2, z.len() - 5, z.len() - 1] {
            let p = write(d, &format!("{name}.cut{cut}"), &z[..cut]);
            reject(&store, &p, &[&format!("truncated {format} stream"), &format!("compressed offset {cut}")]);
        }
        // Bytes flipped in the middle of the compressed data.
        let mut bad = z.clone();
        let mid = z.len() / 2;
        for b in &mut bad[mid..mid + 8] {
            *b ^= 0xa5;
        }
        let p = write(d, &format!("{name}.flipped"), &bad);
        let err = reject(&store, &p, &[]);
        assert!(
            err.contains(&format!("corrupt {format} data")) || err.contains("tar header checksum mismatch at offset"),
            "{name}: {err}"
        );
        // A damaged checksum trailer: the bytes decode, the check fails.
        let mut bad = z.clone();
        let at = if format == "gzip" { z.len() - 8 } else { z.len() - 2 };
        bad[at] ^= 0x01;
        let p = write(d, &format!("{name}.badsum"), &bad);
        reject(&store, &p, &[&format!("corrupt {format} data"), "checksum"]);
    }
    // A gzip stream followed by garbage that is not another member.
    let mut z = std::fs::read(d.join("l.tar.gz")).unwrap();
    z.extend_from_slice(b"\x1f\x8bnot a gzip member");
    let p = write(d, "trailing-garbage.tar.gz", &z);
    reject(&store, &p, &["gzip"]);
    // Bytes that are neither padding nor a member, right after the stream or after padding.
    let z = std::fs::read(d.join("l.tar.gz")).unwrap();
    for (name, tail) in [("junk", &b"JUNK\n"[..]), ("padded-junk", &[&[0u8; 512][..], b"x"].concat()[..])] {
        let p = write(d, &format!("{name}.tar.gz"), &[&z[..], tail].concat());
        reject(&store, &p, &["data after the end of the gzip stream"]);
    }
    assert_eq!(layer_ids(&store), Vec::<String>::new());
    // Zero padding after the last member is accepted, as by gzip -d; the
    // blob digest covers the file as given.
    let padded = [&z[..], &[0u8; 1024][..]].concat();
    let p = write(d, "padded.tar.gz", &padded);
    let s = cs_json(&store, &["ingest", p.to_str().unwrap()]);
    assert_eq!(s[0]["blob"], format!("sha256:{}", sha256_hex(&padded)));
    assert_eq!(s[0]["input"], p.to_str().unwrap());
    assert_eq!(export(&store, s[0]["id"].as_str().unwrap()), std::fs::read(d.join("l.tar")).unwrap());
    assert_store_healthy(&store);
}

#[test]
fn inputs_that_are_not_tars() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    let mut random = pseudo_random(4096, 5);
    random[0] = b'r'; // not a compression magic by accident
    let text = "This is a README, not a tar archive.\n".repeat(100);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random.bin", random, "not a tar archive: the header at offset 0 has a bad checksum"),
        ("readme.txt", text.clone().into_bytes(), "not a tar archive: the header at offset 0 has a bad checksum"),
        ("short.txt", b"hello\n".to_vec(), "not a tar archive: the input is only 6 bytes"),
        ("empty", Vec::new(), "empty input: not a tar archive"),
        ("one-byte", vec![0x1f], "not a tar archive: the input is only 1 bytes"),
    ];
    for (name, data, needle) in cases {
        let p = write(d, name, &data);
        reject(&store, &p, &[needle, name]);
    }
    write(d, "l.tar", &small_tar(1));
    // The xz and bzip2 tools, else Python's modules (CI installs neither tool).
    let py = |m: &str| {
        format!("python3 -c 'import {m},sys; sys.stdout.buffer.write({m}.compress(open(\"l.tar\",\"rb\").read()))'")
    };
    sh(d, &format!("(xz -c l.tar || {}) > l.tar.xz; (bzip2 -c l.tar || {}) > l.tar.bz2", py("lzma"), py("bz2")));
    assert!(std::fs::read(d.join("l.tar.xz")).unwrap().starts_with(b"\xfd7zXZ\0"));
    assert!(std::fs::read(d.join("l.tar.bz2")).unwrap().starts_with(b"BZh"));
    reject(&store, &d.join("l.tar.xz"), &["unsupported compression: xz"]);
    reject(&store, &d.join("l.tar.bz2"), &["unsupported compression: bzip2"]);
    // Missing file: a clear error, exit 1.
    let o = cs(&store, &["ingest", d.join("does-not-exist.tar").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot open"));
    assert!(layer_ids(&store).is_empty(), "a rejected input became a layer");
    assert_store_healthy(&store);
}

#[test]
fn damaged_headers_name_the_offset() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    let t = small_tar(7);
    let headers: Vec<usize> = layout(&t).iter().filter(|r| r.kind == Kind::Header).map(|r| r.start).collect();
    assert_eq!(headers.len(), 4);

    // A checksum error in the third header.
    let at = headers[2];
    let mut bad = t.clone();
    bad[at + 3] ^= 0x20;
    let p = write(d, "checksum.tar", &bad);
    reject(&store, &p, &[&format!("tar header checksum mismatch at offset {at}")]);

    // The last entry's size runs past the end of the input (octal, then base-256 huge).
    let last = headers[3];
    let mut bad = t.clone();
    bad[last + 124..last + 136].copy_from_slice(b"00000400000\0");
    fix_checksum(&mut bad[last..last + 512]);
    let p = write(d, "size-past-end.tar", &bad);
    reject(&store, &p, &[&format!("an entry at offset {} declares 131072 bytes", last + 512)]);
    let mut bad = t.clone();
    bad[last + 124] = 0x80;
    bad[last + 125..last + 136].copy_from_slice(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]); // 2^40
    fix_checksum(&mut bad[last..last + 512]);
    let p = write(d, "size-huge.tar", &bad);
    reject(&store, &p, &[&format!("declares {} bytes, but the input ends at offset {}", 1u64 << 40, t.len())]);
    // A size field that is not a number.
    let mut bad = t.clone();
    bad[last + 124..last + 136].copy_from_slice(b"12x45\0\0\0\0\0\0\0");
    fix_checksum(&mut bad[last..last + 512]);
    let p = write(d, "size-garbage.tar", &bad);
    reject(&store, &p, &[&format!("malformed tar header at offset {last}: bad size field")]);
    // A negative base-256 size.
    let mut bad = t.clone();
    bad[last + 124..last + 136].fill(0xff);
    fix_checksum(&mut bad[last..last + 512]);
    let p = write(d, "size-negative.tar", &bad);
    reject(&store, &p, &[&format!("malformed tar header at offset {last}: bad size field")]);
    assert!(layer_ids(&store).is_empty(), "a rejected input became a layer");
    assert_store_healthy(&store);
}

/// A valid one-file entry, then an extension header of `typeflag` carrying
/// `ext` (its size field says `declared`), then a file it would apply to.
fn with_extension(typeflag: u8, ext: &[u8], declared: u64) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&ustar_header("first.txt", b'0', 5));
    t.extend_from_slice(b"first");
    pad(&mut t);
    t.extend_from_slice(&ustar_header("PaxHeaders/next", typeflag, declared));
    t.extend_from_slice(ext);
    pad(&mut t);
    t.extend_from_slice(&ustar_header("next.txt", b'0', 4));
    t.extend_from_slice(b"next");
    pad(&mut t);
    t.resize(t.len() + 1024, 0);
    t
}

#[test]
fn malformed_and_oversized_extension_headers() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    // The extension header sits at offset 1024 in every case.
    let good = pax_record("path", "a/long/path/name.txt");
    let ok = with_extension(b'x', &good, good.len() as u64);
    let p = write(d, "good-pax.tar", &ok);
    assert_eq!(ingest(&store, &p)["id"], diff_id(&ok).as_str(), "the well-formed variant is accepted");

    let malformed: [(&str, &[u8], &str); 8] = [
        ("non-numeric-length", b"abc path=x\n", "malformed PAX extended header at offset 1024"),
        ("length-past-end", b"30 path=x\n", "malformed PAX extended header at offset 1024"),
        ("length-short", b"5 path=x\n", "malformed PAX extended header at offset 1024"),
        ("no-equals", b"8 pathx\n", "malformed PAX extended header at offset 1024"),
        ("zero-length", b"0 path=x\n", "malformed PAX extended header at offset 1024"),
        ("no-space", b"12path=abcd\n", "malformed PAX extended header at offset 1024"),
        ("size-not-a-number", b"12 size=abc\n", "malformed tar header at offset 1024: bad PAX size field"),
        ("size-negative", b"11 size=-5\n", "malformed tar header at offset 1024: bad PAX size field"),
    ];
    for (name, records, needle) in malformed {
        let t = with_extension(b'x', records, records.len() as u64);
        let p = write(d, &format!("pax-{name}.tar"), &t);
        reject(&store, &p, &[needle]);
    }
    // Declared sizes over 1 MiB are refused before anything is read or allocated.
    for (flag, name) in [(b'x', "pax"), (b'g', "pax-global"), (b'L', "gnu-longname"), (b'K', "gnu-longlink")] {
        let t = with_extension(flag, &good, 2 << 20);
        let p = write(d, &format!("oversized-{name}.tar"), &t);
        reject(&store, &p, &["oversized extension header at offset 1024: 2097152 bytes"]);
    }
    // A PAX size record that runs past the end of the input.
    let rec = pax_record("size", "999999999999");
    let t = with_extension(b'x', &rec, rec.len() as u64);
    let p = write(d, "pax-size-past-end.tar", &t);
    reject(&store, &p, &["declares 999999999999 bytes, but the input ends at offset"]);
    assert_eq!(layer_ids(&store), vec![diff_id(&ok)], "a rejected input became a layer");
    assert_store_healthy(&store);
}

#[test]
fn too_much_after_the_end_marker_is_refused() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    let mut t = small_tar(3);
    t.extend_from_slice(&vec![b'j'; (16 << 20) + 100]);
    let p = write(d, "long-tail.tar", &t);
    reject(&store, &p, &["bytes after the end-of-archive marker"]);
    assert!(layer_ids(&store).is_empty(), "a rejected input became a layer");
    assert_store_healthy(&store);
}

#[test]
fn one_bad_file_among_good_ones() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    let (a, b) = (small_tar(21), small_tar(22));
    let pa = write(d, "a.tar", &a);
    let pb = write(d, "b.tar", &b);
    let bad = write(d, "bad.tar", &a[..a.len() / 2]);
    let o = cs(&store, &["ingest", pa.to_str().unwrap(), bad.to_str().unwrap(), pb.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.tar: not ingested:") && err.contains("truncated tar"), "{err}");
    assert!(!err.contains("a.tar: not ingested") && !err.contains("b.tar: not ingested"), "{err}");
    let mut got = layer_ids(&store);
    got.sort();
    let mut want = vec![diff_id(&a), diff_id(&b)];
    want.sort();
    assert_eq!(got, want, "the good inputs around a bad one are ingested");
    // With --json, stdout is still one JSON document: the failures and what went in.
    let c = write(d, "c.tar", &small_tar(23));
    let o = cs(&store, &["--json", "ingest", bad.to_str().unwrap(), c.to_str().unwrap(), "/nonexistent.tar"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints one JSON document");
    assert_eq!(v["error"]["kind"], "InvalidInput", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("bad.tar: not ingested"), "{v}");
    assert_eq!(v["errors"].as_array().unwrap().len(), 2, "{v}");
    assert!(v["errors"][1]["message"].as_str().unwrap().contains("cannot open"), "{v}");
    assert_eq!(v["ingested"][0]["id"], diff_id(&small_tar(23)).as_str(), "{v}");
    assert_eq!(v["ingested"].as_array().unwrap().len(), 1, "{v}");
    // A lone bad input: the error object, as for any failing command.
    let o = cs(&store, &["--json", "ingest", bad.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(v["error"]["kind"], "InvalidInput", "{v}");
    assert_store_healthy(&store);
}
