//! Clients on a hub store, end to end: names, registering, recording what
//! each holds (`client add|ls|show|hold|drop|rm`), and what that does to its
//! diffs. The fixture and helpers are `dedup.rs`'s.

use crate::common::{cs, cs_json, cs_ok};
use crate::dedup::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[test]
fn client_names_are_checked_and_unique() {
    let fx = fixture();
    let hub = &fx.hub;
    for bad in ["Edge", "-x", &"a".repeat(65), "a/b", ""] {
        let o = cs(hub, &["client", "add", "--", bad]);
        // A usage error, as every bad argument value.
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("invalid client name"), "{bad:?}: {}", stderr(&o));
    }
    // Without `--`, `-x` is an unknown option: a usage error.
    assert_eq!(cs(hub, &["client", "add", "-x"]).status.code(), Some(2));
    let ok64 = "a".repeat(64);
    let added = cs_json(hub, &["client", "add", &ok64]);
    assert_eq!(added["name"], ok64.as_str());
    cs_ok(hub, &["client", "add", "edge-1.b_c"]);
    let o = cs(hub, &["client", "add", "edge-1.b_c"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    let names: Vec<Value> =
        cs_json(hub, &["client", "ls"]).as_array().unwrap().iter().map(|c| c["name"].clone()).collect();
    assert_eq!(names, vec![json!(ok64), json!("edge-1.b_c")]);
    assert!(cs_ok(hub, &["client", "ls"]).contains("edge-1.b_c"));
}

#[test]
fn client_hold_show_drop_rm() {
    let fx = fixture();
    let hub = &fx.hub;
    let (a, b) = (&fx.a, &fx.b);
    let fresh = cs_json(hub, &["client", "add", "edge"]);
    assert_eq!(
        fresh,
        json!({"name": "edge", "layers": [], "files": 0, "chunks": 0, "layer_bytes": 0, "record_bytes": fresh["record_bytes"]})
    );

    // Hold by prefix, with and without `sha256:`; holding twice is a no-op.
    let held_a = cs_json(hub, &["client", "hold", "edge", a.prefix()]);
    assert_eq!(held_a["layers"], json!([a.id]));
    // A: os-release, tool, libx, readme (twice), empty, big: 6 distinct files.
    assert_eq!(held_a["files"], 6, "{held_a}");
    assert_eq!(held_a["layer_bytes"], a.bytes.len() as u64);
    let chunks_a = held_a["chunks"].as_u64().unwrap();
    // One chunk per small file (the empty one has none), ~25 for the 1.6 MB file.
    assert!((5 + 10..5 + 60).contains(&chunks_a), "{held_a}");
    let again = cs_json(hub, &["client", "hold", "edge", &format!("sha256:{}", a.prefix())]);
    assert_eq!(again, held_a);
    assert_eq!(client_show(hub, "edge"), held_a);
    // B's new chunks: os-release v2, new, and the big file's changed chunk(s).
    let big_carried =
        cs_json(hub, &["diff", "--client", "edge", &b.id, "--files"])["files"][0]["carried_chunks"].as_u64().unwrap();

    // Holding B too: 9 distinct files (B adds os-release v2, big v2, new).
    let both = cs_json(hub, &["client", "hold", "edge", b.prefix()]);
    assert_eq!(both["layers"], json!([a.id, b.id]));
    assert_eq!(both["files"], 9);
    assert_eq!(both["layer_bytes"], (a.bytes.len() + b.bytes.len()) as u64);

    // What holding B alone means, on another client.
    cs_ok(hub, &["client", "add", "only-b"]);
    let only_b = cs_json(hub, &["client", "hold", "only-b", &b.id]);
    assert_eq!(only_b["files"], 7);
    let chunks_b = only_b["chunks"].as_u64().unwrap();
    assert_eq!(both["chunks"].as_u64(), Some(chunks_a + 2 + big_carried), "{both}");

    // `client ls --json`: one object per client, same shape as show.
    let ls = cs_json(hub, &["client", "ls"]);
    let ls: BTreeMap<String, Value> =
        ls.as_array().unwrap().iter().map(|c| (c["name"].as_str().unwrap().to_string(), c.clone())).collect();
    assert_eq!(ls["edge"], both);
    assert_eq!(ls["only-b"], only_b);

    // Drop A: the files and chunks A shares with B stay held.
    let dropped = cs_json(hub, &["client", "drop", "edge", a.prefix()]);
    assert_eq!(dropped["layers"], json!([b.id]));
    assert_eq!(dropped["files"], 7);
    assert_eq!(dropped["chunks"], chunks_b);
    assert_eq!(dropped["layer_bytes"], b.bytes.len() as u64);
    let s = diff_summary(hub, "edge", &b.id);
    assert_eq!((s["held_files"].as_u64(), s["carried_bytes"].as_u64()), (Some(8), Some(0)), "{s}");
    let s = diff_summary(hub, "edge", &a.id);
    // A against B's holdings: tool, libx, readme x2, empty held; big partly; os-release v1 missing.
    assert_eq!(
        (s["held_files"].as_u64(), s["partial_files"].as_u64(), s["missing_files"].as_u64()),
        (Some(5), Some(1), Some(1)),
        "{s}"
    );

    // Dropping a layer it does not hold is an error and changes nothing.
    let o = cs(hub, &["client", "drop", "edge", &a.id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not hold"), "{}", stderr(&o));
    assert_eq!(client_show(hub, "edge"), dropped);

    // Holding a layer the hub lacks is an error and changes nothing.
    let unknown = "sha256:".to_string() + &"0".repeat(64);
    let unknown_prefix = (0..16u8)
        .map(|i| format!("{i:x}{i:x}{i:x}{i:x}{i:x}{i:x}"))
        .find(|p| !a.id[7..].starts_with(p.as_str()) && !b.id[7..].starts_with(p.as_str()))
        .unwrap();
    for l in [unknown.as_str(), unknown_prefix.as_str()] {
        let o = cs(hub, &["client", "hold", "edge", l]);
        assert_eq!(o.status.code(), Some(1), "{l}");
        assert!(stderr(&o).contains("no layer matches"), "{}", stderr(&o));
    }
    assert_eq!(client_show(hub, "edge"), dropped);
    // A client that does not exist.
    for args in
        [&["client", "hold", "nobody", a.prefix()][..], &["client", "show", "nobody"], &["client", "rm", "nobody"]]
    {
        let o = cs(hub, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains("no client named nobody"), "{args:?}: {}", stderr(&o));
    }

    // Drop the last layer: nothing held.
    let empty = cs_json(hub, &["client", "drop", "edge", &b.id]);
    assert_eq!(
        (empty["files"].as_u64(), empty["chunks"].as_u64(), empty["layer_bytes"].as_u64()),
        (Some(0), Some(0), Some(0))
    );

    // rm: gone from ls, show and diff fail.
    assert_eq!(cs_json(hub, &["client", "rm", "edge"]), json!({"removed": "edge"}));
    let names: Vec<Value> =
        cs_json(hub, &["client", "ls"]).as_array().unwrap().iter().map(|c| c["name"].clone()).collect();
    assert_eq!(names, vec![json!("only-b")]);
    assert_eq!(cs(hub, &["client", "show", "edge"]).status.code(), Some(1));
    assert_eq!(cs(hub, &["diff", "--client", "edge", &b.id]).status.code(), Some(1));
    // The name can be registered again, holding nothing.
    assert_eq!(cs_json(hub, &["client", "add", "edge"])["files"], 0);
}
