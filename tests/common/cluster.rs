//! A cluster of the tests' own: Postgres, Redis, replicas of the real binary
//! and nginx in front of them, all on free ports, with a mock upstream.

use std::time::Duration;

use serde_json::json;
use sqlx::Executor;

use super::binary::Binary;
use super::mock::Mock;
use super::services::{Nginx, PgServer, RedisServer};
use super::{CLIENT_KEY, key_of};

pub const ADMIN_KEY: &str = "sk-admin-test-key";

/// Runs a `switchyard` command against the database at `database_url`.
pub async fn run_switchyard(args: &[&str], database_url: &str) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("REDIS_URL")
        .output()
        .await
        .unwrap()
}

pub struct Cluster {
    pub pg: PgServer,
    pub redis: RedisServer,
    pub mock: Mock,
    pub replicas: Vec<Binary>,
    pub nginx: Option<Nginx>,
    pub db: sqlx::PgPool,
    pub client: reqwest::Client,
}

impl Cluster {
    /// Postgres (migrated by `switchyard migrate`) and Redis, no replicas yet.
    pub async fn services() -> Cluster {
        let pg = PgServer::start();
        let redis = RedisServer::start();
        let mock = Mock::start().await;
        let out = run_switchyard(&["migrate"], &pg.url("postgres")).await;
        assert!(
            out.status.success(),
            "switchyard migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&pg.url("postgres"))
            .await
            .unwrap();
        let cluster = Cluster {
            pg,
            redis,
            mock,
            replicas: Vec::new(),
            nginx: None,
            db,
            client: reqwest::Client::new(),
        };
        cluster
            .sql(&format!(
                "insert into api_keys (name, key_hash) values ('tester', '{}')",
                switchyard::catalog::hash_key(CLIENT_KEY)
            ))
            .await;
        cluster
    }

    /// Services, `n` replicas and nginx in front of them.
    pub async fn start(n: usize, seed: &str) -> Cluster {
        let mut c = Cluster::services().await;
        c.sql(seed).await;
        for _ in 0..n {
            c.add_replica(&[]).await;
        }
        c.front();
        c
    }

    /// Runs SQL as an operator would.
    pub async fn sql(&self, sql: &str) {
        self.db
            .execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// An `openai` credential of the mock (its upstream key is `key_of(id)`).
    pub fn credential_sql(&self, id: &str, priority: i32, models: &[(&str, &str)]) -> String {
        let mut sql = format!(
            "insert into credentials (id, provider, base_url, api_key, priority) values ('{id}', 'openai', '{}', '{}', {priority});\n",
            self.mock.base_url(),
            key_of(id)
        );
        for (m, u) in models {
            sql.push_str(&format!(
                "insert into credential_models (credential_id, model, upstream_model) values ('{id}', '{m}', '{u}');\n"
            ));
        }
        sql
    }

    pub fn env(&self, id: &str) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.pg.url("postgres")),
            ("REDIS_URL".into(), self.redis.url()),
            ("SWITCHYARD_REPLICA_ID".into(), id.into()),
            ("SWITCHYARD_ADMIN_KEY".into(), ADMIN_KEY.into()),
            ("SWITCHYARD_DRAIN_GRACE_MS".into(), "300".into()),
        ]
    }

    /// Starts one more replica and waits until it is ready.
    pub async fn add_replica(&mut self, extra: &[(&str, &str)]) -> usize {
        let id = format!("replica-{}", self.replicas.len() + 1);
        let mut env = self.env(&id);
        for (k, v) in extra {
            env.push((k.to_string(), v.to_string()));
        }
        let env_refs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let bin = Binary::spawn(&[], &env_refs).await;
        let url = format!("{}/readyz", bin.url);
        let client = self.client.clone();
        super::eventually("replica ready", Duration::from_secs(20), async || {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        self.replicas.push(bin);
        self.replicas.len() - 1
    }

    /// nginx in front of every replica.
    pub fn front(&mut self) {
        let addrs: Vec<_> = self.replicas.iter().map(|r| r.addr).collect();
        self.nginx = Some(Nginx::start(&addrs));
    }

    pub fn nginx_url(&self) -> String {
        self.nginx.as_ref().expect("nginx started").url()
    }

    /// A chat completion for `model` at `base` (a replica's or nginx's URL).
    pub async fn chat(&self, base: &str, model: &str) -> reqwest::Response {
        self.client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
    }

    /// The model ids `/v1/models` lists at `base`.
    pub async fn models(&self, base: &str) -> Vec<String> {
        let Ok(r) = self
            .client
            .get(format!("{base}/v1/models"))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
        else {
            return vec!["<unreachable>".into()];
        };
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until every replica lists exactly `expected`; `within` counts
    /// from the call, for all of them together.
    pub async fn every_replica_lists(&self, expected: &[&str], within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for r in &self.replicas {
                seen.push(self.models(&r.url).await);
            }
            if seen.iter().all(|s| s == expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not every replica lists {expected:?} within {within:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
