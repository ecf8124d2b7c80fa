//! `GET /admin/usage?from=&to=&by=key|model|credential`: requests, errors,
//! tokens and cost per group over a time range (RFC 3339; the last 24 h by
//! default), from the `usage` table in cluster mode and from the ledger's
//! memory in embedded mode.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::admin::authorize;
use super::error::render;
use crate::ledger::Counts;
use crate::pipeline::GatewayError;
use crate::source::postgres::usage::{GroupBy, GroupSums};
use crate::wire::{ErrorKind, Format};

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    by: Option<String>,
}

fn bad(message: String) -> Response {
    render(
        Format::OpenAi,
        &GatewayError::new(ErrorKind::BadRequest, message),
    )
}

fn time(name: &str, text: Option<&str>, default: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    match text {
        None => Ok(default),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| format!("`{name}` must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z")),
    }
}

pub async fn usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<UsageQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let now = Utc::now();
    let to = match time("to", q.to.as_deref(), now) {
        Ok(t) => t,
        Err(message) => return bad(message),
    };
    let from = match time("from", q.from.as_deref(), to - Duration::hours(24)) {
        Ok(t) => t,
        Err(message) => return bad(message),
    };
    let by_text = q.by.as_deref().unwrap_or("key");
    let Some(by) = GroupBy::parse(by_text) else {
        return bad(format!(
            "`by` must be key, model or credential, not {by_text:?}"
        ));
    };
    let groups = match state.ledger.postgres() {
        Some(pg) => match pg.usage_groups(from, to, by).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "usage not readable");
                return render(
                    Format::OpenAi,
                    &GatewayError::new(
                        ErrorKind::Unavailable,
                        "usage unavailable: Postgres does not answer",
                    ),
                );
            }
        },
        None => from_memory(&state, from, to, by),
    };
    let groups: Vec<Value> = groups.iter().map(group_json).collect();
    Json(json!({
        "from": from.to_rfc3339(),
        "to": to.to_rfc3339(),
        "by": by_text,
        "groups": groups,
    }))
    .into_response()
}

/// Embedded mode: the ledger keeps every row in memory.
fn from_memory(
    state: &AppState,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    by: GroupBy,
) -> Vec<GroupSums> {
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    let mut sums: BTreeMap<String, Counts> = BTreeMap::new();
    for (row, counts) in state.ledger.in_memory() {
        if row.minute_ms >= from_ms && row.minute_ms < to_ms {
            sums.entry(by.of(&row).to_string())
                .or_default()
                .add(&counts);
        }
    }
    sums.into_iter()
        .map(|(group, counts)| GroupSums {
            group,
            cost_usd: counts.cost_usd(),
            counts,
        })
        .collect()
}

fn group_json(g: &GroupSums) -> Value {
    let c = &g.counts;
    json!({
        "group": g.group,
        "requests": c.requests,
        "errors": c.errors,
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "cached_tokens": c.cached_tokens,
        "cache_write_tokens": c.cache_write_tokens,
        "reasoning_tokens": c.reasoning_tokens,
        "cost_usd": g.cost_usd,
    })
}
