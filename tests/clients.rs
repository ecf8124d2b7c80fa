//! The real coding-agent clients, Claude Code, Gemini CLI and Codex, and the
//! google-genai and OpenAI (Responses API) Python SDKs, run against a gateway in front of the mock
//! upstream and served by a credential of every provider: a streamed text
//! answer, and a round trip through each client's own shell tool. Codex
//! speaks only the Responses API; its tests also run against an openai
//! credential with `responses_api = true` (provider "openai-responses"
//! here), whose upstream serves that API itself.
//!
//! `ops/test` installs the clients (tests/clients/package.json into
//! target/clients, the SDK into target/test-venv) and names them in
//! SWITCHYARD_TEST_CLIENTS and SWITCHYARD_TEST_PYTHON. Each test re-runs
//! itself in a network namespace that has only loopback (`unshare --net`, as
//! root), so nothing a client does can leave the machine: the mock, the
//! gateway and the client all live inside it.
//!
//! With SWITCHYARD_RECORD_FIXTURES=1, the runs whose client speaks the
//! credential's own format write what reached the mock to
//! tests/fixtures/clients/, for the translation tests.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
#![allow(clippy::disallowed_methods)] // The output readers live as long as the client they read.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::mock::{Hit, Kind, offered_tools_of};
use common::tap::Tap;
use common::tap::Tapped;
use common::{CLIENT_KEY, Cred, Gateway, Reply, gateway, key_of};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

/// Set in the re-run test process: it is inside its own network namespace.
const INSIDE: &str = "SWITCHYARD_TEST_NETNS";
/// The longest a client may take for one run.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The model names the clients ask for, by default or for side tasks, each
/// served under its own name.
const MODELS: &[(&str, &str)] = &[
    ("claude-opus-4-6", "claude-opus-4-6"),
    ("claude-opus-4-7", "claude-opus-4-7"),
    ("claude-opus-4-8", "claude-opus-4-8"),
    ("claude-opus-5", "claude-opus-5"),
    ("claude-opus-5-5", "claude-opus-5-5"),
    ("claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("claude-sonnet-4-6", "claude-sonnet-4-6"),
    ("claude-sonnet-5", "claude-sonnet-5"),
    ("claude-sonnet-5-5", "claude-sonnet-5-5"),
    ("claude-haiku-4-5", "claude-haiku-4-5"),
    ("claude-haiku-4-5-20251001", "claude-haiku-4-5-20251001"),
    ("claude-haiku-5-5", "claude-haiku-5-5"),
    ("gemini-2.5-pro", "gemini-2.5-pro"),
    ("gemini-2.5-flash", "gemini-2.5-flash"),
    ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
    ("gemini-3-pro-preview", "gemini-3-pro-preview"),
    ("gemini-3-flash-preview", "gemini-3-flash-preview"),
    ("gemini-3.1-pro-preview", "gemini-3.1-pro-preview"),
    (
        "gemini-3.1-pro-preview-customtools",
        "gemini-3.1-pro-preview-customtools",
    ),
    ("gemini-3.1-flash-lite", "gemini-3.1-flash-lite"),
    (
        "gemini-3.1-flash-lite-preview",
        "gemini-3.1-flash-lite-preview",
    ),
    ("gemini-3.5-flash", "gemini-3.5-flash"),
    ("gemini-3.5-flash-lite", "gemini-3.5-flash-lite"),
    ("gemini-3.8-flash", "gemini-3.8-flash"),
    ("gpt-5.5", "gpt-5.5"),
];

/// The model Codex is configured with: one its catalogue knows, so it
/// sends the tools and settings it sends for a real model.
const CODEX_MODEL: &str = "gpt-5.5";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    ClaudeCode,
    GeminiCli,
    GoogleGenai,
    Codex,
    /// The OpenAI Python SDK's Responses API (`responses.create`, `.stream`).
    OpenAiPython,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::ClaudeCode => "claude-code",
            Client::GeminiCli => "gemini-cli",
            Client::GoogleGenai => "google-genai",
            Client::Codex => "codex",
            Client::OpenAiPython => "openai-python",
        }
    }

    /// The provider that speaks the client's own format, whose runs record
    /// the fixtures; Codex's are recorded against the mock itself.
    fn native(self) -> &'static str {
        match self {
            Client::ClaudeCode => "anthropic",
            Client::GeminiCli | Client::GoogleGenai => "gemini",
            Client::Codex | Client::OpenAiPython => "mock",
        }
    }

    /// The wire format of the client's requests.
    fn kind(self) -> Kind {
        match self {
            Client::ClaudeCode => Kind::Anthropic,
            Client::GeminiCli | Client::GoogleGenai => Kind::Gemini,
            Client::Codex | Client::OpenAiPython => Kind::Responses,
        }
    }

    /// The name of the client's tool that runs a shell command.
    fn shell_tool(self) -> &'static str {
        match self {
            Client::ClaudeCode => "Bash",
            Client::GeminiCli | Client::GoogleGenai | Client::OpenAiPython => "run_shell_command",
            // Its "unified exec" function tool, with the command line as
            // one string.
            Client::Codex => "exec_command",
        }
    }

    /// The arguments of a shell tool call that runs `command`.
    fn shell_args(self, command: &str) -> Value {
        match self {
            Client::Codex => json!({"cmd": command}),
            _ => json!({"command": command}),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// A streamed text answer, printed by the client.
    Text,
    /// A call of the client's shell tool; the client runs it and sends the
    /// result back, and the answer that quotes it is printed.
    Tool,
}

/// The directory of the installed npm clients' executables.
fn clients_bin() -> PathBuf {
    let dir = std::env::var_os("SWITCHYARD_TEST_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/clients/node_modules/.bin")
        });
    for exe in ["claude", "gemini", "codex"] {
        assert!(
            dir.join(exe).exists(),
            "no {exe} in {}: run the test command (ops/test), which installs the clients",
            dir.display()
        );
    }
    dir
}

