//! The object-store backend against a real S3-compatible server: ingest,
//! export, verify, dedup tarballs, reindex and a second read-only hub serving
//! pulls, all through `chunkstore --store s3://…` processes.
//!
//! The server comes from the environment: `CHUNKSTORE_S3_TEST_URL` is
//! `s3://BUCKET?endpoint=http://127.0.0.1:PORT` (the bucket must exist), and
//! the credentials are the usual `AWS_*` variables. `.ci/run` starts Ceph's
//! RADOS Gateway with `.ci/ceph-rgw-up` and sets them; without them these
//! tests say so and pass, unless `CHUNKSTORE_S3_REQUIRED=1` (CI) makes that a
//! failure. Every test works under its own prefix in the bucket.

use crate::common::{bin, pseudo_random, sha256_hex};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A store under a fresh prefix of the test bucket, with its local index directory.
struct S3Store {
    url: String,
    /// `s3://bucket/prefix` without the query, for messages.
    base: String,
    cache: PathBuf,
    endpoint: String,
    bucket: String,
    prefix: String,
}

fn server() -> Option<(String, String)> {
    match std::env::var("CHUNKSTORE_S3_TEST_URL") {
        Ok(u) if !u.is_empty() => {
            let (path, query) = u.split_once('?').unwrap_or((&u, ""));
            Some((path.trim_end_matches('/').to_string(), query.to_string()))
        }
        _ => {
            let required = std::env::var("CHUNKSTORE_S3_REQUIRED").is_ok_and(|v| v == "1");
            assert!(!required, "CHUNKSTORE_S3_REQUIRED=1 but CHUNKSTORE_S3_TEST_URL is not set");
            eprintln!(
                "skipped: CHUNKSTORE_S3_TEST_URL is not set (run .ci/ceph-rgw-up and see .ci/run for a local S3 server)"
            );
            None
        }
    }
}

impl S3Store {
    /// A new store under `s3://BUCKET/<name>-<unique>`; `None` when no server is configured.
    fn new(dir: &Path, name: &str) -> Option<S3Store> {
        let (base, query) = server()?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let prefix = format!("it/{name}-{}-{nanos}", std::process::id());
        let bucket = base.trim_start_matches("s3://").split('/').next().unwrap().to_string();
        let endpoint = query.split('&').find_map(|kv| kv.strip_prefix("endpoint=")).unwrap_or("").to_string();
        let base = format!("{base}/{prefix}");
        let url = if query.is_empty() { base.clone() } else { format!("{base}?{query}") };
        Some(S3Store { url, base, cache: dir.join(format!("{name}-index")), endpoint, bucket, prefix })
    }

