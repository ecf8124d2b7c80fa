//! JSON read where it lies. A request body of the maximum size is mostly
//! content the gateway only carries (messages, tool schemas, fields it does
//! not know); parsed into `serde_json::Value` trees, small numbers cost
//! forty times their text. Here a body is checked once, and then read
//! through [`Json`], a view of a piece of its text that finds fields and
//! items by scanning, allocating nothing; what the gateway only carries
//! stays text, and is written out again as it came ([`Raw`], and the
//! [`Document`] of a whole body).
//!
//! Below `wire`, `translate`, `pipeline` and `http`, which all read JSON.

mod document;
mod scan;

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;
use serde_json::value::RawValue;

pub use document::{Document, DocumentError};

/// The deepest nesting taken, as `serde_json` does for its own trees:
/// nothing the gateway reads recursively goes deeper.
pub const MAX_DEPTH: usize = 128;

/// Why text is not JSON the gateway reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A JSON value: a slice of checked JSON text, without the whitespace
/// around it. Copy; reading it allocates only to unescape a string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Json<'a>(&'a str);

impl fmt::Debug for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        match self.0.char_indices().nth(SHOWN) {
            Some((at, _)) => write!(f, "{}…", &self.0[..at]),
            None => f.write_str(self.0),
        }
    }
}

impl<'a> Json<'a> {
    /// `null`: what a missing field reads as through [`Json::field`].
    pub const NULL: Json<'static> = Json("null");

