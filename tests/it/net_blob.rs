//! Pulling a layer by the digest an image manifest names: that of the
//! compressed blob it arrived as, whole or as a unique prefix. The edge
//! records that digest too, so it finds the layer by it afterwards.

use crate::common::{cs_json, sha256_hex};
use crate::net::{assert_exact, noise_layer, run_fails, run_json, token, Hub};
use std::io::Write;

#[test]
fn pull_by_the_compressed_blob_digest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub_store = d.join("hub");
    let a = noise_layer(d, "a", 300_000, 90);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&a.bytes).unwrap();
    let gz = gz.finish().unwrap();
    let gz_path = d.join("a.tar.gz");
    std::fs::write(&gz_path, &gz).unwrap();
    let blob = format!("sha256:{}", sha256_hex(&gz));
    let v = cs_json(&hub_store, &["ingest", gz_path.to_str().unwrap()]);
    assert_eq!((v[0]["id"].as_str(), v[0]["blob"].as_str()), (Some(a.id.as_str()), Some(blob.as_str())), "{v}");
    let hub = Hub::start(&hub_store, &[], &[]);
    let t = token(&hub_store, "edge-b", "pull", "1h");
    let url = hub.url();

    for (edge, name, via) in [("e1", blob.as_str(), "dedup"), ("e2", &blob[..19], "chunks")] {
        let args = ["pull", "--hub", &url, "--client", "edge-b", "--token", &t, "--via", via, name];
        let s = run_json(&d.join(edge), &args, &[]);
        assert_eq!(s["layer"], a.id.as_str(), "{name}: {s}");
        assert_eq!((s["ingest"]["blob"].as_str(), s["ingest"]["compression"].as_str()), (Some(&*blob), Some("gzip")));
        assert_exact(&d.join(edge), &a);
        // The edge answers to the blob's digest, also once its index is rebuilt
        // from its layer objects.
        for rebuilt in [false, true] {
            if rebuilt {
                cs_json(&d.join(edge), &["reindex"]);
            }
            let ls = cs_json(&d.join(edge), &["ls"]);
            assert_eq!(ls[0]["blob"].as_str(), Some(&*blob), "{via}, rebuilt {rebuilt}: {ls}");
            let out = d.join(format!("{edge}.tar"));
            cs_json(&d.join(edge), &["export", &blob[..20], "-o", out.to_str().unwrap()]);
            assert_eq!(std::fs::read(&out).unwrap(), a.bytes, "{via}, rebuilt {rebuilt}");
        }
    }
    // A digest the hub knows by no name.
    let none = format!("sha256:{}", "0".repeat(64));
    let err = run_fails(&d.join("e3"), &["pull", "--hub", &url, "--client", "edge-b", "--token", &t, &none], &[]);
    assert!(err.contains("404") || err.contains("not"), "{err}");
    assert!(hub.stop().success());
}
