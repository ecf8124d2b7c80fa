//! A key's counted limits (contract section 9): requests and tokens per UTC
//! minute, and spend per budget period (a UTC day or month).
//!
//! In cluster mode the counts are shared in Redis: one script call admits a
//! batch of requests (those that arrived while the previous batch was in
//! Redis: one call a request when they come one at a time, fewer under
//! load) and adds what their keys' earlier requests on this replica used;
//! what no later request carried is added every [`SPEND_EVERY`] by one call
//! for all keys. A missing budget counter is seeded from `usage` (and what
//! the ledger has not written yet). The replica's own counts are what
//! embedded mode enforces, and what a replica falls back to when Redis does
//! not answer (counted on `/metrics`), starting from the shared counts it
//! last saw. Keys without a counted limit reach none of this.

use std::collections::HashMap;

/// Per key state, by the key's name (operators' names, not clients'
/// input: a fast hash will do).
pub type KeyMap<V> = HashMap<String, V, foldhash::fast::RandomState>;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use tokio::sync::{Notify, mpsc, oneshot};
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
/// The most requests one admission call to Redis carries.
const BATCH: usize = 128;
/// How long leased requests are used for before what is left goes back.
const LEASE_FOR_MS: i64 = 100;
/// The most requests one lease asks for.
const MAX_LEASE: u64 = 256;

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

/// Requests of one key's minute that Redis counted for this replica ahead
/// of its requests (a lease), and the shared counts when it did: what the
/// replica admits on its own until the lease runs out or ends.
#[derive(Debug, Clone)]
struct Lease {
    /// The minute, on Redis' clock, it counts in.
    minute: i64,
    /// When it stops serving (this replica's clock): [`LEASE_FOR_MS`] after
    /// it was granted, or its minute's end if sooner.
    until_ms: i64,
    minute_end_ms: i64,
    granted: u64,
    left: u64,
    /// The shared request counter after the grant.
    requests: u64,
    tokens: u64,
    spent_nano: i64,
    /// Used by this replica's requests since.
    tokens_since: u64,
    nano_since: i64,
    /// The limits it was granted under: other limits (an UPDATE) end it.
    rpm: Option<u64>,
    tpm: Option<u64>,
    budget_nano: Option<i64>,
    period_start: i64,
}

impl Lease {
    fn serves(&self, limits: &KeyLimits, budget_nano: Option<i64>, start: i64, now: i64) -> bool {
        self.left > 0
            && now < self.until_ms
            && self.rpm == limits.rpm
            && self.tpm == limits.tpm
            && self.budget_nano == budget_nano
            && self.period_start == start
            && self.tpm.is_none_or(|t| self.tokens + self.tokens_since < t)
            && self
                .budget_nano
                .is_none_or(|b| self.spent_nano.saturating_add(self.nano_since) < b)
    }

    /// The next lease to ask for: twice this one when it ran out, else what
    /// it served.
    fn next_want(&self) -> u64 {
        if self.left == 0 {
            (self.granted * 2).min(MAX_LEASE)
        } else {
            (self.granted - self.left).max(1)
        }
    }
}

pub struct Limiter {
    clock: SharedClock,
    /// The shared counters, in cluster mode.
    shared: Option<RedisStore>,
    /// Where a missing budget counter is seeded from.
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// Key name -> its own counts: one entry per counted key in use.
    local: Mutex<KeyMap<Local>>,
    /// Key name -> spend the shared counters have not taken yet.
    pending: Mutex<KeyMap<Pending>>,
    /// Key name -> its lease of the current minute.
    leases: Mutex<KeyMap<Lease>>,
    /// Key name -> the admission asking Redis for its next lease: requests
    /// that find no lease meanwhile wait for that one's instead of asking.
    /// Whether its last lease was of more than one request (else nobody
    /// waits for it).
    asking: Mutex<KeyMap<(Arc<Notify>, bool)>>,
    /// Admissions waiting for the next batch call ([`Limiter::run`] sends them).
    queue: mpsc::UnboundedSender<Queued>,
    queued: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
}

/// What a request without a lease does while another asks for the key.
enum Turn {
    /// Asks Redis for the next lease, the others waiting for it.
    Ask,
    /// Waits for the one asking.
    Wait(tokio::sync::futures::OwnedNotified),
    /// Asks on its own.
    Alone,
}

