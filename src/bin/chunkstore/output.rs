//! Human and JSON output helpers.

use crate::Ctx;
use serde::Serialize;

/// Print `value` as JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    line(format_args!("{}", serde_json::to_string_pretty(value)?))
}

/// Standard output could not be written (closed pipe, full disk).
#[derive(Debug)]
pub struct StdoutError(pub std::io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

/// One line on stdout; an error, not `println!`'s panic, when stdout fails.
pub fn line(args: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.write_all(b"\n")).map_err(|e| StdoutError(e).into())
}

/// `println!` through [`line`]: returns `anyhow::Result<()>`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// True when `e` is stdout's reader having gone away (`cmd | head`): the
/// command stops quietly, as one killed by SIGPIPE would. A verb streaming
/// its data to stdout writes nowhere else, so any broken pipe is stdout's.
pub fn is_broken_pipe(ctx: &Ctx, e: &anyhow::Error) -> bool {
    let pipe = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<StdoutError>().is_some_and(|s| pipe(&s.0))
            || (ctx.data_on_stdout.get() && c.downcast_ref::<std::io::Error>().is_some_and(pipe))
    })
}

/// A verb's `--json` report: on stdout, or on stderr when stdout carries the
/// verb's data (`-o -`).
pub fn report<T: Serialize + ?Sized>(ctx: &Ctx, value: &T) -> anyhow::Result<()> {
    if ctx.data_on_stdout.get() {
        eprintln!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    } else {
        json(value)
    }
}

/// The error's kind, for scripts.
fn kind(e: &anyhow::Error) -> String {
    if let Some(e) = e.chain().find_map(|c| c.downcast_ref::<chunkstore::Error>()) {
        return format!("{:?}", e.kind());
    }
    // The library's names for the operating system's errors.
    match e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()).map(|e| e.kind()) {
        Some(std::io::ErrorKind::NotFound) => "NotFound",
        Some(_) => "Io",
        None => "Other",
    }
    .to_string()
}

/// The error and its causes on one line. The library's errors already show
/// their cause, so a cause whose text is already there is not repeated.
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !out.contains(&s) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&s);
        }
    }
    out
}

/// A failure as JSON: `{"kind": ..., "message": ...}`.
pub fn error_json(e: &anyhow::Error) -> serde_json::Value {
    serde_json::json!({ "kind": kind(e), "message": message(e) })
}

/// Report a failure: text on stderr, and with `--json` a JSON object on stdout
/// (on stderr instead of the text when stdout carries data).
pub fn report_error(ctx: &Ctx, e: &anyhow::Error) {
    // With data on stdout the JSON object is stderr's only content.
    if !(ctx.json && ctx.data_on_stdout.get()) {
        eprintln!("chunkstore: {}", message(e));
    }
    if ctx.json {
        let _ = report(ctx, &serde_json::json!({ "error": error_json(e) }));
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

/// Write `path` through `produce`. A regular file (or a new one) is written
/// beside its final name and renamed into place only when `produce`
/// succeeds, so a failure leaves no partial file; anything else (a device
/// such as /dev/null, a FIFO) is written directly, never replaced.
pub fn write_output<T>(
    path: &std::path::Path,
    produce: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use anyhow::Context;
    use std::io::Write;
    let regular = match std::fs::metadata(path) {
        Ok(m) => m.is_file(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    if !regular {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut out = std::io::BufWriter::new(f);
        let r = produce(&mut out)?;
        out.flush().with_context(|| format!("writing {}", path.display()))?;
        return Ok(r);
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.chunkstore-{}.partial", std::process::id()));
    let result = (|| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(f);
        let r = produce(&mut out)?;
        let f = out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", path.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(r)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
