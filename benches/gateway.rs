//! switchyard's cost against the floor, measured in one run on one machine.
//!
//! Starts a fast mock upstream, then measures side by side: the mock
//! directly; nginx `proxy_pass` to it (the floor: a plain reverse proxy);
//! switchyard embedded; switchyard in cluster mode with Postgres and Redis,
//! one replica, and two behind nginx; optionally LiteLLM's proxy. Prints one
//! table and writes the figures as JSON (target/bench/results.json).
//!
//!   ops/bench [--runs N] [--quick] [--litellm] [--limits-only] [--pools-only]
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // A bench fails loudly; its tasks live as long as it.

#[path = "support/floor.rs"]
mod floor;
#[path = "../tests/common/services.rs"]
#[allow(dead_code)]
mod services;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};
use services::{Nginx, PgServer, RedisServer};

const CLIENT_KEY: &str = "sk-bench-client";
/// A key with generous limits (requests, tokens, a budget) and priced tokens.
const LIMITED_KEY: &str = "sk-bench-limited";
/// Chunks of the streaming measurement, and the mock's gap between them.
const STREAM_CHUNKS: usize = 20;
const STREAM_GAP: Duration = Duration::from_millis(2);
const OPEN_STREAMS: usize = 1000;

struct Options {
    runs: usize,
    seconds: u64,
    litellm: bool,
    /// Only the memory figures (for working on them).
    memory_only: bool,
    /// Only the instruction counts (for working on them).
    instructions_only: bool,
    /// Only a limited key against an open one (for working on limits).
    limits_only: bool,
    /// Only the throughput by the size of the route.
    pools_only: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if flag("--quick") { 1 } else { 3 });
    let memory_only = flag("--memory-only");
    let instructions_only = flag("--instructions-only");
    Options {
        runs: if memory_only || instructions_only {
            0
        } else {
            runs
        },
        seconds: if flag("--quick") { 2 } else { 5 },
        litellm: flag("--litellm"),
        memory_only,
        instructions_only,
        limits_only: flag("--limits-only"),
        pools_only: flag("--pools-only"),
    }
}

// ---------------------------------------------------------------- the mock

/// The upstream: a small JSON answer at once, or a stream. Model `fast`
/// answers JSON (or a one-chunk stream); `stream` sends STREAM_CHUNKS chunks
/// STREAM_GAP apart; `slow` a chunk a second for a minute; `p…`/`q…`-keyed
/// requests say which credential they came with.
async fn mock(headers: axum::http::HeaderMap, body: axum::body::Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = v["model"].as_str().unwrap_or("").to_string();
    let key = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content = format!("served with {key}");
    if !v["stream"].as_bool().unwrap_or(false) {
        let answer = json!({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}});
        return ([("content-type", "application/json")], answer.to_string()).into_response();
    }
    let (chunks, gap) = match model.as_str() {
        "stream" => (STREAM_CHUNKS, STREAM_GAP),
        "slow" => (60, Duration::from_secs(1)),
        _ => (1, Duration::ZERO),
    };
    let events = futures_util::stream::unfold(0usize, move |i| {
        let model = model.clone();
        async move {
            if i > chunks + 1 {
                return None;
            }
            if i > 0 && i <= chunks && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            let data = if i == chunks + 1 {
                "[DONE]".to_string()
            } else if i == chunks {
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string()
            } else {
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": {"content": format!("chunk {i} ")}, "finish_reason": null}]}).to_string()
            };
            Some((
                Ok::<_, std::convert::Infallible>(format!("data: {data}\n\n")),
                i + 1,
            ))
        }
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(events),
    )
        .into_response()
}

/// The mock runs on a thread and a single-threaded runtime of its own, like
/// a one-worker server: it neither competes with the bench's own tasks nor
/// adds threads of its own to the machine's load.
fn start_mock() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let app = Router::new().route("/v1/chat/completions", post(mock));
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

// ------------------------------------------------------------ the targets

struct Target {
    name: &'static str,
    /// Base URL; requests go to {url}/v1/chat/completions.
    url: String,
    /// The switchyard process whose memory is measured, if any.
    pid: Option<u32>,
}

struct Replica {
    child: tokio::process::Child,
    addr: SocketAddr,
}

/// Starts the release binary, with its default logging (to a file), and
/// waits for it to be ready.
async fn replica(env: &[(&str, String)], log: &Path) -> Replica {
    replica_under(&[], env, log).await
}

