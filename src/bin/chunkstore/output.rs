//! Human and JSON output helpers.

use crate::Ctx;
use serde::Serialize;

/// Print `value` as JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The error's kind, for scripts.
fn kind(e: &anyhow::Error) -> String {
    e.chain()
        .find_map(|c| c.downcast_ref::<chunkstore::Error>())
        .map_or_else(|| "other".to_string(), |e| format!("{:?}", e.kind()))
}

/// Report a failure: text on stderr always, a JSON object on stdout with `--json`.
pub fn report_error(ctx: &Ctx, e: &anyhow::Error) {
    eprintln!("chunkstore: {e:#}");
    if ctx.json {
        let _ = json(&serde_json::json!({ "error": { "kind": kind(e), "message": format!("{e:#}") } }));
    }
}

/// `1234567` → `1.2 MB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
