//! The command line: `switchyard [serve]`, `switchyard migrate`,
//! `switchyard keys create NAME`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::catalog::{BudgetPeriod, KeyLimits, hash_key};
use crate::clock::SystemClock;
use crate::config::{Config, Sources};
use crate::source::postgres::Postgres;

#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about = "An LLM API gateway for teams")]
struct Cli {
    /// The TOML file of embedded mode (credentials, models, client keys, settings).
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gateway (the default).
    Serve,
    /// Run the database migrations and exit (cluster mode).
    Migrate,
    /// Exit 0 when the local gateway answers `/readyz` with 200 (a container healthcheck).
    Ready,
    /// Manage client keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a client key: prints the key once; only its hash is stored.
    Create {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// A new key's limits (contract section 9); each one unset is unlimited.
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Requests per minute, across all replicas.
    #[arg(long)]
    rpm: Option<u32>,
    /// Input plus output tokens per minute, across all replicas.
    #[arg(long)]
    tpm: Option<u32>,
    /// Dollars the key may spend per budget period.
    #[arg(long, value_parser = parse_dollars)]
    budget_usd: Option<i64>,
    /// The budget's period: `day` or `month` (UTC calendar).
    #[arg(long, default_value = "month")]
    budget_period: BudgetPeriod,
    /// The model names or patterns (`claude-*`) the key may use, comma separated.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
}

impl LimitArgs {
    fn limits(&self) -> KeyLimits {
        KeyLimits {
            rpm: self.rpm.map(u64::from),
            tpm: self.tpm.map(u64::from),
            budget_micro_usd: self.budget_usd,
            budget_period: self.budget_period,
            models: self.models.clone(),
        }
    }
}

/// Dollars as millionths of a dollar (the column keeps six decimals).
fn parse_dollars(text: &str) -> Result<i64, String> {
    match text.parse::<f64>() {
        Ok(usd) if usd.is_finite() && (0.0..1e8).contains(&usd) => Ok((usd * 1e6).round() as i64),
        _ => Err(format!("{text:?} is not an amount of dollars (0 or more)")),
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _log = crate::telemetry::init();
    let config = match sources(cli.config.clone()).and_then(|s| Ok(Config::load(&s)?)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // One worker thread is a single-threaded scheduler: the same work
    // without the bookkeeping for stealing tasks between workers.
    let mut builder = match config.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "switchyard stopped");
            eprintln!("switchyard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => {
            let pg = postgres(cli.config)?;
            let applied = pg.migrate().await?;
            if applied.is_empty() {
                println!("the schema is up to date");
            } else {
                println!("applied migrations {applied:?}");
            }
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Create { name, limits },
        } => create_key(cli.config, &name, &limits.limits()).await,
        Command::Ready => ready(cli.config).await,
    }
}

/// Asks this machine's gateway (on the port of `SWITCHYARD_LISTEN`) whether it is ready.
async fn ready(config_file: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = Config::load(&sources(config_file)?)?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], config.listen.port()));
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), check).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => anyhow::bail!("{addr} is not ready"),
        Ok(Err(e)) => anyhow::bail!("{addr}: {e}"),
        Err(_) => anyhow::bail!("{addr} did not answer within 2 s"),
    }
}

/// The operator database of `DATABASE_URL`, for the commands that need one.
fn postgres(config_file: Option<PathBuf>) -> anyhow::Result<Postgres> {
    let config = Config::load(&sources(config_file)?)?;
    let url = config
        .database_url
        .context("DATABASE_URL is not set: this command works on the cluster-mode database")?;
    Ok(Postgres::new(&url)?)
}

/// Prints a new client key once and stores only its hash: in Postgres in
/// cluster mode, or as a snippet for the config file in embedded mode.
async fn create_key(
    config_file: Option<PathBuf>,
    name: &str,
    limits: &KeyLimits,
) -> anyhow::Result<()> {
    let config = Config::load(&sources(config_file.clone())?)?;
    let key = new_key();
    let hash = hash_key(&key);
    if config.is_cluster() {
        let pg = postgres(config_file)?;
        pg.migrate().await?;
        pg.create_key(name, &hash, limits)
            .await
            .with_context(|| format!("storing key {name:?} (does a key of that name exist?)"))?;
        println!("{key}");
        eprintln!("Key {name:?} stored (its hash only). The key above is shown only once.");
    } else {
        println!("{key}");
        eprintln!(
            "Add this to the config file; the key above is shown only once:\n\n[[api_keys]]\nname = {name:?}\nkey_hash = \"{hash}\"\n{}",
            limit_lines(limits)
        );
    }
    Ok(())
}

/// A key's limits as lines of its `[[api_keys]]` table.
fn limit_lines(limits: &KeyLimits) -> String {
    let mut out = String::new();
    if let Some(n) = limits.rpm {
        out.push_str(&format!("rpm_limit = {n}\n"));
    }
    if let Some(n) = limits.tpm {
        out.push_str(&format!("tpm_limit = {n}\n"));
    }
    if let Some(micro) = limits.budget_micro_usd {
        let period = limits.budget_period.as_str();
        out.push_str(&format!(
            "budget_usd = {}.{:06}\nbudget_period = \"{period}\"\n",
            micro / 1_000_000,
            micro % 1_000_000
        ));
    }
    if let Some(models) = &limits.models {
        out.push_str(&format!("models = {models:?}\n"));
    }
    out
}

/// A new client key: `sk-sy-` and 48 hex characters of randomness.
fn new_key() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("sk-sy-{}{}", &a[..24], &b[..24])
}

/// Reads the settings from the environment and the config file.
pub fn sources(config_file: Option<PathBuf>) -> anyhow::Result<Sources> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config_file = config_file.or_else(|| {
        let default = PathBuf::from("switchyard.toml");
        default.exists().then_some(default)
    });
    let file = match &config_file {
        Some(path) => crate::source::file::settings(path)?,
        None => HashMap::new(),
    };
    Ok(Sources {
        env,
        file,
        config_file,
        host_name: host_name(),
    })
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn serve(config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(&sources(config_file)?)?;
    let running = crate::server::start(config, Arc::new(SystemClock)).await?;
    let shutdown = running.shutdown.clone();
    wait_for_signal().await;
    shutdown.cancel();
    running.wait().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
