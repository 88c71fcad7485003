//! The hub's HTTP/1.1 API under `/v2/_chunkstore/` (docs/protocol.md).
//! Handlers run store work on tokio's blocking pool; large responses stream.

use crate::error::{Error, ErrorKind};
use crate::ids::{ClientId, LayerId};
use crate::index::LayerInfo;
use crate::ingest::IngestOptions;
use crate::possession::DiffOptions;
use crate::store::Store;
use crate::token::{Claims, Scope, TokenVerifier};
use crate::transfer::{self, RecipeBundle, MAX_BATCH, MAX_QUERY};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Largest body for chunk uploads and layer commits.
pub const MAX_UPLOAD: usize = 64 << 20;
/// Largest JSON request body (a list of layers: some 40,000).
const MAX_JSON_BODY: usize = 4 << 20;

/// How the hub serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Let anyone read layers, recipes and chunks without a token.
    pub public_read: bool,
    /// Per-request time limit until the response starts.
    pub timeout: Duration,
    /// Serve HTTPS with this certificate chain and private key (PEM files).
    pub tls: Option<TlsFiles>,
}

/// A PEM certificate chain and its private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate, then any intermediates.
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { public_read: false, timeout: Duration::from_secs(120), tls: None }
    }
}

struct App {
    store: Arc<Store>,
    tokens: TokenVerifier,
    opts: ServeOptions,
    /// Test hook: `CHUNKSTORE_TEST_CORRUPT_CHUNKS=1` flips a byte of every
    /// chunk served, so tests can check that pullers refuse wrong bytes.
    corrupt: bool,
    /// Test hook: `CHUNKSTORE_TEST_STREAM_DELAY_MS=N` sleeps N ms after each
    /// 256 KiB of a streamed body, so tests can interrupt a transfer midway.
    stream_delay: Option<Duration>,
}

/// An error response: `{"error": {"code": "...", "message": "..."}}`.
struct ApiError(StatusCode, &'static str, String);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match e.kind() {
            ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "INVALID"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ErrorKind::Ambiguous => (StatusCode::BAD_REQUEST, "AMBIGUOUS"),
            ErrorKind::Denied => (StatusCode::UNAUTHORIZED, "DENIED"),
            ErrorKind::Corrupt => (StatusCode::UNPROCESSABLE_ENTITY, "CORRUPT"),
            ErrorKind::Busy => (StatusCode::SERVICE_UNAVAILABLE, "BUSY"),
            ErrorKind::Config => (StatusCode::CONFLICT, "CONFLICT"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        ApiError(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!(code = self.1, message = %self.2, "request failed");
        } else {
            tracing::info!(code = self.1, message = %self.2, "request refused");
        }
        let body = serde_json::json!({ "error": { "code": self.1, "message": self.2 } });
        (self.0, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Errors the HTTP layer answers by itself (an unknown method, a body over
/// the limit or of the wrong type, a timeout) in the API's JSON shape, as
/// every other error: their text, where they have one, becomes the message.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::PAYLOAD_TOO_LARGE => "TOO_LARGE",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        StatusCode::REQUEST_TIMEOUT => "TIMEOUT",
        s if s.is_server_error() => "INTERNAL",
        _ => "INVALID",
    };
    // These bodies are a line of text from axum; anything longer is cut.
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let mut out = ApiError(status, code, message).into_response();
    // Keep what the layer said beside its text (e.g. `Allow` on a 405).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

fn forbidden(msg: String) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, "FORBIDDEN", msg)
}

impl App {
    /// Check the bearer token: `need` scope, and for `client` routes, that
    /// client (admin tokens may act for any). `public` routes pass without a
    /// token when the hub runs with `--public-read`.
    fn authorize(
        &self,
        h: &HeaderMap,
        need: Scope,
        client: Option<&ClientId>,
        public: bool,
    ) -> ApiResult<Option<Claims>> {
        let token = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme's name is case-insensitive (RFC 9110).
            .and_then(|v| v.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")))
            .map(|(_, t)| t.trim());
        let Some(token) = token else {
            if public && self.opts.public_read {
                return Ok(None);
            }
            return Err(ApiError(StatusCode::UNAUTHORIZED, "DENIED", "a bearer token is required".into()));
        };
        let claims = self.tokens.verify(token)?;
        if !claims.scope.allows(need) {
            return Err(forbidden(format!(
                "a {} token does not allow this ({} needed)",
                claims.scope.as_str(),
                need.as_str()
            )));
        }
        if let Some(c) = client {
            if claims.scope != Scope::Admin && claims.client != *c {
                return Err(forbidden(format!("token for {} cannot act for client {c}", claims.client)));
            }
        }
        Ok(Some(claims))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> crate::Result<T> + Send + 'static) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", format!("worker failed: {e}"))),
    }
}

/// A `Write` that feeds a streaming response body from a blocking thread.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
    delay: Option<Duration>,
}

impl Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.buf));
            self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other("client went away"))?;
            if let Some(d) = self.delay {
                std::thread::sleep(d);
            }
        }
        Ok(())
    }
}

