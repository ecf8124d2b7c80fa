//! The body Gemini is sent (the model goes in the URL), written from the
//! neutral form as it is serialised: content is borrowed from the request,
//! never copied into a tree first.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use serde::Serialize;
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::json::{Json, Raw};
use crate::translate::ir::{
    GEMINI_PLACEHOLDER_SIGNATURE, Image, MAX_OUTPUT_CARRIED, Output, Part, Reasoning, Request,
    Role, ToolChoice, Turns, Untranslatable, media_type_of, untranslatable,
};
use crate::translate::out::{Texts, texts};

/// Gemini's largest thinking budget (2.5 Flash; Pro takes more).
const MAX_THINKING_BUDGET: u64 = 24_576;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Body<'a> {
    contents: Contents<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Declarations<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<Value>,
}

/// The conversation in turns, written a message at a time as it is walked.
#[derive(Debug)]
pub struct Contents<'a>(&'a Request);

/// A walk over the turns, with the calls seen so far: a result that does
/// not name its function is given the name of its call.
struct Walk<'a> {
    turns: Turns<'a>,
    calls: RefCell<HashMap<String, String>>,
}

impl Serialize for Contents<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let walk = Walk {
            turns: Turns::new(&self.0.messages),
            calls: RefCell::default(),
        };
        let mut seq = s.serialize_seq(None)?;
        while let Some(role) = walk.turns.next_role().map_err(S::Error::custom)? {
            seq.serialize_element(&Content { role, walk: &walk })?;
        }
        seq.end()
    }
}

/// One turn: `{"role", "parts"}`, its parts taken from the walk until the
/// role changes.
struct Content<'w, 'a> {
    role: Role,
    walk: &'w Walk<'a>,
}

impl Serialize for Content<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let role = match self.role {
            Role::User | Role::System => "user",
            Role::Assistant => "model",
        };
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("role", role)?;
        m.serialize_entry("parts", &Parts(self))?;
        m.end()
    }
}

struct Parts<'c, 'w, 'a>(&'c Content<'w, 'a>);

impl Serialize for Parts<'_, '_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Content { role, walk } = self.0;
        let mut seq = s.serialize_seq(None)?;
        // Gemini wants a signature on a turn's first function call; calls
        // another provider made have none: the documented placeholder.
        let mut signed = false;
        while let Some(m) = walk.turns.next_in(*role).map_err(S::Error::custom)? {
            for p in &m.parts {
                if let Part::ToolCall { id, name, .. } = p {
                    walk.calls.borrow_mut().insert(id.clone(), name.clone());
                }
                let calls = walk.calls.borrow();
                let part = request_part(&calls, p, &mut signed).map_err(S::Error::custom)?;
                seq.serialize_element(&part)?;
            }
        }
        seq.end()
    }
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum RequestPart<'a> {
    Text {
        text: &'a str,
    },
    Inline {
        #[serde(rename = "inlineData")]
        inline_data: Blob<'a>,
    },
    File {
        #[serde(rename = "fileData")]
        file_data: FileData<'a>,
    },
    Call {
        #[serde(rename = "functionCall")]
        function_call: Call<'a>,
        #[serde(rename = "thoughtSignature", skip_serializing_if = "Option::is_none")]
        thought_signature: Option<&'static str>,
    },
    Result {
        #[serde(rename = "functionResponse")]
        function_response: FunctionResponse<'a>,
    },
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    mime_type: &'a str,
    data: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'a> {
    mime_type: &'static str,
    file_uri: &'a str,
}

#[derive(Debug, Serialize)]
struct Call<'a> {
    id: &'a str,
    name: &'a str,
    args: &'a RawValue,
}

/// `functionResponse`: a result that is a JSON object is its `response`;
/// any other text is wrapped as `{"content": text}` (`{"error": text}` for
/// an error).
#[derive(Debug)]
struct FunctionResponse<'a> {
    id: &'a str,
    name: &'a str,
    text: Cow<'a, str>,
    /// The key the text is wrapped in; `None` when it is an object.
    wrapped_as: Option<&'static str>,
}

impl Serialize for FunctionResponse<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("id", self.id)?;
        m.serialize_entry("name", self.name)?;
        match self.wrapped_as {
            None => match serde_json::from_str::<&RawValue>(&self.text) {
                Ok(raw) => m.serialize_entry("response", raw)?,
                Err(_) => m.serialize_entry("response", &Wrapped("content", &self.text))?,
            },
            Some(key) => m.serialize_entry("response", &Wrapped(key, &self.text))?,
        }
        m.end()
    }
}

/// `{key: text}`, without copying the text.
struct Wrapped<'a>(&'static str, &'a str);

impl Serialize for Wrapped<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(self.0, self.1)?;
        m.end()
    }
}

#[derive(Debug, Serialize)]
struct SystemInstruction {
    parts: [SystemText; 1],
}

