//! The learned-state contract, one suite for every store implementation.
//! Times are real (stores such as Redis keep their own clock), so blocks here
//! are short.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::sync::Arc;
use std::time::Duration;

use switchyard::clock::{Clock, SystemClock};
use switchyard::state::{Block, LearnedStore, QuotaHit, Reason, Scope};

fn now() -> i64 {
    SystemClock.now_ms()
}

fn block(reason: Reason, length_ms: i64, message: &str) -> Block {
    let now = now();
    Block {
        reason,
        status: 500,
        message: message.into(),
        replica: "r1".into(),
        since_ms: now,
        until_ms: now + length_ms,
    }
}

fn hit(hint_ms: Option<u64>) -> QuotaHit {
    QuotaHit {
        status: 429,
        message: "quota".into(),
        replica: "r1".into(),
        now_ms: now(),
        hint_ms,
        base_ms: 200,
        cap_ms: 60_000,
    }
}

fn pair(n: &str) -> Scope {
    Scope::pair("cred", n)
}

/// The same block, times within a few milliseconds: a store may keep them on
/// a clock of its own (Redis' `TIME`) and hand them back on the caller's
/// through the key's TTL.
#[track_caller]
fn assert_same(got: Option<&Block>, want: &Block) {
    let got = got.unwrap_or_else(|| panic!("no block where {want:?} was expected"));
    assert_eq!(
        (got.reason, got.status, &got.message, &got.replica),
        (want.reason, want.status, &want.message, &want.replica),
        "{got:?} is not {want:?}"
    );
    for (g, w) in [(got.since_ms, want.since_ms), (got.until_ms, want.until_ms)] {
        assert!((g - w).abs() <= 20, "{got:?} is not {want:?}");
    }
}

fn listed(all: &[(Scope, Block)], scope: &Scope) -> Option<Block> {
    all.iter().find(|(s, _)| s == scope).map(|(_, b)| b.clone())
}

pub async fn put_then_get_in_order(store: Arc<dyn LearnedStore>) {
    let b = block(Reason::UpstreamError, 10_000, "boom");
    store.put(&pair("a"), b.clone()).await.unwrap();
    let got = store
        .get(&[Scope::credential("cred"), pair("a"), pair("b")])
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    assert!(got[0].is_none() && got[2].is_none(), "{got:?}");
    assert_same(got[1].as_ref(), &b);
}

pub async fn a_block_is_extended_never_shortened(store: Arc<dyn LearnedStore>) {
    let long = block(Reason::ModelNotSupported, 10_000, "long");
    store.put(&pair("a"), long.clone()).await.unwrap();
    let stands = store
        .put(&pair("a"), block(Reason::UpstreamError, 1_000, "short"))
        .await
        .unwrap();
    assert_same(Some(&stands), &long);
    assert_same(store.get(&[pair("a")]).await.unwrap()[0].as_ref(), &long);
    let longer = block(Reason::Forbidden, 20_000, "longer");
    assert_same(
        Some(&store.put(&pair("a"), longer.clone()).await.unwrap()),
        &longer,
    );
    assert_same(store.get(&[pair("a")]).await.unwrap()[0].as_ref(), &longer);
}

pub async fn an_expired_block_no_longer_blocks(store: Arc<dyn LearnedStore>) {
    store
        .put(&pair("a"), block(Reason::UpstreamError, 150, "brief"))
        .await
        .unwrap();
    assert!(store.get(&[pair("a")]).await.unwrap()[0].is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.get(&[pair("a")]).await.unwrap()[0].is_none());
    assert!(store.list().await.unwrap().is_empty());
}

pub async fn the_quota_ladder_climbs_only_outside_an_open_block(store: Arc<dyn LearnedStore>) {
    let first = store.quota(&pair("a"), hit(None)).await.unwrap();
    assert_eq!(first.reason, Reason::Quota);
    assert!(
        (first.until_ms - first.since_ms - 200).abs() <= 5,
        "{first:?}"
    );
    assert_eq!(store.quota_level(&pair("a")).await.unwrap(), 1);
    // Inside the open block: no climb, the block stands.
    let again = store.quota(&pair("a"), hit(None)).await.unwrap();
    assert_same(Some(&again), &first);
    assert_eq!(store.quota_level(&pair("a")).await.unwrap(), 1);
    // After it ends, the next 429 climbs: the level outlived its block.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.get(&[pair("a")]).await.unwrap()[0].is_none());
    assert_eq!(store.quota_level(&pair("a")).await.unwrap(), 1);
    let second = store.quota(&pair("a"), hit(None)).await.unwrap();
    assert!(
        (second.until_ms - second.since_ms - 400).abs() <= 5,
        "{second:?}"
    );
    assert_eq!(store.quota_level(&pair("a")).await.unwrap(), 2);
}

