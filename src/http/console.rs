//! The operator console (contract section 10): one page and its script and
//! style, compiled into the binary, and the JSON it reads beyond the admin
//! API: keys with their limits and spend, models with their candidates,
//! replicas, and usage over time. Every list is paged and searched here, so
//! the page stays light with thousands of credentials and keys.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::admin::authorize;
use super::error::render;
use crate::catalog::{ApiKey, SAME_NAME};
use crate::ledger::Counts;
use crate::metrics::Health;
use crate::pipeline::GatewayError;
use crate::source::postgres::usage::{GroupBy, GroupSums};
use crate::state::RedisStore;
use crate::wire::{ErrorKind, Format};

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// How often a replica writes its heartbeat, and how long without one it
/// still counts as up.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const UP_FOR_MS: u64 = 10_000;

/// What every console asset is sent with: nothing from elsewhere runs or
/// loads, no other site frames it, no cache keeps it.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub async fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// A page of a list: `q` searched in names (case-insensitive), `offset`,
/// `limit` (at most 200).
#[derive(Debug, Default, Deserialize)]
pub struct Paging {
    pub q: Option<String>,
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

impl Paging {
    /// Whether this asks for a page (else the whole list, as before paging).
    pub fn paged(&self) -> bool {
        self.q.is_some() || self.offset.is_some() || self.limit.is_some()
    }

    pub fn matches(&self, name: &str) -> bool {
        match self.q.as_deref().map(str::trim) {
            None | Some("") => true,
            Some(q) => name.to_lowercase().contains(&q.to_lowercase()),
        }
    }

    /// The page's slice of `items`, and the total.
    pub fn cut<T>(&self, items: Vec<T>) -> (Vec<T>, usize) {
        let total = items.len();
        let offset = self.offset.unwrap_or(0).min(total);
        let limit = self.limit.unwrap_or(50).clamp(1, 200);
        (items.into_iter().skip(offset).take(limit).collect(), total)
    }
}

/// `GET /admin/keys`: client keys (never their hashes) with their limits
/// and what each spent in its budget period.
pub async fn keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(paging): Query<Paging>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let catalog = state.gateway.catalog().load();
    let mut all: Vec<&std::sync::Arc<ApiKey>> = catalog
        .api_keys()
        .filter(|k| paging.matches(&k.name))
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let (page, total) = paging.cut(all);
    let now = state.gateway.now_ms();
    let spent = match spent_this_period(&state, &page, now).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let names: Vec<&str> = page.iter().map(|k| k.name.as_str()).collect();
    let minute = state.limiter.this_minute(&names).await;
    let keys: Vec<Value> = page
        .iter()
        .zip(minute)
        .map(|(k, (requests, tokens))| {
            let l = &k.limits;
            let (start, end) = crate::limits::period_bounds(l.budget_period, now);
            let pico = spent.get(&k.name).copied().unwrap_or(0);
            json!({
                "name": k.name,
                "enabled": k.enabled,
                "expires_at": k.expires_at.map(|t| t.to_rfc3339()),
                "rpm_limit": l.rpm,
                "tpm_limit": l.tpm,
                "budget_usd": l.budget_micro_usd.map(|m| m as f64 / 1e6),
                "budget_period": l.budget_period.as_str(),
                "period_start_ms": start,
                "period_end_ms": end,
                "spent_usd": pico as f64 / 1e12,
                "requests_this_minute": requests,
                "tokens_this_minute": tokens,
                "models": l.models,
            })
        })
        .collect();
    Json(json!({"total": total, "offset": paging.offset.unwrap_or(0), "keys": keys}))
        .into_response()
}

/// What each key spent since its own budget period began (pico-dollars):
/// `usage` and the ledger's unwritten rows in cluster mode, the ledger in
/// embedded mode.
async fn spent_this_period(
    state: &AppState,
    keys: &[&std::sync::Arc<ApiKey>],
    now: i64,
) -> Result<HashMap<String, u64>, Response> {
    let mut by_start: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for k in keys {
        let (start, _) = crate::limits::period_bounds(k.limits.budget_period, now);
        by_start.entry(start).or_default().push(k.name.clone());
    }
    let mut spent = HashMap::new();
    for (start, names) in by_start {
        if let Some(pg) = state.ledger.postgres() {
            let written = pg
                .spent_by(&names, start)
                .await
                .map_err(|_| postgres_away())?;
            spent.extend(written);
        }
        for name in names {
            *spent.entry(name.clone()).or_insert(0) += state.ledger.cost_since(&name, start);
        }
    }
    Ok(spent)
}

fn postgres_away() -> Response {
    render(
        Format::OpenAi,
        &GatewayError::new(
            ErrorKind::Unavailable,
            "usage unavailable: Postgres does not answer",
        ),
    )
}

