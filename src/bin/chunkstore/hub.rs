//! The hub connection options `pull` and `push` share.

use anyhow::{Context, Result};
use chunkstore::Remote;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct HubArgs {
    /// The hub's base URL, e.g. http://hub:7300 or https://hub:7443
    #[arg(long, env = "CHUNKSTORE_HUB")]
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
        let pem = match &self.ca_cert {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        };
        let what = self.ca_cert.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        Remote::with_roots(&self.hub, self.token, pem.as_deref()).with_context(|| {
            if what.is_empty() {
                format!("connecting to {}", self.hub)
            } else {
                format!("connecting to {} (CA certificates from {what})", self.hub)
            }
        })
    }
}
