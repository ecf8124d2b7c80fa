//! A key's limits applied before a request reaches the pipeline: its
//! `models` (403, before the 404 of an unknown name), and its request and
//! token limits and budget (429 in the client's format, with `Retry-After`
//! and `x-ratelimit-*`). Nothing here calls an upstream or teaches anything
//! about credentials.

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

use super::error::render;
use super::{AppState, RequestLog};
use crate::catalog::ApiKey;
use crate::limits::{Admission, Limit};
use crate::pipeline::{GatewayError, Trace};
use crate::wire::{ErrorKind, Format};

/// Admits one request of `key` for `model`, or the refusal to answer.
/// `counted` is false for token counting, which no limit spends.
pub async fn admit(
    state: &AppState,
    format: Format,
    key: &Arc<ApiKey>,
    model: &str,
    counted: bool,
) -> Result<Option<Admission>, Box<Response>> {
    if !key.limits.allows(model) {
        return Err(refused(format, &forbidden(model), key, model, None));
    }
    if !counted {
        return Ok(None);
    }
    let Some(admission) = state.limiter.admit(key).await else {
        return Ok(None);
    };
    let Some(limit) = admission.refused else {
        return Ok(Some(admission));
    };
    let (kind, message) = match limit {
        Limit::Requests => (
            ErrorKind::RateLimited,
            format!(
                "this API key's limit of {} requests per minute is reached",
                key.limits.rpm.unwrap_or(0)
            ),
        ),
        Limit::Tokens => (
            ErrorKind::RateLimited,
            format!(
                "this API key's limit of {} tokens per minute is reached",
                key.limits.tpm.unwrap_or(0)
            ),
        ),
        Limit::Budget => (
            ErrorKind::BudgetExceeded,
            format!(
                "this API key's budget of ${:.2} per {} is spent",
                key.limits.budget_micro_usd.unwrap_or(0) as f64 / 1e6,
                key.limits.budget_period.as_str()
            ),
        ),
    };
    let e = GatewayError {
        kind,
        message,
        retry_after_s: Some(admission.retry_after_s()),
    };
    Err(refused(format, &e, key, model, Some(&admission)))
}

/// A refusal in the client's format, left for the access log and the
/// ledger like any other answer (counted as an error of no credential).
fn refused(
    format: Format,
    e: &GatewayError,
    key: &Arc<ApiKey>,
    model: &str,
    admission: Option<&Admission>,
) -> Box<Response> {
    let mut response = render(format, e);
    add_headers(&mut response, admission);
    response.extensions_mut().insert(RequestLog {
        key: key.clone(),
        model: model.to_string(),
        trace: Trace::default(),
    });
    Box::new(response)
}

/// The 403 of a model the key's `models` leave out.
pub fn forbidden(model: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::ModelForbidden,
        format!("this API key may not use the model {model:?}"),
    )
}

/// The names of a window's `x-ratelimit-*` headers: its limit, what
/// remains, when it resets.
const REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
const TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// The `x-ratelimit-*` headers of the key's request and token limits, their
/// values written into one buffer.
pub fn add_headers(response: &mut Response, admission: Option<&Admission>) {
    let Some(a) = admission else { return };
    let windows = [(a.requests, REQUESTS), (a.tokens, TOKENS)];
    let mut text = Vec::with_capacity(64);
    let mut spans = Vec::with_capacity(6);
    let number = |text: &mut Vec<u8>, n: u64, unit: &str| {
        let from = text.len();
        text.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        text.extend_from_slice(unit.as_bytes());
        from..text.len()
    };
    let reset = number(&mut text, a.reset_s(), "s");
    for (window, names) in &windows {
        let Some(w) = window else { continue };
        let [limit, remaining, reset_name] = names;
        spans.push((limit, number(&mut text, w.limit, "")));
        spans.push((remaining, number(&mut text, w.remaining, "")));
        spans.push((reset_name, reset.clone()));
    }
    let text = bytes::Bytes::from(text);
    let headers = response.headers_mut();
    for (name, span) in spans {
        // Digits and `s`: always a header value.
        if let Ok(value) = HeaderValue::from_maybe_shared(text.slice(span)) {
            headers.insert(name.clone(), value);
        }
    }
}
