//! Upstream clients: one shared HTTP client, and per provider the request it
//! sends. This is the only module that speaks HTTP to upstreams.

pub mod anthropic;
pub mod gemini;
pub mod openai;
mod pool;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::net::TcpStream;

use crate::config::Timeouts;
use crate::routing::Failure;
use crate::secret::Secret;

/// A request ready to send upstream.
#[derive(Debug)]
pub struct Request {
    pub url: String,
    pub headers: Headers,
    pub body: Payload,
}

/// A request's authentication, version and the credential's extra
/// headers; the secret ones marked sensitive (`Debug` shows them as such).
#[derive(Debug, Default)]
pub struct Headers {
    list: Vec<(http::HeaderName, http::HeaderValue)>,
    /// A header the operator wrote that HTTP cannot carry: the credential
    /// cannot be reached as configured.
    unsendable: bool,
}

impl Headers {
    /// The credential's extra headers (`headers` column), sent with every request.
    fn of(credential: &crate::catalog::Credential) -> Self {
        let mut h = Headers {
            list: Vec::with_capacity(credential.headers.len() + 2),
            unsendable: false,
        };
        for (name, value) in &credential.headers {
            h.add(name, value);
        }
        h
    }

    fn add(&mut self, name: &str, value: &str) {
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => self.list.push((name, value)),
            _ => self.unsendable = true,
        }
    }

    /// Whether a header of that name is there (names are case-blind).
    fn has(&self, name: &str) -> bool {
        self.list
            .iter()
            .any(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
    }

    /// `name: {prefix}{secret}`, marked sensitive.
    fn secret(&mut self, name: http::HeaderName, prefix: &str, secret: &str) {
        let mut text = Vec::with_capacity(prefix.len() + secret.len());
        text.extend_from_slice(prefix.as_bytes());
        text.extend_from_slice(secret.as_bytes());
        match http::HeaderValue::from_maybe_shared(Bytes::from(text)) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.list.push((name, value));
            }
            Err(_) => self.unsendable = true,
        }
    }
}

/// A request body in pieces, written one after the other: a body passed
/// through goes out as the pieces of the client's own text, not a copy.
#[derive(Debug, Default)]
pub struct Payload {
    chunks: std::collections::VecDeque<Bytes>,
    /// The bytes not yet written.
    left: u64,
}

impl From<Vec<Bytes>> for Payload {
    fn from(chunks: Vec<Bytes>) -> Self {
        let left = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            chunks: chunks.into(),
            left,
        }
    }
}

impl From<Bytes> for Payload {
    fn from(body: Bytes) -> Self {
        Payload::from(vec![body])
    }
}

impl From<Vec<u8>> for Payload {
    fn from(body: Vec<u8>) -> Self {
        Payload::from(Bytes::from(body))
    }
}

impl hyper::body::Body for Payload {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.left -= chunk.len() as u64;
        }
        Poll::Ready(next.map(|c| Ok(hyper::body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// How upstream connections reach the internet: directly, or through the
/// proxies named by `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`
/// (lower-case names too). Proxy URLs may carry a password: secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    pub all: Option<Secret>,
    pub http: Option<Secret>,
    pub https: Option<Secret>,
    pub no: Option<String>,
}

impl Proxies {
    fn matcher(&self) -> Option<Matcher> {
        if self.all.is_none() && self.http.is_none() && self.https.is_none() {
            return None;
        }
        let url = |s: &Option<Secret>| {
            s.as_ref()
                .map(|s| s.expose().to_string())
                .unwrap_or_default()
        };
        Some(
            Matcher::builder()
                .all(url(&self.all))
                .http(url(&self.http))
                .https(url(&self.https))
                .no(self.no.clone().unwrap_or_default())
                .build(),
        )
    }
}

type Connector = Timed<HttpsConnector<Connect>>;

/// The shared HTTP client (HTTP/1.1, or HTTP/2 where TLS negotiates it), with
/// connect, first-byte and idle timeouts, and the connections it keeps.
#[derive(Clone)]
pub struct Upstream {
    connector: Connector,
    pool: Arc<pool::Pool>,
    first_byte: Duration,
    idle: Duration,
}

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("SSL_CERT_FILE {path}: {reason}")]
    Roots { path: String, reason: String },
    #[error("TLS settings: {0}")]
    Tls(String),
}

