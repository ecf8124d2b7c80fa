//! A mock OpenAI-compatible upstream on a real socket. It speaks raw HTTP/1.1
//! so tests can also make it misbehave the ways real upstreams do: reset the
//! connection, cut a stream after its first event, stall.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the mock does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A chat completion (JSON or SSE, as the request asks) naming the key and model.
    Ok,
    /// An SSE stream of `chunks` content deltas, `delay_ms` apart (plain
    /// JSON when the request did not ask for a stream).
    Stream { chunks: usize, delay_ms: u64 },
    Status {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// Reset the connection before answering.
    Reset,
    /// Send `events` stream events, then drop the connection mid-stream.
    StreamCut { events: usize },
    /// A 200 whose body is empty.
    Empty,
    /// Wait, then do the rest.
    Delay { ms: u64, then: Box<Reply> },
    /// Send the first content event, wait for the gate, then finish the stream.
    Gated(Arc<tokio::sync::Notify>),
    /// A 200 stream whose first event is an error object.
    StreamError,
}

impl Reply {
    pub fn status(status: u16, body: Value) -> Self {
        Reply::Status {
            status,
            body: body.to_string(),
            headers: vec![],
        }
    }

    pub fn status_with(status: u16, body: Value, headers: &[(&str, &str)]) -> Self {
        Reply::Status {
            status,
            body: body.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn openai_error(status: u16, message: &str, kind: &str, code: Option<&str>) -> Self {
        Self::status(
            status,
            json!({"error": {"message": message, "type": kind, "code": code}}),
        )
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub key: String,
    pub path: String,
    pub model: String,
    pub stream: bool,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct State {
    /// Replies queued per upstream key; when empty the mock answers `Ok`.
    script: HashMap<String, VecDeque<Reply>>,
    /// A reply given every time, per key, after the queue is empty.
    always: HashMap<String, Reply>,
    hits: Vec<Hit>,
}

#[derive(Clone)]
pub struct Mock {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Mock {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, state).await;
                });
            }
        });
        Self { addr, state }
    }

    /// `base_url` for an `openai` credential.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues replies for requests made with `key`.
    pub fn script(&self, key: &str, replies: impl IntoIterator<Item = Reply>) {
        let mut s = self.state.lock().unwrap();
        s.script.entry(key.to_string()).or_default().extend(replies);
    }

    /// Answers every request made with `key` with `reply` once the queue is empty.
    pub fn always(&self, key: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .always
            .insert(key.to_string(), reply);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// The upstream keys of the requests so far, in order.
    pub fn keys(&self) -> Vec<String> {
        self.hits().into_iter().map(|h| h.key).collect()
    }

    pub fn clear_hits(&self) {
        self.state.lock().unwrap().hits.clear();
    }
}

async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Value =
        serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    let key = headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let model = body["model"].as_str().unwrap_or("").to_string();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let reply = {
        let mut s = state.lock().unwrap();
        s.hits.push(Hit {
            key: key.clone(),
            path,
            model: model.clone(),
            stream,
            headers,
            body,
        });
        let queued = s.script.get_mut(&key).and_then(VecDeque::pop_front);
        queued
            .or_else(|| s.always.get(&key).cloned())
            .unwrap_or(Reply::Ok)
    };
    respond(socket, reply, &key, &model, stream).await
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";

fn content(key: &str, model: &str) -> String {
    format!("hello from {key} as {model}")
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    })
    .to_string()
}

async fn respond(
    mut socket: TcpStream,
    reply: Reply,
    key: &str,
    model: &str,
    stream: bool,
) -> std::io::Result<()> {
    let mut reply = reply;
    while let Reply::Delay { ms, then } = reply {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        reply = *then;
    }
    // A streaming reply answers a plain request with plain JSON.
    if matches!(reply, Reply::Stream { .. }) && !stream {
        reply = Reply::Ok;
    }
    match reply {
        Reply::Ok if stream => stream_events(socket, key, model, 2, 0, None).await,
        Reply::Ok => {
            let body = json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content(key, model)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
            });
            write_full(
                &mut socket,
                200,
                "application/json",
                &[],
                body.to_string().as_bytes(),
            )
            .await
        }
        Reply::Stream { chunks, delay_ms } => {
            stream_events(socket, key, model, chunks, delay_ms, None).await
        }
        Reply::StreamCut { events } => {
            stream_events(socket, key, model, 1000, 0, Some(events)).await
        }
        Reply::Gated(gate) => {
            socket.write_all(SSE_HEAD).await?;
            let first = chunk(
                model,
                json!({"role": "assistant", "content": content(key, model)}),
                None,
            );
            write_event(&mut socket, &first).await?;
            gate.notified().await;
            write_event(
                &mut socket,
                &chunk(model, json!({"content": " after the gate"}), None),
            )
            .await?;
            write_event(&mut socket, &chunk(model, json!({}), Some("stop"))).await?;
            write_event(&mut socket, "[DONE]").await?;
            socket.write_all(b"0\r\n\r\n").await?;
            socket.shutdown().await
        }
        Reply::StreamError => {
            socket.write_all(SSE_HEAD).await?;
            let error = json!({"error": {"message": "The server had an error while processing your request", "type": "server_error"}});
            write_event(&mut socket, &error.to_string()).await?;
            socket.write_all(b"0\r\n\r\n").await?;
            socket.shutdown().await
        }
        Reply::Status {
            status,
            body,
            headers,
        } => {
            write_full(
                &mut socket,
                status,
                "application/json",
                &headers,
                body.as_bytes(),
            )
            .await
        }
        Reply::Empty => write_full(&mut socket, 200, "application/json", &[], b"").await,
        Reply::Reset => {
            reset(&socket)?;
            drop(socket);
            Ok(())
        }
        Reply::Delay { .. } => unreachable!("delays are unwrapped above"),
    }
}

async fn write_full(
    socket: &mut TcpStream,
    status: u16,
    content_type: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body).await?;
    socket.shutdown().await
}

/// Writes an SSE stream with chunked encoding. With `cut_after`, stops after
/// that many events and resets the connection, leaving the body unfinished.
async fn stream_events(
    mut socket: TcpStream,
    key: &str,
    model: &str,
    chunks: usize,
    delay_ms: u64,
    cut_after: Option<usize>,
) -> std::io::Result<()> {
    socket.write_all(SSE_HEAD).await?;
    let mut events = vec![chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    for i in 0..chunks {
        let piece = if i == 0 {
            content(key, model)
        } else {
            format!(" #{i}")
        };
        events.push(chunk(model, json!({"content": piece}), None));
    }
    events.push(chunk(model, json!({}), Some("stop")));
    events.push("[DONE]".to_string());
    for (i, data) in events.iter().enumerate() {
        if cut_after == Some(i) {
            reset(&socket)?;
            return Ok(());
        }
        if i > 0 && delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        write_event(&mut socket, data).await?;
    }
    socket.write_all(b"0\r\n\r\n").await?;
    socket.shutdown().await
}

/// Makes dropping the socket send a TCP reset: linger 0 closes at once, it
/// does not block.
#[allow(deprecated)]
fn reset(socket: &TcpStream) -> std::io::Result<()> {
    socket.set_linger(Some(Duration::ZERO))
}

/// Writes one SSE event as one HTTP chunk.
async fn write_event(socket: &mut TcpStream, data: &str) -> std::io::Result<()> {
    let event = format!("data: {data}\n\n");
    socket
        .write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
        .await?;
    socket.flush().await
}
