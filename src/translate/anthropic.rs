//! Anthropic messages <-> the neutral form.

mod body;
mod mend;

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Value, json};

pub use body::{Body, build_request};
pub use mend::mend_history;

use super::ir::{
    Conversation, Delta, Effort, Image, Message, Messages, Output, Part, Reasoning, Request,
    Response, Role, StopReason, TRANSLATED_THINKING, Tool, ToolChoice, Untranslatable, Usage,
    f64_field, new_id, parts_of, text_of, u64_field, untranslatable,
};
use super::policy;
use crate::json::{Document, Json, Raw};
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

pub fn parse_request(body: &Document) -> Result<Request, Untranslatable> {
    for key in body.keys() {
        if policy::left_out_everywhere(Format::Anthropic, &key) {
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
        stream: body.get("stream").and_then(Json::as_bool).unwrap_or(false),
        reasoning: reasoning(body)?,
        output: output(body)?,
        ..Request::default()
    };
    match body.get("system") {
        None => {}
        Some(v) if v.is_null() => {}
        Some(v) if v.is_string() => req.system.push(str_of(v)),
        Some(v) if v.is_array() => {
            for b in v.items() {
                match b.get("type").and_then(Json::as_str).as_deref() {
                    Some("text") => req.system.push(text_of(b, "text")),
                    _ => return untranslatable("system blocks must be text"),
                }
            }
        }
        Some(_) => return untranslatable("`system` must be a string or an array of text blocks"),
    }
    if let Some(stops) = body.get("stop_sequences").filter(|s| s.is_array()) {
        req.stop = stops
            .items()
            .filter_map(Json::as_str)
            .map(Cow::into_owned)
            .collect();
    }
    for t in body.get("tools").unwrap_or(Json::NULL).items() {
        if let Some(kind) = t
            .get("type")
            .and_then(Json::as_str)
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
                .and_then(Json::as_str)
                .map(Cow::into_owned),
            parameters: t
                .get("input_schema")
                .map_or_else(|| Raw::from_value(&json!({"type": "object"})), Raw::of),
            custom: false,
        });
    }
    req.tool_choice = match body.get("tool_choice") {
        None => None,
        Some(c) if c.is_null() => None,
        Some(c) => Some(match c.get("type").and_then(Json::as_str).as_deref() {
            Some("auto") => ToolChoice::Auto,
            Some("any") => ToolChoice::Required,
            Some("none") => ToolChoice::None,
            Some("tool") => ToolChoice::Tool(text_of(c, "name")),
            _ => return untranslatable("`tool_choice` is not known"),
        }),
    };
    if !body.get("messages").is_some_and(Json::is_array) {
        return untranslatable("`messages` must be an array");
    }
    let (messages, _) = Messages::read(body, "messages", read_message)?;
    req.messages = messages;
    Ok(req)
}

fn read_message(m: Json<'_>, to: &mut Conversation) -> Result<(), Untranslatable> {
    let role = match m.get("role").and_then(Json::as_str).as_deref() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system") => Role::System,
        Some(other) => return untranslatable(format!("message role `{other}` is not known")),
        None => return untranslatable("a message needs a role"),
    };
    to.push(Message::new(role, blocks(m.field("content"))?));
    Ok(())
}

/// A string value's text (a non-string reads as "").
fn str_of(v: Json<'_>) -> String {
    v.as_str().map(Cow::into_owned).unwrap_or_default()
}

