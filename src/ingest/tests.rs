use super::*;
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
    assert!(store.verify(VerifyOptions { full: true }).unwrap().is_clean());

    // Every chunk stored once; numbers 0, 1, 2... in order of first sighting.
    let tx = store.db.begin_read().unwrap();
    let map = tx.open_table(LAYER_MAPS).unwrap();
    let map = LayerMap::decode(map.get(&s.layer.id.as_bytes()[..]).unwrap().unwrap().value()).unwrap();
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
