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

mod affinity;
mod attempt;
mod count;
mod prepare;
mod relay;

use prepare::Prepared;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::catalog::Route;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::json::{Document, Json};
use crate::metrics::Metrics;
use crate::routing::{
    Failure, Learn, Next, Outcome, Pick, Plan, Purpose, ScopeKind, Step, Verdict, classify,
    select::View,
};
use crate::secret::scrub;
use crate::source::CatalogHandle;
use crate::state::{Affinity, Block, LearnedStore, QuotaHit, Scope};
use crate::upstream::Upstream;
use crate::wire::{ErrorKind, Format};

use crate::wire::contains;
pub use crate::wire::error_text;

/// Longest upstream error body read for classification.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Longest message kept in a learned block.
const BLOCK_MESSAGE_CHARS: usize = 300;

/// A client's request, already validated by the HTTP layer.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// The wire format the client speaks.
    pub format: Format,
    pub model: String,
    /// The body as the client sent it, read where it lies.
    pub body: Document,
    pub stream: bool,
    /// The client's `anthropic-*` headers, passed on to an upstream of its own format.
    pub passthrough_headers: Vec<(String, String)>,
    /// An OpenAI client asked for a usage chunk at the end of its stream.
    pub include_usage: bool,
    /// The coding agent's session header, a conversation key.
    pub session: Option<String>,
}

impl ClientRequest {
    pub fn new(format: Format, model: String, body: Document, stream: bool) -> Self {
        let include_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Json::as_bool)
            .unwrap_or(false);
        Self {
            format,
            model,
            body,
            stream,
            passthrough_headers: Vec::new(),
            include_usage,
            session: None,
        }
    }

    /// Reads the session headers coding agents send.
    pub fn with_session(mut self, header: impl Fn(&str) -> Option<String>) -> Self {
        self.session = affinity::SESSION_HEADERS.iter().find_map(|h| header(h));
        self
    }
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

impl Trace {
    fn attempt(&mut self, pick: &Pick) {
        self.attempts += 1;
        self.credential = Some(pick.credential.id.clone());
        self.upstream_model = Some(pick.upstream_model.clone());
    }
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

/// The pair an attempt went to, when its request started and why: what
/// learning needs.
#[derive(Debug, Clone)]
struct Attempted {
    pick: Pick,
    request_started_ms: i64,
    purpose: Purpose,
}

enum AttemptEnd {
    /// The request ends here: an error, or an upstream fault relayed as is.
    Done(Reply),
    /// An upstream answered; `response_id` is a passed-through Responses
    /// answer's id, which the client's next turn may name.
    Answered {
        reply: Reply,
        response_id: Option<String>,
    },
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

    /// Serves one generation request, in any client format, from any
    /// credential that serves its model.
    pub async fn generate(&self, request: ClientRequest, trace: &mut Trace) -> Reply {
        let (route, prepared) = match self.route_for(&request) {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        let started = self.now_ms();
        let cfg = &self.inner.config;
        let conversation = affinity::key(&request);
        let last = match &conversation {
            Some(key) => self.affinity(key).await,
            None => None,
        };
        let mut plan = Plan::new(
            cfg.routing,
            cfg.request_retry,
            cfg.max_retry_wait_ms,
            started,
        )
        .excluding(prepared.excluded.clone())
        .preferring(last.clone().map(|a| (a.credential_id, a.upstream_model)));
        loop {
            match self.next_step(&mut plan, &route).await {
                Step::Try(pick) => {
                    trace.attempt(&pick);
                    let attempted = Attempted {
                        pick,
                        request_started_ms: started,
                        purpose: Purpose::Generate,
                    };
                    match self.attempt(&attempted, &request, &prepared).await {
                        AttemptEnd::Done(reply) => return reply,
                        AttemptEnd::Answered { reply, response_id } => {
                            let conv = conversation.as_deref();
                            self.remember(
                                &request,
                                conv,
                                last.as_ref(),
                                &attempted.pick,
                                response_id,
                            )
                            .await;
                            return reply;
                        }
                        AttemptEnd::Next => {}
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
                } => {
                    let blocks = self.read_blocks(&route).await;
                    let why = why_blocked(&route, &blocks, self.now_ms());
                    return give_up(&route, retry_after_s, all_quota, &why);
                }
            }
        }
    }

    /// The candidate conversation `key` was served by last; none when the
    /// store cannot say (the request is routed as any other).
    async fn affinity(&self, key: &str) -> Option<Affinity> {
        match self.inner.store.affinity(key).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "reading conversation affinity failed");
                None
            }
        }
    }

