//! Fallback and learning through the real HTTP server, against a mock
//! OpenAI upstream: every row of the classification table as a client sees it.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use common::{Cred, Gateway, Reply, gateway, key_of};
use serde_json::{Value, json};
use switchyard::state::{Reason, Scope};

const M: &[(&str, &str)] = &[("m", "up-m")];
const TWO_MODELS: &[(&str, &str)] = &[("m", "up-m"), ("m2", "up-m2")];

/// `primary` (priority 1) is always tried before `backup` (priority 0).
async fn primary_and_backup() -> Gateway {
    gateway(
        &[
            Cred::new("primary", 1, TWO_MODELS),
            Cred::new("backup", 0, TWO_MODELS),
        ],
        &[],
    )
    .await
}

async fn content(response: reqwest::Response) -> String {
    let v: Value = response.json().await.unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A failure on `primary` falls back to `backup`, and the next request skips `primary`.
async fn falls_back(
    reply: Reply,
    scope: Scope,
    reason: Reason,
    status: u16,
    length_ms: i64,
) -> Gateway {
    let gw = primary_and_backup().await;
    gw.mock.script(&key_of("primary"), [reply]);
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        content(r).await,
        format!("hello from {} as up-m", key_of("backup"))
    );
    assert_eq!(gw.mock.keys(), [key_of("primary"), key_of("backup")]);

    let block = gw.block_of(&scope).await.expect("a block was learned");
    assert_eq!(block.reason, reason);
    assert_eq!(block.status, status);
    assert_eq!(block.replica, "test-replica");
    let length = block.until_ms - block.since_ms;
    assert!(
        (length - length_ms).abs() < 1_000,
        "block of {length} ms, expected {length_ms}"
    );

    gw.mock.clear_hits();
    assert_eq!(gw.chat("m").await.status(), 200);
    assert_eq!(
        gw.mock.keys(),
        [key_of("backup")],
        "the blocked candidate is skipped"
    );
    gw
}

const HOUR: i64 = 3_600_000;

#[tokio::test]
async fn model_support_400_and_422_block_the_pair_for_hours() {
    for (status, message) in [
        (400, "The requested model is not supported."),
        (422, "model not supported"),
        (
            400,
            "The model `up-m` does not exist or you do not have access to it.",
        ),
    ] {
        let reply = Reply::openai_error(status, message, "invalid_request_error", None);
        let gw = falls_back(
            reply,
            Scope::pair("primary", "up-m"),
            Reason::ModelNotSupported,
            status,
            12 * HOUR,
        )
        .await;
        // The pair's block leaves the credential's other models alone.
        gw.mock.clear_hits();
        assert_eq!(gw.chat("m2").await.status(), 200);
        assert_eq!(gw.mock.keys(), [key_of("primary")]);
        gw.stop().await;
    }
}

#[tokio::test]
async fn model_not_found_code_is_a_model_support_failure() {
    let reply = Reply::openai_error(
        400,
        "no such thing",
        "invalid_request_error",
        Some("model_not_found"),
    );
    falls_back(
        reply,
        Scope::pair("primary", "up-m"),
        Reason::ModelNotSupported,
        400,
        12 * HOUR,
    )
    .await
    .stop()
    .await;
}

#[tokio::test]
async fn a_404_blocks_the_pair() {
    let reply = Reply::status(404, json!({"error": {"message": "Not Found"}}));
    falls_back(
        reply,
        Scope::pair("primary", "up-m"),
        Reason::NotFound,
        404,
        12 * HOUR,
    )
    .await
    .stop()
    .await;
}

