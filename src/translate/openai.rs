//! OpenAI chat completions <-> the neutral form.

mod body;

use std::borrow::Cow;

use serde_json::{Value, json};

pub use body::{Body, build_request};

use super::ir::data_url;
use super::ir::{
    Conversation, Delta, Effort, Message, Messages, Output, Part, Reasoning, Request, Response,
    Role, StopReason, Tool, ToolChoice, Untranslatable, Usage, arguments_from_text, f64_field,
    image_from_url, new_id, parts_of, result_text, stream_json, text_of, u64_field, untranslatable,
};
use super::policy;
use crate::json::{Document, Json, Raw};
use crate::sse::Event;
use crate::wire::Format;

pub fn parse_request(body: &Document) -> Result<Request, Untranslatable> {
    for key in body.keys() {
        if policy::left_out_everywhere(Format::OpenAi, &key) {
            return untranslatable(format!(
                "`{key}` cannot be carried to this model's provider"
            ));
        }
    }
    if u64_field(body, "n")?.is_some_and(|n| n != 1) {
        return untranslatable("`n` other than 1 cannot be carried to this model's provider");
    }
    let mut req = Request {
        max_tokens: match u64_field(body, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => u64_field(body, "max_tokens")?,
        },
        temperature: f64_field(body, "temperature")?,
        top_p: f64_field(body, "top_p")?,
        presence_penalty: f64_field(body, "presence_penalty")?,
        frequency_penalty: f64_field(body, "frequency_penalty")?,
        seed: body.get("seed").and_then(Json::as_i64),
        stream: body.get("stream").and_then(Json::as_bool).unwrap_or(false),
        ..Request::default()
    };
    match body.get("stop") {
        None => {}
        Some(v) if v.is_null() => {}
        Some(v) if v.is_string() => req.stop.push(str_of(v)),
        Some(v) if v.is_array() => {
            for s in v.items() {
                match s.as_str() {
                    Some(s) => req.stop.push(s.into_owned()),
                    None => return untranslatable("`stop` must hold strings"),
                }
            }
        }
        Some(_) => return untranslatable("`stop` must be a string or an array"),
    }
    req.reasoning = match body
        .get("reasoning_effort")
        .and_then(Json::as_str)
        .as_deref()
    {
        None => None,
        Some("none") => Some(Reasoning {
            off: true,
            ..Reasoning::default()
        }),
        Some(e) => super::anthropic::effort_from(e).map(|effort| Reasoning {
            effort: Some(effort),
            ..Reasoning::default()
        }),
    };
    req.output = response_format(body.get("response_format"))?;
    for t in body.get("tools").unwrap_or(Json::NULL).items() {
        if t.get("type").and_then(Json::as_str).as_deref() != Some("function") {
            return untranslatable("only function tools can be carried to this model's provider");
        }
        let f = t.field("function");
        let Some(name) = f.get("name").and_then(Json::as_str) else {
            return untranslatable("a tool needs a function name");
        };
        req.tools.push(Tool {
            name: name.into_owned(),
            description: f
                .get("description")
                .and_then(Json::as_str)
                .map(Cow::into_owned),
            parameters: f.get("parameters").map_or_else(
                || Raw::from_value(&json!({"type": "object", "properties": {}})),
                Raw::of,
            ),
            custom: false,
        });
    }
    req.tool_choice = match body.get("tool_choice") {
        None => None,
        Some(v) if v.is_null() => None,
        Some(v) if v.is_string() => Some(tool_choice_mode(&str_of(v))?),
        Some(v) => match v.pointer("/function/name").and_then(Json::as_str) {
            Some(name) => Some(ToolChoice::Tool(name.into_owned())),
            None => return untranslatable("tool_choice must name a function"),
        },
    };
    if !body.get("messages").is_some_and(Json::is_array) {
        return untranslatable("`messages` must be an array");
    }
    let (messages, system) = Messages::read(body, "messages", read_message)?;
    req.system.extend(system);
    req.messages = messages;
    Ok(req)
}

/// A string value's text (a non-string reads as "").
fn str_of(v: Json<'_>) -> String {
    v.as_str().map(Cow::into_owned).unwrap_or_default()
}