    /// The same bucket prefix seen through another local index directory.
    fn other_index(&self, cache: PathBuf) -> S3Store {
        S3Store {
            url: self.url.clone(),
            base: self.base.clone(),
            cache,
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.env_remove("CHUNKSTORE_TOKEN").env_remove("CHUNKSTORE_HUB");
        c.arg("--store").arg(&self.url).arg("--cache-dir").arg(&self.cache).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running chunkstore")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "chunkstore --store {} {args:?} failed: {}\n{}",
            self.base,
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("valid JSON")
    }

    fn export(&self, id: &str) -> Vec<u8> {
        let o = self.run(&["export", id, "-o", "-"]);
        assert!(o.status.success(), "export {id}: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    }

    fn assert_verify_full_clean(&self) {
        let v = self.json(&["verify", "--full"]);
        assert_eq!(v["damaged"], serde_json::json!([]), "verify --full of {}: {v}", self.base);
    }

    /// Object names under this store's prefix, through a signed listing with curl.
    fn objects(&self) -> Vec<String> {
        let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
        let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
        let prefix = format!("{}/", self.prefix).replace('/', "%2F");
        let url = format!("{}/{}?list-type=2&prefix={prefix}", self.endpoint, self.bucket);
        let o = Command::new("curl")
            .args(["-fsS", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "--aws-sigv4"])
            .arg(format!("aws:amz:{region}:s3"))
            .arg("--user")
            .arg(format!("{key}:{secret}"))
            .arg(&url)
            .output()
            .expect("running curl");
        assert!(o.status.success(), "listing {url}: {}", String::from_utf8_lossy(&o.stderr));
        let xml = String::from_utf8_lossy(&o.stdout).to_string();
        let mut out = Vec::new();
        for part in xml.split("<Key>").skip(1) {
            let k = part.split("</Key>").next().unwrap();
            out.push(k.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(k).to_string());
        }
        out.sort();
        out
    }
}

/// Write a directory tree and tar it with GNU tar (plain, gzip, zstd); returns the three paths.
fn gnu_tars(dir: &Path, name: &str, files: &[(&str, Vec<u8>)]) -> [PathBuf; 3] {
    let root = dir.join(format!("tree-{name}"));
    for (p, data) in files {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    }
    let plain = dir.join(format!("{name}.tar"));
    let gz = dir.join(format!("{name}.tar.gz"));
    let zst = dir.join(format!("{name}.tar.zst"));
    let tar = |extra: &[&str], out: &Path| {
        let o = Command::new("tar")
            .args(["--sort=name", "--mtime=@1700000000", "--owner=0", "--group=0", "--numeric-owner"])
            .args(extra)
            .arg("-cf")
            .arg(out)
            .arg("-C")
            .arg(&root)
            .arg(".")
            .output()
            .expect("running tar");
        assert!(o.status.success(), "tar: {}", String::from_utf8_lossy(&o.stderr));
    };
    tar(&[], &plain);
    tar(&["-z"], &gz);
    tar(&["--zstd"], &zst);
    [plain, gz, zst]
}

fn diff_id(path: &Path) -> String {
    format!("sha256:{}", sha256_hex(&std::fs::read(path).unwrap()))
}

/// Base and update layers that share most of their content.
fn layers(dir: &Path) -> ([PathBuf; 3], [PathBuf; 3]) {
    let shared = pseudo_random(700_000, 1);
    let mut big = pseudo_random(3_000_000, 2);
    let a = gnu_tars(
        dir,
        "a",
        &[
            ("etc/os-release", b"ID=test\nVERSION=1\n".to_vec()),
            ("usr/lib/libshared.so", shared.clone()),
            ("usr/share/doc/readme", b"read me\n".repeat(3000)),
            ("usr/share/doc/readme-copy", b"read me\n".repeat(3000)),
            ("empty", Vec::new()),
            ("big.bin", big.clone()),
        ],
    );
    big[1_500_000..1_500_004].copy_from_slice(b"EDIT");
    let b = gnu_tars(
        dir,
        "b",
        &[
            ("etc/os-release", b"ID=test\nVERSION=2\n".to_vec()),
            ("usr/lib/libshared.so", shared),
            ("usr/share/doc/readme", b"read me\n".repeat(3000)),
            ("big.bin", big),
            ("opt/new.dat", pseudo_random(50_000, 3)),
        ],
    );
    (a, b)
}

/// Ingest plain, gzip and zstd forms; export each layer byte for byte; verify --full.
#[test]
fn s3_ingest_export_verify_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = S3Store::new(dir.path(), "roundtrip") else { return };
    let (a, b) = layers(dir.path());
    for p in a.iter().chain(b.iter()) {
        let v = s.json(&["ingest", p.to_str().unwrap()]);
        let want = diff_id(&if p.extension().unwrap() == "tar" { p.clone() } else { p.with_extension("") });
        assert_eq!(v[0]["id"], want.as_str(), "{}: {v}", p.display());
    }
    // The second and third forms of each layer add nothing; B shares most of A.
    let st = s.json(&["stat"]);
    assert_eq!(st["stats"]["layers"], 2, "{st}");
    for (name, tar) in [("a", &a[0]), ("b", &b[0])] {
        let back = s.export(&diff_id(tar));
        assert!(back == std::fs::read(tar).unwrap(), "export of layer {name} differs");
    }
    s.assert_verify_full_clean();
    // Packs and layer objects are in the bucket under the documented names.
    let objs = s.objects();
    assert!(objs.iter().any(|o| o.starts_with("packs/") && o.ends_with(".pack")), "{objs:?}");
    for tar in [&a[0], &b[0]] {
        let name = format!("layers/{}.layer", &diff_id(tar)["sha256:".len()..]);
        assert!(objs.contains(&name), "{name} missing from {objs:?}");
    }
}

/// A pack over the multipart threshold (32 MiB) goes up in parts and reads back.
#[test]
fn s3_large_pack_multipart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = S3Store::new(dir.path(), "multipart") else { return };
    let [plain, _, _] = gnu_tars(dir.path(), "big", &[("noise.bin", pseudo_random(40 << 20, 9))]);
    s.json(&["ingest", plain.to_str().unwrap()]);
    let st = s.json(&["stat"]);
    assert!(st["stats"]["stored_bytes"].as_u64().unwrap() > 40 << 20, "{st}");
    assert!(s.export(&diff_id(&plain)) == std::fs::read(&plain).unwrap());
    s.assert_verify_full_clean();
    assert!(s.objects().iter().all(|o| !o.contains("tmp")));
}

/// A layer object over the multipart threshold (1 MiB here: 30,000 small
/// files make ~4 MB) goes up in parts as the commit reads it; its recipe
/// and number map are stored in parts in the index. Both read back, and
/// `reindex` rebuilds the same from the bucket.
#[test]
fn s3_large_layer_object_goes_up_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut s) = S3Store::new(dir.path(), "biglayer") else { return };
    s.url = format!("{}{}multipart_mb=1", s.url, if s.url.contains('?') { '&' } else { '?' });
    let tar = dir.path().join("many.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar).unwrap());
    for i in 0..30_000 {
        let data = format!("small file {i}\n").repeat(1 + i % 5);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("d{:02}/file-{i:05}.txt", i / 1000), data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().sync_all().unwrap();
    let want = diff_id(&tar);
    assert_eq!(s.json(&["ingest", tar.to_str().unwrap()])[0]["id"], want.as_str());
    assert!(s.export(&want) == std::fs::read(&tar).unwrap(), "export differs");
    s.assert_verify_full_clean();
    let name = format!("layers/{}.layer", &want["sha256:".len()..]);
    assert!(s.objects().contains(&name), "{name} missing");
    std::fs::remove_file(s.cache.join("chunkstore.redb")).unwrap();
    let r = s.json(&["reindex"]);
    assert_eq!(r["layers"].as_u64(), Some(1), "{r}");
    assert!(s.export(&want) == std::fs::read(&tar).unwrap(), "export after reindex differs");
    s.assert_verify_full_clean();
}

/// Delete the local index: `reindex` gives back the same layers, totals,
/// exports and client maps; so does opening with no index at all.
#[test]
fn s3_reindex_rebuilds_a_deleted_index_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = S3Store::new(dir.path(), "reindex") else { return };
    let (a, b) = layers(dir.path());
    s.json(&["ingest", a[1].to_str().unwrap()]);
    s.json(&["ingest", b[2].to_str().unwrap()]);
    s.json(&["ingest", a[0].to_str().unwrap()]);
    s.ok(&["client", "add", "edge-1"]);
    s.ok(&["client", "hold", "edge-1", &diff_id(&a[0])]);
    let before = (s.json(&["ls"]), s.json(&["stat"]), s.json(&["client", "show", "edge-1"]));
    let diff_before = s.json(&["diff", "--client", "edge-1", &diff_id(&b[0])]);

    // Explicit reindex over a deleted index file (possession records go with it).
    std::fs::remove_file(s.cache.join("chunkstore.redb")).unwrap();
    let r = s.json(&["reindex"]);
    assert_eq!((r["layers"].as_u64(), r["skipped"].as_array().map(Vec::len)), (Some(2), Some(0)), "{r}");
    assert_eq!(s.json(&["ls"]), before.0);
    assert_eq!(s.json(&["stat"]), before.1);
    for tar in [&a[0], &b[0]] {
        assert!(s.export(&diff_id(tar)) == std::fs::read(tar).unwrap());
    }
    s.assert_verify_full_clean();
    // Dense numbers came back the same: holding the same layer gives the same diff.
    s.ok(&["client", "add", "edge-1"]);
    s.ok(&["client", "hold", "edge-1", &diff_id(&a[0])]);
    assert_eq!(s.json(&["client", "show", "edge-1"]), before.2);
    assert_eq!(s.json(&["diff", "--client", "edge-1", &diff_id(&b[0])]), diff_before);

    // A whole new local directory: opening rebuilds the index by itself.
    let fresh = s.other_index(dir.path().join("fresh-index"));
    assert_eq!(fresh.json(&["ls"]), before.0);
    let mut st = fresh.json(&["stat"]);
    st["store"] = before.1["store"].clone();
    assert_eq!(st, before.1);
}

