//! Embedded mode's TOML file: settings, credentials, credential models and
//! client keys in one file, with the same fields as the Postgres tables.
//! The file is re-read when its content changes; a broken edit is logged and
//! the last good snapshot keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::CatalogHandle;
use crate::catalog::{
    ApiKey, BudgetPeriod, Catalog, CatalogError, Credential, CredentialModel, KeyLimits,
    OperatorData, prices::PriceRow,
};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Says where and what, never the text there: a broken line may hold
    /// an upstream key (a missing quote after `api_key = "sk-...`).
    #[error("{path} is not valid: {message}{at}")]
    Parse {
        path: PathBuf,
        message: String,
        /// " (line N, column M)", when known.
        at: String,
    },
    #[error("{path}: {source}")]
    Catalog { path: PathBuf, source: CatalogError },
    #[error("{path}: credential {id:?} must set exactly one of api_key and api_key_env")]
    ApiKeySource { path: PathBuf, id: String },
    #[error("{path}: api key {name:?}: expires_at must be an RFC 3339 date-time with a time zone")]
    BadExpiry { path: PathBuf, name: String },
    #[error("{path}: api key {name:?}: {message}")]
    BadLimit {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("{path}: model price {model:?}: prices must be numbers of dollars, 0 or more")]
    BadPrice { path: PathBuf, model: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    settings: toml::Table,
    #[serde(default)]
    credentials: Vec<CredentialRow>,
    #[serde(default)]
    credential_models: Vec<ModelRow>,
    #[serde(default)]
    api_keys: Vec<KeyRow>,
    #[serde(default)]
    model_prices: Vec<PriceFileRow>,
}

