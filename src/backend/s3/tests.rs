use super::*;

#[test]
fn urls() {
    let u = parse_url("s3://b/a/b/?endpoint=http%3A%2F%2F127.0.0.1:7480&cache_mb=8").unwrap();
    assert_eq!(u.bucket, "b");
    assert_eq!(u.prefix, "a/b");
    assert_eq!(u.params[0], ("endpoint".into(), "http://127.0.0.1:7480".into()));
    assert_eq!(parse_url("s3://b").unwrap().prefix, "");
    assert!(parse_url("s3:///x").is_err());
    assert!(parse_url("s3://b/../x").is_err());
    assert!(parse_url("file:///x").is_err());
}

fn mem(opts: S3Options) -> S3Backend {
    S3Backend::with_store(Arc::new(object_store::memory::InMemory::new()), "test", "p", opts).unwrap()
}

#[test]
fn packs_round_trip_through_blocks() {
    let b = mem(S3Options { block_size: 64 << 10, cache_bytes: 256 << 10, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let staged = dir.path().join("x");
    std::fs::write(&staged, &data).unwrap();
    b.put_pack(PackId(1), &staged).unwrap();
    std::fs::write(&staged, &data).unwrap();
    assert_eq!(b.put_pack(PackId(1), &staged).unwrap_err().kind(), ErrorKind::AlreadyExists);
    for (o, l) in [(0u64, 10usize), (65_000, 2_000), (999_990, 10), (300_000, 200_000)] {
        assert_eq!(&*b.read_pack(PackId(1), o, l).unwrap(), &data[o as usize..o as usize + l]);
    }
    assert!(b.read_pack(PackId(1), 999_990, 11).is_err());
    let rs = b.read_pack_ranges(PackId(1), &[(5, 5), (700_000, 70_000), (0, 0)]).unwrap();
    assert_eq!(&*rs[1], &data[700_000..770_000]);
    assert_eq!(&*b.read_whole_pack(PackId(1)).unwrap(), &data[..]);
    assert_eq!(b.list_packs().unwrap(), vec![PackId(1)]);
    b.delete_pack(PackId(1)).unwrap();
    assert!(b.list_packs().unwrap().is_empty());
}

#[test]
fn large_packs_go_multipart_and_stay_create_only() {
    let b = mem(S3Options { multipart_threshold: 1 << 20, part_size: 5 << 20, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..12_000_000u32).map(|i| (i % 253) as u8).collect();
    let staged = dir.path().join("x");
    std::fs::write(&staged, &data).unwrap();
    b.put_pack(PackId(9), &staged).unwrap();
    b.flush().unwrap();
    assert_eq!(&*b.read_whole_pack(PackId(9)).unwrap(), &data[..]);
    std::fs::write(&staged, b"other").unwrap();
    assert_eq!(b.put_pack(PackId(9), &staged).unwrap_err().kind(), ErrorKind::AlreadyExists);
}

#[test]
fn layer_objects() {
    let b = mem(S3Options::default());
    let id = LayerId::from_bytes([3; 32]);
    b.put_layer(&id, b"one").unwrap();
    b.put_layer(&id, b"two").unwrap();
    assert_eq!(b.get_layer(&id).unwrap(), b"two");
    assert_eq!(b.list_layers().unwrap(), vec![id]);
    assert_eq!(b.get_layer(&LayerId::from_bytes([4; 32])).unwrap_err().kind(), ErrorKind::NotFound);
    b.delete_layer(&id).unwrap();
    assert!(b.list_layers().unwrap().is_empty());
    let ro = mem(S3Options { read_only: true, ..Default::default() });
    assert!(ro.put_layer(&id, b"x").is_err());
}

#[test]
fn large_layer_objects_go_up_in_parts_as_read() {
    let f = Flaky::new();
    let opts = S3Options { multipart_threshold: 1 << 20, part_size: 5 << 20, ..Default::default() };
    let b = S3Backend::with_store(f.clone(), "test", "p", opts).unwrap();
    let id = LayerId::from_bytes([5; 32]);
    let data: Vec<u8> = (0..12_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    b.put_layer_from(&id, data.len() as u64, &mut &data[..]).unwrap();
    assert!(b.get_layer(&id).unwrap() == data);
    let puts = b.stats().puts.load(Ordering::Relaxed);
    assert_eq!(puts, 3, "three parts of at most 5 MiB");
    // A source that ends short or fails, or a part that fails: an error,
    // and the object it was to replace stays whole.
    let other: Vec<u8> = data.iter().map(|b| b ^ 1).collect();
    let err = b.put_layer_from(&id, other.len() as u64 + 1, &mut &other[..]).unwrap_err();
    assert!(err.to_string().contains("reading layer object"), "{err}");
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("injected: spill file gone"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    assert!(b.put_layer_from(&id, 12_000_000, &mut Failing(6_000_000)).is_err());
    f.parts_ok.store(1, Ordering::SeqCst);
    let err = b.put_layer_from(&id, other.len() as u64, &mut &other[..]).unwrap_err();
    assert!(err.to_string().contains("uploading layer object"), "{err}");
    f.parts_ok.store(-1, Ordering::SeqCst);
    assert!(b.get_layer(&id).unwrap() == data, "the old object, whole");
    assert_eq!(b.list_layers().unwrap(), vec![id]);
}

/// An in-memory store whose puts fail on demand: `transient` more
/// failures that a retry gets past, or every put of a key containing
/// `deny` refused as a permanent error.
#[derive(Debug)]
struct Flaky {
    inner: object_store::memory::InMemory,
    transient: std::sync::atomic::AtomicI64,
    deny: Mutex<Option<String>>,
    /// Fail every part of a multipart upload after this many (an
    /// interrupted upload); negative: never.
    parts_ok: Arc<std::sync::atomic::AtomicI64>,
    /// Fail this many parts, then let the rest through (a retried upload).
    parts_failing: Arc<std::sync::atomic::AtomicI64>,
    /// Fail this many ranged reads of a pack past its first byte (reads
    /// ahead, among them) with a transient error.
    transient_reads: std::sync::atomic::AtomicI64,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flaky")
    }
}

impl Flaky {
    fn new() -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: object_store::memory::InMemory::new(),
            transient: 0.into(),
            deny: Mutex::new(None),
            parts_ok: Arc::new((-1).into()),
            parts_failing: Arc::new(0.into()),
            transient_reads: 0.into(),
        })
    }

    fn fail(&self, key: &object_store::path::Path) -> object_store::Result<()> {
        if let Some(d) = self.deny.lock().unwrap().as_deref() {
            if key.as_ref().contains(d) {
                return Err(object_store::Error::PermissionDenied {
                    path: key.to_string(),
                    source: "injected: access denied".into(),
                });
            }
        }
        if self.transient.fetch_sub(1, Ordering::SeqCst) > 0 {
            return Err(object_store::Error::Generic {
                store: "Flaky",
                source: "injected: Server returned non-2xx status code: 503 Service Unavailable".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug)]
struct FlakyUpload(
    Box<dyn object_store::MultipartUpload>,
    Arc<std::sync::atomic::AtomicI64>,
    Arc<std::sync::atomic::AtomicI64>,
);

#[async_trait::async_trait]
impl object_store::MultipartUpload for FlakyUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        let left = self.1.load(Ordering::SeqCst);
        if left >= 0 && self.1.fetch_sub(1, Ordering::SeqCst) <= 0 {
            self.1.store(0, Ordering::SeqCst);
            return Box::pin(async {
                Err(object_store::Error::Generic { store: "Flaky", source: "injected: connection reset".into() })
            });
        }
        if self.2.fetch_sub(1, Ordering::SeqCst) > 0 {
            return Box::pin(async {
                Err(object_store::Error::Generic { store: "Flaky", source: "injected: connection reset once".into() })
            });
        }
        self.0.put_part(data)
    }
    async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
        self.0.complete().await
    }
    async fn abort(&mut self) -> object_store::Result<()> {
        self.0.abort().await
    }
}

#[async_trait::async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.fail(location)?;
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.fail(location)?;
        let up = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FlakyUpload(up, self.parts_ok.clone(), self.parts_failing.clone())))
    }
    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> object_store::Result<object_store::GetResult> {
        let past_start = matches!(options.range, Some(object_store::GetRange::Bounded(ref r)) if r.start > 0);
        if location.as_ref().contains("packs/") && past_start && self.transient_reads.fetch_sub(1, Ordering::SeqCst) > 0
        {
            // Slowly, so that a reader is waiting for the block meanwhile.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(object_store::Error::Generic {
                store: "Flaky",
                source: "injected: Server returned non-2xx status code: 503 Service Unavailable".into(),
            });
        }
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: futures_util::stream::BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn flaky_store(f: &Arc<Flaky>, dir: &Path, multipart: u64) -> crate::Store {
    let opts = S3Options {
        backoff: Duration::from_millis(1),
        multipart_threshold: multipart,
        part_size: 5 << 20,
        ..Default::default()
    };
    let b = S3Backend::with_store(f.clone(), "test", "p", opts).unwrap();
    let so = crate::StoreOptions { backend: Some(Arc::new(b)), pack_size: 256 << 10, ..Default::default() };
    crate::Store::open_with(dir, so).unwrap()
}

