//! Client keys: from `Authorization: Bearer`, `x-api-key`, `x-goog-api-key`
//! or `?key=`, checked by hash against the catalog.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, Uri};

use std::sync::Arc;

use crate::catalog::{ApiKey, Catalog, KeyCheck};
use crate::pipeline::GatewayError;
use crate::wire::ErrorKind;

/// Where a request carried its client key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPlace {
    Bearer,
    XApiKey,
    XGoogApiKey,
    Query,
}

impl KeyPlace {
    /// The places only Gemini clients use: a list request that authenticates
    /// this way wants Gemini's list format.
    pub fn is_gemini(self) -> bool {
        matches!(self, KeyPlace::XGoogApiKey | KeyPlace::Query)
    }
}

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// The client key of a request, from the first place that has one.
pub fn client_key(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    find_key(headers, uri).map(|(key, _)| key)
}

/// The client key and where it came from, checked in a fixed order.
pub fn find_key(headers: &HeaderMap, uri: &Uri) -> Option<(String, KeyPlace)> {
    let header = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if let Some(auth) = header(&AUTHORIZATION) {
        let (scheme, rest) = auth.split_once(' ').unwrap_or((auth, ""));
        if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
            return Some((rest.trim().to_string(), KeyPlace::Bearer));
        }
    }
    if let Some(key) = header(&X_API_KEY) {
        return Some((key.to_string(), KeyPlace::XApiKey));
    }
    if let Some(key) = header(&X_GOOG_API_KEY) {
        return Some((key.to_string(), KeyPlace::XGoogApiKey));
    }
    uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, v)| k == "key" && !v.is_empty())
            .map(|(_, v)| (v.into_owned(), KeyPlace::Query))
    })
}

/// The client's key (its name and limits), or the 401 to answer.
pub fn authenticate(
    catalog: &Catalog,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Arc<ApiKey>, GatewayError> {
    let Some(key) = client_key(headers, uri) else {
        return Err(GatewayError::new(
            ErrorKind::Unauthorized,
            "no API key: send it as `Authorization: Bearer <key>`, `x-api-key`, `x-goog-api-key` or `?key=`",
        ));
    };
    match catalog.check_key(&key, chrono::Utc::now()) {
        KeyCheck::Valid(key) => Ok(key),
        KeyCheck::Unknown => Err(GatewayError::new(
            ErrorKind::Unauthorized,
            "invalid API key",
        )),
        KeyCheck::Disabled => Err(GatewayError::new(
            ErrorKind::Unauthorized,
            "this API key is disabled",
        )),
        KeyCheck::Expired => Err(GatewayError::new(
            ErrorKind::Unauthorized,
            "this API key has expired",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("valid header"));
        }
        h
    }

    #[test]
    fn keys_come_from_all_four_places() {
        let plain: Uri = "/v1/models".parse().expect("uri");
        assert_eq!(
            client_key(&headers(&[("authorization", "Bearer sk-a")]), &plain).as_deref(),
            Some("sk-a")
        );
        assert_eq!(
            client_key(&headers(&[("x-api-key", "sk-b")]), &plain).as_deref(),
            Some("sk-b")
        );
        assert_eq!(
            client_key(&headers(&[("x-goog-api-key", "sk-c")]), &plain).as_deref(),
            Some("sk-c")
        );
        let q: Uri = "/v1beta/models?alt=sse&key=sk-d%2B".parse().expect("uri");
        assert_eq!(client_key(&HeaderMap::new(), &q).as_deref(), Some("sk-d+"));
        let place = |h: &HeaderMap, u: &Uri| find_key(h, u).map(|(_, p)| p.is_gemini());
        assert_eq!(place(&HeaderMap::new(), &q), Some(true));
        assert_eq!(
            place(&headers(&[("x-goog-api-key", "k")]), &plain),
            Some(true)
        );
        assert_eq!(place(&headers(&[("x-api-key", "k")]), &q), Some(false));
        assert_eq!(client_key(&HeaderMap::new(), &plain), None);
        assert_eq!(
            client_key(&headers(&[("authorization", "Basic abc")]), &plain),
            None
        );
    }
}
