//! Starting, running and draining a gateway.
//!
//! [`start`] takes a config and a clock and returns a [`Running`] gateway
//! with its bound address and a handle to stop it, so tests drive exactly what
//! `main` runs. Every background task is tracked and stopped on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::ledger::Ledger;
use crate::limits::Limiter;
use crate::metrics::{Health, Metrics};
use crate::pipeline::Gateway;
use crate::source::postgres::{self, Postgres};
use crate::source::{CatalogHandle, file};
use crate::state::{LearnedStore, MemoryStore, RedisStore};
use crate::upstream::Upstream;

/// How long past the drain timeout the process waits for connections that
/// will not close before it exits anyway.
const DRAIN_BACKSTOP: Duration = Duration::from_secs(5);

/// A gateway serving on `addr`.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    /// Cancel to start the drain (what SIGTERM does).
    pub shutdown: CancellationToken,
    join: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the gateway has drained and stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.join.await.context("server task panicked")?
    }

    /// Starts the drain and waits for it to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Background work that lives as long as the server.
struct Background {
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// Builds the gateway of `config` and starts serving it.
pub async fn start(config: Config, clock: SharedClock) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new().for_replica(&config.replica_id));
    let background = Background {
        tasks: TaskTracker::new(),
        stop: CancellationToken::new(),
    };
    let catalog = CatalogHandle::new();
    let mut usage_db = None;
    let mode = if let Some(url) = &config.database_url {
        let pg = Postgres::new(url).context("DATABASE_URL is not a valid Postgres URL")?;
        usage_db = Some(pg.clone());
        metrics.set_postgres(Health::Down);
        background.tasks.spawn(postgres::follow(
            pg,
            catalog.clone(),
            metrics.clone(),
            config.reconcile_interval,
            background.stop.clone(),
        ));
        "cluster"
    } else {
        let path = config.config_file.clone().context(
            "embedded mode needs a config file: pass --config PATH or set SWITCHYARD_CONFIG",
        )?;
        let (contents, loaded) = file::load(&path)?;
        catalog.publish(loaded);
        background.tasks.spawn(file::watch(
            path,
            contents.raw,
            catalog.clone(),
            config.reload_interval,
            background.stop.clone(),
        ));
        "embedded"
    };
    let started_ms = clock.now_ms();
    let (store, shared_counters) = learned_store(&config, &clock, &metrics, &background).await?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("SWITCHYARD_LISTEN: cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let upstream = Upstream::new(
        &config.timeouts,
        &config.proxies,
        config.ssl_cert_file.as_deref(),
    )?;
    let hard_stop = CancellationToken::new();
    let config = Arc::new(config);
    let limiter_clock = clock.clone();
    // Started before the listener, stopped after the drain: its last flush
    // writes what the drained requests counted.
    let ledger = Ledger::new(clock.clone(), usage_db);
    background
        .tasks
        .spawn(ledger.clone().run(background.stop.clone()));
    let limiter = Arc::new(Limiter::new(
        limiter_clock,
        shared_counters.clone(),
        ledger.clone(),
        metrics.clone(),
    ));
    background
        .tasks
        .spawn(limiter.clone().run(background.stop.clone()));
    let gateway = Gateway::new(
        config.clone(),
        catalog,
        store,
        upstream,
        clock,
        hard_stop.clone(),
        metrics,
    );
    let bodies = http::BodyBudget::new(config.max_inflight_body_bytes, gateway.metrics().clone());
    let state = AppState {
        gateway,
        draining: Arc::new(AtomicBool::new(false)),
        bodies,
        limiter: limiter.clone(),
        ledger,
        shared: shared_counters.clone(),
        started_ms,
    };
    if let Some(shared) = shared_counters {
        background.tasks.spawn(http::heartbeat(
            state.clone(),
            shared,
            background.stop.clone(),
        ));
    }
    let shutdown = CancellationToken::new();
    // The one untracked spawn: its handle is owned by `Running`, whose
    // `wait` is how the process learns the drain has finished.
    #[allow(clippy::disallowed_methods)]
    let join = tokio::spawn(serve(
        listener,
        state.clone(),
        config.clone(),
        shutdown.clone(),
        hard_stop,
        background,
    ));
    tracing::info!(%addr, mode, replica = %config.replica_id, "switchyard listening");
    Ok(Running {
        addr,
        state,
        shutdown,
        join,
    })
}

async fn learned_store(
    config: &Config,
    clock: &SharedClock,
    metrics: &Arc<Metrics>,
    background: &Background,
) -> anyhow::Result<(Arc<dyn LearnedStore>, Option<RedisStore>)> {
    match &config.redis_url {
        Some(url) => {
            let store = RedisStore::connect(
                url.expose(),
                &config.redis_prefix,
                config.redis_timeout,
                &config.replica_id,
                clock.clone(),
                metrics.clone(),
            )
            .await
            .context("REDIS_URL")?;
            store.spawn_tasks(&background.tasks, background.stop.clone());
            Ok((Arc::new(store.clone()), Some(store)))
        }
        None => {
            if config.is_cluster() {
                tracing::warn!(
                    "DATABASE_URL is set without REDIS_URL: learned state stays in this process, so replicas would not share it; run one replica"
                );
            }
            Ok((Arc::new(MemoryStore::new(clock.clone())), None))
        }
    }
}

/// Serves until `shutdown`, then drains: `/readyz` turns 503 at once, the
/// listener closes after the grace, open requests and streams get the drain
/// timeout to finish, then streams end with an error event.
async fn serve(
    listener: TcpListener,
    state: AppState,
    config: Arc<Config>,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    background: Background,
) -> anyhow::Result<()> {
    let app = Arc::new(http::App::new(state.clone()));
    let closed = CancellationToken::new();
    let drain = {
        let shutdown = shutdown.clone();
        let closed = closed.clone();
        let grace = config.drain.grace;
        async move {
            shutdown.cancelled().await;
            state.draining.store(true, Ordering::Release);
            tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
            tokio::time::sleep(grace).await;
            closed.cancel();
        }
    };
    let timeouts = http::ConnectionTimeouts {
        header: config.header_timeout,
        keep_alive: config.keep_alive,
    };
    let server = http::serve(listener, app, timeouts, drain);
    let timeout = config.drain.timeout;
    let watchdog = async {
        closed.cancelled().await;
        tracing::info!("listener closed; waiting for open requests");
        tokio::time::sleep(timeout).await;
        hard_stop.cancel();
        tokio::time::sleep(DRAIN_BACKSTOP).await;
    };
    tokio::select! {
        () = server => {}
        () = watchdog => tracing::warn!("connections still open after the drain timeout; exiting"),
    }
    background.stop.cancel();
    background.tasks.close();
    background.tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}
