//! The store both backends share: every [`Store`] method written once, generic over [`Backend`].
//!
//! SQLite and PostgreSQL run the same statements for nearly everything. The schemas are the same
//! (a test checks), both take PostgreSQL's `$1, $2` placeholders (sqlx binds SQLite's `$N` by
//! its number, so a statement may use one twice or out of order; see the test below), and both
//! speak `ON CONFLICT` upserts and `RETURNING`. What really differs is what [`Backend`] asks for:
//!
//! * the clock: `{now}` in a statement stands for the store clock in epoch milliseconds (the
//!   machine's clock for SQLite, which is one machine; the server's `clock_timestamp()` for
//!   PostgreSQL, so a worker machine's clock never judges a lease);
//! * locking: SQLite's writers take the file's write lock up front (`BEGIN IMMEDIATE`);
//!   PostgreSQL locks rows (`FOR UPDATE`; `{skip_locked}` in a statement), so writers of
//!   different rows never wait on each other;
//! * the two hot paths, queueing a file's batches and leasing, where each backend has its own
//!   fastest form (PostgreSQL: arrays in one statement; SQLite: short statements under the lock).
//!
//! So a new table costs its statements here once, plus a [`Backend`] method only where the
//! backends really differ, and the conformance suite (`tests/conformance.rs`) runs it on both.

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::{BatchId, ErrorKind, LeaseToken, TaskState};
use sqlx::query::Query;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Transaction, Type,
};

use crate::changes::{self, BatchFileRow, TakenFileRow};
use crate::deployments::{
    self, DeploymentRow, EventRow, FenceRow, LeaderRow, MeasurementRow, RouteRow, Routed, Router,
    TemplateRow,
};
use crate::measurements;
use crate::reads::{self, PagedTaskRow};
use crate::registry::{self, DatasetRow, SchemaVersionRow};
use crate::rows::{
    self, DroppedCountRow, ExpiredRow, FileCountRow, INSERT_RUN_SQL, NewRun, PipelineRow, RunRow,
    RunWindowRow, SliceColumns, StateCountRow, TaskRow, VersionRow, WorkerRow, run_columns,
    task_columns, version_columns,
};
use crate::webhooks::{self, AttemptRow, DeliveryRow, OutboxRow};
use crate::{
    AnalysisTemplateRecord, BatchFile, BatchPage, BatchQuery, BatchRun, CheckFailures, CheckRecord,
    CheckTotals, CommittedRows, CutPart, DatasetRecord, DeploymentEvent, DeploymentOutcome,
    DeploymentRecord, DeploymentRequest, DeploymentUpdate, FailDisposition, Fence, FileChange,
    FileUpdate, LeaderRecord, Lease, LeaseRequest, MeasurementRecord, NewDeployment, NewFile,
    NewGroup, NewMeasurement, NewSchemaVersion, NewTask, PipelineRecord, PipelineStatus,
    PipelineVersion, Requeue, Result, RetryTarget, Route, RouteMode, RunReport, RunTotals,
    SchemaRegistration, SchemaVersionRecord, Store, StoreError, StoreMetrics, TakenFile,
    TaskRecord, WorkerBeat, WorkerRecord,
};
use crate::{DeliveryResult, OutboxEvent, WebhookAttempt, WebhookDelivery};

/// A backend's connection (what a transaction or a pooled connection derefs to).
pub(crate) type Conn<B> = <<B as Backend>::DB as Database>::Connection;
type DbRow<B> = <<B as Backend>::DB as Database>::Row;
type Args<'q, B> = <<B as Backend>::DB as Database>::Arguments<'q>;

/// Every row of a query, read inside the open transaction `tx` (one snapshot for a read that
/// must add up), with the backend's error mapping.
macro_rules! fetch_all {
    ($tx:ident, $sql:expr) => {
        sqlx::query_as($sql)
            .fetch_all(&mut *$tx)
            .await
            .map_err(B::db_error)?
    };
}

