//! Apply arbitrary dedup tarballs on an edge store that holds the golden v1
//! old layer. The input is the tarball's inner tar stream (the target
//! zstd-compresses it, so mutations reach the tar and entry parsers rather
//! than dying in zstd), or a whole tarball when it starts with zstd's magic.
//! Apply may refuse or report missing references but must never panic, and
//! anything but a successful apply must leave the store exactly as it was.

#![no_main]

use chunkstore::{ApplyOutcome, Backend, IngestOptions, MemoryBackend, Store, StoreOptions, VerifyOptions};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};

const OLD_LAYER: &[u8] = include_bytes!("../../testdata/v1/old-layer.tar.zst");

struct State {
    store: Store,
    backend: Arc<MemoryBackend>,
    _dir: tempfile::TempDir,
    inputs: u64,
}

impl State {
    fn new() -> State {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new().prefix("chunkstore-fuzz-apply-").tempdir_in(base).expect("temp dir");
        let backend = Arc::new(MemoryBackend::new());
        let opts = StoreOptions { backend: Some(backend.clone()), pack_size: 4096, ..Default::default() };
        let store = Store::open_with(dir.path(), opts).expect("open store");
        store.ingest(OLD_LAYER, &IngestOptions::default()).expect("golden old layer ingests");
        State { store, backend, _dir: dir, inputs: 0 }
    }

    fn counts(&self) -> [u64; 6] {
        let s = self.store.stats().expect("stats");
        let in_backend = self.backend.list_packs().expect("list packs").len() as u64;
        [s.layers, s.chunks, s.files, s.packs, s.stored_bytes, in_backend]
    }
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.get_or_insert_with(State::new);
    state.inputs += 1;
    let tarball = if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        data.to_vec()
    } else {
        zstd::bulk::compress(data, 1).expect("compressing the input")
    };
    let before = state.counts();
    let outcome = state.store.apply(&tarball[..], &IngestOptions::default());
    let mut reset = false;
    match outcome {
        Ok(ApplyOutcome::Applied(s)) => {
            // Apply verified the diff_id; the export must agree, and the store verify clean.
            let mut out = Vec::new();
            state.store.export(&s.layer.id, &mut out).expect("an applied layer exports");
            assert_eq!(out.len() as u64, s.layer.tar_size);
            assert!(state.store.verify(VerifyOptions { full: true, ..Default::default() }).expect("verify").is_clean());
            // Start over so the edge stays small and the next inputs meet the same state.
            reset = true;
        }
        Ok(ApplyOutcome::Missing { missing, .. }) => {
            assert!(!missing.is_empty());
            assert_eq!(state.counts(), before, "a missing-references outcome changed the store");
        }
        Err(_) => assert_eq!(state.counts(), before, "a refused apply changed the store"),
    }
    if state.inputs.is_multiple_of(256) {
        assert!(state.store.verify(VerifyOptions::default()).expect("verify").is_clean());
    }
    if reset {
        *guard = None;
    }
});
