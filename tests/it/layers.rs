//! Layers in a store through the real `chunkstore` binary: compressed
//! input, stdin/stdout, dedup across layers, layer prefix resolution, the
//! `--json` shapes of ls/stat/verify, and readers beside a running ingest.

use crate::common::*;
use crate::roundtrip::round_trip;
use sha2::Digest;
use std::path::Path;
use std::process::{Command, Stdio};

/// A tar of a few hundred KiB of mixed files.
fn medium_tar(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("medium");
    std::fs::create_dir_all(&root).unwrap();
    for i in 0..4u64 {
        std::fs::write(root.join(format!("f{i}.bin")), pseudo_random(90_000 + i as usize * 1000, 100 + i)).unwrap();
    }
    std::fs::write(root.join("text.txt"), "compressible text\n".repeat(2000)).unwrap();
    let tar = dir.join("medium.tar");
    sh(dir, &format!("tar -cf '{}' -C '{}' .", tar.display(), root.display()));
    tar
}

#[test]
fn gzip_and_zstd_inputs_give_the_same_diff_id_and_record_the_blob_digest() {
    let dir = tmp();
    let d = dir.path();
    let tar = medium_tar(d);
    let plain = std::fs::read(&tar).unwrap();
    let id = diff_id(&plain);
    let half = plain.len() / 2;
    std::fs::write(d.join("head"), &plain[..half]).unwrap();
    std::fs::write(d.join("rest"), &plain[half..]).unwrap();
    sh(
        d,
        "gzip -c medium.tar > l.tar.gz; zstd -q -c medium.tar > l.tar.zst; \
         gzip -c head > multi.tar.gz; gzip -c rest >> multi.tar.gz; \
         zstd -q -c head > multi.tar.zst; zstd -q -c rest >> multi.tar.zst",
    );
    for (name, multi, kind) in [("l.tar.gz", "multi.tar.gz", "gzip"), ("l.tar.zst", "multi.tar.zst", "zstd")] {
        let store = d.join(format!("store-{kind}"));
        let blob = std::fs::read(d.join(name)).unwrap();
        let blob_digest = diff_id(&blob);
        let s = ingest(&store, &d.join(name));
        assert_eq!(s["id"], id.as_str(), "{name}");
        assert_eq!(s["compression"], kind, "{name}");
        assert_eq!(s["blob"], blob_digest.as_str(), "{name}: the compressed digest is recorded");
        assert_eq!(s["input_bytes"], blob.len() as u64, "{name}");
        assert_eq!(s["tar_size"], plain.len() as u64, "{name}");
        assert!(export(&store, &id) == plain, "{name}: export gives the uncompressed tar");
        // The blob digest (or a prefix of it) names the layer too.
        assert!(export(&store, &blob_digest["sha256:".len().."sha256:".len() + 16]) == plain);
        let ls = cs_json(&store, &["ls"]);
        assert_eq!(ls[0]["blob"], blob_digest.as_str(), "{name}: ls shows the blob digest");
        // Several gzip members / zstd frames: the same layer.
        let s = ingest(&store, &d.join(multi));
        assert_eq!(s["id"], id.as_str(), "{multi}");
        assert_eq!(s["already_present"], true, "{multi}");
        assert_eq!(s["new_stored_bytes"], 0, "{multi}");
        let multi_digest = diff_id(&std::fs::read(d.join(multi)).unwrap());
        assert!(export(&store, &multi_digest) == plain, "{multi}: export by its blob digest");
    }
    // The same layer again, uncompressed and then compressed: nothing new stored.
    let store = d.join("store-mixed");
    let first = ingest(&store, &tar);
    assert!(first["new_stored_bytes"].as_u64().unwrap() > 0);
    for (name, kind) in [("l.tar.gz", "gzip"), ("l.tar.zst", "zstd")] {
        let s = ingest(&store, &d.join(name));
        assert_eq!(s["id"], id.as_str());
        assert_eq!(s["already_present"], true, "{name}");
        assert_eq!(s["new_stored_bytes"], 0, "{name}");
        // The record keeps the first compressed blob it met; the input's own fields say how this one came.
        assert_eq!(s["compression"], "gzip", "{name}");
        assert_eq!(s["input_compression"], kind, "{name}");
        assert_eq!(s["input_blob"], diff_id(&std::fs::read(d.join(name)).unwrap()).as_str(), "{name}");
    }
    assert_eq!(layer_ids(&store), vec![id.clone()]);
    // Every compressed digest the layer arrived under names it (a registry
    // may hold the same diff_id as a gzip and a zstd blob).
    for name in ["l.tar.gz", "l.tar.zst"] {
        let blob = diff_id(&std::fs::read(d.join(name)).unwrap());
        assert!(export(&store, &blob) == plain, "export by the digest of {name} after re-ingest");
    }
    assert_verify_clean(&store);
}

