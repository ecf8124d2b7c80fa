//! The `openai` provider: any OpenAI-compatible service.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::Request;
use crate::catalog::Credential;

/// `POST {base_url}/chat/completions` with the model rewritten to the upstream model.
pub fn chat_completions(
    credential: &Credential,
    upstream_model: &str,
    body: &Map<String, Value>,
) -> Request {
    let mut body = body.clone();
    body.insert("model".into(), Value::String(upstream_model.to_string()));
    Request {
        url: format!("{}/chat/completions", credential.base_url),
        headers: headers(credential),
        // Serialising a map of JSON values cannot fail.
        body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    }
}

fn headers(credential: &Credential) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = credential
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.push((
        "authorization".into(),
        format!("Bearer {}", credential.api_key.expose()),
    ));
    headers
}

/// Whether a parsed stream event ends the stream.
pub fn is_done(data: &str) -> bool {
    data.trim() == "[DONE]"
}

/// Whether a chunk carries a `finish_reason`: a stream that ended after one
/// ended properly even without `[DONE]`.
pub fn has_finish_reason(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| {
            choices
                .iter()
                .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
        })
}
