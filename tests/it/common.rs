//! Helpers shared by the integration tests.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `chunkstore` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chunkstore"))
}

/// Run `chunkstore --store STORE ARGS...`.
pub fn cs(store: &Path, args: &[&str]) -> Output {
    Command::new(bin()).arg("--store").arg(store).args(args).output().expect("running chunkstore")
}

/// Run and require success; returns stdout.
pub fn cs_ok(store: &Path, args: &[&str]) -> String {
    let o = cs(store, args);
    assert!(o.status.success(), "chunkstore {args:?} failed: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).expect("utf-8 output")
}

/// `--json` output parsed.
pub fn cs_json(store: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&cs_ok(store, &a)).expect("valid JSON")
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Ingest `tar`, export it again, and require identical bytes and a clean verify.
pub fn assert_round_trip(store: &Path, tar: &Path) {
    let s = cs_json(store, &["ingest", tar.to_str().unwrap()]);
    let id = s[0]["id"].as_str().unwrap().to_string();
    let original = std::fs::read(tar).unwrap();
    assert_eq!(id, format!("sha256:{}", sha256_hex(&original)), "diff_id of {}", tar.display());
    let out = tar.with_extension("exported");
    cs_ok(store, &["export", &id, "-o", out.to_str().unwrap()]);
    let back = std::fs::read(&out).unwrap();
    assert!(back == original, "{}: export differs from the original", tar.display());
    cs_ok(store, &["verify"]);
}

// ---- Fixtures and store checks shared by roundtrip, props and bad_input ----

/// A fresh temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

/// Deterministic pseudo-random bytes (xorshift64), so fixtures dedup only where a test means them to.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = vec![0u8; n];
    for c in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    out
}

/// Run a bash script in `dir` (with `set -euo pipefail`) and require success; returns stdout.
pub fn sh(dir: &Path, script: &str) -> String {
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(dir)
        .output()
        .expect("running bash");
    assert!(
        o.status.success(),
        "script failed ({}):\n{script}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run a Python 3 script in `dir` and require success.
pub fn python(dir: &Path, script: &str) {
    let o = Command::new("python3").arg("-c").arg(script).current_dir(dir).output().expect("running python3");
    assert!(o.status.success(), "python failed ({}):\n{}", o.status, String::from_utf8_lossy(&o.stderr));
}

/// `sha256:<hex>` of `data`: the diff_id a tar must get.
pub fn diff_id(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Ingest one file with `--json`; returns its summary object.
pub fn ingest(store: &Path, file: &Path) -> serde_json::Value {
    let v = cs_json(store, &["ingest", file.to_str().expect("utf-8 path")]);
    let arr = v.as_array().expect("ingest --json prints an array");
    assert_eq!(arr.len(), 1, "one summary per input: {v}");
    arr[0].clone()
}

/// `export LAYER -o -`: the layer's bytes from stdout.
pub fn export(store: &Path, layer: &str) -> Vec<u8> {
    let o = cs(store, &["export", layer, "-o", "-"]);
    assert!(o.status.success(), "export {layer} failed: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// The layer ids `ls --json` lists.
pub fn layer_ids(store: &Path) -> Vec<String> {
    let v = cs_json(store, &["ls"]);
    v.as_array()
        .expect("ls --json prints an array")
        .iter()
        .map(|l| l["id"].as_str().expect("layer id").to_string())
        .collect()
}

/// Files under `dir`, recursively (0 if it does not exist).
pub fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.map(|e| e.expect("dir entry").path()).map(|p| if p.is_dir() { count_files(&p) } else { 1 }).sum()
}

/// `verify --json` (also `--full`) must report no damage.
pub fn assert_verify_clean(store: &Path) {
    for args in [&["verify"][..], &["verify", "--full"][..]] {
        let r = cs_json(store, args);
        assert_eq!(r["damaged"], serde_json::json!([]), "{args:?}: {r}");
    }
}

/// Build a small tar (tar crate, GNU headers) whose contents depend on `seed`.
pub fn small_tar(seed: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (i, len) in [0usize, 3, 700, 70_000].into_iter().enumerate() {
        let data = pseudo_random(len, seed * 31 + i as u64);
        let mut h = tar::Header::new_gnu();
        h.set_size(len as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("seed-{seed}/file-{i}"), &data[..]).expect("building a tar");
    }
    b.into_inner().expect("finishing a tar")
}

/// After a rejected input: the store verifies clean and still ingests and
/// exports a new, good layer.
pub fn assert_store_healthy(store: &Path) {
    assert_verify_clean(store);
    let before = layer_ids(store);
    let good = small_tar(1000 + before.len() as u64);
    let dir = tmp();
    let path = dir.path().join("good.tar");
    std::fs::write(&path, &good).unwrap();
    let s = ingest(store, &path);
    assert_eq!(s["id"], diff_id(&good).as_str(), "{s}");
    assert_eq!(s["already_present"], false);
    assert!(export(store, &diff_id(&good)) == good, "good layer did not round-trip after a rejected input");
    assert_eq!(layer_ids(store).len(), before.len() + 1);
}

/// Ingest `input` expecting rejection: exit status 1, every `needle` in the
/// error message, no panic, no stray pack or staging file. Returns the error
/// message (stderr). [`assert_rejected`] also checks that no layer appeared.
pub fn reject(store: &Path, input: &Path, needles: &[&str]) -> String {
    let packs = count_files(&store.join("packs"));
    let o = cs(store, &["ingest", input.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{}: the process panicked:\n{stderr}", input.display());
    assert_eq!(o.status.code(), Some(1), "{}: want exit 1 for a rejected input; stderr:\n{stderr}", input.display());
    assert!(stderr.contains("not ingested"), "{}: {stderr}", input.display());
    for n in needles {
        assert!(stderr.contains(n), "{}: error should mention {n:?}; got:\n{stderr}", input.display());
    }
    assert_eq!(count_files(&store.join("packs")), packs, "{}: a failed ingest left packs behind", input.display());
    assert_eq!(count_files(&store.join("tmp")), 0, "{}: a failed ingest left staging files", input.display());
    stderr
}

/// [`reject`], and `ls` lists the same layers afterwards.
pub fn assert_rejected(store: &Path, input: &Path, needles: &[&str]) -> String {
    let layers = layer_ids(store);
    let stderr = reject(store, input, needles);
    assert_eq!(layer_ids(store), layers, "{}: a rejected input added a layer", input.display());
    stderr
}

/// Recompute a header block's checksum after editing it.
pub fn fix_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h[..512].iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A PAX record `LEN key=value\n`.
pub fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

/// A ustar header block with a valid checksum.
pub fn ustar_header(name: &str, typeflag: u8, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::new(typeflag));
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    *h.as_bytes()
}

/// Zero-pad `v` to a whole number of 512-byte blocks.
pub fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(512) * 512, 0);
}
