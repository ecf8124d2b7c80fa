//! Client wire formats, and the errors the gateway itself produces in each.

use serde_json::{Value, json};

use crate::json::Json;
use crate::sse::Event;

/// The wire format a client speaks: errors and stream errors use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI chat completions.
    OpenAi,
    /// OpenAI's Responses API (Codex speaks only this).
    Responses,
    Anthropic,
    Gemini,
}

/// The kinds of error the gateway produces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    /// The client's key may not use the model it asked for.
    ModelForbidden,
    /// A console request from another site, or without its session's token.
    Forbidden,
    ModelNotFound,
    RouteNotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    /// The request body stalled.
    RequestTimeout,
    /// Every candidate is under a quota block, or the key's rate limit is reached.
    RateLimited,
    /// The key's budget for the period is spent.
    BudgetExceeded,
    /// Every candidate is blocked, not all for quota; or the gateway is draining.
    Unavailable,
    /// An upstream failed after the response began.
    Upstream,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::ModelForbidden | ErrorKind::Forbidden => 403,
            ErrorKind::ModelNotFound | ErrorKind::RouteNotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::RateLimited | ErrorKind::BudgetExceeded => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::Upstream => 502,
            ErrorKind::Internal => 500,
        }
    }

    /// OpenAI's `type` and `code`.
    fn openai(self) -> (&'static str, Option<&'static str>) {
        match self {
            ErrorKind::BadRequest => ("invalid_request_error", None),
            ErrorKind::Unauthorized => ("authentication_error", Some("invalid_api_key")),
            ErrorKind::ModelForbidden => ("permission_error", Some("model_not_allowed")),
            ErrorKind::Forbidden => ("permission_error", Some("forbidden")),
            ErrorKind::ModelNotFound => ("invalid_request_error", Some("model_not_found")),
            ErrorKind::RouteNotFound => ("invalid_request_error", Some("unknown_url")),
            ErrorKind::MethodNotAllowed => ("invalid_request_error", Some("method_not_allowed")),
            ErrorKind::PayloadTooLarge => ("invalid_request_error", Some("request_too_large")),
            ErrorKind::RequestTimeout => ("invalid_request_error", Some("request_timeout")),
            ErrorKind::RateLimited => ("rate_limit_error", Some("rate_limit_exceeded")),
            ErrorKind::BudgetExceeded => ("insufficient_quota", Some("insufficient_quota")),
            ErrorKind::Unavailable => ("server_error", Some("service_unavailable")),
            ErrorKind::Upstream => ("server_error", Some("upstream_error")),
            ErrorKind::Internal => ("server_error", Some("internal_error")),
        }
    }

    /// Anthropic's error `type`.
    fn anthropic(self) -> &'static str {
        match self {
            ErrorKind::BadRequest | ErrorKind::MethodNotAllowed => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::ModelForbidden | ErrorKind::Forbidden => "permission_error",
            ErrorKind::ModelNotFound | ErrorKind::RouteNotFound => "not_found_error",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::RequestTimeout => "timeout_error",
            ErrorKind::RateLimited | ErrorKind::BudgetExceeded => "rate_limit_error",
            ErrorKind::Unavailable => "overloaded_error",
            ErrorKind::Upstream | ErrorKind::Internal => "api_error",
        }
    }

    /// Gemini's (Google RPC) `status`.
    fn gemini(self) -> &'static str {
        match self {
            ErrorKind::BadRequest | ErrorKind::PayloadTooLarge | ErrorKind::MethodNotAllowed => {
                "INVALID_ARGUMENT"
            }
            ErrorKind::Unauthorized => "UNAUTHENTICATED",
            ErrorKind::ModelForbidden | ErrorKind::Forbidden => "PERMISSION_DENIED",
            ErrorKind::RequestTimeout => "DEADLINE_EXCEEDED",
            ErrorKind::ModelNotFound | ErrorKind::RouteNotFound => "NOT_FOUND",
            ErrorKind::RateLimited | ErrorKind::BudgetExceeded => "RESOURCE_EXHAUSTED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Upstream | ErrorKind::Internal => "INTERNAL",
        }
    }
}

