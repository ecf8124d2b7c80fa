//! Operator data (credentials, credential models, client keys) and the
//! immutable routing snapshot built from it.
//!
//! Both credential sources (the TOML file in embedded mode, Postgres in cluster
//! mode) produce [`OperatorData`]; [`Catalog::build`] validates it and indexes it
//! for the request path. A new catalog replaces the old one as a whole, so a
//! request always sees one consistent snapshot.
//!
//! A `model` ending in `*` is a pattern ([`patterns`]). Per credential an exact
//! row wins over patterns, and the longest pattern over shorter ones; every
//! credential with a matching row is a candidate. Routes of exact names are
//! built here, with the matching patterns of other credentials folded in;
//! names only patterns serve are routed on first request.

mod patterns;
pub mod prices;

pub use patterns::SAME_NAME;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::state::Scope;

/// The wire protocol a credential speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Anthropic,
    Gemini,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" => Ok(Provider::Openai),
            "anthropic" => Ok(Provider::Anthropic),
            "gemini" => Ok(Provider::Gemini),
            other => Err(format!(
                "unknown provider {other:?} (expected openai, anthropic or gemini)"
            )),
        }
    }
}

/// One row of `credentials`.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub id: String,
    pub provider: Provider,
    pub base_url: String,
    pub api_key: Secret,
    pub priority: i32,
    pub weight: u32,
    pub enabled: bool,
    pub headers: BTreeMap<String, String>,
    /// An `openai` upstream that also serves the Responses API: Responses
    /// clients are passed through to it.
    pub responses_api: bool,
}

/// One row of `credential_models`. `model` may be a pattern (`claude-*`), and
/// `upstream_model` may be `*`: the requested name is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialModel {
    pub credential_id: String,
    pub model: String,
    pub upstream_model: String,
}

/// One row of `api_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub key_hash: String,
    pub enabled: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub limits: KeyLimits,
}

/// A key's limits (contract section 9); `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per UTC minute, across all replicas.
    pub rpm: Option<u64>,
    /// Input plus output tokens per UTC minute, across all replicas.
    pub tpm: Option<u64>,
    /// Spend allowed per period, in millionths of a dollar (the column's
    /// six decimals, kept exact).
    pub budget_micro_usd: Option<i64>,
    pub budget_period: BudgetPeriod,
    /// Names or patterns (as `credential_models.model`) the key may use.
    pub models: Option<Vec<String>>,
}

impl KeyLimits {
    /// Whether the key has any counted limit (rpm, tpm or budget): keys
    /// without one cost nothing in the limiter.
    pub fn counted(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.budget_micro_usd.is_some()
    }

    /// Whether the key's limits count what answers use (tokens or spend).
    pub fn spends(&self) -> bool {
        self.tpm.is_some() || self.budget_micro_usd.is_some()
    }

    /// Whether the key may ask for `model`: an exact name, or a pattern
    /// (`claude-*`) it starts with, as credential rows match.
    pub fn allows(&self, model: &str) -> bool {
        let Some(models) = &self.models else {
            return true;
        };
        models.iter().any(|m| match m.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => m == model,
        })
    }
}

/// The calendar period of a budget, in UTC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BudgetPeriod {
    Day,
    #[default]
    Month,
}

impl BudgetPeriod {
    /// The column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }
}

impl std::str::FromStr for BudgetPeriod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "day" => Ok(BudgetPeriod::Day),
            "month" => Ok(BudgetPeriod::Month),
            other => Err(format!(
                "budget_period must be 'day' or 'month', not {other:?}"
            )),
        }
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn models_restrict_by_name_and_pattern() {
        let open = KeyLimits::default();
        assert!(open.allows("anything"));
        let some = KeyLimits {
            models: Some(vec!["gpt-4o".into(), "claude-*".into()]),
            ..Default::default()
        };
        assert!(some.allows("gpt-4o"));
        assert!(some.allows("claude-sonnet-4"));
        assert!(!some.allows("gpt-4o-mini"));
        assert!(!some.allows("gemini-2.5-pro"));
        assert!(!some.counted());
    }
}

