//! A key's request limit (contract section 9): fixed windows aligned to the
//! UTC minute, counted per key name.
//!
//! In cluster mode the count is shared in Redis (one script call a limited
//! request); the replica's own count is what embedded mode enforces, and
//! what a replica falls back to when Redis does not answer (counted on
//! `/metrics`). Keys without a limit reach neither, so they cost nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::catalog::ApiKey;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::state::RedisStore;

const MINUTE_MS: i64 = 60_000;

/// The verdict on one request, and what its `x-ratelimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub admitted: bool,
    pub limit: u64,
    /// Requests left in this window after this one.
    pub remaining: u64,
    /// Milliseconds until the window ends.
    pub reset_ms: i64,
}

impl Admission {
    /// `Retry-After`: the seconds to the window's end, rounded up.
    pub fn retry_after_s(&self) -> u64 {
        u64::try_from(self.reset_ms.max(0))
            .unwrap_or(0)
            .div_ceil(1000)
    }
}

/// Per-key request counts in the current minute.
pub struct Limiter {
    clock: SharedClock,
    /// The shared counters, in cluster mode.
    shared: Option<RedisStore>,
    metrics: std::sync::Arc<Metrics>,
    /// Key name -> (the window's minute, requests admitted in it). A key's
    /// entry is replaced when its window moves on, so the map holds one
    /// entry per limited key that has been used, not one per minute.
    windows: Mutex<HashMap<String, (i64, u64)>>,
}

impl Limiter {
    pub fn new(
        clock: SharedClock,
        shared: Option<RedisStore>,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        Self {
            clock,
            shared,
            metrics,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `key` against its `rpm_limit`, or refuses it.
    /// `None` when the key has no request limit.
    pub async fn admit(&self, key: &ApiKey) -> Option<Admission> {
        let limit = key.limits.rpm?;
        if let Some(shared) = &self.shared {
            if let Some(c) = shared.count_request(&key.name, limit).await {
                return Some(Admission {
                    admitted: c.admitted,
                    limit,
                    remaining: limit.saturating_sub(c.count),
                    reset_ms: c.reset_ms,
                });
            }
            self.metrics.limit_counted_locally();
        }
        Some(self.admit_locally(&key.name, limit))
    }

    /// The replica's own count of `name`'s requests this minute.
    fn admit_locally(&self, name: &str, limit: u64) -> Admission {
        let now = self.clock.now_ms();
        let minute = now.div_euclid(MINUTE_MS);
        let reset_ms = (minute + 1) * MINUTE_MS - now;
        // A poisoned lock only means another request panicked while holding
        // it; the counts are still counts.
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let entry = match windows.get_mut(name) {
            Some(e) => e,
            None => windows.entry(name.to_string()).or_insert((minute, 0)),
        };
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        let admitted = entry.1 < limit;
        if admitted {
            entry.1 += 1;
        }
        Admission {
            admitted,
            limit,
            remaining: limit.saturating_sub(entry.1),
            reset_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::KeyLimits;
    use crate::clock::ManualClock;

    fn key(rpm: Option<u64>) -> ApiKey {
        ApiKey {
            name: "k".into(),
            key_hash: String::new(),
            enabled: true,
            expires_at: None,
            limits: KeyLimits {
                rpm,
                ..Default::default()
            },
        }
    }

    fn limiter(clock: SharedClock) -> Limiter {
        Limiter::new(clock, None, Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn the_request_over_the_limit_is_refused_until_the_next_minute() {
        let clock = ManualClock::at(10 * MINUTE_MS + 15_000);
        let limiter = limiter(clock.clone());
        let k = key(Some(2));
        let first = limiter.admit(&k).await.expect("limited");
        assert!(first.admitted);
        assert_eq!(first.remaining, 1);
        assert!(limiter.admit(&k).await.expect("limited").admitted);
        let third = limiter.admit(&k).await.expect("limited");
        assert!(!third.admitted);
        assert_eq!(third.remaining, 0);
        assert_eq!(third.retry_after_s(), 45);
        clock.advance_ms(45_000);
        assert!(limiter.admit(&k).await.expect("limited").admitted);
    }

    #[tokio::test]
    async fn keys_without_a_limit_are_not_counted() {
        let limiter = limiter(Arc::new(crate::clock::SystemClock));
        assert_eq!(limiter.admit(&key(None)).await, None);
        assert!(limiter.windows.lock().expect("lock").is_empty());
    }
}
