//! `chunkstore export LAYER -o FILE`

use crate::{Ctx, Outcome};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;

/// Write a layer's original uncompressed tar, byte for byte
#[derive(clap::Args)]
pub struct Args {
    /// Layer digest (diff_id or compressed digest) or a unique prefix of one
    layer: String,
    /// Output file; `-` writes to standard output
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    ctx.data_on_stdout.set(args.output.as_os_str() == "-");
    let store = ctx.open()?;
    let id = store.resolve_layer(&args.layer)?;
    if args.output.as_os_str() == "-" {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        store.export(&id, &mut out)?;
        out.flush().context("writing standard output")?;
        return Ok(Outcome::Ok);
    }
    let out = &args.output;
    let n = crate::output::write_output(out, |w| Ok(store.export(&id, w)?))?;
    if ctx.json {
        crate::output::json(&serde_json::json!({ "layer": id.to_string(), "bytes": n, "output": out }))?;
    } else {
        eprintln!("{id}: {} written to {}", crate::output::bytes(n), out.display());
    }
    Ok(Outcome::Ok)
}
