//! The Redis learned-state store of cluster mode: the contract's key layout,
//! every write one atomic script, a short timeout on every call, and a local
//! mirror that keeps the replica serving when Redis does not answer.
//!
//! Reads go to Redis on every request (one pipelined round trip for all of a
//! route's keys), so a block written by any replica, or by hand, is seen by
//! the next request anywhere. Each write is also applied to a local
//! [`MemoryStore`], which pub/sub keeps in step with the other replicas'
//! writes. While Redis is unreachable the local store answers; what is learned
//! meanwhile is written back when Redis returns, and the mirror is reloaded.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Script, Value as RedisValue};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Affinity, Block, LearnedStore, MemoryStore, QuotaHit, Reason, Scope, StoreError};
use crate::clock::SharedClock;
use crate::metrics::{Health, Metrics};
use crate::routing::cooldown;

/// Writes `ARGV[1]` with a TTL of `ARGV[2]` ms unless the key already lasts
/// as long (or has no TTL): a block is only ever extended.
const PUT: &str = r"
local ttl = tonumber(ARGV[2])
local cur = redis.call('PTTL', KEYS[1])
if cur == -1 or cur >= ttl then
  return {redis.call('GET', KEYS[1]), cur}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('PUBLISH', ARGV[3], cjson.encode({key = KEYS[1], ttl_ms = ttl, value = ARGV[1]}))
return {ARGV[1], ttl}
";

/// One 429 on a pair: the same rules as `routing::cooldown::quota_step`,
/// applied atomically. KEYS: block, ladder. ARGV: now, base, cap, hint,
/// status, message, replica, channel.
const QUOTA: &str = r"
local now = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local hint = tonumber(ARGV[4])
local cur = redis.call('GET', KEYS[1])
local cur_ttl = redis.call('PTTL', KEYS[1])
local open_quota = false
if cur then
  local ok, b = pcall(cjson.decode, cur)
  if ok and type(b) == 'table' and b['reason'] == 'quota' then open_quota = true end
end
local level = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local step = 0
if hint > 0 then
  step = hint
elseif open_quota then
  if level < 1 then level = 1 end
else
  level = level + 1
  step = math.min(base * (2 ^ math.min(level - 1, 62)), cap)
end
local len = math.floor(step)
local value = cur
local ttl = cur_ttl
if not (cur and (cur_ttl == -1 or cur_ttl >= len)) then
  value = cjson.encode({reason = 'quota', status = tonumber(ARGV[5]), message = ARGV[6],
    replica = ARGV[7], since_ms = now, until_ms = now + len})
  ttl = len
  redis.call('SET', KEYS[1], value, 'PX', len)
  redis.call('PUBLISH', ARGV[8], cjson.encode({key = KEYS[1], ttl_ms = len, value = value}))
end
local keep = cap
if ttl > 0 then keep = ttl + cap end
redis.call('SET', KEYS[2], level, 'PX', math.floor(keep))
return {value, ttl}
";

/// A success: resets the ladder, and removes the block if it started before
/// the request. KEYS: block, ladder. ARGV: request start, channel.
const SUCCEED: &str = r"
redis.call('DEL', KEYS[2])
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, b = pcall(cjson.decode, cur)
  if ok and type(b) == 'table' and tonumber(b['since_ms']) and tonumber(b['since_ms']) < tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    redis.call('PUBLISH', ARGV[2], cjson.encode({key = KEYS[1], deleted = true}))
    return 1
  end
end
return 0
";

/// How often a healthy connection is checked, and a lost one retried.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// What replicas publish on every write, so each mirror follows.
#[derive(Debug, Serialize, Deserialize)]
struct Event {
    key: String,
    #[serde(default)]
    ttl_ms: i64,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    deleted: bool,
}

pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    /// The live connection; `None` while Redis is unreachable.
    conn: ArcSwapOption<MultiplexedConnection>,
    prefix: String,
    channel: String,
    timeout: Duration,
    replica: String,
    /// This replica's own view: follows Redis while it answers, stands in when it does not.
    local: MemoryStore,
    /// Scopes learned while Redis was unreachable, written back when it returns.
    pending: Mutex<HashSet<Scope>>,
    /// Pairs the last read found with neither block nor quota ladder: a
    /// success on one of them has nothing to clear, so it costs no write.
    /// Any write on a pair takes it out.
    clean: Mutex<HashSet<Scope>>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Wakes the health task when a call finds Redis gone.
    lost: Notify,
    put: Script,
    quota: Script,
    succeed: Script,
}

impl RedisStore {
    /// Builds the store and tries Redis once; an unreachable Redis is not an
    /// error (the replica starts on its own learned state and keeps trying).
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        replica: &str,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let invalid =
            |e: RedisError| StoreError::Unavailable(format!("REDIS_URL is not valid: {e}"));
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(invalid)?;
        // Each request's read is a small command: send it at once, not held
        // back by Nagle's algorithm behind the previous one's ACK.
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = redis::Client::open(info.set_tcp_settings(tcp)).map_err(invalid)?;
        let shared = Arc::new(Shared {
            client,
            conn: ArcSwapOption::empty(),
            prefix: prefix.to_string(),
            channel: format!("{prefix}blocks"),
            timeout,
            replica: replica.to_string(),
            local: MemoryStore::new(clock.clone()),
            pending: Mutex::default(),
            clean: Mutex::default(),
            clock,
            metrics,
            lost: Notify::new(),
            put: Script::new(PUT),
            quota: Script::new(QUOTA),
            succeed: Script::new(SUCCEED),
        });
        if let Err(e) = shared.reconnect().await {
            tracing::warn!(error = %e, "Redis unreachable at start; serving on this replica's own learned state");
            shared.metrics.set_redis(Health::Down);
        }
        Ok(Self { shared })
    }

    /// Starts the health and mirror tasks on `tasks`; they stop with `shutdown`.
    pub fn spawn_tasks(&self, tasks: &TaskTracker, shutdown: CancellationToken) {
        tasks.spawn(self.shared.clone().health(shutdown.clone()));
        tasks.spawn(self.shared.clone().mirror(shutdown));
    }

    /// Whether Redis answered the last call.
    pub fn is_connected(&self) -> bool {
        self.shared.conn.load().is_some()
    }
}

impl Shared {
    fn key(&self, scope: &Scope) -> String {
        match scope {
            Scope::Credential { credential_id } => {
                format!("{}block:cred:{credential_id}", self.prefix)
            }
            Scope::Pair {
                credential_id,
                upstream_model,
            } => format!(
                "{}block:model:{credential_id}:{upstream_model}",
                self.prefix
            ),
        }
    }

    fn ladder_key(&self, scope: &Scope) -> String {
        match scope {
            Scope::Credential { credential_id } => format!("{}quota:{credential_id}", self.prefix),
            Scope::Pair {
                credential_id,
                upstream_model,
            } => format!("{}quota:{credential_id}:{upstream_model}", self.prefix),
        }
    }

