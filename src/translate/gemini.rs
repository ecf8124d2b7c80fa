//! Gemini generateContent <-> the neutral form.

mod body;
mod mend;

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

pub use body::{Body, build_request};
pub use mend::mend_history;

use super::ir::{
    Conversation, Delta, Image, Message, Messages, Output, Part, Reasoning, Request, Response,
    Role, StopReason, TRANSLATED_THINKING, Tool, ToolChoice, Untranslatable, Usage, new_id,
    parts_of, stream_json, text_of, untranslatable,
};
use super::policy;
use crate::json::{Document, Json, Raw};
use crate::sse::Event;
use crate::wire::Format;

/// A field of a Gemini object, by its camelCase or snake_case name.
fn get<'a>(v: Json<'a>, camel: &str, snake: &str) -> Option<Json<'a>> {
    v.get(camel).or_else(|| v.get(snake))
}

fn get_top<'a>(body: &'a Document, camel: &str, snake: &str) -> Option<Json<'a>> {
    body.get(camel).or_else(|| body.get(snake))
}

pub fn parse_request(body: &Document) -> Result<Request, Untranslatable> {
    for key in body.keys() {
        if policy::left_out_everywhere(Format::Gemini, &camel(&key)) {
            return untranslatable(format!(
                "`{key}` cannot be carried to this model's provider"
            ));
        }
    }
    let mut req = Request::default();
    if let Some(sys) = get_top(body, "systemInstruction", "system_instruction") {
        for p in sys.field("parts").items() {
            match p.get("text").and_then(Json::as_str) {
                Some(t) => req.system.push(t.into_owned()),
                None => return untranslatable("system instructions must be text"),
            }
        }
    }
    if let Some(cfg) =
        get_top(body, "generationConfig", "generation_config").filter(|c| c.is_object())
    {
        generation_config(cfg, &mut req)?;
    }
    for t in get_top(body, "tools", "tools")
        .unwrap_or(Json::NULL)
        .items()
    {
        for (k, v) in t.entries() {
            match k.as_ref() {
                "functionDeclarations" | "function_declarations" => {
                    for f in v.items() {
                        let parameters =
                            match get(f, "parametersJsonSchema", "parameters_json_schema") {
                                Some(schema) => Raw::of(schema),
                                None => f.get("parameters").map_or_else(
                                    || {
                                        Raw::from_value(
                                            &json!({"type": "object", "properties": {}}),
                                        )
                                    },
                                    json_schema_of,
                                ),
                            };
                        req.tools.push(Tool {
                            name: text_of(f, "name"),
                            description: f
                                .get("description")
                                .and_then(Json::as_str)
                                .map(Cow::into_owned),
                            parameters,
                            custom: false,
                        });
                    }
                }
                other => {
                    return untranslatable(format!(
                        "the tool `{other}` cannot be carried to this model's provider"
                    ));
                }
            }
        }
    }
    if let Some(cfg) = get_top(body, "toolConfig", "tool_config")
        .and_then(|c| get(c, "functionCallingConfig", "function_calling_config"))
    {
        let allowed: Vec<Cow<'_, str>> = cfg
            .field("allowedFunctionNames")
            .items()
            .filter_map(Json::as_str)
            .collect();
        req.tool_choice = match cfg.get("mode").and_then(Json::as_str).as_deref() {
            Some("NONE") => Some(ToolChoice::None),
            Some("ANY") if allowed.len() == 1 => Some(ToolChoice::Tool(allowed[0].to_string())),
            Some("ANY") => Some(ToolChoice::Required),
            _ => Some(ToolChoice::Auto),
        };
    }
    if !body.get("contents").is_some_and(Json::is_array) {
        return untranslatable("`contents` must be an array");
    }
    let (messages, _) = Messages::read(body, "contents", read_content)?;
    req.messages = messages;
    Ok(req)
}

