//! Packs and layer objects in an S3-compatible object store (AWS S3, Ceph
//! RADOS Gateway, SeaweedFS, MinIO, …) through the `object_store` crate.
//!
//! Layout under the URL's prefix:
//!
//! ```text
//! PREFIX/packs/<16 hex>.pack      sealed packs, written once (create-only puts)
//! PREFIX/layers/<64 hex>.layer    layer objects (record + recipes), replaced atomically
//! ```
//!
//! The engine is synchronous; this backend owns a small tokio runtime and
//! blocks on it. Reads go through a bounded in-memory cache of fixed-size
//! blocks of packs, filled by ranged GETs, with read-ahead when a pack is read
//! in order; many ranges of one pack are fetched concurrently, one request
//! per block. Transient errors are retried with exponential backoff (by
//! `object_store` for each HTTP request, and again here around each
//! operation); permanent ones (denied, not found, conflicts) are not.

use super::{check_range, layer_object_name, parse_layer_object_name, Backend, PackBytes};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{LayerId, PackId};
use bytes::Bytes;
use futures_util::stream::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart,
};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Tuning for [`S3Backend`]; the defaults suit a loopback or LAN endpoint.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Bytes of pack blocks kept in memory (at least a few blocks).
    pub cache_bytes: u64,
    /// Size of one cached block, and of one ranged GET.
    pub block_size: u64,
    /// Blocks fetched ahead when a pack is being read in order.
    pub readahead: u64,
    /// Packs larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Size of one part of a multipart upload (S3 wants at least 5 MiB).
    pub part_size: usize,
    /// Parts uploaded at once.
    pub part_concurrency: usize,
    /// Large packs uploaded in the background at once (ingest goes on
    /// meanwhile; a commit waits for them). 0: upload before returning.
    pub background_uploads: usize,
    /// Attempts of one operation on transient errors (each request is also
    /// retried by the client underneath).
    pub attempts: u32,
    /// First backoff between attempts; doubles each time.
    pub backoff: Duration,
    /// No new attempt once this long has passed since an operation first
    /// failed: a server that hangs fails the operation in minutes, not hours.
    pub give_up_after: Duration,
    /// Longest one HTTP request may take, body included (a part of a
    /// multipart upload is `part_size`; a ranged read `block_size`).
    pub request_timeout: Duration,
    /// Refuse every write and delete.
    pub read_only: bool,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            cache_bytes: 256 << 20,
            block_size: 4 << 20,
            readahead: 3,
            multipart_threshold: 32 << 20,
            part_size: 8 << 20,
            part_concurrency: 4,
            background_uploads: 2,
            attempts: 4,
            backoff: Duration::from_millis(200),
            give_up_after: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
            read_only: false,
        }
    }
}

/// The object-store backend. See the module docs for the bucket layout.
pub struct S3Backend {
    store: Arc<dyn ObjectStore>,
    /// Prefix inside the bucket, without leading or trailing `/` (may be empty).
    prefix: String,
    /// For messages: `s3://bucket/prefix`.
    display: String,
    opts: S3Options,
    rt: tokio::runtime::Runtime,
    cache: Arc<BlockCache>,
    sizes: Mutex<HashMap<PackId, u64>>,
    stats: Arc<S3Stats>,
    /// Large packs being uploaded in the background, oldest first.
    uploads: Mutex<std::collections::VecDeque<(PackId, Upload)>>,
    /// Background uploads that failed since the last `flush`.
    failed: Mutex<Vec<(PackId, Error)>>,
}

type Upload = tokio::task::JoinHandle<std::result::Result<(), String>>;

/// Request counters, for benchmarks and tests.
#[derive(Debug, Default)]
pub struct S3Stats {
    /// Ranged and whole GETs.
    pub gets: AtomicU64,
    /// PUTs (including multipart parts).
    pub puts: AtomicU64,
    /// Bytes received by GETs.
    pub get_bytes: AtomicU64,
    /// Operations retried after a transient error.
    pub retries: AtomicU64,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend").field("location", &self.display).field("opts", &self.opts).finish()
    }
}

