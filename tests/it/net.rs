//! Hub and edge over the network: real `chunkstore serve` processes on
//! 127.0.0.1 (ephemeral ports) and real `chunkstore pull` / `push` processes
//! against them. Every server and every pull left running in the background
//! sits in a guard that kills and reaps it, so no process outlives a test.
//!
//! Raw requests (error bodies, anonymous access, hostile uploads) go through
//! `curl`, or Python's `urllib` where curl is missing.

use crate::common::{bin, pseudo_random as noise, sha256_hex};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- fixtures

/// A layer tar (GNU headers, fixed mode and mtime) written to `dir/name.tar`.
pub(crate) struct Layer {
    path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    pub(crate) id: String,
}

impl Layer {
    pub(crate) fn new(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> Layer {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, p, *data).expect("building a tar");
        }
        let bytes = b.into_inner().expect("finishing a tar");
        let path = dir.join(format!("{name}.tar"));
        std::fs::write(&path, &bytes).unwrap();
        Layer { path, id: format!("sha256:{}", sha256_hex(&bytes)), bytes }
    }

    /// A unique prefix of the digest, as a user would type it.
    fn prefix(&self) -> &str {
        &self.id["sha256:".len().."sha256:".len() + 12]
    }

    /// Ingest into `store` (not serving); returns the ingest summary.
    pub(crate) fn ingest(&self, store: &Path) -> Value {
        let v = cs_json(store, &["ingest", self.path.to_str().unwrap()]);
        assert_eq!(v[0]["id"], self.id.as_str(), "{v}");
        v[0].clone()
    }
}

// ---------------------------------------------------------------- processes

/// `chunkstore --store STORE ARGS...` with `envs`, and no CHUNKSTORE_* from ours.
pub(crate) fn command(store: &Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin());
    for v in ["CHUNKSTORE_TOKEN", "CHUNKSTORE_HUB", "CHUNKSTORE_CA_CERT", "CHUNKSTORE_TEST_CORRUPT_CHUNKS"] {
        c.env_remove(v);
    }
    c.envs(envs.iter().copied()).arg("--store").arg(store).args(args);
    c
}

