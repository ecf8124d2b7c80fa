//! The official OpenAI and Anthropic Python SDKs against a gateway in front
//! of the mock upstream, served by credentials of every provider. The test
//! command installs the SDKs into a private virtual environment and names its
//! interpreter in SWITCHYARD_TEST_PYTHON.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::PathBuf;

use common::{CLIENT_KEY, Cred, Reply, gateway, key_of};
use serde_json::{Value, json};

async fn run_script(script: &str, env: &[(&str, String)]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let mut cmd = tokio::process::Command::new(common::python());
    cmd.arg(&script).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("python runs");
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

#[tokio::test]
async fn the_openai_sdk_chats_and_streams_through_the_gateway() {
    let gw = gateway(
        &[
            Cred::new("primary", 1, &[("m", "up-m")]),
            Cred::new("backup", 0, &[("m", "up-m")]),
        ],
        &[],
    )
    .await;
    // The first attempt of each call fails over to the backup credential, invisibly.
    gw.mock.script(
        &key_of("primary"),
        [Reply::status(500, json!({"error": {"message": "boom"}}))],
    );
    let out = run_script(
        "openai_chat.py",
        &[
            ("OPENAI_BASE_URL", format!("{}/v1", gw.url)),
            ("OPENAI_API_KEY", CLIENT_KEY.to_string()),
        ],
    )
    .await;
    assert_eq!(
        out["content"],
        format!("hello from {} as up-m", key_of("backup"))
    );
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(out["total_tokens"], 8);
    assert_eq!(
        out["streamed"],
        format!("hello from {} as up-m #1", key_of("backup"))
    );
    assert_eq!(out["stream_finish_reason"], "stop");
    assert_eq!(
        out["missing_model"],
        json!({"status": 404, "code": "model_not_found"})
    );
    assert_eq!(out["bad_key"], json!({"status": 401}));
    assert_eq!(out["after_tool"], "tool said: sunny, 21 C");
    let streamed = gw.mock.hits().iter().filter(|h| h.stream).count();
    assert_eq!(streamed, 1);
    gw.stop().await;
}

const PROVIDERS: [&str; 3] = ["openai", "anthropic", "gemini"];

#[tokio::test]
async fn the_openai_sdk_is_served_by_every_provider() {
    for provider in PROVIDERS {
        let gw = gateway(
            &[Cred::new("only", 0, &[("m", "up-m")]).speaking(provider)],
            &[],
        )
        .await;
        let env = [
            ("OPENAI_BASE_URL", format!("{}/v1", gw.url)),
            ("OPENAI_API_KEY", CLIENT_KEY.to_string()),
        ];
        let out = run_script("openai_chat.py", &env).await;
        let hello = format!("hello from {} as up-m", key_of("only"));
        assert_eq!(out["content"], hello, "{provider}");
        assert_eq!(out["finish_reason"], "stop", "{provider}");
        assert_eq!(out["total_tokens"], 8, "{provider}");
        assert_eq!(out["streamed"], format!("{hello} #1"), "{provider}");
        assert_eq!(out["stream_finish_reason"], "stop", "{provider}");
        assert_eq!(
            out["tool_call"],
            json!({"name": "get_weather", "arguments": {"city": "Paris"}, "finish_reason": "tool_calls"}),
            "{provider}"
        );
        assert_eq!(out["after_tool"], "tool said: sunny, 21 C", "{provider}");
        assert_eq!(
            out["missing_model"],
            json!({"status": 404, "code": "model_not_found"})
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn the_anthropic_sdk_is_served_by_every_provider() {
    for provider in PROVIDERS {
        let gw = gateway(
            &[Cred::new("only", 0, &[("m", "up-m")]).speaking(provider)],
            &[],
        )
        .await;
        let env = [
            ("ANTHROPIC_BASE_URL", gw.url.clone()),
            ("ANTHROPIC_API_KEY", CLIENT_KEY.to_string()),
        ];
        let out = run_script("anthropic_messages.py", &env).await;
        let hello = format!("hello from {} as up-m", key_of("only"));
        assert_eq!(out["text"], hello, "{provider}");
        assert_eq!(out["stop_reason"], "end_turn", "{provider}");
        assert_eq!(out["usage"], json!([3, 5]), "{provider}");
        assert_eq!(out["streamed"], format!("{hello} #1"), "{provider}");
        assert_eq!(out["stream_text"], format!("{hello} #1"), "{provider}");
        assert_eq!(out["stream_stop_reason"], "end_turn", "{provider}");
        // Anthropic and Gemini count upstream (the mock says 42); OpenAI has no
        // count endpoint, so the gateway estimates (~4 characters a token).
        let count = out["count"].as_u64().unwrap();
        if provider == "openai" {
            assert!((100..=110).contains(&count), "{count}");
        } else {
            assert_eq!(count, 42, "{provider}");
        }
        assert_eq!(
            out["tool_use"],
            json!({"name": "get_weather", "input": {"city": "Paris"}, "stop_reason": "tool_use"}),
            "{provider}"
        );
        assert_eq!(out["after_tool"], "tool said: sunny, 21 C", "{provider}");
        assert_eq!(
            out["missing_model"],
            json!({"status": 404, "type": "not_found_error"})
        );
        gw.stop().await;
    }
}
