//! The `chunkstore` command: a thin layer over the library, one file per verb.

mod apply;
mod client;
mod diff;
mod export;
mod gc;
mod hub;
mod ingest;
mod ls;
mod output;
mod pack;
mod progress;
mod pull;
mod push;
mod reindex;
mod serve;
mod stat;
mod token;
mod verify;

use anyhow::{Context, Result};
use chunkstore::{S3Backend, S3Options, Store, StoreOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Content-addressed chunk store and dedup engine for container image layers.
#[derive(Parser)]
#[command(name = "chunkstore", version, about)]
struct Cli {
    /// Store: a directory, file://DIR, or s3://BUCKET/PREFIX?endpoint=URL (credentials from the
    /// AWS_* environment variables) [default: $CHUNKSTORE_DIR, else the per-user data directory]
    #[arg(long, global = true, env = "CHUNKSTORE_DIR", value_name = "DIR|URL")]
    store: Option<String>,
    /// Local directory of an s3:// store's index and staging area
    /// [default: the per-user cache directory, chunkstore/s3/<bucket, prefix and endpoint>]
    #[arg(long, global = true, env = "CHUNKSTORE_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Never write to the store's packs or layer objects (a second hub serving a shared bucket)
    #[arg(long, global = true)]
    read_only: bool,
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
    Reindex(reindex::Args),
    Gc(gc::Args),
}

/// Shared by every verb.
pub struct Ctx {
    /// The local directory: the store itself, or an s3:// store's index and staging.
    pub store_dir: PathBuf,
    /// The s3:// URL, for an object-store store.
    pub s3_url: Option<String>,
    pub read_only: bool,
    pub json: bool,
    /// Set by a verb writing its data to stdout (`-o -`): reports go to stderr.
    pub data_on_stdout: std::cell::Cell<bool>,
}

impl Ctx {
    pub fn open(&self) -> Result<Store> {
        self.open_with(StoreOptions::default())
    }

    pub fn open_with(&self, mut opts: StoreOptions) -> Result<Store> {
        opts.read_only |= self.read_only;
        let what = match &self.s3_url {
            Some(url) => {
                let b = S3Backend::open(url, S3Options { read_only: opts.read_only, ..Default::default() })?;
                opts.backend = Some(Arc::new(b));
                format!("{url} (index in {})", self.store_dir.display())
            }
            None => self.store_dir.display().to_string(),
        };
        Store::open_with(&self.store_dir, opts).with_context(|| format!("opening store {what}"))
    }
}

/// Where `--store` points: `(local directory, s3 URL)`.
fn locate(store: Option<String>, cache_dir: Option<PathBuf>) -> Result<(PathBuf, Option<String>), String> {
    let Some(s) = store else {
        return dirs::data_dir()
            .map(|d| (d.join("chunkstore"), None))
            .ok_or_else(|| "no store directory: pass --store DIR or set CHUNKSTORE_DIR".to_string());
    };
    if s.is_empty() {
        // Not the current directory: an unset variable expanded to nothing is a mistake.
        return Err("--store (or CHUNKSTORE_DIR) is empty: give a directory or URL".to_string());
    }
    if let Some(p) = s.strip_prefix("file://") {
        return Ok((PathBuf::from(p), None));
    }
    if !s.starts_with("s3://") {
        if s.contains("://") {
            return Err(format!("--store {s:?}: only directories, file:// and s3:// URLs are supported"));
        }
        return Ok((PathBuf::from(s), None));
    }
    let dir = match cache_dir {
        Some(d) => d,
        None => {
            // One directory per bucket, prefix and endpoint.
            let (path, query) = s["s3://".len()..].split_once('?').unwrap_or((&s["s3://".len()..], ""));
            let endpoint = query.split('&').find_map(|kv| kv.strip_prefix("endpoint=")).unwrap_or("");
            let name: String = format!("{}@{endpoint}", path.trim_end_matches('/'))
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "._-@".contains(c) { c } else { '_' })
                .collect();
            dirs::cache_dir()
                .map(|d| d.join("chunkstore").join("s3").join(name))
                .ok_or_else(|| "no cache directory for the s3 store's index: pass --cache-dir DIR".to_string())?
        }
    };
    Ok((dir, Some(s)))
}

