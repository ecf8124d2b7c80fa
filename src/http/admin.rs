//! The admin API (only when `SWITCHYARD_ADMIN_KEY` is set): blocks in the
//! shared store, removing them, and credentials with their blocks, secrets masked.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::render;
use crate::pipeline::GatewayError;
use crate::state::{Block, Scope};
use crate::wire::{ErrorKind, Format};

/// Checks `Authorization: Bearer <admin key>` in constant time.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let expected = state.gateway.config().admin_key.as_ref();
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match (expected, given) {
        (Some(expected), Some(given)) if constant_time_eq(expected.expose(), given) => Ok(()),
        _ => Err(Box::new(render(
            Format::OpenAi,
            &GatewayError::new(ErrorKind::Unauthorized, "admin key required"),
        ))),
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn store_unavailable(e: impl std::fmt::Display) -> Response {
    render(
        Format::OpenAi,
        &GatewayError::new(
            ErrorKind::Unavailable,
            format!("learned state unavailable: {e}"),
        ),
    )
}

fn block_json(scope: &Scope, block: &Block, now_ms: i64) -> Value {
    let (credential_id, upstream_model) = match scope {
        Scope::Credential { credential_id } => (credential_id, None),
        Scope::Pair {
            credential_id,
            upstream_model,
        } => (credential_id, Some(upstream_model)),
    };
    json!({
        "scope": scope.kind(),
        "credential_id": credential_id,
        "upstream_model": upstream_model,
        "reason": block.reason.as_str(),
        "status": block.status,
        "message": block.message,
        "replica": block.replica,
        "since_ms": block.since_ms,
        "until_ms": block.until_ms,
        "remaining_ms": (block.until_ms - now_ms).max(0),
    })
}

pub async fn blocks(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    match state.gateway.store().list().await {
        Ok(all) => {
            let now = state.gateway.now_ms();
            let blocks: Vec<Value> = all.iter().map(|(s, b)| block_json(s, b, now)).collect();
            Json(json!({ "blocks": blocks })).into_response()
        }
        Err(e) => store_unavailable(e),
    }
}

pub async fn delete_credential_block(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(credential_id): Path<String>,
) -> Response {
    delete(&state, &headers, Scope::credential(&credential_id)).await
}

pub async fn delete_pair_block(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((credential_id, upstream_model)): Path<(String, String)>,
) -> Response {
    delete(
        &state,
        &headers,
        Scope::pair(&credential_id, &upstream_model),
    )
    .await
}

async fn delete(state: &AppState, headers: &HeaderMap, scope: Scope) -> Response {
    if let Err(r) = authorize(state, headers) {
        return *r;
    }
    match state.gateway.store().remove(&scope).await {
        Ok(true) => {
            tracing::info!(scope = %scope, "block removed by the admin API");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => render(
            Format::OpenAi,
            &GatewayError::new(ErrorKind::RouteNotFound, format!("no block on {scope}")),
        ),
        Err(e) => store_unavailable(e),
    }
}

pub async fn credentials(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let catalog = state.gateway.catalog().load();
    let all = match state.gateway.store().list().await {
        Ok(all) => all,
        Err(e) => return store_unavailable(e),
    };
    let now = state.gateway.now_ms();
    let credentials: Vec<Value> = catalog
        .credentials
        .values()
        .map(|c| {
            let models: Vec<Value> = catalog
                .credential_models
                .iter()
                .filter(|m| m.credential_id == c.id)
                .map(|m| json!({"model": m.model, "upstream_model": m.upstream_model}))
                .collect();
            let blocks: Vec<Value> = all
                .iter()
                .filter(|(s, _)| s.credential_id() == c.id)
                .map(|(s, b)| block_json(s, b, now))
                .collect();
            // Extra headers may carry secrets of their own: only their names are shown.
            let headers: Vec<&String> = c.headers.keys().collect();
            json!({
                "id": c.id,
                "provider": c.provider.as_str(),
                "base_url": c.base_url,
                "api_key": c.api_key.masked(),
                "priority": c.priority,
                "weight": c.weight,
                "enabled": c.enabled,
                "headers": headers,
                "models": models,
                "blocks": blocks,
            })
        })
        .collect();
    Json(json!({ "credentials": credentials })).into_response()
}
