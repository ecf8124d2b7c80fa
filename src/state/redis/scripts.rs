//! The Lua scripts every write runs as, and how stored values become blocks.
//!
//! Every time a script records (`since_ms`, `until_ms`, the index's scores)
//! is Redis' own `TIME`, so the shared store has one clock whatever the
//! replicas' clocks say. A replica turns a stored block into its own clock
//! through the key's TTL: the block ends `PTTL` from now, and started its
//! stored length before that.

use redis::Value as RedisValue;

use crate::state::{Block, Reason};

/// Redis' clock in epoch milliseconds, as a Lua local `now`.
macro_rules! redis_now {
    () => {
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// After a block of `ttl` ms was written on KEYS[1] (index KEYS[idx],
/// probation KEYS[idx + 1], probe claim KEYS[idx + 2]): a long block is
/// followed by one probe, so its scope stays on probation past its end;
/// and a probe that ended in this block is over.
macro_rules! after_block {
    ($idx:literal) => {
        concat!(
            "local function after_block(ttl, length, reason, window)\n",
            "  redis.call('DEL', KEYS[",
            $idx,
            " + 2])\n",
            "  if length >= ",
            "60000",
            " then\n",
            "    local left = redis.call('PTTL', KEYS[",
            $idx,
            " + 1])\n",
            "    if left < ttl + window then redis.call('SET', KEYS[",
            $idx,
            " + 1], reason, 'PX', ttl + window) end\n",
            "  end\n",
            "end\n"
        )
    };
}

// The Lua above spells `PROBE_AFTER_MS` as a literal.
const _: () = assert!(crate::state::PROBE_AFTER_MS == 60_000);

/// Writes a block unless the key already lasts as long (or has no TTL): a
/// block is only ever extended. KEYS: block, index, probation, probe claim.
/// ARGV: reason, status, message, replica, ttl ms, channel, probation window
/// ms, the block's whole length ms (its TTL is what is left of it). Returns
/// the value that stands and its TTL.
pub(super) const PUT: &str = concat!(
    redis_now!(),
    after_block!(2),
    r"
local ttl = tonumber(ARGV[5])
local cur = redis.call('PTTL', KEYS[1])
if cur == -1 or cur >= ttl then
  redis.call('DEL', KEYS[4])
  return {redis.call('GET', KEYS[1]), cur}
end
local value = cjson.encode({reason = ARGV[1], status = tonumber(ARGV[2]), message = ARGV[3],
  replica = ARGV[4], since_ms = now, until_ms = now + ttl})
redis.call('SET', KEYS[1], value, 'PX', ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
after_block(ttl, tonumber(ARGV[8]), ARGV[1], tonumber(ARGV[7]))
redis.call('PUBLISH', ARGV[6], cjson.encode({key = KEYS[1], ttl_ms = ttl, value = value}))
return {value, ttl}
"
);

/// One 429 on a pair: the same rules as `routing::cooldown::quota_step`,
/// applied atomically. KEYS: block, ladder, index, probation, probe claim.
/// ARGV: base, cap, hint, status, message, replica, channel, probation window.
pub(super) const QUOTA: &str = concat!(
    redis_now!(),
    after_block!(3),
    r"
local base = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local hint = tonumber(ARGV[3])
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
  value = cjson.encode({reason = 'quota', status = tonumber(ARGV[4]), message = ARGV[5],
    replica = ARGV[6], since_ms = now, until_ms = now + len})
  ttl = len
  redis.call('SET', KEYS[1], value, 'PX', len)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZADD', KEYS[3], now + len, KEYS[1])
  after_block(len, len, 'quota', tonumber(ARGV[8]))
  redis.call('PUBLISH', ARGV[7], cjson.encode({key = KEYS[1], ttl_ms = len, value = value}))
else
  redis.call('DEL', KEYS[5])
end
local keep = cap
if ttl > 0 then keep = ttl + cap end
redis.call('SET', KEYS[2], level, 'PX', math.floor(keep))
return {value, ttl}
"
);

/// Removes a block if it started before a moment given as an age (`ARGV[1]`
/// ms before Redis' now), so no two clocks are compared: a success clears
/// only blocks older than its request, and a delete made while Redis was
/// away spares blocks learned after it. A scope left without a block awaits
/// no probe: its probation and probe claim go too. KEYS: block, index,
/// probation, probe claim, and for a success also the pair's ladder (reset
/// unconditionally) and the credential's block, probation and claim (lifted
/// when the credential has no block). ARGV: age ms, channel, and `1` when a
/// value that is not switchyard's JSON counts as older.
pub(super) const CLEAR: &str = concat!(
    redis_now!(),
    r"
if KEYS[5] then redis.call('DEL', KEYS[5]) end
local cur = redis.call('GET', KEYS[1])
local cleared = 0
if cur then
  local started = now - tonumber(ARGV[1])
  local older = ARGV[3] == '1'
  local ok, b = pcall(cjson.decode, cur)
  if ok and type(b) == 'table' and tonumber(b['since_ms']) then
    older = tonumber(b['since_ms']) < started
  end
  if not older then return 0 end
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
  redis.call('PUBLISH', ARGV[2], cjson.encode({key = KEYS[1], deleted = true}))
  cleared = 1
end
redis.call('DEL', KEYS[3], KEYS[4])
if KEYS[6] and redis.call('EXISTS', KEYS[6]) == 0 then
  redis.call('DEL', KEYS[7], KEYS[8])
end
return cleared
"
);

/// Withdraws a block only while it is still the verdict a request wrote
/// (same reason, status, message and replica; its times are not compared),
/// with its probation: a verdict withdrawn owes no probe. Tells the mirrors
/// as a delete does. KEYS: block, index, probation, probe claim. ARGV:
/// reason, status, message, replica, channel.
pub(super) const WITHDRAW: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local ok, b = pcall(cjson.decode, cur)
if not ok or type(b) ~= 'table' then return 0 end
if b['reason'] ~= ARGV[1] or tonumber(b['status']) ~= tonumber(ARGV[2])
  or b['message'] ~= ARGV[3] or b['replica'] ~= ARGV[4] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('PUBLISH', ARGV[5], cjson.encode({key = KEYS[1], deleted = true}))
return 1
";

/// Gives a probe claim back if it is still the claimer's. KEYS: the
/// claims. ARGV: the claimer's token.
pub(super) const RELEASE: &str = r"
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end
end
return 0
";

/// How long a block lasts when Redis holds it without a TTL.
const NO_TTL_MS: i64 = i64::MAX / 4;

/// A stored value and its remaining TTL as a block on this replica's clock
/// (`now_ms`). The TTL, not the value's `until_ms`, decides how long it has
/// left; its start is its stored length before its end. A value that is not a
/// block (written by hand) still blocks, for as long as Redis holds it.
pub(super) fn block_of(value: &RedisValue, ttl_ms: i64, now_ms: i64) -> Option<Block> {
    let bytes = match value {
        RedisValue::BulkString(b) => b.as_slice(),
        RedisValue::SimpleString(s) => s.as_bytes(),
        _ => return None,
    };
    present(bytes, ttl_ms, now_ms)
}

/// [`block_of`] for raw bytes.
pub(super) fn present(bytes: &[u8], ttl_ms: i64, now_ms: i64) -> Option<Block> {
    let until_ms = match ttl_ms {
        -1 => NO_TTL_MS,
        t if t > 0 => now_ms.saturating_add(t),
        _ => return None,
    };
    Some(match serde_json::from_slice::<Block>(bytes) {
        Ok(mut block) => {
            let length = block.until_ms.saturating_sub(block.since_ms);
            block.since_ms = if length > 0 && ttl_ms > 0 {
                until_ms.saturating_sub(length).min(now_ms)
            } else {
                now_ms
            };
            block.until_ms = until_ms;
            block
        }
        Err(_) => Block {
            reason: Reason::UpstreamError,
            status: 0,
            message: "a block value that is not switchyard's JSON".into(),
            replica: String::new(),
            since_ms: now_ms,
            until_ms,
        },
    })
}

/// The `since_ms` a value was stored with, on Redis' clock (for the
/// propagation metric); `None` for a value that is not a block.
pub(super) fn stored_since(bytes: &[u8]) -> Option<i64> {
    serde_json::from_slice::<Block>(bytes)
        .ok()
        .map(|b| b.since_ms)
}

/// The result of a write script: the value that stands and its TTL.
pub(super) fn stands(result: &RedisValue, now_ms: i64) -> Option<Block> {
    match result {
        RedisValue::Array(items) => match items.as_slice() {
            [value, RedisValue::Int(ttl)] => block_of(value, *ttl, now_ms),
            _ => None,
        },
        _ => None,
    }
}

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
    fn the_ttl_decides_and_times_move_to_this_replicas_clock() {
        // Written on a clock 20 s ahead: 60 s long, 15 s of it gone.
        let json = br#"{"reason":"quota","status":429,"message":"m","replica":"r","since_ms":120000,"until_ms":180000}"#;
        let b = present(json, 45_000, 100_000).expect("blocks");
        assert_eq!(
            (b.reason, b.since_ms, b.until_ms),
            (Reason::Quota, 85_000, 145_000)
        );
        // A value whose length disagrees with its TTL (extended by hand) starts now at the latest.
        let b = present(json, 90_000, 100_000).expect("blocks");
        assert_eq!((b.since_ms, b.until_ms), (100_000, 190_000));
    }
}
