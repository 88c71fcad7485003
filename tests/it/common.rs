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
    Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("running chunkstore")
}

/// Run and require success; returns stdout.
pub fn cs_ok(store: &Path, args: &[&str]) -> String {
    let o = cs(store, args);
    assert!(
        o.status.success(),
        "chunkstore {args:?} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
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
    assert_eq!(
        id,
        format!("sha256:{}", sha256_hex(&original)),
        "diff_id of {}",
        tar.display()
    );
    let out = tar.with_extension("exported");
    cs_ok(store, &["export", &id, "-o", out.to_str().unwrap()]);
    let back = std::fs::read(&out).unwrap();
    assert!(
        back == original,
        "{}: export differs from the original",
        tar.display()
    );
    cs_ok(store, &["verify"]);
}
