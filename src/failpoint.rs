//! Crash hooks for tests: `CHUNKSTORE_FAILPOINT=<name>` makes the process
//! abort (no destructors, no flushes, like a SIGKILL) when it reaches `<name>`.
//! Checked only at a few points per ingest, never per chunk.

use std::sync::OnceLock;

pub(crate) fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    if ARMED.get_or_init(|| std::env::var("CHUNKSTORE_FAILPOINT").ok()).as_deref() == Some(name) {
        eprintln!("chunkstore: failpoint {name}: aborting");
        std::process::abort();
    }
}
