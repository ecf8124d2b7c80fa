//! The client API's own behaviour: keys, validation, limits, models, health,
//! and hot reload of the config file.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use common::{CLIENT_KEY, Cred, Gateway, Reply, gateway, key_of};
use serde_json::{Value, json};
use switchyard::state::Scope;

const M: &[(&str, &str)] = &[("m", "up-m")];

async fn status_and_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn assert_openai_error(body: &Value) {
    let err = &body["error"];
    assert!(
        err["message"].is_string() && err.get("type").is_some() && err.get("code").is_some(),
        "{body}"
    );
}

#[tokio::test]
async fn the_client_key_is_accepted_from_all_four_places() {
    let gw = gateway(&[Cred::new("only", 0, M)], &[]).await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let body = Gateway::chat_body("m", false);
    let c = &gw.client;
    let requests = [
        c.post(&url)
            .header("authorization", format!("Bearer {CLIENT_KEY}")),
        c.post(&url).header("x-api-key", CLIENT_KEY),
        c.post(&url).header("x-goog-api-key", CLIENT_KEY),
        c.post(format!("{url}?key={CLIENT_KEY}")),
    ];
    for r in requests {
        assert_eq!(r.json(&body).send().await.unwrap().status(), 200);
    }
    assert_eq!(gw.mock.hits().len(), 4);
    gw.stop().await;
}

