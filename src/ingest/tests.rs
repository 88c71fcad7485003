use super::*;
use crate::layermap::LayerMap;
use crate::layerobj::LayerObject;
use crate::testutil::{noise, tar_of};
use crate::verify::VerifyOptions;

/// Repeats within a batch, across batches, ahead of their claimer in the
/// same batch, of streamed regions and of chunks shared between files: all
/// stored once, dense chunk numbers in stream order, the layer rebuilt exactly.
#[test]
fn repeats_are_stored_once_in_stream_order() {
    let a = noise(100_000, 1);
    let mut a_longer = a.clone();
    a_longer.extend(noise(300_000, 2));
    let filler = noise(3 << 20, 3);
    let big = noise(WINDOW + 700_000, 4);
    let small = b"small and repeated".to_vec();
    let files: Vec<(&str, &[u8])> = vec![
        ("empty-1", b""),
        ("a", &a),
        ("small-1", &small),
        ("a-again", &a),
        ("a-longer", &a_longer),
        ("filler", &filler),
        ("a-next-batch", &a),
        ("big", &big),
        ("small-2", &small),
        ("big-again", &big),
        ("empty-2", b""),
    ];
    let tar = tar_of(&files);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = store.ingest(&tar[..], &IngestOptions::default()).unwrap();
    assert_eq!(s.layer.files, files.len() as u64);
    assert_eq!(s.new_files, 6, "empty, a, small, a-longer, filler, big");
    let mut back = Vec::new();
    store.export(&s.layer.id, &mut back).unwrap();
    assert!(back == tar, "the layer rebuilds exactly");
    // Verify counts every stored byte, and with `full` every rebuilt one.
    let stats = store.stats().unwrap();
    for full in [false, true] {
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        assert!(store.verify(VerifyOptions { full, progress: Some(counter.clone()) }).unwrap().is_clean());
        let want = stats.stored_bytes + if full { stats.logical_bytes } else { 0 };
        assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), want, "full: {full}");
    }

    // Every chunk stored once; numbers 0, 1, 2... in order of first sighting.
    let tx = store.db.begin_read().unwrap();
    let map = tx.open_table(LAYER_MAPS).unwrap();
    let map =
        LayerMap::decode(&crate::index::get_parted(&map, &s.layer.id.as_bytes()[..], "map").unwrap().unwrap()).unwrap();
    let mut next = 0;
    for n in map.entries.iter().flat_map(|e| e.chunks.iter()) {
        assert!(*n <= next, "chunk {n} numbered ahead of stream order");
        next = next.max(n + 1);
    }
    assert_eq!(next as u64, s.new_chunks);
    assert_eq!(store.stats().unwrap().chunks, s.new_chunks);
    let chunk_refs: u64 = map.entries.iter().map(|e| e.chunks.len() as u64).sum();
    assert_eq!(chunk_refs, s.layer.chunks);

    // Ingested again: nothing new.
    let again = store.ingest(&tar[..], &IngestOptions::default()).unwrap();
    assert!(again.already_present);
    assert_eq!((again.new_chunks, again.new_files, again.new_stored_bytes), (0, 0, 0));
    assert_eq!(again.layer.chunks, s.layer.chunks);
}

/// The layer object a commit writes, built from what the commit inserts,
/// is the one the committed index gives (the object `reindex` trusts); the
/// same for a re-ingest that adds a second blob digest (the commit streams
/// the object from its records in both cases). Many small files, some
/// repeated, so that the recipe and map go in parts and the claims freeze.
#[test]
fn the_layer_object_written_is_the_one_the_index_gives() {
    let (shared, a) = (noise(200_000, 5), noise(150_000, 6));
    let small: Vec<(String, Vec<u8>)> =
        (0..3000).map(|i| (format!("s/{i}"), format!("small {}", i % 2500).into_bytes())).collect();
    let mut files: Vec<(&str, &[u8])> = vec![("a", &a[..]), ("shared", &shared), ("again", &shared), ("empty", b"")];
    files.extend(small.iter().map(|(n, d)| (n.as_str(), &d[..])));
    let tar = tar_of(&files);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for input in [&gz[..], &zst[..], &tar[..]] {
        let s = store.ingest(input, &IngestOptions::default()).unwrap();
        let written = LayerObject::decode(&store.backend.get_layer(&s.layer.id).unwrap(), &s.layer.id).unwrap();
        assert_eq!(written, store.layer_object_from_index(&s.layer.id).unwrap());
    }
    let obj = store.layer_object_from_index(&store.layers().unwrap()[0].id).unwrap();
    assert_eq!(obj.blobs.len(), 2, "the gzip and the zstd blob both name the layer");
}

/// Header bytes by the megabyte (here 40,000 directories before a file) go
/// through in parts and batches, and the layer rebuilds exactly, with one
/// raw item for them in its recipe as before; bytes after the end marker
/// longer than a batch buffer's room run on into the next buffer.
#[test]
fn long_header_runs_and_tails() {
    let dirs = |n: usize| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        for i in 0..n {
            b.append_data(&mut h.clone(), format!("d{i}/"), &[][..]).unwrap();
        }
        b
    };
    let file = |b: &mut tar::Builder<Vec<u8>>, data: &[u8]| {
        let mut f = tar::Header::new_gnu();
        f.set_size(data.len() as u64);
        f.set_mode(0o644);
        b.append_data(&mut f, "file", data).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let round_trip = |tar: &[u8]| {
        let s = store.ingest(tar, &IngestOptions::default()).unwrap();
        let mut back = Vec::new();
        store.export(&s.layer.id, &mut back).unwrap();
        assert!(back == tar, "the layer rebuilds exactly");
        let recipe = store.db.begin_read().unwrap().open_table(RECIPES).unwrap();
        let recipe = crate::index::get_parted(&recipe, &s.layer.id.as_bytes()[..], "recipe").unwrap().unwrap();
        let items: Vec<_> = crate::recipe::RecipeReader::new(recipe).unwrap().collect::<Result<_>>().unwrap();
        (s, items.len())
    };

    let mut b = dirs(40_000);
    file(&mut b, &noise(70_000, 9));
    let (s, items) = round_trip(&b.into_inner().unwrap());
    assert_eq!((s.layer.entries, s.layer.files), (40_001, 1));
    assert_eq!(items, 3, "headers, the file, then its padding and the end marker");

    let mut b = dirs(10);
    file(&mut b, &noise(1 << 20, 10));
    let mut tar = b.into_inner().unwrap();
    tar.extend(noise(crate::tarsplit::MAX_TAIL as usize - 4096, 11));
    assert!(tar.len() > batchbuf::CAPACITY);
    let (s, items) = round_trip(&tar);
    assert_eq!((s.layer.entries, s.layer.files), (11, 1));
    assert_eq!(items, 3);
}

/// A zstd stream that begins with a skippable frame (metadata some writers
/// put first) is zstd, not "not a tar".
#[test]
fn a_zstd_stream_may_begin_with_a_skippable_frame() {
    let tar = tar_of(&[("a", &noise(50_000, 12))]);
    let mut input = vec![0x5a, 0x2a, 0x4d, 0x18];
    input.extend_from_slice(&5u32.to_le_bytes());
    input.extend_from_slice(b"hello");
    input.extend(zstd::encode_all(&tar[..], 3).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = store.ingest(&input[..], &IngestOptions::default()).unwrap();
    assert_eq!(s.input_compression, crate::Compression::Zstd);
    let mut back = Vec::new();
    store.export(&s.layer.id, &mut back).unwrap();
    assert!(back == tar);
}
