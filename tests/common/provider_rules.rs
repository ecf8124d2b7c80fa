//! What the real providers refuse, checked by the mock upstream before it
//! answers, so that no test passes on a request a provider would turn away:
//! unknown top-level fields (chat completions and Responses), Anthropic's
//! thinking rules, Gemini's thought signatures and schema subset, OpenAI's
//! limits for reasoning models.
//! Each refusal is the provider's own 400, in its own shape.

use serde_json::{Value, json};

use super::mock::Reply;

const OPENAI_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "service_tier",
    "store",
    "metadata",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
];
/// What `POST /v1/responses` takes at the top level. `client_metadata` is not
/// in the published reference, but Codex sends it on every request to
/// api.openai.com with an API key, so the real API takes it.
const RESPONSES_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "max_output_tokens",
    "temperature",
    "top_p",
    "text",
    "store",
    "stream",
    "include",
    "prompt_cache_key",
    "metadata",
    "service_tier",
    "previous_response_id",
    "truncation",
    "user",
    "safety_identifier",
    "background",
    "conversation",
    "max_tool_calls",
    "top_logprobs",
    "stream_options",
    "prompt",
    "client_metadata",
];
const ANTHROPIC_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "context_management",
    "mcp_servers",
    "output_config",
    "output_format",
];
const GEMINI_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "cachedContent",
    "cached_content",
    "labels",
];
const GEMINI_GENERATION: &[&str] = &[
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "stopSequences",
    "candidateCount",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "thinkingConfig",
    "responseModalities",
    "mediaResolution",
    "responseLogprobs",
    "logprobs",
    "speechConfig",
];
/// The largest output limit the mock's models take (like gpt-4.1, Gemini 2.5).
const MAX_OUTPUT: u64 = 65_536;
/// The signature switchyard marks translated thinking with: no provider
/// can verify it.
const FOREIGN_SIGNATURE: &str = "c3dpdGNoeWFyZC10cmFuc2xhdGVkLXRoaW5raW5n";

