//! Keeping a replica and Redis in step: the health check, reconnecting,
//! writing back what Redis did not take, reloading the mirror, and following
//! the other replicas' writes over pub/sub.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value as RedisValue};
use tokio_util::sync::CancellationToken;

use super::scripts::{block_of, stored_since};
use super::{Event, Shared, Unsynced, is_connection_error};
use crate::metrics::Health;
use crate::state::LearnedStore;

/// How often a healthy connection is checked (and unsynced writes retried),
/// and a lost one retried.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// The most blocks one reconcile checks.
const RECONCILE_BATCH: usize = 10_000;

impl Shared {
    pub(super) async fn reconnect(&self) -> Result<(), RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.timeout));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        if let Err(e) = self.write_back(&mut conn).await {
            if is_connection_error(&e) {
                return Err(e);
            }
            // Redis answers but refuses writes: serve from it, and keep
            // what it did not take for the next try.
            self.trouble(&e);
        }
        self.reload_mirror(&mut conn).await?;
        self.conn.store(Some(Arc::new(conn)));
        self.metrics.set_redis(Health::Up);
        Ok(())
    }

    /// Writes what Redis has not taken yet, one entry at a time; an entry
    /// leaves the unsynced list only once Redis has it, so a failure part way
    /// keeps the rest (and anything learned meanwhile) for the next try.
    async fn write_back(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let entries: Vec<_> = self
            .pending()
            .iter()
            .map(|(scope, p)| (scope.clone(), *p))
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let mut written = 0;
        for (scope, entry) in entries {
            let done = match entry.what {
                Unsynced::Block => self.write_back_block(conn, &scope).await,
                Unsynced::Delete { at_ms } => {
                    let age = (self.clock.now_ms() - at_ms).max(0);
                    let mut clear = self.clear.key(self.key(&scope));
                    clear
                        .key(&self.index)
                        .key(self.side_key("probation", &scope))
                        .key(self.side_key("probe", &scope))
                        .arg(age)
                        .arg(&self.channel)
                        .arg(1);
                    bounded(self.timeout, clear.invoke_async::<i64>(conn))
                        .await
                        .map(|_| ())
                }
            };
            done?;
            self.settle(&scope, entry.seq);
            written += 1;
        }
        tracing::info!(
            entries = written,
            "wrote back what Redis had not taken while it was away or refusing writes"
        );
        Ok(())
    }

    async fn write_back_block(
        &self,
        conn: &mut MultiplexedConnection,
        scope: &crate::state::Scope,
    ) -> Result<(), RedisError> {
        let mine = self
            .local
            .get(std::slice::from_ref(scope))
            .await
            .ok()
            .and_then(|mut v| v.pop().flatten());
        let Some(block) = mine else {
            return Ok(()); // Ended (or cleared by a success) meanwhile.
        };
        let ttl = block.until_ms - self.clock.now_ms();
        if ttl <= 0 {
            return Ok(());
        }
        let stood = bounded(self.timeout, self.write_block(conn, scope, &block, ttl)).await?;
        if let Some(stood) = stood {
            let _ = self.local.put(scope, stood).await;
        }
        Ok(())
    }

    /// Replaces the mirror with what Redis holds, keeping what this replica
    /// learned that Redis has not taken yet (learned while this reconnect ran,
    /// or refused by Redis).
    async fn reload_mirror(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let listed = bounded(self.timeout * 4, self.read_index(conn)).await?;
        let mut all: std::collections::HashMap<_, _> = listed.into_iter().collect();
        let unsynced: Vec<_> = self
            .pending()
            .iter()
            .map(|(scope, p)| (scope.clone(), p.what))
            .collect();
        for (scope, what) in unsynced {
            let theirs = all.remove(&scope);
            let kept = match what {
                Unsynced::Block => {
                    let mine = self
                        .local
                        .get(std::slice::from_ref(&scope))
                        .await
                        .ok()
                        .and_then(|mut v| v.pop().flatten());
                    match (theirs, mine) {
                        (Some(t), Some(m)) => Some(t.merge(m)),
                        (t, m) => t.or(m),
                    }
                }
                Unsynced::Delete { at_ms } => theirs.filter(|b| b.since_ms >= at_ms),
            };
            if let Some(b) = kept {
                all.insert(scope, b);
            }
        }
        self.local.replace(all.into_iter().collect());
        Ok(())
    }

    /// Releases the probe claims given back since the last turn; a claim
    /// Redis does not take back now lapses with its TTL.
    async fn give_back(&self, conn: &mut MultiplexedConnection) {
        let claims = std::mem::take(&mut *self.releases.lock().unwrap_or_else(|p| p.into_inner()));
        for claim in claims {
            let mut release = self.release.prepare_invoke();
            for scope in &claim.scopes {
                release.key(self.side_key("probe", scope));
            }
            release.arg(&claim.token);
            if let Err(e) = bounded(self.timeout, release.invoke_async::<i64>(conn)).await {
                tracing::debug!(error = %e, "a probe claim was not released; it lapses with its TTL");
            }
        }
    }

    /// Drops from this replica's view the blocks Redis no longer holds
    /// (deleted by hand, with no event to say so), so such a delete lifts the
    /// block here within a health interval. Costs one MGET of the blocks this
    /// replica knows, not of the keyspace.
    async fn reconcile(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let mine = self.local.list().await.unwrap_or_default();
        if mine.is_empty() {
            return Ok(());
        }
        let mine: Vec<_> = mine.into_iter().take(RECONCILE_BATCH).collect();
        let keys: Vec<String> = mine.iter().map(|(s, _)| self.key(s)).collect();
        let mut mget = redis::cmd("MGET");
        mget.arg(&keys);
        let held = bounded(self.timeout, mget.query_async::<Vec<Option<Vec<u8>>>>(conn)).await?;
        let unsynced: Vec<_> = {
            let pending = self.pending();
            mine.iter().map(|(s, _)| pending.contains_key(s)).collect()
        };
        for (((scope, _), held), unsynced) in mine.iter().zip(held).zip(unsynced) {
            if held.is_none() && !unsynced {
                let _ = self.local.remove(scope).await;
            }
        }
        Ok(())
    }

    /// Keeps the connection healthy: pings it, retries unsynced writes,
    /// reconciles this replica's view, and reconnects after a loss.
    pub(super) async fn health(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.lost.notified() => {}
                () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
            if let Some(conn) = self.conn.load_full() {
                let ok =
                    self.call(|mut c| async move {
                        redis::cmd("PING").query_async::<String>(&mut c).await
                    })
                    .await;
                if ok.is_none() {
                    continue; // `call` noted the loss; the next turn reconnects.
                }
                let mut c = (*conn).clone();
                self.give_back(&mut c).await;
                let pending = self.pending_len.load(std::sync::atomic::Ordering::Relaxed);
                if pending > 0
                    && let Err(e) = self.write_back(&mut c).await
                {
                    self.trouble(&e);
                    continue;
                }
                if let Err(e) = self.reconcile(&mut c).await {
                    self.trouble(&e);
                }
                continue;
            }
            match tokio::time::timeout(self.timeout * 4, self.reconnect()).await {
                Ok(Ok(())) => tracing::info!("Redis is back; shared learned state resumed"),
                Ok(Err(e)) => tracing::debug!(error = %e, "Redis still unreachable"),
                Err(_) => tracing::debug!("Redis still unreachable (timed out)"),
            }
        }
    }

    /// Follows other replicas' writes into the local mirror.
    pub(super) async fn mirror(self: Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                Ok::<_, RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(self.timeout * 4, subscribed).await {
                Ok(Ok(p)) => p,
                _ => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(HEALTH_INTERVAL) => continue,
                    }
                }
            };
            let mut messages = pubsub.into_on_message();
            loop {
                let msg = tokio::select! {
                    () = shutdown.cancelled() => return,
                    msg = messages.next() => msg,
                };
                let Some(msg) = msg else { break };
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                self.apply(&payload).await;
            }
        }
    }

    async fn apply(&self, payload: &str) {
        let Ok(event) = serde_json::from_str::<Event>(payload) else {
            return;
        };
        let Some(scope) = self.scope_of(&event.key) else {
            return;
        };
        if event.deleted {
            let _ = self.local.remove(&scope).await;
            return;
        }
        let now = self.clock.now_ms();
        let Some(value) = event.value else { return };
        let since = stored_since(value.as_bytes());
        let Some(block) = block_of(
            &RedisValue::BulkString(value.into_bytes()),
            event.ttl_ms,
            now,
        ) else {
            return;
        };
        if block.replica != self.replica
            && let Some(since) = since
        {
            // Redis' clock against this replica's: the same host in tests
            // and benchmarks, where the figure is read.
            self.metrics
                .propagation((now - since).max(0) as f64 / 1_000.0);
        }
        let _ = self.local.put(&scope, block).await;
    }
}

/// A command under the Redis timeout, a timeout counting as a lost connection.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis timed out",
        ))),
    }
}
