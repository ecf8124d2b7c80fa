//! A key's counted limits (contract section 9): requests and tokens per UTC
//! minute, and spend per budget period (a UTC day or month).
//!
//! In cluster mode the counts are shared in Redis: one script call admits a
//! request and adds what the key's earlier requests on this replica used;
//! what no later request carried is added every [`SPEND_EVERY`] by one call
//! for all keys. A missing budget counter is seeded from `usage` (and what
//! the ledger has not written yet). The replica's own counts are what
//! embedded mode enforces, and what a replica falls back to when Redis does
//! not answer (counted on `/metrics`), starting from the shared counts it
//! last saw. Keys without a counted limit reach none of this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use tokio_util::sync::CancellationToken;

use crate::catalog::{ApiKey, BudgetPeriod, KeyLimits};
use crate::clock::SharedClock;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::state::{Ask, Counted, RedisStore, Spend};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// How often spend no later request carried is added to the shared counters.
pub const SPEND_EVERY: Duration = Duration::from_millis(200);

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Tokens,
    Budget,
}

/// A limit's window as the `x-ratelimit-*` headers say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    /// Left in the window (after this request, for requests).
    pub remaining: u64,
}

/// The verdict on one request, and what its headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub refused: Option<Limit>,
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
    /// The budget in micro-dollars, and what is spent of it.
    pub budget: Option<(i64, i64)>,
    /// Milliseconds until the minute's windows end.
    pub reset_ms: i64,
    /// Milliseconds until the budget period ends.
    pub budget_reset_ms: i64,
}

impl Admission {
    pub fn admitted(&self) -> bool {
        self.refused.is_none()
    }

    /// `Retry-After`: the seconds until the refusing limit's window ends,
    /// rounded up.
    pub fn retry_after_s(&self) -> u64 {
        let ms = match self.refused {
            Some(Limit::Budget) => self.budget_reset_ms,
            _ => self.reset_ms,
        };
        seconds(ms)
    }

    /// The seconds until the minute's windows end, rounded up.
    pub fn reset_s(&self) -> u64 {
        seconds(self.reset_ms)
    }
}

fn seconds(ms: i64) -> u64 {
    u64::try_from(ms.max(0)).unwrap_or(0).div_ceil(1000)
}

/// The budget period holding `now_ms`: its start and end, in epoch ms.
pub fn period_bounds(period: BudgetPeriod, now_ms: i64) -> (i64, i64) {
    let day_start = now_ms - now_ms.rem_euclid(DAY_MS);
    match period {
        BudgetPeriod::Day => (day_start, day_start + DAY_MS),
        BudgetPeriod::Month => {
            let date = DateTime::<Utc>::from_timestamp_millis(now_ms)
                .unwrap_or_default()
                .date_naive();
            let first = NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap_or(date);
            let next = first
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(first);
            let ms = |d: NaiveDate| {
                d.and_hms_opt(0, 0, 0)
                    .map_or(0, |t| t.and_utc().timestamp_millis())
            };
            (ms(first), ms(next))
        }
    }
}

/// This replica's own counts of one key.
#[derive(Debug, Clone, Copy, Default)]
struct Local {
    minute: i64,
    requests: u64,
    tokens: u64,
    period_start: i64,
    spent_nano: i64,
}

impl Local {
    /// Moves the windows on to `minute` and the period starting at `period_start`.
    fn at(&mut self, minute: i64, period_start: i64) {
        if self.minute != minute {
            *self = Local {
                minute,
                period_start: self.period_start,
                spent_nano: self.spent_nano,
                ..Local::default()
            };
        }
        if self.period_start != period_start {
            self.period_start = period_start;
            self.spent_nano = 0;
        }
    }
}

/// Spend not yet in the shared counters.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    tokens: u64,
    nano: i64,
    period_start: i64,
}

