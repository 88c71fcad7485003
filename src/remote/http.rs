//! The hub client's HTTP plumbing: how long a hub may stay silent, how much
//! of an answer is read, and what a failed request means for the user.

use crate::error::{Error, ErrorKind, Result};
use std::io::Read;
use std::time::Duration;

/// How long the hub may go silent (see `Remote::with_roots`): 120 s, or
/// `$CHUNKSTORE_HUB_TIMEOUT` seconds.
pub(super) fn idle_timeout() -> Duration {
    let secs = std::env::var("CHUNKSTORE_HUB_TIMEOUT").ok().and_then(|v| v.parse::<f64>().ok());
    Duration::from_secs_f64(secs.filter(|s| *s > 0.0 && s.is_finite()).unwrap_or(120.0))
}

/// The most a JSON answer (a layer or client list, a record) may hold.
const MAX_JSON: u64 = 64 << 20;
/// The most an error answer's body is read for its message.
const MAX_ERROR_BODY: u64 = 64 << 10;

/// Read a whole response body of at most `limit` bytes: a hub cannot make
/// the edge hold more than that.
pub(super) fn read_limited(what: &str, resp: reqwest::blocking::Response, limit: u64) -> Result<Vec<u8>> {
    let mut b = Vec::new();
    resp.take(limit + 1).read_to_end(&mut b).map_err(|e| Error::io(format!("{what}: reading the response"), e))?;
    if b.len() as u64 > limit {
        return Err(Error::invalid(format!("{what}: the hub's answer is over the {limit}-byte limit")));
    }
    Ok(b)
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(what: &str, r: reqwest::blocking::Response) -> Result<T> {
    let b = read_limited(what, r, MAX_JSON)?;
    serde_json::from_slice(&b).map_err(|e| Error::invalid(format!("{what}: the hub's answer: {e}")))
}

/// A request that got no response. A TLS failure (an untrusted certificate,
/// say) is not worth retrying and says how to fix it; anything else may pass.
pub(super) fn request_error(what: &str, e: reqwest::Error) -> Error {
    if let Some(tls) = find_tls_error(&e) {
        return Error::new(
            ErrorKind::Config,
            format!(
                "{what}: TLS with the hub failed: {tls} \
                 (for a certificate a private CA signed, pass the CA with --ca-cert; \
                 for a self-signed one, pass that certificate)"
            ),
        );
    }
    Error::io(format!("{what}: cannot reach the hub"), std::io::Error::other(e))
}

/// The rustls error somewhere in `e`'s chain. An io::Error's `source()`
/// skips the error it wraps (and hyper wraps io::Errors in io::Errors), so
/// each one is looked into as well.
fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let wrapped = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
    if let Some(t) = wrapped.and_then(|w| find_tls_error(w)) {
        return Some(t);
    }
    e.source().and_then(find_tls_error)
}

pub(super) fn http_error(what: &str, resp: reqwest::blocking::Response) -> Error {
    let status = resp.status();
    let msg = read_limited(what, resp, MAX_ERROR_BODY)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| status.to_string());
    let kind = match status.as_u16() {
        401 | 403 => ErrorKind::Denied,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Config,
        422 => ErrorKind::Corrupt,
        503 => ErrorKind::Busy,
        400..=499 => ErrorKind::InvalidInput,
        _ => ErrorKind::Io,
    };
    Error::new(kind, format!("{what}: hub answered {}: {msg}", status.as_u16()))
}
