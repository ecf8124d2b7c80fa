//! Quota hints: how long a provider asks us to stay away after a 429, and
//! headroom: a successful answer that says nothing is left until a reset.

use serde_json::Value;

/// The provider's hint in milliseconds from `now_ms`, read from the first of:
/// `retry-after-ms`; `Retry-After` (seconds or an HTTP date); Gemini's
/// `retryDelay`; the longest of the OpenAI and Anthropic rate-limit reset headers.
pub fn quota_hint<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    body: Option<&Value>,
    now_ms: i64,
) -> Option<u64> {
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return positive_ms(ms);
    }
    if let Some(v) = header("retry-after") {
        if let Ok(secs) = v.trim().parse::<f64>() {
            return positive_ms(secs * 1_000.0);
        }
        if let Ok(at) = httpdate::parse_http_date(v.trim()) {
            let at_ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            return u64::try_from(at_ms - now_ms).ok().filter(|&ms| ms > 0);
        }
    }
    if let Some(ms) = body.and_then(gemini_retry_delay) {
        return Some(ms);
    }
    let openai = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|h| header(h).and_then(go_duration_ms));
    let anthropic = [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ]
    .into_iter()
    .filter_map(|h| header(h).and_then(|v| rfc3339_from_now(v, now_ms)));
    openai.chain(anthropic).max()
}

/// Headroom of a successful answer: when its rate-limit headers say nothing
/// is left (OpenAI `x-ratelimit-remaining-{requests,tokens}` with their
/// `x-ratelimit-reset-*`; Anthropic `anthropic-ratelimit-*-remaining` with
/// `-reset`, and the unified `anthropic-ratelimit-unified[-window]-status`
/// `rejected` with its `-reset` in epoch seconds), how long until the last
/// of the exhausted limits resets, and which header said so. A limit with
/// nothing left but no reset says nothing usable and is ignored.
pub fn exhausted<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    now_ms: i64,
) -> Option<(u64, &'static str)> {
    let zero = |name: &str| {
        header(name)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|left| left <= 0.0)
    };
    let mut longest: Option<(u64, &'static str)> = None;
    let mut take = |ms: Option<u64>, why: &'static str| {
        if let Some(ms) = ms
            && longest.is_none_or(|(l, _)| ms > l)
        {
            longest = Some((ms, why));
        }
    };
    for (left, reset) in [
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ] {
        if zero(left) {
            take(header(reset).and_then(go_duration_ms), left);
        }
    }
    for (left, reset) in [
        (
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ),
        (
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ),
        (
            "anthropic-ratelimit-input-tokens-remaining",
            "anthropic-ratelimit-input-tokens-reset",
        ),
        (
            "anthropic-ratelimit-output-tokens-remaining",
            "anthropic-ratelimit-output-tokens-reset",
        ),
    ] {
        if zero(left) {
            take(
                header(reset).and_then(|v| rfc3339_from_now(v, now_ms)),
                left,
            );
        }
    }
    for (status, reset) in [
        (
            "anthropic-ratelimit-unified-status",
            "anthropic-ratelimit-unified-reset",
        ),
        (
            "anthropic-ratelimit-unified-5h-status",
            "anthropic-ratelimit-unified-5h-reset",
        ),
        (
            "anthropic-ratelimit-unified-7d-status",
            "anthropic-ratelimit-unified-7d-reset",
        ),
    ] {
        if header(status).is_some_and(|v| v.trim().eq_ignore_ascii_case("rejected")) {
            let at = header(reset).and_then(|v| v.trim().parse::<f64>().ok());
            take(
                at.and_then(|secs| u64::try_from((secs * 1_000.0) as i64 - now_ms).ok())
                    .filter(|&ms| ms > 0),
                status,
            );
        }
    }
    longest.map(|(ms, why)| (ms.min(super::cooldown::MAX_HINT_MS), why))
}

fn positive_ms(ms: f64) -> Option<u64> {
    (ms.is_finite() && ms > 0.0).then(|| ms.ceil().min(u64::MAX as f64) as u64)
}

/// Gemini: `error.details[].retryDelay` such as `"13s"` or `"0.5s"`.
fn gemini_retry_delay(body: &Value) -> Option<u64> {
    body.pointer("/error/details")?
        .as_array()?
        .iter()
        .filter_map(|d| d.get("retryDelay")?.as_str())
        .find_map(go_duration_ms)
}

/// Durations such as `1s`, `6m0s`, `20ms`, `1h2m3.5s`, `0.5s`.
pub fn go_duration_ms(text: &str) -> Option<u64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * factor;
    }
    positive_ms(total)
}

