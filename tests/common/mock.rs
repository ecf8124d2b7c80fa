//! A mock upstream on a real socket that speaks the OpenAI (chat completions
//! and Responses), Anthropic and Gemini wire formats (JSON and SSE). It speaks raw HTTP/1.1 so tests can
//! also make it misbehave the ways real upstreams do: reset the connection,
//! cut a stream after its first event, stall.
//!
//! Its answers: with tools offered and no tool result in the last message, a
//! call of the first tool with `{"city": "Paris"}`; after a tool result,
//! `tool said: <result>`; otherwise `hello from <key> as <model>`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod responses;
use responses::tool_result as responses_tool_result;

/// What the mock does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// An answer (JSON or SSE, as the request asks) in the request's format.
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
    /// One call of the tool `name` with `args` (JSON or SSE, in the request's
    /// format) when the request offers that tool and its last message is not
    /// a tool result; otherwise as `Ok`, so a client's side requests and its
    /// turn after the tool ran get text.
    Call { name: String, args: Value },
    /// A 200 event stream of exactly these (event name, data) events.
    Events(Vec<(Option<&'static str>, String)>),
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

/// The wire format of a request, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    /// OpenAI's Responses API, `{base_url}/responses`.
    Responses,
    Anthropic,
    AnthropicCount,
    Gemini,
    GeminiCount,
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub kind: Kind,
    pub key: String,
    pub path: String,
    pub model: String,
    pub stream: bool,
    pub headers: HashMap<String, String>,
    pub body: Value,
    /// The usage its answer reports, should it be answered with one.
    pub used: Used,
}

#[derive(Default)]
struct State {
    /// Replies queued per upstream key; when empty the mock answers `Ok`.
    script: HashMap<String, VecDeque<Reply>>,
    /// A reply given every time, per key, after the queue is empty.
    always: HashMap<String, Reply>,
    /// Replies given, per key, to requests whose body contains a needle.
    when: HashMap<String, Vec<(String, Reply)>>,
    hits: Vec<Hit>,
    /// When set, every answer reports different random counts drawn from
    /// this state.
    random_usage: Option<u64>,
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

    /// `base_url` for an `anthropic` or `gemini` credential.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
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

    /// Answers requests made with `key` whose JSON body contains `needle`
    /// with `reply`, before anything queued: an upstream that refuses one
    /// kind of content and serves everything else.
    pub fn when(&self, key: &str, needle: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .when
            .entry(key.to_string())
            .or_default()
            .push((needle.to_string(), reply));
    }

    /// From now on every answer reports different random usage (seeded:
    /// repeatable), recorded in its [`Hit`].
    pub fn random_usage(&self, seed: u64) {
        self.state.lock().unwrap().random_usage = Some(seed | 1);
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
        .or_else(|| headers.get("x-api-key").map(String::as_str))
        .or_else(|| headers.get("x-goog-api-key").map(String::as_str))
        .unwrap_or("")
        .to_string();
    let kind = if path.ends_with("/chat/completions") {
        Kind::OpenAi
    } else if path.ends_with("/responses") {
        Kind::Responses
    } else if path.ends_with("/v1/messages/count_tokens") {
        Kind::AnthropicCount
    } else if path.ends_with("/v1/messages") {
        Kind::Anthropic
    } else if path.contains(":countTokens") {
        Kind::GeminiCount
    } else {
        Kind::Gemini
    };
    let (model, stream) = match kind {
        Kind::Gemini | Kind::GeminiCount => {
            let m = path
                .split("/models/")
                .nth(1)
                .and_then(|r| r.split(':').next())
                .unwrap_or("");
            (m.to_string(), path.contains(":streamGenerateContent"))
        }
        _ => (
            body["model"].as_str().unwrap_or("").to_string(),
            body["stream"].as_bool().unwrap_or(false),
        ),
    };
    let (reply, used) = {
        let mut s = state.lock().unwrap();
        let used = match s.random_usage.as_mut() {
            Some(rng) => Used::random(kind, rng),
            None => Used::default(),
        };
        s.hits.push(Hit {
            kind,
            key: key.clone(),
            path,
            model: model.clone(),
            stream,
            headers,
            body: body.clone(),
            used,
        });
        // What the real provider refuses comes first, whatever is scripted.
        let text = body.to_string();
        let matched = s.when.get(&key).and_then(|rules| {
            rules
                .iter()
                .find(|(needle, _)| text.contains(needle.as_str()))
                .map(|(_, r)| r.clone())
        });
        let queued = matched.or_else(|| s.script.get_mut(&key).and_then(VecDeque::pop_front));
        let queued = super::provider_rules::refusal(kind_name(kind), &model, &body).or(queued);
        let reply = queued
            .or_else(|| s.always.get(&key).cloned())
            .unwrap_or(Reply::Ok);
        (reply, used)
    };
    respond(
        socket,
        reply,
        &Request {
            kind,
            key,
            model,
            stream,
            body,
            used,
        },
    )
    .await
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::OpenAi => "openai",
        Kind::Responses => "responses",
        Kind::Anthropic => "anthropic",
        Kind::Gemini => "gemini",
        Kind::AnthropicCount | Kind::GeminiCount => "count",
    }
}

struct Request {
    kind: Kind,
    key: String,
    model: String,
    stream: bool,
    body: Value,
    used: Used,
}

/// What the mock answers, before it is put in a format.
enum Answer {
    Text(Vec<String>),
    Tool { name: String, args: Vec<String> },
}

fn answer(req: &Request, chunks: usize) -> Answer {
    let b = &req.body;
    let (has_tools, result) = match req.kind {
        Kind::OpenAi => {
            let last = b["messages"]
                .as_array()
                .and_then(|m| m.last())
                .cloned()
                .unwrap_or_default();
            let result = (last["role"] == "tool")
                .then(|| last["content"].as_str().unwrap_or_default().to_string());
            (b["tools"].as_array().is_some_and(|t| !t.is_empty()), result)
        }
        Kind::Responses => (!offered_tools(req).is_empty(), responses_tool_result(b)),
        Kind::Anthropic | Kind::AnthropicCount => {
            let last = b["messages"]
                .as_array()
                .and_then(|m| m.last())
                .cloned()
                .unwrap_or_default();
            let result = last["content"].as_array().and_then(|blocks| {
                blocks
                    .iter()
                    .find(|x| x["type"] == "tool_result")
                    .map(|r| match &r["content"] {
                        Value::String(s) => s.clone(),
                        Value::Array(parts) => {
                            parts.iter().filter_map(|p| p["text"].as_str()).collect()
                        }
                        _ => String::new(),
                    })
            });
            (b["tools"].as_array().is_some_and(|t| !t.is_empty()), result)
        }
        Kind::Gemini | Kind::GeminiCount => {
            let last = b["contents"]
                .as_array()
                .and_then(|m| m.last())
                .cloned()
                .unwrap_or_default();
            let result = last["parts"].as_array().and_then(|parts| {
                parts
                    .iter()
                    .find_map(|p| p.get("functionResponse"))
                    .map(|f| {
                        let r = &f["response"];
                        r["content"]
                            .as_str()
                            .map_or_else(|| r.to_string(), String::from)
                    })
            });
            let has = b["tools"].as_array().is_some_and(|t| {
                t.iter().any(|x| {
                    x["functionDeclarations"]
                        .as_array()
                        .is_some_and(|d| !d.is_empty())
                })
            });
            (has, result)
        }
    };
    if let Some(r) = result {
        return Answer::Text(vec![format!("tool said: {r}")]);
    }
    if has_tools {
        let offered = offered_tools(req);
        let name = match req.kind {
            Kind::OpenAi => b["tools"][0]["function"]["name"].as_str(),
            Kind::Responses => offered.first().map(String::as_str),
            Kind::Gemini | Kind::GeminiCount => {
                b["tools"][0]["functionDeclarations"][0]["name"].as_str()
            }
            _ => b["tools"][0]["name"].as_str(),
        };
        return Answer::Tool {
            name: name.unwrap_or("tool").to_string(),
            args: vec!["{\"city\": ".into(), "\"Paris\"}".into()],
        };
    }
    let mut pieces = vec![content(&req.key, &req.model)];
    for i in 1..chunks.max(1) {
        pieces.push(format!(" #{i}"));
    }
    Answer::Text(pieces)
}

fn content(key: &str, model: &str) -> String {
    format!("hello from {key} as {model}")
}

/// The usage the mock reports for one answer, in the contract's one
/// meaning (section 9): `input` counts every prompt token, cached and
/// cache-written ones included; `reasoning` is part of `output`. Each
/// provider's answer says it in that provider's own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Default for Used {
    fn default() -> Self {
        Self {
            input: 3,
            output: 5,
            cached: 0,
            cache_write: 0,
            reasoning: 0,
        }
    }
}

