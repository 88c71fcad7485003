//! `chunkstore ls`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;

/// List the layers in the store
#[derive(clap::Args)]
pub struct Args {}

pub fn run(ctx: &Ctx, _args: Args) -> Result<Outcome> {
    let layers = ctx.open()?.layers()?;
    if ctx.json {
        output::json(&layers)?;
        return Ok(Outcome::Ok);
    }
    outln!("{:<71}  {:>10}  {:>7}  {:>6}  COMPRESSION", "LAYER", "SIZE", "ENTRIES", "FILES")?;
    for l in &layers {
        outln!(
            "{:<71}  {:>10}  {:>7}  {:>6}  {}",
            l.id.to_string(),
            output::bytes(l.tar_size),
            l.entries,
            l.files,
            l.compression
        )?;
    }
    Ok(Outcome::Ok)
}
