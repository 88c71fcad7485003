//! `chunkstore push --hub URL LAYER`

use crate::hub::HubArgs;
use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::TransferOptions;

/// Upload a layer this store holds to a hub (only the chunks it lacks)
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    hub: HubArgs,
    /// Requests in flight at once
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Chunks per request
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Layer digest or unique prefix (of this store's layers)
    layer: String,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let store = ctx.open()?;
    let layer = store.resolve_layer(&args.layer)?;
    let hub = args.hub.connect()?;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let opts = TransferOptions {
        concurrency: args.concurrency,
        batch: args.batch,
        progress: Some(counter.clone()),
        ..Default::default()
    };
    let short = &layer.to_hex()[..12];
    let progress = crate::progress::Progress::start(&format!("pushing {short}, sent"), None, counter);
    let s = store.push(&hub, &layer, &opts);
    progress.finish();
    let s = s?;
    if ctx.json {
        output::json(&s)?;
    } else {
        outln!(
            "{layer}: pushed in {:.2} s: {} of {} chunks uploaded ({})",
            s.seconds,
            s.uploaded_chunks,
            s.chunks,
            output::bytes(s.uploaded_bytes)
        )?;
    }
    Ok(Outcome::Ok)
}
