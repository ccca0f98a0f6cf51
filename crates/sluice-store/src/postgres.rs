//! The shared backend: one PostgreSQL database for workers on many machines.
//!
//! Leasing selects pending rows `FOR UPDATE SKIP LOCKED`, so concurrent leasers take disjoint
//! tasks without waiting on each other. Every timestamp comes from the database's clock, so a
//! worker machine whose clock runs ahead cannot make a live lease look expired.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::{BatchId, ErrorKind, LeaseToken, TaskState};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The database clock in epoch milliseconds. `clock_timestamp()`, not `now()`: `now()` is frozen
/// at the start of the transaction, which would make a long transaction's leases start late.
macro_rules! db_now {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

/// A process's workers share these; each lease, heartbeat or completion holds one only briefly.
const MAX_CONNECTIONS: u32 = 10;
/// How long a call waits for a connection, which while the server is away means reconnecting
/// until it is back. Short: a connection is free within milliseconds when the server is up, and
/// a call that gives up here reports an outage, which the long-running loops say and wait out
/// (and count against their limit), instead of hanging silently.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The PostgreSQL state store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    stats: Arc<TaskStats>,
}

/// Keeps the planner's statistics of `tasks` in step with a backlog queued all at once.
///
/// Autovacuum analyzes a table about a minute after a tenth of it changed. Until then a backlog
/// registered in one go (thousands of files landing together) is planned with the old
/// statistics, which say the queue is nearly empty: each lease then read and sorted every
/// pending row (10 ms a lease at 20,000 pending tasks, against 0.04 ms through the partial
/// index once analyzed). So the store analyzes `tasks` itself as soon as the rows it queued
/// since the last look exceed autovacuum's own rule: 1,000 rows or a tenth of the table.
#[derive(Debug, Default)]
struct TaskStats {
    /// Tasks this process queued since it last analyzed the table.
    queued: AtomicU64,
    /// The table's row count at that time.
    known: AtomicU64,
}

/// Rows queued before `tasks` is analyzed again, at least.
const ANALYZE_AFTER: u64 = 1_000;

/// Queue transitions (lease, complete, fail) commit without waiting for the WAL flush:
/// `synchronous_commit = off` for that transaction only. A server crash can lose the last
/// fraction of a second of them, which sluice survives by design: a lost lease puts the batch
/// back in the queue, a lost completion makes the batch run again, and its Delta commit marker
/// makes the rerun a no-op (`AlreadyCommitted`). Everything else (registry, pipeline versions,
/// retries) keeps durable commits. On this machine a completion went from ~6 ms (a WAL flush)
/// to ~0.5 ms, a lease + complete cycle from ~12 ms to ~5 ms
/// (`cargo bench -p sluice-store --bench lease`).
async fn queue_commit(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<()> {
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut **tx)
        .await
        .map_err(StoreError::postgres)?;
    Ok(())
}

impl PostgresStore {
    /// Connects to `url` and applies pending migrations. sqlx's migrator holds an advisory lock
    /// while it works, so processes starting together apply each migration once.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(StoreError::postgres)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: "postgres",
                source,
            })?;
        Ok(PostgresStore {
            pool,
            stats: Arc::default(),
        })
    }

    /// Counts `n` newly queued tasks and analyzes `tasks` when they are many (see
    /// [`TaskStats`]). Best effort: a failed ANALYZE only leaves planning to autovacuum.
    async fn queued(&self, n: u64) {
        let stats = &self.stats;
        let queued = stats.queued.fetch_add(n, Ordering::Relaxed) + n;
        if queued < ANALYZE_AFTER.max(stats.known.load(Ordering::Relaxed) / 10) {
            return;
        }
        stats.queued.store(0, Ordering::Relaxed);
        if let Err(e) = sqlx::query("ANALYZE tasks").execute(&self.pool).await {
            tracing::debug!(error = %e, "ANALYZE tasks failed; autovacuum will do it");
            return;
        }
        let rows: Option<f32> =
            sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'tasks'::regclass")
                .fetch_optional(&self.pool)
                .await
                .ok()
                .flatten();
        stats
            .known
            .store(rows.unwrap_or(0.0).max(0.0) as u64, Ordering::Relaxed);
    }

    async fn version_by_hash(
        conn: &mut PgConnection,
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
        .map_err(StoreError::postgres)?;
        Ok(row.map(PipelineVersion::from))
    }
}

