//! The attempt loop of one request, as a pure state machine: rounds over the
//! candidates, waiting for the soonest block to end, and giving up.

use super::select::{Availability, Pick, RoutingMode, View, availability, held, preferred, select};
use crate::catalog::{CredentialKind, Route};

/// What the request does next.
#[derive(Debug, Clone)]
pub enum Step {
    Try(Pick),
    /// Every candidate is blocked; the soonest frees in `ms`.
    Wait {
        ms: u64,
    },
    /// Fail now: 429 when every block in the way is a quota block, else 503.
    GiveUp {
        retry_after_s: u64,
        all_quota: bool,
    },
}

/// One request's progress through its rounds.
#[derive(Debug)]
pub struct Plan {
    mode: RoutingMode,
    /// Rounds after the first (`SWITCHYARD_REQUEST_RETRY`).
    extra_rounds: u32,
    rounds_started: u32,
    /// Credentials tried in the current round.
    tried: Vec<String>,
    /// Kinds of credential that cannot serve this request at all.
    excluded: Vec<CredentialKind>,
    /// Whether the last pick started a round (undone with it by `retract`).
    last_started_round: bool,
    /// The request never waits for blocks past this instant.
    wait_deadline_ms: i64,
    /// The (credential, upstream model) its conversation was served by last:
    /// tried first while it is unblocked.
    preferred: Option<(String, String)>,
}

impl Plan {
    pub fn new(mode: RoutingMode, extra_rounds: u32, max_wait_ms: u64, now_ms: i64) -> Self {
        Self {
            mode,
            extra_rounds,
            rounds_started: 0,
            tried: Vec::new(),
            excluded: Vec::new(),
            last_started_round: false,
            wait_deadline_ms: now_ms.saturating_add(i64::try_from(max_wait_ms).unwrap_or(i64::MAX)),
            preferred: None,
        }
    }

    /// Tries this (credential, upstream model) first, when it is unblocked.
    pub fn preferring(mut self, candidate: Option<(String, String)>) -> Self {
        self.preferred = candidate;
        self
    }

    /// Leaves credentials of these kinds out of every round (and of the wait).
    pub fn excluding(mut self, kinds: Vec<CredentialKind>) -> Self {
        self.excluded = kinds;
        self
    }

    /// Takes back the last pick, which turned out blocked before anything
    /// was sent: as if it had never been made (the next step sees the block).
    pub fn retract(&mut self, pick: &Pick) {
        if self.tried.last() == Some(&pick.credential.id) {
            self.tried.pop();
            if self.last_started_round {
                self.rounds_started -= 1;
                self.last_started_round = false;
            }
        }
    }

    pub fn rounds_started(&self) -> u32 {
        self.rounds_started
    }

    /// Decides the next step from the route's blocks as read just now.
    pub fn next(&mut self, route: &Route, view: View<'_>) -> Step {
        // Only the request's first attempt follows the conversation.
        if let Some((credential, upstream)) = self.preferred.take() {
            if self.rounds_started == 0 {
                if let Some(pick) = preferred(route, view, &credential, &upstream, &self.excluded) {
                    self.rounds_started = 1;
                    self.last_started_round = true;
                    self.tried.push(pick.credential.id.clone());
                    return Step::Try(pick);
                }
            }
        }
        loop {
            if let Some(pick) = select(route, view, &self.tried, &self.excluded, self.mode) {
                self.last_started_round = self.tried.is_empty();
                if self.tried.is_empty() {
                    if self.rounds_started > self.extra_rounds {
                        return self.give_up(route, view);
                    }
                    self.rounds_started += 1;
                }
                self.tried.push(pick.credential.id.clone());
                return Step::Try(pick);
            }
            if self.tried.is_empty() {
                break;
            }
            // The round is over: every usable credential has been tried once.
            self.tried.clear();
        }
        // A probe of the highest tier in play is in flight: wait for its
        // answer (within the request's wait budget), never a lower tier.
        if let Some(free_at_ms) = held(route, view, &self.tried, &self.excluded) {
            let ms = u64::try_from(free_at_ms - view.now_ms).unwrap_or(0).max(1);
            if free_at_ms <= self.wait_deadline_ms {
                return Step::Wait { ms };
            }
            return Step::GiveUp {
                retry_after_s: ms.div_ceil(1_000).max(1),
                all_quota: false,
            };
        }
        // Nothing is usable: every candidate is blocked.
        match availability(route, view, &self.excluded) {
            Availability::Blocked { free_at_ms, .. }
                if self.rounds_started <= self.extra_rounds
                    && free_at_ms <= self.wait_deadline_ms =>
            {
                Step::Wait {
                    ms: u64::try_from(free_at_ms - view.now_ms).unwrap_or(0),
                }
            }
            _ => self.give_up(route, view),
        }
    }

