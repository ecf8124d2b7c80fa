//! Golden tests of translation in every direction: requests (client format
//! -> provider), responses (provider -> client format) and streams (provider
//! events -> client events). The expected outputs live in tests/golden/;
//! `SWITCHYARD_UPDATE_GOLDEN=1 cargo test --test golden` rewrites them, and
//! the diff is then reviewed like code.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;

use serde_json::{Map, Value, json};
use switchyard::catalog::Provider;
use switchyard::json::{Document, Json};
use switchyard::sse::{Event, Parser};
use switchyard::translate::{
    self,
    stream::{StreamSpec, StreamTranslator},
};
use switchyard::wire::Format;

const FORMATS: [(Format, Provider, &str); 3] = [
    (Format::OpenAi, Provider::Openai, "openai"),
    (Format::Anthropic, Provider::Anthropic, "anthropic"),
    (Format::Gemini, Provider::Gemini, "gemini"),
];

/// Every client format, with its name in the golden files.
const CLIENTS: [(Format, &str); 4] = [
    (Format::OpenAi, "openai"),
    (Format::Responses, "responses"),
    (Format::Anthropic, "anthropic"),
    (Format::Gemini, "gemini"),
];

const IMAGE: &str = "iVBORw0KGgo=";

fn document(body: Map<String, Value>) -> Document {
    Document::from_value(&Value::Object(body))
}

/// One conversation in each client format: a system prompt, an image, a tool
/// declaration, an earlier tool call and its result, and a new question.
fn conversation(format: Format) -> Map<String, Value> {
    let v = match format {
        Format::OpenAi => json!({
            "model": "m", "max_tokens": 300, "temperature": 0.2, "stop": ["END"],
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture, and the weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{IMAGE}")}}
                ]},
                {"role": "assistant", "content": "A cat. Checking the weather.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
                {"role": "user", "content": "Thanks. And tomorrow?"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": "auto"
        }),
        Format::Anthropic => json!({
            "model": "m", "max_tokens": 300, "temperature": 0.2, "stop_sequences": ["END"],
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture, and the weather in Paris?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "A cat. Checking the weather."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny, 21 C"},
                    {"type": "text", "text": "Thanks. And tomorrow?"}
                ]}
            ],
            "tools": [{"name": "get_weather", "description": "Current weather of a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
            "tool_choice": {"type": "auto"}
        }),
        Format::Responses => json!({
            "model": "m", "max_output_tokens": 300, "temperature": 0.2,
            "instructions": "You are terse.",
            "input": [
                {"role": "user", "content": [
                    {"type": "input_text", "text": "What is in this picture, and the weather in Paris?"},
                    {"type": "input_image", "image_url": format!("data:image/png;base64,{IMAGE}")}
                ]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A cat. Checking the weather."}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"},
                {"role": "user", "content": "Thanks. And tomorrow?"}
            ],
            "tools": [{"type": "function", "name": "get_weather", "description": "Current weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
            "tool_choice": "auto"
        }),
        Format::Gemini => json!({
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
            "contents": [
                {"role": "user", "parts": [
                    {"text": "What is in this picture, and the weather in Paris?"},
                    {"inlineData": {"mimeType": "image/png", "data": IMAGE}}
                ]},
                {"role": "model", "parts": [
                    {"text": "A cat. Checking the weather."},
                    {"functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"id": "call_1", "name": "get_weather", "response": {"content": "sunny, 21 C"}}},
                    {"text": "Thanks. And tomorrow?"}
                ]}
            ],
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Current weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
            "generationConfig": {"maxOutputTokens": 300, "temperature": 0.2, "stopSequences": ["END"]}
        }),
    };
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// One answer of each provider: text, then a tool call.
fn answer(provider: Provider) -> Value {
    match provider {
        Provider::Openai => {
            json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "up",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Let me check.",
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"day\":\"tomorrow\"}"}}]}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 15, "total_tokens": 135}})
        }
        Provider::Anthropic => {
            json!({"id": "msg_up", "type": "message", "role": "assistant", "model": "up",
            "content": [{"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Paris", "day": "tomorrow"}}],
            "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 120, "output_tokens": 15}})
        }
        Provider::Gemini => {
            json!({"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
                {"text": "Let me check."}, {"functionCall": {"id": "call_9", "name": "get_weather", "args": {"city": "Paris", "day": "tomorrow"}}}]}}],
            "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 15, "totalTokenCount": 135}, "modelVersion": "up", "responseId": "resp-up"})
        }
    }
}