    /// Records who served the conversation, when that changed, and a
    /// Responses answer's id for the turn that will name it.
    async fn remember(
        &self,
        request: &ClientRequest,
        conversation: Option<&str>,
        last: Option<&Affinity>,
        pick: &Pick,
        answer_id: Option<String>,
    ) {
        let now = Affinity {
            credential_id: pick.credential.id.clone(),
            upstream_model: pick.upstream_model.clone(),
        };
        let ttl = self.inner.config.affinity_ttl_ms;
        let store = &self.inner.store;
        let mut keys: Vec<String> = Vec::new();
        if let Some(key) = conversation.filter(|_| last != Some(&now)) {
            keys.push(key.to_string());
        }
        if let Some(id) = answer_id {
            keys.push(affinity::response_key(&request.model, &id));
        }
        for key in keys {
            if let Err(e) = store.set_affinity(&key, &now, ttl).await {
                tracing::warn!(error = %e, "recording conversation affinity failed");
            }
        }
    }

    /// The route of the request's model, and which of its credentials can
    /// express the request; or the reply when there is none.
    fn route_for(&self, request: &ClientRequest) -> Result<(Arc<Route>, Prepared), Reply> {
        let catalog = self.inner.catalog.load();
        let route = catalog
            .route(&request.model)
            .ok_or_else(|| model_not_found(&request.model))?;
        let prepared = Prepared::new(&route, request).map_err(Reply::Error)?;
        Ok((route, prepared))
    }

    /// Reads the route's blocks now and asks the plan for the next step.
    async fn next_step(&self, plan: &mut Plan, route: &Route) -> Step {
        let blocks = self.read_blocks(route).await;
        let view = View {
            blocks: &blocks,
            now_ms: self.now_ms(),
        };
        plan.next(route, view)
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
        let verdict = classify(outcome, at.purpose, &cfg.cooldowns);
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

fn model_not_found(model: &str) -> Reply {
    Reply::error(
        ErrorKind::ModelNotFound,
        format!("The model `{model}` does not exist: no enabled credential serves it"),
    )
}

/// How many candidates a give-up names.
const CANDIDATES_NAMED: usize = 4;
/// How much of a block's message a give-up quotes.
const REASON_CHARS: usize = 80;

/// Why each candidate is out, for the client: "openai-main: upstream_error
/// (connection refused), 58 s left; ...". Credential ids and scrubbed
/// upstream messages only: no secret was ever stored in a block.
fn why_blocked(route: &Route, blocks: &[Option<Block>], now_ms: i64) -> String {
    let mut parts: Vec<String> = Vec::new();
    let members: Vec<_> = route.members().collect();
    for m in members.iter().take(CANDIDATES_NAMED) {
        let scopes = std::iter::once(m.credential_scope).chain(m.pair_scopes.iter().copied());
        let worst = scopes
            .filter_map(|i| blocks.get(i).and_then(Option::as_ref))
            .filter(|b| b.is_active(now_ms))
            .max_by_key(|b| b.until_ms);
        let Some(b) = worst else {
            parts.push(format!("{}: failed on this request", m.credential.id));
            continue;
        };
        let left_s = u64::try_from(b.until_ms - now_ms)
            .unwrap_or(0)
            .div_ceil(1_000);
        let mut message: String = b.message.chars().take(REASON_CHARS).collect();
        if b.message.chars().count() > REASON_CHARS {
            message.push('…');
        }
        let detail = if message.is_empty() {
            String::new()
        } else {
            format!(" ({message})")
        };
        parts.push(format!(
            "{}: {}{detail}, {left_s} s left",
            m.credential.id,
            b.reason.as_str()
        ));
    }
    if members.len() > CANDIDATES_NAMED {
        parts.push(format!("and {} more", members.len() - CANDIDATES_NAMED));
    }
    parts.join("; ")
}

fn give_up(route: &Route, retry_after_s: u64, all_quota: bool, why: &str) -> Reply {
    let (kind, state) = if all_quota {
        (ErrorKind::RateLimited, "rate limited")
    } else {
        (ErrorKind::Unavailable, "unavailable")
    };
    Reply::Error(GatewayError {
        kind,
        message: format!(
            "every credential for model `{}` is {state}; retry in {retry_after_s} s: {why}",
            route.model
        ),
        retry_after_s: Some(retry_after_s),
    })
}

fn short(message: &str) -> String {
    if message.chars().count() <= BLOCK_MESSAGE_CHARS {
        return message.to_string();
    }
    let mut s: String = message.chars().take(BLOCK_MESSAGE_CHARS).collect();
    s.push('…');
    s
}