/// `GET /admin/models`: each model name (and pattern) with the candidates
/// that serve it, in the order of their priority.
pub async fn models(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(paging): Query<Paging>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let catalog = state.gateway.catalog().load();
    let mut by_model: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for m in &catalog.credential_models {
        if !paging.matches(&m.model) {
            continue;
        }
        let Some(c) = catalog.credentials.get(&m.credential_id) else {
            continue;
        };
        let upstream = if m.upstream_model == SAME_NAME {
            "(the requested name)"
        } else {
            m.upstream_model.as_str()
        };
        by_model.entry(&m.model).or_default().push(json!({
            "credential_id": c.id,
            "provider": c.provider.as_str(),
            "upstream_model": upstream,
            "priority": c.priority,
            "weight": c.weight,
            "enabled": c.enabled,
        }));
    }
    let mut all: Vec<(&str, Vec<Value>)> = by_model.into_iter().collect();
    for (_, candidates) in &mut all {
        candidates.sort_by_key(|c| c["priority"].as_i64().unwrap_or(0));
    }
    let (page, total) = paging.cut(all);
    let models: Vec<Value> = page
        .into_iter()
        .map(|(model, candidates)| {
            json!({"model": model, "pattern": model.contains('*'), "candidates": candidates})
        })
        .collect();
    Json(json!({"total": total, "offset": paging.offset.unwrap_or(0), "models": models}))
        .into_response()
}

fn health(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Down => "down",
        Health::NotConfigured => "not configured",
    }
}

/// This replica as the console shows it.
fn status(state: &AppState) -> Value {
    let config = state.gateway.config();
    let metrics = state.gateway.metrics();
    let view = state.gateway.store().view();
    let degraded = !matches!(
        view,
        crate::state::View::Memory | crate::state::View::Shared { unsynced: 0 }
    ) || metrics.postgres() == Health::Down;
    json!({
        "id": config.replica_id,
        "version": env!("CARGO_PKG_VERSION"),
        "mode": if config.is_cluster() { "cluster" } else { "embedded" },
        "redis": health(metrics.redis()),
        "postgres": health(metrics.postgres()),
        "view": view.as_str(),
        "unsynced": view.unsynced(),
        "degraded": degraded,
        "draining": state.is_draining(),
        "started_ms": state.started_ms,
    })
}

