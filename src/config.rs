//! The gateway's settings: one typed struct, read once at start-up from the
//! environment and the TOML file's `[settings]` table (the environment wins),
//! validated before anything starts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::routing::{Cooldowns, RoutingMode};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: Option<Secret>,
    pub redis_url: Option<Secret>,
    pub redis_prefix: String,
    pub replica_id: String,
    /// Extra rounds over the candidates after the first.
    pub request_retry: u32,
    /// The longest a request waits, in all, for blocks to end.
    pub max_retry_wait_ms: u64,
    /// How long a conversation stays with the candidate that served it last.
    pub affinity_ttl_ms: u64,
    /// How long a probe's claim lasts when its request never settles it
    /// (its replica died): the next request probes after that.
    pub probe_ttl_ms: u64,
    pub routing: RoutingMode,
    pub admin_key: Option<Secret>,
    pub max_body_bytes: usize,
    /// The bytes of request bodies a replica holds at once; beyond, 503.
    pub max_inflight_body_bytes: usize,
    /// The largest upstream answer read whole; a larger one is the
    /// upstream's failure.
    pub max_answer_bytes: usize,
    /// A request body that sends nothing this long is answered 408.
    pub body_timeout: Duration,
    /// A client connection's request head must be complete this long after
    /// it began (after the connection opened, for its first request).
    pub header_timeout: Duration,
    /// How long an idle client connection is kept between requests: longer
    /// than nginx keeps its own idle upstream connections (60 s).
    pub keep_alive: Duration,
    pub cooldowns: Cooldowns,
    pub timeouts: Timeouts,
    pub proxies: crate::upstream::Proxies,
    /// PEM certificates trusted for TLS upstreams besides the built-in set.
    pub ssl_cert_file: Option<PathBuf>,
    pub drain: Drain,
    pub redis_timeout: Duration,
    /// How often the embedded-mode file is checked for changes.
    pub reload_interval: Duration,
    /// How often cluster mode reloads from Postgres without a notification.
    pub reconcile_interval: Duration,
    /// Runtime worker threads; `None`: one per CPU.
    pub worker_threads: Option<usize>,
    /// Which requests get a log line of their own.
    pub access_log: AccessLog,
    /// Whether requests are counted into `usage` (section 9). Off, keys'
    /// limits still hold; only what they need is read from answers.
    pub usage: Usage,
    /// The embedded-mode TOML file.
    pub config_file: Option<PathBuf>,
}

/// Which requests get a log line of their own. 5xx answers always do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// Every request.
    All,
    /// Requests that failed (4xx), fell back, or waited for a block.
    Errors,
    /// Only 5xx answers.
    Off,
}

impl std::str::FromStr for AccessLog {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(AccessLog::All),
            "errors" => Ok(AccessLog::Errors),
            "off" => Ok(AccessLog::Off),
            other => Err(format!("{other:?} is not one of all, errors, off")),
        }
    }
}

/// `SWITCHYARD_USAGE`: whether this replica keeps the usage ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    On,
    Off,
}

impl std::str::FromStr for Usage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Usage::On),
            "off" => Ok(Usage::Off),
            other => Err(format!("{other:?} is not one of on, off")),
        }
    }
}

/// Upstream timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// From sending the request to the response headers.
    pub first_byte: Duration,
    /// Longest silence between two chunks of a response body.
    pub idle: Duration,
}

/// SIGTERM behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    /// Between `/readyz` turning 503 and the listener closing.
    pub grace: Duration,
    /// How long open requests and streams may take to finish.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("REDIS_URL is set without DATABASE_URL: cluster mode needs both")]
    RedisWithoutDatabase,
}

