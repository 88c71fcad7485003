//! Hostile dedup tarballs: applying one must refuse it (exit 1, or exit 3
//! when data is genuinely missing) with a message naming what is wrong, and
//! record nothing. Made by taking a real tarball apart (see `dedup.rs`).

use crate::common::{cs_ok, pseudo_random as noise, sha256_hex};
use crate::dedup::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

// --------------------------------------------- writing hostile tarballs

fn zstd_c(raw: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(raw, 3).unwrap()
}

/// A ustar header; names over 100 bytes split at a `/`.
fn header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let (prefix, base) = match name.len() {
        0..=100 => ("", name),
        n => {
            let i = (n - 101..n).find(|&i| name.as_bytes()[i] == b'/').expect("a / to split at");
            (&name[..i], &name[i + 1..])
        }
    };
    h[..base.len()].copy_from_slice(base.as_bytes());
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    let field = if size < 1 << 33 { size } else { 0 };
    h[124..136].copy_from_slice(format!("{field:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&c| c as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Give a ustar header another name, fixing its checksum.
fn rename_header(h: &mut [u8], name: &str) {
    h[..100].fill(0);
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h[..512].iter().map(|&c| c as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn put_entry(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(&header(name, data.len() as u64, b'0'));
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A PAX header declaring `size`, then an entry header (content not written).
fn put_pax_size(out: &mut Vec<u8>, name: &str, size: u64) {
    let body = format!(" size={size}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len += 1;
    }
    let rec = format!("{len}{body}");
    put_entry_typed(out, "PaxHeader", rec.as_bytes(), b'x');
    out.extend_from_slice(&header(name, size, b'0'));
}

fn put_entry_typed(out: &mut Vec<u8>, name: &str, data: &[u8], typeflag: u8) {
    out.extend_from_slice(&header(name, data.len() as u64, typeflag));
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Entries back into a tar stream, with the end marker.
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for x in entries {
        put_entry(&mut out, &x.name, &x.data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

// ------------------------------------------------------ layers with hostile names

/// Every file named `evil` (or `passwd`) under `dir`.
fn find_named(dir: &Path, names: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd {
        let p = e.unwrap().path();
        if names.iter().any(|n| p.file_name().is_some_and(|f| f == *n)) {
            out.push(p.clone());
        }
        if p.is_dir() && !p.is_symlink() {
            find_named(&p, names, out);
        }
    }
}

fn assert_no_evil(dir: &Path) {
    let mut found = Vec::new();
    find_named(dir, &["evil", "passwd"], &mut found);
    let cwd = std::env::current_dir().unwrap();
    for p in [cwd.join("evil"), cwd.join("../evil"), cwd.join("../../evil")] {
        if p.exists() {
            found.push(p);
        }
    }
    assert!(found.is_empty(), "files written outside the store: {found:?}");
}

/// A layer whose own names climb out (`../../evil`, `/abs/evil`): its headers
/// travel as data and come back byte for byte; nothing is written anywhere.
#[test]
fn layer_with_escaping_names_round_trips_as_data() {
    let fx = fixture();
    let d = fx.dir.path();
    let work = d.join("work/a/b/c");
    std::fs::create_dir_all(&work).unwrap();
    let evil = d.join("evil-layer.tar");
    let script = format!(
        r#"
import io, tarfile
with tarfile.open({evil:?}, "w", format=tarfile.PAX_FORMAT) as t:
    for name, data in [("../../evil", b"gotcha\n" * 100), ("/abs/evil", b"x" * 3000), ("ok", b"fine")]:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = len(data), 1700000000, 0o755
        t.addfile(ti, io.BytesIO(data))
"#
    );
    run(d, "python3", &["-c", &script]);
    let bytes = std::fs::read(&evil).unwrap();
    let id = diff_id(&bytes);
    cs_ok(&fx.hub, &["ingest", evil.to_str().unwrap()]);
    cs_ok(&fx.hub, &["client", "add", "bare"]);
    let (_, file) = fx.pack("bare", &id, "evil.dtar", &[]);
    let names: Vec<String> = untar(&zstd_d(&file)).into_iter().map(|x| x.name).collect();
    assert!(names.iter().all(|n| !n.contains("..") && !n.starts_with('/')), "{names:?}");
    let o = apply_in(&work, &fx.edge, &file);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256_hex(&export(&fx.edge, &id)), sha256_hex(&bytes));
    verify_clean(&fx.edge, true);
    assert_no_evil(d);
}

// -------------------------------------------------------- hostile tarballs

/// One hostile tarball and what applying it must do.
struct Case {
    name: String,
    bytes: Vec<u8>,
    /// Exit code: 1 (rejected) or 3 (genuinely missing data).
    code: i32,
    /// Each must appear in the error message.
    needles: Vec<String>,
}

fn case(name: &str, bytes: Vec<u8>, needles: &[&str]) -> Case {
    Case { name: name.to_string(), bytes, code: 1, needles: needles.iter().map(|s| s.to_string()).collect() }
}

/// Apply each case to `edge` from a directory inside `root`; check the exit
/// code, the message, that nothing panicked, and that the edge is as before.
fn check_cases(root: &Path, edge: &Path, cases: &[Case]) {
    let cwd = root.join("cwd/a/b/c");
    std::fs::create_dir_all(&cwd).unwrap();
    let layers = layer_ids(edge);
    let packs = count_files(&edge.join("packs"));
    let mut failures = Vec::new();
    for c in cases {
        let file = root.join(format!("{}.dtar", c.name.replace(['/', ' '], "_")));
        std::fs::write(&file, &c.bytes).unwrap();
        let o = apply_in(&cwd, edge, &file);
        let err = stderr(&o);
        let code = o.status.code();
        let mut why = Vec::new();
        if err.contains("panicked") || code.is_none() {
            why.push("crashed".to_string());
        }
        if code != Some(c.code) {
            why.push(format!("exit {code:?}, want {}", c.code));
        }
        if c.code == 1 {
            for n in std::iter::once("not applied").chain(c.needles.iter().map(String::as_str)) {
                if !err.contains(n) {
                    why.push(format!("message lacks {n:?}"));
                }
            }
            // --json: an error object on stdout.
            match serde_json::from_slice::<Value>(&o.stdout) {
                Ok(v) if v["error"]["message"].is_string() => {}
                _ => why.push(format!("stdout is not an error object: {}", String::from_utf8_lossy(&o.stdout))),
            }
        }
        if layer_ids(edge) != layers {
            why.push("a layer was recorded".into());
        }
        if count_files(&edge.join("packs")) != packs || count_files(&edge.join("tmp")) != 0 {
            why.push("packs or staging files left behind".into());
        }
        if !why.is_empty() {
            failures.push(format!("{}: {}\n    stderr: {}", c.name, why.join("; "), err.trim()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    verify_clean(edge, true);
    assert_no_evil(root);
}

/// Hub with A and B, client `edge` holding A, the edge store holding A; the
/// good tarball of B for it, and its entries.
fn hostile_setup() -> (Fx, PathBuf, Vec<Entry>) {
    let fx = fixture();
    cs_ok(&fx.hub, &["client", "add", "edge"]);
    cs_ok(&fx.hub, &["client", "hold", "edge", fx.a.prefix()]);
    cs_ok(&fx.edge, &["ingest", fx.a.path.to_str().unwrap()]);
    let (_, file) = fx.pack("edge", &fx.b.id, "good.dtar", &[]);
    let entries = untar(&zstd_d(&file));
    (fx, file, entries)
}

fn index_of(entries: &[Entry], prefix: &str) -> usize {
    entries.iter().position(|x| x.name.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} entry"))
}

/// Not zstd, garbage, truncation, structure and magic-record damage.
#[test]
fn hostile_streams_and_structure() {
    let (fx, good, entries) = hostile_setup();
    let good_bytes = std::fs::read(&good).unwrap();
    let raw = tar_of(&entries);
    assert!(raw == zstd_d(&good), "the test's tar writer reproduces pack's stream");
    let z = |raw: Vec<u8>| zstd_c(&raw);
    let with = |f: &dyn Fn(&mut Vec<Entry>)| {
        let mut v = entries.clone();
        f(&mut v);
        z(tar_of(&v))
    };
    let magic = entries[0].data.clone();
    let magic_with = |from: &str, to: &str| {
        let text = String::from_utf8(magic.clone()).unwrap();
        assert!(text.contains(from), "{text}");
        let text = text.replacen(from, to, 1);
        with(&move |v: &mut Vec<Entry>| v[0].data = text.clone().into_bytes())
    };
    let garbage = zstd_c(&noise(100_000, 7));
    let mut cases = vec![
        case("not zstd: the plain tar", raw.clone(), &["not zstd-compressed"]),
        case("not zstd: empty", Vec::new(), &["not zstd-compressed"]),
        case("not zstd: text", b"hello, world\n".to_vec(), &["not zstd-compressed"]),
        case("zstd of garbage", garbage, &["not a tar archive"]),
        case("zstd of nothing", zstd_c(b""), &["not a tar archive"]),
        case("zstd of a layer tar", zstd_c(&fx.a.bytes), &["dedup tarball"]),
        case("zstd then garbage", [&good_bytes[..], &noise(1000, 8)].concat(), &["zstd"]),
    ];
    for cut in [4, 5, 100, good_bytes.len() / 2, good_bytes.len() - 1] {
        cases.push(case(&format!("compressed stream cut at {cut}"), good_bytes[..cut].to_vec(), &["dedup tarball"]));
    }
    // Cuts of the tar stream, compressed properly: inside the magic record,
    // at an entry boundary (no end marker), in the chunk table, in a carried
    // chunk, in a file's content, in the end marker.
    let table_at = {
        let i = index_of(&entries, "chunks/");
        tar_of(&entries[..i]).len() - 1024 + 512
    };
    let carried_at = table_at + 4 + 37 * parse_table(&entries[index_of(&entries, "chunks/")].data).0.len();
    let file_at = {
        let i = index_of(&entries, "file/");
        tar_of(&entries[..i]).len() - 1024 + 512
    };
    for (what, cut) in [
        ("in the magic record", 600),
        ("after the magic record", 1024),
        ("in a header", 1024 + 100),
        ("in the chunk table", table_at + 40),
        ("in a carried chunk", carried_at + 1000),
        ("in a file's content", file_at + 10),
        ("in the end marker", raw.len() - 600),
        ("before the end marker", raw.len() - 1024),
    ] {
        cases.push(case(&format!("tar cut {what}"), z(raw[..cut].to_vec()), &["truncated"]));
    }
    let mut bad_sum = raw.clone();
    bad_sum[1024 + 148] ^= 1;
    cases.extend([
        case("bad header checksum", z(bad_sum), &["checksum"]),
        case(
            "wrong magic version",
            magic_with("chunkstore-dedup-tar 1", "chunkstore-dedup-tar 2"),
            &["unsupported version"],
        ),
        case("no magic version", magic_with("chunkstore-dedup-tar 1", "chunkstore-dedup-tar"), &["magic"]),
        case("bad magic line", magic_with("chunkstore-dedup-tar 1", "chunkstore-dedup-tarball 1"), &["magic"]),
        case("magic without layer", magic_with("layer ", "flavour "), &["names no layer"]),
        case("magic with bad layer", magic_with("layer sha256:", "layer sha256:zz"), &["not a sha256 digest"]),
        case("magic naming another layer", magic_with(&fx.b.id, &fx.a.id), &[&fx.a.id]),
        case("magic with bad tar-size", magic_with("tar-size ", "tar-size x"), &["tar-size"]),
        case(
            "magic with tar-size too small",
            magic_with(&format!("tar-size {}", fx.b.bytes.len()), "tar-size 1000"),
            &["1000 bytes"],
        ),
        case(
            "magic with tar-size too large",
            magic_with(&format!("tar-size {}", fx.b.bytes.len()), &format!("tar-size {}", fx.b.bytes.len() + 512)),
            &["rebuilds"],
        ),
        case("magic with another chunker", magic_with("chunker ", "chunker 1"), &["chunker"]),
        case("magic not text", with(&|v| v[0].data = vec![0xff; 40]), &["magic"]),
        case(
            "magic record over 64 KiB",
            with(&|v| v[0].data.extend(std::iter::repeat_n(b'\n', 70_000))),
            &["magic record"],
        ),
        case("magic not first", with(&|v| v.swap(0, 1)), &["does not begin with its magic record"]),
        case("no magic", with(&|v| drop(v.remove(0))), &["does not begin with its magic record"]),
        case("a second magic record", with(&|v| v.insert(2, v[0].clone())), &["second magic record"]),
        case("only the magic record", z(tar_of(&entries[..1])), &["rebuilds 0 bytes"]),
        case(
            "raw shortened",
            with(&|v| {
                v[1].data.pop();
            }),
            &[],
        ),
        case("entries out of order", with(&|v| v.swap(2, 3)), &[]),
        case("an entry dropped", with(&|v| drop(v.remove(3))), &[]),
    ]);
    // Entries of other types in the dedup tar.
    for (what, flag) in [("symlink", b'2'), ("directory", b'5')] {
        let mut t = Vec::new();
        put_entry(&mut t, &entries[0].name, &entries[0].data);
        put_entry_typed(&mut t, "raw", b"", flag);
        t.extend_from_slice(&raw[tar_of(&entries[..1]).len() - 1024..]);
        cases.push(case(&format!("a {what} entry"), z(t), &["unexpected"]));
    }
    {
        let mut t = Vec::new();
        put_entry(&mut t, &entries[0].name, &entries[0].data);
        put_entry_typed(&mut t, "raw", b"dumpdir\0", b'D');
        t.extend_from_slice(&raw[tar_of(&entries[..1]).len() - 1024..]);
        cases.push(case("a GNU dumpdir entry", z(t), &["unexpected"]));
    }
    check_cases(fx.dir.path(), &fx.edge, &cases);
    // The edge still applies the good tarball.
    apply_ok(&fx.edge, &good);
    assert_eq!(sha256_hex(&export(&fx.edge, &fx.b.id)), sha256_hex(&fx.b.bytes));
}

/// Forged references, content that does not match its id, chunk tables that
/// lie, huge declared sizes, unknown and escaping entry names.
#[test]
fn hostile_entries() {
    let (fx, good, entries) = hostile_setup();
    let c = &fx.c;
    let z = |v: &[Entry]| zstd_c(&tar_of(v));
    let with = |f: &dyn Fn(&mut Vec<Entry>)| {
        let mut v = entries.clone();
        f(&mut v);
        z(&v)
    };
    let hexid = |d: &[u8]| blake(d)[7..].to_string();
    let (tool, libx) = (hexid(&c.tool), hexid(&c.libx));
    let ref_tool = index_of(&entries, &format!("ref/{tool}/"));
    let file_i = index_of(&entries, "file/");
    let chunks_i = index_of(&entries, "chunks/");
    let chunks_name = entries[chunks_i].name.clone();
    let table = entries[chunks_i].data.clone();
    let (rows, _) = parse_table(&table);
    let first_carried = rows.iter().position(|r| r.carried).unwrap();
    let row_at = |i: usize| 4 + 37 * i;
    let carried_at = 4 + 37 * rows.len();
    let forged = "f".repeat(64);
    let set_table = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut t = table.clone();
        f(&mut t);
        with(&move |v: &mut Vec<Entry>| v[chunks_i].data = t.clone())
    };
    let rename = |i: usize, name: String| with(&move |v: &mut Vec<Entry>| v[i].name = name.clone());

    let mut cases = vec![
        // References.
        case("ref with the wrong size", rename(ref_tool, format!("ref/{tool}/{}", c.tool.len() + 1)), &["says"]),
        case("ref with size u64::MAX", rename(ref_tool, format!("ref/{tool}/18446744073709551615")), &["says"]),
        case("ref with size over u64", rename(ref_tool, format!("ref/{tool}/18446744073709551616")), &["bad size"]),
        case("ref to another held file", rename(ref_tool, format!("ref/{libx}/{}", c.libx.len())), &[]),
        case("ref carrying content", with(&|v| v[ref_tool].data = c.tool.clone()), &["carries content"]),
        // Whole files.
        case("file content flipped", with(&|v| v[file_i].data[0] ^= 1), &["does not match its id"]),
        case(
            "file content one byte short",
            with(&|v| {
                v[file_i].data.pop();
            }),
            &[],
        ),
        case("file content one byte long", with(&|v| v[file_i].data.push(0)), &[]),
        case("file named by another id", rename(file_i, format!("file/{forged}")), &["does not match its id"]),
        // Chunk tables.
        case("carried chunk flipped", set_table(&|t| t[carried_at] ^= 1), &["does not match its id"]),
        case(
            "held chunk id forged as carried",
            set_table(&|t| t[row_at(first_carried)] ^= 1),
            &["does not match its id"],
        ),
        case("table size in name +1", rename(chunks_i, format!("{}1", chunks_name)), &["does not add up"]),
        case(
            "table size in name u64::MAX",
            rename(chunks_i, format!("chunks/{}/18446744073709551615", hexid(&c.big_v2))),
            &["does not add up"],
        ),
        case("table row length +1", set_table(&|t| t[row_at(0) + 32] ^= 1), &[]),
        case("table row count +1", set_table(&|t| t[0] += 1), &[]),
        case(
            "table row count u32::MAX",
            set_table(&|t| t[..4].copy_from_slice(&u32::MAX.to_le_bytes())),
            &["chunk table"],
        ),
        case("table row count 0", set_table(&|t| t[..4].copy_from_slice(&0u32.to_le_bytes())), &["does not add up"]),
        case(
            "table row over 16 MiB",
            set_table(&|t| t[row_at(0) + 32..row_at(0) + 36].copy_from_slice(&(17u32 << 20).to_le_bytes())),
            &["out of range"],
        ),
        case("table row of 0 bytes", set_table(&|t| t[row_at(0) + 32..row_at(0) + 36].fill(0)), &["out of range"]),
        case("table carried flag 2", set_table(&|t| t[row_at(0) + 36] = 2), &["carried flag"]),
        case("table flag flipped to carried", set_table(&|t| t[row_at(0) + 36] = 1), &[]),
        case("table entry with no table", with(&|v| v[chunks_i].data.clear()), &["chunk table"]),
        case("table entry of 3 bytes", with(&|v| v[chunks_i].data.truncate(3)), &["chunk table"]),
        case(
            "table named for another file",
            rename(chunks_i, format!("chunks/{forged}/{BIG}")),
            &["does not match its id"],
        ),
    ];
    // Huge declared sizes through PAX headers: chunk tables claiming 4 billion
    // or a million rows and a terabyte, a file claiming 2^64-1 bytes, a raw
    // entry and a reference claiming a terabyte.
    for (what, name, size, body) in [
        ("huge table", chunks_name.clone(), 1u64 << 40, [u32::MAX.to_le_bytes().to_vec(), vec![0u8; 8192]].concat()),
        (
            "big table, short input",
            chunks_name.clone(),
            1 << 40,
            [(1u32 << 20).to_le_bytes().to_vec(), vec![0u8; 8192]].concat(),
        ),
        ("huge file", format!("file/{}", hexid(&c.os_v2)), u64::MAX, c.os_v2.clone()),
        ("huge raw", "raw".to_string(), 1 << 40, vec![0u8; 4096]),
        ("huge ref", format!("ref/{tool}/{}", c.tool.len()), 1 << 40, vec![]),
    ] {
        let mut t = Vec::new();
        for x in &entries[..2] {
            put_entry(&mut t, &x.name, &x.data);
        }
        put_pax_size(&mut t, &name, size);
        t.extend_from_slice(&body);
        cases.push(case(&format!("PAX {what}"), zstd_c(&t), &[]));
    }
    // Names: unknown, malformed, escaping.
    let bad_names = [
        "foo".to_string(),
        "".to_string(),
        "raw/x".to_string(),
        "./raw".to_string(),
        format!("ref/{tool}"),
        format!("ref/{tool}/"),
        format!("ref/{tool}/12x"),
        format!("ref/{tool}/{}/x", c.tool.len()),
        format!("ref/{}/{}", tool.to_uppercase(), c.tool.len()),
        format!("ref/{}/{}", &tool[..63], c.tool.len()),
        format!("ref/{tool}0/{}", c.tool.len()),
        format!("ref/sha256:{tool}/{}", c.tool.len()),
        format!("file/{tool}/1"),
        format!("chunks/{tool}"),
        format!("delta/{tool}"),
        "../../etc/passwd".to_string(),
        "/abs".to_string(),
        format!("../ref/{tool}/{}", c.tool.len()),
        format!("ref/../ref/{tool}/{}", c.tool.len()),
    ];
    for n in &bad_names {
        let n2 = n.clone();
        let bytes = with(&move |v: &mut Vec<Entry>| v[ref_tool].name = n2.clone());
        cases.push(case(&format!("entry named {n:?}"), bytes, &["dedup tarball"]));
    }
    // A raw entry carrying an original header that climbs out: data only.
    let mut evil = Vec::new();
    put_entry(&mut evil, "../../evil", b"gotcha\n");
    cases.push(case("raw header named ../../evil", with(&move |v| v[1].data = evil.clone()), &[]));
    // The header of the file before `file/` renamed in place: a valid tar, another layer.
    cases.push(case(
        "raw header renamed ../../evil",
        with(&move |v| {
            let raw = &mut v[file_i - 1].data;
            let at = raw.len() - 512;
            assert!(cstr(&raw[at..at + 100]).ends_with("os-release"));
            rename_header(&mut raw[at..], "../../evil");
        }),
        &["expected"],
    ));
    check_cases(fx.dir.path(), &fx.edge, &cases);

    // A forged reference to a file the edge lacks is genuinely missing: exit 3, listing exactly it.
    let forged_ref = format!("ref/{forged}/{}", c.tool.len());
    let bytes = rename(ref_tool, forged_ref);
    let file = fx.path("forged-ref.dtar");
    std::fs::write(&file, &bytes).unwrap();
    let (v, err) = apply_missing(&fx.edge, &file);
    assert_eq!(v["layer"], fx.b.id.as_str());
    assert_eq!(
        v["missing"],
        json!([{"kind": "file", "id": format!("blake3:{forged}"), "size": c.tool.len()}]),
        "{err}"
    );
    // And a forged non-carried chunk row.
    let forged_chunk = set_table(&|t| t[row_at(0)..row_at(0) + 32].fill(0xee));
    std::fs::write(&file, &forged_chunk).unwrap();
    let (v, _) = apply_missing(&fx.edge, &file);
    assert_eq!(
        v["missing"],
        json!([{"kind": "chunk", "id": format!("blake3:{}", "ee".repeat(32)), "size": rows[0].len}])
    );
    check_cases(fx.dir.path(), &fx.edge, &[]);

    // The edge still applies the good tarball.
    apply_ok(&fx.edge, &good);
    assert_eq!(sha256_hex(&export(&fx.edge, &fx.b.id)), sha256_hex(&fx.b.bytes));
}

/// Missing data and damage in one tarball: the damage wins (exit 1), since
/// the list of what is missing could not be complete.
#[test]
fn missing_refs_then_damage_is_an_error() {
    let (fx, _, entries) = hostile_setup();
    let bare = fx.path("bare-edge");
    cs_ok(&bare, &["ls"]);
    let raw = tar_of(&entries);
    let last_ref = entries.iter().rposition(|x| x.name.starts_with("ref/")).unwrap();
    let cases = vec![
        case(
            "missing refs, then truncated",
            zstd_c(&raw[..tar_of(&entries[..last_ref]).len() - 1024 + 700]),
            &["truncated"],
        ),
        case(
            "missing refs, then an unknown entry",
            {
                let mut v = entries.clone();
                v[last_ref].name = "bogus".into();
                zstd_c(&tar_of(&v))
            },
            &["unknown entry"],
        ),
        case("missing refs, then no end marker", zstd_c(&raw[..raw.len() - 1024]), &["truncated"]),
    ];
    check_cases(fx.dir.path(), &bare, &cases);

    // Carried content after the first missing reference is checked too.
    let first_ref = entries.iter().position(|x| x.name.starts_with("ref/")).unwrap();
    let mut flipped = Vec::new();
    for prefix in ["chunks/", "file/"] {
        let Some(i) = entries.iter().skip(first_ref).position(|x| x.name.starts_with(prefix) && !x.data.is_empty())
        else {
            continue;
        };
        let mut v = entries.clone();
        *v[first_ref + i].data.last_mut().unwrap() ^= 1;
        flipped.push(case(
            &format!("missing refs, then a damaged {prefix} entry"),
            zstd_c(&tar_of(&v)),
            &["does not match"],
        ));
    }
    assert!(!flipped.is_empty(), "no carried content after the first reference");
    check_cases(fx.dir.path(), &bare, &flipped);
}