#[tokio::test]
async fn a_401_blocks_the_whole_credential() {
    let reply = Reply::openai_error(
        401,
        "Incorrect API key provided: sk-proj-abcdefghijklmnop",
        "invalid_request_error",
        Some("invalid_api_key"),
    );
    let gw = falls_back(
        reply,
        Scope::credential("primary"),
        Reason::Unauthorized,
        401,
        HOUR / 2,
    )
    .await;
    // Every model of the credential is blocked, and the key quoted back is not kept.
    gw.mock.clear_hits();
    assert_eq!(gw.chat("m2").await.status(), 200);
    assert_eq!(gw.mock.keys(), [key_of("backup")]);
    let block = gw.block_of(&Scope::credential("primary")).await.unwrap();
    assert!(
        !block.message.contains("sk-proj-abcdefghijklmnop"),
        "{}",
        block.message
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_402_blocks_the_whole_credential() {
    let reply = Reply::status(402, json!({"error": {"message": "payment required"}}));
    falls_back(
        reply,
        Scope::credential("primary"),
        Reason::PaymentRequired,
        402,
        HOUR / 2,
    )
    .await
    .stop()
    .await;
}

#[tokio::test]
async fn a_403_blocks_the_pair() {
    let reply = Reply::status(403, json!({"error": {"message": "forbidden"}}));
    let gw = falls_back(
        reply,
        Scope::pair("primary", "up-m"),
        Reason::Forbidden,
        403,
        HOUR / 2,
    )
    .await;
    gw.mock.clear_hits();
    assert_eq!(gw.chat("m2").await.status(), 200);
    assert_eq!(gw.mock.keys(), [key_of("primary")]);
    gw.stop().await;
}

#[tokio::test]
async fn a_429_with_retry_after_blocks_for_the_hint() {
    let reply = Reply::status_with(
        429,
        json!({"error": {"message": "slow down", "type": "requests"}}),
        &[("retry-after", "20")],
    );
    falls_back(
        reply,
        Scope::pair("primary", "up-m"),
        Reason::Quota,
        429,
        20_000,
    )
    .await
    .stop()
    .await;
}

#[tokio::test]
async fn a_429_without_a_hint_climbs_the_ladder_from_one_second() {
    let reply = Reply::status(429, json!({"error": {"message": "slow down"}}));
    let gw = falls_back(
        reply,
        Scope::pair("primary", "up-m"),
        Reason::Quota,
        429,
        1_000,
    )
    .await;
    let level = gw
        .running()
        .state
        .gateway
        .store()
        .quota_level(&Scope::pair("primary", "up-m"))
        .await
        .unwrap();
    assert_eq!(level, 1);
    gw.stop().await;
}

#[tokio::test]
async fn server_errors_and_broken_connections_block_the_pair_for_a_minute() {
    for reply in [
        Reply::status(500, json!({"error": {"message": "boom"}})),
        Reply::status(503, json!({"error": {"message": "overloaded"}})),
        Reply::status(408, json!({})),
        Reply::Reset,
        Reply::Empty,
        Reply::Status {
            status: 200,
            body: "<html>not json".into(),
            headers: vec![],
        },
        Reply::status(
            200,
            json!({"error": {"message": "upstream fell over", "type": "server_error"}}),
        ),
    ] {
        let status = match &reply {
            Reply::Status { status, .. } if *status != 200 => *status,
            _ => 0,
        };
        falls_back(
            reply,
            Scope::pair("primary", "up-m"),
            Reason::UpstreamError,
            status,
            60_000,
        )
        .await
        .stop()
        .await;
    }
}

#[tokio::test]
async fn a_connect_failure_falls_back() {
    // A credential whose upstream refuses connections: a port nobody listens on.
    let mock = common::Mock::start().await;
    let gw = common::gateway_on(
        mock,
        &[Cred::new("primary", 1, M), Cred::new("backup", 0, M)],
        &[],
    )
    .await;
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let moved = text.replacen(&gw.mock.base_url(), &format!("http://{dead}/v1"), 1);
    std::fs::write(&gw.config_path, moved).unwrap();
    let url = format!("http://{dead}/v1");
    common::eventually("reload", Duration::from_secs(2), async || {
        gw.running().state.gateway.catalog().load().credentials["primary"].base_url == url
    })
    .await;
    assert_eq!(gw.chat("m").await.status(), 200);
    assert_eq!(gw.mock.keys(), [key_of("backup")]);
    let block = gw.block_of(&Scope::pair("primary", "up-m")).await.unwrap();
    assert_eq!((block.reason, block.status), (Reason::UpstreamError, 0));
    gw.stop().await;
}

#[tokio::test]
async fn a_plain_400_is_returned_as_is_after_exactly_one_upstream_call() {
    let gw = primary_and_backup().await;
    let upstream_body = json!({"error": {"message": "messages[0].content is required", "type": "invalid_request_error", "param": "messages", "code": null}});
    gw.mock.script(
        &key_of("primary"),
        [Reply::status(400, upstream_body.clone())],
    );
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap(), upstream_body);
    assert_eq!(gw.mock.keys(), [key_of("primary")]);
    assert!(
        gw.blocks().await.is_empty(),
        "a request's own fault teaches nothing"
    );
    gw.stop().await;
}

#[tokio::test]
async fn every_candidate_quota_blocked_gives_429_with_retry_after() {
    let gw = gateway(
        &[Cred::new("primary", 1, M), Cred::new("backup", 0, M)],
        &[("SWITCHYARD_MAX_RETRY_WAIT_MS", "0")],
    )
    .await;
    for id in ["primary", "backup"] {
        gw.mock.always(
            &key_of(id),
            Reply::status_with(
                429,
                json!({"error": {"message": "quota"}}),
                &[("retry-after", "7")],
            ),
        );
    }
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    // The next request fails at once without calling anyone.
    gw.mock.clear_hits();
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 429);
    let secs: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((6..=7).contains(&secs), "{secs}");
    assert!(gw.mock.hits().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn every_candidate_blocked_for_other_reasons_gives_503_with_retry_after() {
    let gw = gateway(
        &[Cred::new("primary", 1, M), Cred::new("backup", 0, M)],
        &[("SWITCHYARD_REQUEST_RETRY", "0")],
    )
    .await;
    gw.mock
        .always(&key_of("primary"), Reply::status(500, json!({})));
    gw.mock
        .always(&key_of("backup"), Reply::status(429, json!({})));
    let r = gw.chat("m").await;
    // One round, both failed: primary is out for a minute, backup for the
    // ladder's first second. Not every block is a quota block: 503, and the
    // soonest end is a second away.
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert_eq!(gw.mock.keys(), [key_of("primary"), key_of("backup")]);
    gw.stop().await;
}

#[tokio::test]
async fn a_short_block_is_waited_out_and_the_request_succeeds() {
    let gw = gateway(&[Cred::new("only", 0, M)], &[]).await;
    gw.mock.script(
        &key_of("only"),
        [Reply::status(429, json!({"error": {"message": "busy"}}))],
    );
    let started = std::time::Instant::now();
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the 1 s block was waited out"
    );
    assert_eq!(gw.mock.keys(), [key_of("only"), key_of("only")]);
    // The success reset the ladder.
    let level = gw
        .running()
        .state
        .gateway
        .store()
        .quota_level(&Scope::pair("only", "up-m"))
        .await
        .unwrap();
    assert_eq!(level, 0);
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_teaches_nothing() {
    let gw = primary_and_backup().await;
    gw.mock.script(
        &key_of("primary"),
        [Reply::Delay {
            ms: 600,
            then: Box::new(Reply::status(500, json!({}))),
        }],
    );
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let sent = quick
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(common::CLIENT_KEY)
        .json(&Gateway::chat_body("m", false))
        .send()
        .await;
    assert!(sent.is_err(), "the client gave up");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        gw.blocks().await.is_empty(),
        "nothing learned: {:?}",
        gw.blocks().await
    );
    gw.mock.clear_hits();
    assert_eq!(gw.chat("m").await.status(), 200);
    assert_eq!(gw.mock.keys(), [key_of("primary")]);
    gw.stop().await;
}

#[tokio::test]
async fn the_model_is_rewritten_and_credential_headers_are_sent() {
    let gw = gateway(
        &[Cred::new("only", 0, &[("alias", "real-upstream-name")])],
        &[],
    )
    .await;
    let r = gw.post("/v1/chat/completions", &json!({"model": "alias", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5})).await;
    assert_eq!(r.status(), 200);
    let hit = &gw.mock.hits()[0];
    assert_eq!(hit.path, "/v1/chat/completions");
    assert_eq!(hit.model, "real-upstream-name");
    assert_eq!(hit.body["temperature"], 0.5);
    assert_eq!(hit.headers["x-team"], "blue");
    assert_eq!(
        hit.headers["authorization"],
        format!("Bearer {}", key_of("only"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn pool_members_rotate_and_a_blocked_member_leaves_the_rest_serving() {
    let gw = gateway(
        &[Cred::new(
            "pool",
            0,
            &[("m", "p1"), ("m", "p2"), ("m", "p3")],
        )],
        &[],
    )
    .await;
    gw.mock.script(
        &key_of("pool"),
        [Reply::openai_error(
            400,
            "model not supported",
            "invalid_request_error",
            None,
        )],
    );
    for _ in 0..7 {
        assert_eq!(gw.chat("m").await.status(), 200);
    }
    let models: Vec<String> = gw.mock.hits().into_iter().map(|h| h.model).collect();
    // p1 failed first and was blocked by its upstream model; p2 and p3 keep serving.
    assert_eq!(models[0], "p1");
    assert!(!models[1..].contains(&"p1".to_string()), "{models:?}");
    assert!(models[1..].contains(&"p2".to_string()) && models[1..].contains(&"p3".to_string()));
    assert!(gw.block_of(&Scope::pair("pool", "p1")).await.is_some());
    assert!(gw.block_of(&Scope::credential("pool")).await.is_none());
    gw.stop().await;
}

#[tokio::test]
async fn round_robin_spreads_by_weight() {
    let mut heavy = Cred::new("heavy", 0, M);
    heavy.weight = 3;
    let gw = gateway(&[heavy, Cred::new("light", 0, M)], &[]).await;
    for _ in 0..8 {
        assert_eq!(gw.chat("m").await.status(), 200);
    }
    let keys = gw.mock.keys();
    assert_eq!(
        keys.iter().filter(|k| **k == key_of("heavy")).count(),
        6,
        "{keys:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn fill_first_uses_one_credential_until_it_fails() {
    let gw = gateway(
        &[Cred::new("a", 0, M), Cred::new("b", 0, M)],
        &[("SWITCHYARD_ROUTING", "fill-first")],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(gw.chat("m").await.status(), 200);
    }
    assert_eq!(gw.mock.keys(), [key_of("a"), key_of("a"), key_of("a")]);
    gw.mock
        .script(&key_of("a"), [Reply::status(500, json!({}))]);
    gw.mock.clear_hits();
    assert_eq!(gw.chat("m").await.status(), 200);
    assert_eq!(gw.chat("m").await.status(), 200);
    assert_eq!(gw.mock.keys(), [key_of("a"), key_of("b"), key_of("b")]);
    gw.stop().await;
}

#[tokio::test]
async fn a_503_says_per_candidate_why_and_for_how_long() {
    let gw = gateway(
        &[Cred::new("openai-main", 0, M).at("http://127.0.0.1:9")],
        &[("SWITCHYARD_MAX_RETRY_WAIT_MS", "0")],
    )
    .await;
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("openai-main: upstream_error ("),
        "{message}"
    );
    assert!(message.contains("s left"), "{message}");
    assert!(!message.contains(&key_of("openai-main")), "{message}");
    gw.stop().await;
}

/// An OpenAI upstream that keeps its connections open and closes each
/// after `close_after` answers, as an upstream's idle timeout would,
/// without saying so; counts the connections it accepted.
#[allow(clippy::disallowed_methods)] // Its tasks live as long as the test.
async fn keep_alive_upstream(
    close_after: usize,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..close_after {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    let body = json!({"id": "c", "object": "chat.completion", "model": "up-m",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "kept"},
                        "finish_reason": "stop"}]})
                    .to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
                // Closed after the last answer, with no word of it.
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_and_one_closed_while_idle_costs_nothing() {
    use std::sync::atomic::Ordering::SeqCst;
    let (url, accepted) = keep_alive_upstream(3).await;
    let mut kept = Cred::new("kept", 0, M);
    kept.base_url = Some(&url);
    let gw = gateway(&[kept], &[]).await;
    for i in 0..9 {
        let r = gw.chat("m").await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(content(r).await, "kept", "request {i}");
        // The upstream closes its connection after every third answer; the
        // next request finds it closed and opens another.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(SeqCst), 3, "three answers a connection");
    assert!(gw.blocks().await.is_empty(), "{:?}", gw.blocks().await);
    gw.stop().await;
}
