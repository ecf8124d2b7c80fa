//! Gemini generateContent <-> the neutral form.

use serde_json::{Map, Value, json};

use super::ir::{
    Delta, GEMINI_PLACEHOLDER_SIGNATURE, Image, Message, Output, Part, Reasoning, Request,
    Response, Role, StopReason, TRANSLATED_THINKING, Tool, ToolChoice, Untranslatable, Usage,
    media_type_of, new_id, stream_json, text_of, untranslatable,
};
use super::policy;
use crate::sse::Event;
use crate::wire::Format;

fn get<'a>(v: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

pub fn parse_request(body: &Map<String, Value>) -> Result<Request, Untranslatable> {
    for key in body.keys() {
        if policy::left_out_everywhere(Format::Gemini, &camel(key)) {
            return untranslatable(format!(
                "`{key}` cannot be carried to this model's provider"
            ));
        }
    }
    let mut req = Request::default();
    if let Some(sys) = get(body, "systemInstruction", "system_instruction") {
        for p in sys
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match p.get("text").and_then(Value::as_str) {
                Some(t) => req.system.push(t.to_string()),
                None => return untranslatable("system instructions must be text"),
            }
        }
    }
    if let Some(Value::Object(cfg)) = get(body, "generationConfig", "generation_config") {
        generation_config(cfg, &mut req)?;
    }
    for t in get(body, "tools", "tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(Value::Object(t)) = Some(t) else {
            continue;
        };
        for (k, v) in t {
            match k.as_str() {
                "functionDeclarations" | "function_declarations" => {
                    for f in v.as_array().into_iter().flatten() {
                        let parameters = match f
                            .get("parametersJsonSchema")
                            .or_else(|| f.get("parameters_json_schema"))
                        {
                            Some(schema) => schema.clone(),
                            None => f.get("parameters").map_or_else(
                                || json!({"type": "object", "properties": {}}),
                                json_schema_of,
                            ),
                        };
                        req.tools.push(Tool {
                            name: text_of(f, "name"),
                            description: f
                                .get("description")
                                .and_then(Value::as_str)
                                .map(String::from),
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
    if let Some(cfg) = get(body, "toolConfig", "tool_config").and_then(|c| {
        c.get("functionCallingConfig")
            .or_else(|| c.get("function_calling_config"))
    }) {
        let allowed: Vec<&str> = cfg
            .get("allowedFunctionNames")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        req.tool_choice = match cfg.get("mode").and_then(Value::as_str) {
            Some("NONE") => Some(ToolChoice::None),
            Some("ANY") if allowed.len() == 1 => Some(ToolChoice::Tool(allowed[0].to_string())),
            Some("ANY") => Some(ToolChoice::Required),
            _ => Some(ToolChoice::Auto),
        };
    }
    let Some(contents) = body.get("contents").and_then(Value::as_array) else {
        return untranslatable("`contents` must be an array");
    };
    let mut calls = 0usize;
    for c in contents {
        let role = match c.get("role").and_then(Value::as_str) {
            Some("model") => Role::Assistant,
            _ => Role::User,
        };
        let mut parts = Vec::new();
        for p in c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                // The model's own reasoning from earlier turns: other
                // providers neither accept nor need it.
            } else if let Some(t) = p.get("text").and_then(Value::as_str) {
                parts.push(Part::Text(t.to_string()));
            } else if let Some(d) = p.get("inlineData").or_else(|| p.get("inline_data")) {
                let media_type = d
                    .get("mimeType")
                    .or_else(|| d.get("mime_type"))
                    .and_then(Value::as_str)
                    .unwrap_or("image/png")
                    .to_string();
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
            } else if let Some(d) = p.get("fileData").or_else(|| p.get("file_data")) {
                parts.push(Part::Image(Image::Url(
                    d.get("fileUri")
                        .or_else(|| d.get("file_uri"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                )));
            } else if let Some(f) = p.get("functionCall").or_else(|| p.get("function_call")) {
                let name = text_of(f, "name");
                let id = f
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("call_{calls}_{name}"), String::from);
                calls += 1;
                parts.push(Part::ToolCall {
                    id,
                    name,
                    arguments: f.get("args").cloned().unwrap_or_else(|| json!({})),
                });
            } else if let Some(f) = p
                .get("functionResponse")
                .or_else(|| p.get("function_response"))
            {
                let name = text_of(f, "name");
                let call_id = match f.get("id").and_then(Value::as_str) {
                    Some(id) => id.to_string(),
                    None => req
                        .messages
                        .iter()
                        .rev()
                        .flat_map(|m| m.parts.iter().rev())
                        .find_map(|p| match p {
                            Part::ToolCall { id, name: n, .. } if *n == name => Some(id.clone()),
                            _ => None,
                        })
                        .unwrap_or_else(|| format!("call_{name}")),
                };
                let response = f.get("response").cloned().unwrap_or(Value::Null);
                let text = match &response {
                    Value::Object(o)
                        if o.len() == 1 && o.get("content").is_some_and(Value::is_string) =>
                    {
                        o["content"].as_str().unwrap_or_default().to_string()
                    }
                    other => other.to_string(),
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
        req.messages.push(Message::new(role, parts));
    }
    Ok(req)
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
fn generation_config(cfg: &Map<String, Value>, req: &mut Request) -> Result<(), Untranslatable> {
    let mut json = false;
    let mut schema = None;
    for (k, v) in cfg {
        match camel(k).as_str() {
            "maxOutputTokens" => req.max_tokens = v.as_u64(),
            "temperature" => req.temperature = v.as_f64(),
            "topP" => req.top_p = v.as_f64(),
            "topK" => req.top_k = v.as_u64(),
            "presencePenalty" => req.presence_penalty = v.as_f64(),
            "frequencyPenalty" => req.frequency_penalty = v.as_f64(),
            "seed" => req.seed = v.as_i64(),
            "stopSequences" => {
                req.stop = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect();
            }
            "candidateCount" if v.as_u64().is_none_or(|n| n == 1) => {}
            "candidateCount" => {
                return untranslatable(
                    "candidateCount above 1 cannot be carried to this model's provider",
                );
            }
            "responseMimeType" => match v.as_str() {
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

fn thinking_config(v: &Value) -> Reasoning {
    let mut r = Reasoning {
        show: v
            .get("includeThoughts")
            .or_else(|| v.get("include_thoughts"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        ..Reasoning::default()
    };
    match v
        .get("thinkingBudget")
        .or_else(|| v.get("thinking_budget"))
        .and_then(Value::as_i64)
    {
        Some(0) => r.off = true,
        Some(n) if n < 0 => r.dynamic = true,
        Some(n) => r.budget = u64::try_from(n).ok(),
        None => {}
    }
    if let Some(level) = v
        .get("thinkingLevel")
        .or_else(|| v.get("thinking_level"))
        .and_then(Value::as_str)
    {
        r.effort = super::anthropic::effort_from(&level.to_ascii_lowercase());
    }
    r
}

/// Gemini's largest thinking budget (2.5 Flash; Pro takes more).
const MAX_THINKING_BUDGET: u64 = 24_576;

fn thinking_config_to(r: &Reasoning) -> Option<Value> {
    if r.off {
        return None;
    }
    let mut cfg = Map::new();
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

/// JSON Schema from Gemini's OpenAPI-style schema (upper-case type names,
/// `nullable`), for providers that take JSON Schema.
pub fn json_schema_of(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut out = Map::new();
            let nullable = o.get("nullable").and_then(Value::as_bool) == Some(true);
            for (k, v) in o {
                match k.as_str() {
                    "type" => {
                        let t = v
                            .as_str()
                            .map_or_else(|| v.clone(), |t| json!(t.to_ascii_lowercase()));
                        out.insert(k.clone(), if nullable { json!([t, "null"]) } else { t });
                    }
                    "nullable" | "propertyOrdering" => {}
                    "properties" => {
                        let props = v
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(name, s)| (name.clone(), json_schema_of(s)))
                            .collect();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    "items" | "anyOf" | "oneOf" | "allOf" => {
                        out.insert(k.clone(), json_schema_of(v));
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(json_schema_of).collect()),
        other => other.clone(),
    }
}

/// The body to send Gemini (the model goes in the URL).
pub fn build_request(req: &Request) -> Result<Value, Untranslatable> {
    let mut system = req.system.clone();
    let mut contents = Vec::new();
    for m in super::ir::merge_turns(&mut system, req.messages.clone()) {
        let role = match m.role {
            Role::User | Role::System => "user",
            Role::Assistant => "model",
        };
        let mut parts = Vec::new();
        // Gemini wants a signature on a turn's first function call; calls
        // another provider made have none: the documented placeholder.
        let mut signed = false;
        for p in &m.parts {
            parts.push(match p {
                Part::Text(t) => json!({"text": t}),
                Part::Image(Image::Base64 { media_type, data })
                | Part::Document {
                    media_type, data, ..
                } => {
                    json!({"inlineData": {"mimeType": media_type, "data": data}})
                }
                Part::Image(Image::Url(url)) => match media_type_of(url) {
                    Some(mime) => json!({"fileData": {"mimeType": mime, "fileUri": url}}),
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
                } => {
                    let mut call =
                        json!({"functionCall": {"id": id, "name": name, "args": arguments}});
                    if !std::mem::replace(&mut signed, true) {
                        call["thoughtSignature"] = json!(GEMINI_PLACEHOLDER_SIGNATURE);
                    }
                    call
                }
                Part::Thinking(_) => {
                    return untranslatable(
                        "thinking is not carried into a request of another format",
                    );
                }
                Part::ToolResult {
                    call_id,
                    name,
                    content,
                    is_error,
                } => {
                    let name = name
                        .clone()
                        .or_else(|| req.tool_name(call_id).map(String::from))
                        .ok_or_else(|| {
                            Untranslatable(format!(
                                "the tool result for `{call_id}` has no matching tool call"
                            ))
                        })?;
                    let text = super::ir::result_text(content, "Gemini")?;
                    let key = if *is_error { "error" } else { "content" };
                    let response = match serde_json::from_str::<Value>(&text) {
                        Ok(v @ Value::Object(_)) if !is_error => v,
                        _ => json!({ key: text }),
                    };
                    json!({"functionResponse": {"id": call_id, "name": name, "response": response}})
                }
            });
        }
        contents.push(json!({"role": role, "parts": parts}));
    }
    let mut body = json!({"contents": contents});
    if !system.is_empty() {
        body["systemInstruction"] = json!({"parts": [{"text": system.join("\n\n")}]});
    }
    let mut cfg = Map::new();
    if let Some(n) = req
        .max_tokens
        .filter(|n| *n <= super::ir::MAX_OUTPUT_CARRIED)
    {
        cfg.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        cfg.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        cfg.insert("topP".into(), json!(p));
    }
    if let Some(k) = req.top_k {
        cfg.insert("topK".into(), json!(k));
    }
    if !req.stop.is_empty() {
        cfg.insert("stopSequences".into(), json!(req.stop));
    }
    if let Some(p) = req.presence_penalty {
        cfg.insert("presencePenalty".into(), json!(p));
    }
    if let Some(p) = req.frequency_penalty {
        cfg.insert("frequencyPenalty".into(), json!(p));
    }
    if let Some(s) = req.seed {
        cfg.insert("seed".into(), json!(s));
    }
    match &req.output {
        Some(Output::Json) => {
            cfg.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(Output::Schema { schema, .. }) => {
            cfg.insert("responseMimeType".into(), json!("application/json"));
            cfg.insert("responseJsonSchema".into(), schema.clone());
        }
        None => {}
    }
    if let Some(thinking) = req.reasoning.as_ref().and_then(thinking_config_to) {
        cfg.insert("thinkingConfig".into(), thinking);
    }
    if !cfg.is_empty() {
        body["generationConfig"] = Value::Object(cfg);
    }
    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                // JSON Schema as the other formats have it: Gemini's own
                // `parameters` takes only an OpenAPI subset.
                let mut f = json!({"name": t.name, "parametersJsonSchema": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                f
            })
            .collect();
        body["tools"] = json!([{"functionDeclarations": decls}]);
    }
    if let Some(choice) = &req.tool_choice {
        body["toolConfig"] = json!({"functionCallingConfig": match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        }});
    }
    Ok(body)
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

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usageMetadata")?;
    Some(Usage {
        input_tokens: u
            .get("promptTokenCount")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        output_tokens: u
            .get("candidatesTokenCount")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            + u.get("thoughtsTokenCount")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        cached_tokens: u
            .get("cachedContentTokenCount")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        reasoning_tokens: u
            .get("thoughtsTokenCount")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// The parts of a candidate, with ids made up for calls that lack one.
fn candidate_parts(v: &Value, calls: &mut usize) -> Vec<Part> {
    let mut parts = Vec::new();
    for p in v
        .pointer("/candidates/0/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                parts.push(Part::Thinking(t.to_string()));
            }
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            parts.push(Part::Text(t.to_string()));
        } else if let Some(f) = p.get("functionCall") {
            let name = text_of(f, "name");
            let id = f
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| new_id("call_"), String::from);
            *calls += 1;
            parts.push(Part::ToolCall {
                id,
                name,
                arguments: f.get("args").cloned().unwrap_or_else(|| json!({})),
            });
        }
    }
    parts
}

pub fn parse_response(v: &Value) -> Result<Response, Untranslatable> {
    let no_candidates = v
        .get("candidates")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if no_candidates && v.pointer("/promptFeedback/blockReason").is_none() {
        return untranslatable("Gemini returned no candidates");
    }
    let mut calls = 0;
    let parts = candidate_parts(v, &mut calls);
    // A prompt Gemini blocked is an answer with nothing in it.
    let reason = v
        .pointer("/candidates/0/finishReason")
        .and_then(Value::as_str)
        .unwrap_or(if no_candidates { "SAFETY" } else { "STOP" });
    Ok(Response {
        id: v
            .get("responseId")
            .and_then(Value::as_str)
            .map_or_else(|| new_id(""), String::from),
        model: text_of(v, "modelVersion"),
        stop: stop_from(reason, calls > 0),
        parts,
        usage: usage_of(v).unwrap_or_default(),
    })
}

/// A thought part of another provider's reasoning, marked as translated.
fn thought_part(text: &str) -> Value {
    json!({"text": text, "thought": true, "thoughtSignature": TRANSLATED_THINKING})
}

/// A function call of another provider's answer, marked as translated so
/// that a Gemini upstream later gets the placeholder signature instead.
fn call_part(id: &str, name: &str, args: Value) -> Value {
    json!({"functionCall": {"id": id, "name": name, "args": args}, "thoughtSignature": TRANSLATED_THINKING})
}

pub fn build_response(r: &Response, model: &str) -> Value {
    let parts: Vec<Value> = r
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(json!({"text": t})),
            Part::Thinking(t) => Some(thought_part(t)),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(call_part(id, name, arguments.clone())),
            _ => None,
        })
        .collect();
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": stop_to(r.stop), "index": 0}],
        "usageMetadata": {
            "promptTokenCount": r.usage.input_tokens,
            "candidatesTokenCount": r.usage.output_tokens,
            "totalTokenCount": r.usage.input_tokens + r.usage.output_tokens
        },
        "modelVersion": model,
        "responseId": r.id,
    })
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
                id: text_of(&v, "responseId"),
                model: text_of(&v, "modelVersion"),
            });
        }
        let before = self.calls;
        for p in candidate_parts(&v, &mut self.calls) {
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
                        json: arguments.to_string(),
                    });
                }
                _ => {}
            }
        }
        if let Some(reason) = v
            .pointer("/candidates/0/finishReason")
            .and_then(Value::as_str)
        {
            self.finished = true;
            out.push(Delta::Stop(stop_from(reason, self.calls > 0)));
        }
        if let Some(u) = usage_of(&v) {
            out.push(Delta::Usage(u));
        }
        Ok(Some(out))
    }

    /// Whether the stream said it was done (a finish reason arrived).
    pub fn finished(&self) -> bool {
        self.finished
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

    fn chunk(&self, parts: Vec<Value>, finish: Option<&str>) -> Event {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
        }
        let mut v =
            json!({"candidates": [candidate], "modelVersion": self.model, "responseId": self.id});
        if finish.is_some() {
            v["usageMetadata"] = json!({
                "promptTokenCount": self.usage.input_tokens,
                "candidatesTokenCount": self.usage.output_tokens,
                "totalTokenCount": self.usage.input_tokens + self.usage.output_tokens
            });
        }
        Event::data(v.to_string())
    }

    /// The calls assembled so far, as parts.
    fn take_calls(&mut self) -> Vec<Value> {
        self.sent += self.pending.len();
        self.pending
            .drain(..)
            .map(|(id, name, args)| {
                let args: Value = serde_json::from_str(&args).unwrap_or_else(|_| json!({}));
                call_part(&id, &name, args)
            })
            .collect()
    }

    /// Sends the calls being assembled, if any, in one chunk.
    fn flush(&mut self, out: &mut Vec<Event>) {
        if !self.pending.is_empty() {
            let parts = self.take_calls();
            out.push(self.chunk(parts, None));
        }
    }

    pub fn encode(&mut self, delta: &Delta, out: &mut Vec<Event>) {
        match delta {
            Delta::Start { .. } => {}
            Delta::Text(t) => {
                self.flush(out);
                out.push(self.chunk(vec![json!({"text": t})], None));
            }
            Delta::Thinking(t) => {
                self.flush(out);
                out.push(self.chunk(vec![thought_part(t)], None));
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
        let parts = self.take_calls();
        let reason = stop_to(self.stop.unwrap_or(StopReason::EndTurn));
        out.push(self.chunk(parts, Some(reason)));
    }
}

/// For a Gemini upstream of a Gemini client: the client's body with the
/// parts this gateway translated from another provider mended, or `None`
/// when it has none. Translated thoughts are taken out; translated function
/// calls get Gemini's documented placeholder signature instead of ours.
pub fn mend_history(body: &Map<String, Value>) -> Option<Map<String, Value>> {
    let contents = body.get("contents")?.as_array()?;
    let marked =
        |p: &Value| p.get("thoughtSignature").and_then(Value::as_str) == Some(TRANSLATED_THINKING);
    let any = contents.iter().any(|c| {
        c.get("parts")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().any(marked))
    });
    if !any {
        return None;
    }
    let mut body = body.clone();
    if let Some(Value::Array(contents)) = body.get_mut("contents") {
        for c in contents.iter_mut() {
            if let Some(Value::Array(parts)) = c.get_mut("parts") {
                parts.retain(|p| !(marked(p) && p.get("thought").is_some()));
                for p in parts.iter_mut().filter(|p| marked(p)) {
                    p["thoughtSignature"] = json!(GEMINI_PLACEHOLDER_SIGNATURE);
                }
            }
        }
    }
    Some(body)
}
