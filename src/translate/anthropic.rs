//! Anthropic messages <-> the neutral form.

use serde_json::{Map, Value, json};

use super::ir::{
    Delta, Image, Message, Part, Request, Response, Role, StopReason, Tool, ToolChoice,
    Untranslatable, Usage, f64_field, new_id, text_of, u64_field, untranslatable,
};
use crate::sse::Event;

/// Anthropic requires `max_tokens`; requests from formats where it is
/// optional get this.
pub const DEFAULT_MAX_TOKENS: u64 = 8192;

/// Fields other providers may go without: metadata, and generation hints
/// that have no counterpart there (extended thinking, service tier).
const DROPPABLE: &[&str] = &[
    "metadata",
    "service_tier",
    "thinking",
    "container",
    "context_management",
];
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
];

pub fn parse_request(body: &Map<String, Value>) -> Result<Request, Untranslatable> {
    for key in body.keys() {
        if !KNOWN.contains(&key.as_str()) && !DROPPABLE.contains(&key.as_str()) {
            return untranslatable(format!(
                "`{key}` cannot be carried to this model's provider"
            ));
        }
    }
    let mut req = Request {
        max_tokens: u64_field(body, "max_tokens")?,
        temperature: f64_field(body, "temperature")?,
        top_p: f64_field(body, "top_p")?,
        top_k: u64_field(body, "top_k")?,
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        ..Request::default()
    };
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req.system.push(s.clone()),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => req
                        .system
                        .push(b["text"].as_str().unwrap_or_default().to_string()),
                    _ => return untranslatable("system blocks must be text"),
                }
            }
        }
        Some(_) => return untranslatable("`system` must be a string or an array of text blocks"),
    }
    if let Some(stops) = body.get("stop_sequences").and_then(Value::as_array) {
        req.stop = stops
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect();
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        for t in tools {
            if let Some(kind) = t
                .get("type")
                .and_then(Value::as_str)
                .filter(|k| *k != "custom")
            {
                return untranslatable(format!(
                    "the server tool `{kind}` cannot be carried to this model's provider"
                ));
            }
            req.tools.push(Tool {
                name: text_of(t, "name"),
                description: t
                    .get("description")
                    .and_then(Value::as_str)
                    .map(String::from),
                parameters: t
                    .get("input_schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            });
        }
    }
    req.tool_choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(c) => Some(match c.get("type").and_then(Value::as_str) {
            Some("auto") => ToolChoice::Auto,
            Some("any") => ToolChoice::Required,
            Some("none") => ToolChoice::None,
            Some("tool") => ToolChoice::Tool(text_of(c, "name")),
            _ => return untranslatable("`tool_choice` is not known"),
        }),
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return untranslatable("`messages` must be an array");
    };
    for m in messages {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            other => return untranslatable(format!("message role {other:?} is not known")),
        };
        req.messages.push(Message {
            role,
            parts: blocks(&m["content"])?,
        });
    }
    Ok(req)
}

fn blocks(content: &Value) -> Result<Vec<Part>, Untranslatable> {
    let items = match content {
        Value::String(s) => return Ok(vec![Part::Text(s.clone())]),
        Value::Array(items) => items,
        _ => return untranslatable("message content must be a string or an array of blocks"),
    };
    let mut parts = Vec::new();
    for b in items {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(Part::Text(
                b["text"].as_str().unwrap_or_default().to_string(),
            )),
            Some("image") => {
                let src = &b["source"];
                parts.push(Part::Image(match src.get("type").and_then(Value::as_str) {
                    Some("base64") => Image::Base64 {
                        media_type: src["media_type"]
                            .as_str()
                            .unwrap_or("image/png")
                            .to_string(),
                        data: src["data"].as_str().unwrap_or_default().to_string(),
                    },
                    Some("url") => Image::Url(src["url"].as_str().unwrap_or_default().to_string()),
                    _ => return untranslatable("an image source must be base64 or url"),
                }));
            }
            Some("tool_use") => parts.push(Part::ToolCall {
                id: b["id"].as_str().unwrap_or_default().to_string(),
                name: b["name"].as_str().unwrap_or_default().to_string(),
                arguments: match &b["input"] {
                    v @ Value::Object(_) => v.clone(),
                    _ => json!({}),
                },
            }),
            Some("tool_result") => parts.push(Part::ToolResult {
                call_id: b["tool_use_id"].as_str().unwrap_or_default().to_string(),
                name: None,
                content: match b.get("content") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(c) => blocks(c)?,
                },
                is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            }),
            // The model's own reasoning from earlier turns: other providers
            // neither accept nor need it.
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => {
                return untranslatable(format!(
                    "content block `{other}` cannot be carried to this model's provider"
                ));
            }
            None => return untranslatable("a content block needs a type"),
        }
    }
    Ok(parts)
}

