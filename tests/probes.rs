//! One probe after a block: when a block of 60 s or longer ends, exactly one
//! request cluster-wide tries the pair; the others use the rest of its tier
//! or wait for the probe's answer, never a lower tier. Two replicas of the
//! real binary, their own Postgres and Redis, a mock upstream.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
#![allow(clippy::disallowed_methods)] // A test owns and awaits what it spawns.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{CLIENT_KEY, Reply, key_of};
use serde_json::json;

const BLOCK: &str = "switchyard:block:model:a:up-m";
const PROBATION: &str = "switchyard:probation:model:a:up-m";
const CLAIM: &str = "switchyard:probe:model:a:up-m";

/// Two replicas over credentials `a` and `b` (the top tier, round-robin) and
/// `c` below them; `a` learns a 60 s block, which then ends.
async fn cluster(with_b: bool, env: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::services().await;
    let mut seed =
        c.credential_sql("a", 1, &[("m", "up-m")]) + &c.credential_sql("c", 0, &[("m", "up-m")]);
    if with_b {
        seed += &c.credential_sql("b", 1, &[("m", "up-m")]);
    }
    c.sql(&seed).await;
    for _ in 0..2 {
        c.add_replica(env).await;
    }
    // `a` fails once: blocked for 60 s, and on probation past it.
    c.mock.script(
        &key_of("a"),
        [Reply::status(503, json!({"error": {"message": "down"}}))],
    );
    let a = c.replicas[0].url.clone();
    let mock = &c.mock;
    common::eventually("a has failed", Duration::from_secs(5), async || {
        assert_eq!(c.chat(&a, "m").await.status(), 200);
        mock.keys().contains(&key_of("a"))
    })
    .await;
    assert_eq!(c.redis.cli(&["EXISTS", BLOCK]), "1");
    let probation: i64 = c.redis.cli(&["PTTL", PROBATION]).parse().unwrap();
    assert!(
        probation > 60_000,
        "on probation past the block: {probation} ms"
    );
    // The block ends (its TTL runs out); every replica's view follows.
    assert_eq!(c.redis.cli(&["PEXPIRE", BLOCK, "1"]), "1");
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.mock.clear_hits();
    c
}

/// `a`'s next answer takes `ms`: a probe in flight that long.
fn answers_after(c: &Cluster, ms: u64) {
    let reply = Reply::Delay {
        ms,
        then: Box::new(Reply::Ok),
    };
    c.mock.script(&key_of("a"), [reply]);
}

fn hits(c: &Cluster, id: &str) -> usize {
    c.mock.keys().iter().filter(|k| **k == key_of(id)).count()
}

