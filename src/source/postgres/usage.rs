//! The `usage` table: batches of the ledger added with one additive upsert,
//! each row's cost priced from `model_prices` in the same statement, and
//! the admin API's sums per group.

use chrono::{DateTime, Utc};
use sqlx::Row as _;

use super::Postgres;
use crate::ledger::{Counts, Row};

/// Adds each row's counts to what `usage` holds (replicas writing the same
/// row add up). The cost comes priced by the replica (`catalog::prices`),
/// in pico-dollars, so the ledger and the budget counters agree.
const ADD: &str = "
insert into usage (minute, api_key, credential_id, model, upstream_model, requests, errors,
                   input_tokens, output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost_usd)
select to_timestamp(t.m / 1000.0), t.k, t.c, t.md, t.u, t.r, t.e, t.i, t.o, t.ca, t.cw, t.rs,
       t.cost / 1000000000000.0
from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
            $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[])
     as t(m, k, c, md, u, r, e, i, o, ca, cw, rs, cost)
on conflict (minute, api_key, credential_id, model, upstream_model) do update set
    requests = usage.requests + excluded.requests,
    errors = usage.errors + excluded.errors,
    input_tokens = usage.input_tokens + excluded.input_tokens,
    output_tokens = usage.output_tokens + excluded.output_tokens,
    cached_tokens = usage.cached_tokens + excluded.cached_tokens,
    cache_write_tokens = usage.cache_write_tokens + excluded.cache_write_tokens,
    reasoning_tokens = usage.reasoning_tokens + excluded.reasoning_tokens,
    cost_usd = usage.cost_usd + excluded.cost_usd";

/// What the admin API groups usage by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Model,
    Credential,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "key" => Some(GroupBy::Key),
            "model" => Some(GroupBy::Model),
            "credential" => Some(GroupBy::Credential),
            _ => None,
        }
    }

    /// The group of one row.
    pub fn of(self, row: &Row) -> &str {
        match self {
            GroupBy::Key => &row.api_key,
            GroupBy::Model => &row.model,
            GroupBy::Credential => &row.credential_id,
        }
    }

    /// The query of this grouping: the column comes from this fixed list,
    /// never from the request.
    fn query(self) -> &'static str {
        match self {
            GroupBy::Key => concat!("select api_key as g", sums!()),
            GroupBy::Model => concat!("select model as g", sums!()),
            GroupBy::Credential => concat!("select credential_id as g", sums!()),
        }
    }

    /// The query of this grouping per time bucket of $3 seconds.
    fn series_query(self) -> &'static str {
        match self {
            GroupBy::Key => concat!(bucket!(), "api_key as g", series_sums!()),
            GroupBy::Model => concat!(bucket!(), "model as g", series_sums!()),
            GroupBy::Credential => concat!(bucket!(), "credential_id as g", series_sums!()),
        }
    }
}

macro_rules! bucket {
    () => {
        "select (floor(extract(epoch from minute) / $3) * $3 * 1000)::bigint as t, "
    };
}
use bucket;

macro_rules! series_sums {
    () => {
        concat!(
            columns!(),
            " from usage where minute >= $1 and minute < $2 group by 1, 2 order by 1, 2"
        )
    };
}
use series_sums;

/// The sums every grouping reads, by the names `group_sums` reads them.
macro_rules! columns {
    () => {
        ", sum(requests)::bigint as requests, sum(errors)::bigint as errors, \
         sum(input_tokens)::bigint as input_tokens, sum(output_tokens)::bigint as output_tokens, \
         sum(cached_tokens)::bigint as cached_tokens, sum(cache_write_tokens)::bigint as cache_write_tokens, \
         sum(reasoning_tokens)::bigint as reasoning_tokens, sum(cost_usd)::float8 as cost_usd"
    };
}
use columns;

macro_rules! sums {
    () => {
        concat!(
            columns!(),
            " from usage where minute >= $1 and minute < $2 group by 1 order by 1"
        )
    };
}
use sums;