fn read_content(c: Json<'_>, to: &mut Conversation) -> Result<(), Untranslatable> {
    let role = match c.get("role").and_then(Json::as_str).as_deref() {
        Some("model") => Role::Assistant,
        _ => Role::User,
    };
    let mut parts = Vec::new();
    for p in parts_of(c.field("parts")) {
        let p = p?;
        if p.get("thought").and_then(Json::as_bool) == Some(true) {
            // The model's own reasoning from earlier turns: other
            // providers neither accept nor need it.
        } else if let Some(t) = p.get("text").and_then(Json::as_str) {
            parts.push(Part::Text(t.into_owned()));
        } else if let Some(d) = get(p, "inlineData", "inline_data") {
            let media_type = get(d, "mimeType", "mime_type")
                .and_then(Json::as_str)
                .map_or_else(|| "image/png".to_string(), Cow::into_owned);
            let data = text_of(d, "data");
            parts.push(if media_type.starts_with("image/") {
                Part::Image(Image::Base64 { media_type, data })
            } else {
                Part::Document {
                    media_type,
                    data,
                    name: None,
                }
            });
        } else if let Some(d) = get(p, "fileData", "file_data") {
            parts.push(Part::Image(Image::Url(
                get(d, "fileUri", "file_uri")
                    .and_then(Json::as_str)
                    .map(Cow::into_owned)
                    .unwrap_or_default(),
            )));
        } else if let Some(f) = get(p, "functionCall", "function_call") {
            let name = text_of(f, "name");
            let id = f
                .get("id")
                .and_then(Json::as_str)
                .map_or_else(|| format!("call_{}_{name}", to.numbered), Cow::into_owned);
            to.numbered += 1;
            parts.push(Part::ToolCall {
                id,
                name,
                arguments: f.get("args").map_or_else(Raw::empty_object, Raw::of),
            });
        } else if let Some(f) = get(p, "functionResponse", "function_response") {
            let name = text_of(f, "name");
            let call_id = match f.get("id").and_then(Json::as_str) {
                Some(id) => id.into_owned(),
                None => to
                    .latest_call(&name)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("call_{name}")),
            };
            let response = f.field("response");
            let only_content = response.is_object()
                && response.entries().count() == 1
                && response.get("content").is_some_and(Json::is_string);
            let text = if only_content {
                text_of(response, "content")
            } else {
                response.compact().into_owned()
            };
            parts.push(Part::ToolResult {
                call_id,
                name: Some(name),
                content: vec![Part::Text(text)],
                is_error: false,
            });
        } else if p.get("thoughtSignature").is_some() || p.get("thought").is_some() {
            // Reasoning artefacts of earlier turns: not content.
        } else {
            return untranslatable(
                "a Gemini part of this kind cannot be carried to this model's provider",
            );
        }
    }
    to.note_calls(&parts);
    to.push(Message::new(role, parts));
    Ok(())
}

/// A field name in Gemini's camelCase (its APIs accept snake_case too).
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `generationConfig`, field by field (see the policy table).
fn generation_config(cfg: Json<'_>, req: &mut Request) -> Result<(), Untranslatable> {
    let mut json = false;
    let mut schema = None;
    for (k, v) in cfg.entries() {
        match camel(&k).as_str() {
            "maxOutputTokens" => req.max_tokens = v.as_u64(),
            "temperature" => req.temperature = v.as_f64(),
            "topP" => req.top_p = v.as_f64(),
            "topK" => req.top_k = v.as_u64(),
            "presencePenalty" => req.presence_penalty = v.as_f64(),
            "frequencyPenalty" => req.frequency_penalty = v.as_f64(),
            "seed" => req.seed = v.as_i64(),
            "stopSequences" => {
                req.stop = v
                    .items()
                    .filter_map(Json::as_str)
                    .map(Cow::into_owned)
                    .collect();
            }
            "candidateCount" if v.as_u64().is_none_or(|n| n == 1) => {}
            "candidateCount" => {
                return untranslatable(
                    "candidateCount above 1 cannot be carried to this model's provider",
                );
            }
            "responseMimeType" => match v.as_str().as_deref() {
                Some("application/json") => json = true,
                Some("text/plain") | None => {}
                Some(other) => {
                    return untranslatable(format!(
                        "responseMimeType `{other}` cannot be carried to this model's provider"
                    ));
                }
            },
            // Clients send Gemini's upper-case type names here too.
            "responseJsonSchema" => schema = Some(json_schema_of(v)),
            "responseSchema" => schema = Some(json_schema_of(v)),
            "thinkingConfig" => req.reasoning = Some(thinking_config(v)),
            "speechConfig" => {
                return untranslatable("speech output cannot be carried to this model's provider");
            }
            // Response modalities, media resolution, logprobs...: settings
            // without a counterpart elsewhere.
            _ => {}
        }
    }
    req.output = match schema {
        Some(schema) => Some(Output::Schema {
            name: "answer".into(),
            schema,
            strict: None,
        }),
        None if json => Some(Output::Json),
        None => None,
    };
    Ok(())
}

