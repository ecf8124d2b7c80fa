//! The real binary: start-up from the example file, SIGTERM drain, and logs.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
#![allow(clippy::disallowed_methods)] // Test servers and log readers live as long as the test runtime.

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::{CLIENT_KEY, Cred, Mock, Reply, config_toml, key_of};
use futures_util::StreamExt;
use serde_json::{Value, json};

const M: &[(&str, &str)] = &[("m", "up-m")];

/// Starts the built binary on a config file.
async fn start(config: &std::path::Path, env: &[(&str, &str)]) -> Binary {
    Binary::spawn(&["--config", config.to_str().unwrap()], env).await
}

async fn start_on(mock: &Mock, env: &[(&str, &str)]) -> Binary {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config_toml(mock, &[Cred::new("only", 0, M)])).unwrap();
    let mut b = start(&path, env).await;
    b.dir = Some(dir);
    b
}

async fn open_stream(bin: &Binary) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", bin.url))
        .bearer_auth(CLIENT_KEY)
        .json(
            &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap()
}

/// Reads a body stream until `needle` has arrived; returns what was read.
async fn read_until(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    needle: &str,
) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        match body.next().await {
            Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            None => break,
        }
    }
    seen
}

/// Both schedulers: one worker thread is the single-threaded one.
#[tokio::test]
async fn sigterm_turns_readyz_503_lets_open_streams_finish_and_exits_zero() {
    for threads in ["1", "2"] {
        sigterm_drains_with(threads).await;
    }
}

