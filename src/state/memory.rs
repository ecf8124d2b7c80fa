//! The in-memory learned-state store of embedded mode.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    Affinity, Block, Claim, Confirmation, LearnedStore, PROBATION_MS, PROBE_AFTER_MS, Probe,
    QuotaHit, Reason, Scope, SideState, StoreError, View,
};
use crate::clock::SharedClock;
use crate::routing::cooldown;

/// Blocks and quota ladders behind one mutex: every operation is a few map
/// lookups, so the lock is never held across an await.
pub struct MemoryStore {
    clock: SharedClock,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    blocks: HashMap<Scope, Block>,
    /// Quota ladder level and when it lapses, per pair.
    ladders: HashMap<Scope, (u32, i64)>,
    /// Conversation affinity and when it lapses, per (hashed) key; bounded.
    affinity: HashMap<String, (Affinity, i64)>,
    /// Scopes that came out of a long block and await their probe: the
    /// block's reason, and when the wait for a probe lapses.
    probation: HashMap<Scope, (Reason, i64)>,
    /// Probe claims: the claiming request's token, and when the claim lapses.
    claims: HashMap<Scope, (String, i64)>,
}

/// The most conversations one replica remembers without Redis.
const AFFINITY_CAP: usize = 100_000;

impl MemoryStore {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-written
        // (every update is a single insert or remove), so poison is ignored.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl MemoryStore {
    /// Replaces every block with `blocks`: a mirror reloading from the shared store.
    pub(crate) fn replace(&self, blocks: Vec<(Scope, Block)>) {
        let mut inner = self.lock();
        inner.blocks = blocks.into_iter().collect();
    }
}

impl Inner {
    /// After `block` was written on `scope`: a long one is followed by a
    /// probe, and a probe that ended in it is over.
    fn blocked(&mut self, scope: &Scope, block: &Block) {
        self.claims.remove(scope);
        if block.until_ms - block.since_ms >= PROBE_AFTER_MS {
            let until = block.until_ms.saturating_add(PROBATION_MS);
            let entry = self
                .probation
                .entry(scope.clone())
                .or_insert((block.reason, until));
            if entry.1 <= until {
                *entry = (block.reason, until);
            }
        }
    }

    /// A scope that served: it awaits no probe.
    fn served(&mut self, scope: &Scope) {
        self.probation.remove(scope);
        self.claims.remove(scope);
    }

    fn active(&mut self, scope: &Scope, now_ms: i64) -> Option<&Block> {
        if self.blocks.get(scope).is_some_and(|b| !b.is_active(now_ms)) {
            self.blocks.remove(scope);
        }
        self.blocks.get(scope)
    }
}

#[async_trait]
impl LearnedStore for MemoryStore {
    async fn get(&self, scopes: &[Scope]) -> Result<Vec<Option<Block>>, StoreError> {
        let now = self.clock.now_ms();
        let inner = self.lock();
        Ok(scopes
            .iter()
            .map(|s| inner.blocks.get(s).filter(|b| b.is_active(now)).cloned())
            .collect())
    }

