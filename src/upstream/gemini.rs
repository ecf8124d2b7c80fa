//! The `gemini` provider: Google's Generative Language API.

use super::{Headers, Payload, Request};
use crate::catalog::Credential;

fn request(credential: &Credential, model: &str, action: &str, body: Payload) -> Request {
    let mut headers = Headers::of(credential);
    headers.secret(
        http::HeaderName::from_static("x-goog-api-key"),
        "",
        credential.api_key.expose(),
    );
    let model = model.strip_prefix("models/").unwrap_or(model);
    Request {
        url: format!(
            "{}/v1beta/models/{}:{action}",
            credential.base_url,
            super::path_segment(model)
        ),
        headers,
        body,
    }
}

/// `:generateContent`, or `:streamGenerateContent?alt=sse` for a stream.
pub fn generate(credential: &Credential, model: &str, stream: bool, body: Payload) -> Request {
    let action = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    request(credential, model, action, body)
}

/// `:countTokens`.
pub fn count_tokens(credential: &Credential, model: &str, body: Payload) -> Request {
    request(credential, model, "countTokens", body)
}
