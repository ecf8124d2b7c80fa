//! Prometheus metrics, kept in atomics and a few small maps, rendered in the
//! text exposition format at `/metrics`. No label ever holds a secret.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A counter with two labels. Lookups borrow the labels, so counting an
/// existing series allocates nothing.
struct Counter2 {
    labels: [&'static str; 2],
    values: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
}

impl Counter2 {
    const fn new(labels: [&'static str; 2]) -> Self {
        Self {
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    fn inc(&self, a: &str, b: &str) {
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let inner = match values.get_mut(a) {
            Some(inner) => inner,
            None => values.entry(a.to_string()).or_default(),
        };
        match inner.get_mut(b) {
            Some(v) => *v += 1,
            None => {
                inner.insert(b.to_string(), 1);
            }
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        for (a, inner) in values.iter() {
            for (b, v) in inner {
                let _ = writeln!(
                    out,
                    "{name}{{{}=\"{}\",{}=\"{}\"}} {v}",
                    self.labels[0],
                    escape(a),
                    self.labels[1],
                    escape(b)
                );
            }
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Upper bounds of the propagation histogram, in seconds.
const PROPAGATION_BUCKETS: [f64; 10] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

struct Histogram {
    buckets: [AtomicU64; PROPAGATION_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        for (i, le) in PROPAGATION_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }
}

/// A gauge for the health of an optional dependency: absent, up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    NotConfigured,
    Up,
    Down,
}

/// Why a Redis command did not do its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    Timeout,
    /// Refused or lost connection.
    Connection,
    /// Redis answered with an error: out of memory, read-only, MISCONF...
    Refused,
}

impl RedisFailure {
    const ALL: [RedisFailure; 3] = [
        RedisFailure::Timeout,
        RedisFailure::Connection,
        RedisFailure::Refused,
    ];

    fn label(self) -> &'static str {
        match self {
            RedisFailure::Timeout => "timeout",
            RedisFailure::Connection => "connection",
            RedisFailure::Refused => "refused",
        }
    }
}

pub struct Metrics {
    /// `SWITCHYARD_REPLICA_ID`, shown by `switchyard_info` (section 2).
    replica: String,
    requests: Counter2,
    upstream: Counter2,
    blocks: Counter2,
    fallbacks: AtomicU64,
    /// Probe claims won, and picks that found another request's probe in flight.
    probes: AtomicU64,
    probe_holds: AtomicU64,
    waits: AtomicU64,
    wait_ms: AtomicU64,
    catalog_reloads: AtomicU64,
    /// Full reads of the operator data (published or not).
    catalog_loads: AtomicU64,
    redis: AtomicI64,
    /// Failed Redis commands, by [`RedisFailure`].
    redis_failures: [AtomicU64; 3],
    /// Blocks and deletes this replica holds that Redis has not taken yet.
    redis_unsynced: AtomicU64,
    /// Requests whose key limits this replica counted on its own because
    /// the shared counters in Redis did not answer.
    limits_local: AtomicU64,
    /// Answers counted with the local token estimate: the upstream reported
    /// no usage, or the client left before it did.
    usage_estimated: AtomicU64,
    /// Per key name, only for keys with a counted limit: a label set as
    /// large as the keys an operator limited, however many keys there are.
    keys: Mutex<BTreeMap<String, KeyCounts>>,
    postgres: AtomicI64,
    propagation: Histogram,
    /// Bytes of request bodies held now (their cap is
    /// `SWITCHYARD_MAX_INFLIGHT_BODY_BYTES`).
    body_bytes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A limited key's counters.
#[derive(Debug, Default)]
struct KeyCounts {
    admitted: u64,
    /// Refused by its request limit, token limit, budget.
    refused: [u64; 3],
    tokens: u64,
    cost_pico: u64,
}

impl Metrics {
    fn render_keys(&self, out: &mut String) {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let name = "switchyard_key_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests of keys with limits, by key name and outcome (admitted, or the limit that refused it).\n# TYPE {name} counter"
        );
        for (key, k) in keys.iter() {
            let key = escape(key);
            let _ = writeln!(
                out,
                "{name}{{key=\"{key}\",outcome=\"admitted\"}} {}",
                k.admitted
            );
            for (outcome, n) in ["requests", "tokens", "budget"].iter().zip(k.refused) {
                let _ = writeln!(out, "{name}{{key=\"{key}\",outcome=\"{outcome}\"}} {n}");
            }
        }
        let name = "switchyard_key_tokens_total";
        let _ = writeln!(
            out,
            "# HELP {name} Tokens (input and output) used by keys with limits.\n# TYPE {name} counter"
        );
        for (key, k) in keys.iter() {
            let _ = writeln!(out, "{name}{{key=\"{}\"}} {}", escape(key), k.tokens);
        }
        let name = "switchyard_key_spend_usd_total";
        let _ = writeln!(
            out,
            "# HELP {name} Dollars spent by keys with limits, at model_prices.\n# TYPE {name} counter"
        );
        for (key, k) in keys.iter() {
            let _ = writeln!(
                out,
                "{name}{{key=\"{}\"}} {}",
                escape(key),
                k.cost_pico as f64 / 1e12
            );
        }
    }

    pub fn new() -> Self {
        Self {
            replica: String::new(),
            requests: Counter2::new(["route", "status"]),
            upstream: Counter2::new(["provider", "outcome"]),
            blocks: Counter2::new(["reason", "scope"]),
            fallbacks: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            probe_holds: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            wait_ms: AtomicU64::new(0),
            catalog_reloads: AtomicU64::new(0),
            catalog_loads: AtomicU64::new(0),
            redis: AtomicI64::new(-1),
            redis_failures: Default::default(),
            redis_unsynced: AtomicU64::new(0),
            limits_local: AtomicU64::new(0),
            usage_estimated: AtomicU64::new(0),
            keys: Mutex::new(BTreeMap::new()),
            postgres: AtomicI64::new(-1),
            body_bytes: AtomicU64::new(0),
            propagation: Histogram {
                buckets: Default::default(),
                count: AtomicU64::new(0),
                sum_us: AtomicU64::new(0),
            },
        }
    }

    pub fn request(&self, route: &str, status: u16) {
        let mut buf = [0u8; 3];
        let status = status_label(status, &mut buf);
        self.requests.inc(route, status);
    }

    /// One upstream attempt's outcome: `success`, a block reason, `request_error`, ...
    pub fn upstream(&self, provider: &str, outcome: &str) {
        self.upstream.inc(provider, outcome);
    }

    pub fn block(&self, reason: &str, scope: &str) {
        self.blocks.inc(reason, scope);
    }

    pub fn fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn probe(&self) {
        self.probes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn probe_held(&self) {
        self.probe_holds.fetch_add(1, Ordering::Relaxed);
    }

    pub fn wait(&self, ms: u64) {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.wait_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn catalog_load(&self) {
        self.catalog_loads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn catalog_reload(&self) {
        self.catalog_reloads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_redis(&self, health: Health) {
        self.redis.store(gauge(health), Ordering::Relaxed);
    }

    pub fn redis_failure(&self, why: RedisFailure) {
        self.redis_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_redis_unsynced(&self, n: usize) {
        self.redis_unsynced.store(n as u64, Ordering::Relaxed);
    }

    pub fn limit_counted_locally(&self) {
        self.limits_local.fetch_add(1, Ordering::Relaxed);
    }

    /// One admission of a key with a counted limit, and which limit refused it.
    pub fn key_admission(&self, name: &str, refused: Option<crate::limits::Limit>) {
        use crate::limits::Limit;
        self.with_key(name, |k| match refused {
            None => k.admitted += 1,
            Some(Limit::Requests) => k.refused[0] += 1,
            Some(Limit::Tokens) => k.refused[1] += 1,
            Some(Limit::Budget) => k.refused[2] += 1,
        });
    }

    /// What a request of a key with a counted limit used.
    pub fn key_spent(&self, name: &str, tokens: u64, cost_pico: u64) {
        self.with_key(name, |k| {
            k.tokens += tokens;
            k.cost_pico += cost_pico;
        });
    }

    fn with_key(&self, name: &str, f: impl FnOnce(&mut KeyCounts)) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match keys.get_mut(name) {
            Some(k) => f(k),
            None => f(keys.entry(name.to_string()).or_default()),
        }
    }

    pub fn usage_estimated(&self) {
        self.usage_estimated.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_postgres(&self, health: Health) {
        self.postgres.store(gauge(health), Ordering::Relaxed);
    }

    pub fn redis(&self) -> Health {
        health(self.redis.load(Ordering::Relaxed))
    }

    pub fn postgres(&self) -> Health {
        health(self.postgres.load(Ordering::Relaxed))
    }

    /// Request body bytes taken into (positive) or let go of (negative) the
    /// replica's budget.
    pub fn body_bytes(&self, delta: i64) {
        if delta >= 0 {
            self.body_bytes
                .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        } else {
            self.body_bytes
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Time from a block's write on some replica to this replica's view of it.
    pub fn propagation(&self, seconds: f64) {
        self.propagation.observe(seconds);
    }

    /// The same metrics, naming the replica they come from.
    pub fn for_replica(mut self, replica: &str) -> Self {
        self.replica = replica.to_string();
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let replica = self
            .replica
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = writeln!(
            out,
            "# HELP switchyard_info The replica and the version it runs.\n# TYPE switchyard_info gauge\nswitchyard_info{{replica=\"{replica}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        self.requests.render(
            &mut out,
            "switchyard_requests_total",
            "Client requests by route and status.",
        );
        self.upstream.render(
            &mut out,
            "switchyard_upstream_outcomes_total",
            "Upstream attempts by provider and classified outcome.",
        );
        self.blocks.render(
            &mut out,
            "switchyard_blocks_total",
            "Blocks learned by reason and scope (credential or model).",
        );
        counter(
            &mut out,
            "switchyard_fallbacks_total",
            "Attempts that moved on to another candidate.",
            &self.fallbacks,
        );
        counter(
            &mut out,
            "switchyard_waits_total",
            "Times a request waited for a block to end.",
            &self.waits,
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_wait_seconds_total Time spent waiting for blocks to end.\n# TYPE switchyard_wait_seconds_total counter\nswitchyard_wait_seconds_total {}",
            self.wait_ms.load(Ordering::Relaxed) as f64 / 1_000.0
        );
        counter(
            &mut out,
            "switchyard_probes_total",
            "Probes this replica made: the one request that tries a pair whose long block ended.",
            &self.probes,
        );
        counter(
            &mut out,
            "switchyard_probe_holds_total",
            "Picks that found another request probing the pair, and went elsewhere or waited.",
            &self.probe_holds,
        );
        counter(
            &mut out,
            "switchyard_catalog_reloads_total",
            "Credential snapshots published.",
            &self.catalog_reloads,
        );
        counter(
            &mut out,
            "switchyard_catalog_loads_total",
            "Full reads of the operator data: on a change, a reconnect, or a backstop check that found the version moved.",
            &self.catalog_loads,
        );
        for (name, value, help) in [
            (
                "switchyard_redis_up",
                &self.redis,
                "1 when the shared learned-state store answers, 0 when it does not (the replica runs on its own learned state); absent without Redis.",
            ),
            (
                "switchyard_postgres_up",
                &self.postgres,
                "1 when Postgres answers, 0 when the replica serves its last snapshot; absent without Postgres.",
            ),
        ] {
            let v = value.load(Ordering::Relaxed);
            if v >= 0 {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
        }
        if self.redis() != Health::NotConfigured {
            let name = "switchyard_redis_failures_total";
            let _ = writeln!(
                out,
                "# HELP {name} Redis commands that did not do their work: timed out, connection refused or lost, or refused by Redis (out of memory, read-only, MISCONF).\n# TYPE {name} counter"
            );
            for why in RedisFailure::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{kind=\"{}\"}} {}",
                    why.label(),
                    self.redis_failures[why as usize].load(Ordering::Relaxed)
                );
            }
            let name = "switchyard_limits_local_total";
            let _ = writeln!(
                out,
                "# HELP {name} Requests whose key limits (rpm) this replica counted on its own traffic because Redis did not answer.\n# TYPE {name} counter\n{name} {}",
                self.limits_local.load(Ordering::Relaxed)
            );
            let name = "switchyard_redis_unsynced";
            let _ = writeln!(
                out,
                "# HELP {name} Blocks and deletes this replica honours that Redis has not taken yet; written as soon as Redis takes writes.\n# TYPE {name} gauge\n{name} {}",
                self.redis_unsynced.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_request_body_bytes Bytes of request bodies this replica holds now.\n# TYPE switchyard_request_body_bytes gauge\nswitchyard_request_body_bytes {}",
            self.body_bytes.load(Ordering::Relaxed)
        );
        self.render_keys(&mut out);
        let name = "switchyard_usage_estimated_total";
        let _ = writeln!(
            out,
            "# HELP {name} Answers counted in usage with the local token estimate: the upstream reported no usage, or the client left before it did.\n# TYPE {name} counter\n{name} {}",
            self.usage_estimated.load(Ordering::Relaxed)
        );
        let degraded = i64::from(
            self.redis() == Health::Down || self.redis_unsynced.load(Ordering::Relaxed) > 0,
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_learned_state_degraded 1 while this replica cannot reach the shared learned state, or holds blocks Redis has not taken.\n# TYPE switchyard_learned_state_degraded gauge\nswitchyard_learned_state_degraded {degraded}"
        );
        let h = &self.propagation;
        let name = "switchyard_block_propagation_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From a block's write on one replica to this replica seeing it.\n# TYPE {name} histogram"
        );
        for (i, le) in PROPAGATION_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                h.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

/// A three-digit status as text, without allocating.
fn status_label(status: u16, buf: &mut [u8; 3]) -> &str {
    if !(100..=999).contains(&status) {
        return "other";
    }
    buf[0] = b'0' + (status / 100) as u8;
    buf[1] = b'0' + (status / 10 % 10) as u8;
    buf[2] = b'0' + (status % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("other")
}

fn counter(out: &mut String, name: &str, help: &str, v: &AtomicU64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
        v.load(Ordering::Relaxed)
    );
}

fn gauge(health: Health) -> i64 {
    match health {
        Health::NotConfigured => -1,
        Health::Up => 1,
        Health::Down => 0,
    }
}

fn health(v: i64) -> Health {
    match v {
        1 => Health::Up,
        0 => Health::Down,
        _ => Health::NotConfigured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_the_histogram() {
        let m = Metrics::new();
        m.request("/v1/chat/completions", 200);
        m.request("/v1/chat/completions", 200);
        m.block("quota", "model");
        m.set_redis(Health::Down);
        m.propagation(0.0007);
        let text = m.render();
        assert!(
            text.contains(
                "switchyard_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("switchyard_blocks_total{reason=\"quota\",scope=\"model\"} 1"));
        assert!(text.contains("switchyard_redis_up 0"));
        let named = Metrics::new().for_replica("r\"1").render();
        assert!(
            named.contains("switchyard_info{replica=\"r\\\"1\",version="),
            "{named}"
        );
        assert!(!text.contains("switchyard_postgres_up"));
        assert!(text.contains("switchyard_learned_state_degraded 1"));
        assert!(text.contains("switchyard_block_propagation_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("switchyard_block_propagation_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("switchyard_block_propagation_seconds_count 1"));
    }
}
