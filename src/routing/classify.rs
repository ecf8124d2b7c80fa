//! The classification table of the contract, as one function.
//!
//! Every upstream outcome maps to what is learned (which scope, which reason,
//! how long) and what the request does next. The first matching row wins.

use super::cooldown::Cooldowns;
use crate::state::Reason;

/// A failure below HTTP: nothing usable came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Timeout,
    Reset,
    /// A 2xx whose body is empty.
    Empty,
    /// A 2xx whose body is not what the protocol says.
    Malformed,
    /// A stream that broke after its first event.
    StreamCut,
    /// An answer larger than the gateway reads whole.
    TooLarge,
}

impl Failure {
    pub fn describe(self) -> &'static str {
        match self {
            Failure::Connect => "could not connect to the upstream",
            Failure::Timeout => "the upstream timed out",
            Failure::Reset => "the upstream connection was reset",
            Failure::Empty => "the upstream sent an empty response",
            Failure::Malformed => "the upstream sent a malformed response",
            Failure::StreamCut => "the upstream stream was cut",
            Failure::TooLarge => "the upstream answer is larger than SWITCHYARD_MAX_ANSWER_BYTES",
        }
    }
}

/// What came back from one upstream attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    Success,
    /// A non-2xx status. `error_text` is the upstream's error (message, type and
    /// code); `hint_ms` its quota hint, if any.
    Status {
        status: u16,
        error_text: &'a str,
        hint_ms: Option<u64>,
    },
    Transport(Failure),
    /// The client went away before the outcome was known.
    ClientGone,
}

/// Why the request reached the upstream: token counts learn less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Generate,
    CountTokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Credential,
    Pair,
}

/// What the outcome teaches the learned state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// Reset the pair's quota ladder and drop its blocks older than the request.
    Clear,
    Block {
        scope: ScopeKind,
        reason: Reason,
        length_ms: u64,
    },
    /// Climb the quota ladder of the pair (see [`super::cooldown::quota_step`]).
    Quota {
        hint_ms: Option<u64>,
    },
    Nothing,
}

/// What the request does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Relay the upstream's answer.
    Answer,
    /// Try the next candidate.
    NextCandidate,
    /// Relay the upstream's error as it is; no other candidate is called.
    ReturnToClient,
    /// Nothing more to do (the client is gone).
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub learn: Learn,
    pub next: Next,
}

const fn verdict(learn: Learn, next: Next) -> Verdict {
    Verdict { learn, next }
}

const fn block(scope: ScopeKind, reason: Reason, length_ms: u64) -> Verdict {
    verdict(
        Learn::Block {
            scope,
            reason,
            length_ms,
        },
        Next::NextCandidate,
    )
}

/// The contract's classification table.
pub fn classify(outcome: &Outcome<'_>, purpose: Purpose, c: &Cooldowns) -> Verdict {
    use ScopeKind::{Credential, Pair};
    let (status, error_text, hint_ms) = match *outcome {
        Outcome::Success => {
            let learn = match purpose {
                Purpose::Generate => Learn::Clear,
                // Token counting reads blocks but never clears one.
                Purpose::CountTokens => Learn::Nothing,
            };
            return verdict(learn, Next::Answer);
        }
        Outcome::ClientGone => return verdict(Learn::Nothing, Next::Stop),
        Outcome::Transport(_) => {
            return block(Pair, Reason::UpstreamError, c.upstream_error_ms);
        }
        Outcome::Status {
            status,
            error_text,
            hint_ms,
        } => (status, error_text, hint_ms),
    };
    match status {
        200..=299 => verdict(Learn::Clear, Next::Answer),
        400 | 422 if says_model_unsupported(error_text) => {
            block(Pair, Reason::ModelNotSupported, c.model_not_supported_ms)
        }
        404 if purpose == Purpose::CountTokens && !mentions_model(error_text) => {
            // A count endpoint the upstream lacks says nothing about the model.
            verdict(Learn::Nothing, Next::NextCandidate)
        }
        // An unknown response, file or batch id is the request's own fault.
        404 if names_an_object(error_text) => verdict(Learn::Nothing, Next::ReturnToClient),
        404 => block(Pair, Reason::NotFound, c.not_found_ms),
        401 => block(Credential, Reason::Unauthorized, c.unauthorized_ms),
        402 => block(Credential, Reason::PaymentRequired, c.payment_required_ms),
        403 => block(Pair, Reason::Forbidden, c.forbidden_ms),
        429 => verdict(Learn::Quota { hint_ms }, Next::NextCandidate),
        400 | 409 | 413 | 422 => verdict(Learn::Nothing, Next::ReturnToClient),
        _ => block(Pair, Reason::UpstreamError, c.upstream_error_ms),
    }
}

