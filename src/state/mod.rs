//! Learned state: blocks on credentials and (credential, upstream model)
//! pairs, shared by every replica.
//!
//! The shape follows the contract's Redis layout: a block has a scope, a
//! reason, the status and message that caused it, the replica that learned it
//! and `since_ms`/`until_ms`. Two rules hold in every implementation: a block is
//! only ever extended, never shortened (removed early only by an operator, a
//! later success, or the request that wrote it withdrawing its own verdict);
//! and the quota ladder's level is kept apart from the block, so it outlives
//! the block it produced.

mod memory;
mod redis;

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use self::redis::{Ask, Counted, RedisStore, Spend};
pub use memory::MemoryStore;

/// What a block applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every model of a credential (`block:cred:{credential_id}`).
    Credential { credential_id: String },
    /// One upstream model of a credential (`block:model:{credential_id}:{upstream_model}`).
    Pair {
        credential_id: String,
        upstream_model: String,
    },
}

impl Scope {
    pub fn credential(credential_id: &str) -> Self {
        Scope::Credential {
            credential_id: credential_id.to_string(),
        }
    }

    pub fn pair(credential_id: &str, upstream_model: &str) -> Self {
        Scope::Pair {
            credential_id: credential_id.to_string(),
            upstream_model: upstream_model.to_string(),
        }
    }

    pub fn credential_id(&self) -> &str {
        match self {
            Scope::Credential { credential_id } | Scope::Pair { credential_id, .. } => {
                credential_id
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Credential { .. } => "credential",
            Scope::Pair { .. } => "model",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Credential { credential_id } => write!(f, "{credential_id}"),
            Scope::Pair {
                credential_id,
                upstream_model,
            } => write!(f, "{credential_id}/{upstream_model}"),
        }
    }
}

/// Why a block exists; the names are the contract's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    ModelNotSupported,
    NotFound,
    Unauthorized,
    PaymentRequired,
    Forbidden,
    Quota,
    /// A successful answer's rate-limit headers said nothing is left until
    /// a reset (headroom): a quota block learned without a failed call.
    Exhausted,
    UpstreamError,
}

impl Reason {
    /// Quota blocks (a 429, or headroom used up): a request they all stop gets 429.
    pub fn is_quota(self) -> bool {
        matches!(self, Reason::Quota | Reason::Exhausted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ModelNotSupported => "model_not_supported",
            Reason::NotFound => "not_found",
            Reason::Unauthorized => "unauthorized",
            Reason::PaymentRequired => "payment_required",
            Reason::Forbidden => "forbidden",
            Reason::Quota => "quota",
            Reason::Exhausted => "exhausted",
            Reason::UpstreamError => "upstream_error",
        }
    }
}

/// A learned block, exactly the JSON value stored in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub reason: Reason,
    /// The upstream HTTP status, or 0 when there was none (connect failure, timeout).
    pub status: u16,
    /// What the upstream said, scrubbed of secrets and shortened.
    pub message: String,
    pub replica: String,
    pub since_ms: i64,
    pub until_ms: i64,
}

impl Block {
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.until_ms > now_ms
    }

    /// Whether `other` records the same verdict: reason, status, message and
    /// replica. Its times are left out: a store may stamp them itself.
    pub fn same_verdict(&self, other: &Block) -> bool {
        self.reason == other.reason
            && self.status == other.status
            && self.message == other.message
            && self.replica == other.replica
    }

    /// Extend-never-shorten: the block that should stand when `new` is written over `self`.
    pub fn merge(self, new: Block) -> Block {
        if new.until_ms > self.until_ms {
            new
        } else {
            self
        }
    }
}

/// A 429 to be learned: the pure ladder arithmetic is in
/// [`crate::routing::cooldown`]; a store applies it atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaHit {
    pub status: u16,
    pub message: String,
    pub replica: String,
    pub now_ms: i64,
    /// The provider's own hint, in milliseconds from now.
    pub hint_ms: Option<u64>,
    pub base_ms: u64,
    pub cap_ms: u64,
}

/// A block at least this long is followed by one probe when it ends.
pub const PROBE_AFTER_MS: i64 = 60_000;
/// How long after its block a scope still awaits its probe; a scope nobody
/// asks for meanwhile is simply free again.
pub const PROBATION_MS: i64 = 600_000;

/// What confirming a pick found, besides its blocks: whether it awaits the
/// one probe that follows a long block.
#[derive(Debug)]
pub enum Probe {
    /// Nothing to probe: the pick is an ordinary request.
    None,
    /// This request won the claim: it is the probe. Dropping the claim
    /// releases it (the answer, or the client's leaving, ends a probe).
    Claimed(Claim),
    /// Another request (on any replica) is probing it: its answer is not known yet.
    Held { reason: Reason },
}

/// One won probe claim: the scopes it holds and the token that proves it is
/// this request's (so a late release never lifts another request's claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub scopes: Vec<Scope>,
    pub token: String,
}

/// The blocks of a pick's credential and pair, and its probe state.
#[derive(Debug)]
pub struct Confirmation {
    pub credential: Option<Block>,
    pub pair: Option<Block>,
    pub probe: Probe,
}