    fn give_up(&self, route: &Route, view: View<'_>) -> Step {
        match availability(route, view, &self.excluded) {
            Availability::Blocked {
                free_at_ms,
                all_quota,
            } => {
                let ms = u64::try_from(free_at_ms - view.now_ms).unwrap_or(0);
                Step::GiveUp {
                    retry_after_s: ms.div_ceil(1_000).max(1),
                    all_quota,
                }
            }
            // Rounds ran out with candidates that failed without being blocked.
            Availability::Open => Step::GiveUp {
                retry_after_s: 1,
                all_quota: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::{cm, cred};
    use crate::routing::select::tests::{block, blocks, route_of};
    use crate::state::{Block, Reason, Scope};

    fn try_id(step: Step) -> String {
        match step {
            Step::Try(p) => format!("{}/{}", p.credential.id, p.upstream_model),
            other => panic!("expected a try, got {other:?}"),
        }
    }

    fn two() -> std::sync::Arc<crate::catalog::Route> {
        route_of(
            vec![cred("a", 0, 1), cred("b", 0, 1)],
            vec![cm("a", "m", "x"), cm("b", "m", "x")],
        )
    }

    #[test]
    fn a_conversation_goes_back_to_its_candidate_while_it_is_unblocked() {
        let b = crate::catalog::Credential {
            provider: crate::catalog::Provider::Anthropic,
            ..cred("b", 0, 1)
        };
        let r = route_of(
            vec![cred("a", 1, 1), b],
            vec![cm("a", "m", "x"), cm("b", "m", "x")],
        );
        let none = blocks(&r, &[]);
        let v = View {
            blocks: &none,
            now_ms: 0,
        };
        // Even below the top tier: the conversation's cache lives there.
        let mut plan = Plan::new(RoutingMode::FillFirst, 0, 30_000, 0)
            .preferring(Some(("b".into(), "x".into())));
        assert_eq!(try_id(plan.next(&r, v)), "b/x");
        // It failed: the round goes on with the others, once each.
        assert_eq!(try_id(plan.next(&r, v)), "a/x");
        assert!(matches!(plan.next(&r, v), Step::GiveUp { .. }));
        // Blocked, it is not chosen.
        let blocked = blocks(&r, &[(Scope::pair("b", "x"), block(Reason::Quota, 5_000))]);
        let v = View {
            blocks: &blocked,
            now_ms: 0,
        };
        let mut plan = Plan::new(RoutingMode::FillFirst, 0, 30_000, 0)
            .preferring(Some(("b".into(), "x".into())));
        assert_eq!(try_id(plan.next(&r, v)), "a/x");
        // Gone from the route (or excluded), it is not chosen either.
        let mut plan = Plan::new(RoutingMode::FillFirst, 0, 30_000, 0)
            .excluding(vec![r.member("b").expect("b").credential.kind()])
            .preferring(Some(("b".into(), "x".into())));
        assert_eq!(try_id(plan.next(&r, v)), "a/x");
    }

    #[test]
    fn each_credential_once_per_round_then_further_rounds() {
        let r = two();
        let none = blocks(&r, &[]);
        let v = View {
            blocks: &none,
            now_ms: 0,
        };
        let mut plan = Plan::new(RoutingMode::FillFirst, 1, 30_000, 0);
        // Failures that teach nothing leave both usable: two rounds of two tries.
        let tries: Vec<String> = (0..4).map(|_| try_id(plan.next(&r, v))).collect();
        assert_eq!(tries, ["a/x", "b/x", "a/x", "b/x"]);
        assert_eq!(plan.rounds_started(), 2);
        assert!(matches!(
            plan.next(&r, v),
            Step::GiveUp {
                retry_after_s: 1,
                all_quota: false
            }
        ));
    }

    #[test]
    fn all_blocked_waits_for_the_soonest_block_within_the_limit() {
        let r = two();
        let set = [
            (Scope::pair("a", "x"), block(Reason::Quota, 3_000)),
            (Scope::pair("b", "x"), block(Reason::Quota, 1_500)),
        ];
        let b = blocks(&r, &set);
        let mut plan = Plan::new(RoutingMode::RoundRobin, 3, 30_000, 0);
        assert!(matches!(
            plan.next(
                &r,
                View {
                    blocks: &b,
                    now_ms: 0
                }
            ),
            Step::Wait { ms: 1_500 }
        ));
        // After the wait, b is free.
        assert_eq!(
            try_id(plan.next(
                &r,
                View {
                    blocks: &b,
                    now_ms: 1_500
                }
            )),
            "b/x"
        );
    }

    #[test]
    fn a_wait_past_the_limit_gives_up_with_429_or_503() {
        let r = two();
        let quota = blocks(
            &r,
            &[
                (Scope::pair("a", "x"), block(Reason::Quota, 40_000)),
                (Scope::pair("b", "x"), block(Reason::Quota, 60_500)),
            ],
        );
        let mut plan = Plan::new(RoutingMode::RoundRobin, 3, 30_000, 0);
        assert!(matches!(
            plan.next(
                &r,
                View {
                    blocks: &quota,
                    now_ms: 0
                }
            ),
            Step::GiveUp {
                retry_after_s: 40,
                all_quota: true
            }
        ));
        let mixed = blocks(
            &r,
            &[
                (Scope::pair("a", "x"), block(Reason::Quota, 40_000)),
                (
                    Scope::credential("b"),
                    block(Reason::Unauthorized, 1_800_000),
                ),
            ],
        );
        let mut plan = Plan::new(RoutingMode::RoundRobin, 3, 30_000, 0);
        assert!(matches!(
            plan.next(
                &r,
                View {
                    blocks: &mixed,
                    now_ms: 100
                }
            ),
            Step::GiveUp {
                retry_after_s: 40,
                all_quota: false
            }
        ));
    }

    #[test]
    fn the_wait_counts_pool_members() {
        let r = route_of(
            vec![cred("a", 0, 1)],
            vec![cm("a", "m", "p1"), cm("a", "m", "p2")],
        );
        let b = blocks(
            &r,
            &[
                (Scope::pair("a", "p1"), block(Reason::Quota, 9_000)),
                (Scope::pair("a", "p2"), block(Reason::Quota, 2_000)),
            ],
        );
        let mut plan = Plan::new(RoutingMode::RoundRobin, 3, 30_000, 0);
        assert!(matches!(
            plan.next(
                &r,
                View {
                    blocks: &b,
                    now_ms: 0
                }
            ),
            Step::Wait { ms: 2_000 }
        ));
        assert_eq!(
            try_id(plan.next(
                &r,
                View {
                    blocks: &b,
                    now_ms: 2_000
                }
            )),
            "a/p2"
        );
    }

    #[test]
    fn the_wait_budget_is_shared_by_the_whole_request() {
        let r = two();
        let mut plan = Plan::new(RoutingMode::RoundRobin, 10, 5_000, 0);
        let at = |until: i64| -> Vec<Option<Block>> {
            blocks(
                &r,
                &[
                    (Scope::pair("a", "x"), block(Reason::Quota, until)),
                    (Scope::pair("b", "x"), block(Reason::Quota, until)),
                ],
            )
        };
        let b1 = at(3_000);
        assert!(matches!(
            plan.next(
                &r,
                View {
                    blocks: &b1,
                    now_ms: 0
                }
            ),
            Step::Wait { ms: 3_000 }
        ));
        // Three seconds later both are blocked again for three more: past the 5 s budget.
        let b2 = at(6_000);
        assert!(matches!(
            plan.next(
                &r,
                View {
                    blocks: &b2,
                    now_ms: 3_000
                }
            ),
            Step::GiveUp {
                retry_after_s: 3,
                all_quota: true
            }
        ));
    }

    #[test]
    fn rounds_run_out_even_when_waits_would_fit() {
        let r = two();
        let mut plan = Plan::new(RoutingMode::FillFirst, 0, 30_000, 0);
        let none = blocks(&r, &[]);
        assert_eq!(
            try_id(plan.next(
                &r,
                View {
                    blocks: &none,
                    now_ms: 0
                }
            )),
            "a/x"
        );
        let a = blocks(
            &r,
            &[(Scope::pair("a", "x"), block(Reason::UpstreamError, 1_000))],
        );
        assert_eq!(
            try_id(plan.next(
                &r,
                View {
                    blocks: &a,
                    now_ms: 10
                }
            )),
            "b/x"
        );
        let both = blocks(
            &r,
            &[
                (Scope::pair("a", "x"), block(Reason::UpstreamError, 1_000)),
                (Scope::pair("b", "x"), block(Reason::UpstreamError, 1_000)),
            ],
        );
        // One round only: no wait, a 503 with Retry-After.
        assert!(matches!(
            plan.next(
                &r,
                View {
                    blocks: &both,
                    now_ms: 20
                }
            ),
            Step::GiveUp {
                retry_after_s: 1,
                all_quota: false
            }
        ));
    }

    #[test]
    fn a_retracted_pick_is_as_if_never_made() {
        let r = two();
        let none = blocks(&r, &[]);
        let v = View {
            blocks: &none,
            now_ms: 0,
        };
        let mut plan = Plan::new(RoutingMode::FillFirst, 0, 30_000, 0);
        let Step::Try(first) = plan.next(&r, v) else {
            panic!("a pick")
        };
        assert_eq!(first.credential.id, "a");
        // Confirmed blocked before anything was sent: retracted, and seen.
        plan.retract(&first);
        assert_eq!(plan.rounds_started(), 0);
        let blocked = blocks(&r, &[(Scope::pair("a", "x"), block(Reason::Quota, 5_000))]);
        let v = View {
            blocks: &blocked,
            now_ms: 0,
        };
        assert_eq!(try_id(plan.next(&r, v)), "b/x");
        assert_eq!(plan.rounds_started(), 1, "still the first round");
    }
}