fn thinking_config(v: Json<'_>) -> Reasoning {
    let mut r = Reasoning {
        show: get(v, "includeThoughts", "include_thoughts")
            .and_then(Json::as_bool)
            .unwrap_or(false),
        ..Reasoning::default()
    };
    match get(v, "thinkingBudget", "thinking_budget").and_then(Json::as_i64) {
        Some(0) => r.off = true,
        Some(n) if n < 0 => r.dynamic = true,
        Some(n) => r.budget = u64::try_from(n).ok(),
        None => {}
    }
    if let Some(level) = get(v, "thinkingLevel", "thinking_level").and_then(Json::as_str) {
        r.effort = super::anthropic::effort_from(&level.to_ascii_lowercase());
    }
    r
}

/// JSON Schema from Gemini's OpenAPI-style schema (upper-case type names,
/// `nullable`), for providers that take JSON Schema: written as it is read,
/// without a tree of the schema.
pub fn json_schema_of(v: Json<'_>) -> Raw {
    let mut out = String::with_capacity(v.text().len());
    write_schema(v, &mut out);
    Raw::parse(out).unwrap_or_else(|_| Raw::of(v))
}

fn write_schema(v: Json<'_>, out: &mut String) {
    if v.is_array() {
        out.push('[');
        for (i, item) in v.items().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_schema(item, out);
        }
        out.push(']');
        return;
    }
    if !v.is_object() {
        out.push_str(v.text());
        return;
    }
    let nullable = v.get("nullable").and_then(Json::as_bool) == Some(true);
    out.push('{');
    let mut first = true;
    for (k, value) in v.entries() {
        if matches!(k.as_ref(), "nullable" | "propertyOrdering") {
            continue;
        }
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        out.push_str(&Value::from(k.as_ref()).to_string());
        out.push(':');
        match k.as_ref() {
            "type" => {
                let t = match value.as_str() {
                    Some(t) => Value::from(t.to_ascii_lowercase()).to_string(),
                    None => value.text().to_string(),
                };
                if nullable {
                    out.push('[');
                    out.push_str(&t);
                    out.push_str(",\"null\"]");
                } else {
                    out.push_str(&t);
                }
            }
            "properties" => {
                out.push('{');
                for (i, (name, s)) in value.entries().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::from(name.as_ref()).to_string());
                    out.push(':');
                    write_schema(s, out);
                }
                out.push('}');
            }
            "items" | "anyOf" | "oneOf" | "allOf" => write_schema(value, out),
            _ => out.push_str(value.text()),
        }
    }
    out.push('}');
}

pub fn stop_from(reason: &str, has_calls: bool) -> StopReason {
    match reason {
        "MAX_TOKENS" => StopReason::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            StopReason::ContentFilter
        }
        _ if has_calls => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

pub fn stop_to(reason: StopReason) -> &'static str {
    match reason {
        StopReason::MaxTokens => "MAX_TOKENS",
        StopReason::ContentFilter => "SAFETY",
        StopReason::EndTurn | StopReason::StopSequence | StopReason::ToolUse => "STOP",
    }
}

fn usage_of(v: Json<'_>) -> Option<Usage> {
    v.get("usageMetadata").map(super::usage::gemini)
}

/// The parts of a candidate, with ids made up for calls that lack one.
fn candidate_parts(v: Json<'_>, calls: &mut usize) -> Vec<Part> {
    let mut parts = Vec::new();
    let found = v
        .pointer("/candidates/0/content/parts")
        .unwrap_or(Json::NULL);
    for p in found.items() {
        if p.get("thought").and_then(Json::as_bool) == Some(true) {
            if let Some(t) = p.get("text").and_then(Json::as_str) {
                parts.push(Part::Thinking(t.into_owned()));
            }
        } else if let Some(t) = p.get("text").and_then(Json::as_str) {
            parts.push(Part::Text(t.into_owned()));
        } else if let Some(f) = p.get("functionCall") {
            let name = text_of(f, "name");
            let id = f
                .get("id")
                .and_then(Json::as_str)
                .map_or_else(|| new_id("call_"), Cow::into_owned);
            *calls += 1;
            parts.push(Part::ToolCall {
                id,
                name,
                arguments: f.get("args").map_or_else(Raw::empty_object, Raw::of),
            });
        }
    }
    parts
}

