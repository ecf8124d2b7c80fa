//! OpenAI Responses <-> the neutral form: requests in, Response objects
//! and the Responses event stream out. (Responses upstreams are only ever
//! passed through: a `responses_api` credential serves Responses clients as
//! they are, and every other client through chat completions.)

use std::borrow::Cow;

use serde_json::{Value, json};

use super::ir::{
    Conversation, Delta, Message, Messages, Part, Reasoning, Request, Response, Role, StopReason,
    Tool, ToolChoice, Untranslatable, Usage, arguments_from_text, custom_parameters, f64_field,
    image_from_url, new_id, parts_of, text_of, u64_field, untranslatable,
};
use super::policy;
use crate::json::{Document, Json, Raw};
use crate::sse::Event;
use crate::wire::{self, ErrorKind, Format};

pub fn parse_request(body: &Document) -> Result<Request, Untranslatable> {
    for key in body.keys() {
        if policy::left_out_everywhere(Format::Responses, &key) {
            return untranslatable(format!(
                "`{key}` is only served by credentials with the Responses API (responses_api)"
            ));
        }
    }
    let mut req = Request {
        max_tokens: u64_field(body, "max_output_tokens")?,
        temperature: f64_field(body, "temperature")?,
        top_p: f64_field(body, "top_p")?,
        stream: body.get("stream").and_then(Json::as_bool).unwrap_or(false),
        ..Request::default()
    };
    match body.get("instructions") {
        None => {}
        Some(v) if v.is_null() => {}
        Some(v) if v.is_string() => req.system.push(text_of_value(v)),
        Some(_) => return untranslatable("`instructions` must be a string"),
    }
    if let Some(r) = body.get("reasoning").filter(|r| r.is_object()) {
        let summary = r.get("summary").and_then(Json::as_str);
        req.reasoning = Some(match r.get("effort").and_then(Json::as_str).as_deref() {
            Some("none") => Reasoning {
                off: true,
                ..Reasoning::default()
            },
            effort => Reasoning {
                effort: effort.and_then(super::anthropic::effort_from),
                show: summary.is_some_and(|s| s != "none"),
                ..Reasoning::default()
            },
        });
    }
    req.output = super::openai::response_format(body.get("text").and_then(|t| t.get("format")))?;
    for t in body.get("tools").unwrap_or(Json::NULL).items() {
        if let Some(t) = tool(t)? {
            req.tools.push(t);
        }
    }
    req.tool_choice = tool_choice(body.get("tool_choice"))?;
    match body.get("input") {
        Some(v) if v.is_string() => {
            req.messages =
                vec![Message::new(Role::User, vec![Part::Text(text_of_value(v))])].into();
        }
        Some(v) if v.is_array() => {
            let (messages, system) = Messages::read(body, "input", read_item)?;
            req.system.extend(system);
            req.messages = messages;
        }
        None => {}
        Some(v) if v.is_null() => {}
        Some(_) => return untranslatable("`input` must be a string or an array of items"),
    }
    Ok(req)
}

/// A string value's text (a non-string reads as "").
fn text_of_value(v: Json<'_>) -> String {
    v.as_str().map(Cow::into_owned).unwrap_or_default()
}

/// Tools the Responses API runs itself, or whose calls only it knows:
/// offered to the model, not content of the conversation. Codex declares
/// `web_search` and `tool_search` in every request.
const HOSTED_TOOLS: &[&str] = &[
    "web_search",
    "web_search_preview",
    "tool_search",
    "file_search",
    "code_interpreter",
    "image_generation",
    "computer_use_preview",
    "mcp",
    "local_shell",
    "namespace",
];

