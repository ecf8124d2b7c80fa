//! The translation policy table (`translate::policy::RULES`) against what
//! the translators do, row by row and in both directions of every pair of
//! formats, and against the README's copy of it.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use serde_json::{Map, Value, json};
use switchyard::catalog::Provider;
use switchyard::json::Document;
use switchyard::translate::{
    self,
    policy::{RULES, Rule, Treat},
};
use switchyard::wire::Format;

const FORMATS: [(Format, Provider); 3] = [
    (Format::OpenAi, Provider::Openai),
    (Format::Anthropic, Provider::Anthropic),
    (Format::Gemini, Provider::Gemini),
];

/// Every client format.
const CLIENTS: [Format; 4] = [
    Format::OpenAi,
    Format::Responses,
    Format::Anthropic,
    Format::Gemini,
];

/// The smallest request of each format.
fn minimal(format: Format) -> Map<String, Value> {
    let v = match format {
        Format::OpenAi => json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        Format::Responses => json!({"model": "m", "input": "hi"}),
        Format::Anthropic => {
            json!({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
        }
        Format::Gemini => json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
    };
    v.as_object().unwrap().clone()
}

fn with_example(rule: &Rule) -> Map<String, Value> {
    let mut body = minimal(rule.client);
    let example: Map<String, Value> = serde_json::from_str(rule.example).unwrap();
    body.extend(example);
    body
}

/// The body `provider` gets for `body`, or why there is none.
fn translated(
    format: Format,
    provider: Provider,
    body: &Map<String, Value>,
) -> Result<Value, String> {
    let body = Document::from_value(&Value::Object(body.clone()));
    let ir = translate::parse_request(format, &body).map_err(|e| e.0)?;
    let built = translate::build_request(provider, &ir, "up").map_err(|e| e.0)?;
    Ok(serde_json::to_value(&built).unwrap())
}

/// Whether `path` (dot-separated keys and indexes; `key[]` means some
/// element of that array) leads somewhere in `v`.
fn has_path(v: &Value, path: &[&str]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    if let Some(key) = first.strip_suffix("[]") {
        return v
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(|items| items.iter().any(|item| has_path(item, rest)));
    }
    let next = match first.parse::<usize>() {
        Ok(i) => v.get(i),
        Err(_) => v.get(*first),
    };
    next.is_some_and(|n| !n.is_null() && has_path(n, rest))
}

#[test]
fn every_row_does_what_the_table_says_in_every_direction() {
    let mut checked = 0;
    for rule in RULES {
        let body = with_example(rule);
        for (target, provider) in FORMATS {
            if target == rule.client {
                continue;
            }
            let label = format!(
                "{:?} `{}` ({}) -> {target:?}",
                rule.client, rule.field, rule.case
            );
            let baseline = translated(rule.client, provider, &minimal(rule.client)).unwrap();
            let got = translated(rule.client, provider, &body);
            match rule.target(target) {
                Treat::To(path) => {
                    let got = got.unwrap_or_else(|e| panic!("{label}: refused: {e}"));
                    let path: Vec<&str> = path.split('.').collect();
                    assert!(has_path(&got, &path), "{label}: no {path:?} in {got:#}");
                    assert_ne!(got, baseline, "{label}: the field left no trace");
                }
                Treat::Dropped => {
                    let got = got.unwrap_or_else(|e| panic!("{label}: refused: {e}"));
                    assert_eq!(got, baseline, "{label}: expected it dropped");
                }
                Treat::LeftOut => {
                    assert!(
                        got.is_err(),
                        "{label}: expected the credential left out, got {got:?}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 2 * RULES.len());
}

#[test]
fn the_readme_table_is_the_rule_table() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = "<!-- translation-policy -->\n";
    let end = "<!-- /translation-policy -->";
    let from = readme
        .find(start)
        .expect("README has the policy table markers")
        + start.len();
    let to = readme[from..].find(end).unwrap() + from;
    let expected = translate::policy::markdown();
    assert_eq!(
        &readme[from..to],
        expected,
        "README's translation table differs from translate::policy::RULES; paste:\n{expected}"
    );
}

#[test]
fn unknown_settings_are_dropped_and_unknown_content_leaves_the_credential_out() {
    for format in CLIENTS {
        let mut body = minimal(format);
        body.insert("some_setting_of_next_year".into(), json!({"x": 1}));
        for (target, provider) in FORMATS {
            if target != format {
                let baseline = translated(format, provider, &minimal(format)).unwrap();
                assert_eq!(translated(format, provider, &body).unwrap(), baseline);
            }
        }
    }
    let mut body = minimal(Format::Anthropic);
    body["messages"] = json!([{"role": "user", "content": [{"type": "hologram", "data": "x"}]}]);
    assert!(translated(Format::Anthropic, Provider::Openai, &body).is_err());
}

#[test]
fn thinking_is_left_off_where_anthropic_rules_cannot_be_met() {
    // A tool loop whose assistant turn came from another provider: no
    // signed thinking can open it, so thinking is off for this request.
    let body = json!({
        "model": "m", "reasoning_effort": "high",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}
        ]
    });
    let got = translated(
        Format::OpenAi,
        Provider::Anthropic,
        body.as_object().unwrap(),
    )
    .unwrap();
    assert!(got.get("thinking").is_none(), "{got:#}");
    // A fresh question keeps it, with room for the budget and no temperature.
    let body = json!({"model": "m", "reasoning_effort": "high", "temperature": 0.3,
        "messages": [{"role": "user", "content": "go"}]});
    let got = translated(
        Format::OpenAi,
        Provider::Anthropic,
        body.as_object().unwrap(),
    )
    .unwrap();
    let budget = got["thinking"]["budget_tokens"].as_u64().unwrap();
    assert!(got["max_tokens"].as_u64().unwrap() > budget);
    assert!(got.get("temperature").is_none());
    // A client max_tokens too small for any budget turns thinking off.
    let body = json!({"model": "m", "reasoning_effort": "high", "max_completion_tokens": 500,
        "messages": [{"role": "user", "content": "go"}]});
    let got = translated(
        Format::OpenAi,
        Provider::Anthropic,
        body.as_object().unwrap(),
    )
    .unwrap();
    assert!(got.get("thinking").is_none());
    assert_eq!(got["max_tokens"], 500);
}

#[test]
fn translated_thinking_is_mended_when_the_conversation_comes_back() {
    let mark = translate::ir::TRANSLATED_THINKING;
    let body = json!({
        "model": "m", "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "from elsewhere", "signature": mark},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}
        ]
    });
    let mended = translate::mend_history(Format::Anthropic, &Document::from_value(&body))
        .unwrap()
        .to_value();
    let text = serde_json::to_string(&mended).unwrap();
    assert!(!text.contains(mark), "{text}");
    assert!(
        mended.get("thinking").is_none(),
        "thinking turned off for the loop"
    );
    // Anthropic's own signed thinking passes untouched.
    let mut own = body.clone();
    own["messages"][1]["content"][0]["signature"] = json!("EqQBCkYIBRgCKkD");
    assert!(translate::mend_history(Format::Anthropic, &Document::from_value(&own)).is_none());

    let gemini = json!({"contents": [
        {"role": "user", "parts": [{"text": "go"}]},
        {"role": "model", "parts": [
            {"text": "thought", "thought": true, "thoughtSignature": mark},
            {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": mark}
        ]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"content": "ok"}}}]}
    ]});
    let mended = translate::mend_history(Format::Gemini, &Document::from_value(&gemini))
        .unwrap()
        .to_value();
    let parts = &mended["contents"][1]["parts"];
    assert_eq!(
        parts.as_array().unwrap().len(),
        1,
        "the translated thought is gone"
    );
    assert_eq!(
        parts[0]["thoughtSignature"],
        translate::ir::GEMINI_PLACEHOLDER_SIGNATURE
    );
}
