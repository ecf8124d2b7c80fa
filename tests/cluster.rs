//! Cluster mode end to end: replicas of the real binary sharing Postgres and
//! Redis that the tests start themselves, behind nginx, with faults injected.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
#![allow(clippy::disallowed_methods)] // A test owns and awaits what it spawns.

mod common;

use std::time::Duration;

use common::cluster::{ADMIN_KEY, Cluster, run_switchyard};
use common::{Reply, key_of};
use futures_util::StreamExt;
use serde_json::{Value, json};

const SECOND: Duration = Duration::from_secs(1);

fn primary_and_backup(c: &Cluster) -> String {
    c.credential_sql("primary", 1, &[("m", "up-m")])
        + &c.credential_sql("backup", 0, &[("m", "up-m")])
}

async fn seeded(n: usize, seed: impl Fn(&Cluster) -> String) -> Cluster {
    let mut c = Cluster::services().await;
    c.sql(&seed(&c)).await;
    for _ in 0..n {
        c.add_replica(&[]).await;
    }
    c.front();
    c
}

#[tokio::test]
async fn a_model_support_failure_on_one_replica_is_never_followed_by_another_selecting_it() {
    let c = seeded(2, |c| {
        c.credential_sql("bad", 1, &[]) + &c.credential_sql("good", 0, &[]) +
        "insert into credential_models select 'bad', 'seq' || i, 'u' || i from generate_series(0, 999) i;
         insert into credential_models select 'good', 'seq' || i, 'u' || i from generate_series(0, 999) i;"
    })
    .await;
    c.mock.always(
        &key_of("bad"),
        Reply::openai_error(
            400,
            "The requested model is not supported.",
            "invalid_request_error",
            None,
        ),
    );
    let (a, b) = (c.replicas[0].url.clone(), c.replicas[1].url.clone());
    for i in 0..1000 {
        let model = format!("seq{i}");
        for (name, replica) in [("A", &a), ("B", &b)] {
            let r = c.chat(replica, &model).await;
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            // What the replicas logged goes with a failure: an attempt that
            // failed says why only there.
            let logged = || {
                let lines = c.replicas.iter().flat_map(|r| r.logs());
                let warned: Vec<String> = lines
                    .filter(|l| ["WARN", "ERROR", "blocked"].iter().any(|w| l.contains(w)))
                    .collect();
                warned[warned.len().saturating_sub(8)..].join("\n")
            };
            assert_eq!(status, 200, "{model} on {name}: {text}\n{}", logged());
        }
    }
    let hits = c.mock.hits();
    let bad: Vec<&str> = hits
        .iter()
        .filter(|h| h.key == key_of("bad"))
        .map(|h| h.model.as_str())
        .collect();
    assert_eq!(
        bad.len(),
        1000,
        "replica B selected a pair replica A had blocked"
    );
    let mut unique = bad.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 1000);
}

/// The same check on one model with 1,000 credentials, in fill-first mode:
/// the pair replica A blocks is exactly the one replica B would pick next,
/// so a replica that chose from a stale view would show it at once.
#[tokio::test]
async fn on_a_model_with_1000_credentials_the_next_pick_never_lands_on_a_fresh_block() {
    let mut c = Cluster::services().await;
    let base = c.mock.base_url();
    c.sql(&format!(
        "insert into credentials (id, provider, base_url, api_key, priority)
           select 'c' || lpad(i::text, 4, '0'), 'openai', '{base}', 'upstream-key-c' || lpad(i::text, 4, '0'), 0
           from generate_series(0, 999) i;
         insert into credential_models
           select 'c' || lpad(i::text, 4, '0'), 'big', 'up-big' from generate_series(0, 999) i;"
    ))
    .await;
    for _ in 0..2 {
        c.add_replica(&[("SWITCHYARD_ROUTING", "fill-first")]).await;
    }
    let (a, b) = (c.replicas[0].url.clone(), c.replicas[1].url.clone());
    let id = |i: usize| format!("c{i:04}");
    for i in 0..999 {
        c.mock.script(
            &key_of(&id(i)),
            [Reply::openai_error(
                400,
                "The requested model is not supported.",
                "invalid_request_error",
                Some("model_not_supported"),
            )],
        );
        c.mock.clear_hits();
        assert_eq!(c.chat(&a, "big").await.status(), 200, "sequence {i} on A");
        assert_eq!(c.chat(&b, "big").await.status(), 200, "sequence {i} on B");
        assert_eq!(
            c.mock.keys(),
            [key_of(&id(i)), key_of(&id(i + 1)), key_of(&id(i + 1))],
            "sequence {i}: A blocked {} and fell back; B must go where A went",
            id(i)
        );
    }
}

