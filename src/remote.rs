//! Pull from and push to a hub over its HTTP API (docs/protocol.md), with
//! bounded parallelism on worker threads and retries for transient failures.

use crate::apply::ApplyOutcome;
use crate::bundle_commit::Arrivals;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{BlobDigest, ChunkId, ClientId, LayerId};
use crate::index::LayerInfo;
use crate::ingest::{IngestOptions, IngestSummary};
use crate::input::Compression;
use crate::possession::ClientInfo;
use crate::store::Store;
use crate::transfer::{self, ChunkSink, RecipeBundle, MAX_BATCH};
use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod http;
use http::{http_error, idle_timeout, parse_json, read_limited, request_error};

/// A hub's API endpoint and credentials.
#[derive(Debug, Clone)]
pub struct Remote {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
    /// Attempts for one request before giving up (transient failures only).
    pub attempts: u32,
}

/// Bytes received from the hub, for reports and benchmarks.
#[derive(Debug, Default)]
pub struct WireCounter(AtomicU64);

impl WireCounter {
    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Bytes so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn transient(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Io | ErrorKind::Busy)
}

impl Remote {
    /// A hub at `url` (e.g. `http://127.0.0.1:7300`), with an optional bearer token.
    pub fn new(url: &str, token: Option<String>) -> Result<Self> {
        Self::with_roots(url, token, None)
    }