/// The request asking Redis for its key's next lease; when it is done (or
/// its client left and it was dropped), the requests waiting for it go on.
struct Asking<'a> {
    limiter: &'a Limiter,
    name: &'a str,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some((n, _)) = lock(&self.limiter.asking).remove(self.name) {
            n.notify_waiters();
        }
    }
}

/// One admission waiting for its batch: the key's name, its budget period's
/// start, the question, and where the answer goes.
struct Queued {
    name: String,
    start: i64,
    ask: Ask,
    /// The spend `ask` carries: put back should the request stop waiting.
    carried: Pending,
    reply: oneshot::Sender<Option<Counted>>,
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
        let (queue, queued) = mpsc::unbounded_channel();
        Self {
            clock,
            shared,
            ledger,
            metrics,
            local: Mutex::new(KeyMap::default()),
            pending: Mutex::new(KeyMap::default()),
            leases: Mutex::new(KeyMap::default()),
            asking: Mutex::new(KeyMap::default()),
            queue,
            queued: Mutex::new(Some(queued)),
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

    /// A request of `key` admitted from its lease, or by Redis. While one
    /// request asks Redis for the key's next lease, the others wait for it
    /// (at most twice the Redis timeout) rather than each asking.
    async fn admit_shared(
        &self,
        shared: &RedisStore,
        key: &ApiKey,
        now: i64,
        bounds: (i64, i64),
    ) -> Option<Admission> {
        let budget_nano = key.limits.budget_micro_usd.map(|m| m.saturating_mul(1000));
        let mut waited = false;
        loop {
            if let Some(a) = self.admit_leased(key, budget_nano, now, bounds) {
                return Some(a);
            }
            if waited {
                // That ask left nothing for this one: it asks on its own.
                return self.ask_shared(shared, key, now, bounds).await;
            }
            let turn = {
                let mut asking = lock(&self.asking);
                match asking.get(&key.name) {
                    // Its last lease was of one request (the limit is
                    // near, or small): waiting would bring nothing.
                    Some((_, false)) => Turn::Alone,
                    Some((n, true)) => Turn::Wait(n.clone().notified_owned()),
                    None => {
                        let leasing = lock(&self.leases)
                            .get(&key.name)
                            .is_some_and(|l| l.granted > 1);
                        asking.insert(key.name.clone(), (Arc::new(Notify::new()), leasing));
                        Turn::Ask
                    }
                }
            };
            match turn {
                Turn::Alone => return self.ask_shared(shared, key, now, bounds).await,
                Turn::Wait(asked) => {
                    let _ = tokio::time::timeout(shared.timeout() * 2, asked).await;
                    waited = true;
                }
                Turn::Ask => {
                    let _asking = Asking {
                        limiter: self,
                        name: &key.name,
                    };
                    // A lease may have come between the two looks.
                    if let Some(a) = self.admit_leased(key, budget_nano, now, bounds) {
                        return Some(a);
                    }
                    return self.ask_shared(shared, key, now, bounds).await;
                }
            }
        }
    }

    /// A request admitted from the key's lease, if it has one that serves.
    fn admit_leased(
        &self,
        key: &ApiKey,
        budget_nano: Option<i64>,
        now: i64,
        (start, end): (i64, i64),
    ) -> Option<Admission> {
        let mut leases = lock(&self.leases);
        let l = leases.get_mut(&key.name)?;
        if !l.serves(&key.limits, budget_nano, start, now) {
            return None;
        }
        l.left -= 1;
        let counts = (
            l.requests - l.left,
            l.tokens + l.tokens_since,
            l.spent_nano.saturating_add(l.nano_since),
        );
        let reset_ms = l.minute_end_ms - now;
        drop(leases);
        self.seen(&key.name, now, start, counts);
        Some(admission(&key.limits, None, counts, reset_ms, end - now))
    }

    /// Asks Redis: takes the key's old lease out (its unused requests go
    /// back with the question) and keeps the new one.
    async fn ask_shared(
        &self,
        shared: &RedisStore,
        key: &ApiKey,
        now: i64,
        (start, end): (i64, i64),
    ) -> Option<Admission> {
        let limits = &key.limits;
        let budget_nano = limits.budget_micro_usd.map(|m| m.saturating_mul(1000));
        let previous = lock(&self.leases).remove(&key.name);
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
            budget_nano,
            add_tokens: carried.tokens,
            add_nano: carried.nano,
            budget_ttl_ms: end - now + DAY_MS,
            seed_nano: None,
            want: previous.as_ref().map_or(1, Lease::next_want),
            give_back: previous.as_ref().map_or(0, |l| l.left),
            give_minute: previous.as_ref().map_or(0, |l| l.minute),
        };
        let mut counted = self.in_batch(shared, &key.name, start, ask, carried).await;
        if counted == Some(Counted::Unseeded) {
            ask.seed_nano = self.seed(&key.name, start).await;
            if ask.seed_nano.is_some() {
                counted = admit_one(shared, &key.name, start, ask).await;
            }
        }
        let Some(Counted::Answer {
            refused_by,
            requests,
            tokens,
            spent_nano,
            reset_ms,
            granted,
            minute,
            ..
        }) = counted
        else {
            // Not taken: kept for the next call, and the old lease's unused
            // requests for the next give-back.
            self.add_pending(&key.name, pending);
            if let Some(l) = previous.filter(|l| l.left > 0) {
                lock(&self.leases).insert(key.name.clone(), Lease { until_ms: now, ..l });
            }
            return None;
        };
        let refused = match refused_by {
            1 => Some(Limit::Requests),
            2 => Some(Limit::Tokens),
            3 => Some(Limit::Budget),
            _ => None,
        };
        let used = requests.saturating_sub(granted.saturating_sub(1));
        if refused.is_none() {
            let mut leases = lock(&self.leases);
            // Another request of the key took a lease meanwhile (both asked
            // in one batch): its unused requests join this lease's.
            let (more, more_granted) = match leases.get(&key.name) {
                Some(l) if l.minute == minute && l.left > 0 => (l.left, l.granted),
                _ => (0, 0),
            };
            leases.insert(
                key.name.clone(),
                Lease {
                    minute,
                    until_ms: now + LEASE_FOR_MS.min(reset_ms),
                    minute_end_ms: now + reset_ms,
                    granted: granted + more_granted,
                    left: granted.saturating_sub(1) + more,
                    requests,
                    tokens,
                    spent_nano,
                    tokens_since: 0,
                    nano_since: 0,
                    rpm: limits.rpm,
                    tpm: limits.tpm,
                    budget_nano,
                    period_start: start,
                },
            );
        }
        let counts = (used, tokens, spent_nano);
        self.seen(&key.name, now, start, counts);
        Some(admission(limits, refused, counts, reset_ms, end - now))
    }

