//! Cluster mode's credential source: operator data in Postgres, loaded as a
//! whole snapshot, reloaded on every change notification, after every
//! reconnect of the listener, and on a periodic reconcile as a backstop
//! (notifications sent while the listener is disconnected are lost).
//! The only module that touches sqlx.

pub mod migrate;
pub mod usage;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::CatalogHandle;
use crate::catalog::prices::PriceRow;
use crate::catalog::{ApiKey, Catalog, Credential, CredentialModel, KeyLimits, OperatorData};
use crate::metrics::{Health, Metrics};
use crate::secret::Secret;

pub use migrate::MigrateError;

/// The channel the tables' triggers notify.
pub const CHANNEL: &str = "switchyard_changes";
/// How long a query may wait for a connection before it counts as a failure.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts while Postgres is unreachable.
const RETRY: Duration = Duration::from_millis(500);

/// Connection pools to the operator database: one for queries, one for the
/// change listener (named, so operators can find it in `pg_stat_activity`).
#[derive(Clone)]
pub struct Postgres {
    pool: PgPool,
    listen: PgPool,
}

impl Postgres {
    /// Pools that connect lazily: a replica starts while Postgres is down.
    pub fn new(url: &Secret) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = url.expose().parse()?;
        // One query at a time is all a replica makes (the follower's reloads,
        // the odd CLI command): a small pool keeps memory down.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone().application_name("switchyard"));
        let listen = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.application_name("switchyard-listener"));
        Ok(Self { pool, listen })
    }

    /// Applies pending migrations under the advisory lock.
    pub async fn migrate(&self) -> Result<Vec<i32>, MigrateError> {
        let mut conn = self.pool.acquire().await?;
        migrate::run(&mut conn).await
    }

    /// Reads all operator data in one consistent snapshot.
    pub async fn load(&self) -> Result<OperatorData, sqlx::Error> {
        Ok(self.load_versioned().await?.0)
    }

    /// The operator data's version: it moves with every change.
    pub async fn version(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("select version from switchyard_catalog_version")
            .fetch_one(&self.pool)
            .await
    }

    /// All operator data and its version, in one consistent snapshot.
    pub async fn load_versioned(&self) -> Result<(OperatorData, i64), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        let version: i64 = sqlx::query_scalar("select version from switchyard_catalog_version")
            .fetch_one(&mut *tx)
            .await?;
        let credentials = sqlx::query(
            "select id, provider, base_url, api_key, priority, weight, enabled, headers, responses_api \
             from credentials order by id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let models = sqlx::query(
            "select credential_id, model, upstream_model from credential_models \
             order by credential_id, model, upstream_model",
        )
        .fetch_all(&mut *tx)
        .await?;
        let keys = sqlx::query(
            "select name, key_hash, enabled, expires_at, rpm_limit, tpm_limit, \
                 (budget_usd * 1000000)::bigint as budget_micro_usd, budget_period, models \
                 from api_keys order by name",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Dollars a million tokens are pico-dollars a token.
        let prices = sqlx::query(
            "select model, (input_usd_per_mtok * 1000000)::bigint as input_pico, \
                 (output_usd_per_mtok * 1000000)::bigint as output_pico, \
                 (cached_usd_per_mtok * 1000000)::bigint as cached_pico \
                 from model_prices order by model",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        let mut data = OperatorData::default();
        for row in credentials {
            let provider: String = row.try_get("provider")?;
            let Ok(provider) = provider.parse() else {
                tracing::warn!(
                    credential = row.try_get::<String, _>("id")?,
                    "unknown provider; credential skipped"
                );
                continue;
            };
            let headers: serde_json::Value = row.try_get("headers")?;
            let weight: i32 = row.try_get("weight")?;
            data.credentials.push(Credential {
                id: row.try_get("id")?,
                provider,
                base_url: row
                    .try_get::<String, _>("base_url")?
                    .trim_end_matches('/')
                    .to_string(),
                api_key: Secret::new(row.try_get::<String, _>("api_key")?),
                priority: row.try_get("priority")?,
                weight: u32::try_from(weight).unwrap_or(0),
                enabled: row.try_get("enabled")?,
                headers: header_map(&headers),
                responses_api: row.try_get("responses_api")?,
            });
        }
        for row in models {
            data.models.push(CredentialModel {
                credential_id: row.try_get("credential_id")?,
                model: row.try_get("model")?,
                upstream_model: row.try_get("upstream_model")?,
            });
        }
        let pico = |v: Option<i64>| v.map(|n| u64::try_from(n).unwrap_or(0));
        for row in prices {
            data.prices.push(PriceRow {
                model: row.try_get("model")?,
                input_pico: pico(row.try_get("input_pico")?).unwrap_or(0),
                output_pico: pico(row.try_get("output_pico")?).unwrap_or(0),
                cached_pico: pico(row.try_get("cached_pico")?),
            });
        }
        for row in keys {
            data.api_keys.push(ApiKey {
                name: row.try_get("name")?,
                key_hash: row.try_get("key_hash")?,
                enabled: row.try_get("enabled")?,
                expires_at: row.try_get::<Option<DateTime<Utc>>, _>("expires_at")?,
                limits: key_limits(&row)?,
            });
        }
        Ok((data, version))
    }

    /// Stores a new client key's hash under `name`, with its limits.
    pub async fn create_key(
        &self,
        name: &str,
        key_hash: &str,
        limits: &KeyLimits,
    ) -> Result<(), sqlx::Error> {
        let count = |n: Option<u64>| n.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        let period = limits.budget_period.as_str();
        sqlx::query(
            "insert into api_keys (name, key_hash, rpm_limit, tpm_limit, budget_usd, budget_period, models) \
             values ($1, $2, $3, $4, $5::bigint::numeric / 1000000, $6, $7)",
        )
        .bind(name)
        .bind(key_hash)
        .bind(count(limits.rpm))
        .bind(count(limits.tpm))
        .bind(limits.budget_micro_usd)
        .bind(period)
        .bind(&limits.models)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// A key's limit columns (V5). A period the check constraint let through
/// but this build does not know is read as the default, monthly.
fn key_limits(row: &sqlx::postgres::PgRow) -> Result<KeyLimits, sqlx::Error> {
    let count = |v: Option<i32>| v.map(|n| u64::try_from(n).unwrap_or(0));
    let period: String = row.try_get("budget_period")?;
    Ok(KeyLimits {
        rpm: count(row.try_get("rpm_limit")?),
        tpm: count(row.try_get("tpm_limit")?),
        budget_micro_usd: row.try_get("budget_micro_usd")?,
        budget_period: period.parse().unwrap_or_default(),
        models: row.try_get("models")?,
    })
}

/// `headers` jsonb as a map; non-string values are sent as their JSON text.
fn header_map(value: &serde_json::Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps `handle` in step with the database until `shutdown`: migrates and
/// loads once Postgres answers, then reloads on notifications, on every
/// (re)connect of the listener and every `reconcile` period.
pub async fn follow(
    pg: Postgres,
    handle: CatalogHandle,
    metrics: Arc<Metrics>,
    reconcile: Duration,
    shutdown: CancellationToken,
) {
    let mut follower = Follower {
        pg,
        handle,
        metrics,
        last: None,
        version: None,
    };
    loop {
        let ready = async {
            follower.pg.migrate().await?;
            Ok::<_, MigrateError>(())
        };
        match ready.await {
            Ok(()) if follower.reload().await => break,
            Ok(()) => {}
            Err(e) => {
                follower.metrics.set_postgres(Health::Down);
                tracing::warn!(error = %e, "Postgres not ready; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
    let changed = Arc::new(Notify::new());
    let listener = listen(
        follower.pg.listen.clone(),
        changed.clone(),
        shutdown.clone(),
    );
    let reloader = async {
        loop {
            let told = tokio::select! {
                () = shutdown.cancelled() => return,
                () = changed.notified() => true,
                () = tokio::time::sleep(reconcile) => false,
            };
            // The backstop asks for the version first: a full reload only
            // when something changed that no notification reported.
            if told || follower.moved().await {
                follower.reload().await;
            }
        }
    };
    tokio::join!(listener, reloader);
}

struct Follower {
    pg: Postgres,
    handle: CatalogHandle,
    metrics: Arc<Metrics>,
    /// The data of the snapshot last published: an unchanged reload publishes nothing.
    last: Option<OperatorData>,
    /// The version that data was read at.
    version: Option<i64>,
}

impl Follower {
    /// Whether the operator data changed since the last load. A Postgres
    /// that does not answer has not: the last snapshot keeps serving.
    async fn moved(&self) -> bool {
        match self.pg.version().await {
            Ok(v) => {
                if self.metrics.postgres() != Health::Up {
                    return true; // Back: reload, which also says so.
                }
                self.version != Some(v)
            }
            Err(e) => {
                self.down(&e);
                false
            }
        }
    }

    fn down(&self, e: &sqlx::Error) {
        if self.metrics.postgres() != Health::Down {
            tracing::warn!(error = %e, "Postgres unreachable; serving the last snapshot");
        }
        self.metrics.set_postgres(Health::Down);
    }

    /// Loads and publishes if anything changed. False when Postgres failed.
    async fn reload(&mut self) -> bool {
        match self.pg.load_versioned().await {
            Ok((data, version)) => {
                self.metrics.catalog_load();
                self.version = Some(version);
                if self.metrics.postgres() != Health::Up {
                    tracing::info!("Postgres answers; credentials loaded");
                }
                self.metrics.set_postgres(Health::Up);
                if self.last.as_ref() != Some(&data) {
                    let (catalog, problems) = Catalog::build_lenient(data.clone());
                    for problem in problems {
                        tracing::warn!("{problem}; left out of the snapshot");
                    }
                    tracing::info!(
                        credentials = catalog.credentials.len(),
                        models = catalog.models.len(),
                        keys = data.api_keys.len(),
                        "credentials reloaded"
                    );
                    self.handle.publish(catalog);
                    self.metrics.catalog_reload();
                    self.last = Some(data);
                }
                true
            }
            Err(e) => {
                self.down(&e);
                false
            }
        }
    }
}

/// LISTENs for changes; after every (re)connect it asks for a full reload,
/// since notifications sent while it was away are lost.
async fn listen(pool: PgPool, changed: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let connected = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match connected.await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "change listener cannot connect");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        changed.notify_one();
        loop {
            let got = tokio::select! {
                () = shutdown.cancelled() => return,
                got = listener.try_recv() => got,
            };
            match got {
                Ok(Some(_)) => changed.notify_one(),
                Ok(None) | Err(_) => {
                    tracing::info!("change listener lost its connection; reconnecting");
                    break;
                }
            }
        }
    }
}
