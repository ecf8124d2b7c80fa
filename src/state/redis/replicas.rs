//! Which replicas are up, for the console: each replica writes its status
//! every few seconds under `{prefix}replica:{id}` (with a TTL) and its id
//! into the sorted set `{prefix}replicas`, scored by Redis' own clock. A
//! listing prunes the ids not seen for a while and reads the rest: one
//! call, whatever else the keyspace holds.

use std::sync::LazyLock;

use redis::Script;

use super::RedisStore;

/// KEYS: the sorted set, this replica's status key. ARGV: the replica's
/// id, its status, how long it counts as up without a new heartbeat (ms).
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 10)
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// KEYS: the sorted set. ARGV: the status keys' prefix, how long a replica
/// counts as up (ms). Returns {status, ms since its heartbeat, ...}.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local ids = redis.call('ZRANGE', KEYS[1], 0, 999, 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  local status = redis.call('GET', ARGV[1] .. ids[i])
  if status then
    out[#out + 1] = status
    out[#out + 1] = tostring(now - tonumber(ids[i + 1]))
  end
end
return out
",
    )
});

impl RedisStore {
    fn replicas_key(&self) -> String {
        format!("{}replicas", self.shared.prefix)
    }

    /// Writes this replica's status (JSON), up for `up_ms` unless renewed.
    /// False when Redis did not take it.
    pub async fn heartbeat(&self, replica: &str, status: &str, up_ms: u64) -> bool {
        let keys = [
            self.replicas_key(),
            format!("{}replica:{replica}", self.shared.prefix),
        ];
        let done: Option<i64> = self
            .shared
            .call(|mut c| async move {
                HEARTBEAT
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(replica)
                    .arg(status)
                    .arg(up_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        done.is_some()
    }

    /// Every replica up: its status (JSON) and the ms since its heartbeat.
    /// `None` when Redis did not answer.
    pub async fn replicas(&self, up_ms: u64) -> Option<Vec<(String, u64)>> {
        let set = self.replicas_key();
        let prefix = format!("{}replica:", self.shared.prefix);
        let flat: Vec<String> = self
            .shared
            .call(|mut c| async move {
                LIST.key(&set)
                    .arg(&prefix)
                    .arg(up_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(
            flat.chunks_exact(2)
                .map(|p| (p[0].clone(), p[1].parse().unwrap_or(0)))
                .collect(),
        )
    }
}