/// A scope's learned state beyond its block (see [`LearnedStore::side_state`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideState {
    pub quota_level: u32,
    /// Out of a long block, waiting for one request to try it.
    pub awaiting_probe: bool,
    /// A request is trying it now.
    pub probe_held: bool,
}

/// The candidate that served a conversation last (affinity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    pub credential_id: String,
    pub upstream_model: String,
}

impl Affinity {
    /// The stored form: credential ids cannot hold a newline.
    pub fn encode(&self) -> String {
        format!("{}\n{}", self.credential_id, self.upstream_model)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (credential_id, upstream_model) = s.split_once('\n')?;
        Some(Self {
            credential_id: credential_id.to_string(),
            upstream_model: upstream_model.to_string(),
        })
    }
}

/// Which learned state a store answers from right now: what the admin API
/// tells an operator it is looking at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// This process's memory, the only learned state there is (no Redis).
    Memory,
    /// Redis, shared by every replica; `unsynced` entries this replica holds
    /// are not in Redis yet (Redis refused them) and are shown too.
    Shared { unsynced: usize },
    /// Redis does not answer: this replica's own learned state, which other
    /// replicas do not see; `unsynced` entries wait to be written to Redis.
    Local { unsynced: usize },
}

impl View {
    pub fn as_str(self) -> &'static str {
        match self {
            View::Memory => "memory",
            View::Shared { .. } => "shared",
            View::Local { .. } => "local",
        }
    }

    pub fn unsynced(self) -> usize {
        match self {
            View::Memory => 0,
            View::Shared { unsynced } | View::Local { unsynced } => unsynced,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("learned-state store unavailable: {0}")]
    Unavailable(String),
    #[error("learned-state store timed out")]
    Timeout,
}

/// The learned-state store. Memory in embedded mode, Redis in cluster mode;
/// both pass the same contract tests in `tests/`.
#[async_trait]
pub trait LearnedStore: Send + Sync + 'static {
    /// The active block of each scope, in the order asked.
    async fn get(&self, scopes: &[Scope]) -> Result<Vec<Option<Block>>, StoreError>;

    /// Writes `block` unless a longer one stands; returns the block that stands.
    async fn put(&self, scope: &Scope, block: Block) -> Result<Block, StoreError>;

    /// Learns a 429 on a pair: climbs the quota ladder unless a quota block is
    /// open, and blocks for the ladder's step or the hint. Returns the block that stands.
    async fn quota(&self, pair: &Scope, hit: QuotaHit) -> Result<Block, StoreError>;

    /// A success on a pair: resets its quota ladder and removes its block if
    /// that block started before `request_started_ms`.
    async fn succeed(&self, pair: &Scope, request_started_ms: i64) -> Result<(), StoreError>;

    /// Every active block.
    async fn list(&self) -> Result<Vec<(Scope, Block)>, StoreError>;

    /// Removes a block; false when there was none.
    async fn remove(&self, scope: &Scope) -> Result<bool, StoreError>;

    /// Withdraws the block a request wrote, and only that one: removes the
    /// scope's block if it is still `written` (the same verdict, see
    /// [`Block::same_verdict`]), so a block another request wrote since
    /// stands. The one case where a request takes back a verdict: the
    /// identical-failure rule found the failure was the request's own. False
    /// when nothing was removed.
    async fn withdraw(&self, scope: &Scope, written: &Block) -> Result<bool, StoreError>;

    /// The current quota ladder level of a pair (0 when none).
    async fn quota_level(&self, pair: &Scope) -> Result<u32, StoreError>;

    /// What an operator sees beside each scope's block: its quota ladder
    /// level, whether it awaits its probe, whether a request holds the probe
    /// now. One read for all of `scopes`.
    async fn side_state(&self, scopes: &[Scope]) -> Result<Vec<SideState>, StoreError>;

    /// The candidate that served conversation `key` last, while its entry lives.
    async fn affinity(&self, key: &str) -> Result<Option<Affinity>, StoreError>;

    /// Records that `to` served conversation `key`, for `ttl_ms`.
    async fn set_affinity(&self, key: &str, to: &Affinity, ttl_ms: u64) -> Result<(), StoreError>;

    /// Which learned state [`LearnedStore::list`] and the reads answer from now.
    fn view(&self) -> View;

    /// The active block of one scope in this replica's own view, without
    /// I/O: what a selection looks at before it confirms its pick.
    fn peek(&self, scope: &Scope) -> Option<Block>;

    /// Confirms a pick against the shared state: the blocks of its
    /// credential and pair, and, when one of them came out of a long block
    /// and awaits its probe, whether this request claims the probe (for
    /// `claim_ttl_ms`: a probe whose replica dies is released by the TTL) or
    /// another already holds it. A claimed probe ends with the pair's next
    /// outcome: a success lifts the probation, a failure blocks again.
    async fn confirm(
        &self,
        credential: &Scope,
        pair: &Scope,
        claim_ttl_ms: u64,
    ) -> Result<Confirmation, StoreError>;

    /// Gives a probe claim back (its request ended without settling it, or
    /// its client left). Never waits: the store releases it soon after.
    fn release(&self, claim: Claim);
}