/// What a backend supplies: its pool, and the things in which it really differs from the other.
/// Everything else is the one implementation of [`Store`] below.
pub(crate) trait Backend: Send + Sync + 'static {
    type DB: Database<QueryResult: RowsAffected>;

    /// `sqlite` or `postgres`: [`Store::backend`], and the backend errors name.
    const NAME: &'static str;
    /// The store clock in epoch milliseconds, as SQL: what `{now}` in a statement stands for.
    const NOW: &'static str;
    /// What `{skip_locked}` stands for, after a `SELECT` of rows the transaction will change:
    /// lock them and pass over rows other transactions hold, or nothing where the transaction
    /// already excludes every other writer.
    const SKIP_LOCKED: &'static str;
    /// What `{for_update}` stands for, after a `SELECT` of one row the transaction will change
    /// on what it read: lock it (waiting for another holder), or nothing where the transaction
    /// already excludes every other writer.
    const FOR_UPDATE: &'static str;
    /// What `{for_share}` stands for, after a `SELECT` of a row the transaction's writes rely
    /// on staying as read (a leadership): keep writers of it waiting until the end of the
    /// transaction, or nothing where the transaction already excludes them.
    const FOR_SHARE: &'static str;
    /// Begins a read-only transaction whose statements all see one snapshot.
    const BEGIN_SNAPSHOT: &'static str;

    fn pool(&self) -> &Pool<Self::DB>;

    /// The store clock, read as a value (the clock leases are judged by).
    fn clock(&self) -> impl Future<Output = Result<i64>> + Send;

    /// The store clock, read inside `conn`'s transaction.
    fn clock_in(conn: &mut Conn<Self>) -> impl Future<Output = Result<i64>> + Send;

    /// A transaction for a change that reads before it writes. SQLite's holds the write lock
    /// from its first statement, so nothing it reads can change under it; PostgreSQL's locks
    /// only what [`Backend::lock_row`] and `{skip_locked}` lock, so a change that depends on an
    /// earlier read locks first.
    fn write_tx(&self) -> impl Future<Output = Result<Transaction<'static, Self::DB>>> + Send;

    /// [`Backend::write_tx`] for queue transitions (lease, complete, fail), which may trade a
    /// little durability for speed: each is safe to lose (see `postgres::queue_commit`).
    fn queue_tx(&self) -> impl Future<Output = Result<Transaction<'static, Self::DB>>> + Send;

    /// Makes the transactions that change one row take turns, from here to the end of `conn`'s
    /// transaction: `select` finds the row by `key` (`$1`).
    fn lock_row(
        conn: &mut Conn<Self>,
        select: &'static str,
        key: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Queues a file's batches in the order given, skipping batch ids already queued, and
    /// records which content of the file each holds (`batch_inputs`, also once per batch id);
    /// returns how many were queued. `slices` are `tasks`' slices, validated.
    fn queue_tasks(
        conn: &mut Conn<Self>,
        queue: &Queue<'_>,
        tasks: &[NewTask],
        slices: &[SliceColumns],
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Called once `n` newly queued batches are committed.
    fn queued(&self, n: u64) -> impl Future<Output = ()> + Send;

    /// Leases up to `req.limit` (at least 1) pending tasks whose back-off has passed, oldest
    /// first, inside `conn`'s [`Backend::queue_tx`], passing over batches not routed yet of a
    /// pipeline whose deployment holds them ([`rows::not_held`]). Each batch not routed yet
    /// whose pipeline has no active deployment is routed by the same statement
    /// ([`rows::route_to_current`]); the others come back unrouted, for the router.
    fn lease_pending(
        conn: &mut Conn<Self>,
        req: &LeaseRequest,
    ) -> impl Future<Output = Result<Vec<TaskRow>>> + Send;

    /// A shared statement in this backend's words: `{now}`, `{skip_locked}`, `{for_update}`
    /// and `{for_share}` replaced.
    fn sql(template: &'static str) -> Cow<'static, str> {
        render(
            template,
            &[
                ("{now}", Self::NOW),
                ("{skip_locked}", Self::SKIP_LOCKED),
                ("{for_update}", Self::FOR_UPDATE),
                ("{for_share}", Self::FOR_SHARE),
            ],
        )
    }

    fn db_error(source: sqlx::Error) -> StoreError {
        StoreError::Database {
            backend: Self::NAME,
            source,
        }
    }
}

/// Where [`Backend::queue_tasks`] queues a file's batches: the pipeline and file, the version
/// they are pinned to, and which content of the file they hold.
pub(crate) struct Queue<'a> {
    pub pipeline: &'a str,
    pub path: &'a str,
    pub version: i64,
    pub max_attempts: i32,
    /// How often the file was replaced before this content (0: its first content).
    pub generation: i64,
}

impl<'a> Queue<'a> {
    /// Where a file's first content's batches are queued.
    pub fn first_content(file: &'a NewFile, version: i64, max_attempts: i32) -> Queue<'a> {
        Queue {
            pipeline: &file.pipeline,
            path: &file.path,
            version,
            max_attempts,
            generation: 0,
        }
    }
}

/// How many rows a statement changed (each driver has its own result type).
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

/// A type both backends bind and read (`i64`, `String`, ...).
pub(crate) trait Value<DB: Database>:
    for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>
{
}

impl<DB: Database, T> Value<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>
{
}

/// Binds a file's take (`$1..$7`: pipeline, path, size, modified_ms, taken_bytes,
/// taken_rows, checksum) to a statement that takes it in.
macro_rules! bind_take {
    ($query:expr, $file:expr) => {
        $query
            .bind(&$file.pipeline)
            .bind(&$file.path)
            .bind($file.size)
            .bind($file.modified_ms)
            .bind($file.taken_bytes)
            .bind($file.taken_rows)
            .bind($file.checksum.as_deref())
    };
}

/// `template` with each `(token, words)` token replaced.
fn render(template: &'static str, words: &[(&str, &str)]) -> Cow<'static, str> {
    if !template.contains('{') {
        return Cow::Borrowed(template);
    }
    Cow::Owned(words.iter().fold(template.to_string(), |sql, (token, w)| {
        sql.replace(token, w)
    }))
}

/// The bounds say what the shared statements need of a backend's driver: run on its
/// connections, bind and read these types. The helpers below restate the ones they need (Rust
/// does not carry a trait's `where` clauses to the places that use it); both drivers meet them.
#[async_trait]
impl<B> Store for B
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    for<'r> &'r str: ColumnIndex<DbRow<B>>,
    usize: ColumnIndex<DbRow<B>>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    for<'q> Option<&'q str>: Encode<'q, B::DB>,
    for<'q> Option<i64>: Encode<'q, B::DB>,
    String: Value<B::DB>,
    i64: Value<B::DB>,
    i32: Value<B::DB>,
    bool: Value<B::DB>,
    f64: Value<B::DB>,
    for<'q> Option<f64>: Encode<'q, B::DB>,
{
    fn backend(&self) -> &'static str {
        B::NAME
    }

    async fn now(&self) -> Result<i64> {
        self.clock().await
    }

    async fn register_pipeline_version(
        &self,
        pipeline: &str,
        spec_hash: &str,
        spec: &str,
        base_dir: &str,
        make_current: bool,
    ) -> Result<PipelineVersion> {
        // Re-registering an unchanged spec is the common case: answer it without a lock.
        {
            let mut conn = self.pool().acquire().await.map_err(B::db_error)?;
            if let Some(v) = version_by_hash::<B>(&mut conn, pipeline, spec_hash).await? {
                if make_current {
                    set_current::<B>(&mut conn, pipeline, v.version).await?;
                }
                return Ok(v);
            }
        }
        let mut tx = self.write_tx().await?;
        // A new pipeline's first version is its current one. If another process is inserting the
        // same pipeline, this waits for it and then does nothing.
        sqlx::query(&B::sql(
            "INSERT INTO pipelines (name, current_version, created_at) VALUES ($1, 1, {now}) \
             ON CONFLICT (name) DO NOTHING",
        ))
        .bind(pipeline)
        .execute(&mut *tx)
        .await
        .map_err(B::db_error)?;
        // Registrations of one pipeline take turns, so `max + 1` cannot be taken twice and a
        // hash registered since the check above is seen by the one that comes second.
        B::lock_row(
            &mut tx,
            "SELECT name FROM pipelines WHERE name = $1",
            pipeline,
        )
        .await?;
        let version = match version_by_hash::<B>(&mut tx, pipeline, spec_hash).await? {
            Some(existing) => existing,
            None => {
                let row: VersionRow = sqlx::query_as(&B::sql(concat!(
                    "INSERT INTO pipeline_versions (",
                    version_columns!(),
                    ") SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, {now} \
                     FROM pipeline_versions WHERE pipeline = $1 RETURNING ",
                    version_columns!()
                )))
                .bind(pipeline)
                .bind(spec_hash)
                .bind(spec)
                .bind(base_dir)
                .fetch_one(&mut *tx)
                .await
                .map_err(B::db_error)?;
                PipelineVersion::from(row)
            }
        };
        if make_current {
            set_current::<B>(&mut tx, pipeline, version.version).await?;
        }
        tx.commit().await.map_err(B::db_error)?;
        Ok(version)
    }

    async fn set_current_version(&self, pipeline: &str, version: i64) -> Result<()> {
        let mut conn = self.pool().acquire().await.map_err(B::db_error)?;
        set_current::<B>(&mut conn, pipeline, version).await
    }

    async fn pipeline(&self, pipeline: &str) -> Result<Option<PipelineRecord>> {
        let row: Option<PipelineRow> = sqlx::query_as(
            "SELECT name, current_version, created_at FROM pipelines WHERE name = $1",
        )
        .bind(pipeline)
        .fetch_optional(self.pool())
        .await
        .map_err(B::db_error)?;
        Ok(row.map(PipelineRecord::from))
    }

    async fn pipelines(&self) -> Result<Vec<PipelineRecord>> {
        let rows: Vec<PipelineRow> = sqlx::query_as(rows::STATUS_PIPELINES_SQL)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
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
        .fetch_optional(self.pool())
        .await
        .map_err(B::db_error)?;
        Ok(row.map(PipelineVersion::from))
    }

    async fn known_files(&self, pipeline: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT path FROM files WHERE pipeline = $1 ORDER BY path")
            .bind(pipeline)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)
    }

    async fn register_file(
        &self,
        file: &NewFile,
        version: i64,
        max_attempts: i32,
        tasks: &[NewTask],
    ) -> Result<bool> {
        let sql = B::sql(
            "INSERT INTO files (pipeline, path, size, modified_ms, taken_bytes, taken_rows, \
             checksum, registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, {now}) \
             ON CONFLICT (pipeline, path) DO NOTHING",
        );
        // Two processes discovering the same file: the second waits for the first here and then
        // finds it taken in.
        let take = bind_take!(sqlx::query(&sql), file);
        let queue = Queue::first_content(file, version, max_attempts);
        take_in(self, take, &queue, tasks).await
    }

    async fn register_group(
        &self,
        files: &[NewFile],
        version: i64,
        max_attempts: i32,
        batch: &NewGroup,
    ) -> Result<bool> {
        let Some((first, rest)) = batch.slices.split_first() else {
            return Err(StoreError::Invalid(format!(
                "batch {} groups no file",
                batch.batch_id
            )));
        };
        let Some(file) = files.first() else {
            return Err(StoreError::Invalid(format!(
                "batch {} takes no file in",
                batch.batch_id
            )));
        };
        // Validate before taking anything in, so a bad slice leaves nothing behind.
        let columns = SliceColumns::of(&batch.batch_id, first)?;
        for s in rest {
            SliceColumns::of(&batch.batch_id, s)?;
        }
        let grouped = serde_json::to_string(rest).map_err(|e| {
            StoreError::Invalid(format!("batch {}: encoding its files: {e}", batch.batch_id))
        })?;
        let take_sql = B::sql(
            "INSERT INTO files (pipeline, path, size, modified_ms, taken_bytes, taken_rows, \
             checksum, registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, {now}) \
             ON CONFLICT (pipeline, path) DO NOTHING",
        );
        let mut tx = self.write_tx().await?;
        ensure_version::<B>(&mut tx, &file.pipeline, version, &file.path).await?;
        // In path order, as every discoverer groups them: two taking the same files in wait
        // for each other in one order, and the second finds the first file taken.
        for f in files {
            let taken = bind_take!(sqlx::query(&take_sql), f)
                .execute(&mut *tx)
                .await
                .map_err(B::db_error)?
                .rows_affected();
            if taken == 0 {
                // Dropping the transaction rolls back the files taken before this one.
                return Ok(false);
            }
        }
        let now = B::clock_in(&mut tx).await?;
        let queued = sqlx::query(
            "INSERT INTO tasks (batch_id, pipeline, version, path, slice_index, byte_start, \
             byte_end, row_start, row_count, state, attempts, max_attempts, run_after, \
             created_at, updated_at, grouped) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $11, $11, $11, $12) \
             ON CONFLICT (batch_id) DO NOTHING",
        )
        .bind(batch.batch_id.0.as_str())
        .bind(file.pipeline.as_str())
        .bind(version)
        .bind(first.path.as_str())
        .bind(columns.index)
        .bind(columns.byte_start)
        .bind(columns.byte_end)
        .bind(columns.row_start)
        .bind(columns.row_count)
        .bind(max_attempts)
        .bind(now)
        .bind(grouped.as_str())
        .execute(&mut *tx)
        .await
        .map_err(B::db_error)?
        .rows_affected();
        tx.commit().await.map_err(B::db_error)?;
        self.queued(queued).await;
        Ok(true)
    }

    async fn take_in_part(
        &self,
        part: &CutPart,
        version: i64,
        max_attempts: i32,
        tasks: &[NewTask],
    ) -> Result<bool> {
        let file = &part.file;
        let cutting = i64::from(!part.last);
        let begin_sql = B::sql(changes::BEGIN_CUT_SQL);
        let take = match part.based_on {
            None => bind_take!(sqlx::query(&begin_sql), file).bind(cutting),
            Some(from) => sqlx::query(changes::EXTEND_CUT_SQL)
                .bind(&file.pipeline)
                .bind(&file.path)
                .bind(file.taken_bytes)
                .bind(file.taken_rows)
                .bind(file.checksum.as_deref())
                .bind(cutting)
                .bind(from),
        };
        let queue = Queue::first_content(file, version, max_attempts);
        take_in(self, take, &queue, tasks).await
    }

    async fn taken_files(&self, pipeline: &str) -> Result<Vec<TakenFile>> {
        let rows: Vec<TakenFileRow> = sqlx::query_as(changes::TAKEN_FILES_SQL)
            .bind(pipeline)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(TakenFile::from).collect())
    }

    async fn changed_files(&self, pipeline: &str) -> Result<Vec<TakenFile>> {
        let rows: Vec<TakenFileRow> = sqlx::query_as(changes::CHANGED_FILES_SQL)
            .bind(pipeline)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(TakenFile::from).collect())
    }

    async fn take_in_change(
        &self,
        update: &FileUpdate,
        version: i64,
        max_attempts: i32,
        tasks: &[NewTask],
    ) -> Result<bool> {
        let file = &update.file;
        let (bytes, checksum, generation) = &update.based_on;
        // The take must still be the one this change builds on: a second discoverer waits for
        // the first here (SQLite's write lock, PostgreSQL's lock on the row it updates), then
        // finds the take changed and updates nothing.
        let take = sqlx::query(changes::TAKE_IN_CHANGE_SQL)
            .bind(&file.pipeline)
            .bind(&file.path)
            .bind(file.size)
            .bind(file.modified_ms)
            .bind(file.taken_bytes)
            .bind(file.taken_rows)
            .bind(file.checksum.as_deref())
            .bind(update.generation)
            .bind(*bytes)
            .bind(checksum.as_deref())
            .bind(*generation);
        let queue = Queue {
            pipeline: &file.pipeline,
            path: &file.path,
            version,
            max_attempts,
            generation: update.generation,
        };
        take_in(self, take, &queue, tasks).await
    }

    async fn notice_file_change(
        &self,
        pipeline: &str,
        path: &str,
        change: Option<&FileChange>,
    ) -> Result<bool> {
        let notice_sql;
        let query = match change {
            Some(c) => {
                notice_sql = B::sql(changes::NOTICE_CHANGE_SQL);
                sqlx::query(&notice_sql)
                    .bind(pipeline)
                    .bind(path)
                    .bind(c.size)
                    .bind(c.modified_ms)
                    .bind(c.detail.as_str())
                    .bind(c.action.as_str())
            }
            None => sqlx::query(changes::CLEAR_CHANGE_SQL)
                .bind(pipeline)
                .bind(path),
        };
        let changed = query
            .execute(self.pool())
            .await
            .map_err(B::db_error)?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn record_batch_files(&self, files: &[BatchFile]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        // One instant for all files of the commit.
        let now = B::clock_in(&mut tx).await?;
        for f in files {
            sqlx::query(changes::INSERT_BATCH_FILE_SQL)
                .bind(f.pipeline.as_str())
                .bind(f.batch_id.0.as_str())
                .bind(f.table_version)
                .bind(f.data_file.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(B::db_error)?;
        }
        tx.commit().await.map_err(B::db_error)
    }

    async fn batch_files(&self, batches: &[BatchId]) -> Result<Vec<BatchFile>> {
        let mut out = Vec::new();
        for b in batches {
            let rows: Vec<BatchFileRow> = sqlx::query_as(changes::BATCH_FILES_SQL)
                .bind(b.0.as_str())
                .fetch_all(self.pool())
                .await
                .map_err(B::db_error)?;
            out.extend(rows.into_iter().map(BatchFile::from));
        }
        Ok(out)
    }

    async fn superseded_files(&self, batch: &BatchId) -> Result<Vec<String>> {
        sqlx::query_scalar(changes::SUPERSEDED_FILES_SQL)
            .bind(batch.0.as_str())
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)
    }

    async fn lease(&self, req: &LeaseRequest) -> Result<Vec<Lease>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.queue_tx().await?;
        let mut leased = B::lease_pending(&mut tx, req).await?;
        // Without an active deployment the lease statement routed every batch itself.
        if !leased.iter().all(TaskRow::is_routed) {
            leased = route::<B>(&mut tx, req, leased).await?;
        }
        tx.commit().await.map_err(B::db_error)?;
        leased.into_iter().map(TaskRow::into_lease).collect()
    }

    async fn heartbeat(
        &self,
        batch: &BatchId,
        token: &LeaseToken,
        extend: Duration,
    ) -> Result<bool> {
        let held = sqlx::query(&B::sql(
            "UPDATE tasks SET lease_expires_at = {now} + $3, updated_at = {now} \
             WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased'",
        ))
        .bind(&batch.0)
        .bind(&token.0)
        .bind(rows::millis(extend))
        .execute(self.pool())
        .await
        .map_err(B::db_error)?
        .rows_affected();
        Ok(held == 1)
    }

    async fn complete(&self, lease: &Lease, report: &RunReport) -> Result<bool> {
        let mut tx = self.queue_tx().await?;
        let held = sqlx::query(&B::sql(
            "UPDATE tasks SET state = 'done', rows_in = $3, rows_out = $4, lease_owner = NULL, \
             lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, last_error = NULL, \
             error_kind = NULL, updated_at = {now} \
             WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased'",
        ))
        .bind(&lease.batch_id.0)
        .bind(&lease.token.0)
        .bind(report.rows_in)
        .bind(report.rows_out)
        .execute(&mut *tx)
        .await
        .map_err(B::db_error)?
        .rows_affected();
        // The run happened whether or not the lease was still ours: keep its measurements.
        insert_run::<B>(&mut tx, &NewRun::reported(lease, report)).await?;
        tx.commit().await.map_err(B::db_error)?;
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
        let mut tx = self.queue_tx().await?;
        let state: Option<String> = sqlx::query_scalar(&B::sql(
            "UPDATE tasks SET \
             state = CASE WHEN $3 OR attempts >= max_attempts THEN 'quarantined' ELSE 'pending' END, \
             run_after = CASE WHEN $3 OR attempts >= max_attempts THEN run_after \
             ELSE {now} + $4 END, \
             lease_owner = NULL, lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, \
             last_error = $5, error_kind = $6, updated_at = {now} \
             WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased' \
             RETURNING state",
        ))
        .bind(&lease.batch_id.0)
        .bind(&lease.token.0)
        .bind(quarantine)
        .bind(rows::millis(backoff))
        .bind(error)
        .bind(rows::error_kind_str(kind))
        .fetch_optional(&mut *tx)
        .await
        .map_err(B::db_error)?;
        insert_run::<B>(&mut tx, &NewRun::reported(lease, report)).await?;
        tx.commit().await.map_err(B::db_error)?;
        rows::fail_disposition(state.as_deref(), &lease.batch_id)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        sqlx::query(&B::sql(
            "UPDATE tasks SET state = 'pending', \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
             lease_owner = NULL, lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, \
             updated_at = {now} \
             WHERE batch_id = $1 AND lease_token = $2 AND state = 'leased'",
        ))
        .bind(&lease.batch_id.0)
        .bind(&lease.token.0)
        .execute(self.pool())
        .await
        .map_err(B::db_error)?;
        Ok(())
    }

    async fn rescue_expired(&self) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let now = B::clock_in(&mut tx).await?;
        // SKIP LOCKED: a row locked by a completion in flight is that completion's to finish,
        // and two rescuers on different machines split the expired rows between them.
        let expired: Vec<ExpiredRow> = sqlx::query_as(&B::sql(
            "SELECT batch_id, pipeline, version, lease_owner, attempts, max_attempts, leased_at \
             FROM tasks WHERE state = 'leased' AND lease_expires_at < $1 \
             ORDER BY seq{skip_locked}",
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(B::db_error)?;
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
            .map_err(B::db_error)?;
            insert_run::<B>(&mut tx, &NewRun::expired(row, &message, now)).await?;
        }
        tx.commit().await.map_err(B::db_error)?;
        rows::log_rescued(&expired);
        Ok(expired.len() as u64)
    }

    async fn retry(&self, target: &RetryTarget) -> Result<u64> {
        // Routed again at the next lease, like a batch just queued (whose version is the
        // current one until then): a fixed spec is what the user retries with.
        macro_rules! reset {
            () => {
                "UPDATE tasks SET state = 'pending', attempts = 0, \
                 version = (SELECT current_version FROM pipelines WHERE name = tasks.pipeline), \
                 routed_at = NULL, split_version = NULL, split_percent = NULL, \
                 run_after = {now}, last_error = NULL, error_kind = NULL, rows_in = NULL, \
                 rows_out = NULL, updated_at = {now} WHERE state = 'quarantined' "
            };
        }
        let batch_sql;
        let all_sql;
        let query = match target {
            RetryTarget::Batch(batch) => {
                batch_sql = B::sql(concat!(reset!(), "AND batch_id = $1"));
                sqlx::query(&batch_sql).bind(batch.0.as_str())
            }
            RetryTarget::All { pipeline } => {
                all_sql = B::sql(concat!(reset!(), "AND ($1 IS NULL OR pipeline = $1)"));
                sqlx::query(&all_sql).bind(pipeline.as_deref())
            }
        };
        let retried = query
            .execute(self.pool())
            .await
            .map_err(B::db_error)?
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
        .fetch_optional(self.pool())
        .await
        .map_err(B::db_error)?;
        row.map(TaskRow::into_record).transpose()
    }

    async fn tasks(&self, pipeline: &str, state: Option<TaskState>) -> Result<Vec<TaskRecord>> {
        // One statement per case, so one state is found by `tasks_by_pipeline_state` (status
        // lists the quarantined ones: a read of those, not of the pipeline's history).
        let query = match state {
            Some(state) => sqlx::query_as(concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE pipeline = $1 AND state = $2 ORDER BY seq"
            ))
            .bind(pipeline)
            .bind(state.as_str()),
            None => sqlx::query_as(concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE pipeline = $1 ORDER BY seq"
            ))
            .bind(pipeline),
        };
        let rows: Vec<TaskRow> = query.fetch_all(self.pool()).await.map_err(B::db_error)?;
        rows.into_iter().map(TaskRow::into_record).collect()
    }

    async fn version_tasks(&self, pipeline: &str, version: i64) -> Result<Vec<TaskRecord>> {
        let rows: Vec<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE pipeline = $1 AND (version = $2 OR split_version = $2) ORDER BY seq"
        ))
        .bind(pipeline)
        .bind(version)
        .fetch_all(self.pool())
        .await
        .map_err(B::db_error)?;
        rows.into_iter().map(TaskRow::into_record).collect()
    }

    async fn worker_heartbeat(&self, beat: &WorkerBeat) -> Result<()> {
        // `now` read once, so a new worker's start and heartbeat are the same instant. (`WHERE
        // true`: SQLite needs it to tell the upsert's ON from a join's.)
        sqlx::query(&B::sql(
            "INSERT INTO workers (worker, host, pid, state, started_at, last_heartbeat) \
             SELECT $1, $2, $3, $4, c.now, c.now FROM (SELECT {now} AS now) c WHERE true \
             ON CONFLICT (worker) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
             state = excluded.state, last_heartbeat = excluded.last_heartbeat",
        ))
        .bind(&beat.worker.0)
        .bind(&beat.host)
        .bind(beat.pid)
        .bind(&beat.state)
        .execute(self.pool())
        .await
        .map_err(B::db_error)?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        let rows: Vec<WorkerRow> = sqlx::query_as(
            "SELECT worker, host, pid, state, started_at, last_heartbeat FROM workers \
             ORDER BY worker",
        )
        .fetch_all(self.pool())
        .await
        .map_err(B::db_error)?;
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
        .fetch_all(self.pool())
        .await
        .map_err(B::db_error)?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    async fn record_checks(&self, records: &[CheckRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await.map_err(B::db_error)?;
        let now = B::clock_in(&mut tx).await?;
        for r in records {
            measurements::bind_check!(sqlx::query(measurements::INSERT_CHECK_SQL), r, now)
                .execute(&mut *tx)
                .await
                .map_err(B::db_error)?;
        }
        tx.commit().await.map_err(B::db_error)
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
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(CheckRecord::from).collect())
    }

    async fn status(&self) -> Result<Vec<PipelineStatus>> {
        // One snapshot for all five queries, so the numbers add up with each other.
        let mut tx = self
            .pool()
            .begin_with(B::BEGIN_SNAPSHOT)
            .await
            .map_err(B::db_error)?;
        let pipelines: Vec<PipelineRow> = fetch_all!(tx, rows::STATUS_PIPELINES_SQL);
        let states: Vec<StateCountRow> = fetch_all!(tx, rows::STATUS_STATES_SQL);
        let files: Vec<FileCountRow> = fetch_all!(tx, rows::STATUS_FILES_SQL);
        let runs: Vec<RunWindowRow> = fetch_all!(tx, rows::STATUS_RUNS_SQL);
        let dropped: Vec<DroppedCountRow> = fetch_all!(tx, rows::STATUS_DROPPED_SQL);
        tx.commit().await.map_err(B::db_error)?;
        rows::assemble_status(pipelines, states, files, runs, dropped)
    }

    async fn pipeline_versions(&self, pipeline: &str) -> Result<Vec<PipelineVersion>> {
        let rows: Vec<VersionRow> = sqlx::query_as(concat!(
            "SELECT ",
            version_columns!(),
            " FROM pipeline_versions WHERE pipeline = $1 ORDER BY version"
        ))
        .bind(pipeline)
        .fetch_all(self.pool())
        .await
        .map_err(B::db_error)?;
        Ok(rows.into_iter().map(PipelineVersion::from).collect())
    }

    async fn batches(&self, query: &BatchQuery) -> Result<BatchPage> {
        let limit = reads::limit(query.limit);
        // One more than asked for says whether there is a next page.
        let rows: Vec<PagedTaskRow> = sqlx::query_as(reads::BATCHES_SQL)
            .bind(query.pipeline.as_str())
            .bind(query.state.map(TaskState::as_str))
            .bind(query.version)
            .bind(query.after.unwrap_or(0))
            .bind(limit.saturating_add(1))
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        let more = rows.len() as i64 > limit;
        let mut batches = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in rows
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
        {
            last = Some(row.seq);
            batches.push(row.task.into_record()?);
        }
        Ok(BatchPage {
            batches,
            next: if more { last } else { None },
        })
    }

    async fn batch_runs_of(&self, batch: &BatchId) -> Result<Vec<BatchRun>> {
        let rows: Vec<RunRow> = sqlx::query_as(reads::BATCH_RUNS_OF_SQL)
            .bind(batch.0.as_str())
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    async fn check_results_of(&self, batch: &BatchId) -> Result<Vec<CheckRecord>> {
        let rows: Vec<measurements::CheckRow> = sqlx::query_as(reads::CHECK_RESULTS_OF_SQL)
            .bind(batch.0.as_str())
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(CheckRecord::from).collect())
    }

    async fn run_totals(&self, pipeline: &str, since: i64, until: i64) -> Result<Vec<RunTotals>> {
        let rows: Vec<reads::RunTotalsRow> = sqlx::query_as(reads::RUN_TOTALS_SQL)
            .bind(pipeline)
            .bind(since)
            .bind(until)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        rows.into_iter()
            .map(reads::RunTotalsRow::into_totals)
            .collect()
    }

    async fn check_totals(
        &self,
        pipeline: &str,
        since: i64,
        until: i64,
    ) -> Result<Vec<CheckTotals>> {
        let rows: Vec<reads::CheckTotalsRow> = sqlx::query_as(reads::CHECK_TOTALS_SQL)
            .bind(pipeline)
            .bind(since)
            .bind(until)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(CheckTotals::from).collect())
    }

    async fn metrics(&self, lost_after: Duration) -> Result<StoreMetrics> {
        let now = self.clock().await?;
        // One snapshot, so the series of one scrape agree with each other.
        let mut tx = self
            .pool()
            .begin_with(B::BEGIN_SNAPSHOT)
            .await
            .map_err(B::db_error)?;
        let current: Vec<(String, i64)> = fetch_all!(tx, reads::METRICS_CURRENT_SQL);
        let tasks: Vec<reads::TaskCountRow> = fetch_all!(tx, reads::METRICS_TASKS_SQL);
        let committed: Vec<reads::CommittedRowsRow> = fetch_all!(tx, reads::METRICS_ROWS_SQL);
        let durations: Vec<reads::DurationBucketRow> = fetch_all!(tx, reads::METRICS_DURATIONS_SQL);
        let workers_alive: i64 = sqlx::query_scalar(reads::METRICS_WORKERS_SQL)
            .bind(now.saturating_sub(rows::millis(lost_after)))
            .fetch_one(&mut *tx)
            .await
            .map_err(B::db_error)?;
        let checks: Vec<reads::CheckFailuresRow> = fetch_all!(tx, reads::METRICS_CHECKS_SQL);
        tx.commit().await.map_err(B::db_error)?;
        Ok(StoreMetrics {
            now,
            current,
            tasks: tasks
                .into_iter()
                .map(reads::TaskCountRow::into_count)
                .collect::<Result<_>>()?,
            rows: committed.into_iter().map(CommittedRows::from).collect(),
            durations: reads::histograms(durations),
            workers_alive,
            check_failures: checks.into_iter().map(CheckFailures::from).collect(),
        })
    }

    async fn register_schema_version(
        &self,
        new: &NewSchemaVersion<'_>,
    ) -> Result<SchemaRegistration> {
        registry::check_new_version(new)?;
        let mut tx = self.write_tx().await?;
        // Registrations of one dataset take turns on its row (created here if new: a concurrent
        // creator makes this wait, then do nothing), so the checks below and `latest + 1` see
        // every registration committed before.
        sqlx::query(&B::sql(
            "INSERT INTO datasets (name, compatibility, created_at, updated_at) \
             VALUES ($1, NULL, {now}, {now}) ON CONFLICT (name) DO NOTHING",
        ))
        .bind(new.dataset)
        .execute(&mut *tx)
        .await
        .map_err(B::db_error)?;
        B::lock_row(
            &mut tx,
            "SELECT name FROM datasets WHERE name = $1",
            new.dataset,
        )
        .await?;
        let existing: Option<SchemaVersionRow> =
            sqlx::query_as(registry::SCHEMA_VERSION_BY_FINGERPRINT_SQL)
                .bind(new.dataset)
                .bind(new.fingerprint)
                .fetch_optional(&mut *tx)
                .await
                .map_err(B::db_error)?;
        if let Some(row) = existing {
            // Dropping the transaction rolls back the dataset row if this call created it.
            return Ok(SchemaRegistration::Existing(row.into()));
        }
        let latest: Option<i64> = sqlx::query_scalar(registry::LATEST_VERSION_SQL)
            .bind(new.dataset)
            .fetch_one(&mut *tx)
            .await
            .map_err(B::db_error)?;
        if latest != new.based_on {
            return Ok(SchemaRegistration::Stale { latest });
        }
        let now = B::clock_in(&mut tx).await?;
        sqlx::query("UPDATE datasets SET updated_at = $2 WHERE name = $1")
            .bind(new.dataset)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(B::db_error)?;
        let row: SchemaVersionRow = sqlx::query_as(registry::INSERT_SCHEMA_VERSION_SQL)
            .bind(new.dataset)
            .bind(latest.unwrap_or(0) + 1)
            .bind(new.schema_json)
            .bind(new.fingerprint)
            .bind(new.last_field_id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(B::db_error)?;
        tx.commit().await.map_err(B::db_error)?;
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
            .fetch_optional(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(row.map(SchemaVersionRecord::from))
    }

    async fn schema_versions(&self, dataset: &str) -> Result<Vec<SchemaVersionRecord>> {
        let rows: Vec<SchemaVersionRow> = sqlx::query_as(registry::SCHEMA_VERSIONS_SQL)
            .bind(dataset)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(SchemaVersionRecord::from).collect())
    }

    async fn dataset(&self, dataset: &str) -> Result<Option<DatasetRecord>> {
        let row: Option<DatasetRow> = sqlx::query_as(registry::DATASETS_SQL)
            .bind(Some(dataset))
            .fetch_optional(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(row.map(DatasetRecord::from))
    }

    async fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        let rows: Vec<DatasetRow> = sqlx::query_as(registry::DATASETS_SQL)
            .bind(None::<&str>)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(DatasetRecord::from).collect())
    }

    async fn set_compatibility(&self, dataset: Option<&str>, mode: &str) -> Result<()> {
        let mut conn = self.pool().acquire().await.map_err(B::db_error)?;
        let query = match dataset {
            Some(dataset) => sqlx::query(registry::SET_DATASET_COMPATIBILITY_SQL)
                .bind(dataset)
                .bind(mode)
                .bind(B::clock_in(&mut conn).await?),
            None => sqlx::query(registry::SET_CONFIG_SQL)
                .bind(registry::DEFAULT_COMPATIBILITY_KEY)
                .bind(mode),
        };
        query.execute(&mut *conn).await.map_err(B::db_error)?;
        Ok(())
    }

    async fn compatibility(&self, dataset: &str) -> Result<String> {
        let mode: Option<String> = sqlx::query_scalar(registry::COMPATIBILITY_SQL)
            .bind(dataset)
            .bind(registry::DEFAULT_COMPATIBILITY_KEY)
            .fetch_one(self.pool())
            .await
            .map_err(B::db_error)?;
        registry::compatibility_or_corrupt(mode)
    }

    async fn lead(&self, duty: &str, holder: &str, ttl: Duration) -> Result<Option<Fence>> {
        let row: Option<FenceRow> = sqlx::query_as(&B::sql(deployments::LEAD_SQL))
            .bind(duty)
            .bind(holder)
            .bind(rows::millis(ttl))
            .fetch_optional(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(row.map(Fence::from))
    }

    async fn resign(&self, fence: &Fence) -> Result<()> {
        sqlx::query(&B::sql(deployments::RESIGN_SQL))
            .bind(fence.duty.as_str())
            .bind(fence.holder.as_str())
            .bind(fence.epoch)
            .execute(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(())
    }

    async fn leader(&self, duty: &str) -> Result<Option<LeaderRecord>> {
        let row: Option<LeaderRow> = sqlx::query_as(deployments::LEADER_SQL)
            .bind(duty)
            .fetch_optional(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(row.map(LeaderRecord::from))
    }

    async fn start_deployment(
        &self,
        new: &NewDeployment,
    ) -> Result<std::result::Result<DeploymentRecord, DeploymentRecord>> {
        let pipeline = new.pipeline.as_str();
        deployments::check_route(&new.route, &format!("deployment of {pipeline}"))?;
        let mut tx = self.write_tx().await?;
        for version in [new.stable_version, new.candidate_version] {
            if !version_exists::<B>(&mut tx, pipeline, version).await? {
                return Err(rows::no_such_version(pipeline, version));
            }
        }
        let insert = B::sql(deployments::INSERT_DEPLOYMENT_SQL);
        // The unique index on active deployments decides: an insert that conflicts (after
        // waiting for a concurrent start to commit) finds the active one. Should that one end
        // before it is read, the insert is tried again.
        for _ in 0..3 {
            let inserted: Option<DeploymentRow> = sqlx::query_as(&insert)
                .bind(pipeline)
                .bind(new.stable_version)
                .bind(new.candidate_version)
                .bind(new.strategy.as_str())
                .bind(new.policy.as_str())
                .bind(new.state.as_str())
                .bind(new.route.mode.as_str())
                .bind(i64::from(new.route.weight))
                .bind(new.started_by.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(B::db_error)?;
            if let Some(row) = inserted {
                let started = row.into_record()?;
                let event = DeploymentEvent {
                    deployment_id: started.id,
                    at: started.created_at,
                    from_state: None,
                    to_state: started.state.clone(),
                    step: started.step,
                    route: started.route,
                    message: deployments::started_message(&started),
                    epoch: 0,
                };
                insert_event::<B>(&mut tx, &event).await?;
                tx.commit().await.map_err(B::db_error)?;
                return Ok(Ok(started));
            }
            let active: Option<DeploymentRow> = sqlx::query_as(deployments::ACTIVE_DEPLOYMENT_SQL)
                .bind(pipeline)
                .fetch_optional(&mut *tx)
                .await
                .map_err(B::db_error)?;
            if let Some(active) = active {
                return Ok(Err(active.into_record()?));
            }
        }
        Err(StoreError::Invalid(format!(
            "starting a deployment of {pipeline}: deployments kept starting and ending \
             concurrently; try again"
        )))
    }

    async fn deployment(&self, id: i64) -> Result<Option<DeploymentRecord>> {
        let row: Option<DeploymentRow> = sqlx::query_as(deployments::DEPLOYMENT_SQL)
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(B::db_error)?;
        row.map(DeploymentRow::into_record).transpose()
    }

    async fn active_deployment(&self, pipeline: &str) -> Result<Option<DeploymentRecord>> {
        let row: Option<DeploymentRow> = sqlx::query_as(deployments::ACTIVE_DEPLOYMENT_SQL)
            .bind(pipeline)
            .fetch_optional(self.pool())
            .await
            .map_err(B::db_error)?;
        row.map(DeploymentRow::into_record).transpose()
    }

    async fn active_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        let rows: Vec<DeploymentRow> = sqlx::query_as(deployments::ACTIVE_DEPLOYMENTS_SQL)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        rows.into_iter().map(DeploymentRow::into_record).collect()
    }

    async fn deployments(
        &self,
        pipeline: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeploymentRecord>> {
        let rows: Vec<DeploymentRow> = sqlx::query_as(deployments::DEPLOYMENTS_SQL)
            .bind(pipeline)
            .bind(limit.max(0))
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        rows.into_iter().map(DeploymentRow::into_record).collect()
    }

    async fn request_deployment(
        &self,
        id: i64,
        request: DeploymentRequest,
        message: &str,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let Some(d) = active_for_update::<B>(&mut tx, id).await? else {
            return Ok(false);
        };
        if !deployments::replaces(d.request, request) {
            return Ok(false);
        }
        let route = match request {
            DeploymentRequest::Abort => deployments::ABORT_ROUTE,
            _ => d.route,
        };
        let change = DeploymentChange {
            state: &d.state,
            step: d.step,
            route,
            restart: route != d.route,
            request: Some(request),
            reason: d.reason.as_deref(),
            data: &d.data,
            outcome: None,
            // a command is not a controller write: the epoch of the last one stays
            epoch: None,
        };
        let event = DeploymentEvent {
            deployment_id: id,
            at: 0,
            from_state: Some(d.state.clone()),
            to_state: d.state.clone(),
            step: d.step,
            route,
            message: message.to_string(),
            epoch: 0,
        };
        change_deployment::<B>(&mut tx, &d, &change, event).await?;
        tx.commit().await.map_err(B::db_error)?;
        Ok(true)
    }

    async fn transition_deployment(
        &self,
        fence: &Fence,
        id: i64,
        update: &DeploymentUpdate,
    ) -> Result<bool> {
        deployments::check_route(&update.route, &format!("deployment {id}"))?;
        let Some(mut tx) = fenced_tx(self, fence).await? else {
            return Ok(false);
        };
        let Some(d) = active_for_update::<B>(&mut tx, id).await? else {
            return Ok(false);
        };
        if d.state != update.from_state || d.request != update.seen_request {
            return Ok(false);
        }
        let route_changed = update.route != d.route;
        let change = DeploymentChange {
            state: &update.to_state,
            step: update.step,
            route: update.route,
            restart: route_changed || update.step != d.step,
            request: if update.clear_request {
                None
            } else {
                d.request
            },
            reason: update.reason.as_deref(),
            data: &update.data,
            outcome: update.outcome,
            epoch: Some(fence.epoch),
        };
        let event = DeploymentEvent {
            deployment_id: id,
            at: 0,
            from_state: Some(d.state.clone()),
            to_state: update.to_state.clone(),
            step: update.step,
            route: update.route,
            message: update.message.clone(),
            epoch: fence.epoch,
        };
        change_deployment::<B>(&mut tx, &d, &change, event).await?;
        // The version new batches run once no deployment routes them: the candidate when it
        // was promoted, stable otherwise (a rollback starts with the rolled-back version
        // current).
        match update.outcome {
            Some(DeploymentOutcome::Promoted) => {
                set_current::<B>(&mut tx, &d.pipeline, d.candidate_version).await?
            }
            Some(DeploymentOutcome::Aborted | DeploymentOutcome::RolledBack) => {
                set_current::<B>(&mut tx, &d.pipeline, d.stable_version).await?
            }
            None => {}
        }
        tx.commit().await.map_err(B::db_error)?;
        Ok(true)
    }

    async fn deployment_events(&self, id: i64) -> Result<Vec<DeploymentEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(deployments::EVENTS_SQL)
            .bind(id)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn record_measurement(&self, fence: &Fence, m: &NewMeasurement) -> Result<bool> {
        let Some(mut tx) = fenced_tx(self, fence).await? else {
            return Ok(false);
        };
        sqlx::query(&B::sql(deployments::INSERT_MEASUREMENT_SQL))
            .bind(m.deployment_id)
            .bind(m.analysis.as_str())
            .bind(m.metric.as_str())
            .bind(m.phase.as_str())
            .bind(m.value)
            .bind(m.stable_value)
            .bind(m.inputs.as_str())
            .bind(m.message.as_str())
            .execute(&mut *tx)
            .await
            .map_err(B::db_error)?;
        tx.commit().await.map_err(B::db_error)?;
        Ok(true)
    }

    async fn measurements(&self, deployment_id: i64) -> Result<Vec<MeasurementRecord>> {
        let rows: Vec<MeasurementRow> = sqlx::query_as(deployments::MEASUREMENTS_SQL)
            .bind(deployment_id)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(MeasurementRecord::from).collect())
    }

    async fn version_runs(
        &self,
        pipeline: &str,
        version: i64,
        since: i64,
    ) -> Result<Vec<BatchRun>> {
        let rows: Vec<RunRow> = sqlx::query_as(deployments::VERSION_RUNS_SQL)
            .bind(pipeline)
            .bind(version)
            .bind(since)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    async fn version_checks(
        &self,
        pipeline: &str,
        version: i64,
        since: i64,
    ) -> Result<Vec<CheckRecord>> {
        let rows: Vec<measurements::CheckRow> = sqlx::query_as(deployments::VERSION_CHECKS_SQL)
            .bind(pipeline)
            .bind(version)
            .bind(since)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(CheckRecord::from).collect())
    }

    async fn park_pending(&self, fence: &Fence, pipeline: &str, version: i64) -> Result<u64> {
        let Some(mut tx) = fenced_tx(self, fence).await? else {
            return Ok(0);
        };
        let parked = sqlx::query(&B::sql(deployments::PARK_SQL))
            .bind(pipeline)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(B::db_error)?
            .rows_affected();
        tx.commit().await.map_err(B::db_error)?;
        Ok(parked)
    }

    async fn requeue(&self, fence: &Fence, requeue: &Requeue) -> Result<u64> {
        let pipeline = requeue.pipeline.as_str();
        let Some(mut tx) = fenced_tx(self, fence).await? else {
            return Ok(0);
        };
        if !version_exists::<B>(&mut tx, pipeline, requeue.version).await? {
            return Err(rows::no_such_version(pipeline, requeue.version));
        }
        let sql = B::sql(deployments::REQUEUE_SQL);
        let mut queued = 0;
        for (batch, generation) in &requeue.batches {
            let n = sqlx::query(&sql)
                .bind(batch.0.as_str())
                .bind(pipeline)
                .bind(requeue.version)
                .bind(*generation)
                .execute(&mut *tx)
                .await
                .map_err(B::db_error)?
                .rows_affected();
            if n > 0 {
                sqlx::query(deployments::FORGET_BATCH_FILES_SQL)
                    .bind(batch.0.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(B::db_error)?;
            }
            queued += n;
        }
        tx.commit().await.map_err(B::db_error)?;
        Ok(queued)
    }

    async fn put_analysis_template(&self, name: &str, spec: &str) -> Result<()> {
        sqlx::query(&B::sql(deployments::PUT_TEMPLATE_SQL))
            .bind(name)
            .bind(spec)
            .execute(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(())
    }

    async fn analysis_template(&self, name: &str) -> Result<Option<AnalysisTemplateRecord>> {
        let row: Option<TemplateRow> = sqlx::query_as(deployments::TEMPLATES_SQL)
            .bind(Some(name))
            .fetch_optional(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(row.map(AnalysisTemplateRecord::from))
    }

    async fn analysis_templates(&self) -> Result<Vec<AnalysisTemplateRecord>> {
        let rows: Vec<TemplateRow> = sqlx::query_as(deployments::TEMPLATES_SQL)
            .bind(None::<&str>)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(AnalysisTemplateRecord::from).collect())
    }

    async fn outbox(&self, deployment_id: i64) -> Result<Vec<OutboxEvent>> {
        let rows: Vec<OutboxRow> = sqlx::query_as(webhooks::OUTBOX_SQL)
            .bind(deployment_id)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        rows.into_iter().map(OutboxRow::into_outbox).collect()
    }

    async fn begin_delivery(
        &self,
        fence: &Fence,
        deployment_id: i64,
        event_id: i64,
        url: &str,
    ) -> Result<Option<i64>> {
        let Some(mut tx) = fenced_tx(self, fence).await? else {
            return Ok(None);
        };
        let attempt: Option<i64> = sqlx::query_scalar(&B::sql(webhooks::BEGIN_DELIVERY_SQL))
            .bind(event_id)
            .bind(url)
            .bind(deployment_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(B::db_error)?;
        let Some(attempt) = attempt else {
            return Ok(None);
        };
        sqlx::query(&B::sql(webhooks::INSERT_ATTEMPT_SQL))
            .bind(deployment_id)
            .bind(event_id)
            .bind(url)
            .bind(attempt)
            .execute(&mut *tx)
            .await
            .map_err(B::db_error)?;
        tx.commit().await.map_err(B::db_error)?;
        Ok(Some(attempt))
    }

    async fn finish_delivery(
        &self,
        event_id: i64,
        url: &str,
        attempt: i64,
        result: &DeliveryResult,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(&B::sql(webhooks::FINISH_ATTEMPT_SQL))
            .bind(event_id)
            .bind(url)
            .bind(attempt)
            .bind(result.status)
            .bind(result.error.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(B::db_error)?;
        sqlx::query(&B::sql(webhooks::FINISH_DELIVERY_SQL))
            .bind(event_id)
            .bind(url)
            .bind(attempt)
            .bind(result.state.as_str())
            .bind(result.retry_in_ms.max(0))
            .bind(result.status)
            .bind(result.error.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(B::db_error)?;
        tx.commit().await.map_err(B::db_error)?;
        Ok(())
    }

    async fn webhook_deliveries(&self, deployment_id: i64) -> Result<Vec<WebhookDelivery>> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(webhooks::DELIVERIES_SQL)
            .bind(deployment_id)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        rows.into_iter().map(DeliveryRow::into_delivery).collect()
    }

    async fn webhook_attempts(&self, deployment_id: i64) -> Result<Vec<WebhookAttempt>> {
        let rows: Vec<AttemptRow> = sqlx::query_as(webhooks::ATTEMPTS_SQL)
            .bind(deployment_id)
            .fetch_all(self.pool())
            .await
            .map_err(B::db_error)?;
        Ok(rows.into_iter().map(WebhookAttempt::from).collect())
    }
}

async fn version_by_hash<B>(
    conn: &mut Conn<B>,
    pipeline: &str,
    spec_hash: &str,
) -> Result<Option<PipelineVersion>>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    for<'r> &'r str: ColumnIndex<DbRow<B>>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    String: Value<B::DB>,
    i64: Value<B::DB>,
{
    let row: Option<VersionRow> = sqlx::query_as(concat!(
        "SELECT ",
        version_columns!(),
        " FROM pipeline_versions WHERE pipeline = $1 AND spec_hash = $2"
    ))
    .bind(pipeline)
    .bind(spec_hash)
    .fetch_optional(conn)
    .await
    .map_err(B::db_error)?;
    Ok(row.map(PipelineVersion::from))
}

/// Takes a file's content in and queues its batches, in one write transaction: `take` records
/// the take (a file's first, or its changed content), and when it changes no row, nothing is
/// queued and the answer is false.
async fn take_in<'q, B>(
    store: &B,
    take: Query<'q, B::DB, Args<'q, B>>,
    queue: &Queue<'_>,
    tasks: &[NewTask],
) -> Result<bool>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'a> Args<'a, B>: IntoArguments<'a, B::DB>,
    usize: ColumnIndex<DbRow<B>>,
    for<'a> &'a str: Encode<'a, B::DB> + Type<B::DB>,
    i64: Value<B::DB>,
{
    // Validate every slice before taking the file in, so a bad one leaves nothing behind.
    let slices = tasks
        .iter()
        .map(|t| SliceColumns::of(&t.batch_id, &t.slice))
        .collect::<Result<Vec<_>>>()?;
    let mut tx = store.write_tx().await?;
    ensure_version::<B>(&mut tx, queue.pipeline, queue.version, queue.path).await?;
    let taken = take
        .execute(&mut *tx)
        .await
        .map_err(B::db_error)?
        .rows_affected();
    if taken == 0 {
        return Ok(false);
    }
    let queued = B::queue_tasks(&mut tx, queue, tasks, &slices).await?;
    tx.commit().await.map_err(B::db_error)?;
    store.queued(queued).await;
    Ok(true)
}

/// Tasks carry a version, so it must exist before a file can be queued for it.
async fn ensure_version<B>(
    conn: &mut Conn<B>,
    pipeline: &str,
    version: i64,
    path: &str,
) -> Result<()>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    usize: ColumnIndex<DbRow<B>>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    i64: Value<B::DB>,
{
    if version_exists::<B>(conn, pipeline, version).await? {
        Ok(())
    } else {
        Err(rows::cannot_queue(pipeline, version, path))
    }
}

async fn set_current<B>(conn: &mut Conn<B>, pipeline: &str, version: i64) -> Result<()>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    i64: Value<B::DB>,
{
    let updated = sqlx::query(
        "UPDATE pipelines SET current_version = $2 WHERE name = $1 \
         AND EXISTS (SELECT 1 FROM pipeline_versions WHERE pipeline = $1 AND version = $2)",
    )
    .bind(pipeline)
    .bind(version)
    .execute(conn)
    .await
    .map_err(B::db_error)?
    .rows_affected();
    if updated == 0 {
        return Err(rows::no_such_version(pipeline, version));
    }
    Ok(())
}

/// Whether `version` of `pipeline` is registered.
async fn version_exists<B>(conn: &mut Conn<B>, pipeline: &str, version: i64) -> Result<bool>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    usize: ColumnIndex<DbRow<B>>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    i64: Value<B::DB>,
{
    let exists: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM pipeline_versions WHERE pipeline = $1 AND version = $2",
    )
    .bind(pipeline)
    .bind(version)
    .fetch_optional(conn)
    .await
    .map_err(B::db_error)?;
    Ok(exists.is_some())
}

/// A write transaction for a controller's write, while `fence` is still the leadership of its
/// duty (and kept so to the end of the transaction: see [`deployments::FENCE_SQL`]); `None`
/// when it is not.
async fn fenced_tx<B>(store: &B, fence: &Fence) -> Result<Option<Transaction<'static, B::DB>>>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    usize: ColumnIndex<DbRow<B>>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    i64: Value<B::DB>,
{
    let mut tx = store.write_tx().await?;
    let epoch: Option<i64> = sqlx::query_scalar(&B::sql(deployments::FENCE_SQL))
        .bind(fence.duty.as_str())
        .bind(fence.holder.as_str())
        .bind(fence.epoch)
        .fetch_optional(&mut *tx)
        .await
        .map_err(B::db_error)?;
    Ok(epoch.map(|_| tx))
}

/// A deployment while it is active, locked for a change to the end of `conn`'s transaction.
async fn active_for_update<B>(conn: &mut Conn<B>, id: i64) -> Result<Option<DeploymentRecord>>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    for<'r> &'r str: ColumnIndex<DbRow<B>>,
    String: Value<B::DB>,
    i64: Value<B::DB>,
{
    let row: Option<DeploymentRow> =
        sqlx::query_as(&B::sql(deployments::ACTIVE_DEPLOYMENT_FOR_UPDATE_SQL))
            .bind(id)
            .fetch_optional(conn)
            .await
            .map_err(B::db_error)?;
    row.map(DeploymentRow::into_record).transpose()
}

/// What a request or a transition makes of a deployment's row.
struct DeploymentChange<'a> {
    state: &'a str,
    step: i64,
    route: Route,
    /// The step (or the route) changes: `step_started_at` moves to now. The router's counters
    /// restart when the route changes.
    restart: bool,
    request: Option<DeploymentRequest>,
    reason: Option<&'a str>,
    data: &'a str,
    outcome: Option<DeploymentOutcome>,
    /// The leader epoch writing; `None` keeps the last one (a command).
    epoch: Option<i64>,
}

/// Writes `change` to the deployment `d` (read and locked in `conn`'s transaction) and appends
/// `event`, both at the same instant.
async fn change_deployment<B>(
    conn: &mut Conn<B>,
    d: &DeploymentRecord,
    change: &DeploymentChange<'_>,
    mut event: DeploymentEvent,
) -> Result<()>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    for<'q> Option<&'q str>: Encode<'q, B::DB>,
    for<'q> Option<i64>: Encode<'q, B::DB>,
    i64: Value<B::DB>,
    bool: Value<B::DB>,
{
    let now = B::clock_in(conn).await?;
    sqlx::query(deployments::UPDATE_DEPLOYMENT_SQL)
        .bind(d.id)
        .bind(change.state)
        .bind(change.step)
        .bind(change.route.mode.as_str())
        .bind(i64::from(change.route.weight))
        .bind(change.route != d.route)
        .bind(change.restart)
        .bind(change.request.map(DeploymentRequest::as_str))
        .bind(change.reason)
        .bind(change.data)
        .bind(deployments::outcome_str(change.outcome))
        .bind(change.epoch)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(B::db_error)?;
    event.at = now;
    insert_event::<B>(conn, &event).await
}

async fn insert_event<B>(conn: &mut Conn<B>, e: &DeploymentEvent) -> Result<()>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    for<'q> Option<&'q str>: Encode<'q, B::DB>,
    i64: Value<B::DB>,
{
    sqlx::query(deployments::INSERT_EVENT_SQL)
        .bind(e.deployment_id)
        .bind(e.at)
        .bind(e.from_state.as_deref())
        .bind(e.to_state.as_str())
        .bind(e.step)
        .bind(e.route.mode.as_str())
        .bind(i64::from(e.route.weight))
        .bind(e.message.as_str())
        .bind(e.epoch)
        .execute(conn)
        .await
        .map_err(B::db_error)?;
    Ok(())
}

/// Where a pipeline's unrouted batches go, looked up once per lease call.
enum PipelineRoute {
    /// No active deployment (it ended since the lease statement ran): the current version.
    Current(i64),
    Deployment(Router),
}

/// The router: chooses the version of each leased batch that came back unrouted from
/// [`Backend::lease_pending`] (its pipeline had an active deployment), by that deployment's
/// route as it is now, and counts the choices on the deployment; all in the lease's
/// transaction, with the deployment row locked on PostgreSQL so concurrent leasers take turns.
/// A batch its deployment holds ([`RouteMode::Hold`], set since the lease statement ran) is
/// given back unleased and left out.
async fn route<B>(
    conn: &mut Conn<B>,
    req: &LeaseRequest,
    leased: Vec<TaskRow>,
) -> Result<Vec<TaskRow>>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    for<'r> &'r str: ColumnIndex<DbRow<B>>,
    usize: ColumnIndex<DbRow<B>>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    for<'q> Option<i64>: Encode<'q, B::DB>,
    String: Value<B::DB>,
    i64: Value<B::DB>,
{
    let mut routes: Vec<(String, PipelineRoute)> = Vec::new();
    let mut kept = Vec::with_capacity(leased.len());
    for mut row in leased {
        if row.is_routed() {
            kept.push(row);
            continue;
        }
        let i = match routes.iter().position(|(p, _)| p == row.pipeline()) {
            Some(i) => i,
            None => {
                let route = pipeline_route::<B>(&mut *conn, row.pipeline(), req).await?;
                routes.push((row.pipeline().to_string(), route));
                routes.len() - 1
            }
        };
        let routed = match &mut routes[i].1 {
            PipelineRoute::Current(version) => Routed {
                version: *version,
                split: None,
                candidate: false,
            },
            PipelineRoute::Deployment(router) => match router.next() {
                Some(routed) => routed,
                None => {
                    sqlx::query(deployments::UNLEASE_SQL)
                        .bind(row.batch_id())
                        .execute(&mut *conn)
                        .await
                        .map_err(B::db_error)?;
                    continue;
                }
            },
        };
        let split = routed.split;
        let at: i64 = sqlx::query_scalar(&B::sql(deployments::ROUTE_TASK_SQL))
            .bind(row.batch_id())
            .bind(routed.version)
            .bind(split.map(|s| s.candidate_version))
            .bind(split.map(|s| i64::from(s.percent)))
            .fetch_one(&mut *conn)
            .await
            .map_err(B::db_error)?;
        row.route(routed.version, split, at);
        kept.push(row);
    }
    for (_, route) in &routes {
        if let PipelineRoute::Deployment(router) = route
            && let Some((total, to_candidate)) = router.counters()
        {
            sqlx::query(deployments::COUNT_ROUTED_SQL)
                .bind(router.deployment)
                .bind(total)
                .bind(to_candidate)
                .execute(&mut *conn)
                .await
                .map_err(B::db_error)?;
        }
    }
    Ok(kept)
}

/// How `pipeline`'s batches are routed now, its deployment row locked on PostgreSQL.
async fn pipeline_route<B>(
    conn: &mut Conn<B>,
    pipeline: &str,
    req: &LeaseRequest,
) -> Result<PipelineRoute>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    for<'r> &'r str: ColumnIndex<DbRow<B>>,
    usize: ColumnIndex<DbRow<B>>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    String: Value<B::DB>,
    i64: Value<B::DB>,
{
    let active: Option<RouteRow> = sqlx::query_as(&B::sql(deployments::ROUTE_SQL))
        .bind(pipeline)
        .fetch_optional(&mut *conn)
        .await
        .map_err(B::db_error)?;
    let Some(active) = active else {
        let current: Option<i64> = sqlx::query_scalar(deployments::CURRENT_VERSION_SQL)
            .bind(pipeline)
            .fetch_optional(&mut *conn)
            .await
            .map_err(B::db_error)?;
        return current.map(PipelineRoute::Current).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "tasks of pipeline {pipeline} are queued but the pipeline is not registered"
            ))
        });
    };
    let mut router = Router::new(active)?;
    if router.mode() == RouteMode::Slots {
        let live: Vec<String> = sqlx::query_scalar(&B::sql(deployments::LIVE_SLOTS_SQL))
            .bind(deployments::LIVE_SLOT_MS)
            .fetch_all(&mut *conn)
            .await
            .map_err(B::db_error)?;
        router.rank_slots(live, &req.worker);
    }
    Ok(PipelineRoute::Deployment(router))
}

