//! Commit arbitrary recipe bundles (what a pull receives from a hub, and a
//! hub from a push) on a store that holds every chunk of the golden v1 layer
//! but not the layer. The input's first byte picks how the bundle is made:
//!
//! - 0: the rest is the bundle's bytes;
//! - 1: the reference bundle (the golden layer's own) with the rest read as
//!   edits, each `offset u16 LE | byte`, overwriting it;
//! - 2: the reference bundle with bytes `[a, a + len)` (`a`, `len`: u16 LE
//!   each) replaced by the rest of the input.
//!
//! Modes 1 and 2 keep the layer id, so mutations reach the recipe, file
//! recipe and content checks instead of failing on the diff_id first.
//!
//! A commit may refuse the bundle but must never panic, and a refusal must
//! leave the store's counts as they were. A commit that succeeds must have
//! recorded exactly the layer an ingest records (the same recipe items and
//! file recipes), export it byte for byte, and leave the store verifying clean.

#![no_main]

use chunkstore::{
    read_chunk_batch_any, IngestOptions, LayerId, MemoryBackend, RecipeBundle, RecipeItem, RecipeReader, Store,
    StoreOptions, VerifiedChunk, VerifyOptions,
};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};

const LAYER: &[u8] = include_bytes!("../../testdata/v1/layer.tar.zst");

struct State {
    id: LayerId,
    bundle: Vec<u8>,
    tar: Vec<u8>,
    chunks: Vec<VerifiedChunk>,
    edge: Option<(Store, tempfile::TempDir)>,
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    tempfile::Builder::new().prefix(prefix).tempdir_in(base).expect("temp dir")
}

fn open(dir: &std::path::Path) -> Store {
    let opts = StoreOptions { backend: Some(Arc::new(MemoryBackend::new())), pack_size: 4096, ..Default::default() };
    Store::open_with(dir, opts).expect("open store")
}

impl State {
    fn new() -> State {
        let dir = temp_dir("chunkstore-fuzz-bundle-ref-");
        let hub = open(dir.path());
        let id = hub.ingest(LAYER, &IngestOptions::default()).expect("golden layer ingests").layer.id;
        let bundle = hub.recipe_bundle(&id).expect("bundle");
        let ids: Vec<_> = bundle.chunk_ids().expect("chunk ids").into_iter().map(|(c, _)| c).collect();
        let mut batch = Vec::new();
        hub.write_chunk_batch(&ids, &mut batch).expect("chunk batch");
        let chunks = read_chunk_batch_any(&batch).expect("chunks verify");
        let mut tar = Vec::new();
        hub.export(&id, &mut tar).expect("export");
        State { id, bundle: bundle.encode(), tar, chunks, edge: None }
    }

    /// A store holding the layer's chunks and nothing else.
    fn edge(&mut self) -> &Store {
        if self.edge.is_none() {
            let dir = temp_dir("chunkstore-fuzz-bundle-");
            let store = open(dir.path());
            store.put_chunks(&self.chunks).expect("put chunks");
            self.edge = Some((store, dir));
        }
        &self.edge.as_ref().expect("just made").0
    }

    fn bundle_of(&self, data: &[u8]) -> Option<Vec<u8>> {
        let (&mode, rest) = data.split_first()?;
        let mut b = self.bundle.clone();
        match mode % 3 {
            0 => Some(rest.to_vec()),
            1 => {
                for e in rest.chunks_exact(3) {
                    let at = u16::from_le_bytes([e[0], e[1]]) as usize;
                    if let Some(x) = b.get_mut(at) {
                        *x = e[2];
                    }
                }
                Some(b)
            }
            _ => {
                if rest.len() < 4 {
                    return None;
                }
                let a = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(b.len());
                let end = (a + u16::from_le_bytes([rest[2], rest[3]]) as usize).min(b.len());
                b.splice(a..end, rest[4..].iter().copied());
                Some(b)
            }
        }
    }
}

fn items(recipe: &[u8]) -> Vec<RecipeItem> {
    RecipeReader::new(recipe.to_vec()).expect("recorded recipe opens").collect::<Result<_, _>>().expect("items")
}

fn counts(s: &Store) -> [u64; 5] {
    let st = s.stats().expect("stats");
    [st.layers, st.chunks, st.files, st.packs, st.stored_bytes]
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.get_or_insert_with(State::new);
    let Some(bytes) = state.bundle_of(data) else { return };
    let Ok(bundle) = RecipeBundle::decode(&bytes) else { return };
    let (want_id, want_bundle, want_tar) = (state.id, state.bundle.clone(), state.tar.clone());
    let edge = state.edge();
    let before = counts(edge);
    match edge.commit_bundle(&bundle, &IngestOptions::default()) {
        Ok(s) => {
            // Only the golden layer's bytes hash to an id a mutation can keep.
            assert_eq!(s.layer.id, want_id);
            // The same items and file recipes as the ingest's (the recipe's
            // zstd framing may differ: it is stored as it came).
            let got = edge.recipe_bundle(&want_id).expect("bundle");
            let want = RecipeBundle::decode(&want_bundle).expect("reference decodes");
            assert_eq!(items(&got.recipe), items(&want.recipe), "a forged recipe was recorded");
            assert_eq!(got.files, want.files, "forged file recipes were recorded");
            let mut out = Vec::new();
            edge.export(&want_id, &mut out).expect("export");
            assert!(out == want_tar, "the committed layer exports other bytes");
            assert!(edge.verify(VerifyOptions { full: true, ..Default::default() }).expect("verify").is_clean());
            state.edge = None; // the next input meets a store without the layer again
        }
        Err(_) => assert_eq!(counts(edge), before, "a refused bundle changed the store"),
    }
});