/// Writes this replica's heartbeat into Redis every [`HEARTBEAT_EVERY`]
/// until `stop`, for the console's list of replicas.
pub async fn heartbeat(state: AppState, shared: RedisStore, stop: CancellationToken) {
    let id = state.gateway.config().replica_id.clone();
    loop {
        let _ = shared
            .heartbeat(&id, &status(&state).to_string(), UP_FOR_MS)
            .await;
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// `GET /admin/replicas`: every replica whose heartbeat is recent, this one
/// among them; only this one when there is no Redis or it does not answer.
pub async fn replicas(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let me = status(&state);
    let listed = match &state.shared {
        Some(shared) => shared.replicas(UP_FOR_MS).await,
        None => None,
    };
    let note = match (&state.shared, &listed) {
        (None, _) => "no Redis: this replica is the only one there is",
        (Some(_), None) => "Redis does not answer: only this replica is known",
        (Some(_), Some(_)) => "replicas with a heartbeat in Redis in the last 10 s",
    };
    let mut all: Vec<Value> = listed
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(text, ago)| {
            let mut v: Value = serde_json::from_str(&text).ok()?;
            v["seen_ms_ago"] = json!(ago);
            Some(v)
        })
        .filter(|v| v["id"] != me["id"])
        .collect();
    let mut me = me;
    me["seen_ms_ago"] = json!(0);
    me["this"] = json!(true);
    all.push(me);
    all.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({"note": note, "replicas": all})).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SeriesQuery {
    range: Option<String>,
    by: Option<String>,
}

/// How many groups a chart names; the rest are summed as "other".
const TOP: usize = 6;

/// `GET /admin/usage/series?range=1h|24h|30d&by=key|model|credential`:
/// usage per time bucket (minutes, half hours or days), in total and for
/// the busiest groups.
pub async fn series(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SeriesQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let range = q.range.as_deref().unwrap_or("24h");
    let (span_s, step_s): (i64, i64) = match range {
        "1h" => (3_600, 60),
        "24h" => (86_400, 1_800),
        "30d" => (30 * 86_400, 86_400),
        other => {
            return render(
                Format::OpenAi,
                &GatewayError::new(
                    ErrorKind::BadRequest,
                    format!("`range` must be 1h, 24h or 30d, not {other:?}"),
                ),
            );
        }
    };
    let by_text = q.by.as_deref().unwrap_or("key");
    let Some(by) = GroupBy::parse(by_text) else {
        return render(
            Format::OpenAi,
            &GatewayError::new(
                ErrorKind::BadRequest,
                format!("`by` must be key, model or credential, not {by_text:?}"),
            ),
        );
    };
    let now_ms = state.gateway.now_ms();
    let step_ms = step_s * 1000;
    // Buckets aligned to the step; the last one holds now.
    let last = now_ms - now_ms.rem_euclid(step_ms);
    let first = last - (span_s / step_s - 1) * step_ms;
    let from = DateTime::<Utc>::from_timestamp_millis(first).unwrap_or_default();
    let to = DateTime::<Utc>::from_timestamp_millis(last + step_ms).unwrap_or_default();
    let rows = match state.ledger.postgres() {
        Some(pg) => match pg.usage_series(from, to, step_s, by).await {
            Ok(mut rows) => {
                // Not written yet, but counted: this replica's pending rows.
                rows.extend(memory_series(&state, first, last + step_ms, step_ms, by));
                rows
            }
            Err(_) => return postgres_away(),
        },
        None => memory_series(&state, first, last + step_ms, step_ms, by),
    };
    Json(chart(
        rows,
        first,
        step_ms,
        (span_s / step_s) as usize,
        range,
        by_text,
    ))
    .into_response()
}

fn memory_series(
    state: &AppState,
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
    by: GroupBy,
) -> Vec<(i64, GroupSums)> {
    let mut sums: BTreeMap<(i64, String), Counts> = BTreeMap::new();
    for (row, counts) in state.ledger.in_memory() {
        if row.minute_ms >= from_ms && row.minute_ms < to_ms {
            let t = row.minute_ms - row.minute_ms.rem_euclid(step_ms);
            sums.entry((t, by.of(&row).to_string()))
                .or_default()
                .add(&counts);
        }
    }
    sums.into_iter()
        .map(|((t, group), counts)| {
            (
                t,
                GroupSums {
                    group,
                    cost_usd: counts.cost_usd(),
                    counts,
                },
            )
        })
        .collect()
}

/// One group's sums, its cost, and its requests per bucket.
type Line = (Counts, f64, Vec<u64>);

/// The chart's data: totals per bucket, and the busiest groups' requests
/// per bucket with their sums.
fn chart(
    rows: Vec<(i64, GroupSums)>,
    first: i64,
    step_ms: i64,
    n: usize,
    range: &str,
    by: &str,
) -> Value {
    let index = |t: i64| {
        usize::try_from((t - first) / step_ms)
            .ok()
            .filter(|i| *i < n)
    };
    let mut totals = vec![(Counts::default(), 0.0f64); n];
    let mut groups: BTreeMap<String, Line> = BTreeMap::new();
    for (t, g) in rows {
        let Some(i) = index(t) else { continue };
        totals[i].0.add(&g.counts);
        totals[i].1 += g.cost_usd;
        let e = groups
            .entry(g.group)
            .or_insert_with(|| (Counts::default(), 0.0, vec![0; n]));
        e.0.add(&g.counts);
        e.1 += g.cost_usd;
        e.2[i] += g.counts.requests;
    }
    let mut ranked: Vec<(String, Line)> = groups.into_iter().collect();
    ranked.sort_by(|a, b| b.1.0.requests.cmp(&a.1.0.requests).then(a.0.cmp(&b.0)));
    let mut top: Vec<Value> = Vec::new();
    let mut other = (Counts::default(), 0.0, vec![0u64; n]);
    for (i, (group, (c, cost, points))) in ranked.into_iter().enumerate() {
        if i < TOP {
            top.push(group_json(&group, &c, cost, &points));
        } else {
            other.0.add(&c);
            other.1 += cost;
            for (o, p) in other.2.iter_mut().zip(points) {
                *o += p;
            }
        }
    }
    if other.0.requests > 0 || other.0.errors > 0 {
        top.push(group_json("(other)", &other.0, other.1, &other.2));
    }
    let buckets: Vec<Value> = totals
        .iter()
        .enumerate()
        .map(|(i, (c, cost))| {
            json!({
                "t": first + i as i64 * step_ms,
                "requests": c.requests,
                "errors": c.errors,
                "tokens": c.input_tokens + c.output_tokens,
                "cost_usd": cost,
            })
        })
        .collect();
    json!({"range": range, "by": by, "step_ms": step_ms, "buckets": buckets, "groups": top})
}

fn group_json(group: &str, c: &Counts, cost: f64, points: &[u64]) -> Value {
    json!({
        "group": group,
        "requests": c.requests,
        "errors": c.errors,
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "cached_tokens": c.cached_tokens,
        "cost_usd": cost,
        "points": points,
    })
}