/// Everything an operator defines, as plain rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperatorData {
    pub credentials: Vec<Credential>,
    pub models: Vec<CredentialModel>,
    pub api_keys: Vec<ApiKey>,
    pub prices: Vec<prices::PriceRow>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("credential id {0:?} must match [A-Za-z0-9._-]{{1,128}}")]
    BadCredentialId(String),
    #[error("credential {0:?} is defined twice")]
    DuplicateCredential(String),
    #[error("credential {id:?}: weight must be greater than 0")]
    BadWeight { id: String },
    #[error("credential {id:?}: base_url {url:?} must start with http:// or https://")]
    BadBaseUrl { id: String, url: String },
    #[error("credential {id:?}: header {name:?} is not a valid HTTP header")]
    BadHeader { id: String, name: String },
    #[error("credential {id:?}: responses_api is for openai credentials only")]
    ResponsesApiNotOpenai { id: String },
    #[error("credential model {model:?} refers to unknown credential {credential_id:?}")]
    UnknownCredential {
        credential_id: String,
        model: String,
    },
    #[error("credential model of {credential_id:?}: model and upstream_model must not be empty")]
    EmptyModel { credential_id: String },
    #[error(
        "credential model {model:?} of {credential_id:?}: `*` may only end a model (a pattern) \
         or be the whole upstream_model (the requested name), not {upstream_model:?}"
    )]
    BadPattern {
        credential_id: String,
        model: String,
        upstream_model: String,
    },
    #[error("api key {name:?}: key_hash must be 64 lower-case hex characters (SHA-256)")]
    BadKeyHash { name: String },
    #[error("api key name {0:?} is defined twice")]
    DuplicateKeyName(String),
}

pub fn valid_credential_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Lower-case hex SHA-256 of a whole client key, as stored in `api_keys.key_hash`.
pub fn hash_key(key: &str) -> String {
    hex::encode(KeyDigest::of(key).0)
}

/// The SHA-256 of a client key: what keys are looked up by. Its bytes are
/// already uniform, so its first eight are its place in the map, and a
/// request's key is hashed once, never hex-encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
struct KeyDigest([u8; 32]);

