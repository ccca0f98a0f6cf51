//! sluice's state store.
//!
//! Everything sluice must remember lives behind one trait, [`Store`]: pipelines and their
//! immutable versions, the files a source has taken in, the batch queue with its leases, the
//! workers seen, the measurements of every finished batch run, and deployments: the route that
//! decides which version a batch runs with at its first lease, the controller's state and
//! leadership, and its analyses' measurements (see [`DeploymentRecord`], [`RouteMode`],
//! [`Fence`]). Two backends implement it:
//!
//! * SQLite ([`SqliteStore`]), the embedded default: one file under `.sluice/`. Leasing uses
//!   short `BEGIN IMMEDIATE` transactions, so several processes on one machine can share it.
//! * PostgreSQL ([`PostgresStore`]), for workers on many machines. Leasing uses
//!   `SELECT ... FOR UPDATE SKIP LOCKED`, so workers never wait on each other's rows.
//!
//! Both apply their versioned migrations (`migrations/sqlite`, `migrations/postgres`: the same
//! tables and columns, checked by a test) on [`open`]. Every method is written once, generic
//! over the backend (`src/shared.rs`); each backend supplies only what really differs: its clock,
//! its locking, and its form of the two hot paths (queueing a file, leasing). One conformance
//! suite (`tests/conformance.rs`) runs against both; [`testing`] gives other crates' tests a fresh
//! PostgreSQL database.
//!
//! The life of a batch, on the embedded store:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use sluice_core::{BatchId, BatchOutcome, BatchSlice, TaskState, WorkerId};
//! use sluice_store::{LeaseRequest, NewFile, NewTask, RunReport};
//!
//! let dir = tempfile::tempdir()?;
//! let store = sluice_store::open(&dir.path().join("state.db").display().to_string()).await?;
//! let v = store
//!     .register_pipeline_version("orders", "sha256-of-spec", "pipeline: orders", "/specs", false)
//!     .await?;
//!
//! let slice = BatchSlice { path: "/landing/a.csv".into(), index: 0, byte_start: 0,
//!                          byte_end: 120, row_start: 0, row_count: 3 };
//! let task = NewTask { batch_id: BatchId::derive("orders", "a.csv@1", &slice), slice };
//! let file = NewFile { pipeline: "orders".into(), path: "/landing/a.csv".into(), size: 120,
//!                      modified_ms: 0, taken_bytes: 120, taken_rows: 3, checksum: None };
//! assert!(store.register_file(&file, v.version, 3, &[task.clone()]).await?);
//!
//! let leases = store
//!     .lease(&LeaseRequest { worker: WorkerId::new("host", 1, 0), pipelines: None, limit: 8,
//!                            lease_for: Duration::from_secs(30) })
//!     .await?;
//! let now = store.now().await?;
//! let report = RunReport { started_at: now, finished_at: now, rows_in: 3, rows_out: 3,
//!                          outcome: BatchOutcome::Committed, error: None, cpu_us: None,
//!                          peak_memory_bytes: None };
//! assert!(store.complete(&leases[0], &report).await?);
//! assert_eq!(store.task(&task.batch_id).await?.map(|t| t.state), Some(TaskState::Done));
//! # Ok(()) }
//! ```
//!
//! Timestamps are milliseconds since the Unix epoch. Lease expiry is judged by the store's own
//! clock (PostgreSQL's `clock_timestamp()`; the local clock for SQLite, which is one machine), so
//! clock skew between worker machines cannot make a live lease look expired.

mod changes;
mod deploy;
mod deployments;
mod error;
mod measurements;
mod postgres;
mod reads;
mod registry;
mod rows;
mod shared;
mod sqlite;
pub mod testing;
mod webhooks;

use std::time::Duration;

use async_trait::async_trait;
use sluice_core::{BatchId, BatchOutcome, BatchSlice, ErrorKind, LeaseToken, TaskState, WorkerId};

pub use deploy::{
    AnalysisTemplateRecord, DeploymentEvent, DeploymentOutcome, DeploymentRecord,
    DeploymentRequest, DeploymentUpdate, Fence, LeaderRecord, MeasurementRecord, NewDeployment,
    NewMeasurement, Requeue, Route, RouteMode, Split,
};
pub use error::StoreError;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use webhooks::{DeliveryResult, DeliveryState, OutboxEvent, WebhookAttempt, WebhookDelivery};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Opens the store named by `url` and applies pending migrations.
///
/// `sqlite://PATH` (or a bare path) opens or creates a SQLite file; `postgres://...` or
/// `postgresql://...` connects to PostgreSQL. A SQLite path may end in `?busy_timeout=5s`: how
/// long a write waits for another process's lock before the store counts as away (default 30 s).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PostgresStore::connect(url).await?))
    } else {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        let (path, busy_timeout) = match path.rsplit_once("?busy_timeout=") {
            Some((path, t)) => (
                path,
                humantime::parse_duration(t).map_err(|e| {
                    StoreError::Invalid(format!(
                        "store {url}: busy_timeout {t:?} is not a duration ({e}); write e.g. ?busy_timeout=5s"
                    ))
                })?,
            ),
            None => (path, sqlite::BUSY_TIMEOUT),
        };
        Ok(std::sync::Arc::new(
            SqliteStore::open_with(path, busy_timeout).await?,
        ))
    }
}