    /// [`Remote::new`], also trusting the CA certificates of `ca_pem` (a PEM
    /// bundle) for an `https://` hub, beside the system's.
    pub fn with_roots(url: &str, token: Option<String>, ca_pem: Option<&[u8]>) -> Result<Self> {
        let base = url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid(format!("hub URL {url:?} must start with http:// or https://")));
        }
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Until the response starts, then for each read of a streamed body
            // (a whole read for the small bodies read at once): a hub that
            // stalls is given up on, as a broken transfer.
            .timeout(idle_timeout())
            .pool_max_idle_per_host(64);
        // rustls needs a process-wide crypto provider (ring, which the S3
        // client builds anyway); an error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // rustls (the only TLS built in: no OpenSSL to load at start) reads
        // the system roots only when a TLS connection is verified, so a
        // plain-HTTP hub costs none of it.
        builder = builder.tls_backend_rustls();
        if let Some(pem) = ca_pem {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::new(ErrorKind::Config, format!("reading CA certificates: {e}")))?;
            if certs.is_empty() {
                return Err(Error::new(ErrorKind::Config, "no PEM certificate in the CA file"));
            }
            let tls = crate::pinned_tls::client_config(certs)
                .map_err(|e| Error::new(ErrorKind::Config, format!("TLS with the CA certificates: {e}")))?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder.build().map_err(|e| Error::io("HTTP client", std::io::Error::other(e)))?;
        Ok(Remote { base: format!("{base}/v2/_chunkstore"), token, http, attempts: 6 })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send a request, map HTTP errors to ours, retry transient ones with backoff.
    fn send(
        &self,
        what: &str,
        make: impl Fn() -> reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let mut rb = make();
            if let Some(t) = &self.token {
                rb = rb.bearer_auth(t);
            }
            let r: Result<()> = match rb.send() {
                Err(e) => Err(request_error(what, e)),
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => Err(http_error(what, resp)),
            };
            let e = r.expect_err("success returned above");
            if attempt >= self.attempts || !transient(&e) {
                return Err(e);
            }
            tracing::warn!(error = %e, attempt, "retrying");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(3));
            attempt += 1;
        }
    }

    fn bytes(&self, what: &str, resp: reqwest::blocking::Response, wire: &WireCounter, limit: u64) -> Result<Vec<u8>> {
        let b = read_limited(what, resp, limit)?;
        wire.add(b.len());
        Ok(b)
    }

    /// The hub's layers.
    pub fn layers(&self) -> Result<Vec<LayerInfo>> {
        let r = self.send("listing layers", || self.http.get(self.url("/layers")))?;
        let v: Vec<serde_json::Value> = parse_json("listing layers", r)?;
        v.iter()
            .map(|l| {
                let id = l["id"].as_str().ok_or_else(|| Error::invalid("listing layers: no id"))?;
                let blob = l["blob"].as_str().map(crate::ids::BlobDigest::parse).transpose()?;
                Ok(LayerInfo { id: LayerId::parse(id)?, blob, ..placeholder_info() })
            })
            .collect()
    }

    /// Find a layer on the hub by digest or unique prefix: of its diff_id,
    /// or of the compressed blob it arrived as (what an image manifest names).
    /// A full digest is taken as a diff_id without asking the hub (see
    /// [`Remote::layer_of_blob`]).
    pub fn resolve_layer(&self, s: &str) -> Result<LayerId> {
        if let Ok(id) = LayerId::parse(s) {
            return Ok(id);
        }
        let want = s.strip_prefix("sha256:").unwrap_or(s).to_ascii_lowercase();
        let found: Vec<LayerId> = self
            .layers()?
            .into_iter()
            .filter(|l| l.id.to_hex().starts_with(&want) || l.blob.is_some_and(|b| b.to_hex().starts_with(&want)))
            .map(|l| l.id)
            .collect();
        match found[..] {
            [one] => Ok(one),
            [] => Err(Error::not_found(format!("the hub has no layer matching {s:?}"))),
            _ => Err(Error::new(ErrorKind::Ambiguous, format!("{s:?} matches {} layers on the hub", found.len()))),
        }
    }

    /// The layer the hub recorded as arriving in the compressed blob `digest`.
    pub fn layer_of_blob(&self, digest: &str) -> Result<Option<LayerId>> {
        let want = crate::ids::BlobDigest::parse(digest)?;
        Ok(self.layers()?.into_iter().find(|l| l.blob == Some(want)).map(|l| l.id))
    }

    /// A layer's recipe bundle.
    pub fn bundle(&self, layer: &LayerId, wire: &WireCounter) -> Result<RecipeBundle> {
        self.bundle_named(layer, wire).map(|(b, _)| b)
    }

    /// A layer's recipe bundle, and the compressed blob the hub names it by.
    fn bundle_named(&self, layer: &LayerId, wire: &WireCounter) -> Result<(RecipeBundle, Option<BlobName>)> {
        let what = format!("fetching the recipe of {layer}");
        let r = self.send(&what, || self.http.get(self.url(&format!("/layers/{layer}/bundle"))))?;
        let named = blob_name(r.headers());
        let b = self.bytes(&what, r, wire, transfer::MAX_BUNDLE)?;
        Ok((RecipeBundle::decode(&b)?, named))
    }

    /// Fetch and verify a batch of chunks.
    pub fn fetch_chunks(&self, ids: &[ChunkId], wire: &WireCounter) -> Result<Vec<transfer::VerifiedChunk>> {
        Ok(self.fetch_chunks_keep(ids, wire)?.into_iter().map(|(c, _)| c).collect())
    }

    /// [`Remote::fetch_chunks`], also giving back each chunk's raw bytes.
    fn fetch_chunks_keep(
        &self,
        ids: &[ChunkId],
        wire: &WireCounter,
    ) -> Result<Vec<(transfer::VerifiedChunk, Vec<u8>)>> {
        let body: Vec<u8> = ids.iter().flat_map(|c| *c.as_bytes()).collect();
        let what = format!("fetching {} chunks", ids.len());
        let mut attempt = 1;
        loop {
            let r = self.send(&what, || self.http.post(self.url("/chunks/fetch")).body(body.clone()))?;
            // Parsed and verified as it streams in, not gathered first.
            let mut body =
                std::io::BufReader::with_capacity(256 << 10, CountingRead { inner: r, wire, progress: None });
            let result = transfer::read_chunk_batch_keep(&mut body, ids).and_then(|chunks| {
                // The whole response read, so the connection is reused; it
                // must end where the batch does.
                let mut more = [0u8; 1];
                match body.read(&mut more) {
                    Ok(0) => Ok(chunks),
                    Ok(_) => Err(Error::invalid(format!("{what}: the hub sent more than the chunks asked for"))),
                    Err(e) => Err(crate::error::from_io(e, format!("{what}: reading the response"))),
                }
            });
            match result {
                Err(e) if transient(&e) && attempt < self.attempts => attempt += 1,
                r => return r,
            }
        }
    }

    fn post_json(&self, what: &str, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let r = self.send(what, || self.http.post(self.url(path)).json(&body))?;
        parse_json(what, r)
    }

    /// Tell the hub the client now holds `layers`.
    pub fn ack(&self, client: &ClientId, layers: &[LayerId]) -> Result<()> {
        self.hold(client, layers).map(|_| ())
    }

    /// Every client the hub knows (an admin token).
    pub fn clients(&self) -> Result<Vec<ClientInfo>> {
        let r = self.send("listing clients", || self.http.get(self.url("/clients")))?;
        parse_json("listing clients", r)
    }

    /// One client's record.
    pub fn client(&self, c: &ClientId) -> Result<ClientInfo> {
        let what = format!("showing client {c}");
        let r = self.send(&what, || self.http.get(self.url(&format!("/clients/{c}"))))?;
        parse_json(&what, r)
    }

    /// Register a client holding nothing (an admin token).
    pub fn add_client(&self, c: &ClientId) -> Result<ClientInfo> {
        let what = format!("adding client {c}");
        let r = self.send(&what, || self.http.put(self.url(&format!("/clients/{c}"))))?;
        parse_json(&what, r)
    }

    /// Forget a client and what it holds (an admin token).
    pub fn remove_client(&self, c: &ClientId) -> Result<()> {
        self.send(&format!("removing client {c}"), || self.http.delete(self.url(&format!("/clients/{c}"))))?;
        Ok(())
    }

    /// Record that the client holds `layers` too; its record after.
    pub fn hold(&self, c: &ClientId, layers: &[LayerId]) -> Result<ClientInfo> {
        self.layers_call(&format!("recording layers client {c} holds"), &format!("/clients/{c}/ack"), layers)
    }

    /// Record that the client has evicted `layers`; its record after.
    pub fn evict(&self, c: &ClientId, layers: &[LayerId]) -> Result<ClientInfo> {
        self.layers_call(&format!("recording layers client {c} dropped"), &format!("/clients/{c}/drop"), layers)
    }

    fn layers_call(&self, what: &str, path: &str, layers: &[LayerId]) -> Result<ClientInfo> {
        let ls: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
        serde_json::from_value(self.post_json(what, path, serde_json::json!({ "layers": ls }))?)
            .map_err(|e| Error::invalid(format!("{what}: {e}")))
    }

    /// Tell the hub exactly which layers the client holds.
    pub fn report(&self, client: &ClientId, layers: &[LayerId]) -> Result<()> {
        let ls: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
        let body = serde_json::json!({ "layers": ls });
        self.send("reporting possession", || {
            self.http.put(self.url(&format!("/clients/{client}/possession"))).json(&body)
        })?;
        Ok(())
    }
}

