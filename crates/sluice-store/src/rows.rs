//! Rows as both backends return them, and their conversion into the public types.
//!
//! The two schemas are logically identical, so one set of row structs serves both: the derived
//! [`sqlx::FromRow`] impls are generic over the database.

use sluice_core::{BatchId, BatchOutcome, BatchSlice, ErrorKind, LeaseToken, TaskState, WorkerId};

use crate::{
    BatchRun, FailDisposition, Lease, PipelineRecord, PipelineStatus, PipelineVersion, Result,
    RunReport, Split, StoreError, TaskRecord, WorkerRecord,
};

/// Columns a task query selects (or a lease update returns), in [`TaskRow`]'s shape. A macro so
/// `concat!` can build whole statements at compile time.
macro_rules! task_columns {
    () => {
        "batch_id, pipeline, version, path, slice_index, byte_start, byte_end, row_start, \
         row_count, state, attempts, max_attempts, lease_owner, lease_token, lease_expires_at, \
         last_error, error_kind, rows_in, rows_out, created_at, updated_at, generation, \
         split_version, split_percent, routed_at, grouped"
    };
}
pub(crate) use task_columns;

/// The lease update's routing of a batch not routed yet, for a pipeline without an active
/// deployment: the pipeline's current version, now (`$now`: the statement's instant). The
/// common case is decided in the lease statement itself, without another statement; a batch of a pipeline
/// with an active deployment comes back unrouted and the router decides (`shared.rs`). The
/// updated table is `t`. SET expressions read the row as it was, so both see `routed_at` unset.
macro_rules! route_to_current {
    ($now:literal) => {
        concat!(
            "version = CASE WHEN t.routed_at IS NULL AND NOT EXISTS (SELECT 1 FROM deployments d \
             WHERE d.pipeline = t.pipeline AND d.outcome IS NULL) \
             THEN (SELECT p.current_version FROM pipelines p WHERE p.name = t.pipeline) \
             ELSE t.version END, \
             routed_at = CASE WHEN t.routed_at IS NULL AND NOT EXISTS (SELECT 1 FROM deployments d \
             WHERE d.pipeline = t.pipeline AND d.outcome IS NULL) THEN ",
            $now,
            " ELSE t.routed_at END"
        )
    };
}
pub(crate) use route_to_current;

/// The lease query's filter of held batches: a batch not routed yet is not leased while its
/// pipeline's active deployment routes nothing (`hold`, recreate while stable drains). The
/// selected table is `tasks`.
macro_rules! not_held {
    () => {
        "(routed_at IS NOT NULL OR NOT EXISTS (SELECT 1 FROM deployments d \
         WHERE d.pipeline = tasks.pipeline AND d.outcome IS NULL AND d.route_mode = 'hold'))"
    };
}
pub(crate) use not_held;

/// Columns of a version query, in [`VersionRow`]'s shape.
macro_rules! version_columns {
    () => {
        "pipeline, version, spec_hash, spec, base_dir, created_at"
    };
}
pub(crate) use version_columns;

/// Columns of a run query, in [`RunRow`]'s shape.
macro_rules! run_columns {
    () => {
        "batch_id, pipeline, version, worker, attempt, started_at, finished_at, duration_ms, \
         rows_in, rows_out, outcome, error, cpu_us, peak_memory_bytes"
    };
}
pub(crate) use run_columns;

/// Inserts one [`NewRun`] (see [`bind_run`]); the same statement on both backends.
pub(crate) const INSERT_RUN_SQL: &str = concat!(
    "INSERT INTO batch_runs (",
    run_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
);

/// A `batch_runs` row to insert.
pub(crate) struct NewRun<'a> {
    pub batch_id: &'a str,
    pub pipeline: &'a str,
    pub version: i64,
    pub worker: &'a str,
    pub attempt: i32,
    pub started_at: i64,
    pub finished_at: i64,
    pub rows_in: i64,
    pub rows_out: i64,
    pub outcome: BatchOutcome,
    pub error: Option<&'a str>,
    pub cpu_us: Option<i64>,
    pub peak_memory_bytes: Option<i64>,
}

