//! Every client format served by every provider, through the real HTTP
//! server and the mock upstream: answers, streams, tool calls, token counts,
//! errors in the client's format, and fallback across providers.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use common::{CLIENT_KEY, Cred, Gateway, Reply, gateway, key_of, sse_data};
use serde_json::{Value, json};

const PROVIDERS: [&str; 3] = ["openai", "anthropic", "gemini"];
const M: &[(&str, &str)] = &[("m", "up-m")];

async fn only(provider: &str) -> Gateway {
    gateway(&[Cred::new("only", 0, M).speaking(provider)], &[]).await
}

async fn post(gw: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    gw.client
        .post(format!("{}{path}", gw.url))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn hello(provider: &str) -> String {
    let _ = provider;
    format!("hello from {} as up-m", key_of("only"))
}

#[tokio::test]
async fn anthropic_clients_are_answered_by_every_provider() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        let body = json!({"model": "m", "max_tokens": 100, "system": "be brief", "messages": [{"role": "user", "content": "hi"}]});
        let r = post(&gw, "/v1/messages", &body).await;
        assert_eq!(r.status(), 200, "{provider}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "message", "{provider}: {v}");
        assert_eq!(v["content"][0]["text"], hello(provider), "{provider}");
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["usage"]["input_tokens"], 3);
        assert_eq!(v["usage"]["output_tokens"], 5);
        let hit = &gw.mock.hits()[0];
        assert_eq!(
            format!("{:?}", hit.kind).to_lowercase(),
            if provider == "openai" {
                "openai".to_string()
            } else {
                provider.to_string()
            }
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn gemini_clients_are_answered_by_every_provider() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "systemInstruction": {"parts": [{"text": "be brief"}]}});
        let r = gw
            .client
            .post(format!("{}/v1beta/models/m:generateContent", gw.url))
            .header("x-goog-api-key", CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{provider}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["text"],
            hello(provider),
            "{provider}: {v}"
        );
        assert_eq!(v["candidates"][0]["finishReason"], "STOP");
        assert_eq!(v["usageMetadata"]["totalTokenCount"], 8);
        gw.stop().await;
    }
}

#[tokio::test]
async fn openai_clients_are_answered_by_every_provider() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        let r = gw.chat("m").await;
        assert_eq!(r.status(), 200, "{provider}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            hello(provider),
            "{provider}: {v}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 8);
        gw.stop().await;
    }
}

/// Text of an Anthropic event stream, and its event names in order.
fn anthropic_stream(raw: &str) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut names = Vec::new();
    for block in raw.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .unwrap_or("")
            .to_string();
        let data: Value = block
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        if let Some(t) = data.pointer("/delta/text").and_then(Value::as_str) {
            text.push_str(t);
        }
        names.push(name);
    }
    (text, names)
}