#[derive(Debug, Serialize)]
struct SystemText {
    text: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a Raw>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<Value>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.max_output_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.stop_sequences.is_empty()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.seed.is_none()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
            && self.thinking_config.is_none()
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Declarations<'a> {
    function_declarations: Vec<Declaration<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Declaration<'a> {
    name: &'a str,
    /// JSON Schema as the other formats have it: Gemini's own `parameters`
    /// takes only an OpenAPI subset.
    parameters_json_schema: &'a Raw,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

fn thinking_config_to(r: &Reasoning) -> Option<Value> {
    if r.off {
        return None;
    }
    let mut cfg = serde_json::Map::new();
    if r.dynamic && r.budget.is_none() && r.effort.is_none() {
        cfg.insert("thinkingBudget".into(), json!(-1));
    } else if let Some(b) = r.budget_tokens() {
        cfg.insert("thinkingBudget".into(), json!(b.min(MAX_THINKING_BUDGET)));
    }
    if r.show {
        cfg.insert("includeThoughts".into(), json!(true));
    }
    (!cfg.is_empty()).then_some(Value::Object(cfg))
}

/// The body to send Gemini (the model goes in the URL).
pub fn build_request(req: &Request) -> Result<Body<'_>, Untranslatable> {
    // System messages inside the conversation join the opening text.
    let later = req.messages.system_texts()?;
    let system: Vec<&str> = req
        .system
        .iter()
        .chain(&later)
        .map(String::as_str)
        .collect();
    let (response_mime_type, response_json_schema) = match &req.output {
        Some(Output::Json) => (Some("application/json"), None),
        Some(Output::Schema { schema, .. }) => (Some("application/json"), Some(schema)),
        None => (None, None),
    };
    let generation_config = GenerationConfig {
        max_output_tokens: req.max_tokens.filter(|n| *n <= MAX_OUTPUT_CARRIED),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop_sequences: &req.stop,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        seed: req.seed,
        response_mime_type,
        response_json_schema,
        thinking_config: req.reasoning.as_ref().and_then(thinking_config_to),
    };
    let declarations: Vec<Declaration<'_>> = req
        .tools
        .iter()
        .map(|t| Declaration {
            name: &t.name,
            parameters_json_schema: &t.parameters,
            description: t.description.as_deref(),
        })
        .collect();
    Ok(Body {
        contents: Contents(req),
        system_instruction: (!system.is_empty()).then(|| SystemInstruction {
            parts: [SystemText {
                text: Texts::new(system, "\n\n").to_string(),
            }],
        }),
        generation_config,
        tools: if declarations.is_empty() {
            Vec::new()
        } else {
            vec![Declarations {
                function_declarations: declarations,
            }]
        },
        tool_config: req.tool_choice.as_ref().map(|choice| {
            json!({"functionCallingConfig": match choice {
                ToolChoice::Auto => json!({"mode": "AUTO"}),
                ToolChoice::None => json!({"mode": "NONE"}),
                ToolChoice::Required => json!({"mode": "ANY"}),
                ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            }})
        }),
    })
}

fn request_part<'a>(
    calls: &'a HashMap<String, String>,
    p: &'a Part,
    signed: &mut bool,
) -> Result<RequestPart<'a>, Untranslatable> {
    Ok(match p {
        Part::Text(text) => RequestPart::Text { text },
        Part::Image(Image::Base64 { media_type, data })
        | Part::Document {
            media_type, data, ..
        } => RequestPart::Inline {
            inline_data: Blob {
                mime_type: media_type,
                data,
            },
        },
        Part::Image(Image::Url(url)) => match media_type_of(url) {
            Some(mime_type) => RequestPart::File {
                file_data: FileData {
                    mime_type,
                    file_uri: url,
                },
            },
            None => {
                return untranslatable(
                    "Gemini needs images inline or with a known image extension",
                );
            }
        },
        Part::ToolCall {
            id,
            name,
            arguments,
        } => RequestPart::Call {
            function_call: Call {
                id,
                name,
                args: arguments.value(),
            },
            thought_signature: (!std::mem::replace(signed, true))
                .then_some(GEMINI_PLACEHOLDER_SIGNATURE),
        },
        Part::Thinking(_) => {
            return untranslatable("thinking is not carried into a request of another format");
        }
        Part::ToolResult {
            call_id,
            name,
            content,
            is_error,
        } => {
            let name = name
                .as_deref()
                .or_else(|| calls.get(call_id).map(String::as_str))
                .ok_or_else(|| {
                    Untranslatable(format!(
                        "the tool result for `{call_id}` has no matching tool call"
                    ))
                })?;
            let text = texts(content, "Gemini")?.joined();
            let is_object = Json::parse(&text).is_ok_and(|v| v.is_object());
            let wrapped_as = match (*is_error, is_object) {
                (false, true) => None,
                (false, false) => Some("content"),
                (true, _) => Some("error"),
            };
            RequestPart::Result {
                function_response: FunctionResponse {
                    id: call_id,
                    name,
                    text,
                    wrapped_as,
                },
            }
        }
    })
}