/// A tool declaration; `None` for a hosted tool, which other providers go
/// without (the model simply cannot use it there).
fn tool(t: Json<'_>) -> Result<Option<Tool>, Untranslatable> {
    let description = t
        .get("description")
        .and_then(Json::as_str)
        .map(Cow::into_owned);
    match t.get("type").and_then(Json::as_str).as_deref() {
        Some("function") => Ok(Some(Tool {
            name: text_of(t, "name"),
            description,
            parameters: t.get("parameters").filter(|p| !p.is_null()).map_or_else(
                || Raw::from_value(&json!({"type": "object", "properties": {}})),
                Raw::of,
            ),
            custom: false,
        })),
        Some("custom") => Ok(Some(Tool {
            name: text_of(t, "name"),
            description,
            parameters: custom_parameters(),
            custom: true,
        })),
        Some(kind) if HOSTED_TOOLS.contains(&kind) || kind.starts_with("web_search") => Ok(None),
        Some(other) => untranslatable(format!(
            "the built-in tool `{other}` is only served by credentials with the Responses API"
        )),
        None => untranslatable("a tool needs a type"),
    }
}

fn tool_choice(choice: Option<Json<'_>>) -> Result<Option<ToolChoice>, Untranslatable> {
    Ok(match choice {
        None => None,
        Some(c) if c.is_null() => None,
        Some(c) if c.is_string() => Some(super::openai::tool_choice_mode(&text_of_value(c))?),
        Some(c) => match c.get("type").and_then(Json::as_str).as_deref() {
            Some("function" | "custom") => Some(ToolChoice::Tool(text_of(c, "name"))),
            Some("allowed_tools") => Some(match c.get("mode").and_then(Json::as_str).as_deref() {
                Some("required") => ToolChoice::Required,
                _ => ToolChoice::Auto,
            }),
            _ => {
                return untranslatable(
                    "this tool_choice is only served by credentials with the Responses API",
                );
            }
        },
    })
}

fn read_item(item: Json<'_>, to: &mut Conversation) -> Result<(), Untranslatable> {
    let kind = match item.get("type").and_then(Json::as_str) {
        Some(k) => k,
        None if item.get("role").is_some() => Cow::Borrowed("message"),
        None => return untranslatable("an input item needs a type"),
    };
    match kind.as_ref() {
        "message" => read_message(item, to)?,
        "function_call" => {
            let arguments = item
                .get("arguments")
                .and_then(Json::as_str)
                .unwrap_or_default();
            to.push_part(
                Role::Assistant,
                Part::ToolCall {
                    id: text_of(item, "call_id"),
                    name: text_of(item, "name"),
                    arguments: arguments_from_text(&arguments)?,
                },
            )?;
        }
        "custom_tool_call" => to.push_part(
            Role::Assistant,
            Part::ToolCall {
                id: text_of(item, "call_id"),
                name: text_of(item, "name"),
                arguments: Raw::from_value(&json!({"input": text_of(item, "input")})),
            },
        )?,
        "function_call_output" | "custom_tool_call_output" => {
            let text = output_text(item.field("output"))?;
            to.push_part(
                Role::User,
                Part::ToolResult {
                    call_id: text_of(item, "call_id"),
                    name: None,
                    content: vec![Part::Text(text)],
                    is_error: false,
                },
            )?;
        }
        // The model's own reasoning (and its encrypted state): never carried
        // to another format. A hosted web search the model ran holds only
        // its query; the answer that used it follows as a message.
        "reasoning" | "web_search_call" => {}
        other => {
            return untranslatable(format!(
                "the input item `{other}` is only served by credentials with the Responses API"
            ));
        }
    }
    Ok(())
}

fn read_message(item: Json<'_>, to: &mut Conversation) -> Result<(), Untranslatable> {
    let role = item
        .get("role")
        .and_then(Json::as_str)
        .unwrap_or(Cow::Borrowed("user"));
    let parts = content(item.field("content"))?;
    match role.as_ref() {
        "system" | "developer" => {
            let text = super::ir::result_text(&parts, "system messages")?;
            if to.is_empty() {
                to.system.push(text);
            } else {
                to.push(Message::new(Role::System, vec![Part::Text(text)]));
            }
        }
        "assistant" => to.push(Message::new(Role::Assistant, parts)),
        "user" => to.push(Message::new(Role::User, parts)),
        other => return untranslatable(format!("message role `{other}` is not known")),
    }
    Ok(())
}

