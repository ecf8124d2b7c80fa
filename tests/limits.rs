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
    let content = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
    assert!(
        content == format!("hello from {} as up-m", common::key_of("small")),
        "answered by the oversized one: {}…",
        &content[..content.len().min(80)]
    );
    let block = gw
        .block_of(&Scope::pair("big", "up-m"))
        .await
        .expect("the oversized answer taught a block");
    assert_eq!(block.reason, Reason::UpstreamError);
    gw.stop().await;
}

/// The largest body the gateway takes by default, and what the memory
/// tests send.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Resident bytes of process `pid`: `VmRSS` (now) or `VmHWM` (its peak).
fn resident(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb * 1024
}

/// The binary in front of `sink`: `to-openai`, `to-anthropic` and
/// `to-gemini` served by a credential of that provider, `answers` by `big`
/// and then `small`.
async fn binary_on(sink: &common::sink::Sink) -> common::binary::Binary {
    let mut toml = String::new();
    for (id, provider, base, priority) in [
        ("o", "openai", sink.base_url(), 0),
        ("a", "anthropic", sink.root_url(), 0),
        ("g", "gemini", sink.root_url(), 0),
        ("big", "openai", sink.base_url(), 1),
        ("small", "openai", sink.base_url(), 0),
    ] {
        toml.push_str(&format!(
            "[[credentials]]\nid = {id:?}\nprovider = {provider:?}\nbase_url = {base:?}\napi_key = {:?}\npriority = {priority}\n\n",
            common::key_of(id)
        ));
    }
    for (id, model) in [
        ("o", "to-openai"),
        ("a", "to-anthropic"),
        ("g", "to-gemini"),
        ("big", "answers"),
        ("small", "answers"),
    ] {
        toml.push_str(&format!(
            "[[credential_models]]\ncredential_id = {id:?}\nmodel = {model:?}\nupstream_model = \"up-{model}\"\n\n"
        ));
    }
    toml.push_str(&format!(
        "[[api_keys]]\nname = \"tester\"\nkey_hash = {:?}\n",
        switchyard::catalog::hash_key(CLIENT_KEY)
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, toml).unwrap();
    let mut bin = common::binary::Binary::spawn(&["--config", path.to_str().unwrap()], &[]).await;
    bin.dir = Some(dir);
    bin
}

async fn post(bin: &common::binary::Binary, path: &str, body: Vec<u8>) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", bin.url))
        .bearer_auth(CLIENT_KEY)
        .header("x-goog-api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// What one request costs a fresh gateway above its idle resident size:
/// the peak (`VmHWM`) after it, less the resident size before it, once a
/// small request of the same shape has warmed the gateway up.
async fn peak_cost(path: &str, small: Vec<u8>, big: Vec<u8>) -> (usize, String) {
    peak_cost_on(&common::sink::Sink::start().await, path, small, big).await
}

async fn peak_cost_on(
    sink: &common::sink::Sink,
    path: &str,
    small: Vec<u8>,
    big: Vec<u8>,
) -> (usize, String) {
    peak_cost_answered(sink, path, small, big, 200).await
}

/// [`peak_cost_on`], for a large request answered with `status`.
async fn peak_cost_answered(
    sink: &common::sink::Sink,
    path: &str,
    small: Vec<u8>,
    big: Vec<u8>,
    status: u16,
) -> (usize, String) {
    let expected = status;
    let mut bin = binary_on(sink).await;
    let pid = bin.child.id().unwrap();
    let (status, text) = post(&bin, path, small).await;
    assert_eq!(status, 200, "{path}: {text}");
    let idle = resident(pid, "VmRSS");
    // The peak so far was the start-up's: count from here.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let (status, text) = post(&bin, path, big).await;
    assert_eq!(status, expected, "{path}: {}", &text[..text.len().min(500)]);
    let cost = resident(pid, "VmHWM").saturating_sub(idle);
    bin.sigterm();
    assert_eq!(bin.exit_code().await, 0);
    (cost, text)
}

/// A body of `MAX_BODY` bytes (less a little room): `prefix`, then small
/// numbers, then `suffix`.
fn numbers_body(prefix: &str, suffix: &str) -> Vec<u8> {
    let room = MAX_BODY - 1024 - prefix.len() - suffix.len();
    let mut body = Vec::with_capacity(MAX_BODY);
    body.extend_from_slice(prefix.as_bytes());
    body.extend_from_slice(&b"1,".repeat(room / 2));
    body.push(b'1');
    body.extend_from_slice(suffix.as_bytes());
    body
}

/// A body of `MESSAGES_BODY` bytes (less a little room) whose conversation
/// is `item` over and over.
fn messages_body(prefix: &str, item: &str, last: &str, suffix: &str) -> Vec<u8> {
    let room = MESSAGES_BODY - 1024 - prefix.len() - last.len() - suffix.len();
    let mut body = Vec::with_capacity(MESSAGES_BODY);
    body.extend_from_slice(prefix.as_bytes());
    for _ in 0..room / (item.len() + 1) {
        body.extend_from_slice(item.as_bytes());
        body.push(b',');
    }
    body.extend_from_slice(last.as_bytes());
    body.extend_from_slice(suffix.as_bytes());
    body
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Sends each (path, small body, body of numbers) and checks what it cost.
async fn check_costs(cases: &[(&str, &str, String, Vec<u8>)]) {
    for (label, path, small, big) in cases {
        let size = big.len();
        let (cost, _) = peak_cost(path, small.clone().into_bytes(), big.clone()).await;
        eprintln!(
            "{label}: body {:.1} MiB, peak above idle {:.1} MiB ({:.2}x)",
            mib(size),
            mib(cost),
            cost as f64 / size as f64
        );
        assert!(
            cost <= 4 * size,
            "{label}: {:.1} MiB above idle for a {:.1} MiB body",
            mib(cost),
            mib(size)
        );
    }
}

#[tokio::test]
async fn a_body_of_the_maximum_size_passed_through_costs_at_most_four_times_its_size() {
    let openai = |model: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]"#
        )
    };
    let anthropic_call = r#"{"model":"to-anthropic","max_tokens":10,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{"a":["#;
    let anthropic_end = r#"]}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"ok"}]}],"tools":[{"name":"f","input_schema":{"type":"object"}}]}"#;
    check_costs(&[
        (
            "OpenAI, a field of numbers",
            "/v1/chat/completions",
            openai("to-openai", false) + "}",
            numbers_body(&(openai("to-openai", false) + r#","x":["#), "]}"),
        ),
        (
            "OpenAI streamed, a field of numbers",
            "/v1/chat/completions",
            openai("to-openai", true) + "}",
            numbers_body(&(openai("to-openai", true) + r#","x":["#), "]}"),
        ),
        (
            "Anthropic, numbers in a tool call",
            "/v1/messages",
            format!("{anthropic_call}1{anthropic_end}"),
            numbers_body(anthropic_call, anthropic_end),
        ),
        (
            "Gemini, a field of numbers",
            "/v1beta/models/to-gemini:generateContent",
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#.into(),
            numbers_body(
                r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"x":["#,
                "]}",
            ),
        ),
    ])
    .await;
}

#[tokio::test]
async fn a_body_of_the_maximum_size_translated_costs_at_most_four_times_its_size() {
    let schema = |model: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}],"tools":[{{"type":"function","function":{{"name":"f","parameters":{{"type":"object","properties":{{"a":{{"type":"integer","enum":["#
        )
    };
    let schema_end = "]}}}}}]}";
    let call = r#"{"model":"to-anthropic","stream":true,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":["#;
    let call_end = r#"]}"}}]},{"role":"tool","tool_call_id":"c1","content":"ok"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#;
    let responses = r#"{"model":"to-openai","input":"hi","tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":{"a":{"type":"integer","enum":["#;
    let text = r#"{"model":"to-gemini","messages":[{"role":"user","content":"hi "#;
    check_costs(&[
        (
            "OpenAI to Anthropic, numbers in a tool's schema",
            "/v1/chat/completions",
            format!("{}1{schema_end}", schema("to-anthropic", false)),
            numbers_body(&schema("to-anthropic", false), schema_end),
        ),
        (
            "OpenAI to Anthropic streamed, numbers in a tool call",
            "/v1/chat/completions",
            format!("{call}1{call_end}"),
            numbers_body(call, call_end),
        ),
        (
            "Responses to OpenAI, numbers in a tool's schema",
            "/v1/responses",
            format!("{responses}1{}", "]}}}}]}"),
            numbers_body(responses, "]}}}}]}"),
        ),
        (
            "OpenAI to Gemini, a long text",
            "/v1/chat/completions",
            format!(r#"{text}1"}}]}}"#),
            numbers_body(text, r#""}]}"#),
        ),
    ])
    .await;
}

/// The size of the bodies of tiny messages: a quarter of the maximum, a
/// quarter of a million messages, well past the size from which a
/// conversation is read again rather than kept (each walk of it in a debug
/// build takes seconds at the maximum size).
const MESSAGES_BODY: usize = MAX_BODY / 4;

#[tokio::test]
async fn a_body_of_tiny_messages_translated_costs_at_most_four_times_its_size() {
    const { assert!(MESSAGES_BODY > 4 * switchyard::translate::ir::READ_AGAIN_ABOVE) };
    let user = r#"{"role":"user","content":"hi"}"#;
    let turn = r#"{"role":"user","content":"a"},{"role":"assistant","content":"b"}"#;
    let chat = |model: &str| format!(r#"{{"model":"{model}","messages":["#);
    let anthropic = r#"{"model":"to-openai","max_tokens":10,"messages":["#;
    let responses = r#"{"model":"to-anthropic","input":["#;
    check_costs(&[
        (
            "OpenAI to Anthropic, turns of one word",
            "/v1/chat/completions",
            format!("{}{user}]}}", chat("to-anthropic")),
            messages_body(&chat("to-anthropic"), turn, user, "]}"),
        ),
        (
            "OpenAI to Gemini, one turn of every message",
            "/v1/chat/completions",
            format!("{}{user}]}}", chat("to-gemini")),
            messages_body(&chat("to-gemini"), user, user, "]}"),
        ),
        (
            "Anthropic to OpenAI, turns of one word",
            "/v1/messages",
            format!("{anthropic}{user}]}}"),
            messages_body(anthropic, turn, user, "]}"),
        ),
        (
            "Responses to Anthropic, turns of one word",
            "/v1/responses",
            format!("{responses}{user}]}}"),
            messages_body(responses, turn, user, "]}"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn upstream_answers_are_bounded_and_a_large_one_costs_a_small_multiple_of_itself() {
    use common::sink::{Answer, Sink};
    const MAX_ANSWER: usize = 32 * 1024 * 1024;
    let chat = |model: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
            .into_bytes()
    };
    let messages = |model: &str| {
        format!(
            r#"{{"model":"{model}","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
        .into_bytes()
    };

    // Past the bound, with no length to go by: read up to the bound, then
    // the next credential answers.
    let sink = Sink::start().await;
    let filler = Answer::Filler {
        bytes: MAX_ANSWER + MAX_ANSWER / 4,
        chunked: true,
    };
    let (cost, _) = peak_cost_on(&sink, "/v1/chat/completions", chat("to-openai"), {
        sink.answer(&common::key_of("big"), filler);
        chat("answers")
    })
    .await;
    let keys: Vec<String> = sink.seen().into_iter().map(|s| s.key).collect();
    assert!(
        keys.ends_with(&[common::key_of("big"), common::key_of("small")]),
        "the oversized answer fell back: {keys:?}"
    );
    eprintln!("an answer past the bound: {:.1} MiB above idle", mib(cost));
    assert!(cost <= 2 * MAX_ANSWER, "{:.1} MiB above idle", mib(cost));

    // Within the bound: a large answer passed through (its model renamed)
    // or translated costs a small multiple of itself.
    let size = MAX_ANSWER - MAX_ANSWER / 8;
    for (label, path, small, big) in [
        (
            "passed through",
            "/v1/chat/completions",
            chat("to-openai"),
            chat("answers"),
        ),
        (
            "translated",
            "/v1/messages",
            messages("to-openai"),
            messages("answers"),
        ),
    ] {
        let sink = Sink::start().await;
        sink.answer(
            &common::key_of("big"),
            Answer::Filler {
                bytes: size,
                chunked: false,
            },
        );
        let (cost, text) = peak_cost_on(&sink, path, small, big).await;
        assert!(
            text.contains("\"ok\""),
            "{label}: {}",
            &text[..text.len().min(300)]
        );
        eprintln!(
            "an answer of {:.1} MiB {label}: {:.1} MiB above idle ({:.2}x)",
            mib(size),
            mib(cost),
            cost as f64 / size as f64
        );
        assert!(cost <= 4 * size, "{label}: {:.1} MiB above idle", mib(cost));
    }
}

#[tokio::test]
async fn a_message_of_more_parts_than_the_bound_is_refused_in_translation_and_costs_little() {
    use switchyard::translate::ir::MAX_PARTS;
    let block = r#"{"type":"text","text":"a"}"#;
    let one = |model: &str, blocks: &str| {
        format!(
            r#"{{"model":"{model}","max_tokens":10,"messages":[{{"role":"user","content":[{blocks}]}}]}}"#
        )
    };
    let many = |model: &str| {
        let prefix = format!(
            r#"{{"model":"{model}","max_tokens":10,"messages":[{{"role":"user","content":["#
        );
        messages_body(&prefix, block, block, "]}]}")
    };
    let sink = common::sink::Sink::start().await;

    // A whole body of one message's blocks, to be translated: refused in
    // the client's format before the message is held.
    let (cost, text) = peak_cost_answered(
        &sink,
        "/v1/messages",
        one("to-openai", block).into_bytes(),
        many("to-openai"),
        400,
    )
    .await;
    eprintln!(
        "refused: {:.1} MiB above idle for a {:.1} MiB body",
        mib(cost),
        mib(MESSAGES_BODY)
    );
    assert!(cost <= 4 * MESSAGES_BODY, "{:.1} MiB above idle", mib(cost));
    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["type"], "error", "{text}");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{text}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("more than {MAX_PARTS} parts")),
        "{message}"
    );

    // At the bound it is translated; passed through, any number is served.
    let bin = binary_on(&sink).await;
    let at = vec![block; MAX_PARTS].join(",");
    let (status, text) = post(&bin, "/v1/messages", one("to-openai", &at).into_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let sent = sink.seen().pop().unwrap();
    assert_eq!(sent.key, common::key_of("o"));
    // `{"type":"text","text":"a"}` a part.
    assert!(
        sent.bytes > MAX_PARTS * 26,
        "{} bytes went upstream",
        sent.bytes
    );
    let body = many("to-anthropic");
    let (status, text) = post(&bin, "/v1/messages", body.clone()).await;
    assert_eq!(status, 200, "{}", &text[..text.len().min(300)]);
    let sent = sink.seen().pop().unwrap();
    assert_eq!(sent.key, common::key_of("a"));
    assert!(sent.bytes >= body.len(), "passed through whole");
}