fn layer_tar(seed: u64, n: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut x = seed | 1;
    let data: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append_data(&mut h, "f.bin", &data[..]).unwrap();
    b.into_inner().unwrap()
}

fn names(f: &Flaky) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let metas: Vec<_> = rt.block_on(f.inner.list(None).try_collect::<Vec<_>>()).unwrap();
    metas.into_iter().map(|m| m.location.to_string()).collect()
}

/// Ingest `tar` into `store`; it exports whole and the store verifies clean.
fn assert_round_trip(store: &crate::Store, tar: &[u8]) {
    let s = store.ingest(tar, &Default::default()).unwrap();
    let mut back = Vec::new();
    store.export(&s.layer.id, &mut back).unwrap();
    assert!(back == tar);
    assert!(store.verify(Default::default()).unwrap().is_clean());
}

#[test]
fn transient_errors_are_retried() {
    let f = Flaky::new();
    let dir = tempfile::tempdir().unwrap();
    let store = flaky_store(&f, dir.path(), 32 << 20);
    f.transient.store(2, Ordering::SeqCst);
    assert_round_trip(&store, &layer_tar(1, 600_000));
}

/// A multipart pack upload whose part fails is tried again from the staged
/// pack, which the upload reads through its handle after the file is gone.
#[test]
fn a_failed_part_is_uploaded_again_from_the_staged_pack() {
    let f = Flaky::new();
    let dir = tempfile::tempdir().unwrap();
    let store = flaky_store(&f, dir.path(), 64 << 10);
    f.parts_failing.store(2, Ordering::SeqCst);
    assert_round_trip(&store, &layer_tar(4, 600_000));
    assert!(f.parts_failing.load(Ordering::SeqCst) < 0, "the failures were met");
}