/// The certificates TLS upstreams are verified against: the Mozilla set
/// built into the binary, plus the PEM file `extra` names (an internal CA,
/// or the one a TLS-inspecting proxy signs with).
fn roots(extra: Option<&Path>) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let Some(path) = extra else {
        return Ok(roots);
    };
    let failed = |reason: String| ClientError::Roots {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| failed(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    // System bundles hold a few certificates WebPKI cannot use; they are
    // skipped, as other TLS clients do, but a file with none usable is wrong.
    let (added, skipped) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(failed("no usable PEM certificate in the file".into()));
    }
    if skipped > 0 {
        tracing::warn!(path = %path.display(), skipped, "certificates skipped from SSL_CERT_FILE");
    }
    Ok(roots)
}

impl Upstream {
    pub fn new(
        timeouts: &Timeouts,
        proxies: &Proxies,
        extra_roots: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        // Per address tried (the whole of it is also bounded by `Timed`):
        // a host with a dead first address still gets to its next one.
        http.set_connect_timeout(Some(timeouts.connect));
        let connect = Connect {
            direct: http,
            proxies: proxies.matcher().map(Arc::new),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots(extra_roots)?)
        .with_no_client_auth();
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connect);
        let connector = Timed {
            inner: tls,
            limit: timeouts.connect,
        };
        Ok(Self {
            connector,
            pool: Arc::default(),
            first_byte: timeouts.first_byte,
            idle: timeouts.idle,
        })
    }

    /// Sends a POST and waits for the response headers.
    pub async fn post(&self, request: Request) -> Result<Response, Failure> {
        if request.headers.unsendable {
            return Err(Failure::Connect);
        }
        match tokio::time::timeout(self.first_byte, self.send(request)).await {
            Err(_) => Err(Failure::Timeout),
            Ok(sent) => sent,
        }
    }

    async fn send(&self, request: Request) -> Result<Response, Failure> {
        let Request { url, headers, body } = request;
        // A URL the operator wrote that HTTP cannot carry: this credential
        // cannot be reached as configured.
        let origin = self.pool.origin(origin_of(&url).ok_or(Failure::Connect)?);
        let target = origin.target(&url).ok_or(Failure::Connect)?;
        let host = origin.host.clone().ok_or(Failure::Connect)?;
        let mut request = http::Request::new(body);
        *request.method_mut() = http::Method::POST;
        let fixed = request.headers_mut();
        fixed.reserve(headers.list.len() + 3);
        fixed.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        fixed.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(USER_AGENT),
        );
        for (name, value) in headers.list {
            fixed.append(name, value);
        }
        // A connection the upstream closed while it was idle fails the
        // request before any of it is sent, and hands it back: it goes on
        // another connection (at worst a new one).
        loop {
            let now = std::time::Instant::now();
            let (taken, reused) = match origin.take(now) {
                Some(taken) => (taken, true),
                // Boxed: opening a connection (TLS, a proxy's tunnel) is a large
                // future, and rare; the request's own future stays small.
                None => (
                    Box::pin(self.connect(&target.absolute, &origin)).await?,
                    false,
                ),
            };
            let sent = match taken {
                pool::Taken::H2(mut sender) => {
                    *request.uri_mut() = target.absolute.clone();
                    request.headers_mut().remove(http::header::HOST);
                    sender.try_send_request(request).await.map(|r| (r, None))
                }
                pool::Taken::H1(mut sender) => {
                    *request.uri_mut() = target.origin_form.clone();
                    request
                        .headers_mut()
                        .insert(http::header::HOST, host.clone());
                    let sent = sender.try_send_request(request).await;
                    sent.map(|r| {
                        let lease = pool::Lease::new(self.pool.clone(), origin.clone(), sender);
                        (r, Some(lease))
                    })
                }
            };
            match sent {
                Ok((inner, lease)) => {
                    return Ok(Response {
                        status: inner.status().as_u16(),
                        inner,
                        idle: self.idle,
                        lease,
                    });
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => request = back,
                    _ => return Err(Failure::Reset),
                },
            }
        }
    }

    /// A new connection to `uri`'s origin: HTTP/2 when TLS negotiated it
    /// (then shared by every later request), HTTP/1.1 otherwise.
    async fn connect(&self, uri: &Uri, origin: &pool::Origin) -> Result<pool::Taken, Failure> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx))
            .await
            .map_err(|_| Failure::Connect)?;
        let io = tower_service::Service::call(&mut connector, uri.clone())
            .await
            .map_err(|_| Failure::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|_| Failure::Connect)?;
            drive(conn);
            origin.share(sender.clone());
            return Ok(pool::Taken::H2(sender));
        }
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|_| Failure::Connect)?;
        drive(conn);
        Ok(pool::Taken::H1(sender))
    }
}

