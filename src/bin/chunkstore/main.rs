//! The `chunkstore` command: a thin layer over the library, one file per verb.

mod apply;
mod client;
mod diff;
mod export;
mod ingest;
mod ls;
mod output;
mod pack;
mod pull;
mod push;
mod serve;
mod stat;
mod token;
mod verify;

use anyhow::{Context, Result};
use chunkstore::{Store, StoreOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Content-addressed chunk store and dedup engine for container image layers.
#[derive(Parser)]
#[command(name = "chunkstore", version, about)]
struct Cli {
    /// Store directory [default: $CHUNKSTORE_DIR, else the per-user data directory]
    #[arg(long, global = true, env = "CHUNKSTORE_DIR", value_name = "DIR")]
    store: Option<PathBuf>,
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    Ingest(ingest::Args),
    Export(export::Args),
    Ls(ls::Args),
    Stat(stat::Args),
    Verify(verify::Args),
    Client(client::Args),
    Diff(diff::Args),
    Pack(pack::Args),
    Apply(apply::Args),
    Serve(serve::Args),
    Token(token::Args),
    Pull(pull::Args),
    Push(push::Args),
}

/// Shared by every verb.
pub struct Ctx {
    pub store_dir: PathBuf,
    pub json: bool,
}

impl Ctx {
    pub fn open(&self) -> Result<Store> {
        self.open_with(StoreOptions::default())
    }

    pub fn open_with(&self, opts: StoreOptions) -> Result<Store> {
        Store::open_with(&self.store_dir, opts).with_context(|| format!("opening store {}", self.store_dir.display()))
    }
}

/// How a verb ended when it did not simply succeed.
pub enum Outcome {
    Ok,
    /// A failure already reported to the user; exit with this code.
    Failed(u8),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let store_dir = match cli.store.or_else(|| dirs::data_dir().map(|d| d.join("chunkstore"))) {
        Some(d) => d,
        None => {
            eprintln!("chunkstore: no store directory: pass --store DIR or set CHUNKSTORE_DIR");
            return ExitCode::from(2);
        }
    };
    let ctx = Ctx { store_dir, json: cli.json };
    let result = match cli.verb {
        Verb::Ingest(a) => ingest::run(&ctx, a),
        Verb::Export(a) => export::run(&ctx, a),
        Verb::Ls(a) => ls::run(&ctx, a),
        Verb::Stat(a) => stat::run(&ctx, a),
        Verb::Verify(a) => verify::run(&ctx, a),
        Verb::Client(a) => client::run(&ctx, a),
        Verb::Diff(a) => diff::run(&ctx, a),
        Verb::Pack(a) => pack::run(&ctx, a),
        Verb::Apply(a) => apply::run(&ctx, a),
        Verb::Serve(a) => serve::run(&ctx, a),
        Verb::Token(a) => token::run(&ctx, a),
        Verb::Pull(a) => pull::run(&ctx, a),
        Verb::Push(a) => push::run(&ctx, a),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed(code)) => ExitCode::from(code),
        Err(e) => {
            output::report_error(&ctx, &e);
            ExitCode::from(1)
        }
    }
}
