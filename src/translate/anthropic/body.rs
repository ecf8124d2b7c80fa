//! The body Anthropic's Messages API is sent, written from the neutral form
//! as it is serialised: content is borrowed from the request, never copied
//! into a tree first.

use serde::Serialize;
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde_json::{Value, json};

use super::{DEFAULT_MAX_TOKENS, JSON_INSTRUCTION, MAX_OUTPUT_CARRIED, MIN_THINKING_BUDGET};
use crate::json::Raw;
use crate::translate::ir::{
    Effort, Image, Output, Part, Request, Role, ToolChoice, Turns, Untranslatable, untranslatable,
};
use crate::translate::out::Texts;

#[derive(Debug, Serialize)]
pub struct Body<'a> {
    model: &'a str,
    max_tokens: u64,
    messages: Conversation<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
}

/// The conversation in turns, written a message at a time as it is walked.
#[derive(Debug)]
pub struct Conversation<'a>(&'a Request);

impl Serialize for Conversation<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let turns = Turns::new(&self.0.messages);
        let mut seq = s.serialize_seq(None)?;
        while let Some(role) = turns.next_role().map_err(S::Error::custom)? {
            seq.serialize_element(&Turn {
                role,
                turns: &turns,
            })?;
        }
        seq.end()
    }
}

/// One turn: `{"role", "content"}`, its blocks taken from `turns` until
/// the role changes.
struct Turn<'t, 'a> {
    role: Role,
    turns: &'t Turns<'a>,
}

impl Serialize for Turn<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let role = match self.role {
            Role::Assistant => "assistant",
            Role::User | Role::System => "user",
        };
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("role", role)?;
        m.serialize_entry("content", &Content(self))?;
        m.end()
    }
}

struct Content<'r, 't, 'a>(&'r Turn<'t, 'a>);

impl Serialize for Content<'_, '_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Turn { role, turns } = self.0;
        let mut seq = s.serialize_seq(None)?;
        while let Some(m) = turns.next_in(*role).map_err(S::Error::custom)? {
            for (i, part) in m.parts.iter().enumerate() {
                check(part).map_err(S::Error::custom)?;
                let cache = m.cache.iter().rev().find(|(at, _)| *at == i);
                seq.serialize_element(&Block {
                    part,
                    cache: cache.map(|(_, marker)| marker),
                })?;
            }
        }
        seq.end()
    }
}

/// A content block of a part already checked by [`check`], with its
/// prompt-cache marker.
#[derive(Debug)]
struct Block<'a> {
    part: &'a Part,
    cache: Option<&'a Raw>,
}

#[derive(Debug, Serialize)]
struct OutputConfig<'a> {
    format: SchemaFormat<'a>,
}

#[derive(Debug, Serialize)]
struct SchemaFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: &'a Raw,
}

#[derive(Debug, Serialize)]
struct Tool<'a> {
    name: &'a str,
    input_schema: &'a Raw,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

/// The body to send Anthropic's Messages API.
pub fn build_request<'a>(req: &'a Request, model: &'a str) -> Result<Body<'a>, Untranslatable> {
    // System messages inside the conversation join the opening text.
    let later = req.messages.system_texts()?;
    let mut system: Vec<&str> = req
        .system
        .iter()
        .chain(&later)
        .map(String::as_str)
        .collect();
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
    let output_config = match &req.output {
        Some(Output::Json) => {
            system.push(JSON_INSTRUCTION);
            None
        }
        Some(Output::Schema { schema, .. }) => Some(OutputConfig {
            format: SchemaFormat {
                kind: "json_schema",
                schema,
            },
        }),
        None => None,
    };
    Ok(Body {
        model,
        max_tokens,
        messages: Conversation(req),
        output_config,
        system: (!system.is_empty()).then(|| Texts::new(system, "\n\n").to_string()),
        thinking: thinking.map(|budget| json!({"type": "enabled", "budget_tokens": budget})),
        // With thinking on, Anthropic takes no temperature or top_k, and
        // top_p only from 0.95.
        temperature: req.temperature.filter(|_| thinking.is_none()),
        top_p: req.top_p.filter(|p| thinking.is_none() || *p >= 0.95),
        top_k: req.top_k.filter(|_| thinking.is_none()),
        stop_sequences: &req.stop,
        tools: req
            .tools
            .iter()
            .map(|t| Tool {
                name: &t.name,
                input_schema: &t.parameters,
                description: t.description.as_deref(),
            })
            .collect(),
        tool_choice: req.tool_choice.as_ref().map(|choice| match choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        }),
        stream: req.stream.then_some(true),
    })
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
    (!req.messages.ends_in_tool_results()).then_some(budget)
}

/// Whether Anthropic can take `p` as a content block.
fn check(p: &Part) -> Result<(), Untranslatable> {
    match p {
        Part::Document { media_type, .. } if media_type != "application/pdf" => {
            untranslatable(format!("Anthropic takes PDF documents, not {media_type}"))
        }
        Part::Thinking(_) => {
            untranslatable("thinking is not carried into a request of another format")
        }
        Part::ToolResult { content, .. } => content.iter().try_for_each(check),
        _ => Ok(()),
    }
}

impl Serialize for Block<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self.part {
            Part::Text(t) => {
                m.serialize_entry("type", "text")?;
                m.serialize_entry("text", t)?;
            }
            Part::Image(Image::Base64 { media_type, data }) => {
                m.serialize_entry("type", "image")?;
                m.serialize_entry("source", &Source::base64(media_type, data))?;
            }
            Part::Image(Image::Url(url)) => {
                m.serialize_entry("type", "image")?;
                m.serialize_entry(
                    "source",
                    &Source {
                        kind: "url",
                        media_type: None,
                        data: None,
                        url: Some(url),
                    },
                )?;
            }
            Part::Document {
                media_type,
                data,
                name,
            } => {
                m.serialize_entry("type", "document")?;
                m.serialize_entry("source", &Source::base64(media_type, data))?;
                if let Some(name) = name {
                    m.serialize_entry("title", name)?;
                }
            }
            Part::ToolCall {
                id,
                name,
                arguments,
            } => {
                m.serialize_entry("type", "tool_use")?;
                m.serialize_entry("id", id)?;
                m.serialize_entry("name", name)?;
                m.serialize_entry("input", arguments)?;
            }
            Part::ToolResult {
                call_id,
                content,
                is_error,
                ..
            } => {
                let content: Vec<Block<'_>> = content
                    .iter()
                    .map(|part| Block { part, cache: None })
                    .collect();
                m.serialize_entry("type", "tool_result")?;
                m.serialize_entry("tool_use_id", call_id)?;
                m.serialize_entry("content", &content)?;
                m.serialize_entry("is_error", is_error)?;
            }
            // Refused by `check` before a body is built.
            Part::Thinking(_) => {}
        }
        if let Some(marker) = self.cache {
            m.serialize_entry("cache_control", marker)?;
        }
        m.end()
    }
}

#[derive(Debug, Serialize)]
struct Source<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
}

impl<'a> Source<'a> {
    fn base64(media_type: &'a str, data: &'a str) -> Self {
        Source {
            kind: "base64",
            media_type: Some(media_type),
            data: Some(data),
            url: None,
        }
    }
}