impl<'a> NewRun<'a> {
    /// The run a worker reports for its lease.
    pub(crate) fn reported(lease: &'a Lease, report: &'a RunReport) -> NewRun<'a> {
        NewRun {
            batch_id: &lease.batch_id.0,
            pipeline: &lease.pipeline,
            version: lease.version,
            worker: &lease.worker.0,
            attempt: lease.attempt,
            started_at: report.started_at,
            finished_at: report.finished_at,
            rows_in: report.rows_in,
            rows_out: report.rows_out,
            outcome: report.outcome,
            error: report.error.as_deref(),
            cpu_us: report.cpu_us,
            peak_memory_bytes: report.peak_memory_bytes,
        }
    }

    /// The run the rescuer records for a lease that ran out at `now`.
    pub(crate) fn expired(row: &'a ExpiredRow, message: &'a str, now: i64) -> NewRun<'a> {
        NewRun {
            batch_id: &row.batch_id,
            pipeline: &row.pipeline,
            version: row.version,
            worker: row.owner(),
            attempt: row.attempts,
            started_at: row.leased_at.unwrap_or(now),
            finished_at: now,
            rows_in: 0,
            rows_out: 0,
            outcome: BatchOutcome::Expired,
            error: Some(message),
            cpu_us: None,
            peak_memory_bytes: None,
        }
    }
}

/// Binds a [`NewRun`] to [`INSERT_RUN_SQL`] on either backend.
pub(crate) fn bind_run<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    run: &NewRun<'q>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(run.batch_id)
        .bind(run.pipeline)
        .bind(run.version)
        .bind(run.worker)
        .bind(run.attempt)
        .bind(run.started_at)
        .bind(run.finished_at)
        // a clock step backwards must not produce a negative duration in the measurements
        .bind(run.finished_at.saturating_sub(run.started_at).max(0))
        .bind(run.rows_in)
        .bind(run.rows_out)
        .bind(run.outcome.as_str())
        .bind(run.error)
        .bind(run.cpu_us)
        .bind(run.peak_memory_bytes)
}

#[derive(sqlx::FromRow)]
pub(crate) struct TaskRow {
    batch_id: String,
    pipeline: String,
    version: i64,
    path: String,
    slice_index: i64,
    byte_start: i64,
    byte_end: i64,
    row_start: i64,
    row_count: i64,
    state: String,
    attempts: i32,
    max_attempts: i32,
    lease_owner: Option<String>,
    lease_token: Option<String>,
    lease_expires_at: Option<i64>,
    last_error: Option<String>,
    error_kind: Option<String>,
    rows_in: Option<i64>,
    rows_out: Option<i64>,
    created_at: i64,
    updated_at: i64,
    generation: i64,
    split_version: Option<i64>,
    split_percent: Option<i64>,
    routed_at: Option<i64>,
    grouped: Option<String>,
}

impl TaskRow {
    pub(crate) fn batch_id(&self) -> &str {
        &self.batch_id
    }

    pub(crate) fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Whether the router has chosen this batch's version.
    pub(crate) fn is_routed(&self) -> bool {
        self.routed_at.is_some()
    }

    /// Records what the router chose, as the statement that stored it did.
    pub(crate) fn route(&mut self, version: i64, split: Option<Split>, at: i64) {
        self.version = version;
        self.split_version = split.map(|s| s.candidate_version);
        self.split_percent = split.map(|s| i64::from(s.percent));
        self.routed_at = Some(at);
    }

    fn split(&self) -> Result<Option<Split>> {
        match (self.split_version, self.split_percent) {
            (None, None) => Ok(None),
            (Some(candidate_version), Some(percent)) => Ok(Some(Split {
                candidate_version,
                percent: from_db(percent, || {
                    format!("tasks.split_percent of batch {}", self.batch_id)
                })?,
            })),
            _ => Err(StoreError::Corrupt(format!(
                "batch {} has only one of tasks.split_version and tasks.split_percent",
                self.batch_id
            ))),
        }
    }

    fn slice(&self) -> Result<BatchSlice> {
        let what = |column: &str| format!("tasks.{column} of batch {}", self.batch_id);
        Ok(BatchSlice {
            path: self.path.clone(),
            index: from_db(self.slice_index, || what("slice_index"))?,
            byte_start: from_db(self.byte_start, || what("byte_start"))?,
            byte_end: from_db(self.byte_end, || what("byte_end"))?,
            row_start: from_db(self.row_start, || what("row_start"))?,
            row_count: from_db(self.row_count, || what("row_count"))?,
        })
    }

