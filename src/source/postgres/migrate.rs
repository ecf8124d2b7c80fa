//! Schema migrations: the SQL files under `migrations/`, embedded by
//! refinery and recorded in refinery's history table (so refinery's own CLI
//! reads the same history), applied over sqlx under a Postgres advisory
//! lock so replicas starting together do not race.

use sqlx::{Connection, Executor, PgConnection, Row};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The advisory lock key: "switchyard" in ASCII, truncated to 8 bytes.
const LOCK_KEY: i64 = 0x7377_6974_6368_7961;

const HISTORY: &str = "create table if not exists refinery_schema_history( \
    version int4 primary key, name varchar(255), applied_on varchar(255), checksum varchar(255))";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration V{version} was changed after it was applied (checksum differs)")]
    Divergent { version: i32 },
    #[error(
        "the database has migration V{version}, which this build does not know: it is older than the schema"
    )]
    Unknown { version: i32 },
}

/// Applies every pending migration while holding the advisory lock. Returns
/// the versions applied now.
pub async fn run(conn: &mut PgConnection) -> Result<Vec<i32>, MigrateError> {
    sqlx::query("select pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    let result = apply(conn).await;
    let unlocked = sqlx::query("select pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn apply(conn: &mut PgConnection) -> Result<Vec<i32>, MigrateError> {
    conn.execute(HISTORY).await?;
    let rows =
        sqlx::query("select version, checksum from refinery_schema_history order by version")
            .fetch_all(&mut *conn)
            .await?;
    let runner = embedded::migrations::runner();
    let known = runner.get_migrations();
    let mut applied_before = Vec::new();
    for row in rows {
        let version: i32 = row.try_get("version")?;
        let checksum: String = row.try_get("checksum")?;
        match known.iter().find(|m| m.version() == version) {
            None => return Err(MigrateError::Unknown { version }),
            Some(m) if m.checksum().to_string() != checksum => {
                return Err(MigrateError::Divergent { version });
            }
            Some(_) => applied_before.push(version),
        }
    }
    let mut applied_now = Vec::new();
    for m in known
        .iter()
        .filter(|m| !applied_before.contains(&m.version()))
    {
        let mut tx = conn.begin().await?;
        // Migrations are this repository's own files, run as whole scripts.
        let sql = m.sql().unwrap_or_default().to_string();
        tx.execute(sql.as_str()).await?;
        let applied_on = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        sqlx::query(
            "insert into refinery_schema_history (version, name, applied_on, checksum) values ($1, $2, $3, $4)",
        )
        .bind(m.version())
        .bind(m.name())
        .bind(applied_on)
        .bind(m.checksum().to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version(), name = m.name(), "migration applied");
        applied_now.push(m.version());
    }
    Ok(applied_now)
}
