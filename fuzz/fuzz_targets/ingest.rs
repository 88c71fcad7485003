//! Ingest arbitrary bytes as a layer. Ingest may refuse them, but must never
//! panic; when it accepts them, export must give back the uncompressed stream
//! exactly (the input itself for a plain tar) and the store must verify clean.

#![no_main]

use chunkstore::{Backend, IngestOptions, MemoryBackend, Store, StoreOptions, VerifyOptions};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::{Arc, Mutex};

/// One store per process (opening one costs far more than a small ingest);
/// replaced after this many accepted layers so verify stays cheap.
const LAYERS_PER_STORE: u32 = 64;

struct State {
    store: Store,
    backend: Arc<MemoryBackend>,
    _dir: tempfile::TempDir,
    layers: u32,
}

impl State {
    fn new() -> State {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempdir_in(scratch())
            .expect("temp dir");
        let backend = Arc::new(MemoryBackend::new());
        let opts = StoreOptions {
            backend: Some(backend.clone()),
            // Small packs, so inputs of a few KiB still seal several.
            pack_size: 4096,
            ..Default::default()
        };
        let store = Store::open_with(dir.path(), opts).expect("open store");
        State { store, backend, _dir: dir, layers: 0 }
    }
}

/// Where stores go: tmpfs when there is one (index commits fsync). The last
/// store of a run is never dropped (it lives in a static), so each run first
/// removes what runs no longer alive left behind.
fn scratch() -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    let root = base.join("chunkstore-fuzz");
    static CLEANED: std::sync::Once = std::sync::Once::new();
    CLEANED.call_once(|| {
        let _ = std::fs::create_dir_all(&root);
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: String = name.chars().take_while(char::is_ascii_digit).collect();
            if !pid.is_empty() && !std::path::Path::new("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
    root
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// The uncompressed stream, decoded independently of the store (by magic
/// bytes: the summary reports the compression the layer was first stored
/// with, which differs when the same layer arrived compressed before).
fn decompressed(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match data {
        [0x1f, 0x8b, ..] => flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).ok()?,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => zstd::stream::read::Decoder::new(data).ok()?.read_to_end(&mut out).ok()?,
        _ => return Some(data.to_vec()),
    };
    Some(out)
}

/// What a refused ingest must leave unchanged.
fn counts(state: &State) -> [u64; 6] {
    let s = state.store.stats().expect("stats");
    let in_backend = state.backend.list_packs().expect("list packs").len() as u64;
    [s.layers, s.chunks, s.files, s.packs, s.stored_bytes, in_backend]
}

/// Rewrite the checksum of every header a simple walk finds, so mutated
/// headers get past the checksum check and reach the code behind it.
fn fix_checksums(data: &[u8]) -> Vec<u8> {
    let mut t = data.to_vec();
    let mut at = 0usize;
    while at + 512 <= t.len() {
        let h = &mut t[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = std::str::from_utf8(&h[124..136])
            .ok()
            .and_then(|f| u64::from_str_radix(f.trim_matches(|c| c == ' ' || c == '\0'), 8).ok())
            .unwrap_or(0);
        let Some(next) = usize::try_from(size.div_ceil(512) * 512).ok().and_then(|d| (at + 512).checked_add(d)) else {
            break;
        };
        at = next;
    }
    t
}

/// Ingest `data` and check everything that must then hold.
fn check(state: &mut State, data: &[u8]) {
    let before = counts(state);
    let store = &state.store;
    let Ok(summary) = store.ingest(data, &IngestOptions::default()) else {
        // Refused: nothing recorded, no pack left in the backend.
        assert_eq!(counts(state), before, "a refused ingest changed the store");
        return;
    };
    state.layers += 1;
    let id = summary.layer.id;

    let mut out = Vec::new();
    let n = store.export(&id, &mut out).expect("an ingested layer exports");
    assert_eq!(n as usize, out.len());
    assert_eq!(out.len() as u64, summary.layer.tar_size);
    let sha: [u8; 32] = Sha256::digest(&out).into();
    assert_eq!(&sha, id.as_bytes(), "export does not hash to the diff_id");
    match decompressed(data) {
        Some(expected) => assert!(out == expected, "export differs from the (decompressed) input"),
        None => panic!("ingest accepted compressed input that the reference decoder rejects"),
    }

    // The same bytes again: already present, same layer, nothing new.
    let again = store.ingest(data, &IngestOptions::default()).expect("re-ingest of an accepted layer");
    assert!(again.already_present && again.layer.id == id);
    assert_eq!(again.new_chunks, 0);

    let r = store.verify(VerifyOptions { full: true, ..Default::default() }).expect("verify runs");
    assert!(r.is_clean(), "verify found damage after an ingest: {:?}", r.damaged);
    let s = store.stats().expect("stats");
    assert_eq!(s.packs, state.backend.list_packs().expect("list packs").len() as u64, "unindexed packs");
}

fuzz_target!(|data: &[u8]| {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if guard.as_ref().is_none_or(|s| s.layers >= LAYERS_PER_STORE) {
        *guard = None; // close the old store before its directory goes
        *guard = Some(State::new());
    }
    let state = guard.as_mut().expect("set above");
    check(state, data);
    // Plain input again with valid header checksums, when that differs.
    if decompressed(data).as_deref() == Some(data) {
        let fixed = fix_checksums(data);
        if fixed != data {
            check(state, &fixed);
        }
    }
});