impl KeyDigest {
    fn of(key: &str) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut bytes = [0; 32];
        bytes.copy_from_slice(d.as_ref());
        Self(bytes)
    }

    /// A `key_hash` column's value (checked to be 64 lower-case hex digits).
    fn from_hex(hash: &str) -> Option<Self> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(hash, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// The hasher of [`KeyDigest`] maps: the digest's own bits.
#[derive(Default)]
struct DigestBits(u64);

impl std::hash::Hasher for DigestBits {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is ever called (by `KeyDigest::hash`); folded in
        // all the same, so another caller would still get a hash.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap = HashMap<KeyDigest, Arc<ApiKey>, std::hash::BuildHasherDefault<DigestBits>>;

/// A credential and its pool of upstream models for one requested name: what
/// a route is built from.
type Share = (Arc<Credential>, Vec<String>);

/// One credential's share of a route: its weight and the pool of upstream
/// models it rotates over for the requested model.
#[derive(Debug)]
pub struct Member {
    pub credential: Arc<Credential>,
    /// Upstream models of the pool, sorted so every replica rotates alike.
    pub pool: Vec<String>,
    /// Index into [`Route::scopes`] of this credential's own scope.
    pub credential_scope: usize,
    /// Index into [`Route::scopes`] of each pool member's pair scope.
    pub pair_scopes: Vec<usize>,
    /// Where the next pool rotation starts. Reset by a reload, which is harmless.
    pub(crate) pool_cursor: AtomicU64,
}

/// What decides whether a credential can express a request: its protocol,
/// and whether it also serves the Responses API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialKind {
    pub provider: Provider,
    pub responses_api: bool,
}

impl Credential {
    pub fn kind(&self) -> CredentialKind {
        CredentialKind {
            provider: self.provider,
            responses_api: self.responses_api,
        }
    }
}

/// The credentials of one priority level.
#[derive(Debug)]
pub struct Tier {
    pub priority: i32,
    /// Members ordered by credential id: fill-first takes the first usable one.
    pub members: Vec<Member>,
    /// Smooth weighted round-robin order over member indices.
    pub schedule: Vec<usize>,
    pub(crate) cursor: AtomicU64,
}

/// Every candidate for one requested model.
#[derive(Debug)]
pub struct Route {
    pub model: String,
    /// Tiers ordered from the highest priority down.
    pub tiers: Vec<Tier>,
    /// Every scope whose block can affect this route; members name theirs by index.
    pub scopes: Vec<Scope>,
    /// One credential of each kind in the route: a request is prepared once
    /// per kind, never once per credential.
    pub kinds: Vec<Arc<Credential>>,
    /// Where each credential sits: (tier, member) by credential id.
    index: HashMap<String, (usize, usize)>,
}

impl Route {
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.tiers.iter().flat_map(|t| t.members.iter())
    }

    /// The member of credential `id`, found in one lookup.
    pub fn member(&self, id: &str) -> Option<&Member> {
        let &(tier, member) = self.index.get(id)?;
        self.tiers.get(tier)?.members.get(member)
    }

    /// How many credentials the route has.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

impl Member {
    /// Starts a pool rotation: the offset of the first pool member to try.
    pub(crate) fn next_pool_offset(&self) -> usize {
        let n = self.pool_cursor.fetch_add(1, Ordering::Relaxed);
        (n % self.pool.len().max(1) as u64) as usize
    }
}

impl Tier {
    pub(crate) fn next_slot(&self) -> usize {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        (n % self.schedule.len().max(1) as u64) as usize
    }
}

/// The routing snapshot: what the request path reads.
pub struct Catalog {
    pub credentials: BTreeMap<String, Arc<Credential>>,
    /// Routes of the names some enabled credential has an exact row for.
    routes: HashMap<String, Arc<Route>>,
    /// Pattern rows, and the routes of names only they serve.
    patterns: patterns::Patterns,
    keys: KeyMap,
    /// Model names some enabled credential has an exact row for, sorted:
    /// what the model lists show (patterns are not names).
    pub models: Vec<String>,
    /// Each credential's models, for the admin view.
    pub credential_models: Vec<CredentialModel>,
    /// What a requested model's tokens cost.
    pub prices: prices::Prices,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("credentials", &self.credentials.len())
            .field("models", &self.models)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The outcome of looking up a client key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    Valid(Arc<ApiKey>),
    Unknown,
    Disabled,
    Expired,
}

impl Catalog {
    pub fn empty() -> Self {
        Self {
            credentials: BTreeMap::new(),
            routes: HashMap::new(),
            patterns: patterns::Patterns::default(),
            keys: KeyMap::default(),
            models: Vec::new(),
            credential_models: Vec::new(),
            prices: prices::Prices::default(),
        }
    }

    pub fn build(data: OperatorData) -> Result<Self, CatalogError> {
        let mut credentials = BTreeMap::new();
        for c in data.credentials {
            validate_credential(&c)?;
            if credentials.contains_key(&c.id) {
                return Err(CatalogError::DuplicateCredential(c.id));
            }
            credentials.insert(c.id.clone(), Arc::new(c));
        }

        // model (or pattern) -> credential id -> pool of upstream models
        let mut by_model: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for m in &data.models {
            if !credentials.contains_key(&m.credential_id) {
                return Err(CatalogError::UnknownCredential {
                    credential_id: m.credential_id.clone(),
                    model: m.model.clone(),
                });
            }
            validate_model(m)?;
            by_model
                .entry(m.model.clone())
                .or_default()
                .entry(m.credential_id.clone())
                .or_default()
                .insert(m.upstream_model.clone());
        }

        // Only enabled credentials serve; pattern rows and exact rows apart.
        let mut exact: Vec<(String, Vec<Share>)> = Vec::new();
        let mut pattern_rows = Vec::new();
        for (model, creds) in by_model {
            let enabled: Vec<(Arc<Credential>, BTreeSet<String>)> = creds
                .into_iter()
                .filter_map(|(id, pool)| {
                    let c = credentials.get(&id)?;
                    c.enabled.then(|| (c.clone(), pool))
                })
                .collect();
            match patterns::prefix_of(&model) {
                Some(prefix) => pattern_rows.extend(
                    enabled
                        .into_iter()
                        .map(|(c, pool)| (prefix.to_string(), c, pool.into_iter().collect())),
                ),
                None if !enabled.is_empty() => {
                    let members = enabled
                        .into_iter()
                        .map(|(c, pool)| (c, patterns::resolve_pool(&pool, &model)))
                        .collect();
                    exact.push((model, members));
                }
                None => {}
            }
        }
        let patterns = patterns::Patterns::new(pattern_rows);

        let mut routes = HashMap::new();
        for (model, mut members) in exact {
            let has_exact = |id: &str| members.iter().any(|(c, _)| c.id == id);
            let matched = patterns.matching(&model, has_exact);
            members.extend(matched);
            routes.insert(model.clone(), Arc::new(build_route(model, members)));
        }
        let mut models: Vec<String> = routes.keys().cloned().collect();
        models.sort();

        let mut keys = KeyMap::default();
        let mut names = BTreeSet::new();
        for k in data.api_keys {
            let digest = valid_key_hash(&k.key_hash)
                .then(|| KeyDigest::from_hex(&k.key_hash))
                .flatten();
            let Some(digest) = digest else {
                return Err(CatalogError::BadKeyHash { name: k.name });
            };
            if !names.insert(k.name.clone()) {
                return Err(CatalogError::DuplicateKeyName(k.name));
            }
            keys.insert(digest, Arc::new(k));
        }

        Ok(Self {
            credentials,
            routes,
            patterns,
            keys,
            models,
            credential_models: data.models,
            prices: prices::Prices::new(&data.prices),
        })
    }

    /// Builds what can be built: credentials, models and keys that fail
    /// validation are left out and named in the returned problems. For sources
    /// where one bad row must not hold back every other change (Postgres).
    pub fn build_lenient(mut data: OperatorData) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        data.credentials.retain(|c| match validate_credential(c) {
            Err(e) => {
                problems.push(e.to_string());
                false
            }
            Ok(()) if !seen.insert(c.id.clone()) => {
                problems.push(CatalogError::DuplicateCredential(c.id.clone()).to_string());
                false
            }
            Ok(()) => true,
        });
        data.models.retain(|m| {
            let ok = seen.contains(&m.credential_id) && validate_model(m).is_ok();
            if !ok {
                problems.push(format!(
                    "credential model {:?} of {:?} is not usable",
                    m.model, m.credential_id
                ));
            }
            ok
        });
        let mut names = BTreeSet::new();
        data.api_keys.retain(|k| {
            let ok = valid_key_hash(&k.key_hash) && names.insert(k.name.clone());
            if !ok {
                problems.push(
                    CatalogError::BadKeyHash {
                        name: k.name.clone(),
                    }
                    .to_string(),
                );
            }
            ok
        });
        match Self::build(data) {
            Ok(catalog) => (catalog, problems),
            Err(e) => {
                problems.push(e.to_string());
                (Self::empty(), problems)
            }
        }
    }

    /// The route of a requested name: a hash lookup for names with an exact
    /// row; names only patterns serve are resolved once and then cached.
    pub fn route(&self, model: &str) -> Option<Arc<Route>> {
        if let Some(route) = self.routes.get(model) {
            return Some(route.clone());
        }
        self.patterns
            .route(model, |members| build_route(model.to_string(), members))
    }

    /// Checks a client key against `api_keys`; only its hash is compared.
    /// Every client key, in no order.
    pub fn api_keys(&self) -> impl Iterator<Item = &Arc<ApiKey>> {
        self.keys.values()
    }

    pub fn check_key(&self, key: &str, now: DateTime<Utc>) -> KeyCheck {
        match self.keys.get(&KeyDigest::of(key)) {
            None => KeyCheck::Unknown,
            Some(k) if !k.enabled => KeyCheck::Disabled,
            Some(k) if k.expires_at.is_some_and(|at| at <= now) => KeyCheck::Expired,
            Some(k) => KeyCheck::Valid(k.clone()),
        }
    }

    /// Every secret of every credential, for scrubbing upstream messages.
    pub fn secrets(&self) -> Vec<&str> {
        self.credentials
            .values()
            .map(|c| c.api_key.expose())
            .collect()
    }
}

