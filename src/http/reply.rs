//! Reading request bodies and rendering the pipeline's replies, for every
//! client format.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::admit::{add_headers, admit};
use super::auth::authenticate;
use super::budget::Reservation;
use super::error::render;
use super::{AppState, RequestLog};
use crate::catalog::ApiKey;
use crate::config::Usage;
use crate::json::{Document, Json};
use crate::pipeline::{ClientRequest, GatewayError, Reply, Trace};
use crate::wire::{ErrorKind, Format};

/// Reads a request body: up to `SWITCHYARD_MAX_BODY_BYTES` (413 beyond),
/// under the replica's budget of bodies in flight (503 beyond, before the
/// body is read), and a 408 when it sends nothing for
/// `SWITCHYARD_BODY_TIMEOUT_MS` (a slow client holds no replica's memory and
/// task forever). The reservation is held until the request is done.
pub async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Vec<u8>, Reservation), GatewayError> {
    use http_body_util::BodyExt;
    let config = state.gateway.config();
    let (limit, stall) = (config.max_body_bytes, config.body_timeout);
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let declared = declared.map_or(0, |n| usize::try_from(n).unwrap_or(0));
    let busy = || {
        let cap = state.bodies.cap();
        GatewayError {
            retry_after_s: Some(BUSY_RETRY_AFTER_S),
            ..GatewayError::new(
                ErrorKind::Unavailable,
                format!(
                    "this replica holds as many request bodies as it takes ({cap} bytes); retry in {BUSY_RETRY_AFTER_S} s"
                ),
            )
        }
    };
    let mut held = state.bodies.reserve(declared).ok_or_else(busy)?;
    let mut out = Vec::with_capacity(declared);
    let mut body = body;
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => {
                return Err(GatewayError::new(
                    ErrorKind::RequestTimeout,
                    format!("the request body sent nothing for {} ms", stall.as_millis()),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(GatewayError::new(
                    ErrorKind::BadRequest,
                    "could not read the request body",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            let len = out.len() + data.len();
            if len > limit {
                return Err(too_large());
            }
            if len > held.bytes() && !held.grow(len - held.bytes()) {
                return Err(busy());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok((out, held))
}

/// What a request turned away for the budget of bodies in flight is told
/// to wait: bodies come and go within seconds.
const BUSY_RETRY_AFTER_S: u64 = 1;

/// A request's head and body, taken apart without copying: axum's
/// `HeaderMap` and `Uri` extractors would clone them.
pub fn split(request: axum::extract::Request) -> (HeaderMap, Uri, Body) {
    let (parts, body) = request.into_parts();
    (parts.headers, parts.uri, body)
}

/// Serves one generation request of `format`: authenticates it, reads and
/// validates its body with `parse`, and answers. (Anthropic and Gemini
/// have their own, which also count tokens.)
pub async fn generation(
    state: AppState,
    request: axum::extract::Request,
    format: Format,
    parse: fn(Vec<u8>) -> Result<ClientRequest, GatewayError>,
) -> Response {
    let (headers, uri, body) = split(request);
    let catalog = state.gateway.catalog().load();
    let key = match authenticate(&catalog, &headers, &uri) {
        Ok(key) => key,
        Err(e) => return render(format, &e),
    };
    let (bytes, _held) = match read_body(&state, &headers, body).await {
        Ok(read) => read,
        Err(e) => return render(format, &e),
    };
    let request = match parse(bytes) {
        Ok(r) => r
            .with_session(|h| header_text(&headers, h))
            .metered(metered(&state, &key)),
        Err(e) => return render(format, &e),
    };
    let model = request.model.clone();
    let admission = match admit(&state, format, &key, &model, true).await {
        Ok(a) => a,
        Err(refusal) => return *refusal,
    };
    let mut trace = Trace::default();
    let reply = state.gateway.generate(request, &mut trace).await;
    let mut response = finish(format, reply, key.clone(), model, trace);
    add_headers(&mut response, admission.as_ref());
    response
}

/// Whether what `key`'s answers use is wanted: for the usage ledger, or
/// for its token and budget limits.
pub fn metered(state: &AppState, key: &ApiKey) -> bool {
    state.gateway.config().usage == Usage::On || key.limits.spends()
}

/// A request header as text, when it is present and not empty.
pub fn header_text(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(String::from)
}

pub fn bad(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, message)
}

/// A body that must be a JSON object in UTF-8, read where it lies.
pub fn json_object(bytes: Vec<u8>) -> Result<Document, GatewayError> {
    Document::parse(bytes).map_err(|e| bad(format!("request body {e}")))
}

/// `model`: a non-empty string.
pub fn model_of(body: &Document) -> Result<String, GatewayError> {
    let Some(model) = body.get("model") else {
        return Err(bad("`model` is required"));
    };
    match model.as_str() {
        Some(m) if !m.is_empty() => Ok(m.into_owned()),
        Some(_) => Err(bad("`model` must not be empty")),
        None => Err(bad("`model` must be a string")),
    }
}

/// `field` must be an array.
pub fn require_array(body: &Document, field: &str) -> Result<(), GatewayError> {
    if body.get(field).is_some_and(Json::is_array) {
        Ok(())
    } else {
        Err(bad(format!("`{field}` must be an array")))
    }
}

/// `stream`: absent, null or a boolean.
pub fn stream_flag(body: &Document) -> Result<bool, GatewayError> {
    match body.get("stream") {
        None => Ok(false),
        Some(v) if v.is_null() => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| bad("`stream` must be a boolean")),
    }
}

/// Renders a reply and leaves what the access log needs on the response.
pub fn finish(
    format: Format,
    reply: Reply,
    key: Arc<ApiKey>,
    model: String,
    trace: Trace,
) -> Response {
    let mut response = into_response(format, reply);
    response
        .extensions_mut()
        .insert(RequestLog { key, model, trace });
    response
}

/// The headers of a whole answer: its content type, and those of its
/// key's limits.
const ANSWER_HEADERS: usize = 8;

pub fn into_response(format: Format, reply: Reply) -> Response {
    match reply {
        Reply::Body {
            status,
            content_type,
            body,
        } => {
            let content_type = HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("application/json"));
            let mut response = Response::new(Body::from(body));
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            // Room for the `x-ratelimit-*` headers too, made once.
            let headers = response.headers_mut();
            headers.reserve(ANSWER_HEADERS);
            headers.insert(header::CONTENT_TYPE, content_type);
            response
        }
        Reply::Stream(stream) => {
            let body = Body::from_stream(stream.map(Ok::<_, Infallible>));
            (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    (
                        header::HeaderName::from_static("x-accel-buffering"),
                        HeaderValue::from_static("no"),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Reply::Error(e) => render(format, &e),
    }
}