    fn scope_of(&self, key: &str) -> Option<Scope> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("block:")?;
        if let Some(id) = rest.strip_prefix("cred:") {
            return Some(Scope::credential(id));
        }
        let (id, upstream) = rest.strip_prefix("model:")?.split_once(':')?;
        Some(Scope::pair(id, upstream))
    }

    /// Runs one call against Redis within the timeout. `None` means Redis did
    /// not answer (the caller falls back to the local store).
    async fn call<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.conn.load_full()?;
        match tokio::time::timeout(self.timeout, op((*conn).clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) if is_connection_error(&e) => {
                self.lose(&e.to_string());
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis refused a learned-state command");
                None
            }
            Err(_) => {
                self.lose("timed out");
                None
            }
        }
    }

    fn lose(&self, why: &str) {
        if self.conn.swap(None).is_some() {
            tracing::warn!(
                reason = why,
                "Redis unreachable; serving on this replica's own learned state"
            );
            self.metrics.set_redis(Health::Down);
            self.lost.notify_one();
        }
    }

    async fn reconnect(&self) -> Result<(), RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.timeout));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        self.write_back(&mut conn).await?;
        self.reload_mirror(&mut conn).await?;
        self.conn.store(Some(Arc::new(conn)));
        self.metrics.set_redis(Health::Up);
        Ok(())
    }

    /// Writes what this replica learned while Redis was away.
    async fn write_back(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let scopes: Vec<Scope> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        if scopes.is_empty() {
            return Ok(());
        }
        let blocks = self.local.get(&scopes).await.unwrap_or_default();
        let now = self.clock.now_ms();
        let mut written = 0;
        for (scope, block) in scopes.iter().zip(blocks) {
            let Some(block) = block else { continue };
            let ttl = block.until_ms - now;
            if ttl <= 0 {
                continue;
            }
            let value = serde_json::to_string(&block).unwrap_or_default();
            self.put
                .key(self.key(scope))
                .arg(value)
                .arg(ttl)
                .arg(&self.channel)
                .invoke_async::<RedisValue>(conn)
                .await?;
            written += 1;
        }
        tracing::info!(
            blocks = written,
            "wrote back what was learned while Redis was away"
        );
        Ok(())
    }

    async fn reload_mirror(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let all = self.scan(conn).await?;
        self.local.replace(all);
        Ok(())
    }

    /// Every block in Redis.
    async fn scan(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Vec<(Scope, Block)>, RedisError> {
        let pattern = format!("{}block:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let blocks = self.read(conn, &keys).await?;
        Ok(keys
            .iter()
            .zip(blocks)
            .filter_map(|(k, b)| Some((self.scope_of(k)?, b?)))
            .collect())
    }

    /// The values and remaining TTLs of `keys`, in one round trip: what the
    /// admin API and the mirror show.
    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[String],
    ) -> Result<Vec<Option<Block>>, RedisError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("GET").arg(k).cmd("PTTL").arg(k);
        }
        let values: Vec<RedisValue> = pipe.query_async(conn).await?;
        let now = self.clock.now_ms();
        Ok(values
            .chunks(2)
            .map(|pair| match pair {
                [value, RedisValue::Int(ttl)] => block_of(value, *ttl, now),
                _ => None,
            })
            .collect())
    }

    /// The routing read: the blocks of `keys` and whether each of `ladders`
    /// exists, in one MGET. A key Redis returns has not expired, so it blocks;
    /// its `until_ms` is taken from the value (TTL and value are written
    /// together), at least a moment from now, so a TTL extended by hand still
    /// blocks and a value that is not ours blocks too.
    async fn read_with(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[String],
        ladders: &[String],
    ) -> Result<(Vec<Option<Block>>, Vec<bool>), RedisError> {
        if keys.is_empty() && ladders.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(keys)
            .arg(ladders)
            .query_async(conn)
            .await?;
        let now = self.clock.now_ms();
        let (blocks, exists) = values.split_at(keys.len().min(values.len()));
        let blocks = blocks
            .iter()
            .map(|v| v.as_deref().map(|bytes| present_block(bytes, now)))
            .collect();
        Ok((blocks, exists.iter().map(Option::is_some).collect()))
    }

    /// Keeps the connection healthy: pings it, and reconnects after a loss.
    async fn health(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.lost.notified() => {}
                () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
            if self.conn.load().is_some() {
                let ok =
                    self.call(|mut c| async move {
                        redis::cmd("PING").query_async::<String>(&mut c).await
                    })
                    .await;
                if ok.is_some() {
                    continue;
                }
            }
            match tokio::time::timeout(self.timeout * 4, self.reconnect()).await {
                Ok(Ok(())) => tracing::info!("Redis is back; shared learned state resumed"),
                Ok(Err(e)) => tracing::debug!(error = %e, "Redis still unreachable"),
                Err(_) => tracing::debug!("Redis still unreachable (timed out)"),
            }
        }
    }

    /// Follows other replicas' writes into the local mirror.
    async fn mirror(self: Arc<Self>, shutdown: CancellationToken) {
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
        let Some(block) = block_of(
            &RedisValue::BulkString(value.into_bytes()),
            event.ttl_ms,
            now,
        ) else {
            return;
        };
        if block.replica != self.replica {
            self.metrics
                .propagation((now - block.since_ms).max(0) as f64 / 1_000.0);
        }
        let _ = self.local.put(&scope, block).await;
    }

    fn dirty(&self, scope: &Scope) {
        self.clean
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(scope);
    }

    fn is_clean(&self, scope: &Scope) -> bool {
        self.clean
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(scope)
    }

    fn remember(&self, scope: &Scope) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope.clone());
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// A stored value and its remaining TTL as a block. The TTL, not `until_ms`,
/// decides expiry; a value that is not a block (written by hand) still blocks.
fn block_of(value: &RedisValue, ttl_ms: i64, now_ms: i64) -> Option<Block> {
    let bytes = match value {
        RedisValue::BulkString(b) => b.as_slice(),
        RedisValue::SimpleString(s) => s.as_bytes(),
        _ => return None,
    };
    let until_ms = match ttl_ms {
        -1 => i64::MAX / 4,
        t if t > 0 => now_ms + t,
        _ => return None,
    };
    let mut block = serde_json::from_slice::<Block>(bytes).unwrap_or_else(|_| Block {
        reason: Reason::UpstreamError,
        status: 0,
        message: "a block value that is not switchyard's JSON".into(),
        replica: String::new(),
        since_ms: now_ms,
        until_ms,
    });
    // The writer's own `until_ms` is kept when the TTL agrees with it (they
    // differ by the round trip); otherwise the TTL's end stands.
    let agrees = (block.until_ms - until_ms).abs() <= TTL_SLACK_MS && block.until_ms > now_ms;
    if !agrees {
        block.until_ms = until_ms;
    }
    Some(block)
}

