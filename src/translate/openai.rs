//! OpenAI chat completions <-> the neutral form.

use serde_json::{Map, Value, json};

use super::ir::data_url;
use super::ir::{
    Delta, Effort, Image, Message, Output, Part, Reasoning, Request, Response, Role, StopReason,
    Tool, ToolChoice, Untranslatable, Usage, arguments_from_text, f64_field, image_from_url,
    new_id, result_text, stream_json, text_of, u64_field, untranslatable,
};
use super::policy;
use crate::sse::Event;
use crate::wire::Format;

pub fn parse_request(body: &Map<String, Value>) -> Result<Request, Untranslatable> {
    for key in body.keys() {
        if policy::left_out_everywhere(Format::OpenAi, key) {
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
        seed: body.get("seed").and_then(Value::as_i64),
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        ..Request::default()
    };
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req.stop.push(s.clone()),
        Some(Value::Array(a)) => {
            for s in a {
                match s.as_str() {
                    Some(s) => req.stop.push(s.to_string()),
                    None => return untranslatable("`stop` must hold strings"),
                }
            }
        }
        Some(_) => return untranslatable("`stop` must be a string or an array"),
    }
    req.reasoning = match body.get("reasoning_effort").and_then(Value::as_str) {
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
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        for t in tools {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return untranslatable(
                    "only function tools can be carried to this model's provider",
                );
            }
            let f = &t["function"];
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                return untranslatable("a tool needs a function name");
            };
            req.tools.push(Tool {
                name: name.to_string(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .map(String::from),
                parameters: f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                custom: false,
            });
        }
    }
    req.tool_choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(tool_choice_mode(s)?),
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(ToolChoice::Tool(name.to_string())),
            None => return untranslatable("tool_choice must name a function"),
        },
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return untranslatable("`messages` must be an array");
    };
    for m in messages {
        parse_message(m, &mut req)?;
    }
    Ok(req)
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
pub fn response_format(format: Option<&Value>) -> Result<Option<Output>, Untranslatable> {
    let Some(f) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match f.get("type").and_then(Value::as_str) {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Output::Json)),
        Some("json_schema") => {
            // Chat completions nest the schema; the Responses API does not.
            let spec = f.get("json_schema").unwrap_or(f);
            Ok(Some(Output::Schema {
                name: spec
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("answer")
                    .to_string(),
                schema: spec.get("schema").cloned().unwrap_or_else(|| json!({})),
                strict: spec.get("strict").and_then(Value::as_bool),
            }))
        }
        Some(other) => untranslatable(format!(
            "response_format `{other}` cannot be carried to this model's provider"
        )),
    }
}

