//! The request pipeline: a request's life as ordered phases.
//!
//! 1. find the route for the requested model (404 when none);
//! 2. read the route's blocks and ask the plan for the next step;
//! 3. rewrite the request for the chosen credential and send it;
//! 4. classify the outcome and learn from it *before* anything else happens;
//! 5. answer, fall back to the next candidate, wait, or give up.
//!
//! This module knows nothing of axum: it takes a parsed request and returns a
//! [`Reply`] that the HTTP layer renders.

mod relay;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::catalog::Route;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::{
    Failure, Learn, Next, Outcome, Pick, Plan, Purpose, ScopeKind, Step, Verdict, classify, hints,
    select::View,
};
use crate::secret::scrub;
use crate::source::CatalogHandle;
use crate::sse;
use crate::state::{Block, LearnedStore, QuotaHit, Scope};
use crate::upstream::{self, Upstream};
use crate::wire::{ErrorKind, Format};

/// Longest upstream error body read for classification.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Longest message kept in a learned block.
const BLOCK_MESSAGE_CHARS: usize = 300;

/// A chat completion request, already validated by the HTTP layer.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub body: Map<String, Value>,
    pub stream: bool,
}

/// An error the gateway answers with itself, in the client's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: String,
    /// Seconds for `Retry-After`.
    pub retry_after_s: Option<u64>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after_s: None,
        }
    }
}

/// What happened on the way, for the request's log line.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Upstream attempts made.
    pub attempts: u32,
    /// The credential and upstream model of the last attempt.
    pub credential: Option<String>,
    pub upstream_model: Option<String>,
    /// Time spent waiting for blocks to end.
    pub waited_ms: u64,
}

/// What the client gets.
pub enum Reply {
    /// A complete body: an upstream answer, or an upstream error relayed as is.
    Body {
        status: u16,
        content_type: String,
        body: Bytes,
    },
    /// An event stream; its first event has already arrived from the upstream.
    Stream(BoxStream<'static, Bytes>),
    Error(GatewayError),
}

impl Reply {
    fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Reply::Error(GatewayError::new(kind, message))
    }
}

/// Everything the pipeline needs, cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    catalog: CatalogHandle,
    store: Arc<dyn LearnedStore>,
    upstream: Upstream,
    clock: SharedClock,
    /// Fires when the drain timeout has passed: open streams end with an
    /// error event and waiting requests give up.
    hard_stop: CancellationToken,
    metrics: Arc<Metrics>,
}

/// The pair an attempt went to and when its request started: what learning needs.
#[derive(Debug, Clone)]
struct Attempted {
    pick: Pick,
    request_started_ms: i64,
}

enum AttemptEnd {
    Done(Reply),
    Next,
}

