//! The shared learned state under Redis faults: a Redis that refuses writes,
//! one that holds millions of other keys, replicas whose clocks disagree,
//! Redis lost while a replica reconnects, and the admin API during an outage.
//! Every server here is the tests' own.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
#![allow(clippy::disallowed_methods)] // A test owns and awaits what it spawns.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{ADMIN_KEY, Cluster};
use common::services::RedisServer;
use common::{Reply, key_of};
use serde_json::{Value, json};
use switchyard::clock::{Clock, SystemClock};
use switchyard::metrics::Metrics;
use switchyard::state::{Block, LearnedStore, Reason, RedisStore, Scope};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The wall clock moved by a fixed offset: a replica whose clock is wrong.
struct Shifted(i64);

impl Clock for Shifted {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.0
    }
}

/// A Redis store with its health and mirror tasks running, as a replica has it.
struct Replica {
    store: Arc<RedisStore>,
    metrics: Arc<Metrics>,
    clock: Arc<Shifted>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Replica {
    async fn on(redis: &RedisServer, name: &str, offset_ms: i64) -> Replica {
        let metrics = Arc::new(Metrics::new());
        let clock = Arc::new(Shifted(offset_ms));
        let store = RedisStore::connect(
            &redis.url(),
            "switchyard:",
            Duration::from_millis(250),
            name,
            clock.clone(),
            metrics.clone(),
        )
        .await
        .unwrap();
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        store.spawn_tasks(&tasks, stop.clone());
        Replica {
            store: Arc::new(store),
            metrics,
            clock,
            stop,
            tasks,
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn block(&self, reason: Reason, length_ms: i64) -> Block {
        let now = self.now();
        Block {
            reason,
            status: 500,
            message: "learned".into(),
            replica: "test".into(),
            since_ms: now,
            until_ms: now + length_ms,
        }
    }

    async fn blocked(&self, scope: &Scope) -> Option<Block> {
        self.store.get(std::slice::from_ref(scope)).await.unwrap()[0].clone()
    }

    fn metric(&self, series: &str) -> Option<f64> {
        self.metrics.render().lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
        self.tasks.close();
    }
}

fn key(scope: &Scope) -> String {
    match scope {
        Scope::Credential { credential_id } => format!("switchyard:block:cred:{credential_id}"),
        Scope::Pair {
            credential_id,
            upstream_model,
        } => format!("switchyard:block:model:{credential_id}:{upstream_model}"),
    }
}

/// Redis refusing writes (out of memory, then read-only after a "failover"):
/// the replica that learned a block honours it, says so on its metrics, and
/// writes it as soon as Redis takes writes again, where every replica sees it.
#[tokio::test]
async fn a_block_redis_refuses_is_honoured_here_and_written_when_redis_takes_writes() {
    let redis = RedisServer::start();
    let a = Replica::on(&redis, "a", 0).await;
    let b = Replica::on(&redis, "b", 0).await;
    for (refuse, accept) in [
        (
            &["CONFIG", "SET", "maxmemory", "1"][..],
            &["CONFIG", "SET", "maxmemory", "0"][..],
        ),
        (
            &["REPLICAOF", "127.0.0.1", "1"][..],
            &["REPLICAOF", "NO", "ONE"][..],
        ),
    ] {
        assert_eq!(
            redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
            "OK"
        );
        assert_eq!(redis.cli(refuse), "OK");
        let pair = Scope::pair("cred", refuse[0]);
        let stood = a
            .store
            .put(&pair, a.block(Reason::NotFound, 600_000))
            .await
            .unwrap();
        assert_eq!(stood.reason, Reason::NotFound);
        assert_eq!(redis.cli(&["EXISTS", &key(&pair)]), "0", "Redis refused it");
        let honoured = a.blocked(&pair).await.expect("A honours what it learned");
        assert_eq!(honoured.reason, Reason::NotFound);
        assert!(a.store.is_connected(), "Redis still answers reads");
        assert_eq!(a.metric("switchyard_redis_unsynced"), Some(1.0));
        assert_eq!(a.metric("switchyard_learned_state_degraded"), Some(1.0));
        assert!(
            a.metric("switchyard_redis_failures_total{kind=\"refused\"}")
                .unwrap()
                >= 1.0
        );

        assert_eq!(redis.cli(accept), "OK");
        let pair_key = key(&pair);
        common::eventually(
            "A writes the block back",
            Duration::from_secs(5),
            async || redis.cli(&["EXISTS", &pair_key]) == "1",
        )
        .await;
        let seen = b.blocked(&pair).await.expect("B sees it in Redis");
        assert_eq!(seen.reason, Reason::NotFound);
        assert!(seen.until_ms - b.now() > 590_000, "{seen:?}");
        common::eventually("A is in step again", Duration::from_secs(5), async || {
            a.metric("switchyard_redis_unsynced") == Some(0.0)
        })
        .await;
        assert_eq!(a.metric("switchyard_learned_state_degraded"), Some(0.0));
    }
}

/// Listing blocks (the admin API, and a replica reloading its mirror after a
/// reconnect) reads an index: on a Redis holding millions of other keys it
/// answers, Redis is never marked lost, and no SCAN is ever sent.
#[tokio::test]
async fn listing_blocks_reads_an_index_and_never_scans_the_keyspace() {
    let redis = RedisServer::start();
    assert_eq!(redis.cli(&["DEBUG", "POPULATE", "3000000", "other"]), "OK");
    let a = Replica::on(&redis, "a", 0).await;
    assert!(a.store.is_connected());
    let (p, c) = (Scope::pair("cred", "m"), Scope::credential("cred2"));
    a.store
        .put(&p, a.block(Reason::ModelNotSupported, 600_000))
        .await
        .unwrap();
    a.store
        .put(&c, a.block(Reason::Unauthorized, 600_000))
        .await
        .unwrap();
    for _ in 0..3 {
        let all = a.store.list().await.unwrap();
        let scopes: Vec<&Scope> = all.iter().map(|(s, _)| s).collect();
        assert_eq!(scopes, [&c, &p]);
    }
    // A replica that starts (and reloads its mirror) finds them too.
    let b = Replica::on(&redis, "b", 0).await;
    assert!(b.store.is_connected());
    assert_eq!(b.store.list().await.unwrap().len(), 2);
    assert!(a.store.is_connected(), "Redis was never taken for lost");
    let stats = redis.cli(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_zrange"), "{stats}");
    assert!(!stats.contains("cmdstat_scan"), "a SCAN was sent: {stats}");
    assert!(!stats.contains("cmdstat_keys"), "a KEYS was sent: {stats}");
}

/// Clocks 20 s apart both ways: a block lasts its own length on every replica,
/// and a success clears only blocks older than its request, judged on one clock.
#[tokio::test]
async fn replicas_whose_clocks_differ_by_20_s_agree_on_every_block() {
    let redis = RedisServer::start();
    let ahead = Replica::on(&redis, "ahead", 20_000).await;
    let behind = Replica::on(&redis, "behind", -20_000).await;
    for (writer, reader, length) in [(&ahead, &behind, 1_000), (&behind, &ahead, 5_000)] {
        let pair = Scope::pair("cred", &format!("m{length}"));
        writer
            .store
            .put(&pair, writer.block(Reason::UpstreamError, length))
            .await
            .unwrap();
        let seen = reader.blocked(&pair).await.expect("the reader sees it");
        let left = seen.until_ms - reader.now();
        assert!(
            (length - 100..=length).contains(&left),
            "a {length} ms block has {left} ms left on the other replica"
        );
        assert!(seen.since_ms <= reader.now());
    }

    // A request starts on the replica ahead; meanwhile the replica behind
    // learns a failure on the same pair; the first request's success leaves it.
    let pair = Scope::pair("cred", "shared");
    let started = ahead.now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    behind
        .store
        .put(&pair, behind.block(Reason::UpstreamError, 60_000))
        .await
        .unwrap();
    ahead.store.succeed(&pair, started).await.unwrap();
    assert_eq!(
        redis.cli(&["EXISTS", &key(&pair)]),
        "1",
        "a newer block stands"
    );
    assert!(behind.blocked(&pair).await.is_some());
    // The replica behind, whose requests start "before" everything: a success
    // of a request that started after the block clears it.
    tokio::time::sleep(Duration::from_millis(30)).await;
    behind.store.succeed(&pair, behind.now()).await.unwrap();
    assert_eq!(redis.cli(&["EXISTS", &key(&pair)]), "0");
}

/// Blocks learned while Redis is away and while the replica reconnects (to a
/// Redis big enough that reconnecting takes a while) all reach Redis, and a
/// write-back that fails part way (Redis out of memory) loses nothing.
#[tokio::test]
async fn nothing_learned_while_redis_is_away_or_coming_back_is_lost() {
    let mut redis = RedisServer::start();
    assert_eq!(redis.cli(&["DEBUG", "POPULATE", "1000000", "other"]), "OK");
    let a = Replica::on(&redis, "a", 0).await;
    let scope = |i: usize| Scope::pair("cred", &format!("m{i}"));

    // Lost, then back while blocks keep being learned.
    redis.pause();
    let _ = a.blocked(&scope(0)).await; // Times out: A serves on its own.
    assert!(!a.store.is_connected());
    let learner = {
        let store = a.store.clone();
        let clock = a.clock.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                let now = clock.now_ms();
                let block = Block {
                    reason: Reason::UpstreamError,
                    status: 503,
                    message: "down".into(),
                    replica: "a".into(),
                    since_ms: now,
                    until_ms: now + 600_000,
                };
                store
                    .put(&Scope::pair("cred", &format!("m{i}")), block)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.resume();
    learner.await.unwrap();
    common::eventually(
        "every block reaches Redis",
        Duration::from_secs(10),
        async || a.store.is_connected() && a.store.unsynced() == 0,
    )
    .await;
    for i in 0..300 {
        assert_eq!(
            redis.cli(&["EXISTS", &key(&scope(i))]),
            "1",
            "block {i} was lost"
        );
    }

    // Redis restarts out of memory: the write-back fails, keeps everything,
    // and finishes once Redis takes writes.
    redis.restart_with(&["--maxmemory", "1", "--maxmemory-policy", "noeviction"]);
    for i in 0..20 {
        a.store
            .put(&scope(1_000 + i), a.block(Reason::NotFound, 600_000))
            .await
            .unwrap();
    }
    common::eventually(
        "A is connected to the new Redis",
        Duration::from_secs(10),
        async || a.store.is_connected(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_200)).await; // Write-backs keep failing.
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
    assert!(a.store.unsynced() >= 20, "{} unsynced", a.store.unsynced());
    for i in 0..20 {
        assert!(
            a.blocked(&scope(1_000 + i)).await.is_some(),
            "block {i} still honoured"
        );
    }
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    common::eventually(
        "the rest reaches Redis",
        Duration::from_secs(10),
        async || a.store.unsynced() == 0,
    )
    .await;
    for i in 0..20 {
        assert_eq!(redis.cli(&["EXISTS", &key(&scope(1_000 + i))]), "1");
    }
}

fn two_credentials(c: &Cluster) -> String {
    c.credential_sql("primary", 1, &[("m", "up-m")])
        + &c.credential_sql("backup", 0, &[("m", "up-m")])
}

async fn admin(c: &Cluster, method: reqwest::Method, base: &str, path: &str) -> (u16, Value) {
    let r = c
        .client
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// During a Redis outage the admin API says it shows this replica's own view,
/// and a block deleted then stays deleted when Redis is back.
#[tokio::test]
async fn the_admin_api_during_a_redis_outage_says_so_and_its_deletes_stick() {
    let mut c = Cluster::services().await;
    c.sql(&two_credentials(&c)).await;
    c.add_replica(&[]).await;
    c.add_replica(&[]).await;
    let (a, b) = (c.replicas[0].url.clone(), c.replicas[1].url.clone());
    c.mock.script(
        &key_of("primary"),
        [Reply::status(
            503,
            json!({"error": {"message": "overloaded"}}),
        )],
    );
    assert_eq!(c.chat(&a, "m").await.status(), 200);
    let (status, shared) = admin(&c, reqwest::Method::GET, &a, "/admin/blocks").await;
    assert_eq!(status, 200);
    assert_eq!(shared["view"], "shared");
    assert_eq!(shared["blocks"].as_array().unwrap().len(), 1, "{shared}");

    c.redis.pause();
    let (status, local) = admin(&c, reqwest::Method::GET, &a, "/admin/blocks").await;
    assert_eq!(status, 200);
    assert_eq!(local["view"], "local", "{local}");
    assert!(
        local["note"]
            .as_str()
            .unwrap()
            .contains("Redis does not answer")
    );
    assert_eq!(local["blocks"][0]["credential_id"], "primary");
    let (status, deleted) = admin(
        &c,
        reqwest::Method::DELETE,
        &a,
        "/admin/blocks/primary/up-m",
    )
    .await;
    assert_eq!(status, 202, "{deleted}");
    assert_eq!(deleted["pending"], true);
    let (_, after) = admin(&c, reqwest::Method::GET, &a, "/admin/blocks").await;
    assert_eq!(after["blocks"], json!([]), "lifted on this replica at once");

    c.redis.resume();
    let redis = &c.redis;
    common::eventually(
        "the delete reaches Redis",
        Duration::from_secs(5),
        async || redis.cli(&["EXISTS", "switchyard:block:model:primary:up-m"]) == "0",
    )
    .await;
    let replica = &c.replicas[0];
    common::eventually("A is back on Redis", Duration::from_secs(5), async || {
        replica.metric("switchyard_redis_up").await == Some(1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await; // Past a reload and a health check.
    for base in [&a, &b] {
        let (_, now) = admin(&c, reqwest::Method::GET, base, "/admin/blocks").await;
        assert_eq!(now["view"], "shared");
        assert_eq!(
            now["blocks"],
            json!([]),
            "the deleted block came back: {now}"
        );
    }
    c.mock.clear_hits();
    assert_eq!(c.chat(&b, "m").await.status(), 200);
    assert_eq!(c.mock.keys(), [key_of("primary")]);
}

/// libfaketime's preload for a replica whose wall clock is `offset` off
/// (its monotonic clock, which timers use, is left alone).
fn shifted_clock(offset: &str) -> Vec<(&'static str, String)> {
    let lib = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}/faketime/libfaketime.so.1"))
        .find(|p| std::path::Path::new(p).exists())
        .expect("libfaketime is installed (the test command installs it)");
    vec![
        ("LD_PRELOAD", lib),
        ("FAKETIME", offset.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ("FAKETIME_DONT_RESET", "1".into()),
        ("SWITCHYARD_MAX_RETRY_WAIT_MS", "0".into()),
    ]
}

/// Real replicas on clocks 20 s ahead and 20 s behind: a quota block lasts
/// what the provider said on both, and a success on the replica ahead does
/// not clear a block learned after its request started.
#[tokio::test]
async fn replicas_on_clocks_20_s_apart_share_blocks_correctly() {
    let mut c = Cluster::services().await;
    c.sql(&(two_credentials(&c) + &c.credential_sql("solo", 0, &[("s", "up-s")])))
        .await;
    for offset in ["+20s", "-20s"] {
        let env = shifted_clock(offset);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        c.add_replica(&env).await;
    }
    let (ahead, behind) = (c.replicas[0].url.clone(), c.replicas[1].url.clone());
    let retry_after = |r: &reqwest::Response| -> u64 {
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    for (writer, reader) in [(&behind, &ahead), (&ahead, &behind)] {
        c.mock.script(
            &key_of("solo"),
            [Reply::status_with(
                429,
                json!({"error": {"message": "slow down", "type": "rate_limit"}}),
                &[("retry-after", "3")],
            )],
        );
        let first = c.chat(writer, "s").await;
        assert_eq!(first.status(), 429);
        let r = c.chat(reader, "s").await;
        assert_eq!(r.status(), 429, "the other replica honours the block");
        let left = retry_after(&r);
        assert!((2..=3).contains(&left), "a 3 s block: Retry-After {left}");
        // Let it end before the other direction.
        tokio::time::sleep(Duration::from_millis(3_100)).await;
    }

    // A hint-less 429 leaves primary a quota ladder (so a success on it has
    // something to clear). Then a slow request on the replica ahead; meanwhile
    // the one behind learns a failure of the same pair; the slow one's
    // success resets the ladder but leaves that newer block.
    c.mock.script(
        &key_of("primary"),
        [
            Reply::status(429, json!({"error": {"message": "slow down"}})),
            Reply::Delay {
                ms: 1_500,
                then: Box::new(Reply::Ok),
            },
            Reply::status(500, json!({"error": {"message": "boom"}})),
        ],
    );
    assert_eq!(c.chat(&behind, "m").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_200)).await; // The 1 s quota block ends.
    assert_eq!(
        c.redis.cli(&["EXISTS", "switchyard:quota:primary:up-m"]),
        "1",
        "the ladder outlives its block"
    );
    c.mock.clear_hits();
    let slow = {
        let client = c.client.clone();
        let url = format!("{ahead}/v1/chat/completions");
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(common::CLIENT_KEY)
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let mock = &c.mock;
    common::eventually(
        "the slow request reached primary",
        Duration::from_secs(5),
        async || mock.keys().contains(&key_of("primary")),
    )
    .await;
    assert_eq!(c.chat(&behind, "m").await.status(), 200, "served by backup");
    assert_eq!(
        c.redis
            .cli(&["EXISTS", "switchyard:block:model:primary:up-m"]),
        "1"
    );
    assert_eq!(slow.await.unwrap(), 200);
    let redis = &c.redis;
    common::eventually(
        "the success reset the ladder",
        Duration::from_secs(2),
        async || redis.cli(&["EXISTS", "switchyard:quota:primary:up-m"]) == "0",
    )
    .await;
    assert_eq!(
        c.redis
            .cli(&["EXISTS", "switchyard:block:model:primary:up-m"]),
        "1",
        "a success that started before the block does not clear it"
    );
}
