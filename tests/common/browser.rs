//! A small WebDriver client for tests: it starts Debian's chromedriver on a
//! free port, opens a headless Chromium session with a fresh profile in a temp
//! dir, and drives it through the W3C WebDriver REST endpoints. Every method
//! panics with a clear message when the browser reports an error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::services::free_port;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
const POLL: Duration = Duration::from_millis(100);

/// An error the WebDriver server answered with (or a failed request).
#[derive(Debug)]
struct WdError {
    /// The WebDriver error code, such as "no such element".
    error: String,
    message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

/// A headless Chromium session, driven through its own chromedriver.
pub struct Browser {
    http: reqwest::Client,
    /// chromedriver's port.
    port: u16,
    /// The WebDriver session's id.
    id: String,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    /// Killed on drop, after the session (and with it Chromium) has ended.
    _driver: Child,
    /// Chromium's profile; removed when the browser is dropped.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and opens a session in a fresh headless Chromium.
    pub async fn start() -> Browser {
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        let root = format!("http://127.0.0.1:{port}");

        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = driver.try_wait() {
                panic!("chromedriver exited before it was ready: {status}");
            }
            let last = match http.get(format!("{root}/status")).send().await {
                Ok(response) => {
                    let body = response.text().await.unwrap_or_default();
                    let ready = serde_json::from_str::<Value>(&body)
                        .is_ok_and(|v| v["value"]["ready"] == Value::Bool(true));
                    if ready {
                        break;
                    }
                    body
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                panic!(
                    "chromedriver on port {port} was not ready within 20 s; last answer: {last}"
                );
            }
            tokio::time::sleep(POLL).await;
        }

        let profile = tempfile::Builder::new()
            .prefix("switchyard-chromium-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a Chromium profile dir: {e}"));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--window-size=1280,900",
                ],
            },
        }}});
        let created = request(
            &http,
            Method::POST,
            &format!("{root}/session"),
            Some(capabilities),
        )
        .await
        .unwrap_or_else(|e| panic!("chromedriver did not create a session: {e}"));
        let id = created["sessionId"].as_str().unwrap_or_else(|| {
            panic!("chromedriver answered a new session without an id: {created}")
        });
        Browser {
            session: format!("{root}/session/{id}"),
            id: id.to_owned(),
            port,
            http,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Sends one command to the session: `path` is relative to it.
    async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WdError> {
        request(&self.http, method, &format!("{}{path}", self.session), body).await
    }

    /// Like `try_call`, but panics on an error; `what` names the command.
    async fn call(&self, what: &str, method: Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {what} failed: {e}"))
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.call(
            &format!("goto {url}"),
            Method::POST,
            "/url",
            Some(json!({"url": url})),
        )
        .await;
    }

    /// The current page's URL.
    pub async fn url(&self) -> String {
        let url = self.call("get url", Method::GET, "/url", None).await;
        url.as_str()
            .unwrap_or_else(|| panic!("WebDriver answered the URL with {url}"))
            .to_owned()
    }

    /// The id of the first element matching `css`, or None when there is none.
    pub async fn find(&self, css: &str) -> Option<String> {
        let body = json!({"using": "css selector", "value": css});
        match self.try_call(Method::POST, "/element", Some(body)).await {
            Ok(element) => Some(
                element[ELEMENT_KEY]
                    .as_str()
                    .unwrap_or_else(|| panic!("WebDriver answered find {css:?} with {element}"))
                    .to_owned(),
            ),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("WebDriver find {css:?} failed: {e}"),
        }
    }

    /// The id of the first element matching `css`, waiting up to `within` for it.
    pub async fn wait_for(&self, css: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(id) = self.find(css).await {
                return id;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no element matches {css:?} after {within:?}\n{}",
                    self.describe().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The id of the element matching `css` right now; panics if there is none.
    async fn element(&self, css: &str) -> String {
        match self.find(css).await {
            Some(id) => id,
            None => panic!("no element matches {css:?}\n{}", self.describe().await),
        }
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        let path = format!("/element/{id}/click");
        self.call(
            &format!("click {css:?}"),
            Method::POST,
            &path,
            Some(json!({})),
        )
        .await;
    }

    /// Clears the input matching `css`, then types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        let clear = format!("/element/{id}/clear");
        self.call(
            &format!("clear {css:?}"),
            Method::POST,
            &clear,
            Some(json!({})),
        )
        .await;
        let value = format!("/element/{id}/value");
        let body = json!({"text": text});
        self.call(
            &format!("type into {css:?}"),
            Method::POST,
            &value,
            Some(body),
        )
        .await;
    }

    /// The rendered text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        let path = format!("/element/{id}/text");
        let text = self
            .call(&format!("text of {css:?}"), Method::GET, &path, None)
            .await;
        text.as_str()
            .unwrap_or_else(|| panic!("WebDriver answered the text of {css:?} with {text}"))
            .to_owned()
    }

    /// Waits up to `within` until the element matching `css` shows `needle`.
    pub async fn wait_until_text(&self, css: &str, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let text = self.try_text(css).await;
            if text.as_deref().is_some_and(|t| t.contains(needle)) {
                return;
            }
            if Instant::now() >= deadline {
                let seen = text.map_or_else(|| "no such element".to_owned(), |t| format!("{t:?}"));
                panic!(
                    "{css:?} did not show {needle:?} within {within:?}; it shows {seen}\n{}",
                    self.describe().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The text of the element matching `css`, or None when there is none (or
    /// it went stale between finding and reading it).
    async fn try_text(&self, css: &str) -> Option<String> {
        let body = json!({"using": "css selector", "value": css});
        let element = self
            .try_call(Method::POST, "/element", Some(body))
            .await
            .ok()?;
        let id = element[ELEMENT_KEY].as_str()?;
        let text = self
            .try_call(Method::GET, &format!("/element/{id}/text"), None)
            .await
            .ok()?;
        text.as_str().map(str::to_owned)
    }

    /// The page's HTML as the browser has it now.
    pub async fn page_source(&self) -> String {
        let source = self.call("page source", Method::GET, "/source", None).await;
        source
            .as_str()
            .unwrap_or_else(|| panic!("WebDriver answered the page source with {source}"))
            .to_owned()
    }

    /// Runs `script` as a function body with `args` as `arguments`, and
    /// returns what it returns.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        let body = json!({"script": script, "args": args});
        self.call("execute script", Method::POST, "/execute/sync", Some(body))
            .await
    }

    /// Runs `script`, which ends by calling `arguments[arguments.length-1](result)`,
    /// and returns that result.
    pub async fn run_async(&self, script: &str, args: Vec<Value>) -> Value {
        let body = json!({"script": script, "args": args});
        self.call(
            "execute async script",
            Method::POST,
            "/execute/async",
            Some(body),
        )
        .await
    }

    /// Resizes the browser window.
    pub async fn set_window(&self, width: u32, height: u32) {
        let body = json!({"width": width, "height": height});
        self.call("set window rect", Method::POST, "/window/rect", Some(body))
            .await;
    }

    /// Writes a PNG screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self
            .call("screenshot", Method::GET, "/screenshot", None)
            .await;
        let png = png
            .as_str()
            .unwrap_or_else(|| panic!("WebDriver answered the screenshot with {png}"));
        let bytes = base64_decode(png).unwrap_or_else(|e| panic!("screenshot is not base64: {e}"));
        std::fs::write(path, bytes)
            .unwrap_or_else(|e| panic!("cannot write screenshot to {}: {e}", path.display()));
    }

    /// The cookies visible to the current page, as WebDriver cookie objects.
    pub async fn cookies(&self) -> Vec<Value> {
        let cookies = self.call("get cookies", Method::GET, "/cookie", None).await;
        match cookies {
            Value::Array(cookies) => cookies,
            other => panic!("WebDriver answered the cookies with {other}"),
        }
    }

    /// The current URL and body text, for a failure message. Never panics.
    async fn describe(&self) -> String {
        let url = match self.try_call(Method::GET, "/url", None).await {
            Ok(Value::String(url)) => url,
            Ok(other) => other.to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        let script = json!({
            "script": "return document.body ? document.body.innerText : '(no body)';",
            "args": [],
        });
        let body = match self
            .try_call(Method::POST, "/execute/sync", Some(script))
            .await
        {
            Ok(Value::String(text)) => text,
            Ok(other) => other.to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        format!("page URL: {url}\npage text:\n{body}")
    }
}

impl Drop for Browser {
    /// Ends the session, which makes chromedriver quit Chromium: killing
    /// chromedriver alone would leave Chromium running. Drop cannot await, so
    /// this is one plain blocking HTTP request, and best effort.
    fn drop(&mut self) {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.id, self.port
        );
        if conn.write_all(request.as_bytes()).is_ok() {
            // chromedriver answers once Chromium has quit, but may keep the
            // connection open: read just the one answer.
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            while !http_answer_complete(&answer) {
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                }
            }
        }
    }
}

/// Whether `answer` holds a whole HTTP answer: its headers and as many body
/// bytes as its Content-Length says.
fn http_answer_complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let length = String::from_utf8_lossy(&answer[..end])
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    answer.len() >= end + 4 + length
}

/// Sends one WebDriver request and returns the answer's `value`.
async fn request(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, WdError> {
    let failed = |message: String| WdError {
        error: "request failed".to_owned(),
        message,
    };
    let mut builder = http.request(method.clone(), url);
    if let Some(body) = body {
        builder = builder.json(&body);
    }
    let response = builder
        .send()
        .await
        .map_err(|e| failed(format!("{method} {url}: {e}")))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| failed(format!("{method} {url}: reading the answer: {e}")))?;
    let mut answer: Value = serde_json::from_str(&text).map_err(|_| {
        failed(format!(
            "{method} {url} answered {status} with non-JSON: {text}"
        ))
    })?;
    let value = answer["value"].take();
    if status.is_success() {
        return Ok(value);
    }
    match value["error"].as_str() {
        Some(error) => Err(WdError {
            error: error.to_owned(),
            message: value["message"].as_str().unwrap_or_default().to_owned(),
        }),
        None => Err(failed(format!("{method} {url} answered {status}: {text}"))),
    }
}

/// Decodes standard base64 (padding optional, whitespace ignored).
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut bits: u32 = 0;
    let mut count = 0;
    for (i, c) in text.bytes().enumerate() {
        if c.is_ascii_whitespace() || c == b'=' {
            continue;
        }
        let six = sextet(c).ok_or_else(|| format!("byte {c:#04x} at {i}"))?;
        bits = (bits << 6) | six;
        count += 1;
        if count == 4 {
            out.extend_from_slice(&bits.to_be_bytes()[1..]);
            bits = 0;
            count = 0;
        }
    }
    match count {
        0 => {}
        2 => out.push((bits >> 4) as u8),
        3 => out.extend_from_slice(&((bits >> 2) as u16).to_be_bytes()),
        _ => return Err("truncated input".to_owned()),
    }
    Ok(out)
}
