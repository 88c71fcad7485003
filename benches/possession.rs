//! Possession maps at scale (docs/benchmarks.md, "Possession maps and dedup
//! tarballs"): one store with ≥ 1,000,000 distinct chunks and 10,000 clients
//! each holding 1-3 layers; criterion times `diff` of a 20,000-file layer
//! against three clients, and `hold` / `evict` on one client.
//!
//! `cargo bench --bench possession` builds the fixture once (several minutes)
//! under `target/bench-fixtures/possession-v2/` and reuses it afterwards;
//! delete that directory to rebuild it. Before the benchmarks it prints the
//! store's scale and the index bytes per (client, layer) pair.
//!
//! Run as a test (`cargo test --benches`, nextest) or listed, it uses a small
//! fixture in a temporary directory instead, so CI stays quick; set
//! `POSSESSION_BENCH_SMALL=1` to benchmark that small fixture too.
//!
//! The fixture (all content pseudo-random, seeded, so rebuilding gives the same store):
//! - `big-v1`: 20,000 files (log-uniform 32 B - 64 KiB) in 200 directories;
//! - `big-v2`: `big-v1` with 10% of the files changed (half a small in-place
//!   edit, so most chunks stay shared; half rewritten whole);
//! - `big-v3`: `big-v2` with another 10% changed the same way;
//! - `app-NN`: 1,000-file layers of distinct content, as many as it takes to
//!   pass 1,000,000 distinct chunks;
//! - 10,000 clients `cNNNNN`, each holding 1-3 distinct layers drawn uniformly;
//! - bench clients: `bench-prev` holds `big-v1`, `bench-none` nothing,
//!   `bench-same` `big-v2`, `bench-hold` nothing (its `hold`/`evict` are timed).

use chunkstore::{ChunkerParams, ClientId, DiffOptions, IngestOptions, LayerId, Store, StoreOptions};
use criterion::Criterion;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// FastCDC's smallest sizes: many small chunks per byte of test data.
const PARAMS: ChunkerParams = ChunkerParams { min: 64, avg: 256, max: 1024 };
const SEED: u64 = 0x6368_756e_6b73_7431;
/// Bump when the fixture's recipe changes, so an old cached one is not reused.
const FIXTURE_NAME: &str = "possession-v2";

/// How big a fixture to build.
#[derive(Clone, Copy)]
struct Scale {
    big_files: usize,
    /// Largest file in the big layers (sizes are log-uniform from 32 B).
    big_max: u64,
    app_files: usize,
    app_max: u64,
    /// Add app layers until the store holds this many distinct chunks.
    min_chunks: u64,
    clients: usize,
}

const FULL: Scale = Scale {
    big_files: 20_000,
    big_max: 64 << 10,
    app_files: 1_000,
    app_max: 32 << 10,
    min_chunks: 1_000_000,
    clients: 10_000,
};
const SMALL: Scale =
    Scale { big_files: 300, big_max: 8 << 10, app_files: 100, app_max: 4 << 10, min_chunks: 4_000, clients: 50 };

/// splitmix64: small, seedable, good enough for test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, b: &mut [u8]) {
        for w in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            w.copy_from_slice(&v[..w.len()]);
        }
    }
    /// Log-uniform in [32, max].
    fn size(&mut self, max: u64) -> u64 {
        let (lo, hi) = (32f64.ln(), (max as f64).ln());
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (lo + u * (hi - lo)).exp() as u64
    }
}

fn seed_of(parts: &[u64]) -> u64 {
    parts.iter().fold(SEED, |acc, p| Rng::new(acc ^ p.wrapping_mul(0x2545_f491_4f6c_dd1d)).next())
}

fn random_file(seed: u64, size: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    Rng::new(seed).fill(&mut v);
    v
}

/// The big layer's files, version by version: `gen` 0 is `big-v1`; each later
/// version changes 10% of the previous one's files.
fn big_files(s: &Scale, gens: u64) -> Vec<Vec<u8>> {
    let mut files: Vec<Vec<u8>> = (0..s.big_files as u64)
        .map(|i| {
            let size = Rng::new(seed_of(&[1, i])).size(s.big_max);
            random_file(seed_of(&[2, i]), size)
        })
        .collect();
    for g in 1..=gens {
        let mut r = Rng::new(seed_of(&[3, g]));
        for (i, f) in files.iter_mut().enumerate() {
            if r.below(10) != 0 {
                continue;
            }
            if i % 2 == 0 && f.len() > 16 {
                // A small in-place edit: most chunks stay as they were.
                let at = r.below(f.len() as u64 - 8) as usize;
                r.fill(&mut f[at..at + 8]);
            } else {
                let size = r.size(s.big_max);
                *f = random_file(seed_of(&[4, g, i as u64]), size);
            }
        }
    }
    files
}

