//! The operator console (contract section 10) in a real headless Chromium:
//! sign-in and its cookie, a block a failing upstream caused lifted with the
//! button and both replicas selecting the credential again, usage that
//! requests just made in the charts' data, paging over a thousand
//! credentials and ten thousand keys, sign-out; and what a browser must
//! never be allowed: a wrong key, a change from another site, a secret in
//! the page. The screenshots it takes are the README's.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::cluster::{ADMIN_KEY, Cluster};
use common::mock::Reply;
use common::{CLIENT_KEY, Cred, Gateway, key_of};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Where the screenshots go: the repository's docs, for the README.
fn shot(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("console-{name}.png"))
}

async fn sign_in(b: &Browser, base: &str, key: &str) {
    b.goto(&format!("{base}/admin/ui")).await;
    b.wait_for("#signin-view:not([hidden]) #key", WAIT).await;
    b.type_into("#key", key).await;
    b.click("#signin-button").await;
}

/// Two replicas over one Postgres and Redis; `bad` (preferred) and `good`
/// serve `m`.
async fn cluster() -> Cluster {
    let mut c = Cluster::services().await;
    c.sql(&c.credential_sql("bad", 1, &[("m", "up-m")])).await;
    c.sql(&c.credential_sql("good", 0, &[("m", "up-m")])).await;
    c.sql("insert into model_prices (model, input_usd_per_mtok, output_usd_per_mtok) values ('m', 3000, 15000)")
        .await;
    c.sql("update api_keys set rpm_limit = 600, budget_usd = 2 where name = 'tester'")
        .await;
    c.add_replica(&[]).await;
    c.add_replica(&[]).await;
    c
}

/// The upstream keys the mock saw for requests made to each replica in turn.
async fn who_serves(c: &Cluster) -> Vec<String> {
    c.mock.clear_hits();
    for r in &c.replicas {
        assert_eq!(c.chat(&r.url, "m").await.status(), 200);
    }
    c.mock.keys()
}

