//! Anthropic messages <-> the neutral form.

use serde_json::{Map, Value, json};

use super::ir::{
    Delta, Effort, Image, Message, Output, Part, Reasoning, Request, Response, Role, StopReason,
    TRANSLATED_THINKING, Tool, ToolChoice, Untranslatable, Usage, f64_field, new_id, text_of,
    u64_field, untranslatable,
};
use super::policy;
use crate::sse::Event;
use crate::wire::Format;

/// Anthropic requires `max_tokens`; requests from formats where it is
/// optional get this (plus the thinking budget, when there is one).
pub const DEFAULT_MAX_TOKENS: u64 = 8192;
/// The largest `max_tokens` sent from another format (what every current
/// Claude model takes).
const MAX_OUTPUT_CARRIED: u64 = 32_000;
/// Anthropic's smallest thinking budget.
const MIN_THINKING_BUDGET: u64 = 1024;
/// What a JSON answer without a schema becomes: Anthropic has no JSON mode.
pub const JSON_INSTRUCTION: &str = "Answer with a single JSON object and nothing else.";

pub fn parse_request(body: &Map<String, Value>) -> Result<Request, Untranslatable> {
    for key in body.keys() {
        if policy::left_out_everywhere(Format::Anthropic, key) {
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
        reasoning: reasoning(body)?,
        output: output(body)?,
        ..Request::default()
    };
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req.system.push(s.clone()),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => req.system.push(text_of(b, "text")),
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
                custom: false,
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
            Some("system") => Role::System,
            Some(other) => return untranslatable(format!("message role `{other}` is not known")),
            None => return untranslatable("a message needs a role"),
        };
        let content = m.get("content").unwrap_or(&Value::Null);
        req.messages.push(Message::new(role, blocks(content)?));
    }
    Ok(req)
}

/// `thinking` and `output_config.effort`.
fn reasoning(body: &Map<String, Value>) -> Result<Option<Reasoning>, Untranslatable> {
    let thinking = body.get("thinking").filter(|t| !t.is_null());
    let effort = body
        .get("output_config")
        .and_then(|c| c.get("effort"))
        .and_then(Value::as_str);
    if thinking.is_none() && effort.is_none() {
        return Ok(None);
    }
    let mut r = Reasoning {
        effort: effort.and_then(effort_from),
        ..Reasoning::default()
    };
    if let Some(t) = thinking {
        let shown = t.get("display").and_then(Value::as_str) != Some("omitted");
        match t.get("type").and_then(Value::as_str) {
            Some("enabled") => {
                r.budget = t.get("budget_tokens").and_then(Value::as_u64);
                r.show = shown;
            }
            Some("adaptive") => {
                r.dynamic = true;
                r.show = shown;
            }
            Some("disabled") => r.off = true,
            _ => return untranslatable("`thinking.type` is not known"),
        }
    }
    Ok(Some(r))
}

pub fn effort_from(s: &str) -> Option<Effort> {
    Some(match s {
        "minimal" => Effort::Minimal,
        "low" => Effort::Low,
        "medium" => Effort::Medium,
        "high" => Effort::High,
        "max" | "xhigh" => Effort::Max,
        _ => return None,
    })
}