/// Runs hyper's side of an upstream connection until it closes or its last
/// sender is dropped: nothing at shutdown waits for it, as nothing waited
/// for the ones hyper-util's client spawned.
#[allow(clippy::disallowed_methods)]
fn drive<C>(conn: C)
where
    C: Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "an upstream connection failed");
        }
    });
}

/// `scheme://authority` of an absolute URL: the key its connections are
/// kept under.
fn origin_of(url: &str) -> Option<&str> {
    let start = url.find("://")? + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    (end > start).then(|| &url[..end])
}

const USER_AGENT: &str = concat!("switchyard/", env!("CARGO_PKG_VERSION"));

/// The connect timeout over everything that opens a connection: TCP, a
/// proxy's tunnel, the TLS handshake.
#[derive(Clone)]
struct Timed<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower_service::Service<Uri> for Timed<C>
where
    C: tower_service::Service<Uri>,
    C::Response: Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err("connecting timed out".into()),
            }
        })
    }
}

/// Opens TCP connections: directly, or through a proxy's `CONNECT` tunnel.
#[derive(Clone)]
struct Connect {
    direct: HttpConnector,
    proxies: Option<Arc<Matcher>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connect {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut direct = self.direct.clone();
        let Some(proxy) = self.proxies.as_ref().and_then(|m| m.intercept(&dst)) else {
            return Box::pin(async move { direct.call(dst).await.map_err(Into::into) });
        };
        let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
        if let Some(auth) = proxy.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        // The tunnel's far end: the target's own port, 80 for plain http.
        let port = dst.port_u16().unwrap_or(match dst.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        let host = dst.host().unwrap_or_default().to_string();
        Box::pin(async move {
            let target: Uri = format!("{}://{host}:{port}", dst.scheme_str().unwrap_or("https"))
                .parse()
                .map_err(BoxError::from)?;
            tunnel.call(target).await.map_err(Into::into)
        })
    }
}

/// An upstream response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    inner: http::Response<Incoming>,
    idle: Duration,
    /// The HTTP/1.1 connection it came on, kept again once the body has
    /// been read to its end.
    lease: Option<pool::Lease>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether any header's name starts with one of `prefixes`: one pass
    /// over the headers before many lookups that would mostly miss.
    pub fn has_header_starting(&self, prefixes: &[&str]) -> bool {
        self.inner
            .headers()
            .keys()
            .any(|k| prefixes.iter().any(|p| k.as_str().starts_with(p)))
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// The next chunk of the body; `None` at its end. Fails when the upstream
    /// is silent for longer than the idle timeout or the connection breaks.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Failure> {
        loop {
            let frame = match tokio::time::timeout(self.idle, self.inner.body_mut().frame()).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(None) => {
                    if let Some(lease) = self.lease.take() {
                        lease.give_back();
                    }
                    return Ok(None);
                }
                Ok(Some(Err(_))) => return Err(Failure::Reset),
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers carry nothing a client of ours reads.
            if let Ok(data) = frame.into_data() {
                return Ok(Some(data));
            }
        }
    }

