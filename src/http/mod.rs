//! The HTTP layer: routes, client authentication, body limits, and rendering
//! replies and errors in the client's wire format. The only module that
//! imports axum.

mod admin;
mod admit;
mod anthropic;
mod auth;
mod budget;
mod chat;
mod console;
mod error;
mod gemini;
mod ops;
mod reply;
mod responses;
mod serve;
mod session;
mod tally;
mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::response::Response;
use axum::routing::{get, post};

use crate::config::AccessLog;
use crate::pipeline::{Gateway, GatewayError, Trace};
use crate::wire::{ErrorKind, Format};

pub use budget::BodyBudget;
pub use console::heartbeat;
pub use error::render;
pub use serve::{ConnectionTimeouts, LINGER_BYTES, LINGER_TIME, serve};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub gateway: Gateway,
    /// Set on SIGTERM: `/readyz` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// The bytes of request bodies held now, under their cap.
    pub bodies: Arc<BodyBudget>,
    /// The keys' request limits, counted on this replica.
    pub limiter: Arc<crate::limits::Limiter>,
    /// What each key used: counted here, written off the request path.
    pub ledger: Arc<crate::ledger::Ledger>,
    /// Redis, in cluster mode: where replicas list themselves.
    pub shared: Option<crate::state::RedisStore>,
    /// When this replica started (epoch ms).
    pub started_ms: i64,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The routes with what every request passes through on its way in and
/// out (its metrics, usage and log line): called by the accept loop
/// directly, rather than as axum middleware, which would box each request's
/// future and clone each route's service again.
#[derive(Clone)]
pub struct App {
    router: Router,
    state: AppState,
}

impl App {
    pub fn new(state: AppState) -> Self {
        Self {
            router: router(state.clone()),
            state,
        }
    }

    /// Serves one request.
    pub async fn call<B>(&self, request: http::Request<B>) -> Response
    where
        B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let response = match generation_route(&method, &path) {
            // The generation routes, called directly: axum's router would
            // match the path again, box the handler's future, wrap it in
            // three more, and set a length hyper sets anyway (some 3,500
            // instructions a request).
            Some(route) => {
                let request = request.map(axum::body::Body::new);
                let state = axum::extract::State(self.state.clone());
                match route {
                    Generation::Chat => chat::completions(state, request).await,
                    Generation::Responses => responses::create(state, request).await,
                    Generation::Messages => anthropic::messages(state, request).await,
                    Generation::CountTokens => anthropic::count_tokens(state, request).await,
                }
            }
            None => {
                let mut router = self.router.clone();
                match tower_service::Service::call(&mut router, request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        };
        access_log(&self.state, started, &method, &path, response)
    }
}

/// The POST routes served without the router (by the handlers the router
/// names for them).
fn generation_route(method: &http::Method, path: &str) -> Option<Generation> {
    if method != http::Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" => Some(Generation::Chat),
        "/v1/responses" => Some(Generation::Responses),
        "/v1/messages" => Some(Generation::Messages),
        "/v1/messages/count_tokens" => Some(Generation::CountTokens),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
enum Generation {
    Chat,
    Responses,
    Messages,
    CountTokens,
}

fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route(
            "/v1/responses",
            post(responses::create).get(responses::websocket),
        )
        .route("/v1/models", get(chat::models))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route(
            "/v1/models/{*rest}",
            post(gemini::model_action).get(gemini::get_model),
        )
        .route("/v1beta/models", get(gemini::list))
        .route(
            "/v1beta/models/{*rest}",
            post(gemini::model_action).get(gemini::get_model),
        )
        // `get` answers HEAD too: clients (Claude Code) probe `HEAD /`.
        .route("/", get(ops::root))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    if state.gateway.config().admin_key.is_some() {
        router = router
            .route("/admin/blocks", get(admin::blocks))
            .route(
                "/admin/blocks/{credential_id}",
                axum::routing::delete(admin::delete_credential_block),
            )
            .route(
                "/admin/blocks/{credential_id}/{*upstream_model}",
                axum::routing::delete(admin::delete_pair_block),
            )
            .route("/admin/credentials", get(admin::credentials))
            .route("/admin/usage", get(usage::usage))
            .route("/admin/usage/series", get(console::series))
            .route("/admin/keys", get(console::keys))
            .route("/admin/models", get(console::models))
            .route("/admin/replicas", get(console::replicas))
            .route("/admin/ui", get(console::page))
            .route("/admin/ui/app.js", get(console::script))
            .route("/admin/ui/app.css", get(console::style))
            .route(
                "/admin/ui/session",
                get(session::current)
                    .post(session::sign_in)
                    .delete(session::sign_out),
            );
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> Response {
    render(
        Format::OpenAi,
        &GatewayError::new(ErrorKind::RouteNotFound, "no such route"),
    )
}

async fn method_not_allowed() -> Response {
    render(
        Format::OpenAi,
        &GatewayError::new(
            ErrorKind::MethodNotAllowed,
            "method not allowed on this route",
        ),
    )
}

/// The `route` label of a path: a fixed set, so metrics stay bounded.
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/responses" => "/v1/responses",
        "/v1/models" => "/v1/models",
        "/v1/messages" => "/v1/messages",
        "/v1/messages/count_tokens" => "/v1/messages/count_tokens",
        "/v1beta/models" => "/v1beta/models",
        p if p.starts_with("/v1beta/models/") => gemini_route(p, true),
        p if p.starts_with("/v1/models/") => gemini_route(p, false),
        "/" => "/",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        p if p.starts_with("/admin/") => "/admin",
        _ => "other",
    }
}

fn gemini_route(path: &str, beta: bool) -> &'static str {
    let action = match path.rsplit_once(':') {
        None => "",
        Some((_, a)) => a,
    };
    match (beta, action) {
        (true, "generateContent") => "/v1beta/models/{model}:generateContent",
        (true, "streamGenerateContent") => "/v1beta/models/{model}:streamGenerateContent",
        (true, "countTokens") => "/v1beta/models/{model}:countTokens",
        (true, "") => "/v1beta/models/{model}",
        (false, "generateContent") => "/v1/models/{model}:generateContent",
        (false, "streamGenerateContent") => "/v1/models/{model}:streamGenerateContent",
        (false, "countTokens") => "/v1/models/{model}:countTokens",
        (false, "") => "/v1/models/{model}",
        _ => "other",
    }
}

