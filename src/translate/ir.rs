//! The neutral form every wire format translates through: a chat request,
//! its response, and the deltas of a stream.

use std::borrow::Cow;

use crate::json::{Document, Json, Raw};

mod messages;

pub use messages::{Conversation, Messages, READ_AGAIN_ABOVE, ReadItem, Turns};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    /// System text that opens the conversation.
    pub system: Vec<String>,
    /// The conversation; system messages later in it keep their place
    /// (`Role::System`) for formats that can say so.
    pub messages: Messages,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// The client asked for JSON as the answer.
    pub output: Option<Output>,
    /// How much the model should think before it answers.
    pub reasoning: Option<Reasoning>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub seed: Option<i64>,
}

/// Structured output.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Some JSON object, no schema.
    Json,
    /// JSON that follows `schema` (JSON Schema).
    Schema {
        name: String,
        schema: Raw,
        strict: Option<bool>,
    },
}

/// Reasoning effort, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effort {
    Minimal,
    Low,
    Medium,
    High,
    Max,
}

impl Effort {
    /// A thinking budget in tokens for this effort (for formats that take
    /// a budget).
    pub fn budget(self) -> u64 {
        match self {
            Effort::Minimal => 1_024,
            Effort::Low => 2_048,
            Effort::Medium => 8_192,
            Effort::High => 16_384,
            Effort::Max => 32_768,
        }
    }

    /// The effort nearest to a thinking budget.
    pub fn of_budget(tokens: u64) -> Self {
        match tokens {
            0..=1_024 => Effort::Minimal,
            1_025..=4_096 => Effort::Low,
            4_097..=12_288 => Effort::Medium,
            12_289..=24_576 => Effort::High,
            _ => Effort::Max,
        }
    }
}

/// Thinking settings, as the client gave them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reasoning {
    /// Thinking explicitly turned off.
    pub off: bool,
    /// A budget in tokens.
    pub budget: Option<u64>,
    pub effort: Option<Effort>,
    /// The model decides how much to think (Anthropic adaptive, Gemini -1).
    pub dynamic: bool,
    /// The client wants to see the thinking (Anthropic thinking blocks,
    /// Gemini `includeThoughts`).
    pub show: bool,
}

impl Reasoning {
    /// The budget to ask for: the client's own, or its effort's.
    pub fn budget_tokens(&self) -> Option<u64> {
        self.budget.or_else(|| self.effort.map(Effort::budget))
    }

    /// The effort to ask for: the client's own, or its budget's.
    pub fn effort_level(&self) -> Option<Effort> {
        self.effort.or_else(|| self.budget.map(Effort::of_budget))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A system message in the middle of the conversation.
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
    /// Prompt-cache markers (Anthropic `cache_control`) by part index.
    pub cache: Vec<(usize, Raw)>,
}

impl Message {
    pub fn new(role: Role, parts: Vec<Part>) -> Self {
        Self {
            role,
            parts,
            cache: Vec::new(),
        }
    }
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
    /// A call the assistant made; `arguments` is a JSON object, carried as
    /// its text.
    ToolCall {
        id: String,
        name: String,
        arguments: Raw,
    },
    /// A document (a PDF, plain text) given inline, base64.
    Document {
        media_type: String,
        data: String,
        name: Option<String>,
    },
    /// The model's reasoning, in answers only: it is never carried into a
    /// request of another format.
    Thinking(String),
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
    /// JSON Schema of the arguments, carried as its text.
    pub parameters: Raw,
    /// A Responses custom tool: it takes free text, carried to other formats
    /// as a function of one string argument, `input` ([`custom_parameters`]).
    pub custom: bool,
}

/// The parameters a custom (free-text) tool has in formats without them.
pub fn custom_parameters() -> Raw {
    Raw::from_value(&serde_json::json!({
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The tool's input, as free text."}},
        "required": ["input"],
    }))
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
    /// Prompt tokens read from the provider's cache (part of `input_tokens`).
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's cache (part of `input_tokens`).
    pub cache_write_tokens: u64,
    /// Reasoning tokens (part of `output_tokens`).
    pub reasoning_tokens: u64,
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
    /// A piece of the model's reasoning.
    Thinking(String),
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
    /// The names of the request's custom (free-text) tools.
    pub fn custom_tools(&self) -> Vec<String> {
        self.tools
            .iter()
            .filter(|t| t.custom)
            .map(|t| t.name.clone())
            .collect()
    }
}

/// The largest output limit carried to another provider. Clients set limits
/// for their own provider's models (Claude Code asks for 128,000), which
/// other providers' models refuse; above this the limit is dropped and the
/// target model's own maximum applies.
pub const MAX_OUTPUT_CARRIED: u64 = 32_768;

/// The signature the gateway puts on thinking it translated from another
/// provider's answer. A request that brings such thinking back has it
/// stripped: no provider could verify it.
/// Base64 (of "switchyard-translated-thinking"), because Gemini's SDKs
/// decode `thoughtSignature` as bytes.
pub const TRANSLATED_THINKING: &str = "c3dpdGNoeWFyZC10cmFuc2xhdGVkLXRoaW5raW5n";

/// The signature Gemini documents for function calls whose history has no
/// signature of its own (calls another provider made).
pub const GEMINI_PLACEHOLDER_SIGNATURE: &str = "skip_thought_signature_validator";

/// Merges consecutive messages of the same role, and moves system messages
/// inside the conversation to the opening system text, in order: the
/// conversation as formats that need strict alternation see it.
pub fn merge_turns(system: &mut Vec<String>, messages: Vec<Message>) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for m in messages {
        if m.role == Role::System {
            system.extend(m.parts.into_iter().filter_map(|p| match p {
                Part::Text(t) => Some(t),
                _ => None,
            }));
            continue;
        }
        match out.last_mut() {
            Some(last) if last.role == m.role => {
                let offset = last.parts.len();
                last.cache
                    .extend(m.cache.into_iter().map(|(i, c)| (i + offset, c)));
                last.parts.extend(m.parts);
            }
            _ => out.push(m),
        }
    }
    out
}

