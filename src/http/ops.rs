//! The root probe, liveness, readiness and metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::AppState;

/// `GET /` and `HEAD /`: clients probe the root before they send a key.
pub async fn root() -> impl IntoResponse {
    (StatusCode::OK, "switchyard\n")
}

pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// Ready when a credential snapshot has been loaded and the replica is not draining.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !state.gateway.catalog().is_loaded() {
        (StatusCode::SERVICE_UNAVAILABLE, "credentials not loaded\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Prometheus metrics.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.gateway.metrics().render(),
    )
}
