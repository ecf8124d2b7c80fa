//! A key's limits and its usage as its client and its operator see them
//! (contract sections 8 and 9): the models it may use, its request and
//! token limits and budget across replicas, and a ledger that holds every
//! request and token an upstream reported, through outages and a drain.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
#![allow(clippy::disallowed_methods)] // A test owns and awaits what it spawns.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Cred, Gateway, Mock, gateway_with_clock};
use serde_json::{Value, json};
use switchyard::clock::{ManualClock, SystemClock};

const MODELS: &[(&str, &str)] = &[("gpt-a", "up-a"), ("claude-x", "up-x"), ("other", "up-o")];
const LIMITED_KEY: &str = "sk-limited-key";

/// 15 s into a UTC minute (1_800_000_000_000 ms is a whole minute): 45 s left.
const QUARTER_PAST: i64 = 1_800_000_000_000 + 15_000;

/// A gateway whose file also holds the key `limited` with `fields` (TOML
/// lines of its `[[api_keys]]` table).
async fn gateway_with_key(fields: &str, clock: switchyard::clock::SharedClock) -> Gateway {
    gateway_with_key_and(fields, clock, &[]).await
}

/// The same, with settings in `env`.
async fn gateway_with_key_and(
    fields: &str,
    clock: switchyard::clock::SharedClock,
    env: &[(&str, &str)],
) -> Gateway {
    let mock = Mock::start().await;
    let gw = gateway_with_clock(mock, &[Cred::new("only", 0, MODELS)], env, clock).await;
    let mut text = std::fs::read_to_string(&gw.config_path).unwrap();
    text.push_str(&format!(
        "\n[[api_keys]]\nname = \"limited\"\nkey_hash = {:?}\n{fields}\n",
        switchyard::catalog::hash_key(LIMITED_KEY)
    ));
    std::fs::write(&gw.config_path, text).unwrap();
    common::eventually("the key is loaded", Duration::from_secs(5), async || {
        models(&gw, "/v1/models", "authorization").await.0 == 200
    })
    .await;
    gw
}

async fn models(gw: &Gateway, path: &str, header: &str) -> (u16, Value) {
    let value = if header == "authorization" {
        format!("Bearer {LIMITED_KEY}")
    } else {
        LIMITED_KEY.to_string()
    };
    let r = gw
        .client
        .get(format!("{}{path}", gw.url))
        .header(header, value)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// One generation request of `model` in `format` with the limited key.
async fn ask(gw: &Gateway, format: &str, model: &str) -> reqwest::Response {
    let c = &gw.client;
    let request = match format {
        "openai" => c
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(LIMITED_KEY)
            .json(&Gateway::chat_body(model, false)),
        "anthropic" => c
            .post(format!("{}/v1/messages", gw.url))
            .header("x-api-key", LIMITED_KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})),
        "gemini" => c
            .post(format!("{}/v1beta/models/{model}:generateContent", gw.url))
            .header("x-goog-api-key", LIMITED_KEY)
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})),
        other => panic!("no format {other}"),
    };
    request.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn a_key_limited_to_some_models_gets_403_for_others_and_sees_only_its_models() {
    let gw = gateway_with_key("models = [\"gpt-a\", \"claude-*\"]", Arc::new(SystemClock)).await;
    for format in ["openai", "anthropic", "gemini"] {
        assert_eq!(ask(&gw, format, "gpt-a").await.status(), 200, "{format}");
        assert_eq!(ask(&gw, format, "claude-x").await.status(), 200, "{format}");
    }
    let served = gw.mock.hits().len();
    assert_eq!(served, 6);
    // A name the key may not use, served or not, is 403 (before the 404).
    for model in ["other", "nowhere"] {
        let r = ask(&gw, "openai", model).await;
        assert_eq!(r.status(), 403, "{model}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "model_not_allowed", "{v}");
        let r = ask(&gw, "anthropic", model).await;
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "permission_error", "{v}");
        let r = ask(&gw, "gemini", model).await;
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["status"], "PERMISSION_DENIED", "{v}");
    }
    assert_eq!(
        gw.mock.hits().len(),
        served,
        "a refused model reached an upstream"
    );

    let (status, v) = models(&gw, "/v1/models", "authorization").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude-x", "gpt-a"]);
    let (_, v) = models(&gw, "/v1beta/models", "x-goog-api-key").await;
    let names: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["models/claude-x", "models/gpt-a"]);
    let (status, _) = models(&gw, "/v1beta/models/other", "x-goog-api-key").await;
    assert_eq!(status, 403);

    // The test key of the file has no restriction: it still sees all three.
    let r = gw
        .client
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(common::CLIENT_KEY)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    gw.stop().await;
}