/// Phrases that, next to the word "model", say the model cannot be served.
const UNSUPPORTED: &[&str] = &[
    "not supported",
    "not_supported",
    "unsupported",
    "not found",
    "not_found",
    "does not exist",
    "doesn't exist",
    "unknown",
    "unavailable",
    "not available",
    "invalid model",
    "no such model",
];

/// Error codes that blame a request parameter, even when their text names a
/// model ("'max_tokens' is not supported with this model").
const PARAMETER_CODES: &[&str] = &[
    "unsupported_parameter",
    "unsupported_value",
    "invalid_parameter",
    "unknown_parameter",
    "context_length_exceeded",
];

/// Whether an upstream error says the model is unsupported, unknown or unavailable.
pub fn says_model_unsupported(error_text: &str) -> bool {
    let text = error_text.to_ascii_lowercase();
    if text.contains("model_not_found") || text.contains("model_not_supported") {
        return true;
    }
    if PARAMETER_CODES.iter().any(|c| text.contains(c)) || text.contains("parameter") {
        return false;
    }
    mentions_model(&text) && UNSUPPORTED.iter().any(|p| text.contains(p))
}

/// Whether a 404 is about an object the request named (a stored response,
/// file, batch, conversation or vector store) rather than the model.
fn names_an_object(text: &str) -> bool {
    const OBJECTS: &[&str] = &[
        "resp_",
        "response with id",
        "previous response",
        "file-",
        "no such file",
        "batch_",
        "conv_",
        "conversation",
        "vector store",
        "vs_",
    ];
    let lower = text.to_ascii_lowercase();
    !lower.contains("model") && OBJECTS.iter().any(|o| lower.contains(o))
}

