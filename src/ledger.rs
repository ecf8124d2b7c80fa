//! The ledger: what each key used, per UTC minute, credential and model
//! (contract section 9's `usage` rows), aggregated in memory on the request
//! path and added to Postgres off it.
//!
//! A request only adds to one entry of an in-memory map; a background task
//! takes the whole map every [`FLUSH_EVERY`] and at drain, and adds it to
//! `usage` with additive upserts, so replicas writing the same row add up.
//! While Postgres does not take a batch, the batch is merged back and kept
//! (bounded by [`MAX_ROWS`]: past it the oldest minutes are folded into one
//! row per key and model, so counts are never dropped, only coarsened). In
//! embedded mode the totals stay in memory and the admin API reads them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::source::postgres::Postgres;

/// How often the pending counts are written: the contract's "at least every 5 s".
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How many times the last flush at exit is tried.
const FINAL_TRIES: usize = 10;
/// Rows kept while Postgres is away before the oldest minutes are folded.
pub const MAX_ROWS: usize = 100_000;

/// One `usage` row's key. `credential_id` is empty when no upstream answered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    /// The minute's start, in epoch milliseconds.
    pub minute_ms: i64,
    pub api_key: String,
    pub credential_id: String,
    pub model: String,
    pub upstream_model: String,
}

/// A row's key, borrowed or owned: pending rows are looked up by borrowed
/// fields, so counting into a row that exists allocates nothing.
trait RowKey {
    fn fields(&self) -> (i64, &str, &str, &str, &str);
}

impl RowKey for Row {
    fn fields(&self) -> (i64, &str, &str, &str, &str) {
        (
            self.minute_ms,
            &self.api_key,
            &self.credential_id,
            &self.model,
            &self.upstream_model,
        )
    }
}

impl RowKey for (i64, &str, &str, &str, &str) {
    fn fields(&self) -> (i64, &str, &str, &str, &str) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn RowKey + 'a> for Row {
    fn borrow(&self) -> &(dyn RowKey + 'a) {
        self
    }
}

impl std::hash::Hash for dyn RowKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.fields().hash(state);
    }
}

impl PartialEq for dyn RowKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.fields() == other.fields()
    }
}

impl Eq for dyn RowKey + '_ {}

impl std::hash::Hash for Row {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.fields().hash(state);
    }
}

/// One row's counts; tokens follow section 9's one meaning across providers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// What the tokens cost at the requested model's price, in
    /// pico-dollars (0 without a price row).
    pub cost_pico: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_tokens += other.cached_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cost_pico += other.cost_pico;
    }

    /// The cost in dollars.
    pub fn cost_usd(&self) -> f64 {
        self.cost_pico as f64 / 1e12
    }
}

/// Hashed with foldhash: a request's row is found by five fields, which
/// SipHash took some 1,000 instructions to hash.
type Rows = HashMap<Row, Counts, foldhash::fast::RandomState>;

pub struct Ledger {
    clock: SharedClock,
    /// Counted and not yet written (cluster mode), or everything counted
    /// (embedded mode, where nothing is written).
    pending: Mutex<Rows>,
    /// Where the counts go; `None` in embedded mode.
    postgres: Option<Postgres>,
}

impl Ledger {
    pub fn new(clock: SharedClock, postgres: Option<Postgres>) -> Arc<Self> {
        Arc::new(Self {
            clock,
            pending: Mutex::new(Rows::default()),
            postgres,
        })
    }

    /// Counts one request of `key` for `model`, answered (or not) by the
    /// credential and upstream model named.
    pub fn record(
        &self,
        api_key: &str,
        model: &str,
        upstream: Option<(&str, &str)>,
        counts: Counts,
    ) {
        let now = self.clock.now_ms();
        let (credential_id, upstream_model) = upstream.unwrap_or(("", ""));
        let minute_ms = now - now.rem_euclid(60_000);
        let key = (minute_ms, api_key, credential_id, model, upstream_model);
        let mut pending = self.lock();
        match pending.get_mut(&key as &dyn RowKey) {
            Some(row) => row.add(&counts),
            None => {
                let row = Row {
                    minute_ms,
                    api_key: api_key.to_string(),
                    credential_id: credential_id.to_string(),
                    model: model.to_string(),
                    upstream_model: upstream_model.to_string(),
                };
                pending.insert(row, counts);
            }
        }
        // Rare: embedded mode after very long, or Postgres away for long.
        if pending.len() > MAX_ROWS {
            fold_oldest(&mut pending, MAX_ROWS);
        }
    }