    /// The further files of a grouped batch (`tasks.grouped`, JSON).
    fn grouped(&self) -> Result<Vec<BatchSlice>> {
        match &self.grouped {
            None => Ok(Vec::new()),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                StoreError::Corrupt(format!("tasks.grouped of batch {}: {e}", self.batch_id))
            }),
        }
    }

    pub(crate) fn into_record(self) -> Result<TaskRecord> {
        let slice = self.slice()?;
        let grouped = self.grouped()?;
        let state = self.state.parse::<TaskState>().map_err(|e| {
            StoreError::Corrupt(format!("tasks.state of batch {}: {e}", self.batch_id))
        })?;
        let error_kind = self
            .error_kind
            .as_deref()
            .map(|k| parse_error_kind(k, &self.batch_id))
            .transpose()?;
        let split = self.split()?;
        Ok(TaskRecord {
            batch_id: BatchId(self.batch_id),
            pipeline: self.pipeline,
            version: self.version,
            slice,
            grouped,
            state,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            lease_owner: self.lease_owner.map(WorkerId),
            last_error: self.last_error,
            error_kind,
            rows_in: self.rows_in,
            rows_out: self.rows_out,
            created_at: self.created_at,
            updated_at: self.updated_at,
            generation: self.generation,
            split,
            routed_at: self.routed_at,
        })
    }

    /// For rows just leased: the lease columns must be set.
    pub(crate) fn into_lease(self) -> Result<Lease> {
        let slice = self.slice()?;
        let grouped = self.grouped()?;
        let split = self.split()?;
        let missing = |column: &str| {
            StoreError::Corrupt(format!(
                "batch {} was just leased but tasks.{column} is empty",
                self.batch_id
            ))
        };
        let token = self
            .lease_token
            .clone()
            .ok_or_else(|| missing("lease_token"))?;
        let worker = self
            .lease_owner
            .clone()
            .ok_or_else(|| missing("lease_owner"))?;
        let expires_at = self
            .lease_expires_at
            .ok_or_else(|| missing("lease_expires_at"))?;
        Ok(Lease {
            batch_id: BatchId(self.batch_id),
            pipeline: self.pipeline,
            version: self.version,
            slice,
            grouped,
            token: LeaseToken(token),
            worker: WorkerId(worker),
            attempt: self.attempts,
            max_attempts: self.max_attempts,
            expires_at,
            generation: self.generation,
            split,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct PipelineRow {
    name: String,
    current_version: i64,
    created_at: i64,
}

impl From<PipelineRow> for PipelineRecord {
    fn from(r: PipelineRow) -> Self {
        PipelineRecord {
            name: r.name,
            current_version: r.current_version,
            created_at: r.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct VersionRow {
    pipeline: String,
    version: i64,
    spec_hash: String,
    spec: String,
    base_dir: String,
    created_at: i64,
}

impl From<VersionRow> for PipelineVersion {
    fn from(r: VersionRow) -> Self {
        PipelineVersion {
            pipeline: r.pipeline,
            version: r.version,
            spec_hash: r.spec_hash,
            spec: r.spec,
            base_dir: r.base_dir,
            created_at: r.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct WorkerRow {
    worker: String,
    host: String,
    pid: i64,
    state: String,
    started_at: i64,
    last_heartbeat: i64,
}

impl From<WorkerRow> for WorkerRecord {
    fn from(r: WorkerRow) -> Self {
        WorkerRecord {
            worker: WorkerId(r.worker),
            host: r.host,
            pid: r.pid,
            state: r.state,
            started_at: r.started_at,
            last_heartbeat: r.last_heartbeat,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RunRow {
    batch_id: String,
    pipeline: String,
    version: i64,
    worker: String,
    attempt: i32,
    started_at: i64,
    finished_at: i64,
    duration_ms: i64,
    rows_in: i64,
    rows_out: i64,
    outcome: String,
    error: Option<String>,
    cpu_us: Option<i64>,
    peak_memory_bytes: Option<i64>,
}

impl RunRow {
    pub(crate) fn into_run(self) -> Result<BatchRun> {
        let outcome = self.outcome.parse::<BatchOutcome>().map_err(|e| {
            StoreError::Corrupt(format!(
                "batch_runs.outcome of batch {}: {e}",
                self.batch_id
            ))
        })?;
        Ok(BatchRun {
            batch_id: BatchId(self.batch_id),
            pipeline: self.pipeline,
            version: self.version,
            worker: WorkerId(self.worker),
            attempt: self.attempt,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: self.duration_ms,
            rows_in: self.rows_in,
            rows_out: self.rows_out,
            outcome,
            error: self.error,
            cpu_us: self.cpu_us,
            peak_memory_bytes: self.peak_memory_bytes,
        })
    }
}

/// A lease the rescuer found expired, before it is taken back.
#[derive(sqlx::FromRow)]
pub(crate) struct ExpiredRow {
    pub batch_id: String,
    pub pipeline: String,
    pub version: i64,
    pub lease_owner: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub leased_at: Option<i64>,
}

impl ExpiredRow {
    /// Whether this batch has used all its attempts and goes to quarantine instead of the queue.
    pub(crate) fn exhausted(&self) -> bool {
        self.attempts >= self.max_attempts
    }

    pub(crate) fn message(&self) -> String {
        expired_message(self.attempts, self.exhausted())
    }

    /// The worker that held the lease, for the `expired` run row.
    pub(crate) fn owner(&self) -> &str {
        self.lease_owner.as_deref().unwrap_or("unknown")
    }
}

/// The three aggregate queries `status` runs, assembled per pipeline.
#[derive(sqlx::FromRow)]
pub(crate) struct StateCountRow {
    pipeline: String,
    state: String,
    tasks: i64,
    rows_in: i64,
    rows_out: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct FileCountRow {
    pipeline: String,
    files: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct RunWindowRow {
    pipeline: String,
    first_started_at: Option<i64>,
    last_finished_at: Option<i64>,
}

/// SQL shared by both backends for `status` (plain SQL that means the same on both), over the
/// counters the store keeps (migration 0008), so it reads what is live, not the history.
pub(crate) const STATUS_PIPELINES_SQL: &str =
    "SELECT name, current_version, created_at FROM pipelines ORDER BY name";
pub(crate) const STATUS_STATES_SQL: &str = "SELECT pipeline, state, \
    CAST(SUM(batches) AS BIGINT) AS tasks, \
    CAST(SUM(rows_in) AS BIGINT) AS rows_in, \
    CAST(SUM(rows_out) AS BIGINT) AS rows_out \
    FROM task_counts GROUP BY pipeline, state";
pub(crate) const STATUS_FILES_SQL: &str = "SELECT pipeline, CAST(SUM(files) AS BIGINT) AS files \
    FROM pipeline_counts GROUP BY pipeline";
pub(crate) const STATUS_RUNS_SQL: &str = "SELECT pipeline, \
    MIN(first_started_at) AS first_started_at, MAX(last_finished_at) AS last_finished_at \
    FROM run_counts WHERE outcome IN ('committed', 'already_committed') GROUP BY pipeline";

/// Rows dropped as bad input (`source.bad_rows: drop`), counted once per batch however often
/// its measurement was recorded (a re-run that finds the batch committed records it again).
pub(crate) const STATUS_DROPPED_SQL: &str = "SELECT pipeline, \
    CAST(SUM(dropped_rows) AS BIGINT) AS dropped FROM pipeline_counts GROUP BY pipeline";

#[derive(sqlx::FromRow)]
pub(crate) struct DroppedCountRow {
    pipeline: String,
    dropped: i64,
}

pub(crate) fn assemble_status(
    pipelines: Vec<PipelineRow>,
    states: Vec<StateCountRow>,
    files: Vec<FileCountRow>,
    runs: Vec<RunWindowRow>,
    dropped: Vec<DroppedCountRow>,
) -> Result<Vec<PipelineStatus>> {
    let mut out: Vec<PipelineStatus> = pipelines
        .into_iter()
        .map(|p| PipelineStatus {
            pipeline: p.name,
            current_version: p.current_version,
            ..PipelineStatus::default()
        })
        .collect();
    // `out` is sorted by name (the query orders it), so lookups can binary-search.
    let index = |out: &[PipelineStatus], name: &str| {
        out.binary_search_by(|s| s.pipeline.as_str().cmp(name)).ok()
    };
    for row in states {
        let Some(i) = index(&out, &row.pipeline) else {
            continue;
        };
        let s = &mut out[i];
        match row
            .state
            .parse::<TaskState>()
            .map_err(StoreError::Corrupt)?
        {
            TaskState::Pending => s.pending = row.tasks,
            TaskState::Leased => s.leased = row.tasks,
            TaskState::Quarantined => s.quarantined = row.tasks,
            TaskState::Done => {
                s.done = row.tasks;
                s.rows_in = row.rows_in;
                s.rows_out = row.rows_out;
            }
        }
    }
    for row in files {
        if let Some(i) = index(&out, &row.pipeline) {
            out[i].files = row.files;
        }
    }
    for row in runs {
        if let Some(i) = index(&out, &row.pipeline) {
            out[i].first_started_at = row.first_started_at;
            out[i].last_finished_at = row.last_finished_at;
        }
    }
    for row in dropped {
        if let Some(i) = index(&out, &row.pipeline) {
            out[i].dropped_rows = row.dropped;
        }
    }
    Ok(out)
}

/// How an [`ErrorKind`] is spelled in the `error_kind` column (its serde name).
pub(crate) fn error_kind_str(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::User => "user",
        ErrorKind::External => "external",
        ErrorKind::Internal => "internal",
    }
}

fn parse_error_kind(s: &str, batch: &str) -> Result<ErrorKind> {
    match s {
        "user" => Ok(ErrorKind::User),
        "external" => Ok(ErrorKind::External),
        "internal" => Ok(ErrorKind::Internal),
        other => Err(StoreError::Corrupt(format!(
            "tasks.error_kind of batch {batch}: unknown error kind {other:?}"
        ))),
    }
}

pub(crate) fn from_db<T: TryFrom<i64>>(v: i64, what: impl FnOnce() -> String) -> Result<T> {
    T::try_from(v).map_err(|_| StoreError::Corrupt(format!("{} is out of range: {v}", what())))
}

/// A slice's numbers as the store keeps them (BIGINT).
pub(crate) struct SliceColumns {
    pub index: i64,
    pub byte_start: i64,
    pub byte_end: i64,
    pub row_start: i64,
    pub row_count: i64,
}

impl SliceColumns {
    pub(crate) fn of(batch: &BatchId, slice: &BatchSlice) -> Result<SliceColumns> {
        let col = |v: u64, column: &str| {
            i64::try_from(v).map_err(|_| {
                StoreError::Invalid(format!(
                    "batch {batch}: {column} {v} is larger than the store can hold ({})",
                    i64::MAX
                ))
            })
        };
        Ok(SliceColumns {
            index: i64::from(slice.index),
            byte_start: col(slice.byte_start, "byte_start")?,
            byte_end: col(slice.byte_end, "byte_end")?,
            row_start: col(slice.row_start, "row_start")?,
            row_count: col(slice.row_count, "row_count")?,
        })
    }
}

/// A duration as store milliseconds, saturating at [`FOREVER_MS`].
pub(crate) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).map_or(FOREVER_MS, |ms| ms.min(FOREVER_MS))
}

/// The longest lease or back-off the store keeps, 146 million years: forever, and small enough
/// that the store clock plus it cannot overflow a BIGINT (PostgreSQL would refuse the sum,
/// SQLite would turn it into a float).
const FOREVER_MS: i64 = i64::MAX / 2;

/// The message a batch carries when its lease ran out.
fn expired_message(attempts: i32, quarantined: bool) -> String {
    if quarantined {
        format!("lease expired {attempts} times: the worker died or hung on this batch")
    } else {
        format!("lease expired on attempt {attempts}: the worker died or hung on this batch")
    }
}

/// What `fail` did, from the state its fenced update returned (none: the lease was lost).
pub(crate) fn fail_disposition(state: Option<&str>, batch: &BatchId) -> Result<FailDisposition> {
    match state {
        None => Ok(FailDisposition::LeaseLost),
        Some("pending") => Ok(FailDisposition::Retrying),
        Some("quarantined") => Ok(FailDisposition::Quarantined),
        Some(other) => Err(StoreError::Corrupt(format!(
            "batch {batch} is in state {other:?} right after a failed run"
        ))),
    }
}

pub(crate) fn no_such_version(pipeline: &str, version: i64) -> StoreError {
    StoreError::NotFound(format!(
        "pipeline {pipeline} has no version {version}: register that spec first"
    ))
}

pub(crate) fn cannot_queue(pipeline: &str, version: i64, path: &str) -> StoreError {
    StoreError::NotFound(format!(
        "cannot queue {path} for {pipeline}@{version}: that pipeline version is not registered \
         (register the pipeline spec first)"
    ))
}

/// One line per lease taken back: which worker lost which batch is what an operator looks for.
pub(crate) fn log_rescued(expired: &[ExpiredRow]) {
    for row in expired {
        tracing::warn!(
            batch = %row.batch_id,
            pipeline = %row.pipeline,
            worker = row.owner(),
            attempts = row.attempts,
            quarantined = row.exhausted(),
            "lease expired; batch taken back"
        );
    }
}
