//! The shared counters of keys' limits (contract section 9): per key, its
//! requests and tokens in the current UTC minute on Redis' own clock (so
//! replicas whose clocks disagree share windows), and its spend in the
//! budget period. One script admits a batch of requests (those that arrived
//! while the previous batch was in Redis) and, in the same round trip, adds
//! what their keys' earlier requests on this replica used; what is left over
//! is added every so often by one script for all keys.

use redis::Script;

use super::RedisStore;

/// Admits a batch of requests, in order, each taking a lease of up to
/// `want` requests of its key's minute. For each: KEYS, the key's
/// request-counter prefix, token-counter prefix and budget counter; ARGV,
/// the request limit, the token limit, the budget (in nano-dollars; -1 for
/// each: none), tokens and nano-dollars to add first, the budget counter's
/// TTL, the value to seed a missing budget counter with (-1: none), the
/// lease wanted, and an earlier lease's unused requests to give back with
/// its minute. Returns, for each, {admitted, refused by (0 none, 1
/// requests, 2 tokens, 3 budget), requests, tokens, spent, ms to the
/// minute's end, requests leased, the minute}, or {-1, 0, ...} when the
/// budget counter is missing and no seed was given (nothing is counted for
/// it then). A refused request is not counted.
///
/// A lease is at most a 64th of what the minute has left (so under 128
/// left, and for any limit under 128, one request: exact), and one request
/// once half the token limit or the budget is used: a replica holding
/// leased requests it does not use keeps others from them only briefly
/// (they go back within a few hundred ms), and never lets the key past its
/// limit.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(now / 60000)
local reset = (minute + 1) * 60000 - now
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = i * 3, i * 10
  local rpm, tpm, budget = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local want, give, give_minute = tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9]), tonumber(ARGV[a + 10])
  local spent, tokens, n, refused, grant = 0, 0, 0, 0, 0
  local unseeded = false
  if budget >= 0 then
    if tonumber(ARGV[a + 7]) >= 0 then
      redis.call('SET', KEYS[k + 3], ARGV[a + 7], 'NX', 'PX', ARGV[a + 6])
    end
    if tonumber(ARGV[a + 5]) > 0 then
      if redis.call('EXISTS', KEYS[k + 3]) == 0 then unseeded = true
      else spent = redis.call('INCRBY', KEYS[k + 3], ARGV[a + 5]) end
    else
      local v = redis.call('GET', KEYS[k + 3])
      if v then spent = tonumber(v) else unseeded = true end
    end
  end
  if unseeded then
    for _, v in ipairs({-1, 0, 0, 0, 0, 0, 0, 0}) do out[#out + 1] = v end
  else
    if tpm >= 0 then
      local tk = KEYS[k + 2] .. minute
      if tonumber(ARGV[a + 4]) > 0 then
        tokens = redis.call('INCRBY', tk, ARGV[a + 4])
        redis.call('PEXPIRE', tk, 120000)
      else
        tokens = tonumber(redis.call('GET', tk) or '0')
      end
    end
    local rk = KEYS[k + 1] .. minute
    if rpm >= 0 then
      n = tonumber(redis.call('GET', rk) or '0')
      if give > 0 and give_minute == minute and n >= give then
        n = redis.call('DECRBY', rk, give)
      end
    end
    if rpm >= 0 and n >= rpm then refused = 1
    elseif tpm >= 0 and tokens >= tpm then refused = 2
    elseif budget >= 0 and spent >= budget then refused = 3 end
    if refused == 0 then
      grant = math.max(want, 1)
      if rpm >= 0 then grant = math.min(grant, math.max(1, math.floor((rpm - n) / 64))) end
      if tpm >= 0 and tokens * 2 >= tpm then grant = 1 end
      if budget >= 0 and spent * 2 >= budget then grant = 1 end
      if rpm >= 0 then
        n = redis.call('INCRBY', rk, grant)
        if n == grant then redis.call('PEXPIRE', rk, 120000) end
      end
    end
    local admitted = 0
    if refused == 0 then admitted = 1 end
    for _, v in ipairs({admitted, refused, n, tokens, spent, reset, grant, minute}) do out[#out + 1] = v end
  end
end
return out
";

/// KEYS: triples of (token-counter prefix, budget counter, request-counter
/// prefix); ARGV: quadruples of (tokens, nano-dollars, unused leased
/// requests to give back, their minute). Tokens go to the current minute;
/// spend only to a budget counter that exists (a missing one is seeded from
/// Postgres, which the ledger brings these up to); a give-back only to its
/// own minute, while it lasts.
const SPEND: &str = r"
local t = redis.call('TIME')
local minute = math.floor((tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) / 60000)
for i = 0, #KEYS / 3 - 1 do
  local k, a = i * 3, i * 4
  local tokens, nano = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local give, give_minute = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if tokens > 0 then
    local tk = KEYS[k + 1] .. minute
    redis.call('INCRBY', tk, tokens)
    redis.call('PEXPIRE', tk, 120000)
  end
  if nano > 0 and redis.call('EXISTS', KEYS[k + 2]) == 1 then
    redis.call('INCRBY', KEYS[k + 2], nano)
  end
  if give > 0 and give_minute == minute then
    local rk = KEYS[k + 3] .. minute
    if tonumber(redis.call('GET', rk) or '0') >= give then redis.call('DECRBY', rk, give) end
  end
end
return 1
";

/// One admission's question to the shared counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// The budget, in nano-dollars.
    pub budget_nano: Option<i64>,
    /// Used by the key's earlier requests and not counted yet.
    pub add_tokens: u64,
    pub add_nano: i64,
    /// The budget counter's time to live (its period's end, and a margin).
    pub budget_ttl_ms: i64,
    /// A missing budget counter starts from this.
    pub seed_nano: Option<i64>,
    /// Requests to lease (this one included).
    pub want: u64,
    /// An earlier lease's unused requests, and the minute they were leased in.
    pub give_back: u64,
    pub give_minute: i64,
}

/// What the shared counters said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The budget counter is missing: seed it and ask again.
    Unseeded,
    Answer {
        admitted: bool,
        /// 1: requests, 2: tokens, 3: budget.
        refused_by: u8,
        requests: u64,
        tokens: u64,
        spent_nano: i64,
        reset_ms: i64,
        /// Requests leased: this one and those the replica may admit on its
        /// own in this minute.
        granted: u64,
        /// The minute (on Redis' clock) the lease counts in.
        minute: i64,
    },
}

