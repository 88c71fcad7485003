//! What an `s3://` URL and the environment ask of the S3 client.

use super::http::PlainHttp;
use super::S3Options;
use crate::error::{Error, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use std::path::PathBuf;
use std::time::Duration;

/// What an `s3://` URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct S3Url {
    pub bucket: String,
    pub prefix: String,
    pub params: Vec<(String, String)>,
}

pub(super) fn parse_url(url: &str) -> Result<S3Url> {
    let bad = |w: &str| Error::invalid(format!("{url:?} is not a valid s3:// URL: {w}"));
    let rest = url.strip_prefix("s3://").ok_or_else(|| bad("it must begin with s3://"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket name"));
    }
    let prefix = prefix.trim_matches('/').to_string();
    if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
        return Err(bad("the prefix has an empty, . or .. segment"));
    }
    let mut params = Vec::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        params.push((k.to_string(), percent_decode(v).ok_or_else(|| bad("bad %-escape in a parameter"))?));
    }
    Ok(S3Url { bucket: bucket.to_string(), prefix, params })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The client an `s3://` URL asks for (see [`super::S3Backend::open`]),
/// without its retry policy, given the process environment as `env` (its
/// UTF-8 variables); the URL's parameters may change `opts`.
pub(super) fn configure(u: &S3Url, opts: &mut S3Options, env: &[(String, String)]) -> Result<AmazonS3Builder> {
    let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    // The AWS_* variables `AmazonS3Builder::from_env` reads, and how: `with_aws_env`
    // puts back their client settings after a private CA replaced them all.
    let with_aws_env = |mut b: AmazonS3Builder, client_only: bool| {
        for (k, v) in env.iter().filter(|(k, _)| k.starts_with("AWS_")) {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                if !client_only || matches!(key, AmazonS3ConfigKey::Client(_)) {
                    b = b.with_config(key, v);
                }
            }
        }
        b
    };
    let mut b = with_aws_env(AmazonS3Builder::new(), false).with_bucket_name(&u.bucket);
    let mut endpoint = var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT"));
    let mut region = None;
    let mut ca_cert = var("CHUNKSTORE_CA_CERT").filter(|v| !v.is_empty()).map(PathBuf::from);
    let num = |k: &str, v: &str| -> Result<u64> {
        v.parse().map_err(|_| Error::invalid(format!("s3 URL parameter {k}={v:?} is not a number")))
    };
    let flag = |k: &str, v: &str| -> Result<bool> {
        match v {
            "" | "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" => Ok(false),
            _ => Err(Error::invalid(format!("s3 URL parameter {k}={v:?} is not true or false"))),
        }
    };
    for (k, v) in &u.params {
        match k.as_str() {
            "endpoint" => endpoint = Some(v.clone()),
            "region" => region = Some(v.clone()),
            "cache_mb" => opts.cache_bytes = num(k, v)? << 20,
            "block_kb" => opts.block_size = (num(k, v)? << 10).max(64 << 10),
            "readahead" => opts.readahead = num(k, v)?,
            "multipart_mb" => opts.multipart_threshold = num(k, v)? << 20,
            "virtual_hosted" => b = b.with_virtual_hosted_style_request(flag(k, v)?),
            "read_only" => opts.read_only = flag(k, v)?,
            "ca_cert" => ca_cert = Some(PathBuf::from(v)),
            "timeout_s" => opts.request_timeout = Duration::from_secs(num(k, v)?.max(1)),
            _ => return Err(Error::invalid(format!("unknown s3 URL parameter {k:?}"))),
        }
    }
    if let Some(ep) = &endpoint {
        b = b.with_endpoint(ep.trim_end_matches('/')).with_allow_http(ep.starts_with("http://"));
        if ep.starts_with("http://") {
            // No TLS: skip loading the system's root certificates (~0.1 s a process).
            b = b.with_http_connector(PlainHttp { timeout: opts.request_timeout });
        } else if let Some(path) = &ca_cert {
            // A private CA (an on-site Ceph or MinIO): trusted beside the system's roots.
            let pem = std::fs::read(path).map_err(|e| Error::io(format!("reading CA file {}", path.display()), e))?;
            let certs = object_store::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| Error::invalid(format!("{} holds no PEM certificate", path.display())))?;
            let client = certs.into_iter().fold(object_store::ClientOptions::new(), |o, c| o.with_root_certificate(c));
            // That replaces every client setting: put back those the AWS_* variables gave (a proxy, …).
            b = with_aws_env(b.with_client_options(client), true);
        }
    }
    // As a setting, so the client settings `from_env` read (a proxy, …) stay.
    let timeout = format!("{}s", opts.request_timeout.as_secs().max(1));
    b = b.with_config(AmazonS3ConfigKey::Client(object_store::ClientConfigKey::Timeout), timeout);
    let has_region = var("AWS_REGION").is_some() || var("AWS_DEFAULT_REGION").is_some();
    match region {
        Some(r) => b = b.with_region(r),
        None if !has_region => b = b.with_region("us-east-1"),
        None => {}
    }
    Ok(b)
}