fn rfc3339_from_now(text: &str, now_ms: i64) -> Option<u64> {
    let at = chrono::DateTime::parse_from_rfc3339(text.trim()).ok()?;
    u64::try_from(at.timestamp_millis() - now_ms)
        .ok()
        .filter(|&ms| ms > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hint(
        headers: &[(&'static str, &'static str)],
        body: Option<Value>,
        now: i64,
    ) -> Option<u64> {
        quota_hint(
            |name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            body.as_ref(),
            now,
        )
    }

    #[test]
    fn retry_after_in_seconds_ms_and_as_a_date() {
        assert_eq!(hint(&[("retry-after", "7")], None, 0), Some(7_000));
        assert_eq!(hint(&[("retry-after-ms", "1500")], None, 0), Some(1_500));
        // 1994-11-06T08:49:37Z is 784111777 s after the epoch.
        let now = 784_111_777_000 - 30_000;
        assert_eq!(
            hint(
                &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")],
                None,
                now
            ),
            Some(30_000)
        );
        assert_eq!(hint(&[("retry-after", "garbage")], None, 0), None);
    }

    #[test]
    fn gemini_retry_delay_from_the_body() {
        let body = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}
        ]}});
        assert_eq!(hint(&[], Some(body), 0), Some(13_000));
    }

    #[test]
    fn rate_limit_reset_headers_take_the_longest() {
        assert_eq!(
            hint(
                &[
                    ("x-ratelimit-reset-requests", "1s"),
                    ("x-ratelimit-reset-tokens", "6m0s")
                ],
                None,
                0
            ),
            Some(360_000)
        );
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map(|d| d.timestamp_millis())
            .unwrap_or(0);
        assert_eq!(
            hint(
                &[("anthropic-ratelimit-tokens-reset", "2026-01-01T00:00:42Z")],
                None,
                now
            ),
            Some(42_000)
        );
    }

    fn left(headers: &[(&'static str, &'static str)], now: i64) -> Option<(u64, &'static str)> {
        exhausted(
            |name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            now,
        )
    }

    #[test]
    fn headroom_nothing_left_until_the_last_reset() {
        // Something left: no headroom block.
        assert_eq!(
            left(
                &[
                    ("x-ratelimit-remaining-requests", "12"),
                    ("x-ratelimit-reset-requests", "1s")
                ],
                0
            ),
            None
        );
        assert_eq!(
            left(
                &[
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "1s"),
                    ("x-ratelimit-remaining-tokens", "0"),
                    ("x-ratelimit-reset-tokens", "6m0s"),
                ],
                0
            ),
            Some((360_000, "x-ratelimit-remaining-tokens"))
        );
        // Nothing left, but no reset to say when: ignored.
        assert_eq!(left(&[("x-ratelimit-remaining-requests", "0")], 0), None);
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map(|d| d.timestamp_millis())
            .unwrap_or(0);
        assert_eq!(
            left(
                &[
                    ("anthropic-ratelimit-requests-remaining", "0"),
                    ("anthropic-ratelimit-requests-reset", "2026-01-01T00:00:09Z"),
                    ("anthropic-ratelimit-tokens-remaining", "5000"),
                    ("anthropic-ratelimit-tokens-reset", "2026-01-01T00:01:00Z"),
                ],
                now
            ),
            Some((9_000, "anthropic-ratelimit-requests-remaining"))
        );
        // The unified limits of subscription plans: reset in epoch seconds.
        let reset = (now / 1_000 + 3_600).to_string();
        let reset: &'static str = Box::leak(reset.into_boxed_str());
        assert_eq!(
            left(
                &[
                    ("anthropic-ratelimit-unified-status", "rejected"),
                    ("anthropic-ratelimit-unified-reset", reset),
                ],
                now
            ),
            Some((3_600_000, "anthropic-ratelimit-unified-status"))
        );
        assert_eq!(
            left(
                &[
                    ("anthropic-ratelimit-unified-status", "allowed_warning"),
                    ("anthropic-ratelimit-unified-reset", reset),
                ],
                now
            ),
            None
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms("20ms"), Some(20));
        assert_eq!(go_duration_ms("1h2m3.5s"), Some(3_723_500));
        assert_eq!(go_duration_ms("0.5s"), Some(500));
        assert_eq!(go_duration_ms("5 parsecs"), None);
        assert_eq!(go_duration_ms(""), None);
    }
}