/// The same answer as each provider streams it.
fn answer_stream(provider: Provider) -> &'static str {
    match provider {
        Provider::Openai => concat!(
            "data: {\"id\":\"chatcmpl-up\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-up\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Let me \"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-up\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"check.\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-up\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_9\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-up\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\\\"Paris\\\",\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-up\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"day\\\":\\\"tomorrow\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-up\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"chatcmpl-up\",\"model\":\"up\",\"choices\":[],\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":15,\"total_tokens\":135}}\n\n",
            "data: [DONE]\n\n",
        ),
        Provider::Anthropic => concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_up\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"up\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":120,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me \"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"check.\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"call_9\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\\\"Paris\\\",\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"day\\\":\\\"tomorrow\\\"}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ),
        Provider::Gemini => concat!(
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Let me \"}]},\"index\":0}],\"modelVersion\":\"up\",\"responseId\":\"resp-up\"}\n\n",
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"check.\"}]},\"index\":0}],\"modelVersion\":\"up\",\"responseId\":\"resp-up\"}\n\n",
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"id\":\"call_9\",\"name\":\"get_weather\",\"args\":{\"city\":\"Paris\",\"day\":\"tomorrow\"}}}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":120,\"candidatesTokenCount\":15,\"totalTokenCount\":135},\"modelVersion\":\"up\",\"responseId\":\"resp-up\"}\n\n",
        ),
    }
}

/// Replaces what differs from run to run (made-up ids, clocks).
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "created" || k == "created_at" {
                    *x = json!(0);
                } else {
                    normalize(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        Value::String(s) => {
            let (prefix, rest) = s.split_at(s.len().saturating_sub(32));
            if rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                *s = format!("{prefix}<generated>");
            }
        }
        _ => {}
    }
}

fn check(name: &str, mut actual: Value) {
    normalize(&mut actual);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let rendered = serde_json::to_string_pretty(&actual).unwrap() + "\n";
    if std::env::var_os("SWITCHYARD_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run with SWITCHYARD_UPDATE_GOLDEN=1 and review it",
            path.display()
        )
    });
    assert_eq!(rendered, expected, "{name} differs from its golden file");
}

fn translator(provider: Provider, client: Format, include_usage: bool) -> StreamTranslator {
    StreamTranslator::new(&StreamSpec {
        upstream: translate::format_of(provider),
        client,
        model: "m",
        include_usage,
        usage_added: false,
        input_estimate: 100,
        custom_tools: Vec::new(),
    })
}

fn events_json(events: &[Event]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| {
                let data =
                    serde_json::from_str::<Value>(&e.data).unwrap_or(Value::String(e.data.clone()));
                match &e.event {
                    Some(name) => json!({"event": name, "data": data}),
                    None => json!({"data": data}),
                }
            })
            .collect(),
    )
}

#[test]
fn requests_in_every_direction() {
    for (client, from) in CLIENTS {
        let ir = translate::parse_request(client, &document(conversation(client))).unwrap();
        for (target, provider, to) in FORMATS {
            if target == client {
                continue;
            }
            let body = translate::build_request(provider, &ir, "up-model").unwrap();
            check(
                &format!("request_{from}_to_{to}"),
                serde_json::to_value(&body).unwrap(),
            );
        }
    }
}

/// A body that came from `format` translated for `provider`, once from the
/// conversation kept in memory and once from it read again from the text
/// (what a large body does): the two must be the same bytes.
fn built_both_ways(format: Format, body: &Document, provider: Provider) -> Option<Vec<u8>> {
    let kept = translate::parse_request(format, body).ok()?;
    let again = translate::ir::Request {
        messages: kept.messages.clone().read_again(),
        ..kept.clone()
    };
    let one = translate::build_request(provider, &kept, "up-model").and_then(|b| b.to_vec(0));
    let other = translate::build_request(provider, &again, "up-model").and_then(|b| b.to_vec(0));
    assert_eq!(
        one.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        other
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        "{format:?} to {provider:?}"
    );
    one.ok()
}

#[test]
fn a_conversation_read_again_is_translated_as_the_one_kept() {
    let mut bodies: Vec<(Format, Document)> = CLIENTS
        .iter()
        .map(|(f, _)| (*f, document(conversation(*f))))
        .collect();
    // What real clients sent, as recorded.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clients");
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let recorded: Value = serde_json::from_str(&text).unwrap();
        let (Some(path), Some(body)) = (recorded["path"].as_str(), recorded.get("body")) else {
            continue;
        };
        let format = if path.contains("/models/") {
            Format::Gemini
        } else if path.starts_with("/v1/messages") {
            Format::Anthropic
        } else if path.starts_with("/v1/responses") {
            Format::Responses
        } else {
            Format::OpenAi
        };
        bodies.push((format, Document::from_value(body)));
    }
    let mut built = 0;
    for (format, body) in &bodies {
        for (_, provider, _) in FORMATS {
            built += usize::from(built_both_ways(*format, body, provider).is_some());
        }
    }
    assert!(bodies.len() >= 10, "{} bodies", bodies.len());
    assert!(built >= 2 * bodies.len(), "{built} bodies built");
}

