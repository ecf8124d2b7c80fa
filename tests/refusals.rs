//! What one request's refusals teach, as a client sees it: errors about the
//! request (an image sent to a text-only model, a tool the model's answer
//! lacks, a value the client sent echoed back) block nothing; a genuine
//! model-support failure still blocks for 12 h; and a request every candidate
//! refuses the same way gets the upstream's error while the blocks it wrote
//! are lifted (in Redis too, for every replica), unless another candidate
//! served it.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use common::cluster::{ADMIN_KEY, Cluster};
use common::{Cred, Gateway, Reply, gateway, key_of};
use serde_json::{Value, json};

const M: &[(&str, &str)] = &[("m", "up-m")];
const HOUR: i64 = 3_600_000;
const ADMIN: (&str, &str) = ("SWITCHYARD_ADMIN_KEY", ADMIN_KEY);
/// Give-ups are immediate, so a test never waits for a cooldown.
const NO_WAIT: (&str, &str) = ("SWITCHYARD_MAX_RETRY_WAIT_MS", "0");

/// `GET /admin/blocks` at `base`: what an operator sees.
async fn admin_blocks(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let r = client
        .get(format!("{base}/admin/blocks"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["blocks"].as_array().unwrap().clone()
}

/// The block on (credential, upstream model) in an admin listing.
fn listed<'a>(blocks: &'a [Value], credential: &str, upstream: &str) -> Option<&'a Value> {
    blocks
        .iter()
        .find(|b| b["credential_id"] == credential && b["upstream_model"] == upstream)
}

/// Asserts a listed block is a `reason` block with about `hours` left.
fn lasts(block: Option<&Value>, reason: &str, hours: i64) {
    let block = block.expect("the block is listed");
    assert_eq!(block["reason"], reason, "{block}");
    let left = block["remaining_ms"].as_i64().unwrap();
    assert!(
        left > hours * HOUR - 60_000 && left <= hours * HOUR,
        "{left} ms left: {block}"
    );
}

fn chat(content: Value) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": content}]})
}