#[tokio::test]
async fn streams_reach_every_client_format_from_every_provider() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        gw.mock.always(
            &key_of("only"),
            Reply::Stream {
                chunks: 3,
                delay_ms: 0,
            },
        );
        let want = format!("{} #1 #2", hello(provider));

        // Anthropic client: the whole event sequence, in order.
        let r = post(&gw, "/v1/messages", &json!({"model": "m", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let (text, names) = anthropic_stream(&r.text().await.unwrap());
        assert_eq!(text, want, "{provider}");
        assert_eq!(
            names.first().map(String::as_str),
            Some("message_start"),
            "{provider}: {names:?}"
        );
        assert_eq!(
            names.last().map(String::as_str),
            Some("message_stop"),
            "{provider}: {names:?}"
        );
        assert!(
            names.contains(&"content_block_start".to_string())
                && names.contains(&"message_delta".to_string())
        );

        // OpenAI client.
        let events = sse_data(gw.chat_stream("m").await).await;
        assert_eq!(common::streamed_text(&events), want, "{provider}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

        // Gemini client.
        let r = gw
            .client
            .post(format!(
                "{}/v1beta/models/m:streamGenerateContent?alt=sse",
                gw.url
            ))
            .header("x-goog-api-key", CLIENT_KEY)
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
            .send()
            .await
            .unwrap();
        let chunks = sse_data(r).await;
        let text: String = chunks
            .iter()
            .filter_map(|c| serde_json::from_str::<Value>(c).ok())
            .filter_map(|v| {
                v.pointer("/candidates/0/content/parts/0/text")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .collect();
        assert_eq!(text, want, "{provider}");
        let last: Value = serde_json::from_str(chunks.last().unwrap()).unwrap();
        assert_eq!(last["candidates"][0]["finishReason"], "STOP", "{provider}");
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_tool_use_round_trip_works_across_every_pair() {
    let weather = json!({"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}});
    for provider in PROVIDERS {
        let gw = only(provider).await;
        // Anthropic client.
        let tools = json!([{"name": "get_weather", "description": "Weather of a city", "input_schema": weather["parameters"]}]);
        let first = post(&gw, "/v1/messages", &json!({"model": "m", "max_tokens": 50, "tools": tools, "messages": [{"role": "user", "content": "weather in Paris?"}]})).await;
        let v: Value = first.json().await.unwrap();
        assert_eq!(v["stop_reason"], "tool_use", "{provider}: {v}");
        let call = &v["content"][0];
        assert_eq!(call["type"], "tool_use");
        assert_eq!(call["name"], "get_weather");
        assert_eq!(call["input"], json!({"city": "Paris"}));
        let second = post(&gw, "/v1/messages", &json!({"model": "m", "max_tokens": 50, "tools": tools, "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "sunny, 21 C"}]}
        ]})).await;
        let v: Value = second.json().await.unwrap();
        assert_eq!(
            v["content"][0]["text"], "tool said: sunny, 21 C",
            "{provider}: {v}"
        );

        // OpenAI client.
        let tools = json!([{"type": "function", "function": weather}]);
        let first = gw.post("/v1/chat/completions", &json!({"model": "m", "tools": tools, "messages": [{"role": "user", "content": "weather in Paris?"}]})).await;
        let v: Value = first.json().await.unwrap();
        assert_eq!(
            v["choices"][0]["finish_reason"], "tool_calls",
            "{provider}: {v}"
        );
        let call = v["choices"][0]["message"]["tool_calls"][0].clone();
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        let second = gw
            .post(
                "/v1/chat/completions",
                &json!({"model": "m", "tools": tools, "messages": [
                    {"role": "user", "content": "weather in Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"}
                ]}),
            )
            .await;
        let v: Value = second.json().await.unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"], "tool said: sunny, 21 C",
            "{provider}: {v}"
        );

        // Gemini client.
        let tools = json!([{"functionDeclarations": [weather]}]);
        let url = format!("{}/v1beta/models/m:generateContent", gw.url);
        let first: Value = gw.client.post(&url).header("x-goog-api-key", CLIENT_KEY)
            .json(&json!({"tools": tools, "contents": [{"role": "user", "parts": [{"text": "weather in Paris?"}]}]}))
            .send().await.unwrap().json().await.unwrap();
        let call = first["candidates"][0]["content"]["parts"][0]["functionCall"].clone();
        assert_eq!(call["name"], "get_weather", "{provider}: {first}");
        assert_eq!(call["args"], json!({"city": "Paris"}));
        let second: Value = gw.client.post(&url).header("x-goog-api-key", CLIENT_KEY)
            .json(&json!({"tools": tools, "contents": [
                {"role": "user", "parts": [{"text": "weather in Paris?"}]},
                {"role": "model", "parts": [{"functionCall": call}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "sunny, 21 C"}}}]}
            ]}))
            .send().await.unwrap().json().await.unwrap();
        assert_eq!(
            second["candidates"][0]["content"]["parts"][0]["text"], "tool said: sunny, 21 C",
            "{provider}: {second}"
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn tool_call_deltas_stream_across_formats() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        let tools = json!([{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
        let r = post(&gw, "/v1/messages", &json!({"model": "m", "max_tokens": 50, "stream": true, "tools": tools, "messages": [{"role": "user", "content": "weather?"}]})).await;
        let raw = r.text().await.unwrap();
        let mut json_text = String::new();
        let mut stop = String::new();
        let mut tool_name = String::new();
        for block in raw.split("\n\n") {
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let v: Value = serde_json::from_str(data).unwrap();
            if let Some(p) = v.pointer("/delta/partial_json").and_then(Value::as_str) {
                json_text.push_str(p);
            }
            if let Some(n) = v.pointer("/content_block/name").and_then(Value::as_str) {
                tool_name = n.to_string();
            }
            if let Some(s) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                stop = s.to_string();
            }
        }
        assert_eq!(tool_name, "get_weather", "{provider}: {raw}");
        assert_eq!(
            serde_json::from_str::<Value>(&json_text).unwrap(),
            json!({"city": "Paris"}),
            "{provider}"
        );
        assert_eq!(stop, "tool_use", "{provider}");

        let r = gw.post("/v1/chat/completions", &json!({"model": "m", "stream": true, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}], "messages": [{"role": "user", "content": "weather?"}]})).await;
        let events = sse_data(r).await;
        let mut args = String::new();
        let mut finish = String::new();
        for e in events.iter().filter(|e| *e != "[DONE]") {
            let v: Value = serde_json::from_str(e).unwrap();
            if let Some(a) = v
                .pointer("/choices/0/delta/tool_calls/0/function/arguments")
                .and_then(Value::as_str)
            {
                args.push_str(a);
            }
            if let Some(f) = v
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
            {
                finish = f.to_string();
            }
        }
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"city": "Paris"}),
            "{provider}"
        );
        assert_eq!(finish, "tool_calls", "{provider}");
        gw.stop().await;
    }
}

#[tokio::test]
async fn an_anthropic_client_falls_back_from_a_529_to_an_openai_credential_with_its_stream_intact()
{
    let gw = gateway(
        &[
            Cred::new("claude", 1, M).speaking("anthropic"),
            Cred::new("gpt", 0, M),
        ],
        &[],
    )
    .await;
    gw.mock.script(&key_of("claude"), [Reply::status(529, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))]);
    gw.mock.always(
        &key_of("gpt"),
        Reply::Stream {
            chunks: 4,
            delay_ms: 5,
        },
    );
    let r = post(&gw, "/v1/messages", &json!({"model": "m", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(r.status(), 200);
    let (text, names) = anthropic_stream(&r.text().await.unwrap());
    assert_eq!(
        text,
        format!("hello from {} as up-m #1 #2 #3", key_of("gpt"))
    );
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(!names.contains(&"error".to_string()));
    assert_eq!(gw.mock.keys(), [key_of("claude"), key_of("gpt")]);
    let block = gw
        .block_of(&switchyard::state::Scope::pair("claude", "up-m"))
        .await
        .unwrap();
    assert_eq!(
        (block.reason, block.status),
        (switchyard::state::Reason::UpstreamError, 529)
    );
    gw.stop().await;
}

#[tokio::test]
async fn provider_errors_are_classified_by_their_own_shapes() {
    // Gemini: RESOURCE_EXHAUSTED with retryDelay is a quota hint.
    let no_wait = [("SWITCHYARD_MAX_RETRY_WAIT_MS", "0")];
    let gw = gateway(
        &[
            Cred::new("g", 1, M).speaking("gemini"),
            Cred::new("o", 0, M),
        ],
        &no_wait,
    )
    .await;
    gw.mock.script(&key_of("g"), [Reply::status(429, json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}}))]);
    assert_eq!(gw.chat("m").await.status(), 200);
    let b = gw
        .block_of(&switchyard::state::Scope::pair("g", "up-m"))
        .await
        .unwrap();
    assert_eq!(b.reason, switchyard::state::Reason::Quota);
    assert!((b.until_ms - b.since_ms - 17_000).abs() < 50);
    // Gemini: INVALID_ARGUMENT naming the model is a model-support failure.
    gw.mock.script(&key_of("o"), [Reply::status(400, json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "models/up-m is not found for API version v1beta, or is not supported for generateContent."}}))]);
    assert_eq!(gw.chat("m").await.status(), 503, "both blocked now");
    let b = gw
        .block_of(&switchyard::state::Scope::pair("o", "up-m"))
        .await
        .unwrap();
    assert_eq!(b.reason, switchyard::state::Reason::ModelNotSupported);
    gw.stop().await;

    // Anthropic: rate-limit reset headers are the hint.
    let gw = gateway(
        &[
            Cred::new("a", 1, M).speaking("anthropic"),
            Cred::new("o", 0, M),
        ],
        &[],
    )
    .await;
    let reset = (chrono::Utc::now() + chrono::Duration::seconds(40)).to_rfc3339();
    gw.mock.script(
        &key_of("a"),
        [Reply::status_with(
            429,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
            &[("anthropic-ratelimit-tokens-reset", &reset)],
        )],
    );
    assert_eq!(gw.chat("m").await.status(), 200);
    let b = gw
        .block_of(&switchyard::state::Scope::pair("a", "up-m"))
        .await
        .unwrap();
    let length = b.until_ms - b.since_ms;
    assert!((38_000..=40_000).contains(&length), "{length}");
    gw.stop().await;
}

