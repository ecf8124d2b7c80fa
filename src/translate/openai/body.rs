//! The body an OpenAI-compatible upstream is sent, written from the neutral
//! form as it is serialised: text, images and schemas are borrowed from the
//! request, never copied into a tree first.

use std::borrow::Cow;

use serde::Serialize;
use serde::ser::{Error as _, SerializeSeq};
use serde_json::{Value, json};

use super::effort_to;
use crate::json::Raw;
use crate::translate::ir::{
    self, Image, MAX_OUTPUT_CARRIED, Output, Part, Request, Role, ToolChoice, Untranslatable,
    untranslatable,
};
use crate::translate::out::{DataUrl, Texts, texts};

#[derive(Debug, Serialize)]
pub struct Body<'a> {
    model: &'a str,
    messages: Chat<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<FunctionTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum Message<'a> {
    System {
        content: Texts<'a>,
    },
    Tool {
        tool_call_id: &'a str,
        content: Texts<'a>,
    },
    User {
        content: Vec<UserPart<'a>>,
    },
    Assistant {
        /// `null` for a turn of tool calls only.
        content: Option<Texts<'a>>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<Call<'a>>,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum UserPart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: ImageUrl<'a> },
    File { file: File<'a> },
}

#[derive(Debug, Serialize)]
struct ImageUrl<'a> {
    url: Url<'a>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Url<'a> {
    Link(&'a str),
    Data(DataUrl<'a>),
}

#[derive(Debug, Serialize)]
struct File<'a> {
    filename: &'a str,
    file_data: DataUrl<'a>,
}

#[derive(Debug, Serialize)]
struct Call<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CallFunction<'a>,
}

#[derive(Debug, Serialize)]
struct CallFunction<'a> {
    name: &'a str,
    /// The arguments' JSON, as a string.
    arguments: Cow<'a, str>,
}

#[derive(Debug, Serialize)]
struct FunctionTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: Function<'a>,
}

#[derive(Debug, Serialize)]
struct Function<'a> {
    name: &'a str,
    parameters: &'a Raw,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

/// `response_format` of chat completions.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat<'a> {
    JsonObject,
    JsonSchema { json_schema: JsonSchema<'a> },
}

#[derive(Debug, Serialize)]
pub struct JsonSchema<'a> {
    name: &'a str,
    schema: &'a Raw,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

impl<'a> ResponseFormat<'a> {
    pub fn of(format: &'a Output) -> Self {
        match format {
            Output::Json => ResponseFormat::JsonObject,
            Output::Schema {
                name,
                schema,
                strict,
            } => ResponseFormat::JsonSchema {
                json_schema: JsonSchema {
                    name,
                    schema,
                    strict: *strict,
                },
            },
        }
    }
}

/// The conversation, written a message at a time as it is walked.
#[derive(Debug)]
struct Chat<'a>(&'a Request);

impl Serialize for Chat<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let req = self.0;
        let mut seq = s.serialize_seq(None)?;
        if !req.system.is_empty() {
            let system = req.system.iter().map(String::as_str).collect();
            seq.serialize_element(&Message::System {
                content: Texts::new(system, "\n\n"),
            })?;
        }
        for m in req.messages.iter() {
            let m = m.map_err(S::Error::custom)?;
            for out in messages_of(&m).map_err(S::Error::custom)? {
                seq.serialize_element(&out)?;
            }
        }
        seq.end()
    }
}

/// What one neutral message is in chat completions: tool results are
/// messages of their own.
fn messages_of(m: &ir::Message) -> Result<Vec<Message<'_>>, Untranslatable> {
    let mut messages = Vec::with_capacity(1);
    match m.role {
        Role::System => messages.push(Message::System {
            content: texts(&m.parts, "system messages")?,
        }),
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
                        let mut content = texts(content, "OpenAI")?;
                        if *is_error && !content.starts_with("Error") {
                            content.prefix = "Error: ";
                        }
                        messages.push(Message::Tool {
                            tool_call_id: call_id,
                            content,
                        });
                    }
                    other => rest.push(user_part(other)?),
                }
            }
            if !rest.is_empty() {
                messages.push(Message::User { content: rest });
            }
        }
        Role::Assistant => messages.push(assistant(&m.parts)?),
    }
    Ok(messages)
}

/// The body to send an OpenAI-compatible upstream; what the conversation
/// cannot carry shows when it is written.
pub fn build_request<'a>(req: &'a Request, model: &'a str) -> Result<Body<'a>, Untranslatable> {
    Ok(Body {
        model,
        messages: Chat(req),
        // `max_tokens` is deprecated, and refused by reasoning models.
        max_completion_tokens: req.max_tokens.filter(|n| *n <= MAX_OUTPUT_CARRIED),
        temperature: req.temperature,
        top_p: req.top_p,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        seed: req.seed,
        stop: &req.stop,
        reasoning_effort: req
            .reasoning
            .as_ref()
            .filter(|r| !r.off)
            .and_then(|r| r.effort_level())
            .map(effort_to),
        response_format: req.output.as_ref().map(ResponseFormat::of),
        tools: req
            .tools
            .iter()
            .map(|t| FunctionTool {
                kind: "function",
                function: Function {
                    name: &t.name,
                    parameters: &t.parameters,
                    description: t.description.as_deref(),
                },
            })
            .collect(),
        tool_choice: req.tool_choice.as_ref().map(|choice| match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        }),
        stream: req.stream.then_some(true),
        stream_options: req.stream.then(|| json!({"include_usage": true})),
    })
}

fn assistant(parts: &[Part]) -> Result<Message<'_>, Untranslatable> {
    let mut text = Vec::new();
    let mut tool_calls = Vec::new();
    for p in parts {
        match p {
            Part::Text(t) => text.push(t.as_str()),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => tool_calls.push(Call {
                id,
                kind: "function",
                function: CallFunction {
                    name,
                    arguments: arguments.json().compact(),
                },
            }),
            _ => {
                return untranslatable("OpenAI assistant messages carry text and tool calls only");
            }
        }
    }
    let text = Texts::new(text, "");
    // `null` for a turn of tool calls only.
    let content = (!text.is_empty() || tool_calls.is_empty()).then_some(text);
    Ok(Message::Assistant {
        content,
        tool_calls,
    })
}

fn user_part(p: &Part) -> Result<UserPart<'_>, Untranslatable> {
    Ok(match p {
        Part::Text(t) => UserPart::Text { text: t },
        Part::Image(Image::Url(url)) => UserPart::ImageUrl {
            image_url: ImageUrl {
                url: Url::Link(url),
            },
        },
        Part::Image(Image::Base64 { media_type, data }) => UserPart::ImageUrl {
            image_url: ImageUrl {
                url: Url::Data(DataUrl { media_type, data }),
            },
        },
        Part::Document {
            media_type,
            data,
            name,
        } => UserPart::File {
            file: File {
                filename: name.as_deref().unwrap_or("document.pdf"),
                file_data: DataUrl { media_type, data },
            },
        },
        _ => return untranslatable("a tool call cannot be part of a user message"),
    })
}