fn content(c: Json<'_>) -> Result<Vec<Part>, Untranslatable> {
    if c.is_string() {
        return Ok(vec![Part::Text(text_of_value(c))]);
    }
    if c.is_null() {
        return Ok(Vec::new());
    }
    if !c.is_array() {
        return untranslatable("message content must be a string or an array of parts");
    }
    parts_of(c).map(|p| content_part(p?)).collect()
}

/// One part of a message's content.
fn content_part(p: Json<'_>) -> Result<Part, Untranslatable> {
    match p.get("type").and_then(Json::as_str).as_deref() {
        Some("input_text" | "output_text" | "text") => Ok(Part::Text(text_of(p, "text"))),
        Some("refusal") => Ok(Part::Text(text_of(p, "refusal"))),
        Some("input_file") => {
            let data = p.get("file_data").and_then(Json::as_str);
            // `file_data` is a data URL, or the bare base64 of a PDF.
            let inline = data.map(|d| {
                super::ir::data_url(&d)
                    .unwrap_or_else(|| ("application/pdf".into(), d.into_owned()))
            });
            match inline {
                Some((media_type, data)) => Ok(Part::Document {
                    media_type,
                    data,
                    name: p
                        .get("filename")
                        .and_then(Json::as_str)
                        .map(Cow::into_owned),
                }),
                None => untranslatable(
                    "a file by id or URL is only served by credentials with the Responses API",
                ),
            }
        }
        Some("input_image") => match p.get("image_url").and_then(Json::as_str) {
            Some(url) => Ok(Part::Image(image_from_url(&url))),
            None => untranslatable("an image by file id is only served by the Responses API"),
        },
        Some(other) => untranslatable(format!(
            "content part `{other}` cannot be carried to this model's provider"
        )),
        None => untranslatable("a content part needs a type"),
    }
}

/// A tool output: a string, or content parts of text.
fn output_text(output: Json<'_>) -> Result<String, Untranslatable> {
    if output.is_string() {
        Ok(text_of_value(output))
    } else if output.is_null() {
        Ok(String::new())
    } else {
        super::ir::result_text(&content(output)?, "tool outputs")
    }
}

/// One output item as it is being built.
#[derive(Debug, Clone)]
enum Item {
    Message {
        id: String,
        text: String,
    },
    Reasoning {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        args: String,
        custom: bool,
    },
}

impl Item {
    fn id(&self) -> &str {
        match self {
            Item::Message { id, .. } | Item::Reasoning { id, .. } | Item::Call { id, .. } => id,
        }
    }

    /// The item's JSON; `done` when it is complete.
    fn json(&self, done: bool) -> Value {
        let status = if done { "completed" } else { "in_progress" };
        match self {
            Item::Message { id, text } => {
                let content = if done {
                    json!([{"type": "output_text", "text": text, "annotations": []}])
                } else {
                    json!([])
                };
                json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
            }
            Item::Reasoning { id, text } => {
                let summary = if done {
                    json!([{"type": "summary_text", "text": text}])
                } else {
                    json!([])
                };
                json!({"type": "reasoning", "id": id, "summary": summary})
            }
            Item::Call {
                id,
                call_id,
                name,
                args,
                custom,
            } => {
                let args = if done { args.as_str() } else { "" };
                if *custom {
                    json!({"type": "custom_tool_call", "id": id, "call_id": call_id, "name": name,
                           "input": if done { custom_input(args) } else { String::new() }, "status": status})
                } else {
                    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
                           "arguments": args, "status": status})
                }
            }
        }
    }
}