/// A block Redis still holds, for routing: active whatever its value says.
fn present_block(bytes: &[u8], now_ms: i64) -> Block {
    match serde_json::from_slice::<Block>(bytes) {
        Ok(mut block) => {
            block.until_ms = block.until_ms.max(now_ms + 1);
            block
        }
        Err(_) => Block {
            reason: Reason::UpstreamError,
            status: 0,
            message: "a block value that is not switchyard's JSON".into(),
            replica: String::new(),
            since_ms: now_ms,
            until_ms: now_ms + UNKNOWN_END_MS,
        },
    }
}

/// How long a block whose value gives no end is taken to last, for waits
/// (it keeps blocking for as long as Redis holds it).
const UNKNOWN_END_MS: i64 = 1_000;

/// How far a block's `until_ms` may sit from its TTL's end and still be kept.
const TTL_SLACK_MS: i64 = 1_000;

/// The result of a write script: the value that stands and its TTL.
fn stands(result: &RedisValue, now_ms: i64) -> Option<Block> {
    match result {
        RedisValue::Array(items) => match items.as_slice() {
            [value, RedisValue::Int(ttl)] => block_of(value, *ttl, now_ms),
            _ => None,
        },
        _ => None,
    }
}

#[async_trait]
impl LearnedStore for RedisStore {
    async fn get(&self, scopes: &[Scope]) -> Result<Vec<Option<Block>>, StoreError> {
        let s = &self.shared;
        let keys: Vec<String> = scopes.iter().map(|sc| s.key(sc)).collect();
        // The pairs' ladders ride along in the same round trip, so a success
        // on a pair that has neither block nor ladder needs no write.
        let pairs: Vec<&Scope> = scopes
            .iter()
            .filter(|sc| matches!(sc, Scope::Pair { .. }))
            .collect();
        let ladders: Vec<String> = pairs.iter().map(|sc| s.ladder_key(sc)).collect();
        let read = s
            .call(|mut c| async move {
                let blocks = s.read_with(&mut c, &keys, &ladders).await?;
                Ok(blocks)
            })
            .await;
        match read {
            Some((blocks, laddered)) => {
                let mut clean = s.clean.lock().unwrap_or_else(|p| p.into_inner());
                let mut pair = 0;
                for (scope, block) in scopes.iter().zip(&blocks) {
                    if matches!(scope, Scope::Pair { .. }) {
                        if block.is_none() && !laddered[pair] {
                            // Usually already known clean: no clone then.
                            if !clean.contains(scope) {
                                clean.insert(scope.clone());
                            }
                        } else {
                            clean.remove(scope);
                        }
                        pair += 1;
                    }
                }
                Ok(blocks)
            }
            None => s.local.get(scopes).await,
        }
    }

