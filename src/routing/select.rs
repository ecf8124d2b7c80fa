//! Choosing a candidate: priority tiers, weighted round-robin or fill-first
//! between credentials, rotation inside a credential's pool, and skipping
//! whatever is blocked.

use std::sync::Arc;

use crate::catalog::{Credential, CredentialKind, Member, Route};
use crate::state::Block;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingMode {
    /// Spread requests over a tier's credentials by weight.
    #[default]
    RoundRobin,
    /// Use a tier's first usable credential (by id) until it is blocked.
    FillFirst,
}

impl std::str::FromStr for RoutingMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round-robin" => Ok(RoutingMode::RoundRobin),
            "fill-first" => Ok(RoutingMode::FillFirst),
            other => Err(format!(
                "{other:?} is not a routing mode (expected round-robin or fill-first)"
            )),
        }
    }
}

/// One (credential, upstream model) pair chosen for an attempt.
#[derive(Debug, Clone)]
pub struct Pick {
    pub credential: Arc<Credential>,
    pub upstream_model: String,
    /// Indices into [`Route::scopes`] of the credential's scope and the pair's.
    pub credential_scope: usize,
    pub pair_scope: usize,
}

/// Where a selection looks up the block of a route's scope (by its index in
/// [`Route::scopes`]). A selection looks up only the candidates it
/// considers, so its cost does not grow with the route.
pub trait Blocks {
    fn block(&self, scope: usize) -> Option<Block>;

    /// Whether the scope waits for the answer of a probe another request is
    /// making (it came out of a long block): its tier is not left for a
    /// lower one meanwhile.
    fn held(&self, _scope: usize) -> bool {
        false
    }
}

/// Every scope's block read up front, aligned with [`Route::scopes`].
impl Blocks for Vec<Option<Block>> {
    fn block(&self, scope: usize) -> Option<Block> {
        self.get(scope).cloned().flatten()
    }
}

/// The blocks of a route's scopes at one instant.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub blocks: &'a dyn Blocks,
    pub now_ms: i64,
}

impl View<'_> {
    fn active(&self, index: usize) -> Option<Block> {
        self.blocks
            .block(index)
            .filter(|b| b.is_active(self.now_ms))
    }

    /// When a pool member can be used again (`now` when it can be used now).
    fn pair_free_at(&self, member: &Member, pool_index: usize) -> i64 {
        let pair = self
            .active(member.pair_scopes[pool_index])
            .map_or(self.now_ms, |b| b.until_ms);
        let cred = self
            .active(member.credential_scope)
            .map_or(self.now_ms, |b| b.until_ms);
        pair.max(cred)
    }

    /// When the member can serve again: its credential is free and at least
    /// one pool member is.
    fn member_free_at(&self, member: &Member) -> i64 {
        (0..member.pool.len())
            .map(|i| self.pair_free_at(member, i))
            .min()
            .unwrap_or(i64::MAX)
    }

    fn usable(&self, member: &Member) -> bool {
        self.member_free_at(member) <= self.now_ms
    }

    /// A member whose credential or one of whose pairs waits for a probe in flight.
    fn held(&self, member: &Member) -> bool {
        std::iter::once(member.credential_scope)
            .chain(member.pair_scopes.iter().copied())
            .any(|i| self.blocks.held(i))
    }

    /// Whether every block in the way of this member is a quota block.
    fn only_quota(&self, member: &Member) -> bool {
        std::iter::once(member.credential_scope)
            .chain(member.pair_scopes.iter().copied())
            .filter_map(|i| self.active(i))
            .all(|b| b.reason.is_quota())
    }
}