/// Counts a generation request in the ledger: answered or refused, with
/// the credential that answered ('' when none did) and what it used (a
/// stream's when it ends). Token counting is not usage.
fn count_usage(state: &AppState, path: &str, status: u16, response: Response) -> Response {
    if path.ends_with("/count_tokens") || path.ends_with(":countTokens") {
        return response;
    }
    let Some(log) = response.extensions().get::<RequestLog>() else {
        return response;
    };
    if !reply::metered(state, &log.key) {
        return response;
    }
    tally::Count::new(state, status, log).attach(response)
}

/// What a proxied request leaves for its log line (a response extension).
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// The client key (its name is what is logged, never the key).
    pub key: Arc<crate::catalog::ApiKey>,
    pub model: String,
    pub trace: Trace,
}

/// The request's log line (which requests get one is `SWITCHYARD_ACCESS_LOG`),
/// and the one place 5xx answers are logged. The query string is never
/// logged: it may carry a client key (`?key=`). For a stream, the line is
/// written when its headers go out.
fn access_log(
    state: &AppState,
    started: Instant,
    method: &http::Method,
    path: &str,
    response: Response,
) -> Response {
    let status = response.status().as_u16();
    state.gateway.metrics().request(route_label(path), status);
    let ms = started.elapsed().as_secs_f64() * 1_000.0;
    let response = count_usage(state, path, status, response);
    let log = response.extensions().get::<RequestLog>();
    let key = log.map(|l| l.key.name.as_str());
    let model = log.map(|l| l.model.as_str());
    let credential = log.and_then(|l| l.trace.credential.as_deref());
    let upstream_model = log.and_then(|l| l.trace.upstream_model.as_deref());
    let attempts = log.map(|l| l.trace.attempts);
    let waited_ms = log.map(|l| l.trace.waited_ms);
    let eventful =
        status >= 400 || attempts.is_some_and(|a| a > 1) || waited_ms.is_some_and(|w| w > 0);
    let wanted = match state.gateway.config().access_log {
        AccessLog::All => !matches!(path, "/healthz" | "/readyz" | "/metrics"),
        AccessLog::Errors => eventful,
        AccessLog::Off => false,
    };
    if status >= 500 {
        tracing::warn!(%method, %path, status, ms, key, model, credential, upstream_model, attempts, waited_ms, "request failed");
    } else if wanted {
        tracing::info!(%method, %path, status, ms, key, model, credential, upstream_model, attempts, waited_ms, "request");
    }
    response
}