/// The settings and their defaults, by environment variable name. The TOML
/// `[settings]` key of each is the name lower-cased without `SWITCHYARD_`.
pub const SETTINGS: &[(&str, &str)] = &[
    ("SWITCHYARD_LISTEN", "0.0.0.0:8080"),
    ("DATABASE_URL", ""),
    ("REDIS_URL", ""),
    ("SWITCHYARD_REDIS_PREFIX", "switchyard:"),
    ("SWITCHYARD_REPLICA_ID", ""),
    ("SWITCHYARD_REQUEST_RETRY", "3"),
    ("SWITCHYARD_MAX_RETRY_WAIT_MS", "30000"),
    ("SWITCHYARD_AFFINITY_TTL_MS", "3600000"),
    ("SWITCHYARD_PROBE_TTL_MS", "15000"),
    ("SWITCHYARD_BODY_TIMEOUT_MS", "30000"),
    ("SWITCHYARD_HEADER_TIMEOUT_MS", "10000"),
    ("SWITCHYARD_KEEPALIVE_TIMEOUT_MS", "75000"),
    ("SWITCHYARD_ROUTING", "round-robin"),
    ("SWITCHYARD_ADMIN_KEY", ""),
    ("SWITCHYARD_MAX_BODY_BYTES", "33554432"),
    ("SWITCHYARD_MAX_INFLIGHT_BODY_BYTES", "268435456"),
    ("SWITCHYARD_MAX_ANSWER_BYTES", "33554432"),
    ("SWITCHYARD_COOLDOWN_MODEL_NOT_SUPPORTED_MS", "43200000"),
    ("SWITCHYARD_COOLDOWN_NOT_FOUND_MS", "43200000"),
    ("SWITCHYARD_COOLDOWN_UNAUTHORIZED_MS", "1800000"),
    ("SWITCHYARD_COOLDOWN_PAYMENT_REQUIRED_MS", "1800000"),
    ("SWITCHYARD_COOLDOWN_FORBIDDEN_MS", "1800000"),
    ("SWITCHYARD_COOLDOWN_UPSTREAM_ERROR_MS", "60000"),
    ("SWITCHYARD_QUOTA_BASE_MS", "1000"),
    ("SWITCHYARD_QUOTA_CAP_MS", "1800000"),
    ("SWITCHYARD_CONNECT_TIMEOUT_MS", "5000"),
    ("SWITCHYARD_FIRST_BYTE_TIMEOUT_MS", "300000"),
    ("SWITCHYARD_IDLE_TIMEOUT_MS", "120000"),
    ("SWITCHYARD_DRAIN_GRACE_MS", "1000"),
    ("SWITCHYARD_DRAIN_TIMEOUT_MS", "30000"),
    ("SWITCHYARD_REDIS_TIMEOUT_MS", "250"),
    ("SWITCHYARD_RELOAD_INTERVAL_MS", "500"),
    ("SWITCHYARD_RECONCILE_INTERVAL_MS", "2000"),
    ("SWITCHYARD_WORKER_THREADS", ""),
    ("SWITCHYARD_ACCESS_LOG", "errors"),
    ("SWITCHYARD_USAGE", "on"),
];

/// Where setting values come from: the environment and the file's
/// `[settings]` table. Tests build one by hand; `main` reads the process.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub env: HashMap<String, String>,
    pub file: HashMap<String, String>,
    pub config_file: Option<PathBuf>,
    pub host_name: Option<String>,
}

impl Sources {
    /// The value of a setting: the environment, then the file, then the default.
    fn get(&self, name: &str) -> Option<String> {
        if let Some(v) = self.env.get(name).filter(|v| !v.is_empty()) {
            return Some(v.clone());
        }
        let key = file_key(name);
        if let Some(v) = self.file.get(&key).filter(|v| !v.is_empty()) {
            return Some(v.clone());
        }
        SETTINGS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d.to_string())
            .filter(|d| !d.is_empty())
    }
}

