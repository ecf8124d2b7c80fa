//! The bytes of request bodies a replica holds at once
//! (`SWITCHYARD_MAX_INFLIGHT_BODY_BYTES`). A body is reserved before it is
//! read (its declared length, or chunk by chunk when it has none) and
//! released when its request is done; beyond the cap a request is turned
//! away with a 503 rather than read. With the memory a request costs bounded
//! by a small multiple of its body, this bounds the replica's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::metrics::Metrics;

pub struct BodyBudget {
    cap: usize,
    held: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// Bytes of a budget held for one request, released on drop.
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    pub fn new(cap: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            cap,
            held: AtomicUsize::new(0),
            metrics,
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Holds `bytes`, or nothing when that would pass the cap.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.take(bytes).then(|| Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    fn take(&self, bytes: usize) -> bool {
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|n| *n <= self.cap)
            })
            .is_ok();
        if taken {
            self.metrics.body_bytes(signed(bytes));
        }
        taken
    }
}

impl Reservation {
    /// Holds `more` bytes besides; `false` (and nothing more held) when that
    /// would pass the cap.
    pub fn grow(&mut self, more: usize) -> bool {
        let ok = self.budget.take(more);
        if ok {
            self.bytes += more;
        }
        ok
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.metrics.body_bytes(-signed(self.bytes));
    }
}

fn signed(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_under_the_cap_and_give_back_on_drop() {
        let metrics = Arc::new(Metrics::new());
        let budget = BodyBudget::new(100, metrics.clone());
        let mut a = budget.reserve(60).expect("room");
        assert!(budget.reserve(41).is_none(), "past the cap");
        let b = budget.reserve(40).expect("exactly the cap");
        assert!(!a.grow(1));
        assert_eq!(budget.held(), 100);
        drop(b);
        assert!(a.grow(30));
        assert_eq!((a.bytes(), budget.held()), (90, 90));
        assert!(
            metrics
                .render()
                .contains("\nswitchyard_request_body_bytes 90\n")
        );
        drop(a);
        assert_eq!(budget.held(), 0);
        assert!(
            metrics
                .render()
                .contains("\nswitchyard_request_body_bytes 0\n")
        );
    }
}
