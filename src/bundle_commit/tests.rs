//! Forged and true bundles against `commit_bundle`, and the arrivals a pull hands over.

use super::*;
use crate::recipe::{RecipeItem, RecipeReader, RecipeWriter};
use crate::testutil::{noise, tar_of};
use crate::ErrorKind;

/// A hub holding a layer, and an empty edge holding all its chunks.
struct Setup {
    _dir: tempfile::TempDir,
    hub: Store,
    edge: Store,
    tar: Vec<u8>,
    bundle: RecipeBundle,
}

fn setup(files: &[(&str, &[u8])]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let hub = Store::open(dir.path().join("hub")).unwrap();
    let edge = Store::open(dir.path().join("edge")).unwrap();
    let tar = tar_of(files);
    let id = hub.ingest(&tar[..], &IngestOptions::default()).unwrap().layer.id;
    let bundle = hub.recipe_bundle(&id).unwrap();
    let want: Vec<ChunkId> = bundle.chunk_ids().unwrap().into_iter().map(|(c, _)| c).collect();
    let mut batch = Vec::new();
    hub.write_chunk_batch(&want, &mut batch).unwrap();
    edge.put_chunks(&crate::read_chunk_batch(&batch[..], &want).unwrap()).unwrap();
    Setup { _dir: dir, hub, edge, tar, bundle }
}

fn layer_files() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    // Several chunks; one chunk above the minimum size; one below it.
    (noise(600_000, 1), noise(40_000, 2), b"small".to_vec())
}

/// Nothing of the layer was recorded.
fn nothing_recorded(edge: &Store) {
    assert!(edge.layers().unwrap().is_empty());
    assert_eq!(edge.stats().unwrap().files, 0, "no file recipes");
}

fn refused(s: &Setup, bundle: &RecipeBundle, what: &str) -> Error {
    let e = s.edge.commit_bundle(bundle, &IngestOptions::default()).expect_err(what);
    nothing_recorded(&s.edge);
    e
}

/// The recipe's items, rewritten by `f` (which may drop, change or add items).
fn rewrite(recipe: &[u8], mut f: impl FnMut(RecipeItem, &mut RecipeWriter)) -> Vec<u8> {
    let mut w = RecipeWriter::new().unwrap();
    for item in RecipeReader::new(recipe.to_vec()).unwrap() {
        f(item.unwrap(), &mut w);
    }
    w.finish().unwrap()
}

fn put(w: &mut RecipeWriter, item: RecipeItem) {
    match item {
        RecipeItem::Raw(b) => w.raw(&b).unwrap(),
        RecipeItem::File { id, size, path } => w.file(&id, size, &path).unwrap(),
        RecipeItem::Data { id, size } => w.data(&id, size).unwrap(),
    }
}

/// Store `parts` (raw) on the edge as chunks.
fn put_raw_chunks(edge: &Store, parts: &[&[u8]]) -> Vec<(ChunkId, u32)> {
    let chunks: Vec<_> = parts
        .iter()
        .map(|p| crate::VerifiedChunk::check(ChunkId::of(p), p.len() as u32, p.to_vec()).unwrap())
        .collect();
    edge.put_chunks(&chunks).unwrap();
    parts.iter().map(|p| (ChunkId::of(p), p.len() as u32)).collect()
}

#[test]
fn a_true_bundle_commits_as_an_ingest_would() {
    let (big, mid, small) = layer_files();
    let s = setup(&[("big", &big), ("mid", &mid), ("empty", b""), ("small", &small), ("big-again", &big)]);
    assert_eq!(s.bundle.files[&FileId::of(&mid)].chunks.len(), 1);
    assert!(s.bundle.files[&FileId::of(&big)].chunks.len() > 2);
    let got = s.edge.commit_bundle(&s.bundle, &IngestOptions::default()).unwrap();
    let want = s.hub.layer(&s.bundle.layer).unwrap().unwrap();
    assert_eq!(got.layer.id, s.bundle.layer);
    assert_eq!(
        (got.layer.tar_size, got.layer.entries, got.layer.files, got.layer.file_bytes, got.layer.chunks),
        (want.tar_size, want.entries, want.files, want.file_bytes, want.chunks)
    );
    assert_eq!(got.new_files, 4);
    let mut back = Vec::new();
    s.edge.export(&s.bundle.layer, &mut back).unwrap();
    assert!(back == s.tar, "the layer rebuilds exactly");
    // The same recipe bytes as the hub's own ingest wrote.
    assert_eq!(s.edge.recipe_bundle(&s.bundle.layer).unwrap().recipe, s.bundle.recipe);
    assert!(s.edge.verify(crate::VerifyOptions { full: true, ..Default::default() }).unwrap().is_clean());
    // Again: already present, nothing new.
    let again = s.edge.commit_bundle(&s.bundle, &IngestOptions::default()).unwrap();
    assert!(again.already_present);
    assert_eq!(again.new_files, 0);
}