/// A read ahead that meets a transient error is retried like any read: a
/// reader waits on the block it fetches.
#[test]
fn reads_ahead_are_retried() {
    let f = Flaky::new();
    let dir = tempfile::tempdir().unwrap();
    let b = S3Backend::with_store(f.clone(), "test", "p", opts_reads()).unwrap();
    let so = crate::StoreOptions { backend: Some(Arc::new(b)), ..Default::default() };
    let store = crate::Store::open_with(dir.path(), so).unwrap();
    let tar = layer_tar(3, 600_000);
    let s = store.ingest(&tar[..], &Default::default()).unwrap();
    drop(store);
    // A new process's cache: every block is read from the bucket.
    let b = S3Backend::with_store(f.clone(), "test", "p", opts_reads()).unwrap();
    let so = crate::StoreOptions { backend: Some(Arc::new(b)), ..Default::default() };
    let store = crate::Store::open_with(dir.path(), so).unwrap();
    f.transient_reads.store(3, Ordering::SeqCst);
    let mut back = Vec::new();
    store.export(&s.layer.id, &mut back).unwrap();
    assert!(back == tar);
    assert!(f.transient_reads.load(Ordering::SeqCst) < 0, "every injected failure was met");
}

fn opts_reads() -> S3Options {
    S3Options { backoff: Duration::from_millis(1), block_size: 64 << 10, readahead: 3, ..Default::default() }
}