pub struct Limiter {
    clock: SharedClock,
    /// The shared counters, in cluster mode.
    shared: Option<RedisStore>,
    /// Where a missing budget counter is seeded from.
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// Key name -> its own counts: one entry per counted key in use.
    local: Mutex<HashMap<String, Local>>,
    /// Key name -> spend the shared counters have not taken yet.
    pending: Mutex<HashMap<String, Pending>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the counts are still counts.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Limiter {
    pub fn new(
        clock: SharedClock,
        shared: Option<RedisStore>,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            clock,
            shared,
            ledger,
            metrics,
            local: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `key` against its limits, or refuses it.
    /// `None` when the key has no counted limit.
    pub async fn admit(&self, key: &ApiKey) -> Option<Admission> {
        let limits = &key.limits;
        if !limits.counted() {
            return None;
        }
        let now = self.clock.now_ms();
        let (start, end) = period_bounds(limits.budget_period, now);
        let admission = match &self.shared {
            Some(shared) => match self.admit_shared(shared, key, now, (start, end)).await {
                Some(a) => a,
                None => {
                    self.metrics.limit_counted_locally();
                    self.admit_locally(key, now, (start, end))
                }
            },
            None => self.admit_locally(key, now, (start, end)),
        };
        self.metrics.key_admission(&key.name, admission.refused);
        Some(admission)
    }

    async fn admit_shared(
        &self,
        shared: &RedisStore,
        key: &ApiKey,
        now: i64,
        (start, end): (i64, i64),
    ) -> Option<Admission> {
        let limits = &key.limits;
        let pending = lock(&self.pending).remove(&key.name).unwrap_or_default();
        // Spend of an earlier period belongs to no counter this request asks.
        let carried = if pending.period_start == start {
            pending
        } else {
            Pending { nano: 0, ..pending }
        };
        let mut ask = Ask {
            rpm: limits.rpm,
            tpm: limits.tpm,
            budget_nano: limits.budget_micro_usd.map(|m| m.saturating_mul(1000)),
            add_tokens: carried.tokens,
            add_nano: carried.nano,
            budget_ttl_ms: end - now + DAY_MS,
            seed_nano: None,
        };
        let mut counted = shared.admit(&key.name, start, &ask).await;
        if counted == Some(Counted::Unseeded) {
            ask.seed_nano = self.seed(&key.name, start).await;
            if ask.seed_nano.is_some() {
                counted = shared.admit(&key.name, start, &ask).await;
            }
        }
        let Some(Counted::Answer {
            refused_by,
            requests,
            tokens,
            spent_nano,
            reset_ms,
            ..
        }) = counted
        else {
            // Not taken: kept for the next call.
            self.add_pending(&key.name, pending);
            return None;
        };
        let refused = match refused_by {
            1 => Some(Limit::Requests),
            2 => Some(Limit::Tokens),
            3 => Some(Limit::Budget),
            _ => None,
        };
        // The local counts start from the shared ones, should Redis go.
        let minute = now.div_euclid(MINUTE_MS);
        {
            let mut local = lock(&self.local);
            let entry = entry(&mut local, &key.name);
            entry.at(minute, start);
            entry.requests = requests;
            entry.tokens = tokens;
            entry.spent_nano = spent_nano;
        }
        Some(admission(
            limits,
            refused,
            (requests, tokens, spent_nano),
            reset_ms,
            end - now,
        ))
    }

    /// The replica's own counts of `key`.
    fn admit_locally(&self, key: &ApiKey, now: i64, (start, end): (i64, i64)) -> Admission {
        let limits = &key.limits;
        let minute = now.div_euclid(MINUTE_MS);
        let reset_ms = (minute + 1) * MINUTE_MS - now;
        let mut local = lock(&self.local);
        let e = entry(&mut local, &key.name);
        e.at(minute, start);
        let budget_nano = limits.budget_micro_usd.map(|m| m.saturating_mul(1000));
        let refused = if limits.rpm.is_some_and(|l| e.requests >= l) {
            Some(Limit::Requests)
        } else if limits.tpm.is_some_and(|l| e.tokens >= l) {
            Some(Limit::Tokens)
        } else if budget_nano.is_some_and(|b| e.spent_nano >= b) {
            Some(Limit::Budget)
        } else {
            None
        };
        if refused.is_none() && limits.rpm.is_some() {
            e.requests += 1;
        }
        admission(
            limits,
            refused,
            (e.requests, e.tokens, e.spent_nano),
            reset_ms,
            end - now,
        )
    }

    /// What a missing budget counter starts from: the key's spend this
    /// period in `usage`, and what the ledger holds unwritten. `None` when
    /// Postgres does not answer.
    async fn seed(&self, name: &str, period_start: i64) -> Option<i64> {
        let unwritten = self.ledger.cost_since(name, period_start);
        let written = match self.ledger.postgres() {
            Some(pg) => match pg.spent_since(name, period_start).await {
                Ok(pico) => pico,
                Err(e) => {
                    tracing::warn!(error = %e, "a key's budget cannot be seeded: Postgres does not answer");
                    return None;
                }
            },
            None => 0,
        };
        Some(i64::try_from((written + unwritten) / 1000).unwrap_or(i64::MAX))
    }

    /// Counts what a request of `key` used, once its answer is complete.
    pub fn spent(&self, key: &KeyLimits, name: &str, tokens: u64, cost_pico: u64) {
        let tokens = if key.tpm.is_some() { tokens } else { 0 };
        let nano = if key.budget_micro_usd.is_some() {
            i64::try_from(cost_pico / 1000).unwrap_or(i64::MAX)
        } else {
            0
        };
        if tokens == 0 && nano == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let (start, _) = period_bounds(key.budget_period, now);
        self.metrics.key_spent(name, tokens, cost_pico);
        {
            let mut local = lock(&self.local);
            let e = entry(&mut local, name);
            e.at(now.div_euclid(MINUTE_MS), start);
            e.tokens += tokens;
            e.spent_nano = e.spent_nano.saturating_add(nano);
        }
        if self.shared.is_some() {
            self.add_pending(
                name,
                Pending {
                    tokens,
                    nano,
                    period_start: start,
                },
            );
        }
    }

    fn add_pending(&self, name: &str, p: Pending) {
        if p.tokens == 0 && p.nano == 0 {
            return;
        }
        let mut pending = lock(&self.pending);
        let e = match pending.get_mut(name) {
            Some(e) => e,
            None => pending.entry(name.to_string()).or_default(),
        };
        if e.period_start != p.period_start {
            // A new period: the old one's spend is in the ledger already.
            *e = Pending {
                period_start: p.period_start,
                ..Pending::default()
            };
        }
        e.tokens += p.tokens;
        e.nano = e.nano.saturating_add(p.nano);
    }

    /// Adds the spend no request carried to the shared counters, every
    /// [`SPEND_EVERY`] until `stop`, and once more after it.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        loop {
            tokio::select! {
                () = tokio::time::sleep(SPEND_EVERY) => {}
                () = stop.cancelled() => break,
            }
            self.flush(&shared).await;
        }
        self.flush(&shared).await;
    }

