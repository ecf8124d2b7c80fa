//! The Gemini surface: `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse`, `:countTokens`, `GET /v1beta/models` and
//! `GET /v1beta/models/{model}`; the same under `/v1/models/` (the
//! google-genai SDK's default API version is v1).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::admit::{add_headers, admit, forbidden};
use super::auth::authenticate;
use super::error::render;
use super::reply::{
    bad, finish, header_text, json_object, metered, read_body, require_array, split,
};
use crate::catalog::{ApiKey, Catalog};
use crate::pipeline::{ClientRequest, GatewayError, Trace};
use crate::wire::{ErrorKind, Format};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Generate,
    Stream,
    Count,
}

pub async fn model_action(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let (headers, uri, body) = split(request);
    let format = Format::Gemini;
    let catalog = state.gateway.catalog().load();
    let key = match authenticate(&catalog, &headers, &uri) {
        Ok(key) => key,
        Err(e) => return render(format, &e),
    };
    let (model, action) = match route(&rest, &uri) {
        Ok(r) => r,
        Err(e) => return render(format, &e),
    };
    let (bytes, _held) = match read_body(&state, &headers, body).await {
        Ok(read) => read,
        Err(e) => return render(format, &e),
    };
    let request = match parse(bytes, model.clone(), action) {
        Ok(r) => r
            .with_session(|h| header_text(&headers, h))
            .metered(metered(&state, &key)),
        Err(e) => return render(format, &e),
    };
    let admission = match admit(&state, format, &key, &model, action != Action::Count).await {
        Ok(a) => a,
        Err(refusal) => return *refusal,
    };
    let mut trace = Trace::default();
    let reply = match action {
        Action::Count => state.gateway.count_tokens(request, &mut trace).await,
        Action::Generate | Action::Stream => state.gateway.generate(request, &mut trace).await,
    };
    let mut response = finish(format, reply, key.clone(), model, trace);
    add_headers(&mut response, admission.as_ref());
    response
}

/// `{model}:{action}`; streams must ask for SSE (`alt=sse`).
fn route(rest: &str, uri: &Uri) -> Result<(String, Action), GatewayError> {
    let Some((model, action)) = rest.rsplit_once(':') else {
        return Err(GatewayError::new(
            ErrorKind::RouteNotFound,
            "expected models/{model}:{action}",
        ));
    };
    let action = match action {
        "generateContent" => Action::Generate,
        "streamGenerateContent" => Action::Stream,
        "countTokens" => Action::Count,
        other => {
            return Err(GatewayError::new(
                ErrorKind::RouteNotFound,
                format!("unknown action `{other}`"),
            ));
        }
    };
    let sse = uri.query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "alt" && v == "sse")
    });
    if action == Action::Stream && !sse {
        return Err(bad(
            "streamGenerateContent is served as server-sent events: add `?alt=sse`",
        ));
    }
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() {
        return Err(bad("the model name is empty"));
    }
    Ok((model.to_string(), action))
}

fn parse(bytes: Vec<u8>, model: String, action: Action) -> Result<ClientRequest, GatewayError> {
    let mut body = json_object(bytes)?;
    // countTokens may wrap a whole generateContent request.
    if action == Action::Count {
        match body.sub("generateContentRequest") {
            Some(inner) => body = inner,
            None => body.remove("generateContentRequest"),
        }
    }
    body.remove("model");
    require_array(&body, "contents")?;
    Ok(ClientRequest::new(
        Format::Gemini,
        model,
        body,
        action == Action::Stream,
    ))
}

/// `GET /v1beta/models`.
pub async fn list(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let catalog = state.gateway.catalog().load();
    match authenticate(&catalog, &headers, &uri) {
        Ok(key) => list_reply(&catalog, &key),
        Err(e) => render(Format::Gemini, &e),
    }
}

/// Gemini's model list, for `GET /v1beta/models` and for a `GET /v1/models`
/// that authenticates the Gemini way.
pub fn list_reply(catalog: &Catalog, key: &ApiKey) -> Response {
    let models: Vec<Value> = catalog
        .models
        .iter()
        .filter(|m| key.limits.allows(m))
        .map(|m| model_json(m))
        .collect();
    axum::Json(json!({ "models": models })).into_response()
}

/// `GET /v1beta/models/{model}` (and under `/v1/`): one model, when some
/// enabled credential serves it (a pattern row counts).
pub async fn get_model(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let format = Format::Gemini;
    let catalog = state.gateway.catalog().load();
    let key = match authenticate(&catalog, &headers, &uri) {
        Ok(key) => key,
        Err(e) => return render(format, &e),
    };
    let model = rest.strip_prefix("models/").unwrap_or(&rest);
    if model.is_empty() || model.contains(':') {
        let e = GatewayError::new(ErrorKind::RouteNotFound, "expected models/{model}");
        return render(format, &e);
    }
    if !key.limits.allows(model) {
        return render(format, &forbidden(model));
    }
    if catalog.route(model).is_none() {
        let e = GatewayError::new(
            ErrorKind::ModelNotFound,
            format!("models/{model} is not found: no enabled credential serves it"),
        );
        return render(format, &e);
    }
    axum::Json(model_json(model)).into_response()
}

fn model_json(model: &str) -> Value {
    json!({
        "name": format!("models/{model}"),
        "displayName": model,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    })
}