/// Stream what `produce` writes as the response body.
fn stream_body(
    delay: Option<Duration>,
    content_type: &'static str,
    produce: impl FnOnce(&mut ChannelWriter) -> crate::Result<()> + Send + 'static,
) -> Response {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter { tx: tx.clone(), buf: Vec::new(), delay };
        let r = produce(&mut w).and_then(|_| w.flush().map_err(|e| Error::io("streaming", e)));
        if let Err(e) = r {
            if e.kind() == crate::ErrorKind::Corrupt {
                tracing::error!(error = %e, "stream aborted: the store is damaged (`chunkstore verify` names what)");
            } else {
                tracing::warn!(error = %e, "stream aborted");
            }
            // An error mid-body: end the stream with an error so the client sees a broken body.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn layer_id(s: &str) -> ApiResult<LayerId> {
    Ok(LayerId::parse(s)?)
}

fn client_id(s: &str) -> ApiResult<ClientId> {
    Ok(ClientId::new(s)?)
}

async fn root() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "service": "chunkstore", "version": env!("CARGO_PKG_VERSION"), "protocol": 1 }))
}

async fn list_layers(State(app): State<Arc<App>>, h: HeaderMap) -> ApiResult<Response> {
    app.authorize(&h, Scope::Pull, None, true)?;
    let store = app.store.clone();
    let layers = blocking(move || store.layers()).await?;
    Ok(Json(layers).into_response())
}

async fn get_bundle(State(app): State<Arc<App>>, h: HeaderMap, Path(layer): Path<String>) -> ApiResult<Response> {
    app.authorize(&h, Scope::Pull, None, true)?;
    let layer = layer_id(&layer)?;
    let store = app.store.clone();
    let (b, info) = blocking(move || Ok((store.recipe_bundle(&layer)?.encode(), store.layer(&layer)?))).await?;
    let mut response = ([(header::CONTENT_TYPE, "application/vnd.chunkstore.bundle.v1")], b).into_response();
    blob_headers(&mut response, info.as_ref());
    Ok(response)
}

/// Name the compressed blob the layer is recorded under ([`transfer::BLOB_HEADER`]).
fn blob_headers(response: &mut Response, info: Option<&LayerInfo>) {
    let Some((blob, compression)) = info.and_then(|i| Some((i.blob?, i.compression))) else { return };
    let h = response.headers_mut();
    let value = |s: String| header::HeaderValue::from_str(&s).expect("digests and names are valid header values");
    h.insert(transfer::BLOB_HEADER, value(blob.to_string()));
    h.insert(transfer::BLOB_COMPRESSION_HEADER, value(compression.to_string()));
}

/// A request body, read only once the token has passed (an extractor would
/// read it first, so anyone could make the hub hold `limit` bytes).
async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::iter::successors(Some(&e as &dyn std::error::Error), |c| c.source())
            .any(|c| c.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError(StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE", format!("request body over {limit} bytes"))
        } else {
            ApiError(StatusCode::BAD_REQUEST, "INVALID", format!("reading the request body: {e}"))
        }
    })
}

async fn fetch_chunks(State(app): State<Arc<App>>, h: HeaderMap, body: Body) -> ApiResult<Response> {
    app.authorize(&h, Scope::Pull, None, true)?;
    let body = read_body(body, MAX_BATCH * 32).await?;
    let ids = transfer::parse_chunk_ids(&body, MAX_BATCH)?;
    // Check presence first, so a missing chunk is a clean 404, not a cut stream.
    let store = app.store.clone();
    let probe = ids.clone();
    let missing = blocking(move || store.missing_chunks(&probe)).await?;
    if let Some(m) = missing.first() {
        return Err(Error::not_found(format!("{} requested chunks are not here (first: {m})", missing.len())).into());
    }
    let store = app.store.clone();
    let corrupt = app.corrupt;
    Ok(stream_body(app.stream_delay, "application/vnd.chunkstore.chunks.v1", move |w| {
        if corrupt {
            let mut v = Vec::new();
            store.write_chunk_batch(&ids, &mut v)?;
            if let Some(b) = v.last_mut() {
                *b ^= 0x55; // the last chunk's last byte
            }
            return w.write_all(&v).map_err(|e| Error::io("streaming", e));
        }
        store.write_chunk_batch(&ids, w)
    }))
}