#[tokio::test]
async fn missing_unknown_disabled_and_expired_keys_get_401_without_an_upstream_call() {
    let gw = gateway(&[Cred::new("only", 0, M)], &[]).await;
    let extra = format!(
        "\n[[api_keys]]\nname = \"off\"\nkey_hash = {:?}\nenabled = false\n\n[[api_keys]]\nname = \"old\"\nkey_hash = {:?}\nexpires_at = 2020-01-01T00:00:00Z\n",
        switchyard::catalog::hash_key("sk-disabled"),
        switchyard::catalog::hash_key("sk-expired"),
    );
    let mut text = std::fs::read_to_string(&gw.config_path).unwrap();
    text.push_str(&extra);
    std::fs::write(&gw.config_path, text).unwrap();
    common::eventually("reload", Duration::from_secs(2), async || {
        let r = gw
            .client
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth("sk-disabled")
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled"))
    })
    .await;

    let url = format!("{}/v1/chat/completions", gw.url);
    let body = Gateway::chat_body("m", false);
    for (key, needle) in [
        (None, "no API key"),
        (Some("sk-nobody"), "invalid"),
        (Some("sk-disabled"), "disabled"),
        (Some("sk-expired"), "expired"),
    ] {
        let mut req = gw.client.post(&url).json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let (status, body) = status_and_json(req.send().await.unwrap()).await;
        assert_eq!(status, 401, "{key:?}");
        assert_openai_error(&body);
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{body}"
        );
        if let Some(k) = key {
            assert!(!body.to_string().contains(k), "the key is not echoed");
        }
    }
    assert!(gw.mock.hits().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_400_with_no_upstream_call_and_nothing_learned() {
    let gw = gateway(&[Cred::new("only", 0, M)], &[]).await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"model\": \"m\", \"messages\": [".to_vec(),
        b"{\"model\": \"m\", \"messages\": [{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"
            .to_vec(),
        br#"{"messages": []}"#.to_vec(),
        br#"{"model": 42, "messages": []}"#.to_vec(),
        br#"{"model": "m", "messages": "hi"}"#.to_vec(),
        br#"{"model": "m"}"#.to_vec(),
        br#"[]"#.to_vec(),
        b"".to_vec(),
    ];
    for raw in bodies {
        let r = gw
            .client
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .body(raw.clone())
            .send()
            .await
            .unwrap();
        let (status, body) = status_and_json(r).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&raw));
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    assert!(gw.mock.hits().is_empty());
    assert!(gw.blocks().await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let gw = gateway(
        &[Cred::new("only", 0, M)],
        &[("SWITCHYARD_MAX_BODY_BYTES", "1000")],
    )
    .await;
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(2_000)}]});
    let (status, body) = status_and_json(gw.post("/v1/chat/completions", &big).await).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "request_too_large");
    // Without a Content-Length (chunked), the limit still holds.
    let chunks =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b' '; 400])));
    let r = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(gw.mock.hits().is_empty());
    // A small request still works.
    assert_eq!(gw.chat("m").await.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn an_unknown_model_is_404_model_not_found() {
    let gw = gateway(&[Cred::new("only", 0, M)], &[]).await;
    let (status, body) = status_and_json(gw.chat("no-such-model").await).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(gw.mock.hits().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn models_lists_what_enabled_credentials_serve_and_follows_edits() {
    let gw = gateway(
        &[
            Cred::new("a", 0, &[("m1", "x"), ("m2", "y")]),
            Cred::new("b", 0, &[("m2", "z")]),
        ],
        &[],
    )
    .await;
    let models = async || -> Vec<String> {
        let r = gw
            .client
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "list");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(models().await, ["m1", "m2"]);

    // Disable credential a: only b's model is left.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let disabled = text.replacen("id = \"a\"\n", "id = \"a\"\nenabled = false\n", 1);
    std::fs::write(&gw.config_path, &disabled).unwrap();
    common::eventually(
        "disable reaches /v1/models",
        Duration::from_secs(1),
        async || models().await == ["m2"],
    )
    .await;

    // A new model row is served without a restart.
    let added = format!(
        "{disabled}\n[[credential_models]]\ncredential_id = \"b\"\nmodel = \"m3\"\nupstream_model = \"w\"\n"
    );
    std::fs::write(&gw.config_path, added).unwrap();
    common::eventually(
        "insert reaches /v1/models",
        Duration::from_secs(1),
        async || models().await == ["m2", "m3"],
    )
    .await;
    let r = gw.chat("m3").await;
    assert_eq!(r.status(), 200);
    assert_eq!(gw.mock.hits().last().unwrap().key, key_of("b"));
    assert_eq!(gw.mock.hits().last().unwrap().model, "w");
    gw.stop().await;
}

#[tokio::test]
async fn health_readiness_and_unknown_routes() {
    let gw = gateway(&[Cred::new("only", 0, M)], &[]).await;
    let get = |p: &str| gw.client.get(format!("{}{p}", gw.url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let (status, body) = status_and_json(get("/v2/nothing").await.unwrap()).await;
    assert_eq!(status, 404);
    assert_openai_error(&body);
    let r = gw
        .client
        .get(format!("{}/v1/chat/completions", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    gw.stop().await;
}

#[tokio::test]
async fn one_pattern_row_serves_new_names_and_sends_each_upstream() {
    let gw = gateway(
        &[Cred::new("a", 0, &[("claude-*", "*"), ("m", "up-m")])],
        &[],
    )
    .await;
    let names = ["claude-opus-4-8", "claude-sonnet-5", "claude-haiku-9"];
    for name in names {
        let (status, body) = status_and_json(gw.chat(name).await).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], name, "the answer names the requested model");
    }
    let sent: Vec<String> = gw.mock.hits().into_iter().map(|h| h.model).collect();
    assert_eq!(sent, names);
    // A name the pattern does not match is still unknown.
    assert_eq!(gw.chat("gpt-4o").await.status(), 404);
    // Lists name exact rows only.
    let r = gw
        .client
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    let (_, list) = status_and_json(r).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["id"], "m");
    gw.stop().await;
}

#[tokio::test]
async fn an_exact_row_wins_on_its_credential_and_other_patterns_still_serve() {
    let gw = gateway(
        &[
            Cred::new(
                "a",
                0,
                &[("claude-*", "*"), ("claude-opus-4-8", "opus-pinned")],
            ),
            Cred::new("b", 0, &[("claude-opus-*", "*"), ("claude-*", "never")]),
        ],
        &[],
    )
    .await;
    for _ in 0..4 {
        assert_eq!(gw.chat("claude-opus-4-8").await.status(), 200);
    }
    let mut sent: Vec<(String, String)> = gw
        .mock
        .hits()
        .into_iter()
        .map(|h| (h.key, h.model))
        .collect();
    sent.sort();
    sent.dedup();
    assert_eq!(
        sent,
        [
            (key_of("a"), "opus-pinned".to_string()),
            (key_of("b"), "claude-opus-4-8".to_string())
        ]
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_block_learned_through_a_pattern_names_the_upstream_model_sent() {
    let admin = "admin-secret-for-tests";
    let gw = gateway(
        &[Cred::new("a", 0, &[("claude-*", "*")])],
        &[
            ("SWITCHYARD_ADMIN_KEY", admin),
            ("SWITCHYARD_MAX_RETRY_WAIT_MS", "0"),
        ],
    )
    .await;
    gw.mock.script(
        &key_of("a"),
        [Reply::status(500, json!({"error": {"message": "boom"}}))],
    );
    assert_eq!(gw.chat("claude-opus-4-8").await.status(), 503);
    assert!(
        gw.block_of(&Scope::pair("a", "claude-opus-4-8"))
            .await
            .is_some()
    );
    let get = |path: &str| {
        gw.client
            .get(format!("{}{path}", gw.url))
            .bearer_auth(admin)
            .send()
    };
    let (_, blocks) = status_and_json(get("/admin/blocks").await.unwrap()).await;
    let list = blocks["blocks"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{blocks}");
    assert_eq!(list[0]["upstream_model"], "claude-opus-4-8");
    assert_eq!(list[0]["reason"], "upstream_error");
    // Another name of the same pattern is a pair of its own, not blocked.
    assert_eq!(gw.chat("claude-sonnet-5").await.status(), 200);
    // The admin view shows the row as the operator wrote it, with the block.
    let (_, creds) = status_and_json(get("/admin/credentials").await.unwrap()).await;
    let a = &creds["credentials"][0];
    assert_eq!(
        a["models"],
        json!([{"model": "claude-*", "upstream_model": "*"}])
    );
    assert_eq!(a["blocks"][0]["upstream_model"], "claude-opus-4-8");
    gw.stop().await;
}

#[tokio::test]
async fn the_root_answers_get_and_head_without_a_key() {
    let gw = gateway(&[Cred::new("only", 0, M)], &[]).await;
    let url = format!("{}/", gw.url);
    assert_eq!(gw.client.get(&url).send().await.unwrap().status(), 200);
    let head = gw.client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.text().await.unwrap().is_empty());
    assert!(gw.mock.hits().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_broken_edit_keeps_the_last_good_snapshot() {
    let gw = gateway(&[Cred::new("only", 0, M)], &[]).await;
    std::fs::write(
        &gw.config_path,
        "[[credentials]]\nid = \"only\"\nprovider = \"nope\"\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.chat("m").await.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn a_request_body_that_stalls_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = gateway(
        &[Cred::new("only", 0, &[("m", "up-m")])],
        &[("SWITCHYARD_BODY_TIMEOUT_MS", "300")],
    )
    .await;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\"",
        common::CLIENT_KEY
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    // The client sends nothing more; the guard only catches a hang.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway answered");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(gw.mock.hits().is_empty());
    gw.stop().await;
}