    async fn flush(&self, shared: &RedisStore) {
        let taken: Vec<(String, Pending)> = lock(&self.pending).drain().collect();
        if taken.is_empty() {
            return;
        }
        let spends: Vec<Spend> = taken
            .iter()
            .map(|(name, p)| Spend {
                name: name.clone(),
                budget_period_ms: p.period_start,
                tokens: p.tokens,
                nano: p.nano,
            })
            .collect();
        if !shared.spend(&spends).await {
            for (name, p) in taken {
                self.add_pending(&name, p);
            }
        }
    }
}

fn entry<'a>(map: &'a mut HashMap<String, Local>, name: &str) -> &'a mut Local {
    if !map.contains_key(name) {
        map.insert(name.to_string(), Local::default());
    }
    map.get_mut(name)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

fn admission(
    limits: &KeyLimits,
    refused: Option<Limit>,
    (requests, tokens, spent_nano): (u64, u64, i64),
    reset_ms: i64,
    budget_reset_ms: i64,
) -> Admission {
    Admission {
        refused,
        requests: limits.rpm.map(|limit| Window {
            limit,
            remaining: limit.saturating_sub(requests),
        }),
        tokens: limits.tpm.map(|limit| Window {
            limit,
            remaining: limit.saturating_sub(tokens),
        }),
        budget: limits.budget_micro_usd.map(|b| (b, spent_nano / 1000)),
        reset_ms,
        budget_reset_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn key(limits: KeyLimits) -> ApiKey {
        ApiKey {
            name: "k".into(),
            key_hash: String::new(),
            enabled: true,
            expires_at: None,
            limits,
        }
    }

    fn limiter(clock: SharedClock) -> Limiter {
        Limiter::new(
            clock.clone(),
            None,
            Ledger::new(clock, None),
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn the_request_over_the_limit_is_refused_until_the_next_minute() {
        let clock = ManualClock::at(10 * MINUTE_MS + 15_000);
        let limiter = limiter(clock.clone());
        let k = key(KeyLimits {
            rpm: Some(2),
            ..Default::default()
        });
        let first = limiter.admit(&k).await.expect("limited");
        assert!(first.admitted());
        assert_eq!(first.requests.map(|w| w.remaining), Some(1));
        assert!(limiter.admit(&k).await.expect("limited").admitted());
        let third = limiter.admit(&k).await.expect("limited");
        assert_eq!(third.refused, Some(Limit::Requests));
        assert_eq!(third.retry_after_s(), 45);
        clock.advance_ms(45_000);
        assert!(limiter.admit(&k).await.expect("limited").admitted());
    }

    #[tokio::test]
    async fn tokens_count_once_reported_and_the_request_that_crosses_is_answered() {
        let clock = ManualClock::at(10 * MINUTE_MS);
        let limiter = limiter(clock.clone());
        let limits = KeyLimits {
            tpm: Some(100),
            ..Default::default()
        };
        let k = key(limits.clone());
        assert!(limiter.admit(&k).await.expect("limited").admitted());
        limiter.spent(&limits, "k", 60, 0);
        // 60 of 100: admitted, and it crosses the limit.
        assert!(limiter.admit(&k).await.expect("limited").admitted());
        limiter.spent(&limits, "k", 60, 0);
        let refused = limiter.admit(&k).await.expect("limited");
        assert_eq!(refused.refused, Some(Limit::Tokens));
        assert_eq!(refused.tokens.map(|w| w.remaining), Some(0));
        clock.advance_ms(MINUTE_MS);
        assert!(limiter.admit(&k).await.expect("limited").admitted());
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_until_the_next_period() {
        // 2026-12-31 23:00 UTC.
        let at = DateTime::parse_from_rfc3339("2026-12-31T23:00:00Z")
            .expect("time")
            .timestamp_millis();
        let clock = ManualClock::at(at);
        let limiter = limiter(clock.clone());
        let limits = KeyLimits {
            budget_micro_usd: Some(1_000_000),
            ..Default::default()
        };
        let k = key(limits.clone());
        assert!(limiter.admit(&k).await.expect("limited").admitted());
        // $1.20 in pico-dollars.
        limiter.spent(&limits, "k", 10, 1_200_000_000_000);
        let refused = limiter.admit(&k).await.expect("limited");
        assert_eq!(refused.refused, Some(Limit::Budget));
        assert_eq!(refused.retry_after_s(), 3600, "the month ends in an hour");
        clock.advance_ms(3_600_000);
        assert!(limiter.admit(&k).await.expect("limited").admitted());
    }

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("time")
                .timestamp_millis()
        };
        let now = t("2026-02-14T12:30:00Z");
        assert_eq!(
            period_bounds(BudgetPeriod::Day, now),
            (t("2026-02-14T00:00:00Z"), t("2026-02-15T00:00:00Z"))
        );
        assert_eq!(
            period_bounds(BudgetPeriod::Month, now),
            (t("2026-02-01T00:00:00Z"), t("2026-03-01T00:00:00Z"))
        );
    }

    #[tokio::test]
    async fn keys_without_a_limit_are_not_counted() {
        let limiter = limiter(Arc::new(crate::clock::SystemClock));
        assert_eq!(limiter.admit(&key(KeyLimits::default())).await, None);
        assert!(lock(&limiter.local).is_empty());
    }
}
