//! Conversation affinity: a request that carries a conversation key goes to
//! the candidate that served that conversation last, while it is unblocked,
//! so provider prompt caches keep hitting and stateful upstream objects
//! (a stored response) are found. The entries live in the learned-state
//! store with a TTL, shared by every replica.

use sha2::{Digest, Sha256};

use super::ClientRequest;
use crate::json::Json;
use crate::wire::Format;

/// The conversation key of a request, hashed with its model: the keys
/// clients send are long, and may say who the user is.
pub fn key(request: &ClientRequest) -> Option<String> {
    let raw = conversation(request)?;
    Some(hashed(&request.model, &raw))
}

/// The key a Responses answer's id is remembered under: the client's next
/// turn names it as `previous_response_id`.
pub fn response_key(model: &str, response_id: &str) -> String {
    hashed(model, &format!("response:{response_id}"))
}

fn hashed(model: &str, raw: &str) -> String {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    h.update(raw.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The first conversation key the request carries, most specific first.
fn conversation(request: &ClientRequest) -> Option<String> {
    let body = &request.body;
    let text = |v: Option<Json<'_>>| {
        v.and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| s.into_owned())
    };
    if request.format == Format::Responses {
        if let Some(id) = text(body.get("previous_response_id")) {
            return Some(format!("response:{id}"));
        }
    }
    if let Some(session) = &request.session {
        return Some(format!("session:{session}"));
    }
    if let Some(k) = text(body.get("prompt_cache_key")) {
        return Some(format!("cache:{k}"));
    }
    text(body.get("metadata").and_then(|m| m.get("user_id"))).map(|u| format!("user:{u}"))
}

/// The session headers coding agents send (Claude Code, Codex).
pub const SESSION_HEADERS: [http::HeaderName; 4] = [
    http::HeaderName::from_static("x-claude-code-session-id"),
    http::HeaderName::from_static("session-id"),
    http::HeaderName::from_static("session_id"),
    http::HeaderName::from_static("x-session-id"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Document;
    use serde_json::{Value, json};

    fn request(format: Format, body: Value, session: Option<&str>) -> ClientRequest {
        let mut r = ClientRequest::new(format, "m".into(), Document::from_value(&body), false);
        r.session = session.map(String::from);
        r
    }

    #[test]
    fn the_most_specific_key_wins_and_keys_are_per_model() {
        let r = request(
            Format::Responses,
            json!({"previous_response_id": "resp_1", "prompt_cache_key": "k"}),
            Some("s"),
        );
        assert_eq!(key(&r), Some(response_key("m", "resp_1")));
        let a = request(
            Format::Anthropic,
            json!({"metadata": {"user_id": "u"}}),
            Some("s"),
        );
        let b = request(
            Format::Anthropic,
            json!({"metadata": {"user_id": "u"}}),
            None,
        );
        assert_ne!(key(&a), key(&b), "the session header comes first");
        assert!(key(&b).is_some());
        let mut other_model = b.clone();
        other_model.model = "n".into();
        assert_ne!(key(&b), key(&other_model));
        assert_eq!(key(&request(Format::OpenAi, json!({}), None)), None);
        let hashed = key(&b).unwrap_or_default();
        assert_eq!(hashed.len(), 32);
        assert!(!hashed.contains('u'));
    }
}