/// A compressed blob that holds a layer, and its compression.
type BlobName = (BlobDigest, Compression);

/// The blob a hub's response names its layer by ([`transfer::BLOB_HEADER`]);
/// `None` when it names none or names it in a form this build does not read.
fn blob_name(h: &reqwest::header::HeaderMap) -> Option<BlobName> {
    let get = |name| h.get(name).and_then(|v| v.to_str().ok());
    let blob = BlobDigest::parse(get(transfer::BLOB_HEADER)?).ok()?;
    let compression = Compression::from_name(get(transfer::BLOB_COMPRESSION_HEADER)?)?;
    (compression != Compression::None).then_some((blob, compression))
}

fn placeholder_info() -> LayerInfo {
    LayerInfo {
        id: LayerId::from_bytes([0; 32]),
        blob: None,
        compression: crate::input::Compression::None,
        tar_size: 0,
        entries: 0,
        files: 0,
        file_bytes: 0,
        chunks: 0,
        ingested_at: 0,
    }
}

/// A pull checks its layer while the chunks arrive, holding their raw bytes
/// until the rebuild has used them, only when the missing chunks' raw bytes
/// are at most this by default ([`TransferOptions::overlap_max_bytes`]: the
/// most a hub that sends them out of order can make it hold); else it checks
/// the layer afterwards, from the packs.
const RAW_KEEP_BYTES: u64 = 256 << 20;

/// Fetched chunks are stored (one pack, one index commit) in groups this big
/// by default ([`TransferOptions::store_group_bytes`]).
const STORE_GROUP_BYTES: usize = 64 << 20;