/// The body to send Anthropic's Messages API.
pub fn build_request(req: &Request, model: &str) -> Result<Value, Untranslatable> {
    let mut messages = Vec::new();
    for m in super::ir::merge_turns(req.messages.clone()) {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let content: Vec<Value> = m.parts.iter().map(block).collect::<Result<_, _>>()?;
        messages.push(json!({"role": role, "content": content}));
    }
    let mut body = json!({
        "model": model,
        "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
    });
    if !req.system.is_empty() {
        body["system"] = json!(req.system.join("\n\n"));
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(p) = req.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(k) = req.top_k {
        body["top_k"] = json!(k);
    }
    if !req.stop.is_empty() {
        body["stop_sequences"] = json!(req.stop);
    }
    if req.json_output {
        return untranslatable("a JSON response format cannot be carried to Anthropic");
    }
    if !req.tools.is_empty() {
        body["tools"] = Value::Array(
            req.tools
                .iter()
                .map(|t| {
                    let mut v = json!({"name": t.name, "input_schema": t.parameters});
                    if let Some(d) = &t.description {
                        v["description"] = json!(d);
                    }
                    v
                })
                .collect(),
        );
    }
    if let Some(choice) = &req.tool_choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        };
    }
    if req.stream {
        body["stream"] = json!(true);
    }
    Ok(body)
}

fn block(p: &Part) -> Result<Value, Untranslatable> {
    Ok(match p {
        Part::Text(t) => json!({"type": "text", "text": t}),
        Part::Image(Image::Base64 { media_type, data }) => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        Part::Image(Image::Url(url)) => {
            json!({"type": "image", "source": {"type": "url", "url": url}})
        }
        Part::ToolCall {
            id,
            name,
            arguments,
        } => json!({"type": "tool_use", "id": id, "name": name, "input": arguments}),
        Part::ToolResult {
            call_id,
            content,
            is_error,
            ..
        } => {
            let content: Vec<Value> = content.iter().map(block).collect::<Result<_, _>>()?;
            json!({"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error})
        }
    })
}

pub fn stop_from(reason: &str) -> StopReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "tool_use" => StopReason::ToolUse,
        "refusal" => StopReason::ContentFilter,
        _ => StopReason::EndTurn,
    }
}

pub fn stop_to(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ToolUse => "tool_use",
        StopReason::ContentFilter => "refusal",
    }
}

pub fn parse_response(v: &Value) -> Result<Response, Untranslatable> {
    let Some(content) = v.get("content").and_then(Value::as_array) else {
        return untranslatable("no content in the response");
    };
    let mut parts = Vec::new();
    for b in content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(Part::Text(
                b["text"].as_str().unwrap_or_default().to_string(),
            )),
            Some("tool_use") => parts.push(Part::ToolCall {
                id: b["id"].as_str().unwrap_or_default().to_string(),
                name: b["name"].as_str().unwrap_or_default().to_string(),
                arguments: b.get("input").cloned().unwrap_or_else(|| json!({})),
            }),
            _ => {}
        }
    }
    Ok(Response {
        id: v
            .get("id")
            .and_then(Value::as_str)
            .map_or_else(|| new_id("msg_"), String::from),
        model: text_of(v, "model"),
        parts,
        stop: stop_from(
            v.get("stop_reason")
                .and_then(Value::as_str)
                .unwrap_or("end_turn"),
        ),
        usage: Usage {
            input_tokens: v
                .pointer("/usage/input_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            output_tokens: v
                .pointer("/usage/output_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        },
    })
}

pub fn build_response(r: &Response, model: &str) -> Value {
    let content: Vec<Value> = r
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(json!({"type": "text", "text": t})),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(json!({"type": "tool_use", "id": id, "name": name, "input": arguments})),
            _ => None,
        })
        .collect();
    json!({
        "id": if r.id.starts_with("msg_") { r.id.clone() } else { new_id("msg_") },
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_to(r.stop),
        "stop_sequence": null,
        "usage": {"input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens}
    })
}

/// Anthropic's event sequence -> deltas.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Content block index -> our tool call index.
    tool_blocks: Vec<(u64, usize)>,
    tools: usize,
    input_tokens: u64,
}