#[tokio::test]
async fn errors_come_in_the_clients_own_format() {
    let gw = only("openai").await;
    // Unknown model.
    let r = post(
        &gw,
        "/v1/messages",
        &json!({"model": "nope", "max_tokens": 5, "messages": []}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("not_found_error"))
    );
    let r = gw
        .client
        .post(format!("{}/v1beta/models/nope:generateContent", gw.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&json!({"contents": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "NOT_FOUND");
    // Bad key.
    let r = gw
        .client
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", "wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "authentication_error"
    );
    let r = gw
        .client
        .post(format!(
            "{}/v1beta/models/m:generateContent?key=wrong",
            gw.url
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["status"],
        "UNAUTHENTICATED"
    );
    // Malformed.
    let r = post(
        &gw,
        "/v1/messages",
        &json!({"model": "m", "messages": "hi"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let r = gw
        .client
        .post(format!("{}/v1beta/models/m:generateContent", gw.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .json(&json!({"contents": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["status"],
        "INVALID_ARGUMENT"
    );
    // An upstream request fault of another format is re-rendered in the client's.
    gw.mock.script(
        &key_of("only"),
        [Reply::openai_error(
            400,
            "messages: too many",
            "invalid_request_error",
            None,
        )],
    );
    let r = post(
        &gw,
        "/v1/messages",
        &json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert!(v["error"]["message"].as_str().unwrap().contains("too many"));
    assert!(gw.mock.hits().len() == 1);
    gw.stop().await;
}

#[tokio::test]
async fn what_a_provider_cannot_express_is_a_clear_400() {
    let gw = only("anthropic").await;
    // OpenAI's n > 1 has no Anthropic counterpart.
    let r = gw
        .post(
            "/v1/chat/completions",
            &json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`n`"),
        "{v}"
    );
    assert!(gw.mock.hits().is_empty());
    gw.stop().await;
    // An Anthropic server tool cannot go to OpenAI.
    let gw = only("openai").await;
    let r = post(&gw, "/v1/messages", &json!({"model": "m", "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("web_search"),
        "{v}"
    );
    assert!(gw.mock.hits().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_candidate_that_cannot_express_the_request_is_skipped_for_one_that_can() {
    let gw = gateway(
        &[
            Cred::new("gpt", 1, M),
            Cred::new("claude", 0, M).speaking("anthropic"),
        ],
        &[],
    )
    .await;
    let r = post(&gw, "/v1/messages", &json!({"model": "m", "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(gw.mock.keys(), [key_of("claude")]);
    gw.stop().await;
}

#[tokio::test]
async fn token_counts_come_from_the_upstream_or_the_local_estimate() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        let r = post(&gw, "/v1/messages/count_tokens", &json!({"model": "m", "system": "s", "messages": [{"role": "user", "content": "x".repeat(400)}]})).await;
        assert_eq!(r.status(), 200, "{provider}");
        let n = r.json::<Value>().await.unwrap()["input_tokens"]
            .as_u64()
            .unwrap();
        let g = gw
            .client
            .post(format!("{}/v1beta/models/m:countTokens", gw.url))
            .header("x-goog-api-key", CLIENT_KEY)
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "x".repeat(400)}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(g.status(), 200);
        let gn = g.json::<Value>().await.unwrap()["totalTokens"]
            .as_u64()
            .unwrap();
        if provider == "openai" {
            // No count endpoint: the local estimate, and no upstream call at all.
            assert!((100..=120).contains(&n), "{n}");
            assert!((100..=120).contains(&gn), "{gn}");
            assert!(gw.mock.hits().is_empty());
        } else {
            assert_eq!((n, gn), (42, 42), "{provider}");
            assert_eq!(gw.mock.hits().len(), 2);
        }
        assert!(gw.blocks().await.is_empty());
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_count_success_clears_nothing() {
    let gw = gateway(
        &[Cred::new("a", 0, M).speaking("anthropic")],
        &[
            ("SWITCHYARD_MAX_RETRY_WAIT_MS", "0"),
            ("SWITCHYARD_QUOTA_BASE_MS", "200"),
        ],
    )
    .await;
    let pair = switchyard::state::Scope::pair("a", "up-m");
    let store = gw.running().state.gateway.store().clone();
    // A hint-less 429: the quota ladder stands at 1 after its block ends.
    gw.mock.script(
        &key_of("a"),
        [Reply::status(
            429,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
        )],
    );
    let generate =
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(post(&gw, "/v1/messages", &generate).await.status(), 429);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(gw.block_of(&pair).await.is_none(), "the block has ended");
    assert_eq!(store.quota_level(&pair).await.unwrap(), 1);
    // A count the upstream answers leaves the ladder where it is...
    let r = post(
        &gw,
        "/v1/messages/count_tokens",
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["input_tokens"], 42,
        "the upstream's count, not the estimate"
    );
    assert_eq!(store.quota_level(&pair).await.unwrap(), 1);
    // ...where a generation success resets it.
    assert_eq!(post(&gw, "/v1/messages", &generate).await.status(), 200);
    assert_eq!(store.quota_level(&pair).await.unwrap(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn model_lists_in_every_format() {
    let gw = only("openai").await;
    let v: Value = gw
        .client
        .get(format!("{}/v1/models", gw.url))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["data"][0]["id"], "m");
    assert_eq!(v["has_more"], false);
    let v: Value = gw
        .client
        .get(format!("{}/v1beta/models", gw.url))
        .header("x-goog-api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["models"][0]["name"], "models/m");
    gw.stop().await;
}

#[tokio::test]
async fn gemini_routes_are_served_under_v1_too() {
    let gw = only("gemini").await;
    let gemini_post = |path: &str, body: Value| {
        gw.client
            .post(format!("{}{path}", gw.url))
            .header("x-goog-api-key", CLIENT_KEY)
            .json(&body)
            .send()
    };
    let contents = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let r = gemini_post("/v1/models/m:generateContent", contents.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        hello("gemini")
    );
    let r = gemini_post(
        "/v1/models/m:streamGenerateContent?alt=sse",
        contents.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let chunks = sse_data(r).await;
    let last: Value = serde_json::from_str(chunks.last().unwrap()).unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    let r = gemini_post("/v1/models/m:countTokens", contents)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["totalTokens"], 42);
    assert_eq!(gw.mock.hits().len(), 3);
    assert!(gw.mock.hits().iter().all(|h| h.model == "up-m"));
    gw.stop().await;
}

#[tokio::test]
async fn v1_models_answers_gemini_clients_in_gemini_format() {
    let gw = only("openai").await;
    let list = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let url = format!("{}/v1/models", gw.url);
    let v = list(gw.client.get(&url).header("x-goog-api-key", CLIENT_KEY)).await;
    assert_eq!(v["models"][0]["name"], "models/m", "{v}");
    let v = list(gw.client.get(format!("{url}?key={CLIENT_KEY}"))).await;
    assert_eq!(v["models"][0]["name"], "models/m", "{v}");
    // Other clients keep OpenAI's list.
    let v = list(gw.client.get(&url).bearer_auth(CLIENT_KEY)).await;
    assert_eq!(
        (&v["object"], &v["data"][0]["id"]),
        (&json!("list"), &json!("m"))
    );
    // A Gemini client with a wrong key gets Gemini's error.
    let r = gw
        .client
        .get(&url)
        .header("x-goog-api-key", "sk-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["status"],
        "UNAUTHENTICATED"
    );
    gw.stop().await;
}

#[tokio::test]
async fn gemini_model_get_names_a_served_model_or_404s() {
    let gw = only("gemini").await;
    for version in ["v1beta", "v1"] {
        let get = |model: &str| {
            gw.client
                .get(format!("{}/{version}/models/{model}", gw.url))
                .header("x-goog-api-key", CLIENT_KEY)
                .send()
        };
        let r = get("m").await.unwrap();
        assert_eq!(r.status(), 200, "{version}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["name"], "models/m");
        assert!(
            v["supportedGenerationMethods"]
                .as_array()
                .unwrap()
                .contains(&json!("generateContent"))
        );
        let r = get("nope").await.unwrap();
        assert_eq!(r.status(), 404, "{version}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["status"],
            "NOT_FOUND"
        );
    }
    assert!(gw.mock.hits().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn upstream_connections_follow_the_proxy_variables() {
    let proxy = common::proxy::ConnectProxy::start().await;
    let proxy_url = proxy.url(Some("egress:hunter2"));

    // Through the proxy: a CONNECT tunnel to the credential's host, with the
    // proxy's credentials, and the answer comes back through it.
    let gw = gateway(
        &[Cred::new("only", 0, M)],
        &[("HTTP_PROXY", &proxy_url), ("https_proxy", &proxy_url)],
    )
    .await;
    for stream in [false, true] {
        let r = gw
            .post("/v1/chat/completions", &Gateway::chat_body("m", stream))
            .await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains("hello from"), "{text}");
    }
    let tunnels = proxy.tunnels();
    assert!(!tunnels.is_empty());
    for t in &tunnels {
        assert_eq!(t.target, gw.mock.addr.to_string());
        // base64("egress:hunter2")
        assert_eq!(
            t.authorization.as_deref(),
            Some("Basic ZWdyZXNzOmh1bnRlcjI=")
        );
    }
    assert_eq!(gw.mock.hits().len(), 2);
    assert_eq!(gw.mock.hits()[0].key, key_of("only"));
    gw.stop().await;

    // An HTTPS upstream: TLS (and HTTP/2) inside the tunnel.
    let dir = tempfile::tempdir().unwrap();
    let tls = common::tls::TlsUpstream::start(dir.path()).await;
    let url = tls.base_url();
    let gw = gateway(
        &[Cred::new("tls", 0, M).at(&url)],
        &[
            ("HTTPS_PROXY", &proxy_url),
            ("SSL_CERT_FILE", tls.ca_file.to_str().unwrap()),
        ],
    )
    .await;
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("over HTTP/2.0 with Bearer {}", key_of("tls"))
    );
    let last = proxy.tunnels().last().cloned().unwrap();
    assert_eq!(last.target, tls.addr.to_string());
    gw.stop().await;

    // NO_PROXY names the host: straight there, the proxy sees nothing new.
    let before = proxy.tunnels().len();
    let gw = gateway(
        &[Cred::new("only", 0, M)],
        &[
            ("HTTP_PROXY", &proxy_url),
            ("NO_PROXY", "localhost,127.0.0.1"),
        ],
    )
    .await;
    assert_eq!(gw.chat("m").await.status(), 200);
    assert_eq!(proxy.tunnels().len(), before);
    gw.stop().await;
}

/// The gateway's one credential is blocked as one that could not be reached.
async fn assert_learned_unreachable(gw: &Gateway) {
    let blocks = gw.blocks().await;
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].1.message, "could not connect to the upstream");
}

#[tokio::test]
async fn an_unreachable_proxy_is_a_connect_failure_that_is_learned() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let gw = gateway(&[Cred::new("only", 0, M)], &[("HTTP_PROXY", &dead_url)]).await;
    assert_eq!(gw.chat("m").await.status(), 503);
    assert!(gw.mock.hits().is_empty());
    assert_learned_unreachable(&gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn tls_upstreams_are_verified_and_speak_http2_when_offered() {
    let dir = tempfile::tempdir().unwrap();
    let tls = common::tls::TlsUpstream::start(dir.path()).await;
    let url = tls.base_url();
    let ca = tls.ca_file.to_str().unwrap();

    // The upstream's CA trusted through SSL_CERT_FILE: HTTP/2 by ALPN.
    let gw = gateway(&[Cred::new("tls", 0, M).at(&url)], &[("SSL_CERT_FILE", ca)]).await;
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("over HTTP/2.0 with Bearer {}", key_of("tls"))
    );
    gw.stop().await;

    // Without it the certificate is not trusted: nothing is sent, the
    // credential is blocked as unreachable.
    let gw = gateway(&[Cred::new("tls", 0, M).at(&url)], &[]).await;
    assert_eq!(gw.chat("m").await.status(), 503);
    assert_learned_unreachable(&gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn the_connect_timeout_covers_a_proxy_that_never_answers() {
    let silent_url = common::proxy::silent().await;
    let gw = gateway(
        &[Cred::new("only", 0, M)],
        &[
            ("HTTP_PROXY", &silent_url),
            ("SWITCHYARD_CONNECT_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    // Without the connect timeout this waits for the first-byte one (5 min).
    let r = tokio::time::timeout(std::time::Duration::from_secs(20), gw.chat("m"))
        .await
        .expect("the request ends at the connect timeout");
    assert_eq!(r.status(), 503);
    assert!(gw.mock.hits().is_empty());
    assert_learned_unreachable(&gw).await;
    gw.stop().await;
}
