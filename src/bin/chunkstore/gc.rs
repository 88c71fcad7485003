//! `chunkstore gc [--grace 7d] [--dry-run]`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::GcOptions;

/// Delete packs nothing can use: not named by this store's index, holding
/// no chunk any layer object needs, and written longer ago than --grace
/// (for a bucket several writers share, longer than any of them may leave
/// a pull interrupted)
#[derive(clap::Args)]
pub struct Args {
    /// Keep packs written less than this long ago: e.g. 90s, 30m, 1h, 7d
    #[arg(long, default_value = "7d", value_parser = crate::token::duration)]
    grace: std::time::Duration,
    /// Report what would be deleted, delete nothing
    #[arg(long)]
    dry_run: bool,
    /// Allow a grace under an hour on an s3:// store: only when no other writer uses the bucket
    #[arg(long)]
    force: bool,
}

/// The shortest grace allowed for a bucket without `--force`: another
/// writer's ingest or pull in flight uploads packs no layer object needs yet.
const SHARED_MIN_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let grace = args.grace;
    if ctx.s3_url.is_some() && grace < SHARED_MIN_GRACE && !args.dry_run && !args.force {
        let msg = "a grace under 1h on an s3:// store can delete the packs of another writer's ingest or pull \
                   in flight (they look like a crashed writer's); add --force if no other writer uses the bucket";
        crate::usage_conflict("gc", msg);
    }
    let store = ctx.open()?;
    let s = store.gc(&GcOptions { grace, dry_run: args.dry_run })?;
    if ctx.json {
        output::json(&s)?;
    } else {
        outln!(
            "{} {} unused pack(s), {}; {} pack(s) in all, {} not in the index ({} younger than --grace, {} holding needed chunks)",
            if s.dry_run { "would delete" } else { "deleted" },
            s.deleted.len(),
            output::bytes(s.deleted_bytes),
            s.packs,
            s.unnamed,
            s.kept_young.len(),
            s.kept_needed.len()
        )?;
        for why in &s.kept_unreadable {
            outln!("kept, not a readable pack: {why}")?;
        }
    }
    Ok(Outcome::Ok)
}
