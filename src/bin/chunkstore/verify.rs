//! `chunkstore verify`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::VerifyOptions;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Re-hash every chunk and check every recipe; exits 1 naming what is damaged
#[derive(clap::Args)]
pub struct Args {
    /// Also rebuild every layer and check it against its diff_id
    #[arg(long)]
    full: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let store = ctx.open()?;
    let stats = store.stats()?;
    let total = stats.stored_bytes + if args.full { stats.logical_bytes } else { 0 };
    let counter = Arc::new(AtomicU64::new(0));
    let progress = crate::progress::Progress::start("verify", Some(total), counter.clone());
    let r = store.verify(VerifyOptions { full: args.full, progress: Some(counter) });
    progress.finish();
    let r = r?;
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