impl Decoder {
    /// `Ok(None)` marks the end of the stream.
    pub fn feed(&mut self, event: &Event) -> Result<Option<Vec<Delta>>, Untranslatable> {
        let v: Value = serde_json::from_str(&event.data)
            .map_err(|_| Untranslatable("a stream event is not JSON".into()))?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("");
        let mut out = Vec::new();
        match kind {
            "message_start" => {
                let m = &v["message"];
                self.input_tokens = m
                    .pointer("/usage/input_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                out.push(Delta::Start {
                    id: text_of(m, "id"),
                    model: text_of(m, "model"),
                });
            }
            "content_block_start" => {
                let b = &v["content_block"];
                let at = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                match b.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let index = self.tools;
                        self.tools += 1;
                        self.tool_blocks.push((at, index));
                        out.push(Delta::ToolStart {
                            index,
                            id: b["id"].as_str().unwrap_or_default().to_string(),
                            name: b["name"].as_str().unwrap_or_default().to_string(),
                        });
                    }
                    Some("text") => {
                        if let Some(t) = b
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            out.push(Delta::Text(t.to_string()));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                let at = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => out.push(Delta::Text(
                        d["text"].as_str().unwrap_or_default().to_string(),
                    )),
                    Some("input_json_delta") => {
                        if let Some(&(_, index)) = self.tool_blocks.iter().find(|(b, _)| *b == at) {
                            let json = d["partial_json"].as_str().unwrap_or_default();
                            if !json.is_empty() {
                                out.push(Delta::ToolArgs {
                                    index,
                                    json: json.to_string(),
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(Delta::Stop(stop_from(r)));
                }
                if let Some(u) = v.get("usage") {
                    out.push(Delta::Usage(Usage {
                        input_tokens: u
                            .get("input_tokens")
                            .and_then(Value::as_u64)
                            .unwrap_or(self.input_tokens),
                        output_tokens: u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
                    }));
                }
            }
            "message_stop" => return Ok(None),
            "error" => return untranslatable(crate::pipeline::error_text(event.data.as_bytes())),
            _ => {}
        }
        Ok(Some(out))
    }
}

/// Deltas -> Anthropic's event sequence.
#[derive(Debug)]
pub struct Encoder {
    model: String,
    /// The content block open now: its index and whether it is text.
    open: Option<(usize, bool)>,
    next_block: usize,
    /// Our tool call index -> its content block index.
    tool_blocks: Vec<usize>,
    started: bool,
    stop: Option<StopReason>,
    usage: Usage,
}

impl Encoder {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            open: None,
            next_block: 0,
            tool_blocks: Vec::new(),
            started: false,
            stop: None,
            usage: Usage::default(),
        }
    }

    fn event(kind: &str, data: Value) -> Event {
        Event::named(kind, data.to_string())
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some((index, _)) = self.open.take() {
            out.push(Self::event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn start(&mut self, id: &str, out: &mut Vec<Event>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = if id.starts_with("msg_") {
            id.to_string()
        } else {
            new_id("msg_")
        };
        out.push(Self::event("message_start", json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}
        }})));
    }

    pub fn encode(&mut self, delta: &Delta, out: &mut Vec<Event>) {
        match delta {
            Delta::Start { id, .. } => self.start(id, out),
            Delta::Text(t) => {
                self.start("", out);
                if !matches!(self.open, Some((_, true))) {
                    self.close(out);
                    let index = self.next_block;
                    self.next_block += 1;
                    self.open = Some((index, true));
                    out.push(Self::event("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
                }
                let index = self.open.map_or(0, |(i, _)| i);
                out.push(Self::event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}})));
            }
            Delta::ToolStart { id, name, .. } => {
                self.start("", out);
                self.close(out);
                let index = self.next_block;
                self.next_block += 1;
                self.open = Some((index, false));
                self.tool_blocks.push(index);
                out.push(Self::event("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})));
            }
            Delta::ToolArgs { index, json } => {
                if let Some(&block) = self.tool_blocks.get(*index) {
                    out.push(Self::event("content_block_delta", json!({"type": "content_block_delta", "index": block, "delta": {"type": "input_json_delta", "partial_json": json}})));
                }
            }
            Delta::Stop(reason) => self.stop = Some(*reason),
            Delta::Usage(u) => self.usage = *u,
        }
    }

    pub fn finish(&mut self, out: &mut Vec<Event>) {
        self.start("", out);
        self.close(out);
        out.push(Self::event("message_delta", json!({"type": "message_delta",
            "delta": {"stop_reason": stop_to(self.stop.unwrap_or(StopReason::EndTurn)), "stop_sequence": null},
            "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens}})));
        out.push(Self::event("message_stop", json!({"type": "message_stop"})));
    }
}
