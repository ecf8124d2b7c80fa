//! The Redis learned-state store of cluster mode: the contract's key layout,
//! every write one atomic script on Redis' own clock, a short timeout on every
//! call, and a local mirror that keeps the replica serving when Redis does not.
//!
//! Reads go to Redis on every request (one pipelined round trip for all of a
//! route's keys), so a block written by any replica, or by hand, is seen by
//! the next request anywhere. Each write is also applied to a local
//! [`MemoryStore`], which pub/sub keeps in step with the other replicas'
//! writes. A write Redis does not take, for whatever reason (unreachable,
//! timed out, out of memory, read-only after a failover), is kept in the
//! mirror and in an unsynced list: this replica honours it on every read, and
//! writes it to Redis as soon as Redis takes writes again (see `sync`).
//! Blocks are listed from an index (a sorted set under the prefix), never by
//! scanning the keyspace.

mod limits;
mod replicas;
pub use limits::{Ask, Counted, Spend};
mod scripts;
mod sync;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Script, Value as RedisValue};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Affinity, Block, Claim, Confirmation, LearnedStore, MemoryStore, PROBATION_MS, Probe, QuotaHit,
    Reason, Scope, SideState, StoreError, View,
};
use crate::clock::SharedClock;
use crate::metrics::{Health, Metrics, RedisFailure};
use crate::routing::cooldown;
use scripts::{present as present_block, stands};

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

/// Why a scope still has to be written to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsynced {
    /// A block Redis has not taken; the mirror holds this replica's copy.
    Block,
    /// A delete asked for (by the admin API) while Redis did not answer, at
    /// this replica's time `at_ms`: blocks that started after it are spared.
    Delete { at_ms: i64 },
}

/// One unsynced scope; `seq` tells a write-back whether the entry changed
/// while it was being written.
#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u64,
    what: Unsynced,
}