async fn missing_chunks(State(app): State<Arc<App>>, h: HeaderMap, body: Body) -> ApiResult<Response> {
    app.authorize(&h, Scope::Push, None, false)?;
    let body = read_body(body, MAX_QUERY * 32).await?;
    let ids = transfer::parse_chunk_ids(&body, MAX_QUERY)?;
    let store = app.store.clone();
    let missing = blocking(move || store.missing_chunks(&ids)).await?;
    let out: Vec<u8> = missing.iter().flat_map(|c| *c.as_bytes()).collect();
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], out).into_response())
}

async fn upload_chunks(State(app): State<Arc<App>>, h: HeaderMap, body: Body) -> ApiResult<Response> {
    app.authorize(&h, Scope::Push, None, false)?;
    let body = read_body(body, MAX_UPLOAD).await?;
    let store = app.store.clone();
    let n = blocking(move || {
        let chunks = transfer::read_chunk_batch_any(&body[..])?;
        store.put_chunks(&chunks).map(|n| (chunks.len(), n))
    })
    .await?;
    Ok(Json(serde_json::json!({ "received": n.0, "stored": n.1 })).into_response())
}

async fn commit_layer(
    State(app): State<Arc<App>>,
    h: HeaderMap,
    Path(layer): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    app.authorize(&h, Scope::Push, None, false)?;
    let layer = layer_id(&layer)?;
    let body = read_body(body, MAX_UPLOAD).await?;
    let store = app.store.clone();
    let summary = blocking(move || {
        let bundle = RecipeBundle::decode(&body)?;
        if bundle.layer != layer {
            return Err(Error::invalid(format!("bundle is for layer {}, not {layer}", bundle.layer)));
        }
        store.commit_bundle(&bundle, &IngestOptions::default())
    })
    .await?;
    tracing::info!(layer = %summary.layer.id, new_chunks = summary.new_chunks, "layer committed");
    Ok(Json(summary).into_response())
}

#[derive(serde::Deserialize)]
struct DedupQuery {
    /// Resume: send the tarball from this byte on (see [`transfer::PREFIX_HEADER`]).
    #[serde(default)]
    offset: u64,
}

/// A `Write` that drops the first `left` bytes, hashing them, then passes the
/// rest on. The hash goes to `done` once the prefix is complete.
struct SkipPrefix<W> {
    inner: W,
    left: u64,
    hash: blake3::Hasher,
    done: Option<tokio::sync::oneshot::Sender<String>>,
}

impl<W: Write> SkipPrefix<W> {
    fn finish_prefix(&mut self) {
        if self.left == 0 {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(self.hash.finalize().to_hex().to_string());
            }
        }
    }
}

impl<W: Write> Write for SkipPrefix<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let skip = (self.left.min(b.len() as u64)) as usize;
        if skip > 0 {
            self.hash.update(&b[..skip]);
            self.left -= skip as u64;
            self.finish_prefix();
        }
        self.inner.write_all(&b[skip..])?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