/// The usual proxy variables, lower-case names first (as curl reads them).
/// Upstream connections tunnel through a proxy with `CONNECT`, which only an
/// HTTP proxy speaks: any other scheme is refused at start-up rather than
/// failing every request.
fn proxies(s: &Sources) -> Result<crate::upstream::Proxies, ConfigError> {
    // (the name found, its value)
    let var = |name: &str| {
        [name.to_ascii_lowercase(), name.to_string()]
            .into_iter()
            .find_map(|n| {
                let v = s.env.get(&n)?.trim().to_string();
                (!v.is_empty()).then_some((n, v))
            })
    };
    let proxy = |name: &str| -> Result<Option<Secret>, ConfigError> {
        let Some((found, url)) = var(name) else {
            return Ok(None);
        };
        match url.split_once("://") {
            Some((scheme, _)) if !scheme.eq_ignore_ascii_case("http") => {
                Err(ConfigError::Invalid {
                    name: found,
                    reason: format!(
                        "a {scheme}:// proxy is not supported: upstream connections tunnel through an http:// proxy"
                    ),
                })
            }
            _ => Ok(Some(Secret::new(url))),
        }
    };
    Ok(crate::upstream::Proxies {
        all: proxy("ALL_PROXY")?,
        http: proxy("HTTP_PROXY")?,
        https: proxy("HTTPS_PROXY")?,
        no: var("NO_PROXY").map(|(_, v)| v),
    })
}

/// The TOML key of a setting: `SWITCHYARD_REQUEST_RETRY` is `request_retry`.
pub fn file_key(name: &str) -> String {
    name.trim_start_matches("SWITCHYARD_").to_ascii_lowercase()
}

fn parse<T: std::str::FromStr>(s: &Sources, name: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let raw = s.get(name).unwrap_or_default();
    raw.trim()
        .parse()
        .map_err(|e: T::Err| ConfigError::Invalid {
            name: name.to_string(),
            reason: format!("{raw:?} is not valid: {e}"),
        })
}

fn millis(s: &Sources, name: &str) -> Result<u64, ConfigError> {
    parse::<u64>(s, name)
}

fn positive_ms(s: &Sources, name: &str) -> Result<Duration, ConfigError> {
    let ms = millis(s, name)?;
    if ms == 0 {
        return Err(ConfigError::Invalid {
            name: name.to_string(),
            reason: "must be greater than 0".into(),
        });
    }
    Ok(Duration::from_millis(ms))
}

fn positive_bytes(s: &Sources, name: &str) -> Result<usize, ConfigError> {
    let n: usize = parse(s, name)?;
    if n == 0 {
        return Err(ConfigError::Invalid {
            name: name.to_string(),
            reason: "must be greater than 0".into(),
        });
    }
    Ok(n)
}

