//! Translation as clients see it, through the real HTTP server and the mock
//! upstream (which refuses what the real providers refuse): what the real
//! clients send (the recorded fixtures) served by every provider,
//! tool-call-only streams in all nine directions, the requested model name
//! in passthrough answers, and a translation the gateway could not finish
//! teaching nothing.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use common::{CLIENT_KEY, Cred, Gateway, Reply, gateway, key_of};
use serde_json::{Value, json};

const PROVIDERS: [&str; 3] = ["openai", "anthropic", "gemini"];
const CLIENTS: [&str; 3] = ["openai", "anthropic", "gemini"];
const M: &[(&str, &str)] = &[("m", "up-m")];
/// Every name, sent upstream as asked: the fixtures' dated model names.
const ANY: &[(&str, &str)] = &[("*", "*")];

async fn only(provider: &str, models: &'static [(&'static str, &'static str)]) -> Gateway {
    gateway(&[Cred::new("only", 0, models).speaking(provider)], &[]).await
}

/// Sends `body` the way a client of `format` does.
async fn send(gw: &Gateway, format: &str, path: &str, body: &Value) -> reqwest::Response {
    let req = gw.client.post(format!("{}{path}", gw.url)).json(body);
    let req = match format {
        "anthropic" => req
            .header("x-api-key", CLIENT_KEY)
            .header("anthropic-version", "2023-06-01"),
        "gemini" => req.header("x-goog-api-key", CLIENT_KEY),
        _ => req.bearer_auth(CLIENT_KEY),
    };
    req.send().await.unwrap()
}

/// The `data:` payloads of an SSE body, with their event names.
fn events(raw: &str) -> Vec<(String, Value)> {
    raw.split("\n\n")
        .filter_map(|block| {
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_string();
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            let v = serde_json::from_str(data).unwrap_or(Value::String(data.to_string()));
            Some((name, v))
        })
        .collect()
}

fn has_error_event(events: &[(String, Value)]) -> bool {
    events
        .iter()
        .any(|(name, v)| name == "error" || v.get("error").is_some())
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/clients/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[tokio::test]
async fn what_real_clients_send_is_served_by_every_provider() {
    let cases = [
        ("claude-code-messages", "anthropic"),
        ("claude-code-tool-result", "anthropic"),
        ("gemini-cli-router", "gemini"),
        ("gemini-cli-stream-generate", "gemini"),
        ("gemini-cli-tool-result", "gemini"),
        ("google-genai-generate", "gemini"),
        ("google-genai-stream-generate", "gemini"),
        ("google-genai-tool-call", "gemini"),
    ];
    for provider in PROVIDERS {
        let gw = only(provider, ANY).await;
        for (name, format) in cases {
            let recorded = fixture(name);
            let path = recorded["path"].as_str().unwrap();
            let r = send(&gw, format, path, &recorded["body"]).await;
            let status = r.status();
            let text = r.text().await.unwrap();
            let hits = gw.mock.hits();
            assert_eq!(
                status,
                200,
                "{name} via {provider}: {text}\nupstream got: {:#}",
                hits.last().map(|h| h.body.clone()).unwrap_or_default()
            );
            if path.contains("stream") || recorded["body"]["stream"] == true {
                let events = events(&text);
                assert!(!events.is_empty(), "{name} via {provider}: {text}");
                assert!(!has_error_event(&events), "{name} via {provider}: {text}");
            }
            // The model the client asked for went upstream as it was asked.
            let asked = recorded["body"]["model"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| {
                    path.split("/models/")
                        .nth(1)
                        .unwrap()
                        .split(':')
                        .next()
                        .unwrap()
                        .to_string()
                });
            assert_eq!(hits.last().unwrap().model, asked, "{name} via {provider}");
        }
        assert!(gw.blocks().await.is_empty(), "{provider}: nothing learned");
        gw.stop().await;
    }
}

#[tokio::test]
async fn claude_codes_settings_reach_other_providers_in_their_own_terms() {
    let recorded = fixture("claude-code-tool-result");
    let tools = recorded["body"]["tools"].as_array().unwrap().len();
    let gw = only("openai", ANY).await;
    let r = send(&gw, "anthropic", "/v1/messages", &recorded["body"]).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let sent = gw.mock.hits().pop().unwrap().body;
    assert_eq!(
        sent["reasoning_effort"], "medium",
        "from output_config.effort"
    );
    assert!(
        sent.get("max_completion_tokens").is_none(),
        "128,000 is no OpenAI limit"
    );
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["tools"].as_array().unwrap().len(), tools);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    gw.stop().await;

    let gw = only("gemini", ANY).await;
    let r = send(&gw, "anthropic", "/v1/messages", &recorded["body"]).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let sent = gw.mock.hits().pop().unwrap().body;
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        8192
    );
    let decls = sent["tools"][0]["functionDeclarations"].as_array().unwrap();
    assert_eq!(decls.len(), tools);
    assert!(
        decls
            .iter()
            .all(|d| d.get("parametersJsonSchema").is_some())
    );
    gw.stop().await;
}

