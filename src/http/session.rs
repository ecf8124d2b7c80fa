//! The console's sign-in (contract section 10): the admin key, typed into a
//! form once, becomes a session cookie that every replica can check on its
//! own: `v1.{expiry_ms}.{mac}`, an HMAC over the expiry keyed from the admin
//! key. Nothing is stored anywhere; a session ends when it expires, when the
//! browser drops the cookie (sign-out), or when the admin key changes.
//!
//! The cookie is HttpOnly (no script reads it) and SameSite=Strict (no other
//! site's page sends it). A request that changes state on the strength of
//! the cookie must also carry the session's token in a header (a page of
//! another origin can neither read it nor send a custom header without a
//! CORS grant, which the gateway never gives) and must not come from
//! another site by its `Sec-Fetch-Site` or `Origin`.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ring::hmac;
use serde_json::json;

use super::AppState;
use super::admin::constant_time_eq;
use super::error::render;
use crate::pipeline::GatewayError;
use crate::wire::{ErrorKind, Format};

/// The session cookie's name.
pub const COOKIE: &str = "switchyard_session";
/// The header that carries the session's token on a change.
pub const TOKEN_HEADER: &str = "x-switchyard-token";
/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long a wrong key waits for its answer.
pub const WRONG_KEY_DELAY: Duration = Duration::from_secs(1);

/// A wrong key waits its delay holding this, so wrong keys are answered one
/// a second on a replica however many are sent at once. The right key
/// never waits for it.
static WRONG_KEYS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The signing key of sessions: derived from the admin key, so every replica
/// has it and a new admin key ends every session.
fn signing_key(admin_key: &str) -> hmac::Key {
    let root = hmac::Key::new(hmac::HMAC_SHA256, admin_key.as_bytes());
    let derived = hmac::sign(&root, b"switchyard console session v1");
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

fn mac(key: &hmac::Key, what: &str, expiry_ms: i64) -> String {
    hex::encode(hmac::sign(key, format!("{what}.{expiry_ms}").as_bytes()))
}

/// A session that checked out: when it ends, and its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub expiry_ms: i64,
    pub token: String,
}

/// The session of a cookie value, if it is genuine and unexpired.
fn verify(admin_key: &str, value: &str, now_ms: i64) -> Option<Session> {
    let rest = value.strip_prefix("v1.")?;
    let (expiry, given) = rest.split_once('.')?;
    let expiry_ms: i64 = expiry.parse().ok()?;
    if expiry_ms <= now_ms {
        return None;
    }
    let key = signing_key(admin_key);
    let given = hex::decode(given).ok()?;
    hmac::verify(&key, format!("session.{expiry_ms}").as_bytes(), &given).ok()?;
    Some(Session {
        expiry_ms,
        token: mac(&key, "token", expiry_ms),
    })
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// The request's session, from its cookie.
pub fn of_request(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let admin_key = state.gateway.config().admin_key.as_ref()?;
    verify(
        admin_key.expose(),
        cookie_value(headers)?,
        state.gateway.now_ms(),
    )
}

/// Whether a browser says the request comes from another site: by
/// `Sec-Fetch-Site`, or else by an `Origin` whose host is not the one asked
/// (ports aside: a proxy in front may drop the port from `Host`). A request
/// with neither header is not a browser's cross-site request.
pub fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.to_str(), Ok("same-origin" | "none"));
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host_of = |authority: &str| {
        let authority = authority.trim();
        match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_string(),
            _ => authority.to_string(),
        }
        .to_ascii_lowercase()
    };
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    let asked = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin == "null" || host_of(origin_host) != host_of(asked)
}

/// A change made on the strength of the cookie: from this site, with the
/// session's token.
pub fn change_allowed(session: &Session, headers: &HeaderMap) -> bool {
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    !cross_site(headers) && token.is_some_and(|t| constant_time_eq(t, &session.token))
}