impl Used {
    /// Different counts for every field a provider of `kind` reports (the
    /// ones it has no field for are 0).
    fn random(kind: Kind, rng: &mut u64) -> Self {
        let mut next = |below: u64| {
            // xorshift64*: a test's own repeatable sequence.
            *rng ^= *rng >> 12;
            *rng ^= *rng << 25;
            *rng ^= *rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % below.max(1)
        };
        let input = 200 + next(5_000);
        let output = 20 + next(2_000);
        let cached = next(input / 2);
        let cache_write = match kind {
            Kind::OpenAi | Kind::Anthropic => next(input / 4),
            _ => 0,
        };
        let reasoning = match kind {
            Kind::Anthropic => 0,
            _ => next(output),
        };
        Self {
            input,
            output,
            cached,
            cache_write,
            reasoning,
        }
    }

    fn openai(&self) -> Value {
        let mut v = json!({"prompt_tokens": self.input, "completion_tokens": self.output, "total_tokens": self.input + self.output});
        if self.cached > 0 || self.cache_write > 0 {
            v["prompt_tokens_details"] =
                json!({"cached_tokens": self.cached, "cache_write_tokens": self.cache_write});
        }
        if self.reasoning > 0 {
            v["completion_tokens_details"] = json!({"reasoning_tokens": self.reasoning});
        }
        v
    }