#[tokio::test]
async fn an_operator_signs_in_lifts_a_block_sees_usage_and_signs_out() {
    let c = cluster().await;
    let (a, b_url) = (&c.replicas[0].url, &c.replicas[1].url);
    // A failing upstream: the first request blocks `bad` for up-m and is
    // served by `good`.
    c.mock.always(
        &key_of("bad"),
        Reply::Status {
            status: 500,
            body: r#"{"error":{"message":"the upstream broke"}}"#.into(),
            headers: vec![],
        },
    );
    assert_eq!(c.chat(a, "m").await.status(), 200);
    c.mock.always(&key_of("bad"), Reply::Ok);
    assert_eq!(
        who_serves(&c).await,
        [key_of("good"), key_of("good")],
        "blocked on both replicas"
    );

    let b = Browser::start().await;
    sign_in(&b, a, ADMIN_KEY).await;
    b.wait_for("#app:not([hidden])", WAIT).await;
    // The session cookie: HttpOnly, SameSite=Strict, and it expires.
    let cookies = b.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "switchyard_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    let expiry = session["expiry"].as_f64().expect("a cookie that expires");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now && expiry < now + 86_400.0, "{session}");
    // The key is not kept in the page or its storage.
    let kept = b
        .run(
            "return document.querySelector('#key').value + JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie",
            vec![],
        )
        .await;
    assert!(!kept.as_str().unwrap().contains(ADMIN_KEY), "{kept}");

    // Usage that the requests just made, on both replicas (the other's
    // reach Postgres within its batch interval).
    b.wait_until_text("#total-requests", "3", WAIT).await;
    b.wait_until_text("#usage-table tr[data-group=tester] .requests", "3", WAIT)
        .await;
    let charted = b
        .run(
            "return document.querySelector('#chart-requests').dataset.total",
            vec![],
        )
        .await;
    assert_eq!(charted, "3", "the chart's bars add up to the requests");
    b.screenshot(&shot("usage")).await;

    // The block, with its reason and message, and the button that lifts it.
    b.click(".tabs button[data-view=credentials]").await;
    b.wait_until_text("tr[data-credential=bad] .blocks", "upstream error", WAIT)
        .await;
    assert!(
        b.text("tr[data-credential=bad] .blocks")
            .await
            .contains("the upstream broke")
    );
    b.wait_until_text("tr[data-credential=good] .blocks", "serving", WAIT)
        .await;
    b.screenshot(&shot("credentials")).await;
    b.click("tr[data-credential=bad] button.lift").await;
    b.wait_until_text("tr[data-credential=bad] .blocks", "serving", WAIT)
        .await;
    common::eventually("both replicas select bad again", WAIT, async || {
        who_serves(&c).await == [key_of("bad"), key_of("bad")]
    })
    .await;

    // Models, keys, replicas: both replicas listed, with their health.
    b.click(".tabs button[data-view=models]").await;
    b.wait_until_text("tr[data-model=m]", "bad", WAIT).await;
    b.click(".tabs button[data-view=keys]").await;
    b.wait_until_text("tr[data-key=tester]", "% spent", WAIT)
        .await;
    let rpm = b.text("tr[data-key=tester] .rpm").await;
    assert!(
        rpm.contains("/ 600") && rpm.contains("this minute"),
        "{rpm}"
    );
    b.screenshot(&shot("keys")).await;
    b.click(".tabs button[data-view=replicas]").await;
    b.wait_until_text("tr[data-replica=replica-2]", "healthy", WAIT)
        .await;
    assert!(b.text("tr[data-replica=replica-1]").await.contains("up"));
    b.screenshot(&shot("replicas")).await;

    // The same session holds on the other replica: the cookie is checked
    // there with nothing shared but the admin key.
    let cookie = format!("switchyard_session={}", session["value"].as_str().unwrap());
    let r = c
        .client
        .get(format!("{b_url}/admin/blocks"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Sign out: the sign-in form again, and the cookie is gone.
    b.click("#signout").await;
    b.wait_for("#signin-view:not([hidden])", WAIT).await;
    assert!(
        b.cookies()
            .await
            .iter()
            .all(|c| c["name"] != "switchyard_session")
    );
    b.goto(&format!("{a}/admin/ui")).await;
    b.wait_for("#signin-view:not([hidden])", WAIT).await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_with_a_clear_message_after_a_delay() {
    let gw = embedded().await;
    let b = Browser::start().await;
    let started = Instant::now();
    sign_in(&b, &gw.url, "sk-not-the-admin-key").await;
    b.wait_until_text("#signin-error", "not the admin key", WAIT)
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "a wrong key waits a second for its answer"
    );
    assert!(b.find("#app:not([hidden])").await.is_none());
    assert!(
        b.cookies()
            .await
            .iter()
            .all(|c| c["name"] != "switchyard_session")
    );
    b.screenshot(&shot("sign-in")).await;
    // The admin routes stay shut without a session.
    let r = gw
        .client
        .get(format!("{}/admin/credentials", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// A session cookie and its token, signed in with the API as a browser would.
async fn session_of(client: &reqwest::Client, base: &str) -> (String, String) {
    let r = client
        .post(format!("{base}/admin/ui/session"))
        .header("sec-fetch-site", "same-origin")
        .json(&serde_json::json!({"key": ADMIN_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Max-Age=", "Path=/admin"] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    (cookie, token)
}

#[tokio::test]
async fn changes_from_another_site_or_without_the_token_are_refused() {
    let c = cluster().await;
    let a = &c.replicas[0].url;
    c.mock.always(
        &key_of("bad"),
        Reply::Status {
            status: 500,
            body: "{}".into(),
            headers: vec![],
        },
    );
    assert_eq!(c.chat(a, "m").await.status(), 200);
    let (cookie, token) = session_of(&c.client, a).await;
    let lift = format!("{a}/admin/blocks/bad/up-m");
    // A form on another site posting the admin key, by Origin or by fetch metadata.
    for (name, value) in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let r = c
            .client
            .post(format!("{a}/admin/ui/session"))
            .header(name, value)
            .form(&[("key", ADMIN_KEY)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{name}");
        assert!(r.headers().get("set-cookie").is_none());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    // The cookie alone does not lift a block; nor does the token from
    // another site, nor a wrong token.
    let wrong = "0".repeat(64);
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![
            ("cookie", cookie.as_str()),
            ("x-switchyard-token", token.as_str()),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![
            ("cookie", cookie.as_str()),
            ("x-switchyard-token", wrong.as_str()),
        ],
    ] {
        let mut request = c.client.delete(&lift);
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        assert_eq!(request.send().await.unwrap().status(), 403, "{headers:?}");
    }
    // Still blocked on both replicas.
    c.mock.always(&key_of("bad"), Reply::Ok);
    assert_eq!(who_serves(&c).await, [key_of("good"), key_of("good")]);
    // From this site with the token, on the other replica: lifted.
    let r = c
        .client
        .delete(format!("{}/admin/blocks/bad/up-m", c.replicas[1].url))
        .header("cookie", &cookie)
        .header("x-switchyard-token", &token)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A forged or expired cookie is no session.
    let forged = cookie.replacen("v1.", "v1.9", 1);
    let r = c
        .client
        .get(format!("{a}/admin/credentials"))
        .header("cookie", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn no_secret_reaches_the_page_or_its_data() {
    let c = cluster().await;
    let a = &c.replicas[0].url;
    c.sql("insert into credentials (id, provider, base_url, api_key, headers) values ('hdr', 'openai', 'http://127.0.0.1:9', 'sk-upstream-in-a-header-cred', '{\"x-extra-secret\": \"hdr-secret-value-123\"}')").await;
    c.sql("insert into credential_models (credential_id, model, upstream_model) values ('hdr', 'm2', 'm2')").await;
    c.sql("update api_keys set rpm_limit = 100, budget_usd = 5 where name = 'tester'")
        .await;
    c.every_replica_lists(&["m", "m2"], WAIT).await;
    assert_eq!(c.chat(a, "m").await.status(), 200);
    let b = Browser::start().await;
    sign_in(&b, a, ADMIN_KEY).await;
    b.wait_for("#app:not([hidden])", WAIT).await;
    let mut seen = Vec::new();
    for view in ["overview", "credentials", "models", "keys", "replicas"] {
        b.click(&format!(".tabs button[data-view={view}]")).await;
        b.wait_for(&format!("#view-{view}:not([hidden]) tbody tr"), WAIT)
            .await;
        if view == "keys" {
            b.wait_until_text("tr[data-key=tester] .spent", "$", WAIT)
                .await;
        }
        seen.push(b.page_source().await);
    }
    let (cookie, _) = session_of(&c.client, a).await;
    for path in [
        "/admin/ui",
        "/admin/ui/app.js",
        "/admin/credentials",
        "/admin/credentials?q=hdr",
        "/admin/blocks",
        "/admin/models",
        "/admin/keys",
        "/admin/replicas",
        "/admin/usage",
        "/admin/usage/series?range=1h",
    ] {
        let r = c
            .client
            .get(format!("{a}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        seen.push(r.text().await.unwrap());
    }
    let secrets = [
        ADMIN_KEY.to_string(),
        CLIENT_KEY.to_string(),
        switchyard::catalog::hash_key(CLIENT_KEY),
        key_of("bad"),
        key_of("good"),
        "sk-upstream-in-a-header-cred".to_string(),
        "hdr-secret-value-123".to_string(),
    ];
    for text in &seen {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{s} shown");
        }
    }
}

#[tokio::test]
async fn a_thousand_credentials_and_ten_thousand_keys_are_paged_and_searched() {
    let mut c = Cluster::services().await;
    c.sql(&format!(
        "insert into credentials (id, provider, base_url, api_key) \
         select 'cred-' || lpad(i::text, 4, '0'), 'openai', '{}', 'sk-bulk-' || i from generate_series(1, 1000) i;
         insert into credential_models (credential_id, model, upstream_model) \
         select 'cred-' || lpad(i::text, 4, '0'), 'model-' || (i % 100), 'up' from generate_series(1, 1000) i;
         insert into api_keys (name, key_hash, rpm_limit) \
         select 'key-' || lpad(i::text, 5, '0'), encode(sha256(i::text::bytea), 'hex'), 60 from generate_series(1, 10000) i;",
        c.mock.base_url()
    ))
    .await;
    c.add_replica(&[]).await;
    let a = c.replicas[0].url.clone();
    let b = Browser::start().await;
    sign_in(&b, &a, ADMIN_KEY).await;
    b.wait_for("#app:not([hidden])", WAIT).await;
    b.click(".tabs button[data-view=keys]").await;
    b.wait_until_text(".pager[data-list=keys] .count", "of 10,001", WAIT)
        .await;
    assert_eq!(
        b.run(
            "return document.querySelectorAll('#keys-table tbody tr').length",
            vec![]
        )
        .await,
        50
    );
    b.click(".pager[data-list=keys] .next").await;
    b.wait_until_text(".pager[data-list=keys] .count", "51–100", WAIT)
        .await;
    b.type_into("#keys-search", "key-09999").await;
    b.wait_until_text(".pager[data-list=keys] .count", "1–1 of 1", WAIT)
        .await;
    assert!(b.text("#keys-table tbody").await.contains("key-09999"));

    b.click(".tabs button[data-view=credentials]").await;
    b.wait_until_text(".pager[data-list=credentials] .count", "of 1,000", WAIT)
        .await;
    b.type_into("#credentials-search", "cred-0777").await;
    b.wait_until_text(".pager[data-list=credentials] .count", "1–1 of 1", WAIT)
        .await;
    b.wait_for("tr[data-credential=cred-0777]", WAIT).await;
    b.click(".tabs button[data-view=models]").await;
    b.wait_until_text(".pager[data-list=models] .count", "of 100", WAIT)
        .await;

    // On a phone's screen: one column, the tables scroll sideways.
    b.set_window(390, 844).await;
    b.click(".tabs button[data-view=overview]").await;
    b.wait_for("#view-overview:not([hidden])", WAIT).await;
    let width = b
        .run(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            vec![],
        )
        .await;
    assert_eq!(width, true, "nothing wider than the phone's screen");
    b.screenshot(&shot("phone")).await;
}

#[tokio::test]
async fn a_replica_that_loses_redis_shows_as_degraded() {
    let mut c = Cluster::services().await;
    c.sql(&c.credential_sql("only", 0, &[("m", "up-m")])).await;
    c.add_replica(&[]).await;
    c.add_replica(&[]).await;
    let a = c.replicas[0].url.clone();
    let b = Browser::start().await;
    sign_in(&b, &a, ADMIN_KEY).await;
    b.wait_for("#app:not([hidden])", WAIT).await;
    b.click(".tabs button[data-view=replicas]").await;
    b.wait_until_text("tr[data-replica=replica-2]", "healthy", WAIT)
        .await;
    b.wait_until_text("#summary", "2 replicas, all healthy", WAIT)
        .await;
    c.redis.kill();
    // This replica's own row says why; the others are out of its sight.
    b.wait_until_text(
        "tr[data-replica=replica-1]",
        "degraded",
        Duration::from_secs(20),
    )
    .await;
    assert!(b.text("tr[data-replica=replica-1]").await.contains("down"));
    assert!(
        b.text("#replicas-note")
            .await
            .contains("Redis does not answer")
    );
    assert!(b.text("#summary").await.contains("1 degraded"));
    b.screenshot(&shot("degraded")).await;
}

async fn embedded() -> Gateway {
    common::gateway(
        &[
            Cred::new("solo", 0, &[("m", "up-m")]),
            Cred::new("quota", 0, &[("q", "up-q")]),
        ],
        &[("SWITCHYARD_ADMIN_KEY", ADMIN_KEY)],
    )
    .await
}

#[tokio::test]
async fn the_console_works_in_embedded_mode() {
    let gw = embedded().await;
    for _ in 0..3 {
        assert_eq!(gw.chat("m").await.status(), 200);
    }
    gw.mock.always(
        &key_of("solo"),
        Reply::Status {
            status: 500,
            body: "{}".into(),
            headers: vec![],
        },
    );
    assert_ne!(gw.chat("m").await.status(), 200);
    let b = Browser::start().await;
    sign_in(&b, &gw.url, ADMIN_KEY).await;
    b.wait_for("#app:not([hidden])", WAIT).await;
    b.wait_until_text("#total-requests", "4", WAIT).await;
    b.wait_until_text("#total-errors", "1", WAIT).await;
    b.click(".tabs button[data-view=credentials]").await;
    b.wait_until_text("tr[data-credential=solo] .blocks", "upstream error", WAIT)
        .await;
    b.click("tr[data-credential=solo] button.lift").await;
    b.wait_until_text("tr[data-credential=solo] .blocks", "serving", WAIT)
        .await;
    gw.mock.always(&key_of("solo"), Reply::Ok);
    assert_eq!(gw.chat("m").await.status(), 200);
    // A 429 without Retry-After: the pair's quota block and the first step
    // of its backoff.
    gw.mock.always(
        &key_of("quota"),
        Reply::Status {
            status: 429,
            body: r#"{"error":{"message":"slow down"}}"#.into(),
            headers: vec![],
        },
    );
    assert_ne!(gw.chat("q").await.status(), 200);
    b.wait_until_text(
        "tr[data-credential=quota] .blocks",
        "rate-limit backoff, step",
        WAIT,
    )
    .await;
    assert!(
        b.text("tr[data-credential=quota] .blocks")
            .await
            .contains("quota")
    );
    b.click(".tabs button[data-view=replicas]").await;
    b.wait_until_text("#replicas-table tbody", "embedded", WAIT)
        .await;
    assert!(b.text("#replicas-note").await.contains("only one"));
}
