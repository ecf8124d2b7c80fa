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
mod lift;
mod prepare;
mod relay;

use lift::{Refusals, Refused};
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
    Failure, Learn, Next, Outcome, Pick, Plan, Purpose, ScopeKind, Signature, Step, Verdict,
    classify, select::View,
};
use crate::secret::scrub;
use crate::source::CatalogHandle;
use crate::state::{Affinity, Block, LearnedStore, Probe, QuotaHit, Reason, Scope};
use crate::translate::usage::Spent;
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
    /// Whether what the answer used is wanted (for the usage ledger, or
    /// for the key's token or budget limits); if not, it is not read.
    pub metered: bool,
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
            metered: true,
        }
    }

    /// Says whether what the answer used is wanted.
    pub fn metered(mut self, metered: bool) -> Self {
        self.metered = metered;
        self
    }

    /// Reads the session headers coding agents send.
    pub fn with_session(mut self, header: impl Fn(&http::HeaderName) -> Option<String>) -> Self {
        self.session = affinity::SESSION_HEADERS.iter().find_map(header);
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
    /// What the answer used.
    pub spent: Tally,
    /// The client's answer came from the last attempt's upstream (its
    /// answer, or its error relayed), not from the gateway itself.
    pub answered: bool,
}

/// What a request used, for the ledger and the key's limits: known when
/// the answer is whole; a stream's is known when it ends (or its client
/// leaves), so the relay shares it with whoever counts it.
#[derive(Debug, Clone, Default)]
pub enum Tally {
    /// No upstream answered.
    #[default]
    Nothing,
    Known(Spent),
    /// Filled in by the relay when the stream ends.
    Stream(Arc<std::sync::Mutex<Option<Spent>>>),
}

impl Tally {
    fn stream() -> Self {
        Tally::Stream(Arc::default())
    }

    /// What was used: `None` for a stream still going.
    pub fn spent(&self) -> Option<Spent> {
        match self {
            Tally::Nothing => Some(Spent::default()),
            Tally::Known(s) => Some(*s),
            Tally::Stream(cell) => *cell.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Whether what was used is known only when a stream ends.
    pub fn streaming(&self) -> bool {
        matches!(self, Tally::Stream(_))
    }
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
        /// What it used (a stream's, once it ends).
        spent: Tally,
    },
    /// On to the next candidate; a failure the identical-failure rule may
    /// lift says what it wrote.
    Next(Option<Box<Refused>>),
}

/// What learning an outcome did.
struct Learned {
    next: Next,
    /// The block the outcome wrote, when it stands as written.
    written: Option<(Scope, Block)>,
    /// The failure's signature, when the identical-failure rule may lift it.
    signature: Option<Signature>,
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
        // The request's whole state machine lives on the heap: the layers
        // above move their futures by value, and would copy it each time.
        Box::pin(self.serve(request, trace)).await
    }