fn parse_message(m: &Value, req: &mut Request) -> Result<(), Untranslatable> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    match role {
        // System messages before the conversation open it; later ones keep
        // their place.
        "system" | "developer" if req.messages.is_empty() => {
            req.system.push(content_text(&m["content"])?);
        }
        "system" | "developer" => {
            let text = content_text(&m["content"])?;
            req.messages
                .push(Message::new(Role::System, vec![Part::Text(text)]));
        }
        "user" => {
            let mut message = Message::new(Role::User, content_parts(&m["content"])?);
            message.cache = cache_markers(&m["content"]);
            req.messages.push(message);
        }
        "assistant" => {
            let content = m.get("content").unwrap_or(&Value::Null);
            let mut parts = match content {
                Value::Null => Vec::new(),
                c => content_parts(c)?,
            };
            let cache = cache_markers(content);
            parts.extend(tool_calls(m)?);
            let mut message = Message::new(Role::Assistant, parts);
            message.cache = cache;
            req.messages.push(message);
        }
        "tool" => {
            let call_id = text_of(m, "tool_call_id");
            let content = vec![Part::Text(content_text(&m["content"])?)];
            req.messages.push(Message::new(
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
fn tool_calls(message: &Value) -> Result<Vec<Part>, Untranslatable> {
    let calls = message.get("tool_calls").and_then(Value::as_array);
    calls
        .into_iter()
        .flatten()
        .map(|c| {
            let arguments = c.pointer("/function/arguments").and_then(Value::as_str);
            Ok(Part::ToolCall {
                id: text_of(c, "id"),
                name: c
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                arguments: arguments_from_text(arguments.unwrap_or(""))?,
            })
        })
        .collect()
}

/// `cache_control` markers of content parts (as OpenAI-compatible
/// gateways in front of Anthropic accept them), by part index.
fn cache_markers(content: &Value) -> Vec<(usize, Value)> {
    content
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| p.get("cache_control").map(|c| (i, c.clone())))
        .collect()
}

fn content_text(c: &Value) -> Result<String, Untranslatable> {
    match c {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(_) => {
            let parts = content_parts(c)?;
            result_text(&parts, "system and tool messages")
        }
        _ => untranslatable("message content must be a string or an array of parts"),
    }
}

fn content_parts(c: &Value) -> Result<Vec<Part>, Untranslatable> {
    match c {
        Value::String(s) => Ok(vec![Part::Text(s.clone())]),
        Value::Array(items) => items
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(Part::Text(
                    p["text"].as_str().unwrap_or_default().to_string(),
                )),
                Some("image_url") => {
                    let url = p
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    Ok(Part::Image(image_from_url(url)))
                }
                Some("file") => {
                    let f = &p["file"];
                    let data = f.get("file_data").and_then(Value::as_str);
                    match data.and_then(data_url) {
                        Some((media_type, data)) => Ok(Part::Document {
                            media_type,
                            data,
                            name: f.get("filename").and_then(Value::as_str).map(String::from),
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
            })
            .collect(),
        _ => untranslatable("message content must be a string or an array of parts"),
    }
}

/// The body to send an OpenAI-compatible upstream.
pub fn build_request(req: &Request, model: &str) -> Result<Value, Untranslatable> {
    let mut messages = Vec::new();
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": req.system.join("\n\n")}));
    }
    for m in &req.messages {
        match m.role {
            Role::System => {
                let text = result_text(&m.parts, "system messages")?;
                messages.push(json!({"role": "system", "content": text}));
            }
            Role::User => {
                let mut rest = Vec::new();
                for p in &m.parts {
                    match p {
                        Part::ToolResult {
                            call_id,
                            content,
                            is_error,
                            ..
                        } => {
                            let mut text = result_text(content, "OpenAI")?;
                            if *is_error && !text.starts_with("Error") {
                                text = format!("Error: {text}");
                            }
                            messages.push(
                                json!({"role": "tool", "tool_call_id": call_id, "content": text}),
                            );
                        }
                        other => rest.push(user_part(other)?),
                    }
                }
                if !rest.is_empty() {
                    messages.push(json!({"role": "user", "content": rest}));
                }
            }
            Role::Assistant => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for p in &m.parts {
                    match p {
                        Part::Text(t) => text.push_str(t),
                        Part::ToolCall {
                            id,
                            name,
                            arguments,
                        } => calls.push(json!({
                            "id": id, "type": "function",
                            "function": {"name": name, "arguments": arguments.to_string()}
                        })),
                        _ => {
                            return untranslatable(
                                "OpenAI assistant messages carry text and tool calls only",
                            );
                        }
                    }
                }
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = Value::Array(calls);
                }
                messages.push(msg);
            }
        }
    }
    let mut body = json!({"model": model, "messages": messages});
    // `max_tokens` is deprecated, and refused by reasoning models.
    if let Some(n) = req
        .max_tokens
        .filter(|n| *n <= super::ir::MAX_OUTPUT_CARRIED)
    {
        body["max_completion_tokens"] = json!(n);
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(p) = req.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(p) = req.presence_penalty {
        body["presence_penalty"] = json!(p);
    }
    if let Some(p) = req.frequency_penalty {
        body["frequency_penalty"] = json!(p);
    }
    if let Some(s) = req.seed {
        body["seed"] = json!(s);
    }
    if !req.stop.is_empty() {
        body["stop"] = json!(req.stop);
    }
    if let Some(effort) = req
        .reasoning
        .as_ref()
        .filter(|r| !r.off)
        .and_then(|r| r.effort_level())
    {
        body["reasoning_effort"] = json!(effort_to(effort));
    }
    if let Some(format) = &req.output {
        body["response_format"] = response_format_to(format);
    }
    if !req.tools.is_empty() {
        body["tools"] = Value::Array(
            req.tools
                .iter()
                .map(|t| {
                    let mut f = json!({"name": t.name, "parameters": t.parameters});
                    if let Some(d) = &t.description {
                        f["description"] = json!(d);
                    }
                    json!({"type": "function", "function": f})
                })
                .collect(),
        );
    }
    if let Some(choice) = &req.tool_choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
    }
    if req.stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    Ok(body)
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

pub fn response_format_to(format: &Output) -> Value {
    match format {
        Output::Json => json!({"type": "json_object"}),
        Output::Schema {
            name,
            schema,
            strict,
        } => {
            let mut spec = json!({"name": name, "schema": schema});
            if let Some(strict) = strict {
                spec["strict"] = json!(strict);
            }
            json!({"type": "json_schema", "json_schema": spec})
        }
    }
}

fn user_part(p: &Part) -> Result<Value, Untranslatable> {
    Ok(match p {
        Part::Text(t) => json!({"type": "text", "text": t}),
        Part::Image(Image::Url(url)) => json!({"type": "image_url", "image_url": {"url": url}}),
        Part::Image(Image::Base64 { media_type, data }) => {
            json!({"type": "image_url", "image_url": {"url": format!("data:{media_type};base64,{data}")}})
        }
        Part::Document {
            media_type,
            data,
            name,
        } => json!({"type": "file", "file": {
            "filename": name.clone().unwrap_or_else(|| "document.pdf".into()),
            "file_data": format!("data:{media_type};base64,{data}"),
        }}),
        _ => return untranslatable("a tool call cannot be part of a user message"),
    })
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

pub fn parse_response(v: &Value) -> Result<Response, Untranslatable> {
    let choice = v
        .pointer("/choices/0")
        .ok_or_else(|| Untranslatable("no choices in the response".into()))?;
    let msg = &choice["message"];
    let mut parts = Vec::new();
    if let Some(t) = reasoning_text(msg) {
        parts.push(Part::Thinking(t.to_string()));
    }
    if let Some(t) = msg.get("content").and_then(Value::as_str) {
        if !t.is_empty() {
            parts.push(Part::Text(t.to_string()));
        }
    }
    parts.extend(tool_calls(msg)?);
    Ok(Response {
        id: v
            .get("id")
            .and_then(Value::as_str)
            .map_or_else(|| new_id("chatcmpl-"), String::from),
        model: text_of(v, "model"),
        parts,
        stop: stop_from(
            choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .unwrap_or("stop"),
        ),
        usage: v.get("usage").map(usage_from).unwrap_or_default(),
    })
}

/// Usage as OpenAI reports it, with its cached and reasoning details.
fn usage_from(u: &Value) -> Usage {
    let n = |path: &str| u.pointer(path).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("/prompt_tokens"),
        output_tokens: n("/completion_tokens"),
        cached_tokens: n("/prompt_tokens_details/cached_tokens"),
        reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
    }
}

/// The reasoning OpenAI-compatible servers return beside the content
/// (`reasoning_content`; some name it `reasoning`).
fn reasoning_text(v: &Value) -> Option<&str> {
    v.get("reasoning_content")
        .or_else(|| v.get("reasoning"))
        .and_then(Value::as_str)
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
            "id": id, "type": "function", "function": {"name": name, "arguments": arguments.to_string()}
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
                id: text_of(&v, "id"),
                model: text_of(&v, "model"),
            });
        }
        if let Some(choice) = v.pointer("/choices/0") {
            let d = &choice["delta"];
            if let Some(t) = reasoning_text(d) {
                out.push(Delta::Thinking(t.to_string()));
            }
            if let Some(t) = d.get("content").and_then(Value::as_str) {
                if !t.is_empty() {
                    out.push(Delta::Text(t.to_string()));
                }
            }
            if let Some(calls) = d.get("tool_calls").and_then(Value::as_array) {
                for c in calls {
                    let their = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let index = match self.tools.iter().position(|&i| i == their) {
                        Some(i) => i,
                        None => {
                            self.tools.push(their);
                            let index = self.tools.len() - 1;
                            out.push(Delta::ToolStart {
                                index,
                                id: c
                                    .get("id")
                                    .and_then(Value::as_str)
                                    .map_or_else(|| new_id("call_"), String::from),
                                name: c
                                    .pointer("/function/name")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string(),
                            });
                            index
                        }
                    };
                    if let Some(args) = c.pointer("/function/arguments").and_then(Value::as_str) {
                        if !args.is_empty() {
                            out.push(Delta::ToolArgs {
                                index,
                                json: args.to_string(),
                            });
                        }
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                out.push(Delta::Stop(stop_from(reason)));
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