/// Whether an error is worth another attempt: transport failures and server
/// errors are; a client error status (other than 408 and 429) is not.
fn transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::Generic { .. } => {
            let mut text = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                text.push_str(&s.to_string());
                src = s.source();
            }
            match text.find("status code: ").and_then(|i| text.get(i + 13..i + 16)).and_then(|c| c.parse::<u16>().ok())
            {
                Some(c) if (400..500).contains(&c) => c == 408 || c == 429,
                _ => true,
            }
        }
        E::JoinError { .. } => true,
        _ => false,
    }
}

fn convert(e: object_store::Error, what: &str) -> Error {
    use object_store::Error as E;
    let (kind, hint) = match &e {
        E::NotFound { .. } => (ErrorKind::NotFound, ""),
        E::AlreadyExists { .. } | E::Precondition { .. } => (ErrorKind::AlreadyExists, ""),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => (
            ErrorKind::Io,
            " (the object store refused the credentials: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's policy)",
        ),
        E::NotImplemented { .. } | E::NotSupported { .. } => {
            (ErrorKind::Config, " (the object store does not support conditional puts, which chunkstore needs)")
        }
        // rustls says "invalid peer certificate: UnknownIssuer" deep in the chain.
        _ if std::iter::successors(Some(&e as &dyn std::error::Error), |c| c.source())
            .any(|c| c.to_string().contains("peer certificate")) =>
        {
            (
            ErrorKind::Io,
                " (the endpoint's TLS certificate is not trusted: give its CA with ca_cert=PEM in the URL or CHUNKSTORE_CA_CERT)",
            )
        }
        _ => (ErrorKind::Io, ""),
    };
    Error::new(kind, format!("{what}{hint}")).with_source(e)
}

