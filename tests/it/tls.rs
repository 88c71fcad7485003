//! HTTPS hubs: `serve --tls-cert/--tls-key` (rustls), and edges and build
//! hosts that trust the hub's private CA with `--ca-cert` (rustls with the
//! platform's roots plus those). The CA and the hub's certificate are made
//! here, for 127.0.0.1.

use crate::net::{assert_exact, command, noise_layer, pull, run_fails, run_json, token, Hub};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

/// PEM files: a CA, and the hub's certificate (signed by it) and key.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    let p = Pki { ca: dir.join("ca.pem"), cert: dir.join("hub.pem"), key: dir.join("hub.key") };
    std::fs::write(&p.ca, ca_cert.pem()).unwrap();
    std::fs::write(&p.cert, leaf_cert.pem()).unwrap();
    std::fs::write(&p.key, leaf_key.serialize_pem()).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn https_hub_serves_edges_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, edge, builder) = (d.join("hub"), d.join("edge"), d.join("builder"));
    let a = noise_layer(d, "a", 300_000, 70);
    let b = noise_layer(d, "b", 200_000, 71);
    a.ingest(&hub_store);
    b.ingest(&builder);
    let p = pki(d);
    let t = token(&hub_store, "edge-t", "pull", "1h");
    let pt = token(&hub_store, "builder", "push", "1h");
    let hub = Hub::start(&hub_store, &["--tls-cert", s(&p.cert), "--tls-key", s(&p.key)], &[]);
    let url = hub.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // An edge that does not trust the CA refuses the hub, and records nothing.
    let err = run_fails(&edge, &["pull", "--hub", &url, "--client", "edge-t", "--token", &t, &a.id], &[]);
    assert!(err.contains("certificate") && err.contains("--ca-cert"), "{err}");
    assert!(!edge.join("packs").exists() || std::fs::read_dir(edge.join("packs")).unwrap().count() == 0);

    // Trusting it: a dedup pull, then a chunk pull, both exact.
    let v = pull(&edge, &hub, "edge-t", &t, &a.id, &["--ca-cert", s(&p.ca)]);
    assert_eq!(v["via"].as_str(), Some("dedup"), "{v}");
    assert_exact(&edge, &a);
    let edge2 = d.join("edge2");
    let v = pull(&edge2, &hub, "edge-t", &t, &a.id, &["--ca-cert", s(&p.ca), "--via", "chunks"]);
    assert_eq!(v["via"].as_str(), Some("chunks"), "{v}");
    assert_exact(&edge2, &a);

    // A build host pushes over HTTPS, its CA from the environment.
    let v = run_json(&builder, &["push", "--hub", &url, "--token", &pt, &b.id], &[("CHUNKSTORE_CA_CERT", s(&p.ca))]);
    assert_eq!(v["layer"].as_str(), Some(b.id.as_str()), "{v}");
    let v = pull(&edge, &hub, "edge-t", &t, &b.id, &["--ca-cert", s(&p.ca)]);
    assert_eq!(v["already_present"].as_bool(), Some(false), "{v}");
    assert_exact(&edge, &b);

    assert!(hub.stop().success());
}

#[test]
fn serve_and_pull_refuse_unusable_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("hub");
    let p = pki(d);
    // A key that is not the certificate's, and a missing file.
    let other = d.join("other.key");
    std::fs::write(&other, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    for (cert, key) in [(p.cert.clone(), other), (d.join("missing.pem"), p.key.clone())] {
        let o =
            command(&store, &["serve", "--listen", "127.0.0.1:0", "--tls-cert", s(&cert), "--tls-key", s(&key)], &[])
                .output()
                .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("TLS certificate"), "{:?}: {err}", o.status);
        assert!(!err.contains("panicked"), "{err}");
    }
    // --tls-cert without --tls-key is a usage error.
    let o = command(&store, &["serve", "--tls-cert", s(&p.cert)], &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    // A CA file with no certificate in it.
    let junk = d.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let err = run_fails(
        &d.join("edge"),
        &["pull", "--hub", "https://127.0.0.1:9", "--client", "e", "--ca-cert", s(&junk), "sha256:00"],
        &[],
    );
    assert!(err.contains("certificate"), "{err}");
}

/// A self-signed certificate that says it is a CA, as `openssl req -x509`
/// makes by default, for `names`: its PEM and its key's.
fn self_signed_ca_flagged(dir: &Path, names: &[&str], tag: &str) -> (PathBuf, PathBuf) {
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// The hub's own self-signed certificate given as --ca-cert is trusted, as
/// curl and Docker trust it, even flagged as a CA; its host names still count.
#[test]
fn a_self_signed_hub_certificate_given_as_its_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hub_store, edge) = (d.join("hub"), d.join("edge"));
    let a = noise_layer(d, "a", 200_000, 72);
    a.ingest(&hub_store);
    let t = token(&hub_store, "edge-s", "pull", "1h");
    let (cert, key) = self_signed_ca_flagged(d, &["127.0.0.1"], "self");
    let hub = Hub::start(&hub_store, &["--tls-cert", s(&cert), "--tls-key", s(&key)], &[]);
    let url = hub.url();
    let err = run_fails(&edge, &["pull", "--hub", &url, "--client", "edge-s", "--token", &t, &a.id], &[]);
    assert!(err.contains("certificate"), "{err}");
    pull(&edge, &hub, "edge-s", &t, &a.id, &["--ca-cert", s(&cert)]);
    assert_exact(&edge, &a);
    assert!(hub.stop().success());

    // The same kind of certificate for another name: refused although given.
    let (other, other_key) = self_signed_ca_flagged(d, &["hub.example"], "other");
    let hub = Hub::start(&hub_store, &["--tls-cert", s(&other), "--tls-key", s(&other_key)], &[]);
    let url = hub.url();
    let err = run_fails(
        &d.join("edge2"),
        &["pull", "--hub", &url, "--client", "edge-s", "--token", &t, "--ca-cert", s(&other), &a.id],
        &[],
    );
    assert!(err.contains("certificate"), "{err}");
    assert!(hub.stop().success());
}
