//! Crash safety. An ingest killed at any instant (a failpoint that aborts, or
//! SIGKILL at delays spread over a run) must leave a store that opens,
//! verifies clean (also `--full`), lists only layers whose ingest committed,
//! and reclaims the packs of the ingest that never committed on its next open.
//! Backend faults (through the library) fail an ingest without recording
//! anything and fail an export rather than hand back wrong bytes.

use crate::common::{bin, cs, cs_json, cs_ok};
use chunkstore::{
    Backend, ErrorKind, FaultyBackend, IngestOptions, LayerId, LocalBackend, MemoryBackend, Store, StoreOptions,
    VerifyOptions,
};
use sha2::{Digest, Sha256};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;

/// Deterministic incompressible bytes (xorshift64*).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Compressible, mostly repetitive text, distinct per seed.
fn text(n: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 80);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(format!("{seed:>6} {i:>10} the quick brown fox jumps over the lazy dog\n").as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

/// One file of a generated layer: its size and whether it is random.
type Spec = (usize, bool);

/// A tar of generated files, in memory.
fn tar_of(seed: u64, files: &[Spec]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (i, &(size, random)) in files.iter().enumerate() {
        let data = if random { noise(size, seed * 1000 + i as u64) } else { text(size, seed * 1000 + i as u64) };
        let mut h = tar::Header::new_ustar();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        let name = format!("layer{seed}/f{i}.{}", if random { "bin" } else { "txt" });
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// A generated layer written to a file.
struct Layer {
    path: PathBuf,
    bytes: Vec<u8>,
    /// `sha256:<hex>`, the diff_id.
    id: String,
}

impl Layer {
    fn new(dir: &Path, name: &str, seed: u64, files: &[Spec]) -> Layer {
        let bytes = tar_of(seed, files);
        let path = dir.join(format!("{name}.tar"));
        std::fs::write(&path, &bytes).unwrap();
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Layer { path, bytes, id }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// A small layer (~0.5 MiB).
fn small_layer(dir: &Path) -> Layer {
    Layer::new(dir, "a", 1, &[(300_000, true), (200_000, false), (0, false), (40_000, true)])
}

/// A layer whose debug-build ingest takes around a second: ~14 MiB, half
/// random, half text, in files on both sides of the chunker's 8 MiB window.
fn big_layer(dir: &Path) -> Layer {
    let mut files: Vec<Spec> = vec![(9 << 20, false), (3 << 20, true)];
    files.extend((0..16).map(|i| (64 << 10, i % 2 == 0)));
    files.push((1 << 20, true));
    Layer::new(dir, "b", 2, &files)
}

/// Pack files under `<store>/packs/*/`.
fn pack_files(store: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(store.join("packs")) else { return 0 };
    dirs.map(|d| d.unwrap().path())
        .filter(|d| d.is_dir())
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .filter(|f| f.as_ref().unwrap().path().extension().is_some_and(|e| e == "pack"))
        .count()
}

fn verify_clean(store: &Path, full: bool) {
    let mut args = vec!["--json", "verify"];
    if full {
        args.push("--full");
    }
    let o = cs(store, &args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "verify (full: {full}) failed: {out}\n{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&out).expect("verify JSON");
    assert_eq!(v["damaged"].as_array().map(Vec::len), Some(0), "{out}");
}

fn assert_exports(store: &Path, layer: &Layer) {
    let out = store.with_extension(format!("export-{}", &layer.id[7..19]));
    cs_ok(store, &["export", &layer.id, "-o", out.to_str().unwrap()]);
    let back = std::fs::read(&out).unwrap();
    assert!(
        back == layer.bytes,
        "{}: export differs from the original ({} vs {} bytes)",
        layer.id,
        back.len(),
        layer.bytes.len()
    );
    std::fs::remove_file(out).unwrap();
}

/// Reopen the store (after whatever killed its last user) and check every
/// invariant; returns the ids of the layers it lists.
fn check_store(store: &Path, known: &[&Layer]) -> Vec<String> {
    let ls = cs_json(store, &["ls"]);
    let listed: Vec<String> =
        ls.as_array().expect("ls JSON array").iter().map(|l| l["id"].as_str().unwrap().to_string()).collect();
    for id in &listed {
        assert!(known.iter().any(|l| &l.id == id), "the store lists {id}, which no ingest committed");
    }
    // The reopen reclaimed every pack the index does not name.
    let stat = cs_json(store, &["stat"]);
    assert_eq!(
        pack_files(store) as u64,
        stat["stats"]["packs"].as_u64().unwrap(),
        "pack files on disk vs packs in the index after reopen"
    );
    let tmp: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "tmp/ not cleared on open: {tmp:?}");
    let partial: Vec<_> = std::fs::read_dir(store.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(partial.is_empty(), "half-written layer objects not cleared on open: {partial:?}");
    assert!(!store.join("unsettled").exists(), "the reopen reclaimed, so the unsettled marker is gone");
    verify_clean(store, false);
    verify_clean(store, true);
    for l in known.iter().filter(|l| listed.contains(&l.id)) {
        assert_exports(store, l);
    }
    listed
}

/// The failpoint aborts the ingest of B into a store holding A.
fn failpoint_case(fp: &str) {
    let dir = tempfile::tempdir().unwrap();
    let a = small_layer(dir.path());
    let b = Layer::new(dir.path(), "b", 3, &[(3 << 20, true), (1 << 20, false), (1 << 20, true)]);
    let store = dir.path().join("store");
    cs_json(&store, &["ingest", a.arg()]);
    let packs_a = pack_files(&store);
    assert_eq!(packs_a, 1);
    assert!(!store.join("unsettled").exists(), "a clean close removes the unsettled marker");

    let o = Command::new(bin())
        .arg("--store")
        .arg(&store)
        .args(["--json", "ingest", b.arg()])
        .env("CHUNKSTORE_FAILPOINT", fp)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.signal(), Some(SIGABRT), "{fp}: {:?}\n{stderr}", o.status);
    assert!(stderr.contains(&format!("failpoint {fp}")), "{stderr}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&b.id), "nothing is printed before the abort");
    // Every failpoint fires after B's one pack was published, and the
    // marker that makes the next open look for orphans came first.
    assert_eq!(pack_files(&store), packs_a + 1, "{fp}: B's pack is on disk before the reopen");
    assert!(store.join("unsettled").exists(), "{fp}: no unsettled marker after the abort");

    let listed = check_store(&store, &[&a, &b]);
    let committed = fp == "after-commit";
    let want: Vec<String> = if committed { vec![a.id.clone(), b.id.clone()] } else { vec![a.id.clone()] };
    let mut sorted = listed.clone();
    sorted.sort();
    let mut want_sorted = want;
    want_sorted.sort();
    assert_eq!(sorted, want_sorted, "{fp}: layers listed");
    assert_eq!(pack_files(&store), packs_a + committed as usize, "{fp}: packs after the reopen");

    // Ingesting B again works, and B comes back byte for byte.
    let s = cs_json(&store, &["ingest", b.arg()]);
    assert_eq!(s[0]["id"].as_str(), Some(b.id.as_str()));
    assert_eq!(s[0]["already_present"].as_bool(), Some(committed));
    assert_eq!(pack_files(&store), packs_a + 1);
    let listed = check_store(&store, &[&a, &b]);
    assert_eq!(listed.len(), 2);
}

#[test]
fn failpoint_after_pack_put() {
    failpoint_case("after-pack-put");
}

#[test]
fn failpoint_before_commit() {
    failpoint_case("before-commit");
}

#[test]
fn failpoint_after_commit() {
    failpoint_case("after-commit");
}

/// SIGKILL `chunkstore ingest` at delays spread from just after its start to
/// past its end; every time, the store must satisfy [`check_store`] and list B
/// exactly when the ingest committed (and always when it printed B's diff_id).
#[test]
fn sigkill_at_spread_instants() {
    let dir = tempfile::tempdir().unwrap();
    let a = small_layer(dir.path());
    let b = big_layer(dir.path());
    let ingest_b = |store: &Path| {
        Command::new(bin())
            .arg("--store")
            .arg(store)
            .args(["--json", "ingest", b.arg()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // An uninterrupted run sets the time scale, and is the run past completion.
    let reference = dir.path().join("reference");
    cs_json(&reference, &["ingest", a.arg()]);
    let t = Instant::now();
    let o = ingest_b(&reference).wait_with_output().unwrap();
    let full = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&b.id));
    assert_eq!(check_store(&reference, &[&a, &b]).len(), 2);

    let fractions = [0.0, 0.15, 0.35, 0.55, 0.75, 0.95, 1.3];
    let mut outcomes = Vec::new();
    for (i, f) in fractions.iter().enumerate() {
        let delay = Duration::from_millis(20) + full.mul_f64(*f);
        let store = dir.path().join(format!("s{i}"));
        cs_json(&store, &["ingest", a.arg()]);
        let mut child = ingest_b(&store);
        std::thread::sleep(delay);
        let running = child.try_wait().unwrap().is_none();
        if running {
            child.kill().unwrap();
        }
        let o = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        let printed = stdout.contains(&b.id);
        if running {
            assert!(
                o.status.signal() == Some(SIGKILL) || o.status.success(),
                "delay {delay:?}: {:?}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        } else {
            assert!(o.status.success() && printed, "delay {delay:?}: {:?}", o.status);
        }
        let listed = check_store(&store, &[&a, &b]);
        assert!(listed.contains(&a.id), "delay {delay:?}: A lost");
        let committed = listed.contains(&b.id);
        if printed {
            assert!(committed, "delay {delay:?}: the ingest printed {} but the store does not list it", b.id);
        }
        outcomes.push((delay, running, committed));
    }
    eprintln!("full ingest {full:?}; (delay, killed while running, B committed): {outcomes:?}");
    assert!(outcomes.iter().any(|&(_, killed, committed)| killed && !committed), "no kill landed before the commit");

    // A store whose ingest of B was killed takes B again, byte for byte.
    let (i, _) = outcomes.iter().enumerate().find(|(_, o)| !o.2).unwrap();
    let store = dir.path().join(format!("s{i}"));
    let s = cs_json(&store, &["ingest", b.arg()]);
    assert_eq!(s[0]["already_present"].as_bool(), Some(false));
    assert_eq!(check_store(&store, &[&a, &b]).len(), 2);
}

/// A layer object a killed ingest left half written (`layers/.<name>.tmp`)
/// goes when the store is next opened; other files there stay, and so do
/// the committed layers.
#[test]
fn opening_removes_half_written_layer_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tar = dir.path().join("l.tar");
    std::fs::write(&tar, tar_of(7, &[(5000, false), (3000, true)])).unwrap();
    assert!(cs(&store, &["ingest", tar.to_str().unwrap()]).status.success());
    let layers = store.join("layers");
    let partial = layers.join(format!(".{}.layer.tmp", "ab".repeat(32)));
    let other = layers.join(".notes.tmp");
    std::fs::write(&partial, b"half an object").unwrap();
    std::fs::write(&other, b"not ours").unwrap();
    let ls = cs_json(&store, &["ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert!(!partial.exists(), "the half-written object is removed");
    assert!(other.exists(), "a file not named as ours stays");
    verify_clean(&store, true);
}

/// Opening a store another process is ingesting into fails as busy, and must
/// not disturb that ingest (it once cleared the ingest's staging directory).
#[test]
fn opening_a_busy_store_leaves_the_running_ingest_alone() {
    let dir = tempfile::tempdir().unwrap();
    let b = big_layer(dir.path());
    let store = dir.path().join("store");
    let mut child = Command::new(bin())
        .arg("--store")
        .arg(&store)
        .args(["--json", "ingest", b.arg()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Start once the ingest holds the store and is staging a pack (an `ls`
    // that won the race for the lock would make the ingest the busy one).
    let staged = || std::fs::read_dir(store.join("tmp")).is_ok_and(|mut d| d.next().is_some());
    while !staged() && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut busy = 0;
    while child.try_wait().unwrap().is_none() {
        let o = cs(&store, &["ls"]);
        if !o.status.success() {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains("in use by another process"), "{e}");
            busy += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "the ingest failed: {}", String::from_utf8_lossy(&o.stderr));
    assert!(busy > 0, "no open attempt met the running ingest");
    assert_eq!(check_store(&store, &[&b]), vec![b.id.clone()]);
}

// ---- Fault-injecting backend, through the library ----

fn opts(backend: Arc<dyn Backend>) -> StoreOptions {
    StoreOptions { backend: Some(backend), pack_size: 256 << 10, ..Default::default() }
}

fn layer_id(bytes: &[u8]) -> LayerId {
    LayerId::from_bytes(Sha256::digest(bytes).into())
}

fn export(store: &Store, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    store.export(&layer_id(bytes), &mut out).unwrap();
    out
}

fn staged_files(store_dir: &Path) -> usize {
    std::fs::read_dir(store_dir.join("tmp")).map_or(0, |d| d.count())
}

/// `put_pack` fails mid-ingest: the ingest returns that error, records
/// nothing, leaves no pack in the backend and nothing staged; a later ingest
/// with a healthy backend works.
#[test]
fn put_pack_failure_records_nothing() {
    for local in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Backend> = if local {
            Arc::new(LocalBackend::new(dir.path().join("packs")).unwrap())
        } else {
            Arc::new(MemoryBackend::new())
        };
        let store_dir = dir.path().join("store");
        let a = tar_of(1, &[(600_000, true), (300_000, false)]);
        let b = tar_of(2, &[(3 << 20, true), (1 << 20, false), (1 << 20, true)]);
        {
            let s = Store::open_with(&store_dir, opts(inner.clone())).unwrap();
            s.ingest(&a[..], &IngestOptions::default()).unwrap();
        }
        let packs_a = inner.list_packs().unwrap();
        assert!(packs_a.len() >= 2, "A spans several packs: {packs_a:?}");

        let faulty: Arc<dyn Backend> = Arc::new(FaultyBackend::new(inner.clone(), 3, -1));
        let s = Store::open_with(&store_dir, opts(faulty)).unwrap();
        let e = s.ingest(&b[..], &IngestOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "local {local}: {e}");
        assert!(e.to_string().contains("injected fault"), "local {local}: the cause is lost: {e}");
        assert_eq!(inner.list_packs().unwrap(), packs_a, "local {local}: packs left behind");
        assert_eq!(staged_files(&store_dir), 0, "local {local}: staged files left behind");
        assert_eq!(s.layers().unwrap().len(), 1);
        assert!(s.layer(&layer_id(&b)).unwrap().is_none());
        assert_eq!(s.stats().unwrap().packs, packs_a.len() as u64);
        let r = s.verify(VerifyOptions { full: true, ..Default::default() }).unwrap();
        assert!(r.is_clean(), "{:?}", r.damaged);
        assert!(export(&s, &a) == a);
        // The budget stays spent: a retry on this backend fails the same way.
        assert!(s.ingest(&b[..], &IngestOptions::default()).is_err());
        assert_eq!(inner.list_packs().unwrap(), packs_a);
        drop(s);

        let s = Store::open_with(&store_dir, opts(inner.clone())).unwrap();
        let sum = s.ingest(&b[..], &IngestOptions::default()).unwrap();
        assert!(!sum.already_present);
        assert!(export(&s, &b) == b);
        assert!(export(&s, &a) == a);
        let r = s.verify(VerifyOptions { full: true, ..Default::default() }).unwrap();
        assert!(r.is_clean(), "{:?}", r.damaged);
        assert_eq!(s.stats().unwrap().packs, inner.list_packs().unwrap().len() as u64);
    }
}

/// Input that turns out truncated after several packs were sealed: nothing
/// recorded, every published pack removed at once (not only on the next open).
#[test]
fn bad_input_after_sealed_packs_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(MemoryBackend::new());
    let store_dir = dir.path().join("store");
    let s = Store::open_with(&store_dir, opts(inner.clone())).unwrap();
    let b = tar_of(4, &[(2 << 20, true), (2 << 20, true)]);
    let cut = &b[..b.len() * 3 / 4];
    let e = s.ingest(cut, &IngestOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(inner.list_packs().unwrap().is_empty());
    assert_eq!(staged_files(&store_dir), 0);
    assert!(s.layers().unwrap().is_empty());
    assert!(s.verify(VerifyOptions { full: true, ..Default::default() }).unwrap().is_clean());
    s.ingest(&b[..], &IngestOptions::default()).unwrap();
    assert!(export(&s, &b) == b);
}

/// A pack read fails during export: an error, and what was written before
/// it is a true prefix of the layer. Verify reports the failure as damage.
#[test]
fn read_failure_during_export_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let store_dir = dir.path().join("store");
    let b = tar_of(5, &[(1 << 20, true), (512 << 10, false), (1 << 20, true)]);
    {
        let s = Store::open_with(&store_dir, opts(inner.clone())).unwrap();
        s.ingest(&b[..], &IngestOptions::default()).unwrap();
    }
    let s = Store::open_with(&store_dir, opts(Arc::new(FaultyBackend::new(inner.clone(), -1, 5)))).unwrap();
    let mut out = Vec::new();
    let e = s.export(&layer_id(&b), &mut out).unwrap_err();
    assert!(e.to_string().contains("injected fault"), "{e}");
    assert!(out.len() < b.len() && b.starts_with(&out), "export wrote bytes that are not the layer's");
    let r = s.verify(VerifyOptions { full: true, ..Default::default() }).unwrap();
    assert!(!r.is_clean(), "verify passed with every read failing");
    drop(s);
    let s = Store::open_with(&store_dir, opts(inner)).unwrap();
    assert!(export(&s, &b) == b);
}

/// A pack damaged on disk: export fails instead of returning the layer, and
/// verify names the damage.
#[test]
fn damaged_pack_fails_export() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let b = tar_of(6, &[(700_000, true)]);
    {
        let s = Store::open(&store_dir).unwrap();
        s.ingest(&b[..], &IngestOptions::default()).unwrap();
    }
    assert_eq!(pack_files(&store_dir), 1);
    let pack = std::fs::read_dir(store_dir.join("packs"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2; // inside a random (stored raw) chunk's data
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    let s = Store::open(&store_dir).unwrap();
    let mut out = Vec::new();
    let e = s.export(&layer_id(&b), &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let r = s.verify(VerifyOptions::default()).unwrap();
    assert!(!r.is_clean());
}