pub fn forbidden(message: &str) -> Response {
    render(
        Format::OpenAi,
        &GatewayError::new(ErrorKind::Forbidden, message),
    )
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The `key` of a sign-in body: a form's field or a JSON object's.
fn key_of(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if json {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        return v.get("key")?.as_str().map(str::to_string);
    }
    form_urlencoded::parse(body)
        .find(|(name, _)| name == "key")
        .map(|(_, v)| v.into_owned())
}

fn set_cookie(value: &str, max_age_s: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// `POST /admin/ui/session`: signs in with the admin key (a form's `key`,
/// or JSON `{"key": ...}`). A wrong key is answered after a delay.
pub async fn sign_in(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if cross_site(&headers) {
        return forbidden("sign-in from another site refused");
    }
    let Some(admin_key) = state.gateway.config().admin_key.clone() else {
        return forbidden("the console needs SWITCHYARD_ADMIN_KEY");
    };
    let given = key_of(&headers, &body).unwrap_or_default();
    let right = constant_time_eq(given.trim(), admin_key.expose());
    if !right {
        {
            let _one_at_a_time = WRONG_KEYS.lock().await;
            tokio::time::sleep(WRONG_KEY_DELAY).await;
        }
        tracing::warn!("console sign-in with a wrong admin key");
        return no_store(render(
            Format::OpenAi,
            &GatewayError::new(
                ErrorKind::Unauthorized,
                "that is not the admin key (SWITCHYARD_ADMIN_KEY)",
            ),
        ));
    }
    let expiry_ms = state.gateway.now_ms() + LIFETIME.as_millis() as i64;
    let key = signing_key(admin_key.expose());
    let value = format!("v1.{expiry_ms}.{}", mac(&key, "session", expiry_ms));
    tracing::info!("console sign-in");
    let mut response = no_store(
        Json(json!({
            "signed_in": true,
            "expires_ms": expiry_ms,
            "token": mac(&key, "token", expiry_ms),
        }))
        .into_response(),
    );
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&value, LIFETIME.as_secs(), over_https(&headers)),
    );
    response
}

/// `GET /admin/ui/session`: the current session's expiry and token (what a
/// reloaded page needs), or 401.
pub async fn current(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match of_request(&state, &headers) {
        Some(s) => no_store(
            Json(json!({"signed_in": true, "expires_ms": s.expiry_ms, "token": s.token}))
                .into_response(),
        ),
        None => no_store(render(
            Format::OpenAi,
            &GatewayError::new(ErrorKind::Unauthorized, "not signed in"),
        )),
    }
}

/// `DELETE /admin/ui/session`: signs out (the cookie is dropped).
pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(session) = of_request(&state, &headers) {
        if !change_allowed(&session, &headers) {
            return forbidden("sign-out without the session's token refused");
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", 0, over_https(&headers)));
    no_store(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(admin: &str, expiry_ms: i64) -> String {
        let key = signing_key(admin);
        format!("v1.{expiry_ms}.{}", mac(&key, "session", expiry_ms))
    }

    #[test]
    fn a_session_holds_until_it_expires_and_only_under_its_admin_key() {
        let value = signed("admin-one", 10_000);
        let s = verify("admin-one", &value, 9_999).unwrap();
        assert_eq!(s.expiry_ms, 10_000);
        assert!(verify("admin-one", &value, 10_000).is_none(), "expired");
        assert!(verify("admin-two", &value, 0).is_none(), "another key");
        // A later expiry with the old MAC is a forgery.
        let forged = value.replacen("10000", "99999", 1);
        assert!(verify("admin-one", &forged, 0).is_none());
        assert!(verify("admin-one", "v1.x.y", 0).is_none());
        assert!(verify("admin-one", "", 0).is_none());
    }

    #[test]
    fn the_token_differs_from_the_cookie_and_between_sessions() {
        let a = verify("k", &signed("k", 5_000), 0).unwrap();
        let b = verify("k", &signed("k", 6_000), 0).unwrap();
        assert_ne!(a.token, b.token);
        assert!(!signed("k", 5_000).contains(&a.token));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn other_sites_are_told_apart_by_fetch_metadata_or_origin() {
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&headers(&[
            ("origin", "http://gw.example:8080"),
            ("host", "gw.example")
        ])));
        assert!(cross_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "gw.example:8080")
        ])));
        assert!(cross_site(&headers(&[("origin", "null"), ("host", "gw")])));
        assert!(!cross_site(&headers(&[("host", "gw")])), "not a browser");
    }
}
