//! Helpers for tests that need a real store, here and in other crates (the worker crash tests).
//!
//! PostgreSQL tests get a fresh database each from [`fresh_postgres_url`]. The server is named by
//! `SLUICE_TEST_POSTGRES` (default [`DEFAULT_POSTGRES`]); `SLUICE_TEST_POSTGRES=skip` turns those
//! tests off. An unreachable server is an error, not a skip, so a broken setup cannot pass as
//! green.

use std::time::Duration;

use sqlx::{ConnectOptions, Connection, Executor, postgres::PgConnection};

/// The variable naming the PostgreSQL server tests may create databases on.
pub const POSTGRES_ENV: &str = "SLUICE_TEST_POSTGRES";
/// The server tests use when [`POSTGRES_ENV`] is unset.
pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Test databases are named `sluice_test_<unix seconds>_<random>`; ones older than this were left
/// by killed or failed test runs and are dropped by the next run.
const STALE_AFTER_SECS: i64 = 6 * 3600;
const DATABASE_PREFIX: &str = "sluice_test_";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TestStoreError {
    #[error(
        "PostgreSQL for tests is not reachable at {url}: {reason}\n  \
         start it (for example `pg_ctlcluster 15 main start`, or \
         `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres`), \
         point {POSTGRES_ENV} at a server where you may create databases, \
         or set {POSTGRES_ENV}=skip to skip the PostgreSQL tests"
    )]
    Unreachable { url: String, reason: String },
    #[error("{POSTGRES_ENV}={url} is not a postgres:// URL with a host")]
    BadUrl { url: String },
    #[error("creating or dropping test database {database} on {url}: {source}")]
    Database {
        url: String,
        database: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Creates an empty database for one test and returns its URL, or `None` when
/// `SLUICE_TEST_POSTGRES=skip`.
pub async fn fresh_postgres_url() -> Result<Option<String>, TestStoreError> {
    let admin = match std::env::var(POSTGRES_ENV) {
        Ok(v) if v.trim() == "skip" => return Ok(None),
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => DEFAULT_POSTGRES.to_string(),
    };
    let mut conn = connect_admin(&admin).await?;
    drop_stale_databases(&mut conn).await;
    let now_secs = sluice_core::now_millis() / 1000;
    let random = uuid::Uuid::new_v4().simple().to_string();
    let database = format!("{DATABASE_PREFIX}{now_secs}_{}", &random[..12]);
    let url = with_database(&admin, &database)
        .ok_or_else(|| TestStoreError::BadUrl { url: admin.clone() })?;
    conn.execute(format!("CREATE DATABASE {database}").as_str())
        .await
        .map_err(|source| TestStoreError::Database {
            url: admin.clone(),
            database: database.clone(),
            source,
        })?;
    // Closing is courtesy; the database exists either way.
    let _ = conn.close().await;
    Ok(Some(url))
}

/// Drops a database made by [`fresh_postgres_url`], closing any connections still open to it.
pub async fn drop_postgres_database(url: &str) -> Result<(), TestStoreError> {
    let admin = std::env::var(POSTGRES_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty() && v.trim() != "skip")
        .unwrap_or_else(|| DEFAULT_POSTGRES.to_string());
    let database = database_of(url)
        .filter(|d| d.starts_with(DATABASE_PREFIX))
        .ok_or_else(|| TestStoreError::BadUrl {
            url: url.to_string(),
        })?;
    let mut conn = connect_admin(&admin).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
        .await
        .map_err(|source| TestStoreError::Database {
            url: admin.clone(),
            database: database.to_string(),
            source,
        })?;
    let _ = conn.close().await;
    Ok(())
}

/// A plain connection to a store's database, past the [`crate::Store`]: for tests that build a
/// store at an older migration, write history into it as an older sluice did, or recount what
/// the store keeps.
pub enum RawConnection {
    Sqlite(sqlx::SqliteConnection),
    Postgres(PgConnection),
}

impl RawConnection {
    /// Connects to `url` (`sqlite://PATH`, created if missing, or `postgres://...`).
    pub async fn open(url: &str) -> Result<RawConnection, sqlx::Error> {
        if url.starts_with("postgres") {
            return Ok(RawConnection::Postgres(PgConnection::connect(url).await?));
        }
        let options = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()?
            .create_if_missing(true);
        Ok(RawConnection::Sqlite(options.connect().await?))
    }

    /// Applies the store's migrations up to and including `last` (what an older sluice left).
    pub async fn migrate_up_to(&mut self, last: i64) -> Result<(), sqlx::migrate::MigrateError> {
        let older = |all: &sqlx::migrate::Migrator| sqlx::migrate::Migrator {
            migrations: all
                .migrations
                .iter()
                .filter(|m| m.version <= last)
                .cloned()
                .collect(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        match self {
            RawConnection::Sqlite(c) => older(&crate::sqlite::MIGRATOR).run_direct(c).await,
            RawConnection::Postgres(c) => older(&crate::postgres::MIGRATOR).run_direct(c).await,
        }
    }

    /// Runs one statement without parameters; returns the rows it changed.
    pub async fn execute(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        Ok(match self {
            RawConnection::Sqlite(c) => sqlx::query(sql).execute(c).await?.rows_affected(),
            RawConnection::Postgres(c) => sqlx::query(sql).execute(c).await?.rows_affected(),
        })
    }

    /// Runs a query of one BIGINT.
    pub async fn scalar(&mut self, sql: &str) -> Result<i64, sqlx::Error> {
        match self {
            RawConnection::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await,
            RawConnection::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await,
        }
    }

    /// Where the counters the store keeps (migration 0008) differ from a full recount of the
    /// tables they count, by GROUP BY: one line per counter that differs, empty when all agree.
    /// The duration buckets are recounted from [`crate::DURATION_BUCKETS_MS`].
    pub async fn counter_drift(&mut self) -> Result<Vec<String>, sqlx::Error> {
        let mut out = Vec::new();
        for (name, recount, counted) in recounts() {
            let differ = |a: &str, b: &str| {
                format!(
                    "SELECT CAST(COUNT(*) AS BIGINT) FROM \
                     (SELECT * FROM ({a}) AS a EXCEPT SELECT * FROM ({b}) AS b) AS d"
                )
            };
            let missing = self.scalar(&differ(&recount, &counted)).await?;
            let extra = self.scalar(&differ(&counted, &recount)).await?;
            if missing + extra > 0 {
                out.push(format!(
                    "{name}: {missing} recounted row(s) not in the counters, {extra} counted row(s) not in the recount"
                ));
            }
        }
        Ok(out)
    }
}

/// (counter, recount of the history, what the counters say), as rows of the same shape.
fn recounts() -> Vec<(&'static str, String, String)> {
    let mut bucket = String::from("CASE");
    for (i, bound) in crate::DURATION_BUCKETS_MS.iter().enumerate() {
        bucket.push_str(&format!(" WHEN duration_ms <= {bound} THEN {i}"));
    }
    bucket.push_str(&format!(" ELSE {} END", crate::DURATION_BUCKETS_MS.len()));
    let big = |e: &str| format!("CAST({e} AS BIGINT)");
    vec![
        (
            "task_counts",
            format!(
                "SELECT pipeline, version, state, {}, {}, {} FROM tasks GROUP BY pipeline, version, state",
                big("COUNT(*)"),
                big("COALESCE(SUM(rows_in), 0)"),
                big("COALESCE(SUM(rows_out), 0)")
            ),
            format!(
                "SELECT pipeline, version, state, {}, {}, {} FROM task_counts \
                 GROUP BY pipeline, version, state \
                 HAVING SUM(batches) <> 0 OR SUM(rows_in) <> 0 OR SUM(rows_out) <> 0",
                big("SUM(batches)"),
                big("SUM(rows_in)"),
                big("SUM(rows_out)")
            ),
        ),
        (
            "run_counts",
            format!(
                "SELECT pipeline, version, outcome, bucket, {}, {}, {}, {}, {}, {} \
                 FROM (SELECT pipeline, version, outcome, {} AS bucket, rows_in, rows_out, \
                 duration_ms, started_at, finished_at FROM batch_runs) AS r \
                 GROUP BY pipeline, version, outcome, bucket",
                big("COUNT(*)"),
                big("SUM(rows_in)"),
                big("SUM(rows_out)"),
                big("SUM(duration_ms)"),
                big("MIN(started_at)"),
                big("MAX(finished_at)"),
                big(&bucket)
            ),
            format!(
                "SELECT pipeline, version, outcome, bucket, {}, {}, {}, {}, {}, {} FROM run_counts \
                 GROUP BY pipeline, version, outcome, bucket",
                big("SUM(runs)"),
                big("SUM(rows_in)"),
                big("SUM(rows_out)"),
                big("SUM(duration_ms_sum)"),
                big("MIN(first_started_at)"),
                big("MAX(last_finished_at)")
            ),
        ),
        (
            "check_counts",
            format!(
                "SELECT pipeline, check_name, level, {} FROM check_results \
                 GROUP BY pipeline, check_name, level",
                big("COUNT(*)")
            ),
            format!(
                "SELECT pipeline, check_name, level, {} FROM check_counts \
                 GROUP BY pipeline, check_name, level HAVING SUM(results) <> 0",
                big("SUM(results)")
            ),
        ),
        (
            "pipeline_counts.dropped_rows",
            format!(
                "SELECT pipeline, {} FROM (SELECT pipeline, batch_id, MAX(dropped) AS d \
                 FROM check_results WHERE kind = 'bad_rows' GROUP BY pipeline, batch_id) AS b \
                 GROUP BY pipeline HAVING SUM(d) <> 0",
                big("SUM(d)")
            ),
            format!(
                "SELECT pipeline, {} FROM pipeline_counts GROUP BY pipeline \
                 HAVING SUM(dropped_rows) <> 0",
                big("SUM(dropped_rows)")
            ),
        ),
        (
            "pipeline_counts.files",
            format!(
                "SELECT pipeline, {} FROM files GROUP BY pipeline",
                big("COUNT(*)")
            ),
            format!(
                "SELECT pipeline, {} FROM pipeline_counts GROUP BY pipeline HAVING SUM(files) <> 0",
                big("SUM(files)")
            ),
        ),
    ]
}

async fn connect_admin(admin: &str) -> Result<PgConnection, TestStoreError> {
    let unreachable = |reason: String| TestStoreError::Unreachable {
        url: admin.to_string(),
        reason,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(admin)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Best effort: a failure here must not fail the test that happens to run the sweep.
async fn drop_stale_databases(conn: &mut PgConnection) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
    )
    .bind(DATABASE_PREFIX)
    .fetch_all(&mut *conn)
    .await
    else {
        return;
    };
    let now_secs = sluice_core::now_millis() / 1000;
    for name in names {
        let created = name
            .strip_prefix(DATABASE_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<i64>().ok());
        if created.is_some_and(|c| now_secs - c > STALE_AFTER_SECS) {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await;
        }
    }
}

/// `url` with its database replaced by `database`, query parameters kept.
fn with_database(url: &str, database: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.starts_with("postgres") {
        return None;
    }
    let (location, query) = match rest.find('?') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = location.split('/').next().filter(|a| !a.is_empty())?;
    Some(format!("{scheme}://{authority}/{database}{query}"))
}

fn database_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let location = rest.split('?').next()?;
    let (_, database) = location.split_once('/')?;
    Some(database)
        .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// A store error as a connection failing with `kind` gives (for tests of outage handling).
pub fn io_error(kind: std::io::ErrorKind) -> crate::StoreError {
    crate::StoreError::postgres(sqlx::Error::Io(std::io::Error::from(kind)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_and_query_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x").as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/x")
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "y").as_deref(),
            Some("postgresql://u:p@h/y?sslmode=disable")
        );
        assert_eq!(
            with_database("postgres://h", "z").as_deref(),
            Some("postgres://h/z")
        );
        assert_eq!(with_database("mysql://h/db", "z"), None);
        assert_eq!(
            database_of("postgres://h:1/sluice_test_1_ab?x=1"),
            Some("sluice_test_1_ab")
        );
        assert_eq!(database_of("postgres://h/a;drop"), None);
    }
}
