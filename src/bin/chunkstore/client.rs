//! `chunkstore client [--hub URL] add|ls|show|rm|hold|drop`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::{ClientId, ClientInfo, LayerId, Remote, Store};
use std::path::PathBuf;

/// Manage clients (edge nodes) and what they hold, in a store or, with
/// --hub, on a running hub (whose store `serve` keeps locked)
#[derive(clap::Args)]
pub struct Args {
    /// Manage the clients of the hub at this URL through its API (an admin
    /// token) instead of those of the local store
    #[arg(long, value_name = "URL", value_parser = crate::hub::hub_url)]
    hub: Option<String>,
    /// Bearer token for --hub (admin scope)
    #[arg(long, env = "CHUNKSTORE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Also trust the CA certificates in this PEM file (for --hub)
    #[arg(long, env = "CHUNKSTORE_CA_CERT", value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Register a client holding nothing
    Add { name: ClientId },
    /// List clients
    Ls,
    /// Show a client's layers, files, chunks and bytes held
    Show { name: ClientId },
    /// Forget a client
    Rm { name: ClientId },
    /// Record that a client holds layers
    Hold {
        name: ClientId,
        #[arg(required = true)]
        layers: Vec<String>,
    },
    /// Record that a client has evicted layers
    Drop {
        name: ClientId,
        #[arg(required = true)]
        layers: Vec<String>,
    },
}

fn layers(store: &Store, names: &[String]) -> Result<Vec<LayerId>> {
    names.iter().map(|l| Ok(store.resolve_layer(l)?)).collect()
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    match args.hub {
        Some(url) => remote(ctx, &crate::hub::connect(&url, args.token, args.ca_cert.as_deref())?, args.verb)?,
        None => local(ctx, args.verb)?,
    }
    Ok(Outcome::Ok)
}

fn local(ctx: &Ctx, verb: Verb) -> Result<()> {
    let store = ctx.open()?;
    match verb {
        Verb::Add { name: c } => {
            store.add_client(&c)?;
            report(ctx, &store.client(&c)?, "added")
        }
        Verb::Rm { name: c } => {
            store.remove_client(&c)?;
            removed(ctx, &c)
        }
        Verb::Ls => list(ctx, &store.clients()?),
        Verb::Show { name } => report(ctx, &store.client(&name)?, ""),
        Verb::Hold { name: c, layers: l } => {
            store.hold(&c, &layers(&store, &l)?)?;
            report(ctx, &store.client(&c)?, "now holds")
        }
        Verb::Drop { name: c, layers: l } => {
            store.evict(&c, &layers(&store, &l)?)?;
            report(ctx, &store.client(&c)?, "now holds")
        }
    }
}

fn remote(ctx: &Ctx, hub: &Remote, verb: Verb) -> Result<()> {
    let resolve =
        |names: &[String]| -> Result<Vec<LayerId>> { names.iter().map(|l| Ok(hub.resolve_layer(l)?)).collect() };
    match verb {
        Verb::Add { name } => report(ctx, &hub.add_client(&name)?, "added"),
        Verb::Rm { name: c } => {
            hub.remove_client(&c)?;
            removed(ctx, &c)
        }
        Verb::Ls => list(ctx, &hub.clients()?),
        Verb::Show { name } => report(ctx, &hub.client(&name)?, ""),
        Verb::Hold { name, layers: l } => {
            // The hub registers an unknown client on its acknowledgement (a
            // pull's first); here, as locally, a name must be added first.
            hub.client(&name)?;
            report(ctx, &hub.hold(&name, &resolve(&l)?)?, "now holds")
        }
        Verb::Drop { name, layers: l } => report(ctx, &hub.evict(&name, &resolve(&l)?)?, "now holds"),
    }
}

fn removed(ctx: &Ctx, c: &ClientId) -> Result<()> {
    if ctx.json {
        output::json(&serde_json::json!({ "removed": c }))?;
    } else {
        outln!("removed client {c}")?;
    }
    Ok(())
}

fn list(ctx: &Ctx, all: &[ClientInfo]) -> Result<()> {
    if ctx.json {
        return output::json(&all);
    }
    outln!("{:<24} {:>6} {:>8} {:>8} {:>10}", "CLIENT", "LAYERS", "FILES", "CHUNKS", "BYTES")?;
    for c in all {
        outln!(
            "{:<24} {:>6} {:>8} {:>8} {:>10}",
            c.name.as_str(),
            c.layers.len(),
            c.files,
            c.chunks,
            output::bytes(c.layer_bytes)
        )?;
    }
    Ok(())
}

fn report(ctx: &Ctx, info: &ClientInfo, what: &str) -> Result<()> {
    if ctx.json {
        return output::json(info);
    }
    outln!(
        "client {} {what}{}{} layers, {} files, {} chunks, {} of layers",
        info.name,
        if what.is_empty() { "" } else { ": " },
        info.layers.len(),
        info.files,
        info.chunks,
        output::bytes(info.layer_bytes)
    )?;
    for l in &info.layers {
        outln!("  {l}")?;
    }
    Ok(())
}