fn valid_key_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn validate_model(m: &CredentialModel) -> Result<(), CatalogError> {
    if m.model.is_empty() || m.upstream_model.is_empty() {
        return Err(CatalogError::EmptyModel {
            credential_id: m.credential_id.clone(),
        });
    }
    if !patterns::valid_model(&m.model) || !patterns::valid_upstream(&m.upstream_model) {
        return Err(CatalogError::BadPattern {
            credential_id: m.credential_id.clone(),
            model: m.model.clone(),
            upstream_model: m.upstream_model.clone(),
        });
    }
    Ok(())
}

fn validate_credential(c: &Credential) -> Result<(), CatalogError> {
    if !valid_credential_id(&c.id) {
        return Err(CatalogError::BadCredentialId(c.id.clone()));
    }
    if c.weight == 0 {
        return Err(CatalogError::BadWeight { id: c.id.clone() });
    }
    if !(c.base_url.starts_with("http://") || c.base_url.starts_with("https://")) {
        return Err(CatalogError::BadBaseUrl {
            id: c.id.clone(),
            url: c.base_url.clone(),
        });
    }
    if c.responses_api && c.provider != Provider::Openai {
        return Err(CatalogError::ResponsesApiNotOpenai { id: c.id.clone() });
    }
    for (name, value) in &c.headers {
        let ok = http_header_ok(name, value);
        if !ok {
            return Err(CatalogError::BadHeader {
                id: c.id.clone(),
                name: name.clone(),
            });
        }
    }
    Ok(())
}

