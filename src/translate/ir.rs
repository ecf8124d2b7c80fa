//! The neutral form every wire format translates through: a chat request,
//! its response, and the deltas of a stream.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub system: Vec<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// The client asked for a JSON object as the answer.
    pub json_output: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    Base64 { media_type: String, data: String },
    Url(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
    /// A call the assistant made; `arguments` is a JSON object.
    ToolCall {
        id: String,
        name: String,
        arguments: Value,
    },
    /// The result of a call, sent back by the user side.
    ToolResult {
        call_id: String,
        /// The function's name, when the format carries it.
        name: Option<String>,
        content: Vec<Part>,
        is_error: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    Tool(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    ContentFilter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: String,
    pub model: String,
    /// Text and tool calls, in order.
    pub parts: Vec<Part>,
    pub stop: StopReason,
    pub usage: Usage,
}

/// One step of a stream, in the order a client should see them.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Start {
        id: String,
        model: String,
    },
    Text(String),
    /// A tool call begins; `index` counts the stream's tool calls from 0.
    ToolStart {
        index: usize,
        id: String,
        name: String,
    },
    /// A fragment of the JSON text of call `index`'s arguments.
    ToolArgs {
        index: usize,
        json: String,
    },
    Stop(StopReason),
    Usage(Usage),
}

/// Why a request or response cannot be carried into another format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Untranslatable(pub String);

pub fn untranslatable<T>(message: impl Into<String>) -> Result<T, Untranslatable> {
    Err(Untranslatable(message.into()))
}

impl Request {
    /// The name of the tool call `call_id` refers to, from the history.
    pub fn tool_name(&self, call_id: &str) -> Option<&str> {
        self.messages
            .iter()
            .flat_map(|m| &m.parts)
            .find_map(|p| match p {
                Part::ToolCall { id, name, .. } if id == call_id => Some(name.as_str()),
                _ => None,
            })
    }
}

/// Merges consecutive messages of the same role (formats that need strict
/// alternation get it; nothing is lost).
pub fn merge_turns(messages: Vec<Message>) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for m in messages {
        match out.last_mut() {
            Some(last) if last.role == m.role => last.parts.extend(m.parts),
            _ => out.push(m),
        }
    }
    out
}

/// Reads an optional number field.
pub fn f64_field(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, Untranslatable> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| Untranslatable(format!("`{key}` must be a number"))),
    }
}

pub fn u64_field(body: &Map<String, Value>, key: &str) -> Result<Option<u64>, Untranslatable> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| Untranslatable(format!("`{key}` must be a non-negative integer"))),
    }
}

/// `data:` URLs carry an inline image; anything else is a link.
pub fn image_from_url(url: &str) -> Image {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((meta, data)) = rest.split_once(',') {
            if let Some(media_type) = meta.strip_suffix(";base64") {
                return Image::Base64 {
                    media_type: media_type.to_string(),
                    data: data.to_string(),
                };
            }
        }
    }
    Image::Url(url.to_string())
}

/// A guess at an image link's media type from its extension.
pub fn media_type_of(url: &str) -> Option<&'static str> {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    let ext = path.rsplit('.').next()?;
    Some(match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => return None,
    })
}

/// Tool call arguments as a JSON object, from the JSON text OpenAI carries.
pub fn arguments_from_text(text: &str) -> Result<Value, Untranslatable> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => untranslatable("tool call arguments must be a JSON object"),
    }
}

/// The text of tool-result content; images cannot be part of it.
pub fn result_text(content: &[Part], target: &str) -> Result<String, Untranslatable> {
    let mut text = String::new();
    for p in content {
        match p {
            Part::Text(t) => text.push_str(t),
            _ => return untranslatable(format!("{target} tool results carry text only")),
        }
    }
    Ok(text)
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A string field of a JSON object, or "" when absent.
pub fn text_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A stream event's JSON, refusing error objects (the upstream reporting a
/// failure inside its stream).
pub fn stream_json(event: &crate::sse::Event) -> Result<Value, Untranslatable> {
    let v: Value = serde_json::from_str(&event.data)
        .map_err(|_| Untranslatable("a stream event is not JSON".into()))?;
    if v.get("error").is_some() {
        return untranslatable(crate::pipeline::error_text(event.data.as_bytes()));
    }
    Ok(v)
}