/// The JSON error body of `kind` in `format`.
pub fn error_body(format: Format, kind: ErrorKind, message: &str) -> Value {
    match format {
        Format::OpenAi | Format::Responses => {
            let (kind_type, code) = kind.openai();
            json!({"error": {"message": message, "type": kind_type, "code": code}})
        }
        Format::Anthropic => {
            json!({"type": "error", "error": {"type": kind.anthropic(), "message": message}})
        }
        Format::Gemini => {
            json!({"error": {"code": kind.status(), "message": message, "status": kind.gemini()}})
        }
    }
}

/// The event that ends a stream that failed after it began.
pub fn stream_error(format: Format, kind: ErrorKind, message: &str) -> Event {
    let body = error_body(format, kind, message).to_string();
    match format {
        Format::Anthropic => Event::named("error", body),
        Format::Responses => response_failed(kind, message, 0),
        Format::OpenAi | Format::Gemini => Event::data(body),
    }
}

/// The error codes Responses clients act on (Codex retries or stops by them).
pub fn responses_code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::RateLimited => "rate_limit_exceeded",
        ErrorKind::BudgetExceeded => "insufficient_quota",
        ErrorKind::Upstream | ErrorKind::Unavailable | ErrorKind::Internal => "server_error",
        _ => "invalid_request",
    }
}

/// Responses' `response.failed`, the event that ends a stream that failed.
pub fn response_failed(kind: ErrorKind, message: &str, sequence_number: u64) -> Event {
    let data = json!({
        "type": "response.failed",
        "sequence_number": sequence_number,
        "response": {
            "object": "response", "status": "failed",
            "error": {"code": responses_code(kind), "message": message},
        },
    });
    Event::named("response.failed", data.to_string())
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// An upstream error body with its fields kept apart. The classifier reads
/// the provider's structured code before any text, and must never take a
/// message that quotes a client's value (`invalid value 'model_not_found'`)
/// for the code itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamError {
    /// What the upstream says in words: `message`, FastAPI's `detail`, a bare
    /// `error` string, or the body itself when it is not JSON.
    pub message: String,
    /// The error's type: OpenAI's and Anthropic's `type`, Gemini's `status`.
    pub kind: Option<String>,
    /// A string `code` (OpenAI, Azure, most compatible servers). Numeric
    /// codes only repeat the HTTP status and are left out.
    pub code: Option<String>,
    /// The request field the error is about (OpenAI's `param`).
    pub param: Option<String>,
}

impl UpstreamError {
    pub fn parse(body: &[u8]) -> Self {
        match serde_json::from_slice::<Value>(body) {
            Ok(json) => Self::from_json(&json),
            Err(_) => Self {
                message: String::from_utf8_lossy(&body[..body.len().min(2_000)]).into_owned(),
                ..Self::default()
            },
        }
    }