pub async fn a_quota_hint_only_lengthens(store: Arc<dyn LearnedStore>) {
    let hinted = store.quota(&pair("a"), hit(Some(5_000))).await.unwrap();
    assert!((hinted.until_ms - hinted.since_ms - 5_000).abs() <= 5);
    let shorter = store.quota(&pair("a"), hit(Some(1_000))).await.unwrap();
    assert!((shorter.until_ms - hinted.until_ms).abs() <= 20);
    let longer = store.quota(&pair("a"), hit(Some(9_000))).await.unwrap();
    assert!(longer.until_ms > hinted.until_ms);
}

pub async fn a_hinted_429_does_not_climb_the_ladder_and_a_huge_hint_is_capped(
    store: Arc<dyn LearnedStore>,
) {
    store.quota(&pair("a"), hit(Some(1_000))).await.unwrap();
    assert_eq!(
        store.quota_level(&pair("a")).await.unwrap(),
        0,
        "only hint-less 429s climb"
    );
    let huge = store
        .quota(&pair("b"), hit(Some(u64::MAX / 2)))
        .await
        .unwrap();
    let day = 24 * 3_600_000;
    assert!(huge.until_ms - huge.since_ms <= day, "{huge:?}");
    assert!(huge.until_ms - huge.since_ms >= day - 5, "{huge:?}");
    assert!(
        store.get(&[pair("b")]).await.unwrap()[0].is_some(),
        "written, not refused"
    );
}

pub async fn conversation_affinity_lives_for_its_ttl(store: Arc<dyn LearnedStore>) {
    let to = switchyard::state::Affinity {
        credential_id: "a".into(),
        upstream_model: "m/x:y".into(),
    };
    assert_eq!(store.affinity("k").await.unwrap(), None);
    store.set_affinity("k", &to, 300).await.unwrap();
    assert_eq!(store.affinity("k").await.unwrap(), Some(to));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.affinity("k").await.unwrap(), None);
}

pub async fn a_quota_never_shortens_a_longer_block(store: Arc<dyn LearnedStore>) {
    let outage = block(Reason::UpstreamError, 60_000, "down");
    store.put(&pair("a"), outage.clone()).await.unwrap();
    assert_same(
        Some(&store.quota(&pair("a"), hit(None)).await.unwrap()),
        &outage,
    );
}

pub async fn a_success_clears_only_blocks_older_than_its_request(store: Arc<dyn LearnedStore>) {
    let before = now() - 50;
    let b = block(Reason::UpstreamError, 10_000, "boom");
    store.put(&pair("a"), b.clone()).await.unwrap();
    // A request that started before the block was written leaves it in place.
    store.succeed(&pair("a"), before).await.unwrap();
    assert_same(store.get(&[pair("a")]).await.unwrap()[0].as_ref(), &b);
    // One that started after it clears it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.succeed(&pair("a"), now()).await.unwrap();
    assert!(store.get(&[pair("a")]).await.unwrap()[0].is_none());
}

pub async fn a_success_resets_the_ladder_and_spares_credential_blocks(
    store: Arc<dyn LearnedStore>,
) {
    store.quota(&pair("a"), hit(None)).await.unwrap();
    let cred = block(Reason::Unauthorized, 10_000, "bad key");
    store
        .put(&Scope::credential("cred"), cred.clone())
        .await
        .unwrap();
    store.succeed(&pair("a"), now() + 1).await.unwrap();
    assert_eq!(store.quota_level(&pair("a")).await.unwrap(), 0);
    assert_same(
        store.get(&[Scope::credential("cred")]).await.unwrap()[0].as_ref(),
        &cred,
    );
}

pub async fn remove_and_list(store: Arc<dyn LearnedStore>) {
    let c = block(Reason::Unauthorized, 10_000, "c");
    let p = block(Reason::NotFound, 10_000, "p");
    store
        .put(&Scope::credential("cred"), c.clone())
        .await
        .unwrap();
    store.put(&pair("x"), p.clone()).await.unwrap();
    let all = store.list().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_same(listed(&all, &Scope::credential("cred")).as_ref(), &c);
    assert_same(listed(&all, &pair("x")).as_ref(), &p);
    assert!(store.remove(&pair("x")).await.unwrap());
    assert!(!store.remove(&pair("x")).await.unwrap());
    assert!(store.get(&[pair("x")]).await.unwrap()[0].is_none());
}

