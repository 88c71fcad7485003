//! `chunkstore export LAYER -o FILE`

use crate::{Ctx, Outcome};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;

/// Write a layer's original uncompressed tar, byte for byte
#[derive(clap::Args)]
pub struct Args {
    /// Layer digest (diff_id or compressed digest) or a unique prefix of one
    layer: String,
    /// Output file; `-` writes to standard output
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Outcome> {
    let store = ctx.open()?;
    let id = store.resolve_layer(&args.layer)?;
    if args.output.as_os_str() == "-" {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        store.export(&id, &mut out)?;
        out.flush().context("writing standard output")?;
        return Ok(Outcome::Ok);
    }
    // Write beside the target and rename, so a failed export leaves no partial file.
    let out = &args.output;
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    let n = store.export(&id, std::io::BufWriter::new(&mut tmp.1))?;
    tmp.1.sync_all().ok();
    std::fs::rename(&tmp.0, out).with_context(|| format!("writing {}", out.display()))?;
    if ctx.json {
        crate::output::json(&serde_json::json!({ "layer": id.to_string(), "bytes": n, "output": out }))?;
    } else {
        eprintln!("{id}: {} written to {}", crate::output::bytes(n), out.display());
    }
    Ok(Outcome::Ok)
}

/// A uniquely named new file in `dir`, removed again if the export fails.
fn tempfile_in(dir: &std::path::Path) -> Result<TempOut> {
    for i in 0..1000u32 {
        let p = dir.join(format!(".chunkstore-export-{}-{i}", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => return Ok(TempOut(p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating a file in {}", dir.display())),
        }
    }
    anyhow::bail!("could not create a temporary file in {}", dir.display())
}

struct TempOut(PathBuf, std::fs::File);

impl Drop for TempOut {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