#[tokio::test]
async fn the_request_over_the_rpm_limit_is_refused_in_each_format_until_the_next_minute() {
    let clock = ManualClock::at(QUARTER_PAST);
    let gw = gateway_with_key("rpm_limit = 3", clock.clone()).await;
    for left in ["2", "1", "0"] {
        let r = ask(&gw, "openai", "gpt-a").await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "x-ratelimit-limit-requests").as_deref(),
            Some("3")
        );
        assert_eq!(
            header(&r, "x-ratelimit-remaining-requests").as_deref(),
            Some(left)
        );
    }
    let r = ask(&gw, "openai", "gpt-a").await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("45"));
    assert_eq!(
        header(&r, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&r, "x-ratelimit-reset-requests").as_deref(),
        Some("45s")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");

    let r = ask(&gw, "anthropic", "gpt-a").await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");

    let r = ask(&gw, "gemini", "gpt-a").await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "x-ratelimit-limit-requests").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{v}");

    assert_eq!(
        gw.mock.hits().len(),
        3,
        "a refused request reached an upstream"
    );
    assert!(gw.blocks().await.is_empty(), "a refusal taught something");

    // Other keys are not limited by this one's count.
    assert_eq!(gw.chat("gpt-a").await.status(), 200);

    clock.advance_ms(45_000);
    let r = ask(&gw, "gemini", "gpt-a").await;
    assert_eq!(r.status(), 200, "the next minute serves again");
    assert_eq!(
        header(&r, "x-ratelimit-remaining-requests").as_deref(),
        Some("2")
    );
    gw.stop().await;
}

/// Waits, when less than 15 s of the current UTC minute are left, for the
/// next one: the cluster tests count within one window of Redis' clock
/// (the same machine's clock), and must not see it roll over half way.
async fn early_in_a_minute() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let into = now % 60_000;
    if into > 45_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into + 200)).await;
    }
}

/// Two replicas behind nginx over one openai credential serving `m`, and
/// the key `limited` with `limits` (SQL column assignments).
async fn cluster_with_key(limits: &str) -> common::cluster::Cluster {
    let mut c = common::cluster::Cluster::services().await;
    c.sql(&c.credential_sql("only", 0, &[("m", "up-m")])).await;
    c.sql(&format!(
        "insert into api_keys (name, key_hash) values ('limited', '{}'); update api_keys set {limits} where name = 'limited'",
        switchyard::catalog::hash_key(LIMITED_KEY)
    ))
    .await;
    c.add_replica(&[]).await;
    c.add_replica(&[]).await;
    c
}

async fn chat_at(c: &common::cluster::Cluster, base: &str) -> u16 {
    c.client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(LIMITED_KEY)
        .json(&Gateway::chat_body("m", false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_rpm_limit_holds_across_replicas() {
    let c = cluster_with_key("rpm_limit = 5").await;
    early_in_a_minute().await;
    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(chat_at(&c, &c.replicas[i % 2].url).await);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429, 429, 429],
        "five requests a minute for the key, whichever replica each reaches"
    );
    assert_eq!(c.mock.hits().len(), 5);

    // The same limit raised with one UPDATE is seen by both replicas.
    c.sql("update api_keys set rpm_limit = 7 where name = 'limited'")
        .await;
    let mut served = 0;
    common::eventually("the raised limit", Duration::from_secs(5), async || {
        if chat_at(&c, &c.replicas[served % 2].url).await == 200 {
            served += 1;
        }
        served == 2
    })
    .await;
    assert_eq!(chat_at(&c, &c.replicas[0].url).await, 429);
    assert_eq!(chat_at(&c, &c.replicas[1].url).await, 429);
    assert_eq!(c.mock.hits().len(), 7);
}

#[tokio::test]
async fn with_redis_down_each_replica_enforces_the_limit_on_its_own_traffic() {
    let mut c = cluster_with_key("rpm_limit = 2").await;
    c.redis.kill();
    early_in_a_minute().await;
    for r in &c.replicas {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(chat_at(&c, &r.url).await);
        }
        assert_eq!(statuses, [200, 200, 429], "{}", r.url);
    }
    assert_eq!(c.mock.hits().len(), 4);
    for r in &c.replicas {
        assert!(
            r.metric("switchyard_limits_local_total").await.unwrap() >= 3.0,
            "{}",
            r.url
        );
        assert_eq!(r.metric("switchyard_redis_up").await, Some(0.0));
    }
}

