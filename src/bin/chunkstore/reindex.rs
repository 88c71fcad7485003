//! `chunkstore reindex`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::{Store, StoreOptions};

/// Rebuild the local index from the store's packs and layer objects (possession records are kept;
/// a damaged index is set aside first, and its possession records with it)
#[derive(clap::Args)]
pub struct Args {}

/// The summary, and where a damaged index went.
#[derive(serde::Serialize)]
struct Report {
    #[serde(flatten)]
    summary: chunkstore::ReindexSummary,
    damaged_index_moved_to: Option<std::path::PathBuf>,
}

pub fn run(ctx: &Ctx, _args: Args) -> Result<Outcome> {
    let aside = Store::set_aside_damaged_index(&ctx.store_dir)?;
    if let Some(p) = &aside {
        eprintln!(
            "chunkstore: the index was damaged: moved to {}; its possession records (clients) go with it",
            p.display()
        );
    }
    let store = ctx.open_with(StoreOptions { auto_reindex: false, ..Default::default() })?;
    let s = store.reindex()?;
    if ctx.json {
        output::json(&Report { summary: s, damaged_index_moved_to: aside })?;
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
    if !s.unneeded_packs.is_empty() {
        let ids: Vec<String> = s.unneeded_packs.iter().map(|p| p.to_string()).collect();
        outln!(
            "left out {} pack(s) no layer needs (a crashed or unfinished upload; `gc` deletes them once old): {}",
            ids.len(),
            ids.join(" ")
        )?;
    }
    for w in &s.skipped {
        outln!("skipped: {w}")?;
    }
    Ok(Outcome::Ok)
}
