//! The command line's own behaviour: where a store may be opened, stdout
//! that goes away, reports beside data on stdout, usage errors.

use crate::common::*;
use std::process::{Command, Stdio};

#[test]
fn a_directory_that_is_not_a_store_is_refused_and_left_alone() {
    let dir = tmp();
    let d = dir.path();
    // Someone's directory with a tmp/ of their own.
    let theirs = d.join("home");
    std::fs::create_dir_all(theirs.join("tmp")).unwrap();
    std::fs::write(theirs.join("tmp/notes.txt"), "mine").unwrap();
    std::fs::write(theirs.join("todo"), "mine").unwrap();
    let o = cs(&theirs, &["ls"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not a chunkstore store and is not empty") && err.contains("\"todo\""), "{err}");
    let mut left: Vec<_> = std::fs::read_dir(&theirs).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["tmp", "todo"], "nothing created");
    assert_eq!(std::fs::read(theirs.join("tmp/notes.txt")).unwrap(), b"mine");
    // Nor does issuing a token there make a key.
    let o = cs(&theirs, &["token", "issue", "--client", "a"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(!theirs.join("token.key").exists());

    // A store's tmp/ keeps what is not a staged pack.
    let store = d.join("store");
    cs_ok(&store, &["ls"]);
    std::fs::write(store.join("tmp/notes.txt"), "mine").unwrap();
    std::fs::write(store.join("tmp/0000000000000007.pack"), "a pack an ingest never sealed").unwrap();
    cs_ok(&store, &["ls"]);
    assert!(store.join("tmp/notes.txt").exists());
    assert!(!store.join("tmp/0000000000000007.pack").exists());

    // A regular file, and an empty --store or CHUNKSTORE_DIR (not the current directory).
    let file = d.join("file");
    std::fs::write(&file, "x").unwrap();
    let o = cs(&file, &["ls"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a directory"), "{o:?}");
    let o = Command::new(bin()).current_dir(&theirs).env("CHUNKSTORE_DIR", "").arg("ls").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("is empty"), "{o:?}");
    let o = Command::new(bin()).current_dir(&theirs).args(["--store", "", "stat"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

/// Run with stdout a pipe whose reader is already gone.
fn closed_stdout(store: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_stops_the_command_quietly() {
    let dir = tmp();
    let d = dir.path();
    let store = d.join("store");
    let mut inputs = Vec::new();
    for seed in 0..3 {
        let p = d.join(format!("l{seed}.tar"));
        std::fs::write(&p, small_tar(seed)).unwrap();
        inputs.push(p.to_str().unwrap().to_string());
    }
    let first = &inputs[0][..];
    cs_ok(&store, &["ingest", first]);
    let layer = layer_ids(&store)[0].clone();
    for args in [
        vec!["ls"],
        vec!["stat"],
        vec!["--json", "ls"],
        vec!["export", &layer, "-o", "-"],
        vec!["--json", "export", &layer, "-o", "-"],
        ["ingest"].into_iter().chain(inputs.iter().map(|s| &s[..])).collect(),
    ] {
        let o = closed_stdout(&store, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert_store_healthy(&store);

    // A full disk is an error, not a panic.
    if std::path::Path::new("/dev/full").exists() {
        let o = Command::new(bin())
            .arg("--store")
            .arg(&store)
            .arg("ls")
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("writing to standard output") && !err.contains("panicked"), "{err}");
    }
}

#[test]
fn json_reports_stay_off_a_stdout_that_carries_data() {
    let dir = tmp();
    let d = dir.path();
    let (hub, edge) = (d.join("hub"), d.join("edge"));
    let tar = d.join("l.tar");
    std::fs::write(&tar, small_tar(5)).unwrap();
    let layer = cs_json(&hub, &["ingest", tar.to_str().unwrap()])[0]["id"].as_str().unwrap().to_string();
    cs_ok(&hub, &["client", "add", "edge"]);

    // pack -o - with --json: stdout is the dedup tarball alone; the report is on stderr.
    let o = cs(&hub, &["--json", "pack", "--client", "edge", &layer, "-o", "-"]);
    assert!(o.status.success(), "{o:?}");
    let report: serde_json::Value = serde_json::from_slice(&o.stderr).expect("the report on stderr");
    assert_eq!(report["compressed_bytes"].as_u64(), Some(o.stdout.len() as u64));
    let dtar = d.join("l.dtar");
    std::fs::write(&dtar, &o.stdout).unwrap();
    cs_ok(&edge, &["apply", dtar.to_str().unwrap()]);
    assert_eq!(export(&edge, &layer), std::fs::read(&tar).unwrap());

    // export -o - that fails: the JSON error goes to stderr, stdout stays empty.
    let o = cs(&hub, &["--json", "export", "sha256:00", "-o", "-"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).expect("stderr is the JSON error alone");
    assert_eq!(v["error"]["kind"], "NotFound", "{v}");
}

#[test]
fn bad_option_values_are_usage_errors() {
    let dir = tmp();
    let store = dir.path().join("store");
    for args in [
        &["gc", "--grace", "abc"][..],
        &["gc", "--grace", "-1s"],
        &["token", "issue", "--client", "a", "--ttl", "5x"],
        &["token", "issue", "--client", "a", "--ttl", "0s"],
        &["serve", "--listen", "127.0.0.1:0", "--timeout", "0"],
        &["token", "issue", "--client", "a", "--scope", "root"],
        &["token", "issue", "--client", "Not-A-Name"],
        &["client", "add", "UPPER"],
        &["diff", "--client", "", "sha256:00"],
        &["pull", "--hub", "hub:7300", "--client", "a", "sha256:00"],
        &["client", "--hub", "ftp://hub", "ls"],
    ] {
        let o = cs(&store, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // A lifetime that overflows the expiry is refused, not wrapped into the past.
    let o = cs(&store, &["token", "issue", "--client", "a", "--ttl", "18446744073709551615s"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("too long"), "{o:?}");
    let s = cs_ok(&store, &["token", "issue", "--client", "a", "--ttl", "36500d"]);
    assert!(s.starts_with("cs1.a.pull."), "{s}");
}

#[test]
fn a_damaged_index_is_reported_then_rebuilt_by_reindex() {
    let dir = tmp();
    let d = dir.path();
    let tar = d.join("l.tar");
    std::fs::write(&tar, small_tar(9)).unwrap();
    let index = |s: &std::path::Path| s.join("chunkstore.redb");
    // Random bytes, a file cut in half, garbled pages: the last two make redb assert.
    for damage in ["random", "cut", "garbled"] {
        let store = d.join(damage);
        let layer = cs_json(&store, &["ingest", tar.to_str().unwrap()])[0]["id"].as_str().unwrap().to_string();
        cs_ok(&store, &["client", "add", "edge"]);
        let mut b = std::fs::read(index(&store)).unwrap();
        match damage {
            "random" => b = pseudo_random(b.len(), 3),
            "cut" => b.truncate(b.len() / 2),
            _ => (4096..b.len()).step_by(4096).for_each(|i| b[i + 100] ^= 0xff),
        }
        std::fs::write(index(&store), &b).unwrap();
        let o = Command::new(bin()).env_remove("RUST_BACKTRACE").arg("--store").arg(&store).arg("ls").output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{damage}: {err}");
        assert!(err.contains("is damaged") && err.contains("chunkstore reindex"), "{damage}: {err}");
        assert!(!err.contains("panicked at") && !err.contains("RUST_BACKTRACE"), "{damage}: {err}");

        let r = cs_json(&store, &["reindex"]);
        let aside = r["damaged_index_moved_to"].as_str().expect("set aside");
        assert_eq!(std::fs::read(aside).unwrap(), b, "{damage}: the damaged index is kept as it was");
        assert_eq!(r["layers"], 1, "{damage}: {r}");
        assert_eq!(export(&store, &layer), std::fs::read(&tar).unwrap());
        cs_ok(&store, &["verify", "--full"]);
        assert_eq!(cs_json(&store, &["client", "ls"]), serde_json::json!([]), "possession went with the old index");
        // A sound index is left where it is.
        assert_eq!(cs_json(&store, &["reindex"])["damaged_index_moved_to"], serde_json::Value::Null);
    }
}

/// redb asserts on some damage deep in a B-tree, where no open catches it:
/// a garbled 4 KiB page anywhere in the index makes `verify` and `ingest`
/// fail cleanly (exit 1, naming the damage) or, where redb cannot see it,
/// pass; never a panic's exit 101, nor a worker's failure left unexplained.
#[test]
fn a_garbled_index_page_anywhere_is_an_error_not_a_crash() {
    let dir = tmp();
    let d = dir.path();
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..300u64 {
        let data = pseudo_random(10 + (i as usize * 37) % 3000, i);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("f{i}"), &data[..]).unwrap();
    }
    let tar = d.join("l.tar");
    std::fs::write(&tar, b.into_inner().unwrap()).unwrap();
    let store = d.join("store");
    cs_ok(&store, &["ingest", tar.to_str().unwrap()]);
    let good = std::fs::read(store.join("chunkstore.redb")).unwrap();
    let other = d.join("other.tar");
    std::fs::write(&other, small_tar(77)).unwrap();
    let (mut failed, mut named) = (0, 0);
    // Every other page: damage that trips redb spans runs of pages.
    for page in (0..good.len() / 4096).step_by(2) {
        let mut bad = good.clone();
        bad[page * 4096..(page + 1) * 4096].copy_from_slice(&pseudo_random(4096, page as u64 + 1));
        for args in [&["verify"][..], &["ingest", other.to_str().unwrap()]] {
            std::fs::write(store.join("chunkstore.redb"), &bad).unwrap();
            let mut cmd = Command::new(bin());
            let o = cmd.arg("--store").arg(&store).args(args).env_remove("RUST_BACKTRACE").output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(matches!(o.status.code(), Some(0 | 1)), "page {page}, {args:?}: {o:?}");
            let explained = err.contains("is damaged") || err.contains("looks damaged");
            assert!(!err.contains("thread panicked") || explained, "page {page}, {args:?}: {err}");
            if o.status.code() == Some(1) {
                failed += 1;
                named += explained as usize;
            }
        }
    }
    assert!(failed > 0 && named > 0, "the damage was never seen: {failed} failures, {named} naming it");
}
