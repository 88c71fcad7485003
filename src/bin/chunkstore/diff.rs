//! `chunkstore diff --client NAME LAYER`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::{ClientId, DiffOptions, FileState};

/// Show what a client holds of a layer and what a dedup tarball would carry
#[derive(clap::Args)]
pub struct Args {
    /// The client
    #[arg(long)]
    client: ClientId,
    /// Layer digest or unique prefix
    layer: String,
    /// List every file with its encoding
    #[arg(long)]
    files: bool,
    /// Skip delta encoding (possession only: fast, but not what `pack` sends)
    #[arg(long)]
    no_deltas: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let store = ctx.open()?;
    let layer = store.resolve_layer(&args.layer)?;
    let d = store.diff_with(&args.client, &layer, DiffOptions { deltas: !args.no_deltas })?;
    if ctx.json {
        if args.files {
            output::json(&d)?;
        } else {
            output::json(&serde_json::json!({ "layer": d.layer, "client": d.client, "summary": d.summary }))?;
        }
        return Ok(Outcome::Ok);
    }
    let s = &d.summary;
    outln!("layer {} against client {}", d.layer, d.client)?;
    outln!("{:<10} {:>8} {:>12} {:>12}", "ENCODING", "FILES", "HELD", "CARRIED")?;
    outln!("{:<10} {:>8} {:>12} {:>12}", "held", s.held_files, output::bytes(s.held_bytes), "0 B")?;
    outln!(
        "{:<10} {:>8} {:>12} {:>12}",
        "partial",
        s.partial_files,
        output::bytes(s.partial_held_bytes),
        output::bytes(s.partial_carried_bytes)
    )?;
    outln!(
        "{:<10} {:>8} {:>12} {:>12}  (files of {})",
        "delta",
        s.delta_files,
        "0 B",
        output::bytes(s.delta_bytes),
        output::bytes(s.delta_file_bytes)
    )?;
    outln!("{:<10} {:>8} {:>12} {:>12}", "missing", s.missing_files, "0 B", output::bytes(s.missing_bytes))?;
    outln!(
        "{:<10} {:>8} {:>12} {:>12}",
        "total",
        s.files,
        output::bytes(s.held_bytes + s.partial_held_bytes),
        output::bytes(s.carried_bytes)
    )?;
    outln!(
        "dedup tarball: {} uncompressed ({} bytes) for a {} layer",
        output::bytes(s.dedup_tar_bytes),
        s.dedup_tar_bytes,
        output::bytes(s.layer_bytes)
    )?;
    if args.files {
        for f in &d.files {
            let state = match f.state {
                FileState::Held => "held",
                FileState::Partial => "partial",
                FileState::Missing => "missing",
                FileState::Delta => "delta",
            };
            outln!(
                "{state:<8} {:>10} {:>10}  {}",
                f.size,
                f.carried_bytes,
                if f.path.is_empty() { "(data)" } else { &f.path }
            )?;
        }
    }
    Ok(Outcome::Ok)
}
