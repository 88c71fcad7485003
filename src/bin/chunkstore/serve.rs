//! `chunkstore serve --listen ADDR`

use crate::{Ctx, Outcome};
use anyhow::{Context, Result};
use chunkstore::server::{self, ServeOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Run the hub's HTTP API (stops gracefully on SIGTERM or Ctrl-C)
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port, printed on stdout)
    #[arg(long, default_value = "127.0.0.1:7300")]
    listen: SocketAddr,
    /// Serve layers, recipes and chunks without a token
    #[arg(long)]
    public_read: bool,
    /// Seconds a request may take before its response starts
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let store = Arc::new(ctx.open()?);
    let opts = ServeOptions { public_read: args.public_read, timeout: Duration::from_secs(args.timeout) };
    let json = ctx.json;
    server::serve(store, args.listen, opts, |addr| {
        let mut out = std::io::stdout().lock();
        if json {
            let _ = writeln!(out, "{}", serde_json::json!({ "listening": addr.to_string() }));
        } else {
            let _ = writeln!(out, "listening on http://{addr}");
        }
        let _ = out.flush();
    })
    .context("serving")?;
    Ok(Outcome::Ok)
}