    /// Checks `text` (syntax, and nesting up to [`MAX_DEPTH`]).
    pub fn parse(text: &'a str) -> Result<Json<'a>, Invalid> {
        Json::parse_fields(text, |_| {})
    }

    /// [`Json::parse`], telling `field` where each field of a top-level
    /// object lies in the same pass. What it was told is to be dropped when
    /// this fails.
    pub fn parse_fields(
        text: &'a str,
        field: impl FnMut(scan::Field),
    ) -> Result<Json<'a>, Invalid> {
        if !scan::valid_fields(text.as_bytes(), MAX_DEPTH, field) {
            // The slow way, for its words: where the text went wrong.
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Err(e) => Invalid(e.to_string()),
                Ok(_) => Invalid(format!("nested more than {MAX_DEPTH} deep")),
            });
        }
        Ok(Json(text.trim_matches([' ', '\t', '\n', '\r'])))
    }

    /// [`Json::parse`] and [`Json::get_many`] in one pass over the text.
    pub fn parse_many<const N: usize>(
        text: &'a str,
        keys: [&str; N],
    ) -> Result<(Json<'a>, [Option<Json<'a>>; N]), Invalid> {
        let mut found = [None; N];
        let json = Json::parse_fields(text, |f| {
            let raw = &text[f.key];
            // A key without escapes is its text; one with them is read.
            let read;
            let name = if f.escaped {
                read = Json::checked(raw).as_str().unwrap_or_default();
                &*read
            } else {
                &raw[1..raw.len() - 1]
            };
            for (wanted, slot) in keys.iter().zip(found.iter_mut()) {
                if name == *wanted {
                    *slot = Some(Json::checked(&text[f.value.clone()]));
                }
            }
        })?;
        Ok((json, found))
    }

    /// Text already checked by [`Json::parse`] (a part of a checked value).
    fn checked(text: &'a str) -> Self {
        Json(text)
    }

    /// The value's text, as it came.
    pub fn text(self) -> &'a str {
        self.0
    }

    fn first(self) -> u8 {
        self.0.as_bytes().first().copied().unwrap_or(b'n')
    }

    pub fn is_null(self) -> bool {
        self.0 == "null"
    }

    pub fn is_object(self) -> bool {
        self.first() == b'{'
    }

    pub fn is_array(self) -> bool {
        self.first() == b'['
    }

    pub fn is_string(self) -> bool {
        self.first() == b'"'
    }

    pub fn is_number(self) -> bool {
        matches!(self.first(), b'-' | b'0'..=b'9')
    }

    /// A string's contents, borrowed unless it has escapes.
    pub fn as_str(self) -> Option<Cow<'a, str>> {
        if !self.is_string() {
            return None;
        }
        let inner = &self.0[1..self.0.len() - 1];
        if !inner.contains('\\') {
            return Some(Cow::Borrowed(inner));
        }
        // A lone surrogate escape (`\ud800`) has no text: no string.
        serde_json::from_str::<String>(self.0).ok().map(Cow::Owned)
    }

    pub fn as_bool(self) -> Option<bool> {
        match self.0 {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    fn number(self) -> Option<serde_json::Number> {
        self.is_number()
            .then(|| serde_json::from_str(self.0).ok())
            .flatten()
    }

    /// As `serde_json::Value::as_u64`: a non-negative integer that fits.
    pub fn as_u64(self) -> Option<u64> {
        // Plain digits (what usage counts are; checked JSON has no leading
        // zeros), up to 19 of them, always fit: no number parser needed.
        let b = self.0.as_bytes();
        if (1..=19).contains(&b.len()) && b.iter().all(u8::is_ascii_digit) {
            return self.0.parse().ok();
        }
        self.number()?.as_u64()
    }

    pub fn as_i64(self) -> Option<i64> {
        self.number()?.as_i64()
    }

    pub fn as_f64(self) -> Option<f64> {
        self.number()?.as_f64()
    }

    /// The value of `key` in an object (the last, when a key repeats, as in
    /// `serde_json`).
    pub fn get(self, key: &str) -> Option<Json<'a>> {
        let [found] = self.get_many([key]);
        found
    }

    /// The values of several keys, found in one pass over the object (the
    /// last of each, as [`Json::get`]).
    pub fn get_many<const N: usize>(self, keys: [&str; N]) -> [Option<Json<'a>>; N] {
        let mut found = [None; N];
        let mut entries = self.entries();
        while let Some((k, v)) = entries.next_raw() {
            for (key, slot) in keys.iter().zip(found.iter_mut()) {
                if key_is(k, key) {
                    *slot = Some(v);
                }
            }
        }
        found
    }

    /// The value of `key`, or `null` when there is none (as indexing a
    /// `serde_json::Value` gives).
    pub fn field(self, key: &str) -> Json<'a> {
        self.get(key).unwrap_or(Json::NULL)
    }

    /// The value as a borrowed `RawValue`, to be written out as it came.
    pub fn raw(self) -> Option<&'a RawValue> {
        serde_json::from_str(self.0).ok()
    }

    /// The `index`th item of an array.
    pub fn at(self, index: usize) -> Option<Json<'a>> {
        self.items().nth(index)
    }

    /// As `serde_json::Value::pointer`: `/a/0/b`.
    pub fn pointer(self, path: &str) -> Option<Json<'a>> {
        if path.is_empty() {
            return Some(self);
        }
        let mut at = self;
        for token in path.strip_prefix('/')?.split('/') {
            let token = if token.contains('~') {
                Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
            } else {
                Cow::Borrowed(token)
            };
            at = if at.is_array() {
                at.at(token.parse().ok()?)?
            } else {
                at.get(&token)?
            };
        }
        Some(at)
    }

    /// An array's items; nothing for anything else.
    pub fn items(self) -> Items<'a> {
        Items {
            text: if self.is_array() { self.0 } else { "[]" },
            at: 1,
        }
    }

    /// An object's keys and values, in order; nothing for anything else.
    pub fn entries(self) -> Entries<'a> {
        Entries {
            text: if self.is_object() { self.0 } else { "{}" },
            at: 1,
        }
    }

    /// The value without the whitespace between its tokens.
    pub fn compact(self) -> Cow<'a, str> {
        if scan::has_spaces(self.0.as_bytes()) {
            Cow::Owned(scan::compact(self.0))
        } else {
            Cow::Borrowed(self.0)
        }
    }

    /// A `serde_json::Value` of this value: for small parts only (a tree
    /// costs many times its text).
    pub fn to_value(self) -> serde_json::Value {
        serde_json::from_str(self.0).unwrap_or_default()
    }
}