/// An immutable pipeline spec, numbered per pipeline (1, 2, ...) and identified by content hash.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PipelineVersion {
    pub pipeline: String,
    pub version: i64,
    /// Hex SHA-256 of the normalized spec; registering the same hash again returns this version.
    pub spec_hash: String,
    /// The spec as the user wrote it (YAML).
    pub spec: String,
    /// Absolute directory the spec's relative paths are resolved against.
    pub base_dir: String,
    pub created_at: i64,
}

/// A pipeline and the version new batches are pinned to.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PipelineRecord {
    pub name: String,
    pub current_version: i64,
    pub created_at: i64,
}

/// A file a source has taken in. A (pipeline, path) pair is taken in once; content it gets
/// later is taken in with [`Store::take_in_change`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewFile {
    pub pipeline: String,
    pub path: String,
    pub size: i64,
    pub modified_ms: i64,
    /// Bytes `[0, taken_bytes)` were sliced and queued (less than `size` when a last line
    /// without its newline waits).
    pub taken_bytes: i64,
    /// Records in those bytes: where the rows of content appended later are numbered from.
    pub taken_rows: i64,
    /// Hex checksum of bytes `[0, taken_bytes)`; `None` when not computed.
    pub checksum: Option<String>,
}

/// What the store remembers of a file taken in, for discovery to tell whether it changed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TakenFile {
    pub path: String,
    pub size: i64,
    pub modified_ms: i64,
    /// See [`NewFile::taken_bytes`]; `size` for files taken in before it was kept.
    pub taken_bytes: i64,
    pub taken_rows: i64,
    /// `None` for files taken in before checksums were kept: a change cannot be shown to be
    /// an append, so it counts as a replacement.
    pub checksum: Option<String>,
    /// How often the file was replaced and its new content taken in (0: the first content).
    pub generation: i64,
    /// The last change discovery noticed and did not take in.
    pub change: Option<FileChange>,
    /// The first cut of the file is under way (or was, by a discoverer that died): batches up
    /// to `taken_bytes` / `taken_rows` are queued, the rest is not cut yet.
    #[serde(default)]
    pub cutting: bool,
}

/// A part of a file's first cut, queued while the scan goes on (see [`Store::take_in_part`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CutPart {
    /// The file, with what is cut of it up to this part (`taken_bytes`, `taken_rows`; the
    /// `checksum` with the last part).
    pub file: NewFile,
    /// `None` for the first part (it takes the file in); else the `taken_bytes` of the part
    /// before, where this one goes on.
    pub based_on: Option<i64>,
    /// Whether this is the last part: the whole file is cut.
    pub last: bool,
}

/// A change of a file taken in that discovery noticed: the size and modification time it saw,
/// what changed (`grew from 10 to 25 bytes`), and what it did (`warned`, `failed`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileChange {
    pub size: i64,
    pub modified_ms: i64,
    pub detail: String,
    pub action: String,
    /// Set by the store.
    pub noticed_at: i64,
}

/// A file's changed content, taken in (`on_change: reprocess`). Applies only while the store
/// still holds the take it builds on, so two discoverers take a change in once.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileUpdate {
    /// The file as it is now: size, modification time, and what of it is taken in.
    pub file: NewFile,
    /// The take this builds on: its `taken_bytes`, `checksum` and `generation`.
    pub based_on: (i64, Option<String>, i64),
    /// The generation of the queued content: `based_on`'s for an append, one more for a
    /// replacement (whose batches' commits remove the rows of lower generations).
    pub generation: i64,
}

/// A data file a batch's Delta commit added.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchFile {
    pub pipeline: String,
    pub batch_id: BatchId,
    pub table_version: i64,
    /// Path relative to the table root, as in the Delta log.
    pub data_file: String,
}

/// A batch to queue.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewTask {
    pub batch_id: BatchId,
    pub slice: BatchSlice,
}

/// A batch that groups several small files, to queue with them (see [`Store::register_group`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewGroup {
    pub batch_id: BatchId,
    /// One slice per file, in the batch's order: the first is the task's slice, the others its
    /// `grouped` files.
    pub slices: Vec<BatchSlice>,
}