/// Cheap to clone: every clone shares one connection and one local view.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    /// The live connection; `None` while Redis is unreachable.
    conn: ArcSwapOption<MultiplexedConnection>,
    prefix: String,
    channel: String,
    /// The sorted set of block keys by end time: what listings read instead of a scan.
    index: String,
    timeout: Duration,
    replica: String,
    /// This replica's own view: follows Redis while it answers, stands in when it does not.
    local: MemoryStore,
    /// What Redis has not taken yet; kept until a write of it succeeds.
    pending: Mutex<HashMap<Scope, Pending>>,
    /// `pending.len()`, readable without the lock on every routing read.
    pending_len: AtomicUsize,
    next_seq: AtomicU64,
    /// Pairs the last read found with neither block nor quota ladder: a
    /// success on one of them has nothing to clear, so it costs no write.
    /// Any write on a pair takes it out.
    clean: Mutex<HashSet<Scope>>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Wakes the health task when a call finds Redis gone, or a probe claim
    /// waits to be released.
    lost: Notify,
    /// Probe claims given back, released by the health task.
    releases: Mutex<Vec<Claim>>,
    put: Script,
    quota: Script,
    clear: Script,
    release: Script,
    withdraw: Script,
    /// Counts a request against a key's limit (`limits`).
    admit: Script,
    spend: Script,
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
            index: format!("{prefix}index:blocks"),
            timeout,
            replica: replica.to_string(),
            local: MemoryStore::new(clock.clone()),
            pending: Mutex::default(),
            pending_len: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
            clean: Mutex::default(),
            clock,
            metrics,
            lost: Notify::new(),
            releases: Mutex::default(),
            put: Script::new(scripts::PUT),
            quota: Script::new(scripts::QUOTA),
            clear: Script::new(scripts::CLEAR),
            release: Script::new(scripts::RELEASE),
            withdraw: Script::new(scripts::WITHDRAW),
            admit: limits::admit_script(),
            spend: limits::spend_script(),
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

    /// How many blocks and deletes this replica holds that Redis has not taken yet.
    pub fn unsynced(&self) -> usize {
        self.shared.pending_len.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn key(&self, scope: &Scope) -> String {
        self.keyed("block", scope)
    }

    /// `{prefix}{kind}:cred:{id}` or `{prefix}{kind}:model:{id}:{upstream}`:
    /// a scope's block, probation (it came out of a long block and awaits
    /// its probe) or probe claim.
    fn keyed(&self, kind: &str, scope: &Scope) -> String {
        let mut key = String::with_capacity(64);
        self.write_key(&mut key, kind, scope);
        key
    }

    /// [`Shared::keyed`] into `buf`, built by hand: keys are made on every
    /// request, and `format!` costs several times as much.
    fn write_key(&self, buf: &mut String, kind: &str, scope: &Scope) {
        buf.clear();
        buf.push_str(&self.prefix);
        buf.push_str(kind);
        match scope {
            Scope::Credential { credential_id } => {
                buf.push_str(":cred:");
                buf.push_str(credential_id);
            }
            Scope::Pair {
                credential_id,
                upstream_model,
            } => {
                buf.push_str(":model:");
                buf.push_str(credential_id);
                buf.push(':');
                buf.push_str(upstream_model);
            }
        }
    }

    fn side_key(&self, kind: &str, scope: &Scope) -> String {
        self.keyed(kind, scope)
    }

    fn ladder_key(&self, scope: &Scope) -> String {
        let mut key = String::with_capacity(64);
        self.write_ladder_key(&mut key, scope);
        key
    }

    fn write_ladder_key(&self, buf: &mut String, scope: &Scope) {
        buf.clear();
        buf.push_str(&self.prefix);
        buf.push_str("quota:");
        buf.push_str(scope.credential_id());
        if let Scope::Pair { upstream_model, .. } = scope {
            buf.push(':');
            buf.push_str(upstream_model);
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
    /// not do it, for whatever reason; the caller falls back to the local
    /// store (and keeps what it meant to write as unsynced).
    async fn call<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.conn.load_full()?;
        match tokio::time::timeout(self.timeout, op((*conn).clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.trouble(&e);
                None
            }
            Err(_) => {
                self.metrics.redis_failure(RedisFailure::Timeout);
                self.lose("timed out");
                None
            }
        }
    }

    /// Counts a failed command; a lost connection also switches to local state.
    fn trouble(&self, e: &RedisError) {
        if is_connection_error(e) {
            self.metrics.redis_failure(if e.is_timeout() {
                RedisFailure::Timeout
            } else {
                RedisFailure::Connection
            });
            self.lose(&e.to_string());
        } else {
            // OOM, READONLY, MISCONF...: Redis answers but refuses.
            self.metrics.redis_failure(RedisFailure::Refused);
            tracing::warn!(error = %e, "Redis refused a learned-state command; kept on this replica until Redis takes it");
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

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Scope, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `scope` to be written to Redis later.
    fn remember(&self, scope: &Scope, what: Unsynced) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.pending();
        pending.insert(scope.clone(), Pending { seq, what });
        self.counted(pending.len());
    }

    /// Drops `scope` from the unsynced list if it is still the entry `seq`
    /// (a newer one learned meanwhile stays).
    fn settle(&self, scope: &Scope, seq: u64) {
        let mut pending = self.pending();
        if pending.get(scope).is_some_and(|p| p.seq == seq) {
            pending.remove(scope);
        }
        self.counted(pending.len());
    }

    fn forget(&self, scope: &Scope) {
        let mut pending = self.pending();
        pending.remove(scope);
        self.counted(pending.len());
    }

    fn counted(&self, n: usize) {
        self.pending_len.store(n, Ordering::Relaxed);
        self.metrics.set_redis_unsynced(n);
    }

    /// Redis' answer for `scopes`, with what this replica holds that Redis
    /// has not taken yet laid over it: its own blocks are honoured, and a
    /// delete it could not pass on still hides what it deleted.
    async fn overlay(
        &self,
        scopes: &[Scope],
        mut blocks: Vec<Option<Block>>,
    ) -> Vec<Option<Block>> {
        if self.pending_len.load(Ordering::Relaxed) == 0 {
            return blocks;
        }
        let unsynced: Vec<(usize, Unsynced)> = {
            let pending = self.pending();
            scopes
                .iter()
                .enumerate()
                .filter_map(|(i, s)| pending.get(s).map(|p| (i, p.what)))
                .collect()
        };
        for (i, what) in unsynced {
            match what {
                Unsynced::Block => {
                    let mine = self.local.get(std::slice::from_ref(&scopes[i])).await;
                    if let Ok(mut mine) = mine
                        && let Some(mine) = mine.pop().flatten()
                    {
                        blocks[i] = Some(match blocks[i].take() {
                            Some(theirs) => theirs.merge(mine),
                            None => mine,
                        });
                    }
                }
                Unsynced::Delete { at_ms } => {
                    if blocks[i].as_ref().is_some_and(|b| b.since_ms < at_ms) {
                        blocks[i] = None;
                    }
                }
            }
        }
        blocks
    }

    /// The routing read: the blocks of `keys`, and whether each of
    /// `ladders` exists, in one MGET; the TTLs of the keys found (rare: a
    /// pick is confirmed unblocked far more often than not) in a second round
    /// trip. A key Redis returns has not expired, so it blocks, for its TTL,
    /// whatever its value says.
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
        let (found, exists) = values.split_at(keys.len().min(values.len()));
        let present: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_some()).collect();
        let mut ttls = vec![-2i64; found.len()];
        if !present.is_empty() {
            let mut pipe = redis::pipe();
            for &i in &present {
                pipe.cmd("PTTL").arg(&keys[i]);
            }
            let read: Vec<i64> = pipe.query_async(conn).await?;
            for (&i, ttl) in present.iter().zip(read) {
                ttls[i] = ttl;
            }
        }
        let now = self.clock.now_ms();
        let blocks = found
            .iter()
            .zip(&ttls)
            .map(|(v, ttl)| {
                v.as_deref()
                    .and_then(|bytes| present_block(bytes, *ttl, now))
            })
            .collect();
        Ok((blocks, exists.iter().map(Option::is_some).collect()))
    }

    /// `command` over the keys a pick is confirmed by, in the order
    /// [`Shared::blocks_of`] reads them: both blocks, the pair's ladder,
    /// both probations, both claims; built in one buffer.
    fn confirm_keys(&self, command: &str, scopes: &[&Scope; 2]) -> redis::Cmd {
        let mut cmd = redis::Cmd::with_capacity(8, 768);
        cmd.arg(command);
        let mut buf = String::with_capacity(96);
        for kind in ["block", "quota", "probation", "probe"] {
            if kind == "quota" {
                self.write_ladder_key(&mut buf, scopes[1]);
                cmd.arg(buf.as_str());
                continue;
            }
            for scope in scopes {
                self.write_key(&mut buf, kind, scope);
                cmd.arg(buf.as_str());
            }
        }
        cmd
    }

    /// The confirm read's answer as blocks (their TTLs fetched only for the
    /// ones found: rare) and whether each of the other keys exists.
    async fn blocks_of(
        &self,
        conn: &mut MultiplexedConnection,
        scopes: &[&Scope; 2],
        values: &[Option<Vec<u8>>],
    ) -> Result<(Vec<Option<Block>>, Vec<bool>), RedisError> {
        let (found, rest) = values.split_at(2.min(values.len()));
        let mut ttls = [-2i64; 2];
        if found.iter().any(Option::is_some) {
            let mut pipe = redis::pipe();
            for (scope, value) in scopes.iter().zip(found) {
                if value.is_some() {
                    pipe.cmd("PTTL").arg(self.key(scope));
                }
            }
            let mut read: Vec<i64> = pipe.query_async(conn).await?;
            read.reverse();
            for (ttl, value) in ttls.iter_mut().zip(found) {
                if value.is_some() {
                    *ttl = read.pop().unwrap_or(-2);
                }
            }
        }
        let now = self.clock.now_ms();
        let blocks = found
            .iter()
            .zip(ttls)
            .map(|(v, ttl)| {
                v.as_deref()
                    .and_then(|bytes| present_block(bytes, ttl, now))
            })
            .collect();
        Ok((blocks, rest.iter().map(Option::is_some).collect()))
    }

    /// Every block the index names, with its TTL: what the admin API and the
    /// mirror's reload show. Index entries whose key is gone (deleted by
    /// hand) are dropped from the index on the way.
    async fn read_index(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Vec<(Scope, Block)>, RedisError> {
        let keys: Vec<String> = redis::cmd("ZRANGE")
            .arg(&self.index)
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("GET").arg(k).cmd("PTTL").arg(k);
        }
        let values: Vec<RedisValue> = pipe.query_async(conn).await?;
        let now = self.clock.now_ms();
        let mut gone = Vec::new();
        let mut all = Vec::new();
        for (key, pair) in keys.iter().zip(values.chunks(2)) {
            let block = match pair {
                [value, RedisValue::Int(ttl)] => scripts::block_of(value, *ttl, now),
                _ => None,
            };
            match (self.scope_of(key), block) {
                (Some(scope), Some(block)) => all.push((scope, block)),
                _ => gone.push(key),
            }
        }
        if !gone.is_empty() {
            redis::cmd("ZREM")
                .arg(&self.index)
                .arg(gone)
                .query_async::<i64>(conn)
                .await?;
        }
        Ok(all)
    }

    /// Records whether a pair was found with nothing to clear (no block,
    /// ladder, probation or claim): a success on it then writes nothing.
    fn note_clean(&self, pair: &Scope, clean: bool) {
        let mut set = self.clean.lock().unwrap_or_else(|p| p.into_inner());
        if clean {
            if !set.contains(pair) {
                set.insert(pair.clone());
            }
        } else {
            set.remove(pair);
        }
    }

    /// Claims the probe of the `awaiting` scopes (indices into `scopes`)
    /// for this request, unless another request holds a claim.
    async fn claim(
        &self,
        scopes: &[&Scope; 2],
        awaiting: &[usize],
        found: &[bool],
        side: &[String],
        ttl_ms: u64,
    ) -> Probe {
        // side: [probation cred, probation pair, probe cred, probe pair]
        let held = Probe::Held {
            reason: Reason::UpstreamError,
        };
        if awaiting.iter().any(|&i| found.get(3 + i) == Some(&true)) {
            return held;
        }
        let token = format!("{}/{}", self.replica, uuid::Uuid::new_v4());
        let claims: Vec<&String> = awaiting.iter().map(|&i| &side[2 + i]).collect();
        let won = self
            .call(|mut c| {
                let token = &token;
                let claims = &claims;
                async move {
                    let mut pipe = redis::pipe();
                    for k in claims {
                        pipe.cmd("SET")
                            .arg(*k)
                            .arg(token)
                            .arg("NX")
                            .arg("PX")
                            .arg(ttl_ms.max(1));
                    }
                    let answers: Vec<Option<String>> = pipe.query_async(&mut c).await?;
                    Ok(answers.iter().all(Option::is_some))
                }
            })
            .await;
        let claim = Claim {
            scopes: awaiting.iter().map(|&i| scopes[i].clone()).collect(),
            token,
        };
        match won {
            Some(true) => Probe::Claimed(claim),
            Some(false) => {
                // Another request won one of them first: give back what we got.
                self.releases
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(claim);
                self.lost.notify_one();
                held
            }
            // Redis did not answer: route as an ordinary request.
            None => Probe::None,
        }
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

    /// Writes one block with the PUT script; the block that stands, on this replica's clock.
    async fn write_block(
        &self,
        conn: &mut MultiplexedConnection,
        scope: &Scope,
        block: &Block,
        ttl_ms: i64,
    ) -> Result<Option<Block>, RedisError> {
        let result = self
            .put
            .key(self.key(scope))
            .key(&self.index)
            .key(self.side_key("probation", scope))
            .key(self.side_key("probe", scope))
            .arg(block.reason.as_str())
            .arg(block.status)
            .arg(&block.message)
            .arg(&block.replica)
            .arg(ttl_ms)
            .arg(&self.channel)
            .arg(PROBATION_MS)
            .arg(block.until_ms.saturating_sub(block.since_ms))
            .invoke_async::<RedisValue>(conn)
            .await?;
        Ok(stands(&result, self.clock.now_ms()))
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

#[async_trait]
impl LearnedStore for RedisStore {
    async fn get(&self, scopes: &[Scope]) -> Result<Vec<Option<Block>>, StoreError> {
        let s = &self.shared;
        let keys: Vec<String> = scopes.iter().map(|sc| s.key(sc)).collect();
        let read = s
            .call(|mut c| async move { s.read_with(&mut c, &keys, &[]).await })
            .await;
        match read {
            Some((blocks, _)) => {
                // What Redis holds that this replica's view lacks (a key
                // written by hand: no event told of it) joins the view.
                for (scope, block) in scopes.iter().zip(&blocks) {
                    if let Some(block) = block
                        && s.local.peek(scope).is_none()
                    {
                        let _ = s.local.put(scope, block.clone()).await;
                    }
                }
                Ok(s.overlay(scopes, blocks).await)
            }
            None => s.local.get(scopes).await,
        }
    }

    async fn put(&self, scope: &Scope, block: Block) -> Result<Block, StoreError> {
        let s = &self.shared;
        s.dirty(scope);
        let ttl = block.until_ms - s.clock.now_ms();
        if ttl <= 0 {
            return Ok(block);
        }
        let written = s
            .call(|mut c| {
                let block = &block;
                async move { s.write_block(&mut c, scope, block, ttl).await }
            })
            .await;
        match written.flatten() {
            Some(stood) => s.local.put(scope, stood).await,
            None => {
                let stood = s.local.put(scope, block).await;
                s.remember(scope, Unsynced::Block);
                stood
            }
        }
    }

    async fn quota(&self, pair: &Scope, hit: QuotaHit) -> Result<Block, StoreError> {
        let s = &self.shared;
        s.dirty(pair);
        let h = hit.clone();
        let written = s
            .call(|mut c| async move {
                s.quota
                    .key(s.key(pair))
                    .key(s.ladder_key(pair))
                    .key(&s.index)
                    .key(s.side_key("probation", pair))
                    .key(s.side_key("probe", pair))
                    .arg(h.base_ms)
                    .arg(h.cap_ms)
                    .arg(h.hint_ms.map_or(0, |ms| ms.min(cooldown::MAX_HINT_MS)))
                    .arg(h.status)
                    .arg(&h.message)
                    .arg(&h.replica)
                    .arg(&s.channel)
                    .arg(PROBATION_MS)
                    .invoke_async::<RedisValue>(&mut c)
                    .await
            })
            .await;
        match written.and_then(|r| stands(&r, s.clock.now_ms())) {
            Some(stood) => s.local.put(pair, stood).await,
            None => {
                let stood = s.local.quota(pair, hit).await;
                s.remember(pair, Unsynced::Block);
                stood
            }
        }
    }

    async fn succeed(&self, pair: &Scope, request_started_ms: i64) -> Result<(), StoreError> {
        let s = &self.shared;
        if s.is_clean(pair) {
            return s.local.succeed(pair, request_started_ms).await;
        }
        // The request's age, not its start: Redis judges "started before" on its own clock.
        let age = (s.clock.now_ms() - request_started_ms).max(0);
        let credential = Scope::credential(pair.credential_id());
        s.call(|mut c| async move {
            s.clear
                .key(s.key(pair))
                .key(&s.index)
                .key(s.side_key("probation", pair))
                .key(s.side_key("probe", pair))
                .key(s.ladder_key(pair))
                .key(s.key(&credential))
                .key(s.side_key("probation", &credential))
                .key(s.side_key("probe", &credential))
                .arg(age)
                .arg(&s.channel)
                .arg(0)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
        s.local.succeed(pair, request_started_ms).await
    }

    async fn list(&self) -> Result<Vec<(Scope, Block)>, StoreError> {
        let s = &self.shared;
        match s
            .call(|mut c| async move { s.read_index(&mut c).await })
            .await
        {
            Some(listed) => {
                let mut all: HashMap<Scope, Block> = listed.into_iter().collect();
                // What this replica holds that Redis has not taken yet counts too.
                let unsynced: Vec<Scope> = s.pending().keys().cloned().collect();
                for scope in unsynced {
                    let theirs = all.remove(&scope);
                    let mut shown = s.overlay(std::slice::from_ref(&scope), vec![theirs]).await;
                    if let Some(b) = shown.pop().flatten() {
                        all.insert(scope, b);
                    }
                }
                let mut all: Vec<_> = all.into_iter().collect();
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
                let (n, _, _, _): (i64, i64, i64, i64) = redis::pipe()
                    .cmd("DEL")
                    .arg(&key)
                    // Lifted by hand: no probe is owed either.
                    .cmd("DEL")
                    .arg(s.side_key("probation", scope))
                    .arg(s.side_key("probe", scope))
                    .cmd("ZREM")
                    .arg(&s.index)
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
        match removed {
            Some(removed) => {
                s.forget(scope);
                Ok(removed || local)
            }
            None => {
                // Passed on to Redis when it takes writes again, so the
                // reload that follows does not bring the block back.
                s.remember(
                    scope,
                    Unsynced::Delete {
                        at_ms: s.clock.now_ms(),
                    },
                );
                Ok(local)
            }
        }
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

    async fn side_state(&self, scopes: &[Scope]) -> Result<Vec<SideState>, StoreError> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.shared;
        let mut mget = redis::cmd("MGET");
        for scope in scopes {
            mget.arg(s.ladder_key(scope))
                .arg(s.side_key("probation", scope))
                .arg(s.side_key("probe", scope));
        }
        let read = s
            .call(|mut c| async move { mget.query_async::<Vec<Option<String>>>(&mut c).await })
            .await;
        match read {
            Some(values) if values.len() == scopes.len() * 3 => Ok(values
                .chunks_exact(3)
                .map(|v| SideState {
                    quota_level: v[0].as_deref().and_then(|l| l.parse().ok()).unwrap_or(0),
                    awaiting_probe: v[1].is_some(),
                    probe_held: v[2].is_some(),
                })
                .collect()),
            _ => s.local.side_state(scopes).await,
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

    fn peek(&self, scope: &Scope) -> Option<Block> {
        self.shared.local.peek(scope)
    }

    async fn confirm(
        &self,
        credential: &Scope,
        pair: &Scope,
        claim_ttl_ms: u64,
    ) -> Result<Confirmation, StoreError> {
        let s = &self.shared;
        let scopes = [credential, pair];
        // One EXISTS over both blocks, the pair's ladder, both probations and
        // both claims: on the success path none is set, and one integer is
        // the whole answer (an MGET's seven nils cost redis-rs's parser some
        // 7,000 instructions). Only when one is set are they read.
        let read = s
            .call(|mut c| async move {
                let set: i64 = s
                    .confirm_keys("EXISTS", &scopes)
                    .query_async(&mut c)
                    .await?;
                if set == 0 {
                    return Ok((vec![None, None], vec![false; 5]));
                }
                let values: Vec<Option<Vec<u8>>> =
                    s.confirm_keys("MGET", &scopes).query_async(&mut c).await?;
                s.blocks_of(&mut c, &scopes, &values).await
            })
            .await;
        let Some((blocks, found)) = read else {
            return s.local.confirm(credential, pair, claim_ttl_ms).await;
        };
        let blocks = s.overlay(&[credential.clone(), pair.clone()], blocks).await;
        s.note_clean(
            pair,
            blocks.get(1).is_some_and(Option::is_none) && found.iter().all(|f| !f),
        );
        for (scope, block) in scopes.iter().zip(&blocks) {
            if let Some(block) = block
                && s.local.peek(scope).is_none()
            {
                let _ = s.local.put(scope, block.clone()).await;
            }
        }
        let (credential_block, pair_block) = (blocks[0].clone(), blocks[1].clone());
        let mut probe = Probe::None;
        // found: [ladder, probation cred, probation pair, probe cred, probe pair]
        let awaiting: Vec<usize> = (0..2)
            .filter(|&i| found.get(1 + i) == Some(&true))
            .collect();
        if credential_block.is_none() && pair_block.is_none() && !awaiting.is_empty() {
            let side: Vec<String> = ["probation", "probe"]
                .iter()
                .flat_map(|kind| scopes.iter().map(|sc| s.keyed(kind, sc)))
                .collect();
            probe = s
                .claim(&scopes, &awaiting, &found, &side, claim_ttl_ms)
                .await;
        }
        Ok(Confirmation {
            credential: credential_block,
            pair: pair_block,
            probe,
        })
    }

    async fn withdraw(&self, scope: &Scope, written: &Block) -> Result<bool, StoreError> {
        let s = &self.shared;
        let withdrawn = s
            .call(|mut c| async move {
                s.withdraw
                    .key(s.key(scope))
                    .key(&s.index)
                    .key(s.side_key("probation", scope))
                    .key(s.side_key("probe", scope))
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

    fn release(&self, claim: Claim) {
        let s = &self.shared;
        s.releases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(claim);
        s.lost.notify_one();
    }

    fn view(&self) -> View {
        if self.is_connected() {
            View::Shared {
                unsynced: self.unsynced(),
            }
        } else {
            View::Local {
                unsynced: self.unsynced(),
            }
        }
    }
}
