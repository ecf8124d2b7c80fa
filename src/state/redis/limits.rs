//! The shared counters of keys' limits (contract section 9): per key, its
//! requests and tokens in the current UTC minute on Redis' own clock (so
//! replicas whose clocks disagree share windows), and its spend in the
//! budget period. One script admits a request and, in the same round trip,
//! adds what the key's earlier requests on this replica used; what is left
//! over is added every so often by one script for all keys.

use redis::Script;

use super::RedisStore;

/// KEYS: the key's request-counter prefix, token-counter prefix, budget
/// counter. ARGV: the request limit, the token limit, the budget (in
/// nano-dollars; -1 for each: none), tokens and nano-dollars to add first,
/// the budget counter's TTL, and the value to seed a missing budget counter
/// with (-1: none). Returns {admitted, refused by (0 none, 1 requests, 2
/// tokens, 3 budget), requests, tokens, spent, ms to the minute's end}, or
/// {-1} when the budget counter is missing and no seed was given (nothing
/// is counted then). A refused request is not counted.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(now / 60000)
local reset = (minute + 1) * 60000 - now
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local spent = 0
if budget >= 0 then
  if tonumber(ARGV[7]) >= 0 then
    redis.call('SET', KEYS[3], ARGV[7], 'NX', 'PX', ARGV[6])
  end
  if redis.call('EXISTS', KEYS[3]) == 0 then return {-1} end
  if tonumber(ARGV[5]) > 0 then
    spent = redis.call('INCRBY', KEYS[3], ARGV[5])
  else
    spent = tonumber(redis.call('GET', KEYS[3]))
  end
end
local tokens = 0
if tpm >= 0 then
  local tk = KEYS[2] .. minute
  if tonumber(ARGV[4]) > 0 then
    tokens = redis.call('INCRBY', tk, ARGV[4])
    redis.call('PEXPIRE', tk, 120000)
  else
    tokens = tonumber(redis.call('GET', tk) or '0')
  end
end
local n = 0
local rk = KEYS[1] .. minute
if rpm >= 0 then n = tonumber(redis.call('GET', rk) or '0') end
local refused = 0
if rpm >= 0 and n >= rpm then refused = 1
elseif tpm >= 0 and tokens >= tpm then refused = 2
elseif budget >= 0 and spent >= budget then refused = 3 end
if refused == 0 and rpm >= 0 then
  n = redis.call('INCR', rk)
  if n == 1 then redis.call('PEXPIRE', rk, 120000) end
end
local admitted = 0
if refused == 0 then admitted = 1 end
return {admitted, refused, n, tokens, spent, reset}
";

/// KEYS: pairs of (token-counter prefix, budget counter); ARGV: pairs of
/// (tokens, nano-dollars). Tokens go to the current minute; spend only to a
/// budget counter that exists (a missing one is seeded from Postgres, which
/// the ledger brings these up to).
const SPEND: &str = r"
local t = redis.call('TIME')
local minute = math.floor((tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) / 60000)
for i = 1, #KEYS, 2 do
  local tokens, nano = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if tokens > 0 then
    local tk = KEYS[i] .. minute
    redis.call('INCRBY', tk, tokens)
    redis.call('PEXPIRE', tk, 120000)
  end
  if nano > 0 and redis.call('EXISTS', KEYS[i + 1]) == 1 then
    redis.call('INCRBY', KEYS[i + 1], nano)
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
    },
}

/// Spend to add to one key's counters.
#[derive(Debug, Clone)]
pub struct Spend {
    pub name: String,
    pub budget_period_ms: i64,
    pub tokens: u64,
    pub nano: i64,
}

fn limit(n: Option<u64>) -> i64 {
    n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

impl RedisStore {
    fn budget_key(&self, name: &str, period_ms: i64) -> String {
        format!("{}budget:{name}:{period_ms}", self.shared.prefix)
    }

    /// Admits one request of the key `name` (adding its earlier spend first).
    /// `None` when Redis did not answer within its timeout: the caller counts
    /// on its own traffic instead.
    pub async fn admit(&self, name: &str, budget_period_ms: i64, ask: &Ask) -> Option<Counted> {
        let s = &self.shared;
        let keys = [
            format!("{}rpm:{name}:", s.prefix),
            format!("{}tpm:{name}:", s.prefix),
            self.budget_key(name, budget_period_ms),
        ];
        let script = &s.admit;
        let args = [
            limit(ask.rpm),
            limit(ask.tpm),
            ask.budget_nano.unwrap_or(-1),
            i64::try_from(ask.add_tokens).unwrap_or(i64::MAX),
            ask.add_nano,
            ask.budget_ttl_ms.max(1),
            ask.seed_nano.unwrap_or(-1),
        ];
        let answer: Vec<i64> = s
            .call(|mut c| async move {
                let mut call = script.prepare_invoke();
                call.key(&keys[0]).key(&keys[1]).key(&keys[2]);
                for a in args {
                    call.arg(a);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        let n = |i: usize| answer.get(i).copied().unwrap_or(0);
        if n(0) == -1 {
            return Some(Counted::Unseeded);
        }
        Some(Counted::Answer {
            admitted: n(0) == 1,
            refused_by: u8::try_from(n(1)).unwrap_or(0),
            requests: u64::try_from(n(2)).unwrap_or(0),
            tokens: u64::try_from(n(3)).unwrap_or(0),
            spent_nano: n(4),
            reset_ms: n(5),
        })
    }

    /// Adds what keys used to their counters, all in one script call.
    /// False when Redis did not take it.
    pub async fn spend(&self, spends: &[Spend]) -> bool {
        if spends.is_empty() {
            return true;
        }
        let s = &self.shared;
        let mut keys = Vec::with_capacity(spends.len() * 2);
        let mut args = Vec::with_capacity(spends.len() * 2);
        for sp in spends {
            keys.push(format!("{}tpm:{}:", s.prefix, sp.name));
            keys.push(self.budget_key(&sp.name, sp.budget_period_ms));
            args.push(i64::try_from(sp.tokens).unwrap_or(i64::MAX));
            args.push(sp.nano);
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