/// One group's sums.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupSums {
    pub group: String,
    pub counts: Counts,
    pub cost_usd: f64,
}

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Postgres {
    /// Adds a batch of the ledger to `usage` in one statement.
    pub async fn add_usage(&self, rows: &[(Row, Counts)]) -> Result<(), sqlx::Error> {
        let col = |f: fn(&(Row, Counts)) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let text = |f: fn(&(Row, Counts)) -> &str| {
            rows.iter()
                .map(|r| f(r).to_string())
                .collect::<Vec<String>>()
        };
        sqlx::query(ADD)
            .bind(col(|r| r.0.minute_ms))
            .bind(text(|r| &r.0.api_key))
            .bind(text(|r| &r.0.credential_id))
            .bind(text(|r| &r.0.model))
            .bind(text(|r| &r.0.upstream_model))
            .bind(col(|r| big(r.1.requests)))
            .bind(col(|r| big(r.1.errors)))
            .bind(col(|r| big(r.1.input_tokens)))
            .bind(col(|r| big(r.1.output_tokens)))
            .bind(col(|r| big(r.1.cached_tokens)))
            .bind(col(|r| big(r.1.cache_write_tokens)))
            .bind(col(|r| big(r.1.reasoning_tokens)))
            .bind(col(|r| big(r.1.cost_pico)))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// What `api_key` spent from `since_ms` on, in pico-dollars.
    pub async fn spent_since(&self, api_key: &str, since_ms: i64) -> Result<u64, sqlx::Error> {
        let pico: i64 = sqlx::query_scalar(
            "select (coalesce(sum(cost_usd), 0) * 1000000000000)::bigint from usage \
             where api_key = $1 and minute >= to_timestamp($2 / 1000.0)",
        )
        .bind(api_key)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(pico).unwrap_or(0))
    }

    /// The sums of `usage` per group over [from, to).
    pub async fn usage_groups(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        by: GroupBy,
    ) -> Result<Vec<GroupSums>, sqlx::Error> {
        let rows = sqlx::query(by.query())
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(group_sums).collect()
    }

    /// The sums of `usage` per bucket of `step_s` seconds (its start, in
    /// epoch ms) and group over [from, to).
    pub async fn usage_series(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        step_s: i64,
        by: GroupBy,
    ) -> Result<Vec<(i64, GroupSums)>, sqlx::Error> {
        let rows = sqlx::query(by.series_query())
            .bind(from)
            .bind(to)
            .bind(step_s as f64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<i64, _>("t")?, group_sums(row)?)))
            .collect()
    }

    /// What each of `keys` spent from `since_ms` on, in pico-dollars (keys
    /// that spent nothing are left out).
    pub async fn spent_by(
        &self,
        keys: &[String],
        since_ms: i64,
    ) -> Result<Vec<(String, u64)>, sqlx::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "select api_key, (coalesce(sum(cost_usd), 0) * 1000000000000)::bigint from usage \
             where api_key = any($1) and minute >= to_timestamp($2 / 1000.0) group by 1",
        )
        .bind(keys)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(k, pico)| (k, u64::try_from(pico).unwrap_or(0)))
            .collect())
    }
}

fn group_sums(row: &sqlx::postgres::PgRow) -> Result<GroupSums, sqlx::Error> {
    let n = |name: &str| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
    };
    Ok(GroupSums {
        group: row.try_get("g")?,
        counts: Counts {
            requests: n("requests")?,
            errors: n("errors")?,
            input_tokens: n("input_tokens")?,
            output_tokens: n("output_tokens")?,
            cached_tokens: n("cached_tokens")?,
            cache_write_tokens: n("cache_write_tokens")?,
            reasoning_tokens: n("reasoning_tokens")?,
            cost_pico: 0,
        },
        cost_usd: row.try_get("cost_usd")?,
    })
}