async fn dedup_tar(
    State(app): State<Arc<App>>,
    h: HeaderMap,
    Path((client, layer)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<DedupQuery>,
) -> ApiResult<Response> {
    let client = client_id(&client)?;
    app.authorize(&h, Scope::Pull, Some(&client), false)?;
    let layer = layer_id(&layer)?;
    let store = app.store.clone();
    let c = client.clone();
    let (diff, info) = blocking(move || {
        if store.client(&c).is_err() {
            store.add_client(&c)?;
        }
        Ok((store.diff_with(&c, &layer, DiffOptions { deltas: true })?, store.layer(&layer)?))
    })
    .await?;
    let store = app.store.clone();
    let (prefix_tx, prefix_rx) = tokio::sync::oneshot::channel();
    let offset = q.offset;
    let mut response = stream_body(app.stream_delay, "application/vnd.chunkstore.dedup-tar.v1+zstd", move |w| {
        // The tarball is the same for the same diff (zstdmt output does not
        // depend on timing or thread count), so a resume regenerates it and
        // leaves out what the edge already has.
        let mut w = SkipPrefix { inner: w, left: offset, hash: blake3::Hasher::new(), done: Some(prefix_tx) };
        w.finish_prefix();
        store.write_dedup_tar(&diff, &mut w).map(|_| ())
    });
    blob_headers(&mut response, info.as_ref());
    if offset > 0 {
        // The stream ended (or failed) before the offset: nothing to resume from.
        let prefix = prefix_rx.await.map_err(|_| {
            ApiError(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BAD_OFFSET",
                format!(
                    "cannot regenerate the first {offset} bytes of the dedup tarball of {layer} for {client} \
                     (it is shorter, or failed: see the hub's log)"
                ),
            )
        })?;
        let v = header::HeaderValue::from_str(&prefix).expect("hex is a valid header value");
        response.headers_mut().insert(transfer::PREFIX_HEADER, v);
    }
    Ok(response)
}

#[derive(serde::Deserialize)]
struct LayersBody {
    layers: Vec<String>,
}

async fn ack(
    State(app): State<Arc<App>>,
    h: HeaderMap,
    Path(client): Path<String>,
    Json(b): Json<LayersBody>,
) -> ApiResult<Response> {
    update_possession(&app, &h, &client, &b, |store, client, layers| {
        if store.client(client).is_err() {
            store.add_client(client)?;
        }
        store.hold(client, &layers)
    })
    .await
}

async fn report_possession(
    State(app): State<Arc<App>>,
    h: HeaderMap,
    Path(client): Path<String>,
    Json(b): Json<LayersBody>,
) -> ApiResult<Response> {
    update_possession(&app, &h, &client, &b, |store, client, layers| {
        // Layers the hub does not know cannot be counted; keep the rest.
        let known: Vec<LayerId> = layers.into_iter().filter(|l| matches!(store.layer(l), Ok(Some(_)))).collect();
        store.set_possession(client, &known)
    })
    .await
}

/// A possession write for `client` (pull scope): `update` runs on a blocking
/// thread with the body's layers; the reply is the client's record after it.
async fn update_possession(
    app: &Arc<App>,
    h: &HeaderMap,
    client: &str,
    b: &LayersBody,
    update: impl FnOnce(&Store, &ClientId, Vec<LayerId>) -> crate::Result<()> + Send + 'static,
) -> ApiResult<Response> {
    let client = client_id(client)?;
    app.authorize(h, Scope::Pull, Some(&client), false)?;
    let layers = b.layers.iter().map(|l| layer_id(l)).collect::<ApiResult<Vec<_>>>()?;
    let store = app.store.clone();
    let info = blocking(move || {
        update(&store, &client, layers)?;
        store.client(&client)
    })
    .await?;
    Ok(Json(info).into_response())
}

/// Layers a client has evicted (its own pull token, or admin).
async fn drop_layers(
    State(app): State<Arc<App>>,
    h: HeaderMap,
    Path(client): Path<String>,
    Json(b): Json<LayersBody>,
) -> ApiResult<Response> {
    update_possession(&app, &h, &client, &b, |store, client, layers| store.evict(client, &layers)).await
}

async fn list_clients(State(app): State<Arc<App>>, h: HeaderMap) -> ApiResult<Response> {
    app.authorize(&h, Scope::Admin, None, false)?;
    let store = app.store.clone();
    Ok(Json(blocking(move || store.clients()).await?).into_response())
}

/// Register a client holding nothing (admin); `409` if it exists.
async fn add_client(State(app): State<Arc<App>>, h: HeaderMap, Path(client): Path<String>) -> ApiResult<Response> {
    let client = client_id(&client)?;
    app.authorize(&h, Scope::Admin, Some(&client), false)?;
    let store = app.store.clone();
    let info = blocking(move || {
        store.add_client(&client)?;
        store.client(&client)
    })
    .await?;
    tracing::info!(client = %info.name, "client added");
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// Forget a client and its possession map (admin).
async fn remove_client(State(app): State<Arc<App>>, h: HeaderMap, Path(client): Path<String>) -> ApiResult<Response> {
    let client = client_id(&client)?;
    app.authorize(&h, Scope::Admin, Some(&client), false)?;
    let store = app.store.clone();
    let c = client.clone();
    blocking(move || store.remove_client(&c)).await?;
    tracing::info!(%client, "client removed");
    Ok(Json(serde_json::json!({ "removed": client })).into_response())
}

async fn get_client(State(app): State<Arc<App>>, h: HeaderMap, Path(client): Path<String>) -> ApiResult<Response> {
    let client = client_id(&client)?;
    app.authorize(&h, Scope::Pull, Some(&client), false)?;
    let store = app.store.clone();
    Ok(Json(blocking(move || store.client(&client)).await?).into_response())
}

/// The API's routes over a store.
pub fn router(store: Arc<Store>, opts: ServeOptions) -> crate::Result<Router> {
    let tokens = store.token_verifier()?;
    let corrupt = std::env::var("CHUNKSTORE_TEST_CORRUPT_CHUNKS").is_ok_and(|v| v == "1");
    let timeout = opts.timeout;
    let stream_delay =
        std::env::var("CHUNKSTORE_TEST_STREAM_DELAY_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis);
    let app = Arc::new(App { store, tokens, opts, corrupt, stream_delay });
    let api = Router::new()
        .route("/", get(root))
        .route("/layers", get(list_layers))
        .route("/layers/{layer}/bundle", get(get_bundle))
        .route("/layers/{layer}/commit", post(commit_layer))
        .route("/chunks/fetch", post(fetch_chunks))
        .route("/chunks/missing", post(missing_chunks))
        .route("/chunks", post(upload_chunks))
        .route("/clients", get(list_clients))
        .route("/clients/{client}", get(get_client).put(add_client).delete(remove_client))
        .route("/clients/{client}/drop", post(drop_layers))
        .route("/clients/{client}/layers/{layer}/dedup", get(dedup_tar))
        .route("/clients/{client}/ack", post(ack))
        .route("/clients/{client}/possession", axum::routing::put(report_possession));
    Ok(Router::new()
        // A nested "/" matches only the bare prefix; the documented base is `/v2/_chunkstore/`.
        .route("/v2/_chunkstore/", get(root))
        .nest("/v2/_chunkstore", api)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint".into()) })
        // For the JSON bodies extractors read (layer lists), before the token
        // is checked; the binary bodies are read after it (`read_body`).
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
        .layer(axum::middleware::map_response(json_errors))
        .layer(
            // One INFO line per request (method, path, status, latency); the defaults log at DEBUG.
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO))
                .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .with_state(app))
}

/// Serve until SIGTERM or Ctrl-C, then finish in-flight requests.
/// `on_ready` is told the bound address (useful with port 0).
pub fn serve(
    store: Arc<Store>,
    addr: SocketAddr,
    opts: ServeOptions,
    on_ready: impl FnOnce(SocketAddr),
) -> crate::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the runtime", e))?;
    rt.block_on(async move {
        let tls = opts.tls.clone();
        let app = router(store, opts)?;
        match tls {
            None => {
                let listener =
                    tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::io(format!("binding {addr}"), e))?;
                let local = listener.local_addr().map_err(|e| Error::io("local address", e))?;
                tracing::info!(%local, "listening");
                on_ready(local);
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown_signal())
                    .await
                    .map_err(|e| Error::io("serving", e))?;
            }
            Some(files) => serve_tls(app, addr, &files, on_ready).await?,
        }
        tracing::info!("shut down");
        Ok(())
    })
}

/// [`serve`] over HTTPS (rustls, with ring as its crypto provider).
async fn serve_tls(
    app: Router,
    addr: SocketAddr,
    files: &TlsFiles,
    on_ready: impl FnOnce(SocketAddr),
) -> crate::Result<()> {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key).await.map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("loading the TLS certificate {} and key {}: {e}", files.cert.display(), files.key.display()),
        )
    })?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| Error::io(format!("binding {addr}"), e))?;
    listener.set_nonblocking(true).map_err(|e| Error::io("listening", e))?;
    let local = listener.local_addr().map_err(|e| Error::io("local address", e))?;
    let handle = axum_server::Handle::new();
    let stop = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        // In-flight requests get as long as one may take to start answering.
        stop.graceful_shutdown(None);
    });
    tracing::info!(%local, "listening (TLS)");
    on_ready(local);
    axum_server::from_tcp_rustls(listener, config)
        .map_err(|e| Error::io("listening", e))?
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .map_err(|e| Error::io("serving", e))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
