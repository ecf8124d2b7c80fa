//! The `openai` provider: any OpenAI-compatible service.

use super::{Payload, Request};
use crate::catalog::Credential;

/// `POST {base_url}/chat/completions`.
pub fn chat_completions(credential: &Credential, body: Payload) -> Request {
    post(credential, "chat/completions", body)
}

/// `POST {base_url}/responses`, for credentials with `responses_api`.
pub fn responses(credential: &Credential, body: Payload) -> Request {
    post(credential, "responses", body)
}

fn post(credential: &Credential, path: &str, body: Payload) -> Request {
    let mut headers = super::extra_headers(credential);
    headers.push((
        "authorization".into(),
        format!("Bearer {}", credential.api_key.expose()),
    ));
    Request {
        url: format!("{}/{path}", credential.base_url),
        headers,
        body,
    }
}