async fn sigterm_drains_with(threads: &str) {
    let mock = Mock::start().await;
    mock.script(
        &key_of("only"),
        [Reply::Stream {
            chunks: 8,
            delay_ms: 150,
        }],
    );
    let mut bin = start_on(
        &mock,
        &[
            ("SWITCHYARD_DRAIN_GRACE_MS", "1500"),
            ("SWITCHYARD_WORKER_THREADS", threads),
        ],
    )
    .await;
    let r = open_stream(&bin).await;
    let mut body = r.bytes_stream();
    let head = read_until(&mut body, "hello from").await;
    assert!(head.contains("hello from"));

    bin.sigterm();
    let client = reqwest::Client::new();
    let readyz = format!("{}/readyz", bin.url);
    let ready = async || {
        client
            .get(&readyz)
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    common::eventually("readyz turns 503", Duration::from_secs(1), async || {
        ready().await.ok() == Some(503)
    })
    .await;

    let rest = read_until(&mut body, "[DONE]").await;
    assert!(
        rest.contains("#7") && rest.contains("data: [DONE]"),
        "the open stream finished ({threads} threads): {rest}"
    );
    assert_eq!(bin.exit_code().await, 0);
    // The listener is closed now.
    assert!(ready().await.is_err());
}

#[tokio::test]
async fn streams_still_open_after_the_drain_timeout_end_with_an_error_event() {
    let mock = Mock::start().await;
    mock.script(
        &key_of("only"),
        [Reply::Stream {
            chunks: 100,
            delay_ms: 200,
        }],
    );
    let mut bin = start_on(
        &mock,
        &[
            ("SWITCHYARD_DRAIN_GRACE_MS", "0"),
            ("SWITCHYARD_DRAIN_TIMEOUT_MS", "400"),
            ("SWITCHYARD_WORKER_THREADS", "1"),
        ],
    )
    .await;
    let r = open_stream(&bin).await;
    let mut body = r.bytes_stream();
    read_until(&mut body, "hello from").await;
    bin.sigterm();
    let rest = read_until(&mut body, "shutting down").await;
    let last = rest
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let event: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap();
    assert_eq!(event["error"]["code"], "service_unavailable", "{rest}");
    assert!(!rest.contains("[DONE]"));
    assert_eq!(bin.exit_code().await, 0);
}

#[tokio::test]
async fn logs_are_json_lines_without_any_secret() {
    let mock = Mock::start().await;
    // The upstream quotes its key back in a 401; a later request succeeds.
    let leaky = format!("Incorrect API key provided: {}", key_of("only"));
    mock.script(
        &key_of("only"),
        [Reply::openai_error(
            401,
            &leaky,
            "invalid_request_error",
            Some("invalid_api_key"),
        )],
    );
    // A proxy password is a secret too (the mock's host is exempt).
    let mut bin = start_on(
        &mock,
        &[
            ("SWITCHYARD_MAX_RETRY_WAIT_MS", "0"),
            ("HTTPS_PROXY", "http://egress:proxy-pass-4411@127.0.0.1:9"),
            ("NO_PROXY", "127.0.0.1"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let r = client
        .post(format!("{}/v1/chat/completions?key={CLIENT_KEY}", bin.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(&key_of("only")) && !text.contains(CLIENT_KEY),
        "{text}"
    );
    let r = client
        .post(format!("{}/v1/chat/completions", bin.url))
        .bearer_auth("sk-wrong-key-123")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    bin.sigterm();
    assert_eq!(bin.exit_code().await, 0);

    let logs = bin.logs();
    assert!(
        logs.iter().any(|l| l.contains("\"blocked\"")),
        "the block was logged: {logs:#?}"
    );
    let request_line = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "request failed")
        .expect("the 503 was logged");
    assert_eq!(request_line["key"], "tester");
    assert_eq!(request_line["model"], "m");
    assert_eq!(request_line["credential"], "only");
    assert_eq!(request_line["attempts"], 1);
    for line in &logs {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON line: {line}");
        for secret in [
            CLIENT_KEY,
            &key_of("only"),
            "sk-wrong-key-123",
            "proxy-pass-4411",
        ] {
            assert!(!line.contains(secret), "a secret in the logs: {line}");
        }
    }
}

#[tokio::test]
async fn the_example_file_starts_a_working_gateway() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/switchyard.toml");
    let mut bin = start(&example, &[("OPENAI_API_KEY", "sk-example-not-real")]).await;
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", bin.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let models: Value = client
        .get(format!("{}/v1/models", bin.url))
        .bearer_auth("sk-switchyard-demo")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"gpt-4o-mini"), "{models}");
    // The container healthcheck command agrees.
    let ready = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("ready")
        .env("SWITCHYARD_LISTEN", bin.addr.to_string())
        .status()
        .await
        .unwrap();
    assert!(ready.success());
    bin.sigterm();
    assert_eq!(bin.exit_code().await, 0);
}

#[tokio::test]
async fn the_access_log_setting_chooses_which_requests_get_a_line() {
    let lines_for = |logs: Vec<String>, status: u64| {
        logs.iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "request" && v["status"] == status)
            .count()
    };
    for (setting, ok_lines) in [(None, 0), (Some("all"), 1), (Some("off"), 0)] {
        let mock = Mock::start().await;
        let env: Vec<(&str, &str)> = setting
            .map(|s| ("SWITCHYARD_ACCESS_LOG", s))
            .into_iter()
            .collect();
        let mut bin = start_on(&mock, &env).await;
        let client = reqwest::Client::new();
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let url = format!("{}/v1/chat/completions", bin.url);
        let ok = client
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let denied = client
            .post(&url)
            .bearer_auth("sk-nope")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 401);
        bin.sigterm();
        assert_eq!(bin.exit_code().await, 0);
        let logs = bin.logs();
        assert_eq!(lines_for(logs.clone(), 200), ok_lines, "{setting:?}");
        let denied_lines = if setting == Some("off") { 0 } else { 1 };
        assert_eq!(lines_for(logs, 401), denied_lines, "{setting:?}");
    }
}

/// The arguments of the compose file's switchyard healthcheck, after the
/// binary's path.
fn compose_healthcheck_args() -> Vec<String> {
    let compose =
        std::fs::read_to_string(common::services::repo_file("docker-compose.yml")).unwrap();
    let line = compose
        .lines()
        .find(|l| l.contains("/usr/local/bin/switchyard"))
        .and_then(|l| l.trim().strip_prefix("test:"))
        .expect("the switchyard service has a healthcheck");
    let test: Vec<String> = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(test[..2], ["CMD", "/usr/local/bin/switchyard"]);
    test[2..].to_vec()
}

#[tokio::test]
async fn the_compose_healthcheck_passes_on_a_ready_gateway_and_fails_without_one() {
    let args = compose_healthcheck_args();
    let mock = Mock::start().await;
    let bin = start_on(&mock, &[]).await;
    let check = |listen: String| {
        let args = args.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(&args)
                .env("SWITCHYARD_LISTEN", listen)
                .env_remove("DATABASE_URL")
                .env_remove("REDIS_URL")
                .output()
                .await
                .unwrap()
                .status
        }
    };
    assert!(
        check(format!("0.0.0.0:{}", bin.addr.port()))
            .await
            .success()
    );
    let free = common::services::free_port();
    assert!(!check(format!("0.0.0.0:{free}")).await.success());
}
