//! Property tests through the library (faster than spawning the binary):
//! random file trees written with the `tar` crate (GNU headers, or ustar
//! headers with PAX records) come back byte for byte; a set of layers stores
//! the same chunks whatever the ingest order; mutated tars never panic and are
//! either refused cleanly or round-trip exactly.

use crate::common::{pax_record, pseudo_random, tmp};
use chunkstore::{ErrorKind, FileId, IngestOptions, LayerId, Store, VerifyOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Node {
    /// Content is `pseudo_random(size, seed)`: few seeds, so files share
    /// content (whole, or as a prefix) within and across layers.
    File {
        path: String,
        size: usize,
        seed: u64,
    },
    Dir {
        path: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A hard link to an earlier file (by index among the files so far).
    Hardlink {
        path: String,
        to: prop::sample::Index,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Style {
    /// GNU headers; long names and link targets as 'L'/'K' entries.
    Gnu,
    /// ustar headers (prefix field where it fits); PAX records for long or
    /// non-ASCII names, long link targets, and xattrs.
    UstarPax,
}

#[derive(Debug, Clone)]
struct Layer {
    nodes: Vec<Node>,
    style: Style,
    /// Zero blocks beyond the end marker (record padding).
    extra_zero_blocks: usize,
    /// Bytes after the end marker.
    tail: Vec<u8>,
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,23}",
        1 => "[a-z]{101,140}",
        1 => "[a-zäöü文字é]{1,12}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(component(), 1..4).prop_map(|v| v.join("/"))
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => Just(0usize),
        3 => 1usize..2000,
        1 => Just(512usize),
        1 => Just(65_536usize),
        2 => 60_000usize..200_000,
    ]
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        6 => (path(), size(), 0u64..4).prop_map(|(path, size, seed)| Node::File { path, size, seed }),
        1 => path().prop_map(|path| Node::Dir { path }),
        1 => (path(), prop_oneof!["[a-z][a-z0-9_]{0,20}(/[a-z0-9_]{1,10}){0,3}", "[a-z]{101,180}"])
            .prop_map(|(path, target)| Node::Symlink { path, target }),
        1 => (path(), any::<prop::sample::Index>()).prop_map(|(path, to)| Node::Hardlink { path, to }),
    ]
}

fn layer(max_nodes: usize) -> impl Strategy<Value = Layer> {
    (
        prop::collection::vec(node(), 0..max_nodes),
        prop_oneof![Just(Style::Gnu), Just(Style::UstarPax)],
        prop_oneof![3 => Just(0usize), 1 => 1usize..24],
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..700)],
    )
        .prop_map(|(nodes, style, extra_zero_blocks, tail)| Layer { nodes, style, extra_zero_blocks, tail })
}

/// What a built layer should report.
struct Built {
    tar: Vec<u8>,
    entries: u64,
    files: u64,
    file_bytes: u64,
    /// Every regular file's content.
    contents: Vec<Vec<u8>>,
}

fn append_pax(b: &mut tar::Builder<Vec<u8>>, records: &[(&str, &str)]) {
    let mut data = Vec::new();
    for (k, v) in records {
        data.extend(pax_record(k, v));
    }
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/entry").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
}

