//! `chunkstore client add|ls|show|rm|hold|drop`

use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::{ClientId, LayerId, Store};

/// Manage clients (edge nodes) and what they hold
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Register a client holding nothing
    Add { name: String },
    /// List clients
    Ls,
    /// Show a client's layers, files, chunks and bytes held
    Show { name: String },
    /// Forget a client
    Rm { name: String },
    /// Record that a client holds layers
    Hold {
        name: String,
        #[arg(required = true)]
        layers: Vec<String>,
    },
    /// Record that a client has evicted layers
    Drop {
        name: String,
        #[arg(required = true)]
        layers: Vec<String>,
    },
}

fn layers(store: &Store, names: &[String]) -> Result<Vec<LayerId>> {
    names.iter().map(|l| Ok(store.resolve_layer(l)?)).collect()
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let store = ctx.open()?;
    match args.verb {
        Verb::Add { name } => {
            let c = ClientId::new(&name)?;
            store.add_client(&c)?;
            report(ctx, &store, &c, "added")?;
        }
        Verb::Rm { name } => {
            let c = ClientId::new(&name)?;
            store.remove_client(&c)?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": c }))?;
            } else {
                println!("removed client {c}");
            }
        }
        Verb::Ls => {
            let all = store.clients()?;
            if ctx.json {
                output::json(&all)?;
            } else {
                println!("{:<24} {:>6} {:>8} {:>8} {:>10}", "CLIENT", "LAYERS", "FILES", "CHUNKS", "BYTES");
                for c in &all {
                    println!(
                        "{:<24} {:>6} {:>8} {:>8} {:>10}",
                        c.name.as_str(),
                        c.layers.len(),
                        c.files,
                        c.chunks,
                        output::bytes(c.layer_bytes)
                    );
                }
            }
        }
        Verb::Show { name } => report(ctx, &store, &ClientId::new(&name)?, "")?,
        Verb::Hold { name, layers: l } => {
            let c = ClientId::new(&name)?;
            store.hold(&c, &layers(&store, &l)?)?;
            report(ctx, &store, &c, "now holds")?;
        }
        Verb::Drop { name, layers: l } => {
            let c = ClientId::new(&name)?;
            store.evict(&c, &layers(&store, &l)?)?;
            report(ctx, &store, &c, "now holds")?;
        }
    }
    Ok(Outcome::Ok)
}

fn report(ctx: &Ctx, store: &Store, c: &ClientId, what: &str) -> Result<()> {
    let info = store.client(c)?;
    if ctx.json {
        return output::json(&info);
    }
    println!(
        "client {c} {what}{}{} layers, {} files, {} chunks, {} of layers",
        if what.is_empty() { "" } else { ": " },
        info.layers.len(),
        info.files,
        info.chunks,
        output::bytes(info.layer_bytes)
    );
    for l in &info.layers {
        println!("  {l}");
    }
    Ok(())
}