async fn chat_status(client: reqwest::Client, base: String) -> u16 {
    client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `n` concurrent requests, alternating between the replicas: all answered.
async fn all_answered(c: &Cluster, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let base = c.replicas[i % 2].url.clone();
            tokio::spawn(chat_status(c.client.clone(), base))
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn when_a_block_ends_exactly_one_request_probes_the_pair_across_both_replicas() {
    let c = cluster(true, &[]).await;
    answers_after(&c, 1_500);
    all_answered(&c, 12).await;
    assert_eq!(hits(&c, "a"), 1, "one probe, cluster-wide");
    assert_eq!(hits(&c, "b"), 11, "the rest of the tier served the others");
    assert_eq!(hits(&c, "c"), 0, "no lower tier while a probe runs");
    let probes = c.replicas[0]
        .metric("switchyard_probes_total")
        .await
        .unwrap()
        + c.replicas[1]
            .metric("switchyard_probes_total")
            .await
            .unwrap();
    assert_eq!(probes, 1.0);
    // The probe served: the pair is an ordinary candidate again.
    assert_eq!(c.redis.cli(&["EXISTS", PROBATION]), "0");
    assert_eq!(c.redis.cli(&["EXISTS", CLAIM]), "0");
    c.mock.clear_hits();
    for i in 0..4 {
        assert_eq!(c.chat(&c.replicas[i % 2].url, "m").await.status(), 200);
    }
    assert!(hits(&c, "a") >= 1, "a is in the rotation again");
}

#[tokio::test]
async fn a_tier_whose_last_candidate_is_probed_waits_for_the_probe_not_a_lower_tier() {
    let c = cluster(false, &[]).await;
    answers_after(&c, 1_000);
    all_answered(&c, 6).await;
    assert_eq!(hits(&c, "c"), 0, "the lower tier got nothing");
    assert_eq!(
        hits(&c, "a"),
        6,
        "one probe, then the others once it served"
    );
    let waits = c.replicas[0]
        .metric("switchyard_probe_holds_total")
        .await
        .unwrap()
        + c.replicas[1]
            .metric("switchyard_probe_holds_total")
            .await
            .unwrap();
    assert!(waits >= 1.0, "requests waited for the probe: {waits}");
}

/// Sends requests to `base` until one of them is the probe of `a` (it hangs
/// there), each with its own client `timeout`; returns the hanging one.
async fn start_probe(c: &Cluster, base: &str, timeout: Duration) -> tokio::task::JoinHandle<()> {
    for _ in 0..20 {
        let client = reqwest::Client::builder().timeout(timeout).build().unwrap();
        let url = format!("{base}/v1/chat/completions");
        let task = tokio::spawn(async move {
            let _ = client
                .post(url)
                .bearer_auth(CLIENT_KEY)
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await;
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        if c.mock.keys().contains(&key_of("a")) {
            return task;
        }
        task.await.unwrap();
    }
    panic!("no request probed a");
}

#[tokio::test]
async fn a_probe_whose_replica_dies_is_released_by_its_ttl() {
    let mut c = cluster(true, &[("SWITCHYARD_PROBE_TTL_MS", "2000")]).await;
    answers_after(&c, 30_000);
    let a = c.replicas[0].url.clone();
    let b = c.replicas[1].url.clone();
    let _hanging = start_probe(&c, &a, Duration::from_secs(60)).await;
    assert_eq!(c.redis.cli(&["EXISTS", CLAIM]), "1");
    c.replicas[0].child.kill().await.unwrap();
    // While the dead replica's claim lives, the other replica leaves a alone.
    c.mock.clear_hits();
    for _ in 0..4 {
        assert_eq!(c.chat(&b, "m").await.status(), 200);
    }
    assert_eq!(
        hits(&c, "a"),
        0,
        "still claimed by the dead replica's probe"
    );
    // Its TTL ends the claim: the next request probes, and a serves again.
    let mock = &c.mock;
    common::eventually(
        "B probes a once the claim lapsed",
        Duration::from_secs(5),
        async || {
            assert_eq!(c.chat(&b, "m").await.status(), 200);
            mock.keys().contains(&key_of("a"))
        },
    )
    .await;
    assert_eq!(c.redis.cli(&["EXISTS", PROBATION]), "0");
}

#[tokio::test]
async fn a_probe_whose_client_leaves_releases_its_claim() {
    // A claim that would outlive the test: only a release can end it.
    let c = cluster(true, &[("SWITCHYARD_PROBE_TTL_MS", "600000")]).await;
    answers_after(&c, 30_000);
    let a = c.replicas[0].url.clone();
    let b = c.replicas[1].url.clone();
    let leaving = start_probe(&c, &a, Duration::from_millis(400)).await;
    leaving.await.unwrap(); // The client gave up and closed its connection.
    let redis = &c.redis;
    common::eventually(
        "the claim is given back",
        Duration::from_secs(3),
        async || redis.cli(&["EXISTS", CLAIM]) == "0",
    )
    .await;
    assert_eq!(
        c.redis.cli(&["EXISTS", PROBATION]),
        "1",
        "a still owes its probe"
    );
    c.mock.clear_hits();
    let mock = &c.mock;
    common::eventually(
        "another request probes a",
        Duration::from_secs(5),
        async || {
            assert_eq!(c.chat(&b, "m").await.status(), 200);
            mock.keys().contains(&key_of("a"))
        },
    )
    .await;
}
