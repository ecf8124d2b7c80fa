//! The classification table of the contract, as one function.
//!
//! Every upstream outcome maps to what is learned (which scope, which reason,
//! how long) and what the request does next. The first matching row wins.

use super::blame::{Blame, blame, normalized_message};
use super::cooldown::Cooldowns;
use crate::state::Reason;
use crate::wire::UpstreamError;

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
    /// A non-2xx status. `error` is the upstream's error, its code, type and
    /// message apart; `upstream_model` the model the request was sent for
    /// (an error naming it names the model); `hint_ms` its quota hint, if any.
    Status {
        status: u16,
        error: &'a UpstreamError,
        upstream_model: &'a str,
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
    let (status, error, upstream_model, hint_ms) = match *outcome {
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
            error,
            upstream_model,
            hint_ms,
        } => (status, error, upstream_model, hint_ms),
    };
    // What the error blames (the model, the request, or neither), read only
    // for the rows that depend on it: see `routing::blame` for the rule.
    let blamed = matches!(status, 400 | 404 | 422).then(|| blame(error, upstream_model));
    let on_model = blamed == Some(Blame::Model);
    match status {
        200..=299 => verdict(Learn::Clear, Next::Answer),
        400 | 422 if on_model => block(Pair, Reason::ModelNotSupported, c.model_not_supported_ms),
        404 if purpose == Purpose::CountTokens && !on_model => {
            // A count endpoint the upstream lacks says nothing about the model.
            verdict(Learn::Nothing, Next::NextCandidate)
        }
        // An unknown response, file or batch id, or a feature no endpoint
        // offers, is the request's own fault.
        404 if names_an_object(&error.message) || blamed == Some(Blame::Request) => {
            verdict(Learn::Nothing, Next::ReturnToClient)
        }
        404 => block(Pair, Reason::NotFound, c.not_found_ms),
        401 => block(Credential, Reason::Unauthorized, c.unauthorized_ms),
        402 => block(Credential, Reason::PaymentRequired, c.payment_required_ms),
        403 => block(Pair, Reason::Forbidden, c.forbidden_ms),
        429 => verdict(Learn::Quota { hint_ms }, Next::NextCandidate),
        400 | 409 | 413 | 422 => verdict(Learn::Nothing, Next::ReturnToClient),
        _ => block(Pair, Reason::UpstreamError, c.upstream_error_ms),
    }
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

/// A failure as the identical-failure rule compares it: the same status, the
/// same code and type, and the same message once ids, numbers, quoted values
/// and model names are taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    status: u16,
    kind: Option<String>,
    code: Option<String>,
    message: String,
}

impl Signature {
    /// The signature of an outcome whose verdict the rule may withdraw: a
    /// model-support, 404 or 403 block. Any other verdict (401, 402 and 429
    /// among them) has none, and a request that met one is never lifted.
    pub fn of(outcome: &Outcome<'_>, verdict: &Verdict) -> Option<Signature> {
        let Learn::Block { reason, .. } = verdict.learn else {
            return None;
        };
        if !matches!(
            reason,
            Reason::ModelNotSupported | Reason::NotFound | Reason::Forbidden
        ) {
            return None;
        }
        let Outcome::Status {
            status,
            error,
            upstream_model,
            ..
        } = outcome
        else {
            return None;
        };
        let lower = |s: &Option<String>| s.as_deref().map(str::to_ascii_lowercase);
        Some(Signature {
            status: *status,
            kind: lower(&error.kind),
            code: lower(&error.code),
            message: normalized_message(&error.message, upstream_model),
        })
    }
}

/// The contract's identical-failure rule ("one request never condemns the
/// pool"), fed one failed attempt at a time. When every attempt of a request
/// failed with the same signature on at least two credentials and none
/// served it, the failure is the request's: its blocks are withdrawn and the
/// client gets the upstream's error.
#[derive(Debug, Default)]
pub struct SameFailure {
    signature: Option<Signature>,
    /// The first credential that failed, and whether another one did too.
    first: Option<String>,
    two_credentials: bool,
    /// An attempt failed otherwise, or with another signature.
    mixed: bool,
}

impl SameFailure {
    /// One failed attempt on `credential_id`; `signature` is `None` for a
    /// failure the rule may not lift.
    pub fn record(&mut self, credential_id: &str, signature: Option<Signature>) {
        let Some(signature) = signature.filter(|_| !self.mixed) else {
            self.mixed = true;
            return;
        };
        match (&self.signature, &self.first) {
            (Some(seen), Some(first)) if *seen == signature => {
                self.two_credentials |= first != credential_id;
            }
            (None, None) => {
                self.signature = Some(signature);
                self.first = Some(credential_id.to_string());
            }
            _ => self.mixed = true,
        }
    }

    /// Whether the request's failure is its own; asked when it gives up,
    /// that is when no candidate served it.
    pub fn is_the_requests(&self) -> bool {
        !self.mixed && self.two_credentials
    }
}

#[cfg(test)]
mod tests;