async fn db_now(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar(concat!("SELECT ", db_now!()))
        .fetch_one(conn)
        .await
        .map_err(StoreError::postgres)
}

async fn insert_run(conn: &mut PgConnection, run: &NewRun<'_>) -> Result<()> {
    rows::bind_run(sqlx::query(INSERT_RUN_SQL), run)
        .execute(conn)
        .await
        .map_err(StoreError::postgres)?;
    Ok(())
}

async fn set_current(conn: &mut PgConnection, pipeline: &str, version: i64) -> Result<()> {
    let updated = sqlx::query(
        "UPDATE pipelines SET current_version = $2 WHERE name = $1 \
         AND EXISTS (SELECT 1 FROM pipeline_versions WHERE pipeline = $1 AND version = $2)",
    )
    .bind(pipeline)
    .bind(version)
    .execute(conn)
    .await
    .map_err(StoreError::postgres)?
    .rows_affected();
    if updated == 0 {
        return Err(rows::no_such_version(pipeline, version));
    }
    Ok(())
}

/// Tasks are pinned to a version, so it must exist before a file can be queued for it.
async fn ensure_version(
    conn: &mut PgConnection,
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
    .map_err(StoreError::postgres)?;
    match exists {
        Some(_) => Ok(()),
        None => Err(rows::cannot_queue(pipeline, version, path)),
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn now(&self) -> Result<i64> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::postgres)?;
        db_now(&mut conn).await
    }

    async fn register_pipeline_version(
        &self,
        pipeline: &str,
        spec_hash: &str,
        spec: &str,
        base_dir: &str,
        make_current: bool,
    ) -> Result<PipelineVersion> {
        let mut tx = self.pool.begin().await.map_err(StoreError::postgres)?;
        // A new pipeline's first version is its current one. If another process is inserting the
        // same pipeline, this waits for it and then does nothing.
        sqlx::query(concat!(
            "INSERT INTO pipelines (name, current_version, created_at) VALUES ($1, 1, ",
            db_now!(),
            ") ON CONFLICT (name) DO NOTHING"
        ))
        .bind(pipeline)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::postgres)?;
        // Registrations of one pipeline take turns on its row, so `max + 1` cannot be taken
        // twice and a hash registered concurrently is seen by the one that comes second.
        sqlx::query("SELECT name FROM pipelines WHERE name = $1 FOR UPDATE")
            .bind(pipeline)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::postgres)?;
        let version = match Self::version_by_hash(&mut tx, pipeline, spec_hash).await? {
            Some(existing) => existing,
            None => {
                let row: VersionRow = sqlx::query_as(concat!(
                    "INSERT INTO pipeline_versions (",
                    version_columns!(),
                    ") SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, ",
                    db_now!(),
                    " FROM pipeline_versions WHERE pipeline = $1 RETURNING ",
                    version_columns!()
                ))
                .bind(pipeline)
                .bind(spec_hash)
                .bind(spec)
                .bind(base_dir)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::postgres)?;
                PipelineVersion::from(row)
            }
        };
        if make_current {
            set_current(&mut tx, pipeline, version.version).await?;
        }
        tx.commit().await.map_err(StoreError::postgres)?;
        Ok(version)
    }

    async fn set_current_version(&self, pipeline: &str, version: i64) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::postgres)?;
        set_current(&mut conn, pipeline, version).await
    }

    async fn pipeline(&self, pipeline: &str) -> Result<Option<PipelineRecord>> {
        let row: Option<PipelineRow> = sqlx::query_as(
            "SELECT name, current_version, created_at FROM pipelines WHERE name = $1",
        )
        .bind(pipeline)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::postgres)?;
        Ok(row.map(PipelineRecord::from))
    }

    async fn pipelines(&self) -> Result<Vec<PipelineRecord>> {
        let rows: Vec<PipelineRow> = sqlx::query_as(rows::STATUS_PIPELINES_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::postgres)?;
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
        .map_err(StoreError::postgres)?;
        Ok(row.map(PipelineVersion::from))
    }

    async fn known_files(&self, pipeline: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT path FROM files WHERE pipeline = $1 ORDER BY path")
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::postgres)
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
        let mut tx = self.pool.begin().await.map_err(StoreError::postgres)?;
        ensure_version(&mut tx, &file.pipeline, version, &file.path).await?;
        // Two processes discovering the same file: the second waits on the first's row here and
        // then finds it taken in.
        let taken_in = sqlx::query(concat!(
            "INSERT INTO files (pipeline, path, size, modified_ms, taken_bytes, taken_rows, \
             checksum, registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, ",
            db_now!(),
            ") ON CONFLICT (pipeline, path) DO NOTHING"
        ))
        .bind(&file.pipeline)
        .bind(&file.path)
        .bind(file.size)
        .bind(file.modified_ms)
        .bind(file.taken_bytes)
        .bind(file.taken_rows)
        .bind(&file.checksum)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::postgres)?
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
        };
        let queued = queue_tasks(&mut tx, &queue, tasks, &slices).await?;
        tx.commit().await.map_err(StoreError::postgres)?;
        self.queued(queued).await;
        Ok(true)
    }

    async fn taken_files(&self, pipeline: &str) -> Result<Vec<TakenFile>> {
        let rows: Vec<TakenFileRow> = sqlx::query_as(changes::TAKEN_FILES_SQL)
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::postgres)?;
        Ok(rows.into_iter().map(TakenFile::from).collect())
    }

    async fn changed_files(&self, pipeline: &str) -> Result<Vec<TakenFile>> {
        let rows: Vec<TakenFileRow> = sqlx::query_as(changes::CHANGED_FILES_SQL)
            .bind(pipeline)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::postgres)?;
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
        let mut tx = self.pool.begin().await.map_err(StoreError::postgres)?;
        ensure_version(&mut tx, &file.pipeline, version, &file.path).await?;
        let (bytes, checksum, generation) = &update.based_on;
        // A second discoverer waits on the first's row lock here, then finds the take changed.
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
            .map_err(StoreError::postgres)?
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
        };
        let queued = queue_tasks(&mut tx, &queue, tasks, &slices).await?;
        tx.commit().await.map_err(StoreError::postgres)?;
        self.queued(queued).await;
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
                .bind(sluice_core::now_millis()),
            None => sqlx::query(changes::CLEAR_CHANGE_SQL)
                .bind(pipeline)
                .bind(path),
        };
        let changed = query
            .execute(&self.pool)
            .await
            .map_err(StoreError::postgres)?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn record_batch_files(&self, files: &[BatchFile]) -> Result<()> {
        let now = sluice_core::now_millis();
        let mut tx = self.pool.begin().await.map_err(StoreError::postgres)?;
        for f in files {
            sqlx::query(changes::INSERT_BATCH_FILE_SQL)
                .bind(&f.pipeline)
                .bind(&f.batch_id.0)
                .bind(f.table_version)
                .bind(&f.data_file)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::postgres)?;
        }
        tx.commit().await.map_err(StoreError::postgres)
    }

    async fn batch_files(&self, batches: &[BatchId]) -> Result<Vec<BatchFile>> {
        let mut out = Vec::new();
        for b in batches {
            let rows: Vec<BatchFileRow> = sqlx::query_as(changes::BATCH_FILES_SQL)
                .bind(&b.0)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::postgres)?;
            out.extend(rows.into_iter().map(BatchFile::from));
        }
        Ok(out)
    }

    async fn superseded_files(&self, batch: &BatchId) -> Result<Vec<String>> {
        sqlx::query_scalar(changes::SUPERSEDED_FILES_SQL)
            .bind(&batch.0)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::postgres)
    }

    async fn lease(&self, req: &LeaseRequest) -> Result<Vec<Lease>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(req.limit).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await.map_err(StoreError::postgres)?;
        queue_commit(&mut tx).await?;
        // SKIP LOCKED: rows another leaser is taking right now are passed over, not waited on.
        let seqs: Vec<i64> = sqlx::query_scalar(concat!(
            "SELECT seq FROM tasks WHERE state = 'pending' AND run_after <= ",
            db_now!(),
            " AND ($1::text[] IS NULL OR pipeline = ANY($1)) \
             ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED"
        ))
        .bind(req.pipelines.as_deref())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::postgres)?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<String> = seqs.iter().map(|_| LeaseToken::random().0).collect();
        let rows: Vec<TaskRow> = sqlx::query_as(concat!(
            "WITH leased AS (UPDATE tasks t SET state = 'leased', attempts = t.attempts + 1, \
             lease_owner = $1, lease_token = l.token, leased_at = c.now, \
             lease_expires_at = c.now + $2, updated_at = c.now \
             FROM UNNEST($3::bigint[], $4::text[]) AS l(seq, token), (SELECT ",
            db_now!(),
            " AS now) c \
             WHERE t.seq = l.seq AND t.state = 'pending' RETURNING t.*) \
             SELECT ",
            task_columns!(),
            " FROM leased ORDER BY seq"
        ))
        .bind(&req.worker.0)
        .bind(rows::millis(req.lease_for))
        .bind(&seqs)
        .bind(&tokens)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::postgres)?;
        tx.commit().await.map_err(StoreError::postgres)?;
        rows.into_iter().map(TaskRow::into_lease).collect()
    }

    async fn heartbeat(
        &self,
        batch: &BatchId,
        token: &LeaseToken,
        extend: Duration,
    ) -> Result<bool> {
        let held = sqlx::query(concat!(
            "UPDATE tasks SET lease_expires_at = ",
            db_now!(),
            " + $3, updated_at = ",
            db_now!(),
            " WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased'"
        ))
        .bind(&batch.0)
        .bind(&token.0)
        .bind(rows::millis(extend))
        .execute(&self.pool)
        .await
        .map_err(StoreError::postgres)?
        .rows_affected();
        Ok(held == 1)
    }

    async fn complete(&self, lease: &Lease, report: &RunReport) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(StoreError::postgres)?;
        queue_commit(&mut tx).await?;
        let held = sqlx::query(concat!(
            "UPDATE tasks SET state = 'done', rows_in = $3, rows_out = $4, lease_owner = NULL, \
             lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, last_error = NULL, \
             error_kind = NULL, updated_at = ",
            db_now!(),
            " WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased'"
        ))
        .bind(&lease.batch_id.0)
        .bind(&lease.token.0)
        .bind(report.rows_in)
        .bind(report.rows_out)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::postgres)?
        .rows_affected();
        // The run happened whether or not the lease was still ours: keep its measurements.
        insert_run(&mut tx, &NewRun::reported(lease, report)).await?;
        tx.commit().await.map_err(StoreError::postgres)?;
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
        let error = report
            .error
            .as_deref()
            .unwrap_or("the run failed without a message");
        let mut tx = self.pool.begin().await.map_err(StoreError::postgres)?;
        queue_commit(&mut tx).await?;
        let state: Option<String> = sqlx::query_scalar(concat!(
            "UPDATE tasks SET \
             state = CASE WHEN $3 OR attempts >= max_attempts THEN 'quarantined' ELSE 'pending' END, \
             run_after = CASE WHEN $3 OR attempts >= max_attempts THEN run_after ELSE ",
            db_now!(),
            " + $4 END, \
             lease_owner = NULL, lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, \
             last_error = $5, error_kind = $6, updated_at = ",
            db_now!(),
            " WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased' \
             RETURNING state"
        ))
        .bind(&lease.batch_id.0)
        .bind(&lease.token.0)
        .bind(quarantine)
        .bind(rows::millis(backoff))
        .bind(error)
        .bind(rows::error_kind_str(kind))
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::postgres)?;
        insert_run(&mut tx, &NewRun::reported(lease, report)).await?;
        tx.commit().await.map_err(StoreError::postgres)?;
        rows::fail_disposition(state.as_deref(), &lease.batch_id)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        sqlx::query(concat!(
            "UPDATE tasks SET state = 'pending', attempts = GREATEST(attempts - 1, 0), \
             lease_owner = NULL, lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, \
             updated_at = ",
            db_now!(),
            " WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased'"
        ))
        .bind(&lease.batch_id.0)
        .bind(&lease.token.0)
        .execute(&self.pool)
        .await
        .map_err(StoreError::postgres)?;
        Ok(())
    }

    async fn rescue_expired(&self) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(StoreError::postgres)?;
        let now = db_now(&mut tx).await?;
        // SKIP LOCKED: a row locked by a completion in flight is that completion's to finish,
        // and two rescuers on different machines split the expired rows between them.
        let expired: Vec<ExpiredRow> = sqlx::query_as(
            "SELECT batch_id, pipeline, version, lease_owner, attempts, max_attempts, leased_at \
             FROM tasks WHERE state = 'leased' AND lease_expires_at < $1 \
             ORDER BY seq FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::postgres)?;
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
            .map_err(StoreError::postgres)?;
            insert_run(&mut tx, &NewRun::expired(row, &message, now)).await?;
        }
        tx.commit().await.map_err(StoreError::postgres)?;
        rows::log_rescued(&expired);
        Ok(expired.len() as u64)
    }

    async fn retry(&self, target: &RetryTarget) -> Result<u64> {
        // Re-pinned to the current version: a fixed spec is what the user retries with.
        macro_rules! reset {
            () => {
                concat!(
                    "UPDATE tasks SET state = 'pending', attempts = 0, \
                     version = (SELECT current_version FROM pipelines WHERE name = tasks.pipeline), \
                     run_after = ",
                    db_now!(),
                    ", last_error = NULL, error_kind = NULL, rows_in = NULL, rows_out = NULL, \
                     updated_at = ",
                    db_now!(),
                    " WHERE state = 'quarantined' "
                )
            };
        }
        let query = match target {
            RetryTarget::Batch(batch) => {
                sqlx::query(concat!(reset!(), "AND batch_id = $1")).bind(batch.0.as_str())
            }
            RetryTarget::All { pipeline } => {
                sqlx::query(concat!(reset!(), "AND ($1::text IS NULL OR pipeline = $1)"))
                    .bind(pipeline.as_deref())
            }
        };
        let retried = query
            .execute(&self.pool)
            .await
            .map_err(StoreError::postgres)?
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
        .map_err(StoreError::postgres)?;
        row.map(TaskRow::into_record).transpose()
    }

    async fn tasks(&self, pipeline: &str, state: Option<TaskState>) -> Result<Vec<TaskRecord>> {
        let rows: Vec<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE pipeline = $1 AND ($2::text IS NULL OR state = $2) ORDER BY seq"
        ))
        .bind(pipeline)
        .bind(state.map(TaskState::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::postgres)?;
        rows.into_iter().map(TaskRow::into_record).collect()
    }

    async fn worker_heartbeat(&self, beat: &WorkerBeat) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO workers (worker, host, pid, state, started_at, last_heartbeat) \
             SELECT $1, $2, $3, $4, c.now, c.now FROM (SELECT ",
            db_now!(),
            " AS now) c \
             ON CONFLICT (worker) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
             state = excluded.state, last_heartbeat = excluded.last_heartbeat"
        ))
        .bind(&beat.worker.0)
        .bind(&beat.host)
        .bind(beat.pid)
        .bind(&beat.state)
        .execute(&self.pool)
        .await
        .map_err(StoreError::postgres)?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        let rows: Vec<WorkerRow> = sqlx::query_as(
            "SELECT worker, host, pid, state, started_at, last_heartbeat FROM workers \
             ORDER BY worker",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::postgres)?;
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
        .map_err(StoreError::postgres)?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    async fn record_checks(&self, records: &[CheckRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(StoreError::postgres)?;
        let now = db_now(&mut tx).await?;
        for r in records {
            measurements::bind_check!(sqlx::query(measurements::INSERT_CHECK_SQL), r, now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::postgres)?;
        }
        tx.commit().await.map_err(StoreError::postgres)
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
            .map_err(StoreError::postgres)?;
        Ok(rows.into_iter().map(CheckRecord::from).collect())
    }

    async fn status(&self) -> Result<Vec<PipelineStatus>> {
        // One snapshot for all four queries, so the numbers add up with each other.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(StoreError::postgres)?;
        let pipelines: Vec<PipelineRow> = sqlx::query_as(rows::STATUS_PIPELINES_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::postgres)?;
        let states: Vec<StateCountRow> = sqlx::query_as(rows::STATUS_STATES_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::postgres)?;
        let files: Vec<FileCountRow> = sqlx::query_as(rows::STATUS_FILES_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::postgres)?;
        let runs: Vec<RunWindowRow> = sqlx::query_as(rows::STATUS_RUNS_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::postgres)?;
        let dropped: Vec<rows::DroppedCountRow> = sqlx::query_as(rows::STATUS_DROPPED_SQL)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::postgres)?;
        tx.commit().await.map_err(StoreError::postgres)?;
        rows::assemble_status(pipelines, states, files, runs, dropped)
    }

    async fn register_schema_version(
        &self,
        new: &NewSchemaVersion<'_>,
    ) -> Result<SchemaRegistration> {
        registry::check_new_version(new)?;
        let mut tx = self.pool.begin().await.map_err(StoreError::postgres)?;
        // Registrations of one dataset take turns on its row (created here if new: a concurrent
        // creator makes this wait, then do nothing), so the checks below and `latest + 1` see
        // every registration committed before.
        sqlx::query(concat!(
            "INSERT INTO datasets (name, compatibility, created_at, updated_at) VALUES ($1, NULL, ",
            db_now!(),
            ", ",
            db_now!(),
            ") ON CONFLICT (name) DO NOTHING"
        ))
        .bind(new.dataset)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::postgres)?;
        sqlx::query("SELECT name FROM datasets WHERE name = $1 FOR UPDATE")
            .bind(new.dataset)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::postgres)?;
        let existing: Option<SchemaVersionRow> =
            sqlx::query_as(registry::SCHEMA_VERSION_BY_FINGERPRINT_SQL)
                .bind(new.dataset)
                .bind(new.fingerprint)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::postgres)?;
        if let Some(row) = existing {
            return Ok(SchemaRegistration::Existing(row.into()));
        }
        let latest: Option<i64> = sqlx::query_scalar(registry::LATEST_VERSION_SQL)
            .bind(new.dataset)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::postgres)?;
        if latest != new.based_on {
            // Dropping the transaction rolls back the dataset row if this call created it.
            return Ok(SchemaRegistration::Stale { latest });
        }
        let now = db_now(&mut tx).await?;
        sqlx::query("UPDATE datasets SET updated_at = $2 WHERE name = $1")
            .bind(new.dataset)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::postgres)?;
        let row: SchemaVersionRow = sqlx::query_as(registry::INSERT_SCHEMA_VERSION_SQL)
            .bind(new.dataset)
            .bind(latest.unwrap_or(0) + 1)
            .bind(new.schema_json)
            .bind(new.fingerprint)
            .bind(new.last_field_id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::postgres)?;
        tx.commit().await.map_err(StoreError::postgres)?;
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
            .map_err(StoreError::postgres)?;
        Ok(row.map(SchemaVersionRecord::from))
    }

    async fn schema_versions(&self, dataset: &str) -> Result<Vec<SchemaVersionRecord>> {
        let rows: Vec<SchemaVersionRow> = sqlx::query_as(registry::SCHEMA_VERSIONS_SQL)
            .bind(dataset)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::postgres)?;
        Ok(rows.into_iter().map(SchemaVersionRecord::from).collect())
    }

    async fn dataset(&self, dataset: &str) -> Result<Option<DatasetRecord>> {
        let row: Option<DatasetRow> = sqlx::query_as(registry::DATASETS_SQL)
            .bind(Some(dataset))
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::postgres)?;
        Ok(row.map(DatasetRecord::from))
    }

    async fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        let rows: Vec<DatasetRow> = sqlx::query_as(registry::DATASETS_SQL)
            .bind(None::<&str>)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::postgres)?;
        Ok(rows.into_iter().map(DatasetRecord::from).collect())
    }

    async fn set_compatibility(&self, dataset: Option<&str>, mode: &str) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::postgres)?;
        let query = match dataset {
            Some(dataset) => sqlx::query(registry::SET_DATASET_COMPATIBILITY_SQL)
                .bind(dataset)
                .bind(mode)
                .bind(db_now(&mut conn).await?),
            None => sqlx::query(registry::SET_CONFIG_SQL)
                .bind(registry::DEFAULT_COMPATIBILITY_KEY)
                .bind(mode),
        };
        query
            .execute(&mut *conn)
            .await
            .map_err(StoreError::postgres)?;
        Ok(())
    }

    async fn compatibility(&self, dataset: &str) -> Result<String> {
        let mode: Option<String> = sqlx::query_scalar(registry::COMPATIBILITY_SQL)
            .bind(dataset)
            .bind(registry::DEFAULT_COMPATIBILITY_KEY)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::postgres)?;
        registry::compatibility_or_corrupt(mode)
    }
}

