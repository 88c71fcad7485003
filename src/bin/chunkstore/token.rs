//! `chunkstore token issue --client NAME --scope SCOPE --ttl DURATION`

use crate::output::outln;
use crate::{output, Ctx, Outcome};
use anyhow::Result;
use chunkstore::{ClientId, Scope};
use std::time::Duration;

/// Issue access tokens signed with this hub's key
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Issue a token (the hub registers the client on its first pull)
    Issue {
        /// Who the token is for
        #[arg(long)]
        client: ClientId,
        /// pull, push or admin
        #[arg(long, default_value = "pull")]
        scope: Scope,
        /// How long it is valid: e.g. 90s, 30m, 1h, 7d
        #[arg(long, default_value = "1h", value_parser = lifetime)]
        ttl: Duration,
    },
}

/// A duration given as e.g. 90s, 30m, 1h or 7d (a clap value parser: a bad
/// one is a usage error).
pub fn duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let bad = || format!("{s:?} is not a duration: use e.g. 90s, 30m, 1h, 7d");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(n.checked_mul(unit).ok_or_else(bad)?))
}

/// A token's lifetime: a [`duration`] over zero (a zero one would be expired).
fn lifetime(s: &str) -> Result<Duration, String> {
    duration(s).and_then(|d| if d.is_zero() { Err("a token must live longer than 0s".into()) } else { Ok(d) })
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let Verb::Issue { client, scope, ttl } = args.verb;
    // Works while `serve` holds the store open: only the key file is read.
    let token = chunkstore::issue_token_at(&ctx.store_dir, &client, scope, ttl)?;
    if ctx.json {
        output::json(
            &serde_json::json!({ "token": token, "client": client, "scope": scope, "ttl_seconds": ttl.as_secs() }),
        )?;
    } else {
        outln!("{token}")?;
    }
    Ok(Outcome::Ok)
}
