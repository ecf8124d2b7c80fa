//! Pattern rows: a `credential_models.model` ending in `*` serves every
//! requested name with that prefix (a bare `*` serves every name).
//!
//! Names with an exact row get their routes when the catalog is built, and the
//! pattern rows that match them are folded in then. A name only patterns serve
//! gets its route on its first request; the route is kept in a bounded cache
//! of the snapshot, so its round-robin positions carry over between requests.
//! Clients send arbitrary names, so the cache never grows past its bounds:
//! an old generation is dropped instead.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Credential, Route, Share};

/// `upstream_model` that sends the requested name itself.
pub const SAME_NAME: &str = "*";

/// Names longer than this are routed but never cached.
const CACHED_NAME_BYTES: usize = 256;
/// Names one cache generation holds; the cache holds two generations.
const GENERATION_NAMES: usize = 2048;
/// Scopes (blocks to read) of all routes one generation holds, so that
/// names matched by many credentials cannot make the cache large.
const GENERATION_SCOPES: usize = 32 * 1024;

/// Whether a `credential_models.model` is a pattern, and its prefix.
pub fn prefix_of(model: &str) -> Option<&str> {
    model.strip_suffix('*')
}

/// A model name is valid when it has no `*`, or exactly one at its end.
pub fn valid_model(model: &str) -> bool {
    match model.find('*') {
        None => true,
        Some(at) => at + 1 == model.len(),
    }
}

/// An upstream model is valid when it has no `*`, or is `*` alone.
pub fn valid_upstream(upstream: &str) -> bool {
    upstream == SAME_NAME || !upstream.contains('*')
}

/// A pool with `*` resolved to the requested name, sorted and without
/// duplicates so every replica rotates alike.
pub fn resolve_pool<'a>(pool: impl IntoIterator<Item = &'a String>, name: &str) -> Vec<String> {
    let resolved: BTreeSet<&str> = pool
        .into_iter()
        .map(|u| if u == SAME_NAME { name } else { u.as_str() })
        .collect();
    resolved.into_iter().map(String::from).collect()
}

/// The pattern rows of enabled credentials, indexed by prefix.
#[derive(Default)]
pub struct Patterns {
    /// Prefix -> each credential holding that pattern, with its pool (which
    /// may hold `*`). Credentials are in id order.
    by_prefix: HashMap<String, Vec<Share>>,
    /// The distinct prefix lengths, longest first: resolving a name costs one
    /// hash lookup per length, whatever the number of rows.
    lengths: Vec<usize>,
    cache: Mutex<RouteCache>,
}

impl Patterns {
    /// `rows`: (prefix, credential, pool), with credentials in id order.
    pub fn new(rows: Vec<(String, Arc<Credential>, Vec<String>)>) -> Self {
        let mut by_prefix: HashMap<String, Vec<Share>> = HashMap::new();
        for (prefix, credential, pool) in rows {
            by_prefix
                .entry(prefix)
                .or_default()
                .push((credential, pool));
        }
        let lengths: BTreeSet<usize> = by_prefix.keys().map(String::len).collect();
        Self {
            by_prefix,
            lengths: lengths.into_iter().rev().collect(),
            cache: Mutex::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The credentials whose patterns match `name`, each with its longest
    /// matching pattern's pool resolved for `name`; credentials for which
    /// `has_exact` holds are left out (their exact row wins).
    pub fn matching(&self, name: &str, has_exact: impl Fn(&str) -> bool) -> Vec<Share> {
        let mut taken: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        for &len in &self.lengths {
            let Some(prefix) = name.get(..len) else {
                continue;
            };
            let Some(holders) = self.by_prefix.get(prefix) else {
                continue;
            };
            for (credential, pool) in holders {
                if !has_exact(&credential.id) && taken.insert(&credential.id) {
                    out.push((credential.clone(), resolve_pool(pool, name)));
                }
            }
        }
        out
    }

    /// The route of a name no exact row serves: from the cache, or built
    /// from the matching patterns (and cached within the bounds).
    pub fn route(&self, name: &str, build: impl FnOnce(Vec<Share>) -> Route) -> Option<Arc<Route>> {
        // A requested `*` is no name: it would reach a block or an upstream as `*`.
        if self.is_empty() || name.contains('*') {
            return None;
        }
        if let Some(route) = self.lock().get(name) {
            return Some(route);
        }
        // Built outside the lock: another request may build the same route
        // meanwhile, and then the first one cached is used by both.
        let members = self.matching(name, |_| false);
        if members.is_empty() {
            return None;
        }
        let route = Arc::new(build(members));
        Some(self.lock().insert(name, route))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    pub fn cached(&self) -> usize {
        let cache = self.lock();
        cache.young.len() + cache.old.len()
    }
}

/// Two generations: new routes go into `young`; when it is full it becomes
/// `old` (and the previous `old` is dropped). A name found in `old` moves
/// back to `young`, so names in use stay and their rotation goes on.
#[derive(Default)]
struct RouteCache {
    young: HashMap<String, Arc<Route>>,
    young_scopes: usize,
    old: HashMap<String, Arc<Route>>,
}

impl RouteCache {
    fn get(&mut self, name: &str) -> Option<Arc<Route>> {
        if let Some(route) = self.young.get(name) {
            return Some(route.clone());
        }
        let route = self.old.remove(name)?;
        Some(self.insert(name, route))
    }

    /// Caches `route` under `name` unless it is too large, and returns the
    /// route to use: the one already cached, if any.
    fn insert(&mut self, name: &str, route: Arc<Route>) -> Arc<Route> {
        if let Some(cached) = self.young.get(name) {
            return cached.clone();
        }
        let scopes = route.scopes.len();
        if name.len() > CACHED_NAME_BYTES || scopes > GENERATION_SCOPES {
            return route;
        }
        if self.young.len() >= GENERATION_NAMES || self.young_scopes + scopes > GENERATION_SCOPES {
            self.old = std::mem::take(&mut self.young);
            self.young_scopes = 0;
        }
        self.old.remove(name);
        self.young_scopes += scopes;
        self.young.insert(name.to_string(), route.clone());
        route
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_have_one_trailing_star_and_upstreams_a_bare_one() {
        assert!(valid_model("claude-*") && valid_model("*") && valid_model("gpt-4o"));
        assert!(!valid_model("claude-*-opus") && !valid_model("**") && !valid_model("*x"));
        assert!(valid_upstream("*") && valid_upstream("claude-opus-4"));
        assert!(!valid_upstream("claude-*"));
        assert_eq!(prefix_of("claude-*"), Some("claude-"));
        assert_eq!(prefix_of("*"), Some(""));
        assert_eq!(prefix_of("claude"), None);
    }

    #[test]
    fn a_pool_resolves_star_to_the_requested_name() {
        let pool = vec!["*".to_string(), "b-model".to_string(), "a-x".to_string()];
        assert_eq!(resolve_pool(&pool, "a-x"), vec!["a-x", "b-model"]);
    }
}