#[test]
fn ingest_reads_stdin_and_export_writes_stdout() {
    let dir = tmp();
    let d = dir.path();
    let tar = medium_tar(d);
    let plain = std::fs::read(&tar).unwrap();
    sh(d, "gzip -c medium.tar > l.tar.gz");
    let store = d.join("store");
    for input in ["medium.tar", "l.tar.gz"] {
        let o = Command::new(bin())
            .args(["--store", store.to_str().unwrap(), "--json", "ingest", "-"])
            .stdin(Stdio::from(std::fs::File::open(d.join(input)).unwrap()))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v[0]["id"], diff_id(&plain).as_str(), "{input} via stdin");
        assert_eq!(v[0]["input_bytes"], std::fs::metadata(d.join(input)).unwrap().len(), "{input}");
    }
    // `-o -`: the tar on stdout and nothing else; `-o FILE` writes the same bytes.
    let o = cs(&store, &["export", &diff_id(&plain)[..20], "-o", "-"]);
    assert!(o.status.success());
    assert!(o.stdout == plain, "export -o - writes exactly the tar to stdout");
    let out = d.join("out.tar");
    let v = cs_json(&store, &["export", &diff_id(&plain), "-o", out.to_str().unwrap()]);
    assert_eq!(v["layer"], diff_id(&plain).as_str());
    assert_eq!(v["bytes"], plain.len() as u64);
    assert!(std::fs::read(&out).unwrap() == plain);
}

#[test]
fn reingesting_a_layer_stores_nothing_new() {
    let dir = tmp();
    let tar = medium_tar(dir.path());
    let store = dir.path().join("store");
    let first = ingest(&store, &tar);
    assert_eq!(first["already_present"], false);
    assert!(first["new_stored_bytes"].as_u64().unwrap() > 300_000, "{first}");
    assert!(first["new_chunks"].as_u64().unwrap() > 0);
    let stat1 = cs_json(&store, &["stat"]);
    let second = ingest(&store, &tar);
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["already_present"], true);
    for k in ["new_stored_bytes", "new_chunks", "new_chunk_bytes", "new_files"] {
        assert_eq!(second[k], 0, "{k}: {second}");
    }
    assert_eq!(second["ingested_at"], first["ingested_at"], "re-ingest keeps the first ingest time");
    let stat2 = cs_json(&store, &["stat"]);
    assert_eq!(stat1["stats"], stat2["stats"], "re-ingest changed the store");
    assert_eq!(layer_ids(&store).len(), 1);
}

#[test]
fn layers_sharing_files_store_them_once() {
    let dir = tmp();
    let d = dir.path();
    let files: Vec<Vec<u8>> = (0..6).map(|i| pseudo_random(200 * 1024, 500 + i)).collect();
    let mut a = tar::Builder::new(Vec::new());
    let mut b = tar::Builder::new(Vec::new());
    for (i, data) in files.iter().enumerate() {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        a.append_data(&mut h.clone(), format!("usr/lib/lib{i}.so"), &data[..]).unwrap();
        // Same content, other path, other metadata: only the content dedups.
        h.set_mtime(1_800_000_000);
        b.append_data(&mut h, format!("opt/app/copy-of-lib{i}.so"), &data[..]).unwrap();
    }
    let fresh = pseudo_random(200 * 1024, 999);
    let mut h = tar::Header::new_gnu();
    h.set_size(fresh.len() as u64);
    b.append_data(&mut h, "opt/app/new.bin", &fresh[..]).unwrap();
    let (a, b) = (a.into_inner().unwrap(), b.into_inner().unwrap());
    std::fs::write(d.join("a.tar"), &a).unwrap();
    std::fs::write(d.join("b.tar"), &b).unwrap();
    let store = d.join("store");
    let sa = round_trip(&store, &d.join("a.tar"));
    let stored_a = cs_json(&store, &["stat"])["stats"]["stored_bytes"].as_u64().unwrap();
    assert!(stored_a as usize >= 6 * 200 * 1024, "random data does not compress: {sa}");
    let sb = round_trip(&store, &d.join("b.tar"));
    let new_b = sb["new_stored_bytes"].as_u64().unwrap();
    // Only the one new file (200 KiB, incompressible) is new in layer b.
    assert!(new_b >= 200 * 1024, "the new file must be stored: {sb}");
    assert!(new_b < 260 * 1024, "layer b ({} bytes) should add little more than its one new file: {sb}", b.len());
    assert_eq!(sb["new_files"], 1, "{sb}");
    let stats = &cs_json(&store, &["stat"])["stats"];
    assert_eq!(stats["stored_bytes"], stored_a + new_b);
    assert_eq!(stats["files"], 7, "{stats}");
    assert_eq!(stats["logical_bytes"], (a.len() + b.len()) as u64);
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 1.7, "{stats}");
    let index = std::fs::metadata(store.join("chunkstore.redb")).unwrap().len();
    assert_eq!(stats["index_bytes"], index, "{stats}");
}