/// The items of an array, found one by one.
#[derive(Debug, Clone)]
pub struct Items<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Iterator for Items<'a> {
    type Item = Json<'a>;

    fn next(&mut self) -> Option<Json<'a>> {
        let b = self.text.as_bytes();
        let start = scan::skip_ws(b, self.at);
        if start >= b.len() || b[start] == b']' {
            self.at = b.len();
            return None;
        }
        let end = scan::value_end(b, start);
        let after = scan::skip_ws(b, end);
        self.at = if b.get(after) == Some(&b',') {
            after + 1
        } else {
            after
        };
        Some(Json::checked(&self.text[start..end]))
    }
}

/// The entries of an object, found one by one.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Entries<'a> {
    /// The next entry, its key as JSON text (with its quotes).
    fn next_raw(&mut self) -> Option<(&'a str, Json<'a>)> {
        let b = self.text.as_bytes();
        let key_start = scan::skip_ws(b, self.at);
        if key_start >= b.len() || b[key_start] != b'"' {
            self.at = b.len();
            return None;
        }
        let key_end = scan::string_end(b, key_start);
        let colon = scan::skip_ws(b, key_end);
        let start = scan::skip_ws(b, colon + 1);
        let end = scan::value_end(b, start);
        let after = scan::skip_ws(b, end);
        self.at = if b.get(after) == Some(&b',') {
            after + 1
        } else {
            after
        };
        Some((
            &self.text[key_start..key_end],
            Json::checked(&self.text[start..end]),
        ))
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = (Cow<'a, str>, Json<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (key, value) = self.next_raw()?;
        Some((Json::checked(key).as_str().unwrap_or_default(), value))
    }
}

/// Whether `raw`, a key as JSON text, is `key`: compared as written unless
/// it has an escape. An escape only makes text longer than what it stands
/// for, so a key written no longer than `key` is compared as it is, and
/// only a longer one is looked at for escapes (a plain loop: keys are short).
fn key_is(raw: &str, key: &str) -> bool {
    let inner = &raw[1..raw.len().saturating_sub(1).max(1)];
    let escaped = |t: &str| t.bytes().any(|c| c == b'\\');
    match inner.len().cmp(&key.len()) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => inner == key && !escaped(inner),
        std::cmp::Ordering::Greater => {
            escaped(inner) && Json::checked(raw).as_str().is_some_and(|k| k == key)
        }
    }
}

/// A JSON value kept as its text: what the gateway carries without reading
/// (a tool's schema, a call's arguments), written out as it came.
#[derive(Clone)]
pub struct Raw(Box<RawValue>);

impl Raw {
    /// A copy of `json`'s text.
    pub fn of(json: Json<'_>) -> Raw {
        RawValue::from_string(json.text().to_string())
            .map(Raw)
            .unwrap_or_else(|_| Raw::empty_object())
    }

    /// Checked JSON text.
    pub fn parse(text: String) -> Result<Raw, Invalid> {
        Json::parse(&text)?;
        RawValue::from_string(text)
            .map(Raw)
            .map_err(|e| Invalid(e.to_string()))
    }

    pub fn from_value(value: &serde_json::Value) -> Raw {
        serde_json::value::to_raw_value(value)
            .map(Raw)
            .unwrap_or_else(|_| Raw::empty_object())
    }

    pub fn empty_object() -> Raw {
        match RawValue::from_string("{}".into()) {
            Ok(raw) => Raw(raw),
            // `{}` is JSON: this arm is never taken.
            Err(_) => unreachable!("{{}} is JSON"),
        }
    }

    pub fn json(&self) -> Json<'_> {
        Json::checked(self.0.get().trim_matches([' ', '\t', '\n', '\r']))
    }

    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// As a `RawValue`, for values written out by `serde_json`.
    pub fn value(&self) -> &RawValue {
        &self.0
    }
}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.json().fmt(f)
    }
}

/// The same JSON, whatever the spacing and key order.
impl PartialEq for Raw {
    fn eq(&self, other: &Raw) -> bool {
        self.text() == other.text() || self.json().to_value() == other.json().to_value()
    }
}

