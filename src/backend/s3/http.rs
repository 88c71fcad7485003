//! The S3 backend's HTTP client for plain `http://` endpoints.

use std::future::Future;
use std::time::Duration;

/// The HTTP client for plain `http://` endpoints: hyper without TLS, so a
/// process does not pay for loading the system's root certificates
/// (~45 ms, which a one-shot command such as `export` feels).
#[derive(Debug)]
pub(super) struct PlainHttp {
    /// Longest one request may take, body included.
    pub timeout: Duration,
}

type HyperClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    object_store::client::HttpRequestBody,
>;

#[derive(Debug)]
struct PlainHttpService(HyperClient, Duration);

impl object_store::client::HttpConnector for PlainHttp {
    fn connect(&self, _: &object_store::ClientOptions) -> object_store::Result<object_store::client::HttpClient> {
        let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        Ok(object_store::client::HttpClient::new(PlainHttpService(client, self.timeout)))
    }
}

#[async_trait::async_trait]
impl object_store::client::HttpService for PlainHttpService {
    async fn call(
        &self,
        req: object_store::client::HttpRequest,
    ) -> std::result::Result<object_store::client::HttpResponse, object_store::client::HttpError> {
        use http_body_util::BodyExt;
        use object_store::client::{HttpError, HttpErrorKind, HttpResponseBody};
        let deadline = tokio::time::Instant::now() + self.1;
        let res = match tokio::time::timeout_at(deadline, self.0.request(req)).await {
            Err(e) => return Err(HttpError::new(HttpErrorKind::Timeout, e)),
            Ok(Err(e)) => {
                let kind = if e.is_connect() { HttpErrorKind::Connect } else { HttpErrorKind::Request };
                return Err(HttpError::new(kind, e));
            }
            Ok(Ok(r)) => r,
        };
        let (parts, body) = res.into_parts();
        let body = body.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e));
        // The body streams after the headers: it keeps to the same deadline.
        let body = HttpResponseBody::new(Deadline { inner: body, sleep: Box::pin(tokio::time::sleep_until(deadline)) });
        Ok(object_store::client::HttpResponse::from_parts(parts, body))
    }
}

/// A response body that fails once its request's deadline has passed, so a
/// server that sends headers and then stalls does not hang the reader.
struct Deadline<B> {
    inner: B,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body<Data = bytes::Bytes, Error = object_store::client::HttpError> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = object_store::client::HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use object_store::client::{HttpError, HttpErrorKind};
        if self.sleep.as_mut().poll(cx).is_ready() {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "the response body did not arrive in time");
            return std::task::Poll::Ready(Some(Err(HttpError::new(HttpErrorKind::Timeout, e))));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
