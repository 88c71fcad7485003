//! Ingest throughput (docs/benchmarks.md, "Ingest"): one layer into a fresh
//! store per iteration, with the packs in memory (`MemoryBackend`: the engine
//! alone) and on the local filesystem (the default: packs and their fsyncs).
//!
//! - `generated-32MiB`: a layer made here with the `tar` crate, seeded so it is
//!   the same every run: 2,400 small text files (source-like lines from a small
//!   vocabulary, 512 B - 12 KiB) and 48 larger binary files (64 KiB - 1 MiB,
//!   a mix of random and repetitive stretches, about half compressible), in
//!   that order per directory, 32 MiB of tar in all.
//! - `base.tar`: the corpus's Debian base layer, when
//!   `/tmp/chunkstore-corpus/base.tar` exists (build it with
//!   `../shared/bench/make-corpus`; `CHUNKSTORE_CORPUS=DIR` looks elsewhere).
//!
//! `cargo bench --bench ingest` takes about a minute and a half. Throughput is
//! of the uncompressed tar bytes. The store's setup (creating its index) is
//! not timed; its index commit and the packs' fsyncs are.

use chunkstore::{IngestOptions, MemoryBackend, Store, StoreOptions};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const SEED: u64 = 0x696e_6765_7374_3332;
const TARGET: usize = 32 << 20;

/// xorshift64*: small, seeded, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "fn", "let", "mut", "return", "if", "else", "match", "struct", "impl", "pub", "use", "self", "value", "index",
    "buffer", "length", "error", "result", "config", "stream", "chunk", "layer", "store", "file", "path", "read",
    "write", "open", "close", "count", "offset", "size", "=", "==", "{", "}", "(", ")", ";", "0", "1", "42",
];

/// Source-like text: lines of words, indented.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        out.extend(std::iter::repeat_n(b' ', 4 * rng.below(4) as usize));
        for _ in 0..3 + rng.below(8) {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

/// Binary: alternating random and repetitive (compressible) stretches.
fn binary(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut at = 0;
    while at < len {
        let n = (4096 + rng.below(60 << 10) as usize).min(len - at);
        if rng.below(2) == 0 {
            rng.fill(&mut out[at..at + n]);
        } else {
            let mut pat = [0u8; 64];
            rng.fill(&mut pat);
            for (i, b) in out[at..at + n].iter_mut().enumerate() {
                *b = pat[i % pat.len()];
            }
        }
        at += n;
    }
    out
}

/// The generated layer: a tar of about `TARGET` bytes.
fn generated_layer() -> Vec<u8> {
    let mut rng = Rng(SEED);
    let mut b = tar::Builder::new(Vec::with_capacity(TARGET + (1 << 20)));
    let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, path, data).expect("in-memory tar");
    };
    let (mut texts, mut bins) = (0, 0);
    for d in 0.. {
        for _ in 0..50 {
            let n = 512 + rng.below(12 << 10) as usize;
            add(&mut b, &format!("usr/share/app/d{d:03}/t{texts:05}.txt"), &text(&mut rng, n), 0o644);
            texts += 1;
        }
        let n = (64 << 10) + rng.below(960 << 10) as usize;
        add(&mut b, &format!("usr/lib/app/d{d:03}/b{bins:03}.so"), &binary(&mut rng, n), 0o755);
        bins += 1;
        if b.get_ref().len() >= TARGET {
            break;
        }
    }
    let tar = b.into_inner().expect("in-memory tar");
    eprintln!("ingest bench: generated layer of {} bytes: {texts} text files, {bins} binary files", tar.len());
    tar
}

fn corpus_base() -> Option<Vec<u8>> {
    let dir =
        std::env::var_os("CHUNKSTORE_CORPUS").map_or_else(|| PathBuf::from("/tmp/chunkstore-corpus"), PathBuf::from);
    std::fs::read(dir.join("base.tar")).ok()
}

/// A fresh store: packs in memory, or on the local filesystem.
fn fresh_store(memory: bool) -> (tempfile::TempDir, Store) {
    // Under /var/tmp (disk), not a tmpfs /tmp, so local fsyncs are real.
    let dir = tempfile::Builder::new().prefix("ingest-bench").tempdir_in("/var/tmp").expect("scratch dir");
    let mut opts = StoreOptions::default();
    if memory {
        opts.backend = Some(Arc::new(MemoryBackend::new()));
    }
    let store = Store::open_with(dir.path(), opts).expect("store opens");
    (dir, store)
}

fn bench_layer(c: &mut Criterion, name: &str, tar: &[u8]) {
    let mut g = c.benchmark_group(format!("ingest/{name}"));
    g.throughput(Throughput::Bytes(tar.len() as u64));
    g.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(12));
    for (label, memory) in [("memory", true), ("local", false)] {
        g.bench_function(label, |b| {
            b.iter_batched(
                || fresh_store(memory),
                |(dir, store)| {
                    store.ingest(tar, &IngestOptions::default()).expect("ingest");
                    (dir, store) // dropped (and the scratch dir deleted) outside the timing
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let layer = generated_layer();
    bench_layer(c, "generated-32MiB", &layer);
    match corpus_base() {
        Some(base) => bench_layer(c, "base.tar", &base),
        None => eprintln!("ingest bench: no /tmp/chunkstore-corpus/base.tar (set CHUNKSTORE_CORPUS); skipping it"),
    }
}

criterion_group!(ingest, benches);
criterion_main!(ingest);