#[test]
fn permanent_errors_record_nothing() {
    let tar = layer_tar(2, 600_000);
    // A refused pack upload, a refused layer object, an interrupted multipart upload.
    for case in ["packs/", "layers/", "multipart"] {
        let f = Flaky::new();
        let dir = tempfile::tempdir().unwrap();
        let store = flaky_store(&f, dir.path(), if case == "multipart" { 64 << 10 } else { 32 << 20 });
        match case {
            "multipart" => f.parts_ok.store(0, Ordering::SeqCst),
            d => *f.deny.lock().unwrap() = Some(d.to_string()),
        }
        let e = store.ingest(&tar[..], &Default::default()).unwrap_err();
        let msg = e.to_string();
        if case != "multipart" {
            assert!(msg.contains("refused the credentials"), "{case}: {msg}");
        }
        assert!(store.layers().unwrap().is_empty(), "{case}");
        assert_eq!(store.stats().unwrap().chunks, 0, "{case}");
        let left = names(&f);
        assert!(left.is_empty(), "{case}: the bucket still holds {left:?}");
    }
}

/// A writer that commits a layer another writer of the bucket committed
/// first replaces its layer object, but keeps the blobs that one named.
#[test]
fn a_layer_committed_again_keeps_the_other_writers_blobs() {
    let bucket: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let open = |dir: &Path| {
        let b = S3Backend::with_store(bucket.clone(), "test", "p", S3Options::default()).unwrap();
        crate::Store::open_with(dir, crate::StoreOptions { backend: Some(Arc::new(b)), ..Default::default() }).unwrap()
    };
    let tar = layer_tar(5, 200_000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Another writer, whose index predates the first writer's commit,
    // ingests the same layer uncompressed.
    let other = open(b.path());
    let first = open(a.path()).ingest(&gz[..], &Default::default()).unwrap().layer;
    let blob = first.blob.expect("arrived compressed");
    let again = other.ingest(&tar[..], &Default::default()).unwrap();
    assert!(!again.already_present, "its own index did not hold it");
    assert_eq!(other.resolve_layer(&blob.to_string()).unwrap(), first.id);
    drop(other);
    // A third index rebuilt from the bucket alone finds the layer by that blob.
    let third = open(c.path());
    assert_eq!(third.resolve_layer(&blob.to_string()).unwrap(), first.id);
    assert!(third.verify(Default::default()).unwrap().is_clean());
}

/// A private CA (`ca_cert=`) replaces the client's TLS roots, not the other
/// client settings the AWS_* variables give, such as a proxy.
#[test]
fn a_private_ca_keeps_the_client_settings_from_the_environment() {
    use object_store::aws::AmazonS3ConfigKey;
    use object_store::ClientConfigKey;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["s3.example".to_string()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let env = [("AWS_PROXY_URL".to_string(), "http://proxy.example:3128".to_string())];
    let url = format!("s3://b?endpoint=https%3A%2F%2Fs3.example&ca_cert={}&timeout_s=7", ca.display());
    let b = configure(&parse_url(&url).unwrap(), &mut S3Options::default(), &env).unwrap();
    let client = |k| b.get_config_value(&AmazonS3ConfigKey::Client(k));
    assert_eq!(client(ClientConfigKey::ProxyUrl).as_deref(), Some("http://proxy.example:3128"));
    assert_eq!(client(ClientConfigKey::Timeout).as_deref(), Some("7s"));
}
