//! `chunkstore verify`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::VerifyOptions;

/// Re-hash every chunk and check every recipe; exits 1 naming what is damaged
#[derive(clap::Args)]
pub struct Args {
    /// Also rebuild every layer and check it against its diff_id
    #[arg(long)]
    full: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let r = ctx.open()?.verify(VerifyOptions { full: args.full })?;
    if ctx.json {
        output::json(&r)?;
    } else {
        for d in &r.damaged {
            outln!("DAMAGED {} {}: {}", d.kind, d.id, d.problem)?;
        }
        let rebuilt = if args.full { format!(", {} layers rebuilt", r.layers_rebuilt) } else { String::new() };
        outln!(
            "{}: {} chunks, {} files, {} layers checked{rebuilt}; {} problems",
            if r.is_clean() { "ok" } else { "DAMAGED" },
            r.chunks,
            r.files,
            r.layers,
            r.damaged.len()
        )?;
    }
    Ok(if r.is_clean() { Outcome::Ok } else { Outcome::Failed(1) })
}
