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