/// How a verb ended when it did not simply succeed.
pub enum Outcome {
    Ok,
    /// A failure already reported to the user; exit with this code.
    Failed(u8),
}

/// Exit as clap does for arguments that conflict (status 2), with `verb`'s usage.
pub(crate) fn usage_conflict(verb: &str, msg: &str) -> ! {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    cli.build();
    let sub = cli.find_subcommand_mut(verb).expect("a verb of this command");
    sub.error(clap::error::ErrorKind::ArgumentConflict, msg).exit()
}

/// The first panic raised inside redb, with its place.
static REDB_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a failed assertion".into())
}

fn main() -> ExitCode {
    // redb asserts instead of returning errors on some damage to the index
    // file. The library turns that into an error where it opens the index;
    // elsewhere the panic reaches `main`, which reports a damaged index, or
    // a worker thread, whose failure the command reports. Such a panic is
    // said in one line here and remembered (a panic report as usual with
    // RUST_BACKTRACE set); other panics as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let at = info.location().filter(|l| l.file().contains("/redb-"));
        if let Some(at) = at {
            let why = panic_text(info.payload());
            // The path from the crate's directory on: the rest is the builder's.
            let file = at.file().find("redb-").map_or(at.file(), |i| &at.file()[i..]);
            let place = format!("{why} (at {file}:{}:{})", at.line(), at.column());
            let quiet = std::env::var_os("RUST_BACKTRACE").is_none();
            let mut seen = REDB_PANIC.lock().unwrap_or_else(|p| p.into_inner());
            // Parallel workers may each meet the same damage: one line.
            if quiet && seen.is_none() {
                eprintln!("chunkstore: redb: {place}");
            }
            seen.get_or_insert(place);
            if quiet {
                return;
            }
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    }
    let (store_dir, s3_url) = match locate(cli.store, cli.cache_dir) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("chunkstore: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = Ctx { store_dir, s3_url, read_only: cli.read_only, json: cli.json, data_on_stdout: Default::default() };
    let verb = std::panic::AssertUnwindSafe(|| match cli.verb {
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
        Verb::Reindex(a) => reindex::run(&ctx, a),
        Verb::Gc(a) => gc::run(&ctx, a),
    });
    let result = match std::panic::catch_unwind(verb) {
        Ok(r) => r,
        Err(payload) => {
            // Any redb panic this run: under rayon another worker's may be
            // the one that arrives here.
            let seen = REDB_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take();
            match seen {
                Some(what) => Err(anyhow::Error::new(chunkstore::Error::new(
                    chunkstore::ErrorKind::Corrupt,
                    format!(
                        "index {} is damaged (redb: {what}): `chunkstore reindex` sets it aside and rebuilds it \
                         from the packs and layer objects",
                        ctx.store_dir.join("chunkstore.redb").display()
                    ),
                ))),
                _ => std::panic::resume_unwind(payload),
            }
        }
    };
    // A redb panic a worker thread met, which the command reported as that
    // thread's failure: say what it means.
    let unexplained = match &result {
        Ok(Outcome::Ok) => false,
        Ok(Outcome::Failed(_)) => true,
        Err(e) => !format!("{e:#}").contains("is damaged"),
    };
    if unexplained && REDB_PANIC.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
        eprintln!(
            "chunkstore: index {} looks damaged (redb failed a check): `chunkstore reindex` sets it aside and \
             rebuilds it from the packs and layer objects",
            ctx.store_dir.join("chunkstore.redb").display()
        );
    }
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed(code)) => ExitCode::from(code),
        // The shell's code for a command killed by SIGPIPE.
        Err(e) if output::is_broken_pipe(&ctx, &e) => ExitCode::from(141),
        Err(e) => {
            output::report_error(&ctx, &e);
            ExitCode::from(1)
        }
    }
}