    async fn serve(&self, request: ClientRequest, trace: &mut Trace) -> Reply {
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
        let mut seen = Confirmed::default();
        let mut refusals = Refusals::default();
        loop {
            match self.next_step(&mut plan, &route, &mut seen).await {
                Step::Try(pick) => {
                    trace.attempt(&pick);
                    let attempted = Attempted {
                        pick,
                        request_started_ms: started,
                        purpose: Purpose::Generate,
                    };
                    let end = self.attempt(&attempted, &request, &prepared).await;
                    // A probe's answer is known now: its claim goes back.
                    drop(seen.probe.take());
                    match end {
                        AttemptEnd::Done(reply) => {
                            trace.answered = !matches!(reply, Reply::Error(_));
                            return reply;
                        }
                        AttemptEnd::Answered {
                            reply,
                            response_id,
                            spent,
                        } => {
                            trace.spent = spent;
                            trace.answered = true;
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
                        AttemptEnd::Next(refused) => {
                            refusals.record(&attempted.pick.credential.id, refused);
                        }
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
                    if let Some(own_fault) = self.lift(refusals).await {
                        return own_fault;
                    }
                    let view = Seen {
                        route: &route,
                        store: self.inner.store.as_ref(),
                        confirmed: &seen,
                    };
                    let why = why_blocked(&route, &view, self.now_ms());
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

    /// Asks the plan for the next step on this replica's own view of the
    /// blocks, then confirms a pick with the store (for Redis, one read of
    /// just that credential's and pair's keys): a pick found blocked is taken
    /// back and the plan asked again, now knowing. So a request's cost does
    /// not grow with its route, and a block in the shared store is never
    /// missed, however late this replica's view of it.
    async fn next_step(&self, plan: &mut Plan, route: &Route, seen: &mut Confirmed) -> Step {
        loop {
            let step = {
                let view = Seen {
                    route,
                    store: self.inner.store.as_ref(),
                    confirmed: seen,
                };
                plan.next(
                    route,
                    View {
                        blocks: &view,
                        now_ms: self.now_ms(),
                    },
                )
            };
            let Step::Try(pick) = &step else {
                return step;
            };
            let (cred_scope, pair_scope) = (pick.credential_scope, pick.pair_scope);
            let store = &self.inner.store;
            let confirmed = store
                .confirm(
                    &route.scopes[cred_scope],
                    &route.scopes[pair_scope],
                    self.inner.config.probe_ttl_ms,
                )
                .await;
            match confirmed {
                Ok(c) => {
                    let now = self.now_ms();
                    let blocked = [&c.credential, &c.pair]
                        .into_iter()
                        .flatten()
                        .any(|b| b.is_active(now));
                    seen.set(cred_scope, c.credential);
                    seen.set(pair_scope, c.pair);
                    match c.probe {
                        _ if blocked => {}
                        Probe::None => return step,
                        Probe::Claimed(claim) => {
                            self.inner.metrics.probe();
                            tracing::info!(credential = %pick.credential.id, upstream_model = %pick.upstream_model, "probing a pair whose block ended");
                            seen.probe = Some(ProbeGuard {
                                store: store.clone(),
                                claim: Some(claim),
                            });
                            return step;
                        }
                        Probe::Held { reason } => {
                            self.inner.metrics.probe_held();
                            seen.hold(pair_scope, reason, &self.inner.config.replica_id, now);
                        }
                    }
                    plan.retract(pick);
                    continue;
                }
                // A store that fails is treated as holding nothing, so
                // requests keep flowing; the failure is logged.
                Err(e) => {
                    tracing::warn!(error = %e, "reading learned state failed; routing without it");
                }
            }
            return step;
        }
    }

    async fn failed(&self, at: &Attempted, failure: Failure) -> AttemptEnd {
        self.failed_with(at, failure, failure.describe()).await
    }

    async fn failed_with(&self, at: &Attempted, failure: Failure, message: &str) -> AttemptEnd {
        match self
            .learn(at, &Outcome::Transport(failure), message)
            .await
            .next
        {
            Next::Stop => AttemptEnd::Done(Reply::error(ErrorKind::Upstream, failure.describe())),
            _ => AttemptEnd::Next(None),
        }
    }

    /// Classifies an outcome and writes what it teaches, before the request
    /// moves on: the block is stored before any answer leaves the gateway.
    async fn learn(&self, at: &Attempted, outcome: &Outcome<'_>, message: &str) -> Learned {
        let cfg = &self.inner.config;
        let verdict = classify(outcome, at.purpose, &cfg.cooldowns);
        let mut learned = Learned {
            next: verdict.next,
            written: None,
            signature: Signature::of(outcome, &verdict),
        };
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
            Learn::Nothing => return learned,
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
                let stands = store.put(&scope, block.clone()).await;
                // A longer block that was there already is not ours to withdraw.
                if let Ok(stood) = &stands
                    && stood.same_verdict(&block)
                {
                    learned.written = Some((scope.clone(), stood.clone()));
                }
                stands.map(|b| Some((scope, b)))
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
        learned
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

/// How often a request that waits for another request's probe looks again.
const PROBE_POLL_MS: i64 = 100;

/// What one request has read of the shared store: the blocks (or their
/// absence) of the scopes it confirmed, which stand over this replica's
/// view; the scopes it found held by another request's probe; and its own
/// probe claim, if it is the probe.
#[derive(Default)]
struct Confirmed {
    blocks: Vec<(usize, Option<Block>)>,
    held: Vec<usize>,
    probe: Option<ProbeGuard>,
}

impl Confirmed {
    fn set(&mut self, scope: usize, block: Option<Block>) {
        self.held.retain(|&i| i != scope);
        match self.blocks.iter_mut().find(|(i, _)| *i == scope) {
            Some(entry) => entry.1 = block,
            None => self.blocks.push((scope, block)),
        }
    }

    /// Another request probes `scope`: out of reach until a short look
    /// later, and its tier waits for the probe.
    fn hold(&mut self, scope: usize, reason: Reason, replica: &str, now_ms: i64) {
        self.set(
            scope,
            Some(Block {
                reason,
                status: 0,
                message: "its block ended and another request is probing it".into(),
                replica: replica.to_string(),
                since_ms: now_ms,
                until_ms: now_ms + PROBE_POLL_MS,
            }),
        );
        self.held.push(scope);
    }
}

/// This request's probe claim: given back when the request is done with it
/// (its answer was learned, or its client left and the future was dropped).
/// A success or a new block has settled the claim already; the release then
/// finds nothing of this request's left to give back.
struct ProbeGuard {
    store: Arc<dyn LearnedStore>,
    claim: Option<crate::state::Claim>,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            self.store.release(claim);
        }
    }
}

/// A route's blocks as one request sees them: what it confirmed, else this
/// replica's own view, looked up one scope at a time.
struct Seen<'a> {
    route: &'a Route,
    store: &'a dyn LearnedStore,
    confirmed: &'a Confirmed,
}

impl crate::routing::select::Blocks for Seen<'_> {
    fn block(&self, scope: usize) -> Option<Block> {
        if let Some((_, b)) = self.confirmed.blocks.iter().find(|(i, _)| *i == scope) {
            return b.clone();
        }
        self.store.peek(self.route.scopes.get(scope)?)
    }

    fn held(&self, scope: usize) -> bool {
        self.confirmed.held.contains(&scope)
    }
}

/// Why each candidate is out, for the client: "openai-main: upstream_error
/// (connection refused), 58 s left; ...". Credential ids and scrubbed
/// upstream messages only: no secret was ever stored in a block.
fn why_blocked(route: &Route, blocks: &dyn crate::routing::select::Blocks, now_ms: i64) -> String {
    let mut parts: Vec<String> = Vec::new();
    let members = route.len();
    for m in route.members().take(CANDIDATES_NAMED) {
        let scopes = std::iter::once(m.credential_scope).chain(m.pair_scopes.iter().copied());
        let worst = scopes
            .filter_map(|i| blocks.block(i))
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
    if members > CANDIDATES_NAMED {
        parts.push(format!("and {} more", members - CANDIDATES_NAMED));
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
