//! A Gemini client's body mended for a Gemini upstream, edited in its text:
//! the rest of the body is not parsed, let alone rebuilt.

use crate::json::{Document, Json, span_in};
use crate::translate::ir::{GEMINI_PLACEHOLDER_SIGNATURE, TRANSLATED_THINKING};

fn marked(p: Json<'_>) -> bool {
    p.get("thoughtSignature").and_then(Json::as_str).as_deref() == Some(TRANSLATED_THINKING)
}

/// For a Gemini upstream of a Gemini client: the client's body with the
/// parts this gateway translated from another provider mended, or `None`
/// when it has none. Translated thoughts are taken out; translated function
/// calls get Gemini's documented placeholder signature instead of ours.
pub fn mend_history(body: &Document) -> Option<Document> {
    let contents = body.get("contents").filter(|c| c.is_array())?;
    let mut edits = Vec::new();
    for c in contents.items() {
        let parts = c.field("parts");
        if !parts.items().any(marked) {
            continue;
        }
        let mut mended: Vec<String> = Vec::new();
        for p in parts.items() {
            if !marked(p) {
                mended.push(p.text().to_string());
            } else if p.get("thought").is_none() {
                mended.push(resigned(p));
            }
        }
        edits.push((body.span(parts), format!("[{}]", mended.join(","))));
    }
    if edits.is_empty() {
        return None;
    }
    body.edited(&edits).ok()
}

/// A part with its signature replaced by Gemini's placeholder.
fn resigned(p: Json<'_>) -> String {
    let Some(signature) = p.get("thoughtSignature") else {
        return p.text().to_string();
    };
    let at = span_in(p.text(), signature.text());
    let placeholder = serde_json::Value::from(GEMINI_PLACEHOLDER_SIGNATURE).to_string();
    format!(
        "{}{placeholder}{}",
        &p.text()[..at.start],
        &p.text()[at.end..]
    )
}