impl Gateway {
    pub fn new(
        config: Arc<Config>,
        catalog: CatalogHandle,
        store: Arc<dyn LearnedStore>,
        upstream: Upstream,
        clock: SharedClock,
        hard_stop: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                catalog,
                store,
                upstream,
                clock,
                hard_stop,
                metrics,
            }),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn catalog(&self) -> &CatalogHandle {
        &self.inner.catalog
    }

    pub fn store(&self) -> &Arc<dyn LearnedStore> {
        &self.inner.store
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Serves one chat completion: `POST /v1/chat/completions`.
    pub async fn chat(&self, request: ChatRequest, trace: &mut Trace) -> Reply {
        let catalog = self.inner.catalog.load();
        let Some(route) = catalog.route(&request.model).cloned() else {
            return Reply::error(
                ErrorKind::ModelNotFound,
                format!(
                    "The model `{}` does not exist: no enabled credential serves it",
                    request.model
                ),
            );
        };
        let started = self.now_ms();
        let cfg = &self.inner.config;
        let mut plan = Plan::new(
            cfg.routing,
            cfg.request_retry,
            cfg.max_retry_wait_ms,
            started,
        );
        loop {
            let blocks = self.read_blocks(&route).await;
            let view = View {
                blocks: &blocks,
                now_ms: self.now_ms(),
            };
            match plan.next(&route, view) {
                Step::Try(pick) => {
                    trace.attempts += 1;
                    trace.credential = Some(pick.credential.id.clone());
                    trace.upstream_model = Some(pick.upstream_model.clone());
                    let attempted = Attempted {
                        pick,
                        request_started_ms: started,
                    };
                    if let AttemptEnd::Done(reply) = self.attempt(&attempted, &request).await {
                        return reply;
                    }
                    self.inner.metrics.fallback();
                }
                Step::Wait { ms } => {
                    trace.waited_ms += ms;
                    self.inner.metrics.wait(ms);
                    tracing::debug!(model = %route.model, wait_ms = ms, "every candidate blocked; waiting");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                        () = self.inner.hard_stop.cancelled() => {
                            return Reply::error(ErrorKind::Unavailable, "the gateway is shutting down");
                        }
                    }
                }
                Step::GiveUp {
                    retry_after_s,
                    all_quota,
                } => return give_up(&route, retry_after_s, all_quota),
            }
        }
    }

    /// The route's blocks. A store that fails is treated as holding none, so
    /// requests keep flowing; the failure is logged.
    async fn read_blocks(&self, route: &Route) -> Vec<Option<Block>> {
        match self.inner.store.get(&route.scopes).await {
            Ok(blocks) => blocks,
            Err(e) => {
                tracing::warn!(error = %e, "reading learned state failed; routing without it");
                vec![None; route.scopes.len()]
            }
        }
    }

    async fn attempt(&self, at: &Attempted, request: &ChatRequest) -> AttemptEnd {
        let cred = &at.pick.credential;
        let sent = upstream::openai::chat_completions(cred, &at.pick.upstream_model, &request.body);
        let mut response = match self.inner.upstream.post(sent).await {
            Ok(r) => r,
            Err(f) => return self.failed(at, f).await,
        };
        if !(200..300).contains(&response.status) {
            return self.upstream_error(at, response).await;
        }
        if request.stream {
            return self.begin_stream(at, response).await;
        }
        let body = match response
            .read_to_limit(self.inner.config.max_body_bytes.max(64 * 1024 * 1024))
            .await
        {
            Ok(b) => b,
            Err(f) => return self.failed(at, f).await,
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return self.failed(at, Failure::Empty).await;
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return self.failed(at, Failure::Malformed).await;
        }
        // Some OpenAI-compatible servers report failures as a 200 with an
        // error object: that is no answer. Only bodies that mention an error
        // are parsed again.
        if contains(&body, b"\"error\"") {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            if v.get("error").is_some() && v.get("choices").is_none() {
                return self
                    .failed_with(at, Failure::Malformed, &error_text(&body))
                    .await;
            }
        }
        self.learn(at, &Outcome::Success, "").await;
        AttemptEnd::Done(Reply::Body {
            status: response.status,
            content_type: "application/json".into(),
            body,
        })
    }

    /// Holds the response until the upstream's first non-empty event: any
    /// failure before it falls back invisibly.
    async fn begin_stream(&self, at: &Attempted, mut response: upstream::Response) -> AttemptEnd {
        let mut parser = sse::Parser::new();
        let first = loop {
            match parser.next_event() {
                Ok(Some(event)) if event.data.trim().is_empty() => continue,
                Ok(Some(event)) => break event,
                Ok(None) => {}
                Err(_) => return self.failed(at, Failure::Malformed).await,
            }
            match response.chunk().await {
                Ok(Some(chunk)) => parser.push(&chunk),
                Ok(None) => return self.failed(at, Failure::Empty).await,
                Err(f) => return self.failed(at, f).await,
            }
        };
        if upstream::openai::is_done(&first.data) {
            return self.failed(at, Failure::Empty).await;
        }
        match serde_json::from_str::<Value>(&first.data) {
            Ok(v) if v.get("error").is_some() => {
                let text = error_text(first.data.as_bytes());
                return self.failed_with(at, Failure::Malformed, &text).await;
            }
            Ok(_) => {}
            Err(_) => return self.failed(at, Failure::Malformed).await,
        }
        self.learn(at, &Outcome::Success, "").await;
        let stream = relay::relay(
            self.clone(),
            at.clone(),
            response,
            parser,
            first,
            Format::OpenAi,
        );
        AttemptEnd::Done(Reply::Stream(stream))
    }

    async fn upstream_error(&self, at: &Attempted, mut response: upstream::Response) -> AttemptEnd {
        let body = response
            .read_to_limit(ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let hint_ms = hints::quota_hint(|h| response.header(h), json.as_ref(), self.now_ms());
        let text = error_text(&body);
        let outcome = Outcome::Status {
            status: response.status,
            error_text: &text,
            hint_ms,
        };
        let verdict = self.learn(at, &outcome, &text).await;
        match verdict {
            Next::ReturnToClient | Next::Answer => {
                let secret = at.pick.credential.api_key.expose();
                let body = if !secret.is_empty() && contains(&body, secret.as_bytes()) {
                    Bytes::from(scrub(&String::from_utf8_lossy(&body), &[secret]))
                } else {
                    body
                };
                AttemptEnd::Done(Reply::Body {
                    status: response.status,
                    content_type: response
                        .content_type()
                        .unwrap_or("application/json")
                        .to_string(),
                    body,
                })
            }
            Next::NextCandidate | Next::Stop => AttemptEnd::Next,
        }
    }

    async fn failed(&self, at: &Attempted, failure: Failure) -> AttemptEnd {
        self.failed_with(at, failure, failure.describe()).await
    }

    async fn failed_with(&self, at: &Attempted, failure: Failure, message: &str) -> AttemptEnd {
        match self.learn(at, &Outcome::Transport(failure), message).await {
            Next::Stop => AttemptEnd::Done(Reply::error(ErrorKind::Upstream, failure.describe())),
            _ => AttemptEnd::Next,
        }
    }

    /// Classifies an outcome and writes what it teaches, before the request
    /// moves on: the block is stored before any answer leaves the gateway.
    async fn learn(&self, at: &Attempted, outcome: &Outcome<'_>, message: &str) -> Next {
        let cfg = &self.inner.config;
        let verdict = classify(outcome, Purpose::Generate, &cfg.cooldowns);
        let cred = &at.pick.credential;
        self.inner
            .metrics
            .upstream(cred.provider.as_str(), outcome_label(&verdict));
        let pair = Scope::pair(&cred.id, &at.pick.upstream_model);
        let status = match outcome {
            Outcome::Status { status, .. } => *status,
            _ => 0,
        };
        let message = short(&scrub(message, &[cred.api_key.expose()]));
        let now = self.now_ms();
        let store = &self.inner.store;
        let written = match verdict.learn {
            Learn::Nothing => return verdict.next,
            Learn::Clear => store
                .succeed(&pair, at.request_started_ms)
                .await
                .map(|()| None),
            Learn::Block {
                scope,
                reason,
                length_ms,
            } => {
                let scope = match scope {
                    ScopeKind::Credential => Scope::credential(&cred.id),
                    ScopeKind::Pair => pair,
                };
                let block = Block {
                    reason,
                    status,
                    message,
                    replica: cfg.replica_id.clone(),
                    since_ms: now,
                    until_ms: now.saturating_add(i64::try_from(length_ms).unwrap_or(i64::MAX)),
                };
                store.put(&scope, block).await.map(|b| Some((scope, b)))
            }
            Learn::Quota { hint_ms } => {
                let hit = QuotaHit {
                    status,
                    message,
                    replica: cfg.replica_id.clone(),
                    now_ms: now,
                    hint_ms,
                    base_ms: cfg.cooldowns.quota_base_ms,
                    cap_ms: cfg.cooldowns.quota_cap_ms,
                };
                store.quota(&pair, hit).await.map(|b| Some((pair, b)))
            }
        };
        if let Ok(Some((scope, block))) = &written {
            self.inner
                .metrics
                .block(block.reason.as_str(), scope.kind());
        }
        match written {
            Ok(Some((scope, block))) => tracing::info!(
                credential = %cred.id,
                scope = %scope,
                reason = block.reason.as_str(),
                status = block.status,
                block_ms = block.until_ms - now,
                "blocked"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(credential = %cred.id, error = %e, "learning failed"),
        }
        verdict.next
    }
}

/// The `outcome` label of an upstream attempt in the metrics.
fn outcome_label(verdict: &Verdict) -> &'static str {
    match (verdict.learn, verdict.next) {
        (Learn::Clear, _) | (_, Next::Answer) => "success",
        (Learn::Block { reason, .. }, _) => reason.as_str(),
        (Learn::Quota { .. }, _) => "quota",
        (Learn::Nothing, Next::ReturnToClient) => "request_error",
        (Learn::Nothing, Next::Stop) => "client_gone",
        (Learn::Nothing, Next::NextCandidate) => "neutral",
    }
}

