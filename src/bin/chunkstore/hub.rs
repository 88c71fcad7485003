//! The hub connection options `pull` and `push` share.

use anyhow::{Context, Result};
use chunkstore::Remote;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct HubArgs {
    /// The hub's base URL, e.g. http://hub:7300 or https://hub:7443
    #[arg(long, env = "CHUNKSTORE_HUB", value_parser = hub_url)]
    pub hub: String,
    /// Bearer token (pull scope for --client to pull, push scope to push)
    #[arg(long, env = "CHUNKSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Also trust the CA certificates in this PEM file (an https hub whose
    /// certificate a private CA signed)
    #[arg(long, env = "CHUNKSTORE_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
}

impl HubArgs {
    pub fn connect(self) -> Result<Remote> {
        connect(&self.hub, self.token, self.ca_cert.as_deref())
    }
}

/// A hub URL as an argument (a usage error otherwise).
pub fn hub_url(s: &str) -> Result<String, String> {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a hub URL: use http://HOST:PORT or https://HOST:PORT"))
    }
}

/// A client of the hub at `url`, trusting the CA certificates in `ca_cert` too.
pub fn connect(url: &str, token: Option<String>, ca_cert: Option<&Path>) -> Result<Remote> {
    let pem = match ca_cert {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    Remote::with_roots(url, token, pem.as_deref()).with_context(|| match ca_cert {
        Some(p) => format!("connecting to {url} (CA certificates from {})", p.display()),
        None => format!("connecting to {url}"),
    })
}
