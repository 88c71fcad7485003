//! `chunkstore stat`

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
    println!("store          {}", store.dir().display());
    println!("layers         {}", s.layers);
    println!("logical bytes  {} ({})", s.logical_bytes, output::bytes(s.logical_bytes));
    println!("stored bytes   {} ({}) in {} packs", s.stored_bytes, output::bytes(s.stored_bytes), s.packs);
    println!("recipe bytes   {} ({})", s.recipe_bytes, output::bytes(s.recipe_bytes));
    println!("dedup ratio    {:.2}x", s.dedup_ratio);
    println!("chunks         {} ({} raw)", s.chunks, output::bytes(s.chunk_bytes));
    println!("files          {}", s.files);
    println!("chunker        min {} avg {} max {}", s.chunker.min, s.chunker.avg, s.chunker.max);
    Ok(Outcome::Ok)
}
