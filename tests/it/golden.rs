//! Golden fixtures: a store, two layers and a dedup tarball written by format
//! v1 (testdata/v1, made by testdata/v1/make.sh; append-only). Whatever the
//! code becomes, it must keep reading them.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// diff_id of old-layer.tar (the layer the client `edge` holds).
const OLD: &str = "sha256:d91ff97a258647be1202023025ca5e1314863973b01de6a9da8b2be1c1a15843";
/// diff_id of layer.tar (the layer update.dtar rebuilds).
const NEW: &str = "sha256:0803376fe3c34ab20c8272aa3219efd9d638b5c11a0ebdeb0e1a651b3ff78eb1";

fn v1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/v1")
}

fn run(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chunkstore"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("running chunkstore")
}

fn ok(store: &Path, args: &[&str]) -> Vec<u8> {
    let o = run(store, args);
    assert!(o.status.success(), "chunkstore {args:?}: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    o.stdout
}

fn json(store: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_slice(&ok(store, &a)).expect("valid JSON")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn diff_id(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A fixture tar, decompressed (they are kept as .tar.zst to stay small).
fn layer_tar(name: &str) -> Vec<u8> {
    let f = std::fs::File::open(v1().join(name)).expect("fixture present");
    zstd::decode_all(f).expect("fixture decompresses")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A working copy of the fixture hub store, its index decompressed.
fn fixture_store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    copy_dir(&v1().join("store"), &store);
    let zst = store.join("chunkstore.redb.zst");
    let index = zstd::decode_all(std::fs::File::open(&zst).unwrap()).unwrap();
    std::fs::write(store.join("chunkstore.redb"), index).unwrap();
    std::fs::remove_file(zst).unwrap();
    store
}

fn pack_files(store: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(store.join("packs")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

/// A fresh edge store holding the old layer.
fn edge_with_old_layer(dir: &Path) -> PathBuf {
    let edge = dir.join("edge");
    let s = json(&edge, &["ingest", path(&v1().join("old-layer.tar.zst"))]);
    assert_eq!(s[0]["id"], OLD);
    edge
}

fn assert_clean(store: &Path, layers: u64) {
    let r = json(store, &["verify", "--full"]);
    assert_eq!(r["damaged"], serde_json::json!([]), "{r}");
    assert_eq!(r["layers_rebuilt"], layers, "{r}");
}

#[test]
fn fixture_store_opens_verifies_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture_store(dir.path());
    let packs = pack_files(&store);
    assert_eq!(packs.len(), 2);
    assert_clean(&store, 2);
    assert_eq!(pack_files(&store), packs, "opening reclaimed a pack the index names");

    let ls = json(&store, &["ls"]);
    let ids: BTreeSet<&str> = ls.as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from([OLD, NEW]));
    for (name, id) in [("old-layer.tar.zst", OLD), ("layer.tar.zst", NEW)] {
        let tar = layer_tar(name);
        assert_eq!(diff_id(&tar), id);
        assert!(ok(&store, &["export", id, "-o", "-"]) == tar, "export of {id} differs from {name}");
        // The layers arrived zstd-compressed: the blob digest names them too.
        let blob = diff_id(&std::fs::read(v1().join(name)).unwrap());
        let l = ls.as_array().unwrap().iter().find(|l| l["id"] == id).unwrap();
        assert_eq!((l["blob"].as_str(), l["compression"].as_str()), (Some(blob.as_str()), Some("zstd")), "{l}");
        assert_eq!(ok(&store, &["export", &blob, "-o", "-"]).len(), tar.len());
    }

    let edge = json(&store, &["client", "show", "edge"]);
    assert_eq!(edge["layers"], serde_json::json!([OLD]), "{edge}");
    let stat = &json(&store, &["stat"])["stats"];
    assert_eq!(stat["chunker"], serde_json::json!({"min": 16384, "avg": 65536, "max": 262144}), "{stat}");
    assert_eq!((stat["layers"].as_u64(), stat["packs"].as_u64()), (Some(2), Some(2)), "{stat}");
}

#[test]
fn fixture_packs_match_the_documented_layout() {
    // docs/format.md, "Pack files", read by hand: header, entries, trailer.
    let (mut raw_entries, mut zstd_entries) = (0, 0);
    for p in pack_files(&v1().join("store")) {
        let b = std::fs::read(&p).unwrap();
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        assert_eq!(&b[..8], b"CSPACK\0\0");
        assert_eq!((u32_at(8), u32_at(12)), (1, 0));
        let t = b.len() - 24;
        assert_eq!(&b[t..t + 8], b"CSPKEND\0");
        assert_eq!(u64_at(t + 16), t as u64, "data end");
        let (mut pos, mut count) = (16, 0);
        while pos < t {
            let id = &b[pos..pos + 32];
            let (raw_len, stored_len) = (u32_at(pos + 32) as usize, u32_at(pos + 36) as usize);
            let stored = &b[pos + 40..pos + 40 + stored_len];
            let data = if stored_len == raw_len {
                raw_entries += 1;
                stored.to_vec()
            } else {
                zstd_entries += 1;
                zstd::bulk::decompress(stored, raw_len).unwrap()
            };
            assert_eq!(data.len(), raw_len);
            assert_eq!(blake3::hash(&data).as_bytes(), id, "{}: entry at {pos}", p.display());
            pos += 40 + stored_len;
            count += 1;
        }
        assert_eq!(pos, t);
        assert_eq!(u64_at(t + 8), count);
        let name = p.file_name().unwrap().to_str().unwrap();
        let num = u64::from_str_radix(name.strip_suffix(".pack").unwrap(), 16).unwrap();
        assert_eq!(p.parent().unwrap().file_name().unwrap().to_str().unwrap(), format!("{:02x}", num & 0xff));
    }
    assert!(raw_entries > 0 && zstd_entries > 0, "raw {raw_entries}, zstd {zstd_entries}");
}

#[test]
fn fixture_update_applies_on_an_edge() {
    let dir = tempfile::tempdir().unwrap();
    let edge = edge_with_old_layer(dir.path());
    ok(&edge, &["apply", path(&v1().join("update.dtar"))]);
    let tar = layer_tar("layer.tar.zst");
    let back = ok(&edge, &["export", NEW, "-o", "-"]);
    assert_eq!(diff_id(&back), NEW);
    assert!(back == tar, "applied layer differs from layer.tar");
    assert_clean(&edge, 2);
}

#[test]
fn fixture_update_is_a_plain_tar_with_every_entry_kind() {
    // docs/dedup-tar.md: a zstd stream of a ustar tar, magic record first.
    let stream = zstd::decode_all(std::fs::File::open(v1().join("update.dtar")).unwrap()).unwrap();
    let mut a = tar::Archive::new(&stream[..]);
    let mut kinds = Vec::new();
    for (i, e) in a.entries().unwrap().enumerate() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_str().unwrap().to_string();
        if i == 0 {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut e, &mut text).unwrap();
            let want = format!(
                "chunkstore-dedup-tar 1\nlayer {NEW}\ntar-size 645120\nclient edge\nchunker 16384 65536 262144\n"
            );
            assert_eq!(text, want);
        }
        kinds.push(name.split('/').next().unwrap().to_string());
    }
    assert_eq!(kinds[0], "chunkstore-dedup-tar");
    let set: BTreeSet<&str> = kinds.iter().map(String::as_str).collect();
    assert_eq!(set, BTreeSet::from(["chunkstore-dedup-tar", "raw", "ref", "file", "chunks", "delta"]));
}

#[test]
fn fixture_update_on_an_empty_edge_lists_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let edge = dir.path().join("edge");
    let o = run(&edge, &["--json", "apply", path(&v1().join("update.dtar"))]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["outcome"].as_str(), v["layer"].as_str()), (Some("missing"), Some(NEW)), "{v}");
    // Three references, the delta's base, and the chunks the chunk list does not carry.
    let (mut files, mut chunk_bytes) = (BTreeSet::new(), 0);
    for m in v["missing"].as_array().unwrap() {
        let size = m["size"].as_u64().unwrap();
        match m["kind"].as_str().unwrap() {
            "file" => assert!(files.insert(size), "{v}"),
            "chunk" => chunk_bytes += size,
            k => panic!("missing {k}: {v}"),
        }
    }
    assert_eq!(files, BTreeSet::from([408, 2048, 3662, 300034]), "{v}");
    assert_eq!(chunk_bytes, 320069 - 24135, "{v}");
    assert_eq!(json(&edge, &["ls"]), serde_json::json!([]));
}

#[test]
fn fixture_hub_still_packs_for_its_client() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture_store(dir.path());
    let out = dir.path().join("again.dtar");
    ok(&store, &["pack", "--client", "edge", NEW, "-o", path(&out)]);
    let edge = edge_with_old_layer(dir.path());
    ok(&edge, &["apply", path(&out)]);
    assert!(ok(&edge, &["export", NEW, "-o", "-"]) == layer_tar("layer.tar.zst"));
}
