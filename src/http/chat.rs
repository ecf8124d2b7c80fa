//! The OpenAI surface: `POST /v1/chat/completions` and `GET /v1/models`.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::auth::authenticate;
use super::error::render;
use super::{AppState, RequestLog};
use crate::pipeline::{ChatRequest, GatewayError, Reply, Trace};
use crate::wire::{ErrorKind, Format};

pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    let format = Format::OpenAi;
    let catalog = state.gateway.catalog().load();
    let key_name = match authenticate(&catalog, &headers, &uri) {
        Ok(name) => name,
        Err(e) => return render(format, &e),
    };
    let limit = state.gateway.config().max_body_bytes;
    let bytes = match read_body(&headers, body, limit).await {
        Ok(b) => b,
        Err(e) => return render(format, &e),
    };
    let request = match parse_chat(&bytes) {
        Ok(r) => r,
        Err(e) => return render(format, &e),
    };
    let model = request.model.clone();
    let mut trace = Trace::default();
    let reply = state.gateway.chat(request, &mut trace).await;
    let mut response = into_response(format, reply);
    response.extensions_mut().insert(RequestLog {
        key_name,
        model,
        trace,
    });
    response
}

pub async fn models(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let catalog = state.gateway.catalog().load();
    if let Err(e) = authenticate(&catalog, &headers, &uri) {
        return render(Format::OpenAi, &e);
    }
    let data: Vec<Value> = catalog
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// Reads the body up to `limit` bytes; anything larger is a 413.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, GatewayError> {
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
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if e.into_inner().is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            GatewayError::new(ErrorKind::BadRequest, "could not read the request body")
        }
    })
}

/// Validates a chat completion body: malformed input is a 400 and never
/// reaches an upstream.
pub fn parse_chat(bytes: &[u8]) -> Result<ChatRequest, GatewayError> {
    let bad = |m: String| GatewayError::new(ErrorKind::BadRequest, m);
    let text = std::str::from_utf8(bytes)
        .map_err(|e| bad(format!("request body is not valid UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| bad(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(bad("request body must be a JSON object".into()));
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) => return Err(bad("`model` must not be empty".into())),
        Some(_) => return Err(bad("`model` must be a string".into())),
        None => return Err(bad("`model` is required".into())),
    };
    if !body.get("messages").is_some_and(Value::is_array) {
        return Err(bad("`messages` must be an array".into()));
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("`stream` must be a boolean".into())),
    };
    Ok(ChatRequest {
        model,
        body: Map::clone(&body),
        stream,
    })
}

pub fn into_response(format: Format, reply: Reply) -> Response {
    match reply {
        Reply::Body {
            status,
            content_type,
            body,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("application/json"));
            (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_are_400_with_a_reason() {
        for (body, needle) in [
            (&b"{not json"[..], "not valid JSON"),
            (&b"\xff\xfe"[..], "UTF-8"),
            (&b"[1,2]"[..], "JSON object"),
            (&br#"{"messages":[]}"#[..], "`model` is required"),
            (
                &br#"{"model":7,"messages":[]}"#[..],
                "`model` must be a string",
            ),
            (
                &br#"{"model":"m","messages":{}}"#[..],
                "`messages` must be an array",
            ),
            (&br#"{"model":"m"}"#[..], "`messages` must be an array"),
            (
                &br#"{"model":"m","messages":[],"stream":"yes"}"#[..],
                "`stream`",
            ),
        ] {
            let err = parse_chat(body).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadRequest);
            assert!(
                err.message.contains(needle),
                "{} lacks {needle}",
                err.message
            );
        }
        let ok = parse_chat(br#"{"model":"m","messages":[],"stream":true}"#).expect("valid");
        assert!(ok.stream);
        assert_eq!(ok.model, "m");
    }
}