/// The hub keeps its data in the bucket and writes dedup tarballs; a local
/// edge applies them, byte for byte.
#[test]
fn s3_hub_pack_and_local_edge_apply() {
    let dir = tempfile::tempdir().unwrap();
    let Some(hub) = S3Store::new(dir.path(), "dedup") else { return };
    let (a, b) = layers(dir.path());
    let (ida, idb) = (diff_id(&a[0]), diff_id(&b[0]));
    hub.json(&["ingest", a[0].to_str().unwrap(), b[0].to_str().unwrap()]);
    hub.ok(&["client", "add", "edge"]);
    let edge = dir.path().join("edge");
    let edge_cs = |args: &[&str]| -> Output {
        Command::new(bin()).arg("--store").arg(&edge).args(args).current_dir(dir.path()).output().unwrap()
    };
    for (id, name) in [(&ida, "a.dtar"), (&idb, "b.dtar")] {
        let out = dir.path().join(name);
        let v = hub.json(&["pack", "--client", "edge", id, "-o", out.to_str().unwrap(), "--assume-applied"]);
        assert!(v.is_object(), "{v}");
        let o = edge_cs(&["--json", "apply", out.to_str().unwrap()]);
        assert!(o.status.success(), "apply {name}: {}", String::from_utf8_lossy(&o.stderr));
        let o = edge_cs(&["export", id, "-o", "-"]);
        assert!(o.status.success());
        assert_eq!(sha256_hex(&o.stdout), &id["sha256:".len()..], "edge export of {name}");
    }
    // B travelled as what A lacked: far smaller than the layer.
    let bsize = std::fs::metadata(dir.path().join("b.dtar")).unwrap().len();
    assert!(bsize * 4 < std::fs::metadata(&b[0]).unwrap().len(), "b.dtar is {bsize} bytes");
}

