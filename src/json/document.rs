//! A JSON object as it arrived: a request body (or an answer) kept as its
//! text, with where each of its fields lies, and written out again with a
//! few fields changed without copying the rest.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::{Invalid, Json, scan, span_in};

#[derive(Clone)]
pub struct Document {
    /// Checked JSON text of an object.
    text: Arc<String>,
    /// Per field, in order: where its key starts and where its value ends.
    /// Two words a field, so a body of a million tiny fields stays small.
    fields: Vec<(u32, u32)>,
    /// The fields (indexes into `fields`) in the order of their keys' text,
    /// equal keys in their order: a lookup is a binary search, whatever the
    /// number of fields.
    by_key: Vec<u32>,
    /// Some key is written with an escape, and may be another key written
    /// differently: a lookup that misses then reads every key.
    escaped_keys: bool,
    /// Keys left out of this document, though still in its text.
    removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("is not valid UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("is not valid JSON: {0}")]
    Json(#[from] Invalid),
    #[error("must be a JSON object")]
    NotObject,
    #[error("is larger than 4 GiB")]
    TooLarge,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Document({:?})", Json(self.text.as_str()))
    }
}

/// A piece of a document's text, shared with it, as a `Bytes` chunk.
struct Piece {
    text: Arc<String>,
    range: Range<usize>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.text.as_bytes()[self.range.clone()]
    }
}

impl Document {
    /// A body as it was read: UTF-8 text of one JSON object.
    pub fn parse(bytes: Vec<u8>) -> Result<Document, DocumentError> {
        let text = String::from_utf8(bytes).map_err(|e| e.utf8_error())?;
        Document::from_string(text)
    }

    pub fn from_string(text: String) -> Result<Document, DocumentError> {
        if u32::try_from(text.len()).is_err() {
            return Err(DocumentError::TooLarge);
        }
        // The fields are found as the text is checked, in the same pass.
        let mut fields = Vec::new();
        let mut escaped_keys = false;
        let json = Json::parse_fields(&text, |f| {
            // Checked above: the text is shorter than 4 GiB.
            fields.push((f.key.start as u32, f.value.end as u32));
            escaped_keys |= f.escaped;
        })?;
        if !json.is_object() {
            return Err(DocumentError::NotObject);
        }
        let b = text.as_bytes();
        let raw_key = |i: u32| raw_key(b, fields[i as usize].0 as usize);
        let mut by_key: Vec<u32> = (0..fields.len() as u32).collect();
        by_key.sort_unstable_by(|x, y| raw_key(*x).cmp(raw_key(*y)).then(x.cmp(y)));
        Ok(Document {
            text: Arc::new(text),
            fields,
            by_key,
            escaped_keys,
            removed: Vec::new(),
        })
    }

    /// A document of a small value (tests, and bodies the gateway built);
    /// an empty one when it is not an object.
    pub fn from_value(value: &serde_json::Value) -> Document {
        Document::from_string(value.to_string())
            .or_else(|_| Document::from_string("{}".into()))
            .unwrap_or_else(|_| unreachable!("{{}} is a JSON object"))
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The length of its text in bytes.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields().next().is_none()
    }

    fn key_of(&self, field: (u32, u32)) -> (Cow<'_, str>, Json<'_>) {
        let b = self.text.as_bytes();
        let start = field.0 as usize;
        let key_end = scan::string_end(b, start);
        let value = scan::skip_ws(b, scan::skip_ws(b, key_end) + 1);
        let key = Json(&self.text[start..key_end])
            .as_str()
            .unwrap_or_default();
        (key, Json(&self.text[value..field.1 as usize]))
    }

    fn is_removed(&self, key: &str) -> bool {
        self.removed.iter().any(|r| r == key)
    }

    /// Its fields, in order.
    pub fn fields(&self) -> impl Iterator<Item = (Cow<'_, str>, Json<'_>)> {
        self.fields
            .iter()
            .map(|f| self.key_of(*f))
            .filter(|(k, _)| !self.is_removed(k))
    }