impl S3Backend {
    /// Open `s3://BUCKET/PREFIX?endpoint=URL&region=R&…`. Credentials and any
    /// setting the URL lacks come from the usual `AWS_*` environment variables.
    /// URL parameters: `endpoint`, `region`, `cache_mb`, `block_kb`,
    /// `readahead`, `multipart_mb`, `virtual_hosted` (`true`/`false`),
    /// `read_only` (`true`/`false`), `ca_cert` (a PEM file of CA certificates
    /// an `https` endpoint's certificate may chain to, beside the system's;
    /// default `$CHUNKSTORE_CA_CERT`), `timeout_s` (longest one request may
    /// take, default 60). The bucket must exist.
    pub fn open(url: &str, mut opts: S3Options) -> Result<Self> {
        // An https endpoint goes through reqwest's rustls, which needs a
        // process-wide crypto provider; an error only means one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let u = parse_url(url)?;
        let env: Vec<(String, String)> =
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
        let b = configure(&u, &mut opts, &env)?;
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
        };
        let store = b.with_retry(retry).build().map_err(|e| convert(e, &format!("configuring {url}")))?;
        Self::with_store(Arc::new(store), &u.bucket, &u.prefix, opts)
    }

    /// Use any `object_store` (in-memory, local, S3, a test wrapper) with
    /// `prefix` as the root; `bucket` is only for messages.
    pub fn with_store(store: Arc<dyn ObjectStore>, bucket: &str, prefix: &str, opts: S3Options) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chunkstore-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the object-store runtime", e))?;
        let prefix = prefix.trim_matches('/').to_string();
        let display = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        let blocks = (opts.cache_bytes / opts.block_size.max(1)).max(4);
        Ok(S3Backend {
            store,
            prefix,
            display,
            cache: Arc::new(BlockCache::new(blocks as usize)),
            opts,
            rt,
            sizes: Mutex::new(HashMap::new()),
            stats: Arc::new(S3Stats::default()),
            uploads: Mutex::new(Default::default()),
            failed: Mutex::new(Vec::new()),
        })
    }

    /// Request counters since this backend was opened.
    pub fn stats(&self) -> &S3Stats {
        &self.stats
    }

    /// `s3://bucket/prefix`.
    pub fn location(&self) -> &str {
        &self.display
    }

    fn key(&self, rel: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn pack_key(&self, id: PackId) -> ObjPath {
        self.key(&format!("packs/{}", id.file_name()))
    }

    fn layer_key(&self, id: &LayerId) -> ObjPath {
        self.key(&format!("layers/{}", layer_object_name(id)))
    }

    fn put_layer_bytes(&self, id: &LayerId, data: Bytes) -> Result<()> {
        self.check_writable("storing a layer object")?;
        let (store, key, stats) = (self.store.clone(), self.layer_key(id), self.stats.clone());
        self.retry(&format!("uploading layer object {id}"), move |_| {
            let (store, key, data, stats) = (store.clone(), key.clone(), data.clone(), stats.clone());
            async move {
                stats.puts.fetch_add(1, Ordering::Relaxed);
                store.put(&key, PutPayload::from_bytes(data)).await.map(|_| ())
            }
        })
    }

    /// A layer object over `multipart_threshold` (~140 bytes a small file:
    /// a layer of 2,000,000 files has a 280 MB object) goes up in parts as it
    /// is read, so an ingest holds `part_concurrency` parts, not the object.
    /// S3 shows the object only once the upload completes: all or nothing.
    /// The source is read once, so only the client's retries of each request
    /// apply, not [`S3Options::attempts`] of the whole upload.
    fn put_layer_in_parts(&self, id: &LayerId, len: u64, object: &mut dyn std::io::Read) -> Result<()> {
        self.check_writable("storing a layer object")?;
        let what = format!("uploading layer object {id} ({})", self.display);
        let (store, key, stats) = (self.store.clone(), self.layer_key(id), self.stats.clone());
        let (part, conc) = (self.opts.part_size.max(5 << 20), self.opts.part_concurrency.max(1));
        let start =
            async move { store.put_multipart(&key).await.map(|u| WriteMultipart::new_with_chunk_size(u, part)) };
        let mut w = self.block(start).map_err(|e| convert(e, &what))?;
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; part.min(usize::try_from(left).unwrap_or(usize::MAX))];
            if let Err(e) = object.read_exact(&mut buf) {
                self.block(async move { w.abort().await.ok() });
                return Err(Error::io(format!("reading layer object {id} to store it"), e));
            }
            left -= buf.len() as u64;
            let stats = stats.clone();
            w = self
                .block(async move {
                    if let Err(e) = w.wait_for_capacity(conc).await {
                        let _ = w.abort().await;
                        return Err(e);
                    }
                    stats.puts.fetch_add(1, Ordering::Relaxed);
                    w.put(Bytes::from(buf));
                    Ok(w)
                })
                .map_err(|e| convert(e, &what))?;
        }
        self.block(async move { w.finish().await.map(|_| ()) }).map_err(|e| convert(e, &what))
    }

    /// Run a future on the private runtime and wait for it. Works from any
    /// thread, including one of another runtime's blocking pool.
    fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("the object-store runtime dropped a task")
    }

    /// Attempts, first backoff and time limit of [`with_retries`].
    fn retry_policy(&self) -> (u32, Duration, Duration) {
        (self.opts.attempts, self.opts.backoff, self.opts.give_up_after)
    }

    /// Run `op` until it succeeds, fails permanently, or runs out of attempts.
    fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(u32) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, object_store::Error>> + Send + 'static,
    {
        let fut = with_retries(self.retry_policy(), self.stats.clone(), op);
        self.block(fut).map_err(|e| convert(e, &format!("{what} ({})", self.display)))
    }

    /// Wait for a background upload; remember its failure for `flush`.
    fn join_upload(&self, id: PackId, h: Upload) {
        let r = match self.block(h) {
            Ok(r) => r,
            Err(e) => Err(format!("pack upload task failed: {e}")),
        };
        if let Err(m) = r {
            self.failed.lock().unwrap_or_else(|p| p.into_inner()).push((id, Error::new(ErrorKind::Io, m)));
        }
    }

    fn check_writable(&self, what: &str) -> Result<()> {
        if self.opts.read_only {
            return Err(Error::new(ErrorKind::Config, format!("{what}: {} is opened read-only", self.display)));
        }
        Ok(())
    }

    /// Create-only put of `data` at `key`. A retried attempt that meets
    /// "already exists" checks whether the object is ours (the first attempt
    /// may have succeeded with its answer lost).
    fn put_create(&self, key: ObjPath, data: Bytes, what: &str) -> Result<()> {
        let store = self.store.clone();
        let stats = self.stats.clone();
        self.retry(what, move |attempt| {
            let (store, key, data, stats) = (store.clone(), key.clone(), data.clone(), stats.clone());
            async move {
                stats.puts.fetch_add(1, Ordering::Relaxed);
                let opts = PutOptions::from(PutMode::Create);
                match store.put_opts(&key, PutPayload::from_bytes(data.clone()), opts).await {
                    Ok(_) => Ok(()),
                    Err(e @ object_store::Error::AlreadyExists { .. }) if attempt > 0 => {
                        let theirs = match store.get(&key).await {
                            Ok(r) => r.bytes().await.ok(),
                            Err(_) => None,
                        };
                        if theirs.as_ref() == Some(&data) {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        })
    }

    /// One block of a pack, from the cache or fetched (and shared with any
    /// concurrent reader of the same block).
    fn block_of(&self, id: PackId, k: u64) -> Result<Bytes> {
        let slot = match self.cache.lookup_or_claim(id, k) {
            Lookup::Ready(b) => return Ok(b),
            Lookup::Wait(slot) => slot,
            Lookup::Fetch(slot) => {
                let r = self.fetch_block_now(id, k);
                self.cache.complete(id, k, &slot, r.as_ref().map(|b| b.clone()).map_err(|e| e.to_string()));
                return r;
            }
        };
        slot.wait().map_err(|m| Error::new(ErrorKind::Io, format!("reading pack {id} block {k}: {m}")))
    }

    fn fetch_block_now(&self, id: PackId, k: u64) -> Result<Bytes> {
        let bs = self.opts.block_size;
        let (b, size) = self.retry(&format!("reading pack {id}"), {
            let (store, key, stats) = (self.store.clone(), self.pack_key(id), self.stats.clone());
            move |_| fetch_range(store.clone(), key.clone(), stats.clone(), k * bs..(k + 1) * bs)
        })?;
        self.sizes.lock().unwrap_or_else(|p| p.into_inner()).insert(id, size);
        Ok(b)
    }

    /// Start fetching blocks `ks` of a pack in the background (read-ahead).
    fn prefetch(&self, id: PackId, ks: impl Iterator<Item = u64>) {
        let bs = self.opts.block_size;
        for k in ks {
            let Lookup::Fetch(slot) = self.cache.lookup_or_claim(id, k) else { continue };
            let (store, key, stats, cache) =
                (self.store.clone(), self.pack_key(id), self.stats.clone(), self.cache.clone());
            let policy = self.retry_policy();
            self.rt.spawn(async move {
                // Retried as a read the caller makes itself would be: a
                // reader waits on this block.
                let op = |_| fetch_range(store.clone(), key.clone(), stats.clone(), k * bs..(k + 1) * bs);
                let r = with_retries(policy, stats.clone(), op).await;
                cache.complete(id, k, &slot, r.map(|(b, _)| b).map_err(|e| e.to_string()));
            });
        }
    }

    fn pack_size(&self, id: PackId) -> Option<u64> {
        self.sizes.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied()
    }

    /// Assemble `[offset, offset+len)` from cached blocks.
    fn range_from_blocks(&self, id: PackId, offset: u64, len: usize) -> Result<PackBytes> {
        let bs = self.opts.block_size;
        if len == 0 {
            return Ok(PackBytes::new(Arc::new(Bytes::new()), 0, 0));
        }
        let end = offset + len as u64;
        let (k0, k1) = (offset / bs, (end - 1) / bs);
        let first = self.block_of(id, k0)?;
        // Read ahead when the pack is being read in order.
        if self.opts.readahead > 0 && (k0 == 0 || self.cache.contains(id, k0 - 1)) {
            let last = self.pack_size(id).map_or(u64::MAX, |s| s.div_ceil(bs));
            self.prefetch(id, (k1 + 1..=k1 + self.opts.readahead).filter(|k| *k < last));
        }
        let size = self.pack_size(id).unwrap_or(k0 * bs + first.len() as u64);
        check_range(id, size as usize, offset, len)?;
        let s = (offset - k0 * bs) as usize;
        if k0 == k1 {
            return Ok(PackBytes::new(Arc::new(first), s, s + len));
        }
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&first[s..]);
        for k in k0 + 1..=k1 {
            let b = self.block_of(id, k)?;
            let want = len - v.len();
            v.extend_from_slice(&b[..want.min(b.len())]);
        }
        if v.len() != len {
            return Err(Error::corrupt(format!("pack {id}: range {offset}+{len} is past its end")));
        }
        Ok(PackBytes::new(Arc::new(v), 0, len))
    }

    fn list_names(&self, dir: &str) -> Result<Vec<String>> {
        let store = self.store.clone();
        let prefix = self.key(dir);
        self.retry(&format!("listing {dir}"), move |_| {
            let (store, prefix) = (store.clone(), prefix.clone());
            async move {
                let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
                Ok(metas.into_iter().filter_map(|m| m.location.filename().map(str::to_string)).collect())
            }
        })
    }
}

/// Run `op` until it succeeds, fails permanently, or runs out of attempts
/// or time (`give_up`), doubling the pause between attempts.
async fn with_retries<T, F, Fut>(
    (attempts, backoff, give_up): (u32, Duration, Duration),
    stats: Arc<S3Stats>,
    op: F,
) -> std::result::Result<T, object_store::Error>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = std::result::Result<T, object_store::Error>>,
{
    let attempts = attempts.max(1);
    let mut delay = backoff;
    let mut attempt = 0;
    // Counted from the first failure: a long upload that fails near its end
    // is still tried again.
    let mut failing_since = None;
    loop {
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e)
                if attempt + 1 < attempts
                    && transient(&e)
                    && failing_since.get_or_insert_with(std::time::Instant::now).elapsed() + delay < give_up =>
            {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("object store: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Upload the `len` bytes of `src` (a staged pack, unlinked) to `key` in
/// parts, `conc` at a time (replacing the claim marker). Each part is read
/// as it goes up, so an upload holds `conc` parts, not the pack (with two
/// packs in flight, up to 128 MiB of them before). The
/// reads are of a file just written, from the page cache: brief enough
/// for the runtime's thread.
async fn upload_multipart(
    store: Arc<dyn ObjectStore>,
    key: ObjPath,
    src: Arc<std::fs::File>,
    len: u64,
    stats: Arc<S3Stats>,
    part: usize,
    conc: usize,
) -> std::result::Result<(), object_store::Error> {
    let upload = store.put_multipart(&key).await?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, part);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(part as u64) as usize;
        let mut buf = vec![0u8; n];
        let read = std::os::unix::fs::FileExt::read_exact_at(&*src, &mut buf, off);
        let waited = match read {
            Ok(()) => w.wait_for_capacity(conc).await,
            Err(e) => Err(object_store::Error::Generic { store: "chunkstore", source: Box::new(e) }),
        };
        if let Err(e) = waited {
            let _ = w.abort().await;
            return Err(e);
        }
        stats.puts.fetch_add(1, Ordering::Relaxed);
        w.put(Bytes::from(buf));
        off += n as u64;
    }
    w.finish().await.map(|_| ())
}

async fn fetch_range(
    store: Arc<dyn ObjectStore>,
    key: ObjPath,
    stats: Arc<S3Stats>,
    range: std::ops::Range<u64>,
) -> std::result::Result<(Bytes, u64), object_store::Error> {
    stats.gets.fetch_add(1, Ordering::Relaxed);
    let r = store.get_opts(&key, GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() }).await?;
    let size = r.meta.size;
    let b = r.bytes().await?;
    stats.get_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
    Ok((b, size))
}

impl Backend for S3Backend {
    fn put_pack(&self, id: PackId, staged: &Path) -> Result<()> {
        self.check_writable("storing a pack")?;
        let io = |e| Error::io(format!("reading {}", staged.display()), e);
        let file = std::fs::File::open(staged).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let key = self.pack_key(id);
        let what = format!("uploading pack {id}");
        if len <= self.opts.multipart_threshold {
            let data = Bytes::from(std::fs::read(staged).map_err(io)?);
            self.put_create(key, data, &what)?;
        } else {
            // Multipart uploads cannot be create-only: claim the name first
            // with a create-only put of a small marker, then replace it.
            let mut claim = crate::pack::CLAIM_MAGIC.to_vec();
            let mut token = [0u8; 16];
            getrandom::getrandom(&mut token)
                .map_err(|e| Error::new(ErrorKind::Io, format!("drawing a random claim token: {e}")))?;
            claim.extend_from_slice(&token);
            self.put_create(key.clone(), Bytes::from(claim), &what)?;
            // The name is ours: the parts can go up while the ingest goes on.
            let max = self.opts.background_uploads;
            while self.uploads.lock().unwrap_or_else(|p| p.into_inner()).len() >= max.max(1) {
                let oldest = self.uploads.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                if let Some((p, h)) = oldest {
                    self.join_upload(p, h);
                }
            }
            let (store, stats) = (self.store.clone(), self.stats.clone());
            let (part, conc) = (self.opts.part_size.max(5 << 20), self.opts.part_concurrency.max(1));
            let (policy, src) = (self.retry_policy(), Arc::new(file));
            let display = self.display.clone();
            let task = self.rt.spawn(async move {
                let op = |_| upload_multipart(store.clone(), key.clone(), src.clone(), len, stats.clone(), part, conc);
                let r = with_retries(policy, stats.clone(), op).await;
                if let Err(e) = r {
                    // Leave no claim behind.
                    let _ = store.delete(&key).await;
                    return Err(convert(e, &format!("{what} ({display})")).to_string());
                }
                Ok(())
            });
            self.uploads.lock().unwrap_or_else(|p| p.into_inner()).push_back((id, task));
            self.sizes.lock().unwrap_or_else(|p| p.into_inner()).insert(id, len);
            // The upload reads it through its open handle.
            let _ = std::fs::remove_file(staged);
            if max == 0 {
                self.flush()?;
            }
            return Ok(());
        }
        self.sizes.lock().unwrap_or_else(|p| p.into_inner()).insert(id, len);
        let _ = std::fs::remove_file(staged);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        loop {
            let next = self.uploads.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            match next {
                Some((p, h)) => self.join_upload(p, h),
                None => break,
            }
        }
        let mut failed = std::mem::take(&mut *self.failed.lock().unwrap_or_else(|p| p.into_inner()));
        match failed.is_empty() {
            true => Ok(()),
            false => Err(failed.swap_remove(0).1),
        }
    }

    fn read_pack(&self, id: PackId, offset: u64, len: usize) -> Result<PackBytes> {
        self.range_from_blocks(id, offset, len)
    }

    fn read_pack_ranges(&self, id: PackId, ranges: &[(u64, usize)]) -> Result<Vec<PackBytes>> {
        // Fetch every block any range touches at once, then slice.
        let bs = self.opts.block_size;
        let mut ks: Vec<u64> =
            ranges.iter().filter(|(_, l)| *l > 0).flat_map(|&(o, l)| (o / bs)..=((o + l as u64 - 1) / bs)).collect();
        ks.sort_unstable();
        ks.dedup();
        self.prefetch(id, ks.into_iter());
        ranges.iter().map(|&(o, l)| self.range_from_blocks(id, o, l)).collect()
    }

    fn read_whole_pack(&self, id: PackId) -> Result<PackBytes> {
        let (store, key, stats) = (self.store.clone(), self.pack_key(id), self.stats.clone());
        let b = self.retry(&format!("reading pack {id}"), move |_| {
            let (store, key, stats) = (store.clone(), key.clone(), stats.clone());
            async move {
                stats.gets.fetch_add(1, Ordering::Relaxed);
                let b = store.get(&key).await?.bytes().await?;
                stats.get_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                Ok(b)
            }
        })?;
        self.sizes.lock().unwrap_or_else(|p| p.into_inner()).insert(id, b.len() as u64);
        let n = b.len();
        Ok(PackBytes::new(Arc::new(b), 0, n))
    }

    fn list_packs(&self) -> Result<Vec<PackId>> {
        let mut out: Vec<PackId> = self.list_names("packs")?.iter().filter_map(|n| PackId::from_file_name(n)).collect();
        out.sort();
        Ok(out)
    }

    fn pack_modified(&self, id: PackId) -> Result<Option<std::time::SystemTime>> {
        let (store, key) = (self.store.clone(), self.pack_key(id));
        match self.block(async move { store.head(&key).await }) {
            Ok(meta) => Ok(Some(meta.last_modified.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(convert(e, &format!("reading the time of pack {id}"))),
        }
    }

    fn delete_pack(&self, id: PackId) -> Result<()> {
        self.check_writable("deleting a pack")?;
        let pending = {
            let mut u = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
            u.iter().position(|(p, _)| *p == id).and_then(|i| u.remove(i))
        };
        if let Some((_, h)) = pending {
            // Let it finish first, or it could land after the delete.
            let _ = self.block(h);
        }
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).retain(|(p, _)| *p != id);
        self.cache.forget(id);
        self.sizes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let (store, key) = (self.store.clone(), self.pack_key(id));
        self.retry(&format!("deleting pack {id}"), move |_| {
            let (store, key) = (store.clone(), key.clone());
            async move {
                match store.delete(&key).await {
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    r => r,
                }
            }
        })
    }

    fn put_layer(&self, id: &LayerId, object: &[u8]) -> Result<()> {
        self.put_layer_bytes(id, Bytes::copy_from_slice(object))
    }

    fn put_layer_from(&self, id: &LayerId, len: u64, object: &mut dyn std::io::Read) -> Result<()> {
        if len <= self.opts.multipart_threshold {
            // One copy, into the upload's own buffer (the default reads, then put_layer copies).
            return self.put_layer_bytes(id, Bytes::from(super::read_object(id, len, object)?));
        }
        self.put_layer_in_parts(id, len, object)
    }

    fn get_layer(&self, id: &LayerId) -> Result<Vec<u8>> {
        let (store, key, stats) = (self.store.clone(), self.layer_key(id), self.stats.clone());
        let b = self.retry(&format!("reading layer object {id}"), move |_| {
            let (store, key, stats) = (store.clone(), key.clone(), stats.clone());
            async move {
                stats.gets.fetch_add(1, Ordering::Relaxed);
                store.get(&key).await?.bytes().await
            }
        })?;
        Ok(b.to_vec())
    }

    fn list_layers(&self) -> Result<Vec<LayerId>> {
        let mut out: Vec<LayerId> =
            self.list_names("layers")?.iter().filter_map(|n| parse_layer_object_name(n)).collect();
        out.sort();
        Ok(out)
    }

    fn delete_layer(&self, id: &LayerId) -> Result<()> {
        self.check_writable("deleting a layer object")?;
        let (store, key) = (self.store.clone(), self.layer_key(id));
        self.retry(&format!("deleting layer object {id}"), move |_| {
            let (store, key) = (store.clone(), key.clone());
            async move {
                match store.delete(&key).await {
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    r => r,
                }
            }
        })
    }

    fn is_shared(&self) -> bool {
        true
    }
}

mod cache;
use cache::{BlockCache, Lookup};
mod config;
use config::{configure, parse_url};
mod http;

#[cfg(test)]
mod tests;
