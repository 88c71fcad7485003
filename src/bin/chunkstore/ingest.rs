//! `chunkstore ingest FILE...`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::{Context, Result};
use chunkstore::IngestOptions;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Ingest layer tarballs (tar, tar+gzip, tar+zstd)
#[derive(clap::Args)]
pub struct Args {
    /// Layer files; `-` reads standard input
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Record the layer only if the input as given (compressed or not) has this SHA-256:
    /// the digest an image manifest names its blob by. One FILE only
    #[arg(long, value_name = "DIGEST", value_parser = |s: &str| chunkstore::BlobDigest::parse(s).map_err(|e| e.to_string()))]
    digest: Option<chunkstore::BlobDigest>,
    /// Record the layer only if its uncompressed tar has this SHA-256 (the diff_id an image
    /// config lists). One FILE only
    #[arg(long, value_name = "DIGEST", value_parser = |s: &str| chunkstore::LayerId::parse(s).map_err(|e| e.to_string()))]
    diff_id: Option<chunkstore::LayerId>,
}

/// One input's result, named, for `--json`.
#[derive(serde::Serialize)]
struct Ingested {
    input: String,
    #[serde(flatten)]
    summary: chunkstore::IngestSummary,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    if args.files.len() > 1 && (args.digest.is_some() || args.diff_id.is_some()) {
        crate::usage_conflict("ingest", "--digest and --diff-id name one input: give one FILE");
    }
    let store = ctx.open()?;
    let mut summaries = Vec::new();
    // Per-file failures; with `--json` they go into the one document printed at the end.
    let mut errors = Vec::new();
    let mut fail = |name: &str, e: &anyhow::Error| {
        if ctx.json {
            eprintln!("chunkstore: {}", output::message(e));
        } else {
            output::report_error(ctx, e);
        }
        let mut j = output::error_json(e);
        j["input"] = name.into();
        errors.push(j);
    };
    for path in &args.files {
        let name = path.display().to_string();
        let (reader, total): (Box<dyn Read>, Option<u64>) = if name == "-" {
            (Box::new(std::io::stdin().lock()), None)
        } else {
            match std::fs::File::open(path) {
                Ok(f) => {
                    let len = f.metadata().ok().map(|m| m.len());
                    (Box::new(f), len)
                }
                Err(e) => {
                    fail(&name, &anyhow::Error::new(e).context(format!("{name}: cannot open")));
                    continue;
                }
            }
        };
        let counter = Arc::new(AtomicU64::new(0));
        let progress = crate::progress::Progress::start(&name, total, counter.clone());
        let opts = IngestOptions { progress: Some(counter), expect: args.diff_id, expect_blob: args.digest };
        let result = store.ingest(reader, &opts);
        progress.finish();
        match result.with_context(|| format!("{name}: not ingested")) {
            Ok(s) => {
                if !ctx.json {
                    let l = &s.layer;
                    let mbps = s.layer.tar_size as f64 / s.seconds.max(1e-9) / 1e6;
                    outln!("{}  {name}", l.id)?;
                    outln!(
                        "  {} tar, {} entries, {} files, {} chunks; new: {} chunks, {} stored{} ({:.2} s, {mbps:.0} MB/s)",
                        output::bytes(l.tar_size),
                        l.entries,
                        l.files,
                        l.chunks,
                        s.new_chunks,
                        output::bytes(s.new_stored_bytes),
                        if s.already_present { "; layer was already present" } else { "" },
                        s.seconds,
                    )?;
                }
                summaries.push(Ingested { input: name, summary: s });
            }
            Err(e) => fail(&name, &e),
        }
    }
    if ctx.json {
        if errors.is_empty() {
            output::json(&summaries)?;
        } else {
            // One JSON document even when several inputs fail or some succeed:
            // the first failure where scripts look for it, then all of them.
            output::json(&serde_json::json!({ "error": errors[0], "errors": errors, "ingested": summaries }))?;
        }
    }
    Ok(if errors.is_empty() { Outcome::Ok } else { Outcome::Failed(1) })
}