    pub fn keys(&self) -> impl Iterator<Item = Cow<'_, str>> {
        self.fields().map(|(k, _)| k)
    }

    /// The value of `key` (the last, when a key repeats, as in `serde_json`).
    pub fn get(&self, key: &str) -> Option<Json<'_>> {
        if self.is_removed(key) {
            return None;
        }
        let b = self.text.as_bytes();
        let raw = |i: u32| raw_key(b, self.fields[i as usize].0 as usize);
        let after = self.by_key.partition_point(|i| raw(*i) <= key.as_bytes());
        if let Some(&i) = after.checked_sub(1).and_then(|at| self.by_key.get(at)) {
            if raw(i) == key.as_bytes() {
                return Some(self.key_of(self.fields[i as usize]).1);
            }
        }
        if !self.escaped_keys {
            return None;
        }
        self.fields
            .iter()
            .rev()
            .map(|f| self.key_of(*f))
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Leaves `key` out of what this document is and writes.
    pub fn remove(&mut self, key: &str) {
        if !self.is_removed(key) {
            self.removed.push(key.to_string());
        }
    }

    /// The object under `key`, as a document of its own.
    pub fn sub(&self, key: &str) -> Option<Document> {
        let inner = self.get(key).filter(|v| v.is_object())?;
        Document::from_string(inner.text().to_string()).ok()
    }

    /// This document (its fields, not the ones removed) as a
    /// `serde_json::Value`: for small documents and tests.
    pub fn to_value(&self) -> serde_json::Value {
        let text: Vec<u8> = self.rewrite(&[], |_| true).concat();
        serde_json::from_slice(&text).unwrap_or_default()
    }

    /// Where `json`, read from this document, lies in its text.
    pub fn span(&self, json: Json<'_>) -> Range<usize> {
        span_in(&self.text, json.text())
    }

    /// This document with pieces of its text replaced (`edits` sorted and
    /// not overlapping, as [`Document::span`] gives them).
    pub fn edited(&self, edits: &[(Range<usize>, String)]) -> Result<Document, DocumentError> {
        let mut out = String::with_capacity(self.text.len());
        let mut from = 0;
        for (range, with) in edits {
            out.push_str(&self.text[from..range.start]);
            out.push_str(with);
            from = range.end;
        }
        out.push_str(&self.text[from..]);
        let mut edited = Document::from_string(out)?;
        // Fields taken out of this one stay out.
        for key in &self.removed {
            edited.remove(key);
        }
        Ok(edited)
    }

    /// The text of this object with the fields of `set` given new values
    /// (raw JSON; added at the end when absent) and the fields `keep` says
    /// no to left out, as chunks that share the untouched runs of fields
    /// with this document instead of copying them.
    pub fn rewrite(&self, set: &[(&str, &str)], keep: impl Fn(&str) -> bool) -> Vec<Bytes> {
        // At most a chunk for each field kept or set, and the braces: room
        // made once.
        let mut out: Vec<Bytes> = Vec::with_capacity(self.fields.len() + set.len() + 2);
        out.push(Bytes::from_static(b"{"));
        let mut written = vec![false; set.len()];
        // The untouched run being gathered: its first field's start, its
        // last field's end.
        let mut run: Option<(usize, usize)> = None;
        let mut any = false;
        let b = self.text.as_bytes();
        for &(start, end) in &self.fields {
            let (start, end) = (start as usize, end as usize);
            let (key, _) = self.key_of((start as u32, end as u32));
            let replaced = set.iter().position(|(k, _)| *k == key);
            if replaced.is_none() && keep(&key) && !self.is_removed(&key) {
                run = match run {
                    // Only a comma between the two: one run.
                    Some((s, e)) if only_comma(&b[e..start]) => Some((s, end)),
                    Some(previous) => {
                        self.push_run(&mut out, previous, &mut any);
                        Some((start, end))
                    }
                    None => Some((start, end)),
                };
                continue;
            }
            if let Some(previous) = run.take() {
                self.push_run(&mut out, previous, &mut any);
            }
            if let Some(i) = replaced.filter(|i| !written[*i] && !self.is_removed(&key)) {
                written[i] = true;
                push_field(&mut out, &mut any, set[i].0, set[i].1);
            }
        }
        if let Some(previous) = run {
            self.push_run(&mut out, previous, &mut any);
        }
        for (i, (key, value)) in set.iter().enumerate() {
            if !written[i] {
                push_field(&mut out, &mut any, key, value);
            }
        }
        out.push(Bytes::from_static(b"}"));
        out
    }

    fn push_run(&self, out: &mut Vec<Bytes>, (start, end): (usize, usize), any: &mut bool) {
        if std::mem::replace(any, true) {
            out.push(Bytes::from_static(b","));
        }
        out.push(Bytes::from_owner(Piece {
            text: self.text.clone(),
            range: start..end,
        }));
    }
}