/// The statuses of `n` requests of the limited key sent at once, to the
/// replicas in turn starting with replica `first % 2`.
async fn at_once(c: &common::cluster::Cluster, n: usize, first: usize) -> Vec<u16> {
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let (client, base) = (c.client.clone(), c.replicas[(first + i) % 2].url.clone());
            tokio::spawn(async move {
                client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(LIMITED_KEY)
                    .json(&Gateway::chat_body("m", false))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for r in requests {
        statuses.push(r.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn a_burst_on_both_replicas_at_once_is_admitted_up_to_the_limit_and_no_further() {
    // Requests that arrive together share admission calls to Redis: each
    // is still judged on its own, in order.
    let c = cluster_with_key("rpm_limit = 40").await;
    early_in_a_minute().await;
    let statuses = at_once(&c, 100, 0).await;
    let served = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((served, refused), (40, 60), "{statuses:?}");
    assert_eq!(c.mock.hits().len(), 40);
}

#[tokio::test]
async fn a_large_limit_leased_in_parts_is_never_exceeded() {
    // With room to spare, a replica leases several requests of the minute
    // in one call and admits them on its own: the key still never gets
    // past its limit, and leased requests are not lost to it.
    let c = cluster_with_key("rpm_limit = 1280").await;
    early_in_a_minute().await;
    let mut served = 0;
    let mut refused = 0;
    for wave in 0..30 {
        for status in at_once(&c, 50, wave).await {
            match status {
                200 => served += 1,
                429 => refused += 1,
                other => panic!("{other}"),
            }
        }
    }
    assert_eq!(served + refused, 1500);
    assert!(served <= 1280, "{served} served: past the limit");
    assert!(served >= 1280 - 64, "{served} served: leased requests lost");
    assert_eq!(c.mock.hits().len(), served);
}

#[tokio::test]
async fn with_redis_down_each_replica_counts_tokens_on_its_own_traffic() {
    let mut c = cluster_with_key("tpm_limit = 5").await;
    c.redis.kill();
    early_in_a_minute().await;
    // The mock reports eight tokens an answer: the request that
    // crosses the limit is answered, the next on that replica is refused.
    for r in &c.replicas {
        assert_eq!(chat_at(&c, &r.url).await, 200, "{}", r.url);
        common::eventually("the tokens counted", Duration::from_secs(2), async || {
            chat_at(&c, &r.url).await == 429
        })
        .await;
    }
    assert_eq!(c.mock.hits().len(), 2);
}

#[tokio::test]
async fn a_replica_killed_with_sigkill_loses_at_most_its_last_batch() {
    let mut c = cluster_with_key("rpm_limit = 1000").await;
    early_in_a_minute().await;
    for _ in 0..20 {
        assert_eq!(chat_at(&c, &c.replicas[0].url).await, 200);
    }
    // A batch interval passes: those twenty are written.
    tokio::time::sleep(switchyard::ledger::FLUSH_EVERY + Duration::from_secs(1)).await;
    for _ in 0..5 {
        assert_eq!(chat_at(&c, &c.replicas[0].url).await, 200);
    }
    c.replicas[0].child.start_kill().unwrap();
    let _ = c.replicas[0].child.wait().await;
    let (written,): (i64,) = sqlx::query_as(
        "select coalesce(sum(requests), 0)::bigint from usage where api_key = 'limited'",
    )
    .fetch_one(&c.db)
    .await
    .unwrap();
    assert!(
        (20..=25).contains(&written),
        "{written} requests written: all but the last batch's at least"
    );
}

#[tokio::test]
async fn keys_create_stores_the_limits_it_is_given() {
    let c = common::cluster::Cluster::services().await;
    let out = common::cluster::run_switchyard(
        &[
            "keys",
            "create",
            "bob",
            "--rpm",
            "10",
            "--tpm",
            "2000",
            "--budget-usd",
            "2.5",
            "--budget-period",
            "day",
            "--models",
            "gpt-a,claude-*",
        ],
        &c.pg.url("postgres"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let row: (String, i32, i32, String, String, Vec<String>) = sqlx::query_as(
        "select key_hash, rpm_limit, tpm_limit, budget_usd::text, budget_period, models from api_keys where name = 'bob'",
    )
    .fetch_one(&c.db)
    .await
    .unwrap();
    assert_eq!(row.0, switchyard::catalog::hash_key(&key));
    assert_eq!((row.1, row.2), (10, 2000));
    assert_eq!(row.3, "2.500000");
    assert_eq!(row.4, "day");
    assert_eq!(row.5, ["gpt-a", "claude-*"]);

    let bad = common::cluster::run_switchyard(
        &["keys", "create", "carol", "--budget-usd=-1"],
        &c.pg.url("postgres"),
    )
    .await;
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains("--budget-usd") && said.contains("dollars"),
        "{said}"
    );
}

async fn admin_usage(client: &reqwest::Client, base: &str, query: &str) -> Value {
    let r = client
        .get(format!("{base}/admin/usage?{query}"))
        .bearer_auth(common::cluster::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// `(group, requests, errors)` of an `/admin/usage` answer.
fn groups(v: &Value) -> Vec<(String, u64, u64)> {
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap().to_string(),
                g["requests"].as_u64().unwrap(),
                g["errors"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn embedded_mode_keeps_usage_in_memory_and_the_admin_api_groups_it() {
    let gw = gateway_with_key_and(
        "models = [\"gpt-a\"]",
        Arc::new(SystemClock),
        &[("SWITCHYARD_ADMIN_KEY", common::cluster::ADMIN_KEY)],
    )
    .await;
    for format in ["openai", "anthropic", "gemini"] {
        assert_eq!(ask(&gw, format, "gpt-a").await.status(), 200);
    }
    assert_eq!(ask(&gw, "openai", "other").await.status(), 403);
    assert_eq!(gw.chat("other").await.status(), 200);
    assert_eq!(gw.chat("nowhere").await.status(), 404);
    // Token counting is not usage.
    let r = gw
        .client
        .post(format!("{}/v1/messages/count_tokens", gw.url))
        .header("x-api-key", LIMITED_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let by_key = admin_usage(&gw.client, &gw.url, "by=key").await;
    assert_eq!(
        groups(&by_key),
        [("limited".into(), 4, 1), ("tester".into(), 2, 1)]
    );
    let by_model = admin_usage(&gw.client, &gw.url, "by=model").await;
    assert_eq!(
        groups(&by_model),
        [
            ("gpt-a".into(), 3, 0),
            ("nowhere".into(), 1, 1),
            ("other".into(), 2, 1)
        ]
    );
    // Refusals and the unknown model reached no credential.
    let by_credential = admin_usage(&gw.client, &gw.url, "by=credential").await;
    assert_eq!(
        groups(&by_credential),
        [("".into(), 2, 2), ("only".into(), 4, 0)]
    );
    // A range that ended before the requests holds nothing.
    let old = admin_usage(
        &gw.client,
        &gw.url,
        "from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z&by=key",
    )
    .await;
    assert!(groups(&old).is_empty());
    let r = gw
        .client
        .get(format!("{}/admin/usage?by=team", gw.url))
        .bearer_auth(common::cluster::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    gw.stop().await;
}

#[tokio::test]
async fn requests_on_two_replicas_are_all_in_usage_after_sigterm_and_a_postgres_outage() {
    let mut c = cluster_with_key("rpm_limit = null").await;
    let mut sent = 0u64;
    for i in 0..40 {
        assert_eq!(chat_at(&c, &c.replicas[i % 2].url).await, 200);
        sent += 1;
    }
    // Postgres away: the counts are kept and written when it is back.
    c.pg.stop();
    for i in 0..20 {
        assert_eq!(chat_at(&c, &c.replicas[i % 2].url).await, 200);
        sent += 1;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.pg.start_again();
    common::eventually(
        "counts written after the outage",
        Duration::from_secs(30),
        async || {
            let v = admin_usage(&c.client, &c.replicas[0].url, "by=key").await;
            groups(&v) == [("limited".to_string(), 60, 0)]
        },
    )
    .await;
    // SIGTERM under load: streams still running when it comes, more
    // requests than that just before. The drain lets them finish and
    // writes every count.
    c.mock.always(
        &common::key_of("only"),
        common::mock::Reply::Stream {
            chunks: 10,
            delay_ms: 100,
        },
    );
    let in_flight: Vec<_> = (0..20)
        .map(|i| {
            let client = c.client.clone();
            let base = c.replicas[i % 2].url.clone();
            tokio::spawn(async move {
                let r = client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(LIMITED_KEY)
                    .json(&Gateway::chat_body("m", true))
                    .send()
                    .await
                    .unwrap();
                let ok = r.status() == 200;
                let text = r.text().await.unwrap();
                ok && text.contains("[DONE]")
            })
        })
        .collect();
    for i in 0..30 {
        assert_eq!(chat_at(&c, &c.replicas[i % 2].url).await, 200);
        sent += 1;
    }
    for r in &c.replicas {
        r.sigterm();
    }
    for streamed in in_flight {
        assert!(streamed.await.unwrap(), "a stream cut by the drain");
        sent += 1;
    }
    for r in &mut c.replicas {
        assert_eq!(r.exit_code().await, 0);
    }
    let (requests, errors, credential, input, output): (i64, i64, String, i64, i64) =
        sqlx::query_as(
            "select sum(requests)::bigint, sum(errors)::bigint, min(credential_id),
                sum(input_tokens)::bigint, sum(output_tokens)::bigint
         from usage where api_key = 'limited' and model = 'm' and upstream_model = 'up-m'",
        )
        .fetch_one(&c.db)
        .await
        .unwrap();
    assert_eq!(requests as u64, sent);
    assert_eq!(errors, 0);
    assert_eq!(credential, "only");
    // The mock reports 3 + 5 tokens an answer, streams included.
    assert_eq!((input as u64, output as u64), (3 * sent, 5 * sent));
}

/// One request of the sums test: the client format, the model (each served
/// by one provider), and whether it streams.
async fn spend(c: &common::cluster::Cluster, base: &str, format: &str, model: &str, stream: bool) {
    let http = &c.client;
    let prompt = "count me";
    let request = match format {
        "openai" => http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(LIMITED_KEY)
            .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]})),
        "responses" => http
            .post(format!("{base}/v1/responses"))
            .bearer_auth(LIMITED_KEY)
            .json(&json!({"model": model, "stream": stream, "input": prompt})),
        "anthropic" => http
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", LIMITED_KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": model, "stream": stream, "max_tokens": 50, "messages": [{"role": "user", "content": prompt}]})),
        _ => {
            let action = if stream {
                "streamGenerateContent?alt=sse"
            } else {
                "generateContent"
            };
            http.post(format!("{base}/v1beta/models/{model}:{action}"))
                .header("x-goog-api-key", LIMITED_KEY)
                .json(&json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}))
        }
    };
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 200, "{format} {model} stream={stream}");
    let text = r.text().await.unwrap();
    if format == "openai" && stream {
        // The gateway asked the upstream for the usage chunk; a client
        // that did not ask does not get it.
        assert!(!text.contains("prompt_tokens"), "{text}");
    }
}

#[tokio::test]
async fn usage_sums_equal_what_the_upstreams_reported_over_a_thousand_requests() {
    let mut c = common::cluster::Cluster::services().await;
    let (openai, root) = (c.mock.base_url(), c.mock.root_url());
    c.sql(&format!(
        "insert into credentials (id, provider, base_url, api_key, responses_api) values
             ('oa', 'openai', '{openai}', 'sk-up-oa', false),
             ('rs', 'openai', '{openai}', 'sk-up-rs', true),
             ('an', 'anthropic', '{root}', 'sk-up-an', false),
             ('ge', 'gemini', '{root}', 'sk-up-ge', false);
         insert into credential_models (credential_id, model, upstream_model) values
             ('oa', 'm-openai', 'up-oa'), ('rs', 'm-responses', 'up-rs'),
             ('an', 'm-anthropic', 'up-an'), ('ge', 'm-gemini', 'up-ge');
         insert into api_keys (name, key_hash) values ('limited', '{}');
         insert into model_prices (model, input_usd_per_mtok, output_usd_per_mtok, cached_usd_per_mtok)
             values ('m-*', 3, 15, 1), ('m-gemini', 2, 12, null);",
        switchyard::catalog::hash_key(LIMITED_KEY)
    ))
    .await;
    c.add_replica(&[]).await;
    c.add_replica(&[]).await;
    c.mock.random_usage(0x5eed);
    let formats = ["openai", "responses", "anthropic", "gemini"];
    let models = ["m-openai", "m-responses", "m-anthropic", "m-gemini"];
    // Every format against every provider, streamed and not, on both
    // replicas: 32 combinations, each about 31 times.
    let jobs: Vec<(usize, &str, &str, bool)> = (0..1000)
        .map(|i| {
            (
                i % 2,
                formats[i % 4],
                models[(i / 4) % 4],
                (i / 16) % 2 == 1,
            )
        })
        .collect();
    for batch in jobs.chunks(10) {
        let c = &c;
        futures_util::future::join_all(batch.iter().map(
            |&(r, format, model, stream)| async move {
                spend(c, &c.replicas[r].url, format, model, stream).await
            },
        ))
        .await;
    }
    let hits = c.mock.hits();
    assert_eq!(hits.len(), 1000, "one upstream call a request");
    for r in &c.replicas {
        r.sigterm();
    }
    for r in &mut c.replicas {
        assert_eq!(r.exit_code().await, 0);
    }
    // What the mock reported, in section 9's one meaning, and its price.
    let mut want = [0u64; 6];
    let mut micro_usd = 0u64;
    for h in &hits {
        let u = h.used;
        for (slot, n) in
            want.iter_mut()
                .zip([1, u.input, u.output, u.cached, u.cache_write, u.reasoning])
        {
            *slot += n;
        }
        let (input, output, cached) = if h.model == "up-ge" {
            (2, 12, 2)
        } else {
            (3, 15, 1)
        };
        micro_usd += (u.input - u.cached) * input + u.cached * cached + u.output * output;
    }
    let got: (i64, i64, i64, i64, i64, i64, i64, String) = sqlx::query_as(
        "select sum(requests)::bigint, sum(input_tokens)::bigint, sum(output_tokens)::bigint,
                sum(cached_tokens)::bigint, sum(cache_write_tokens)::bigint,
                sum(reasoning_tokens)::bigint, sum(errors)::bigint, sum(cost_usd)::text
         from usage where api_key = 'limited'",
    )
    .fetch_one(&c.db)
    .await
    .unwrap();
    let sums = [got.0, got.1, got.2, got.3, got.4, got.5].map(|n| n as u64);
    assert_eq!(
        sums, want,
        "requests, input, output, cached, cache-write and reasoning tokens"
    );
    assert_eq!(got.6, 0, "no errors");
    // Whole dollars per million tokens: every cost is exact to the micro-dollar.
    assert_eq!(
        got.7,
        format!("{}.{:06}", micro_usd / 1_000_000, micro_usd % 1_000_000)
    );
    // Each provider's own fields were reported: none of them is all zero.
    for (i, name) in ["input", "output", "cached", "cache_write", "reasoning"]
        .iter()
        .enumerate()
    {
        assert!(want[i + 1] > 0, "{name}");
    }
}

/// A metric's value in a `/metrics` text.
async fn metric(gw: &Gateway, name: &str) -> u64 {
    let text = gw
        .client
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn with_usage_off_nothing_is_counted_but_token_limits_still_hold() {
    let gw = gateway_with_key_and(
        "tpm_limit = 10",
        ManualClock::at(QUARTER_PAST),
        &[
            ("SWITCHYARD_ADMIN_KEY", common::cluster::ADMIN_KEY),
            ("SWITCHYARD_USAGE", "off"),
        ],
    )
    .await;
    let stream = |key: &str| {
        gw.client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(key)
            .json(&Gateway::chat_body("gpt-a", true))
            .send()
    };
    // The mock reports 3 + 5 tokens an answer: the second crosses 10.
    let r = stream(LIMITED_KEY).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("[DONE]"));
    assert_eq!(ask(&gw, "openai", "gpt-a").await.status(), 200);
    let r = ask(&gw, "openai", "gpt-a").await;
    assert_eq!(r.status(), 429, "the key's tokens were not counted");
    assert_eq!(
        header(&r, "x-ratelimit-remaining-tokens").as_deref(),
        Some("0")
    );
    // A key without token limits: its stream's usage is not asked for.
    let r = stream(common::CLIENT_KEY).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("[DONE]"));
    assert_eq!(gw.chat("gpt-a").await.status(), 200);
    let hits = gw.mock.hits();
    assert_eq!(hits.len(), 4, "the refused request reached the upstream");
    assert_eq!(
        hits[0].body["stream_options"]["include_usage"], true,
        "the limited key's stream is asked for its usage"
    );
    assert!(
        hits[2].body.get("stream_options").is_none(),
        "{}",
        hits[2].body
    );
    let v = admin_usage(&gw.client, &gw.url, "by=key").await;
    assert!(groups(&v).is_empty(), "usage was kept: {v}");
    gw.stop().await;
}

#[tokio::test]
async fn answers_without_usage_and_clients_that_leave_are_counted_with_the_estimate() {
    let gw = gateway_with_key_and(
        "",
        Arc::new(SystemClock),
        &[("SWITCHYARD_ADMIN_KEY", common::cluster::ADMIN_KEY)],
    )
    .await;
    let upstream = common::key_of("only");
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up-a",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    // An upstream that reports no usage, though it was asked for it.
    let long = "word ".repeat(200);
    gw.mock.script(
        &upstream,
        [common::mock::Reply::Events(vec![
            (
                None,
                chunk(json!({"role": "assistant", "content": long}), Value::Null),
            ),
            (None, chunk(json!({}), json!("stop"))),
            (None, "[DONE]".into()),
        ])],
    );
    let r = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(LIMITED_KEY)
        .json(&Gateway::chat_body("gpt-a", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("[DONE]"));
    assert_eq!(
        gw.mock.hits()[0].body["stream_options"]["include_usage"],
        true,
        "the upstream is asked for its usage"
    );
    let estimated = "switchyard_usage_estimated_total";
    common::eventually("the estimate counted", Duration::from_secs(5), async || {
        metric(&gw, estimated).await == 1
    })
    .await;
    let v = admin_usage(&gw.client, &gw.url, "by=key").await;
    let g = &v["groups"][0];
    assert_eq!(g["requests"], 1);
    // About four characters a token: 1,000 characters of content.
    let output = g["output_tokens"].as_u64().unwrap();
    assert!((200..=300).contains(&output), "{g}");
    assert!(g["input_tokens"].as_u64().unwrap() > 0, "{g}");

    // A client that leaves mid-stream is counted with what it got.
    let gate = Arc::new(tokio::sync::Notify::new());
    gw.mock
        .script(&upstream, [common::mock::Reply::Gated(gate.clone())]);
    let mut r = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(LIMITED_KEY)
        .json(&Gateway::chat_body("gpt-a", true))
        .send()
        .await
        .unwrap();
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    common::eventually(
        "the client that left counted",
        Duration::from_secs(5),
        async || metric(&gw, estimated).await == 2,
    )
    .await;
    let v = admin_usage(&gw.client, &gw.url, "by=key").await;
    assert_eq!(v["groups"][0]["requests"], 2, "{v}");
    gate.notify_waiters();

    // An answer that reports its usage is counted with it, estimating nothing.
    assert_eq!(ask(&gw, "anthropic", "gpt-a").await.status(), 200);
    let v = admin_usage(&gw.client, &gw.url, "by=key").await;
    assert_eq!(v["groups"][0]["requests"], 3, "{v}");
    assert_eq!(v["groups"][0]["errors"], 0, "{v}");
    assert_eq!(metric(&gw, estimated).await, 2);

    // A stream the upstream breaks after it began is an error, counted
    // with what it carried.
    gw.mock
        .script(&upstream, [common::mock::Reply::StreamCut { events: 2 }]);
    let r = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(LIMITED_KEY)
        .json(&Gateway::chat_body("gpt-a", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("error"));
    common::eventually(
        "the broken stream counted",
        Duration::from_secs(5),
        async || {
            let v = admin_usage(&gw.client, &gw.url, "by=key").await;
            v["groups"][0]["requests"] == 4 && v["groups"][0]["errors"] == 1
        },
    )
    .await;
    assert_eq!(metric(&gw, estimated).await, 3);
}

#[tokio::test]
async fn a_request_is_counted_under_the_credential_that_answered_it() {
    let mock = Mock::start().await;
    let gw = gateway_with_clock(
        mock,
        &[
            Cred::new("first", 0, &[("m", "up-1")]),
            Cred::new("second", 1, &[("m", "up-2")]),
        ],
        &[("SWITCHYARD_ADMIN_KEY", common::cluster::ADMIN_KEY)],
        Arc::new(SystemClock),
    )
    .await;
    // The first credential fails; the second answers.
    gw.mock.script(
        &common::key_of("first"),
        [common::mock::Reply::openai_error(
            500,
            "boom",
            "server_error",
            None,
        )],
    );
    assert_eq!(gw.chat("m").await.status(), 200);
    // Every candidate blocked now: the gateway answers itself.
    gw.mock.always(
        &common::key_of("second"),
        common::mock::Reply::openai_error(500, "boom", "server_error", None),
    );
    assert!(gw.chat("m").await.status().is_server_error());
    let v = admin_usage(&gw.client, &gw.url, "by=credential").await;
    let got: Vec<(String, u64, u64)> = groups(&v);
    assert_eq!(got, [("".into(), 1, 1), ("second".into(), 1, 0)], "{v}");
}

/// A streamed chat request with the limited key, read to its end.
async fn chat_stream_at(c: &common::cluster::Cluster, base: &str) -> u16 {
    let r = c
        .client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(LIMITED_KEY)
        .json(&Gateway::chat_body("m", true))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let _ = r.text().await;
    status
}

/// Longer than the limiter takes to add spend to the shared counters.
const SPEND_SETTLES: Duration = Duration::from_millis(500);

#[tokio::test]
async fn a_token_limit_counts_reported_tokens_streams_included_across_replicas() {
    // The mock reports 3 + 5 tokens an answer.
    let c = cluster_with_key("tpm_limit = 20").await;
    early_in_a_minute().await;
    assert_eq!(chat_at(&c, &c.replicas[0].url).await, 200);
    tokio::time::sleep(SPEND_SETTLES).await;
    assert_eq!(chat_stream_at(&c, &c.replicas[1].url).await, 200);
    tokio::time::sleep(SPEND_SETTLES).await;
    // 16 of 20: answered, and it crosses the limit.
    assert_eq!(chat_at(&c, &c.replicas[0].url).await, 200);
    tokio::time::sleep(SPEND_SETTLES).await;
    for r in &c.replicas {
        let response = c
            .client
            .post(format!("{}/v1/chat/completions", r.url))
            .bearer_auth(LIMITED_KEY)
            .json(&Gateway::chat_body("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(
            header(&response, "x-ratelimit-limit-tokens").as_deref(),
            Some("20")
        );
        assert_eq!(
            header(&response, "x-ratelimit-remaining-tokens").as_deref(),
            Some("0")
        );
        let retry: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        let v: Value = response.json().await.unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("20 tokens per minute"),
            "{v}"
        );
    }
    assert_eq!(
        c.mock.hits().len(),
        3,
        "no upstream call for a refused request"
    );
}

#[tokio::test]
async fn a_spent_budget_is_refused_on_every_replica_and_seeded_again_from_postgres() {
    // $1,000 a million tokens: 8 tokens cost $0.008, over a $0.01 budget
    // after two requests.
    let c = cluster_with_key("budget_usd = 0.01, budget_period = 'day'").await;
    c.sql("insert into model_prices (model, input_usd_per_mtok, output_usd_per_mtok) values ('m', 1000, 1000)")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(chat_at(&c, &c.replicas[0].url).await, 200);
    tokio::time::sleep(SPEND_SETTLES).await;
    assert_eq!(chat_stream_at(&c, &c.replicas[1].url).await, 200);
    tokio::time::sleep(SPEND_SETTLES).await;
    let refused = |base: String| {
        let client = c.client.clone();
        async move {
            let r = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(LIMITED_KEY)
                .json(&Gateway::chat_body("m", false))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = header(&r, "retry-after");
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, v["error"]["code"].clone(), retry)
        }
    };
    for r in &c.replicas {
        let (status, code, retry) = refused(r.url.clone()).await;
        assert_eq!((status, code), (429, json!("insufficient_quota")));
        let retry: u64 = retry.unwrap().parse().unwrap();
        assert!(retry <= 86_400, "until the day ends: {retry}");
    }
    assert_eq!(c.mock.hits().len(), 2);
    // The ledger writes the spend to `usage`...
    common::eventually("the spend in usage", Duration::from_secs(15), async || {
        let cost: Option<String> =
            sqlx::query_scalar("select sum(cost_usd)::text from usage where api_key = 'limited'")
                .fetch_one(&c.db)
                .await
                .unwrap();
        cost.as_deref() == Some("0.016000")
    })
    .await;
    // ...and with Redis' counters gone, the budget is seeded from it.
    c.redis.cli(&["FLUSHALL"]);
    for r in &c.replicas {
        assert_eq!(refused(r.url.clone()).await.0, 429);
    }
    assert_eq!(c.mock.hits().len(), 2);
}

#[tokio::test]
async fn a_budget_spent_today_serves_again_tomorrow() {
    // 2027-01-01 22:00 UTC.
    let clock = ManualClock::at(1_798_840_800_000);
    let gw = gateway_with_key("budget_usd = 0.01\nbudget_period = \"day\"", clock.clone()).await;
    let mut text = std::fs::read_to_string(&gw.config_path).unwrap();
    text.push_str("\n[[model_prices]]\nmodel = \"gpt-*\"\ninput_usd_per_mtok = 1000\noutput_usd_per_mtok = 1000\n");
    std::fs::write(&gw.config_path, text).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ask(&gw, "openai", "gpt-a").await.status(), 200);
    assert_eq!(ask(&gw, "anthropic", "gpt-a").await.status(), 200);
    // $0.016 of $0.01: every format refuses, until the day ends.
    let r = ask(&gw, "openai", "gpt-a").await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("7200"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("budget of $0.01 per day"),
        "{v}"
    );
    let r = ask(&gw, "anthropic", "gpt-a").await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    let r = ask(&gw, "gemini", "gpt-a").await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{v}");
    assert_eq!(gw.mock.hits().len(), 2);
    clock.advance_ms(2 * 3_600_000);
    assert_eq!(ask(&gw, "openai", "gpt-a").await.status(), 200);
    assert_eq!(gw.mock.hits().len(), 3);
}