/// Put as much of `s` as fits in a fixed header field (the PAX record has it whole).
fn truncated_into(field: &mut [u8], s: &str) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Index `i` makes every path unique.
fn build(l: &Layer) -> Built {
    let mut b = tar::Builder::new(Vec::new());
    let mut file_paths: Vec<String> = Vec::new();
    let (mut files, mut file_bytes, mut contents) = (0u64, 0u64, Vec::new());
    for (i, n) in l.nodes.iter().enumerate() {
        let mut h = match l.style {
            Style::Gnu => tar::Header::new_gnu(),
            Style::UstarPax => tar::Header::new_ustar(),
        };
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000 + i as u64);
        h.set_size(0);
        // A hard link with no earlier file to point at becomes an empty file.
        let hard_to = match n {
            Node::Hardlink { to, .. } if !file_paths.is_empty() => Some(file_paths[to.index(file_paths.len())].clone()),
            _ => None,
        };
        let (path, data, link): (String, Vec<u8>, Option<String>) = match n {
            Node::File { path, size, seed } => (format!("{i}-{path}"), content(*size, *seed).to_vec(), None),
            Node::Dir { path } => (format!("{i}-{path}/"), Vec::new(), None),
            Node::Symlink { path, target } => (format!("{i}-{path}"), Vec::new(), Some(target.clone())),
            Node::Hardlink { path, .. } => (format!("{i}-{path}"), Vec::new(), hard_to.clone()),
        };
        let kind = match n {
            Node::Dir { .. } => tar::EntryType::Directory,
            Node::Symlink { .. } => tar::EntryType::Symlink,
            Node::Hardlink { .. } if hard_to.is_some() => tar::EntryType::Link,
            _ => tar::EntryType::Regular,
        };
        h.set_entry_type(kind);
        if kind == tar::EntryType::Regular {
            h.set_size(data.len() as u64);
            files += 1;
            file_bytes += data.len() as u64;
            file_paths.push(path.clone());
            contents.push(data.clone());
        }
        match l.style {
            Style::Gnu => match &link {
                Some(target) => b.append_link(&mut h, &path, target).unwrap(),
                None => b.append_data(&mut h, &path, &data[..]).unwrap(),
            },
            Style::UstarPax => {
                let mut records: Vec<(&str, &str)> = Vec::new();
                if !path.is_ascii() || h.set_path(&path).is_err() {
                    records.push(("path", &path));
                    truncated_into(&mut h.as_old_mut().name, &path);
                }
                if let Some(target) = &link {
                    if h.set_link_name(target).is_err() {
                        records.push(("linkpath", target));
                        truncated_into(&mut h.as_old_mut().linkname, target);
                    }
                }
                if i % 3 == 1 {
                    records.push(("SCHILY.xattr.user.prop", "ünïcødé value"));
                }
                if !records.is_empty() {
                    append_pax(&mut b, &records);
                }
                h.set_cksum();
                b.append(&h, &data[..]).unwrap();
            }
        }
    }
    let mut tar = b.into_inner().unwrap();
    tar.resize(tar.len() + 512 * l.extra_zero_blocks, 0);
    tar.extend_from_slice(&l.tail);
    Built { tar, entries: l.nodes.len() as u64, files, file_bytes, contents }
}

/// `pseudo_random(size, seed)`, cut from one buffer per seed (each is a
/// prefix of the longest), so generating cases stays cheap.
fn content(size: usize, seed: u64) -> &'static [u8] {
    static POOL: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    &POOL.get_or_init(|| (0..4).map(|s| pseudo_random(200_000, s)).collect())[seed as usize][..size]
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn config(cases: u32) -> Config {
    // Failures print the minimal case; no regression files in the source tree.
    Config { cases, failure_persistence: None, ..Config::default() }
}

