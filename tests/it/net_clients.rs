//! Managing a running hub's clients through its API (`client --hub URL`):
//! `serve` holds the store's lock, so this is how an operator adds, lists,
//! shows, changes and removes possession maps without stopping the hub.

use crate::net::*;
use std::path::Path;

fn client_cmd(dir: &Path, url: &str, tok: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["client", "--hub", url, "--token", tok];
    a.extend_from_slice(args);
    run_json(dir, &a, &[])
}

#[test]
fn clients_are_managed_through_the_hub_while_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, ops) = (d.join("hub"), d.join("ops"));
    let a = noise_layer(d, "a", 100_000, 80);
    let b = noise_layer(d, "b", 100_000, 81);
    a.ingest(&hub_store);
    b.ingest(&hub_store);
    let admin = token(&hub_store, "ops", "admin", "1h");
    let pull_tok = token(&hub_store, "edge-7", "pull", "1h");
    let hub = Hub::start(&hub_store, &[], &[]);
    let url = hub.url();

    // The local store is busy while the hub serves; the API is not.
    let err = run_fails(&hub_store, &["client", "add", "edge-7"], &[]);
    assert!(err.contains("in use"), "{err}");
    let v = client_cmd(&ops, &url, &admin, &["add", "edge-7"]);
    assert_eq!((v["name"].as_str(), v["layers"].as_array().map(Vec::len)), (Some("edge-7"), Some(0)), "{v}");
    let err = run_fails(&ops, &["client", "--hub", &url, "--token", &admin, "add", "edge-7"], &[]);
    assert!(err.contains("409") && err.contains("already exists"), "{err}");

    let v = client_cmd(&ops, &url, &admin, &["hold", "edge-7", &a.id[7..19], &b.id]);
    assert_eq!(v["layers"].as_array().unwrap().len(), 2, "{v}");
    let v = client_cmd(&ops, &url, &admin, &["drop", "edge-7", &a.id]);
    assert_eq!(v["layers"], serde_json::json!([b.id]), "{v}");
    let v = client_cmd(&ops, &url, &admin, &["show", "edge-7"]);
    assert_eq!(v["layers"], serde_json::json!([b.id]), "{v}");
    let v = client_cmd(&ops, &url, &admin, &["ls"]);
    assert_eq!(v.as_array().unwrap().iter().filter(|c| c["name"] == "edge-7").count(), 1, "{v}");

    // An edge's own pull token may change its own map, not list or add clients.
    let v = client_cmd(&ops, &url, &pull_tok, &["drop", "edge-7", &b.id]);
    assert_eq!(v["layers"], serde_json::json!([]), "{v}");
    for args in [&["ls"][..], &["add", "edge-8"], &["rm", "edge-7"], &["show", "edge-8"]] {
        let mut a = vec!["client", "--hub", &url, "--token", &pull_tok];
        a.extend_from_slice(args);
        let err = run_fails(&ops, &a, &[]);
        assert!(err.contains("403") || err.contains("401"), "{args:?}: {err}");
    }

    let v = client_cmd(&ops, &url, &admin, &["rm", "edge-7"]);
    assert_eq!(v["removed"].as_str(), Some("edge-7"), "{v}");
    let err = run_fails(&ops, &["client", "--hub", &url, "--token", &admin, "show", "edge-7"], &[]);
    assert!(err.contains("404"), "{err}");
    // A name never added is not created by holding (a typo stays an error).
    let err = run_fails(&ops, &["client", "--hub", &url, "--token", &admin, "hold", "edge-typo", &b.id], &[]);
    assert!(err.contains("404"), "{err}");
    let v = client_cmd(&ops, &url, &admin, &["ls"]);
    assert!(v.as_array().unwrap().iter().all(|c| c["name"] != "edge-typo"), "{v}");
    assert!(hub.stop().success());
    // What the hub recorded is in its store.
    let v = run_json(&hub_store, &["client", "ls"], &[]);
    assert!(v.as_array().unwrap().iter().all(|c| c["name"] != "edge-7"), "{v}");
}
