//! Gemini generateContent <-> the neutral form.

use serde_json::{Map, Value, json};

use super::ir::{
    Delta, Image, Message, Part, Request, Response, Role, StopReason, Tool, ToolChoice,
    Untranslatable, Usage, media_type_of, new_id, stream_json, text_of, untranslatable,
};
use crate::sse::Event;

/// Fields other providers may go without.
const DROPPABLE: &[&str] = &[
    "safetySettings",
    "safety_settings",
    "cachedContent",
    "labels",
];
const KNOWN: &[&str] = &[
    "model",
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
];

fn get<'a>(v: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

pub fn parse_request(body: &Map<String, Value>) -> Result<Request, Untranslatable> {
    for key in body.keys() {
        if !KNOWN.contains(&key.as_str()) && !DROPPABLE.contains(&key.as_str()) {
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
        for (k, v) in cfg {
            match k.as_str() {
                "maxOutputTokens" | "max_output_tokens" => req.max_tokens = v.as_u64(),
                "temperature" => req.temperature = v.as_f64(),
                "topP" | "top_p" => req.top_p = v.as_f64(),
                "topK" | "top_k" => req.top_k = v.as_u64(),
                "stopSequences" | "stop_sequences" => {
                    req.stop = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect();
                }
                "candidateCount" | "candidate_count" if v.as_u64() == Some(1) => {}
                "responseMimeType" | "response_mime_type" => match v.as_str() {
                    Some("application/json") => req.json_output = true,
                    Some("text/plain") => {}
                    _ => {
                        return untranslatable(
                            "this responseMimeType cannot be carried to this model's provider",
                        );
                    }
                },
                other => {
                    return untranslatable(format!(
                        "generationConfig.{other} cannot be carried to this model's provider"
                    ));
                }
            }
        }
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
                        req.tools.push(Tool {
                            name: text_of(f, "name"),
                            description: f
                                .get("description")
                                .and_then(Value::as_str)
                                .map(String::from),
                            parameters: f
                                .get("parameters")
                                .or_else(|| f.get("parametersJsonSchema"))
                                .cloned()
                                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
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
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                if p.get("thought").and_then(Value::as_bool) != Some(true) {
                    parts.push(Part::Text(t.to_string()));
                }
            } else if let Some(d) = p.get("inlineData").or_else(|| p.get("inline_data")) {
                parts.push(Part::Image(Image::Base64 {
                    media_type: d
                        .get("mimeType")
                        .or_else(|| d.get("mime_type"))
                        .and_then(Value::as_str)
                        .unwrap_or("image/png")
                        .to_string(),
                    data: text_of(d, "data"),
                }));
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
        req.messages.push(Message { role, parts });
    }
    Ok(req)
}

/// The body to send Gemini (the model goes in the URL).
pub fn build_request(req: &Request) -> Result<Value, Untranslatable> {
    let mut contents = Vec::new();
    for m in super::ir::merge_turns(req.messages.clone()) {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "model",
        };
        let mut parts = Vec::new();
        for p in &m.parts {
            parts.push(match p {
                Part::Text(t) => json!({"text": t}),
                Part::Image(Image::Base64 { media_type, data }) => {
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
                } => json!({"functionCall": {"id": id, "name": name, "args": arguments}}),
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
    if !req.system.is_empty() {
        body["systemInstruction"] = json!({"parts": [{"text": req.system.join("\n\n")}]});
    }
    let mut cfg = Map::new();
    if let Some(n) = req.max_tokens {
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
    if req.json_output {
        cfg.insert("responseMimeType".into(), json!("application/json"));
    }
    if !cfg.is_empty() {
        body["generationConfig"] = Value::Object(cfg);
    }
    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
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
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
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
    if v.get("candidates")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        let why = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
            .unwrap_or("no candidates");
        return untranslatable(format!("Gemini returned no answer ({why})"));
    }
    let mut calls = 0;
    let parts = candidate_parts(v, &mut calls);
    let reason = v
        .pointer("/candidates/0/finishReason")
        .and_then(Value::as_str)
        .unwrap_or("STOP");
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

pub fn build_response(r: &Response, model: &str) -> Value {
    let parts: Vec<Value> = r
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(json!({"text": t})),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => Some(json!({"functionCall": {"id": id, "name": name, "args": arguments}})),
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

/// Deltas -> Gemini stream chunks. Function calls go out whole, once their
/// arguments are complete.
#[derive(Debug)]
pub struct Encoder {
    model: String,
    id: String,
    /// The stream's calls by index (id, name, JSON text of the arguments),
    /// sent whole with the last chunk.
    pending: Vec<(String, String, String)>,
    stop: Option<StopReason>,
    usage: Usage,
}

impl Encoder {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            id: new_id(""),
            pending: Vec::new(),
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

    fn calls(&mut self) -> Vec<Value> {
        self.pending
            .drain(..)
            .map(|(id, name, args)| {
                let args: Value = serde_json::from_str(&args).unwrap_or_else(|_| json!({}));
                json!({"functionCall": {"id": id, "name": name, "args": args}})
            })
            .collect()
    }

    pub fn encode(&mut self, delta: &Delta, out: &mut Vec<Event>) {
        match delta {
            Delta::Start { .. } => {}
            Delta::Text(t) => out.push(self.chunk(vec![json!({"text": t})], None)),
            Delta::ToolStart { id, name, .. } => {
                self.pending.push((id.clone(), name.clone(), String::new()))
            }
            Delta::ToolArgs { index, json } => {
                if let Some(call) = self.pending.get_mut(*index) {
                    call.2.push_str(json);
                }
            }
            Delta::Stop(reason) => self.stop = Some(*reason),
            Delta::Usage(u) => self.usage = *u,
        }
    }

    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let parts = self.calls();
        let reason = stop_to(self.stop.unwrap_or(StopReason::EndTurn));
        out.push(self.chunk(parts, Some(reason)));
    }
}
