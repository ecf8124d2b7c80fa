//! An Anthropic client's body mended for an Anthropic upstream, edited in
//! its text: the rest of the body is not parsed, let alone rebuilt.

use crate::json::{Document, Json};
use crate::translate::ir::{TRANSLATED_THINKING, text_of};

/// Whether an assistant content block is thinking this gateway translated.
fn translated_thinking(b: Json<'_>) -> bool {
    b.get("type").and_then(Json::as_str).as_deref() == Some("thinking")
        && b.get("signature").and_then(Json::as_str).as_deref() == Some(TRANSLATED_THINKING)
}

/// For an Anthropic upstream of an Anthropic client: the client's body
/// mended where its history breaks Anthropic's rules, or `None` when it does
/// not. Thinking this gateway translated from another provider is taken out
/// (no upstream could verify its signature); a tool loop whose assistant
/// turn then lacks signed thinking (or never had it: an earlier turn served
/// by another provider) gets thinking turned off for the request,
/// Anthropic's documented fallback.
pub fn mend_history(body: &Document) -> Option<Document> {
    let messages = body.get("messages").filter(|m| m.is_array())?;
    let marked = messages
        .items()
        .any(|m| m.field("content").items().any(translated_thinking));
    let thinking = body
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Json::as_str)
        .is_some_and(|t| t != "disabled");
    let broken_loop = thinking && unsigned_tool_loop(&messages.items().collect::<Vec<_>>());
    if !marked && !broken_loop {
        return None;
    }
    let mut edits = Vec::new();
    for m in messages.items() {
        let content = m.field("content");
        if !content.is_array() {
            continue;
        }
        let kept: Vec<&str> = content
            .items()
            .filter(|b| !translated_thinking(*b))
            .map(Json::text)
            .collect();
        if kept.len() == content.items().count() && !kept.is_empty() {
            continue;
        }
        // Anthropic refuses a turn left empty.
        let text = if kept.is_empty() {
            r#"[{"type":"text","text":"(thinking)"}]"#.to_string()
        } else {
            format!("[{}]", kept.join(","))
        };
        edits.push((body.span(content), text));
    }
    let mut mended = if edits.is_empty() {
        body.clone()
    } else {
        body.edited(&edits).ok()?
    };
    let mended_messages: Vec<Json<'_>> = mended
        .get("messages")
        .map(|m| m.items().collect())
        .unwrap_or_default();
    if unsigned_tool_loop(&mended_messages) {
        mended.remove("thinking");
    }
    Some(mended)
}

/// Whether the conversation continues a tool loop whose assistant turn does
/// not open with signed thinking.
fn unsigned_tool_loop(messages: &[Json<'_>]) -> bool {
    let [.., assistant, last] = messages else {
        return false;
    };
    let kinds = |m: &Json<'_>| -> Vec<String> {
        m.field("content")
            .items()
            .map(|b| text_of(b, "type"))
            .collect()
    };
    let is_result = kinds(last).iter().any(|k| k == "tool_result");
    let opens_with_thinking = kinds(assistant)
        .first()
        .is_some_and(|k| k == "thinking" || k == "redacted_thinking");
    let calls = kinds(assistant).iter().any(|k| k == "tool_use");
    is_result && calls && !opens_with_thinking
}