/// `tool_choice` given as a word (chat completions and Responses alike).
pub fn tool_choice_mode(mode: &str) -> Result<ToolChoice, Untranslatable> {
    Ok(match mode {
        "auto" => ToolChoice::Auto,
        "none" => ToolChoice::None,
        "required" => ToolChoice::Required,
        other => return untranslatable(format!("tool_choice `{other}` is not known")),
    })
}

/// `response_format`: text, a JSON object, or JSON following a schema.
pub fn response_format(format: Option<Json<'_>>) -> Result<Option<Output>, Untranslatable> {
    let Some(f) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match f.get("type").and_then(Json::as_str).as_deref() {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Output::Json)),
        Some("json_schema") => {
            // Chat completions nest the schema; the Responses API does not.
            let spec = f.get("json_schema").unwrap_or(f);
            Ok(Some(Output::Schema {
                name: spec
                    .get("name")
                    .and_then(Json::as_str)
                    .map_or_else(|| "answer".to_string(), Cow::into_owned),
                schema: spec
                    .get("schema")
                    .map_or_else(|| Raw::from_value(&json!({})), Raw::of),
                strict: spec.get("strict").and_then(Json::as_bool),
            }))
        }
        Some(other) => untranslatable(format!(
            "response_format `{other}` cannot be carried to this model's provider"
        )),
    }
}

fn read_message(m: Json<'_>, to: &mut Conversation) -> Result<(), Untranslatable> {
    let role = m.get("role").and_then(Json::as_str).unwrap_or_default();
    match role.as_ref() {
        // System messages before the conversation open it; later ones keep
        // their place.
        "system" | "developer" if to.is_empty() => {
            to.system.push(content_text(m.field("content"))?);
        }
        "system" | "developer" => {
            let text = content_text(m.field("content"))?;
            to.push(Message::new(Role::System, vec![Part::Text(text)]));
        }
        "user" => {
            let content = m.field("content");
            let mut message = Message::new(Role::User, content_parts(content)?);
            message.cache = cache_markers(content);
            to.push(message);
        }
        "assistant" => {
            let content = m.field("content");
            let mut parts = if content.is_null() {
                Vec::new()
            } else {
                content_parts(content)?
            };
            let cache = cache_markers(content);
            parts.extend(tool_calls(m)?);
            let mut message = Message::new(Role::Assistant, parts);
            message.cache = cache;
            to.push(message);
        }
        "tool" => {
            let call_id = text_of(m, "tool_call_id");
            let content = vec![Part::Text(content_text(m.field("content"))?)];
            to.push(Message::new(
                Role::User,
                vec![Part::ToolResult {
                    call_id,
                    name: None,
                    content,
                    is_error: false,
                }],
            ));
        }
        other => {
            return untranslatable(format!(
                "message role `{other}` cannot be carried to this model's provider"
            ));
        }
    }
    Ok(())
}

/// The `tool_calls` of an assistant message.
fn tool_calls(message: Json<'_>) -> Result<Vec<Part>, Untranslatable> {
    parts_of(message.field("tool_calls"))
        .map(|c| {
            let c = c?;
            let arguments = c
                .pointer("/function/arguments")
                .and_then(Json::as_str)
                .unwrap_or_default();
            Ok(Part::ToolCall {
                id: text_of(c, "id"),
                name: c
                    .pointer("/function/name")
                    .and_then(Json::as_str)
                    .map(Cow::into_owned)
                    .unwrap_or_default(),
                arguments: arguments_from_text(&arguments)?,
            })
        })
        .collect()
}

/// `cache_control` markers of content parts (as OpenAI-compatible
/// gateways in front of Anthropic accept them), by part index.
fn cache_markers(content: Json<'_>) -> Vec<(usize, Raw)> {
    content
        .items()
        .enumerate()
        .filter_map(|(i, p)| p.get("cache_control").map(|c| (i, Raw::of(c))))
        .collect()
}

fn content_text(c: Json<'_>) -> Result<String, Untranslatable> {
    if c.is_string() {
        Ok(str_of(c))
    } else if c.is_null() {
        Ok(String::new())
    } else if c.is_array() {
        let parts = content_parts(c)?;
        result_text(&parts, "system and tool messages")
    } else {
        untranslatable("message content must be a string or an array of parts")
    }
}