#[test]
fn a_big_file_with_partial_overlap_dedups_by_chunk() {
    // 9 MiB: bigger than the chunker's 8 MiB streaming window.
    let big = pseudo_random(9 << 20, 77);
    let dir = tmp();
    let d = dir.path();
    let one = |name: &str, data: &[u8]| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "data/big.bin", data).unwrap();
        let t = b.into_inner().unwrap();
        std::fs::write(d.join(name), &t).unwrap();
        d.join(name)
    };
    // v2: 1000 bytes inserted at 1 MiB (shifts every later byte, and so where
    // the streaming window's refills fall) and 100 bytes overwritten past 8 MiB.
    let mut v2 = big[..1 << 20].to_vec();
    v2.extend_from_slice(&pseudo_random(1000, 78));
    v2.extend_from_slice(&big[1 << 20..]);
    let at = (17 << 19) + 1000;
    v2[at..at + 100].copy_from_slice(&pseudo_random(100, 79));
    // v3: the file without its first 777 bytes: only its first chunk may differ.
    let v3 = &big[777..];
    let store = d.join("store");
    let s1 = ingest(&store, &one("v1.tar", &big));
    let total = s1["chunks"].as_u64().unwrap();
    assert!(total >= 36, "9 MiB in chunks of at most 256 KiB: {s1}");
    // With this data a correct chunker needs exactly one new chunk per edit.
    for (name, data, most) in [("v2.tar", &v2[..], 3), ("v3.tar", v3, 1)] {
        // v2 comes back from chunks mostly stored for v1.
        let s = if name == "v2.tar" { round_trip(&store, &one(name, data)) } else { ingest(&store, &one(name, data)) };
        let new = s["new_chunks"].as_u64().unwrap();
        let new_bytes = s["new_chunk_bytes"].as_u64().unwrap();
        assert!(new >= 1, "{name}: an edited file has new chunks: {s}");
        assert!(new <= most, "{name}: {new} of {total} chunks new; cut points should resync after each edit: {s}");
        assert!(new_bytes <= most * 256 * 1024, "{name}: {new_bytes} new bytes: {s}");
        assert!(s["new_stored_bytes"].as_u64().unwrap() < new_bytes + 4096, "{name}: {s}");
    }
}