/// A `[[model_prices]]` table: dollars per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFileRow {
    model: String,
    input_usd_per_mtok: f64,
    output_usd_per_mtok: f64,
    cached_usd_per_mtok: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRow {
    id: String,
    provider: crate::catalog::Provider,
    base_url: String,
    api_key: Option<String>,
    /// Read the upstream key from this environment variable instead.
    api_key_env: Option<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    responses_api: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelRow {
    credential_id: String,
    model: String,
    upstream_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRow {
    name: String,
    key_hash: String,
    #[serde(default = "yes")]
    enabled: bool,
    expires_at: Option<Timestamp>,
    rpm_limit: Option<u64>,
    tpm_limit: Option<u64>,
    budget_usd: Option<f64>,
    budget_period: Option<String>,
    models: Option<Vec<String>>,
}

/// A TOML date-time (`2030-01-01T00:00:00Z`) or an RFC 3339 string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Timestamp {
    Toml(toml::value::Datetime),
    Text(String),
}

impl Timestamp {
    fn parse(&self) -> Option<DateTime<Utc>> {
        let text = match self {
            Timestamp::Toml(d) => d.to_string(),
            Timestamp::Text(s) => s.clone(),
        };
        DateTime::parse_from_rfc3339(&text)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// What one read of the file yields.
#[derive(Debug)]
pub struct FileContents {
    /// The text this was parsed from: the watcher compares against it.
    pub raw: String,
    /// Things worth an operator's attention that do not stop the load.
    pub warnings: Vec<String>,
    /// `[settings]`, as strings keyed like [`crate::config::file_key`].
    pub settings: HashMap<String, String>,
    pub data: OperatorData,
}

/// A TOML error without the file's text (toml's own message quotes the line).
fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> FileError {
    let at = e.span().map_or_else(String::new, |span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!(" (line {line}, column {column})")
    });
    FileError::Parse {
        path: path.to_path_buf(),
        message: without_long_quotes(e.message()),
        at,
    }
}

/// A message with quoted values longer than field names are taken out: a
/// type error quotes the value it met, which may be a key in the wrong place.
fn without_long_quotes(message: &str) -> String {
    const LONGEST_NAME: usize = 24;
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().unwrap_or('`');
        let inner = &rest[open + 1..];
        let Some(close) = inner.find(quote) else {
            break;
        };
        out.push_str(&rest[..=open]);
        if inner[..close].chars().count() > LONGEST_NAME {
            out.push('…');
        } else {
            out.push_str(&inner[..close]);
        }
        out.push(quote);
        rest = &inner[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses the file's text. `env` resolves `api_key_env`.
pub fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FileContents, FileError> {
    let shape: FileShape = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
    let settings = shape
        .settings
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, s)
        })
        .collect();
    let mut credentials = Vec::new();
    let mut warnings = Vec::new();
    for row in shape.credentials {
        let mut enabled = row.enabled;
        let api_key = match (row.api_key, row.api_key_env) {
            (Some(key), None) => key,
            // A credential whose key variable is unset is kept but disabled, so
            // one file serves machines that hold different keys.
            (None, Some(var)) => env(&var).filter(|v| !v.is_empty()).unwrap_or_else(|| {
                if enabled {
                    warnings.push(format!(
                        "credential {:?} is disabled: environment variable {var} is not set",
                        row.id
                    ));
                }
                enabled = false;
                String::new()
            }),
            _ => {
                return Err(FileError::ApiKeySource {
                    path: path.to_path_buf(),
                    id: row.id,
                });
            }
        };
        credentials.push(Credential {
            id: row.id,
            provider: row.provider,
            base_url: row.base_url.trim_end_matches('/').to_string(),
            api_key: Secret::new(api_key),
            priority: row.priority,
            weight: row.weight,
            enabled,
            headers: row.headers,
            responses_api: row.responses_api,
        });
    }
    let models = shape
        .credential_models
        .into_iter()
        .map(|m| CredentialModel {
            // Unset, the requested name is sent: for a pattern row that is `*`.
            upstream_model: m.upstream_model.unwrap_or_else(|| {
                if m.model.ends_with('*') {
                    "*".to_string()
                } else {
                    m.model.clone()
                }
            }),
            credential_id: m.credential_id,
            model: m.model,
        })
        .collect();
    let mut api_keys = Vec::new();
    for k in shape.api_keys {
        let expires_at = match &k.expires_at {
            None => None,
            Some(t) => Some(t.parse().ok_or_else(|| FileError::BadExpiry {
                path: path.to_path_buf(),
                name: k.name.clone(),
            })?),
        };
        let budget_period = match &k.budget_period {
            None => BudgetPeriod::default(),
            Some(p) => p.parse().map_err(|message| FileError::BadLimit {
                path: path.to_path_buf(),
                name: k.name.clone(),
                message,
            })?,
        };
        let budget_micro_usd = match k.budget_usd {
            None => None,
            Some(usd) if usd.is_finite() && usd >= 0.0 => Some((usd * 1e6).round() as i64),
            Some(_) => {
                return Err(FileError::BadLimit {
                    path: path.to_path_buf(),
                    name: k.name,
                    message: "budget_usd must be a number of dollars, 0 or more".into(),
                });
            }
        };
        api_keys.push(ApiKey {
            name: k.name,
            key_hash: k.key_hash.to_ascii_lowercase(),
            enabled: k.enabled,
            expires_at,
            limits: KeyLimits {
                rpm: k.rpm_limit,
                tpm: k.tpm_limit,
                budget_micro_usd,
                budget_period,
                models: k.models,
            },
        });
    }
    let mut prices = Vec::new();
    for p in shape.model_prices {
        let pico = |usd: f64| -> Result<u64, FileError> {
            if usd.is_finite() && usd >= 0.0 {
                Ok((usd * 1e6).round() as u64)
            } else {
                Err(FileError::BadPrice {
                    path: path.to_path_buf(),
                    model: p.model.clone(),
                })
            }
        };
        prices.push(PriceRow {
            model: p.model.clone(),
            input_pico: pico(p.input_usd_per_mtok)?,
            output_pico: pico(p.output_usd_per_mtok)?,
            cached_pico: p.cached_usd_per_mtok.map(pico).transpose()?,
        });
    }
    Ok(FileContents {
        raw: text.to_string(),
        warnings,
        settings,
        data: OperatorData {
            credentials,
            models,
            api_keys,
            prices,
        },
    })
}

/// Only the `[settings]` table of the file, for building the config.
pub fn settings(path: &Path) -> Result<HashMap<String, String>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse(path, &text, &|var| std::env::var(var).ok())?.settings)
}