/// A running `chunkstore serve`, killed on drop.
struct Serve(Child, String);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(s: &S3Store, extra: &[&str]) -> Serve {
    let mut args = extra.to_vec();
    args.extend(["--json", "serve", "--listen", "127.0.0.1:0"]);
    let log = s.cache.with_extension("serve.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut child = s
        .command(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawning chunkstore serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let addr = serde_json::from_str::<Value>(&line).ok().and_then(|v| v["listening"].as_str().map(str::to_string));
    match addr {
        Some(a) => Serve(child, a),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve printed {line:?}; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        }
    }
}

/// A second hub opens the same bucket read-only, with its own index, and
/// serves pulls; it refuses ingests and leaves the bucket as it was.
#[test]
fn s3_second_read_only_hub_serves_pull() {
    let dir = tempfile::tempdir().unwrap();
    let Some(writer) = S3Store::new(dir.path(), "twohubs") else { return };
    let (a, b) = layers(dir.path());
    let (ida, idb) = (diff_id(&a[0]), diff_id(&b[0]));
    writer.json(&["ingest", a[0].to_str().unwrap(), b[0].to_str().unwrap()]);
    let objects = writer.objects();

    let reader = writer.other_index(dir.path().join("reader-index"));
    let r = reader.json(&["--read-only", "reindex"]);
    assert_eq!(r["layers"], 2, "{r}");
    let o = reader.run(&["--read-only", "ingest", a[1].to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("read-only"), "{}", String::from_utf8_lossy(&o.stderr));

    let hub = serve(&reader, &["--read-only"]);
    let tok = reader.ok(&["--read-only", "token", "issue", "--client", "edge-1", "--scope", "pull", "--ttl", "1h"]);
    let edge = dir.path().join("edge");
    let url = format!("http://{}", hub.1);
    for (id, via) in [(&ida, "dedup"), (&idb, "chunks")] {
        let o = Command::new(bin())
            .env_remove("CHUNKSTORE_TOKEN")
            .env_remove("CHUNKSTORE_HUB")
            .arg("--store")
            .arg(&edge)
            .args(["--json", "pull", "--hub", &url, "--client", "edge-1", "--token", tok.trim(), "--via", via, id])
            .output()
            .unwrap();
        assert!(o.status.success(), "pull {id} via {via}: {}", String::from_utf8_lossy(&o.stderr));
        let o = Command::new(bin()).arg("--store").arg(&edge).args(["export", id, "-o", "-"]).output().unwrap();
        assert_eq!(sha256_hex(&o.stdout), &id["sha256:".len()..], "edge export of {id}");
    }
    drop(hub);
    assert_eq!(writer.objects(), objects, "the read-only hub changed the bucket");
}

/// Credentials the server refuses: the ingest fails with a clear message,
/// and nothing is recorded, locally or in the bucket.
#[test]
fn s3_refused_credentials_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = S3Store::new(dir.path(), "denied") else { return };
    let (a, _) = layers(dir.path());
    let o =
        s.command(&["ingest", a[0].to_str().unwrap()]).env("AWS_SECRET_ACCESS_KEY", "wrong-secret").output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refused the credentials") || err.contains("SignatureDoesNotMatch"), "{err}");
    assert_eq!(s.json(&["ls"]), serde_json::json!([]));
    assert_eq!(s.objects(), Vec::<String>::new());
}

/// A writer killed after uploading a pack leaves it in the bucket, and no
/// open deletes it (another writer's upload would look the same); `gc`
/// deletes it once it is older than --grace, and nothing a layer needs.
#[test]
fn s3_gc_deletes_a_crashed_writers_pack() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s) = S3Store::new(dir.path(), "gc") else { return };
    let (a, b) = layers(dir.path());
    s.json(&["ingest", a[0].to_str().unwrap()]);
    let packs = |s: &S3Store| s.objects().iter().filter(|o| o.starts_with("packs/")).count();
    let before = packs(&s);
    let o =
        s.command(&["ingest", b[0].to_str().unwrap()]).env("CHUNKSTORE_FAILPOINT", "after-pack-put").output().unwrap();
    assert!(!o.status.success(), "the failpoint aborts the ingest");
    assert_eq!(packs(&s), before + 1, "the killed writer's pack is in the bucket");
    assert_eq!(s.json(&["ls"]).as_array().unwrap().len(), 1, "and its layer is not recorded");
    assert_eq!(packs(&s), before + 1, "opening deletes nothing in a shared bucket");

    let v = s.json(&["gc", "--grace", "1h"]);
    assert_eq!((v["unnamed"].as_u64(), v["deleted"].as_array().map(Vec::len)), (Some(1), Some(0)), "{v}");
    let v = s.json(&["gc", "--grace", "0s", "--dry-run"]);
    assert_eq!(v["deleted"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(packs(&s), before + 1, "a dry run deletes nothing");
    // Deleting needs --force under an hour's grace: the bucket may have other writers.
    let o = s.run(&["gc", "--grace", "0s"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let v = s.json(&["gc", "--grace", "0s", "--force"]);
    assert_eq!(v["deleted"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(packs(&s), before);
    s.assert_verify_full_clean();
    // The layer the writer was ingesting goes in again.
    let v = s.json(&["ingest", b[0].to_str().unwrap()]);
    assert_eq!(v[0]["already_present"], false, "{v}");
    s.assert_verify_full_clean();
}

/// An https endpoint whose certificate a private CA signed: refused until
/// the CA is given (`ca_cert=` in the URL, or `CHUNKSTORE_CA_CERT`).
#[test]
fn s3_https_endpoint_with_a_private_ca() {
    let Some(url) = std::env::var("CHUNKSTORE_S3_TEST_TLS_URL").ok().filter(|u| !u.is_empty()) else {
        let required = std::env::var("CHUNKSTORE_S3_REQUIRED").is_ok_and(|v| v == "1");
        assert!(!required, "CHUNKSTORE_S3_REQUIRED=1 but CHUNKSTORE_S3_TEST_TLS_URL is not set");
        eprintln!("skipped: CHUNKSTORE_S3_TEST_TLS_URL is not set (.ci/run sets it)");
        return;
    };
    let ca = std::env::var("CHUNKSTORE_S3_TEST_CA").expect("CHUNKSTORE_S3_TEST_CA names the endpoint's CA");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (path, query) = url.split_once('?').unwrap();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let store = format!("{}/it/tls-{nanos}?{query}", path.trim_end_matches('/'));
    let (a, _) = layers(d);
    let run = |url: &str, cache: &str, ca_env: Option<&str>, args: &[&str]| {
        let mut c = Command::new(bin());
        c.env_remove("CHUNKSTORE_CA_CERT").arg("--store").arg(url).arg("--cache-dir").arg(d.join(cache)).args(args);
        if let Some(ca) = ca_env {
            c.env("CHUNKSTORE_CA_CERT", ca);
        }
        c.output().unwrap()
    };
    let o = run(&store, "untrusted", None, &["ls"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("not trusted") && err.contains("ca_cert"), "{err}");

    let with_ca = format!("{store}&ca_cert={ca}");
    let o = run(&with_ca, "a", None, &["--json", "ingest", a[0].to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = diff_id(&a[0]);
    // Another index, the CA from the environment: it rebuilds from the bucket and exports exactly.
    let out = d.join("out.tar");
    let o = run(&store, "b", Some(&ca), &["export", &id, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&a[0]).unwrap());
    let o = run(&store, "b", Some(&ca), &["verify", "--full"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
