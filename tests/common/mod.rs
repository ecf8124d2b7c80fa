//! Test support: a gateway started in-process from a TOML file in a temp
//! dir, on port 0, in front of a mock upstream.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
#![allow(clippy::disallowed_methods)] // Test servers and log readers live as long as the test runtime.
#![allow(dead_code)]

pub mod binary;
pub mod browser;
pub mod cluster;
pub mod mock;
pub mod provider_rules;
pub mod proxy;
pub mod services;
pub mod sink;
pub mod tap;
pub mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::clock::SystemClock;
use switchyard::config::{Config, Sources};
use switchyard::server::{self, Running};
use switchyard::state::{Block, Scope};

#[allow(unused_imports)]
pub use mock::{Mock, Reply};

/// The client key every test gateway accepts.
pub const CLIENT_KEY: &str = "sk-test-client";

/// A credential of the mock: `id`, priority, and (model, upstream model) pairs.
pub struct Cred<'a> {
    pub id: &'a str,
    pub provider: &'a str,
    pub priority: i32,
    pub weight: u32,
    pub models: &'a [(&'a str, &'a str)],
    /// Another upstream than the mock.
    pub base_url: Option<&'a str>,
    /// An openai credential whose upstream also serves the Responses API.
    /// Only the Codex tests set it until the gateway reads the field.
    pub responses_api: bool,
}

impl<'a> Cred<'a> {
    pub fn new(id: &'a str, priority: i32, models: &'a [(&'a str, &'a str)]) -> Self {
        Self {
            id,
            provider: "openai",
            priority,
            weight: 1,
            models,
            base_url: None,
            responses_api: false,
        }
    }

    /// The same credential pointing at `base_url` instead of the mock.
    pub fn at(mut self, base_url: &'a str) -> Self {
        self.base_url = Some(base_url);
        self
    }

    /// The same openai credential with `responses_api = true`.
    pub fn responses_api(mut self) -> Self {
        self.responses_api = true;
        self
    }

    /// The same credential speaking `provider` (openai, anthropic or gemini).
    pub fn speaking(mut self, provider: &'a str) -> Self {
        self.provider = provider;
        self
    }
}

/// The upstream key of a test credential: the mock tells credentials apart by it.
pub fn key_of(id: &str) -> String {
    format!("upstream-key-{id}")
}

/// The TOML of a gateway whose credentials all point at `mock`.
pub fn config_toml(mock: &Mock, creds: &[Cred<'_>]) -> String {
    let mut s = String::new();
    for c in creds {
        let base = match c.base_url {
            Some(url) => url.to_string(),
            None if c.provider == "openai" => mock.base_url(),
            None => mock.root_url(),
        };
        s.push_str(&format!(
            "[[credentials]]\nid = {:?}\nprovider = {:?}\nbase_url = {:?}\napi_key = {:?}\npriority = {}\nweight = {}\nheaders = {{ \"x-team\" = \"blue\" }}\n\n",
            c.id,
            c.provider,
            base,
            key_of(c.id),
            c.priority,
            c.weight
        ));
        if c.responses_api {
            // Still a key of this credential: no table header came since.
            s.push_str("responses_api = true\n\n");
        }
        for (model, upstream) in c.models {
            s.push_str(&format!(
                "[[credential_models]]\ncredential_id = {:?}\nmodel = {model:?}\nupstream_model = {upstream:?}\n\n",
                c.id
            ));
        }
    }
    s.push_str(&format!(
        "[[api_keys]]\nname = \"tester\"\nkey_hash = {:?}\n",
        switchyard::catalog::hash_key(CLIENT_KEY)
    ));
    s
}

pub struct Gateway {
    pub running: Option<Running>,
    pub url: String,
    pub mock: Mock,
    pub client: reqwest::Client,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts a gateway over `creds` on a fresh mock, with settings in `env`.
pub async fn gateway(creds: &[Cred<'_>], env: &[(&str, &str)]) -> Gateway {
    let mock = Mock::start().await;
    gateway_on(mock, creds, env).await
}

pub async fn gateway_on(mock: Mock, creds: &[Cred<'_>], env: &[(&str, &str)]) -> Gateway {
    gateway_with_clock(mock, creds, env, Arc::new(SystemClock)).await
}

/// A gateway whose clock the test holds (limits' windows, blocks' times).
pub async fn gateway_with_clock(
    mock: Mock,
    creds: &[Cred<'_>],
    env: &[(&str, &str)],
    clock: switchyard::clock::SharedClock,
) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("switchyard.toml");
    std::fs::write(&config_path, config_toml(&mock, creds)).unwrap();
    let mut vars: HashMap<String, String> = HashMap::from([
        ("SWITCHYARD_LISTEN".into(), "127.0.0.1:0".into()),
        ("SWITCHYARD_REPLICA_ID".into(), "test-replica".into()),
        ("SWITCHYARD_RELOAD_INTERVAL_MS".into(), "50".into()),
        ("SWITCHYARD_DRAIN_GRACE_MS".into(), "0".into()),
    ]);
    for (k, v) in env {
        vars.insert(k.to_string(), v.to_string());
    }
    let config = Config::load(&Sources {
        env: vars,
        file: HashMap::new(),
        config_file: Some(config_path.clone()),
        host_name: None,
    })
    .unwrap();
    let running = server::start(config, clock).await.unwrap();
    let url = format!("http://{}", running.addr);
    Gateway {
        running: Some(running),
        url,
        mock,
        client: reqwest::Client::new(),
        config_path,
        _dir: dir,
    }
}

impl Gateway {
    pub fn chat_body(model: &str, stream: bool) -> Value {
        json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    }

    /// `POST /v1/chat/completions` with the test client key.
    pub async fn chat(&self, model: &str) -> reqwest::Response {
        self.post("/v1/chat/completions", &Self::chat_body(model, false))
            .await
    }

    pub async fn chat_stream(&self, model: &str) -> reqwest::Response {
        self.post("/v1/chat/completions", &Self::chat_body(model, true))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(CLIENT_KEY)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Every active block in the gateway's learned state.
    pub async fn blocks(&self) -> Vec<(Scope, Block)> {
        self.running().state.gateway.store().list().await.unwrap()
    }

    pub async fn block_of(&self, scope: &Scope) -> Option<Block> {
        self.blocks()
            .await
            .into_iter()
            .find(|(s, _)| s == scope)
            .map(|(_, b)| b)
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }
}

/// Reads a whole SSE body as its `data:` payloads.
pub async fn sse_data(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The concatenated `delta.content` of OpenAI stream chunks.
pub fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

pub async fn eventually(what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {timeout:?}");
}

/// The interpreter of the test virtual environment. A missing one fails the
/// test: a skipped SDK test would hide a broken client.
pub fn python() -> PathBuf {
    let path = std::env::var_os("SWITCHYARD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python")
        });
    assert!(
        path.exists(),
        "no Python SDK environment at {}: run the test command (ops/test), which installs it",
        path.display()
    );
    path
}