/// How to pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The hub's dedup tarball for this client; falls back to chunks on a stale map.
    Dedup,
    /// Only the chunks this store lacks, worked out here.
    Chunks,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Dedup => "dedup",
            Via::Chunks => "chunks",
        })
    }
}

/// Options for [`Store::pull`] and [`Store::push`].
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Chunks per request.
    pub batch: usize,
    /// How to pull.
    pub via: Via,
    /// Progress: bytes received or sent so far.
    pub progress: Option<Arc<AtomicU64>>,
    /// A pull stores fetched chunks durably (one pack, one index commit) each
    /// time this many bytes have arrived, or an eighth of what it lacks (at
    /// least 4 MiB) if that is less; a killed pull keeps every stored group.
    pub store_group_bytes: usize,
    /// A pull via chunks checks the layer while its chunks arrive when the
    /// missing chunks hold at most this many raw bytes, else after the fetch.
    pub overlap_max_bytes: u64,
}

impl Default for TransferOptions {
    /// Eight requests of 128 chunks (~8 MiB) in flight: enough to fill a
    /// 100 Mbit/s link at 50 ms round trip several times over.
    fn default() -> Self {
        TransferOptions {
            concurrency: 8,
            batch: 128,
            via: Via::Dedup,
            progress: None,
            store_group_bytes: STORE_GROUP_BYTES,
            overlap_max_bytes: RAW_KEEP_BYTES,
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PullSummary {
    /// The layer.
    pub layer: LayerId,
    /// How it came (after any fallback).
    pub via: Via,
    /// Whether a dedup pull found the hub's map stale and fell back to chunks.
    pub fell_back: bool,
    /// Whether the store already held the layer.
    pub already_present: bool,
    /// Chunks fetched.
    pub fetched_chunks: u64,
    /// Response bytes received from the hub.
    pub wire_bytes: u64,
    /// Bytes of the dedup tarball an interrupted earlier pull had received,
    /// read back from disk instead of fetched again.
    pub resumed_bytes: u64,
    /// The layer as recorded here.
    pub ingest: Option<IngestSummary>,
    /// Whether the hub was told (not without a token: an anonymous pull from
    /// a `--public-read` hub goes via chunks and leaves no trace in its maps).
    pub acknowledged: bool,
    /// Why the acknowledgement failed, when it did (the layer is stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_error: Option<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushSummary {
    /// The layer.
    pub layer: LayerId,
    /// Distinct chunks in the layer.
    pub chunks: u64,
    /// Chunks the hub lacked and received.
    pub uploaded_chunks: u64,
    /// Bytes of chunk data uploaded.
    pub uploaded_bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Run `work` over `items` on up to `n` threads; the first error stops the rest.
fn parallel<T: Send, R: Send>(n: usize, items: Vec<T>, work: impl Fn(T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let queue = Mutex::new(items.into_iter().collect::<VecDeque<T>>());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..n.max(1) {
            s.spawn(|| loop {
                if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    return;
                }
                let Some(item) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else { return };
                match work(item) {
                    Ok(r) => out.lock().unwrap_or_else(|p| p.into_inner()).push(r),
                    Err(e) => {
                        failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(out.into_inner().unwrap_or_else(|p| p.into_inner())),
    }
}

impl Store {
    /// Pull a layer from a hub into this (edge) store and acknowledge it.
    pub fn pull(
        &self,
        hub: &Remote,
        client: &ClientId,
        layer: &LayerId,
        opts: &TransferOptions,
    ) -> Result<PullSummary> {
        let started = Instant::now();
        let wire = WireCounter::default();
        let mut s = PullSummary {
            layer: *layer,
            via: opts.via,
            fell_back: false,
            already_present: false,
            fetched_chunks: 0,
            wire_bytes: 0,
            resumed_bytes: 0,
            ingest: None,
            acknowledged: false,
            ack_error: None,
            seconds: 0.0,
        };
        // Without a token only the public part of the API (a --public-read
        // hub) is open: no dedup tarball, no acknowledgement.
        let anonymous = hub.token.is_none();
        if self.layer(layer)?.is_some() {
            s.already_present = true;
        } else if opts.via == Via::Dedup && !anonymous {
            // A broken stream (a restarted hub) is resumed once from the bytes
            // kept so far; broken again, the pull goes on chunk by chunk.
            let mut dedup = self.pull_dedup(hub, client, layer, opts, &wire, &mut s.resumed_bytes);
            if let Some(e) = dedup.as_ref().err().filter(|e| transient(e)) {
                tracing::warn!(error = %e, "dedup transfer broke off; resuming it");
                // What it resumes from crossed the network in this run: not counted as resumed.
                dedup = self.pull_dedup(hub, client, layer, opts, &wire, &mut 0);
            }
            match dedup {
                Ok(Some(summary)) => s.ingest = Some(summary),
                Ok(None) => {
                    // The hub's map was stale: fetch what is missing, then tell it the truth.
                    s.fell_back = true;
                    s.via = Via::Chunks;
                    let (n, summary) = self.pull_chunks(hub, layer, opts, &wire)?;
                    s.fetched_chunks = n;
                    s.ingest = Some(summary);
                    let mine: Vec<LayerId> = self.layers()?.into_iter().map(|l| l.id).collect();
                    hub.report(client, &mine)?;
                }
                Err(e) if transient(&e) => {
                    tracing::warn!(error = %e, "dedup transfer failed; continuing chunk by chunk");
                    s.fell_back = true;
                    s.via = Via::Chunks;
                    let (n, summary) = self.pull_chunks(hub, layer, opts, &wire)?;
                    s.fetched_chunks = n;
                    s.ingest = Some(summary);
                }
                Err(e) => return Err(e),
            }
        } else {
            if !anonymous {
                // Fetching chunks needs only a pull scope; the acknowledgement
                // needs this client's: a token for another fails now, not after
                // (reading the client's record checks it and changes nothing).
                match hub.client(client) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let (n, summary) = self.pull_chunks(hub, layer, opts, &wire)?;
            s.fetched_chunks = n;
            s.ingest = Some(summary);
        }
        // However it came, kept bytes of its dedup tarball are of no more use.
        crate::partial::Partial::new(&self.dir, client, layer).remove();
        if anonymous {
            s.via = Via::Chunks;
        } else {
            // The layer is here and verified whatever the hub answers now (a
            // token that expired meanwhile, a hub shutting down): the summary
            // says it was not told, and its next diff for this client is stale.
            match hub.ack(client, &[*layer]) {
                Ok(()) => s.acknowledged = true,
                Err(e) => {
                    tracing::warn!(error = %e, "the layer is stored, but the hub was not told");
                    s.ack_error = Some(e.to_string());
                }
            }
        }
        s.wire_bytes = wire.get();
        s.seconds = started.elapsed().as_secs_f64();
        Ok(s)
    }

    /// `Ok(None)` when the tarball referenced data this store lacks. What
    /// arrives is kept (`partial`) until the pull ends, so that a pull killed
    /// midway fetches only the rest when run again; `resumed` is set to the
    /// bytes it did not fetch again.
    fn pull_dedup(
        &self,
        hub: &Remote,
        client: &ClientId,
        layer: &LayerId,
        opts: &TransferOptions,
        wire: &WireCounter,
        resumed: &mut u64,
    ) -> Result<Option<IngestSummary>> {
        let what = format!("fetching the dedup tarball of {layer}");
        let url = hub.url(&format!("/clients/{client}/layers/{layer}/dedup"));
        crate::partial::Partial::expire(&self.dir);
        let partial = crate::partial::Partial::new(&self.dir, client, layer);
        let mut resp = None;
        if let Some((n, hash)) = partial.held()? {
            match hub.send(&what, || hub.http.get(format!("{url}?offset={n}"))) {
                Ok(r) => {
                    let prefix = r.headers().get(transfer::PREFIX_HEADER).and_then(|v| v.to_str().ok());
                    if prefix == Some(hash.as_str()) {
                        tracing::info!(bytes = n, "resuming the dedup tarball");
                        *resumed = n;
                        resp = Some(r);
                    } else {
                        tracing::info!("the hub's dedup tarball is not the one begun earlier: starting over");
                    }
                }
                // The hub cannot regenerate that much: its tarball changed.
                Err(e) if e.kind() == ErrorKind::InvalidInput => {
                    tracing::info!(error = %e, "cannot resume the dedup tarball: starting over");
                }
                Err(e) => return Err(e),
            }
        }
        let resp = match resp {
            Some(r) => r,
            None => hub.send(&what, || hub.http.get(&url))?,
        };
        let named = blob_name(resp.headers());
        let (kept, out) = partial.start(*resumed)?;
        let fetched = CountingRead { inner: resp, wire, progress: opts.progress.clone() };
        let reader = kept.chain(crate::partial::Tee { inner: fetched, out: Some(out) });
        let outcome = self.apply(reader, &IngestOptions::default()).inspect_err(|e| {
            // Only a broken transfer is worth resuming.
            if !transient(e) {
                partial.remove();
            }
        })?;
        partial.remove();
        match outcome {
            ApplyOutcome::Applied(mut s) => {
                self.record_blob_name(named, &mut s);
                Ok(Some(s))
            }
            ApplyOutcome::Missing { .. } => Ok(None),
        }
    }

    /// Fetch the chunks this store lacks in parallel batches, storing each
    /// batch as it arrives (so an interrupted pull resumes), then commit.
    fn pull_chunks(
        &self,
        hub: &Remote,
        layer: &LayerId,
        opts: &TransferOptions,
        wire: &WireCounter,
    ) -> Result<(u64, IngestSummary)> {
        let t0 = Instant::now();
        let (bundle, named) = hub.bundle_named(layer, wire)?;
        if bundle.layer != *layer {
            return Err(Error::invalid(format!("the hub sent the recipe of {} for {layer}", bundle.layer)));
        }
        let (needed, mut uses) = bundle.chunk_uses()?;
        let ids: Vec<ChunkId> = needed.iter().map(|(c, _)| *c).collect();
        let missing = self.missing_chunks(&ids)?;
        let n = missing.len() as u64;
        // The layer is rebuilt and checked while its chunks arrive, from the
        // raw bytes their verification decoded, when those fit in memory;
        // else afterwards, from the packs.
        let missing_set: HashSet<&ChunkId> = missing.iter().collect();
        let raw_bytes: u64 = needed.iter().filter(|(c, _)| missing_set.contains(c)).map(|(_, l)| *l as u64).sum();
        let overlap = raw_bytes <= opts.overlap_max_bytes;
        // Small pulls store in smaller groups, so that a killed one keeps some.
        let group = opts.store_group_bytes.min(usize::try_from(raw_bytes / 8).unwrap_or(usize::MAX).max(4 << 20));
        uses.retain(|c, _| overlap && missing_set.contains(c));
        let arrivals = Arrivals::new(uses);
        let batches: Vec<Vec<ChunkId>> =
            missing.chunks(opts.batch.clamp(1, MAX_BATCH)).map(<[ChunkId]>::to_vec).collect();
        // Fetchers hand verified chunks to one writer, which stores them in
        // groups: each group is one durable commit (an interrupted pull keeps
        // every finished group), without an fsync per request.
        let (tx, rx) = crossbeam_channel::bounded::<Vec<transfer::VerifiedChunk>>(opts.concurrency.max(1) * 2);
        let verified = std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<()> {
                // Each chunk goes to the staged pack as it comes; a group is
                // sealed (durable, indexed) every store_group_bytes.
                let mut sink = ChunkSink::new(self);
                for chunks in rx {
                    for c in &chunks {
                        sink.push(c)?;
                    }
                    if sink.pending_bytes() >= group {
                        sink.seal()?;
                    }
                }
                sink.seal().map(|_| ())
            });
            let checker = overlap.then(|| {
                let (bundle, arrivals) = (&bundle, &arrivals);
                s.spawn(move || self.verify_bundle(bundle, &IngestOptions::default(), Some(arrivals)))
            });
            let fetched = parallel(opts.concurrency, batches, |b| {
                let got = hub.fetch_chunks_keep(&b, wire)?;
                let (chunks, raw): (Vec<_>, Vec<_>) = got
                    .into_iter()
                    .map(|(c, r)| {
                        let id = *c.id();
                        (c, (id, r))
                    })
                    .unzip();
                if overlap {
                    arrivals.add(raw);
                }
                if let Some(p) = &opts.progress {
                    p.store(wire.get(), Ordering::Relaxed);
                }
                tx.send(chunks).map_err(|_| Error::io("storing chunks", std::io::Error::other("writer stopped")))
            });
            drop(tx);
            let stored = writer.join().unwrap_or_else(|_| Err(Error::io("writer", std::io::Error::other("panicked"))));
            arrivals.close();
            let checked = checker
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::io("rebuild", std::io::Error::other("panicked")))));
            // The writer's error first (fetchers then only see "writer
            // stopped"), then the fetch's (the rebuild then only sees chunks
            // that never arrived).
            stored?;
            fetched?;
            checked.transpose()
        })?;
        tracing::info!(chunks = n, wire = wire.get(), secs = t0.elapsed().as_secs_f64(), "chunks fetched and stored");
        let verified = match verified {
            Some(v) => v,
            None => self.verify_bundle(&bundle, &IngestOptions::default(), None)?,
        };
        let mut summary = self.record_verified(verified)?;
        self.record_blob_name(named, &mut summary);
        tracing::info!(secs = t0.elapsed().as_secs_f64(), "layer rebuilt and committed");
        Ok((n, summary))
    }

    /// Record the blob the hub names a layer just pulled by (see
    /// [`Store::name_blob`]); the layer is stored whatever happens here.
    fn record_blob_name(&self, named: Option<BlobName>, summary: &mut IngestSummary) {
        let Some((blob, compression)) = named else { return };
        match self.name_blob(&summary.layer.id, blob, compression) {
            Ok(_) if summary.layer.blob.is_none() => {
                summary.layer.blob = Some(blob);
                summary.layer.compression = compression;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the layer is stored, but not under the blob digest the hub names it by")
            }
        }
    }

    /// Upload a layer this store holds to a hub: only the chunks it lacks, in
    /// parallel, then commit (the hub verifies everything before recording).
    pub fn push(&self, hub: &Remote, layer: &LayerId, opts: &TransferOptions) -> Result<PushSummary> {
        let started = Instant::now();
        let bundle = self.recipe_bundle(layer)?;
        let ids: Vec<(ChunkId, u32)> = bundle.chunk_ids()?;
        let mut missing = Vec::new();
        for group in ids.chunks(crate::transfer::MAX_QUERY) {
            let body: Vec<u8> = group.iter().flat_map(|(c, _)| *c.as_bytes()).collect();
            let r = hub.send("asking which chunks the hub lacks", || {
                hub.http.post(hub.url("/chunks/missing")).body(body.clone())
            })?;
            // At most the ids asked about, 32 bytes each.
            let limit = 32 * group.len() as u64;
            let b = hub.bytes("asking which chunks the hub lacks", r, &WireCounter::default(), limit)?;
            missing.extend(transfer::parse_chunk_ids(&b, group.len())?);
        }
        let sent = AtomicU64::new(0);
        let batches: Vec<Vec<ChunkId>> =
            missing.chunks(opts.batch.clamp(1, MAX_BATCH)).map(<[ChunkId]>::to_vec).collect();
        parallel(opts.concurrency, batches, |b| {
            let mut body = Vec::new();
            self.write_chunk_batch(&b, &mut body)?;
            sent.fetch_add(body.len() as u64, Ordering::Relaxed);
            if let Some(p) = &opts.progress {
                p.store(sent.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            hub.send("uploading chunks", || hub.http.post(hub.url("/chunks")).body(body.clone()))?;
            Ok(())
        })?;
        let body = bundle.encode();
        hub.send("committing the layer", || {
            hub.http.post(hub.url(&format!("/layers/{layer}/commit"))).body(body.clone())
        })?;
        Ok(PushSummary {
            layer: *layer,
            chunks: ids.len() as u64,
            uploaded_chunks: missing.len() as u64,
            uploaded_bytes: sent.into_inner(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Counts bytes of a streaming response.
struct CountingRead<'a, R> {
    inner: R,
    wire: &'a WireCounter,
    progress: Option<Arc<AtomicU64>>,
}

impl<R: Read> Read for CountingRead<'_, R> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        // A broken body is the network's failure, not damage in what it
        // carried: an I/O error (retried, resumed) through every decoder.
        let n = self.inner.read(b).map_err(|e| Error::io("the transfer from the hub broke off", e))?;
        self.wire.add(n);
        if let Some(p) = &self.progress {
            p.store(self.wire.get(), Ordering::Relaxed);
        }
        Ok(n)
    }
}