/// Picks the next candidate among credentials not yet `tried` this round
/// and not of a kind `excluded` from the request (their provider cannot
/// express it). It looks at candidates in the order it would take them and
/// stops at the first usable one: its cost is that of the candidates it
/// passes over, not of the route.
///
/// Only the highest tier with a usable untried credential is considered; in
/// it, round-robin follows the tier's weighted schedule and fill-first takes
/// the first usable credential. Inside the credential, the pool rotates and
/// skips blocked upstream models.
pub fn select(
    route: &Route,
    view: View<'_>,
    tried: &[String],
    excluded: &[CredentialKind],
    mode: RoutingMode,
) -> Option<Pick> {
    let untried = |m: &Member| {
        !tried.iter().any(|t| *t == m.credential.id) && !excluded.contains(&m.credential.kind())
    };
    for tier in &route.tiers {
        let eligible = |i: usize| {
            let m = &tier.members[i];
            untried(m) && view.usable(m)
        };
        let chosen = match mode {
            RoutingMode::FillFirst => (0..tier.members.len()).find(|&i| eligible(i)),
            RoutingMode::RoundRobin => {
                let start = tier.next_slot();
                let len = tier.schedule.len();
                (0..len)
                    .map(|k| tier.schedule[(start + k) % len])
                    .find(|&i| eligible(i))
            }
        };
        if chosen.is_none() && tier.members.iter().any(|m| untried(m) && view.held(m)) {
            // A probe of this tier is in flight: wait for its answer rather
            // than send this request to a lower tier.
            return None;
        }
        if let Some(i) = chosen {
            let member = &tier.members[i];
            let offset = member.next_pool_offset();
            let n = member.pool.len();
            let slot = (0..n)
                .map(|k| (offset + k) % n)
                .find(|&p| view.pair_free_at(member, p) <= view.now_ms)?;
            return Some(pick_of(member, slot));
        }
    }
    None
}

/// The candidate a conversation was served by last, when it is in the
/// route, not excluded and unblocked now (whatever its tier: a conversation
/// stays where its provider-side cache and state are).
pub fn preferred(
    route: &Route,
    view: View<'_>,
    credential_id: &str,
    upstream_model: &str,
    excluded: &[CredentialKind],
) -> Option<Pick> {
    let member = route.member(credential_id)?;
    if excluded.contains(&member.credential.kind()) {
        return None;
    }
    let slot = member.pool.iter().position(|u| u == upstream_model)?;
    (view.pair_free_at(member, slot) <= view.now_ms).then(|| pick_of(member, slot))
}

fn pick_of(member: &Member, slot: usize) -> Pick {
    Pick {
        credential: member.credential.clone(),
        upstream_model: member.pool[slot].clone(),
        credential_scope: member.credential_scope,
        pair_scope: member.pair_scopes[slot],
    }
}

/// When the request must wait for a probe: the highest tier still in play
/// (a member neither excluded nor tried this round) has nothing usable and
/// a member whose probe another request is making. Returns when to look
/// again. Only asked when a selection found nothing.
pub fn held(
    route: &Route,
    view: View<'_>,
    tried: &[String],
    excluded: &[CredentialKind],
) -> Option<i64> {
    for tier in &route.tiers {
        let mut in_play = tier.members.iter().filter(|m| {
            !excluded.contains(&m.credential.kind()) && !tried.iter().any(|t| *t == m.credential.id)
        });
        let mut next = None;
        for m in in_play.by_ref() {
            if view.usable(m) {
                return None;
            }
            if view.held(m) {
                next = Some(next.map_or(view.member_free_at(m), |n: i64| {
                    n.min(view.member_free_at(m))
                }));
            }
        }
        if next.is_some() {
            return next;
        }
    }
    None
}

/// Whether anything in the route can be used now, and if not, when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Open,
    /// Every candidate is blocked: the soonest end of a block that frees one
    /// (pool members count), and whether every block in the way is a quota block.
    Blocked {
        free_at_ms: i64,
        all_quota: bool,
    },
}

