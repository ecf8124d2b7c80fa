//! A key's limits applied before a request reaches the pipeline: its
//! `models` (403, before the 404 of an unknown name) and its request limit
//! (429 in the client's format, with `Retry-After` and `x-ratelimit-*`).
//! Nothing here calls an upstream or teaches anything about credentials.

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

use super::error::render;
use super::{AppState, RequestLog};
use crate::catalog::ApiKey;
use crate::limits::Admission;
use crate::pipeline::{GatewayError, Trace};
use crate::wire::{ErrorKind, Format};

/// Admits one request of `key` for `model`, or the refusal to answer.
/// `counted` is false for token counting, which no limit spends.
pub async fn admit(
    state: &AppState,
    format: Format,
    key: &ApiKey,
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
    if admission.admitted {
        return Ok(Some(admission));
    }
    let e = GatewayError {
        kind: ErrorKind::RateLimited,
        message: format!(
            "this API key's limit of {} requests per minute is reached",
            admission.limit
        ),
        retry_after_s: Some(admission.retry_after_s()),
    };
    Err(refused(format, &e, key, model, Some(&admission)))
}

/// A refusal in the client's format, left for the access log and the
/// ledger like any other answer (counted as an error of no credential).
fn refused(
    format: Format,
    e: &GatewayError,
    key: &ApiKey,
    model: &str,
    admission: Option<&Admission>,
) -> Box<Response> {
    let mut response = render(format, e);
    add_headers(&mut response, admission);
    response.extensions_mut().insert(RequestLog {
        key_name: key.name.clone(),
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

/// The `x-ratelimit-*` headers of the key's request limit.
pub fn add_headers(response: &mut Response, admission: Option<&Admission>) {
    let Some(a) = admission else { return };
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderValue::from(a.limit),
    );
    headers.insert(
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderValue::from(a.remaining),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{}s", a.retry_after_s())) {
        headers.insert(HeaderName::from_static("x-ratelimit-reset-requests"), v);
    }
}
