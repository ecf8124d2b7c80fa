//! The OpenAI Responses surface (`POST /v1/responses`) served by credentials
//! of every provider, translated: answers, the event stream and its
//! invariants, tool round trips, errors, fallback and learning.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use common::{CLIENT_KEY, Cred, Gateway, Reply, gateway, key_of};
use serde_json::{Value, json};
use switchyard::state::Scope;

const PROVIDERS: [&str; 3] = ["openai", "anthropic", "gemini"];
const M: &[(&str, &str)] = &[("m", "up-m")];

async fn only(provider: &str) -> Gateway {
    gateway(&[Cred::new("only", 0, M).speaking(provider)], &[]).await
}

async fn create(gw: &Gateway, body: &Value) -> reqwest::Response {
    gw.client
        .post(format!("{}/v1/responses", gw.url))
        .bearer_auth(CLIENT_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn tools() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])
}

/// The events of a Responses stream: (event name, data).
fn events(raw: &str) -> Vec<(String, Value)> {
    raw.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_string();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// Checks what every Responses stream must hold and returns the final
/// response of its `response.completed`.
fn check_stream(label: &str, events: &[(String, Value)]) -> Value {
    let types: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(types[0], "response.created", "{label}: {types:?}");
    assert_eq!(types[1], "response.in_progress", "{label}");
    assert_eq!(
        *types.last().unwrap(),
        "response.completed",
        "{label}: {types:?}"
    );
    let mut open: Vec<(u64, String)> = Vec::new();
    let mut text: std::collections::HashMap<String, String> = Default::default();
    let mut done_items = Vec::new();
    for (i, (name, v)) in events.iter().enumerate() {
        assert_eq!(
            v["type"],
            name.as_str(),
            "{label}: the data names its event"
        );
        assert_eq!(v["sequence_number"], i as u64, "{label}: numbered in order");
        match name.as_str() {
            "response.output_item.added" => {
                let index = v["output_index"].as_u64().unwrap();
                assert_eq!(
                    index as usize,
                    done_items.len() + open.len(),
                    "{label}: indexes in order"
                );
                open.push((index, v["item"]["id"].as_str().unwrap().to_string()));
            }
            "response.output_text.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_summary_text.delta" => {
                let id = v["item_id"].as_str().unwrap();
                let index = v["output_index"].as_u64().unwrap();
                assert!(
                    open.contains(&(index, id.to_string())),
                    "{label}: delta of an open item"
                );
                text.entry(id.to_string())
                    .or_default()
                    .push_str(v["delta"].as_str().unwrap());
            }
            "response.output_item.done" => {
                let item = &v["item"];
                let id = item["id"].as_str().unwrap().to_string();
                let index = v["output_index"].as_u64().unwrap();
                assert!(open.contains(&(index, id.clone())), "{label}");
                open.retain(|(_, i)| *i != id);
                let streamed = text.get(&id).cloned().unwrap_or_default();
                match item["type"].as_str().unwrap() {
                    "message" => {
                        assert_eq!(item["content"][0]["text"], streamed.as_str(), "{label}")
                    }
                    "function_call" => assert_eq!(item["arguments"], streamed.as_str(), "{label}"),
                    "reasoning" => {
                        assert_eq!(item["summary"][0]["text"], streamed.as_str(), "{label}")
                    }
                    other => panic!("{label}: unexpected item {other}"),
                }
                done_items.push(item.clone());
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "{label}: every item is done");
    let completed = events.last().unwrap().1["response"].clone();
    assert_eq!(
        completed["output"],
        Value::Array(done_items),
        "{label}: completed holds the items"
    );
    assert!(
        completed["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "{label}"
    );
    completed
}

/// A response without what differs from one answer to the next.
fn comparable(mut r: Value) -> Value {
    r["id"] = json!("");
    r["created_at"] = json!(0);
    for item in r["output"].as_array_mut().unwrap() {
        item["id"] = json!("");
        // Gemini has no call ids: the gateway makes them up, anew each time.
        if item.get("call_id").is_some() {
            item["call_id"] = json!("");
        }
        // Arguments as JSON: a stream relays the upstream's own spacing.
        if let Some(args) = item["arguments"].as_str() {
            item["arguments"] = serde_json::from_str(args).unwrap();
        }
    }
    r
}

#[tokio::test]
async fn every_provider_answers_a_responses_client() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        let r = create(
            &gw,
            &json!({"model": "m", "instructions": "be brief", "input": "hi", "store": false}),
        )
        .await;
        assert_eq!(r.status(), 200, "{provider}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "response", "{provider}: {v}");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "m");
        assert_eq!(v["output"][0]["type"], "message");
        assert_eq!(
            v["output"][0]["content"][0]["text"],
            "hello from upstream-key-only as up-m"
        );
        assert_eq!(v["usage"]["input_tokens"], 3);
        assert_eq!(v["usage"]["output_tokens"], 5);
        assert_eq!(v["usage"]["total_tokens"], 8);
        assert!(v["usage"]["input_tokens_details"]["cached_tokens"].is_u64());
        assert!(v["usage"]["output_tokens_details"]["reasoning_tokens"].is_u64());
        gw.stop().await;
    }
}

#[tokio::test]
async fn streams_hold_their_invariants_and_end_as_the_plain_answer_does() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        // The same answer streamed and plain: one chunk of text.
        gw.mock.always(
            &key_of("only"),
            Reply::Stream {
                chunks: 1,
                delay_ms: 0,
            },
        );
        for body in [
            json!({"model": "m", "input": "hi"}),
            json!({"model": "m", "input": "weather?", "tools": tools()}),
        ] {
            let plain: Value = create(&gw, &body).await.json().await.unwrap();
            let mut streamed = body.clone();
            streamed["stream"] = json!(true);
            let r = create(&gw, &streamed).await;
            assert_eq!(r.status(), 200);
            assert!(
                r.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/event-stream")
            );
            let raw = r.text().await.unwrap();
            let label = format!("{provider}, tools: {}", body.get("tools").is_some());
            let completed = check_stream(&label, &events(&raw));
            assert_eq!(comparable(completed), comparable(plain), "{label}");
        }
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_tool_call_only_stream_reaches_a_responses_client_from_every_provider() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        let raw = create(
            &gw,
            &json!({"model": "m", "input": "weather?", "tools": tools(), "stream": true}),
        )
        .await
        .text()
        .await
        .unwrap();
        let completed = check_stream(provider, &events(&raw));
        let call = &completed["output"][0];
        assert_eq!(call["type"], "function_call", "{provider}: {completed}");
        assert_eq!(call["name"], "get_weather");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert!(gw.blocks().await.is_empty());
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_function_call_output_goes_back_and_is_answered() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        let body = json!({"model": "m", "tools": tools(), "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"type": "function_call", "call_id": "call_7", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_7", "output": "sunny"}
        ]});
        let v: Value = create(&gw, &body).await.json().await.unwrap();
        assert_eq!(
            v["output"][0]["content"][0]["text"], "tool said: sunny",
            "{provider}: {v}"
        );
        let sent = gw.mock.hits()[0].body.to_string();
        assert!(
            !sent.contains("opaque"),
            "{provider}: reasoning stays behind"
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn custom_tools_are_called_as_custom_tools() {
    for provider in PROVIDERS {
        let gw = only(provider).await;
        gw.mock.script(
            &key_of("only"),
            [Reply::Call {
                name: "apply_patch".into(),
                args: json!({"input": "*** Begin Patch\n*** End Patch"}),
            }],
        );
        let body = json!({"model": "m", "input": "patch it", "stream": true,
            "tools": [{"type": "custom", "name": "apply_patch", "description": "edit files", "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}]});
        let raw = create(&gw, &body).await.text().await.unwrap();
        let events = events(&raw);
        let done = events
            .iter()
            .find(|(n, _)| n == "response.output_item.done")
            .map(|(_, v)| v["item"].clone())
            .unwrap();
        assert_eq!(done["type"], "custom_tool_call", "{provider}: {raw}");
        assert_eq!(done["input"], "*** Begin Patch\n*** End Patch");
        assert!(
            events
                .iter()
                .any(|(n, _)| n == "response.custom_tool_call_input.done")
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn state_kept_upstream_is_a_clear_400_without_a_responses_credential() {
    let gw = only("openai").await;
    let r = create(
        &gw,
        &json!({"model": "m", "input": "more", "previous_response_id": "resp_1"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("previous_response_id"),
        "{v}"
    );
    let r = create(&gw, &json!({"model": "nope", "input": "x"})).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    let r = create(&gw, &json!({"model": "m", "input": 5})).await;
    assert_eq!(r.status(), 400);
    assert!(gw.mock.hits().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_websocket_attempt_is_refused_at_once() {
    let gw = only("openai").await;
    let r = gw
        .client
        .get(format!("{}/v1/responses", gw.url))
        .bearer_auth(CLIENT_KEY)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
    gw.stop().await;
}

#[tokio::test]
async fn fallback_learning_and_failures_after_the_first_byte() {
    let models = M;
    let gw = gateway(
        &[
            Cred::new("a", 1, models).speaking("anthropic"),
            Cred::new("b", 0, models).speaking("gemini"),
        ],
        &[],
    )
    .await;
    // A 429 on the first credential: the second serves, the first is left alone.
    gw.mock.script(
        &key_of("a"),
        [Reply::status(
            429,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
        )],
    );
    let v: Value = create(&gw, &json!({"model": "m", "input": "hi"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["output"][0]["content"][0]["text"], "hello from upstream-key-b as up-m",
        "{v}"
    );
    let block = gw.block_of(&Scope::pair("a", "up-m")).await.unwrap();
    assert_eq!(block.status, 429);
    gw.stop().await;

    // A 5xx before the first byte falls back invisibly.
    let gw = gateway(
        &[
            Cred::new("a", 1, models).speaking("openai"),
            Cred::new("b", 0, models).speaking("anthropic"),
        ],
        &[],
    )
    .await;
    gw.mock.script(
        &key_of("a"),
        [Reply::status(500, json!({"error": {"message": "boom"}}))],
    );
    let raw = create(&gw, &json!({"model": "m", "input": "hi", "stream": true}))
        .await
        .text()
        .await
        .unwrap();
    check_stream("fallback", &events(&raw));
    assert!(raw.contains("upstream-key-b"));
    assert!(gw.block_of(&Scope::pair("a", "up-m")).await.is_some());
    // Cut after the first content: the stream ends with response.failed, learned.
    gw.mock
        .script(&key_of("b"), [Reply::StreamCut { events: 3 }]);
    let raw = create(&gw, &json!({"model": "m", "input": "hi", "stream": true}))
        .await
        .text()
        .await
        .unwrap();
    let events = events(&raw);
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.failed", "{raw}");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "server_error");
    let numbers: Vec<u64> = events
        .iter()
        .map(|(_, v)| v["sequence_number"].as_u64().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert!(gw.block_of(&Scope::pair("b", "up-m")).await.is_some());
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_teaches_nothing() {
    let gw = only("anthropic").await;
    gw.mock.script(
        &key_of("only"),
        [Reply::Delay {
            ms: 2_000,
            then: Box::new(Reply::status(
                500,
                json!({"type": "error", "error": {"type": "api_error", "message": "late"}}),
            )),
        }],
    );
    // The client gives up after 300 ms: its request is dropped mid-flight.
    let gone = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        create(&gw, &json!({"model": "m", "input": "hi"})),
    )
    .await;
    assert!(gone.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(2_200)).await;
    assert!(
        gw.blocks().await.is_empty(),
        "a client that left blames no credential"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_responses_api_credential_gets_the_request_as_it_is() {
    let gw = gateway(&[Cred::new("native", 0, M).responses_api()], &[]).await;
    let body = json!({"model": "m", "input": "more", "previous_response_id": "resp_abc", "store": true,
        "include": ["reasoning.encrypted_content"],
        "tools": [{"type": "web_search"}, {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]});
    let v: Value = create(&gw, &body).await.json().await.unwrap();
    assert_eq!(v["model"], "m", "the requested name, not up-m: {v}");
    let hit = gw.mock.hits().pop().unwrap();
    assert!(hit.path.ends_with("/v1/responses"), "{}", hit.path);
    let mut expected = body.clone();
    expected["model"] = json!("up-m");
    assert_eq!(hit.body, expected, "untouched but for the model");

    // Streams go through too, numbered as the upstream numbered them.
    let raw = create(
        &gw,
        &json!({"model": "m", "input": "weather?", "tools": tools(), "stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    let completed = check_stream("passthrough", &events(&raw));
    assert_eq!(completed["model"], "m");
    assert_eq!(completed["output"][0]["type"], "function_call");

    // Chat completions clients of the same credential still use chat completions.
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 200);
    assert!(
        gw.mock
            .hits()
            .pop()
            .unwrap()
            .path
            .ends_with("/chat/completions")
    );
    gw.stop().await;
}

#[tokio::test]
async fn stateful_requests_go_to_the_credential_that_can_serve_them() {
    let gw = gateway(
        &[
            Cred::new("claude", 5, M).speaking("anthropic"),
            Cred::new("native", 0, M).responses_api(),
        ],
        &[],
    )
    .await;
    let r = create(
        &gw,
        &json!({"model": "m", "input": "more", "previous_response_id": "resp_abc"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        gw.mock.keys(),
        vec![key_of("native")],
        "the higher tier cannot serve it"
    );
    // Its 404 for an unknown response id is the request's fault: returned, nothing learned.
    gw.mock.script(
        &key_of("native"),
        [Reply::openai_error(
            404,
            "Previous response with id 'resp_gone' not found.",
            "invalid_request_error",
            Some("previous_response_not_found"),
        )],
    );
    let r = create(
        &gw,
        &json!({"model": "m", "input": "more", "previous_response_id": "resp_gone"}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resp_gone")
    );
    assert!(gw.blocks().await.is_empty(), "no block for a stale id");
    gw.stop().await;
}

#[tokio::test]
async fn a_previous_response_id_goes_back_to_the_credential_that_answered() {
    for stream in [false, true] {
        let gw = gateway(
            &[
                Cred::new("east", 0, M).responses_api(),
                Cred::new("west", 0, M).responses_api(),
            ],
            &[],
        )
        .await;
        let first = create(&gw, &json!({"model": "m", "input": "hi", "stream": stream})).await;
        let text = first.text().await.unwrap();
        let id = if stream {
            events(&text)[0].1["response"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let owner = gw.mock.keys()[0].clone();
        for _ in 0..4 {
            let body = json!({"model": "m", "input": "more", "previous_response_id": id, "stream": stream});
            assert_eq!(create(&gw, &body).await.status(), 200);
        }
        let keys = gw.mock.keys();
        assert!(
            keys.iter().all(|k| *k == owner),
            "stream {stream}: {keys:?}"
        );
        gw.stop().await;
    }
}
