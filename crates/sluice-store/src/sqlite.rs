//! The embedded backend: one SQLite file, shared by the processes of one machine.
//!
//! Every change that reads before it writes runs in a `BEGIN IMMEDIATE` transaction: it takes
//! SQLite's write lock up front, so two processes can never both decide to lease the same task,
//! and a deferred transaction can never fail half-way when it tries to upgrade to a writer. The
//! busy timeout makes contending writers wait for each other instead of failing. A process killed
//! mid-transaction leaves nothing behind: SQLite rolls the unfinished transaction back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::{BatchId, ErrorKind, LeaseToken, TaskState, now_millis};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite, Transaction};

use crate::changes::{self, BatchFileRow, TakenFileRow};
use crate::measurements;
use crate::registry::{self, DatasetRow, SchemaVersionRow};
use crate::rows::{
    self, ExpiredRow, FileCountRow, INSERT_RUN_SQL, NewRun, PipelineRow, RunRow, RunWindowRow,
    SliceColumns, StateCountRow, TaskRow, VersionRow, WorkerRow, run_columns, task_columns,
    version_columns,
};
use crate::{
    BatchFile, BatchRun, CheckRecord, DatasetRecord, FailDisposition, FileChange, FileUpdate,
    Lease, LeaseRequest, NewFile, NewSchemaVersion, NewTask, PipelineRecord, PipelineStatus,
    PipelineVersion, Result, RetryTarget, RunReport, SchemaRegistration, SchemaVersionRecord,
    Store, StoreError, TakenFile, TaskRecord, WorkerBeat, WorkerRecord,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

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

    /// A transaction that holds the write lock from its first statement.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::sqlite)
    }

    async fn version_by_hash(
        conn: &mut SqliteConnection,
        pipeline: &str,
        spec_hash: &str,
    ) -> Result<Option<PipelineVersion>> {
        let row: Option<VersionRow> = sqlx::query_as(concat!(
            "SELECT ",
            version_columns!(),
            " FROM pipeline_versions WHERE pipeline = $1 AND spec_hash = $2"
        ))
        .bind(pipeline)
        .bind(spec_hash)
        .fetch_optional(conn)
        .await
        .map_err(StoreError::sqlite)?;
        Ok(row.map(PipelineVersion::from))
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

async fn insert_run(conn: &mut SqliteConnection, run: &NewRun<'_>) -> Result<()> {
    rows::bind_run(sqlx::query(INSERT_RUN_SQL), run)
        .execute(conn)
        .await
        .map_err(StoreError::sqlite)?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn now(&self) -> Result<i64> {
        // One machine, so the local clock is the clock every process judges leases by.
        Ok(now_millis())
    }

    async fn register_pipeline_version(
        &self,
        pipeline: &str,
        spec_hash: &str,
        spec: &str,
        base_dir: &str,
        make_current: bool,
    ) -> Result<PipelineVersion> {
        // Re-registering an unchanged spec is the common case: answer it without the write lock.
        {
            let mut conn = self.pool.acquire().await.map_err(StoreError::sqlite)?;
            if let Some(v) = Self::version_by_hash(&mut conn, pipeline, spec_hash).await? {
                if make_current {
                    self.set_current_version(pipeline, v.version).await?;
                }
                return Ok(v);
            }
        }
        let now = now_millis();
        let mut tx = self.write_tx().await?;
        // Another process may have registered it between the check above and the lock.
        if let Some(v) = Self::version_by_hash(&mut tx, pipeline, spec_hash).await? {
            if make_current {
                set_current(&mut tx, pipeline, v.version).await?;
            }
            tx.commit().await.map_err(StoreError::sqlite)?;
            return Ok(v);
        }
        // A new pipeline's first version is its current one.
        sqlx::query(
            "INSERT INTO pipelines (name, current_version, created_at) VALUES ($1, 1, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(pipeline)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::sqlite)?;
        let row: VersionRow = sqlx::query_as(concat!(
            "INSERT INTO pipeline_versions (",
            version_columns!(),
            ") SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, $5 \
             FROM pipeline_versions WHERE pipeline = $1 RETURNING ",
            version_columns!()
        ))
        .bind(pipeline)
        .bind(spec_hash)
        .bind(spec)
        .bind(base_dir)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::sqlite)?;
        let version = PipelineVersion::from(row);
        if make_current {
            set_current(&mut tx, pipeline, version.version).await?;
        }
        tx.commit().await.map_err(StoreError::sqlite)?;
        Ok(version)
    }

    async fn set_current_version(&self, pipeline: &str, version: i64) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::sqlite)?;
        set_current(&mut conn, pipeline, version).await
    }

    async fn pipeline(&self, pipeline: &str) -> Result<Option<PipelineRecord>> {
        let row: Option<PipelineRow> = sqlx::query_as(
            "SELECT name, current_version, created_at FROM pipelines WHERE name = $1",
        )
        .bind(pipeline)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::sqlite)?;
        Ok(row.map(PipelineRecord::from))
    }

    async fn pipelines(&self) -> Result<Vec<PipelineRecord>> {
        let rows: Vec<PipelineRow> = sqlx::query_as(rows::STATUS_PIPELINES_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::sqlite)?;
        Ok(rows.into_iter().map(PipelineRecord::from).collect())
    }

    async fn pipeline_version(
        &self,
        pipeline: &str,
        version: i64,
    ) -> Result<Option<PipelineVersion>> {
        let row: Option<VersionRow> = sqlx::query_as(concat!(
            "SELECT ",
            version_columns!(),
            " FROM pipeline_versions WHERE pipeline = $1 AND version = $2"
        ))
        .bind(pipeline)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::sqlite)?;
        Ok(row.map(PipelineVersion::from))
    }

    async fn known_files(&self, pipeline: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT path FROM files WHERE pipeline = $1 ORDER BY path")
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::sqlite)
    }

    async fn register_file(
        &self,
        file: &NewFile,
        version: i64,
        max_attempts: i32,
        tasks: &[NewTask],
    ) -> Result<bool> {
        // Validate every slice before taking the file in, so a bad one leaves nothing behind.
        let slices = tasks
            .iter()
            .map(|t| SliceColumns::of(&t.batch_id, &t.slice))
            .collect::<Result<Vec<_>>>()?;
        let now = now_millis();
        let mut tx = self.write_tx().await?;
        ensure_version(&mut tx, &file.pipeline, version, &file.path).await?;
        let taken_in = sqlx::query(
            "INSERT INTO files (pipeline, path, size, modified_ms, registered_at, taken_bytes, \
             taken_rows, checksum) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (pipeline, path) DO NOTHING",
        )
        .bind(&file.pipeline)
        .bind(&file.path)
        .bind(file.size)
        .bind(file.modified_ms)
        .bind(now)
        .bind(file.taken_bytes)
        .bind(file.taken_rows)
        .bind(&file.checksum)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::sqlite)?
        .rows_affected();
        if taken_in == 0 {
            return Ok(false);
        }
        let queue = Queue {
            pipeline: &file.pipeline,
            path: &file.path,
            version,
            max_attempts,
            generation: 0,
            now,
        };
        queue_tasks(&mut tx, &queue, tasks, &slices).await?;
        tx.commit().await.map_err(StoreError::sqlite)?;
        Ok(true)
    }

    async fn taken_files(&self, pipeline: &str) -> Result<Vec<TakenFile>> {
        let rows: Vec<TakenFileRow> = sqlx::query_as(changes::TAKEN_FILES_SQL)
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::sqlite)?;
        Ok(rows.into_iter().map(TakenFile::from).collect())
    }

    async fn changed_files(&self, pipeline: &str) -> Result<Vec<TakenFile>> {
        let rows: Vec<TakenFileRow> = sqlx::query_as(changes::CHANGED_FILES_SQL)
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::sqlite)?;
        Ok(rows.into_iter().map(TakenFile::from).collect())
    }

    async fn take_in_change(
        &self,
        update: &FileUpdate,
        version: i64,
        max_attempts: i32,
        tasks: &[NewTask],
    ) -> Result<bool> {
        let slices = tasks
            .iter()
            .map(|t| SliceColumns::of(&t.batch_id, &t.slice))
            .collect::<Result<Vec<_>>>()?;
        let file = &update.file;
        let now = now_millis();
        let mut tx = self.write_tx().await?;
        ensure_version(&mut tx, &file.pipeline, version, &file.path).await?;
        let (bytes, checksum, generation) = &update.based_on;
        let updated = sqlx::query(changes::TAKE_IN_CHANGE_SQL)
            .bind(&file.pipeline)
            .bind(&file.path)
            .bind(file.size)
            .bind(file.modified_ms)
            .bind(file.taken_bytes)
            .bind(file.taken_rows)
            .bind(&file.checksum)
            .bind(update.generation)
            .bind(bytes)
            .bind(checksum)
            .bind(generation)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sqlite)?
            .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        let queue = Queue {
            pipeline: &file.pipeline,
            path: &file.path,
            version,
            max_attempts,
            generation: update.generation,
            now,
        };
        queue_tasks(&mut tx, &queue, tasks, &slices).await?;
        tx.commit().await.map_err(StoreError::sqlite)?;
        Ok(true)
    }

    async fn notice_file_change(
        &self,
        pipeline: &str,
        path: &str,
        change: Option<&FileChange>,
    ) -> Result<bool> {
        let query = match change {
            Some(c) => sqlx::query(changes::NOTICE_CHANGE_SQL)
                .bind(pipeline)
                .bind(path)
                .bind(c.size)
                .bind(c.modified_ms)
                .bind(&c.detail)
                .bind(&c.action)
                .bind(now_millis()),
            None => sqlx::query(changes::CLEAR_CHANGE_SQL)
                .bind(pipeline)
                .bind(path),
        };
        let changed = query
            .execute(&self.pool)
            .await
            .map_err(StoreError::sqlite)?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn record_batch_files(&self, files: &[BatchFile]) -> Result<()> {
        let now = now_millis();
        let mut tx = self.write_tx().await?;
        for f in files {
            sqlx::query(changes::INSERT_BATCH_FILE_SQL)
                .bind(&f.pipeline)
                .bind(&f.batch_id.0)
                .bind(f.table_version)
                .bind(&f.data_file)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::sqlite)?;
        }
        tx.commit().await.map_err(StoreError::sqlite)
    }

    async fn batch_files(&self, batches: &[BatchId]) -> Result<Vec<BatchFile>> {
        let mut out = Vec::new();
        for b in batches {
            let rows: Vec<BatchFileRow> = sqlx::query_as(changes::BATCH_FILES_SQL)
                .bind(&b.0)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::sqlite)?;
            out.extend(rows.into_iter().map(BatchFile::from));
        }
        Ok(out)
    }

    async fn superseded_files(&self, batch: &BatchId) -> Result<Vec<String>> {
        sqlx::query_scalar(changes::SUPERSEDED_FILES_SQL)
            .bind(&batch.0)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::sqlite)
    }

    async fn lease(&self, req: &LeaseRequest) -> Result<Vec<Lease>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
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
        let mut tx = self.write_tx().await?;
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM tasks WHERE state = 'pending' AND run_after <= $1 \
             AND ($2 IS NULL OR pipeline IN (SELECT value FROM json_each($2))) \
             ORDER BY seq LIMIT $3",
        )
        .bind(now)
        .bind(pipelines)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::sqlite)?;
        let mut leases = Vec::with_capacity(seqs.len());
        for seq in seqs {
            // The write lock makes the state check redundant; it stays as a second fence.
            let row: Option<TaskRow> = sqlx::query_as(concat!(
                "UPDATE tasks SET state = 'leased', attempts = attempts + 1, lease_owner = $2, \
                 lease_token = $3, leased_at = $4, lease_expires_at = $5, updated_at = $4 \
                 WHERE seq = $1 AND state = 'pending' RETURNING ",
                task_columns!()
            ))
            .bind(seq)
            .bind(&req.worker.0)
            .bind(LeaseToken::random().0)
            .bind(now)
            .bind(expires_at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::sqlite)?;
            if let Some(row) = row {
                leases.push(row.into_lease()?);
            }
        }
        tx.commit().await.map_err(StoreError::sqlite)?;
        Ok(leases)
    }

    async fn heartbeat(
        &self,
        batch: &BatchId,
        token: &LeaseToken,
        extend: Duration,
    ) -> Result<bool> {
        let now = now_millis();
        let held = sqlx::query(
            "UPDATE tasks SET lease_expires_at = $3, updated_at = $4 \
             WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased'",
        )
        .bind(&batch.0)
        .bind(&token.0)
        .bind(now.saturating_add(rows::millis(extend)))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(StoreError::sqlite)?
        .rows_affected();
        Ok(held == 1)
    }

    async fn complete(&self, lease: &Lease, report: &RunReport) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let held = sqlx::query(
            "UPDATE tasks SET state = 'done', rows_in = $3, rows_out = $4, lease_owner = NULL, \
             lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, last_error = NULL, \
             error_kind = NULL, updated_at = $5 \
             WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased'",
        )
        .bind(&lease.batch_id.0)
        .bind(&lease.token.0)
        .bind(report.rows_in)
        .bind(report.rows_out)
        .bind(now_millis())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::sqlite)?
        .rows_affected();
        // The run happened whether or not the lease was still ours: keep its measurements.
        insert_run(&mut tx, &NewRun::reported(lease, report)).await?;
        tx.commit().await.map_err(StoreError::sqlite)?;
        Ok(held == 1)
    }

    async fn fail(
        &self,
        lease: &Lease,
        report: &RunReport,
        kind: ErrorKind,
        quarantine: bool,
        backoff: Duration,
    ) -> Result<FailDisposition> {
        let now = now_millis();
        let error = report
            .error
            .as_deref()
            .unwrap_or("the run failed without a message");
        let mut tx = self.write_tx().await?;
        let state: Option<String> = sqlx::query_scalar(
            "UPDATE tasks SET \
             state = CASE WHEN $3 OR attempts >= max_attempts THEN 'quarantined' ELSE 'pending' END, \
             run_after = CASE WHEN $3 OR attempts >= max_attempts THEN run_after ELSE $4 END, \
             lease_owner = NULL, lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, \
             last_error = $5, error_kind = $6, updated_at = $7 \
             WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased' \
             RETURNING state",
        )
        .bind(&lease.batch_id.0)
        .bind(&lease.token.0)
        .bind(quarantine)
        .bind(now.saturating_add(rows::millis(backoff)))
        .bind(error)
        .bind(rows::error_kind_str(kind))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::sqlite)?;
        insert_run(&mut tx, &NewRun::reported(lease, report)).await?;
        tx.commit().await.map_err(StoreError::sqlite)?;
        rows::fail_disposition(state.as_deref(), &lease.batch_id)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'pending', attempts = MAX(attempts - 1, 0), \
             lease_owner = NULL, lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, \
             updated_at = $3 \
             WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased'",
        )
        .bind(&lease.batch_id.0)
        .bind(&lease.token.0)
        .bind(now_millis())
        .execute(&self.pool)
        .await
        .map_err(StoreError::sqlite)?;
        Ok(())
    }

    async fn rescue_expired(&self) -> Result<u64> {
        let now = now_millis();
        let mut tx = self.write_tx().await?;
        let expired: Vec<ExpiredRow> = sqlx::query_as(
            "SELECT batch_id, pipeline, version, lease_owner, attempts, max_attempts, leased_at \
             FROM tasks WHERE state = 'leased' AND lease_expires_at < $1 ORDER BY seq",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::sqlite)?;
        for row in &expired {
            let message = row.message();
            let state = if row.exhausted() {
                TaskState::Quarantined
            } else {
                TaskState::Pending
            };
            sqlx::query(
                "UPDATE tasks SET state = $2, run_after = $4, lease_owner = NULL, \
                 lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, \
                 last_error = $3, error_kind = $5, updated_at = $4 \
                 WHERE batch_id = $1 AND state = 'leased'",
            )
            .bind(&row.batch_id)
            .bind(state.as_str())
            .bind(&message)
            .bind(now)
            // a dead or hung worker is the outside world failing: another attempt may succeed
            .bind(rows::error_kind_str(ErrorKind::External))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::sqlite)?;
            insert_run(&mut tx, &NewRun::expired(row, &message, now)).await?;
        }
        tx.commit().await.map_err(StoreError::sqlite)?;
        rows::log_rescued(&expired);
        Ok(expired.len() as u64)
    }

    async fn retry(&self, target: &RetryTarget) -> Result<u64> {
        // Re-pinned to the current version: a fixed spec is what the user retries with.
        macro_rules! reset {
            () => {
                "UPDATE tasks SET state = 'pending', attempts = 0, \
                 version = (SELECT current_version FROM pipelines WHERE name = tasks.pipeline), \
                 run_after = $1, last_error = NULL, error_kind = NULL, rows_in = NULL, \
                 rows_out = NULL, updated_at = $1 WHERE state = 'quarantined' "
            };
        }
        let now = now_millis();
        let query = match target {
            RetryTarget::Batch(batch) => sqlx::query(concat!(reset!(), "AND batch_id = $2"))
                .bind(now)
                .bind(batch.0.as_str()),
            RetryTarget::All { pipeline } => {
                sqlx::query(concat!(reset!(), "AND ($2 IS NULL OR pipeline = $2)"))
                    .bind(now)
                    .bind(pipeline.as_deref())
            }
        };
        let retried = query
            .execute(&self.pool)
            .await
            .map_err(StoreError::sqlite)?
            .rows_affected();
        Ok(retried)
    }

    async fn task(&self, batch: &BatchId) -> Result<Option<TaskRecord>> {
        let row: Option<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE batch_id = $1"
        ))
        .bind(&batch.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::sqlite)?;
        row.map(TaskRow::into_record).transpose()
    }

    async fn tasks(&self, pipeline: &str, state: Option<TaskState>) -> Result<Vec<TaskRecord>> {
        let rows: Vec<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE pipeline = $1 AND ($2 IS NULL OR state = $2) ORDER BY seq"
        ))
        .bind(pipeline)
        .bind(state.map(TaskState::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::sqlite)?;
        rows.into_iter().map(TaskRow::into_record).collect()
    }

    async fn worker_heartbeat(&self, beat: &WorkerBeat) -> Result<()> {
        sqlx::query(
            "INSERT INTO workers (worker, host, pid, state, started_at, last_heartbeat) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (worker) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
             state = excluded.state, last_heartbeat = excluded.last_heartbeat",
        )
        .bind(&beat.worker.0)
        .bind(&beat.host)
        .bind(beat.pid)
        .bind(&beat.state)
        .bind(now_millis())
        .execute(&self.pool)
        .await
        .map_err(StoreError::sqlite)?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        let rows: Vec<WorkerRow> = sqlx::query_as(
            "SELECT worker, host, pid, state, started_at, last_heartbeat FROM workers \
             ORDER BY worker",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::sqlite)?;
        Ok(rows.into_iter().map(WorkerRecord::from).collect())
    }

    async fn batch_runs(&self, pipeline: &str, limit: i64) -> Result<Vec<BatchRun>> {
        let rows: Vec<RunRow> = sqlx::query_as(concat!(
            "SELECT ",
            run_columns!(),
            " FROM batch_runs WHERE pipeline = $1 ORDER BY finished_at DESC, id DESC LIMIT $2"
        ))
        .bind(pipeline)
        // SQLite reads a negative LIMIT as "no limit", PostgreSQL refuses it: mean none on both
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::sqlite)?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    async fn record_checks(&self, records: &[CheckRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(StoreError::sqlite)?;
        let now = now_millis();
        for r in records {
            measurements::bind_check!(sqlx::query(measurements::INSERT_CHECK_SQL), r, now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::sqlite)?;
        }
        tx.commit().await.map_err(StoreError::sqlite)
    }

    async fn check_results(
        &self,
        pipeline: &str,
        version: Option<i64>,
        limit: i64,
    ) -> Result<Vec<CheckRecord>> {
        let rows: Vec<measurements::CheckRow> = sqlx::query_as(measurements::CHECK_RESULTS_SQL)
            .bind(pipeline)
            .bind(version)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::sqlite)?;
        Ok(rows.into_iter().map(CheckRecord::from).collect())
    }

    async fn status(&self) -> Result<Vec<PipelineStatus>> {
        // One read transaction: all four queries see the same snapshot.
        let mut tx = self.pool.begin().await.map_err(StoreError::sqlite)?;
        let pipelines: Vec<PipelineRow> = sqlx::query_as(rows::STATUS_PIPELINES_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::sqlite)?;
        let states: Vec<StateCountRow> = sqlx::query_as(rows::STATUS_STATES_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::sqlite)?;
        let files: Vec<FileCountRow> = sqlx::query_as(rows::STATUS_FILES_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::sqlite)?;
        let runs: Vec<RunWindowRow> = sqlx::query_as(rows::STATUS_RUNS_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::sqlite)?;
        let dropped: Vec<rows::DroppedCountRow> = sqlx::query_as(rows::STATUS_DROPPED_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::sqlite)?;
        tx.commit().await.map_err(StoreError::sqlite)?;
        rows::assemble_status(pipelines, states, files, runs, dropped)
    }

    async fn register_schema_version(
        &self,
        new: &NewSchemaVersion<'_>,
    ) -> Result<SchemaRegistration> {
        registry::check_new_version(new)?;
        // The write lock makes the fingerprint check, the staleness check and `latest + 1` one
        // step: another process's registration waits for this one and then sees it.
        let mut tx = self.write_tx().await?;
        let existing: Option<SchemaVersionRow> =
            sqlx::query_as(registry::SCHEMA_VERSION_BY_FINGERPRINT_SQL)
                .bind(new.dataset)
                .bind(new.fingerprint)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::sqlite)?;
        if let Some(row) = existing {
            return Ok(SchemaRegistration::Existing(row.into()));
        }
        let latest: Option<i64> = sqlx::query_scalar(registry::LATEST_VERSION_SQL)
            .bind(new.dataset)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::sqlite)?;
        if latest != new.based_on {
            return Ok(SchemaRegistration::Stale { latest });
        }
        let now = now_millis();
        sqlx::query(
            "INSERT INTO datasets (name, compatibility, created_at, updated_at) \
             VALUES ($1, NULL, $2, $2) \
             ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at",
        )
        .bind(new.dataset)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::sqlite)?;
        let row: SchemaVersionRow = sqlx::query_as(registry::INSERT_SCHEMA_VERSION_SQL)
            .bind(new.dataset)
            .bind(latest.unwrap_or(0) + 1)
            .bind(new.schema_json)
            .bind(new.fingerprint)
            .bind(new.last_field_id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::sqlite)?;
        tx.commit().await.map_err(StoreError::sqlite)?;
        Ok(SchemaRegistration::Created(row.into()))
    }

    async fn schema_version(
        &self,
        dataset: &str,
        version: Option<i64>,
    ) -> Result<Option<SchemaVersionRecord>> {
        let row: Option<SchemaVersionRow> = sqlx::query_as(registry::SCHEMA_VERSION_SQL)
            .bind(dataset)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::sqlite)?;
        Ok(row.map(SchemaVersionRecord::from))
    }

    async fn schema_versions(&self, dataset: &str) -> Result<Vec<SchemaVersionRecord>> {
        let rows: Vec<SchemaVersionRow> = sqlx::query_as(registry::SCHEMA_VERSIONS_SQL)
            .bind(dataset)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::sqlite)?;
        Ok(rows.into_iter().map(SchemaVersionRecord::from).collect())
    }

    async fn dataset(&self, dataset: &str) -> Result<Option<DatasetRecord>> {
        let row: Option<DatasetRow> = sqlx::query_as(registry::DATASETS_SQL)
            .bind(Some(dataset))
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::sqlite)?;
        Ok(row.map(DatasetRecord::from))
    }

    async fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        let rows: Vec<DatasetRow> = sqlx::query_as(registry::DATASETS_SQL)
            .bind(None::<&str>)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::sqlite)?;
        Ok(rows.into_iter().map(DatasetRecord::from).collect())
    }

    async fn set_compatibility(&self, dataset: Option<&str>, mode: &str) -> Result<()> {
        let query = match dataset {
            Some(dataset) => sqlx::query(registry::SET_DATASET_COMPATIBILITY_SQL)
                .bind(dataset)
                .bind(mode)
                .bind(now_millis()),
            None => sqlx::query(registry::SET_CONFIG_SQL)
                .bind(registry::DEFAULT_COMPATIBILITY_KEY)
                .bind(mode),
        };
        query
            .execute(&self.pool)
            .await
            .map_err(StoreError::sqlite)?;
        Ok(())
    }

    async fn compatibility(&self, dataset: &str) -> Result<String> {
        let mode: Option<String> = sqlx::query_scalar(registry::COMPATIBILITY_SQL)
            .bind(dataset)
            .bind(registry::DEFAULT_COMPATIBILITY_KEY)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::sqlite)?;
        registry::compatibility_or_corrupt(mode)
    }
}