#[test]
fn random_trees_round_trip() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let seen = std::cell::Cell::new(0u64);
    let mut runner = TestRunner::new(config(24));
    runner
        .run(&layer(12), |l| {
            let built = build(&l);
            let s = store.ingest(&built.tar[..], &IngestOptions::default()).unwrap();
            prop_assert_eq!(s.layer.id, LayerId::from_bytes(sha(&built.tar)));
            prop_assert_eq!(s.layer.tar_size, built.tar.len() as u64);
            prop_assert_eq!(s.layer.entries, built.entries, "extension headers are not entries");
            prop_assert_eq!(s.layer.files, built.files);
            prop_assert_eq!(s.layer.file_bytes, built.file_bytes);
            let mut back = Vec::new();
            store.export(&s.layer.id, &mut back).unwrap();
            prop_assert!(back == built.tar, "export differs ({} vs {} bytes)", back.len(), built.tar.len());
            for c in &built.contents {
                let r = store.file_recipe(&FileId::of(c)).unwrap();
                prop_assert!(r.is_some(), "file of {} bytes not recorded", c.len());
                let r = r.unwrap();
                prop_assert_eq!(r.size, c.len() as u64);
                prop_assert_eq!(r.chunks.iter().map(|(_, n)| u64::from(*n)).sum::<u64>(), c.len() as u64);
                for (id, _) in &r.chunks {
                    prop_assert!(store.has_chunk(id).unwrap());
                }
            }
            seen.set(seen.get() + 1);
            Ok(())
        })
        .unwrap();
    assert!(seen.get() >= 24);
    let report = store.verify(VerifyOptions { full: true, ..Default::default() }).unwrap();
    assert!(report.is_clean(), "{:?}", report.damaged);
}

/// Chunks per file content, as a store records them.
fn chunk_map(store: &Store, contents: &[Vec<u8>]) -> BTreeMap<FileId, Vec<(chunkstore::ChunkId, u32)>> {
    contents
        .iter()
        .map(|c| {
            let id = FileId::of(c);
            (id, store.file_recipe(&id).unwrap().expect("every file is recorded").chunks)
        })
        .collect()
}

#[test]
fn ingest_order_does_not_change_what_is_stored() {
    // Smaller files than `random_trees_round_trip`: six ingests per case.
    let small = layer(7).prop_map(|mut l| {
        for n in &mut l.nodes {
            if let Node::File { size, .. } = n {
                *size %= 100_000;
            }
        }
        l
    });
    let strategy = (prop::collection::vec(small, 3), Just(vec![0usize, 1, 2]).prop_shuffle());
    // Two stores for the whole run (opening a store is the slow part): each
    // case adds the same three layers to both, in order to `a` and shuffled to
    // `b`, so after every case both hold the same set of layers and must hold
    // exactly the same chunks.
    let (da, db) = (tmp(), tmp());
    let (a, b) = (Store::open(da.path()).unwrap(), Store::open(db.path()).unwrap());
    let files = std::cell::RefCell::new(BTreeMap::new());
    let mut runner = TestRunner::new(config(16));
    runner
        .run(&strategy, |(layers, order)| {
            let built: Vec<Built> = layers.iter().map(build).collect();
            for bl in &built {
                a.ingest(&bl.tar[..], &IngestOptions::default()).unwrap();
            }
            for &i in &order {
                b.ingest(&built[i].tar[..], &IngestOptions::default()).unwrap();
            }
            let contents: Vec<Vec<u8>> = built.iter().flat_map(|b| b.contents.iter().cloned()).collect();
            let (ma, mb) = (chunk_map(&a, &contents), chunk_map(&b, &contents));
            prop_assert_eq!(&ma, &mb, "the same files chunk the same way");
            let mut files = files.borrow_mut();
            files.extend(ma);
            let chunks: BTreeMap<_, _> = files.values().flatten().map(|(id, n)| (*id, u64::from(*n))).collect();
            let (sa, sb) = (a.stats().unwrap(), b.stats().unwrap());
            for s in [&sa, &sb] {
                prop_assert_eq!(s.chunks, chunks.len() as u64, "exactly the files' chunks are stored, once each");
                prop_assert_eq!(s.chunk_bytes, chunks.values().sum::<u64>());
                prop_assert_eq!(s.files, files.len() as u64);
            }
            prop_assert_eq!(sa.layers, sb.layers);
            prop_assert_eq!(sa.logical_bytes, sb.logical_bytes);
            for c in chunks.keys() {
                prop_assert!(a.has_chunk(c).unwrap() && b.has_chunk(c).unwrap());
            }
            for bl in &built {
                let id = LayerId::from_bytes(sha(&bl.tar));
                let mut xb = Vec::new();
                b.export(&id, &mut xb).unwrap();
                prop_assert!(xb == bl.tar, "export differs");
            }
            Ok(())
        })
        .unwrap();
    for s in [&a, &b] {
        let report = s.verify(VerifyOptions::default()).unwrap();
        assert!(report.is_clean(), "{:?}", report.damaged);
    }
}