    /// Anthropic's prompt count leaves out cache reads and writes.
    fn anthropic(&self, output: u64) -> Value {
        let mut v = json!({"input_tokens": self.input - self.cached - self.cache_write, "output_tokens": output});
        if self.cached > 0 || self.cache_write > 0 {
            v["cache_read_input_tokens"] = json!(self.cached);
            v["cache_creation_input_tokens"] = json!(self.cache_write);
        }
        v
    }

    /// Gemini's candidates count leaves out the thoughts.
    fn gemini(&self) -> Value {
        let mut v = json!({"promptTokenCount": self.input, "candidatesTokenCount": self.output - self.reasoning, "totalTokenCount": self.input + self.output});
        if self.cached > 0 {
            v["cachedContentTokenCount"] = json!(self.cached);
        }
        if self.reasoning > 0 {
            v["thoughtsTokenCount"] = json!(self.reasoning);
        }
        v
    }
}

fn json_answer(req: &Request, a: &Answer) -> Value {
    let model = &req.model;
    match (req.kind, a) {
        (Kind::OpenAi, Answer::Text(t)) => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": t.concat()}, "finish_reason": "stop"}],
            "usage": req.used.openai()
        }),
        (Kind::OpenAi, Answer::Tool { name, args }) => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_mock1", "type": "function", "function": {"name": name, "arguments": args.concat()}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": req.used.openai()
        }),
        (Kind::Anthropic, a) => {
            let (content, stop) = match a {
                Answer::Text(t) => (json!([{"type": "text", "text": t.concat()}]), "end_turn"),
                Answer::Tool { name, args } => {
                    let input: Value = serde_json::from_str(&args.concat()).unwrap();
                    (
                        json!([{"type": "tool_use", "id": "toolu_mock1", "name": name, "input": input}]),
                        "tool_use",
                    )
                }
            };
            json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": content,
                   "stop_reason": stop, "stop_sequence": null, "usage": req.used.anthropic(req.used.output)})
        }
        (Kind::Gemini, a) => {
            let parts = match a {
                Answer::Text(t) => json!([{"text": t.concat()}]),
                Answer::Tool { name, args } => {
                    let a: Value = serde_json::from_str(&args.concat()).unwrap();
                    json!([{"functionCall": {"name": name, "args": a}}])
                }
            };
            json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                   "usageMetadata": req.used.gemini(),
                   "modelVersion": model})
        }
        (Kind::Responses, a) => responses::response(model, &req.body, a, "completed", &req.used),
        (Kind::AnthropicCount, _) => json!({"input_tokens": 42}),
        (Kind::GeminiCount, _) => json!({"totalTokens": 42}),
    }
}

