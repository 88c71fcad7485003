//! Possession maps, per-client diffs and dedup tarballs, end to end: a hub
//! store keeps what each client holds (`client`), `diff` says what a layer
//! would cost one client, `pack` writes the dedup tarball for it, and `apply`
//! on a separate edge store rebuilds the layer byte for byte, or refuses
//! without recording anything: exit 3 when it lacks referenced data (listing
//! exactly what), exit 1 for a damaged or hostile tarball.
//!
//! Layers are made here with GNU tar; hostile names and hostile tarballs
//! are in `dedup_hostile.rs`.

use crate::common::{cs, cs_json, cs_ok, pseudo_random as noise, sha256_hex};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---------------------------------------------------------------- fixtures

/// A FileId / ChunkId as the command prints it.
pub(crate) fn blake(data: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(data).to_hex())
}

pub(crate) fn diff_id(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Run a program in `dir`, require success, return stdout.
pub(crate) fn run(dir: &Path, prog: &str, args: &[&str]) -> Vec<u8> {
    let o = Command::new(prog).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("running {prog}: {e}"));
    assert!(o.status.success(), "{prog} {args:?} failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// Write `files` (path, content) and `links` (path, target) under a fresh
/// `root` and tar it with GNU tar, deterministically; returns the tar.
fn gnu_tar(root: &Path, files: &[(&str, &[u8])], links: &[(&str, &str)], out: &Path) -> Vec<u8> {
    std::fs::create_dir_all(root).unwrap();
    for (p, data) in files {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    for (p, target) in links {
        std::os::unix::fs::symlink(target, root.join(p)).unwrap();
    }
    run(
        root,
        "tar",
        &[
            "--sort=name",
            "--format=gnu",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@1700000000",
            "--mode=u+rw,go+r",
            "-cf",
            out.to_str().unwrap(),
            ".",
        ],
    );
    std::fs::read(out).unwrap()
}

pub(crate) const BIG: usize = 1_600_000;
/// Where the updated layer's big file differs from the base's (4 bytes).
const BIG_EDIT: usize = 800_000;

/// File contents of the two layers.
pub(crate) struct Contents {
    pub(crate) os_v1: Vec<u8>,
    pub(crate) os_v2: Vec<u8>,
    pub(crate) tool: Vec<u8>,
    pub(crate) libx: Vec<u8>,
    pub(crate) readme: Vec<u8>,
    pub(crate) big_v1: Vec<u8>,
    pub(crate) big_v2: Vec<u8>,
    pub(crate) new: Vec<u8>,
}

impl Contents {
    pub(crate) fn new() -> Self {
        let big_v1 = noise(BIG, 5);
        let mut big_v2 = big_v1.clone();
        for b in &mut big_v2[BIG_EDIT..BIG_EDIT + 4] {
            *b ^= 0x5a;
        }
        Contents {
            os_v1: noise(300, 1),
            os_v2: noise(310, 11),
            tool: noise(40_000, 2),
            libx: noise(150_000, 3),
            readme: noise(2_000, 4),
            big_v1,
            big_v2,
            new: noise(7_000, 12),
        }
    }
}

pub(crate) struct Layer {
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    pub(crate) id: String,
}

impl Layer {
    /// A unique prefix of the digest, as a user would type it.
    pub(crate) fn prefix(&self) -> &str {
        &self.id["sha256:".len().."sha256:".len() + 12]
    }
}

/// A hub holding the base layer A and the updated layer B, and an empty edge.
pub(crate) struct Fx {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) hub: PathBuf,
    pub(crate) edge: PathBuf,
    pub(crate) c: Contents,
    pub(crate) a: Layer,
    pub(crate) b: Layer,
}

/// Layer A (base): 7 content items, 6 distinct (two copies of the readme),
/// one of them empty. Layer B (update) shares tool, libx, readme (twice) and
/// the empty file, has a new os-release and a new file, and a copy of the big
/// file with four bytes changed in the middle, under another name (so `pack`
/// finds no delta base for it and sends the changed chunks).
pub(crate) fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let c = Contents::new();
    let d = dir.path();
    let a_files: Vec<(&str, &[u8])> = vec![
        ("etc/os-release", &c.os_v1),
        ("bin/tool", &c.tool),
        ("lib/libx.so", &c.libx),
        ("share/doc/readme", &c.readme),
        ("share/doc/readme-copy", &c.readme),
        ("empty", b""),
        ("big.bin", &c.big_v1),
    ];
    let b_files: Vec<(&str, &[u8])> = vec![
        ("etc/os-release", &c.os_v2),
        ("bin/tool", &c.tool),
        ("lib/libx.so", &c.libx),
        ("share/doc/readme", &c.readme),
        ("share/doc/readme-copy", &c.readme),
        ("empty", b""),
        ("big-v2.bin", &c.big_v2),
        ("opt/new.dat", &c.new),
    ];
    let links = [("link", "bin/tool")];
    let layer = |name: &str, files: &[(&str, &[u8])]| {
        let path = d.join(format!("{name}.tar"));
        let bytes = gnu_tar(&d.join(format!("tree-{name}")), files, &links, &path);
        Layer { id: diff_id(&bytes), path, bytes }
    };
    let a = layer("a", &a_files);
    let b = layer("b", &b_files);
    let hub = d.join("hub");
    let edge = d.join("edge");
    let v = cs_json(&hub, &["ingest", a.path.to_str().unwrap(), b.path.to_str().unwrap()]);
    assert_eq!(v[0]["id"], a.id.as_str(), "{v}");
    assert_eq!(v[1]["id"], b.id.as_str(), "{v}");
    Fx { dir, hub, edge, c, a, b }
}

impl Fx {
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `pack --json --client CLIENT LAYER -o NAME` on the hub; the summary and the file.
    pub(crate) fn pack(&self, client: &str, layer: &str, name: &str, extra: &[&str]) -> (Value, PathBuf) {
        let out = self.path(name);
        let mut args = vec!["pack", "--client", client, layer, "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        (cs_json(&self.hub, &args), out)
    }
}

pub(crate) fn diff_summary(hub: &Path, client: &str, layer: &str) -> Value {
    let v = cs_json(hub, &["diff", "--client", client, layer]);
    v["summary"].clone()
}

pub(crate) fn client_show(hub: &Path, client: &str) -> Value {
    cs_json(hub, &["client", "show", client])
}

pub(crate) fn layer_ids(store: &Path) -> Vec<String> {
    let v = cs_json(store, &["ls"]);
    v.as_array().expect("ls --json is an array").iter().map(|l| l["id"].as_str().unwrap().to_string()).collect()
}

pub(crate) fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.map(|e| e.unwrap().path()).map(|p| if p.is_dir() { count_files(&p) } else { 1 }).sum()
}

pub(crate) fn verify_clean(store: &Path, full: bool) {
    let args: &[&str] = if full { &["verify", "--full"] } else { &["verify"] };
    let r = cs_json(store, args);
    assert_eq!(r["damaged"], json!([]), "{args:?}: {r}");
}

/// The layer's bytes as the store exports them.
pub(crate) fn export(store: &Path, id: &str) -> Vec<u8> {
    let o = cs(store, &["export", id, "-o", "-"]);
    assert!(o.status.success(), "export {id}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `apply --json FILE` on `store`, run from `cwd`.
pub(crate) fn apply_in(cwd: &Path, store: &Path, file: &Path) -> Output {
    Command::new(crate::common::bin())
        .arg("--store")
        .arg(store)
        .args(["--json", "apply"])
        .arg(file)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Apply and require success; returns the JSON outcome.
pub(crate) fn apply_ok(store: &Path, file: &Path) -> Value {
    let o = apply_in(store.parent().unwrap(), store, file);
    assert!(o.status.success(), "apply {} failed ({}): {}", file.display(), o.status, stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["outcome"], "applied", "{v}");
    v
}

/// Apply expecting exit 3; returns the JSON outcome and stderr.
pub(crate) fn apply_missing(store: &Path, file: &Path) -> (Value, String) {
    let o = apply_in(store.parent().unwrap(), store, file);
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(3), "apply {}: want exit 3; stderr:\n{err}", file.display());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["outcome"], "missing", "{v}");
    (v, err)
}

/// One item of apply's `missing` list: kind, id, size.
pub(crate) type Missing = (String, String, u64);

/// The `missing` list, requiring each item once.
fn missing_set(v: &Value) -> BTreeSet<Missing> {
    let list = v["missing"].as_array().expect("missing list");
    let set: BTreeSet<_> = list
        .iter()
        .map(|m| {
            (
                m["kind"].as_str().unwrap().to_string(),
                m["id"].as_str().unwrap().to_string(),
                m["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(set.len(), list.len(), "an item is listed twice: {v}");
    set
}

// ------------------------------------------- the dedup tarball, taken apart

/// One entry of a dedup tarball's (uncompressed) tar stream.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) data: Vec<u8>,
}

pub(crate) fn cstr(b: &[u8]) -> String {
    String::from_utf8(b.iter().take_while(|&&c| c != 0).copied().collect()).unwrap()
}

/// Decompress with the `zstd` command (a reader other than ours).
pub(crate) fn zstd_d(file: &Path) -> Vec<u8> {
    run(file.parent().unwrap(), "zstd", &["-d", "-q", "-c", file.to_str().unwrap()])
}

/// Parse a dedup tarball's tar stream (ustar, regular files only).
pub(crate) fn e(name: impl Into<String>, data: impl Into<Vec<u8>>) -> Entry {
    Entry { name: name.into(), data: data.into() }
}

pub(crate) fn untar(raw: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let h = &raw[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            assert_eq!(raw.len(), off + 1024, "end marker then nothing");
            return out;
        }
        assert_eq!(h[156], b'0', "regular entries only");
        let (name, prefix) = (cstr(&h[..100]), cstr(&h[345..500]));
        let name = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let size = usize::from_str_radix(cstr(&h[124..136]).trim(), 8).unwrap();
        out.push(e(name, &raw[off + 512..off + 512 + size]));
        off += 512 + size.div_ceil(512) * 512;
    }
}

/// One row of a `chunks/` entry's table.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) len: u32,
    pub(crate) carried: bool,
}

/// A `chunks/` entry: its table and the carried bytes after it.
pub(crate) fn parse_table(data: &[u8]) -> (Vec<Row>, &[u8]) {
    let n = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
    let rows = data[4..4 + 37 * n]
        .chunks_exact(37)
        .map(|r| Row {
            id: format!("blake3:{}", hex::encode(&r[..32])),
            len: u32::from_le_bytes(r[32..36].try_into().unwrap()),
            carried: match r[36] {
                0 => false,
                1 => true,
                x => panic!("carried flag {x}"),
            },
        })
        .collect();
    (rows, &data[4 + 37 * n..])
}

/// Check a chunk table against the file it describes (row ids are the hashes
/// of consecutive slices, carried bytes are those slices); returns the rows.
fn check_table(data: &[u8], file: &[u8]) -> Vec<Row> {
    let (rows, mut carried) = parse_table(data);
    let mut off = 0;
    for r in &rows {
        let slice = &file[off..off + r.len as usize];
        assert_eq!(r.id, blake(slice), "row at offset {off}");
        if r.carried {
            assert!(carried[..r.len as usize] == *slice, "carried chunk at {off} is not the file's bytes");
            carried = &carried[r.len as usize..];
        }
        off += r.len as usize;
    }
    assert_eq!(off, file.len(), "table covers the file");
    assert!(carried.is_empty(), "bytes after the carried chunks");
    rows
}

// -------------------------------------------------------------------- diff

#[test]
fn diff_counts_and_tar_bytes() {
    let fx = fixture();
    let hub = &fx.hub;
    let c = &fx.c;
    cs_ok(hub, &["client", "add", "bare"]);
    cs_ok(hub, &["client", "add", "edge"]);
    cs_ok(hub, &["client", "hold", "edge", fx.a.prefix()]);

    // Nothing held: every item missing, every byte carried.
    let a_sizes = [c.os_v1.len(), c.tool.len(), c.libx.len(), c.readme.len(), c.readme.len(), 0, BIG];
    let a_bytes: u64 = a_sizes.iter().sum::<usize>() as u64;
    let s = diff_summary(hub, "bare", &fx.a.id);
    let want = json!({
        "files": 7, "held_files": 0, "held_bytes": 0, "partial_files": 0, "partial_held_bytes": 0,
        "partial_carried_bytes": 0, "missing_files": 7, "missing_bytes": a_bytes, "carried_bytes": a_bytes,
        "layer_bytes": fx.a.bytes.len(),
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&s[k], v, "{k}: {s}");
    }

    // Its own layer: everything held.
    let s = diff_summary(hub, "edge", &fx.a.id);
    assert_eq!(
        (s["held_files"].as_u64(), s["held_bytes"].as_u64(), s["carried_bytes"].as_u64()),
        (Some(7), Some(a_bytes), Some(0))
    );

    // B against A: 5 held (tool, libx, readme x2, empty), big partly, os-release and new missing.
    let s = diff_summary(hub, "edge", &fx.b.id);
    let held = (c.tool.len() + c.libx.len() + 2 * c.readme.len()) as u64;
    let missing = (c.os_v2.len() + c.new.len()) as u64;
    assert_eq!(s["files"], 8, "{s}");
    assert_eq!((s["held_files"].as_u64(), s["held_bytes"].as_u64()), (Some(5), Some(held)), "{s}");
    assert_eq!((s["missing_files"].as_u64(), s["missing_bytes"].as_u64()), (Some(2), Some(missing)), "{s}");
    assert_eq!(s["partial_files"], 1, "{s}");
    let (ph, pc) = (s["partial_held_bytes"].as_u64().unwrap(), s["partial_carried_bytes"].as_u64().unwrap());
    assert_eq!(ph + pc, BIG as u64);
    // Four changed bytes cost one chunk or two (64 KiB average, 256 KiB max each).
    assert!((4..=2 * 256 * 1024).contains(&pc), "{s}");
    assert_eq!(s["carried_bytes"].as_u64(), Some(missing + pc));

    // --files: every item with its state, in layer order.
    let v = cs_json(hub, &["diff", "--client", "edge", fx.b.prefix(), "--files"]);
    assert_eq!(v["summary"], s);
    let states: Vec<(String, String)> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_string(), f["state"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(String, String)> = [
        ("./big-v2.bin", "partial"),
        ("./bin/tool", "held"),
        ("./empty", "held"),
        ("./etc/os-release", "missing"),
        ("./lib/libx.so", "held"),
        ("./opt/new.dat", "missing"),
        ("./share/doc/readme", "held"),
        ("./share/doc/readme-copy", "held"),
    ]
    .iter()
    .map(|(p, s)| (p.to_string(), s.to_string()))
    .collect();
    assert_eq!(states, want);
    let big = &v["files"][0];
    assert_eq!(big["id"], blake(&c.big_v2).as_str());
    assert_eq!((big["held_bytes"].as_u64(), big["carried_bytes"].as_u64()), (Some(ph), Some(pc)));
    assert!((1..=2).contains(&big["carried_chunks"].as_u64().unwrap()), "{big}");
    assert_eq!(v["files"][3]["id"], blake(&c.os_v2).as_str());
    // The text listing names every file with its state.
    let text = cs_ok(hub, &["diff", "--client", "edge", fx.b.prefix(), "--files"]);
    for (path, state) in &want {
        assert!(text.lines().any(|l| l.starts_with(state.as_str()) && l.ends_with(path.as_str())), "{path}: {text}");
    }

    // dedup_tar_bytes is exactly the pack's uncompressed stream.
    for (client, layer) in [("bare", &fx.a), ("edge", &fx.a), ("edge", &fx.b), ("bare", &fx.b)] {
        let want = diff_summary(hub, client, &layer.id)["dedup_tar_bytes"].as_u64().unwrap();
        let (p, file) = fx.pack(client, &layer.id, &format!("{client}.dtar"), &[]);
        assert_eq!(p["tar_bytes"].as_u64(), Some(want), "{client}: {p}");
        assert_eq!(p["compressed_bytes"].as_u64(), Some(std::fs::metadata(&file).unwrap().len()));
        assert_eq!(p["layer"], layer.id.as_str());
        assert_eq!(p["client"], client);
        assert_eq!(p["assumed_applied"], false);
        assert_eq!(zstd_d(&file).len() as u64, want, "{client}");
    }
    // A client that does not exist.
    let o = cs(hub, &["diff", "--client", "nobody", &fx.a.id]);
    assert!(o.status.code() == Some(1) && stderr(&o).contains("no client named"), "{}", stderr(&o));
}

// ------------------------------------------------------------- round trips

/// The dedup tarball for B against A carries references, the new files, and
/// only the changed chunk(s) of the big file; GNU tar lists it cleanly.
#[test]
fn round_trip_with_a_partly_held_file() {
    let fx = fixture();
    let (hub, edge, c) = (&fx.hub, &fx.edge, &fx.c);
    cs_ok(hub, &["client", "add", "edge"]);
    cs_ok(hub, &["client", "hold", "edge", fx.a.prefix()]);
    // The edge holds what the hub's map says: layer A.
    assert_eq!(cs_json(edge, &["ingest", fx.a.path.to_str().unwrap()])[0]["id"], fx.a.id.as_str());

    let (p, file) = fx.pack("edge", fx.b.prefix(), "b-for-edge.dtar", &[]);
    let raw = zstd_d(&file);
    assert_eq!(raw.len() as u64, p["tar_bytes"].as_u64().unwrap());
    std::fs::write(fx.path("b.raw"), &raw).unwrap();
    let names = String::from_utf8(run(fx.dir.path(), "tar", &["-tf", "b.raw"])).unwrap();
    let entries = untar(&raw);
    assert_eq!(names.lines().collect::<Vec<_>>(), entries.iter().map(|x| x.name.as_str()).collect::<Vec<_>>());

    let hexid = |d: &[u8]| blake(d)["blake3:".len()..].to_string();
    let kinds: Vec<&str> = entries.iter().map(|x| x.name.split('/').next().unwrap()).collect();
    assert_eq!(kinds[0], "chunkstore-dedup-tar");
    let magic = String::from_utf8(entries[0].data.clone()).unwrap();
    assert!(magic.starts_with("chunkstore-dedup-tar 1\n"), "{magic}");
    assert!(magic.contains(&format!("layer {}\n", fx.b.id)), "{magic}");
    assert!(magic.contains(&format!("tar-size {}\n", fx.b.bytes.len())), "{magic}");
    assert!(magic.contains("client edge\n"), "{magic}");
    let content: Vec<&Entry> =
        entries.iter().filter(|x| x.name != "raw" && !x.name.starts_with("chunkstore")).collect();
    let content_names: Vec<&str> = content.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        content_names,
        vec![
            format!("chunks/{}/{BIG}", hexid(&c.big_v2)),
            format!("ref/{}/{}", hexid(&c.tool), c.tool.len()),
            format!("ref/{}/0", hexid(b"")),
            format!("file/{}", hexid(&c.os_v2)),
            format!("ref/{}/{}", hexid(&c.libx), c.libx.len()),
            format!("file/{}", hexid(&c.new)),
            format!("ref/{}/{}", hexid(&c.readme), c.readme.len()),
            format!("ref/{}/{}", hexid(&c.readme), c.readme.len()),
        ]
    );
    assert!(content.iter().filter(|x| x.name.starts_with("ref/")).all(|x| x.data.is_empty()));
    assert!(content[3].data == c.os_v2 && content[5].data == c.new);
    // The big file's table: only the changed chunk(s) travel, and they hold the edit.
    let rows = check_table(&content[0].data, &c.big_v2);
    let mut off = 0;
    let mut carried_cover = Vec::new();
    for r in &rows {
        if r.carried {
            carried_cover.push(off..off + r.len as usize);
        }
        off += r.len as usize;
    }
    assert!(!carried_cover.is_empty() && carried_cover.len() <= 2, "{rows:?}");
    assert!(carried_cover.iter().any(|r| r.contains(&BIG_EDIT)), "{carried_cover:?}");
    let d = diff_summary(hub, "edge", &fx.b.id);
    let carried: u64 = rows.iter().filter(|r| r.carried).map(|r| r.len as u64).sum();
    assert_eq!(carried, d["partial_carried_bytes"].as_u64().unwrap());
    // The raw entries are the original tar minus file contents.
    let raw_bytes: usize = entries.iter().filter(|x| x.name == "raw").map(|x| x.data.len()).sum();
    let content_bytes = BIG + c.os_v2.len() + c.tool.len() + c.libx.len() + 2 * c.readme.len() + c.new.len();
    assert_eq!(raw_bytes + content_bytes, fx.b.bytes.len());

    // Apply on the edge: recorded, byte for byte, verify clean.
    let v = apply_ok(edge, &file);
    assert_eq!(v["id"], fx.b.id.as_str());
    assert_eq!(v["already_present"], false);
    assert_eq!(v["tar_size"], fx.b.bytes.len());
    assert_eq!(v["new_files"], 3, "os-release v2, new, big v2: {v}");
    assert_eq!(v["new_chunk_bytes"].as_u64(), Some(carried + (c.os_v2.len() + c.new.len()) as u64), "{v}");
    assert_eq!(sha256_hex(&export(edge, fx.b.prefix())), sha256_hex(&fx.b.bytes));
    let mut ids = layer_ids(edge);
    ids.sort();
    let mut want = vec![fx.a.id.clone(), fx.b.id.clone()];
    want.sort();
    assert_eq!(ids, want);
    verify_clean(edge, true);
    // Applying again is harmless.
    let again = apply_ok(edge, &file);
    assert_eq!(again["already_present"], true, "{again}");
    // The text form names the layer.
    let o = cs(edge, &["apply", file.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(&fx.b.id));
}

/// A client holding nothing gets every file's content.
#[test]
fn round_trip_holding_nothing() {
    let fx = fixture();
    let (hub, edge) = (&fx.hub, &fx.edge);
    cs_ok(hub, &["client", "add", "bare"]);
    // The hub got B as tar+gzip this time: the tarball rebuilds the uncompressed layer.
    let gz = fx.path("b.tar.gz");
    run(fx.dir.path(), "gzip", &["-k", "-n", fx.b.path.to_str().unwrap()]);
    assert!(gz.exists());
    let hub2 = fx.path("hub2");
    let s = cs_json(&hub2, &["ingest", gz.to_str().unwrap()]);
    assert_eq!(s[0]["id"], fx.b.id.as_str());
    cs_ok(&hub2, &["client", "add", "bare"]);

    for (store, layer, name) in [(hub, &fx.a, "a-bare.dtar"), (&hub2, &fx.b, "b-bare.dtar")] {
        let out = fx.path(name);
        let p = cs_json(store, &["pack", "--client", "bare", &layer.id, "-o", out.to_str().unwrap()]);
        let entries = untar(&zstd_d(&out));
        assert!(entries.iter().all(|x| !x.name.starts_with("ref/") && !x.name.starts_with("chunks/")), "{name}");
        let files: Vec<&Entry> = entries.iter().filter(|x| x.name.starts_with("file/")).collect();
        assert_eq!(files.len(), if layer.id == fx.a.id { 7 } else { 8 });
        assert!(files.iter().all(|x| x.name == format!("file/{}", &blake(&x.data)[7..])));
        assert!(p["tar_bytes"].as_u64().unwrap() > layer.bytes.len() as u64);
        let v = apply_ok(edge, &out);
        assert_eq!(v["id"], layer.id.as_str());
        assert_eq!(v["compression"], "none");
        assert_eq!(sha256_hex(&export(edge, &layer.id)), sha256_hex(&layer.bytes));
    }
    verify_clean(edge, true);
    // The client map is unchanged without --assume-applied.
    assert_eq!(client_show(hub, "bare")["layers"], json!([]));
}

#[test]
fn assume_applied_updates_the_map() {
    let fx = fixture();
    let hub = &fx.hub;
    cs_ok(hub, &["client", "add", "edge"]);
    cs_ok(hub, &["client", "hold", "edge", fx.a.prefix()]);
    let before = client_show(hub, "edge");
    let d1 = diff_summary(hub, "edge", &fx.b.id);
    let (p, _) = fx.pack("edge", &fx.b.id, "plain.dtar", &[]);
    assert_eq!(p["assumed_applied"], false);
    assert_eq!(client_show(hub, "edge"), before, "pack without --assume-applied changed the map");
    assert_eq!(diff_summary(hub, "edge", &fx.b.id), d1);

    let (p, _) = fx.pack("edge", &fx.b.id, "assumed.dtar", &["--assume-applied"]);
    assert_eq!(p["assumed_applied"], true);
    let after = client_show(hub, "edge");
    assert_eq!(after["layers"], json!([fx.a.id, fx.b.id]));
    assert_eq!(after["files"], 9);
    let d2 = diff_summary(hub, "edge", &fx.b.id);
    assert_eq!(
        (
            d2["held_files"].as_u64(),
            d2["partial_files"].as_u64(),
            d2["missing_files"].as_u64(),
            d2["carried_bytes"].as_u64()
        ),
        (Some(8), Some(0), Some(0), Some(0)),
        "{d2}"
    );
    // The tarball written with --assume-applied is the same as without.
    assert!(std::fs::read(fx.path("plain.dtar")).unwrap() == std::fs::read(fx.path("assumed.dtar")).unwrap());
}

// --------------------------------------------------------------- stale maps

/// What applying B's tarball (built for a client holding A) needs from the
/// edge's own store: the referenced files, and the big file's chunks that
/// are not carried.
/// A tarball for a client recorded as holding the whole layer, applied to
/// a store that holds nothing: every file is missing. Listed once each
/// (with --json, all of them; on standard error, the first 50 and a count).
#[test]
fn a_long_missing_list_is_cut_on_stderr() {
    let dir = crate::common::tmp();
    let (hub, edge) = (dir.path().join("hub"), dir.path().join("edge"));
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..120 {
        let data = format!("file {i} of many\n").repeat(3);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("f{i:03}"), data.as_bytes()).unwrap();
    }
    let tar = dir.path().join("many.tar");
    std::fs::write(&tar, b.into_inner().unwrap()).unwrap();
    let id = cs_json(&hub, &["ingest", tar.to_str().unwrap()])[0]["id"].as_str().unwrap().to_string();
    cs_ok(&hub, &["client", "add", "full"]);
    cs_ok(&hub, &["client", "hold", "full", &id]);
    let out = dir.path().join("full.dtar");
    cs_json(&hub, &["pack", "--client", "full", &id, "-o", out.to_str().unwrap()]);
    let (v, _) = apply_missing(&edge, &out);
    assert_eq!(missing_set(&v).len(), 120, "{v}");
    let o = cs(&edge, &["apply", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert!(err.contains("needs 120 items this store lacks"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("  missing file ")).count(), 50, "{err}");
    assert!(err.contains("… and 70 more (--json lists them all)"), "{err}");
}

fn needs_of_b(fx: &Fx, file: &Path) -> (BTreeSet<Missing>, BTreeSet<Missing>) {
    let c = &fx.c;
    let files: BTreeSet<_> =
        [&c.tool[..], b"", &c.libx, &c.readme].iter().map(|d| ("file".to_string(), blake(d), d.len() as u64)).collect();
    let entries = untar(&zstd_d(file));
    let table = entries.iter().find(|x| x.name.starts_with("chunks/")).unwrap();
    let chunks = check_table(&table.data, &c.big_v2)
        .into_iter()
        .filter(|r| !r.carried)
        .map(|r| ("chunk".to_string(), r.id, r.len as u64))
        .collect();
    (files, chunks)
}

/// The hub thinks the edge holds A; the edge holds nothing.
#[test]
fn stale_map_edge_lacks_the_layer() {
    let fx = fixture();
    let (hub, edge) = (&fx.hub, &fx.edge);
    cs_ok(hub, &["client", "add", "edge"]);
    cs_ok(hub, &["client", "hold", "edge", fx.a.prefix()]);
    let (_, file) = fx.pack("edge", &fx.b.id, "b.dtar", &[]);
    // A store that exists but holds nothing (its own unrelated layer aside).
    let other = fx.path("other.tar");
    gnu_tar(&fx.path("tree-other"), &[("x", &noise(5000, 99))], &[], &other);
    let other_id = cs_json(edge, &["ingest", other.to_str().unwrap()])[0]["id"].as_str().unwrap().to_string();
    let packs = count_files(&edge.join("packs"));

    let (v, err) = apply_missing(edge, &file);
    assert_eq!(v["layer"], fx.b.id.as_str());
    let (files, chunks) = needs_of_b(&fx, &file);
    let want: BTreeSet<_> = files.union(&chunks).cloned().collect();
    assert_eq!(missing_set(&v), want);
    // The text goes to stderr, one line per missing item.
    assert!(err.contains(&format!("needs {} items this store lacks; nothing was recorded", want.len())), "{err}");
    for (kind, id, size) in &want {
        assert!(err.contains(&format!("missing {kind} {id} ({size} bytes)")), "{kind} {id}: {err}");
    }
    // Without --json the exit code is the same and stdout is empty.
    let o = cs(edge, &["apply", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    assert!(o.stdout.is_empty());
    assert_eq!(layer_ids(edge), vec![other_id.clone()]);
    assert_eq!(count_files(&edge.join("packs")), packs, "a refused apply left packs");
    assert_eq!(count_files(&edge.join("tmp")), 0);
    verify_clean(edge, true);

    // Supply the missing layer; the same tarball now applies.
    cs_ok(edge, &["ingest", fx.a.path.to_str().unwrap()]);
    let v = apply_ok(edge, &file);
    assert_eq!(v["id"], fx.b.id.as_str());
    assert_eq!(sha256_hex(&export(edge, &fx.b.id)), sha256_hex(&fx.b.bytes));
    verify_clean(edge, true);
}

/// The hub thinks the edge holds A; the edge holds only some of its files.
#[test]
fn stale_map_edge_holds_part() {
    let fx = fixture();
    let (hub, edge, c) = (&fx.hub, &fx.edge, &fx.c);
    cs_ok(hub, &["client", "add", "edge"]);
    cs_ok(hub, &["client", "hold", "edge", fx.a.prefix()]);
    let (_, file) = fx.pack("edge", &fx.b.id, "b.dtar", &[]);
    // The edge has a layer with tool and readme, and the first half of big v1.
    let part = fx.path("part.tar");
    let half = &c.big_v1[..BIG / 2];
    gnu_tar(&fx.path("tree-part"), &[("t", &c.tool), ("r", &c.readme), ("half", half)], &[], &part);
    let part_id = cs_json(edge, &["ingest", part.to_str().unwrap()])[0]["id"].as_str().unwrap().to_string();

    let (v, _) = apply_missing(edge, &file);
    let (files, chunks) = needs_of_b(&fx, &file);
    let have: BTreeSet<String> = [blake(&c.tool), blake(&c.readme)].into();
    let mut want: BTreeSet<_> = files.into_iter().filter(|(_, id, _)| !have.contains(id)).collect();
    assert_eq!(want.len(), 2, "the empty file and libx");
    // Chunks of the first half of big: all but the last cut the same way in
    // `half` (content-defined), so the edge has them.
    let got = missing_set(&v);
    let missing_chunks: BTreeSet<_> = got.iter().filter(|(k, _, _)| k == "chunk").cloned().collect();
    assert!(missing_chunks.is_subset(&chunks));
    assert!(missing_chunks.len() < chunks.len(), "the edge holds some of big's chunks");
    let mut off = 0;
    let table = untar(&zstd_d(&file)).into_iter().find(|x| x.name.starts_with("chunks/")).unwrap();
    let rows = check_table(&table.data, &c.big_v2);
    let mut held_here = 0;
    for r in &rows {
        let end = off + r.len as usize;
        let is_missing = missing_chunks.iter().any(|(_, id, _)| *id == r.id);
        if r.carried {
            assert!(!is_missing);
        } else if end + 300 * 1024 < BIG / 2 {
            // Well inside the half the edge holds: cut alike, so present.
            assert!(!is_missing, "chunk at {off} is in the edge's half file");
            held_here += 1;
        } else if off > BIG / 2 {
            assert!(is_missing, "chunk at {off} is past the half the edge holds");
        }
        off = end;
    }
    assert!(held_here > 0);
    want.extend(missing_chunks);
    assert_eq!(got, want);
    assert_eq!(layer_ids(edge), vec![part_id]);
    verify_clean(edge, true);

    cs_ok(edge, &["ingest", fx.a.path.to_str().unwrap()]);
    apply_ok(edge, &file);
    assert_eq!(sha256_hex(&export(edge, &fx.b.id)), sha256_hex(&fx.b.bytes));
    verify_clean(edge, true);
}