#[test]
fn arrivals_wait_hand_over_and_let_go() {
    let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
    let arrivals = Arrivals::new(HashMap::from([(a, 2), (b, 1)]));
    assert!(arrivals.wait(&ChunkId::of(b"not expected")).unwrap().is_none());
    std::thread::scope(|s| {
        let waiter = s.spawn(|| arrivals.wait(&a).unwrap().unwrap());
        arrivals.add([(a, b"a".to_vec())]);
        assert_eq!(*waiter.join().unwrap(), b"a");
    });
    assert_eq!(*arrivals.wait(&a).unwrap().unwrap(), b"a");
    assert!(arrivals.state.lock().unwrap().chunks.is_empty(), "used up: let go");
    arrivals.close();
    assert!(arrivals.wait(&a).is_err(), "read more often than used");
    assert!(arrivals.wait(&b).is_err(), "never arrived: an error, not a hang");
}

#[test]
fn a_wrong_diff_id_is_refused() {
    let (big, mid, small) = layer_files();
    let s = setup(&[("big", &big), ("mid", &mid), ("small", &small)]);
    let mut b = s.bundle.clone();
    b.layer = LayerId::from_bytes([7; 32]);
    let e = refused(&s, &b, "wrong diff_id");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("rebuilt layer is"), "{e}");
}

#[test]
fn recipes_that_do_not_match_the_tar_walk_are_refused() {
    let (big, mid, small) = layer_files();
    let s = setup(&[("big", &big), ("mid", &mid), ("small", &small)]);
    let forge = |f: &mut dyn FnMut(RecipeItem, &mut RecipeWriter)| {
        let mut b = s.bundle.clone();
        b.recipe = rewrite(&s.bundle.recipe, f);
        b
    };
    // A path other than the header's.
    let b = forge(&mut |item, w| match item {
        RecipeItem::File { id, size, path } if path == b"mid" => w.file(&id, size, b"elsewhere").unwrap(),
        i => put(w, i),
    });
    assert!(refused(&s, &b, "path").to_string().contains("not the one the tar walk finds"));
    // A file's content described as non-file data.
    let b = forge(&mut |item, w| match item {
        RecipeItem::File { id, size, path } if path == b"small" => w.data(&id, size).unwrap(),
        i => put(w, i),
    });
    refused(&s, &b, "kind");
    // Raw bytes split where an ingest would not split them.
    let b = forge(&mut |item, w| match item {
        RecipeItem::Raw(r) if r.len() > 512 => {
            w.raw_item(&r[..512]).unwrap();
            w.raw_item(&r[512..]).unwrap();
        }
        i => put(w, i),
    });
    assert!(refused(&s, &b, "raw split").to_string().contains("not split"));
    // A content item where the tar has header bytes: the first header
    // block moved into a content item of the same bytes.
    let first = FileId::of(&s.tar[..512]);
    let mut b = forge(&mut |item, w| match item {
        RecipeItem::Raw(r) if r.len() >= 512 && r[..512] == s.tar[..512] => {
            w.data(&first, 512).unwrap();
            if r.len() > 512 {
                w.raw(&r[512..]).unwrap();
            }
        }
        i => put(w, i),
    });
    b.files.insert(first, FileRecipe { size: 512, chunks: put_raw_chunks(&s.edge, &[&s.tar[..512]]) });
    refused(&s, &b, "content in the headers");
    // A recipe that goes on after the tar ends.
    let b = forge(&mut |item, w| put(w, item));
    let mut longer = b.clone();
    longer.recipe = {
        let mut w = RecipeWriter::new().unwrap();
        for item in RecipeReader::new(b.recipe.clone()).unwrap() {
            put(&mut w, item.unwrap());
        }
        w.file(&FileId::of(&small), small.len() as u64, b"extra").unwrap();
        w.finish().unwrap()
    };
    refused(&s, &longer, "trailing item");
    // Anything after the end marker: another frame, or garbage.
    let mut b = s.bundle.clone();
    b.recipe.extend(zstd::encode_all(&b"\x01\x00\x00\x00\x00"[..], 1).unwrap());
    assert!(refused(&s, &b, "a frame after the end").to_string().contains("after its end marker"));
    let mut b = s.bundle.clone();
    b.recipe.extend_from_slice(b"garbage");
    refused(&s, &b, "garbage after the end");
    // A file recipe of another size than the item.
    let mut b = s.bundle.clone();
    let mid_id = FileId::of(&mid);
    b.files.get_mut(&mid_id).unwrap().size += 1;
    refused(&s, &b, "size");
    // And the true bundle still commits.
    s.edge.commit_bundle(&s.bundle, &IngestOptions::default()).unwrap();
}