/// Headroom: a successful answer that says no requests are left until a
/// reset makes every replica skip that pair until the reset, without a
/// failed call, and the block shows in the admin API and the metrics.
#[tokio::test]
async fn a_credential_reporting_nothing_left_is_skipped_by_every_replica_until_its_reset() {
    let c = seeded(2, primary_and_backup).await;
    let (a, b) = (c.replicas[0].url.clone(), c.replicas[1].url.clone());
    let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "last one"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
    c.mock.script(
        &key_of("primary"),
        [Reply::status_with(
            200,
            answer,
            &[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "2s"),
                ("x-ratelimit-remaining-tokens", "39000"),
            ],
        )],
    );
    let r = c.chat(&a, "m").await;
    assert_eq!(r.status(), 200);
    let stored: Value =
        serde_json::from_str(&c.redis.cli(&["GET", "switchyard:block:model:primary:up-m"]))
            .unwrap();
    assert_eq!(stored["reason"], "exhausted");
    c.mock.clear_hits();
    for base in [&a, &b, &a, &b] {
        assert_eq!(c.chat(base, "m").await.status(), 200);
    }
    assert_eq!(
        c.mock.keys(),
        vec![key_of("backup"); 4],
        "no replica spends a call on the exhausted pair"
    );
    let listed = c
        .client
        .get(format!("{b}/admin/blocks"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(listed["blocks"][0]["reason"], "exhausted", "{listed}");
    assert_eq!(
        c.replicas[0]
            .metric("switchyard_blocks_total{reason=\"exhausted\",scope=\"model\"}")
            .await,
        Some(1.0)
    );
    // After the reset, primary serves again.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    c.mock.clear_hits();
    assert_eq!(c.chat(&b, "m").await.status(), 200);
    assert_eq!(c.mock.keys(), [key_of("primary")]);
}

#[tokio::test]
async fn insert_update_delete_and_truncate_reach_every_replica_within_a_second() {
    let c = seeded(2, |_| String::new()).await;
    c.every_replica_lists(&[], SECOND).await;

    c.sql(&c.credential_sql("a", 0, &[("m1", "x"), ("m2", "y")]))
        .await;
    c.every_replica_lists(&["m1", "m2"], SECOND).await;

    c.sql("update credentials set enabled = false where id = 'a'")
        .await;
    c.every_replica_lists(&[], SECOND).await;
    c.sql("update credentials set enabled = true where id = 'a'")
        .await;
    c.every_replica_lists(&["m1", "m2"], SECOND).await;

    c.sql("delete from credential_models where model = 'm2'")
        .await;
    c.every_replica_lists(&["m1"], SECOND).await;

    c.sql("truncate credentials cascade").await;
    c.every_replica_lists(&[], SECOND).await;

    // A client key added with SQL alone works on every replica.
    c.sql(&c.credential_sql("b", 0, &[("m3", "z")])).await;
    c.sql("insert into api_keys (name, key_hash) values ('alice', encode(sha256('sk-alice-123'::bytea), 'hex'))").await;
    c.every_replica_lists(&["m3"], SECOND).await;
    for r in &c.replicas {
        let url = format!("{}/v1/models", r.url);
        common::eventually("the new key", SECOND, async || {
            c.client
                .get(&url)
                .bearer_auth("sk-alice-123")
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
}

/// The periodic backstop reads the operator data's version, not the data:
/// with nothing changed it loads nothing, however often it runs, and a
/// change is loaded once.
#[tokio::test]
async fn the_backstop_loads_the_operator_data_only_when_it_changed() {
    let mut c = Cluster::services().await;
    c.sql(&primary_and_backup(&c)).await;
    c.add_replica(&[("SWITCHYARD_RECONCILE_INTERVAL_MS", "100")])
        .await;
    let r = &c.replicas[0];
    let loads = async || r.metric("switchyard_catalog_loads_total").await.unwrap();
    // At start a replica loads, then loads again when its listener connects.
    let mut before = loads().await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = loads().await;
        if now == before {
            break;
        }
        before = now;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await; // Ten backstop checks.
    assert_eq!(loads().await, before, "nothing changed, nothing loaded");
    c.sql("update credentials set weight = 3 where id = 'backup'")
        .await;
    common::eventually("the change is loaded", SECOND, async || {
        loads().await > before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        loads().await - before <= 2.0,
        "loaded on the change, not on every check"
    );
}

#[tokio::test]
async fn an_update_still_propagates_after_the_listener_connection_is_killed() {
    let c = seeded(2, |c| c.credential_sql("a", 0, &[("m1", "x")])).await;
    let killed: Vec<(bool,)> = sqlx::query_as(
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'switchyard-listener'",
    )
    .fetch_all(&c.db)
    .await
    .unwrap();
    assert_eq!(killed.len(), 2, "one listener per replica");
    c.sql("insert into credential_models values ('a', 'm2', 'y')")
        .await;
    c.every_replica_lists(&["m1", "m2"], SECOND).await;
    // And the next change arrives by notification again.
    c.sql("delete from credential_models where model = 'm1'")
        .await;
    c.every_replica_lists(&["m2"], SECOND).await;
}

#[tokio::test]
async fn redis_killed_and_restarted() {
    let mut c = seeded(2, primary_and_backup).await;
    let (a, b) = (c.replicas[0].url.clone(), c.replicas[1].url.clone());
    c.redis.kill();

    // Replica A keeps serving and learns on its own.
    c.mock.script(
        &key_of("primary"),
        [Reply::status(500, json!({"error": {"message": "boom"}}))],
    );
    let r = c.chat(&a, "m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(c.mock.keys(), [key_of("primary"), key_of("backup")]);
    assert_eq!(c.replicas[0].metric("switchyard_redis_up").await, Some(0.0));
    assert_eq!(
        c.replicas[0]
            .metric("switchyard_learned_state_degraded")
            .await,
        Some(1.0)
    );
    let ready = c.client.get(format!("{a}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "readiness does not depend on Redis");
    c.mock.clear_hits();
    assert_eq!(c.chat(&a, "m").await.status(), 200);
    assert_eq!(
        c.mock.keys(),
        [key_of("backup")],
        "A remembers its own block"
    );

    // Redis comes back empty: A writes back what it learned; B then honours it.
    c.redis.restart();
    let redis = &c.redis;
    common::eventually(
        "the block is written back",
        Duration::from_secs(5),
        async || redis.cli(&["EXISTS", "switchyard:block:model:primary:up-m"]) == "1",
    )
    .await;
    let replica = &c.replicas[1];
    common::eventually("B is connected again", Duration::from_secs(5), async || {
        replica.metric("switchyard_redis_up").await == Some(1.0)
    })
    .await;
    c.mock.clear_hits();
    assert_eq!(c.chat(&b, "m").await.status(), 200);
    assert_eq!(c.mock.keys(), [key_of("backup")]);
}

#[tokio::test]
async fn postgres_stopped_and_restarted() {
    let mut c = seeded(2, primary_and_backup).await;
    c.pg.stop();
    // Replicas keep serving from their last snapshot, and stay ready.
    for _ in 0..6 {
        assert_eq!(c.chat(&c.nginx_url(), "m").await.status(), 200);
    }
    for r in &c.replicas {
        common::eventually("postgres_up turns 0", Duration::from_secs(5), async || {
            r.metric("switchyard_postgres_up").await == Some(0.0)
        })
        .await;
        let ready = c
            .client
            .get(format!("{}/readyz", r.url))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
    // A replica that starts now never loaded a snapshot: it is not ready.
    let env = c.env("late");
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let late = common::binary::Binary::spawn(&[], &env_refs).await;
    let ready = c
        .client
        .get(format!("{}/readyz", late.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    c.pg.start_again();
    c.sql("insert into credential_models values ('backup', 'm2', 'up-m2')")
        .await;
    c.replicas.push(late);
    c.every_replica_lists(&["m", "m2"], Duration::from_secs(5))
        .await;
    let ready = c
        .client
        .get(format!("{}/readyz", c.replicas[2].url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn blocks_deleted_or_written_by_hand_take_effect_within_a_second() {
    let c = seeded(2, primary_and_backup).await;
    let (a, b) = (c.replicas[0].url.clone(), c.replicas[1].url.clone());
    c.mock.script(
        &key_of("primary"),
        [Reply::openai_error(
            404,
            "no such model",
            "invalid_request_error",
            None,
        )],
    );
    assert_eq!(c.chat(&a, "m").await.status(), 200);
    let key = "switchyard:block:model:primary:up-m";
    let stored: Value = serde_json::from_str(&c.redis.cli(&["GET", key])).unwrap();
    assert_eq!(stored["reason"], "not_found");
    assert_eq!(stored["status"], 404);
    assert_eq!(stored["replica"], "replica-1");
    let ttl: i64 = c.redis.cli(&["PTTL", key]).parse().unwrap();
    assert!(ttl > 11 * 3_600_000 && ttl <= 12 * 3_600_000, "{ttl}");

    assert_eq!(c.redis.cli(&["DEL", key]), "1");
    // No event tells the replicas of a delete by hand: each finds out when
    // it checks its view against Redis, within the contract's second.
    for replica in [&a, &b] {
        let mock = &c.mock;
        common::eventually("the deleted block no longer blocks", SECOND, async || {
            mock.clear_hits();
            assert_eq!(c.chat(replica, "m").await.status(), 200);
            mock.keys() == [key_of("primary")]
        })
        .await;
    }

    // A block written by hand blocks every replica.
    let now = chrono::Utc::now().timestamp_millis();
    let value = json!({"reason": "forbidden", "status": 403, "message": "by hand", "replica": "operator", "since_ms": now, "until_ms": now + 60_000}).to_string();
    assert_eq!(
        c.redis.cli(&[
            "SET",
            "switchyard:block:cred:primary",
            &value,
            "PX",
            "60000"
        ]),
        "OK"
    );
    c.mock.clear_hits();
    assert_eq!(c.chat(&a, "m").await.status(), 200);
    assert_eq!(c.chat(&b, "m").await.status(), 200);
    assert_eq!(c.mock.keys(), [key_of("backup"), key_of("backup")]);
}

#[tokio::test]
async fn the_admin_api_lists_and_removes_blocks_and_masks_secrets() {
    let c = seeded(2, primary_and_backup).await;
    let base = c.nginx_url();
    c.mock.script(
        &key_of("primary"),
        [Reply::status(401, json!({"error": {"message": "bad key"}}))],
    );
    assert_eq!(c.chat(&base, "m").await.status(), 200);

    let admin = |path: &str| {
        c.client
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_KEY)
            .send()
    };
    let blocks: Value = admin("/admin/blocks").await.unwrap().json().await.unwrap();
    let list = blocks["blocks"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{blocks}");
    assert_eq!(list[0]["scope"], "credential");
    assert_eq!(list[0]["credential_id"], "primary");
    assert_eq!(list[0]["reason"], "unauthorized");
    let remaining = list[0]["remaining_ms"].as_i64().unwrap();
    assert!(remaining > 29 * 60_000 && remaining <= 30 * 60_000);

    let creds: Value = admin("/admin/credentials")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = creds.to_string();
    assert!(
        !text.contains(&key_of("primary")) && !text.contains(&key_of("backup")),
        "{text}"
    );
    let primary = creds["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "primary")
        .unwrap();
    assert_eq!(primary["blocks"][0]["reason"], "unauthorized");
    assert_eq!(primary["models"][0]["upstream_model"], "up-m");

    let no_key = c
        .client
        .get(format!("{base}/admin/blocks"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);

    let del = |path: &str| {
        c.client
            .delete(format!("{base}{path}"))
            .bearer_auth(ADMIN_KEY)
            .send()
    };
    assert_eq!(del("/admin/blocks/primary").await.unwrap().status(), 204);
    assert_eq!(del("/admin/blocks/primary").await.unwrap().status(), 404);
    assert_eq!(
        del("/admin/blocks/primary/up-m").await.unwrap().status(),
        404
    );
    c.mock.clear_hits();
    assert_eq!(c.chat(&base, "m").await.status(), 200);
    assert_eq!(c.mock.keys(), [key_of("primary")]);

    let metrics = c
        .client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("switchyard_redis_up 1"), "{metrics}");
    assert!(metrics.contains("switchyard_postgres_up 1"));
    assert!(metrics.contains("switchyard_block_propagation_seconds_count"));

    // A pattern row inserted with SQL serves new names on every replica, and a
    // block learned through it names the upstream model sent, in Redis too.
    c.sql("insert into credential_models values ('backup', 'claude-*', '*')")
        .await;
    for replica in &c.replicas {
        common::eventually("the pattern reaches every replica", SECOND, async || {
            c.chat(&replica.url, "claude-probe").await.status() == 200
        })
        .await;
    }
    assert_eq!(c.mock.hits().last().unwrap().model, "claude-probe");
    c.mock.script(
        &key_of("backup"),
        [Reply::status(500, json!({"error": {"message": "boom"}}))],
    );
    assert_eq!(c.chat(&base, "claude-opus-4-8").await.status(), 503);
    let blocks: Value = admin("/admin/blocks").await.unwrap().json().await.unwrap();
    let pair = blocks["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["credential_id"] == "backup")
        .unwrap();
    assert_eq!(pair["upstream_model"], "claude-opus-4-8", "{blocks}");
    assert_eq!(
        c.redis
            .cli(&["EXISTS", "switchyard:block:model:backup:claude-opus-4-8"]),
        "1"
    );
    // The models list names exact rows only.
    assert_eq!(c.models(&base).await, ["m"]);
}

#[tokio::test]
async fn a_replica_drains_its_streams_on_sigterm_while_nginx_keeps_serving() {
    let mut c = seeded(2, |c| c.credential_sql("only", 0, &[("m", "up-m")])).await;
    c.mock.always(
        &key_of("only"),
        Reply::Stream {
            chunks: 10,
            delay_ms: 100,
        },
    );
    let base = c.nginx_url();
    let mut streams = Vec::new();
    for _ in 0..4 {
        let r = c.client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(common::CLIENT_KEY)
            .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r.bytes_stream());
    }
    c.replicas[0].sigterm();
    let client = c.client.clone();
    let keep_serving = tokio::spawn({
        let base = base.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..20 {
                let r = client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(common::CLIENT_KEY)
                    .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            statuses
        }
    });
    for mut s in streams {
        let mut text = String::new();
        while let Some(chunk) = s.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        assert!(
            text.trim_end().ends_with("data: [DONE]"),
            "a stream was cut: {text}"
        );
    }
    let statuses = keep_serving.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(c.replicas[0].exit_code().await, 0);
}

#[tokio::test]
async fn keys_create_stores_only_the_hash_and_the_key_works_at_once() {
    let c = seeded(1, |c| c.credential_sql("only", 0, &[("m", "up-m")])).await;
    let out = run_switchyard(&["keys", "create", "bob"], &c.pg.url("postgres")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("sk-"), "{key}");
    let (stored,): (String,) = sqlx::query_as("select key_hash from api_keys where name = 'bob'")
        .fetch_one(&c.db)
        .await
        .unwrap();
    assert_eq!(stored, switchyard::catalog::hash_key(&key));
    let url = format!("{}/v1/models", c.replicas[0].url);
    common::eventually("the new key works", SECOND, async || {
        c.client
            .get(&url)
            .bearer_auth(&key)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    // A second key of the same name is refused.
    let again = run_switchyard(&["keys", "create", "bob"], &c.pg.url("postgres")).await;
    assert!(!again.status.success());
}

#[tokio::test]
async fn ops_cluster_starts_the_same_topology_from_local_processes() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::services::free_port();
    let mut script = tokio::process::Command::new(common::services::repo_file("ops/cluster"))
        .arg("2")
        .env("SWITCHYARD_PORT", port.to_string())
        .env("SWITCHYARD_BIN", env!("CARGO_BIN_EXE_switchyard"))
        .env("SWITCHYARD_CLUSTER_DIR", dir.path().join("cluster"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = script.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut database_url = None;
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.trim().strip_prefix("postgres ") {
                database_url = rest.split_whitespace().next().map(String::from);
            }
            if line.trim().starts_with("logs") {
                return;
            }
        }
    })
    .await;
    assert!(ready.is_ok(), "ops/cluster did not come up");
    let db = sqlx::PgPool::connect(&database_url.unwrap()).await.unwrap();
    let mock = common::Mock::start().await;
    let seed = format!(
        "insert into credentials (id, provider, base_url, api_key) values ('only', 'openai', '{}', '{}');
         insert into credential_models values ('only', 'm', 'up-m');
         insert into api_keys (name, key_hash) values ('tester', '{}');",
        mock.base_url(),
        key_of("only"),
        switchyard::catalog::hash_key(common::CLIENT_KEY)
    );
    sqlx::raw_sql(&seed).execute(&db).await.unwrap();
    db.close().await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    common::eventually(
        "the gateway serves through nginx",
        Duration::from_secs(5),
        async || {
            client
                .post(&url)
                .bearer_auth(common::CLIENT_KEY)
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let pid = script.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), script.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nginx stopped with the script"
    );
}

/// A Redis that hangs (SIGSTOP: connections open, nothing answers) costs
/// requests at most one Redis timeout in all: the first call that times out
/// switches the replica to its own learned state, and no request after it
/// waits on Redis at all. Counted, not timed: the replica's own count of
/// timed-out Redis calls stays where the switch left it.
#[tokio::test]
async fn a_hanging_redis_costs_requests_at_most_its_timeout() {
    let c = seeded(1, primary_and_backup).await;
    let a = c.replicas[0].url.clone();
    assert_eq!(c.chat(&a, "m").await.status(), 200);
    let timeouts = async || {
        c.replicas[0]
            .metric("switchyard_redis_failures_total{kind=\"timeout\"}")
            .await
            .unwrap()
    };
    assert_eq!(timeouts().await, 0.0);
    c.redis.pause();
    c.mock
        .script(&key_of("primary"), [Reply::status(503, json!({}))]);
    for _ in 0..5 {
        assert_eq!(c.chat(&a, "m").await.status(), 200);
    }
    let after_switch = timeouts().await;
    assert!(
        (1.0..=2.0).contains(&after_switch),
        "one call timed out (two if the health check's ping raced it): {after_switch}"
    );
    assert_eq!(c.replicas[0].metric("switchyard_redis_up").await, Some(0.0));
    for _ in 0..20 {
        assert_eq!(c.chat(&a, "m").await.status(), 200);
    }
    assert_eq!(
        timeouts().await,
        after_switch,
        "no request waited on the hanging Redis after the switch"
    );
    assert_eq!(
        c.replicas[0]
            .metric("switchyard_learned_state_degraded")
            .await,
        Some(1.0)
    );
    c.redis.resume();
    let replica = &c.replicas[0];
    common::eventually("Redis is used again", Duration::from_secs(5), async || {
        replica.metric("switchyard_redis_up").await == Some(1.0)
    })
    .await;
    let redis = &c.redis;
    common::eventually(
        "the block learned meanwhile is written back",
        Duration::from_secs(5),
        async || redis.cli(&["EXISTS", "switchyard:block:model:primary:up-m"]) == "1",
    )
    .await;
}

#[tokio::test]
async fn a_conversation_stays_on_its_credential_across_replicas_and_moves_once_when_blocked() {
    let c = seeded(2, |c| {
        ["one", "two", "three"]
            .iter()
            .map(|id| c.credential_sql(id, 0, &[("m", "up-m")]))
            .collect::<String>()
    })
    .await;
    let replicas = [c.replicas[0].url.clone(), c.replicas[1].url.clone()];
    // Turn i goes to replica i % 2, in the shape each client sends its key.
    let turn = |i: usize| {
        let base = replicas[i % 2].clone();
        let client = c.client.clone();
        async move {
            let r = match i % 3 {
                // Codex: the Responses API with its session id as prompt_cache_key.
                0 => client
                    .post(format!("{base}/v1/responses"))
                    .bearer_auth(common::CLIENT_KEY)
                    .header("session-id", "conv-7")
                    .json(&json!({"model": "m", "input": "hi", "prompt_cache_key": "conv-7"})),
                // Claude Code: its session header.
                1 => client
                    .post(format!("{base}/v1/messages"))
                    .header("x-api-key", common::CLIENT_KEY)
                    .header("x-claude-code-session-id", "conv-7")
                    .json(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})),
                _ => client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(common::CLIENT_KEY)
                    .header("session_id", "conv-7")
                    .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})),
            };
            r.send().await.unwrap().status()
        }
    };
    for i in 0..5 {
        assert_eq!(turn(i).await, 200);
    }
    let keys = c.mock.keys();
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "five turns, one credential: {keys:?}"
    );
    // Without the key, round-robin spreads the same traffic.
    c.mock.clear_hits();
    for i in 0..6 {
        assert_eq!(c.chat(&replicas[i % 2], "m").await.status(), 200);
    }
    let spread: std::collections::BTreeSet<String> = c.mock.keys().into_iter().collect();
    assert!(spread.len() > 1, "{spread:?}");

    // Blocked, the conversation moves to another credential, and stays there.
    let first = keys[0].clone();
    c.mock.always(
        &first,
        Reply::openai_error(
            401,
            "Incorrect API key provided",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
    );
    c.mock.clear_hits();
    for i in 0..5 {
        assert_eq!(turn(i).await, 200);
    }
    let hits = c.mock.keys();
    let served: Vec<&String> = hits.iter().filter(|k| **k != first).collect();
    assert_eq!(served.len(), 5, "{hits:?}");
    assert!(
        served.iter().all(|k| *k == served[0]),
        "it stays where it moved: {hits:?}"
    );
    assert_eq!(
        hits.iter().filter(|k| **k == first).count(),
        1,
        "the blocked one is tried once: {hits:?}"
    );
}