fn content_parts(c: Json<'_>) -> Result<Vec<Part>, Untranslatable> {
    if c.is_string() {
        return Ok(vec![Part::Text(str_of(c))]);
    }
    if !c.is_array() {
        return untranslatable("message content must be a string or an array of parts");
    }
    parts_of(c).map(|p| content_part(p?)).collect()
}

/// One part of a message's content.
fn content_part(p: Json<'_>) -> Result<Part, Untranslatable> {
    match p.get("type").and_then(Json::as_str).as_deref() {
        Some("text") => Ok(Part::Text(str_of(p.field("text")))),
        Some("image_url") => {
            let url = p
                .pointer("/image_url/url")
                .and_then(Json::as_str)
                .unwrap_or_default();
            Ok(Part::Image(image_from_url(&url)))
        }
        Some("file") => {
            let f = p.field("file");
            let data = f.get("file_data").and_then(Json::as_str);
            match data.as_deref().and_then(data_url) {
                Some((media_type, data)) => Ok(Part::Document {
                    media_type,
                    data,
                    name: f
                        .get("filename")
                        .and_then(Json::as_str)
                        .map(Cow::into_owned),
                }),
                None => untranslatable(
                    "only inline files (file_data) can be carried to this model's provider",
                ),
            }
        }
        Some(other) => untranslatable(format!(
            "content part `{other}` cannot be carried to this model's provider"
        )),
        None => untranslatable("a content part needs a type"),
    }
}

/// OpenAI's `reasoning_effort` nearest to an effort: the values every
/// reasoning model takes.
pub fn effort_to(effort: Effort) -> &'static str {
    match effort {
        Effort::Minimal | Effort::Low => "low",
        Effort::Medium => "medium",
        Effort::High | Effort::Max => "high",
    }
}

pub fn stop_from(reason: &str) -> StopReason {
    match reason {
        "length" => StopReason::MaxTokens,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "content_filter" => StopReason::ContentFilter,
        _ => StopReason::EndTurn,
    }
}

pub fn stop_to(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn | StopReason::StopSequence => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::ContentFilter => "content_filter",
    }
}

pub fn parse_response(v: Json<'_>) -> Result<Response, Untranslatable> {
    let choice = v
        .pointer("/choices/0")
        .ok_or_else(|| Untranslatable("no choices in the response".into()))?;
    let msg = choice.field("message");
    let mut parts = Vec::new();
    if let Some(t) = reasoning_text(msg) {
        parts.push(Part::Thinking(t.into_owned()));
    }
    if let Some(t) = msg.get("content").and_then(Json::as_str) {
        if !t.is_empty() {
            parts.push(Part::Text(t.into_owned()));
        }
    }
    parts.extend(tool_calls(msg)?);
    Ok(Response {
        id: v
            .get("id")
            .and_then(Json::as_str)
            .map_or_else(|| new_id("chatcmpl-"), Cow::into_owned),
        model: text_of(v, "model"),
        parts,
        stop: stop_from(
            &choice
                .get("finish_reason")
                .and_then(Json::as_str)
                .unwrap_or(Cow::Borrowed("stop")),
        ),
        usage: v.get("usage").map(usage_from).unwrap_or_default(),
    })
}

/// Usage as OpenAI reports it, with its cached and reasoning details.
fn usage_from(u: Json<'_>) -> Usage {
    super::usage::openai(u)
}

