//! The OpenAI surface: `POST /v1/chat/completions` and `GET /v1/models`.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::auth::{authenticate, find_key};
use super::error::render;
use super::gemini;
use super::reply::{generation, json_object, model_of, require_array, stream_flag};
use crate::pipeline::{ClientRequest, GatewayError};
use crate::wire::Format;

pub async fn completions(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    generation(state, request, Format::OpenAi, parse_chat).await
}

/// `GET /v1/models`: OpenAI's list; Anthropic's when the request carries
/// `anthropic-version`; Gemini's when it authenticates the Gemini way
/// (`x-goog-api-key` or `?key=`), as the google-genai SDK's v1 does.
pub async fn models(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let anthropic = headers.contains_key("anthropic-version");
    let gemini = !anthropic && find_key(&headers, &uri).is_some_and(|(_, p)| p.is_gemini());
    let format = if anthropic {
        Format::Anthropic
    } else if gemini {
        Format::Gemini
    } else {
        Format::OpenAi
    };
    let catalog = state.gateway.catalog().load();
    let key = match authenticate(&catalog, &headers, &uri) {
        Ok(key) => key,
        Err(e) => return render(format, &e),
    };
    if gemini {
        return gemini::list_reply(&catalog, &key);
    }
    let allowed = || catalog.models.iter().filter(|m| key.limits.allows(m));
    if anthropic {
        let data: Vec<Value> = allowed()
            .map(|m| json!({"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}))
            .collect();
        return axum::Json(json!({
            "data": data,
            "has_more": false,
            "first_id": allowed().next(),
            "last_id": allowed().next_back(),
        }))
        .into_response();
    }
    let data: Vec<Value> = allowed()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// Validates a chat completion body: malformed input is a 400 and never
/// reaches an upstream.
pub fn parse_chat(bytes: Vec<u8>) -> Result<ClientRequest, GatewayError> {
    let body = json_object(bytes)?;
    let model = model_of(&body)?;
    require_array(&body, "messages")?;
    let stream = stream_flag(&body)?;
    Ok(ClientRequest::new(Format::OpenAi, model, body, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorKind;

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
            let err = parse_chat(body.to_vec()).expect_err("invalid");
            assert_eq!(err.kind, ErrorKind::BadRequest);
            assert!(
                err.message.contains(needle),
                "{} lacks {needle}",
                err.message
            );
        }
        let ok =
            parse_chat(br#"{"model":"m","messages":[],"stream":true}"#.to_vec()).expect("valid");
        assert!(ok.stream);
        assert_eq!(ok.model, "m");
    }
}