async fn set_current(conn: &mut SqliteConnection, pipeline: &str, version: i64) -> Result<()> {
    let updated = sqlx::query(
        "UPDATE pipelines SET current_version = $2 WHERE name = $1 \
         AND EXISTS (SELECT 1 FROM pipeline_versions WHERE pipeline = $1 AND version = $2)",
    )
    .bind(pipeline)
    .bind(version)
    .execute(conn)
    .await
    .map_err(StoreError::sqlite)?
    .rows_affected();
    if updated == 0 {
        return Err(rows::no_such_version(pipeline, version));
    }
    Ok(())
}

/// Tasks are pinned to a version, so it must exist before a file can be queued for it.
async fn ensure_version(
    conn: &mut SqliteConnection,
    pipeline: &str,
    version: i64,
    path: &str,
) -> Result<()> {
    let exists: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM pipeline_versions WHERE pipeline = $1 AND version = $2",
    )
    .bind(pipeline)
    .bind(version)
    .fetch_optional(conn)
    .await
    .map_err(StoreError::sqlite)?;
    match exists {
        Some(_) => Ok(()),
        None => Err(rows::cannot_queue(pipeline, version, path)),
    }
}

/// Where queued tasks go: their pipeline, file, pinned version and content generation.
struct Queue<'a> {
    pipeline: &'a str,
    path: &'a str,
    version: i64,
    max_attempts: i32,
    generation: i64,
    now: i64,
}

/// Queues a file's tasks and records which content each holds.
async fn queue_tasks(
    conn: &mut SqliteConnection,
    q: &Queue<'_>,
    tasks: &[NewTask],
    slices: &[SliceColumns],
) -> Result<()> {
    for (task, slice) in tasks.iter().zip(slices) {
        // A batch id already queued (the same slice reached through another file name)
        // stays where it is: its rows must enter the queue once.
        sqlx::query(
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
        .bind(q.now)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::sqlite)?;
        sqlx::query(changes::INSERT_INPUT_SQL)
            .bind(&task.batch_id.0)
            .bind(q.pipeline)
            .bind(q.path)
            .bind(q.generation)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::sqlite)?;
    }
    Ok(())
}