/// Whether anything in the route can be used now. Only asked when a
/// selection found nothing, so walking the route is the failure path's cost.
pub fn availability(route: &Route, view: View<'_>, excluded: &[CredentialKind]) -> Availability {
    let members = || {
        route
            .members()
            .filter(|m| !excluded.contains(&m.credential.kind()))
    };
    if members().any(|m| view.usable(m)) {
        return Availability::Open;
    }
    let free_at_ms = members()
        .map(|m| view.member_free_at(m))
        .min()
        .unwrap_or(view.now_ms);
    let all_quota = members().all(|m| view.only_quota(m));
    Availability::Blocked {
        free_at_ms,
        all_quota,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::tests::{cm, cred};
    use crate::catalog::{Catalog, CredentialModel, OperatorData};
    use crate::state::{Reason, Scope};

    pub fn route_of(creds: Vec<Credential>, models: Vec<CredentialModel>) -> Arc<Route> {
        let cat = Catalog::build(OperatorData {
            credentials: creds,
            models,
            api_keys: vec![],
            prices: Vec::new(),
        })
        .expect("valid catalog");
        cat.route("m").expect("route for m").clone()
    }

    pub fn block(reason: Reason, until_ms: i64) -> Block {
        Block {
            reason,
            status: 0,
            message: String::new(),
            replica: "test".into(),
            since_ms: 0,
            until_ms,
        }
    }

    /// Blocks aligned with the route's scopes.
    pub fn blocks(route: &Route, set: &[(Scope, Block)]) -> Vec<Option<Block>> {
        route
            .scopes
            .iter()
            .map(|s| set.iter().find(|(k, _)| k == s).map(|(_, b)| b.clone()))
            .collect()
    }

    fn picks(
        route: &Route,
        b: &Vec<Option<Block>>,
        now: i64,
        mode: RoutingMode,
        n: usize,
    ) -> Vec<String> {
        (0..n)
            .map(|_| {
                let p = select(
                    route,
                    View {
                        blocks: b,
                        now_ms: now,
                    },
                    &[],
                    &[],
                    mode,
                )
                .expect("a pick");
                format!("{}/{}", p.credential.id, p.upstream_model)
            })
            .collect()
    }

    #[test]
    fn round_robin_follows_weights() {
        let r = route_of(
            vec![cred("a", 0, 2), cred("b", 0, 1)],
            vec![cm("a", "m", "x"), cm("b", "m", "x")],
        );
        let got = picks(&r, &blocks(&r, &[]), 0, RoutingMode::RoundRobin, 6);
        assert_eq!(got, ["a/x", "b/x", "a/x", "a/x", "b/x", "a/x"]);
    }

    #[test]
    fn fill_first_sticks_to_the_first_usable_credential() {
        let r = route_of(
            vec![cred("a", 0, 1), cred("b", 0, 5)],
            vec![cm("a", "m", "x"), cm("b", "m", "x")],
        );
        let none = blocks(&r, &[]);
        assert_eq!(
            picks(&r, &none, 0, RoutingMode::FillFirst, 3),
            ["a/x", "a/x", "a/x"]
        );
        let a_down = blocks(
            &r,
            &[(Scope::credential("a"), block(Reason::Unauthorized, 10))],
        );
        assert_eq!(
            picks(&r, &a_down, 0, RoutingMode::FillFirst, 2),
            ["b/x", "b/x"]
        );
    }

    #[test]
    fn higher_priority_tiers_come_first_until_they_are_blocked() {
        let r = route_of(
            vec![cred("low", 0, 1), cred("high", 10, 1)],
            vec![cm("low", "m", "x"), cm("high", "m", "x")],
        );
        assert_eq!(
            picks(&r, &blocks(&r, &[]), 0, RoutingMode::RoundRobin, 2),
            ["high/x", "high/x"]
        );
        let high_down = blocks(
            &r,
            &[(Scope::pair("high", "x"), block(Reason::UpstreamError, 100))],
        );
        assert_eq!(
            picks(&r, &high_down, 50, RoutingMode::RoundRobin, 1),
            ["low/x"]
        );
        // Once the block has ended, the high tier is back.
        assert_eq!(
            picks(&r, &high_down, 100, RoutingMode::RoundRobin, 1),
            ["high/x"]
        );
    }

    #[test]
    fn pools_rotate_and_skip_blocked_members() {
        let r = route_of(
            vec![cred("a", 0, 1)],
            vec![cm("a", "m", "p1"), cm("a", "m", "p2"), cm("a", "m", "p3")],
        );
        let none = blocks(&r, &[]);
        assert_eq!(
            picks(&r, &none, 0, RoutingMode::RoundRobin, 4),
            ["a/p1", "a/p2", "a/p3", "a/p1"]
        );
        // A block on one pool member is keyed by its upstream model; the others keep serving.
        let p2 = blocks(
            &r,
            &[(Scope::pair("a", "p2"), block(Reason::ModelNotSupported, 99))],
        );
        let got = picks(&r, &p2, 0, RoutingMode::RoundRobin, 6);
        assert!(!got.iter().any(|p| p == "a/p2"), "{got:?}");
        assert!(got.contains(&"a/p1".to_string()) && got.contains(&"a/p3".to_string()));
    }

    #[test]
    fn a_credential_block_blocks_every_pool_member() {
        let r = route_of(
            vec![cred("a", 0, 1), cred("b", 0, 1)],
            vec![cm("a", "m", "p1"), cm("a", "m", "p2"), cm("b", "m", "x")],
        );
        let a_down = blocks(
            &r,
            &[(Scope::credential("a"), block(Reason::Unauthorized, 99))],
        );
        assert_eq!(
            picks(&r, &a_down, 0, RoutingMode::RoundRobin, 3),
            ["b/x", "b/x", "b/x"]
        );
    }

    #[test]
    fn tried_credentials_are_skipped_within_a_round() {
        let a = Credential {
            provider: crate::catalog::Provider::Anthropic,
            ..cred("a", 0, 1)
        };
        let r = route_of(
            vec![a, cred("b", 0, 1)],
            vec![cm("a", "m", "x"), cm("b", "m", "x")],
        );
        let none = blocks(&r, &[]);
        let v = View {
            blocks: &none,
            now_ms: 0,
        };
        let p = select(&r, v, &["a".into()], &[], RoutingMode::FillFirst).expect("b");
        assert_eq!(p.credential.id, "b");
        assert!(
            select(
                &r,
                v,
                &["a".into(), "b".into()],
                &[],
                RoutingMode::RoundRobin
            )
            .is_none()
        );
        // An excluded credential is never picked, in any round.
        let kind = r.member("a").expect("a").credential.kind();
        let p = select(&r, v, &[], &[kind], RoutingMode::FillFirst).expect("b");
        assert_eq!(p.credential.id, "b");
    }

    #[test]
    fn availability_counts_pool_members_and_reasons() {
        let r = route_of(
            vec![cred("a", 0, 1), cred("b", 0, 1)],
            vec![cm("a", "m", "p1"), cm("a", "m", "p2"), cm("b", "m", "x")],
        );
        // b blocked until 500; a's pool members until 300 and 200: the pool frees at 200.
        let set = [
            (Scope::pair("a", "p1"), block(Reason::Quota, 300)),
            (Scope::pair("a", "p2"), block(Reason::Quota, 200)),
            (Scope::pair("b", "x"), block(Reason::Quota, 500)),
        ];
        let b = blocks(&r, &set);
        let v = View {
            blocks: &b,
            now_ms: 0,
        };
        assert_eq!(
            availability(&r, v, &[]),
            Availability::Blocked {
                free_at_ms: 200,
                all_quota: true
            }
        );
        // A credential block longer than the pool's own blocks holds the pool.
        let mut set2 = set.to_vec();
        set2.push((Scope::credential("a"), block(Reason::Unauthorized, 1_000)));
        let b2 = blocks(&r, &set2);
        assert_eq!(
            availability(
                &r,
                View {
                    blocks: &b2,
                    now_ms: 0
                },
                &[]
            ),
            Availability::Blocked {
                free_at_ms: 500,
                all_quota: false
            }
        );
        // One free pool member makes the route open.
        let b3 = blocks(&r, &set[..1]);
        assert_eq!(
            availability(
                &r,
                View {
                    blocks: &b3,
                    now_ms: 0
                },
                &[]
            ),
            Availability::Open
        );
    }
}
