//! What a client connection and a request may hold: the head and keep-alive
//! clocks, a 413 that reaches a client through nginx, the cap on request
//! bodies in flight, the bound on upstream answers, and the memory a body
//! of the maximum size costs.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::time::Duration;

use common::services::Nginx;
use common::{CLIENT_KEY, Cred, gateway};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const M: &[(&str, &str)] = &[("m", "up-m")];

/// Far longer than any timeout the tests set: only a hang reaches it.
const HANG: Duration = Duration::from_secs(20);

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Reads until the gateway closes the connection (EOF or a reset); what it
/// sent, or `None` when it kept the connection open past [`HANG`].
async fn read_to_close(socket: &mut TcpStream) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(HANG, async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| seen)
}

/// One complete request on `socket`, and the head and body of its answer
/// (the connection stays open).
async fn get_healthz(socket: &mut TcpStream) -> String {
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\nok") {
        let n = tokio::time::timeout(HANG, socket.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_head_that_stalls_is_closed_and_an_idle_connection_is_kept_for_the_keep_alive() {
    let gw = gateway(
        &[Cred::new("only", 0, M)],
        &[
            ("SWITCHYARD_HEADER_TIMEOUT_MS", "300"),
            ("SWITCHYARD_KEEPALIVE_TIMEOUT_MS", "3000"),
            ("SWITCHYARD_BODY_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let addr = addr_of(&gw.url);

    // Half a head, then nothing: closed, unanswered.
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bea")
        .await
        .unwrap();
    let sent = read_to_close(&mut half)
        .await
        .expect("the gateway closed it");
    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));

    // A connection that never says a word: closed too.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert!(read_to_close(&mut silent).await.is_some());

    // A head, then a body that stalls: 408, and the connection closes.
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\""
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stalled)
        .await
        .expect("closed after the 408");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // Between requests the head clock does not run: a connection idle for
    // longer than it is still served...
    let mut kept = TcpStream::connect(&addr).await.unwrap();
    assert!(get_healthz(&mut kept).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(get_healthz(&mut kept).await.starts_with("HTTP/1.1 200"));
    // ...until the keep-alive time runs out.
    assert!(read_to_close(&mut kept).await.is_some());
    gw.stop().await;
}

/// A chunked upload of about `total` bytes to `path` at `addr`, written as
/// fast as the socket takes it by a thread of its own (as a client process
/// would), and the answer's status and body.
async fn chunked_upload(addr: String, path: &'static str, total: usize) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        const CHUNK: usize = 256 * 1024;
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        let mut wire = head.into_bytes();
        let start = br#"{"model":"m","messages":[{"role":"user","content":""#;
        wire.extend_from_slice(format!("{:x}\r\n", start.len()).as_bytes());
        wire.extend_from_slice(start);
        wire.extend_from_slice(b"\r\n");
        let mut sent = socket.write_all(&wire);
        let chunk = [format!("{CHUNK:x}\r\n").into_bytes(), vec![b'x'; CHUNK], b"\r\n".to_vec()].concat();
        for _ in 0..total / CHUNK {
            if sent.is_err() {
                break;
            }
            sent = socket.write_all(&chunk);
        }
        if sent.is_ok() {
            let _ = socket.write_all(b"0\r\n\r\n");
        }
        // nginx may stop taking the body once it has the answer: read it
        // whatever became of the upload.
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_its_413_through_nginx() {
    let gw = gateway(
        &[Cred::new("only", 0, M)],
        &[("SWITCHYARD_MAX_BODY_BYTES", "1048576")],
    )
    .await;
    let nginx = Nginx::start(&[gw.running().addr]);
    let at = addr_of(&nginx.url());
    // nginx takes up to 32 MiB (its own limit) and passes the body on as it
    // comes: the gateway answers after its first MiB, with the rest still
    // on its way. Several tries: a reset loses the answer only sometimes.
    for (i, path) in std::iter::repeat_n("/v1/chat/completions", 8)
        .chain(["/v1/messages"; 2])
        .enumerate()
    {
        let (status, text) = chunked_upload(at.clone(), path, 20 * 1024 * 1024).await;
        assert_eq!(status, 413, "try {i}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        if path == "/v1/messages" {
            assert_eq!(body["error"]["type"], "request_too_large", "{body}");
        } else {
            assert_eq!(body["error"]["code"], "request_too_large", "{body}");
        }
    }
    assert!(gw.mock.hits().is_empty());
    drop(nginx);
    gw.stop().await;
}

/// Sends a request head announcing a body of `length` bytes (and none of
/// it); the answer, up to its declared length.
async fn head_only(addr: &str, path: &str, length: usize) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\nx-goog-api-key: {CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    read_answer(&mut socket).await
}

/// One answer with a `content-length`, head and body.
async fn read_answer(socket: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(HANG, socket.read(&mut buf))
            .await
            .expect("answered without the body")
            .unwrap_or(0);
        assert!(n > 0, "closed: {text}");
        seen.extend_from_slice(&buf[..n]);
    }
}

fn body_of(answer: &str) -> Value {
    serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[tokio::test]
async fn uploads_past_the_cap_of_bodies_in_flight_get_503_in_the_clients_format_before_their_body()
{
    let gw = gateway(
        &[Cred::new("only", 0, M)],
        &[
            ("SWITCHYARD_MAX_BODY_BYTES", "1048576"),
            ("SWITCHYARD_MAX_INFLIGHT_BODY_BYTES", "1048576"),
        ],
    )
    .await;
    let addr = addr_of(&gw.url);
    // A slow upload holds 700 kB of the 1 MiB.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: 700000\r\n\r\n{{\"model\":"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let held = async |bytes: u64| {
        let metrics = reqwest::get(format!("{}/metrics", gw.url)).await.unwrap();
        let text = metrics.text().await.unwrap();
        text.contains(&format!("\nswitchyard_request_body_bytes {bytes}\n"))
    };
    common::eventually("the upload is held", HANG, async || held(700_000).await).await;

    for (path, check) in [
        ("/v1/chat/completions", "/error/code"),
        ("/v1/messages", "/error/type"),
        ("/v1beta/models/m:generateContent", "/error/status"),
    ] {
        let answer = head_only(&addr, path, 700_000).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{path}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nretry-after: 1\r\n"),
            "{answer}"
        );
        let expected = match check {
            "/error/code" => "service_unavailable",
            "/error/type" => "overloaded_error",
            _ => "UNAVAILABLE",
        };
        assert_eq!(body_of(&answer).pointer(check).unwrap(), expected, "{path}");
    }
    // A chunked upload is held chunk by chunk, and turned away at the cap.
    let mut chunked = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    chunked.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 400_000];
    chunked
        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
        .await
        .unwrap();
    chunked.write_all(&chunk).await.unwrap();
    chunked.write_all(b"\r\n").await.unwrap();
    let answer = read_answer(&mut chunked).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // Small requests still fit.
    assert_eq!(gw.chat("m").await.status(), 200);
    assert_eq!(
        gw.mock.hits().len(),
        1,
        "no turned-away request went upstream"
    );

    // The slow client gives up: its share comes back.
    drop(slow);
    common::eventually("the upload is let go", HANG, async || held(0).await).await;
    let big = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(700_000)}]});
    assert_eq!(gw.post("/v1/chat/completions", &big).await.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn an_upstream_answer_past_the_bound_is_that_upstreams_failure() {
    use switchyard::state::{Reason, Scope};
    let gw = gateway(
        &[Cred::new("big", 1, M), Cred::new("small", 0, M)],
        &[("SWITCHYARD_MAX_ANSWER_BYTES", "65536")],
    )
    .await;
    let oversized = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "up-m",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "x".repeat(100_000)}}],
    });
    gw.mock.script(
        &common::key_of("big"),
        [common::Reply::status(200, oversized)],
    );
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("hello from {} as up-m", common::key_of("small"))
    );
    let block = gw
        .block_of(&Scope::pair("big", "up-m"))
        .await
        .expect("the oversized answer taught a block");
    assert_eq!(block.reason, Reason::UpstreamError);
    gw.stop().await;
}