/// [`replica`], run by `wrapper` (a profiler, say).
async fn replica_under(wrapper: &[&str], env: &[(&str, String)], log: &Path) -> Replica {
    let binary = env!("CARGO_BIN_EXE_switchyard");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = tokio::process::Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => tokio::process::Command::new(binary),
    };
    // One worker thread, as the nginx floor runs one worker process: on a
    // small machine shared with the load generator and the mock, more
    // threads than cores only trade tail latency for throughput.
    cmd.env("SWITCHYARD_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_WORKER_THREADS", "1")
        .env_remove("SWITCHYARD_LOG")
        .env_remove("RUST_LOG")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    let addr: SocketAddr = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let listening = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "switchyard listening");
        if let Some(v) = listening {
            break v["addr"].as_str().unwrap().parse().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the gateway did not start: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let client = reqwest::Client::new();
    for _ in 0..2_000 {
        if client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Replica { child, addr };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not become ready");
}

fn embedded_config(dir: &Path, mock: SocketAddr) -> PathBuf {
    let path = dir.join("switchyard.toml");
    let text = format!(
        "[[credentials]]\nid = \"p\"\nprovider = \"openai\"\nbase_url = \"http://{mock}/v1\"\napi_key = \"upstream-p\"\n\n\
         [[credential_models]]\ncredential_id = \"p\"\nmodel = \"fast\"\n\n\
         [[credential_models]]\ncredential_id = \"p\"\nmodel = \"stream\"\n\n\
         [[credential_models]]\ncredential_id = \"p\"\nmodel = \"slow\"\n\n\
         [[api_keys]]\nname = \"bench\"\nkey_hash = \"{}\"\n",
        switchyard::catalog::hash_key(CLIENT_KEY)
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn seed_cluster(pg: &PgServer, mock: SocketAddr) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("migrate")
        .env("DATABASE_URL", pg.url("postgres"))
        .env_remove("REDIS_URL")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    let seed = format!(
        "insert into credentials (id, provider, base_url, api_key, priority) values
           ('p', 'openai', 'http://{mock}/v1', 'upstream-p', 1), ('q', 'openai', 'http://{mock}/v1', 'upstream-q', 0);
         insert into credential_models values ('p', 'fast', 'fast'), ('p', 'stream', 'stream'), ('p', 'slow', 'slow');
         insert into credential_models select 'p', 'prop' || i, 'u' || i from generate_series(0, 199) i;
         insert into credential_models select 'q', 'prop' || i, 'u' || i from generate_series(0, 199) i;
         insert into api_keys (name, key_hash) values ('bench', '{}');
         insert into api_keys (name, key_hash, rpm_limit, tpm_limit, budget_usd)
           values ('bench-limited', '{}', 100000000, 2000000000, 1000000);
         insert into model_prices (model, input_usd_per_mtok, output_usd_per_mtok) values ('fast', 1, 2);",
        switchyard::catalog::hash_key(CLIENT_KEY),
        switchyard::catalog::hash_key(LIMITED_KEY),
    );
    sqlx::raw_sql(&seed).execute(&db).await.unwrap();
    db.close().await;
}

// --------------------------------------------------------- measurements

fn wrk_script(dir: &Path, model: &str) -> PathBuf {
    wrk_script_as(dir, model, CLIENT_KEY)
}

/// The same, with another client key.
fn wrk_script_as(dir: &Path, model: &str, key: &str) -> PathBuf {
    let path = dir.join(format!("post-{model}-{key}.lua"));
    std::fs::write(
        &path,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {key}\"\n"
        ),
    )
    .unwrap();
    path
}

/// One chat completion with the bench's client key.
async fn chat(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    chat_as(client, url, body, CLIENT_KEY).await
}

async fn chat_as(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    key: &str,
) -> reqwest::Response {
    client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Requests counted by callgrind, after as many again to warm up.
const COUNTED: u32 = 1_000;

/// User-space instructions per request of the process `pid` (run under
/// callgrind, writing its dumps to `dir`): counters zeroed after a warm-up,
/// then `COUNTED` requests one after another on one keep-alive connection,
/// then a dump. A figure the machine's load cannot move.
async fn instructions(url: &str, pid: u32, dir: &Path, model: &str, key: &str) -> f64 {
    let client = reqwest::Client::new();
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..COUNTED {
        assert!(
            chat_as(&client, url, &body, key)
                .await
                .status()
                .is_success()
        );
    }
    let control = |arg: &str| {
        let ok = std::process::Command::new("callgrind_control")
            .args([arg, &pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("callgrind_control runs (valgrind installs it)");
        assert!(ok.success(), "callgrind_control {arg} {pid}");
    };
    control("-z");
    for _ in 0..COUNTED {
        assert!(
            chat_as(&client, url, &body, key)
                .await
                .status()
                .is_success()
        );
    }
    control("-d");
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .contains(&format!("cg.{pid}"))
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .expect("a callgrind dump");
    let text = std::fs::read_to_string(newest.path()).unwrap();
    let total: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a callgrind total");
    total / f64::from(COUNTED)
}

/// Instructions per request of the nginx floor, switchyard embedded and
/// switchyard in cluster mode, each under callgrind in this run.
async fn instruction_counts(
    mock: SocketAddr,
    config: &str,
    cluster_env: &[(&str, String)],
    dir: &Path,
) -> Vec<(&'static str, f64)> {
    let out = format!("--callgrind-out-file={}/cg.%p", dir.display());
    let wrapper = ["valgrind", "--tool=callgrind", out.as_str()];
    eprintln!("==> instructions per request (callgrind): nginx");
    let floor = Nginx::start_under(&[mock], &wrapper);
    let nginx = instructions(&floor.url(), floor.pid(), dir, "fast", CLIENT_KEY).await;
    drop(floor);
    let mut stack = Vec::new();
    for (name, client) in [
        ("tokio + hyper proxy, a connection each", "direct"),
        ("tokio + hyper proxy, hyper-util's pooled client", "pooled"),
    ] {
        eprintln!("==> instructions per request (callgrind): {name}");
        let (url, mut child) = stack_floor_under(&wrapper, mock, client).await;
        let pid = child.id().unwrap();
        stack.push((name, instructions(&url, pid, dir, "fast", CLIENT_KEY).await));
        let _ = child.kill().await;
    }
    eprintln!("==> instructions per request (callgrind): switchyard embedded");
    let env = [("SWITCHYARD_CONFIG", config.to_string())];
    let mut embedded = replica_under(&wrapper, &env, &dir.join("cg-embedded.log")).await;
    let url = format!("http://{}", embedded.addr);
    let pid = embedded.child.id().unwrap();
    let alone = instructions(&url, pid, dir, "fast", CLIENT_KEY).await;
    let _ = embedded.child.kill().await;
    eprintln!("==> instructions per request (callgrind): switchyard cluster");
    let mut replica = replica_under(&wrapper, cluster_env, &dir.join("cg-cluster.log")).await;
    let url = format!("http://{}", replica.addr);
    let pid = replica.child.id().unwrap();
    let cluster = instructions(&url, pid, dir, "fast", CLIENT_KEY).await;
    eprintln!("==> instructions per request (callgrind): switchyard cluster, a key with limits");
    let limited = instructions(&url, pid, dir, "fast", LIMITED_KEY).await;
    let _ = replica.child.kill().await;
    eprintln!("==> instructions per request (callgrind): switchyard cluster, SWITCHYARD_USAGE=off");
    let mut env = cluster_env.to_vec();
    env.push(("SWITCHYARD_USAGE", "off".into()));
    let mut replica = replica_under(&wrapper, &env, &dir.join("cg-bare.log")).await;
    let url = format!("http://{}", replica.addr);
    let pid = replica.child.id().unwrap();
    let bare = instructions(&url, pid, dir, "fast", CLIENT_KEY).await;
    let _ = replica.child.kill().await;
    let mut counts = vec![("nginx proxy_pass (floor)", nginx)];
    counts.extend(stack);
    counts.extend([
        ("switchyard embedded", alone),
        ("switchyard cluster, 1 replica", cluster),
        ("switchyard cluster, 1 replica, a key with limits", limited),
        ("switchyard cluster, 1 replica, no accounting", bare),
    ]);
    counts
}

/// The stack's own floor (`floor.rs`: this executable again) under
/// `wrapper`, forwarding to `mock` with the `client` kind; its URL.
async fn stack_floor_under(
    wrapper: &[&str],
    mock: SocketAddr,
    client: &str,
) -> (String, tokio::process::Child) {
    use tokio::io::AsyncBufReadExt as _;
    let exe = std::env::current_exe().unwrap();
    let (program, args) = wrapper.split_first().unwrap();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .arg(exe)
        .env(floor::UPSTREAM, mock.to_string())
        .env(floor::CLIENT, client)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(addr) = line.strip_prefix("listening ") {
            return (format!("http://{addr}"), child);
        }
    }
    panic!("the stack's floor proxy did not start");
}

/// Route sizes of the pool measurement: models `pool{n}` served by `n`
/// credentials (`k0`...) of the same upstream.
const POOLS: [usize; 4] = [1, 100, 1_000, 10_000];

/// The pool measurement's figures.
struct Pools {
    /// Requests per second at 32 connections, per route size, per run.
    rps: Vec<Vec<f64>>,
    /// Redis commands per successful request on the largest route.
    redis_commands: f64,
    /// From the commit of the pool rows (some 21,000: credentials and their
    /// models) until the replica served the largest route.
    rows: usize,
    served_after_ms: f64,
    /// Requests per second on one credential before and after 100,000 more
    /// client keys, per run, and resident memory with the pools and the keys.
    keys_before: Vec<f64>,
    keys_after: Vec<f64>,
    rss_mb: f64,
}

/// Client keys added for the key-count measurement.
const EXTRA_KEYS: usize = 100_000;

/// How many catalog snapshots the replica at `url` has published.
async fn reloads(url: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("switchyard_catalog_reloads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A request for the largest pool's model.
fn largest_pool() -> Value {
    json!({"model": format!("pool{}", POOLS[POOLS.len() - 1]), "messages": [{"role": "user", "content": "hi"}]})
}

/// Commits the pools' rows: credentials `k0`... and their models `pool{n}`;
/// returns how many rows that is.
async fn seed_pools(pg: &PgServer, mock: SocketAddr) -> usize {
    let last = POOLS[POOLS.len() - 1] - 1;
    let seed = format!(
        "insert into credentials (id, provider, base_url, api_key, priority)
           select 'k' || i, 'openai', 'http://{mock}/v1', 'upstream-k' || i, 0 from generate_series(0, {last}) i;
         insert into credential_models select 'k' || i, 'pool' || n, 'fast'
           from unnest(array{POOLS:?}) n, generate_series(0, {last}) i where i < n;"
    );
    let db = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::raw_sql(&seed).execute(&db).await.unwrap();
    db.close().await;
    POOLS[POOLS.len() - 1] + POOLS.iter().sum::<usize>()
}

/// Waits until the replica at `url` serves `body` (its catalog holds the
/// pools), at most a minute after `since`.
async fn served(url: &str, body: &Value, since: Instant) {
    let client = reqwest::Client::new();
    while !chat(&client, url, body).await.status().is_success() {
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "the pools never arrived"
        );
    }
}

/// Instructions per request on each pool's route, on a cluster replica
/// under callgrind: the figure that tells whether a request's cost grows
/// with its route, whatever the machine's load.
async fn pool_instructions(cluster_env: &[(&str, String)], dir: &Path) -> Vec<(usize, f64)> {
    let out = format!("--callgrind-out-file={}/cg.%p", dir.display());
    let wrapper = ["valgrind", "--tool=callgrind", out.as_str()];
    eprintln!("==> instructions per request (callgrind): the pools");
    let mut replica = replica_under(&wrapper, cluster_env, &dir.join("cg-pools.log")).await;
    let url = format!("http://{}", replica.addr);
    let pid = replica.child.id().unwrap();
    served(&url, &largest_pool(), Instant::now()).await;
    let mut counts = Vec::new();
    for n in POOLS {
        counts.push((
            n,
            instructions(&url, pid, dir, &format!("pool{n}"), CLIENT_KEY).await,
        ));
    }
    let _ = replica.child.kill().await;
    counts
}

/// Adds the pools' credentials (after the other rows were measured, so they
/// do not weigh on those), times until the replica serves them, then
/// measures throughput per route size and Redis commands per request.
/// Accounting and limits against neither: throughput (alternating runs) of
/// a key with limits on a replica that keeps the usage ledger, of a key
/// without limits on the same replica (the ledger alone), and of that key
/// on a replica started with `SWITCHYARD_USAGE=off` (neither); and the
/// Redis commands the limits add a request.
struct Limits {
    /// Neither accounting nor limits.
    rps_bare: Vec<f64>,
    /// Accounting, no limits.
    rps_open: Vec<f64>,
    /// Accounting and generous limits.
    rps_limited: Vec<f64>,
    /// Commands the replica sends Redis per request with the limited key,
    /// less those without: the round trips limits add.
    round_trips_added: f64,
    /// Commands Redis runs per request with the limited key (a script's
    /// included), less those without.
    redis_added: f64,
}

impl Limits {
    fn medians(&self) -> (f64, f64, f64) {
        let med = |v: &[f64]| median(&mut v.to_vec());
        (
            med(&self.rps_bare),
            med(&self.rps_open),
            med(&self.rps_limited),
        )
    }

    fn line(&self) -> String {
        let (bare, open, with) = self.medians();
        let runs = |v: &[f64]| v.iter().map(|r| r.round() as u64).collect::<Vec<_>>();
        format!(
            "one replica, cluster mode, req/s @32 (medians of {} alternating runs):\n  \
             neither accounting nor limits {bare:.0} {:?}\n  \
             accounting, a key without limits {open:.0} {:?}: {:.2}x\n  \
             accounting, a key with limits (requests, tokens, budget; priced) {with:.0} {:?}: {:.2}x\n  \
             Redis round trips the limits add a request: {:.2} (commands Redis runs: {:.2})",
            self.rps_bare.len(),
            runs(&self.rps_bare),
            runs(&self.rps_open),
            open / bare,
            runs(&self.rps_limited),
            with / bare,
            self.round_trips_added,
            self.redis_added
        )
    }
}

/// [`Limits`], against replica `url` and one started with `bare_env`.
async fn limits(
    url: &str,
    bare_env: &[(&str, String)],
    dir: &Path,
    redis: &RedisServer,
    opts: &Options,
) -> Limits {
    let mut bare_env = bare_env.to_vec();
    bare_env.push(("SWITCHYARD_USAGE", "off".into()));
    let mut bare = replica(&bare_env, &dir.join("bare.log")).await;
    let bare_url = format!("http://{}", bare.addr);
    let open = wrk_script(dir, "fast");
    let limited = wrk_script_as(dir, "fast", LIMITED_KEY);
    let mut rps_bare = Vec::new();
    let mut rps_open = Vec::new();
    let mut rps_limited = Vec::new();
    for run in 1..=opts.runs {
        eprintln!(
            "==> run {run}/{}: no accounting; accounting; accounting and limits",
            opts.runs
        );
        for (url, script, out) in [
            (bare_url.as_str(), &open, &mut rps_bare),
            (url, &open, &mut rps_open),
            (url, &limited, &mut rps_limited),
        ] {
            let _ = wrk(url, script, 8, 1).await;
            let (r, _, _, errors) = wrk(url, script, 32, opts.seconds).await;
            assert_eq!(errors, 0, "generous limits refuse nothing");
            out.push(r);
        }
    }
    let _ = bare.child.kill().await;
    let client = reqwest::Client::new();
    let body = json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}]});
    let requests = 1_000;
    let mut sent = Vec::new();
    let mut ran = Vec::new();
    for key in [CLIENT_KEY, LIMITED_KEY] {
        let monitor = Monitor::start(redis, &dir.join(format!("monitor-{key}.log")));
        let _ = redis.cli(&["CONFIG", "RESETSTAT"]);
        for _ in 0..requests {
            assert!(
                chat_as(&client, url, &body, key)
                    .await
                    .status()
                    .is_success()
            );
        }
        ran.push(redis_calls(redis) / f64::from(requests));
        sent.push(monitor.sent() / f64::from(requests));
    }
    Limits {
        rps_bare,
        rps_open,
        rps_limited,
        round_trips_added: sent[1] - sent[0],
        redis_added: ran[1] - ran[0],
    }
}