    /// The local counts start from the shared ones, should Redis go.
    fn seen(&self, name: &str, now: i64, start: i64, (requests, tokens, spent): (u64, u64, i64)) {
        let mut local = lock(&self.local);
        let entry = entry(&mut local, name);
        entry.at(now.div_euclid(MINUTE_MS), start);
        entry.requests = requests;
        entry.tokens = tokens;
        entry.spent_nano = spent;
    }

    /// The answer to `ask` from the next batch call. Waits no longer than a
    /// Redis call may take; without the batching task (stopped, or never
    /// started) it is a call of its own.
    async fn in_batch(
        &self,
        shared: &RedisStore,
        name: &str,
        start: i64,
        ask: Ask,
        carried: Pending,
    ) -> Option<Counted> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            name: name.to_string(),
            start,
            ask,
            carried,
            reply,
        };
        if self.queue.send(queued).is_err() {
            return admit_one(shared, name, start, ask).await;
        }
        // Twice the timeout: the batch ahead of this one, then this one.
        match tokio::time::timeout(shared.timeout() * 2, answer).await {
            Ok(Ok(counted)) => counted,
            // The task stopped with this one queued: nothing was sent for it.
            Ok(Err(_)) => admit_one(shared, name, start, ask).await,
            Err(_) => None,
        }
    }

    /// Sends one batch of queued admissions and answers each. An admission
    /// that stopped waiting is left out, its carried spend kept for later.
    async fn send_batch(&self, shared: &RedisStore, batch: Vec<Queued>) {
        let (waiting, gone): (Vec<Queued>, Vec<Queued>) =
            batch.into_iter().partition(|q| !q.reply.is_closed());
        for q in gone {
            self.add_pending(&q.name, q.carried);
        }
        if waiting.is_empty() {
            return;
        }
        let asks: Vec<(&str, i64, Ask)> = waiting
            .iter()
            .map(|q| (q.name.as_str(), q.start, q.ask))
            .collect();
        match shared.admit(&asks).await {
            Some(counted) => {
                for (q, c) in waiting.into_iter().zip(counted) {
                    let _ = q.reply.send(Some(c));
                }
            }
            None => {
                for q in waiting {
                    let _ = q.reply.send(None);
                }
            }
        }
    }

    /// Each key's requests and tokens this minute, for the console: the
    /// shared counts while Redis answers (leased requests count as used),
    /// else this replica's.
    pub async fn this_minute(&self, names: &[&str]) -> Vec<(u64, u64)> {
        let now = self.clock.now_ms();
        let minute = now.div_euclid(MINUTE_MS);
        if let Some(shared) = &self.shared {
            if let Some(counts) = shared.minute_counts(names, minute).await {
                return counts;
            }
        }
        let local = lock(&self.local);
        names
            .iter()
            .map(|n| match local.get(*n) {
                Some(l) if l.minute == minute => (l.requests, l.tokens),
                _ => (0, 0),
            })
            .collect()
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
        if let Some(l) = lock(&self.leases).get_mut(name) {
            l.tokens_since += tokens;
            l.nano_since = l.nano_since.saturating_add(nano);
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

    /// Sends queued admissions in batches, one call at a time, and adds the
    /// spend no request carried to the shared counters every
    /// [`SPEND_EVERY`], until `stop`, and once more after it.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(mut queued) = lock(&self.queued).take() else {
            return;
        };
        let mut tick = tokio::time::interval(SPEND_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                first = queued.recv() => {
                    let Some(first) = first else { break };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match queued.try_recv() {
                            Ok(q) => batch.push(q),
                            Err(_) => break,
                        }
                    }
                    self.send_batch(&shared, batch).await;
                }
                _ = tick.tick() => self.flush(&shared).await,
            }
        }
        // Those still queued: their senders drop with the queue, and they
        // ask on their own.
        drop(queued);
        self.flush(&shared).await;
    }

    async fn flush(&self, shared: &RedisStore) {
        let now = self.clock.now_ms();
        let ended: Vec<(String, Lease)> = {
            let mut leases = lock(&self.leases);
            let names: Vec<String> = leases
                .iter()
                .filter(|(_, l)| now >= l.until_ms)
                .map(|(n, _)| n.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|n| leases.remove(&n).map(|l| (n, l)))
                .filter(|(_, l)| l.left > 0)
                .collect()
        };
        let taken: Vec<(String, Pending)> = lock(&self.pending).drain().collect();
        if taken.is_empty() && ended.is_empty() {
            return;
        }
        let mut spends: Vec<Spend> = taken
            .iter()
            .map(|(name, p)| Spend {
                name: name.clone(),
                budget_period_ms: p.period_start,
                tokens: p.tokens,
                nano: p.nano,
                give_back: 0,
                give_minute: 0,
            })
            .collect();
        let at: HashMap<String, usize> = spends
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        for (name, l) in ended {
            match at.get(&name).and_then(|&i| spends.get_mut(i)) {
                Some(s) => (s.give_back, s.give_minute) = (l.left, l.minute),
                None => spends.push(Spend {
                    name,
                    budget_period_ms: l.period_start,
                    tokens: 0,
                    nano: 0,
                    give_back: l.left,
                    give_minute: l.minute,
                }),
            }
        }
        if !shared.spend(&spends).await {
            for (name, p) in taken {
                self.add_pending(&name, p);
            }
        }
    }
}

/// One admission in a call of its own.
async fn admit_one(shared: &RedisStore, name: &str, start: i64, ask: Ask) -> Option<Counted> {
    shared
        .admit(&[(name, start, ask)])
        .await
        .and_then(|c| c.first().copied())
}

fn entry<'a>(map: &'a mut KeyMap<Local>, name: &str) -> &'a mut Local {
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
