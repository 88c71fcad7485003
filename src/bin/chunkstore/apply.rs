//! `chunkstore apply FILE`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::{Context, Result};
use chunkstore::{ApplyOutcome, IngestOptions};
use std::io::Read;
use std::path::PathBuf;

/// Exit code when the tarball references data this store lacks.
pub const EXIT_MISSING: u8 = 3;

/// Missing items listed on standard error.
const MAX_LISTED: usize = 50;

/// Rebuild a layer from a dedup tarball on this (edge) store
#[derive(clap::Args)]
pub struct Args {
    /// The dedup tarball; `-` reads standard input
    file: PathBuf,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let store = ctx.open()?;
    let name = args.file.display().to_string();
    let reader: Box<dyn Read> = if name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(&args.file).with_context(|| format!("{name}: cannot open"))?)
    };
    let outcome = store.apply(reader, &IngestOptions::default()).with_context(|| format!("{name}: not applied"))?;
    if ctx.json {
        output::json(&outcome)?;
    }
    match outcome {
        ApplyOutcome::Applied(s) => {
            if !ctx.json {
                outln!("{}  applied from {name}", s.layer.id)?;
                outln!(
                    "  {} tar, {} files; new here: {} chunks, {} stored",
                    output::bytes(s.layer.tar_size),
                    s.layer.files,
                    s.new_chunks,
                    output::bytes(s.new_stored_bytes)
                )?;
            }
            Ok(Outcome::Ok)
        }
        ApplyOutcome::Missing { layer, missing } => {
            eprintln!(
                "chunkstore: {name}: layer {layer} needs {} items this store lacks; nothing was recorded:",
                missing.len()
            );
            // A tarball for a store that holds nothing names every file of its
            // layer: the first ones here, all of them with --json.
            for m in missing.iter().take(MAX_LISTED) {
                eprintln!("  missing {} {} ({} bytes)", m.kind, m.id, m.size);
            }
            if missing.len() > MAX_LISTED {
                eprintln!("  … and {} more (--json lists them all)", missing.len() - MAX_LISTED);
            }
            Ok(Outcome::Failed(EXIT_MISSING))
        }
    }
}