/// What a worker asks for when it has free slots.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub worker: WorkerId,
    /// Only these pipelines; `None` means any.
    pub pipelines: Option<Vec<String>>,
    /// At most this many tasks (the worker's free slots).
    pub limit: usize,
    /// How long the lease lasts unless heartbeats extend it.
    pub lease_for: Duration,
}

/// A task held by a worker.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub batch_id: BatchId,
    pub pipeline: String,
    /// The pipeline version the router chose at the batch's first lease (see
    /// [`Store::lease`]): the version that must run it, through every retry.
    pub version: i64,
    pub slice: BatchSlice,
    /// The further files of a batch that groups several small files, after `slice`, in order
    /// (empty for a batch of one file): their rows are one batch and one commit with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grouped: Vec<BatchSlice>,
    pub token: LeaseToken,
    pub worker: WorkerId,
    /// 1 for the first lease of the batch, counting every lease since queueing or retry.
    pub attempt: i32,
    pub max_attempts: i32,
    pub expires_at: i64,
    /// The batch's generation: 0, raised by each repair that removed its rows. Its commit is
    /// made (and found) under this generation.
    pub generation: i64,
    /// Set when the batch is routed by key: its rows are split between `version` (stable) and
    /// the candidate.
    pub split: Option<Split>,
}

/// The measurements of a finished run, stored for status, checks and analysis.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunReport {
    pub started_at: i64,
    pub finished_at: i64,
    pub rows_in: i64,
    pub rows_out: i64,
    pub outcome: BatchOutcome,
    pub error: Option<String>,
    /// What the run cost, as [`BatchRun`] stores it (`None`: not measured).
    #[serde(default)]
    pub cpu_us: Option<i64>,
    #[serde(default)]
    pub peak_memory_bytes: Option<i64>,
}

/// What happened to a failed task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailDisposition {
    /// Back in the queue, after a back-off.
    Retrying,
    /// Held with its error until `retry`.
    Quarantined,
    /// The lease had expired and was taken over; this report was recorded and nothing changed.
    LeaseLost,
}

/// Which quarantined batches to put back in the queue.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryTarget {
    Batch(BatchId),
    /// Every quarantined batch, of one pipeline or of all.
    All {
        pipeline: Option<String>,
    },
}

/// What a process reports about one of its workers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerBeat {
    pub worker: WorkerId,
    pub host: String,
    pub pid: i64,
    /// `running`, `draining` or `stopped`.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerRecord {
    pub worker: WorkerId,
    pub host: String,
    pub pid: i64,
    pub state: String,
    pub started_at: i64,
    pub last_heartbeat: i64,
}

/// A batch's row in the queue, as `status`, `quarantine` and tests see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskRecord {
    pub batch_id: BatchId,
    pub pipeline: String,
    /// The version that runs the batch once routed; until then (`routed_at` unset) the
    /// pipeline's current version when it was queued, which the router may still change.
    pub version: i64,
    pub slice: BatchSlice,
    /// See [`Lease::grouped`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grouped: Vec<BatchSlice>,
    pub state: TaskState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub lease_owner: Option<WorkerId>,
    pub last_error: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub rows_in: Option<i64>,
    pub rows_out: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// See [`Lease::generation`].
    pub generation: i64,
    /// See [`Lease::split`].
    pub split: Option<Split>,
    /// When the router chose the version (the first lease); `None` while the batch waits to
    /// be routed.
    pub routed_at: Option<i64>,
}

/// One run of one batch: the measurement history.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchRun {
    pub batch_id: BatchId,
    pub pipeline: String,
    pub version: i64,
    pub worker: WorkerId,
    pub attempt: i32,
    pub started_at: i64,
    pub finished_at: i64,
    pub duration_ms: i64,
    pub rows_in: i64,
    pub rows_out: i64,
    pub outcome: BatchOutcome,
    pub error: Option<String>,
    /// CPU time charged to the run's own code, in microseconds (see `sluice_core::usage`);
    /// `None` when it was not measured (an expired lease, a run recorded before 0009).
    pub cpu_us: Option<i64>,
    /// The most memory the run's own code held at once; `None` when not measured.
    pub peak_memory_bytes: Option<i64>,
}

/// Per-pipeline summary for `sluice status`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PipelineStatus {
    pub pipeline: String,
    pub current_version: i64,
    pub files: i64,
    pub pending: i64,
    pub leased: i64,
    pub done: i64,
    pub quarantined: i64,
    /// Sums over done batches.
    pub rows_in: i64,
    pub rows_out: i64,
    /// First start and last finish of successful runs: the window throughput is measured over.
    pub first_started_at: Option<i64>,
    pub last_finished_at: Option<i64>,
    /// Rows left out of published batches as bad input (`source.bad_rows: drop`); they wait
    /// in the quarantine table for `sluice retry --dropped`.
    #[serde(default)]
    pub dropped_rows: i64,
}