    async fn put(&self, scope: &Scope, block: Block) -> Result<Block, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let stands = match inner.active(scope, now).cloned() {
            Some(old) => old.merge(block),
            None => block,
        };
        if stands.is_active(now) {
            inner.blocks.insert(scope.clone(), stands.clone());
            inner.blocked(scope, &stands);
        }
        Ok(stands)
    }

    async fn quota(&self, pair: &Scope, hit: QuotaHit) -> Result<Block, StoreError> {
        let mut inner = self.lock();
        let now = hit.now_ms;
        let current = inner.active(pair, now).cloned();
        let level = match inner.ladders.get(pair) {
            Some(&(level, lapses)) if lapses > now => level,
            _ => 0,
        };
        let step = cooldown::quota_step(current.as_ref(), level, &hit);
        inner
            .ladders
            .insert(pair.clone(), (step.level, now + step.ladder_ttl_ms as i64));
        inner.blocks.insert(pair.clone(), step.block.clone());
        inner.blocked(pair, &step.block);
        Ok(step.block)
    }

    async fn succeed(&self, pair: &Scope, request_started_ms: i64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        // Most successes have nothing to clear: no lookups then.
        if !inner.ladders.is_empty() {
            inner.ladders.remove(pair);
        }
        if !inner.blocks.is_empty()
            && inner
                .blocks
                .get(pair)
                .is_some_and(|b| b.since_ms < request_started_ms)
        {
            inner.blocks.remove(pair);
        }
        if inner.probation.is_empty() && inner.claims.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        if inner.active(pair, now).is_none() {
            inner.served(pair);
            let credential = Scope::credential(pair.credential_id());
            if inner.active(&credential, now).is_none() {
                inner.served(&credential);
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<(Scope, Block)>, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        inner.blocks.retain(|_, b| b.is_active(now));
        let mut all: Vec<_> = inner
            .blocks
            .iter()
            .map(|(s, b)| (s.clone(), b.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn remove(&self, scope: &Scope) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let was_active = inner.active(scope, now).is_some();
        inner.blocks.remove(scope);
        // Lifted by hand: no probe is owed either.
        inner.served(scope);
        Ok(was_active)
    }

    async fn withdraw(&self, scope: &Scope, written: &Block) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let ours = inner
            .active(scope, now)
            .is_some_and(|b| b.same_verdict(written));
        if ours {
            inner.blocks.remove(scope);
        }
        Ok(ours)
    }

    async fn quota_level(&self, pair: &Scope) -> Result<u32, StoreError> {
        let now = self.clock.now_ms();
        let inner = self.lock();
        Ok(match inner.ladders.get(pair) {
            Some(&(level, lapses)) if lapses > now => level,
            _ => 0,
        })
    }

    async fn side_state(&self, scopes: &[Scope]) -> Result<Vec<SideState>, StoreError> {
        let now = self.clock.now_ms();
        let inner = self.lock();
        Ok(scopes
            .iter()
            .map(|s| SideState {
                quota_level: match inner.ladders.get(s) {
                    Some(&(level, lapses)) if lapses > now => level,
                    _ => 0,
                },
                awaiting_probe: inner
                    .probation
                    .get(s)
                    .is_some_and(|(_, until)| *until > now),
                probe_held: inner.claims.get(s).is_some_and(|(_, until)| *until > now),
            })
            .collect())
    }

    async fn affinity(&self, key: &str) -> Result<Option<Affinity>, StoreError> {
        let now = self.clock.now_ms();
        let inner = self.lock();
        Ok(inner
            .affinity
            .get(key)
            .filter(|(_, lapses)| *lapses > now)
            .map(|(a, _)| a.clone()))
    }

    async fn set_affinity(&self, key: &str, to: &Affinity, ttl_ms: u64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let lapses = now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        let mut inner = self.lock();
        if inner.affinity.len() >= AFFINITY_CAP && !inner.affinity.contains_key(key) {
            inner.affinity.retain(|_, (_, l)| *l > now);
            if inner.affinity.len() >= AFFINITY_CAP {
                // Full of live entries: start over rather than grow; a lost
                // entry only costs one conversation its cache.
                inner.affinity.clear();
            }
        }
        inner.affinity.insert(key.to_string(), (to.clone(), lapses));
        Ok(())
    }

    fn view(&self) -> View {
        View::Memory
    }

    async fn confirm(
        &self,
        credential: &Scope,
        pair: &Scope,
        claim_ttl_ms: u64,
    ) -> Result<Confirmation, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let blocks = [credential, pair].map(|s| inner.active(s, now).cloned());
        let [credential_block, pair_block] = blocks;
        let mut probe = Probe::None;
        if credential_block.is_none() && pair_block.is_none() {
            let awaiting: Vec<(&Scope, Reason)> = [credential, pair]
                .into_iter()
                .filter_map(|s| {
                    let &(reason, until) = inner.probation.get(s)?;
                    (until > now).then_some((s, reason))
                })
                .collect();
            if let Some(&(_, reason)) = awaiting
                .iter()
                .find(|(s, _)| inner.claims.get(*s).is_some_and(|(_, until)| *until > now))
            {
                probe = Probe::Held { reason };
            } else if !awaiting.is_empty() {
                let token = uuid::Uuid::new_v4().to_string();
                let until = now.saturating_add(i64::try_from(claim_ttl_ms).unwrap_or(i64::MAX));
                for (s, _) in &awaiting {
                    inner.claims.insert((*s).clone(), (token.clone(), until));
                }
                probe = Probe::Claimed(Claim {
                    scopes: awaiting.iter().map(|(s, _)| (*s).clone()).collect(),
                    token,
                });
            }
        }
        Ok(Confirmation {
            credential: credential_block,
            pair: pair_block,
            probe,
        })
    }

    fn release(&self, claim: Claim) {
        let mut inner = self.lock();
        for scope in &claim.scopes {
            if inner
                .claims
                .get(scope)
                .is_some_and(|(t, _)| *t == claim.token)
            {
                inner.claims.remove(scope);
            }
        }
    }

    fn peek(&self, scope: &Scope) -> Option<Block> {
        let now = self.clock.now_ms();
        self.lock()
            .blocks
            .get(scope)
            .filter(|b| b.is_active(now))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::state::Reason;

    fn store_at(ms: i64) -> (Arc<ManualClock>, MemoryStore) {
        let clock = ManualClock::at(ms);
        (clock.clone(), MemoryStore::new(clock))
    }

    fn block(since_ms: i64, until_ms: i64) -> Block {
        Block {
            reason: Reason::UpstreamError,
            status: 503,
            message: "down".into(),
            replica: "r".into(),
            since_ms,
            until_ms,
        }
    }

    fn hit(now_ms: i64) -> QuotaHit {
        QuotaHit {
            status: 429,
            message: String::new(),
            replica: "r".into(),
            now_ms,
            hint_ms: None,
            base_ms: 1_000,
            cap_ms: 1_800_000,
        }
    }

    #[tokio::test]
    async fn blocks_end_when_the_clock_passes_them() {
        let (clock, store) = store_at(0);
        let pair = Scope::pair("c", "m");
        store.put(&pair, block(0, 60_000)).await.unwrap();
        clock.set_ms(59_999);
        assert!(store.get(std::slice::from_ref(&pair)).await.unwrap()[0].is_some());
        clock.set_ms(60_000);
        assert!(store.get(std::slice::from_ref(&pair)).await.unwrap()[0].is_none());
        assert!(
            !store.remove(&pair).await.unwrap(),
            "nothing active to remove"
        );
    }

    #[tokio::test]
    async fn a_success_that_started_before_the_block_leaves_it() {
        let (clock, store) = store_at(1_000);
        let pair = Scope::pair("c", "m");
        let request_started = clock.now_ms();
        clock.advance_ms(10);
        // Another request fails and blocks the pair while the first is in flight.
        store
            .put(&pair, block(clock.now_ms(), clock.now_ms() + 60_000))
            .await
            .unwrap();
        clock.advance_ms(10);
        store.succeed(&pair, request_started).await.unwrap();
        assert!(store.get(std::slice::from_ref(&pair)).await.unwrap()[0].is_some());
        // A request that started after the block was written clears it.
        store.succeed(&pair, clock.now_ms()).await.unwrap();
        assert!(store.get(&[pair]).await.unwrap()[0].is_none());
    }

    #[tokio::test]
    async fn the_ladder_steps_through_time() {
        let (clock, store) = store_at(0);
        let pair = Scope::pair("c", "m");
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let b = store.quota(&pair, hit(clock.now_ms())).await.unwrap();
            lengths.push(b.until_ms - b.since_ms);
            // A second 429 inside the open block changes nothing.
            clock.advance_ms(1);
            assert_eq!(store.quota(&pair, hit(clock.now_ms())).await.unwrap(), b);
            clock.set_ms(b.until_ms);
        }
        assert_eq!(lengths, vec![1_000, 2_000, 4_000, 8_000]);
        // The level lapses a cap's length after its last block ended.
        clock.advance_ms(1_800_000);
        assert_eq!(store.quota_level(&pair).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_long_block_is_followed_by_one_probe() {
        let (clock, store) = store_at(0);
        let (cred, pair) = (Scope::credential("c"), Scope::pair("c", "m"));
        store.put(&pair, block(0, 60_000)).await.unwrap();
        let during = store.confirm(&cred, &pair, 5_000).await.unwrap();
        assert!(during.pair.is_some() && matches!(during.probe, Probe::None));
        clock.set_ms(60_001);
        let first = store.confirm(&cred, &pair, 5_000).await.unwrap();
        let Probe::Claimed(claim) = first.probe else {
            panic!("the first request after the block probes it: {first:?}")
        };
        assert!(matches!(
            store.confirm(&cred, &pair, 5_000).await.unwrap().probe,
            Probe::Held { .. }
        ));
        // Given back (its client left): the next request probes.
        store.release(claim);
        let again = store.confirm(&cred, &pair, 5_000).await.unwrap();
        assert!(matches!(again.probe, Probe::Claimed(_)));
        // A claim whose request never settles it lapses.
        clock.advance_ms(5_001);
        assert!(matches!(
            store.confirm(&cred, &pair, 5_000).await.unwrap().probe,
            Probe::Claimed(_)
        ));
        // The probe served: nothing is owed any more.
        store.succeed(&pair, clock.now_ms()).await.unwrap();
        assert!(matches!(
            store.confirm(&cred, &pair, 5_000).await.unwrap().probe,
            Probe::None
        ));
        // A short block owes no probe.
        store
            .put(&pair, block(clock.now_ms(), clock.now_ms() + 59_999))
            .await
            .unwrap();
        clock.advance_ms(60_000);
        assert!(matches!(
            store.confirm(&cred, &pair, 5_000).await.unwrap().probe,
            Probe::None
        ));
    }
}
