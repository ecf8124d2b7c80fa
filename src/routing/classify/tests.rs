//! The classification table and the identical-failure rule, row by row.

use super::*;
use crate::state::Reason::*;
use crate::wire::UpstreamError;

fn error(message: &str, code: Option<&str>) -> UpstreamError {
    UpstreamError {
        message: message.into(),
        kind: Some("invalid_request_error".into()),
        code: code.map(String::from),
        param: None,
    }
}

fn outcome(status: u16, error: &UpstreamError) -> Outcome<'_> {
    Outcome::Status {
        status,
        error,
        upstream_model: "up-m",
        hint_ms: None,
    }
}

fn coded(status: u16, message: &str, code: Option<&str>) -> Verdict {
    let e = error(message, code);
    classify(
        &outcome(status, &e),
        Purpose::Generate,
        &Cooldowns::default(),
    )
}

fn status(status: u16, text: &str) -> Verdict {
    coded(status, text, None)
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
    for (text, code) in [
        ("model not supported", None),
        ("The requested model is not supported.", None),
        ("unsupported model: gpt-9", None),
        ("no such thing", Some("model_not_found")),
        (
            "The model `gpt-9` does not exist or you do not have access to it.",
            None,
        ),
    ] {
        for status in [400, 422] {
            assert_eq!(
                blocked(coded(status, text, code)),
                (ScopeKind::Pair, ModelNotSupported, 12 * H),
                "{status} {text}"
            );
        }
    }
}

#[test]
fn a_feature_the_model_lacks_or_a_quoted_value_is_the_requests_fault() {
    for (text, code) in [
        ("Image input is not supported for this model", None),
        ("Tool 'get_weather' not found in model response", None),
        ("invalid value 'model_not_found' for field x", None),
        (
            "Invalid value: 'model_not_found'. Supported values are: 'auto'.",
            Some("invalid_value"),
        ),
    ] {
        assert_eq!(
            coded(400, text, code),
            verdict(Learn::Nothing, Next::ReturnToClient),
            "{text}"
        );
    }
    // OpenRouter's 404 for a feature no endpoint offers.
    assert_eq!(
        status(404, "No endpoints found that support image input"),
        verdict(Learn::Nothing, Next::ReturnToClient)
    );
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
    for (status, text, code) in [
        (400, "messages must be an array", None),
        (
            400,
            "This model's maximum context length is 8192",
            Some("context_length_exceeded"),
        ),
        (
            400,
            "'max_tokens' is not supported with this model",
            Some("unsupported_parameter"),
        ),
        (409, "conflict", None),
        (413, "request too large", None),
        (422, "validation error: temperature", None),
    ] {
        assert_eq!(
            coded(status, text, code),
            verdict(Learn::Nothing, Next::ReturnToClient),
            "{status} {text}"
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
    let e = error("", None);
    let v = classify(
        &Outcome::Status {
            status: 429,
            error: &e,
            upstream_model: "up-m",
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
    let plain = error("Not Found", None);
    assert_eq!(
        classify(&outcome(404, &plain), Purpose::CountTokens, &c).learn,
        Learn::Nothing
    );
    let model = error("model claude-9 not found", None);
    assert!(matches!(
        classify(&outcome(404, &model), Purpose::CountTokens, &c).learn,
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

fn signature(status: u16, message: &str, model: &str) -> Option<Signature> {
    let e = error(message, None);
    let outcome = Outcome::Status {
        status,
        error: &e,
        upstream_model: model,
        hint_ms: None,
    };
    let v = classify(&outcome, Purpose::Generate, &Cooldowns::default());
    Signature::of(&outcome, &v)
}

#[test]
fn only_model_support_404_and_403_verdicts_have_a_signature() {
    assert!(signature(400, "model not supported", "m").is_some());
    assert!(signature(404, "Not Found", "m").is_some());
    assert!(signature(403, "forbidden", "m").is_some());
    for status in [401, 402, 429, 500, 400] {
        assert!(signature(status, "nope", "m").is_none(), "{status}");
    }
    assert!(
        Signature::of(&Outcome::Transport(Failure::Reset), &blocked_verdict()).is_none(),
        "a transport failure has no error to compare"
    );
}

fn blocked_verdict() -> Verdict {
    block(ScopeKind::Pair, NotFound, 1)
}

#[test]
fn the_same_failure_on_two_credentials_is_the_requests() {
    let a = signature(404, "The model `up-a` does not exist (req_1)", "up-a");
    let b = signature(404, "The model `up-b` does not exist (req_2)", "up-b");
    assert_eq!(a, b, "ids and model names are not part of it");
    let mut rule = SameFailure::default();
    rule.record("cred-a", a.clone());
    assert!(!rule.is_the_requests(), "one credential is not enough");
    rule.record("cred-a", a.clone());
    assert!(!rule.is_the_requests(), "nor the same one twice");
    rule.record("cred-b", b);
    assert!(rule.is_the_requests());
    rule.record("cred-c", None);
    assert!(
        !rule.is_the_requests(),
        "an attempt that failed otherwise spoils it"
    );
}

#[test]
fn different_failures_are_not_the_requests() {
    for other in [
        signature(404, "The model does not exist", "m"),
        signature(403, "The model `up-b` does not exist", "up-b"),
        signature(400, "The model `up-b` does not exist", "up-b"),
        None,
    ] {
        let mut rule = SameFailure::default();
        rule.record("a", signature(404, "The model `up-a` was retired", "up-a"));
        rule.record("b", other.clone());
        assert!(!rule.is_the_requests(), "{other:?}");
    }
    let mut quota = SameFailure::default();
    quota.record("a", None);
    quota.record("b", None);
    assert!(!quota.is_the_requests(), "429s are never lifted");
}
