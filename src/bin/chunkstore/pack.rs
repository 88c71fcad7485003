//! `chunkstore pack --client NAME LAYER -o FILE`

use crate::{output, Ctx, Outcome};
use anyhow::{Context, Result};
use chunkstore::{ClientId, DiffOptions};
use std::io::Write;
use std::path::PathBuf;

/// Write a dedup tarball of a layer for one client
#[derive(clap::Args)]
pub struct Args {
    /// The client it is for
    #[arg(long)]
    client: ClientId,
    /// Layer digest or unique prefix
    layer: String,
    /// Output file; `-` writes to standard output
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Count the layer as held by the client from now on (offline use: no acknowledgement will come)
    #[arg(long)]
    assume_applied: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    ctx.data_on_stdout.set(args.output.as_os_str() == "-");
    let store = ctx.open()?;
    let layer = store.resolve_layer(&args.layer)?;
    let client = args.client;
    let diff = store.diff_with(&client, &layer, DiffOptions { deltas: true })?;
    let mut summary = if args.output.as_os_str() == "-" {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let s = store.write_dedup_tar(&diff, &mut out)?;
        out.flush().context("writing standard output")?;
        s
    } else {
        output::write_output(&args.output, |w| Ok(store.write_dedup_tar(&diff, w)?))?
    };
    if args.assume_applied {
        store.hold(&client, &[layer])?;
        summary.assumed_applied = true;
    }
    if ctx.json {
        output::report(ctx, &summary)?;
    } else {
        eprintln!(
            "{layer} for {client}: {} dedup tarball ({} uncompressed; layer {}){}",
            output::bytes(summary.compressed_bytes),
            output::bytes(summary.tar_bytes),
            output::bytes(diff.summary.layer_bytes),
            if summary.assumed_applied { "; client now counted as holding it" } else { "" }
        );
    }
    Ok(Outcome::Ok)
}