/// Where queued tasks go: their pipeline, file, pinned version and content generation.
struct Queue<'a> {
    pipeline: &'a str,
    path: &'a str,
    version: i64,
    max_attempts: i32,
    generation: i64,
}

/// Queues a file's tasks and records which content each holds; returns how many were queued.
async fn queue_tasks(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    q: &Queue<'_>,
    tasks: &[NewTask],
    slices: &[SliceColumns],
) -> Result<u64> {
    if tasks.is_empty() {
        return Ok(0);
    }
    // One statement for all slices of the file (arrays, not one round trip per slice);
    // ordered by position so the queue keeps the file's order. A batch id already queued
    // stays where it is: its rows must enter the queue once.
    let queued = sqlx::query(concat!(
                "INSERT INTO tasks (batch_id, pipeline, version, path, slice_index, byte_start, \
                 byte_end, row_start, row_count, state, attempts, max_attempts, run_after, \
                 created_at, updated_at) \
                 SELECT t.batch_id, $1, $2, t.path, t.slice_index, t.byte_start, t.byte_end, \
                 t.row_start, t.row_count, 'pending', 0, $3, c.now, c.now, c.now \
                 FROM UNNEST($4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], \
                 $9::bigint[], $10::bigint[]) WITH ORDINALITY \
                 AS t(batch_id, path, slice_index, byte_start, byte_end, row_start, row_count, ord), \
                 (SELECT ",
                db_now!(),
                " AS now) c \
                 ORDER BY t.ord \
                 ON CONFLICT (batch_id) DO NOTHING"
            ))
            .bind(q.pipeline)
            .bind(q.version)
            .bind(q.max_attempts)
            .bind(tasks.iter().map(|t| t.batch_id.0.as_str()).collect::<Vec<_>>())
            .bind(tasks.iter().map(|t| t.slice.path.as_str()).collect::<Vec<_>>())
            .bind(slices.iter().map(|s| s.index).collect::<Vec<_>>())
            .bind(slices.iter().map(|s| s.byte_start).collect::<Vec<_>>())
            .bind(slices.iter().map(|s| s.byte_end).collect::<Vec<_>>())
            .bind(slices.iter().map(|s| s.row_start).collect::<Vec<_>>())
            .bind(slices.iter().map(|s| s.row_count).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await
            .map_err(StoreError::postgres)?
            .rows_affected();
    sqlx::query(
        "INSERT INTO batch_inputs (batch_id, pipeline, path, generation) \
         SELECT b, $1, $2, $3 FROM UNNEST($4::text[]) AS t(b) ON CONFLICT (batch_id) DO NOTHING",
    )
    .bind(q.pipeline)
    .bind(q.path)
    .bind(q.generation)
    .bind(
        tasks
            .iter()
            .map(|t| t.batch_id.0.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await
    .map_err(StoreError::postgres)?;
    Ok(queued)
}
