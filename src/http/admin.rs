//! The admin API (only when `SWITCHYARD_ADMIN_KEY` is set): blocks in the
//! shared store, removing them, and credentials with their blocks, secrets masked.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::console::Paging;
use super::error::render;
use super::session;
use crate::catalog::SAME_NAME;
use crate::pipeline::GatewayError;
use crate::state::{Block, Scope, SideState, View};
use crate::wire::{ErrorKind, Format};

/// A read: `Authorization: Bearer <admin key>` (checked in constant time),
/// or the console's session cookie.
pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if bearer(state, headers) || session::of_request(state, headers).is_some() {
        Ok(())
    } else {
        Err(Box::new(unauthorized()))
    }
}

/// A change: the bearer admin key, or the session cookie together with the
/// session's token, from this site.
pub(super) fn authorize_change(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if bearer(state, headers) {
        return Ok(());
    }
    match session::of_request(state, headers) {
        Some(s) if session::change_allowed(&s, headers) => Ok(()),
        Some(_) => Err(Box::new(session::forbidden(
            "a change from another site, or without the session's token, is refused",
        ))),
        None => Err(Box::new(unauthorized())),
    }
}

fn bearer(state: &AppState, headers: &HeaderMap) -> bool {
    let expected = state.gateway.config().admin_key.as_ref();
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    matches!((expected, given), (Some(expected), Some(given)) if constant_time_eq(expected.expose(), given))
}

fn unauthorized() -> Response {
    render(
        Format::OpenAi,
        &GatewayError::new(ErrorKind::Unauthorized, "admin key required"),
    )
}

pub(super) fn constant_time_eq(a: &str, b: &str) -> bool {
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

/// Which learned state an answer comes from, for the operator reading it.
fn view_json(view: View) -> Value {
    let note = match view {
        View::Memory => "this process's learned state (no Redis): the only one there is",
        View::Shared { unsynced: 0 } => {
            "the shared learned state in Redis, as every replica sees it"
        }
        View::Shared { .. } => {
            "the shared learned state in Redis, with blocks this replica holds that Redis has not taken yet (it refuses writes)"
        }
        View::Local { .. } => {
            "Redis does not answer: this replica's own learned state; other replicas may know other blocks"
        }
    };
    json!({"view": view.as_str(), "unsynced": view.unsynced(), "note": note})
}

/// Every active block: the store's listing, plus the catalog's own
/// credentials and pairs read directly, so a block written into Redis by hand
/// (which no index names) is listed too.
async fn all_blocks(state: &AppState) -> Result<(Vec<(Scope, Block)>, View), Response> {
    let store = state.gateway.store();
    let mut all = store.list().await.map_err(store_unavailable)?;
    let catalog = state.gateway.catalog().load();
    let known: Vec<Scope> = catalog
        .credentials
        .keys()
        .map(|id| Scope::credential(id))
        .chain(
            catalog
                .credential_models
                .iter()
                .filter(|m| m.upstream_model != SAME_NAME)
                .map(|m| Scope::pair(&m.credential_id, &m.upstream_model)),
        )
        .filter(|s| !all.iter().any(|(listed, _)| listed == s))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let found = store.get(&known).await.map_err(store_unavailable)?;
    all.extend(
        known
            .into_iter()
            .zip(found)
            .filter_map(|(s, b)| Some((s, b?))),
    );
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((all, store.view()))
}

pub async fn blocks(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    match all_blocks(&state).await {
        Ok((all, view)) => {
            let now = state.gateway.now_ms();
            let blocks: Vec<Value> = all.iter().map(|(s, b)| block_json(s, b, now)).collect();
            let mut body = view_json(view);
            body["blocks"] = Value::Array(blocks);
            Json(body).into_response()
        }
        Err(r) => r,
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
    if let Err(r) = authorize_change(state, headers) {
        return *r;
    }
    let store = state.gateway.store();
    let removed = store.remove(&scope).await;
    let view = store.view();
    match removed {
        // Redis did not take the delete: this replica has lifted the block
        // and passes the delete on when Redis is back, so it sticks.
        Ok(known) if matches!(view, View::Local { .. }) => {
            tracing::info!(scope = %scope, "block removed by the admin API on this replica; Redis gets the delete when it is back");
            let mut body = view_json(view);
            body["deleted"] = json!(scope.to_string());
            body["known_here"] = json!(known);
            body["pending"] = json!(true);
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
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

/// `GET /admin/credentials`: every credential, or with `q`, `offset` and
/// `limit` one page of those whose id or models match `q`.
pub async fn credentials(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(paging): Query<Paging>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let catalog = state.gateway.catalog().load();
    let (all, view) = match all_blocks(&state).await {
        Ok(listed) => listed,
        Err(r) => return r,
    };
    let now = state.gateway.now_ms();
    // Each credential's rows, found once (a thousand credentials, each
    // looked up alone, would cost a million comparisons).
    let mut rows_of: std::collections::HashMap<&str, Vec<&crate::catalog::CredentialModel>> =
        std::collections::HashMap::new();
    for m in &catalog.credential_models {
        rows_of.entry(m.credential_id.as_str()).or_default().push(m);
    }
    let rows = |id: &str| rows_of.get(id).map_or(&[][..], Vec::as_slice);
    let matching: Vec<_> = catalog
        .credentials
        .values()
        .filter(|c| paging.matches(&c.id) || rows(&c.id).iter().any(|m| paging.matches(&m.model)))
        .collect();
    let (page, total) = if paging.paged() {
        paging.cut(matching)
    } else {
        let n = matching.len();
        (matching, n)
    };
    // Each credential's own scope and its pairs': probes and quota ladders.
    let pairs_of = |id: &str| -> Vec<&str> {
        let pairs: std::collections::BTreeSet<&str> = rows(id)
            .iter()
            .filter(|m| m.upstream_model != SAME_NAME)
            .map(|m| m.upstream_model.as_str())
            .collect();
        pairs.into_iter().collect()
    };
    let scopes: Vec<Scope> = page
        .iter()
        .flat_map(|c| {
            std::iter::once(Scope::credential(&c.id))
                .chain(pairs_of(&c.id).into_iter().map(|u| Scope::pair(&c.id, u)))
        })
        .collect();
    let sides: std::collections::HashMap<&Scope, SideState> =
        match state.gateway.store().side_state(&scopes).await {
            Ok(sides) => scopes.iter().zip(sides).collect(),
            Err(e) => return store_unavailable(e),
        };
    let side_of = |scope: &Scope| sides.get(scope).copied().unwrap_or_default();
    let credentials: Vec<Value> = page
        .into_iter()
        .map(|c| {
            let own = side_of(&Scope::credential(&c.id));
            let pairs: Vec<Value> = pairs_of(&c.id)
                .into_iter()
                .map(|u| {
                    let side = side_of(&Scope::pair(&c.id, u));
                    json!({
                        "upstream_model": u,
                        "quota_level": side.quota_level,
                        "awaiting_probe": side.awaiting_probe,
                        "probe_held": side.probe_held,
                    })
                })
                .collect();
            let models: Vec<Value> = rows(&c.id)
                .iter()
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
                "awaiting_probe": own.awaiting_probe,
                "probe_held": own.probe_held,
                "pairs": pairs,
            })
        })
        .collect();
    let mut body = view_json(view);
    body["total"] = json!(total);
    body["credentials"] = Value::Array(credentials);
    Json(body).into_response()
}
