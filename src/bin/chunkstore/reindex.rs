//! `chunkstore reindex`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::StoreOptions;

/// Rebuild the local index from the store's packs and layer objects (possession records are kept)
#[derive(clap::Args)]
pub struct Args {}

pub fn run(ctx: &Ctx, _args: Args) -> Result<Outcome> {
    let store = ctx.open_with(StoreOptions { auto_reindex: false, ..Default::default() })?;
    let s = store.reindex()?;
    if ctx.json {
        output::json(&s)?;
        return Ok(Outcome::Ok);
    }
    outln!(
        "reindexed {} layers, {} files, {} chunks in {} packs ({:.1} s)",
        s.layers,
        s.files,
        s.chunks,
        s.packs,
        s.seconds
    )?;
    if s.renumbered_files {
        outln!("file numbers were handed out anew: layer objects from more than one writer disagreed")?;
    }
    for w in &s.skipped {
        outln!("skipped: {w}")?;
    }
    Ok(Outcome::Ok)
}