#[test]
fn file_ids_that_are_not_the_hash_of_their_bytes_are_refused() {
    let (big, mid, small) = layer_files();
    for victim in [&big, &mid] {
        let s = setup(&[("big", &big), ("mid", &mid), ("small", &small)]);
        // The same bytes (so the same diff_id) under another id.
        let real = FileId::of(victim);
        let fake = FileId::of(b"not these bytes");
        let mut b = s.bundle.clone();
        let r = b.files.remove(&real).unwrap();
        b.files.insert(fake, r);
        b.recipe = rewrite(&s.bundle.recipe, |item, w| match item {
            RecipeItem::File { id, size, path } if id == real => w.file(&fake, size, &path).unwrap(),
            i => put(w, i),
        });
        let e = refused(&s, &b, "fake file id");
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("do not match its id"), "{e}");
    }
}

#[test]
fn chunk_cuts_other_than_fastcdcs_are_refused() {
    let (big, mid, small) = layer_files();
    let s = setup(&[("big", &big), ("mid", &mid), ("small", &small)]);
    let p = s.edge.params;
    // `big` as two halves; `mid` (one chunk) as two; `big`'s first two chunks merged.
    let cuts = crate::chunker::Chunker::new(p).cuts(&big);
    assert!(cuts.len() >= 3 && cuts[0].1 + cuts[1].1 <= p.max as usize, "{cuts:?}");
    let merged = cuts[0].1 + cuts[1].1;
    let forgeries: Vec<(&Vec<u8>, Vec<&[u8]>)> = vec![
        (&big, vec![&big[..300_000], &big[300_000..]]),
        (&mid, vec![&mid[..20_000], &mid[20_000..]]),
        (&big, vec![&big[..merged], &big[merged..merged + cuts[2].1], &big[merged + cuts[2].1..]]),
    ];
    for (data, parts) in forgeries {
        let mut b = s.bundle.clone();
        let chunks = put_raw_chunks(&s.edge, &parts);
        b.files.insert(FileId::of(data), FileRecipe { size: data.len() as u64, chunks });
        let e = refused(&s, &b, "other cuts");
        assert!(e.to_string().contains("not cut where this store cuts"), "{e}");
    }
    s.edge.commit_bundle(&s.bundle, &IngestOptions::default()).unwrap();
}

#[test]
fn files_larger_than_the_window_stream_and_are_checked() {
    let huge = noise(WINDOW + 300_000, 9);
    let s = setup(&[("small", b"x"), ("huge", &huge)]);
    // Cut otherwise: its first chunk split in two.
    let id = FileId::of(&huge);
    let r = s.bundle.files[&id].clone();
    let first = r.chunks[0].1 as usize;
    let mut chunks = put_raw_chunks(&s.edge, &[&huge[..first / 2], &huge[first / 2..first]]);
    chunks.extend_from_slice(&r.chunks[1..]);
    let mut b = s.bundle.clone();
    b.files.insert(id, FileRecipe { size: r.size, chunks });
    refused(&s, &b, "streamed other cuts");
    // Under another id.
    let fake = FileId::of(b"fake");
    let mut b = s.bundle.clone();
    b.files.insert(fake, r.clone());
    b.recipe = rewrite(&s.bundle.recipe, |item, w| match item {
        RecipeItem::File { id: i, size, path } if i == id => w.file(&fake, size, &path).unwrap(),
        i => put(w, i),
    });
    refused(&s, &b, "streamed fake id");
    s.edge.commit_bundle(&s.bundle, &IngestOptions::default()).unwrap();
    let mut back = Vec::new();
    s.edge.export(&s.bundle.layer, &mut back).unwrap();
    assert!(back == s.tar);
}

#[test]
fn a_held_file_under_other_chunks_is_refused() {
    let (big, mid, small) = layer_files();
    let s = setup(&[("big", &big), ("mid", &mid), ("small", &small)]);
    // The edge already holds `big` (another layer with it).
    let other = tar_of(&[("big", &big)]);
    let other_id = s.edge.ingest(&other[..], &IngestOptions::default()).unwrap().layer.id;
    let mut b = s.bundle.clone();
    let chunks = put_raw_chunks(&s.edge, &[&big[..300_000], &big[300_000..]]);
    b.files.insert(FileId::of(&big), FileRecipe { size: big.len() as u64, chunks });
    let e = s.edge.commit_bundle(&b, &IngestOptions::default()).unwrap_err();
    assert!(e.to_string().contains("other chunks"), "{e}");
    assert_eq!(s.edge.layers().unwrap().iter().map(|l| l.id).collect::<Vec<_>>(), vec![other_id]);
    let got = s.edge.commit_bundle(&s.bundle, &IngestOptions::default()).unwrap();
    assert_eq!(got.new_files, 2, "mid and small; big was held");
}
