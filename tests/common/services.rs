//! Real Postgres, Redis and nginx servers that a test starts itself, on free
//! ports in a temp dir, and stops (or kills) when it is done with them. Never
//! a server the test did not start.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(tag: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("switchyard-{tag}-"))
        .tempdir()
        .unwrap();
    // Servers that drop root (Postgres) must be able to reach into it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what}: not within {timeout:?}");
}

fn is_root() -> bool {
    // SAFETY-free check: root's home is /root and `id -u` says 0.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// The `command:` of docker-compose.yml's `redis` service, after its
/// `redis-server`.
fn compose_redis_args() -> Vec<String> {
    let compose = std::fs::read_to_string(repo_file("docker-compose.yml")).unwrap();
    let service = compose
        .split("\n  redis:\n")
        .nth(1)
        .expect("docker-compose.yml has a redis service");
    let line = service
        .lines()
        .find_map(|l| l.trim().strip_prefix("command:"))
        .expect("the redis service has a command");
    let args: Vec<String> = serde_json::from_str(line.trim()).expect("a JSON-style list");
    assert_eq!(args[0], "redis-server");
    args[1..].to_vec()
}

/// A Redis server.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Its settings: none kept on disk, or what the compose file gives it.
    settings: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::with_settings(
            // DEBUG POPULATE fills it with millions of keys in a moment.
            [
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
            ]
            .map(String::from)
            .to_vec(),
        )
    }

    /// Redis with the arguments the compose file's `redis` service runs it
    /// with (its `command:` after `redis-server`).
    pub fn as_in_compose() -> Self {
        Self::with_settings(compose_redis_args())
    }

    fn with_settings(settings: Vec<String>) -> Self {
        let mut r = Self {
            port: free_port(),
            dir: temp_dir("redis"),
            child: None,
            settings,
        };
        r.launch();
        r
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.settings)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (the test command installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_until("redis answers PING", Duration::from_secs(10), || {
            redis_ping(port)
        });
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: Redis gone without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: Redis hangs, its connections stay open and silent.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: Redis answers again.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Starts it again on the same port, empty, with `extra` settings from
    /// its first answer on (`--maxmemory 1`, say).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill();
        let plain = self.settings.clone();
        self.settings.extend(extra.iter().map(|s| s.to_string()));
        self.launch();
        self.settings = plain;
    }

    /// Runs a command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Postgres cluster of its own (initdb in a temp dir), run as the
/// `postgres` user when the tests run as root.
pub struct PgServer {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    running: bool,
}

fn pg_bin() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .expect("Postgres server binaries (the test command installs them)")
}

impl PgServer {
    pub fn start() -> Self {
        let dir = temp_dir("pg");
        let pg = Self {
            port: free_port(),
            dir,
            bin: pg_bin(),
            running: false,
        };
        let data = pg.data();
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(pg.dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        writeln!(
            conf,
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200",
            pg.port
        )
        .unwrap();
        let mut pg = pg;
        pg.start_again();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.output(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn output(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// Starts (or restarts) the server and waits until it takes connections:
    /// up to 90 s, for a start-up slowed by the rest of the suite starting
    /// its own servers on the same two cores (nothing here is timed).
    pub fn start_again(&mut self) {
        let data = self.data();
        let log = self.dir.path().join("postgres.log");
        let args = [
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "90",
            "start",
        ];
        let out = self.output("pg_ctl", &args);
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}{}\npostgres.log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.running = true;
    }

    /// Stops the server (fast shutdown: sessions are disconnected).
    pub fn stop(&mut self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
        self.running = false;
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let exe = self.bin.join("pg_ctl");
            let mut cmd = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(exe);
                c
            } else {
                Command::new(exe)
            };
            let _ = cmd
                .args([
                    "-D",
                    data.to_str().unwrap_or_default(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .output();
        }
    }
}

/// nginx in front of `upstreams`, with the repository's proxy settings.
pub struct Nginx {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

impl Nginx {
    pub fn start(upstreams: &[SocketAddr]) -> Self {
        Self::start_under(upstreams, &[])
    }

    /// nginx as one process (no master) run by `wrapper` (a profiler, say).
    pub fn start_under(upstreams: &[SocketAddr], wrapper: &[&str]) -> Self {
        let dir = temp_dir("nginx");
        let port = free_port();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("        server {a} max_fails=0;\n"))
            .collect();
        let template = std::fs::read_to_string(repo_file("ops/nginx/local.conf.in")).unwrap();
        let conf = template
            .replace("@PREFIX@", dir.path().to_str().unwrap())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@UPSTREAMS@", &servers)
            .replace(
                "@PROXY_CONF@",
                repo_file("ops/nginx/proxy.conf").to_str().unwrap(),
            );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(nginx_bin());
                c
            }
            None => Command::new(nginx_bin()),
        };
        let globals = if wrapper.is_empty() {
            "daemon off;"
        } else {
            "daemon off; master_process off;"
        };
        let child = cmd
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", globals])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx runs (the test command installs it)");
        wait_until("nginx listens", Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            port,
            _dir: dir,
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn nginx_bin() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("nginx")
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
