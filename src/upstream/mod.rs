//! Upstream clients: one shared HTTP client, and per provider the request it
//! sends. This is the only module that speaks reqwest.

pub mod anthropic;
pub mod gemini;
pub mod openai;

use std::time::Duration;

use bytes::Bytes;

use crate::config::Timeouts;
use crate::routing::Failure;

/// A request ready to send upstream.
#[derive(Debug)]
pub struct Request {
    pub url: String,
    /// Authentication, version and the credential's extra headers. Values may
    /// be secrets: never log them.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The credential's extra headers (`headers` column), sent with every request.
fn extra_headers(credential: &crate::catalog::Credential) -> Vec<(String, String)> {
    credential
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The shared HTTP client, with connect, first-byte and idle timeouts.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    first_byte: Duration,
    idle: Duration,
}

impl Upstream {
    pub fn new(timeouts: &Timeouts) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            first_byte: timeouts.first_byte,
            idle: timeouts.idle,
        })
    }

    /// Sends a POST and waits for the response headers.
    pub async fn post(&self, request: Request) -> Result<Response, Failure> {
        let mut builder = self
            .client
            .post(&request.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let sent = tokio::time::timeout(self.first_byte, builder.send()).await;
        match sent {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) => Err(failure_of(&e)),
            Ok(Ok(inner)) => Ok(Response {
                status: inner.status().as_u16(),
                inner,
                idle: self.idle,
            }),
        }
    }
}

fn failure_of(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_connect() {
        Failure::Connect
    } else {
        Failure::Reset
    }
}

/// An upstream response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    inner: reqwest::Response,
    idle: Duration,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers().get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// The next chunk of the body; `None` at its end. Fails when the upstream
    /// is silent for longer than the idle timeout or the connection breaks.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Failure> {
        match tokio::time::timeout(self.idle, self.inner.chunk()).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) => Err(failure_of(&e)),
            Ok(Ok(chunk)) => Ok(chunk),
        }
    }

    /// The whole body, up to `limit` bytes (the rest is dropped).
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