/// `output_config.format`, or the structured-outputs beta's `output_format`.
fn output(body: &Map<String, Value>) -> Result<Option<Output>, Untranslatable> {
    let format = body
        .get("output_config")
        .and_then(|c| c.get("format"))
        .or_else(|| body.get("output_format"))
        .filter(|f| !f.is_null());
    let Some(f) = format else {
        return Ok(None);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("json_schema") => Ok(Some(Output::Schema {
            name: f
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("answer")
                .to_string(),
            schema: f.get("schema").cloned().unwrap_or_else(|| json!({})),
            strict: None,
        })),
        _ => untranslatable("this output format cannot be carried to this model's provider"),
    }
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
            Some("document") => {
                let src = &b["source"];
                match src.get("type").and_then(Value::as_str) {
                    Some("base64") => parts.push(Part::Document {
                        media_type: text_of(src, "media_type"),
                        data: text_of(src, "data"),
                        name: b.get("title").and_then(Value::as_str).map(String::from),
                    }),
                    // A plain-text document is text.
                    Some("text") => parts.push(Part::Text(text_of(src, "data"))),
                    _ => {
                        return untranslatable(
                            "a document source must be base64 or text to be carried",
                        );
                    }
                }
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
    let mut system = req.system.clone();
    let mut messages = Vec::new();
    for m in super::ir::merge_turns(&mut system, req.messages.clone()) {
        let role = match m.role {
            Role::Assistant => "assistant",
            Role::User | Role::System => "user",
        };
        let mut content: Vec<Value> = m.parts.iter().map(block).collect::<Result<_, _>>()?;
        for (i, marker) in &m.cache {
            if let Some(b) = content.get_mut(*i) {
                b["cache_control"] = marker.clone();
            }
        }
        messages.push(json!({"role": role, "content": content}));
    }
    let thinking = thinking_budget(req);
    let max_tokens = match (req.max_tokens, thinking) {
        (Some(n), _) => n.min(MAX_OUTPUT_CARRIED),
        (None, Some(budget)) => (budget + DEFAULT_MAX_TOKENS).min(MAX_OUTPUT_CARRIED),
        (None, None) => DEFAULT_MAX_TOKENS,
    };
    // The budget must stay below max_tokens; too small a room turns thinking off.
    let thinking = thinking
        .map(|b| b.min(max_tokens.saturating_sub(1)))
        .filter(|b| *b >= MIN_THINKING_BUDGET);
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": messages,
    });
    match &req.output {
        Some(Output::Json) => system.push(JSON_INSTRUCTION.to_string()),
        Some(Output::Schema { schema, .. }) => {
            body["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
        }
        None => {}
    }
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(budget) = thinking {
        body["thinking"] = json!({"type": "enabled", "budget_tokens": budget});
    }
    // With thinking on, Anthropic takes no temperature or top_k, and top_p
    // only from 0.95.
    if let Some(t) = req.temperature.filter(|_| thinking.is_none()) {
        body["temperature"] = json!(t);
    }
    if let Some(p) = req.top_p.filter(|p| thinking.is_none() || *p >= 0.95) {
        body["top_p"] = json!(p);
    }
    if let Some(k) = req.top_k.filter(|_| thinking.is_none()) {
        body["top_k"] = json!(k);
    }
    if !req.stop.is_empty() {
        body["stop_sequences"] = json!(req.stop);
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

/// The thinking budget to ask Anthropic for, if any. Thinking is left off
/// where Anthropic's rules could not be met: a forced tool choice, and a
/// tool loop whose assistant turn has no signed thinking (history from
/// another provider never has), Anthropic's documented fallback.
fn thinking_budget(req: &Request) -> Option<u64> {
    let r = req.reasoning.as_ref().filter(|r| !r.off)?;
    let budget = r
        .budget_tokens()
        .or(r.dynamic.then(|| Effort::Medium.budget()))?
        .max(MIN_THINKING_BUDGET);
    if matches!(
        req.tool_choice,
        Some(ToolChoice::Required | ToolChoice::Tool(_))
    ) {
        return None;
    }
    let in_tool_loop = req.messages.last().is_some_and(|m| {
        m.role == Role::User && m.parts.iter().any(|p| matches!(p, Part::ToolResult { .. }))
    });
    (!in_tool_loop).then_some(budget)
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
        Part::Document {
            media_type,
            data,
            name,
        } => {
            if media_type != "application/pdf" {
                return untranslatable(format!("Anthropic takes PDF documents, not {media_type}"));
            }
            let mut doc = json!({"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}});
            if let Some(name) = name {
                doc["title"] = json!(name);
            }
            doc
        }
        Part::ToolCall {
            id,
            name,
            arguments,
        } => json!({"type": "tool_use", "id": id, "name": name, "input": arguments}),
        Part::Thinking(_) => {
            return untranslatable("thinking is not carried into a request of another format");
        }
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
            // The signature only Anthropic can check stays behind.
            Some("thinking") => parts.push(Part::Thinking(text_of(b, "thinking"))),
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
            cached_tokens: v
                .pointer("/usage/cache_read_input_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            reasoning_tokens: 0,
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
            Part::Thinking(t) => {
                Some(json!({"type": "thinking", "thinking": t, "signature": TRANSLATED_THINKING}))
            }
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
                    Some("thinking_delta") => out.push(Delta::Thinking(text_of(d, "thinking"))),
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
                        ..Usage::default()
                    }));
                }
            }
            "message_stop" => return Ok(None),
            "error" => return untranslatable(crate::wire::error_text(event.data.as_bytes())),
            _ => {}
        }
        Ok(Some(out))
    }
}

/// The kind of content block an encoder has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    Tool,
}

