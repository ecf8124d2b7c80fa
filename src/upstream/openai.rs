//! The `openai` provider: any OpenAI-compatible service.

use super::{Headers, Payload, Request};
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
    let mut headers = Headers::of(credential);
    headers.secret(
        http::header::AUTHORIZATION,
        "Bearer ",
        credential.api_key.expose(),
    );
    let mut url = String::with_capacity(credential.base_url.len() + 1 + path.len());
    url.push_str(&credential.base_url);
    url.push('/');
    url.push_str(path);
    Request { url, headers, body }
}