    async fn put(&self, scope: &Scope, block: Block) -> Result<Block, StoreError> {
        let s = &self.shared;
        s.dirty(scope);
        let now = s.clock.now_ms();
        let ttl = block.until_ms - now;
        if ttl <= 0 {
            return Ok(block);
        }
        let key = s.key(scope);
        let value = serde_json::to_string(&block).unwrap_or_default();
        let written = s
            .call(|mut c| async move {
                s.put
                    .key(key)
                    .arg(value)
                    .arg(ttl)
                    .arg(&s.channel)
                    .invoke_async::<RedisValue>(&mut c)
                    .await
            })
            .await;
        match written.and_then(|r| stands(&r, now)) {
            Some(stood) => s.local.put(scope, stood).await,
            None => {
                s.remember(scope);
                s.local.put(scope, block).await
            }
        }
    }

    async fn quota(&self, pair: &Scope, hit: QuotaHit) -> Result<Block, StoreError> {
        let s = &self.shared;
        s.dirty(pair);
        let (key, ladder) = (s.key(pair), s.ladder_key(pair));
        let h = hit.clone();
        let written = s
            .call(|mut c| async move {
                s.quota
                    .key(key)
                    .key(ladder)
                    .arg(h.now_ms)
                    .arg(h.base_ms)
                    .arg(h.cap_ms)
                    .arg(h.hint_ms.map_or(0, |ms| ms.min(cooldown::MAX_HINT_MS)))
                    .arg(h.status)
                    .arg(&h.message)
                    .arg(&h.replica)
                    .arg(&s.channel)
                    .invoke_async::<RedisValue>(&mut c)
                    .await
            })
            .await;
        match written.and_then(|r| stands(&r, hit.now_ms)) {
            Some(stood) => s.local.put(pair, stood).await,
            None => {
                s.remember(pair);
                s.local.quota(pair, hit).await
            }
        }
    }