/// Spend to add to one key's counters.
#[derive(Debug, Clone)]
pub struct Spend {
    pub name: String,
    pub budget_period_ms: i64,
    pub tokens: u64,
    pub nano: i64,
    /// Unused leased requests to give back, and their minute.
    pub give_back: u64,
    pub give_minute: i64,
}

fn limit(n: Option<u64>) -> i64 {
    n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

impl RedisStore {
    /// How long a call may take before Redis counts as not answering.
    pub fn timeout(&self) -> std::time::Duration {
        self.shared.timeout
    }

    fn budget_key(&self, name: &str, period_ms: i64) -> String {
        format!("{}budget:{name}:{period_ms}", self.shared.prefix)
    }

    /// Admits a batch of requests, each of the key it names (adding its
    /// earlier spend first), in one script call. `None` when Redis did not
    /// answer within its timeout: the callers count on their own traffic
    /// instead.
    pub async fn admit(&self, asks: &[(&str, i64, Ask)]) -> Option<Vec<Counted>> {
        let s = &self.shared;
        let mut keys = Vec::with_capacity(asks.len() * 3);
        let mut args = Vec::with_capacity(asks.len() * 10);
        for (name, budget_period_ms, ask) in asks {
            keys.push(format!("{}rpm:{name}:", s.prefix));
            keys.push(format!("{}tpm:{name}:", s.prefix));
            keys.push(self.budget_key(name, *budget_period_ms));
            args.extend([
                limit(ask.rpm),
                limit(ask.tpm),
                ask.budget_nano.unwrap_or(-1),
                i64::try_from(ask.add_tokens).unwrap_or(i64::MAX),
                ask.add_nano,
                ask.budget_ttl_ms.max(1),
                ask.seed_nano.unwrap_or(-1),
                i64::try_from(ask.want).unwrap_or(i64::MAX),
                i64::try_from(ask.give_back).unwrap_or(i64::MAX),
                ask.give_minute,
            ]);
        }
        let script = &s.admit;
        let answer: Vec<i64> = s
            .call(|mut c| async move {
                let mut call = script.prepare_invoke();
                for k in &keys {
                    call.key(k);
                }
                for a in &args {
                    call.arg(a);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        let counted = answer
            .chunks_exact(8)
            .map(|n| {
                if n[0] == -1 {
                    return Counted::Unseeded;
                }
                Counted::Answer {
                    admitted: n[0] == 1,
                    refused_by: u8::try_from(n[1]).unwrap_or(0),
                    requests: u64::try_from(n[2]).unwrap_or(0),
                    tokens: u64::try_from(n[3]).unwrap_or(0),
                    spent_nano: n[4],
                    reset_ms: n[5],
                    granted: u64::try_from(n[6]).unwrap_or(0),
                    minute: n[7],
                }
            })
            .collect::<Vec<_>>();
        // A short answer is a script that failed part way: nothing to trust.
        (counted.len() == asks.len()).then_some(counted)
    }

    /// Each key's requests and tokens counted in `minute` (epoch minutes),
    /// for the console; `None` when Redis did not answer.
    pub async fn minute_counts(&self, names: &[&str], minute: i64) -> Option<Vec<(u64, u64)>> {
        if names.is_empty() {
            return Some(Vec::new());
        }
        let s = &self.shared;
        let mut mget = redis::cmd("MGET");
        for name in names {
            mget.arg(format!("{}rpm:{name}:{minute}", s.prefix))
                .arg(format!("{}tpm:{name}:{minute}", s.prefix));
        }
        let values: Vec<Option<u64>> = s
            .call(|mut c| async move { mget.query_async(&mut c).await })
            .await?;
        Some(
            values
                .chunks_exact(2)
                .map(|v| (v[0].unwrap_or(0), v[1].unwrap_or(0)))
                .collect(),
        )
    }

    /// Adds what keys used to their counters, all in one script call.
    /// False when Redis did not take it.
    pub async fn spend(&self, spends: &[Spend]) -> bool {
        if spends.is_empty() {
            return true;
        }
        let s = &self.shared;
        let mut keys = Vec::with_capacity(spends.len() * 3);
        let mut args = Vec::with_capacity(spends.len() * 4);
        for sp in spends {
            keys.push(format!("{}tpm:{}:", s.prefix, sp.name));
            keys.push(self.budget_key(&sp.name, sp.budget_period_ms));
            keys.push(format!("{}rpm:{}:", s.prefix, sp.name));
            args.extend([
                i64::try_from(sp.tokens).unwrap_or(i64::MAX),
                sp.nano,
                i64::try_from(sp.give_back).unwrap_or(i64::MAX),
                sp.give_minute,
            ]);
        }
        let script = &s.spend;
        let done: Option<i64> = s
            .call(|mut c| async move {
                let mut call = script.prepare_invoke();
                for k in &keys {
                    call.key(k);
                }
                for a in &args {
                    call.arg(a);
                }
                call.invoke_async(&mut c).await
            })
            .await;
        done.is_some()
    }
}

pub fn admit_script() -> Script {
    Script::new(ADMIT)
}

pub fn spend_script() -> Script {
    Script::new(SPEND)
}