/// `redis-cli monitor` into a file: every command Redis runs, those a
/// script runs marked as such, so what clients sent can be told apart.
struct Monitor {
    child: std::process::Child,
    path: std::path::PathBuf,
}

impl Monitor {
    fn start(redis: &RedisServer, path: &Path) -> Monitor {
        let child = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &redis.port.to_string(), "monitor"])
            .stdout(std::fs::File::create(path).unwrap())
            .spawn()
            .expect("redis-cli runs");
        // MONITOR has begun once Redis lists the client in that mode.
        for _ in 0..200 {
            if redis.cli(&["CLIENT", "LIST"]).contains("cmd=monitor") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Monitor {
            child,
            path: path.to_path_buf(),
        }
    }

    /// Commands clients sent (each one a round trip at most; pipelined ones
    /// share one), less this measurement's own redis-cli calls.
    fn sent(mut self) -> f64 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.path).unwrap();
        let n = text
            .lines()
            .filter(|l| l.contains(" \"") && !l.contains(" lua]"))
            .filter(|l| {
                !(l.contains("\"CONFIG\"") || l.contains("\"INFO\"") || l.contains("\"CLIENT\""))
            })
            .count();
        n as f64
    }
}

/// Commands Redis ran since its stats were reset, but for INFO and CONFIG.
fn redis_calls(redis: &RedisServer) -> f64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter(|l| {
            l.starts_with("cmdstat_")
                && !l.starts_with("cmdstat_info")
                && !l.starts_with("cmdstat_config")
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

impl Pools {
    /// Prints the figures; their rows for `results.json`.
    fn print(&self) -> Vec<Value> {
        let med = |v: &[f64]| median(&mut v.to_vec());
        println!("one replica, cluster mode, req/s @32 by credentials on the model (ratio to 1):");
        let one = med(&self.rps[0]);
        let mut rows = Vec::new();
        for (n, runs) in POOLS.iter().zip(&self.rps) {
            let r = med(runs);
            let each: Vec<u64> = runs.iter().map(|r| r.round() as u64).collect();
            println!(
                "  {n:>6} credentials: {r:>8.0} req/s  {:.2}x  {each:?}",
                r / one
            );
            rows.push(json!({"credentials": n, "rps_32": r, "ratio_to_1": r / one, "runs": runs}));
        }
        println!(
            "  Redis commands per successful request, {} credentials: {:.2}",
            POOLS[POOLS.len() - 1],
            self.redis_commands
        );
        println!(
            "  {} operator rows committed -> served by the replica: {:.0} ms",
            self.rows, self.served_after_ms
        );
        let (before, after) = (med(&self.keys_before), med(&self.keys_after));
        println!(
            "  {EXTRA_KEYS} more client keys: {before:.0} -> {after:.0} req/s ({:.2}x); RSS with them and the pools: {:.0} MB",
            after / before,
            self.rss_mb
        );
        rows
    }
}

async fn pools(
    url: &str,
    dir: &Path,
    pg: &PgServer,
    redis: &RedisServer,
    mock: SocketAddr,
    pid: u32,
    opts: &Options,
) -> Pools {
    let client = reqwest::Client::new();
    let largest = largest_pool();
    let committed = Instant::now();
    let rows = seed_pools(pg, mock).await;
    let committed_at = committed.elapsed();
    served(url, &largest, committed).await;
    let served_after_ms = (committed.elapsed() - committed_at).as_secs_f64() * 1_000.0;
    let mut rps = vec![Vec::new(); POOLS.len()];
    for run in 1..=opts.runs {
        for (i, n) in POOLS.iter().enumerate() {
            eprintln!("==> run {run}/{}: pool of {n}", opts.runs);
            let script = wrk_script(dir, &format!("pool{n}"));
            let _ = wrk(url, &script, 8, 1).await;
            let (r, _, _, errors) = wrk(url, &script, 32, opts.seconds).await;
            assert_eq!(errors, 0, "pool of {n}: failed requests");
            rps[i].push(r);
        }
    }
    let requests = 2_000;
    let _ = redis.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..requests {
        let r = chat(&client, url, &largest).await;
        assert!(r.status().is_success());
    }
    // Health checks (PING, and the view's reconcile) run meanwhile: left in,
    // they only raise the figure.
    let calls = redis_calls(redis);
    // 100,000 client keys: a key is one hash lookup, so throughput should not move.
    let fast = wrk_script(dir, "fast");
    let mut keys_before = Vec::new();
    for _ in 0..opts.runs {
        keys_before.push(wrk(url, &fast, 32, opts.seconds).await.0);
    }
    let seen = reloads(url).await;
    let db = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::raw_sql(&format!(
        "insert into api_keys (name, key_hash)
           select 'user' || i, encode(sha256(i::text::bytea), 'hex') from generate_series(1, {EXTRA_KEYS}) i;"
    ))
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    let waited = Instant::now();
    while reloads(url).await <= seen {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the keys never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = wrk(url, &fast, 8, 1).await;
    let mut keys_after = Vec::new();
    for _ in 0..opts.runs {
        keys_after.push(wrk(url, &fast, 32, opts.seconds).await.0);
    }
    Pools {
        rps,
        redis_commands: calls / f64::from(requests),
        rows,
        served_after_ms,
        keys_before,
        keys_after,
        rss_mb: rss_mb(pid),
    }
}

/// Runs wrk and returns (requests per second, p50 ms, p99 ms, non-2xx).
async fn wrk(url: &str, script: &Path, connections: usize, seconds: u64) -> (f64, f64, f64, u64) {
    let threads = connections.min(2).to_string();
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t",
            &threads,
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("{url}/v1/chat/completions"))
        .output()
        .await
        .expect("wrk runs (ops/bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim).map(String::from))
            .map(|v| duration_ms(&v))
            .unwrap_or(f64::NAN)
    };
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (rps, pct("50%"), pct("99%"), errors)
}

fn duration_ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1_000.0,
        "ms" => n,
        "s" => n * 1_000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// Sequential streams: the median time to the first content chunk, and the
/// median arrival time of each chunk after the request was sent (ms).
async fn stream_timing(url: &str, requests: usize) -> (f64, Vec<f64>) {
    let client = reqwest::Client::new();
    let body =
        json!({"model": "stream", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut firsts = Vec::new();
    let mut per_chunk: Vec<Vec<f64>> = vec![Vec::new(); STREAM_CHUNKS];
    for _ in 0..requests {
        let sent = Instant::now();
        let r = chat(&client, url, &body).await;
        let mut s = r.bytes_stream();
        let mut buf = String::new();
        let mut seen = 0;
        while let Some(chunk) = s.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(i) = buf.find("\n\n") {
                let event: String = buf.drain(..i + 2).collect();
                if event.contains("\"content\":\"chunk ") && seen < STREAM_CHUNKS {
                    let at = sent.elapsed().as_secs_f64() * 1_000.0;
                    if seen == 0 {
                        firsts.push(at);
                    }
                    per_chunk[seen].push(at);
                    seen += 1;
                }
            }
        }
    }
    (
        median(&mut firsts),
        per_chunk.iter_mut().map(|v| median(v)).collect(),
    )
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
            })
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// RSS idle, and with OPEN_STREAMS streams open at once (each past its first chunk).
async fn memory(url: &str, pid: u32) -> (f64, f64) {
    let idle = rss_mb(pid);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let body =
        json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..OPEN_STREAMS {
        let (client, body, url, ready, stop) = (
            client.clone(),
            body.clone(),
            url.to_string(),
            ready.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(CLIENT_KEY)
                .json(&body)
                .send()
                .await;
            let Ok(r) = r else {
                ready.add_permits(1);
                return;
            };
            let mut s = r.bytes_stream();
            let _ = s.next().await;
            ready.add_permits(1);
            stop.cancelled().await;
        }));
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        ready.acquire_many(OPEN_STREAMS as u32),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = rss_mb(pid);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    (idle, open)
}

/// A block written by one replica's code path (the Redis store), and the
/// other replica's routing: for each trial, the time from the write starting
/// until the first request of B that was routed away from the blocked pair
/// came back (B is asked back to back meanwhile), and how many requests B
/// sent after the write had returned still chose the blocked pair.
async fn propagation(b_url: &str, redis_url: &str, trials: usize) -> (Vec<f64>, usize) {
    use switchyard::state::{Block, LearnedStore, Reason, Scope};
    let store = switchyard::state::RedisStore::connect(
        redis_url,
        "switchyard:",
        Duration::from_millis(250),
        "bench-writer",
        Arc::new(switchyard::clock::SystemClock),
        Arc::new(switchyard::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    let mut violations = 0;
    for i in 0..trials {
        let model = format!("prop{i}");
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let writer = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let start = Instant::now();
            let now = switchyard::clock::Clock::now_ms(&switchyard::clock::SystemClock);
            let block = Block {
                reason: Reason::ModelNotSupported,
                status: 400,
                message: "bench".into(),
                replica: "bench-writer".into(),
                since_ms: now,
                until_ms: now + 60_000,
            };
            store
                .put(&Scope::pair("p", &format!("u{i}")), block)
                .await
                .unwrap();
            (start, Instant::now())
        };
        let reader = async {
            let mut log = Vec::new();
            loop {
                let sent = Instant::now();
                let r = client
                    .post(format!("{b_url}/v1/chat/completions"))
                    .bearer_auth(CLIENT_KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let v: Value = r.json().await.unwrap();
                let by_q = v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or("")
                    .contains("upstream-q");
                log.push((sent, Instant::now(), by_q));
                if by_q {
                    return log;
                }
            }
        };
        let ((start, written), log) = tokio::join!(writer, reader);
        let honoured = log.last().unwrap().1;
        times.push(honoured.saturating_duration_since(start).as_secs_f64() * 1_000.0);
        violations += log
            .iter()
            .filter(|(sent, _, by_q)| *sent > written && !by_q)
            .count();
    }
    (times, violations)
}

// ------------------------------------------------------------------ report

#[derive(Default, Clone)]
struct Row {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    ttft: Vec<f64>,
    chunks: Vec<Vec<f64>>,
    errors: u64,
    rss_idle: Option<f64>,
    rss_open: Option<f64>,
}

fn main() {
    if std::env::var_os(floor::UPSTREAM).is_some() {
        return floor::run();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

async fn bench() {
    let opts = options();
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let script = wrk_script(tmp.path(), "fast");
    // Callgrind's dumps are kept, for `callgrind_annotate`.
    let callgrind_dir = out_dir.join("callgrind");
    let _ = std::fs::remove_dir_all(&callgrind_dir);
    std::fs::create_dir_all(&callgrind_dir).unwrap();
    eprintln!("==> starting the mock upstream, nginx, Postgres, Redis and the gateways");
    let mock = start_mock();
    let floor = Nginx::start(&[mock]);
    let config = embedded_config(tmp.path(), mock).display().to_string();
    let embedded = replica(
        &[("SWITCHYARD_CONFIG", config.clone())],
        &tmp.path().join("embedded.log"),
    )
    .await;
    let pg = PgServer::start();
    let redis = RedisServer::start();
    seed_cluster(&pg, mock).await;
    let cluster_env = |id: &str| {
        vec![
            ("DATABASE_URL", pg.url("postgres")),
            ("REDIS_URL", redis.url()),
            ("SWITCHYARD_REPLICA_ID", id.to_string()),
        ]
    };
    let a = replica(&cluster_env("bench-a"), &tmp.path().join("a.log")).await;
    let b = replica(&cluster_env("bench-b"), &tmp.path().join("b.log")).await;
    let pair = Nginx::start(&[a.addr, b.addr]);
    let mut litellm = if opts.litellm {
        Some(start_litellm(mock, tmp.path()).await)
    } else {
        None
    };

    let mut targets = vec![
        Target {
            name: "mock, direct",
            url: format!("http://{mock}"),
            pid: None,
        },
        Target {
            name: "nginx proxy_pass (floor)",
            url: floor.url(),
            pid: None,
        },
        Target {
            name: "switchyard embedded",
            url: format!("http://{}", embedded.addr),
            pid: embedded.child.id(),
        },
        Target {
            name: "switchyard cluster, 1 replica",
            url: format!("http://{}", a.addr),
            pid: a.child.id(),
        },
        Target {
            name: "switchyard cluster, 2 behind nginx",
            url: pair.url(),
            pid: None,
        },
    ];
    if let Some((url, _)) = &litellm {
        targets.push(Target {
            name: "LiteLLM proxy",
            url: url.clone(),
            pid: None,
        });
    }
    let a_url = format!("http://{}", a.addr);
    let bare_env = cluster_env("bench-bare");
    let measure_limits = async || limits(&a_url, &bare_env, tmp.path(), &redis, &opts).await;
    if opts.limits_only {
        println!("{}", measure_limits().await.line());
        return;
    }
    if opts.pools_only {
        let pid = a.child.id().unwrap();
        pools(&a_url, tmp.path(), &pg, &redis, mock, pid, &opts)
            .await
            .print();
        return;
    }
    let mut rows: Vec<Row> = vec![Row::default(); targets.len()];
    for run in 1..=opts.runs {
        for (t, row) in targets.iter().zip(rows.iter_mut()) {
            eprintln!("==> run {run}/{}: {}", opts.runs, t.name);
            let _ = wrk(&t.url, &script, 8, 1).await; // warm-up
            let (rps, _, _, e1) = wrk(&t.url, &script, 32, opts.seconds).await;
            let (_, p50, p99, e2) = wrk(&t.url, &script, 4, opts.seconds).await;
            let (ttft, chunks) = stream_timing(&t.url, 30).await;
            row.rps.push(rps);
            row.p50.push(p50);
            row.p99.push(p99);
            row.ttft.push(ttft);
            row.chunks.push(chunks);
            row.errors += e1 + e2;
        }
    }
    // Before the pools and the extra keys: one request's cost on the
    // ordinary catalog.
    let counts = if opts.memory_only {
        Vec::new()
    } else {
        instruction_counts(
            mock,
            &config,
            &cluster_env("bench-callgrind"),
            &callgrind_dir,
        )
        .await
    };
    if opts.instructions_only {
        for (name, n) in &counts {
            println!("{name}: {n:.0} instructions a request");
        }
        seed_pools(&pg, mock).await;
        let pool_counts = pool_instructions(&cluster_env("bench-callgrind"), &callgrind_dir).await;
        for (pool, n) in &pool_counts {
            println!("cluster, pool of {pool}: {n:.0} instructions a request");
        }
        return;
    }
    for (t, row) in targets.iter().zip(rows.iter_mut()) {
        if let Some(pid) = t.pid {
            eprintln!("==> memory: {}", t.name);
            let (idle, open) = memory(&t.url, pid).await;
            row.rss_idle = Some(idle);
            row.rss_open = Some(open);
        }
    }
    if opts.memory_only {
        for (t, row) in targets.iter().zip(&rows) {
            if let (Some(i), Some(o)) = (row.rss_idle, row.rss_open) {
                println!(
                    "{}: RSS idle {i:.1} MB, with {OPEN_STREAMS} streams {o:.1} MB",
                    t.name
                );
            }
        }
        return;
    }
    let limited = measure_limits().await;
    let pool = pools(
        &format!("http://{}", a.addr),
        tmp.path(),
        &pg,
        &redis,
        mock,
        a.child.id().unwrap(),
        &opts,
    )
    .await;
    eprintln!("==> cross-replica propagation");
    let (mut prop, violations) =
        propagation(&format!("http://{}", b.addr), &redis.url(), 200).await;
    if let Some((_, child)) = litellm.as_mut() {
        let _ = child.kill().await;
    }
    report(
        &targets,
        &rows,
        &mut prop,
        violations,
        &opts,
        &out_dir,
        (&pool, &counts, &limited),
    );
}

async fn start_litellm(mock: SocketAddr, dir: &Path) -> (String, tokio::process::Child) {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv");
    if !venv.join("bin/litellm").exists() {
        eprintln!("==> installing LiteLLM into {}", venv.display());
        assert!(
            std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap()
                .success()
        );
        let ok = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "litellm[proxy]"])
            .status()
            .unwrap();
        assert!(ok.success(), "pip install litellm[proxy] failed");
    }
    let port = services::free_port();
    let cfg = dir.join("litellm.yaml");
    std::fs::write(&cfg, format!(
        "model_list:\n  - model_name: fast\n    litellm_params: {{model: openai/fast, api_base: \"http://{mock}/v1\", api_key: upstream-p}}\n  - model_name: stream\n    litellm_params: {{model: openai/stream, api_base: \"http://{mock}/v1\", api_key: upstream-p}}\ngeneral_settings:\n  master_key: {CLIENT_KEY}\n"
    )).unwrap();
    let child = tokio::process::Command::new(venv.join("bin/litellm"))
        .arg("--config")
        .arg(&cfg)
        .args([
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
            "--num_workers",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client
            .get(format!("{url}/health/liveliness"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return (url, child);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("LiteLLM did not start");
}

fn report(
    targets: &[Target],
    rows: &[Row],
    prop: &mut [f64],
    violations: usize,
    opts: &Options,
    out_dir: &Path,
    (pool, counts, limited): (&Pools, &[(&str, f64)], &Limits),
) {
    let med = |v: &[f64]| median(&mut v.to_vec());
    let direct = &rows[0];
    let floor_rps = med(&rows[1].rps);
    let (d50, d99, dttft) = (med(&direct.p50), med(&direct.p99), med(&direct.ttft));
    // Chunk i's median arrival over runs, for the direct stream.
    let chunk_median =
        |row: &Row, i: usize| med(&row.chunks.iter().map(|c| c[i]).collect::<Vec<_>>());
    println!();
    println!(
        "switchyard benchmark: medians of {} runs, {} s per load, on this machine",
        opts.runs, opts.seconds
    );
    println!(
        "{:<36} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "target",
        "req/s @32",
        "x floor",
        "p50 @4",
        "p99 @4",
        "+p99",
        "+TTFT",
        "+chunk",
        "RSS idle/1k"
    );
    let mut json_rows = Vec::new();
    for (t, row) in targets.iter().zip(rows) {
        let rps = med(&row.rps);
        let (p50, p99, ttft) = (med(&row.p50), med(&row.p99), med(&row.ttft));
        let added_chunk = med(&(0..STREAM_CHUNKS)
            .map(|i| chunk_median(row, i) - chunk_median(direct, i))
            .collect::<Vec<_>>());
        let rss = match (row.rss_idle, row.rss_open) {
            (Some(i), Some(o)) => format!("{i:.0}/{o:.0} MB"),
            _ => "-".into(),
        };
        println!(
            "{:<36} {:>10.0} {:>8.2} {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>8.3}ms {:>10}",
            t.name,
            rps,
            rps / floor_rps,
            p50,
            p99,
            p99 - d99,
            ttft - dttft,
            added_chunk,
            rss
        );
        json_rows.push(json!({
            "target": t.name, "rps_32": rps, "rps_ratio_to_nginx": rps / floor_rps,
            "p50_ms_4": p50, "p99_ms_4": p99, "p50_added_ms": p50 - d50, "p99_added_ms": p99 - d99,
            "ttft_ms": ttft, "ttft_added_ms": ttft - dttft, "chunk_added_ms": added_chunk,
            "rss_idle_mb": row.rss_idle, "rss_1000_streams_mb": row.rss_open, "errors": row.errors,
            "runs": {"rps": row.rps, "p50": row.p50, "p99": row.p99, "ttft": row.ttft},
        }));
    }
    let (p50, p99, max) = (
        percentile(prop, 0.5),
        percentile(prop, 0.99),
        percentile(prop, 1.0),
    );
    println!();
    println!(
        "cross-replica propagation ({} trials): block written -> other replica's routing honours it: p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms; requests that chose the blocked pair after the write: {violations}",
        prop.len()
    );
    println!();
    let pool_rows = pool.print();
    let (bare, open, with) = limited.medians();
    println!();
    println!("{}", limited.line());
    println!();
    println!(
        "user-space instructions per request (callgrind, {COUNTED} requests on one connection):"
    );
    let floor = counts.first().map_or(f64::NAN, |c| c.1);
    let mut count_rows = Vec::new();
    for (name, n) in counts {
        println!("  {name:<34} {n:>10.0}  {:.2}x", n / floor);
        count_rows.push(json!({"target": name, "instructions": n, "ratio_to_nginx": n / floor}));
    }
    let summary = json!({
        "instructions_per_request": count_rows,
        "pools": pool_rows, "redis_commands_per_request": pool.redis_commands,
        "pool_rows": pool.rows, "pool_rows_served_after_ms": pool.served_after_ms,
        "extra_keys": EXTRA_KEYS, "keys_rps_before": pool.keys_before, "keys_rps_after": pool.keys_after,
        "rss_mb_with_pools_and_keys": pool.rss_mb,
        "limits": {"rps_neither": limited.rps_bare, "rps_accounting": limited.rps_open,
                   "rps_accounting_and_limits": limited.rps_limited,
                   "ratio_accounting": open / bare, "ratio_accounting_and_limits": with / bare,
                   "redis_round_trips_added_per_request": limited.round_trips_added,
                   "redis_commands_added_per_request": limited.redis_added},
        "runs": opts.runs, "seconds_per_load": opts.seconds, "targets": json_rows,
        "propagation_ms": {"p50": p50, "p99": p99, "max": max, "trials": prop.len(), "violations": violations},
    });
    let path = out_dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    println!("figures written to {}", path.display());
}
