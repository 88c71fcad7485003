//! `chunkstore pull --hub URL --client NAME LAYER`

use crate::hub::HubArgs;
use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::{ClientId, ErrorKind, TransferOptions, Via};

/// Pull a layer from a hub into this (edge) store
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    hub: HubArgs,
    /// This edge's client name on the hub
    #[arg(long)]
    client: ClientId,
    /// dedup: the hub's dedup tarball for this client; chunks: only the chunks this store lacks
    #[arg(long, default_value = "dedup", value_parser = ["dedup", "chunks"])]
    via: String,
    /// Requests in flight at once
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Chunks per request
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Store fetched chunks durably every this many bytes (tests of resumed pulls)
    #[arg(long, hide = true)]
    store_group_bytes: Option<usize>,
    /// Check the layer while its chunks arrive only up to this many raw bytes (tests)
    #[arg(long, hide = true)]
    overlap_max_bytes: Option<u64>,
    /// Layer digest or unique prefix (of the hub's layers)
    layer: String,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let store = ctx.open()?;
    let hub = args.hub.connect()?;
    let client = args.client;
    let mut layer = hub.resolve_layer(&args.layer)?;
    let via = if args.via == "chunks" { Via::Chunks } else { Via::Dedup };
    let mut opts = TransferOptions { concurrency: args.concurrency, batch: args.batch, via, ..Default::default() };
    if let Some(n) = args.store_group_bytes {
        opts.store_group_bytes = n;
    }
    if let Some(n) = args.overlap_max_bytes {
        opts.overlap_max_bytes = n;
    }
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    opts.progress = Some(counter.clone());
    let short = &layer.to_hex()[..12];
    let progress = crate::progress::Progress::start(&format!("pulling {short}, received"), None, counter);
    let mut s = store.pull(&hub, &client, &layer, &opts);
    if s.as_ref().is_err_and(|e| e.kind() == ErrorKind::NotFound) {
        // No layer by that diff_id: perhaps it names a compressed blob (what
        // an image manifest lists). Asked only now: listing costs.
        if let Some(id) = hub.layer_of_blob(&args.layer).ok().flatten() {
            layer = id;
            s = store.pull(&hub, &client, &layer, &opts);
        }
    }
    progress.finish();
    let s = s?;
    if let Some(e) = &s.ack_error {
        eprintln!("chunkstore: warning: {layer} is stored here, but the hub was not told: {e}");
    }
    if ctx.json {
        output::json(&s)?;
    } else if s.already_present {
        outln!("{layer}: already here{}", if s.acknowledged { "; acknowledged to the hub" } else { "" })?;
    } else {
        let size = s.ingest.as_ref().map_or(0, |i| i.layer.tar_size);
        outln!(
            "{layer}: pulled via {}{} in {:.2} s: {} received{} for a {} layer ({} chunks fetched)",
            s.via,
            if s.fell_back { " (fell back)" } else { "" },
            s.seconds,
            output::bytes(s.wire_bytes),
            if s.resumed_bytes > 0 {
                format!(" (resumed after {} kept from an interrupted pull)", output::bytes(s.resumed_bytes))
            } else {
                String::new()
            },
            output::bytes(size),
            s.fetched_chunks
        )?;
    }
    Ok(Outcome::Ok)
}