fn http_header_ok(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// `members`: each credential with its pool, resolved for `model`.
fn build_route(model: String, mut members: Vec<Share>) -> Route {
    // Fill-first takes the first usable member: the same order on every replica.
    members.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    let mut scopes = Vec::new();
    let mut by_priority: BTreeMap<i32, Vec<Member>> = BTreeMap::new();
    for (credential, pool) in members {
        let credential_scope = scopes.len();
        scopes.push(Scope::credential(&credential.id));
        let pair_scopes = pool
            .iter()
            .map(|upstream| {
                scopes.push(Scope::pair(&credential.id, upstream));
                scopes.len() - 1
            })
            .collect();
        by_priority
            .entry(credential.priority)
            .or_default()
            .push(Member {
                credential,
                pool,
                credential_scope,
                pair_scopes,
                pool_cursor: AtomicU64::new(0),
            });
    }
    let mut kinds: BTreeMap<CredentialKind, Arc<Credential>> = BTreeMap::new();
    for m in by_priority.values().flatten() {
        kinds
            .entry(m.credential.kind())
            .or_insert_with(|| m.credential.clone());
    }
    let tiers: Vec<Tier> = by_priority
        .into_iter()
        .rev()
        .map(|(priority, members)| {
            let weights: Vec<u32> = members.iter().map(|m| m.credential.weight).collect();
            Tier {
                priority,
                schedule: smooth_schedule(&weights),
                members,
                cursor: AtomicU64::new(0),
            }
        })
        .collect();
    let index = tiers
        .iter()
        .enumerate()
        .flat_map(|(t, tier)| {
            tier.members
                .iter()
                .enumerate()
                .map(move |(i, m)| (m.credential.id.clone(), (t, i)))
        })
        .collect();
    Route {
        model,
        tiers,
        scopes,
        kinds: kinds.into_values().collect(),
        index,
    }
}

/// Longest weighted round-robin schedule kept; larger weight sums are scaled
/// down proportionally (every member keeps at least one slot).
const MAX_SCHEDULE: u64 = 1024;

/// Smooth weighted round-robin (the order nginx uses): over one cycle each
/// member appears `weight` times, spread out rather than in runs.
pub fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x / g)).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        w = w
            .iter()
            .map(|&x| (x * MAX_SCHEDULE / total).max(1))
            .collect();
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &wi) in current.iter_mut().zip(&w) {
            *c += wi as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .unwrap_or((0, &0));
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn cred(id: &str, priority: i32, weight: u32) -> Credential {
        Credential {
            id: id.into(),
            provider: Provider::Openai,
            base_url: "http://127.0.0.1:1/v1".into(),
            api_key: Secret::new(format!("key-of-{id}")),
            priority,
            weight,
            enabled: true,
            headers: BTreeMap::new(),
            responses_api: false,
        }
    }

    pub fn cm(credential_id: &str, model: &str, upstream: &str) -> CredentialModel {
        CredentialModel {
            credential_id: credential_id.into(),
            model: model.into(),
            upstream_model: upstream.into(),
        }
    }

    #[test]
    fn schedule_spreads_weights() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
        let big = smooth_schedule(&[100_000, 1]);
        assert!(big.len() <= MAX_SCHEDULE as usize + 1);
        assert!(big.contains(&1));
    }

    #[test]
    fn routes_group_pools_tiers_and_skip_disabled_credentials() {
        let mut off = cred("c-off", 0, 1);
        off.enabled = false;
        let data = OperatorData {
            credentials: vec![cred("a", 0, 1), cred("b", 5, 1), off],
            models: vec![
                cm("a", "gpt", "gpt-x"),
                cm("a", "gpt", "gpt-y"),
                cm("b", "gpt", "gpt-x"),
                cm("c-off", "gpt", "gpt-x"),
                cm("c-off", "only-off", "z"),
            ],
            api_keys: vec![],
            prices: Vec::new(),
        };
        let cat = Catalog::build(data).expect("valid");
        assert_eq!(cat.models, vec!["gpt".to_string()]);
        let route = cat.route("gpt").expect("route");
        assert_eq!(route.tiers.len(), 2);
        assert_eq!(route.tiers[0].priority, 5);
        assert_eq!(route.tiers[1].members[0].pool, vec!["gpt-x", "gpt-y"]);
        assert!(cat.route("only-off").is_none());
    }

    fn pattern_catalog(models: Vec<CredentialModel>) -> Catalog {
        Catalog::build(OperatorData {
            credentials: vec![cred("a", 0, 1), cred("b", 0, 1)],
            models,
            api_keys: vec![],
            prices: Vec::new(),
        })
        .expect("valid")
    }

    /// Each member's credential and pool, in route order.
    fn members(route: &Route) -> Vec<(String, Vec<String>)> {
        route
            .members()
            .map(|m| (m.credential.id.clone(), m.pool.clone()))
            .collect()
    }

    fn pair(id: &str, pool: &[&str]) -> (String, Vec<String>) {
        (id.into(), pool.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn an_exact_row_beats_a_pattern_of_the_same_credential() {
        let cat = pattern_catalog(vec![
            cm("a", "claude-*", "*"),
            cm("a", "claude-opus-4-8", "opus-pinned"),
        ]);
        let route = cat.route("claude-opus-4-8").expect("route");
        assert_eq!(members(&route), vec![pair("a", &["opus-pinned"])]);
        let other = cat.route("claude-haiku-4").expect("route");
        assert_eq!(members(&other), vec![pair("a", &["claude-haiku-4"])]);
    }

    #[test]
    fn the_longest_pattern_of_a_credential_wins() {
        let cat = pattern_catalog(vec![
            cm("a", "*", "fallback"),
            cm("a", "claude-*", "claude-any"),
            cm("a", "claude-opus-*", "*"),
        ]);
        let pool = |name: &str| members(&cat.route(name).expect("route"));
        assert_eq!(
            pool("claude-opus-4-8"),
            vec![pair("a", &["claude-opus-4-8"])]
        );
        assert_eq!(pool("claude-haiku"), vec![pair("a", &["claude-any"])]);
        assert_eq!(pool("gpt-4o"), vec![pair("a", &["fallback"])]);
        assert!(cat.route("claude-*").is_none(), "a pattern is no name");
        assert!(cat.route("*").is_none());
    }

    #[test]
    fn an_exact_row_and_another_credentials_pattern_are_both_candidates() {
        let cat = pattern_catalog(vec![
            cm("b", "claude-*", "*"),
            cm("b", "claude-*", "claude-spare"),
            cm("a", "claude-opus-4-8", "opus"),
        ]);
        let route = cat.route("claude-opus-4-8").expect("route");
        assert_eq!(
            members(&route),
            vec![
                pair("a", &["opus"]),
                pair("b", &["claude-opus-4-8", "claude-spare"])
            ]
        );
        assert!(route.scopes.contains(&Scope::pair("b", "claude-opus-4-8")));
        assert!(!route.scopes.iter().any(|s| s.to_string().contains('*')));
        // Lists name exact rows only.
        assert_eq!(cat.models, vec!["claude-opus-4-8".to_string()]);
        assert!(cat.route("gpt-4o").is_none());
    }

    #[test]
    fn star_upstream_sends_the_requested_name_for_exact_rows_too() {
        let cat = pattern_catalog(vec![cm("a", "gpt-4o", "*")]);
        let route = cat.route("gpt-4o").expect("route");
        assert_eq!(members(&route), vec![pair("a", &["gpt-4o"])]);
    }

    #[test]
    fn pattern_routes_are_cached_within_bounds() {
        let cat = pattern_catalog(vec![cm("a", "*", "*")]);
        let first = cat.route("some-model").expect("route");
        let again = cat.route("some-model").expect("route");
        assert!(Arc::ptr_eq(&first, &again), "rotation state carries over");
        for i in 0..20_000 {
            assert!(cat.route(&format!("name-{i}")).is_some());
        }
        assert!(
            cat.patterns.cached() <= 2 * 2048,
            "{}",
            cat.patterns.cached()
        );
        // A name in use survives the churn: it moves back to the young generation.
        let hot = cat.route("hot").expect("route");
        for i in 0..5_000 {
            cat.route(&format!("churn-{i}"));
            assert!(Arc::ptr_eq(&hot, &cat.route("hot").expect("route")));
        }
        // Very long names are served but not kept.
        let long = "x".repeat(10_000);
        let before = cat.patterns.cached();
        assert!(cat.route(&long).is_some());
        assert!(cat.patterns.cached() <= before);
    }

    #[test]
    fn misplaced_stars_are_rejected_and_left_out_leniently() {
        for row in [
            cm("a", "claude-*-opus", "*"),
            cm("a", "**", "*"),
            cm("a", "m", "up-*"),
        ] {
            let data = OperatorData {
                credentials: vec![cred("a", 0, 1)],
                models: vec![row.clone(), cm("a", "ok-*", "*")],
                api_keys: vec![],
                prices: Vec::new(),
            };
            assert!(
                matches!(
                    Catalog::build(data.clone()),
                    Err(CatalogError::BadPattern { .. })
                ),
                "{row:?}"
            );
            let (cat, problems) = Catalog::build_lenient(data);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(cat.route("ok-1").is_some());
        }
    }

    #[test]
    fn invalid_rows_are_rejected_with_a_reason() {
        let bad = OperatorData {
            credentials: vec![cred("bad id", 0, 1)],
            ..Default::default()
        };
        assert!(matches!(
            Catalog::build(bad),
            Err(CatalogError::BadCredentialId(_))
        ));
        let orphan = OperatorData {
            models: vec![cm("ghost", "m", "m")],
            ..Default::default()
        };
        assert!(matches!(
            Catalog::build(orphan),
            Err(CatalogError::UnknownCredential { .. })
        ));
    }

    #[test]
    fn a_lenient_build_leaves_out_only_the_bad_rows() {
        let mut bad = cred("bad", 0, 1);
        bad.base_url = "ftp://nowhere".into();
        let data = OperatorData {
            credentials: vec![cred("good", 0, 1), bad],
            models: vec![cm("good", "m", "x"), cm("bad", "m", "y")],
            api_keys: vec![ApiKey {
                name: "k".into(),
                key_hash: "nothex".into(),
                enabled: true,
                expires_at: None,
                limits: KeyLimits::default(),
            }],
            prices: Vec::new(),
        };
        let (cat, problems) = Catalog::build_lenient(data);
        assert_eq!(problems.len(), 3, "{problems:?}");
        let route = cat.route("m").expect("good still serves m");
        assert_eq!(route.members().count(), 1);
    }

    #[test]
    fn keys_are_checked_by_hash_enabled_and_expiry() {
        let now = Utc::now();
        let key = |name: &str, secret: &str, enabled, expires_at| ApiKey {
            name: name.into(),
            key_hash: hash_key(secret),
            enabled,
            expires_at,
            limits: KeyLimits::default(),
        };
        let cat = Catalog::build(OperatorData {
            api_keys: vec![
                key("alice", "sk-alice", true, None),
                key("bob", "sk-bob", false, None),
                key(
                    "carol",
                    "sk-carol",
                    true,
                    Some(now - chrono::Duration::seconds(1)),
                ),
            ],
            ..Default::default()
        })
        .expect("valid");
        assert!(matches!(cat.check_key("sk-alice", now), KeyCheck::Valid(k) if k.name == "alice"));
        assert_eq!(cat.check_key("sk-bob", now), KeyCheck::Disabled);
        assert_eq!(cat.check_key("sk-carol", now), KeyCheck::Expired);
        assert_eq!(cat.check_key("sk-nobody", now), KeyCheck::Unknown);
    }
}