pub fn parse_response(v: Json<'_>) -> Result<Response, Untranslatable> {
    let no_candidates = v
        .get("candidates")
        .is_none_or(|c| !c.is_array() || c.items().next().is_none());
    if no_candidates && v.pointer("/promptFeedback/blockReason").is_none() {
        return untranslatable("Gemini returned no candidates");
    }
    let mut calls = 0;
    let parts = candidate_parts(v, &mut calls);
    // A prompt Gemini blocked is an answer with nothing in it.
    let reason = v
        .pointer("/candidates/0/finishReason")
        .and_then(Json::as_str)
        .unwrap_or(Cow::Borrowed(if no_candidates { "SAFETY" } else { "STOP" }));
    Ok(Response {
        id: v
            .get("responseId")
            .and_then(Json::as_str)
            .map_or_else(|| new_id(""), Cow::into_owned),
        model: text_of(v, "modelVersion"),
        stop: stop_from(&reason, calls > 0),
        parts,
        usage: usage_of(v).unwrap_or_default(),
    })
}

/// A part of an answer or a stream chunk for a Gemini client.
#[derive(Serialize)]
#[serde(untagged)]
enum OutPart<'a> {
    Text {
        text: &'a str,
    },
    /// Another provider's reasoning, marked as translated.
    Thought {
        text: &'a str,
        thought: bool,
        #[serde(rename = "thoughtSignature")]
        signature: &'static str,
    },
    /// A function call of another provider's answer, marked as translated
    /// so that a Gemini upstream later gets the placeholder signature
    /// instead.
    Call {
        #[serde(rename = "functionCall")]
        call: OutCall<'a>,
        #[serde(rename = "thoughtSignature")]
        signature: &'static str,
    },
}

#[derive(Serialize)]
struct OutCall<'a> {
    id: &'a str,
    name: &'a str,
    args: &'a RawValue,
}

impl<'a> OutPart<'a> {
    fn thought(text: &'a str) -> Self {
        OutPart::Thought {
            text,
            thought: true,
            signature: TRANSLATED_THINKING,
        }
    }

    fn call(id: &'a str, name: &'a str, args: &'a RawValue) -> Self {
        OutPart::Call {
            call: OutCall { id, name, args },
            signature: TRANSLATED_THINKING,
        }
    }
}

#[derive(Serialize)]
struct OutContent<'a> {
    role: &'static str,
    parts: Vec<OutPart<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AnswerCandidate<'a> {
    content: OutContent<'a>,
    finish_reason: &'static str,
    index: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    candidates: [AnswerCandidate<'a>; 1],
    usage_metadata: Value,
    model_version: &'a str,
    response_id: &'a str,
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "promptTokenCount": u.input_tokens,
        "candidatesTokenCount": u.output_tokens,
        "totalTokenCount": u.input_tokens + u.output_tokens
    })
}

/// The client's answer, as JSON text (a call's arguments written as they
/// came).
pub fn build_response(r: &Response, model: &str) -> Vec<u8> {
    let parts = r
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(text) => Some(OutPart::Text { text }),
            Part::Thinking(t) => Some(OutPart::thought(t)),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(OutPart::call(id, name, arguments.value())),
            _ => None,
        })
        .collect();
    let answer = Answer {
        candidates: [AnswerCandidate {
            content: OutContent {
                role: "model",
                parts,
            },
            finish_reason: stop_to(r.stop),
            index: 0,
        }],
        usage_metadata: usage_json(&r.usage),
        model_version: model,
        response_id: &r.id,
    };
    // Serialising into a Vec cannot fail.
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// Gemini stream chunks -> deltas. Gemini's stream has no end marker: it
/// ends after the chunk that carries a `finishReason`.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    calls: usize,
    finished: bool,
}