/// The stream of an answer: (event name, data) pairs.
fn sse_answer(req: &Request, a: &Answer) -> Vec<(Option<&'static str>, String)> {
    let model = &req.model;
    let mut out = Vec::new();
    match req.kind {
        Kind::OpenAi => {
            let chunk = |delta: Value, finish: Option<&str>| {
                json!({
                "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
            }).to_string()
            };
            out.push((
                None,
                chunk(json!({"role": "assistant", "content": ""}), None),
            ));
            let finish = match a {
                Answer::Text(pieces) => {
                    for p in pieces {
                        out.push((None, chunk(json!({"content": p}), None)));
                    }
                    "stop"
                }
                Answer::Tool { name, args } => {
                    out.push((None, chunk(json!({"tool_calls": [{"index": 0, "id": "call_mock1", "type": "function", "function": {"name": name, "arguments": ""}}]}), None)));
                    for p in args {
                        out.push((
                            None,
                            chunk(
                                json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}),
                                None,
                            ),
                        ));
                    }
                    "tool_calls"
                }
            };
            out.push((None, chunk(json!({}), Some(finish))));
            if req.body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true)) {
                out.push((None, json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                    "usage": req.used.openai()}).to_string()));
            }
            out.push((None, "[DONE]".into()));
        }
        Kind::Responses => out = responses::events(model, &req.body, a, &req.used),
        Kind::Anthropic | Kind::AnthropicCount => {
            out.push((Some("message_start"), json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": req.used.anthropic(1)}}).to_string()));
            let stop = match a {
                Answer::Text(pieces) => {
                    out.push((Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}).to_string()));
                    for p in pieces {
                        out.push((Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}).to_string()));
                    }
                    "end_turn"
                }
                Answer::Tool { name, args } => {
                    out.push((Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_mock1", "name": name, "input": {}}}).to_string()));
                    for p in args {
                        out.push((Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": p}}).to_string()));
                    }
                    "tool_use"
                }
            };
            out.push((
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": 0}).to_string(),
            ));
            out.push((Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": req.used.output}}).to_string()));
            out.push((
                Some("message_stop"),
                json!({"type": "message_stop"}).to_string(),
            ));
        }
        Kind::Gemini | Kind::GeminiCount => {
            let chunk = |parts: Value, last: bool| {
                let mut c = json!({"content": {"role": "model", "parts": parts}, "index": 0});
                let mut v = json!({"candidates": [], "modelVersion": model});
                if last {
                    c["finishReason"] = json!("STOP");
                    v["usageMetadata"] = req.used.gemini();
                }
                v["candidates"] = json!([c]);
                v.to_string()
            };
            match a {
                Answer::Text(pieces) => {
                    for (i, p) in pieces.iter().enumerate() {
                        out.push((None, chunk(json!([{"text": p}]), i + 1 == pieces.len())));
                    }
                }
                Answer::Tool { name, args } => {
                    let a: Value = serde_json::from_str(&args.concat()).unwrap();
                    out.push((
                        None,
                        chunk(json!([{"functionCall": {"name": name, "args": a}}]), true),
                    ));
                }
            }
        }
    }
    out
}

/// An error event in the request's format, as a stream would carry it.
fn sse_error(kind: Kind) -> (Option<&'static str>, String) {
    match kind {
        Kind::Anthropic | Kind::AnthropicCount => (
            Some("error"),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).to_string(),
        ),
        Kind::Gemini | Kind::GeminiCount => (
            None,
            json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}).to_string(),
        ),
        Kind::OpenAi => (
            None,
            json!({"error": {"message": "The server had an error while processing your request", "type": "server_error"}}).to_string(),
        ),
        Kind::Responses => (
            Some("error"),
            json!({"type": "error", "code": "server_error", "message": "The server had an error while processing your request", "param": null, "sequence_number": 0}).to_string(),
        ),
    }
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";