/// The reasoning OpenAI-compatible servers return beside the content
/// (`reasoning_content`; some name it `reasoning`).
fn reasoning_text(v: Json<'_>) -> Option<Cow<'_, str>> {
    v.get("reasoning_content")
        .or_else(|| v.get("reasoning"))
        .and_then(Json::as_str)
        .filter(|t| !t.is_empty())
}

pub fn build_response(r: &Response, model: &str) -> Value {
    let reasoning: String = r
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Thinking(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let text: String = r
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<Value> = r.parts.iter().filter_map(|p| match p {
        Part::ToolCall { id, name, arguments } => Some(json!({
            "id": id, "type": "function", "function": {"name": name, "arguments": arguments.json().compact()}
        })),
        _ => None,
    }).collect();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    json!({
        "id": if r.id.starts_with("chatcmpl-") { r.id.clone() } else { new_id("chatcmpl-") },
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": stop_to(r.stop)}],
        "usage": {
            "prompt_tokens": r.usage.input_tokens,
            "completion_tokens": r.usage.output_tokens,
            "total_tokens": r.usage.input_tokens + r.usage.output_tokens
        }
    })
}

/// OpenAI stream chunks -> deltas.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    /// OpenAI's tool call index -> ours.
    tools: Vec<u64>,
}

impl Decoder {
    /// `Ok(None)` marks the end of the stream.
    pub fn feed(&mut self, event: &Event) -> Result<Option<Vec<Delta>>, Untranslatable> {
        if event.data.trim() == "[DONE]" {
            return Ok(None);
        }
        let v = stream_json(event)?;
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(Delta::Start {
                id: text_of(v, "id"),
                model: text_of(v, "model"),
            });
        }
        if let Some(choice) = v.pointer("/choices/0") {
            let d = choice.field("delta");
            if let Some(t) = reasoning_text(d) {
                out.push(Delta::Thinking(t.into_owned()));
            }
            if let Some(t) = d.get("content").and_then(Json::as_str) {
                if !t.is_empty() {
                    out.push(Delta::Text(t.into_owned()));
                }
            }
            if let Some(calls) = d.get("tool_calls").filter(|c| c.is_array()) {
                for c in calls.items() {
                    let their = c.get("index").and_then(Json::as_u64).unwrap_or(0);
                    let index = match self.tools.iter().position(|&i| i == their) {
                        Some(i) => i,
                        None => {
                            self.tools.push(their);
                            let index = self.tools.len() - 1;
                            out.push(Delta::ToolStart {
                                index,
                                id: c
                                    .get("id")
                                    .and_then(Json::as_str)
                                    .map_or_else(|| new_id("call_"), Cow::into_owned),
                                name: c
                                    .pointer("/function/name")
                                    .and_then(Json::as_str)
                                    .map(Cow::into_owned)
                                    .unwrap_or_default(),
                            });
                            index
                        }
                    };
                    if let Some(args) = c.pointer("/function/arguments").and_then(Json::as_str) {
                        if !args.is_empty() {
                            out.push(Delta::ToolArgs {
                                index,
                                json: args.into_owned(),
                            });
                        }
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Json::as_str) {
                out.push(Delta::Stop(stop_from(&reason)));
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            out.push(Delta::Usage(usage_from(u)));
        }
        Ok(Some(out))
    }
}

/// Deltas -> OpenAI stream chunks.
#[derive(Debug)]
pub struct Encoder {
    id: String,
    model: String,
    created: i64,
    stop: Option<StopReason>,
    usage: Option<Usage>,
    /// Whether the client asked for a usage chunk.
    include_usage: bool,
}

impl Encoder {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: new_id("chatcmpl-"),
            model: model.to_string(),
            created: chrono::Utc::now().timestamp(),
            stop: None,
            usage: None,
            include_usage,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Event {
        Event::data(json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        }).to_string())
    }

    pub fn encode(&mut self, delta: &Delta, out: &mut Vec<Event>) {
        match delta {
            Delta::Start { .. } => out.push(self.chunk(json!({"role": "assistant", "content": ""}), None)),
            Delta::Text(t) => out.push(self.chunk(json!({"content": t}), None)),
            Delta::Thinking(t) => out.push(self.chunk(json!({"reasoning_content": t}), None)),
            Delta::ToolStart { index, id, name } => out.push(self.chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            )),
            Delta::ToolArgs { index, json } => out.push(self.chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": json}}]}),
                None,
            )),
            Delta::Stop(reason) => self.stop = Some(*reason),
            Delta::Usage(u) => self.usage = Some(*u),
        }
    }

    /// The closing chunks, once the upstream stream has ended.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let reason = stop_to(self.stop.unwrap_or(StopReason::EndTurn));
        out.push(self.chunk(json!({}), Some(reason)));
        if self.include_usage {
            let u = self.usage.unwrap_or_default();
            out.push(Event::data(json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [],
                "usage": {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens, "total_tokens": u.input_tokens + u.output_tokens}
            }).to_string()));
        }
        out.push(Event::data("[DONE]"));
    }
}
