//! The shared request counters of keys' limits: one counter per key and UTC
//! minute on Redis' own clock, read and counted by one script, so a limit
//! costs one round trip and replicas whose clocks disagree share windows.

use redis::Script;

use super::RedisStore;

/// KEYS[1]: the key's counter prefix; ARGV[1]: its limit. Returns
/// {admitted, count after, ms to the window's end}. A refused request is
/// not counted, so the count never passes the limit.
const ADMIT: &str = concat!(
    "local t = redis.call('TIME')\n",
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n",
    "local minute = math.floor(now / 60000)\n",
    "local reset = (minute + 1) * 60000 - now\n",
    "local k = KEYS[1] .. minute\n",
    "local n = tonumber(redis.call('GET', k) or '0')\n",
    "if n >= tonumber(ARGV[1]) then return {0, n, reset} end\n",
    "n = redis.call('INCR', k)\n",
    "if n == 1 then redis.call('PEXPIRE', k, 120000) end\n",
    "return {1, n, reset}\n",
);

/// What the shared counter said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub admitted: bool,
    /// Requests counted in the window, this one included when admitted.
    pub count: u64,
    pub reset_ms: i64,
}

impl RedisStore {
    /// Counts one request of the key `name` against `limit` in the current
    /// minute. `None` when Redis did not answer within its timeout: the
    /// caller counts on its own traffic instead.
    pub async fn count_request(&self, name: &str, limit: u64) -> Option<Counted> {
        let s = &self.shared;
        let key = format!("{}rpm:{name}:", s.prefix);
        let script = &s.admit;
        let (admitted, count, reset_ms): (i64, u64, i64) = s
            .call(|mut c| async move { script.key(key).arg(limit).invoke_async(&mut c).await })
            .await?;
        Some(Counted {
            admitted: admitted == 1,
            count,
            reset_ms,
        })
    }
}

pub fn admit_script() -> Script {
    Script::new(ADMIT)
}