/// A dataset of the schema registry: a named table contract with a history of schema versions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetRecord {
    pub name: String,
    /// The dataset's own compatibility mode; `None` follows the registry default.
    pub compatibility: Option<String>,
    /// The newest version; `None` before the first registration (a mode set ahead of it).
    pub latest_version: Option<i64>,
    /// How many versions the dataset has.
    pub versions: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An immutable, numbered schema of a dataset, stored as the JSON the registry normalized.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SchemaVersionRecord {
    pub dataset: String,
    pub version: i64,
    /// The normalized schema with field ids, as JSON text.
    pub schema_json: String,
    /// Hash of the normalized schema; one version per fingerprint per dataset.
    pub fingerprint: String,
    /// The highest field id ever given in the dataset up to this version.
    pub last_field_id: i64,
    pub created_at: i64,
}

/// A schema version to register; see [`Store::register_schema_version`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewSchemaVersion<'a> {
    pub dataset: &'a str,
    pub fingerprint: &'a str,
    pub schema_json: &'a str,
    pub last_field_id: i64,
    /// The latest version the caller assigned ids from and checked compatibility against
    /// (`None`: the dataset had no version). The new version is only created while this is
    /// still the latest, so a concurrent registration can never skip the checks.
    pub based_on: Option<i64>,
}

/// What [`Store::register_schema_version`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SchemaRegistration {
    /// A new version, numbered `latest + 1`.
    Created(SchemaVersionRecord),
    /// The dataset already has a version with this fingerprint; nothing was written.
    Existing(SchemaVersionRecord),
    /// Another registration got in first: `based_on` is no longer the latest version. Nothing
    /// was written; read the history again, re-check, and retry.
    Stale { latest: Option<i64> },
}

/// One check's result on one batch run: the measurement history of data quality, per
/// pipeline version. `level` is `pass`, `warn` or `error`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckRecord {
    pub pipeline: String,
    pub version: i64,
    pub batch_id: BatchId,
    pub check: String,
    pub kind: String,
    pub level: String,
    pub considered: i64,
    pub failing: i64,
    pub dropped: i64,
    pub detail: String,
    /// Set by the store when recorded.
    pub recorded_at: i64,
}

/// Which batches [`Store::batches`] lists: one pipeline's, in queue order, optionally only one
/// state and one version, a page at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchQuery {
    pub pipeline: String,
    pub state: Option<TaskState>,
    pub version: Option<i64>,
    /// Only batches queued after this cursor (a previous page's [`BatchPage::next`]).
    pub after: Option<i64>,
    /// At most this many (a negative limit means none).
    pub limit: i64,
}

/// A page of batches and the cursor of the next page (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchPage {
    pub batches: Vec<TaskRecord>,
    pub next: Option<i64>,
}

/// The runs of one pipeline version that ended one way within a window, summed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunTotals {
    pub version: i64,
    pub outcome: BatchOutcome,
    pub runs: i64,
    pub rows_in: i64,
    pub rows_out: i64,
    pub duration_ms_sum: i64,
    pub duration_ms_max: i64,
}

/// The results of one check of one pipeline version at one level within a window, summed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckTotals {
    pub version: i64,
    pub check: String,
    /// `pass`, `warn` or `error`.
    pub level: String,
    /// Batch runs the check judged at this level.
    pub results: i64,
    /// Rows that failed it, summed over those runs.
    pub failing: i64,
}

/// Upper bounds (milliseconds, inclusive) of the buckets [`StoreMetrics::durations`] counts
/// committed runs into; a run longer than the last bound counts only in the total.
pub const DURATION_BUCKETS_MS: [i64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000,
];

/// The batches of one pipeline version in one state, as [`Store::metrics`] counts them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskCount {
    pub pipeline: String,
    pub version: i64,
    pub state: TaskState,
    pub batches: i64,
    /// Sums of the rows recorded on those batches (set once a batch is done).
    pub rows_in: i64,
    pub rows_out: i64,
    /// For pending ones: since when the longest-waiting of them waits (when it last changed
    /// state). 0 for the other states (not read, so a scrape costs what is pending, not the
    /// history).
    pub oldest_change: i64,
}

/// How long one live pipeline version's committed runs took: `buckets[i]` runs took at most
/// [`DURATION_BUCKETS_MS`]`[i]` (cumulative, as Prometheus counts).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DurationHistogram {
    pub pipeline: String,
    pub version: i64,
    pub runs: i64,
    pub duration_ms_sum: i64,
    pub buckets: Vec<i64>,
}