async fn insert_run<B>(conn: &mut Conn<B>, run: &NewRun<'_>) -> Result<()>
where
    B: Backend,
    for<'c> &'c mut Conn<B>: Executor<'c, Database = B::DB>,
    for<'q> Args<'q, B>: IntoArguments<'q, B::DB>,
    for<'q> &'q str: Encode<'q, B::DB> + Type<B::DB>,
    for<'q> Option<&'q str>: Encode<'q, B::DB>,
    for<'q> Option<i64>: Encode<'q, B::DB>,
    i64: Value<B::DB>,
    i32: Value<B::DB>,
{
    rows::bind_run(sqlx::query(INSERT_RUN_SQL), run)
        .execute(conn)
        .await
        .map_err(B::db_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;
    use crate::SqliteStore;

    /// The shared statements lean on this: sqlx binds SQLite's `$N` by its number, as
    /// PostgreSQL does, not by order of first appearance (SQLite's own rule for named
    /// parameters). A statement may use a placeholder twice and out of order.
    #[tokio::test]
    async fn sqlite_binds_dollar_placeholders_by_number() {
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        let (a, b, c): (String, i64, String) = sqlx::query_as("SELECT $3 || $1, $2, $1 || $3")
            .bind("one")
            .bind(2_i64)
            .bind("three")
            .fetch_one(&mut conn)
            .await
            .expect("running the statement");
        assert_eq!((a.as_str(), b, c.as_str()), ("threeone", 2, "onethree"));
    }

    /// `{now}` on SQLite reads the same clock, in the same whole milliseconds, as
    /// `Store::now` (the local clock), and stays one instant within a statement.
    #[tokio::test]
    async fn sqlite_clock_in_sql_is_the_local_clock() {
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        let sql = SqliteStore::sql("SELECT {now}, {now}");
        for _ in 0..50 {
            let before = sluice_core::now_millis();
            let (a, b): (i64, i64) = sqlx::query_as(&sql)
                .fetch_one(&mut conn)
                .await
                .expect("reading the clock");
            let after = sluice_core::now_millis();
            assert!(before <= a && a <= after, "{before} <= {a} <= {after}");
            assert_eq!(a, b);
        }
    }

    #[test]
    fn templates_without_tokens_are_not_copied() {
        let words = [("{now}", "N"), ("{skip_locked}", " FOR UPDATE SKIP LOCKED")];
        assert!(matches!(
            render("SELECT 1", &words),
            Cow::Borrowed("SELECT 1")
        ));
        assert_eq!(
            render("SELECT {now}, {now} ORDER BY seq{skip_locked}", &words),
            "SELECT N, N ORDER BY seq FOR UPDATE SKIP LOCKED"
        );
    }
}