    /// Every row counted in memory (embedded mode: all of them; cluster
    /// mode: those not written yet).
    pub fn in_memory(&self) -> Vec<(Row, Counts)> {
        self.lock().iter().map(|(r, c)| (r.clone(), *c)).collect()
    }

    /// What `api_key` spent from `since_ms` on in rows not written yet (all
    /// rows, in embedded mode), in pico-dollars.
    pub fn cost_since(&self, api_key: &str, since_ms: i64) -> u64 {
        self.lock()
            .iter()
            .filter(|(r, _)| r.api_key == api_key && r.minute_ms >= since_ms)
            .map(|(_, c)| c.cost_pico)
            .sum()
    }

    /// Whether rows are written to Postgres (else they stay in memory).
    pub fn writes(&self) -> bool {
        self.postgres.is_some()
    }

    pub fn postgres(&self) -> Option<&Postgres> {
        self.postgres.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        // A poisoned lock means a panic elsewhere; the counts are still counts.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what is pending; a batch Postgres does not take is merged
    /// back. True when nothing is left pending.
    pub async fn flush(&self) -> bool {
        let Some(pg) = &self.postgres else {
            return true;
        };
        let batch = std::mem::take(&mut *self.lock());
        if batch.is_empty() {
            return true;
        }
        // In key order: replicas adding to the same rows at once take their
        // row locks in the same order, so neither waits on the other
        // (unordered, two drains could deadlock and one lose its batch).
        let mut rows: Vec<(Row, Counts)> = batch.into_iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Err(e) = pg.add_usage(&rows).await {
            tracing::warn!(error = %e, rows = rows.len(), "usage not written; kept until Postgres takes it");
            let mut pending = self.lock();
            for (row, counts) in rows {
                pending.entry(row).or_default().add(&counts);
            }
            fold_oldest(&mut pending, MAX_ROWS);
            return false;
        }
        true
    }

    /// Flushes every [`FLUSH_EVERY`] until `stop`, then once more, trying
    /// again for a few seconds when Postgres refuses: what was counted
    /// before the drain ended is written.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(FLUSH_EVERY) => {
                    self.flush().await;
                }
                () = stop.cancelled() => break,
            }
        }
        for _ in 0..FINAL_TRIES {
            if self.flush().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let rows = self.lock().len();
        tracing::error!(rows, "usage not written at exit: Postgres refused it");
    }
}

/// Past `max` rows, the oldest half are folded into the oldest minute per
/// (key, credential, model, upstream model): coarser, never lost.
fn fold_oldest(rows: &mut Rows, max: usize) {
    if rows.len() <= max {
        return;
    }
    let mut minutes: Vec<i64> = rows.keys().map(|r| r.minute_ms).collect();
    minutes.sort_unstable();
    let cut = minutes[minutes.len() / 2];
    let oldest = minutes[0];
    let old: Vec<Row> = rows
        .keys()
        .filter(|r| r.minute_ms <= cut)
        .cloned()
        .collect();
    for row in old {
        if let Some(counts) = rows.remove(&row) {
            let folded = Row {
                minute_ms: oldest,
                ..row
            };
            rows.entry(folded).or_default().add(&counts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn one(requests: u64, errors: u64) -> Counts {
        Counts {
            requests,
            errors,
            ..Default::default()
        }
    }

    #[test]
    fn requests_of_one_minute_add_up_in_one_row() {
        let clock = ManualClock::at(120_000 + 5_000);
        let ledger = Ledger::new(clock.clone(), None);
        ledger.record("alice", "m", Some(("c", "up")), one(1, 0));
        clock.advance_ms(50_000);
        ledger.record("alice", "m", Some(("c", "up")), one(1, 1));
        ledger.record("alice", "m", None, one(1, 1));
        clock.advance_ms(10_000);
        ledger.record("alice", "m", Some(("c", "up")), one(1, 0));
        let mut rows = ledger.in_memory();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].0.minute_ms, rows[0].0.credential_id.as_str()),
            (120_000, "")
        );
        assert_eq!(rows[1].1, one(2, 1));
        assert_eq!(rows[2].0.minute_ms, 180_000);
    }

    #[test]
    fn folding_keeps_every_count() {
        let mut rows = Rows::default();
        for minute in 0..10 {
            let row = Row {
                minute_ms: minute * 60_000,
                api_key: "k".into(),
                credential_id: "c".into(),
                model: "m".into(),
                upstream_model: "u".into(),
            };
            rows.insert(row, one(1, 0));
        }
        fold_oldest(&mut rows, 4);
        assert!(rows.len() < 10);
        assert_eq!(rows.values().map(|c| c.requests).sum::<u64>(), 10);
    }
}