impl Config {
    pub fn load(s: &Sources) -> Result<Self, ConfigError> {
        let database_url = s.get("DATABASE_URL").map(Secret::new);
        let redis_url = s.get("REDIS_URL").map(Secret::new);
        if redis_url.is_some() && database_url.is_none() {
            return Err(ConfigError::RedisWithoutDatabase);
        }
        let max_body_bytes = positive_bytes(s, "SWITCHYARD_MAX_BODY_BYTES")?;
        let max_inflight_body_bytes = positive_bytes(s, "SWITCHYARD_MAX_INFLIGHT_BODY_BYTES")?;
        if max_inflight_body_bytes < max_body_bytes {
            return Err(ConfigError::Invalid {
                name: "SWITCHYARD_MAX_INFLIGHT_BODY_BYTES".into(),
                reason: "must not be smaller than SWITCHYARD_MAX_BODY_BYTES: a body of the largest size could never be taken".into(),
            });
        }
        let cooldowns = Cooldowns {
            model_not_supported_ms: millis(s, "SWITCHYARD_COOLDOWN_MODEL_NOT_SUPPORTED_MS")?,
            not_found_ms: millis(s, "SWITCHYARD_COOLDOWN_NOT_FOUND_MS")?,
            unauthorized_ms: millis(s, "SWITCHYARD_COOLDOWN_UNAUTHORIZED_MS")?,
            payment_required_ms: millis(s, "SWITCHYARD_COOLDOWN_PAYMENT_REQUIRED_MS")?,
            forbidden_ms: millis(s, "SWITCHYARD_COOLDOWN_FORBIDDEN_MS")?,
            upstream_error_ms: millis(s, "SWITCHYARD_COOLDOWN_UPSTREAM_ERROR_MS")?,
            quota_base_ms: positive_ms(s, "SWITCHYARD_QUOTA_BASE_MS")?.as_millis() as u64,
            quota_cap_ms: positive_ms(s, "SWITCHYARD_QUOTA_CAP_MS")?.as_millis() as u64,
        };
        if cooldowns.quota_cap_ms < cooldowns.quota_base_ms {
            return Err(ConfigError::Invalid {
                name: "SWITCHYARD_QUOTA_CAP_MS".into(),
                reason: "must not be shorter than SWITCHYARD_QUOTA_BASE_MS".into(),
            });
        }
        let replica_id = s
            .get("SWITCHYARD_REPLICA_ID")
            .or_else(|| s.host_name.clone())
            .unwrap_or_else(|| "switchyard".into());
        let redis_prefix = s.get("SWITCHYARD_REDIS_PREFIX").unwrap_or_default();
        Ok(Self {
            listen: parse(s, "SWITCHYARD_LISTEN")?,
            database_url,
            redis_url,
            redis_prefix,
            replica_id,
            request_retry: parse(s, "SWITCHYARD_REQUEST_RETRY")?,
            max_retry_wait_ms: millis(s, "SWITCHYARD_MAX_RETRY_WAIT_MS")?,
            affinity_ttl_ms: millis(s, "SWITCHYARD_AFFINITY_TTL_MS")?,
            probe_ttl_ms: millis(s, "SWITCHYARD_PROBE_TTL_MS")?,
            routing: parse(s, "SWITCHYARD_ROUTING")?,
            admin_key: s.get("SWITCHYARD_ADMIN_KEY").map(Secret::new),
            max_body_bytes,
            max_inflight_body_bytes,
            max_answer_bytes: positive_bytes(s, "SWITCHYARD_MAX_ANSWER_BYTES")?,
            body_timeout: positive_ms(s, "SWITCHYARD_BODY_TIMEOUT_MS")?,
            header_timeout: positive_ms(s, "SWITCHYARD_HEADER_TIMEOUT_MS")?,
            keep_alive: positive_ms(s, "SWITCHYARD_KEEPALIVE_TIMEOUT_MS")?,
            cooldowns,
            timeouts: Timeouts {
                connect: positive_ms(s, "SWITCHYARD_CONNECT_TIMEOUT_MS")?,
                first_byte: positive_ms(s, "SWITCHYARD_FIRST_BYTE_TIMEOUT_MS")?,
                idle: positive_ms(s, "SWITCHYARD_IDLE_TIMEOUT_MS")?,
            },
            proxies: proxies(s)?,
            ssl_cert_file: s
                .env
                .get("SSL_CERT_FILE")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from),
            drain: Drain {
                grace: Duration::from_millis(millis(s, "SWITCHYARD_DRAIN_GRACE_MS")?),
                timeout: Duration::from_millis(millis(s, "SWITCHYARD_DRAIN_TIMEOUT_MS")?),
            },
            redis_timeout: positive_ms(s, "SWITCHYARD_REDIS_TIMEOUT_MS")?,
            reload_interval: positive_ms(s, "SWITCHYARD_RELOAD_INTERVAL_MS")?,
            reconcile_interval: positive_ms(s, "SWITCHYARD_RECONCILE_INTERVAL_MS")?,
            access_log: parse(s, "SWITCHYARD_ACCESS_LOG")?,
            usage: parse(s, "SWITCHYARD_USAGE")?,
            worker_threads: match s.get("SWITCHYARD_WORKER_THREADS") {
                None => None,
                Some(_) => Some(parse::<usize>(s, "SWITCHYARD_WORKER_THREADS")?).filter(|n| *n > 0),
            },
            config_file: s.config_file.clone(),
        })
    }

    /// Settings for tests: listen on an ephemeral port, everything else default.
    pub fn for_tests() -> Self {
        let mut s = Sources::default();
        s.env
            .insert("SWITCHYARD_LISTEN".into(), "127.0.0.1:0".into());
        s.env.insert("SWITCHYARD_REPLICA_ID".into(), "test".into());
        // The defaults are valid by construction; a failure here is a bug in SETTINGS.
        Self::load(&s).unwrap_or_else(|e| panic!("default settings are invalid: {e}"))
    }

    pub fn is_cluster(&self) -> bool {
        self.database_url.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::load(&Sources::default()).expect("defaults");
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.redis_prefix, "switchyard:");
        assert_eq!(c.request_retry, 3);
        assert_eq!(c.max_retry_wait_ms, 30_000);
        assert_eq!(c.routing, RoutingMode::RoundRobin);
        assert_eq!(c.max_body_bytes, 33_554_432);
        assert_eq!(c.max_inflight_body_bytes, 256 << 20);
        assert_eq!(c.max_answer_bytes, 32 << 20);
        assert_eq!(c.cooldowns, Cooldowns::default());
        assert_eq!(c.drain.grace, Duration::from_secs(1));
        assert_eq!(c.drain.timeout, Duration::from_secs(30));
        assert_eq!(c.redis_timeout, Duration::from_millis(250));
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert!(
            c.keep_alive > Duration::from_secs(60),
            "longer than nginx's"
        );
        assert!(c.admin_key.is_none() && !c.is_cluster());
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let err = Config::load(&with(&[("SWITCHYARD_REQUEST_RETRY", "many")])).unwrap_err();
        assert!(
            err.to_string().starts_with("SWITCHYARD_REQUEST_RETRY:"),
            "{err}"
        );
        let err = Config::load(&with(&[("SWITCHYARD_ROUTING", "random")])).unwrap_err();
        assert!(err.to_string().contains("SWITCHYARD_ROUTING"), "{err}");
        let err = Config::load(&with(&[("SWITCHYARD_LISTEN", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("SWITCHYARD_LISTEN"), "{err}");
    }

    #[test]
    fn proxies_come_from_the_usual_variables_lower_case_first() {
        let c = Config::load(&with(&[
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
            ("HTTP_PROXY", "proxy.internal:3128"),
            ("no_proxy", "localhost,.internal"),
        ]))
        .expect("valid");
        let exposed = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
        assert_eq!(
            exposed(&c.proxies.https).as_deref(),
            Some("http://lower:3128")
        );
        assert_eq!(
            exposed(&c.proxies.http).as_deref(),
            Some("proxy.internal:3128")
        );
        assert_eq!(c.proxies.all, None);
        assert_eq!(c.proxies.no.as_deref(), Some("localhost,.internal"));

        for (name, url) in [
            ("HTTPS_PROXY", "socks5://p:1080"),
            ("all_proxy", "https://p:443"),
        ] {
            let err = Config::load(&with(&[(name, url)])).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{name}:")), "{err}");
            assert!(err.to_string().contains("http://"), "{err}");
        }
    }

    #[test]
    fn redis_without_database_is_an_error() {
        let err = Config::load(&with(&[("REDIS_URL", "redis://x")])).unwrap_err();
        assert_eq!(err, ConfigError::RedisWithoutDatabase);
    }

    #[test]
    fn env_wins_over_the_file() {
        let mut s = with(&[("SWITCHYARD_REQUEST_RETRY", "5")]);
        s.file.insert("request_retry".into(), "1".into());
        s.file.insert("routing".into(), "fill-first".into());
        let c = Config::load(&s).expect("valid");
        assert_eq!(c.request_retry, 5);
        assert_eq!(c.routing, RoutingMode::FillFirst);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = Config::load(&with(&[
            ("SWITCHYARD_ADMIN_KEY", "admin-secret-123"),
            ("DATABASE_URL", "postgres://u:pw-secret@h/db"),
        ]))
        .expect("valid");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("admin-secret-123") && !dbg.contains("pw-secret"),
            "{dbg}"
        );
    }
}