fn tar_of(files: &[Vec<u8>], dir: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let per_dir = 100;
    for (i, f) in files.iter().enumerate() {
        if i % per_dir == 0 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append_data(&mut h, format!("{dir}/d{:03}/", i / per_dir), &[][..]).expect("tar dir");
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(f.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, format!("{dir}/d{:03}/f{i:05}.bin", i / per_dir), &f[..]).expect("tar file");
    }
    b.into_inner().expect("tar finish")
}

fn app_layer(s: &Scale, n: u64) -> Vec<u8> {
    let files: Vec<Vec<u8>> = (0..s.app_files as u64)
        .map(|i| {
            let size = Rng::new(seed_of(&[5, n, i])).size(s.app_max);
            random_file(seed_of(&[6, n, i]), size)
        })
        .collect();
    tar_of(&files, &format!("opt/app{n:02}"))
}

fn open(dir: &Path) -> Store {
    Store::open_with(dir, StoreOptions { chunker: Some(PARAMS), ..Default::default() }).expect("open fixture store")
}

fn client(name: &str) -> ClientId {
    ClientId::new(name).expect("client name")
}

fn redb_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("chunkstore.redb")).map(|m| m.len()).unwrap_or(0)
}

/// The fixture's layers by name, and facts measured while building it.
struct Fixture {
    store: Store,
    layers: BTreeMap<String, LayerId>,
    facts: serde_json::Value,
    /// The small fixture's temporary directory, removed with it.
    _tmp: Option<tempfile::TempDir>,
}

impl Fixture {
    fn layer(&self, name: &str) -> LayerId {
        self.layers[name]
    }

    fn load(dir: &Path) -> Option<Fixture> {
        let text = std::fs::read_to_string(dir.join("fixture.json")).ok()?;
        let facts: serde_json::Value = serde_json::from_str(&text).ok()?;
        let layers = facts["layers"]
            .as_object()?
            .iter()
            .map(|(k, v)| Some((k.clone(), LayerId::parse(v.as_str()?).ok()?)))
            .collect::<Option<_>>()?;
        Some(Fixture { store: open(&dir.join("store")), layers, facts, _tmp: None })
    }

