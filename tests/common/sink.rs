//! An upstream that reads request bodies without keeping them, for tests of
//! what large bodies cost the gateway (the mock parses every body into a
//! tree, which a 32 MiB body of numbers makes a gigabyte in the test
//! process). It answers each format with a short canned answer, as JSON or
//! as a stream when the request asks for one, or with a large answer of
//! filler when told to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the sink answers requests made with one upstream key.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A short answer in the request's format.
    Canned,
    /// A chat completion of about `bytes`, most of it a field of small
    /// numbers no format knows, with or without a `Content-Length`.
    Filler { bytes: usize, chunked: bool },
}

/// One request the sink took.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub key: String,
    /// The length of its body.
    pub bytes: usize,
}

#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Sink {
    pub async fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = Sink {
            addr: listener.local_addr().unwrap(),
            answers: Arc::default(),
            seen: Arc::default(),
        };
        let shared = sink.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let sink = shared.clone();
                tokio::spawn(async move {
                    let _ = sink.serve(socket).await;
                });
            }
        });
        sink
    }

    /// `base_url` for an `openai` credential.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `base_url` for an `anthropic` or `gemini` credential.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn answer(&self, key: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(key.to_string(), answer);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn serve(&self, socket: TcpStream) -> std::io::Result<()> {
        let mut socket = BufReader::new(socket);
        loop {
            let mut line = String::new();
            if socket.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let mut length = 0usize;
            let mut key = String::new();
            loop {
                let mut header = String::new();
                socket.read_line(&mut header).await?;
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let Some((name, value)) = header.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().unwrap_or(0),
                    "authorization" => key = value.trim_start_matches("Bearer ").to_string(),
                    "x-api-key" | "x-goog-api-key" => key = value.to_string(),
                    _ => {}
                }
            }
            let stream = read_body(&mut socket, length).await? || path.contains("stream");
            self.seen.lock().unwrap().push(Seen {
                path: path.clone(),
                key: key.clone(),
                bytes: length,
            });
            let answer = self
                .answers
                .lock()
                .unwrap()
                .get(&key)
                .cloned()
                .unwrap_or(Answer::Canned);
            let socket = socket.get_mut();
            match answer {
                Answer::Canned => {
                    let (content_type, body) = canned(&path, stream);
                    write_answer(socket, content_type, body.as_bytes()).await?;
                }
                Answer::Filler { bytes, chunked } => filler(socket, bytes, chunked).await?,
            }
        }
    }
}

/// Reads a body of `length` bytes, keeping none of it; whether it asked
/// for a stream.
async fn read_body(socket: &mut BufReader<TcpStream>, length: usize) -> std::io::Result<bool> {
    const NEEDLE: &[u8] = b"\"stream\":true";
    let mut left = length;
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous read, so a needle cut in two is still found.
    let mut tail: Vec<u8> = Vec::new();
    let mut stream = false;
    while left > 0 {
        let n = socket.read(&mut buf[..left.min(64 * 1024)]).await?;
        if n == 0 {
            break;
        }
        left -= n;
        tail.extend_from_slice(&buf[..n]);
        stream |= tail.windows(NEEDLE.len()).any(|w| w == NEEDLE);
        let keep = tail.len().saturating_sub(NEEDLE.len());
        tail.drain(..keep);
    }
    Ok(stream)
}

async fn write_answer(
    socket: &mut TcpStream,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body).await
}

fn canned(path: &str, stream: bool) -> (&'static str, String) {
    let sse = |events: &[(Option<&str>, serde_json::Value)]| {
        events
            .iter()
            .map(|(name, data)| match name {
                Some(name) => format!("event: {name}\ndata: {data}\n\n"),
                None => format!("data: {data}\n\n"),
            })
            .collect::<String>()
    };
    use serde_json::json;
    if path.ends_with("/chat/completions") {
        if stream {
            let chunk = |delta: serde_json::Value, finish: Option<&str>| {
                (
                    None,
                    json!({"id": "c", "object": "chat.completion.chunk", "model": "up",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
                )
            };
            let body = sse(&[
                chunk(json!({"role": "assistant", "content": "ok"}), None),
                chunk(json!({}), Some("stop")),
            ]) + "data: [DONE]\n\n";
            return ("text/event-stream", body);
        }
        let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}});
        return ("application/json", answer.to_string());
    }
    if path.ends_with("/responses") {
        let answer = json!({"id": "resp_1", "object": "response", "model": "up", "status": "completed",
            "output": [{"type": "message", "id": "m", "role": "assistant",
                "content": [{"type": "output_text", "text": "ok"}]}]});
        return ("application/json", answer.to_string());
    }
    if path.ends_with("/messages") {
        if stream {
            let body = sse(&[
                (
                    Some("message_start"),
                    json!({"type": "message_start", "message": {"id": "msg_1",
                    "type": "message", "role": "assistant", "model": "up", "content": [],
                    "usage": {"input_tokens": 1}}}),
                ),
                (
                    Some("content_block_start"),
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": "ok"}}),
                ),
                (
                    Some("content_block_stop"),
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    Some("message_delta"),
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
                ),
                (Some("message_stop"), json!({"type": "message_stop"})),
            ]);
            return ("text/event-stream", body);
        }
        let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "up",
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1}});
        return ("application/json", answer.to_string());
    }
    let answer = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
        "finishReason": "STOP", "index": 0}], "modelVersion": "up"});
    if stream {
        return ("text/event-stream", sse(&[(None, answer)]));
    }
    ("application/json", answer.to_string())
}

/// A chat completion of about `bytes`, written in pieces.
async fn filler(socket: &mut TcpStream, bytes: usize, chunked: bool) -> std::io::Result<()> {
    const PIECE: usize = 1 << 20;
    let head = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"up","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"x":[1"#;
    let tail = b"]}";
    let numbers = (bytes.saturating_sub(head.len() + tail.len()) / 2).max(1);
    let mut pieces: Vec<Vec<u8>> = vec![head.to_vec()];
    let mut left = numbers;
    while left > 0 {
        let n = left.min(PIECE / 2);
        pieces.push(b",1".repeat(n));
        left -= n;
    }
    pieces.push(tail.to_vec());
    let total: usize = pieces.iter().map(Vec::len).sum();
    let framing = if chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {total}")
    };
    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}\r\n\r\n");
    socket.write_all(head.as_bytes()).await?;
    for piece in pieces {
        if chunked {
            socket
                .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
            socket.write_all(&piece).await?;
            socket.write_all(b"\r\n").await?;
        } else {
            socket.write_all(&piece).await?;
        }
    }
    if chunked {
        socket.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}
