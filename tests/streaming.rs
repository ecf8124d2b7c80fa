//! Streaming through the real HTTP server: relayed event by event, invisible
//! fallback until the first event, an error event after it.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Cred, Reply, gateway, key_of, sse_data, streamed_text};
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard::state::{Reason, Scope};

const M: &[(&str, &str)] = &[("m", "up-m")];

#[tokio::test]
async fn a_stream_is_relayed_whole_with_its_done_marker() {
    let gw = gateway(&[Cred::new("only", 0, M)], &[]).await;
    gw.mock.script(
        &key_of("only"),
        [Reply::Stream {
            chunks: 4,
            delay_ms: 5,
        }],
    );
    let r = gw.chat_stream("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse_data(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        streamed_text(&events),
        format!("hello from {} as up-m #1 #2 #3", key_of("only"))
    );
    assert!(gw.mock.hits()[0].stream);
    gw.stop().await;
}

#[tokio::test]
async fn events_reach_the_client_before_the_upstream_has_finished() {
    let gw = gateway(&[Cred::new("only", 0, M)], &[]).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    gw.mock
        .script(&key_of("only"), [Reply::Gated(gate.clone())]);
    let r = gw.chat_stream("m").await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    // The upstream holds the rest of its stream until the gate opens: the first
    // event must arrive on its own, or this read never completes.
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.contains("hello from") {
            let chunk = body.next().await.expect("more body").expect("no error");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(first.is_ok(), "the first event was held back: {seen:?}");
    assert!(!seen.contains("after the gate"));
    gate.notify_one();
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(
        seen.contains("after the gate") && seen.trim_end().ends_with("data: [DONE]"),
        "{seen}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn failures_before_the_first_event_fall_back_invisibly() {
    for failure in [
        Reply::Reset,
        Reply::status(500, json!({"error": {"message": "boom"}})),
        Reply::status(429, json!({"error": {"message": "slow"}})),
        Reply::StreamCut { events: 0 },
        Reply::StreamError,
        Reply::Empty,
    ] {
        let gw = gateway(
            &[Cred::new("primary", 1, M), Cred::new("backup", 0, M)],
            &[],
        )
        .await;
        gw.mock.script(&key_of("primary"), [failure.clone()]);
        let r = gw.chat_stream("m").await;
        assert_eq!(r.status(), 200, "{failure:?}");
        let events = sse_data(r).await;
        assert!(
            events.iter().all(|e| !e.contains("\"error\"")),
            "{failure:?}: {events:?}"
        );
        assert_eq!(
            streamed_text(&events),
            format!("hello from {} as up-m #1", key_of("backup"))
        );
        assert_eq!(
            gw.mock.keys(),
            [key_of("primary"), key_of("backup")],
            "{failure:?}"
        );
        assert!(
            gw.block_of(&Scope::pair("primary", "up-m")).await.is_some(),
            "{failure:?} was learned"
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_stream_cut_after_the_first_event_ends_with_an_error_event_and_is_learned() {
    let gw = gateway(
        &[Cred::new("primary", 1, M), Cred::new("backup", 0, M)],
        &[],
    )
    .await;
    gw.mock
        .script(&key_of("primary"), [Reply::StreamCut { events: 2 }]);
    let r = gw.chat_stream("m").await;
    assert_eq!(r.status(), 200);
    let events = sse_data(r).await;
    assert_eq!(
        streamed_text(&events),
        format!("hello from {} as up-m", key_of("primary"))
    );
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{events:?}");
    assert!(last["error"]["message"].as_str().unwrap().contains("cut"));
    assert!(!events.contains(&"[DONE]".to_string()));
    // No fallback after the first byte: backup was never called.
    assert_eq!(gw.mock.keys(), [key_of("primary")]);
    let block = gw
        .block_of(&Scope::pair("primary", "up-m"))
        .await
        .expect("learned");
    assert_eq!(block.reason, Reason::UpstreamError);
    gw.stop().await;
}

#[tokio::test]
async fn every_candidate_blocked_on_a_stream_request_is_a_plain_error() {
    let gw = gateway(
        &[Cred::new("only", 0, M)],
        &[("SWITCHYARD_MAX_RETRY_WAIT_MS", "0")],
    )
    .await;
    gw.mock
        .always(&key_of("only"), Reply::status(503, json!({})));
    let r = gw.chat_stream("m").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "60");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("`m`"));
    gw.stop().await;
}

#[tokio::test]
async fn an_error_right_after_message_start_falls_back_invisibly() {
    // Anthropic overloaded mid-stream before any content: nothing reached
    // the client yet, so the next credential serves it.
    let models: &[(&str, &str)] = &[("m", "up-m")];
    let gw = common::gateway(
        &[
            common::Cred::new("first", 1, models).speaking("anthropic"),
            common::Cred::new("second", 0, models).speaking("anthropic"),
        ],
        &[],
    )
    .await;
    gw.mock.script(
        &common::key_of("first"),
        [common::Reply::Events(vec![
            (Some("message_start"), serde_json::json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "up-m", "content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}}).to_string()),
            (Some("ping"), serde_json::json!({"type": "ping"}).to_string()),
            (Some("error"), serde_json::json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).to_string()),
        ])],
    );
    let r = gw
        .client
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", common::CLIENT_KEY)
        .json(&serde_json::json!({"model": "m", "max_tokens": 20, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let raw = r.text().await.unwrap();
    assert!(!raw.contains("overloaded_error"), "{raw}");
    assert!(raw.contains("hello from upstream-key-second"), "{raw}");
    let blocked = gw
        .block_of(&switchyard::state::Scope::pair("first", "up-m"))
        .await;
    assert!(blocked.is_some(), "the overloaded credential is learned");
    gw.stop().await;
}
