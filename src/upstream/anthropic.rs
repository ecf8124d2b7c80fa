//! The `anthropic` provider: Anthropic's Messages API.

use super::{Payload, Request};
use crate::catalog::Credential;

/// The API version sent when neither the client nor the credential names one.
pub const VERSION: &str = "2023-06-01";

fn headers(credential: &Credential, client: &[(String, String)]) -> Vec<(String, String)> {
    let mut headers = super::extra_headers(credential);
    for (k, v) in client {
        if !headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(k)) {
            headers.push((k.clone(), v.clone()));
        }
    }
    if !headers
        .iter()
        .any(|(h, _)| h.eq_ignore_ascii_case("anthropic-version"))
    {
        headers.push(("anthropic-version".into(), VERSION.into()));
    }
    headers.push(("x-api-key".into(), credential.api_key.expose().to_string()));
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