#[test]
fn layer_prefixes_resolve_or_fail_clearly() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    // 17 layers: two of them must share a first hex digit.
    let mut args = vec!["ingest".to_string()];
    let mut ids = Vec::new();
    for seed in 0..17 {
        let t = small_tar(seed);
        ids.push(diff_id(&t)["sha256:".len()..].to_string());
        let p = d.join(format!("l{seed}.tar"));
        std::fs::write(&p, &t).unwrap();
        args.push(p.to_str().unwrap().to_string());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(cs_json(&store, &a).as_array().unwrap().len(), 17);

    let unique_prefix = |id: &str| {
        (1..=64).map(|n| &id[..n]).find(|p| ids.iter().filter(|o| o.starts_with(p)).count() == 1).unwrap().to_string()
    };
    let first: Vec<char> = ids.iter().map(|i| i.chars().next().unwrap()).collect();
    let shared = first.iter().find(|c| first.iter().filter(|o| o == c).count() > 1).unwrap().to_string();
    // Layer 0, and the layers that need more than one digit.
    for (i, id) in ids.iter().enumerate().filter(|(i, id)| *i == 0 || id.starts_with(&shared)) {
        let p = unique_prefix(id);
        assert!(i == 0 || p.len() >= 2, "{p}");
        let want = small_tar(i as u64);
        assert!(export(&store, &p) == want, "unique prefix {p}");
        if i == 0 {
            assert!(export(&store, &format!("sha256:{p}")) == want, "sha256: prefix");
            assert!(export(&store, &p.to_uppercase()) == want, "upper-case hex");
            assert!(export(&store, id) == want, "whole digest");
        }
    }
    let unused = (0..256).map(|n| format!("{n:02x}")).find(|p| !ids.iter().any(|i| i.starts_with(p.as_str()))).unwrap();

    let fails = |layer: &str, needle: &str, kind: &str| {
        let o = cs(&store, &["export", layer, "-o", d.join("never.tar").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{layer}: {err}");
        assert!(err.contains(needle), "{layer}: want {needle:?} in {err}");
        assert!(!d.join("never.tar").exists(), "a failed export leaves no output file");
        // With the tar going to stdout, the JSON error goes to stderr.
        let o = cs(&store, &["--json", "export", layer, "-o", "-"]);
        assert_ne!(o.status.code(), Some(0));
        assert!(o.stdout.is_empty());
        let v: serde_json::Value = serde_json::from_slice(&o.stderr).expect("--json error object");
        assert_eq!(v["error"]["kind"], kind, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{v}");
    };
    fails(&shared, "matches", "Ambiguous");
    fails(&shared, "give more digits", "Ambiguous");
    fails(&unused, "no layer matches", "NotFound");
    fails(&format!("sha256:{unused}{}", "0".repeat(62)), "no layer matches", "NotFound");
    fails("not-hex!", "is not a layer digest", "InvalidInput");
    fails("", "is not a layer digest", "InvalidInput");
    fails(&"a".repeat(65), "is not a layer digest", "InvalidInput");
}

#[test]
fn ls_stat_verify_json_shapes() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    // Empty store: empty list, zero totals, clean verify.
    assert_eq!(cs_json(&store, &["ls"]), serde_json::json!([]));
    let st = cs_json(&store, &["stat"]);
    assert_eq!(st["stats"]["layers"], 0);
    assert_eq!(st["stats"]["stored_bytes"], 0);
    let v = cs_json(&store, &["verify"]);
    assert_eq!((v["chunks"].as_u64(), v["layers"].as_u64()), (Some(0), Some(0)));

    let a = small_tar(1);
    let b = small_tar(2);
    std::fs::write(d.join("a.tar"), &a).unwrap();
    std::fs::write(d.join("b.tar"), &b).unwrap();
    sh(d, "zstd -q -c b.tar > b.tar.zst");
    let sa = ingest(&store, &d.join("a.tar"));
    let sb = ingest(&store, &d.join("b.tar.zst"));

    let ls = cs_json(&store, &["ls"]);
    let mut ls = ls.as_array().unwrap().clone();
    assert_eq!(ls.len(), 2);
    // Oldest first; layers ingested within the same second are ordered by id.
    ls.sort_by_key(|l| l["id"] != sa["id"]);
    let keys = ["id", "blob", "compression", "tar_size", "entries", "files", "file_bytes", "chunks", "ingested_at"];
    for (l, s, tar) in [(&ls[0], &sa, &a), (&ls[1], &sb, &b)] {
        let obj = l.as_object().unwrap();
        let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
        got.sort();
        let mut want = keys.to_vec();
        want.sort();
        assert_eq!(got, want, "ls --json keys");
        for k in keys {
            assert_eq!(l[k], s[k], "ls agrees with the ingest summary on {k}");
        }
        assert_eq!(l["id"], diff_id(tar).as_str());
        assert_eq!(l["tar_size"], tar.len() as u64);
        assert_eq!(l["entries"], 4);
        assert_eq!(l["files"], 4);
        assert_eq!(l["file_bytes"], 3 + 700 + 70_000);
        assert!(l["chunks"].as_u64().unwrap() >= 3, "three non-empty files: {l}");
        assert!(l["ingested_at"].as_u64().unwrap() > 1_600_000_000);
    }
    assert_eq!(ls[0]["blob"], serde_json::Value::Null);
    assert_eq!(ls[0]["compression"], "none");
    assert_eq!(ls[1]["compression"], "zstd");
    assert!(ls[1]["blob"].as_str().unwrap().starts_with("sha256:"));

    let st = cs_json(&store, &["stat"]);
    assert!(st["store"].is_string(), "{st}");
    let s = &st["stats"];
    for k in ["layers", "logical_bytes", "stored_bytes", "recipe_bytes", "chunks", "chunk_bytes", "files", "packs"] {
        assert!(s[k].is_u64(), "stat {k}: {st}");
    }
    assert_eq!(s["layers"], 2);
    assert_eq!(s["logical_bytes"], (a.len() + b.len()) as u64);
    assert_eq!(s["files"], 7, "distinct files (the empty one is shared): {s}");
    assert_eq!(s["chunk_bytes"], 2 * (3 + 700 + 70_000), "{s}");
    assert_eq!(s["chunks"].as_u64(), Some(sa["new_chunks"].as_u64().unwrap() + sb["new_chunks"].as_u64().unwrap()));
    assert_eq!(
        s["stored_bytes"].as_u64(),
        Some(sa["new_stored_bytes"].as_u64().unwrap() + sb["new_stored_bytes"].as_u64().unwrap())
    );
    let ratio = s["dedup_ratio"].as_f64().unwrap();
    let denom = s["stored_bytes"].as_u64().unwrap() + s["recipe_bytes"].as_u64().unwrap();
    assert!((ratio - s["logical_bytes"].as_u64().unwrap() as f64 / denom as f64).abs() < 1e-9, "{s}");
    for k in ["min", "avg", "max"] {
        assert!(s["chunker"][k].as_u64().unwrap() > 0, "{s}");
    }

    let v = cs_json(&store, &["verify", "--full"]);
    assert_eq!(v["chunks"], s["chunks"], "verify re-hashes every chunk: {v}");
    assert_eq!(v["files"], s["files"], "{v}");
    assert_eq!(v["layers"], 2);
    assert_eq!(v["layers_rebuilt"], 2);
    assert_eq!(v["damaged"], serde_json::json!([]));
    assert_eq!(cs_json(&store, &["verify"])["layers_rebuilt"], 0);

    // Damage one pack byte: verify exits 1 and names what is damaged.
    let packs = walk(&store.join("packs"));
    assert!(!packs.is_empty(), "packs live under packs/");
    let victim = &packs[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(victim, &bytes).unwrap();
    let o = cs(&store, &["--json", "verify"]);
    assert_eq!(o.status.code(), Some(1), "verify must fail on damage");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let damaged = v["damaged"].as_array().unwrap();
    assert!(!damaged.is_empty(), "{v}");
    for dmg in damaged {
        assert!(["chunk", "file", "layer", "pack"].contains(&dmg["kind"].as_str().unwrap()), "{dmg}");
        assert!(dmg["id"].is_string() && dmg["problem"].is_string(), "{dmg}");
    }
    let o = cs(&store, &["verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("DAMAGED"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Hands out `data`, but stops at `gate_at` until the test opens the gate.
struct GatedReader {
    data: Vec<u8>,
    pos: usize,
    gate_at: usize,
    reached: Option<std::sync::mpsc::Sender<()>>,
    open: std::sync::mpsc::Receiver<()>,
}

impl std::io::Read for GatedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.gate_at {
            if let Some(tx) = self.reached.take() {
                tx.send(()).unwrap();
                self.open
                    .recv_timeout(std::time::Duration::from_secs(60))
                    .map_err(|_| std::io::Error::other("the test never opened the gate"))?;
            }
        }
        let limit = if self.reached.is_some() { self.gate_at } else { self.data.len() };
        let n = buf.len().min(limit - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn readers_keep_working_while_an_ingest_runs() {
    use chunkstore::{IngestOptions, LayerId, Store};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let dir = tmp();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let small = small_tar(5);
    let small_id = store.ingest(&small[..], &IngestOptions::default()).unwrap().layer.id;
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..3u64 {
        let data = pseudo_random(2 << 20, 60 + i);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("big/{i}.bin"), &data[..]).unwrap();
    }
    let big = b.into_inner().unwrap();
    let big_id = LayerId::from_bytes(sha2::Sha256::digest(&big).into());

    // The ingest stops 5 MiB in: past the writer's first 4 MiB batch, so chunks
    // are being packed while it waits.
    let (reached_tx, reached) = std::sync::mpsc::channel();
    let (open, open_rx) = std::sync::mpsc::channel();
    let reader = GatedReader { data: big.clone(), pos: 0, gate_at: 5 << 20, reached: Some(reached_tx), open: open_rx };
    let ingest = {
        let store = store.clone();
        std::thread::spawn(move || store.ingest(reader, &IngestOptions::default()))
    };

    let rounds = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, rounds, stop, small) = (store.clone(), rounds.clone(), stop.clone(), small.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut out = Vec::new();
                    store.export(&small_id, &mut out).unwrap();
                    assert!(out == small, "export during an ingest differs");
                    let layers = store.layers().unwrap();
                    assert!(layers.iter().any(|l| l.id == small_id));
                    assert!(layers.len() <= 2);
                    assert_eq!(store.resolve_layer(&small_id.to_hex()[..12]).unwrap(), small_id);
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    reached.recv_timeout(Duration::from_secs(60)).expect("the ingest reaches the gate");
    // The ingest is under way and holds the write lock: reads must go on.
    let before = rounds.load(Ordering::Relaxed);
    let t = Instant::now();
    while rounds.load(Ordering::Relaxed) < before + 6 {
        assert!(t.elapsed() < Duration::from_secs(30), "readers made no progress while an ingest ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ids: Vec<LayerId> = store.layers().unwrap().iter().map(|l| l.id).collect();
    assert_eq!(ids, vec![small_id], "a layer being ingested is not visible yet");
    assert!(store.verify(Default::default()).unwrap().is_clean(), "verify during an ingest");
    assert!(store.resolve_layer(&big_id.to_hex()).is_err());
    open.send(()).unwrap();

    let s = ingest.join().unwrap().unwrap();
    assert_eq!(s.layer.id, big_id);
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("a reader failed");
    }
    let mut out = Vec::new();
    store.export(&big_id, &mut out).unwrap();
    assert!(out == big);
    assert_eq!(store.layers().unwrap().len(), 2);
}

/// `--digest` (the blob digest a registry checks a pushed blob against) and
/// `--diff-id`: the layer is recorded only if the input has them, and a
/// mismatch leaves the store as it was.
#[test]
fn ingest_checks_the_digests_it_is_given() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    let tar = small_tar(41);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let (tar_path, gz_path) = (d.join("l.tar"), d.join("l.tar.gz"));
    std::fs::write(&tar_path, &tar).unwrap();
    std::fs::write(&gz_path, &gz).unwrap();
    let (blob, id) = (format!("sha256:{}", sha256_hex(&gz)), diff_id(&tar));
    let wrong = format!("sha256:{}", "0".repeat(64));
    let run = |args: &[&str]| {
        let mut a = vec!["ingest"];
        a.extend_from_slice(args);
        cs(&store, &a)
    };
    cs_ok(&store, &["ls"]);
    for args in [
        vec!["--digest", &wrong, gz_path.to_str().unwrap()],
        vec!["--digest", &id, gz_path.to_str().unwrap()],
        vec!["--diff-id", &blob, gz_path.to_str().unwrap()],
        vec!["--diff-id", &wrong, tar_path.to_str().unwrap()],
    ] {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("not the expected"), "{args:?}: {err}");
        assert!(layer_ids(&store).is_empty(), "{args:?} recorded a layer");
        assert_eq!(count_files(&store.join("packs")), 0, "{args:?} left a pack");
    }
    assert_verify_clean(&store);
    // Right digests: compressed input by its blob digest and its diff_id, a
    // plain tar by its diff_id as either.
    let v = cs_json(&store, &["ingest", "--digest", &blob, "--diff-id", &id, gz_path.to_str().unwrap()]);
    assert_eq!((v[0]["id"].as_str(), v[0]["blob"].as_str()), (Some(id.as_str()), Some(blob.as_str())), "{v}");
    let v = cs_json(&store, &["ingest", "--digest", &id, tar_path.to_str().unwrap()]);
    assert_eq!(v[0]["already_present"], true, "{v}");
    // They name one input.
    let o = run(&["--digest", &blob, gz_path.to_str().unwrap(), tar_path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = run(&["--digest", "sha256:abc", gz_path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

/// Peak RSS (MiB) of `chunkstore --store STORE ingest --json TAR`, as the
/// kernel counts it, and the command's JSON output.
fn ingest_peak_rss(store: &Path, tar: &Path) -> (u64, serde_json::Value) {
    let script = "import resource, subprocess, sys\n\
                  r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)\n\
                  print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
                  sys.stdout.write(r.stdout.decode())";
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(bin())
        .arg("--store")
        .arg(store)
        .args(["ingest", "--json"])
        .arg(tar)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let (first, json) = out.split_once('\n').unwrap();
    let (code, rss_kib) = first.split_once(' ').unwrap();
    assert_eq!(code, "0", "ingest failed: {}", String::from_utf8_lossy(&o.stderr));
    (rss_kib.parse::<u64>().unwrap() / 1024, serde_json::from_str(json).unwrap())
}

/// A layer of 200,000 small distinct files: what the ingest keeps per file
/// until its commit is small enough for the memory bound. Before it was
/// ~1.1 KB a file (225-230 MiB peak for this layer), then ~105 MiB; since
/// the commit streams its records (5th session) ~80-86 MiB. Its records
/// pass 4 MiB each, so the commit reads them from spill files (the new
/// index rows merged from several sorted runs).
#[test]
fn many_small_files_cost_bounded_memory() {
    let dir = tmp();
    let d = dir.path();
    let tar = d.join("files.tar");
    {
        let out = std::io::BufWriter::new(std::fs::File::create(&tar).unwrap());
        let mut b = tar::Builder::new(out);
        for i in 0..200_000 {
            let data = format!("file {i}\n").repeat(3);
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("d{:03}/f{i:06}", i / 1000), data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap().into_inner().unwrap().sync_all().unwrap();
    }
    let want = diff_id(&std::fs::read(&tar).unwrap());
    let store = d.join("store");
    let (rss_mib, v) = ingest_peak_rss(&store, &tar);
    assert_eq!(v[0]["id"], want.as_str());
    assert_eq!((v[0]["files"].as_u64(), v[0]["new_files"].as_u64()), (Some(200_000), Some(200_000)), "{v}");
    assert!(rss_mib < 120, "peak RSS {rss_mib} MiB for 200,000 files");
    let o = Command::new(bin()).arg("--store").arg(&store).args(["verify", "--json"]).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let back = Command::new(bin()).arg("--store").arg(&store).args(["export", &want, "-o", "-"]).output().unwrap();
    assert!(back.status.success());
    assert_eq!(diff_id(&back.stdout), want, "the layer rebuilds exactly");
}

/// A layer of 400,000 directories (205 MB of headers and no content to speak
/// of) streams through in bounded memory: header bytes move on in parts
/// instead of gathering until the next file. Before, peak RSS grew with the
/// headers (309 MiB for 300,000).
#[test]
fn header_only_entries_cost_bounded_memory() {
    let dir = tmp();
    let d = dir.path();
    let tar = d.join("dirs.tar");
    let mut hasher = sha2::Sha256::new();
    {
        struct Tee<'a>(std::io::BufWriter<std::fs::File>, &'a mut sha2::Sha256);
        impl std::io::Write for Tee<'_> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let n = self.0.write(b)?;
                self.1.update(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        let out = Tee(std::io::BufWriter::new(std::fs::File::create(&tar).unwrap()), &mut hasher);
        let mut b = tar::Builder::new(out);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        for i in 0..400_000 {
            b.append_data(&mut h.clone(), format!("d{i:07}/"), &[][..]).unwrap();
        }
        let mut f = tar::Header::new_gnu();
        f.set_size(5);
        f.set_mode(0o644);
        b.append_data(&mut f, "last", &b"hello"[..]).unwrap();
        b.into_inner().unwrap().0.into_inner().unwrap().sync_all().unwrap();
    }
    let want = format!("sha256:{}", hex::encode(hasher.finalize()));
    let store = d.join("store");
    let (rss_mib, v) = ingest_peak_rss(&store, &tar);
    assert_eq!(v[0]["id"], want.as_str());
    assert_eq!(v[0]["entries"], 400_001);
    assert!(rss_mib < 160, "peak RSS {rss_mib} MiB for 205 MB of headers");
    let back = Command::new(bin()).arg("--store").arg(&store).args(["export", &want, "-o", "-"]).output().unwrap();
    assert!(back.status.success());
    assert_eq!(diff_id(&back.stdout), want, "the layer rebuilds exactly");
}