impl Serialize for Raw {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Where `inner`, a slice of `outer`, lies in it.
pub fn span_in(outer: &str, inner: &str) -> std::ops::Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    start..start + inner.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_as_written_or_through_their_escapes() {
        assert!(key_is(r#""model""#, "model"));
        assert!(key_is(r#""mo\u0064el""#, "model"));
        assert!(!key_is(r#""mode""#, "model"));
        assert!(!key_is(r#""models""#, "model"));
        // `"mo\\el"` is the four letters around one backslash.
        assert!(key_is(r#""mo\\el""#, "mo\\el"));
        assert!(!key_is(r#""mo\\el""#, "mo\\\\el"));
        let v = Json::parse(r#"{"mo\u0064el":"a","usage":{"x":1},"model":"b"}"#).unwrap();
        let [model, usage, none] = v.get_many(["model", "usage", "error"]);
        assert_eq!(model.and_then(|m| m.as_str()).as_deref(), Some("b"));
        assert!(usage.is_some() && none.is_none());
    }

    #[test]
    fn fields_items_and_scalars_read_as_serde_json_reads_them() {
        let text = r#" {"a": [1, -2.5, "x\"y", true, null, {"b": {}}], "k\u00e9y": 7, "a": [3]} "#;
        let v = Json::parse(text).unwrap();
        assert!(v.is_object());
        assert_eq!(
            v.get("a").unwrap().text(),
            "[3]",
            "the last of a repeated key"
        );
        let first = v.entries().next().unwrap().1;
        let items: Vec<_> = first.items().collect();
        assert_eq!(items.len(), 6);
        assert_eq!(items[0].as_u64(), Some(1));
        assert_eq!(items[1].as_u64(), None);
        assert_eq!(items[1].as_f64(), Some(-2.5));
        assert_eq!(items[2].as_str().as_deref(), Some("x\"y"));
        assert_eq!(items[3].as_bool(), Some(true));
        assert!(items[4].is_null());
        assert_eq!(items[5].pointer("/b").unwrap().text(), "{}");
        assert_eq!(v.get("kéy").and_then(Json::as_i64), Some(7));
        assert_eq!(first.pointer("/5/b"), items[5].get("b"));
        assert!(v.get("missing").is_none() && items[0].get("a").is_none());
        assert_eq!(items[0].items().count(), 0);
        let [a, key, missing] = v.get_many(["a", "kéy", "missing"]);
        assert_eq!((a, key, missing), (v.get("a"), v.get("kéy"), None));
    }

    #[test]
    fn integers_read_as_serde_json_reads_them() {
        for text in [
            "0",
            "7",
            "18446744073709551615",
            "18446744073709551616",
            "9999999999999999999",
            "-1",
            "1.0",
            "1e3",
            "\"1\"",
        ] {
            let v = Json::parse(text).unwrap();
            let tree: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(v.as_u64(), tree.as_u64(), "{text}");
        }
        let v = Json::parse(r#"{"a~b": {"c/d": 1}, "e": 2}"#).unwrap();
        assert_eq!(v.pointer("/a~0b/c~1d").and_then(Json::as_u64), Some(1));
        assert_eq!(v.pointer("/e").and_then(Json::as_u64), Some(2));
    }

    #[test]
    fn broken_and_too_deep_text_is_refused() {
        assert!(Json::parse("{\"a\":").is_err());
        assert!(Json::parse("[1,]").is_err());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(Json::parse(&deep).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(Json::parse(&ok).is_ok());
    }

    #[test]
    fn raw_values_are_written_as_they_came() {
        let raw = Raw::parse("{\"b\": [1, 2]}".into()).unwrap();
        let out = serde_json::to_string(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(out, r#"{"a":1}"#);
        #[derive(Serialize)]
        struct Carrier<'a> {
            x: &'a Raw,
        }
        let out = serde_json::to_string(&Carrier { x: &raw }).unwrap();
        assert_eq!(out, "{\"x\":{\"b\": [1, 2]}}");
        assert_eq!(raw, Raw::from_value(&serde_json::json!({"b": [1, 2]})));
        assert_eq!(raw.json().compact(), "{\"b\":[1,2]}");
    }
}