#[test]
fn every_format_reads_the_same_conversation() {
    let irs: Vec<_> = CLIENTS
        .iter()
        .map(|(f, _)| translate::parse_request(*f, &document(conversation(*f))).unwrap())
        .collect();
    // The OpenAI form has no tool-result name; Gemini's does; Responses has
    // no stop sequences. Otherwise they agree.
    let strip = |mut r: translate::ir::Request| {
        r.stop.clear();
        let mut messages = r.messages.to_vec();
        for m in &mut messages {
            for p in &mut m.parts {
                if let translate::ir::Part::ToolResult { name, .. } = p {
                    *name = None;
                }
            }
        }
        r.messages = translate::ir::merge_turns(&mut r.system, messages).into();
        r
    };
    let irs: Vec<_> = irs.into_iter().map(strip).collect();
    assert_eq!(irs[0], irs[1], "OpenAI and Responses");
    assert_eq!(irs[0], irs[2], "OpenAI and Anthropic");
    assert_eq!(irs[2], irs[3], "Anthropic and Gemini");
}

#[test]
fn responses_in_every_direction() {
    for (_, provider, from) in FORMATS {
        let text = answer(provider).to_string();
        let r = translate::parse_response(provider, Json::parse(&text).unwrap()).unwrap();
        for (client, to) in CLIENTS {
            if translate::format_of(provider) == client {
                continue;
            }
            check(
                &format!("response_{from}_to_{to}"),
                serde_json::from_slice(&translate::build_response(client, &r, "m", &[])).unwrap(),
            );
        }
    }
}

#[test]
fn streams_in_every_direction() {
    for (_, provider, from) in FORMATS {
        for (client, to) in CLIENTS {
            if translate::format_of(provider) == client {
                continue;
            }
            let mut t = translator(provider, client, true);
            let mut parser = Parser::new();
            parser.push(answer_stream(provider).as_bytes());
            let mut out = Vec::new();
            while let Some(e) = parser.next_event().unwrap() {
                out.extend(t.feed(&e).unwrap());
            }
            out.extend(t.finish().unwrap());
            check(&format!("stream_{from}_to_{to}"), events_json(&out));
        }
    }
}

#[test]
fn a_stream_that_ends_early_is_an_error_in_every_direction() {
    for (_, provider, _) in FORMATS {
        for (client, _) in CLIENTS {
            let mut t = translator(provider, client, false);
            let mut parser = Parser::new();
            let full = answer_stream(provider);
            parser.push(&full.as_bytes()[..full.find("\n\n").unwrap() + 2]);
            while let Some(e) = parser.next_event().unwrap() {
                t.feed(&e).unwrap();
            }
            assert!(t.finish().is_err(), "{provider:?} -> {client:?}");
        }
    }
}

/// A stream's events, from raw SSE text.
fn translate_stream(provider: Provider, client: Format, raw: &str) -> Vec<Event> {
    let mut t = translator(provider, client, false);
    let mut parser = Parser::new();
    parser.push(raw.as_bytes());
    let mut out = Vec::new();
    while let Some(e) = parser.next_event().unwrap() {
        out.extend(t.feed(&e).unwrap());
    }
    out.extend(t.finish().unwrap());
    out
}