/// The text of the key opening at `start`, between its quotes.
fn raw_key(b: &[u8], start: usize) -> &[u8] {
    let end = scan::string_end(b, start);
    &b[start + 1..end.saturating_sub(1).max(start + 1)]
}

fn only_comma(gap: &[u8]) -> bool {
    let mut commas = 0;
    for c in gap {
        match c {
            b',' => commas += 1,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => return false,
        }
    }
    commas == 1
}

fn push_field(out: &mut Vec<Bytes>, any: &mut bool, key: &str, value: &str) {
    let mut field = String::with_capacity(key.len() + value.len() + 4);
    if std::mem::replace(any, true) {
        field.push(',');
    }
    // Keys are the gateway's own names: plain text, written between quotes
    // as they are; anything else is escaped by serde_json.
    if key.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
        field.push('"');
        field.push_str(key);
        field.push('"');
    } else {
        field.push_str(&serde_json::to_string(key).unwrap_or_else(|_| "\"\"".into()));
    }
    field.push(':');
    field.push_str(value);
    out.push(Bytes::from(field));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(chunks: &[Bytes]) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    #[test]
    fn a_body_is_read_where_it_lies_and_rewritten_without_copying_it() {
        let doc = Document::parse(
            br#"{ "model" : "m", "messages": [{"role":"user"}], "x": [1, 2], "stream": true }"#
                .to_vec(),
        )
        .unwrap();
        assert_eq!(
            doc.keys().collect::<Vec<_>>(),
            ["model", "messages", "x", "stream"]
        );
        assert_eq!(doc.get("x").unwrap().text(), "[1, 2]");
        let chunks = doc.rewrite(&[("model", "\"up\"")], |k| k != "stream");
        assert_eq!(
            joined(&chunks),
            r#"{"model":"up","messages": [{"role":"user"}], "x": [1, 2]}"#
        );
        assert_eq!(
            chunks.len(),
            5,
            "one chunk for the untouched run: {chunks:?}"
        );
        let added = doc.rewrite(&[("n", "1")], |_| true);
        let v: serde_json::Value = serde_json::from_str(&joined(&added)).unwrap();
        assert_eq!(v["n"], 1);
        assert_eq!(v["x"][1], 2);

        let mut gemini = doc.clone();
        gemini.remove("model");
        assert!(gemini.get("model").is_none());
        let edited = gemini
            .edited(&[(gemini.span(gemini.get("x").unwrap()), "[]".into())])
            .unwrap();
        assert_eq!(
            joined(&edited.rewrite(&[], |_| true)),
            r#"{"messages": [{"role":"user"}], "x": [], "stream": true}"#
        );
    }

    #[test]
    fn lookups_find_the_last_of_a_key_however_it_is_written() {
        let doc =
            Document::parse(br#"{"b":1,"a":2,"c":3,"a":4,"mod\u0065l":"x"}"#.to_vec()).unwrap();
        assert_eq!(doc.get("a").unwrap().text(), "4");
        assert_eq!(doc.get("b").unwrap().text(), "1");
        assert_eq!(
            doc.get("model").and_then(Json::as_str).as_deref(),
            Some("x")
        );
        assert!(doc.get("d").is_none() && doc.get("").is_none());
        let many: String = (0..10_000).map(|i| format!(",\"k{i}\":{i}")).collect();
        let doc = Document::from_string(format!("{{\"first\":0{many}}}")).unwrap();
        assert_eq!(doc.get("k9999").and_then(Json::as_u64), Some(9999));
        assert_eq!(doc.keys().count(), 10_001);
    }

    #[test]
    fn what_is_not_a_utf8_json_object_is_refused() {
        assert!(matches!(
            Document::parse(vec![0xff, 0xfe]),
            Err(DocumentError::Utf8(_))
        ));
        assert!(matches!(
            Document::parse(b"[1]".to_vec()),
            Err(DocumentError::NotObject)
        ));
        assert!(matches!(
            Document::parse(b"{\"a\":".to_vec()),
            Err(DocumentError::Json(_))
        ));
        assert!(Document::parse(b" {} ".to_vec()).unwrap().is_empty());
    }
}