    /// Build into `<dir>.partial`, then rename: an interrupted build is never reused.
    fn build(dir: &Path, s: &Scale) -> Fixture {
        let started = Instant::now();
        let tmp = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("create fixture dir");
        let store_dir = tmp.join("store");
        let store = open(&store_dir);
        let mut layers = BTreeMap::new();
        let mut ingest_secs = 0.0;
        let mut tar_bytes = 0u64;
        let mut ingest = |name: String, tar: Vec<u8>, store: &Store| {
            let t = Instant::now();
            let sum = store.ingest(&tar[..], &IngestOptions::default()).expect("ingest");
            ingest_secs += t.elapsed().as_secs_f64();
            tar_bytes += tar.len() as u64;
            eprintln!(
                "possession fixture: {name}: {} files, {} MB, {} new chunks ({:.1} s)",
                sum.layer.files,
                tar.len() / 1_000_000,
                sum.new_chunks,
                t.elapsed().as_secs_f64()
            );
            layers.insert(name, sum.layer.id);
        };
        for g in 0..3 {
            ingest(format!("big-v{}", g + 1), tar_of(&big_files(s, g), "usr/share/big"), &store);
        }
        let mut n = 0;
        while store.stats().expect("stats").chunks < s.min_chunks {
            ingest(format!("app-{n:02}"), app_layer(s, n), &store);
            n += 1;
        }
        let stats = store.stats().expect("stats");
        let redb_before = redb_bytes(&store_dir);

        // Clients: each holds 1-3 distinct layers drawn uniformly.
        let names: Vec<&String> = layers.keys().collect();
        let mut r = Rng::new(seed_of(&[7]));
        let t = Instant::now();
        let mut pairs = 0u64;
        for i in 0..s.clients {
            let c = client(&format!("c{i:05}"));
            store.add_client(&c).expect("add client");
            let k = 1 + r.below(3) as usize;
            let mut held: Vec<LayerId> = Vec::new();
            while held.len() < k {
                let l = layers[names[r.below(names.len() as u64) as usize]];
                if !held.contains(&l) {
                    held.push(l);
                }
            }
            store.hold(&c, &held).expect("hold");
            pairs += k as u64;
            if (i + 1) % 1000 == 0 {
                eprintln!("possession fixture: {} clients ({:.1} s)", i + 1, t.elapsed().as_secs_f64());
            }
        }
        let client_secs = t.elapsed().as_secs_f64();
        let redb_after = redb_bytes(&store_dir);
        for (c, l) in [("bench-prev", Some("big-v1")), ("bench-none", None), ("bench-same", Some("big-v2"))] {
            store.add_client(&client(c)).expect("add bench client");
            if let Some(l) = l {
                store.hold(&client(c), &[layers[l]]).expect("hold");
            }
        }
        store.add_client(&client("bench-hold")).expect("add bench client");
        let facts = serde_json::json!({
            "layers": layers.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<BTreeMap<_, _>>(),
            "scale": { "big_files": s.big_files, "clients": s.clients, "min_chunks": s.min_chunks },
            "chunks": stats.chunks,
            "files": stats.files,
            "layer_tar_bytes": tar_bytes,
            "stored_bytes": stats.stored_bytes,
            "population_pairs": pairs,
            "redb_bytes_before_clients": redb_before,
            "redb_bytes_after_clients": redb_after,
            "ingest_seconds": ingest_secs,
            "client_seconds": client_secs,
            "build_seconds": started.elapsed().as_secs_f64(),
        });
        drop(store);
        std::fs::write(tmp.join("fixture.json"), serde_json::to_string_pretty(&facts).expect("json"))
            .expect("write fixture.json");
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&tmp, dir).expect("publish fixture");
        Fixture::load(dir).expect("load the fixture just built")
    }

    fn load_or_build(dir: &Path, s: &Scale) -> Fixture {
        if let Some(f) = Fixture::load(dir) {
            eprintln!("possession fixture: using {}", dir.display());
            return f;
        }
        eprintln!("possession fixture: building {} (once; several minutes at full scale)", dir.display());
        Fixture::build(dir, s)
    }

    /// Print the store's scale and the index bytes per (client, layer) pair.
    fn report(&self) {
        let f = &self.facts;
        let clients = self.store.clients().expect("clients");
        let population: Vec<_> = clients.iter().filter(|c| c.name.as_str().starts_with('c')).collect();
        let pairs: u64 = population.iter().map(|c| c.layers.len() as u64).sum();
        let record: u64 = population.iter().map(|c| c.record_bytes).sum();
        let max = population.iter().map(|c| c.record_bytes).max().unwrap_or(0);
        // Records by what the client holds: the big layers' versions or only app layers.
        let big: Vec<LayerId> = ["big-v1", "big-v2", "big-v3"].iter().map(|n| self.layer(n)).collect();
        let mut by_kind: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for c in &population {
            let held: Vec<&str> =
                ["v1", "v2", "v3"].iter().zip(&big).filter(|(_, l)| c.layers.contains(l)).map(|(n, _)| *n).collect();
            let kind = if held.is_empty() { "apps only".to_string() } else { format!("big {}", held.join("+")) };
            let e = by_kind.entry(kind).or_default();
            e.0 += 1;
            e.1 += c.layers.len() as u64;
            e.2 += c.record_bytes;
        }
        let n = |k: &str| f[k].as_u64().unwrap_or(0);
        println!("possession fixture ({}):", FIXTURE_NAME);
        println!(
            "  distinct chunks {}  distinct files {}  layers {}  layer tar bytes {}  stored bytes {}",
            n("chunks"),
            n("files"),
            self.layers.len(),
            n("layer_tar_bytes"),
            n("stored_bytes")
        );
        println!(
            "  clients {} (+{} bench clients)  (client, layer) pairs {}",
            population.len(),
            clients.len() - population.len(),
            pairs
        );
        println!(
            "  client records: {} bytes total, {:.1} bytes per pair, {:.1} per client, largest {}",
            record,
            record as f64 / pairs.max(1) as f64,
            record as f64 / population.len().max(1) as f64,
            max
        );
        for (kind, (c, p, b)) in &by_kind {
            println!("    {kind:<14} {c:>6} clients {p:>6} pairs  {:>8.1} bytes/pair", *b as f64 / (*p).max(1) as f64);
        }
        let (before, after) = (n("redb_bytes_before_clients"), n("redb_bytes_after_clients"));
        if after > before {
            println!(
                "  redb file: {before} bytes before clients, {after} after: {:.1} bytes per pair",
                (after - before) as f64 / n("population_pairs").max(1) as f64
            );
        } else {
            println!("  redb file: {before} bytes, unchanged by the clients (their records fit in free pages)");
        }
        for c in ["bench-prev", "bench-same"] {
            let i = self.store.client(&client(c)).expect("bench client");
            println!("  {c}: {} files, {} chunks, record {} bytes", i.files, i.chunks, i.record_bytes);
        }
        println!(
            "  built in {:.0} s (ingest {:.0} s, {} clients {:.0} s)",
            f["build_seconds"].as_f64().unwrap_or(0.0),
            f["ingest_seconds"].as_f64().unwrap_or(0.0),
            n("population_pairs"),
            f["client_seconds"].as_f64().unwrap_or(0.0)
        );
        let v2 = self.layer("big-v2");
        let prev = self.store.diff(&client("bench-prev"), &v2).expect("diff");
        let s = &prev.summary;
        println!(
            "  diff big-v2 vs bench-prev: {} files: {} held, {} partial, {} missing; {} of {} bytes carried",
            s.files, s.held_files, s.partial_files, s.missing_files, s.carried_bytes, s.layer_bytes
        );
        // Wall time suffers when other work shares the 2 cores; this thread's
        // CPU time much less so. Medians of 21 runs, after one warm-up.
        println!("  load average: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
        for who in ["bench-prev", "bench-none", "bench-same"] {
            let id = client(who);
            let (mut wall, mut cpu) = (Vec::new(), Vec::new());
            for i in 0..22 {
                let (t, c) = (Instant::now(), thread_cpu_ns());
                std::hint::black_box(self.store.diff(&id, &v2).expect("diff"));
                if i > 0 {
                    wall.push(t.elapsed().as_secs_f64() * 1e3);
                    cpu.push(thread_cpu_ns().zip(c).map_or(f64::NAN, |(b, a)| (b - a) as f64 / 1e6));
                }
            }
            println!("  diff big-v2 vs {who}: median {:.1} ms wall, {:.1} ms CPU", median(wall), median(cpu));
        }
        // What `pack` does on top: deltas for the files the client lacks, then the tarball.
        let t = Instant::now();
        let d = self.store.diff_with(&client("bench-prev"), &v2, DiffOptions { deltas: true }).expect("diff");
        let diff_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let p = self.store.write_dedup_tar(&d, std::io::sink()).expect("dedup tarball");
        println!(
            "  pack big-v2 for bench-prev: diff with deltas {:.2} s ({} delta files), tarball {:.2} s, {} bytes ({} uncompressed)",
            diff_secs,
            d.summary.delta_files,
            t.elapsed().as_secs_f64(),
            p.compressed_bytes,
            p.tar_bytes
        );
    }
}