#[test]
fn upstream_reasoning_reaches_every_client_in_its_own_form() {
    let mark = translate::ir::TRANSLATED_THINKING;
    let answers = [
        (
            Provider::Openai,
            json!({"id": "chatcmpl-r", "model": "up", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "reasoning_content": "weighing it", "content": "42"}}]}),
        ),
        (
            Provider::Anthropic,
            json!({"id": "msg_r", "type": "message", "role": "assistant", "model": "up", "stop_reason": "end_turn",
            "content": [{"type": "thinking", "thinking": "weighing it", "signature": "anthropic-own-signature"}, {"type": "text", "text": "42"}],
            "usage": {"input_tokens": 1, "output_tokens": 2}}),
        ),
        (
            Provider::Gemini,
            json!({"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
            {"text": "weighing it", "thought": true}, {"text": "42"}]}}], "modelVersion": "up"}),
        ),
    ];
    for (provider, answer) in answers {
        let text = answer.to_string();
        let r = translate::parse_response(provider, Json::parse(&text).unwrap()).unwrap();
        for (client, _) in CLIENTS {
            if translate::format_of(provider) == client {
                continue;
            }
            let out: Value =
                serde_json::from_slice(&translate::build_response(client, &r, "m", &[])).unwrap();
            let text = out.to_string();
            assert!(
                !text.contains("anthropic-own-signature"),
                "{provider:?} -> {client:?}"
            );
            match client {
                Format::OpenAi => {
                    assert_eq!(
                        out["choices"][0]["message"]["reasoning_content"],
                        "weighing it"
                    );
                    assert_eq!(out["choices"][0]["message"]["content"], "42");
                }
                Format::Responses => {
                    assert_eq!(out["output"][0]["type"], "reasoning", "{out}");
                    assert_eq!(out["output"][0]["summary"][0]["text"], "weighing it");
                    assert_eq!(out["output"][1]["content"][0]["text"], "42");
                }
                Format::Anthropic => {
                    assert_eq!(out["content"][0]["type"], "thinking", "{out}");
                    assert_eq!(out["content"][0]["thinking"], "weighing it");
                    assert_eq!(out["content"][0]["signature"], mark);
                    assert_eq!(out["content"][1]["text"], "42");
                }
                Format::Gemini => {
                    let parts = &out["candidates"][0]["content"]["parts"];
                    assert_eq!(parts[0]["thought"], true, "{out}");
                    assert_eq!(parts[0]["text"], "weighing it");
                    assert_eq!(parts[1]["text"], "42");
                }
            }
        }
    }
}

#[test]
fn streamed_reasoning_reaches_every_client_in_its_own_form() {
    let streams = [
        (
            Provider::Openai,
            concat!(
                "data: {\"id\":\"c\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"reasoning_content\":\"weighing \"}}]}\n\n",
                "data: {\"id\":\"c\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"it\"}}]}\n\n",
                "data: {\"id\":\"c\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"42\"}}]}\n\n",
                "data: {\"id\":\"c\",\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
                "data: [DONE]\n\n"
            ),
        ),
        (
            Provider::Anthropic,
            concat!(
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_r\",\"model\":\"up\",\"usage\":{\"input_tokens\":1}}}\n\n",
                "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"weighing \"}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"it\"}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"anthropic-own-signature\"}}\n\n",
                "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
                "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"42\"}}\n\n",
                "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
            ),
        ),
        (
            Provider::Gemini,
            concat!(
                "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"weighing \",\"thought\":true}]},\"index\":0}],\"modelVersion\":\"up\"}\n\n",
                "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"it\",\"thought\":true}]},\"index\":0}],\"modelVersion\":\"up\"}\n\n",
                "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"42\"}]},\"finishReason\":\"STOP\",\"index\":0}],\"modelVersion\":\"up\"}\n\n"
            ),
        ),
    ];
    for (provider, raw) in streams {
        for (client, _) in CLIENTS {
            if translate::format_of(provider) == client {
                continue;
            }
            let out = events_json(&translate_stream(provider, client, raw));
            let text = out.to_string();
            assert!(
                !text.contains("anthropic-own-signature"),
                "{provider:?} -> {client:?}"
            );
            let (mut thinking, mut answer) = (String::new(), String::new());
            for e in out.as_array().unwrap() {
                let d = &e["data"];
                match client {
                    Format::OpenAi => {
                        let delta = &d["choices"][0]["delta"];
                        thinking.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
                        answer.push_str(delta["content"].as_str().unwrap_or(""));
                    }
                    Format::Responses => {
                        let delta = d["delta"].as_str().unwrap_or("");
                        match d["type"].as_str().unwrap_or("") {
                            "response.reasoning_summary_text.delta" => thinking.push_str(delta),
                            "response.output_text.delta" => answer.push_str(delta),
                            _ => {}
                        }
                    }
                    Format::Anthropic => {
                        thinking.push_str(d["delta"]["thinking"].as_str().unwrap_or(""));
                        answer.push_str(d["delta"]["text"].as_str().unwrap_or(""));
                    }
                    Format::Gemini => {
                        for p in d["candidates"][0]["content"]["parts"]
                            .as_array()
                            .into_iter()
                            .flatten()
                        {
                            let t = p["text"].as_str().unwrap_or("");
                            if p["thought"] == true {
                                thinking.push_str(t)
                            } else {
                                answer.push_str(t)
                            }
                        }
                    }
                }
            }
            assert_eq!(
                thinking, "weighing it",
                "{provider:?} -> {client:?}: {out:#}"
            );
            assert_eq!(answer, "42", "{provider:?} -> {client:?}");
            if client == Format::Anthropic {
                assert!(
                    text.contains(translate::ir::TRANSLATED_THINKING),
                    "the thinking block is signed as translated"
                );
            }
        }
    }
}
