//! Byte-for-byte round trips through the real `chunkstore` binary, on tars
//! written by GNU tar (every format it writes, sparse files, record padding)
//! and by Python's `tarfile` (the store's own behaviour is in `layers.rs`).

use crate::common::*;
use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// Every header's typeflag in stream order, extension headers included.
fn typeflags(tar: &[u8]) -> Vec<u8> {
    let mut ar = tar::Archive::new(tar);
    let entries = ar.entries().expect("fixture parses").raw(true);
    entries.map(|e| e.expect("fixture entry parses").header().entry_type().as_byte()).collect()
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Ingest through the CLI, check diff_id and the summary against the bytes,
/// export through stdout and require identical bytes. Returns the summary.
pub(crate) fn round_trip(store: &Path, tar: &Path) -> serde_json::Value {
    let original = std::fs::read(tar).unwrap();
    let s = ingest(store, tar);
    assert_eq!(s["id"], diff_id(&original).as_str(), "{}: diff_id", tar.display());
    assert_eq!(s["tar_size"], original.len() as u64, "{}", tar.display());
    assert_eq!(s["input_bytes"], original.len() as u64, "{}", tar.display());
    assert_eq!(s["compression"], "none");
    let back = export(store, s["id"].as_str().unwrap());
    assert!(
        back == original,
        "{}: export differs from the original ({} vs {} bytes)",
        tar.display(),
        back.len(),
        original.len()
    );
    s
}

/// Number of entries GNU tar lists (it does not list extension headers).
fn gnu_tar_entry_count(tar: &Path) -> u64 {
    let out = sh(Path::new("/"), &format!("tar -tf '{}'", tar.display()));
    out.lines().count() as u64
}

/// Fixture trees for GNU tar under `root`:
/// `plain/` (what even v7 holds), `special/` (FIFO, devices, a path that
/// needs the ustar prefix field), `long/` (long names and link targets,
/// non-ASCII names: GNU or PAX only). Returns whether device nodes could be made.
fn make_trees(root: &Path) -> bool {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("plain/hello.txt", b"hello, world\n");
    w("plain/empty", b"");
    w("plain/random.bin", &pseudo_random(300 * 1024, 1));
    w("plain/aligned.bin", &pseudo_random(1536, 2)); // a multiple of 512: no padding
    w("plain/etc/.wh.removed", b"");
    w("plain/etc/.wh..wh..opq", b"");
    std::fs::hard_link(root.join("plain/random.bin"), root.join("plain/random.hard")).unwrap();
    symlink("hello.txt", root.join("plain/hello.sym")).unwrap();

    std::fs::create_dir_all(root.join("special")).unwrap();
    sh(root, "mkfifo special/fifo");
    let devices = ["mknod special/chr c 1 3", "mknod special/blk b 7 0"]
        .iter()
        .all(|cmd| Command::new("sh").arg("-c").arg(cmd).current_dir(root).status().is_ok_and(|s| s.success()));
    if !devices {
        eprintln!("note: mknod failed (no CAP_MKNOD?); GNU tar fixtures carry no device nodes, Python's do");
    }
    w(&format!("special/{}/{}/prefixed.txt", "p".repeat(70), "q".repeat(70)), b"needs the ustar prefix\n");

    let long_dir = "d".repeat(120);
    let long_file = format!("long/{long_dir}/{}.txt", "f".repeat(110));
    w(&long_file, &pseudo_random(5000, 3));
    w("long/ünïcødé/файл-文件.txt", "non-ASCII name\n".as_bytes());
    symlink(format!("{}/target", "t".repeat(150)), root.join("long/long-target.sym")).unwrap();
    symlink("x", root.join(format!("long/{}.sym", "s".repeat(120)))).unwrap();
    std::fs::hard_link(root.join(&long_file), root.join("long/hard-to-long")).unwrap();
    devices
}

#[test]
fn gnu_tar_every_format_round_trips() {
    let dir = tmp();
    let (root, store) = (dir.path().join("tree"), dir.path().join("store"));
    let devices = make_trees(&root);
    let cases: [(&str, &str); 5] = [
        ("gnu", "plain special long"),
        ("oldgnu", "plain special long"),
        ("posix", "plain special long"),
        ("ustar", "plain special"),
        ("v7", "plain"), // v7 has no FIFOs, devices or long names
    ];
    let mut ids = BTreeSet::new();
    for (format, dirs) in cases {
        let tar = dir.path().join(format!("{format}.tar"));
        sh(&root, &format!("tar --format={format} --sort=name -cf '{}' {dirs}", tar.display()));
        let bytes = std::fs::read(&tar).unwrap();
        // The fixture holds what this test claims to cover.
        let flags = typeflags(&bytes);
        let mut want: Vec<u8> = b"0125".to_vec(); // file, hard link, symlink, directory
        if format == "v7" {
            assert!(!contains(&bytes, b"ustar"), "v7 headers carry no ustar magic");
        } else {
            want.push(b'6');
            if devices {
                want.extend_from_slice(b"34");
            }
        }
        match format {
            "gnu" | "oldgnu" => want.extend_from_slice(b"LK"),
            "posix" => want.push(b'x'),
            _ => {}
        }
        for f in want {
            assert!(flags.contains(&f), "{format}: fixture lacks typeflag {:?}: {flags:?}", f as char);
        }
        if format == "ustar" {
            let prefixed = bytes.chunks(512).any(|b| b[257..263] == *b"ustar\0" && b[345] != 0);
            assert!(prefixed, "ustar fixture should use the prefix field");
        }
        let s = round_trip(&store, &tar);
        assert_eq!(s["entries"], gnu_tar_entry_count(&tar), "{format}: entries (extension headers not counted)");
        assert!(
            ids.insert(s["id"].as_str().unwrap().to_string()) || format == "oldgnu",
            "{format}: same bytes as another format?"
        );
    }
    assert_verify_clean(&store);
}

#[test]
fn gnu_tar_posix_xattrs_round_trip() {
    let dir = tmp();
    let (root, store) = (dir.path().join("tree"), dir.path().join("store"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("with-xattrs"), b"attributes ride in PAX records\n").unwrap();
    std::fs::write(root.join("ünïcødé-名前"), b"non-ASCII name in a PAX path record\n").unwrap();
    let script = "import os\n\
        try:\n    os.setxattr('with-xattrs', 'user.comment', 'ünïcødé value'.encode())\n    \
        os.setxattr('with-xattrs', 'user.bin', bytes(range(256)))\n\
        except OSError as e:\n    print('no-xattrs', e)\n";
    let out = Command::new("python3").arg("-c").arg(script).current_dir(&root).output().unwrap();
    let xattrs = !String::from_utf8_lossy(&out.stdout).contains("no-xattrs");
    let tar = dir.path().join("xattrs.tar");
    sh(&root, &format!("tar --format=posix --xattrs -cf '{}' .", tar.display()));
    let bytes = std::fs::read(&tar).unwrap();
    assert!(typeflags(&bytes).contains(&b'x'), "PAX headers expected");
    if xattrs {
        assert!(contains(&bytes, b"SCHILY.xattr.user.comment="), "xattr records expected in the fixture");
    } else {
        eprintln!("note: this filesystem refuses user xattrs; Python's PAX fixture still carries xattr records");
    }
    round_trip(&store, &tar);
}

#[test]
fn gnu_tar_sparse_files_round_trip() {
    let dir = tmp();
    let (root, store) = (dir.path().join("tree"), dir.path().join("store"));
    std::fs::create_dir_all(&root).unwrap();
    // 10 MiB with 10 data islands: more than the 4 sparse entries an old GNU
    // header holds, so the 'S' entry needs an extension block.
    let mut f = std::fs::File::create(root.join("sparse.img")).unwrap();
    f.set_len(10 << 20).unwrap();
    for i in 0..10u64 {
        f.seek(SeekFrom::Start(i * (1 << 20) + 4096 * i + 7)).unwrap();
        f.write_all(&pseudo_random(700, 40 + i)).unwrap();
    }
    drop(f);
    std::fs::write(root.join("plain.txt"), b"not sparse\n").unwrap();
    let cases = [
        ("gnu", "--format=gnu"),
        ("oldgnu", "--format=oldgnu"),
        ("posix-0.0", "--format=posix --sparse-version=0.0"),
        ("posix-0.1", "--format=posix --sparse-version=0.1"),
        ("posix-1.0", "--format=posix --sparse-version=1.0"),
    ];
    for (name, opts) in cases {
        let tar = dir.path().join(format!("sparse-{name}.tar"));
        sh(&root, &format!("tar {opts} --sparse --sort=name -cf '{}' sparse.img plain.txt", tar.display()));
        let bytes = std::fs::read(&tar).unwrap();
        assert!(bytes.len() < 1 << 20, "{name}: GNU tar did not store the file sparsely ({} bytes)", bytes.len());
        if name.contains("gnu") {
            let h = &bytes[..512];
            assert_eq!(h[156], b'S', "{name}: old GNU sparse entry expected");
            assert_eq!(h[482], 1, "{name}: the sparse map should need an extension block");
        } else {
            assert!(contains(&bytes, b"GNU.sparse."), "{name}: PAX sparse records expected");
        }
        let s = round_trip(&store, &tar);
        assert_eq!(s["entries"], 2, "{name}: {s}");
    }
    assert_verify_clean(&store);
}

/// Writes py-gnu.tar, py-pax.tar and py-ustar.tar with every entry kind.
const PYTHON_FIXTURES: &str = r#"
import io, random, tarfile
rng = random.Random(7)
FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}
for name, fmt in FORMATS.items():
    extra = {"pax_headers": {"comment": "a global PAX header"}} if fmt == tarfile.PAX_FORMAT else {}
    with tarfile.open(f"py-{name}.tar", "w", format=fmt, encoding="utf-8", **extra) as tf:
        def info(path, kind=tarfile.REGTYPE, **kw):
            t = tarfile.TarInfo(path)
            t.type, t.mtime, t.mode, t.uname, t.gname = kind, 1700000000, 0o644, "root", "root"
            for k, v in kw.items():
                setattr(t, k, v)
            return t
        def file(path, data, **kw):
            t = info(path, **kw)
            t.size = len(data)
            tf.addfile(t, io.BytesIO(data))
        def node(path, kind, **kw):
            tf.addfile(info(path, kind, **kw))
        node("etc", tarfile.DIRTYPE, mode=0o755)
        file("etc/hello.txt", b"hello, world\n")
        file("etc/empty", b"")
        file("etc/aligned.bin", rng.randbytes(1024))
        file("usr/lib/big.bin", rng.randbytes(200 * 1024))
        node("etc/hello.hard", tarfile.LNKTYPE, linkname="etc/hello.txt")
        node("etc/hello.sym", tarfile.SYMTYPE, linkname="hello.txt")
        node("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        node("dev/loop0", tarfile.BLKTYPE, devmajor=7, devminor=0)
        node("run/fifo", tarfile.FIFOTYPE)
        file("etc/.wh.removed", b"")
        file("etc/.wh..wh..opq", b"")
        file("p" * 70 + "/" + "q" * 70 + "/prefixed.txt", b"fits ustar with a prefix\n")
        if fmt != tarfile.USTAR_FORMAT:
            long_file = "d" * 120 + "/" + "f" * 110 + ".txt"
            file(long_file, rng.randbytes(3000))
            node("long-target.sym", tarfile.SYMTYPE, linkname="t" * 150 + "/target")
            node("long-target.hard", tarfile.LNKTYPE, linkname=long_file)
            file("ünïcødé/файл-文件.txt", "non-ASCII name\n".encode())
            file("big-ids", b"ids past the octal fields\n", uid=3_000_000_000, gid=3_000_000_000)
        if fmt == tarfile.PAX_FORMAT:
            file("etc/xattrs.txt", b"x", mtime=1700000000.123456, pax_headers={
                "SCHILY.xattr.user.mime_type": "text/plain",
                "SCHILY.xattr.user.ünïcødé": "välue",
                "LIBARCHIVE.xattr.user.b64": "AAECAw==",
            })
"#;

#[test]
fn python_tarfile_formats_round_trip() {
    let dir = tmp();
    let store = dir.path().join("store");
    python(dir.path(), PYTHON_FIXTURES);
    for (name, want) in [("gnu", &b"0123456LK"[..]), ("pax", &b"0123456xg"[..]), ("ustar", &b"0123456"[..])] {
        let tar = dir.path().join(format!("py-{name}.tar"));
        let bytes = std::fs::read(&tar).unwrap();
        let flags = typeflags(&bytes);
        for f in want {
            assert!(flags.contains(f), "py-{name}: fixture lacks typeflag {:?}", *f as char);
        }
        if name == "ustar" {
            assert!(!flags.iter().any(|f| b"LKxg".contains(f)), "ustar must not need extensions: {flags:?}");
        }
        if name == "pax" {
            assert!(contains(&bytes, b"SCHILY.xattr.user.mime_type=text/plain\n"));
        }
        assert_eq!(bytes.len() % 10240, 0, "tarfile pads to 20-block records");
        let s = round_trip(&store, &tar);
        let entries = if name == "ustar" { 13 } else { 18 } + u64::from(name == "pax");
        assert_eq!(s["entries"], entries, "py-{name}: {s}");
    }
    assert_verify_clean(&store);
}

#[test]
fn pax_size_and_path_records_override_the_header() {
    // The ustar size field says 0, the PAX size record says 3000: readers must
    // take 3000 bytes of data (as Go, Python and GNU tar do).
    let data = pseudo_random(3000, 9);
    let long_path = format!("{}/{}", "a".repeat(200), "from-the-pax-path-record");
    let mut records = pax_record("size", "3000");
    records.extend(pax_record("path", &long_path));
    records.extend(pax_record("SCHILY.xattr.user.k", "v"));
    let mut t = Vec::new();
    t.extend_from_slice(&ustar_header("PaxHeaders/x", b'x', records.len() as u64));
    t.extend_from_slice(&records);
    pad(&mut t);
    t.extend_from_slice(&ustar_header("short-name", b'0', 0));
    t.extend_from_slice(&data);
    pad(&mut t);
    t.extend_from_slice(&ustar_header("after.txt", b'0', 5));
    t.extend_from_slice(b"after");
    pad(&mut t);
    t.resize(t.len() + 1024, 0);

    let dir = tmp();
    let tar = dir.path().join("pax-size.tar");
    std::fs::write(&tar, &t).unwrap();
    // Python agrees on what the fixture holds.
    python(
        dir.path(),
        &format!(
            "import tarfile\nm = tarfile.open('pax-size.tar').getmembers()\n\
             assert [(x.name, x.size) for x in m] == [('{long_path}', 3000), ('after.txt', 5)], m\n"
        ),
    );
    let s = round_trip(&dir.path().join("store"), &tar);
    assert_eq!(s["entries"], 2, "{s}");
    assert_eq!(s["files"], 2, "{s}");
    assert_eq!(s["file_bytes"], 3005, "the PAX size record decides the data length: {s}");
}

#[test]
fn record_padding_and_bytes_after_the_end_marker_round_trip() {
    let dir = tmp();
    let (root, store) = (dir.path().join("tree"), dir.path().join("store"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.txt"), b"a small file\n").unwrap();
    std::fs::write(root.join("b.bin"), pseudo_random(70_000, 5)).unwrap();
    let p = |n: &str| dir.path().join(n);
    sh(&root, &format!("tar -cf '{}' a.txt b.bin", p("b20.tar").display()));
    sh(&root, &format!("tar -b 1 -cf '{}' a.txt b.bin", p("b1.tar").display()));
    sh(&root, &format!("tar -b 64 -cf '{}' a.txt", p("b64.tar").display()));
    let b20 = std::fs::read(p("b20.tar")).unwrap();
    let b1 = std::fs::read(p("b1.tar")).unwrap();
    let b64 = std::fs::read(p("b64.tar")).unwrap();
    assert_eq!(b20.len() % 10240, 0);
    assert!(b20.len() > b1.len(), "the default record size should pad past the end marker");
    assert_eq!(b1.len() % 512, 0);
    assert_ne!(b1.len() % 10240, 0, "-b 1 should not pad to 10 KiB");
    assert!(b1[b1.len() - 1024..].iter().all(|&b| b == 0), "-b 1 still ends with the two zero blocks");
    assert_eq!(b64.len(), 32768);

    let mut junk = b20.clone();
    junk.extend_from_slice(b"JUNK after the end-of-archive marker\n");
    junk.extend_from_slice(&pseudo_random(5000, 6));
    std::fs::write(p("junk.tar"), &junk).unwrap();
    // Two tars back to back, as `cat a.tar b.tar` makes: the second is tail.
    let mut cat = b1.clone();
    cat.extend_from_slice(&b20);
    std::fs::write(p("cat.tar"), &cat).unwrap();
    // A lone zero block ends the archive too (GNU tar accepts it with a warning).
    let mut lone = b1[..b1.len() - 512].to_vec();
    lone.extend_from_slice(b"tail");
    std::fs::write(p("lone.tar"), &lone).unwrap();

    // An empty layer (as image builders make for metadata-only steps).
    sh(&root, &format!("tar -cf '{}' -T /dev/null", p("empty.tar").display()));
    let empty = std::fs::read(p("empty.tar")).unwrap();
    assert!(empty.len() >= 1024 && empty.iter().all(|&b| b == 0));
    let s = round_trip(&store, &p("empty.tar"));
    assert_eq!((s["entries"].as_u64(), s["files"].as_u64(), s["chunks"].as_u64()), (Some(0), Some(0), Some(0)));

    let entries = round_trip(&store, &p("b20.tar"))["entries"].clone();
    assert_eq!(entries, 2);
    for name in ["b1.tar", "b64.tar", "junk.tar", "cat.tar", "lone.tar"] {
        let s = round_trip(&store, &p(name));
        let want = if name == "b64.tar" { 1 } else { 2 };
        assert_eq!(s["entries"], want, "{name}: bytes after the end marker are not entries: {s}");
    }
    assert_verify_clean(&store);
}