#[tokio::test]
async fn gemini_clis_settings_reach_other_providers_in_their_own_terms() {
    let router = fixture("gemini-cli-router");
    let path = router["path"].as_str().unwrap();
    let gw = only("openai", ANY).await;
    let r = send(&gw, "gemini", path, &router["body"]).await;
    assert_eq!(r.status(), 200);
    let sent = gw.mock.hits().pop().unwrap().body;
    assert!(sent.get("top_k").is_none());
    assert_eq!(sent["reasoning_effort"], "high", "thinkingLevel HIGH");
    let schema = &sent["response_format"]["json_schema"]["schema"];
    assert_eq!(
        schema["type"], "object",
        "Gemini's type names become JSON Schema's"
    );
    assert_eq!(schema["properties"]["complexity_score"]["type"], "integer");
    gw.stop().await;

    let turn = fixture("gemini-cli-stream-generate");
    let gw = only("anthropic", ANY).await;
    let r = send(&gw, "gemini", turn["path"].as_str().unwrap(), &turn["body"]).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let sent = gw.mock.hits().pop().unwrap().body;
    assert_eq!(sent["thinking"]["type"], "enabled");
    assert!(
        sent["max_tokens"].as_u64().unwrap() > sent["thinking"]["budget_tokens"].as_u64().unwrap()
    );
    assert!(sent.get("temperature").is_none() && sent.get("top_k").is_none());
    assert_eq!(sent["top_p"], 0.95);
    gw.stop().await;
}

/// The tool call a client's stream carried: its name and parsed arguments.
fn streamed_call(client: &str, raw: &str) -> (String, Value) {
    let mut name = String::new();
    let mut args = String::new();
    let mut whole = Value::Null;
    for (_, v) in events(raw) {
        match client {
            "openai" => {
                let call = &v["choices"][0]["delta"]["tool_calls"][0];
                if let Some(n) = call["function"]["name"].as_str() {
                    name = n.to_string();
                }
                args.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
            "anthropic" => {
                if let Some(n) = v["content_block"]["name"].as_str() {
                    name = n.to_string();
                }
                args.push_str(v["delta"]["partial_json"].as_str().unwrap_or(""));
            }
            _ => {
                for p in v["candidates"][0]["content"]["parts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(f) = p.get("functionCall") {
                        name = f["name"].as_str().unwrap_or("").to_string();
                        whole = f["args"].clone();
                    }
                }
            }
        }
    }
    let args = if client == "gemini" {
        whole
    } else {
        serde_json::from_str(&args).unwrap_or(Value::Null)
    };
    (name, args)
}

#[tokio::test]
async fn a_streamed_answer_that_is_only_a_tool_call_reaches_every_client_from_every_provider() {
    for provider in PROVIDERS {
        let gw = only(provider, M).await;
        for client in CLIENTS {
            let (path, body) = match client {
                "openai" => (
                    "/v1/chat/completions",
                    json!({"model": "m", "stream": true,
                    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
                    "messages": [{"role": "user", "content": "weather?"}]}),
                ),
                "anthropic" => (
                    "/v1/messages",
                    json!({"model": "m", "max_tokens": 50, "stream": true,
                    "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
                    "messages": [{"role": "user", "content": "weather?"}]}),
                ),
                _ => (
                    "/v1beta/models/m:streamGenerateContent?alt=sse",
                    json!({
                    "tools": [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object"}}]}],
                    "contents": [{"role": "user", "parts": [{"text": "weather?"}]}]}),
                ),
            };
            let r = send(&gw, client, path, &body).await;
            assert_eq!(r.status(), 200, "{provider} -> {client}");
            let raw = r.text().await.unwrap();
            let (name, args) = streamed_call(client, &raw);
            assert_eq!(name, "get_weather", "{provider} -> {client}: {raw}");
            assert_eq!(
                args,
                json!({"city": "Paris"}),
                "{provider} -> {client}: {raw}"
            );
            assert!(
                !has_error_event(&events(&raw)),
                "{provider} -> {client}: {raw}"
            );
            if client == "openai" {
                // It did not ask for usage: the chunk asked for on its behalf stays here.
                assert!(
                    events(&raw)
                        .iter()
                        .all(|(_, v)| v.get("usage").is_none_or(Value::is_null)),
                    "{provider} -> openai: {raw}"
                );
            }
            if client == "anthropic" && provider != "anthropic" {
                let events = events(&raw);
                let start = &events[0].1["message"]["usage"]["input_tokens"];
                assert!(
                    start.as_u64().unwrap() > 0,
                    "message_start has the estimate"
                );
                let last_usage = events
                    .iter()
                    .rev()
                    .find_map(|(n, v)| (n == "message_delta").then(|| v["usage"].clone()))
                    .unwrap();
                assert_eq!(
                    last_usage["input_tokens"], 3,
                    "the upstream's count at the end"
                );
            }
        }
        assert!(
            gw.blocks().await.is_empty(),
            "{provider}: a healthy credential stays unblocked"
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn passthrough_answers_name_the_model_the_client_asked_for() {
    for provider in PROVIDERS {
        let gw = only(provider, M).await;
        let (path, stream_path, body, key) = match provider {
            "openai" => (
                "/v1/chat/completions",
                "/v1/chat/completions",
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
                "model",
            ),
            "anthropic" => (
                "/v1/messages",
                "/v1/messages",
                json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
                "model",
            ),
            _ => (
                "/v1beta/models/m:generateContent",
                "/v1beta/models/m:streamGenerateContent?alt=sse",
                json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
                "modelVersion",
            ),
        };
        let v: Value = send(&gw, provider, path, &body).await.json().await.unwrap();
        assert_eq!(v[key], "m", "{provider}: {v}");
        assert_eq!(gw.mock.hits()[0].model, "up-m");
        let mut body = body;
        if provider != "gemini" {
            body["stream"] = json!(true);
        }
        let raw = send(&gw, provider, stream_path, &body)
            .await
            .text()
            .await
            .unwrap();
        let named: Vec<Value> = events(&raw)
            .into_iter()
            .filter_map(|(_, v)| v.get(key).or_else(|| v.pointer("/message/model")).cloned())
            .collect();
        assert!(!named.is_empty(), "{provider}: {raw}");
        assert!(named.iter().all(|n| n == "m"), "{provider}: {raw}");
        gw.stop().await;
    }
}

#[tokio::test]
async fn an_answer_the_gateway_cannot_translate_teaches_nothing() {
    let gw = only("openai", M).await;
    // Arguments that are not a JSON object: OpenAI-shaped, but not expressible
    // as an Anthropic tool_use.
    let odd = json!({"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "up-m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]}}]});
    gw.mock.script(&key_of("only"), [Reply::status(200, odd)]);
    let body =
        json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let r = send(&gw, "anthropic", "/v1/messages", &body).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not translate"),
        "{v}"
    );
    assert!(gw.blocks().await.is_empty(), "the credential is not blamed");
    let r = send(&gw, "anthropic", "/v1/messages", &body).await;
    assert_eq!(
        r.status(),
        200,
        "the same credential serves the next request"
    );
    gw.stop().await;
}