async fn respond(mut socket: TcpStream, reply: Reply, req: &Request) -> std::io::Result<()> {
    let mut reply = reply;
    while let Reply::Delay { ms, then } = reply {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        reply = *then;
    }
    let counting = matches!(req.kind, Kind::AnthropicCount | Kind::GeminiCount);
    // A streaming reply answers a plain request with plain JSON.
    if matches!(reply, Reply::Stream { .. }) && (!req.stream || counting) {
        reply = Reply::Ok;
    }
    match reply {
        Reply::Ok if req.stream && !counting => {
            let events = sse_answer(req, &answer(req, 2));
            write_stream(&mut socket, &events, 0, None).await
        }
        Reply::Ok => {
            let body = json_answer(req, &answer(req, 1));
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
            let events = sse_answer(req, &answer(req, chunks));
            write_stream(&mut socket, &events, delay_ms, None).await
        }
        Reply::StreamCut { events } => {
            let all = sse_answer(req, &answer(req, 1000));
            write_stream(&mut socket, &all, 0, Some(events)).await
        }
        Reply::Gated(gate) => {
            let all = sse_answer(req, &answer(req, 2));
            socket.write_all(SSE_HEAD).await?;
            // Everything up to and including the first text, then the gate.
            let split = all
                .iter()
                .position(|(_, d)| d.contains("hello from"))
                .map_or(1, |i| i + 1);
            for (name, data) in &all[..split] {
                write_event(&mut socket, *name, data).await?;
            }
            gate.notified().await;
            for (name, data) in &all[split..] {
                let data = data.replace(" #1", " after the gate");
                write_event(&mut socket, *name, &data).await?;
            }
            socket.write_all(b"0\r\n\r\n").await?;
            socket.shutdown().await
        }
        Reply::StreamError => {
            let (name, data) = sse_error(req.kind);
            write_stream(&mut socket, &[(name, data)], 0, None).await
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
        Reply::Events(events) => write_stream(&mut socket, &events, 0, None).await,
        Reply::Call { name, args } => {
            let a = scripted_call(req, &name, &args);
            if req.stream && !counting {
                write_stream(&mut socket, &sse_answer(req, &a), 0, None).await
            } else {
                let body = json_answer(req, &a);
                let body = body.to_string();
                write_full(&mut socket, 200, "application/json", &[], body.as_bytes()).await
            }
        }
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

/// Writes an SSE stream with chunked encoding, `delay_ms` between events.
/// With `cut_after`, stops after that many events and resets the
/// connection, leaving the body unfinished.
async fn write_stream(
    socket: &mut TcpStream,
    events: &[(Option<&'static str>, String)],
    delay_ms: u64,
    cut_after: Option<usize>,
) -> std::io::Result<()> {
    socket.write_all(SSE_HEAD).await?;
    for (i, (name, data)) in events.iter().enumerate() {
        if cut_after == Some(i) {
            reset(socket)?;
            return Ok(());
        }
        if i > 0 && delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        write_event(socket, *name, data).await?;
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
async fn write_event(
    socket: &mut TcpStream,
    name: Option<&str>,
    data: &str,
) -> std::io::Result<()> {
    let event = match name {
        Some(n) => format!("event: {n}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    };
    socket
        .write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
        .await?;
    socket.flush().await
}

/// The answer of `Reply::Call`: the named tool's call, split in two argument
/// deltas, when the request offers it; the usual answer otherwise.
fn scripted_call(req: &Request, name: &str, args: &Value) -> Answer {
    let usual = answer(req, 2);
    let after_tool = matches!(&usual, Answer::Text(t) if t.concat().starts_with("tool said: "));
    if after_tool {
        return usual;
    }
    if !offered_tools(req).iter().any(|t| t == name) {
        // A request for structured output (a client's side request, such as
        // Gemini CLI's model router) gets an instance of its schema.
        return match output_schema(req) {
            Some(schema) => Answer::Text(vec![schema_instance(schema).to_string()]),
            None => Answer::Text(vec![content(&req.key, &req.model)]),
        };
    }
    let args = args.to_string();
    let mut mid = args.len() / 2;
    while !args.is_char_boundary(mid) {
        mid += 1;
    }
    Answer::Tool {
        name: name.to_string(),
        args: vec![args[..mid].to_string(), args[mid..].to_string()],
    }
}

/// The names of the tools a request offers, in its own format.
pub fn offered_tools_of(kind: Kind, body: &Value) -> Vec<String> {
    let tools = body["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let names: Vec<&Value> = match kind {
        Kind::OpenAi => tools.iter().map(|t| &t["function"]["name"]).collect(),
        // Flat declarations; tools of a namespace are offered too, and
        // built-ins (web_search, tool_search) have no name.
        Kind::Responses => tools
            .iter()
            .flat_map(|t| match t["tools"].as_array() {
                Some(inner) => inner.iter().collect(),
                None => vec![t],
            })
            .filter(|t| t["type"] == "function" || t["type"] == "custom")
            .map(|t| &t["name"])
            .collect(),
        Kind::Anthropic | Kind::AnthropicCount => tools.iter().map(|t| &t["name"]).collect(),
        Kind::Gemini | Kind::GeminiCount => tools
            .iter()
            .filter_map(|t| t["functionDeclarations"].as_array())
            .flatten()
            .map(|d| &d["name"])
            .collect(),
    };
    names
        .into_iter()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

fn offered_tools(req: &Request) -> Vec<String> {
    offered_tools_of(req.kind, &req.body)
}

/// The JSON schema a request asks its answer to follow, in its own format.
fn output_schema(req: &Request) -> Option<&Value> {
    let b = &req.body;
    let candidates = match req.kind {
        Kind::OpenAi => vec![b.pointer("/response_format/json_schema/schema")],
        Kind::Responses => vec![b.pointer("/text/format/schema")],
        Kind::Anthropic | Kind::AnthropicCount => vec![
            b.pointer("/output_config/format/schema"),
            b.pointer("/output_format/schema"),
        ],
        Kind::Gemini | Kind::GeminiCount => vec![
            b.pointer("/generationConfig/responseJsonSchema"),
            b.pointer("/generationConfig/responseSchema"),
        ],
    };
    candidates.into_iter().flatten().find(|s| s.is_object())
}

/// A value that follows `schema`: every property, the first of an enum.
fn schema_instance(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    let kind = match &schema["type"] {
        Value::Array(types) => types.iter().find(|t| *t != "null").cloned(),
        t => Some(t.clone()),
    };
    let kind = kind.and_then(|t| t.as_str().map(str::to_ascii_lowercase));
    match kind.as_deref() {
        Some("object") => {
            let props = schema["properties"].as_object();
            Value::Object(
                props
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), schema_instance(v)))
                    .collect(),
            )
        }
        Some("array") => json!([schema_instance(&schema["items"])]),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(true),
        _ => json!("mock"),
    }
}