/// The rows of one pipeline version's committed runs, over all time: what `/metrics` counts rows
/// by, since runs are only ever added (a done batch requeued by a rollback leaves `done`, its
/// run stays), so the totals never go back.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommittedRows {
    pub pipeline: String,
    pub version: i64,
    pub rows_in: i64,
    pub rows_out: i64,
}

/// How often one check of a pipeline failed at one level (`warn` or `error`), over all time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckFailures {
    pub pipeline: String,
    pub check: String,
    pub level: String,
    pub results: i64,
}

/// Everything `/metrics` reports, read in one snapshot by a handful of aggregate queries (none
/// per series), so one server covers every worker of the store.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoreMetrics {
    /// The store clock when read.
    pub now: i64,
    /// Each pipeline and its current version.
    pub current: Vec<(String, i64)>,
    pub tasks: Vec<TaskCount>,
    /// Every version with committed runs.
    #[serde(default)]
    pub rows: Vec<CommittedRows>,
    /// Live versions only: the current ones and those with pending or leased batches.
    pub durations: Vec<DurationHistogram>,
    /// Workers not stopped that reported within the `lost_after` given.
    pub workers_alive: i64,
    pub check_failures: Vec<CheckFailures>,
}

/// The state store. All methods are safe to call concurrently from many workers, processes and
/// machines; the ones that change a leased task are fenced by the lease token.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Milliseconds since the epoch by the store's clock (the clock leases are judged by).
    async fn now(&self) -> Result<i64>;

    // ---- pipelines ----

    /// Records a pipeline version. If the pipeline already has a version with this `spec_hash`,
    /// that version is returned unchanged; otherwise version `max + 1` is created. A new
    /// pipeline's first version becomes its current version; later versions do not (see
    /// [`Store::set_current_version`]) unless `make_current` is true.
    async fn register_pipeline_version(
        &self,
        pipeline: &str,
        spec_hash: &str,
        spec: &str,
        base_dir: &str,
        make_current: bool,
    ) -> Result<PipelineVersion>;
    async fn set_current_version(&self, pipeline: &str, version: i64) -> Result<()>;
    async fn pipeline(&self, pipeline: &str) -> Result<Option<PipelineRecord>>;
    async fn pipelines(&self) -> Result<Vec<PipelineRecord>>;
    async fn pipeline_version(
        &self,
        pipeline: &str,
        version: i64,
    ) -> Result<Option<PipelineVersion>>;

    // ---- files and the queue ----

    /// Paths of the files this pipeline has taken in, so discovery can skip them cheaply.
    async fn known_files(&self, pipeline: &str) -> Result<Vec<String>>;

    /// Takes a file in and queues its batches, atomically, with `version` (the current one) as
    /// their version until the router chooses at their first lease. Returns false (and queues
    /// nothing) if the (pipeline, path) was taken in before.
    async fn register_file(
        &self,
        file: &NewFile,
        version: i64,
        max_attempts: i32,
        tasks: &[NewTask],
    ) -> Result<bool>;

    /// Takes several files in and queues the one batch that groups them (one slice per file),
    /// atomically, like [`Store::register_file`]. Returns false (and takes nothing in) if any
    /// of the files was taken in before: another discoverer grouped it first.
    async fn register_group(
        &self,
        files: &[NewFile],
        version: i64,
        max_attempts: i32,
        batch: &NewGroup,
    ) -> Result<bool>;

    /// Queues a part of a file's first cut with its batches, atomically, so a large file's
    /// first batches run while the rest is still being cut. The first part takes the file in
    /// (false if it was taken in before); each later one moves the cut on from
    /// `part.based_on` (false, and nothing queued, if the cut is no longer there: finished, or
    /// moved on by another discoverer). Until the last part the file is `cutting`.
    async fn take_in_part(
        &self,
        part: &CutPart,
        version: i64,
        max_attempts: i32,
        tasks: &[NewTask],
    ) -> Result<bool>;

    /// What the pipeline took in of each of its files, by path.
    async fn taken_files(&self, pipeline: &str) -> Result<Vec<TakenFile>>;

    /// The files of a pipeline with a change noticed and not taken in, by path (for status).
    async fn changed_files(&self, pipeline: &str) -> Result<Vec<TakenFile>>;

    /// Takes a file's changed content in and queues its batches, atomically: the file's take
    /// becomes `update.file` (and any noticed change is cleared), and each task is recorded as
    /// holding `update.generation`. Returns false (and changes nothing) unless the store still
    /// holds `update.based_on`.
    async fn take_in_change(
        &self,
        update: &FileUpdate,
        version: i64,
        max_attempts: i32,
        tasks: &[NewTask],
    ) -> Result<bool>;

    /// Records a change noticed on a file taken in. True if it is news: the file had no
    /// noticed change with this size, modification time and action (so it is reported once,
    /// whoever notices it). `None` clears it (the file is back as it was taken in).
    async fn notice_file_change(
        &self,
        pipeline: &str,
        path: &str,
        change: Option<&FileChange>,
    ) -> Result<bool>;

    /// Records the data files a batch's Delta commit (table version `table_version`) added.
    /// Recording the same batch again adds nothing.
    async fn record_batch_files(&self, files: &[BatchFile]) -> Result<()>;

    /// The data files recorded for these batches.
    async fn batch_files(&self, batches: &[BatchId]) -> Result<Vec<BatchFile>>;

    /// The data files to remove when `batch` commits: those recorded for batches holding an
    /// earlier generation of the same file (the content a replacement supersedes). Empty for a
    /// batch of a file's first content or of an append.
    async fn superseded_files(&self, batch: &BatchId) -> Result<Vec<String>>;

    /// Leases up to `limit` pending tasks whose back-off has passed, oldest first. Each lease
    /// increments the task's attempt count and carries a fresh token.
    ///
    /// A batch leased for the first time since it was queued (or retried) is routed in the same
    /// transaction: by its pipeline's active deployment's route (see [`RouteMode`]; the
    /// deployment's counters move with it), else to the pipeline's current version. The choice
    /// is kept on the task: later leases (after a failed attempt, a rescue, a release) run the
    /// same version. While a deployment's route is [`RouteMode::Hold`], its pipeline's batches
    /// not routed yet are not leased.
    async fn lease(&self, req: &LeaseRequest) -> Result<Vec<Lease>>;

    /// Extends a lease to now + `extend`. False if the lease is no longer held (expired and
    /// taken over, or finished).
    async fn heartbeat(
        &self,
        batch: &BatchId,
        token: &LeaseToken,
        extend: Duration,
    ) -> Result<bool>;

    /// Marks the task done and records the run. False if the lease was no longer held: the run
    /// is still recorded, the task is left to its new holder.
    async fn complete(&self, lease: &Lease, report: &RunReport) -> Result<bool>;

    /// Records a failed run. `quarantine` holds the batch now (bad input: retrying cannot help);
    /// otherwise it goes back to the queue after `backoff`, or to quarantine once it has used
    /// `max_attempts` attempts.
    async fn fail(
        &self,
        lease: &Lease,
        report: &RunReport,
        kind: ErrorKind,
        quarantine: bool,
        backoff: Duration,
    ) -> Result<FailDisposition>;

    /// Gives an unstarted or abandoned lease back without counting the attempt (drain).
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Takes back every lease that expired: the task is queued again, or quarantined if it has
    /// used all its attempts (a batch that kills its worker every time). Records an `expired`
    /// run for each. Returns how many were taken back.
    async fn rescue_expired(&self) -> Result<u64>;

    /// Puts quarantined batches back in the queue with fresh attempts, to be routed again at
    /// their next lease like newly queued ones (so a fixed spec, made current or deployed, is
    /// what runs them). Returns how many.
    async fn retry(&self, target: &RetryTarget) -> Result<u64>;

    async fn task(&self, batch: &BatchId) -> Result<Option<TaskRecord>>;
    /// Tasks of a pipeline in a state (all states if `None`), oldest first.
    async fn tasks(&self, pipeline: &str, state: Option<TaskState>) -> Result<Vec<TaskRecord>>;
    /// The pipeline's tasks that carry `version`, as the version that runs them or as a key
    /// split's candidate, in queue order: a deployment's batches of its candidate, without
    /// reading the pipeline's whole history.
    async fn version_tasks(&self, pipeline: &str, version: i64) -> Result<Vec<TaskRecord>>;

    // ---- workers and measurements ----

    async fn worker_heartbeat(&self, beat: &WorkerBeat) -> Result<()>;
    async fn workers(&self) -> Result<Vec<WorkerRecord>>;

    /// Runs of a pipeline, newest first, at most `limit`.
    async fn batch_runs(&self, pipeline: &str, limit: i64) -> Result<Vec<BatchRun>>;

    /// Records check results (one row each; `recorded_at` is set by the store).
    async fn record_checks(&self, records: &[CheckRecord]) -> Result<()>;

    /// Check results of a pipeline (one version, or all if `None`), newest first.
    async fn check_results(
        &self,
        pipeline: &str,
        version: Option<i64>,
        limit: i64,
    ) -> Result<Vec<CheckRecord>>;

    async fn status(&self) -> Result<Vec<PipelineStatus>>;

    // ---- reads for the API and metrics ----

    /// Every version of a pipeline, oldest first.
    async fn pipeline_versions(&self, pipeline: &str) -> Result<Vec<PipelineVersion>>;

    /// A page of a pipeline's batches in queue order (see [`BatchQuery`]).
    async fn batches(&self, query: &BatchQuery) -> Result<BatchPage>;

    /// Every run of one batch, oldest first.
    async fn batch_runs_of(&self, batch: &BatchId) -> Result<Vec<BatchRun>>;

    /// Every check result of one batch, oldest first.
    async fn check_results_of(&self, batch: &BatchId) -> Result<Vec<CheckRecord>>;

    /// A pipeline's runs that finished in `[since, until]`, summed per version and outcome.
    async fn run_totals(&self, pipeline: &str, since: i64, until: i64) -> Result<Vec<RunTotals>>;

    /// A pipeline's check results recorded in `[since, until]`, summed per version, check and
    /// level.
    async fn check_totals(
        &self,
        pipeline: &str,
        since: i64,
        until: i64,
    ) -> Result<Vec<CheckTotals>>;

    /// What `/metrics` reports (see [`StoreMetrics`]); a worker silent for `lost_after` is not
    /// alive.
    async fn metrics(&self, lost_after: Duration) -> Result<StoreMetrics>;

    // ---- schema registry ----

    /// Records a schema version, atomically. If the dataset already has a version with this
    /// fingerprint it is returned as [`SchemaRegistration::Existing`]; otherwise, if
    /// `based_on` is still the dataset's latest version, version `latest + 1` is created (and
    /// the dataset with it); otherwise [`SchemaRegistration::Stale`] and nothing changes.
    /// Concurrent registrations of one dataset take turns, so numbering has no gaps or twins.
    async fn register_schema_version(
        &self,
        new: &NewSchemaVersion<'_>,
    ) -> Result<SchemaRegistration>;

    /// One version of a dataset; `None` for `version` means the latest.
    async fn schema_version(
        &self,
        dataset: &str,
        version: Option<i64>,
    ) -> Result<Option<SchemaVersionRecord>>;

    /// Every version of a dataset, oldest first.
    async fn schema_versions(&self, dataset: &str) -> Result<Vec<SchemaVersionRecord>>;

    async fn dataset(&self, dataset: &str) -> Result<Option<DatasetRecord>>;
    /// Every dataset, by name.
    async fn datasets(&self) -> Result<Vec<DatasetRecord>>;

    /// Sets the compatibility mode of one dataset (creating its record if it has no version
    /// yet), or with `None` the registry default. The mode is stored as given; callers
    /// validate it.
    async fn set_compatibility(&self, dataset: Option<&str>, mode: &str) -> Result<()>;

    /// The mode a dataset is checked under: its own, else the registry default.
    async fn compatibility(&self, dataset: &str) -> Result<String>;

    // ---- leadership ----

    /// Takes or renews the leadership of `duty` for `holder` until now + `ttl` (store clock).
    /// Taken when no one holds it, its holder's lease expired, or `holder` holds it already
    /// (renewal keeps the epoch); a change of hands raises the epoch by one. `None`: someone
    /// else holds it. Concurrent callers take turns: one of them wins.
    async fn lead(&self, duty: &str, holder: &str, ttl: Duration) -> Result<Option<Fence>>;
    /// Gives the leadership up at once (a clean shutdown), if `fence` still holds it: it
    /// expires now, and the next `lead` of another holder takes it with the next epoch.
    async fn resign(&self, fence: &Fence) -> Result<()>;
    /// The duty's last holder, as stored: compare `expires_at` with [`Store::now`] to tell
    /// whether it still holds.
    async fn leader(&self, duty: &str) -> Result<Option<LeaderRecord>>;

    // ---- deployments ----

    /// Starts a deployment, with a first event. `Ok(Err(active))`: the pipeline already has an
    /// active deployment, which is returned and nothing is written.
    async fn start_deployment(
        &self,
        new: &NewDeployment,
    ) -> Result<std::result::Result<DeploymentRecord, DeploymentRecord>>;
    async fn deployment(&self, id: i64) -> Result<Option<DeploymentRecord>>;
    /// The pipeline's active deployment (outcome not set), if any.
    async fn active_deployment(&self, pipeline: &str) -> Result<Option<DeploymentRecord>>;
    /// Every active deployment, oldest first: the controller's work list.
    async fn active_deployments(&self) -> Result<Vec<DeploymentRecord>>;
    /// Deployments of a pipeline (or of all), newest first, at most `limit`.
    async fn deployments(
        &self,
        pipeline: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeploymentRecord>>;
    /// A command's request on an active deployment, with an event (epoch 0). `Abort` also
    /// routes every new batch to stable at once (weight 0, mode `batch`) in the same
    /// transaction, without waiting for the controller. A waiting abort is not replaced by a
    /// later request. False (nothing written) if the deployment is not active, or an abort
    /// waits and `request` is not one.
    async fn request_deployment(
        &self,
        id: i64,
        request: DeploymentRequest,
        message: &str,
    ) -> Result<bool>;
    /// Applies a controller transition, with an event, if the deployment is active, in
    /// `update.from_state` with `update.seen_request` waiting, and `fence` is still the
    /// leadership of its duty (checked in the same transaction). A route change restarts the
    /// router's counters and `step_started_at` moves to now when the step or the route
    /// changes. An outcome ends the deployment; `Promoted` sets the pipeline's current version
    /// to the candidate, `Aborted` and `RolledBack` to stable. False: nothing changed.
    async fn transition_deployment(
        &self,
        fence: &Fence,
        id: i64,
        update: &DeploymentUpdate,
    ) -> Result<bool>;
    /// A deployment's events, oldest first.
    async fn deployment_events(&self, id: i64) -> Result<Vec<DeploymentEvent>>;

    /// Records a measurement if `fence` still holds. False: not recorded.
    async fn record_measurement(&self, fence: &Fence, m: &NewMeasurement) -> Result<bool>;
    /// A deployment's measurements, oldest first.
    async fn measurements(&self, deployment_id: i64) -> Result<Vec<MeasurementRecord>>;

    /// Runs of one version of a pipeline that finished at or after `since`, oldest first:
    /// an analysis window.
    async fn version_runs(&self, pipeline: &str, version: i64, since: i64)
    -> Result<Vec<BatchRun>>;
    /// Check results of one version recorded at or after `since`, oldest first.
    async fn version_checks(
        &self,
        pipeline: &str,
        version: i64,
        since: i64,
    ) -> Result<Vec<CheckRecord>>;

    /// Parks the pipeline's pending batches routed to `version` (or split by key with it as
    /// the candidate), if `fence` holds: they are left pending but leased by nobody until
    /// [`Store::requeue`] queues them again. An abort parks the candidate's batches instead of
    /// handing them to stable, because a routed batch may still have a run of the candidate in
    /// flight (a worker stalled past its lease, or killed between its Delta commit and its
    /// report): stable must not run it under the same generation, where whichever commits
    /// first wins. The repair fences those runs and requeues the batches under the next
    /// generation. Batches not routed yet are left to the router. Returns how many were parked.
    async fn park_pending(&self, fence: &Fence, pipeline: &str, version: i64) -> Result<u64>;
    /// Queues repaired batches again (see [`Requeue`]), whatever state they are in except
    /// leased (a leased one is skipped: its holder finishes or loses it first), if `fence`
    /// holds. A batch already at the generation given is skipped too, so a repeated requeue
    /// changes nothing (and a batch that ran again since keeps its result). Their recorded data
    /// files are forgotten (the repair removed them). Returns how many were queued.
    async fn requeue(&self, fence: &Fence, requeue: &Requeue) -> Result<u64>;

    // ---- analysis templates ----

    /// Creates or replaces a named analysis template.
    async fn put_analysis_template(&self, name: &str, spec: &str) -> Result<()>;
    async fn analysis_template(&self, name: &str) -> Result<Option<AnalysisTemplateRecord>>;
    async fn analysis_templates(&self) -> Result<Vec<AnalysisTemplateRecord>>;

    // ---- webhooks: the outbox of deployment events ----

    /// A deployment's events with their ids, oldest first: what its webhooks are sent.
    async fn outbox(&self, deployment_id: i64) -> Result<Vec<OutboxEvent>>;
    /// Records that event `event_id` of deployment `deployment_id` is being sent to `url`, if
    /// `fence` holds and the delivery is not final; returns the attempt's number (1 for the
    /// first). `None`: do not send (the fence is lost, or it was delivered or given up).
    async fn begin_delivery(
        &self,
        fence: &Fence,
        deployment_id: i64,
        event_id: i64,
        url: &str,
    ) -> Result<Option<i64>>;
    /// Records how attempt `attempt` ended. Not fenced: the request was made, and what it
    /// answered is true whoever leads now.
    async fn finish_delivery(
        &self,
        event_id: i64,
        url: &str,
        attempt: i64,
        result: &DeliveryResult,
    ) -> Result<()>;
    /// What became of each event of a deployment sent to each URL, by event then URL.
    async fn webhook_deliveries(&self, deployment_id: i64) -> Result<Vec<WebhookDelivery>>;
    /// Every request made for a deployment's webhooks, oldest first.
    async fn webhook_attempts(&self, deployment_id: i64) -> Result<Vec<WebhookAttempt>>;
}