#[tokio::test]
async fn history_with_translated_thinking_is_mended_for_an_upstream_of_the_clients_format() {
    let mark = switchyard::translate::ir::TRANSLATED_THINKING;
    // A Claude Code conversation whose last turn another provider served:
    // its thinking block carries the gateway's mark, and the tool loop has
    // no signed thinking. Anthropic itself would refuse both.
    let gw = only("anthropic", ANY).await;
    let body = json!({
        "model": "claude-x", "max_tokens": 4000, "stream": true,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "from elsewhere", "signature": mark},
                {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.txt"}]}
        ]
    });
    let r = send(&gw, "anthropic", "/v1/messages", &body).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let sent = gw.mock.hits().pop().unwrap().body;
    assert!(!sent.to_string().contains(mark));
    assert!(
        sent.get("thinking").is_none(),
        "thinking off for this turn: {sent}"
    );
    gw.stop().await;

    // A Gemini CLI conversation whose function call another provider made,
    // sent to a Gemini 3 model that checks signatures.
    let gw = only("gemini", &[("gemini-3-pro", "gemini-3-pro")]).await;
    let body = json!({"contents": [
        {"role": "user", "parts": [{"text": "go"}]},
        {"role": "model", "parts": [
            {"text": "thinking elsewhere", "thought": true, "thoughtSignature": mark},
            {"functionCall": {"name": "run_shell_command", "args": {"command": "ls"}}, "thoughtSignature": mark}
        ]},
        {"role": "user", "parts": [{"functionResponse": {"name": "run_shell_command", "response": {"output": "a.txt"}}}]}
    ]});
    let r = send(
        &gw,
        "gemini",
        "/v1beta/models/gemini-3-pro:generateContent",
        &body,
    )
    .await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let sent = gw.mock.hits().pop().unwrap().body.to_string();
    assert!(
        !sent.contains(mark) && sent.contains("skip_thought_signature_validator"),
        "{sent}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn function_calls_another_provider_made_reach_gemini_3_with_the_placeholder_signature() {
    let gw = only("gemini", &[("m", "gemini-3-pro")]).await;
    let body = json!({"model": "m", "max_tokens": 100,
    "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
    "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]}
    ]});
    let r = send(&gw, "anthropic", "/v1/messages", &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "tool said: sunny", "{v}");
    gw.stop().await;
}

#[tokio::test]
async fn upstream_model_names_cannot_change_the_upstream_path_or_query() {
    let gw = only("gemini", &[("m", "../evil?key=stolen#frag%2F")]).await;
    let r = send(
        &gw,
        "openai",
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let hit = gw.mock.hits().pop().unwrap();
    assert_eq!(
        hit.path, "/v1beta/models/..%2Fevil%3Fkey%3Dstolen%23frag%252F:generateContent",
        "one escaped path segment, no query"
    );
    gw.stop().await;
}