/// An ordinary request is answered: not a 503 with `Retry-After: 43200`.
async fn ordinary_request_is_answered(gw: &Gateway) {
    let r = gw.chat("m").await;
    assert_eq!(r.headers().get("retry-after"), None);
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn requests_a_model_refuses_for_their_content_block_nothing() {
    let three = [
        Cred::new("a", 0, M),
        Cred::new("b", 0, M),
        Cred::new("c", 0, M),
    ];
    let gw = gateway(&three, &[ADMIN, NO_WAIT]).await;
    let image = chat(json!([
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]));
    let mut tool = chat(json!("weather in Paris?"));
    tool["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut echoed = chat(json!("hi"));
    echoed["user"] = json!("model_not_found");
    let cases = [
        // A text-only model behind an OpenAI-compatible server.
        (
            image,
            "image_url",
            json!({"error": {"message": "Image input is not supported for this model",
                "type": "invalid_request_error", "param": null, "code": null}}),
        ),
        // vLLM's tool parser, whose text names the model.
        (
            tool,
            "get_weather",
            json!({"object": "error", "message": "Tool 'get_weather' not found in model response",
                "type": "BadRequestError", "param": null, "code": 400}),
        ),
        // The client's own value repeated in the upstream's text.
        (
            echoed,
            "model_not_found",
            json!({"error": {"message": "Invalid value 'model_not_found' for field 'user'",
                "type": "invalid_request_error", "param": null, "code": null}}),
        ),
    ];
    for (body, needle, refusal) in cases {
        for id in ["a", "b", "c"] {
            gw.mock
                .when(&key_of(id), needle, Reply::status(400, refusal.clone()));
        }
        gw.mock.clear_hits();
        let r = gw.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 400, "{needle}");
        assert_eq!(r.json::<Value>().await.unwrap(), refusal);
        assert_eq!(
            gw.mock.hits().len(),
            1,
            "a request fault calls no other candidate"
        );
        assert_eq!(
            admin_blocks(&gw.client, &gw.url).await,
            Vec::<Value>::new(),
            "{needle}"
        );
        ordinary_request_is_answered(&gw).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_genuine_model_support_failure_still_blocks_for_twelve_hours() {
    let creds = [
        Cred::new("coded", 2, M),
        Cred::new("worded", 1, M),
        Cred::new("good", 0, M),
    ];
    let gw = gateway(&creds, &[ADMIN]).await;
    // The structured code decides, and a plain message about the model too.
    gw.mock.always(
        &key_of("coded"),
        Reply::openai_error(
            400,
            "The model `up-m` does not exist or you do not have access to it.",
            "invalid_request_error",
            Some("model_not_found"),
        ),
    );
    gw.mock.always(
        &key_of("worded"),
        Reply::openai_error(
            400,
            "The requested model is not supported.",
            "invalid_request_error",
            None,
        ),
    );
    let r = gw.chat("m").await;
    assert_eq!(r.status(), 200);
    let blocks = admin_blocks(&gw.client, &gw.url).await;
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    lasts(listed(&blocks, "coded", "up-m"), "model_not_supported", 12);
    lasts(listed(&blocks, "worded", "up-m"), "model_not_supported", 12);
    gw.mock.clear_hits();
    assert_eq!(gw.chat("m").await.status(), 200);
    assert_eq!(
        gw.mock.keys(),
        [key_of("good")],
        "the blocked pairs are skipped"
    );
    gw.stop().await;
}

/// Three credentials of one model, each sending its own upstream model.
const CREDS: [(&str, &[(&str, &str)]); 3] = [
    ("a", &[("m", "up-a")]),
    ("b", &[("m", "up-b")]),
    ("c", &[("m", "up-c")]),
];

/// What every upstream answers a request carrying `TRIGGER` with, naming
/// its own model and request id: the same failure once ids are stripped.
fn refusal(status: u16, upstream: &str, n: usize) -> Reply {
    let message = match status {
        403 => format!("Project `proj_{n}x` does not have access to model `{upstream}`"),
        _ => format!(
            "The model `{upstream}` does not exist or you do not have access to it. (request req_{n}f00)"
        ),
    };
    Reply::openai_error(
        status,
        &message,
        "invalid_request_error",
        Some("model_not_found"),
    )
}

const TRIGGER: &str = "the request every upstream refuses";

#[tokio::test]
async fn a_request_every_candidate_refuses_the_same_way_gets_the_upstreams_error_and_blocks_nothing()
 {
    for status in [404, 400, 403] {
        let creds: Vec<Cred> = CREDS.iter().map(|(id, m)| Cred::new(id, 0, m)).collect();
        let gw = gateway(&creds, &[ADMIN, NO_WAIT]).await;
        for (n, (id, models)) in CREDS.iter().enumerate() {
            gw.mock
                .when(&key_of(id), TRIGGER, refusal(status, models[0].1, n));
        }
        let r = gw.post("/v1/chat/completions", &chat(json!(TRIGGER))).await;
        assert_eq!(r.status(), status);
        assert_eq!(r.headers().get("retry-after"), None);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["error"]["code"], "model_not_found",
            "the upstream's own error: {v}"
        );
        assert_eq!(gw.mock.hits().len(), 3, "every candidate was tried");
        assert_eq!(
            admin_blocks(&gw.client, &gw.url).await,
            Vec::<Value>::new(),
            "{status}"
        );
        ordinary_request_is_answered(&gw).await;

        // A client of another format gets the same error in its own shape.
        let r = gw
            .post(
                "/v1/messages",
                &json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": TRIGGER}]}),
            )
            .await;
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("does not"),
            "{v}"
        );
        assert!(gw.blocks().await.is_empty());
        gw.stop().await;
    }
}

#[tokio::test]
async fn credential_and_quota_failures_are_never_lifted() {
    for (status, scope, retry_after) in [
        (401, "credential", "1800"),
        (402, "credential", "1800"),
        (429, "model", "20"),
    ] {
        let creds: Vec<Cred> = CREDS.iter().map(|(id, m)| Cred::new(id, 0, m)).collect();
        let gw = gateway(&creds, &[ADMIN, NO_WAIT]).await;
        for (id, _) in CREDS {
            gw.mock.always(
                &key_of(id),
                Reply::status_with(
                    status,
                    json!({"error": {"message": "no"}}),
                    &[("retry-after", "20")],
                ),
            );
        }
        let r = gw.chat("m").await;
        assert_eq!(r.status(), if status == 429 { 429 } else { 503 });
        assert_eq!(r.headers()["retry-after"], retry_after);
        let blocks = admin_blocks(&gw.client, &gw.url).await;
        assert_eq!(blocks.len(), 3, "{status}: {blocks:?}");
        assert!(blocks.iter().all(|b| b["scope"] == scope), "{blocks:?}");
        gw.stop().await;
    }
}

#[tokio::test]
async fn when_another_candidate_serves_the_request_the_blocks_stand() {
    let creds = [
        Cred::new("a", 2, CREDS[0].1),
        Cred::new("b", 1, CREDS[1].1),
        Cred::new("c", 0, CREDS[2].1),
    ];
    let gw = gateway(&creds, &[ADMIN, NO_WAIT]).await;
    for (n, (id, models)) in CREDS[..2].iter().enumerate() {
        gw.mock
            .when(&key_of(id), TRIGGER, refusal(404, models[0].1, n));
    }
    let r = gw.post("/v1/chat/completions", &chat(json!(TRIGGER))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(gw.mock.keys(), [key_of("a"), key_of("b"), key_of("c")]);
    let blocks = admin_blocks(&gw.client, &gw.url).await;
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    lasts(listed(&blocks, "a", "up-a"), "not_found", 12);
    lasts(listed(&blocks, "b", "up-b"), "not_found", 12);
    gw.mock.clear_hits();
    assert_eq!(gw.chat("m").await.status(), 200);
    assert_eq!(gw.mock.keys(), [key_of("c")]);
    gw.stop().await;
}

/// Two replicas of the real binary over Postgres and Redis; the three
/// credentials of `CREDS` at the given priorities.
async fn cluster(priorities: [i32; 3]) -> Cluster {
    let mut c = Cluster::services().await;
    let mut seed = String::new();
    for ((id, models), priority) in CREDS.iter().zip(priorities) {
        seed.push_str(&c.credential_sql(id, priority, models));
    }
    c.sql(&seed).await;
    for _ in 0..2 {
        c.add_replica(&[NO_WAIT]).await;
    }
    c
}

async fn post(c: &Cluster, base: &str, body: &Value) -> reqwest::Response {
    c.client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(common::CLIENT_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn redis_key(credential: &str, upstream: &str) -> String {
    format!("switchyard:block:model:{credential}:{upstream}")
}

#[tokio::test]
async fn in_a_cluster_a_request_refused_everywhere_lifts_its_blocks_in_redis() {
    let c = cluster([0, 0, 0]).await;
    let (a, b) = (c.replicas[0].url.clone(), c.replicas[1].url.clone());
    for (n, (id, models)) in CREDS.iter().enumerate() {
        c.mock
            .when(&key_of(id), TRIGGER, refusal(404, models[0].1, n));
    }
    let r = post(&c, &a, &chat(json!(TRIGGER))).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers().get("retry-after"), None);
    assert_eq!(c.mock.hits().len(), 3);
    for (id, models) in CREDS {
        assert_eq!(
            c.redis.cli(&["EXISTS", &redis_key(id, models[0].1)]),
            "0",
            "{id}"
        );
    }
    // The other replica sees no block and serves the next request.
    assert_eq!(admin_blocks(&c.client, &b).await, Vec::<Value>::new());
    c.mock.clear_hits();
    let r = c.chat(&b, "m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(c.mock.hits().len(), 1);
}

#[tokio::test]
async fn in_a_cluster_blocks_stand_when_another_candidate_served_the_request() {
    let c = cluster([2, 1, 0]).await;
    let (a, b) = (c.replicas[0].url.clone(), c.replicas[1].url.clone());
    for (n, (id, models)) in CREDS[..2].iter().enumerate() {
        c.mock
            .when(&key_of(id), TRIGGER, refusal(404, models[0].1, n));
    }
    assert_eq!(post(&c, &a, &chat(json!(TRIGGER))).await.status(), 200);
    for (id, upstream) in [("a", "up-a"), ("b", "up-b")] {
        let ttl: i64 = c
            .redis
            .cli(&["PTTL", &redis_key(id, upstream)])
            .parse()
            .unwrap();
        assert!(ttl > 12 * HOUR - 60_000 && ttl <= 12 * HOUR, "{id}: {ttl}");
    }
    let blocks = admin_blocks(&c.client, &b).await;
    lasts(listed(&blocks, "a", "up-a"), "not_found", 12);
    lasts(listed(&blocks, "b", "up-b"), "not_found", 12);
    c.mock.clear_hits();
    assert_eq!(c.chat(&b, "m").await.status(), 200);
    assert_eq!(
        c.mock.keys(),
        [key_of("c")],
        "replica B skips what A blocked"
    );
}
