//! A transparent TCP relay in front of the gateway that keeps a copy of the
//! bytes going both ways, so a test can see what a real client sent (its own
//! headers, and requests the mock never sees, such as `HEAD /` or token
//! counts) and what the gateway answered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One HTTP request a client sent through the tap.
#[derive(Debug, Clone)]
pub struct Tapped {
    pub method: String,
    pub path: String,
    /// Header names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body as JSON, or as a string when it is not JSON.
    pub body: Value,
    /// The status of the gateway's answer, when one came.
    pub status: Option<u16>,
}

/// The bytes of one connection: (client to gateway, gateway to client).
type Recorded = Arc<Mutex<(Vec<u8>, Vec<u8>)>>;

pub struct Tap {
    pub url: String,
    connections: Arc<Mutex<Vec<Recorded>>>,
}

impl Tap {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let all = connections.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                let recorded: Recorded = Arc::default();
                all.lock().unwrap().push(recorded.clone());
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                let up = recorded.clone();
                tokio::spawn(copy(client_read, upstream_write, up, true));
                tokio::spawn(copy(upstream_read, client_write, recorded, false));
            }
        });
        Self { url, connections }
    }

    /// Every request sent through the tap so far, connection by connection.
    pub fn requests(&self) -> Vec<Tapped> {
        let connections = self.connections.lock().unwrap().clone();
        connections
            .iter()
            .flat_map(|c| {
                let (sent, answered) = &*c.lock().unwrap();
                let mut requests = parse(sent);
                let methods: Vec<String> = requests.iter().map(|r| r.method.clone()).collect();
                let statuses = statuses(answered, &methods);
                for (r, s) in requests.iter_mut().zip(statuses) {
                    r.status = Some(s);
                }
                requests
            })
            .collect()
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    recorded: Recorded,
    sent: bool,
) {
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut r = recorded.lock().unwrap();
            let side = if sent { &mut r.0 } else { &mut r.1 };
            side.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The requests in the bytes a client sent on one connection.
fn parse(mut rest: &[u8]) -> Vec<Tapped> {
    let mut out = Vec::new();
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_string();
        let path = request_line.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let start = end + 4;
        let (body, used) = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            dechunk(&rest[start..])
        } else {
            let len = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0usize)
                .min(rest.len() - start);
            (rest[start..start + len].to_vec(), len)
        };
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        out.push(Tapped {
            method,
            path,
            headers,
            body,
            status: None,
        });
        rest = &rest[start + used..];
    }
    out
}

/// A chunked body: its bytes, and how many bytes of `rest` it took.
fn dechunk(rest: &[u8]) -> (Vec<u8>, usize) {
    let mut body = Vec::new();
    let mut at = 0;
    while let Some(eol) = find(&rest[at..], b"\r\n") {
        let size_line = String::from_utf8_lossy(&rest[at..at + eol]).into_owned();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        at += eol + 2;
        if size == 0 {
            return (body, (at + 2).min(rest.len()));
        }
        let end = (at + size).min(rest.len());
        body.extend_from_slice(&rest[at..end]);
        at = (end + 2).min(rest.len());
    }
    (body, rest.len())
}

/// The statuses of the responses on one connection, in order; `methods`
/// are the requests' (the answer to a `HEAD` has no body).
fn statuses(mut rest: &[u8], methods: &[String]) -> Vec<u16> {
    let mut out = Vec::new();
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let Some(status) = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.get(..3))
            .and_then(|c| c.parse().ok())
        else {
            break;
        };
        let start = end + 4;
        let used = if methods.get(out.len()).is_some_and(|m| m == "HEAD") {
            0
        } else if head.contains("transfer-encoding: chunked") {
            dechunk(&rest[start..]).1
        } else {
            head.split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(rest.len() - start)
                .min(rest.len() - start)
        };
        out.push(status);
        rest = &rest[start + used..];
    }
    out
}
