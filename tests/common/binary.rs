//! The real `switchyard` binary as a child process.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    pub url: String,
    /// Every line it wrote to stderr.
    pub logs: Arc<Mutex<Vec<String>>>,
    pub dir: Option<tempfile::TempDir>,
}

impl Binary {
    /// Starts the binary listening on a free port and waits for its
    /// "switchyard listening" log line.
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Binary {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(args)
            .env("SWITCHYARD_LISTEN", "127.0.0.1:0")
            .env_remove("SWITCHYARD_LOG")
            .env_remove("RUST_LOG")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "switchyard listening" {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(v["addr"].as_str().unwrap().to_string());
                        }
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr: SocketAddr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the binary listens within 30 s: {:#?}",
                    logs.lock().unwrap()
                )
            })
            .expect("a listening line")
            .parse()
            .unwrap();
        Binary {
            child,
            addr,
            url: format!("http://{addr}"),
            logs,
            dir: None,
        }
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().expect("running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the process exits")
            .unwrap();
        status.code().expect("exited, not killed")
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The value of one metric line (`name{labels}` exactly as rendered).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
    }
}
