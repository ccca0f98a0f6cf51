//! The embedded backend: one SQLite file, shared by the processes of one machine.
//!
//! Every change that reads before it writes runs in a `BEGIN IMMEDIATE` transaction: it takes
//! SQLite's write lock up front, so two processes can never both decide to lease the same task,
//! and a deferred transaction can never fail half-way when it tries to upgrade to a writer. The
//! busy timeout makes contending writers wait for each other instead of failing. A process killed
//! mid-transaction leaves nothing behind: SQLite rolls the unfinished transaction back.
//!
//! The statements are the ones both backends share (`shared.rs`); this file opens the store and
//! holds what only SQLite does: its clock, its write lock, and its way to queue and lease.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_core::{LeaseToken, now_millis};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite, Transaction};

use crate::rows::{self, SliceColumns, TaskRow, task_columns};
use crate::shared::{Backend, Queue, RowsAffected};
use crate::{LeaseRequest, NewTask, Result, StoreError};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a writer waits for another process's transaction before giving up. Generous: our
/// transactions are short, so hitting this means something is badly wrong, not merely busy
/// (and a long-running process then waits it out as an outage).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Enough connections for a process's workers to read in parallel (WAL lets readers run beside
/// the one writer); writes serialize on the file lock anyway.
const MAX_CONNECTIONS: u32 = 8;

/// The SQLite state store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the store file at `path` and applies
    /// pending migrations.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        SqliteStore::open_with(path, BUSY_TIMEOUT).await
    }

    /// [`SqliteStore::open`] with a writer's wait for another process's lock of `busy_timeout`.
    pub async fn open_with(path: impl AsRef<Path>, busy_timeout: Duration) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| StoreError::CreateDir {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            // NORMAL is durable against a killed process in WAL mode; only a power cut can lose
            // the last transactions, and the exactly-once commit lives in the sink, not here.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true);
        enable_wal(&options).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(busy_timeout)
            .connect_with(options)
            .await
            .map_err(StoreError::sqlite)?;
        let store = SqliteStore { pool, path };
        store.migrate().await?;
        Ok(store)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// sqlx's migrator takes no lock on SQLite, so two processes opening a fresh file at once
    /// would both try to apply the same migration. Running it under one write transaction makes
    /// the second wait, then find the migration applied.
    async fn migrate(&self) -> Result<()> {
        let mut tx = self.write_tx().await?;
        // `run_direct`, not `run`: `run(&mut conn)` hits rustc's "`Acquire` is not general
        // enough" and makes `open`'s future unusable with `tokio::spawn`.
        MIGRATOR
            .run_direct(&mut *tx)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: "sqlite",
                source,
            })?;
        tx.commit().await.map_err(StoreError::sqlite)
    }
}