fn mentions_model(text: &str) -> bool {
    text.to_ascii_lowercase().contains("model")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Reason::*;

    fn status(status: u16, text: &str) -> Verdict {
        classify(
            &Outcome::Status {
                status,
                error_text: text,
                hint_ms: None,
            },
            Purpose::Generate,
            &Cooldowns::default(),
        )
    }

    fn blocked(v: Verdict) -> (ScopeKind, Reason, u64) {
        match v {
            Verdict {
                learn:
                    Learn::Block {
                        scope,
                        reason,
                        length_ms,
                    },
                next: Next::NextCandidate,
            } => (scope, reason, length_ms),
            other => panic!("expected a block and the next candidate, got {other:?}"),
        }
    }

    const H: u64 = 3_600_000;

    #[test]
    fn success_clears_and_answers() {
        let v = classify(&Outcome::Success, Purpose::Generate, &Cooldowns::default());
        assert_eq!(v, verdict(Learn::Clear, Next::Answer));
    }

    #[test]
    fn model_support_400_and_422_block_the_pair_for_12_hours() {
        for text in [
            "model not supported",
            "The requested model is not supported.",
            "unsupported model: gpt-9",
            "invalid_request_error model_not_found",
            "The model `gpt-9` does not exist or you do not have access to it.",
        ] {
            for code in [400, 422] {
                assert_eq!(
                    blocked(status(code, text)),
                    (ScopeKind::Pair, ModelNotSupported, 12 * H),
                    "{code} {text}"
                );
            }
        }
    }

    #[test]
    fn the_model_row_wins_over_invalid_request_error() {
        let v = status(
            400,
            "invalid_request_error: The requested model is not supported",
        );
        assert_eq!(blocked(v).1, ModelNotSupported);
    }

    #[test]
    fn request_faults_go_back_to_the_client_and_teach_nothing() {
        for (code, text) in [
            (400, "invalid_request_error: messages must be an array"),
            (
                400,
                "context_length_exceeded: This model's maximum context length is 8192",
            ),
            (
                400,
                "unsupported_parameter: 'max_tokens' is not supported with this model",
            ),
            (409, "conflict"),
            (413, "request too large"),
            (422, "validation error: temperature"),
        ] {
            assert_eq!(
                status(code, text),
                verdict(Learn::Nothing, Next::ReturnToClient),
                "{code} {text}"
            );
        }
    }

    #[test]
    fn status_rows() {
        assert_eq!(
            blocked(status(404, "")),
            (ScopeKind::Pair, NotFound, 12 * H)
        );
        assert_eq!(
            blocked(status(401, "bad key")),
            (ScopeKind::Credential, Unauthorized, H / 2)
        );
        assert_eq!(
            blocked(status(402, "")),
            (ScopeKind::Credential, PaymentRequired, H / 2)
        );
        assert_eq!(
            blocked(status(403, "")),
            (ScopeKind::Pair, Forbidden, H / 2)
        );
        for code in [408, 500, 502, 503, 529, 302, 418] {
            assert_eq!(
                blocked(status(code, "")),
                (ScopeKind::Pair, UpstreamError, 60_000),
                "{code}"
            );
        }
    }

    #[test]
    fn a_429_climbs_the_quota_ladder_with_its_hint() {
        let v = classify(
            &Outcome::Status {
                status: 429,
                error_text: "",
                hint_ms: Some(7_000),
            },
            Purpose::Generate,
            &Cooldowns::default(),
        );
        assert_eq!(
            v,
            verdict(
                Learn::Quota {
                    hint_ms: Some(7_000)
                },
                Next::NextCandidate
            )
        );
    }

    #[test]
    fn transport_failures_block_the_pair_for_a_minute() {
        for f in [
            Failure::Connect,
            Failure::Timeout,
            Failure::Reset,
            Failure::Empty,
            Failure::Malformed,
            Failure::StreamCut,
            Failure::TooLarge,
        ] {
            let v = classify(
                &Outcome::Transport(f),
                Purpose::Generate,
                &Cooldowns::default(),
            );
            assert_eq!(
                blocked(v),
                (ScopeKind::Pair, UpstreamError, 60_000),
                "{f:?}"
            );
        }
    }

    #[test]
    fn a_client_that_went_away_teaches_nothing() {
        let v = classify(
            &Outcome::ClientGone,
            Purpose::Generate,
            &Cooldowns::default(),
        );
        assert_eq!(v, verdict(Learn::Nothing, Next::Stop));
    }

    #[test]
    fn a_404_about_a_stored_object_is_the_requests_fault() {
        for text in [
            "Previous response with id 'resp_123' not found.",
            "No such File object: file-abc",
            "Conversation with id 'conv_1' not found.",
        ] {
            assert_eq!(
                status(404, text),
                verdict(Learn::Nothing, Next::ReturnToClient),
                "{text}"
            );
        }
        assert!(matches!(
            status(404, "The model `gpt-9` does not exist").learn,
            Learn::Block { .. }
        ));
    }

    #[test]
    fn token_counting_never_clears_and_a_plain_404_is_neutral() {
        let c = Cooldowns::default();
        let ok = classify(&Outcome::Success, Purpose::CountTokens, &c);
        assert_eq!(ok, verdict(Learn::Nothing, Next::Answer));
        let plain = Outcome::Status {
            status: 404,
            error_text: "Not Found",
            hint_ms: None,
        };
        assert_eq!(
            classify(&plain, Purpose::CountTokens, &c).learn,
            Learn::Nothing
        );
        let model = Outcome::Status {
            status: 404,
            error_text: "model claude-9 not found",
            hint_ms: None,
        };
        assert!(matches!(
            classify(&model, Purpose::CountTokens, &c).learn,
            Learn::Block {
                reason: NotFound,
                ..
            }
        ));
    }

    #[test]
    fn configured_lengths_are_used() {
        let c = Cooldowns {
            upstream_error_ms: 5,
            ..Cooldowns::default()
        };
        let v = classify(&Outcome::Transport(Failure::Reset), Purpose::Generate, &c);
        assert_eq!(blocked(v).2, 5);
    }
}