/// A small valid tar to damage.
fn victim() -> impl Strategy<Value = Vec<u8>> {
    layer(5).prop_map(|mut l| {
        // Keep inputs small: mutations matter, not bulk.
        for n in &mut l.nodes {
            if let Node::File { size, .. } = n {
                *size %= 3000;
            }
        }
        build(&l).tar
    })
}

#[derive(Debug, Clone)]
enum Damage {
    /// XOR bytes at these positions (taken modulo the length).
    Flip(Vec<(prop::sample::Index, u8)>),
    /// Write an octal or base-256 number into a header's size field.
    Size(prop::sample::Index, u64, bool),
    Truncate(prop::sample::Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8).prop_map(Damage::Flip),
        1 => (any::<prop::sample::Index>(), any::<u64>(), any::<bool>()).prop_map(|(i, v, b)| Damage::Size(i, v, b)),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
    ]
}

fn apply(tar: &[u8], d: &Damage) -> Vec<u8> {
    let mut t = tar.to_vec();
    match d {
        Damage::Flip(flips) => {
            for (i, x) in flips {
                let at = i.index(t.len());
                t[at] ^= x;
            }
        }
        Damage::Size(i, v, base256) => {
            // A header-aligned block; fix its checksum so the size is what gets read.
            let blocks = t.len() / 512;
            let at = i.index(blocks) * 512;
            let f = &mut t[at + 124..at + 136];
            if *base256 {
                f[..4].copy_from_slice(&[0x80, 0, 0, 0]);
                f[4..].copy_from_slice(&v.to_be_bytes());
            } else {
                f.copy_from_slice(format!("{:011o}\0", v & 0o77_777_777_777).as_bytes());
            }
            crate::common::fix_checksum(&mut t[at..at + 512]);
        }
        Damage::Truncate(i) => t.truncate(i.index(t.len())),
    }
    t
}

#[test]
fn damaged_tars_never_panic_and_never_come_back_wrong() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let (accepted, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let mut runner = TestRunner::new(config(64));
    runner
        .run(&(victim(), damage()), |(tar, d)| {
            let bad = apply(&tar, &d);
            let before = store.layers().unwrap().len();
            match store.ingest(&bad[..], &IngestOptions::default()) {
                Ok(s) => {
                    // Accepted (e.g. a flip in file data or a tail): exact round trip.
                    prop_assert_eq!(s.layer.id, LayerId::from_bytes(sha(&bad)));
                    let mut back = Vec::new();
                    store.export(&s.layer.id, &mut back).unwrap();
                    prop_assert!(back == bad, "accepted input exported differently");
                    accepted.set(accepted.get() + 1);
                }
                Err(e) => {
                    prop_assert_eq!(e.kind(), ErrorKind::InvalidInput, "{}", e);
                    prop_assert!(!e.to_string().is_empty());
                    prop_assert_eq!(store.layers().unwrap().len(), before, "a refused input left a layer");
                    refused.set(refused.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    let (accepted, refused) = (accepted.get(), refused.get());
    assert!(accepted > 0 && refused > 0, "both outcomes exercised: {accepted} accepted, {refused} refused");
    let report = store.verify(VerifyOptions { full: true, ..Default::default() }).unwrap();
    assert!(report.is_clean(), "{:?}", report.damaged);
    // The store still takes a good layer.
    let good = crate::common::small_tar(4242);
    let s = store.ingest(&good[..], &IngestOptions::default()).unwrap();
    assert_eq!(s.layer.id, LayerId::from_bytes(sha(&good)));
}