fn run(store: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    command(store, args, envs).output().expect("running chunkstore")
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run with `--json`, require success, parse stdout.
pub(crate) fn run_json(store: &Path, args: &[&str], envs: &[(&str, &str)]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = run(store, &a, envs);
    assert!(o.status.success(), "chunkstore {a:?} failed ({}):\n{}", o.status, text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{a:?}: bad JSON ({e}): {}", text(&o.stdout)))
}

fn cs_json(store: &Path, args: &[&str]) -> Value {
    run_json(store, args, &[])
}

/// Run expecting failure: exit 1, no panic; returns stderr.
pub(crate) fn run_fails(store: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let o = run(store, args, envs);
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "chunkstore {args:?}: want exit 1; stdout:\n{}\nstderr:\n{err}",
        text(&o.stdout)
    );
    assert!(!err.contains("panicked"), "chunkstore {args:?} panicked:\n{err}");
    err
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub(crate) struct Guard(pub(crate) Option<Child>);

impl Guard {
    fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        self.0.as_mut().expect("running").try_wait().expect("polling a child")
    }

    /// Wait up to `limit` for exit; the whole output.
    pub(crate) fn wait_output(mut self, limit: Duration) -> Output {
        let t = Instant::now();
        while self.try_wait().is_none() {
            assert!(t.elapsed() < limit, "process {} still running after {limit:?}", self.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.0.take().unwrap().wait_with_output().expect("collecting output")
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `chunkstore serve`; killed on drop, [`Hub::stop`]ped with SIGTERM.
pub(crate) struct Hub {
    proc: Guard,
    /// `127.0.0.1:PORT`
    pub(crate) addr: String,
    /// `http` or `https`
    scheme: String,
    log: PathBuf,
}

impl Hub {
    /// Serve `store` on an ephemeral port.
    pub(crate) fn start(store: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Hub {
        Self::start_on(store, "127.0.0.1:0", extra, envs).expect("starting the hub")
    }

    /// Serve `store` on `listen`; `Err(log)` if it exits before listening.
    /// Every other start prints JSON (`--json`), to cover both forms.
    pub(crate) fn start_on(store: &Path, listen: &str, extra: &[&str], envs: &[(&str, &str)]) -> Result<Hub, String> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let json = n % 2 == 0;
        let log = store.with_extension(format!("serve-{n}.log"));
        let mut args = if json { vec!["--json"] } else { vec![] };
        args.extend(["serve", "--listen", listen]);
        args.extend_from_slice(extra);
        let mut child = command(store, &args, envs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning chunkstore serve");
        let stdout = child.stdout.take().unwrap();
        let mut proc = Guard(Some(child));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let url = if json {
            serde_json::from_str::<Value>(&line).ok().and_then(|v| v["url"].as_str().map(str::to_string))
        } else {
            line.trim().strip_prefix("listening on ").map(str::to_string)
        };
        let parsed = url.as_deref().and_then(|u| u.split_once("://")).map(|(s, a)| (s.to_string(), a.to_string()));
        match parsed {
            Some((scheme, addr)) if addr.starts_with("127.0.0.1:") && !addr.ends_with(":0") => {
                Ok(Hub { proc, addr, scheme, log })
            }
            _ => {
                proc.kill();
                Err(format!("serve printed {line:?}; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
            }
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    fn api(&self, path: &str) -> String {
        format!("{}/v2/_chunkstore{path}", self.url())
    }

    /// SIGKILL, as a crash would.
    pub(crate) fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM; the exit status once it has shut down.
    pub(crate) fn stop(mut self) -> ExitStatus {
        let pid = self.proc.pid().to_string();
        let k = Command::new("kill").args(["-TERM", &pid]).status().expect("running kill");
        assert!(k.success());
        let t = Instant::now();
        loop {
            if let Some(s) = self.proc.try_wait() {
                self.proc.0 = None;
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "serve ignored SIGTERM; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `token issue` on the hub's store (works while it serves).
pub(crate) fn token(hub_store: &Path, client: &str, scope: &str, ttl: &str) -> String {
    let o = run(hub_store, &["token", "issue", "--client", client, "--scope", scope, "--ttl", ttl], &[]);
    assert!(o.status.success(), "token issue: {}", text(&o.stderr));
    let t = text(&o.stdout).trim().to_string();
    assert!(t.starts_with(&format!("cs1.{client}.{scope}.")), "{t}");
    t
}

/// `pull --json` of `layer` into `edge` as `client`, with `extra` flags.
pub(crate) fn pull(edge: &Path, hub: &Hub, client: &str, tok: &str, layer: &str, extra: &[&str]) -> Value {
    let url = hub.url();
    let mut args = vec!["pull", "--hub", &url, "--client", client, "--token", tok];
    args.extend_from_slice(extra);
    args.push(layer);
    let v = run_json(edge, &args, &[]);
    let want = if layer.starts_with("sha256:") { layer.to_string() } else { format!("sha256:{layer}") };
    assert!(v["layer"].as_str().is_some_and(|l| l.starts_with(&want)), "{v}");
    v
}

/// Export from `edge` and require the original bytes; verify clean.
pub(crate) fn assert_exact(edge: &Path, layer: &Layer) {
    let o = run(edge, &["export", &layer.id, "-o", "-"], &[]);
    assert!(o.status.success(), "export {}: {}", layer.id, text(&o.stderr));
    // Byte for byte (the layer's id is the sha256 of these bytes).
    assert!(o.stdout == layer.bytes, "export of {} differs", layer.id);
    assert_verify_clean(edge);
}

pub(crate) fn assert_verify_clean(store: &Path) {
    let r = cs_json(store, &["verify"]);
    assert_eq!(r["damaged"], json!([]), "verify {}: {r}", store.display());
}

pub(crate) fn layer_ids(store: &Path) -> BTreeSet<String> {
    let v = cs_json(store, &["ls"]);
    v.as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap().to_string()).collect()
}

pub(crate) fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.map(|e| e.unwrap().path()).map(|p| if p.is_dir() { count_files(&p) } else { 1 }).sum()
}

/// The layers the hub's map says `client` holds.
pub(crate) fn map_of(hub: &Hub, client: &str, tok: &str) -> BTreeSet<String> {
    let (st, body) = http("GET", &hub.api(&format!("/clients/{client}")), Some(tok), None);
    assert_eq!(st, 200, "{}", text(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect()
}

pub(crate) fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- raw HTTP

/// `(status, body)` of one request. A body starting with `{` is sent as JSON.
fn http(method: &str, url: &str, tok: Option<&str>, body: Option<&[u8]>) -> (u16, Vec<u8>) {
    let ctype = match body {
        Some(b) if b.starts_with(b"{") => "application/json",
        Some(_) => "application/octet-stream",
        None => "",
    };
    let have_curl = Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success());
    let mut c = if have_curl {
        let mut c = Command::new("curl");
        c.args(["-sS", "-X", method, "-w", "\n%{http_code}", url]);
        if let Some(t) = tok {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if body.is_some() {
            c.args(["-H", &format!("Content-Type: {ctype}"), "--data-binary", "@-"]);
        }
        c
    } else {
        let mut c = Command::new("python3");
        c.args([
            "-c",
            r#"
import sys, urllib.request, urllib.error
m, u, t, ct = sys.argv[1:5]
d = sys.stdin.buffer.read() if ct else None
r = urllib.request.Request(u, data=d, method=m)
if t: r.add_header("Authorization", "Bearer " + t)
if ct: r.add_header("Content-Type", ct)
try:
    resp = urllib.request.urlopen(r); code = resp.status; b = resp.read()
except urllib.error.HTTPError as e:
    code = e.code; b = e.read()
sys.stdout.buffer.write(b + b"\n" + str(code).encode())
"#,
            method,
            url,
            tok.unwrap_or(""),
            ctype,
        ]);
        c
    };
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("http client");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body.unwrap_or_default()).unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{method} {url}: {}", text(&o.stderr));
    let split = o.stdout.iter().rposition(|&b| b == b'\n').expect("status line");
    let status = text(&o.stdout[split + 1..]).trim().parse().expect("HTTP status");
    (status, o.stdout[..split].to_vec())
}

/// An error response: the status and `{"error": {"code", "message"}}`.
fn assert_api_error(got: (u16, Vec<u8>), status: u16, code: &str) -> String {
    let (st, body) = got;
    let v: Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", text(&body)));
    assert_eq!((st, v["error"]["code"].as_str()), (status, Some(code)), "{v}");
    let msg = v["error"]["message"].as_str().expect("a message").to_string();
    assert!(!msg.is_empty(), "{v}");
    msg
}

/// The first chunk id in a recipe bundle (docs/protocol.md).
fn first_chunk(bundle: &[u8]) -> [u8; 32] {
    assert_eq!(&bundle[..8], b"CSBUNDL1");
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let rlen = u64::from_le_bytes(bundle[40..48].try_into().unwrap()) as usize;
    let mut at = 48 + rlen;
    let files = u32_at(bundle, at);
    at += 4;
    for _ in 0..files {
        let len = u32_at(bundle, at + 32);
        let recipe = &bundle[at + 36..at + 36 + len];
        if u32_at(recipe, 8) > 0 {
            return recipe[12..44].try_into().unwrap();
        }
        at += 36 + len;
    }
    panic!("no chunks in the bundle");
}

// ---------------------------------------------------------------- tests

/// A base layer and an update sharing most of its bytes.
fn base_and_update(d: &Path) -> (Layer, Layer) {
    let (big, lib) = (noise(1_500_000, 1), noise(400_000, 2));
    let a = Layer::new(d, "a", &[("usr/big.bin", &big), ("usr/lib.so", &lib), ("etc/conf", &noise(2_000, 3))]);
    let b = Layer::new(
        d,
        "b",
        &[("usr/big.bin", &big), ("usr/lib.so", &lib), ("etc/conf", &noise(2_100, 4)), ("opt/new", &noise(30_000, 5))],
    );
    (a, b)
}

/// Issue 1: pull via dedup and via chunks into fresh edges, byte for byte; an
/// update sharing files costs far fewer bytes; the hub's map counts both.
#[test]
fn pull_via_dedup_and_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, e1, e2) = (d.join("hub"), d.join("edge1"), d.join("edge2"));
    let (a, b) = base_and_update(d);
    let a_info = a.ingest(&hub_store);
    let b_info = b.ingest(&hub_store);
    let hub = Hub::start(&hub_store, &[], &[]);
    let t1 = token(&hub_store, "edge-1", "pull", "1h");
    let t2 = token(&hub_store, "edge-2", "pull", "1h");

    // Edge 1 by dedup tarball, layer named by a prefix.
    let s = pull(&e1, &hub, "edge-1", &t1, a.prefix(), &[]);
    assert_eq!((s["via"].as_str(), s["fell_back"].as_bool()), (Some("dedup"), Some(false)), "{s}");
    assert_eq!(s["ingest"]["id"], a.id.as_str(), "{s}");
    let wire_a1 = s["wire_bytes"].as_u64().unwrap();
    assert_exact(&e1, &a);

    // Edge 2 chunk by chunk, hub and token from the environment.
    let url = hub.url();
    let env = [("CHUNKSTORE_HUB", url.as_str()), ("CHUNKSTORE_TOKEN", t2.as_str())];
    let s = run_json(&e2, &["pull", "--client", "edge-2", "--via", "chunks", &a.id], &env);
    assert_eq!((s["via"].as_str(), s["fell_back"].as_bool()), (Some("chunks"), Some(false)), "{s}");
    let chunks_a = s["fetched_chunks"].as_u64().unwrap();
    assert_eq!(chunks_a, a_info["chunks"].as_u64().unwrap(), "noise: every chunk distinct: {s}");
    let wire_a2 = s["wire_bytes"].as_u64().unwrap();
    assert_exact(&e2, &a);
    assert!(wire_a1 > 1_900_000 && wire_a2 > 1_900_000, "the base layer is ~1.9 MB of noise: {wire_a1}, {wire_a2}");

    // The update: only what changed crosses the wire, either way.
    let s = pull(&e1, &hub, "edge-1", &t1, &b.id, &["--via", "dedup"]);
    assert_eq!((s["via"].as_str(), s["fell_back"].as_bool()), (Some("dedup"), Some(false)), "{s}");
    let wire_b1 = s["wire_bytes"].as_u64().unwrap();
    assert!(wire_b1 * 10 < wire_a1, "update via dedup: {wire_b1} bytes, base {wire_a1}");
    assert_exact(&e1, &b);
    let s = pull(&e2, &hub, "edge-2", &t2, b.prefix(), &["--via", "chunks", "--concurrency", "2", "--batch", "3"]);
    let (fetched, wire_b2) = (s["fetched_chunks"].as_u64().unwrap(), s["wire_bytes"].as_u64().unwrap());
    assert!(fetched * 5 < b_info["chunks"].as_u64().unwrap(), "update via chunks fetched {fetched}: {s}");
    assert!(wire_b2 * 10 < wire_a2, "update via chunks: {wire_b2} bytes, base {wire_a2}");
    assert_exact(&e2, &b);

    // Acknowledged: the hub's map counts both layers for both clients.
    assert_eq!(map_of(&hub, "edge-1", &t1), set(&[&a.id, &b.id]));
    assert_eq!(map_of(&hub, "edge-2", &t2), set(&[&a.id, &b.id]));
    // Pulling again is a no-op that still acknowledges.
    let s = pull(&e1, &hub, "edge-1", &t1, &a.id, &[]);
    assert_eq!((s["already_present"].as_bool(), s["wire_bytes"].as_u64()), (Some(true), Some(0)), "{s}");
    assert_eq!(layer_ids(&e1), set(&[&a.id, &b.id]));
    assert!(hub.stop().success());
}

/// A pull via chunks whose missing chunks are more than it keeps in memory
/// checks the layer after the fetch, from its packs: exact either way, and
/// the hub's wrong bytes are still refused (`--overlap-max-bytes 0` forces it).
#[test]
fn pull_checks_after_the_fetch_when_the_layer_is_large() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, edge, edge_bad) = (d.join("hub"), d.join("edge"), d.join("edge-bad"));
    let (a, b) = base_and_update(d);
    a.ingest(&hub_store);
    b.ingest(&hub_store);
    let hub = Hub::start(&hub_store, &[], &[]);
    let t = token(&hub_store, "edge-l", "pull", "1h");
    let after = ["--via", "chunks", "--overlap-max-bytes", "0", "--store-group-bytes", "65536"];
    let s = pull(&edge, &hub, "edge-l", &t, &a.id, &after);
    assert_eq!(s["ingest"]["id"], a.id.as_str(), "{s}");
    assert_exact(&edge, &a);
    let s = pull(&edge, &hub, "edge-l", &t, &b.id, &after);
    assert_eq!(s["ingest"]["id"], b.id.as_str(), "{s}");
    assert_exact(&edge, &b);
    assert_verify_clean(&edge);
    assert!(hub.stop().success());

    let hub = Hub::start(&hub_store, &[], &[("CHUNKSTORE_TEST_CORRUPT_CHUNKS", "1")]);
    let url = hub.url();
    let mut args = vec!["pull", "--hub", url.as_str(), "--client", "edge-l", "--token", t.as_str(), &a.id];
    args.extend(after);
    let err = run_fails(&edge_bad, &args, &[]);
    assert!(err.contains("do not match its id"), "{err}");
    assert!(layer_ids(&edge_bad).is_empty());
    assert_verify_clean(&edge_bad);
    assert!(hub.stop().success());
}

/// Issue 2: the hub's map says the edge holds A, but the edge store is new
/// (and holds something else): a dedup pull of B falls back to chunks,
/// comes out exact, and the map is corrected.
#[test]
fn stale_map_falls_back_and_is_corrected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, old_edge, new_edge) = (d.join("hub"), d.join("edge-old"), d.join("edge-new"));
    let (a, b) = base_and_update(d);
    a.ingest(&hub_store);
    b.ingest(&hub_store);
    let other = Layer::new(d, "other", &[("x", &noise(5_000, 9))]);
    other.ingest(&new_edge);
    let hub = Hub::start(&hub_store, &[], &[]);
    let t = token(&hub_store, "edge-s", "pull", "1h");

    pull(&old_edge, &hub, "edge-s", &t, &a.id, &[]);
    assert_eq!(map_of(&hub, "edge-s", &t), set(&[&a.id]));

    // Same client name, a store that never saw A.
    let s = pull(&new_edge, &hub, "edge-s", &t, &b.id, &["--via", "dedup"]);
    assert_eq!((s["fell_back"].as_bool(), s["via"].as_str()), (Some(true), Some("chunks")), "{s}");
    assert!(s["fetched_chunks"].as_u64().unwrap() > 0, "{s}");
    assert_exact(&new_edge, &b);
    assert_eq!(layer_ids(&new_edge), set(&[&other.id, &b.id]));
    // The map now says what the edge really holds (the hub does not know `other`).
    assert_eq!(map_of(&hub, "edge-s", &t), set(&[&b.id]));
    // And the next dedup pull works without falling back.
    let s = pull(&new_edge, &hub, "edge-s", &t, &a.id, &[]);
    assert_eq!((s["fell_back"].as_bool(), s["via"].as_str()), (Some(false), Some("dedup")), "{s}");
    assert_exact(&new_edge, &a);
    assert!(hub.stop().success());
}

/// Issue 3: 32 clients, each with its own store and token, pull the same
/// layer at once (half by dedup tarball, half chunk by chunk); all exact.
#[test]
fn thirty_two_clients_at_once() {
    const CLIENTS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub_store = d.join("hub");
    let files: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("f{i}"), noise(500_000, 100 + i))).collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let l = Layer::new(d, "shared", &refs);
    l.ingest(&hub_store);
    let hub = Hub::start(&hub_store, &[], &[]);
    let t0 = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (hub, hub_store, l) = (&hub, &hub_store, &l);
                s.spawn(move || -> Result<(), String> {
                    let edge = d.join(format!("edge-{i}"));
                    let client = format!("edge-{i}");
                    let tok = token(hub_store, &client, "pull", "1h");
                    let via = if i % 2 == 0 { "dedup" } else { "chunks" };
                    let url = hub.url();
                    let args = ["--json", "pull", "--hub", &url, "--client", &client, "--token", &tok, "--via", via];
                    let o = run(&edge, &[&args[..], &[l.id.as_str()]].concat(), &[]);
                    if !o.status.success() {
                        return Err(format!("{client} via {via}: {}", text(&o.stderr)));
                    }
                    let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| e.to_string())?;
                    if v["fell_back"] != json!(false) || v["via"] != json!(via) {
                        return Err(format!("{client}: {v}"));
                    }
                    let o = run(&edge, &["export", &l.id, "-o", "-"], &[]);
                    if !o.status.success() || o.stdout != l.bytes {
                        return Err(format!("{client}: export differs: {}", text(&o.stderr)));
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect()
    });
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {CLIENTS} pulls failed:\n{failed:#?}\nhub log:\n{}",
        failed.len(),
        hub.log_text()
    );
    eprintln!("{CLIENTS} concurrent pulls of a {} byte layer: {:.1} s", l.bytes.len(), t0.elapsed().as_secs_f64());
    let t = token(&hub_store, "edge-7", "pull", "1h");
    assert_eq!(map_of(&hub, "edge-7", &t), set(&[&l.id]));
    assert!(hub.stop().success());
}

/// A layer of `n` bytes of noise in one file: ~n/80 KiB chunks, all stored raw.
pub(crate) fn noise_layer(d: &Path, name: &str, n: usize, seed: u64) -> Layer {
    Layer::new(d, name, &[(&format!("{name}.bin"), &noise(n, seed))])
}

/// Issue 6: a hub that serves wrong bytes: the pull refuses them, exits 1,
/// and the edge records nothing.
#[test]
fn wrong_bytes_from_the_hub_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, edge) = (d.join("hub"), d.join("edge"));
    let l = noise_layer(d, "l", 1 << 20, 60);
    l.ingest(&hub_store);
    let hub = Hub::start(&hub_store, &[], &[("CHUNKSTORE_TEST_CORRUPT_CHUNKS", "1")]);
    let t = token(&hub_store, "edge-c", "pull", "1h");
    let url = hub.url();
    let err =
        run_fails(&edge, &["pull", "--hub", &url, "--client", "edge-c", "--token", &t, "--via", "chunks", &l.id], &[]);
    assert!(err.contains("chunk blake3:") && err.contains("do not match its id"), "{err}");
    assert!(layer_ids(&edge).is_empty());
    assert_eq!(count_files(&edge.join("packs")), 0, "refused chunks were stored");
    assert_verify_clean(&edge);
    // Nothing was acknowledged.
    let no_client = http("GET", &hub.api("/clients/edge-c"), Some(&t), None);
    assert_api_error(no_client, 404, "NOT_FOUND");
    assert!(hub.stop().success());
}

/// Issue 7: tokens and scopes, anonymous reads with --public-read, pushes
/// with the right scope only, and the hub verifying what is pushed.
#[test]
fn tokens_scopes_and_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, build, e3, e5) = (d.join("hub"), d.join("build"), d.join("edge3"), d.join("edge5"));
    let a = Layer::new(d, "a", &[("a.bin", &noise(300_000, 70))]);
    a.ingest(&hub_store);
    let c = Layer::new(d, "c", &[("c.bin", &noise(300_000, 71)), ("a.bin", &noise(300_000, 70))]);
    c.ingest(&build);
    let hub = Hub::start(&hub_store, &[], &[]);
    let url = hub.url();
    let expiring = token(&hub_store, "edge-3", "pull", "1s");
    let issued = Instant::now();
    let t3 = token(&hub_store, "edge-3", "pull", "1h");
    let t4 = token(&hub_store, "edge-4", "pull", "1h");
    let tpush = token(&hub_store, "builder", "push", "1h");
    let pull_args = |tok: Option<&str>| -> Vec<String> {
        let mut v: Vec<String> = ["pull", "--hub", &url, "--client", "edge-3"].map(String::from).to_vec();
        if let Some(t) = tok {
            v.extend(["--token".to_string(), t.to_string()]);
        }
        v.push(a.id.clone());
        v
    };
    let refused = |tok: Option<&str>, needle: &str| {
        let args = pull_args(tok);
        let err = run_fails(&e3, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        assert!(err.contains(needle), "want {needle:?}: {err}");
        assert!(layer_ids(&e3).is_empty());
    };

    refused(None, "401");
    // A forged scope, and a token signed by another store's key.
    refused(Some(&t3.replacen(".pull.", ".admin.", 1)), "bad signature");
    refused(Some(&token(&d.join("elsewhere"), "edge-3", "pull", "1h")), "bad signature");
    // Another client's token: refused before any chunk moves, by either route.
    for via in ["dedup", "chunks"] {
        let mut args = pull_args(Some(&t4));
        args.splice(args.len() - 1..args.len() - 1, ["--via".to_string(), via.to_string()]);
        let err = run_fails(&e3, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        assert!(err.contains("403"), "{via}: {err}");
        assert_eq!(count_files(&e3.join("packs")), 0, "{via}: chunks were fetched for a refused pull");
    }
    assert_api_error(
        http("GET", &hub.api("/clients/edge-4"), Some(&t3.replacen(".pull.", ".admin.", 1)), None),
        401,
        "DENIED",
    );

    // edge-3's token reads edge-3's map, not edge-4's, and cannot push.
    let own = |c: &str, t: &str| {
        assert_api_error(http("GET", &hub.api(&format!("/clients/{c}")), Some(t), None), 404, "NOT_FOUND")
    };
    own("edge-3", &t3);
    own("edge-4", &t4);
    assert_api_error(http("GET", &hub.api("/clients/edge-4"), Some(&t3), None), 403, "FORBIDDEN");
    assert_api_error(
        http(
            "POST",
            &hub.api("/clients/edge-4/ack"),
            Some(&t3),
            Some(format!(r#"{{"layers":["{}"]}}"#, a.id).as_bytes()),
        ),
        403,
        "FORBIDDEN",
    );
    own("edge-4", &t4); // a refused ack registered nothing
    let err = run_fails(&build, &["push", "--hub", &url, "--token", &t3, &c.id], &[]);
    assert!(err.contains("403"), "{err}");

    // A push token pushes (only what the hub lacks); the layer pulls elsewhere exact.
    let s = run_json(&build, &["push", "--hub", &url, "--token", &tpush, c.prefix()], &[]);
    let (chunks, up) = (s["chunks"].as_u64().unwrap(), s["uploaded_chunks"].as_u64().unwrap());
    assert!(up > 0 && up < chunks, "c shares a.bin with the hub's layer: {s}");
    let env = [("CHUNKSTORE_HUB", url.as_str()), ("CHUNKSTORE_TOKEN", tpush.as_str())];
    let s = run_json(&build, &["push", &c.id], &env);
    assert_eq!(s["uploaded_chunks"], 0, "pushing again uploads nothing: {s}");
    pull(&e5, &hub, "edge-3", &t3, c.prefix(), &[]);
    assert_exact(&e5, &c);

    // The hub verifies uploads: a chunk whose bytes are not its id is refused, nothing stored.
    let fake_id = *blake3::hash(b"something else").as_bytes();
    let mut batch = fake_id.to_vec();
    batch.extend_from_slice(&5u32.to_le_bytes());
    batch.extend_from_slice(&5u32.to_le_bytes());
    batch.extend_from_slice(b"hello");
    let packs = count_files(&hub_store.join("packs"));
    assert_api_error(http("POST", &hub.api("/chunks"), Some(&t3), Some(&batch)), 403, "FORBIDDEN");
    let msg = assert_api_error(http("POST", &hub.api("/chunks"), Some(&tpush), Some(&batch)), 422, "CORRUPT");
    assert!(msg.contains("do not match its id"), "{msg}");
    assert_eq!(count_files(&hub_store.join("packs")), packs, "a refused upload left a pack");
    let (st, missing) = http("POST", &hub.api("/chunks/missing"), Some(&tpush), Some(&fake_id));
    assert_eq!((st, missing), (200, fake_id.to_vec()), "the refused chunk is still missing");

    // A pushed bundle is checked against the layer it rebuilds: the recipe
    // of a layer the hub holds, named as another layer, is refused and
    // records nothing.
    let (st, mut bundle) = http("GET", &hub.api(&format!("/layers/{}/bundle", a.id)), Some(&tpush), None);
    assert_eq!(st, 200, "{}", text(&bundle));
    let other = format!("sha256:{}", "ab".repeat(32));
    bundle[8..40].copy_from_slice(&[0xab; 32]);
    let layers = http("GET", &hub.api("/layers"), Some(&tpush), None);
    let commit = hub.api(&format!("/layers/{other}/commit"));
    let msg = assert_api_error(http("POST", &commit, Some(&tpush), Some(&bundle)), 422, "CORRUPT");
    assert!(msg.contains("rebuilt layer is"), "{msg}");
    assert_eq!(http("GET", &hub.api("/layers"), Some(&tpush), None), layers, "nothing recorded");

    // Expired (issued with a 1 s lifetime, at least 2 s ago).
    std::thread::sleep(Duration::from_secs(2).saturating_sub(issued.elapsed()));
    refused(Some(&expiring), "expired");
    assert!(hub.stop().success());

    // --public-read: layers, bundles and chunks without a token; dedup, acks,
    // maps and uploads still need one.
    let hub = Hub::start(&hub_store, &["--public-read"], &[]);
    let (st, body) = http("GET", &hub.api("/layers"), None, None);
    assert_eq!(st, 200, "{}", text(&body));
    let ids: BTreeSet<String> = serde_json::from_slice::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().into())
        .collect();
    assert_eq!(ids, set(&[&a.id, &c.id]));
    let (st, bundle) = http("GET", &hub.api(&format!("/layers/{}/bundle", a.id)), None, None);
    assert_eq!(st, 200, "{}", text(&bundle));
    let chunk = first_chunk(&bundle);
    let (st, got) = http("POST", &hub.api("/chunks/fetch"), None, Some(&chunk));
    assert_eq!(st, 200, "{}", text(&got));
    assert_eq!(&got[..32], &chunk[..]);
    assert_api_error(
        http("GET", &hub.api(&format!("/clients/edge-3/layers/{}/dedup", a.id)), None, None),
        401,
        "DENIED",
    );
    let ack = format!(r#"{{"layers":["{}"]}}"#, a.id);
    assert_api_error(http("POST", &hub.api("/clients/edge-3/ack"), None, Some(ack.as_bytes())), 401, "DENIED");
    assert_api_error(http("GET", &hub.api("/clients/edge-3"), None, None), 401, "DENIED");
    assert_api_error(http("POST", &hub.api("/chunks"), None, Some(&batch)), 401, "DENIED");
    assert_eq!(map_of(&hub, "edge-3", &t3), set(&[&c.id]));
    assert!(hub.stop().success());
}

/// Issue 8: error bodies are `{"error": {"code", "message"}}` with fitting
/// statuses; SIGTERM stops the server with exit 0.
#[test]
fn errors_are_json_and_sigterm_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub_store = d.join("hub");
    let a = Layer::new(d, "a", &[("a", &noise(100_000, 80))]);
    a.ingest(&hub_store);
    let hub = Hub::start(&hub_store, &[], &[]);
    let t = token(&hub_store, "edge-e", "pull", "1h");

    for base in [hub.api("/"), hub.api("")] {
        let (st, body) = http("GET", &base, None, None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((st, &v["service"], &v["protocol"]), (200, &json!("chunkstore"), &json!(1)), "{base}: {v}");
    }

    let zero = format!("sha256:{}", "0".repeat(64));
    let check = |method: &str, url: &str, tok: Option<&str>, body: Option<&[u8]>, status: u16, code: &str| {
        let got = http(method, url, tok, body);
        let msg = assert_api_error(got, status, code);
        eprintln!("{method} {url}: {status} {code}: {msg}");
    };
    let tk = Some(t.as_str());
    check("GET", &format!("http://{}/nowhere", hub.addr), tk, None, 404, "NOT_FOUND");
    check("GET", &hub.api("/layers"), None, None, 401, "DENIED");
    check("GET", &hub.api("/layers"), Some("cs1.garbage"), None, 401, "DENIED");
    check("GET", &hub.api(&format!("/layers/{zero}/bundle")), tk, None, 404, "NOT_FOUND");
    check("GET", &hub.api("/layers/not-a-digest/bundle"), tk, None, 400, "INVALID");
    check("POST", &hub.api("/chunks/fetch"), tk, Some(&[7u8; 31]), 400, "INVALID");
    check("POST", &hub.api("/chunks/fetch"), tk, Some(&[7u8; 32]), 404, "NOT_FOUND");
    check("POST", &hub.api("/chunks/missing"), tk, Some(&[7u8; 32]), 403, "FORBIDDEN");
    check("GET", &hub.api("/clients/edge-f"), tk, None, 403, "FORBIDDEN");
    check("GET", &hub.api(&format!("/clients/edge-e/layers/{zero}/dedup")), tk, None, 404, "NOT_FOUND");
    // What the HTTP layer refuses by itself comes in the same JSON shape.
    check("DELETE", &hub.api("/layers"), tk, None, 405, "METHOD_NOT_ALLOWED");
    check("POST", &hub.api("/clients/edge-e/ack"), tk, Some(b"layers"), 415, "UNSUPPORTED_MEDIA_TYPE");
    check("POST", &hub.api("/clients/edge-e/ack"), tk, Some(b"{not json"), 400, "INVALID");
    check("POST", &hub.api("/clients/edge-e/ack"), tk, Some(b"{\"layer\": 1}"), 422, "INVALID");
    // A body is read only once its token passes: unauthenticated, even one
    // over the limit is refused for the token; with one, for its size.
    let huge = vec![0u8; 65 << 20];
    check("POST", &hub.api("/chunks"), None, Some(&huge), 401, "DENIED");
    let push = token(&hub_store, "edge-e", "push", "1h");
    check("POST", &hub.api("/chunks"), Some(&push), Some(&huge), 413, "TOO_LARGE");
    // The refusals and failures above did not hurt the hub.
    let s = pull(&d.join("edge"), &hub, "edge-e", &t, &a.id, &[]);
    assert_eq!(s["fell_back"], false, "{s}");
    assert_exact(&d.join("edge"), &a);

    let log = hub.log.clone();
    let status = hub.stop();
    assert_eq!(status.code(), Some(0), "serve after SIGTERM: {status}");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}
