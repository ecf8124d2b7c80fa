//! The OpenAI Responses surface: `POST /v1/responses` (JSON and SSE), the
//! only API Codex speaks. Stateless: `store` is accepted and nothing is
//! kept; `previous_response_id` is served only by a `responses_api`
//! credential, which gets the request as it is.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::reply::{bad, generation, json_object, model_of, stream_flag};
use crate::pipeline::{ClientRequest, GatewayError};
use crate::wire::Format;

pub async fn create(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    generation(state, request, Format::Responses, parse_responses).await
}

/// `GET /v1/responses`: Codex first tries a WebSocket here. The gateway
/// serves HTTP only, and says so at once with the status that makes Codex
/// fall back to HTTP.
pub async fn websocket() -> Response {
    (
        StatusCode::UPGRADE_REQUIRED,
        axum::Json(crate::wire::error_body(
            Format::Responses,
            crate::wire::ErrorKind::BadRequest,
            "WebSocket is not served here: use HTTP (POST /v1/responses)",
        )),
    )
        .into_response()
}

/// Validates a Responses body: malformed input is a 400 and never reaches
/// an upstream.
pub fn parse_responses(bytes: Vec<u8>) -> Result<ClientRequest, GatewayError> {
    let body = json_object(bytes)?;
    let model = model_of(&body)?;
    match body.get("input") {
        None => {}
        Some(v) if v.is_null() || v.is_string() || v.is_array() => {}
        Some(_) => return Err(bad("`input` must be a string or an array of items")),
    }
    let stream = stream_flag(&body)?;
    Ok(ClientRequest::new(Format::Responses, model, body, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_are_400_with_a_reason() {
        for (body, needle) in [
            (&b"{not json"[..], "not valid JSON"),
            (&br#"{"input":"x"}"#[..], "`model` is required"),
            (&br#"{"model":"m","input":7}"#[..], "`input` must be"),
            (&br#"{"model":"m","input":"x","stream":1}"#[..], "`stream`"),
        ] {
            let err = parse_responses(body.to_vec()).expect_err("invalid");
            assert!(
                err.message.contains(needle),
                "{} lacks {needle}",
                err.message
            );
        }
        let ok =
            parse_responses(br#"{"model":"m","input":"x","stream":true}"#.to_vec()).expect("valid");
        assert!(ok.stream);
    }
}