/// The most parts (content blocks, tool calls) a message may hold to be
/// carried to another format. A message is held whole while it is
/// translated, at about 150 bytes a part whatever its text; no client sends
/// more than a few hundred, and beyond this bound a body of the maximum
/// size could cost many times itself. Bodies passed through are not
/// concerned.
pub const MAX_PARTS: usize = 10_000;

/// The items of a message's array of parts, read as they are taken: an
/// error in place of the item past [`MAX_PARTS`] (so a refused message
/// holds at most that many parts, and an ordinary one is scanned once).
pub fn parts_of(array: Json<'_>) -> impl Iterator<Item = Result<Json<'_>, Untranslatable>> {
    array.items().enumerate().map(|(i, item)| {
        if i < MAX_PARTS {
            Ok(item)
        } else {
            untranslatable(too_many_parts())
        }
    })
}

pub fn too_many_parts() -> String {
    format!("a message of more than {MAX_PARTS} parts cannot be carried to another format")
}

/// Reads an optional number field.
pub fn f64_field(body: &Document, key: &str) -> Result<Option<f64>, Untranslatable> {
    match body.get(key) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| Untranslatable(format!("`{key}` must be a number"))),
    }
}

pub fn u64_field(body: &Document, key: &str) -> Result<Option<u64>, Untranslatable> {
    match body.get(key) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
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

/// A `data:` URL's media type and base64 payload.
pub fn data_url(url: &str) -> Option<(String, String)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type.to_string(), data.to_string()))
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
pub fn arguments_from_text(text: &str) -> Result<Raw, Untranslatable> {
    if text.trim().is_empty() {
        return Ok(Raw::empty_object());
    }
    match Json::parse(text) {
        Ok(v) if v.is_object() => Ok(Raw::of(v)),
        _ => untranslatable("tool call arguments must be a JSON object"),
    }
}

/// The text of tool-result content; images cannot be part of it.
pub fn result_text(content: &[Part], target: &str) -> Result<String, Untranslatable> {
    Ok(super::out::texts(content, target)?.joined().into_owned())
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A string field of a JSON object, or "" when absent.
pub fn text_of(v: Json<'_>, key: &str) -> String {
    v.get(key)
        .and_then(Json::as_str)
        .map(Cow::into_owned)
        .unwrap_or_default()
}

/// A stream event's JSON, refusing error objects (the upstream reporting a
/// failure inside its stream).
pub fn stream_json(event: &crate::sse::Event) -> Result<Json<'_>, Untranslatable> {
    let v = Json::parse(&event.data)
        .map_err(|_| Untranslatable("a stream event is not JSON".into()))?;
    if v.get("error").is_some() {
        return untranslatable(crate::wire::error_text(event.data.as_bytes()));
    }
    Ok(v)
}