/// Switches the file to WAL mode, which then sticks to the file for every later connection.
///
/// The switch needs an exclusive lock that SQLite will not wait for (the busy timeout does not
/// apply), so processes opening a fresh file together would see "database is locked". It is done
/// once here on its own connection, retrying while another process holds the file.
async fn enable_wal(options: &SqliteConnectOptions) -> Result<()> {
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let attempt = async {
            let mut conn = options.connect().await?;
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                .fetch_one(&mut conn)
                .await?;
            conn.close().await?;
            Ok::<_, sqlx::Error>(mode)
        };
        match attempt.await {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(StoreError::Setup(format!(
                    "SQLite refused WAL journal mode (still {mode:?}); is the store on a file \
                     system without shared memory support, such as a network mount?"
                )));
            }
            Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(StoreError::sqlite(e)),
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED, in any of their extended forms.
fn is_busy(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

impl Backend for SqliteStore {
    type DB = Sqlite;
    const NAME: &'static str = "sqlite";
    /// The machine's clock, as [`now_millis`] reads it: whole milliseconds since the epoch
    /// (`unixepoch('subsec')` has three decimals; rounding after `* 1000` undoes the float), one
    /// instant within a statement.
    const NOW: &'static str = "CAST(ROUND(unixepoch('subsec') * 1000) AS INTEGER)";
    /// Nothing to lock: the write transaction already excludes every other writer.
    const SKIP_LOCKED: &'static str = "";
    // Nor here, for the same reason.
    const FOR_UPDATE: &'static str = "";
    const FOR_SHARE: &'static str = "";
    /// Deferred: the snapshot is taken at the first read and kept to the end.
    const BEGIN_SNAPSHOT: &'static str = "BEGIN";

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn clock(&self) -> Result<i64> {
        // One machine, so the local clock is the clock every process judges leases by.
        Ok(now_millis())
    }

    async fn clock_in(_conn: &mut SqliteConnection) -> Result<i64> {
        Ok(now_millis())
    }

    /// A transaction that holds the write lock from its first statement.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::sqlite)
    }

    async fn queue_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        self.write_tx().await
    }

    async fn lock_row(
        _conn: &mut SqliteConnection,
        _select: &'static str,
        _key: &str,
    ) -> Result<()> {
        // The write transaction holds the whole file already.
        Ok(())
    }

    async fn queue_tasks(
        conn: &mut SqliteConnection,
        q: &Queue<'_>,
        tasks: &[NewTask],
        slices: &[SliceColumns],
    ) -> Result<u64> {
        let now = now_millis();
        let mut queued = 0;
        for (task, slice) in tasks.iter().zip(slices) {
            // A batch id already queued (the same slice reached through another file name)
            // stays where it is: its rows must enter the queue once.
            queued += sqlx::query(
                "INSERT INTO tasks (batch_id, pipeline, version, path, slice_index, byte_start, \
                 byte_end, row_start, row_count, state, attempts, max_attempts, run_after, \
                 created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $11, $11, $11) \
                 ON CONFLICT (batch_id) DO NOTHING",
            )
            .bind(&task.batch_id.0)
            .bind(q.pipeline)
            .bind(q.version)
            .bind(&task.slice.path)
            .bind(slice.index)
            .bind(slice.byte_start)
            .bind(slice.byte_end)
            .bind(slice.row_start)
            .bind(slice.row_count)
            .bind(q.max_attempts)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::sqlite)?
            .rows_affected();
            // Which content of the file the batch holds, recorded once per batch id like it.
            sqlx::query(
                "INSERT INTO batch_inputs (batch_id, pipeline, path, generation) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (batch_id) DO NOTHING",
            )
            .bind(&task.batch_id.0)
            .bind(q.pipeline)
            .bind(q.path)
            .bind(q.generation)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::sqlite)?;
        }
        Ok(queued)
    }

    async fn queued(&self, _n: u64) {
        // SQLite plans the lease from the partial index without statistics.
    }

    async fn lease_pending(
        conn: &mut SqliteConnection,
        req: &LeaseRequest,
    ) -> Result<Vec<TaskRow>> {
        let limit = i64::try_from(req.limit).unwrap_or(i64::MAX);
        // The pipeline filter travels as one JSON array so the statement stays the same for any
        // number of pipelines.
        let pipelines = req
            .pipelines
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("encoding the pipeline filter: {e}")))?;
        let now = now_millis();
        let expires_at = now.saturating_add(rows::millis(req.lease_for));
        let seqs: Vec<i64> = sqlx::query_scalar(concat!(
            "SELECT seq FROM tasks WHERE state = 'pending' AND run_after <= $1 \
             AND ($2 IS NULL OR pipeline IN (SELECT value FROM json_each($2))) AND ",
            rows::not_held!(),
            " ORDER BY seq LIMIT $3"
        ))
        .bind(now)
        .bind(pipelines)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::sqlite)?;
        let mut leases = Vec::with_capacity(seqs.len());
        for seq in seqs {
            // The write lock makes the state check redundant; it stays as a second fence.
            let row: Option<TaskRow> = sqlx::query_as(concat!(
                "UPDATE tasks AS t SET state = 'leased', attempts = t.attempts + 1, \
                 lease_owner = $2, lease_token = $3, leased_at = $4, lease_expires_at = $5, \
                 updated_at = $4, ",
                rows::route_to_current!("$4"),
                " WHERE t.seq = $1 AND t.state = 'pending' RETURNING ",
                task_columns!()
            ))
            .bind(seq)
            .bind(&req.worker.0)
            .bind(LeaseToken::random().0)
            .bind(now)
            .bind(expires_at)
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::sqlite)?;
            leases.extend(row);
        }
        Ok(leases)
    }
}

impl RowsAffected for SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        SqliteQueryResult::rows_affected(self)
    }
}