    /// Reads the usual shapes: `{"error": {...}}` (OpenAI, Anthropic, Gemini),
    /// fields at the top (vLLM, FastAPI), a bare `{"error": "..."}`, and
    /// Gemini's stream form, an array around the object.
    pub fn from_json(json: &Value) -> Self {
        let json = match json {
            Value::Array(items) => items.first().unwrap_or(json),
            other => other,
        };
        let err = json.get("error").filter(|e| e.is_object()).unwrap_or(json);
        let field = |key: &str| err.get(key).or_else(|| json.get(key));
        let text = |key: &str| {
            field(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let message = text("message")
            .or_else(|| match field("detail") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(v @ (Value::Array(_) | Value::Object(_))) => Some(v.to_string()),
                _ => None,
            })
            .or_else(|| json.get("error").and_then(Value::as_str).map(String::from))
            .unwrap_or_default();
        Self {
            message,
            kind: text("type").or_else(|| text("status")),
            code: text("code").filter(|c| !c.bytes().all(|b| b.is_ascii_digit())),
            param: text("param"),
        }
    }
}

/// The text an upstream error is shown and stored by: message, type, code
/// and status of the usual error shapes, or the raw body. Read where it
/// lies: a 200 that is an error in disguise may be as large as any answer.
pub fn error_text(body: &[u8]) -> String {
    let parsed = std::str::from_utf8(body)
        .ok()
        .and_then(|text| Json::parse(text).ok());
    let Some(json) = parsed else {
        return String::from_utf8_lossy(&body[..body.len().min(2_000)]).into_owned();
    };
    let err = json.get("error").unwrap_or(json);
    let mut parts: Vec<String> = Vec::new();
    for key in ["message", "type", "code", "status", "detail"] {
        match err.get(key).or_else(|| json.get(key)) {
            Some(v) if v.is_string() => parts.push(v.as_str().unwrap_or_default().into_owned()),
            Some(v) if v.is_number() || v.is_array() || v.is_object() => {
                parts.push(v.compact().into_owned());
            }
            _ => {}
        }
    }
    if let Some(s) = json.get("error").and_then(Json::as_str) {
        parts.push(s.into_owned());
    }
    if parts.is_empty() {
        return json.compact().into_owned();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_collects_the_usual_fields() {
        let openai = br#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#;
        assert_eq!(
            error_text(openai),
            "The model `x` does not exist: invalid_request_error: model_not_found"
        );
        let fastapi = br#"{"detail":"Model not supported"}"#;
        assert_eq!(error_text(fastapi), "Model not supported");
        assert_eq!(error_text(b"upstream exploded"), "upstream exploded");
    }

    #[test]
    fn upstream_errors_keep_code_type_and_message_apart() {
        let openai = br#"{"error":{"message":"Invalid value 'model_not_found' for field 'user'","type":"invalid_request_error","param":"user","code":null}}"#;
        let e = UpstreamError::parse(openai);
        assert_eq!(
            e.message,
            "Invalid value 'model_not_found' for field 'user'"
        );
        assert_eq!(e.kind.as_deref(), Some("invalid_request_error"));
        assert_eq!((e.code, e.param.as_deref()), (None, Some("user")));
        let gemini =
            br#"[{"error":{"code":404,"message":"models/x is not found","status":"NOT_FOUND"}}]"#;
        let e = UpstreamError::parse(gemini);
        assert_eq!((e.kind.as_deref(), e.code), (Some("NOT_FOUND"), None));
        assert_eq!(e.message, "models/x is not found");
        let anthropic =
            br#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-9"}}"#;
        assert_eq!(
            UpstreamError::parse(anthropic).kind.as_deref(),
            Some("not_found_error")
        );
        let vllm = br#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#;
        let e = UpstreamError::parse(vllm);
        assert_eq!((e.kind.as_deref(), e.code), (Some("NotFoundError"), None));
        assert_eq!(
            UpstreamError::parse(br#"{"error":"model_not_found"}"#).message,
            "model_not_found"
        );
        assert_eq!(
            UpstreamError::parse(br#"{"detail":"Model not supported"}"#).message,
            "Model not supported"
        );
        assert_eq!(UpstreamError::parse(b"Bad Gateway").message, "Bad Gateway");
    }

    #[test]
    fn each_format_has_its_own_shape() {
        let o = error_body(Format::OpenAi, ErrorKind::ModelNotFound, "no such model");
        assert_eq!(o["error"]["code"], "model_not_found");
        assert_eq!(o["error"]["message"], "no such model");
        assert!(o["error"].get("type").is_some());
        let a = error_body(Format::Anthropic, ErrorKind::ModelNotFound, "m");
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "not_found_error");
        let g = error_body(Format::Gemini, ErrorKind::ModelNotFound, "m");
        assert_eq!(g["error"]["status"], "NOT_FOUND");
        assert_eq!(g["error"]["code"], 404);
        assert_eq!(
            stream_error(Format::Anthropic, ErrorKind::Upstream, "x")
                .event
                .as_deref(),
            Some("error")
        );
    }
}