/// A custom tool's free text, from the arguments another provider gave
/// the function it was carried as.
fn custom_input(args: &str) -> String {
    match Json::parse(args) {
        Ok(o) if o.is_object() => match o.get("input") {
            Some(s) if s.is_string() => text_of_value(s),
            Some(other) => other.compact().into_owned(),
            None => args.to_string(),
        },
        _ => args.to_string(),
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// The Response object around `output`.
fn response_json(
    id: &str,
    created_at: i64,
    model: &str,
    stop: Option<StopReason>,
    output: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    let incomplete = match stop {
        Some(StopReason::MaxTokens) => Some("max_output_tokens"),
        Some(StopReason::ContentFilter) => Some("content_filter"),
        _ => None,
    };
    let status = match (stop, incomplete) {
        (None, _) => "in_progress",
        (Some(_), Some(_)) => "incomplete",
        (Some(_), None) => "completed",
    };
    json!({
        "id": id, "object": "response", "created_at": created_at, "status": status,
        "error": null,
        "incomplete_details": incomplete.map(|r| json!({"reason": r})),
        "model": model, "output": output,
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "usage": usage.map(usage_json),
    })
}

/// Items of a complete answer, in order: reasoning, text, calls.
fn items_of(r: &Response, custom: &[String]) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    for p in &r.parts {
        match p {
            Part::Text(t) => match items.last_mut() {
                Some(Item::Message { text, .. }) => text.push_str(t),
                _ => items.push(Item::Message {
                    id: new_id("msg_"),
                    text: t.clone(),
                }),
            },
            Part::Thinking(t) => items.push(Item::Reasoning {
                id: new_id("rs_"),
                text: t.clone(),
            }),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => items.push(Item::Call {
                id: new_id("fc_"),
                call_id: id.clone(),
                name: name.clone(),
                args: arguments.json().compact().into_owned(),
                custom: custom.contains(name),
            }),
            _ => {}
        }
    }
    items
}

/// The Response object of a complete answer; `custom` names the request's
/// custom tools (their calls are answered as `custom_tool_call`).
pub fn build_response(r: &Response, model: &str, custom: &[String]) -> Value {
    let output = items_of(r, custom).iter().map(|i| i.json(true)).collect();
    let id = if r.id.starts_with("resp_") {
        r.id.clone()
    } else {
        new_id("resp_")
    };
    response_json(
        &id,
        chrono::Utc::now().timestamp(),
        model,
        Some(r.stop),
        output,
        Some(&r.usage),
    )
}

/// Deltas -> the Responses event stream, every event numbered.
#[derive(Debug)]
pub struct Encoder {
    model: String,
    id: String,
    created_at: i64,
    sequence: u64,
    started: bool,
    items: Vec<Item>,
    /// Which items are complete.
    done: Vec<bool>,
    /// The text or reasoning item open now.
    open: Option<usize>,
    /// Our tool call index -> its item.
    calls: Vec<usize>,
    custom: Vec<String>,
    stop: Option<StopReason>,
    usage: Usage,
}

impl Encoder {
    /// `custom` names the request's custom tools.
    pub fn new(model: &str, custom: Vec<String>) -> Self {
        Self {
            model: model.to_string(),
            id: new_id("resp_"),
            created_at: chrono::Utc::now().timestamp(),
            sequence: 0,
            started: false,
            items: Vec::new(),
            done: Vec::new(),
            open: None,
            calls: Vec::new(),
            custom,
            stop: None,
            usage: Usage::default(),
        }
    }

    fn event(&mut self, kind: &str, mut data: Value, out: &mut Vec<Event>) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push(Event::named(kind, data.to_string()));
    }

    fn snapshot(&self, stop: Option<StopReason>) -> Value {
        let output = self
            .items
            .iter()
            .zip(&self.done)
            .map(|(i, done)| i.json(*done))
            .collect();
        let usage = stop.map(|_| &self.usage);
        response_json(&self.id, self.created_at, &self.model, stop, output, usage)
    }

    fn start(&mut self, out: &mut Vec<Event>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let response = self.snapshot(None);
        self.event("response.created", json!({"response": response}), out);
        let response = self.snapshot(None);
        self.event("response.in_progress", json!({"response": response}), out);
    }

    fn add(&mut self, item: Item, out: &mut Vec<Event>) -> usize {
        let index = self.items.len();
        let json = item.json(false);
        self.items.push(item);
        self.done.push(false);
        self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": json}),
            out,
        );
        index
    }

    /// Completes item `index`: its closing events, then `output_item.done`.
    fn complete(&mut self, index: usize, out: &mut Vec<Event>) {
        if self.done[index] {
            return;
        }
        self.done[index] = true;
        let item = self.items[index].clone();
        let item_id = item.id().to_string();
        match &item {
            Item::Message { text, .. } => {
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                self.event("response.output_text.done", json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}), out);
                self.event("response.content_part.done", json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}), out);
            }
            Item::Reasoning { text, .. } => {
                let part = json!({"type": "summary_text", "text": text});
                self.event("response.reasoning_summary_text.done", json!({"item_id": item_id, "output_index": index, "summary_index": 0, "text": text}), out);
                self.event("response.reasoning_summary_part.done", json!({"item_id": item_id, "output_index": index, "summary_index": 0, "part": part}), out);
            }
            Item::Call { args, custom, .. } => {
                if *custom {
                    let input = custom_input(args);
                    self.event(
                        "response.custom_tool_call_input.delta",
                        json!({"item_id": item_id, "output_index": index, "delta": input}),
                        out,
                    );
                    self.event(
                        "response.custom_tool_call_input.done",
                        json!({"item_id": item_id, "output_index": index, "input": input}),
                        out,
                    );
                } else {
                    self.event(
                        "response.function_call_arguments.done",
                        json!({"item_id": item_id, "output_index": index, "arguments": args}),
                        out,
                    );
                }
            }
        }
        let json = item.json(true);
        self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": json}),
            out,
        );
    }

    /// Completes what is open: the text or reasoning item and every call.
    fn close_all(&mut self, out: &mut Vec<Event>) {
        self.open = None;
        for index in 0..self.items.len() {
            self.complete(index, out);
        }
    }

    fn text(&mut self, t: &str, thinking: bool, out: &mut Vec<Event>) {
        self.start(out);
        let open = self.open.filter(|i| {
            matches!(
                (&self.items[*i], thinking),
                (Item::Message { .. }, false) | (Item::Reasoning { .. }, true)
            )
        });
        let index = match open {
            Some(i) => i,
            None => {
                self.close_all(out);
                let index = if thinking {
                    let i = self.add(
                        Item::Reasoning {
                            id: new_id("rs_"),
                            text: String::new(),
                        },
                        out,
                    );
                    let id = self.items[i].id().to_string();
                    self.event("response.reasoning_summary_part.added", json!({"item_id": id, "output_index": i, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}), out);
                    i
                } else {
                    let i = self.add(
                        Item::Message {
                            id: new_id("msg_"),
                            text: String::new(),
                        },
                        out,
                    );
                    let id = self.items[i].id().to_string();
                    self.event("response.content_part.added", json!({"item_id": id, "output_index": i, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}), out);
                    i
                };
                self.open = Some(index);
                index
            }
        };
        if let Item::Message { text, .. } | Item::Reasoning { text, .. } = &mut self.items[index] {
            text.push_str(t);
        }
        let id = self.items[index].id().to_string();
        if thinking {
            self.event(
                "response.reasoning_summary_text.delta",
                json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": t}),
                out,
            );
        } else {
            self.event("response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": t, "logprobs": []}), out);
        }
    }

    pub fn encode(&mut self, delta: &Delta, out: &mut Vec<Event>) {
        match delta {
            Delta::Start { .. } => self.start(out),
            Delta::Text(t) => self.text(t, false, out),
            Delta::Thinking(t) => self.text(t, true, out),
            Delta::ToolStart { id, name, .. } => {
                self.start(out);
                if let Some(open) = self.open.take() {
                    self.complete(open, out);
                }
                let custom = self.custom.contains(name);
                let index = self.add(
                    Item::Call {
                        id: new_id("fc_"),
                        call_id: id.clone(),
                        name: name.clone(),
                        args: String::new(),
                        custom,
                    },
                    out,
                );
                self.calls.push(index);
            }
            Delta::ToolArgs { index, json } => {
                let Some(&item) = self.calls.get(*index) else {
                    return;
                };
                let Item::Call {
                    id, args, custom, ..
                } = &mut self.items[item]
                else {
                    return;
                };
                args.push_str(json);
                // A custom tool's free text is only known once its arguments are whole.
                if !*custom {
                    let id = id.clone();
                    self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": item, "delta": json}),
                        out,
                    );
                }
            }
            Delta::Stop(reason) => self.stop = Some(*reason),
            Delta::Usage(u) => self.usage = *u,
        }
    }

    pub fn finish(&mut self, out: &mut Vec<Event>) {
        self.start(out);
        self.close_all(out);
        let response = self.snapshot(Some(self.stop.unwrap_or(StopReason::EndTurn)));
        self.event("response.completed", json!({"response": response}), out);
    }

    /// The event that ends this stream when it fails after it began.
    pub fn failed(&mut self, kind: ErrorKind, message: &str) -> Event {
        let mut event = wire::response_failed(kind, message, self.sequence);
        self.sequence += 1;
        if let Ok(mut v) = serde_json::from_str::<Value>(&event.data) {
            v["response"]["id"] = json!(self.id);
            v["response"]["model"] = json!(self.model);
            event.data = v.to_string();
        }
        event
    }
}