/// Deltas -> Anthropic's event sequence.
#[derive(Debug)]
pub struct Encoder {
    model: String,
    /// The content block open now: its index and kind.
    open: Option<(usize, Open)>,
    next_block: usize,
    /// Our tool call index -> its content block index.
    tool_blocks: Vec<usize>,
    started: bool,
    stop: Option<StopReason>,
    usage: Usage,
    /// The local estimate of the prompt's tokens, for `message_start`
    /// (the upstream's count comes with the final usage).
    input_estimate: u64,
}

impl Encoder {
    pub fn new(model: &str, input_estimate: u64) -> Self {
        Self {
            model: model.to_string(),
            open: None,
            next_block: 0,
            tool_blocks: Vec::new(),
            started: false,
            stop: None,
            usage: Usage::default(),
            input_estimate,
        }
    }

    fn event(kind: &str, data: Value) -> Event {
        Event::named(kind, data.to_string())
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some((index, kind)) = self.open.take() {
            if kind == Open::Thinking {
                out.push(Self::event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": TRANSLATED_THINKING}}),
                ));
            }
            out.push(Self::event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// Opens a block of `kind` unless one is open already; its index.
    fn open(&mut self, kind: Open, block: Value, out: &mut Vec<Event>) -> usize {
        if let Some((index, open)) = self.open {
            if open == kind && kind != Open::Tool {
                return index;
            }
        }
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, kind));
        out.push(Self::event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
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
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 1}
        }})));
    }

    pub fn encode(&mut self, delta: &Delta, out: &mut Vec<Event>) {
        match delta {
            Delta::Start { id, .. } => self.start(id, out),
            Delta::Text(t) => {
                self.start("", out);
                let index = self.open(Open::Text, json!({"type": "text", "text": ""}), out);
                out.push(Self::event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}})));
            }
            Delta::Thinking(t) => {
                self.start("", out);
                let block = json!({"type": "thinking", "thinking": "", "signature": ""});
                let index = self.open(Open::Thinking, block, out);
                out.push(Self::event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": t}})));
            }
            Delta::ToolStart { id, name, .. } => {
                self.start("", out);
                let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                let index = self.open(Open::Tool, block, out);
                self.tool_blocks.push(index);
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

/// Whether an assistant content block is thinking this gateway translated.
fn translated_thinking(b: &Value) -> bool {
    b.get("type").and_then(Value::as_str) == Some("thinking")
        && b.get("signature").and_then(Value::as_str) == Some(TRANSLATED_THINKING)
}

/// For an Anthropic upstream of an Anthropic client: the client's body
/// mended where its history breaks Anthropic's rules, or `None` when it does
/// not. Thinking this gateway translated from another provider is taken out
/// (no upstream could verify its signature); a tool loop whose assistant
/// turn then lacks signed thinking (or never had it: an earlier turn served
/// by another provider) gets thinking turned off for the request,
/// Anthropic's documented fallback.
pub fn mend_history(body: &Map<String, Value>) -> Option<Map<String, Value>> {
    let messages = body.get("messages")?.as_array()?;
    let marked = messages.iter().any(|m| {
        m.get("content")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(translated_thinking))
    });
    let thinking = body
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t != "disabled");
    let broken_loop = thinking && unsigned_tool_loop(messages);
    if !marked && !broken_loop {
        return None;
    }
    let mut body = body.clone();
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        for m in messages.iter_mut() {
            if let Some(Value::Array(content)) = m.get_mut("content") {
                content.retain(|b| !translated_thinking(b));
                // Anthropic refuses a turn left empty.
                if content.is_empty() {
                    content.push(json!({"type": "text", "text": "(thinking)"}));
                }
            }
        }
        if unsigned_tool_loop(messages) {
            body.remove("thinking");
        }
    }
    Some(body)
}

/// Whether the conversation continues a tool loop whose assistant turn does
/// not open with signed thinking.
fn unsigned_tool_loop(messages: &[Value]) -> bool {
    let [.., assistant, last] = messages else {
        return false;
    };
    let kinds = |m: &Value| -> Vec<String> {
        m.get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|b| text_of(b, "type"))
            .collect()
    };
    let is_result = kinds(last).iter().any(|k| k == "tool_result");
    let opens_with_thinking = kinds(assistant)
        .first()
        .is_some_and(|k| k == "thinking" || k == "redacted_thinking");
    let calls = kinds(assistant).iter().any(|k| k == "tool_use");
    is_result && calls && !opens_with_thinking
}
