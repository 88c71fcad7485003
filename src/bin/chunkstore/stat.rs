//! `chunkstore stat`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;

/// Show store totals: logical and stored bytes, dedup ratio, counts
#[derive(clap::Args)]
pub struct Args {}

pub fn run(ctx: &Ctx, _args: Args) -> Result<Outcome> {
    let store = ctx.open()?;
    let s = store.stats()?;
    if ctx.json {
        output::json(&serde_json::json!({ "store": store.dir(), "stats": s }))?;
        return Ok(Outcome::Ok);
    }
    outln!("store          {}", store.dir().display())?;
    outln!("layers         {}", s.layers)?;
    outln!("logical bytes  {} ({})", s.logical_bytes, output::bytes(s.logical_bytes))?;
    outln!("stored bytes   {} ({}) in {} packs", s.stored_bytes, output::bytes(s.stored_bytes), s.packs)?;
    outln!("recipe bytes   {} ({})", s.recipe_bytes, output::bytes(s.recipe_bytes))?;
    outln!("index bytes    {} ({})", s.index_bytes, output::bytes(s.index_bytes))?;
    outln!("dedup ratio    {:.2}x", s.dedup_ratio)?;
    outln!("chunks         {} ({} raw)", s.chunks, output::bytes(s.chunk_bytes))?;
    outln!("files          {}", s.files)?;
    outln!("chunker        min {} avg {} max {}", s.chunker.min, s.chunker.avg, s.chunker.max)?;
    Ok(Outcome::Ok)
}