/// Benchmarks take the fixture through `fx`, which builds it on first use: a
/// `--list` run never calls a routine, so it lists without building anything.
fn benches<'a>(c: &mut Criterion, fx: &dyn Fn() -> &'a Fixture) {
    let mut g = c.benchmark_group("possession/diff-big-v2");
    for who in ["bench-prev", "bench-none", "bench-same"] {
        let id = client(who);
        g.bench_function(who, |b| {
            let (fx, v2) = (fx(), fx().layer("big-v2"));
            b.iter(|| fx.store.diff(&id, &v2).expect("diff"))
        });
    }
    g.finish();

    // hold and evict of big-v2 on one client; each timed step is undone, untimed.
    let id = client("bench-hold");
    let mut g = c.benchmark_group("possession");
    g.bench_function("hold-big-v2", |b| {
        let (fx, v2) = (fx(), fx().layer("big-v2"));
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let s = Instant::now();
                fx.store.hold(&id, &[v2]).expect("hold");
                t += s.elapsed();
                fx.store.evict(&id, &[v2]).expect("evict");
            }
            t
        })
    });
    g.bench_function("evict-big-v2", |b| {
        let (fx, v2) = (fx(), fx().layer("big-v2"));
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                fx.store.hold(&id, &[v2]).expect("hold");
                let s = Instant::now();
                fx.store.evict(&id, &[v2]).expect("evict");
                t += s.elapsed();
            }
            t
        })
    });
    g.finish();
}

/// This thread's time on a CPU so far (Linux), in nanoseconds.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn fixture_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-fixtures").join(FIXTURE_NAME)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |a: &str| args.iter().any(|x| x == a);
    // Criterion benchmarks only under `cargo bench` (--bench, without --test or --list).
    let benchmarking = has("--bench") && !has("--test") && !has("--list");
    let small = !benchmarking || std::env::var_os("POSSESSION_BENCH_SMALL").is_some();
    let cell = std::cell::OnceCell::new();
    let fx = || {
        cell.get_or_init(|| {
            let fx = if small {
                let dir = tempfile::tempdir().expect("tempdir");
                let mut fx = Fixture::build(&dir.path().join("fixture"), &SMALL);
                fx._tmp = Some(dir);
                fx
            } else {
                Fixture::load_or_build(&fixture_dir(), &FULL)
            };
            fx.report();
            fx
        })
    };
    // Defaults first, so command-line options still override them. The
    // hold/evict steps commit (fsync); this keeps the whole run to minutes.
    let mut c = Criterion::default();
    if !small {
        c = c.sample_size(30).measurement_time(Duration::from_secs(15));
    }
    let mut c = c.configure_from_args();
    benches(&mut c, &fx);
    c.final_summary();
}