    async fn succeed(&self, pair: &Scope, request_started_ms: i64) -> Result<(), StoreError> {
        let s = &self.shared;
        if s.is_clean(pair) {
            return s.local.succeed(pair, request_started_ms).await;
        }
        let (key, ladder) = (s.key(pair), s.ladder_key(pair));
        s.call(|mut c| async move {
            s.succeed
                .key(key)
                .key(ladder)
                .arg(request_started_ms)
                .arg(&s.channel)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
        s.local.succeed(pair, request_started_ms).await
    }

    async fn list(&self) -> Result<Vec<(Scope, Block)>, StoreError> {
        let s = &self.shared;
        match s.call(|mut c| async move { s.scan(&mut c).await }).await {
            Some(mut all) => {
                all.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(all)
            }
            None => s.local.list().await,
        }
    }

    async fn remove(&self, scope: &Scope) -> Result<bool, StoreError> {
        let s = &self.shared;
        let key = s.key(scope);
        let event = serde_json::to_string(&Event {
            key: key.clone(),
            ttl_ms: 0,
            value: None,
            deleted: true,
        })
        .unwrap_or_default();
        let removed = s
            .call(|mut c| async move {
                let (n, _): (i64, i64) = redis::pipe()
                    .cmd("DEL")
                    .arg(&key)
                    .cmd("PUBLISH")
                    .arg(&s.channel)
                    .arg(event)
                    .query_async(&mut c)
                    .await?;
                Ok(n > 0)
            })
            .await;
        let local = s.local.remove(scope).await?;
        Ok(removed.unwrap_or(local))
    }

    async fn quota_level(&self, pair: &Scope) -> Result<u32, StoreError> {
        let s = &self.shared;
        let key = s.ladder_key(pair);
        match s
            .call(|mut c| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<u32>>(&mut c)
                    .await
            })
            .await
        {
            Some(level) => Ok(level.unwrap_or(0)),
            None => s.local.quota_level(pair).await,
        }
    }

    async fn affinity(&self, key: &str) -> Result<Option<Affinity>, StoreError> {
        let s = &self.shared;
        let redis_key = format!("{}affinity:{key}", s.prefix);
        match s
            .call(|mut c| async move {
                redis::cmd("GET")
                    .arg(redis_key)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await
        {
            Some(value) => Ok(value.as_deref().and_then(Affinity::decode)),
            None => s.local.affinity(key).await,
        }
    }

    async fn set_affinity(&self, key: &str, to: &Affinity, ttl_ms: u64) -> Result<(), StoreError> {
        let s = &self.shared;
        // Kept locally too: it answers while Redis does not.
        s.local.set_affinity(key, to, ttl_ms).await?;
        let redis_key = format!("{}affinity:{key}", s.prefix);
        let value = to.encode();
        s.call(|mut c| async move {
            redis::cmd("SET")
                .arg(redis_key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms.max(1))
                .query_async::<()>(&mut c)
                .await
        })
        .await;
        Ok(())
    }

    async fn withdraw(&self, scope: &Scope, written: &Block) -> Result<bool, StoreError> {
        let s = &self.shared;
        let key = s.key(scope);
        let withdrawn = s
            .call(|mut c| async move {
                let script = Script::new(WITHDRAW);
                script
                    .key(key)
                    .arg(written.reason.as_str())
                    .arg(written.status)
                    .arg(&written.message)
                    .arg(&written.replica)
                    .arg(&s.channel)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        // This replica's view follows at once; the others by the event.
        let local = s.local.withdraw(scope, written).await?;
        Ok(withdrawn.map_or(local, |n| n > 0))
    }
}

/// Withdraws a block only while it is still the verdict a request wrote
/// (same reason, status, message and replica; its times are not compared),
/// and tells the mirrors as `remove` does. KEYS: block. ARGV: reason,
/// status, message, replica, channel.
const WITHDRAW: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local ok, b = pcall(cjson.decode, cur)
if not ok or type(b) ~= 'table' then return 0 end
if b['reason'] ~= ARGV[1] or tonumber(b['status']) ~= tonumber(ARGV[2])
  or b['message'] ~= ARGV[3] or b['replica'] ~= ARGV[4] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[5], cjson.encode({key = KEYS[1], deleted = true}))
return 1
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_without_our_json_still_block_until_their_ttl() {
        let b =
            block_of(&RedisValue::BulkString(b"by hand".to_vec()), 5_000, 1_000).expect("blocks");
        assert_eq!(b.until_ms, 6_000);
        let b = block_of(&RedisValue::BulkString(b"x".to_vec()), -1, 0).expect("no TTL blocks");
        assert!(b.until_ms > 1_000_000_000_000);
        assert!(block_of(&RedisValue::Nil, 5_000, 0).is_none());
        assert!(block_of(&RedisValue::BulkString(b"x".to_vec()), -2, 0).is_none());
    }

    #[test]
    fn the_ttl_decides_not_until_ms() {
        let json = br#"{"reason":"quota","status":429,"message":"m","replica":"r","since_ms":0,"until_ms":1}"#;
        let b = block_of(&RedisValue::BulkString(json.to_vec()), 9_000, 100).expect("blocks");
        assert_eq!((b.reason, b.until_ms), (Reason::Quota, 9_100));
    }
}