/// Reads and parses the file and builds its catalog.
pub fn load(path: &Path) -> Result<(FileContents, Catalog), FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    build(path, &text)
}

fn build(path: &Path, text: &str) -> Result<(FileContents, Catalog), FileError> {
    let contents = parse(path, text, &|var| std::env::var(var).ok())?;
    for warning in &contents.warnings {
        tracing::warn!(path = %path.display(), "{warning}");
    }
    let catalog = Catalog::build(contents.data.clone()).map_err(|source| FileError::Catalog {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((contents, catalog))
}

/// Re-reads the file every `interval` and publishes a new catalog whenever its
/// content changed and is valid. Runs until `shutdown` fires.
pub async fn watch(
    path: PathBuf,
    loaded: String,
    handle: CatalogHandle,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last = Some(loaded.into_bytes());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                if last.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "config file unreadable; keeping the last snapshot");
                    last = None;
                }
                continue;
            }
        };
        if last.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        match build(&path, &text) {
            Ok((contents, catalog)) => {
                tracing::info!(
                    path = %path.display(),
                    credentials = contents.data.credentials.len(),
                    models = catalog.models.len(),
                    keys = contents.data.api_keys.len(),
                    "config file reloaded"
                );
                handle.publish(catalog);
            }
            Err(e) => {
                tracing::error!(error = %e, "config file change rejected; keeping the last snapshot");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_file_is_reported_without_its_text() {
        let key = "sk-live-0123456789abcdefghijklmnopqrstuvwxyz";
        for text in [
            format!(
                "[[credentials]]\nid = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x/v1\"\napi_key = \"{key}\n"
            ),
            format!(
                "[[credentials]]\nid = \"a\"\nprovder = \"openai\"\nbase_url = \"http://x/v1\"\napi_key = \"{key}\"\n"
            ),
            format!(
                "[[credentials]]\nid = \"a\"\nprovider = \"{key}\"\nbase_url = \"http://x/v1\"\napi_key = \"k\"\n"
            ),
        ] {
            let err = parse(Path::new("s.toml"), &text, &|_| None).expect_err("invalid");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("sk-live"), "{shown}");
            assert!(shown.contains("line"), "{shown}");
        }
    }

    const SAMPLE: &str = r#"
[settings]
request_retry = 2
routing = "fill-first"

[[credentials]]
id = "main"
provider = "openai"
base_url = "https://api.example.com/v1/"
api_key_env = "MAIN_KEY"
headers = { "OpenAI-Organization" = "org-1" }

[[credentials]]
id = "spare"
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-spare"
priority = -1
weight = 3

[[credential_models]]
credential_id = "main"
model = "gpt"
upstream_model = "gpt-2025"

[[credential_models]]
credential_id = "spare"
model = "gpt"

[[api_keys]]
name = "alice"
key_hash = "2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"
expires_at = 2030-01-01T00:00:00Z
"#;

    #[test]
    fn parses_every_table_and_the_settings() {
        let env = |v: &str| (v == "MAIN_KEY").then(|| "sk-main".to_string());
        let c = parse(Path::new("t.toml"), SAMPLE, &env).expect("valid");
        assert_eq!(
            c.settings.get("request_retry").map(String::as_str),
            Some("2")
        );
        assert_eq!(
            c.settings.get("routing").map(String::as_str),
            Some("fill-first")
        );
        let main = &c.data.credentials[0];
        assert_eq!(main.api_key.expose(), "sk-main");
        assert_eq!(main.base_url, "https://api.example.com/v1");
        assert_eq!(
            main.headers.get("OpenAI-Organization").map(String::as_str),
            Some("org-1")
        );
        assert_eq!(c.data.credentials[1].weight, 3);
        assert_eq!(
            c.data.models[1].upstream_model, "gpt",
            "upstream_model defaults to model"
        );
        assert_eq!(
            c.data.api_keys[0].key_hash,
            crate::catalog::hash_key("hello")
        );
        assert!(Catalog::build(c.data).is_ok());
    }

    #[test]
    fn a_pattern_row_sends_the_requested_name_by_default() {
        let text = "[[credentials]]\nid='a'\nprovider='anthropic'\nbase_url='http://x'\napi_key='k'\n\
                    [[credential_models]]\ncredential_id='a'\nmodel='claude-*'\n";
        let c = parse(Path::new("t.toml"), text, &|_| None).expect("valid");
        assert_eq!(c.data.models[0].upstream_model, "*");
        let cat = Catalog::build(c.data).expect("valid");
        let route = cat.route("claude-opus-4-8").expect("the pattern serves it");
        assert_eq!(route.tiers[0].members[0].pool, vec!["claude-opus-4-8"]);
        assert!(cat.models.is_empty(), "patterns are not listed");
        let bad = text.replace("claude-*", "claude-*-x");
        let err = load_text(&bad).expect_err("a star inside a name is refused");
        assert!(err.contains("claude-*-x"), "{err}");
    }

    fn load_text(text: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).expect("write");
        load(&path).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_missing_key_variable_disables_its_credential_with_a_warning() {
        let c = parse(Path::new("t.toml"), SAMPLE, &|_| None).expect("valid");
        assert!(!c.data.credentials[0].enabled);
        assert!(c.data.credentials[1].enabled);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("MAIN_KEY"), "{:?}", c.warnings);
    }

    #[test]
    fn unknown_fields_and_providers_are_clear_errors() {
        let err = parse(Path::new("t.toml"), "[[credentials]]\nid='x'\nprovider='openai'\nbase_url='http://x'\napi_key='k'\ncolour='red'\n", &|_| None).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = parse(
            Path::new("t.toml"),
            "[[credentials]]\nid='x'\nprovider='mistral'\nbase_url='http://x'\napi_key='k'\n",
            &|_| None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("mistral"), "{err}");
    }

    #[tokio::test]
    async fn edits_are_picked_up_and_broken_edits_keep_the_last_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.toml");
        let one = "[[credentials]]\nid='a'\nprovider='openai'\nbase_url='http://x/v1'\napi_key='k'\n[[credential_models]]\ncredential_id='a'\nmodel='m1'\n";
        std::fs::write(&path, one).expect("write");
        let handle = CatalogHandle::new();
        let (contents, cat) = load(&path).expect("valid");
        handle.publish(cat);
        let stop = CancellationToken::new();
        #[allow(clippy::disallowed_methods)] // awaited below
        let task = tokio::spawn(watch(
            path.clone(),
            contents.raw,
            handle.clone(),
            Duration::from_millis(20),
            stop.clone(),
        ));

        std::fs::write(&path, one.replace("m1", "m2")).expect("write");
        wait_for(|| handle.load().models == vec!["m2".to_string()]).await;

        std::fs::write(&path, "this is = = not toml").expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(handle.load().models, vec!["m2".to_string()]);

        std::fs::write(&path, one.replace("m1", "m3")).expect("write");
        wait_for(|| handle.load().models == vec!["m3".to_string()]).await;
        stop.cancel();
        task.await.expect("watcher ends");
    }

    async fn wait_for(cond: impl Fn() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not met within 2 s");
    }
}