/// Runs `test` again, alone, in a fresh network namespace whose only
/// interface is loopback, and fails unless it passed there. Returns true in
/// that re-run, where the test does its work.
fn isolated(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    for tool in ["unshare", "ip"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{tool}` is missing: install util-linux and iproute2 (ops/test does)"
        );
    }
    let out = std::process::Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            r#"ip link set lo up && exec "$0" "$@""#,
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed in its network namespace ({})",
        out.status
    );
    false
}

/// What one run of a client left.
struct Run {
    /// What the client sent the gateway, and the statuses it got.
    requests: Vec<Tapped>,
    status: String,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn report(&self, gw: &Gateway) -> String {
        let hits: Vec<String> = gw.mock.hits().iter().map(describe).collect();
        let sent: Vec<String> = self
            .requests
            .iter()
            .map(|r| format!("{} {} -> {:?}", r.method, r.path, r.status))
            .collect();
        format!(
            "client exit: {}, after {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- what the client sent ({})\n{}\n--- the mock's hits ({})\n{}",
            self.status,
            self.took,
            self.stdout,
            tail(&self.stderr, 6000),
            sent.len(),
            sent.join("\n"),
            hits.len(),
            hits.join("\n")
        )
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn describe(hit: &Hit) -> String {
    let body = hit.body.to_string();
    let last = last_message(hit.kind, &hit.body);
    format!(
        "{:?} {} model={} stream={} tools={:?} ({} bytes), last message: {}",
        hit.kind,
        hit.path,
        hit.model,
        hit.stream,
        common::mock::offered_tools_of(hit.kind, &hit.body),
        body.len(),
        tail(&last.map(Value::to_string).unwrap_or_default(), 1500)
    )
}

/// The last message (Gemini content, Responses input item) of a request.
fn last_message(kind: Kind, body: &Value) -> Option<&Value> {
    let list = match kind {
        Kind::Gemini | Kind::GeminiCount => &body["contents"],
        Kind::Responses => &body["input"],
        _ => &body["messages"],
    };
    list.as_array().and_then(|m| m.last())
}

/// Runs `cmd` with a clean environment plus `env`, in `work`, within the
/// timeout, and collects what it printed.
async fn run(mut cmd: tokio::process::Command, env: &[(&str, String)], work: &Path) -> Run {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .env("TERM", "dumb")
        .env("NO_COLOR", "1")
        .env("TMPDIR", work.parent().unwrap().join("tmp"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("the client starts");
    let read = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let status = match tokio::time::timeout(TIMEOUT, child.wait()).await {
        Ok(status) => status.unwrap().to_string(),
        Err(_) => {
            let _ = child.kill().await;
            format!("killed after the {TIMEOUT:?} timeout")
        }
    };
    Run {
        requests: Vec::new(),
        status,
        stdout: stdout.await.unwrap(),
        stderr: stderr.await.unwrap(),
        took: started.elapsed(),
    }
}

/// The per-run directories: a temp HOME and a working directory.
struct Dirs {
    _root: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let work = root.path().join("work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(root.path().join("tmp")).unwrap();
    Dirs {
        _root: root,
        home,
        work,
    }
}

fn prompt(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Text => "Say hello.",
        Scenario::Tool => {
            "Run the shell command that prints the nonce, then tell me what it printed."
        }
    }
}

/// Claude Code in print mode: the gateway as its Anthropic API, the shell
/// tool allowed without asking, and no traffic besides the model calls.
async fn claude_code(url: &str, scenario: Scenario, dirs: &Dirs) -> Run {
    let mut cmd = tokio::process::Command::new(clients_bin().join("claude"));
    cmd.args(["-p", prompt(scenario), "--output-format", "text"])
        .args(["--allowedTools", "Bash"]);
    let env = [
        ("HOME", dirs.home.display().to_string()),
        ("ANTHROPIC_BASE_URL", url.to_string()),
        ("ANTHROPIC_API_KEY", CLIENT_KEY.to_string()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("DISABLE_TELEMETRY", "1".into()),
        ("DISABLE_ERROR_REPORTING", "1".into()),
        ("CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY", "1".into()),
    ];
    run(cmd, &env, &dirs.work).await
}

/// Gemini CLI in headless mode: the gateway as its Gemini API, tools run
/// without asking, no sandbox, no telemetry or usage statistics.
async fn gemini_cli(url: &str, scenario: Scenario, dirs: &Dirs) -> Run {
    let settings = json!({
        "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false},
        "privacy": {"usageStatisticsEnabled": false},
        "telemetry": {"enabled": false},
        // GOOGLE_GEMINI_BASE_URL alone selects the "gateway" auth type, which
        // this version's non-interactive check rejects ("Invalid auth method
        // selected."); the API-key type honours the variable too.
        "security": {"auth": {"selectedType": "gemini-api-key"}},
    });
    let dir = dirs.home.join(".gemini");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("settings.json"), settings.to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(clients_bin().join("gemini"));
    cmd.args(["-p", prompt(scenario), "--output-format", "text"])
        .args(["--approval-mode", "yolo", "--skip-trust"]);
    let env = [
        ("HOME", dirs.home.display().to_string()),
        ("GOOGLE_GEMINI_BASE_URL", url.to_string()),
        ("GEMINI_API_KEY", CLIENT_KEY.to_string()),
        ("GEMINI_SANDBOX", "false".into()),
        ("GEMINI_TELEMETRY_ENABLED", "false".into()),
    ];
    run(cmd, &env, &dirs.work).await
}

/// The google-genai SDK with its default settings but the base URL.
async fn google_genai(url: &str, scenario: Scenario, dirs: &Dirs) -> Run {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/google_genai.py");
    let mut cmd = tokio::process::Command::new(common::python());
    cmd.arg(script).arg(match scenario {
        Scenario::Text => "text",
        Scenario::Tool => "tool",
    });
    let env = [
        ("HOME", dirs.home.display().to_string()),
        ("GOOGLE_GEMINI_BASE_URL", url.to_string()),
        ("GEMINI_API_KEY", CLIENT_KEY.to_string()),
    ];
    run(cmd, &env, &dirs.work).await
}

/// Codex headless (`codex exec`): the gateway as a custom model provider
/// that speaks the Responses API, in a CODEX_HOME of its own; commands run
/// without asking and without its sandbox (which cannot work as root: the
/// test's network namespace is the sandbox); no update check, analytics,
/// feedback, history or session files; and no retries, so a failure shows
/// at once.
async fn codex(url: &str, scenario: Scenario, dirs: &Dirs) -> Run {
    let home = dirs.home.join(".codex");
    std::fs::create_dir_all(&home).unwrap();
    let config = format!(
        r#"model = "{CODEX_MODEL}"
model_provider = "switchyard"
check_for_update_on_startup = false

[model_providers.switchyard]
name = "switchyard"
base_url = "{url}/v1"
env_key = "SWITCHYARD_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[feedback]
enabled = false

[history]
persistence = "none"
"#
    );
    std::fs::write(home.join("config.toml"), config).unwrap();
    let mut cmd = tokio::process::Command::new(clients_bin().join("codex"));
    cmd.args(["exec", "--strict-config", "--ephemeral", "--color", "never"])
        .args([
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
        ])
        .arg(prompt(scenario));
    let env = [
        ("HOME", dirs.home.display().to_string()),
        ("CODEX_HOME", home.display().to_string()),
        ("SWITCHYARD_API_KEY", CLIENT_KEY.to_string()),
    ];
    run(cmd, &env, &dirs.work).await
}

/// The OpenAI SDK's Responses API with its default settings but the base URL.
async fn openai_python(url: &str, scenario: Scenario, dirs: &Dirs) -> Run {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_responses.py");
    let mut cmd = tokio::process::Command::new(common::python());
    cmd.arg(script).arg(match scenario {
        Scenario::Text => "text",
        Scenario::Tool => "tool",
    });
    let env = [
        ("HOME", dirs.home.display().to_string()),
        ("OPENAI_BASE_URL", format!("{url}/v1")),
        ("OPENAI_API_KEY", CLIENT_KEY.to_string()),
    ];
    run(cmd, &env, &dirs.work).await
}

/// One client against one provider's credential, in one scenario.
async fn check(client: Client, provider: &str, scenario: Scenario) {
    // "openai-responses": an openai credential whose upstream serves the
    // Responses API too.
    let cred = match provider {
        "openai-responses" => Cred::new("only", 0, MODELS).responses_api(),
        // The gateway is not used.
        "mock" => Cred::new("only", 0, MODELS),
        _ => Cred::new("only", 0, MODELS).speaking(provider),
    };
    let gw = gateway(&[cred], &[]).await;
    // "mock": the client talks to the mock itself, no gateway between, so
    // the mock's answers are checked against the real client, and what the
    // client sends can be recorded whether or not the gateway serves it.
    let direct = provider == "mock";
    let key = if direct {
        CLIENT_KEY.to_string()
    } else {
        key_of("only")
    };
    let id = uuid::Uuid::new_v4();
    // The nonce is not in the command as written: it reaches the answer
    // only if the command really ran.
    let command = format!("printf 'sy-%s-%s\\n' 42 {id}");
    let nonce = format!("sy-42-{id}");
    let tool = match scenario {
        Scenario::Tool => client.shell_tool(),
        // A tool no client offers: every answer is text.
        Scenario::Text => "-",
    };
    gw.mock.always(
        &key,
        Reply::Call {
            name: tool.to_string(),
            args: client.shell_args(&command),
        },
    );
    let dirs = dirs();
    // The clients talk to the gateway through the tap, which keeps what they sent.
    let tap = Tap::start(if direct {
        gw.mock.addr
    } else {
        gw.running().addr
    })
    .await;
    let mut run = match client {
        Client::ClaudeCode => claude_code(&tap.url, scenario, &dirs).await,
        Client::GeminiCli => gemini_cli(&tap.url, scenario, &dirs).await,
        Client::GoogleGenai => google_genai(&tap.url, scenario, &dirs).await,
        Client::Codex => codex(&tap.url, scenario, &dirs).await,
        Client::OpenAiPython => openai_python(&tap.url, scenario, &dirs).await,
    };
    run.requests = tap.requests();
    println!(
        "{} via {provider} ({scenario:?}): {} in {:?}",
        client.name(),
        run.status,
        run.took
    );
    if provider == client.native() && std::env::var_os("SWITCHYARD_RECORD_FIXTURES").is_some() {
        record(client, scenario, &run.requests, &dirs, &id.to_string());
    }
    let expected = match scenario {
        Scenario::Text => format!("hello from {key}"),
        Scenario::Tool => nonce,
    };
    let ok = run.status == "exit status: 0" && run.stdout.contains(&expected);
    assert!(
        ok,
        "{} via a {provider} credential ({scenario:?}): expected `{expected}` in its output\n{}",
        client.name(),
        run.report(&gw)
    );
    if scenario == Scenario::Tool {
        assert!(
            run.stdout.contains("tool said: "),
            "the answer after the tool ran was not printed\n{}",
            run.report(&gw)
        );
    }
    if client.kind() == Kind::Responses {
        // Passed through to an upstream that serves the Responses API,
        // translated to chat completions for one that does not.
        let expected = match provider {
            "openai-responses" | "mock" => Kind::Responses,
            "openai" => Kind::OpenAi,
            "anthropic" => Kind::Anthropic,
            _ => Kind::Gemini,
        };
        let hits = gw.mock.hits();
        assert!(
            hits.iter().all(|h| h.kind == expected
                || matches!(h.kind, Kind::AnthropicCount | Kind::GeminiCount)),
            "the mock was asked in another format than {expected:?}\n{}",
            run.report(&gw)
        );
    }
    gw.stop().await;
}

/// Writes what the client sent in a same-format run, one file per kind of
/// request, with this machine's paths, the client key and the run's random
/// values replaced by placeholders: tests/fixtures/clients/<client>-<what>.json
/// (`messages`, `responses`, `responses-stream`, `generate`, `stream-generate`, `router`, `count-tokens`, and
/// from the tool runs `tool-call` and `tool-result`), plus a list of every
/// request with the gateway's status, `<client>-<scenario>-requests.json`.
fn record(client: Client, scenario: Scenario, requests: &[Tapped], dirs: &Dirs, id: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clients");
    std::fs::create_dir_all(&dir).unwrap();
    let scrub = |v: &Value| -> Value {
        let text = serde_json::to_string_pretty(v)
            .unwrap()
            .replace(CLIENT_KEY, "<key>")
            .replace(&dirs.work.display().to_string(), "/tmp/work")
            .replace(&dirs.home.display().to_string(), "/tmp/home")
            .replace(&dirs.work.parent().unwrap().display().to_string(), "/tmp")
            .replace(id, "00000000-0000-4000-8000-000000000000");
        serde_json::from_str(&text).unwrap()
    };
    let write = |name: &str, v: &Value| {
        let path = dir.join(format!("{}-{name}.json", client.name()));
        std::fs::write(
            path,
            serde_json::to_string_pretty(&scrub(v)).unwrap() + "\n",
        )
        .unwrap();
    };
    let scenario_name = format!("{scenario:?}").to_lowercase();
    let list: Vec<Value> = requests
        .iter()
        .map(|r| json!({"method": r.method, "path": r.path, "status": r.status, "user-agent": header(r, "user-agent")}))
        .collect();
    write(&format!("{scenario_name}-requests"), &json!(list));
    let mut written: Vec<&str> = Vec::new();
    for r in requests.iter().filter(|r| r.method == "POST") {
        let Some(what) = what_it_is(client, scenario, r) else {
            continue;
        };
        if written.contains(&what) {
            continue;
        }
        written.push(what);
        let headers: serde_json::Map<String, Value> = r
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "host" | "content-length" | "connection"))
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        write(
            what,
            &json!({"method": r.method, "path": r.path, "headers": headers, "body": r.body}),
        );
    }
}

fn header<'a>(r: &'a Tapped, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The fixture a request of a same-format run goes to, if any.
fn what_it_is(client: Client, scenario: Scenario, r: &Tapped) -> Option<&'static str> {
    let kind = match client {
        Client::GoogleGenai | Client::GeminiCli if !r.path.contains("/models/") => Kind::Anthropic,
        client => client.kind(),
    };
    let last = last_message(kind, &r.body)
        .map(Value::to_string)
        .unwrap_or_default();
    let offers_shell = offered_tools_of(kind, &r.body)
        .iter()
        .any(|t| t == client.shell_tool());
    if scenario == Scenario::Tool {
        return if last.contains("tool_result")
            || last.contains("functionResponse")
            || last.contains("function_call_output")
        {
            Some("tool-result")
        } else if offers_shell && matches!(client, Client::GoogleGenai | Client::OpenAiPython) {
            // The other clients offer the same tools in their text runs.
            Some("tool-call")
        } else {
            None
        };
    }
    Some(
        if r.body
            .pointer("/generationConfig/responseJsonSchema")
            .is_some()
        {
            "router"
        } else if r.path.contains("count_tokens") || r.path.contains(":countTokens") {
            "count-tokens"
        } else if r.path.contains(":streamGenerateContent") {
            "stream-generate"
        } else if r.path.contains(":generateContent") {
            "generate"
        } else if r.path.ends_with("/responses") && r.body["stream"] == true {
            "responses-stream"
        } else if r.path.ends_with("/responses") {
            "responses"
        } else {
            "messages"
        },
    )
}

macro_rules! client_tests {
    ($($name:ident: $client:ident, $provider:literal, $scenario:ident;)*) => {$(
        #[test]
        fn $name() {
            if isolated(stringify!($name)) {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(check(Client::$client, $provider, Scenario::$scenario));
            }
        }
    )*};
}

client_tests! {
    claude_code_text_via_anthropic: ClaudeCode, "anthropic", Text;
    claude_code_text_via_openai: ClaudeCode, "openai", Text;
    claude_code_text_via_gemini: ClaudeCode, "gemini", Text;
    claude_code_tool_via_anthropic: ClaudeCode, "anthropic", Tool;
    claude_code_tool_via_openai: ClaudeCode, "openai", Tool;
    claude_code_tool_via_gemini: ClaudeCode, "gemini", Tool;
    gemini_cli_text_via_gemini: GeminiCli, "gemini", Text;
    gemini_cli_text_via_openai: GeminiCli, "openai", Text;
    gemini_cli_text_via_anthropic: GeminiCli, "anthropic", Text;
    gemini_cli_tool_via_gemini: GeminiCli, "gemini", Tool;
    gemini_cli_tool_via_openai: GeminiCli, "openai", Tool;
    gemini_cli_tool_via_anthropic: GeminiCli, "anthropic", Tool;
    google_genai_text_via_gemini: GoogleGenai, "gemini", Text;
    google_genai_text_via_openai: GoogleGenai, "openai", Text;
    google_genai_text_via_anthropic: GoogleGenai, "anthropic", Text;
    google_genai_tool_via_gemini: GoogleGenai, "gemini", Tool;
    google_genai_tool_via_openai: GoogleGenai, "openai", Tool;
    google_genai_tool_via_anthropic: GoogleGenai, "anthropic", Tool;
    codex_text_direct_to_the_mock: Codex, "mock", Text;
    codex_tool_direct_to_the_mock: Codex, "mock", Tool;
    codex_text_via_openai_responses: Codex, "openai-responses", Text;
    codex_text_via_openai: Codex, "openai", Text;
    codex_text_via_anthropic: Codex, "anthropic", Text;
    codex_text_via_gemini: Codex, "gemini", Text;
    codex_tool_via_openai_responses: Codex, "openai-responses", Tool;
    codex_tool_via_openai: Codex, "openai", Tool;
    codex_tool_via_anthropic: Codex, "anthropic", Tool;
    codex_tool_via_gemini: Codex, "gemini", Tool;
    openai_python_text_direct_to_the_mock: OpenAiPython, "mock", Text;
    openai_python_tool_direct_to_the_mock: OpenAiPython, "mock", Tool;
    openai_python_text_via_openai_responses: OpenAiPython, "openai-responses", Text;
    openai_python_text_via_openai: OpenAiPython, "openai", Text;
    openai_python_text_via_anthropic: OpenAiPython, "anthropic", Text;
    openai_python_text_via_gemini: OpenAiPython, "gemini", Text;
    openai_python_tool_via_openai_responses: OpenAiPython, "openai-responses", Tool;
    openai_python_tool_via_openai: OpenAiPython, "openai", Tool;
    openai_python_tool_via_anthropic: OpenAiPython, "anthropic", Tool;
    openai_python_tool_via_gemini: OpenAiPython, "gemini", Tool;
}