pub async fn withdraw_removes_only_the_block_the_request_wrote(store: Arc<dyn LearnedStore>) {
    let ours = block(Reason::NotFound, 10_000, "The model does not exist");
    store.put(&pair("a"), ours.clone()).await.unwrap();
    // Another verdict, or another replica's, is not ours to withdraw.
    for other in [
        Block {
            message: "another message".into(),
            ..ours.clone()
        },
        Block {
            reason: Reason::Forbidden,
            ..ours.clone()
        },
        Block {
            status: 404,
            ..ours.clone()
        },
        Block {
            replica: "r2".into(),
            ..ours.clone()
        },
    ] {
        assert!(!store.withdraw(&pair("a"), &other).await.unwrap());
        assert!(store.get(&[pair("a")]).await.unwrap()[0].is_some());
    }
    // Times are not compared: a store may stamp them itself.
    let restamped = Block {
        since_ms: ours.since_ms - 5,
        until_ms: ours.until_ms + 5,
        ..ours.clone()
    };
    assert!(store.withdraw(&pair("a"), &restamped).await.unwrap());
    assert!(store.get(&[pair("a")]).await.unwrap()[0].is_none());
    assert!(!store.withdraw(&pair("a"), &ours).await.unwrap());
    // A longer block written over ours since then stands.
    store.put(&pair("b"), ours.clone()).await.unwrap();
    let longer = block(Reason::UpstreamError, 20_000, "down");
    store.put(&pair("b"), longer.clone()).await.unwrap();
    assert!(!store.withdraw(&pair("b"), &ours).await.unwrap());
    // The same verdict, whichever clock stamped it.
    let standing = store.get(&[pair("b")]).await.unwrap()[0].clone().unwrap();
    assert!(standing.same_verdict(&longer), "{standing:?}");
    assert_eq!(
        standing.until_ms - standing.since_ms,
        longer.until_ms - longer.since_ms
    );
    assert!(
        store
            .list()
            .await
            .unwrap()
            .iter()
            .all(|(s, _)| *s != pair("a"))
    );
}

/// Runs every contract against the stores `$make` builds (one fresh store per test).
macro_rules! contract_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            contract_suite!(@each $make;
                put_then_get_in_order,
                a_block_is_extended_never_shortened,
                an_expired_block_no_longer_blocks,
                the_quota_ladder_climbs_only_outside_an_open_block,
                a_quota_hint_only_lengthens,
                a_hinted_429_does_not_climb_the_ladder_and_a_huge_hint_is_capped,
                conversation_affinity_lives_for_its_ttl,
                a_quota_never_shortens_a_longer_block,
                a_success_clears_only_blocks_older_than_its_request,
                a_success_resets_the_ladder_and_spares_credential_blocks,
                remove_and_list,
                withdraw_removes_only_the_block_the_request_wrote,
            );
        }
    };
    (@each $make:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                let (store, _server) = $make().await;
                super::$test(store).await;
            }
        )*
    };
}

type Guard = Box<dyn std::any::Any + Send>;

async fn memory() -> (Arc<dyn LearnedStore>, Guard) {
    let store = switchyard::state::MemoryStore::new(Arc::new(SystemClock));
    (Arc::new(store), Box::new(()))
}

/// A Redis store on a Redis server of the test's own.
async fn redis() -> (Arc<dyn LearnedStore>, Guard) {
    let server = common::services::RedisServer::start();
    let store = switchyard::state::RedisStore::connect(
        &server.url(),
        "contract:",
        Duration::from_millis(250),
        "r1",
        Arc::new(SystemClock),
        Arc::new(switchyard::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    assert!(store.is_connected());
    (Arc::new(store), Box::new(server))
}

contract_suite!(memory_store, memory);
contract_suite!(redis_store, redis);

/// Compose's Redis (its own `command:` arguments) keeps a 12 h block through
/// a restart, even a SIGKILL a second after the write.
#[tokio::test]
async fn a_redis_run_as_compose_runs_it_keeps_a_long_block_through_a_restart() {
    let mut server = common::services::RedisServer::as_in_compose();
    let connect = |url: String| async move {
        switchyard::state::RedisStore::connect(
            &url,
            "compose:",
            Duration::from_millis(250),
            "r1",
            Arc::new(SystemClock),
            Arc::new(switchyard::metrics::Metrics::new()),
        )
        .await
        .unwrap()
    };
    let store = connect(server.url()).await;
    let twelve_hours = 12 * 3_600_000;
    store
        .put(
            &pair("kept"),
            block(Reason::ModelNotSupported, twelve_hours, "no such model"),
        )
        .await
        .unwrap();
    // The append-only file is synced every second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.restart();
    let store = connect(server.url()).await;
    let after = store.get(&[pair("kept")]).await.unwrap()[0].clone();
    let after = after.expect("the block survived the restart");
    assert_eq!(after.reason, Reason::ModelNotSupported);
    assert!(after.until_ms - SystemClock.now_ms() > twelve_hours - 60_000);
}