impl Decoder {
    pub fn feed(&mut self, event: &Event) -> Result<Option<Vec<Delta>>, Untranslatable> {
        let v = stream_json(event)?;
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(Delta::Start {
                id: text_of(v, "responseId"),
                model: text_of(v, "modelVersion"),
            });
        }
        let before = self.calls;
        for p in candidate_parts(v, &mut self.calls) {
            match p {
                Part::Text(t) if !t.is_empty() => out.push(Delta::Text(t)),
                Part::Thinking(t) if !t.is_empty() => out.push(Delta::Thinking(t)),
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    let index = out
                        .iter()
                        .filter(|d| matches!(d, Delta::ToolStart { .. }))
                        .count()
                        + before;
                    out.push(Delta::ToolStart { index, id, name });
                    out.push(Delta::ToolArgs {
                        index,
                        json: arguments.json().compact().into_owned(),
                    });
                }
                _ => {}
            }
        }
        if let Some(reason) = v
            .pointer("/candidates/0/finishReason")
            .and_then(Json::as_str)
        {
            self.finished = true;
            out.push(Delta::Stop(stop_from(&reason, self.calls > 0)));
        }
        if let Some(u) = usage_of(v) {
            out.push(Delta::Usage(u));
        }
        Ok(Some(out))
    }

    /// Whether the stream said it was done (a finish reason arrived).
    pub fn finished(&self) -> bool {
        self.finished
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChunkCandidate<'a> {
    content: OutContent<'a>,
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Chunk<'a> {
    candidates: [ChunkCandidate<'a>; 1],
    model_version: &'a str,
    response_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_metadata: Option<Value>,
}

/// The arguments a call was assembled with, or `{}` when they are not JSON.
fn args_of(text: &str) -> &RawValue {
    serde_json::from_str(text).unwrap_or_else(|_| empty_object())
}

fn empty_object() -> &'static RawValue {
    match serde_json::from_str("{}") {
        Ok(raw) => raw,
        Err(_) => unreachable!("{{}} is JSON"),
    }
}

/// Deltas -> Gemini stream chunks. Gemini sends each function call whole,
/// so calls go out once their arguments are complete: when text or
/// thinking follows them, or the answer stops.
#[derive(Debug)]
pub struct Encoder {
    model: String,
    id: String,
    /// The calls being assembled, by index (id, name, JSON text of the
    /// arguments).
    pending: Vec<(String, String, String)>,
    /// Calls already sent: `pending[0]` is call number `sent`.
    sent: usize,
    stop: Option<StopReason>,
    usage: Usage,
}

impl Encoder {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            id: new_id(""),
            pending: Vec::new(),
            sent: 0,
            stop: None,
            usage: Usage::default(),
        }
    }

    fn chunk(&self, parts: Vec<OutPart<'_>>, finish: Option<&'static str>) -> Event {
        let chunk = Chunk {
            candidates: [ChunkCandidate {
                content: OutContent {
                    role: "model",
                    parts,
                },
                index: 0,
                finish_reason: finish,
            }],
            model_version: &self.model,
            response_id: &self.id,
            usage_metadata: finish.map(|_| usage_json(&self.usage)),
        };
        // Serialising into a String cannot fail.
        Event::data(serde_json::to_string(&chunk).unwrap_or_default())
    }

    /// The calls assembled so far, as one chunk's parts.
    fn calls_chunk(&mut self, finish: Option<&'static str>) -> Event {
        let pending = std::mem::take(&mut self.pending);
        self.sent += pending.len();
        let parts = pending
            .iter()
            .map(|(id, name, args)| OutPart::call(id, name, args_of(args)))
            .collect();
        self.chunk(parts, finish)
    }

    /// Sends the calls being assembled, if any, in one chunk.
    fn flush(&mut self, out: &mut Vec<Event>) {
        if !self.pending.is_empty() {
            out.push(self.calls_chunk(None));
        }
    }

    pub fn encode(&mut self, delta: &Delta, out: &mut Vec<Event>) {
        match delta {
            Delta::Start { .. } => {}
            Delta::Text(t) => {
                self.flush(out);
                out.push(self.chunk(vec![OutPart::Text { text: t }], None));
            }
            Delta::Thinking(t) => {
                self.flush(out);
                out.push(self.chunk(vec![OutPart::thought(t)], None));
            }
            Delta::ToolStart { id, name, .. } => {
                self.pending.push((id.clone(), name.clone(), String::new()));
            }
            Delta::ToolArgs { index, json } => {
                let pending = index.checked_sub(self.sent);
                if let Some(call) = pending.and_then(|i| self.pending.get_mut(i)) {
                    call.2.push_str(json);
                }
            }
            Delta::Stop(reason) => self.stop = Some(*reason),
            Delta::Usage(u) => self.usage = *u,
        }
    }

    /// The last chunk: the calls still held, the finish reason and usage.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let reason = stop_to(self.stop.unwrap_or(StopReason::EndTurn));
        out.push(self.calls_chunk(Some(reason)));
    }
}