fn give_up(route: &Route, retry_after_s: u64, all_quota: bool) -> Reply {
    let (kind, why) = if all_quota {
        (ErrorKind::RateLimited, "rate limited")
    } else {
        (ErrorKind::Unavailable, "unavailable")
    };
    Reply::Error(GatewayError {
        kind,
        message: format!(
            "every credential for model `{}` is {why}; retry in {retry_after_s} s",
            route.model
        ),
        retry_after_s: Some(retry_after_s),
    })
}

/// The text an upstream error is classified by: message, type, code and
/// status of the usual error shapes, or the raw body.
pub fn error_text(body: &[u8]) -> String {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return String::from_utf8_lossy(&body[..body.len().min(2_000)]).into_owned();
    };
    let err = json.get("error").unwrap_or(&json);
    let mut parts: Vec<String> = Vec::new();
    for key in ["message", "type", "code", "status", "detail"] {
        match err.get(key).or_else(|| json.get(key)) {
            Some(Value::String(s)) => parts.push(s.clone()),
            Some(v @ Value::Number(_)) => parts.push(v.to_string()),
            Some(v @ (Value::Array(_) | Value::Object(_))) => parts.push(v.to_string()),
            _ => {}
        }
    }
    if let Some(Value::String(s)) = json.get("error") {
        parts.push(s.clone());
    }
    if parts.is_empty() {
        return json.to_string();
    }
    parts.join(": ")
}

fn short(message: &str) -> String {
    if message.chars().count() <= BLOCK_MESSAGE_CHARS {
        return message.to_string();
    }
    let mut s: String = message.chars().take(BLOCK_MESSAGE_CHARS).collect();
    s.push('…');
    s
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_collects_the_usual_fields() {
        let openai = br#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#;
        assert_eq!(
            error_text(openai),
            "The model `x` does not exist: invalid_request_error: model_not_found"
        );
        let fastapi = br#"{"detail":"Model not supported"}"#;
        assert_eq!(error_text(fastapi), "Model not supported");
        assert_eq!(error_text(b"upstream exploded"), "upstream exploded");
    }
}