/// `thinking` and `output_config.effort`.
fn reasoning(body: &Document) -> Result<Option<Reasoning>, Untranslatable> {
    let thinking = body.get("thinking").filter(|t| !t.is_null());
    let effort = body
        .get("output_config")
        .and_then(|c| c.get("effort"))
        .and_then(Json::as_str);
    if thinking.is_none() && effort.is_none() {
        return Ok(None);
    }
    let mut r = Reasoning {
        effort: effort.as_deref().and_then(effort_from),
        ..Reasoning::default()
    };
    if let Some(t) = thinking {
        let shown = t.get("display").and_then(Json::as_str).as_deref() != Some("omitted");
        match t.get("type").and_then(Json::as_str).as_deref() {
            Some("enabled") => {
                r.budget = t.get("budget_tokens").and_then(Json::as_u64);
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
fn output(body: &Document) -> Result<Option<Output>, Untranslatable> {
    let format = body
        .get("output_config")
        .and_then(|c| c.get("format"))
        .or_else(|| body.get("output_format"))
        .filter(|f| !f.is_null());
    let Some(f) = format else {
        return Ok(None);
    };
    match f.get("type").and_then(Json::as_str).as_deref() {
        Some("json_schema") => Ok(Some(Output::Schema {
            name: f
                .get("name")
                .and_then(Json::as_str)
                .map_or_else(|| "answer".to_string(), Cow::into_owned),
            schema: f
                .get("schema")
                .map_or_else(|| Raw::from_value(&json!({})), Raw::of),
            strict: None,
        })),
        _ => untranslatable("this output format cannot be carried to this model's provider"),
    }
}

fn blocks(content: Json<'_>) -> Result<Vec<Part>, Untranslatable> {
    if content.is_string() {
        return Ok(vec![Part::Text(str_of(content))]);
    }
    if !content.is_array() {
        return untranslatable("message content must be a string or an array of blocks");
    }
    let mut parts = Vec::new();
    for b in parts_of(content) {
        let b = b?;
        match b.get("type").and_then(Json::as_str).as_deref() {
            Some("text") => parts.push(Part::Text(str_of(b.field("text")))),
            Some("image") => {
                let src = b.field("source");
                parts.push(Part::Image(
                    match src.get("type").and_then(Json::as_str).as_deref() {
                        Some("base64") => Image::Base64 {
                            media_type: src
                                .get("media_type")
                                .and_then(Json::as_str)
                                .map_or_else(|| "image/png".to_string(), Cow::into_owned),
                            data: str_of(src.field("data")),
                        },
                        Some("url") => Image::Url(str_of(src.field("url"))),
                        _ => return untranslatable("an image source must be base64 or url"),
                    },
                ));
            }
            Some("document") => {
                let src = b.field("source");
                match src.get("type").and_then(Json::as_str).as_deref() {
                    Some("base64") => parts.push(Part::Document {
                        media_type: text_of(src, "media_type"),
                        data: text_of(src, "data"),
                        name: b.get("title").and_then(Json::as_str).map(Cow::into_owned),
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
                id: str_of(b.field("id")),
                name: str_of(b.field("name")),
                arguments: match b.field("input") {
                    v if v.is_object() => Raw::of(v),
                    _ => Raw::empty_object(),
                },
            }),
            Some("tool_result") => parts.push(Part::ToolResult {
                call_id: str_of(b.field("tool_use_id")),
                name: None,
                content: match b.field("content") {
                    c if c.is_null() => Vec::new(),
                    c => blocks(c)?,
                },
                is_error: b.get("is_error").and_then(Json::as_bool).unwrap_or(false),
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

pub fn parse_response(v: Json<'_>) -> Result<Response, Untranslatable> {
    let Some(content) = v.get("content").filter(|c| c.is_array()) else {
        return untranslatable("no content in the response");
    };
    let mut parts = Vec::new();
    for b in content.items() {
        match b.get("type").and_then(Json::as_str).as_deref() {
            Some("text") => parts.push(Part::Text(str_of(b.field("text")))),
            Some("tool_use") => parts.push(Part::ToolCall {
                id: str_of(b.field("id")),
                name: str_of(b.field("name")),
                arguments: b.get("input").map_or_else(Raw::empty_object, Raw::of),
            }),
            // The signature only Anthropic can check stays behind.
            Some("thinking") => parts.push(Part::Thinking(text_of(b, "thinking"))),
            _ => {}
        }
    }
    Ok(Response {
        id: v
            .get("id")
            .and_then(Json::as_str)
            .map_or_else(|| new_id("msg_"), Cow::into_owned),
        model: text_of(v, "model"),
        parts,
        stop: stop_from(
            &v.get("stop_reason")
                .and_then(Json::as_str)
                .unwrap_or(Cow::Borrowed("end_turn")),
        ),
        usage: v
            .get("usage")
            .map(super::usage::anthropic)
            .unwrap_or_default(),
    })
}

#[derive(Serialize)]
struct Answer<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<AnswerBlock<'a>>,
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
    usage: Value,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnswerBlock<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Raw,
    },
    Thinking {
        thinking: &'a str,
        signature: &'static str,
    },
}

/// The client's answer, as JSON text (a call's arguments written as they
/// came).
pub fn build_response(r: &Response, model: &str) -> Vec<u8> {
    let content = r
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(text) => Some(AnswerBlock::Text { text }),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(AnswerBlock::ToolUse {
                id,
                name,
                input: arguments,
            }),
            Part::Thinking(thinking) => Some(AnswerBlock::Thinking {
                thinking,
                signature: TRANSLATED_THINKING,
            }),
            _ => None,
        })
        .collect();
    let answer = Answer {
        id: if r.id.starts_with("msg_") {
            r.id.clone()
        } else {
            new_id("msg_")
        },
        kind: "message",
        role: "assistant",
        model,
        content,
        stop_reason: stop_to(r.stop),
        stop_sequence: None,
        usage: json!({"input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens}),
    };
    // Serialising into a Vec cannot fail.
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// Anthropic's event sequence -> deltas.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Content block index -> our tool call index.
    tool_blocks: Vec<(u64, usize)>,
    tools: usize,
    /// The usage `message_start` reported, updated by `message_delta`.
    usage: super::usage::AnthropicUsage,
}

impl Decoder {
    /// `Ok(None)` marks the end of the stream.
    pub fn feed(&mut self, event: &Event) -> Result<Option<Vec<Delta>>, Untranslatable> {
        let v = Json::parse(&event.data)
            .map_err(|_| Untranslatable("a stream event is not JSON".into()))?;
        let kind = v
            .get("type")
            .and_then(Json::as_str)
            .or(event.event.as_deref().map(Cow::Borrowed))
            .unwrap_or_default();
        let mut out = Vec::new();
        match kind.as_ref() {
            "message_start" => {
                let m = v.field("message");
                if let Some(u) = m.get("usage") {
                    self.usage.update(u);
                }
                out.push(Delta::Start {
                    id: text_of(m, "id"),
                    model: text_of(m, "model"),
                });
            }
            "content_block_start" => {
                let b = v.field("content_block");
                let at = v.get("index").and_then(Json::as_u64).unwrap_or(0);
                match b.get("type").and_then(Json::as_str).as_deref() {
                    Some("tool_use") => {
                        let index = self.tools;
                        self.tools += 1;
                        self.tool_blocks.push((at, index));
                        out.push(Delta::ToolStart {
                            index,
                            id: str_of(b.field("id")),
                            name: str_of(b.field("name")),
                        });
                    }
                    Some("text") => {
                        if let Some(t) = b
                            .get("text")
                            .and_then(Json::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            out.push(Delta::Text(t.into_owned()));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let d = v.field("delta");
                let at = v.get("index").and_then(Json::as_u64).unwrap_or(0);
                match d.get("type").and_then(Json::as_str).as_deref() {
                    Some("text_delta") => out.push(Delta::Text(str_of(d.field("text")))),
                    Some("thinking_delta") => out.push(Delta::Thinking(text_of(d, "thinking"))),
                    Some("input_json_delta") => {
                        if let Some(&(_, index)) = self.tool_blocks.iter().find(|(b, _)| *b == at) {
                            let json = str_of(d.field("partial_json"));
                            if !json.is_empty() {
                                out.push(Delta::ToolArgs { index, json });
                            }
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Json::as_str) {
                    out.push(Delta::Stop(stop_from(&r)));
                }
                if let Some(u) = v.get("usage") {
                    self.usage.update(u);
                    out.push(Delta::Usage(self.usage.usage()));
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
