//! The Anthropic surface: `POST /v1/messages` and `/v1/messages/count_tokens`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::AppState;
use super::admit::{add_headers, admit};
use super::auth::authenticate;
use super::error::render;
use super::reply::{
    finish, header_text, json_object, metered, model_of, read_body, require_array, split,
    stream_flag,
};
use crate::pipeline::{ClientRequest, GatewayError, Trace};
use crate::wire::Format;

/// Client headers passed on to an Anthropic upstream.
const PASSED_ON: &[&str] = &["anthropic-version", "anthropic-beta"];

pub async fn messages(state: State<AppState>, request: axum::extract::Request) -> Response {
    serve(state, request, false).await
}

pub async fn count_tokens(state: State<AppState>, request: axum::extract::Request) -> Response {
    serve(state, request, true).await
}

async fn serve(
    State(state): State<AppState>,
    request: axum::extract::Request,
    count: bool,
) -> Response {
    let (headers, uri, body) = split(request);
    let format = Format::Anthropic;
    let catalog = state.gateway.catalog().load();
    let key = match authenticate(&catalog, &headers, &uri) {
        Ok(key) => key,
        Err(e) => return render(format, &e),
    };
    let (bytes, _held) = match read_body(&state, &headers, body).await {
        Ok(read) => read,
        Err(e) => return render(format, &e),
    };
    let request = match parse(bytes, &headers, count) {
        Ok(r) => r
            .with_session(|h| header_text(&headers, h))
            .metered(metered(&state, &key)),
        Err(e) => return render(format, &e),
    };
    let model = request.model.clone();
    let admission = match admit(&state, format, &key, &model, !count).await {
        Ok(a) => a,
        Err(refusal) => return *refusal,
    };
    let mut trace = Trace::default();
    let reply = if count {
        state.gateway.count_tokens(request, &mut trace).await
    } else {
        state.gateway.generate(request, &mut trace).await
    };
    let mut response = finish(format, reply, key.clone(), model, trace);
    add_headers(&mut response, admission.as_ref());
    response
}

fn parse(bytes: Vec<u8>, headers: &HeaderMap, count: bool) -> Result<ClientRequest, GatewayError> {
    let body = json_object(bytes)?;
    let model = model_of(&body)?;
    require_array(&body, "messages")?;
    let stream = if count { false } else { stream_flag(&body)? };
    let mut request = ClientRequest::new(Format::Anthropic, model, body, stream);
    request.passthrough_headers = PASSED_ON
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    Ok(request)
}