/// The kind of a Responses stream event, for passthrough relaying.
pub enum EventKind {
    Content,
    Done,
    Failed,
    Other,
}

pub fn event_kind(kind: &str) -> EventKind {
    match kind {
        "response.output_text.delta"
        | "response.reasoning_summary_text.delta"
        | "response.reasoning_text.delta"
        | "response.function_call_arguments.delta"
        | "response.custom_tool_call_input.delta"
        | "response.output_item.added" => EventKind::Content,
        "response.completed" | "response.incomplete" => EventKind::Done,
        "response.failed" | "error" => EventKind::Failed,
        _ => EventKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codex_style_input_items_become_a_conversation() {
        let body = json!({
            "model": "m", "instructions": "be brief",
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "run it"}]},
                {"type": "reasoning", "summary": [], "encrypted_content": "opaque"},
                {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{\"command\":[\"ls\"]}"},
                {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
                {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
                {"type": "custom_tool_call_output", "call_id": "c2", "output": "Done"}
            ],
            "tools": [{"type": "function", "name": "shell", "parameters": {"type": "object"}},
                      {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}}],
            "reasoning": {"effort": "high", "summary": "auto"}
        });
        let req = parse_request(&Document::from_value(&body)).unwrap();
        assert_eq!(req.system, vec!["be brief", "rules"]);
        assert_eq!(req.messages.len(), 3, "user, assistant calls, user results");
        assert_eq!(req.messages.to_vec()[1].parts.len(), 2);
        assert!(req.tools[1].custom);
        assert_eq!(
            req.reasoning.as_ref().unwrap().effort,
            Some(super::super::ir::Effort::High)
        );
    }

    #[test]
    fn stateful_and_built_in_requests_stay_with_the_responses_api() {
        for body in [
            json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
            json!({"model": "m", "input": "x", "tools": [{"type": "computer_2099"}]}),
            json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
        ] {
            assert!(
                parse_request(&Document::from_value(&body)).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn a_custom_tool_call_is_answered_as_one() {
        let r = Response {
            id: "x".into(),
            model: "up".into(),
            parts: vec![Part::ToolCall {
                id: "c1".into(),
                name: "apply_patch".into(),
                arguments: Raw::from_value(&json!({"input": "*** Begin Patch"})),
            }],
            stop: StopReason::ToolUse,
            usage: Usage::default(),
        };
        let v = build_response(&r, "m", &["apply_patch".into()]);
        assert_eq!(v["output"][0]["type"], "custom_tool_call");
        assert_eq!(v["output"][0]["input"], "*** Begin Patch");
        assert_eq!(v["model"], "m");
    }
}
