//! The `anthropic` provider: Anthropic's Messages API.

use super::{Headers, Payload, Request};
use crate::catalog::Credential;

/// The API version sent when neither the client nor the credential names one.
pub const VERSION: &str = "2023-06-01";

fn headers(credential: &Credential, client: &[(String, String)]) -> Headers {
    let mut headers = Headers::of(credential);
    for (k, v) in client {
        if !headers.has(k) {
            headers.add(k, v);
        }
    }
    if !headers.has("anthropic-version") {
        headers.add("anthropic-version", VERSION);
    }
    headers.secret(
        http::HeaderName::from_static("x-api-key"),
        "",
        credential.api_key.expose(),
    );
    headers
}

/// `POST {base_url}/v1/messages`. `client` holds the client's own
/// `anthropic-*` headers, passed on when the client speaks Anthropic too.
pub fn messages(credential: &Credential, body: Payload, client: &[(String, String)]) -> Request {
    Request {
        url: format!("{}/v1/messages", credential.base_url),
        headers: headers(credential, client),
        body,
    }
}

/// `POST {base_url}/v1/messages/count_tokens`.
pub fn count_tokens(
    credential: &Credential,
    body: Payload,
    client: &[(String, String)],
) -> Request {
    Request {
        url: format!("{}/v1/messages/count_tokens", credential.base_url),
        headers: headers(credential, client),
        body,
    }
}
