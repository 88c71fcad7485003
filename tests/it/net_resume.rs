//! Interrupted transfers: pulls killed midway (via chunks and via dedup)
//! and a hub killed and restarted under a running pull. Each resumes, or
//! fails cleanly and succeeds when run again, fetching only what it lacks.

use crate::common::pseudo_random as noise;
use crate::net::*;
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Start a slow chunk-by-chunk pull (one request of four chunks at a time,
/// each request's chunks stored as their own group) in the background.
fn slow_pull(edge: &Path, hub: &Hub, client: &str, tok: &str, layer: &str) -> Guard {
    let url = hub.url();
    let args = [
        "--json",
        "pull",
        "--hub",
        &url,
        "--client",
        client,
        "--token",
        tok,
        "--via",
        "chunks",
        "--concurrency",
        "1",
        "--batch",
        "4",
        "--store-group-bytes",
        "200000",
        layer,
    ];
    let c = command(edge, &args, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning pull");
    Guard(Some(c))
}

/// Wait until `edge` has at least `n` packs (the pull is storing what it fetched).
fn wait_for_packs(edge: &Path, n: usize, pull: &mut Guard) {
    let t = Instant::now();
    while count_files(&edge.join("packs")) < n {
        if let Some(s) = pull.try_wait() {
            panic!("the pull ended ({s}) before {n} packs were stored");
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no {n} packs after 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Issue 4: a pull killed halfway keeps what it stored; run again, it
/// fetches only what it still lacks, and the layer comes out exact.
#[test]
fn killed_pull_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, edge) = (d.join("hub"), d.join("edge"));
    let l = noise_layer(d, "big", 8 << 20, 40);
    let total = l.ingest(&hub_store)["chunks"].as_u64().unwrap();
    assert!(total > 60, "{total} chunks");
    let hub = Hub::start(&hub_store, &[], &[]);
    let t = token(&hub_store, "edge-k", "pull", "1h");

    let mut p = slow_pull(&edge, &hub, "edge-k", &t, &l.id);
    wait_for_packs(&edge, 3, &mut p);
    p.kill();
    assert!(layer_ids(&edge).is_empty(), "a killed pull recorded the layer");

    let s = pull(&edge, &hub, "edge-k", &t, &l.id, &["--via", "chunks"]);
    let fetched = s["fetched_chunks"].as_u64().unwrap();
    assert!(fetched > 0 && fetched < total, "the second run fetched {fetched} of {total} chunks: {s}");
    assert!(total - fetched >= 8, "at least two groups of four survived the kill: {fetched} of {total}");
    assert_exact(&edge, &l);
    assert_eq!(map_of(&hub, "edge-k", &t), set(&[&l.id]));
    assert!(hub.stop().success());
}

/// Bytes kept in `edge/partial/` by interrupted dedup pulls.
fn partial_bytes(edge: &Path) -> u64 {
    let Ok(d) = std::fs::read_dir(edge.join("partial")) else { return 0 };
    d.map(|f| f.unwrap().metadata().unwrap().len()).sum()
}

/// Start a dedup pull in the background; return once it has kept `bytes`
/// of the tarball in `edge/partial/` (the hub must stream slowly).
fn dedup_pull_until_kept(edge: &Path, hub: &Hub, client: &str, tok: &str, layer: &str, bytes: u64) -> Guard {
    let url = hub.url();
    let args = ["--json", "pull", "--hub", &url, "--client", client, "--token", tok, layer];
    let mut p = Guard(Some(command(edge, &args, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()));
    let started = Instant::now();
    while partial_bytes(edge) < bytes {
        if let Some(s) = p.try_wait() {
            panic!("the pull ended ({s}) before it had kept {bytes} bytes");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no {bytes} bytes kept after 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    p
}

/// Issue 5: a dedup pull (the default) killed midway keeps the part of the
/// tarball it received; run again, the hub regenerates the tarball, proves
/// the part it leaves out is that part, and sends only the rest. Kept bytes
/// that do not match what the hub would send are dropped: the pull starts over.
#[test]
fn killed_dedup_pull_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, edge) = (d.join("hub"), d.join("edge"));
    let l = noise_layer(d, "big", 6 << 20, 41);
    l.ingest(&hub_store);
    let l2 = noise_layer(d, "other", 1 << 20, 42);
    l2.ingest(&hub_store);
    // 256 KiB of stream every 40 ms: the whole tarball takes about a second.
    let hub = Hub::start(&hub_store, &[], &[("CHUNKSTORE_TEST_STREAM_DELAY_MS", "40")]);
    let t = token(&hub_store, "edge-d", "pull", "1h");
    // An uninterrupted pull by a client holding the same (nothing), its name as
    // long (the tarball carries it): the whole tarball.
    let tr = token(&hub_store, "edge-r", "pull", "1h");
    let full = pull(&d.join("ref"), &hub, "edge-r", &tr, &l.id, &[])["wire_bytes"].as_u64().unwrap();

    let mut p = dedup_pull_until_kept(&edge, &hub, "edge-d", &t, &l.id, 2 << 20);
    p.kill();
    assert!(layer_ids(&edge).is_empty(), "a killed pull recorded the layer");
    let kept = partial_bytes(&edge);
    assert!(kept >= 2 << 20, "{kept} bytes kept");

    let s = pull(&edge, &hub, "edge-d", &t, &l.id, &[]);
    assert_eq!((s["via"].as_str(), s["fell_back"].as_bool()), (Some("dedup"), Some(false)), "{s}");
    assert_eq!(s["resumed_bytes"].as_u64(), Some(kept), "{s}");
    assert_eq!(s["wire_bytes"].as_u64(), Some(full - kept), "only the rest crossed the network: {s}");
    assert_exact(&edge, &l);
    assert_eq!(partial_bytes(&edge), 0, "the kept bytes outlived the pull");
    assert_eq!(map_of(&hub, "edge-d", &t), set(&[&l.id]));

    // Kept bytes the hub's tarball does not begin with are not used.
    let junk = edge.join("partial").join(format!("dedup-edge-d-{}", &l2.id[7..]));
    std::fs::create_dir_all(junk.parent().unwrap()).unwrap();
    std::fs::write(&junk, noise(300_000, 43)).unwrap();
    let s = pull(&edge, &hub, "edge-d", &t, &l2.id, &[]);
    assert_eq!((s["via"].as_str(), s["resumed_bytes"].as_u64()), (Some("dedup"), Some(0)), "{s}");
    assert_exact(&edge, &l2);
    assert!(!junk.exists(), "unusable kept bytes were left behind");
    assert!(hub.stop().success());
}

/// A hub killed while it streams a dedup tarball: the edge keeps what
/// arrived (a broken transfer is not a damaged tarball), fails cleanly once
/// the hub stays away, and run again against the restarted hub sends for
/// the rest only.
#[test]
fn hub_killed_mid_dedup_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, edge) = (d.join("hub"), d.join("edge"));
    let l = noise_layer(d, "big", 6 << 20, 44);
    l.ingest(&hub_store);
    let slow = [("CHUNKSTORE_TEST_STREAM_DELAY_MS", "40")];
    let mut hub = Hub::start(&hub_store, &[], &slow);
    let t = token(&hub_store, "edge-h", "pull", "1h");
    let p = dedup_pull_until_kept(&edge, &hub, "edge-h", &t, &l.id, 1 << 20);
    hub.kill();
    let o = p.wait_output(Duration::from_secs(120));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("corrupt") && !err.contains("panicked"), "{err}");
    assert!(layer_ids(&edge).is_empty(), "a failed pull recorded the layer");
    let kept = partial_bytes(&edge);
    assert!(kept >= 1 << 20, "the received part was dropped: {kept} bytes kept");
    assert_verify_clean(&edge);

    let addr = hub.addr.clone();
    let hub = Hub::start_on(&hub_store, &addr, &[], &slow).expect("restarting the hub");
    let s = pull(&edge, &hub, "edge-h", &t, &l.id, &[]);
    assert_eq!((s["via"].as_str(), s["resumed_bytes"].as_u64()), (Some("dedup"), Some(kept)), "{s}");
    assert_exact(&edge, &l);
    assert_eq!(partial_bytes(&edge), 0);
    assert!(hub.stop().success());
}

/// Issue 5: the hub is killed mid-pull and restarted on the same port with
/// the same store; the pull rides it out with retries (or fails cleanly,
/// and a rerun succeeds). Either way the edge ends up exact.
#[test]
fn hub_restarted_mid_pull() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, edge) = (d.join("hub"), d.join("edge"));
    let l = noise_layer(d, "big", 6 << 20, 50);
    l.ingest(&hub_store);
    let mut hub = Hub::start(&hub_store, &[], &[]);
    let t = token(&hub_store, "edge-r", "pull", "1h");

    let mut p = slow_pull(&edge, &hub, "edge-r", &t, &l.id);
    wait_for_packs(&edge, 2, &mut p);
    hub.kill();
    let addr = hub.addr.clone();
    let started = Instant::now();
    let hub = loop {
        match Hub::start_on(&hub_store, &addr, &[], &[]) {
            Ok(h) => break h,
            Err(e) if started.elapsed() > Duration::from_secs(10) => panic!("cannot restart the hub: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    eprintln!("hub back on {addr} after {:.2} s", started.elapsed().as_secs_f64());
    let o = p.wait_output(Duration::from_secs(120));
    if o.status.success() {
        let s: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(s["layer"], l.id.as_str(), "{s}");
        eprintln!("the pull survived the restart: {s}");
    } else {
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(layer_ids(&edge).is_empty(), "a failed pull recorded the layer");
        assert_verify_clean(&edge);
        eprintln!("the pull failed cleanly ({}); running it again", err.trim());
        pull(&edge, &hub, "edge-r", &t, &l.id, &["--via", "chunks"]);
    }
    assert_exact(&edge, &l);
    assert_eq!(map_of(&hub, "edge-r", &t), set(&[&l.id]));
    assert!(hub.stop().success());
}