/// The provider's 400 for `body`, or `None` when it would take it.
pub fn refusal(kind: &str, model: &str, body: &Value) -> Option<Reply> {
    let why = match kind {
        "openai" => openai(model, body),
        "responses" => responses(body),
        "anthropic" => anthropic(body),
        "gemini" => gemini(model, body),
        _ => Ok(()),
    };
    let message = why.err()?;
    Some(match kind {
        "openai" | "responses" => Reply::openai_error(400, &message, "invalid_request_error", None),
        "anthropic" => Reply::status(
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
        ),
        _ => Reply::status(
            400,
            json!({"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}),
        ),
    })
}

fn unknown_fields(body: &Value, known: &[&str]) -> Result<(), String> {
    for key in body.as_object().into_iter().flat_map(|o| o.keys()) {
        if !known.contains(&key.as_str()) {
            return Err(format!("Unrecognized request argument supplied: {key}"));
        }
    }
    Ok(())
}

fn reasoning_model(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    m.starts_with("o1")
        || m.starts_with("o3")
        || m.starts_with("o4")
        || m.starts_with("gpt-5")
        || m.contains("reasoning")
}

fn openai(model: &str, body: &Value) -> Result<(), String> {
    unknown_fields(body, OPENAI_FIELDS)?;
    if reasoning_model(model) && body.get("max_tokens").is_some() {
        return Err("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.".into());
    }
    for key in ["max_tokens", "max_completion_tokens"] {
        if body[key].as_u64().is_some_and(|n| n > MAX_OUTPUT) {
            return Err(format!(
                "{key} is too large: this model supports at most {MAX_OUTPUT} completion tokens"
            ));
        }
    }
    for m in body["messages"].as_array().into_iter().flatten() {
        let role = m["role"].as_str().unwrap_or("");
        if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
            return Err(format!(
                "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'tool', 'developer'."
            ));
        }
    }
    Ok(())
}

fn responses(body: &Value) -> Result<(), String> {
    unknown_fields(body, RESPONSES_FIELDS)?;
    if body["max_output_tokens"]
        .as_u64()
        .is_some_and(|n| n > MAX_OUTPUT)
    {
        return Err(format!(
            "max_output_tokens is too large: this model supports at most {MAX_OUTPUT} output tokens"
        ));
    }
    // A tool declared the chat-completions way (nested under `function`)
    // has no name where the Responses API looks for it.
    for t in body["tools"].as_array().into_iter().flatten() {
        if t["type"] == "function" && t.get("function").is_some() {
            return Err("Missing required parameter: 'tools[0].name'.".into());
        }
    }
    Ok(())
}

fn anthropic(body: &Value) -> Result<(), String> {
    unknown_fields(body, ANTHROPIC_FIELDS)?;
    let Some(max_tokens) = body["max_tokens"].as_u64() else {
        return Err("max_tokens: Field required".into());
    };
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    for m in &messages {
        for b in m["content"].as_array().into_iter().flatten() {
            if b["type"] == "thinking" && b["signature"] == FOREIGN_SIGNATURE {
                return Err("messages: Invalid `signature` in `thinking` block".into());
            }
        }
    }
    let thinking = body["thinking"]["type"].as_str().unwrap_or("disabled");
    if thinking == "disabled" {
        return Ok(());
    }
    if thinking == "enabled" {
        let budget = body["thinking"]["budget_tokens"].as_u64().unwrap_or(0);
        if budget < 1024 {
            return Err(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
                    .into(),
            );
        }
        if budget >= max_tokens {
            return Err("`max_tokens` must be greater than `thinking.budget_tokens`".into());
        }
    }
    if body["temperature"].as_f64().is_some_and(|t| t != 1.0) {
        return Err("`temperature` may only be set to 1 when thinking is enabled".into());
    }
    if body.get("top_k").is_some() {
        return Err("`top_k` cannot be set when thinking is enabled".into());
    }
    if body["top_p"].as_f64().is_some_and(|p| p < 0.95) {
        return Err("`top_p` must be between 0.95 and 1 when thinking is enabled".into());
    }
    if let Some(kind) = body["tool_choice"]["type"].as_str() {
        if kind == "any" || kind == "tool" {
            return Err("Thinking may not be enabled when tool_choice forces tool use.".into());
        }
    }
    // A tool loop: the assistant turn being continued opens with thinking.
    if let [.., assistant, last] = messages.as_slice() {
        let types = |m: &Value| -> Vec<String> {
            m["content"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| b["type"].as_str().unwrap_or("").to_string())
                .collect()
        };
        let continues = types(last).iter().any(|t| t == "tool_result");
        let calls = types(assistant).iter().any(|t| t == "tool_use");
        let first = types(assistant).first().cloned().unwrap_or_default();
        if continues && calls && first != "thinking" && first != "redacted_thinking" {
            return Err("messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final `assistant` message must start with a thinking block.".into());
        }
    }
    Ok(())
}

fn gemini(model: &str, body: &Value) -> Result<(), String> {
    unknown_fields(body, GEMINI_FIELDS)?;
    let cfg = body
        .get("generationConfig")
        .or_else(|| body.get("generation_config"));
    if let Some(cfg) = cfg.and_then(Value::as_object) {
        for key in cfg.keys() {
            if !GEMINI_GENERATION.contains(&key.as_str()) {
                return Err(format!(
                    "Invalid JSON payload received. Unknown name \"{key}\" at 'generation_config': Cannot find field."
                ));
            }
        }
        if cfg
            .get("maxOutputTokens")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > MAX_OUTPUT)
        {
            return Err(format!(
                "The maximum number of output tokens is {MAX_OUTPUT}"
            ));
        }
    }
    for t in body["tools"].as_array().into_iter().flatten() {
        for f in t["functionDeclarations"].as_array().into_iter().flatten() {
            let p = f["parameters"].to_string();
            if p.contains("\"$schema\"") || p.contains("\"additionalProperties\"") {
                return Err("Invalid JSON payload received. Unknown name \"additionalProperties\" at 'tools[0].function_declarations[0].parameters': Cannot find field.".into());
            }
        }
    }
    // Gemini 3 checks the signatures of the current turn's function calls.
    let needs_signatures = model.starts_with("gemini-3");
    for c in body["contents"].as_array().into_iter().flatten() {
        let mut first_call = true;
        for p in c["parts"].as_array().into_iter().flatten() {
            if p["thoughtSignature"] == FOREIGN_SIGNATURE {
                return Err("Thought signature is not valid.".into());
            }
            if p.get("functionCall").is_some() {
                if needs_signatures && first_call && p.get("thoughtSignature").is_none() {
                    return Err(
                        "Function call is missing a thought_signature in functionCall parts."
                            .into(),
                    );
                }
                first_call = false;
            }
        }
    }
    Ok(())
}
