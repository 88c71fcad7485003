//! Ingest the public corpus once per set of chunker sizes, each into a fresh
//! store, in process (no command-line start-up), and print one markdown table
//! row per set: stored bytes, time, and how much of each prettier release's
//! file bytes the chunks of the releases before it already held.
//!
//! Usage: chunker-sweep [--level N] [--corpus DIR] [--scratch DIR] MIN/AVG/MAX... (KiB)
//! Defaults: the store's default zstd level, /tmp/chunkstore-corpus, /var/tmp.

use chunkstore::{ChunkerParams, IngestOptions, Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

const LAYERS: [&str; 7] =
    ["base", "base2", "certs", "prettier-3.0.3", "prettier-3.1.1", "prettier-3.2.5", "prettier-3.3.3"];

/// Apparent size of everything under `p`, as `du -sb` counts it.
fn du(p: &Path) -> u64 {
    let m = std::fs::symlink_metadata(p).expect("stat");
    if !m.is_dir() {
        return m.len();
    }
    m.len() + std::fs::read_dir(p).expect("list").map(|e| du(&e.expect("entry").path())).sum::<u64>()
}

/// This process's user + system CPU seconds.
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime), in clock ticks of 1/100 s on Linux.
    (f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime")) / 100.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut level = StoreOptions::default().compression_level;
    let mut corpus = PathBuf::from("/tmp/chunkstore-corpus");
    let mut scratch = PathBuf::from("/var/tmp");
    let mut sets = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--level" => level = args.next().and_then(|v| v.parse().ok()).expect("--level N"),
            "--corpus" => corpus = args.next().expect("--corpus DIR").into(),
            "--scratch" => scratch = args.next().expect("--scratch DIR").into(),
            "-h" | "--help" => {
                eprintln!("usage: chunker-sweep [--level N] [--corpus DIR] [--scratch DIR] MIN/AVG/MAX... (KiB)");
                return;
            }
            s => {
                let v: Vec<u32> = s.split('/').map(|x| x.parse::<u32>().expect("MIN/AVG/MAX in KiB") << 10).collect();
                let [min, avg, max] = v[..] else { panic!("want MIN/AVG/MAX, got {s}") };
                sets.push(ChunkerParams { min, avg, max });
            }
        }
    }
    println!("zstd level {level}; corpus {}", corpus.display());
    println!("| min/avg/max | stored bytes | chunks | CPU s | wall s | prettier 3.1.1 / 3.2.5 / 3.3.3: file bytes already held |");
    println!("|---|---:|---:|---:|---:|---|");
    for p in sets {
        let dir = scratch.join(format!("chunker-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open_with(&dir, StoreOptions { chunker: Some(p), compression_level: level, ..Default::default() })
            .expect("store opens");
        let (c0, t0) = (cpu(), Instant::now());
        let mut held = Vec::new();
        for l in LAYERS {
            let f = std::fs::File::open(corpus.join(format!("{l}.tar"))).expect("corpus layer");
            let s = store.ingest(std::io::BufReader::new(f), &IngestOptions::default()).expect("ingest");
            if l.starts_with("prettier") && l != "prettier-3.0.3" {
                held.push(format!("{:.1}%", 100.0 * (1.0 - s.new_chunk_bytes as f64 / s.layer.file_bytes as f64)));
            }
        }
        let (cpu_s, wall) = (cpu() - c0, t0.elapsed().as_secs_f64());
        let chunks = store.stats().expect("stats").chunks;
        drop(store);
        println!(
            "| {}K/{}K/{}K | {} | {} | {:.2} | {:.2} | {} |",
            p.min >> 10,
            p.avg >> 10,
            p.max >> 10,
            du(&dir),
            chunks,
            cpu_s,
            wall,
            held.join(" / ")
        );
        std::fs::remove_dir_all(&dir).expect("remove scratch store");
    }
}
