//! Delta transfer: a changed file travels as a delta against the version the
//! client holds; a missing base is reported like any missing reference.

use crate::common::{cs, cs_json, cs_ok, sha256_hex};
use std::path::Path;

/// Lines of pseudo-random "source code": compressible like real text, but
/// with no long repeats, so only a delta against the old version is small.
fn source(seed: u64, lines: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::new();
    for i in 0..lines {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(
            format!("export const v{i} = {} + {}; // {:x}\n", x % 1000, (x >> 20) % 977, x).as_bytes(),
        );
    }
    out
}

fn layer(path: &Path, files: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap();
}

struct Setup {
    _dir: tempfile::TempDir,
    hub: std::path::PathBuf,
    v1: std::path::PathBuf,
    v2: std::path::PathBuf,
    v1_index: String,
}

/// A hub holding v1 and v2 of an app layer: v2 edits `index.js` in two places
/// and renames `util.js`'s directory (same name, similar size: a name base).
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let index1 = source(1, 6000);
    let mut index2 = index1.clone();
    index2.splice(1000..1000, b"// a new line in the middle\n".iter().copied());
    index2.extend_from_slice(b"export const added = 1;\n");
    let util1 = source(2, 800);
    let mut util2 = util1.clone();
    util2.truncate(util1.len() - 100);
    let readme = b"hello\n".to_vec();
    let (v1, v2) = (dir.path().join("v1.tar"), dir.path().join("v2.tar"));
    layer(&v1, &[("app/index.js", &index1), ("app/lib/util.js", &util1), ("app/README", &readme)]);
    layer(&v2, &[("app/index.js", &index2), ("app/src/util.js", &util2), ("app/README", &readme)]);
    let hub = dir.path().join("hub");
    cs_ok(&hub, &["ingest", v1.to_str().unwrap(), v2.to_str().unwrap()]);
    let v1_index = format!("blake3:{}", blake3::hash(&index1).to_hex());
    Setup { _dir: dir, hub, v1, v2, v1_index }
}

fn digest(p: &Path) -> String {
    format!("sha256:{}", sha256_hex(&std::fs::read(p).unwrap()))
}

#[test]
fn changed_files_travel_as_deltas_and_rebuild_exactly() {
    let s = setup();
    let (v1, v2) = (digest(&s.v1), digest(&s.v2));
    cs_ok(&s.hub, &["client", "add", "edge"]);
    cs_ok(&s.hub, &["client", "hold", "edge", &v1]);
    let d = cs_json(&s.hub, &["diff", "--client", "edge", &v2, "--files"]);
    let files = d["files"].as_array().unwrap();
    let by_path = |p: &str| files.iter().find(|f| f["path"] == p).unwrap_or_else(|| panic!("{p} not in {d}"));
    assert_eq!(by_path("app/index.js")["state"], "delta", "{d}");
    assert_eq!(by_path("app/index.js")["base"], s.v1_index.as_str());
    assert_eq!(by_path("app/src/util.js")["state"], "delta", "a same-name base: {d}");
    assert_eq!(by_path("app/README")["state"], "held");
    let index_size = by_path("app/index.js")["size"].as_u64().unwrap();
    assert!(by_path("app/index.js")["carried_bytes"].as_u64().unwrap() < index_size / 50, "{d}");
    // Without deltas the same diff would carry the changed chunks of index.js.
    let plain = cs_json(&s.hub, &["diff", "--client", "edge", &v2, "--no-deltas"]);
    assert!(plain["summary"]["carried_bytes"].as_u64() > d["summary"]["carried_bytes"].as_u64(), "{plain}");

    let tarball = s.hub.parent().unwrap().join("v2.dtar");
    let p = cs_json(&s.hub, &["pack", "--client", "edge", &v2, "-o", tarball.to_str().unwrap()]);
    assert_eq!(p["tar_bytes"], d["summary"]["dedup_tar_bytes"], "diff predicts the stream exactly");
    let listing = std::process::Command::new("tar").arg("-tf").arg(&tarball).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("delta/"), "tar lists the delta entries");

    let edge = s.hub.parent().unwrap().join("edge");
    cs_ok(&edge, &["ingest", s.v1.to_str().unwrap()]);
    let a = cs_json(&edge, &["apply", tarball.to_str().unwrap()]);
    assert_eq!(a["outcome"], "applied", "{a}");
    let out = s.hub.parent().unwrap().join("v2.out");
    cs_ok(&edge, &["export", &v2, "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&s.v2).unwrap());
    cs_ok(&edge, &["verify", "--full"]);
}

#[test]
fn a_dropped_base_is_missing_until_supplied() {
    let s = setup();
    let (v1, v2) = (digest(&s.v1), digest(&s.v2));
    // The hub believes the edge holds v1; the edge has evicted it.
    cs_ok(&s.hub, &["client", "add", "edge"]);
    cs_ok(&s.hub, &["client", "hold", "edge", &v1]);
    let tarball = s.hub.parent().unwrap().join("v2.dtar");
    cs_ok(&s.hub, &["pack", "--client", "edge", &v2, "-o", tarball.to_str().unwrap()]);
    let edge = s.hub.parent().unwrap().join("edge");
    cs_ok(&edge, &["stat"]);

    let o = cs(&edge, &["--json", "apply", tarball.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["outcome"], "missing");
    let missing: Vec<&str> = v["missing"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(missing.contains(&s.v1_index.as_str()), "the delta base is listed: {v}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(&s.v1_index), "{stderr}");
    assert!(cs_json(&edge, &["ls"]).as_array().unwrap().is_empty(), "nothing recorded");
    cs_ok(&edge, &["verify"]);

    // Supply what was missing (the old layer), then the same tarball applies.
    cs_ok(&edge, &["ingest", s.v1.to_str().unwrap()]);
    let a = cs_json(&edge, &["apply", tarball.to_str().unwrap()]);
    assert_eq!(a["outcome"], "applied", "{a}");
    let out = s.hub.parent().unwrap().join("v2.out");
    cs_ok(&edge, &["export", &v2, "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&s.v2).unwrap());
}
