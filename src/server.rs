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
use crate::pipeline::Gateway;
use crate::source::{CatalogHandle, file};
use crate::state::{LearnedStore, MemoryStore};
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

/// Builds the gateway of `config` and starts serving it.
pub async fn start(config: Config, clock: SharedClock) -> anyhow::Result<Running> {
    if config.is_cluster() {
        anyhow::bail!(
            "DATABASE_URL is set, but this build serves embedded mode only: unset DATABASE_URL and REDIS_URL and use --config"
        );
    }
    let path = config.config_file.clone().context(
        "embedded mode needs a config file: pass --config PATH or set SWITCHYARD_CONFIG",
    )?;
    let (contents, catalog) = file::load(&path)?;
    let handle = CatalogHandle::new();
    handle.publish(catalog);

    let tasks = TaskTracker::new();
    let background = CancellationToken::new();
    tasks.spawn(file::watch(
        path,
        contents.raw,
        handle.clone(),
        config.reload_interval,
        background.clone(),
    ));

    let store: Arc<dyn LearnedStore> = Arc::new(MemoryStore::new(clock.clone()));
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("SWITCHYARD_LISTEN: cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let upstream = Upstream::new(&config.timeouts).context("building the upstream HTTP client")?;
    let hard_stop = CancellationToken::new();
    let config = Arc::new(config);
    let gateway = Gateway::new(
        config.clone(),
        handle,
        store,
        upstream,
        clock,
        hard_stop.clone(),
    );
    let state = AppState {
        gateway,
        draining: Arc::new(AtomicBool::new(false)),
    };
    let shutdown = CancellationToken::new();
    // The one untracked spawn: its handle is owned by `Running`, whose
    // `wait` is how the process learns the drain has finished.
    #[allow(clippy::disallowed_methods)]
    let join = tokio::spawn(serve(
        listener,
        state.clone(),
        config,
        shutdown.clone(),
        hard_stop,
        tasks,
        background,
    ));
    tracing::info!(%addr, "switchyard listening (embedded mode)");
    Ok(Running {
        addr,
        state,
        shutdown,
        join,
    })
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
    tasks: TaskTracker,
    background: CancellationToken,
) -> anyhow::Result<()> {
    let app = http::router(state.clone());
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
    let server = axum::serve(listener, app).with_graceful_shutdown(drain);
    let timeout = config.drain.timeout;
    let watchdog = async {
        closed.cancelled().await;
        tracing::info!("listener closed; waiting for open requests");
        tokio::time::sleep(timeout).await;
        hard_stop.cancel();
        tokio::time::sleep(DRAIN_BACKSTOP).await;
    };
    tokio::select! {
        result = server => result.context("serving HTTP")?,
        () = watchdog => tracing::warn!("connections still open after the drain timeout; exiting"),
    }
    background.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}