    /// The whole body, which must not be longer than `limit` bytes: a longer
    /// one is the upstream's failure, known from its declared length before
    /// anything is read when it has one.
    pub async fn read_whole(&mut self, limit: usize) -> Result<Vec<u8>, Failure> {
        let declared = self
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Failure::TooLarge);
        }
        if let Some(declared) = declared.and_then(|n| usize::try_from(n).ok()) {
            let mut out = Vec::with_capacity(declared);
            while let Some(chunk) = self.chunk().await? {
                if out.len() + chunk.len() > limit {
                    return Err(Failure::TooLarge);
                }
                out.extend_from_slice(&chunk);
            }
            return Ok(out);
        }
        // No length to go by: the chunks are kept as they came and joined
        // once at the end. A buffer grown by doubling would be copied at
        // each step, and an allocator that does not remap large blocks in
        // place holds the old and the new copy at once.
        let mut chunks = Vec::new();
        let mut total = 0usize;
        while let Some(chunk) = self.chunk().await? {
            total += chunk.len();
            if total > limit {
                return Err(Failure::TooLarge);
            }
            chunks.push(chunk);
        }
        let mut out = Vec::with_capacity(total);
        for chunk in chunks {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The first `limit` bytes of the body (the rest is dropped): enough of
    /// an error to classify it.
    pub async fn read_to_limit(&mut self, limit: usize) -> Result<Bytes, Failure> {
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out.freeze())
    }
}

/// `segment` escaped for one segment of a URL path: everything but RFC
/// 3986's unreserved characters is percent-encoded, so a name from data
/// (`../`, `?key=`, `#`, `%2F`) cannot change the path or query sent.
pub fn path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_data_stay_inside_their_path_segment() {
        assert_eq!(path_segment("gemini-2.5-flash"), "gemini-2.5-flash");
        assert_eq!(path_segment("../x?key=1#f"), "..%2Fx%3Fkey%3D1%23f");
        assert_eq!(path_segment("a%2Fb"), "a%252Fb");
        assert_eq!(path_segment("a b"), "a%20b");
    }

    #[test]
    fn headers_keep_secrets_out_of_debug_and_refuse_what_http_cannot_carry() {
        let mut cred = crate::catalog::tests::cred("c", 0, 1);
        cred.headers.insert("x-team".into(), "blue".into());
        let r = openai::chat_completions(&cred, Payload::default());
        assert!(!r.headers.unsendable);
        assert_eq!(r.url, "http://127.0.0.1:1/v1/chat/completions");
        let names: Vec<_> = r.headers.list.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-team", "authorization"]);
        assert_eq!(r.headers.list[1].1, "Bearer key-of-c");
        let shown = format!("{r:?}");
        assert!(!shown.contains("key-of-c"), "{shown}");

        cred.headers.insert("x-bad".into(), "line\nbreak".into());
        assert!(
            openai::chat_completions(&cred, Payload::default())
                .headers
                .unsendable
        );
    }

    #[test]
    fn extra_roots_must_be_a_readable_pem_file_with_a_certificate() {
        let builtin = roots(None).expect("the built-in set").len();
        assert!(builtin > 100, "{builtin}");

        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let err = roots(Some(&missing)).expect_err("a missing file");
        assert!(err.to_string().starts_with("SSL_CERT_FILE "), "{err}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let err = roots(Some(&junk)).expect_err("no certificate");
        assert!(
            err.to_string().contains("no usable PEM certificate"),
            "{err}"
        );
    }
}
