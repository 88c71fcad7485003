//! `chunkstore serve --listen ADDR`

use crate::{Ctx, Outcome};
use anyhow::{Context, Result};
use chunkstore::server::{self, ServeOptions, TlsFiles};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key)
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    // Colour only on a terminal: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
    let store = Arc::new(ctx.open()?);
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let opts = ServeOptions { public_read: args.public_read, timeout: Duration::from_secs(args.timeout), tls };
    let json = ctx.json;
    server::serve(store, args.listen, opts, |addr| {
        let mut out = std::io::stdout().lock();
        if json {
            let url = format!("{scheme}://{addr}");
            let _ = writeln!(out, "{}", serde_json::json!({ "listening": addr.to_string(), "url": url }));
        } else {
            let _ = writeln!(out, "listening on {scheme}://{addr}");
        }
        let _ = out.flush();
    })
    .context("serving")?;
    Ok(Outcome::Ok)
}
