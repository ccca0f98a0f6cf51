//! The sluice engine: everything that touches data.
//!
//! A [`Pipeline`] is a compiled pipeline version: its landing-folder source (discovery,
//! slicing, reading with the declared input columns), its SQL transform (DataFusion) and its
//! Delta Lake sink (delta-rs) with exactly-once commits. [`Pipeline::run_batch`] takes one
//! batch from file slice to committed Delta version.
//!
//! This is the only crate that depends on DataFusion and delta-rs, so the rest of the
//! workspace builds and tests without them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_engine::{Pipeline, spec::SpecFile};
//! let spec = SpecFile::load(std::path::Path::new("pipelines/orders.yaml"))?;
//! let pipeline = Pipeline::compile(&spec, 1).await?;
//! println!("output columns: {:?}", pipeline.output_schema());
//! # Ok(()) }
//! ```

pub mod checks;
pub mod ddl;
pub mod diff;
pub mod migrate;
pub mod route;
pub mod sink;
pub mod source;
pub mod spec;
pub mod spool;
pub mod transform;
pub mod upgrade;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use sha2::{Digest, Sha256};
use sluice_core::{BatchId, BatchOutcome, BatchSlice, ErrorKind};

use crate::checks::{CheckResult, Checks};
use crate::sink::{CommitExtras, CommitOutcome, DeltaSink, MissingRemoves, SinkError};
use crate::source::{
    BadRow, Cut, CutFrom, InputSchema, LandedFile, SliceRead, SourceError, TextRecords,
};
use crate::spec::{Compression, Format, PipelineSpec, SpecError, SpecFile};
use crate::transform::SqlTransform;

pub use arrow;
pub use datafusion;
pub use deltalake;

/// How many of the table's newest commits are searched for a batch committed by an earlier run.
const ADDED_LOOKBACK: u64 = 200;

/// Errors of compiling or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Spec(_) => ErrorKind::User,
            EngineError::Source(SourceError::BadData { .. }) => ErrorKind::User,
            EngineError::Source(SourceError::NewColumns { .. }) => ErrorKind::User,
            EngineError::Source(SourceError::Io { .. }) => ErrorKind::External,
            EngineError::Sink(SinkError::Delta { .. }) => ErrorKind::External,
            EngineError::Sink(_) => ErrorKind::User,
        }
    }
}

/// Why a batch run failed, and whether running it again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BatchError {
    pub kind: ErrorKind,
    /// Bad input or a query failing on this data: hold the batch, do not retry.
    pub quarantine: bool,
    pub message: String,
    pub rows_in: i64,
    /// Check results, when the checks ran (a batch held by an error-level check).
    pub checks: Vec<CheckResult>,
    /// Under `unknown_columns: evolve`: the new columns (name, sluice type) the file brought,
    /// for the worker to propose as a new version of the source dataset.
    pub new_columns: Vec<(String, String)>,
    /// The run failed for an outage, not for the batch: the table's storage is full or
    /// read-only, say. What the worker waits for (`waiting: ...`); the batch is given back
    /// without spending an attempt.
    pub outage: Option<String>,
}

impl BatchError {
    fn new(kind: ErrorKind, message: String, rows_in: i64) -> BatchError {
        BatchError {
            kind,
            quarantine: kind == ErrorKind::User,
            message,
            rows_in,
            checks: Vec::new(),
            new_columns: Vec::new(),
            outage: None,
        }
    }

    /// The same error, marked as an outage of the table's storage when an I/O error in
    /// `cause`'s chain says the storage is full or cannot be written (see [`storage_outage`]).
    fn or_outage(mut self, cause: &(dyn std::error::Error + 'static)) -> BatchError {
        if let Some(reason) = storage_outage(cause) {
            self.kind = ErrorKind::External;
            self.quarantine = false;
            self.outage = Some(format!("waiting: table storage {reason}"));
        }
        self
    }
}

/// Whether an error comes from storage that is full or cannot be written right now, rather
/// than from the data: an I/O error anywhere in its source chain with ENOSPC (disk full),
/// EDQUOT (quota), EROFS (read-only file system) or EIO (the device failed). Some errors on
/// the way (Parquet's, the object store's) carry their cause only as text, so the rendered
/// chain's `(os error N)` counts too. `Some("full: No space left on device (os error 28)")`.
pub fn storage_outage(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    // Linux's numbers, which `(os error N)` texts carry.
    const EIO: i32 = 5;
    const ENOSPC: i32 = 28;
    const EROFS: i32 = 30;
    const EDQUOT: i32 = 122;
    let label = |code: i32| match code {
        ENOSPC | EDQUOT => Some("full"),
        EROFS => Some("read-only"),
        EIO => Some("failing"),
        _ => None,
    };
    let mut text = String::new();
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(l) = io.raw_os_error().and_then(label) {
                return Some(format!("{l}: {io}"));
            }
            match io.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    return Some(format!("full: {io}"));
                }
                std::io::ErrorKind::ReadOnlyFilesystem => return Some(format!("read-only: {io}")),
                _ => {}
            }
        }
        text.push_str(&err.to_string());
        text.push('\n');
        next = err.source();
    }
    let mut rest = text.as_str();
    while let Some(at) = rest.find("(os error ") {
        let digits: String = rest[at + 10..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(code) = digits.parse::<i32>()
            && let Some(l) = label(code)
        {
            let io = std::io::Error::from_raw_os_error(code);
            return Some(format!("{l}: {io}"));
        }
        rest = &rest[at + 10..];
    }
    None
}

/// A batch's commit failing, as the batch's error.
fn commit_failed(slice: &BatchSlice, rows_in: i64, e: SinkError) -> BatchError {
    let message = format!("{}: {e}", slice_label(slice));
    let e = EngineError::Sink(e);
    BatchError::new(e.kind(), message, rows_in).or_outage(&e)
}

/// The measurements of a successful run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    pub rows_in: i64,
    pub rows_out: i64,
    pub outcome: BatchOutcome,
    pub duration_ms: i64,
    pub checks: Vec<CheckResult>,
    /// The table version this run committed (`None`: already committed, or nothing to do).
    pub table_version: Option<i64>,
    /// Data files the batch's commit added (also found for a batch an earlier run committed,
    /// when its commit is among the table's recent ones), for the store to record.
    pub added: Vec<String>,
    /// Data files its commit removed (the superseded content of a replaced file).
    pub removed: Vec<String>,
}

impl BatchResult {
    /// With what an earlier run's commit of the batch added, when it was found.
    fn found_earlier(mut self, earlier: Option<(Option<i64>, Vec<String>)>) -> BatchResult {
        if let Some((version, added)) = earlier {
            self.table_version = version;
            self.added = added;
        }
        self
    }
}

/// How a batch is run, besides the slice it reads.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run's generation (at least 1): its commit marker's txn version. A batch whose rows a
    /// repair removed is re-run under the next generation, which the repaired run's marker does
    /// not count as committed (see the `sink` module docs, "Generations").
    pub generation: i64,
    /// The row counts of the pipeline's latest published batches (newest first) for volume
    /// checks; [`Pipeline::history_wanted`] says how many.
    pub recent_rows: Vec<u64>,
    /// Data files to remove in the commit that publishes the batch (a replaced file's earlier
    /// rows, as the store recorded them).
    pub superseded: Vec<String>,
    /// The further files of a batch that groups several small files, after the slice run
    /// (the store's [`Lease`](https://docs.rs/sluice-store) `grouped`): read in order, their rows
    /// follow the slice's in one batch and one commit.
    pub grouped: Vec<BatchSlice>,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            generation: 1,
            recent_rows: Vec::new(),
            superseded: Vec::new(),
            grouped: Vec::new(),
        }
    }
}

/// A compiled pipeline version.
pub struct Pipeline {
    pub spec: PipelineSpec,
    pub version: i64,
    pub base_dir: PathBuf,
    format: Format,
    pattern: String,
    input: InputSchema,
    /// Present when the source names a dataset: reads files of its older versions too.
    versions: Option<Arc<upgrade::SourceVersions>>,
    output: SchemaRef,
    transform: SqlTransform,
    sink: Arc<DeltaSink>,
    checks: Checks,
    /// Where rows held back by checks and rows dropped as bad input go.
    quarantine: Arc<DeltaSink>,
    /// Whether this version writes to the quarantine table (it has checks, or drops bad rows).
    quarantines_rows: bool,
    /// `source.spool`, resolved: where compressed files are decompressed to.
    spool_dir: Option<PathBuf>,
}

/// Slices of replayed dropped rows name the batch they were dropped from under this scheme.
pub const DROPPED_SCHEME: &str = "sluice-dropped://";

/// Rows dropped from one file of a batch, to be stored in the quarantine table.
#[derive(Debug, Clone)]
struct DroppedRows {
    file: String,
    header: Option<Vec<String>>,
    rows: Vec<BadRow>,
}

/// A batch whose rows were dropped as bad input, as the quarantine table holds them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DroppedBatch {
    pub batch_id: String,
    pub file: String,
    pub rows: u64,
}

/// The batch that replays the rows dropped from `original`: its id depends only on the
/// pipeline and the original batch, so it is queued once however often it is asked for, and
/// replayed rows that a version publishes are published once.
pub fn replay_batch(pipeline: &str, original: &str, rows: u64) -> (BatchId, BatchSlice) {
    let mut slice = BatchSlice {
        path: format!("{DROPPED_SCHEME}{original}"),
        index: 0,
        byte_start: 0,
        byte_end: 0,
        row_start: 0,
        row_count: 0,
    };
    let id = BatchId::derive(pipeline, &slice.path, &slice);
    slice.row_count = rows;
    (id, slice)
}

impl Pipeline {
    /// Compiles a spec: resolves the input columns (declared, or inferred from the first file),
    /// plans the SQL against them and opens the sink. Errors point at the spec's lines.
    pub async fn compile(file: &SpecFile, version: i64) -> Result<Pipeline, EngineError> {
        let mut spec = file.spec.clone();
        let base_dir = file.base_dir();
        let format = file.format();
        let pattern = absolute_pattern(&spec.source.files, &base_dir);
        if spec.source.columns.is_none() {
            let first = glob::glob(&pattern)
                .ok()
                .and_then(|mut paths| paths.find_map(|p| p.ok()));
            let Some(first) = first else {
                return Err(file
                    .error_at(
                        &["source", "files"],
                        format!(
                            "no `columns` declared and no file matches {pattern:?} to infer them from: declare `columns` or land a file first"
                        ),
                    )
                    .into());
            };
            let first = first.display().to_string();
            let columns = InputSchema::infer(
                &first,
                format,
                Compression::of_file(spec.source.compression, &first),
                spec.source.csv.delimiter as u8,
            )
            .map_err(|e| file.error_at(&["source", "files"], format!("inferring columns: {e}")))?;
            spec.source.columns = Some(columns);
        }
        if spec.source.unknown_columns == source::UnknownColumns::Evolve
            && spec.source.dataset.is_none()
        {
            return Err(file
                .error_at(
                    &["source", "unknown_columns"],
                    "`evolve` proposes new versions of the source dataset: name one in source.dataset, or choose rescue, fail or ignore".into(),
                )
                .into());
        }
        let columns = spec.source.columns.as_ref().cloned().unwrap_or_default();
        let input =
            InputSchema::with_policy(&columns, &spec.source.required, spec.source.unknown_columns)
                .map_err(|e| file.error_at(&["source", "columns"], e))?;
        let versions = if spec.source.versions.is_empty() {
            None
        } else {
            Some(Arc::new(
                upgrade::SourceVersions::new(
                    &spec.source.versions,
                    &input,
                    spec.source.unknown_columns,
                )
                .map_err(|e| file.error_at(&["source", "dataset"], e))?,
            ))
        };
        let transform = SqlTransform::new(spec.transform.clone());
        let output = transform
            .output_schema(input.schema.clone())
            .await
            .map_err(|e| {
                let message = match e {
                    transform::QueryError::NotReadOnly(why) => format!(
                        "the transform must be one read-only query over the table `input`: {why}"
                    ),
                    transform::QueryError::Plan(e) => format!(
                        "the transform does not plan against the input columns ({}): {}",
                        column_list(&input.schema),
                        first_line(&e)
                    ),
                };
                file.error_at(&["transform"], message)
            })?;
        let url = sink::table_url(&spec.sink.delta, &base_dir)
            .map_err(|e| file.error_at(&["sink", "delta"], e.to_string()))?;
        for key in &spec.sink.key {
            if output.index_of(key).is_err() {
                return Err(file
                    .error_at(
                        &["sink", "key"],
                        format!(
                            "key column {key:?} is not in the transform's output ({})",
                            column_list(&output)
                        ),
                    )
                    .into());
            }
        }
        let checks = Checks::compile(&spec.checks, output.clone(), &base_dir)
            .await
            .map_err(|(i, message)| {
                let (line, column) =
                    spec::locate_list_item(&file.text, "checks", i).unwrap_or((0, 0));
                SpecError {
                    at: sluice_core::Located {
                        file: file.path.display().to_string(),
                        line,
                        column,
                    },
                    message,
                }
            })?;
        let sink = Arc::new(DeltaSink::new(url));
        let checks = checks.with_sink(sink.clone());
        let quarantines_rows = !checks.is_empty() || spec.source.bad_rows.drops();
        let location = spec
            .sink
            .quarantine
            .clone()
            .unwrap_or_else(|| format!("{}_quarantine", spec.sink.delta.trim_end_matches('/')));
        let url = sink::table_url(&location, &base_dir)
            .map_err(|e| file.error_at(&["sink", "quarantine"], e.to_string()))?;
        let quarantine = Arc::new(DeltaSink::new(url));
        let spool_dir = spec.source.spool.as_ref().map(|d| {
            let d = Path::new(d);
            if d.is_absolute() {
                d.to_path_buf()
            } else {
                base_dir.join(d)
            }
        });
        Ok(Pipeline {
            checks,
            quarantine,
            quarantines_rows,
            spool_dir,
            spec,
            version,
            base_dir,
            format,
            pattern,
            input,
            versions,
            output,
            transform,
            sink,
        })
    }

    /// Compiles a version stored in the state store (its resolved spec and base folder).
    pub async fn from_stored(
        spec_text: &str,
        base_dir: &str,
        version: i64,
    ) -> Result<Pipeline, EngineError> {
        let file = SpecFile::parse(
            &Path::new(base_dir).join("<stored spec>"),
            spec_text.to_string(),
        )?;
        Pipeline::compile(&file, version).await
    }

    pub fn name(&self) -> &str {
        &self.spec.pipeline
    }

    /// The spec with everything resolved (inferred columns written out), as stored in the store.
    pub fn resolved_spec(&self) -> String {
        self.spec.to_yaml()
    }

    /// Content hash of the resolved spec: the identity of a pipeline version.
    pub fn spec_hash(&self) -> String {
        hex::encode(Sha256::digest(self.resolved_spec().as_bytes()))
    }

    pub fn input_schema(&self) -> SchemaRef {
        self.input.schema.clone()
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    pub fn sink(&self) -> &Arc<DeltaSink> {
        &self.sink
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Settled landing files matching the source glob.
    pub fn discover(&self) -> Result<Vec<LandedFile>, String> {
        source::discover(&self.pattern, self.spec.source.settle)
    }

    /// Cuts a file into this pipeline's batches, with their stable ids.
    pub fn batches_of(&self, file: &LandedFile) -> Result<Vec<(BatchId, BatchSlice)>, SourceError> {
        let identity = format!("{}@{}", file.path, file.size);
        let cut = self.cut(file, &CutFrom::default())?;
        Ok(cut
            .slices
            .into_iter()
            .map(|s| (self.batch_id(&identity, &s), s))
            .collect())
    }

    /// How a landing file is compressed, under this version's `source.compression`.
    pub fn compression_of(&self, path: &str) -> Compression {
        Compression::of_file(self.spec.source.compression, path)
    }

    /// Cuts a file's content from `from` into this pipeline's slices. A compressed file is
    /// cut in its decompressed spool (one pass, see [`spool`]); its slices keep naming the
    /// compressed file, and its `end` is the compressed file's size (a compressed file that
    /// changes counts as replaced: its appended bytes are not text to cut on their own).
    pub fn cut(&self, file: &LandedFile, from: &CutFrom) -> Result<Cut, SourceError> {
        self.cut_streaming(file, from, &mut |_| true)
    }

    /// [`Pipeline::cut`], handing each full slice of a plain CSV or JSON Lines file to
    /// `on_slice` as soon as the scan finds its end (see [`source::slice_file_streaming`]): the
    /// same slices, the first of them long before a large file is scanned. Parquet needs no
    /// scan, and a compressed file is cut after its spool is written: their slices all come in
    /// the [`Cut`].
    pub fn cut_streaming(
        &self,
        file: &LandedFile,
        from: &CutFrom,
        on_slice: &mut dyn FnMut(&BatchSlice) -> bool,
    ) -> Result<Cut, SourceError> {
        let max_rows = self.spec.batch.max_rows;
        let compression = self.compression_of(&file.path);
        if compression == Compression::None {
            return source::slice_file_streaming(&file.path, self.format, max_rows, from, on_slice);
        }
        match spool::ensure(&file.path, compression, self.spool_dir.as_deref()) {
            Ok(spooled) => {
                let cut = source::slice_file_from(
                    &spooled.display().to_string(),
                    self.format,
                    max_rows,
                    from,
                )
                .map_err(|e| e.in_file(&file.path))?;
                Ok(Cut {
                    slices: cut
                        .slices
                        .into_iter()
                        .map(|s| BatchSlice {
                            path: file.path.clone(),
                            ..s
                        })
                        .collect(),
                    end: file.size,
                    rows: cut.rows,
                    // The scan read the spool, not the file the checksum is of.
                    checksum: None,
                })
            }
            // A broken stream is one batch that fails with the reason when it runs: held in
            // quarantine where `sluice status` shows it, and nothing of it published.
            Err(SourceError::BadData { .. }) => Ok(Cut {
                slices: vec![BatchSlice {
                    path: file.path.clone(),
                    index: 0,
                    byte_start: 0,
                    byte_end: 0,
                    row_start: 0,
                    row_count: 0,
                }],
                end: file.size,
                rows: 0,
                checksum: None,
            }),
            Err(e) => Err(e),
        }
    }

    /// A batch's stable id: from the pipeline, `identity` (what names this content of the
    /// file: its path and size, plus for an appended part the offset it starts at and the
    /// checksum of the bytes before it, or for a replacement the checksum of the new content)
    /// and the slice, so every discoverer, after any restart, cuts the same batches.
    pub fn batch_id(&self, identity: &str, slice: &BatchSlice) -> BatchId {
        BatchId::derive(self.name(), identity, slice)
    }

    /// The stable id of a batch grouping several small files: from the pipeline and each
    /// file's identity (as for [`Pipeline::batch_id`]) and slice, in the batch's order.
    pub fn group_id(&self, identities: &[String], slices: &[BatchSlice]) -> BatchId {
        BatchId::derive_group(
            self.name(),
            identities.iter().map(String::as_str).zip(slices),
        )
    }

    /// What the source does with a file that changed after it was taken in.
    pub fn on_change(&self) -> source::OnChange {
        self.spec.source.on_change
    }

    /// Runs one batch: read the slice, transform, commit exactly once.
    pub async fn run_batch(
        &self,
        batch_id: &BatchId,
        slice: &BatchSlice,
    ) -> Result<BatchResult, BatchError> {
        self.run_batch_with_history(batch_id, slice, &[]).await
    }

    /// How many recent batch row counts this version's checks want (see
    /// [`Pipeline::run_batch_with_history`]).
    pub fn history_wanted(&self) -> usize {
        self.checks.history_wanted()
    }

    /// [`Pipeline::run_batch`], with the row counts of the pipeline's latest published
    /// batches (newest first) for volume checks.
    pub async fn run_batch_with_history(
        &self,
        batch_id: &BatchId,
        slice: &BatchSlice,
        recent_rows: &[u64],
    ) -> Result<BatchResult, BatchError> {
        self.run_batch_superseding(batch_id, slice, recent_rows, Vec::new())
            .await
    }

    /// [`Pipeline::run_batch_with_history`], removing the data files `superseded` (a replaced
    /// file's earlier rows, as the store recorded them) in the commit that publishes the batch.
    pub async fn run_batch_superseding(
        &self,
        batch_id: &BatchId,
        slice: &BatchSlice,
        recent_rows: &[u64],
        superseded: Vec<String>,
    ) -> Result<BatchResult, BatchError> {
        let opts = RunOptions {
            recent_rows: recent_rows.to_vec(),
            superseded,
            ..RunOptions::default()
        };
        self.run_batch_with(batch_id, slice, opts).await
    }

    /// Runs one batch as `opts` say (its generation, volume history, files it supersedes).
    pub async fn run_batch_with(
        &self,
        batch_id: &BatchId,
        slice: &BatchSlice,
        opts: RunOptions,
    ) -> Result<BatchResult, BatchError> {
        let RunOptions {
            generation,
            recent_rows,
            superseded,
            grouped,
        } = opts;
        let started = Instant::now();
        let (rows_in, audit, dropped) = self
            .audit_slice(slice, &grouped, &recent_rows, None)
            .await?;
        let app_id = DeltaSink::app_id(self.name(), &batch_id.0);
        if (audit.hold.is_some() || !audit.failing_rows.is_empty())
            && self
                .sink
                .is_committed_at(&app_id, generation)
                .await
                .unwrap_or(false)
        {
            // An earlier run of this batch committed it (and its worker died before reporting,
            // or a racing run won): checks that read the table, like `unique` against it, now
            // see the batch's own rows. The batch is done; hold nothing.
            return Ok(BatchResult {
                rows_in,
                rows_out: 0,
                outcome: BatchOutcome::AlreadyCommitted,
                duration_ms: started.elapsed().as_millis() as i64,
                checks: Vec::new(),
                table_version: None,
                added: Vec::new(),
                removed: Vec::new(),
            }
            .found_earlier(self.added_earlier(&app_id).await));
        }
        if !audit.failing_rows.is_empty() || !dropped.is_empty() {
            // Before the commit: a row left out of the table is in the quarantine table first.
            self.write_quarantine(batch_id, &audit.failing_rows, &dropped)
                .await
                .map_err(|e| {
                    let mut err = BatchError::new(
                        ErrorKind::External,
                        format!(
                            "{}: storing rows failing checks or dropped as bad input: {e}",
                            batch_label(slice, &grouped)
                        ),
                        rows_in,
                    )
                    .or_outage(&*e);
                    err.checks = audit.results.clone();
                    err
                })?;
        }
        if let Some(reason) = audit.hold {
            let table = self.quarantine.url().to_string();
            let mut err = BatchError::new(
                ErrorKind::User,
                format!(
                    "{}: {reason}; nothing was published, failing rows are in {table}",
                    batch_label(slice, &grouped)
                ),
                rows_in,
            );
            err.checks = audit.results.into_iter().chain(audit.profile).collect();
            return Err(err);
        }
        let rows_out: i64 = audit.publish.iter().map(|b| b.num_rows() as i64).sum();
        let extras = CommitExtras {
            generation,
            metadata: vec![(
                "sluice".to_string(),
                serde_json::json!({
                    "pipeline": self.name(),
                    "version": self.version,
                    "batch": batch_id.0,
                    "generation": generation,
                    "removes": superseded.len(),
                }),
            )],
            removes: superseded,
            missing: MissingRemoves::Skip,
        };
        let commit = self
            .sink
            .commit_with(&app_id, audit.publish, extras)
            .await
            .map_err(|e| commit_failed(slice, rows_in, e))?;
        let (outcome, table_version, added) = match commit.outcome {
            CommitOutcome::Committed { version } => {
                (BatchOutcome::Committed, Some(version), commit.added)
            }
            CommitOutcome::AlreadyCommitted => {
                let (version, added) = self.added_earlier(&app_id).await.unwrap_or_default();
                (BatchOutcome::AlreadyCommitted, version, added)
            }
        };
        Ok(BatchResult {
            rows_in,
            rows_out,
            outcome,
            duration_ms: started.elapsed().as_millis() as i64,
            checks: audit.results.into_iter().chain(audit.profile).collect(),
            table_version,
            added,
            removed: commit.removed,
        })
    }

    /// What an earlier run's commit of this batch added, when it is among the table's newest
    /// commits (a re-run comes within minutes). Best effort: without it, a later replacement of
    /// the batch's file cannot remove those rows, so say so.
    async fn added_earlier(&self, app_id: &str) -> Option<(Option<i64>, Vec<String>)> {
        match self.sink.added_by(app_id, ADDED_LOOKBACK).await {
            Ok(Some((version, files))) => Some((Some(version), files)),
            Ok(None) => {
                tracing::warn!(
                    app_id,
                    "the earlier commit of this batch is not among the table's last {ADDED_LOOKBACK} commits: its data files are not recorded"
                );
                None
            }
            Err(e) => {
                tracing::warn!(app_id, error = %e, "looking up the data files of this batch's earlier commit failed");
                None
            }
        }
    }

    /// Reads, transforms and checks a slice (and the further files of a grouped batch):
    /// everything before publishing.
    ///
    /// Under a `route_key` split (`routed`), only the rows routed to `routed.1` are transformed
    /// and checked; rows dropped as bad input count on the stable side alone.
    async fn audit_slice(
        &self,
        slice: &BatchSlice,
        grouped: &[BatchSlice],
        recent_rows: &[u64],
        routed: Option<(&route::Route, route::Side)>,
    ) -> Result<(i64, checks::Audit, Vec<DroppedRows>), BatchError> {
        let mut read = self.read_batch(slice, grouped).await?;
        if let Some((r, side)) = routed {
            let dropped = read.dropped_rows();
            read.batch = r.rows_of(&read.batch, side).map_err(|e| {
                BatchError::new(
                    ErrorKind::User,
                    format!("{}: {e}", batch_label(slice, grouped)),
                    read.records as i64,
                )
            })?;
            if side == route::Side::Candidate {
                read.dropped.clear();
                read.records = read.batch.num_rows() as u64;
            } else {
                read.records = read.batch.num_rows() as u64 + dropped;
            }
        }
        let rows_in = read.records as i64;
        let (bad_rows, dropped) = self.judge_bad_rows(slice, grouped, &read)?;
        let input = read.batch;
        let output = self.transform.run(input).await.map_err(|e| {
            BatchError::new(
                datafusion_error_kind(&e),
                format!(
                    "{}: the transform failed on this batch: {}",
                    batch_label(slice, grouped),
                    first_line(&e)
                ),
                rows_in,
            )
        })?;
        let schema = output
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| self.output.clone());
        let audit = self
            .checks
            .audit(output, schema, recent_rows)
            .await
            .map_err(|e| {
                BatchError::new(
                    datafusion_error_kind(&e),
                    format!(
                        "{}: running the checks failed: {}",
                        batch_label(slice, grouped),
                        first_line(&e)
                    ),
                    rows_in,
                )
            })?;
        let mut audit = audit;
        audit.results.extend(bad_rows);
        Ok((rows_in, audit, dropped))
    }

    /// Under `bad_rows: drop`: the batch's `bad_rows` measurement and the rows to store, or
    /// the batch held when more rows failed than `error_if` allows.
    fn judge_bad_rows(
        &self,
        slice: &BatchSlice,
        grouped: &[BatchSlice],
        read: &BatchRead,
    ) -> Result<(Option<CheckResult>, Vec<DroppedRows>), BatchError> {
        let policy = self.spec.source.bad_rows;
        if !policy.drops() {
            return Ok((None, Vec::new()));
        }
        let failing = read.dropped_rows();
        let limit = policy.limit();
        let held = limit.exceeded(failing, read.records);
        let first = read
            .dropped
            .iter()
            .find_map(|d| d.rows.first().map(|b| (&d.file, b)))
            .map(|(file, b)| format!("first {file}:{}: {}", b.line, b.reason))
            .unwrap_or_default();
        let result = CheckResult {
            name: checks::BAD_ROWS.to_string(),
            kind: checks::BAD_ROWS.to_string(),
            level: match (held, failing) {
                (true, _) => checks::Level::Error,
                (false, 0) => checks::Level::Pass,
                (false, _) => checks::Level::Warn,
            },
            considered: read.records,
            failing,
            dropped: if held { 0 } else { failing },
            detail: if failing == 0 {
                String::new()
            } else {
                format!(
                    "{failing} of {} rows do not parse or fit ({first})",
                    read.records
                )
            },
        };
        if held {
            let mut err = BatchError::new(
                ErrorKind::User,
                format!(
                    "{}: {failing} of {} rows do not parse or fit, more than source.bad_rows.error_if \"{}\" allows ({first}); the batch is held and nothing was published: fix the file or the spec, then `sluice retry` it",
                    batch_label(slice, grouped),
                    read.records,
                    String::from(limit)
                ),
                read.records as i64,
            );
            err.checks = vec![result];
            return Err(err);
        }
        Ok((Some(result), read.dropped.clone()))
    }

    /// Runs a batch through this version without publishing anything: what `verify pre` uses
    /// to try a candidate on recent data. `outcome` is `Quarantined` when a check would hold it.
    pub async fn dry_run(&self, slice: &BatchSlice) -> Result<BatchResult, BatchError> {
        let started = Instant::now();
        let (rows_in, audit, _) = self.audit_slice(slice, &[], &[], None).await?;
        Ok(BatchResult {
            table_version: None,
            added: Vec::new(),
            removed: Vec::new(),
            rows_in,
            rows_out: audit.publish.iter().map(|b| b.num_rows() as i64).sum(),
            outcome: if audit.hold.is_some() {
                BatchOutcome::Quarantined
            } else {
                BatchOutcome::Committed
            },
            duration_ms: started.elapsed().as_millis() as i64,
            checks: audit.results,
        })
    }

    /// Stores rows held back by checks in the quarantine table, once per batch and version.
    async fn write_quarantine(
        &self,
        batch_id: &BatchId,
        rows: &[(String, String, arrow::array::RecordBatch)],
        dropped: &[DroppedRows],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let q = &self.quarantine;
        let mut records = Vec::new();
        if !rows.is_empty() {
            records.push(checks::quarantine_records(
                self.name(),
                self.version,
                &batch_id.0,
                rows,
            )?);
        }
        for d in dropped {
            records.push(checks::bad_row_records(
                self.name(),
                self.version,
                &batch_id.0,
                &d.file,
                d.header.as_deref(),
                &d.rows,
            )?);
        }
        let app_id = format!(
            "sluice-quarantine/{}/{}/v{}",
            self.name(),
            batch_id.0,
            self.version
        );
        q.commit(&app_id, records).await?;
        Ok(())
    }

    /// The quarantine table of rows held back by checks or dropped as bad input, if this
    /// version writes one.
    pub fn quarantine_table(&self) -> Option<&Arc<DeltaSink>> {
        self.quarantines_rows.then_some(&self.quarantine)
    }

    /// The rows dropped from `batch` as bad input, in file order: those the latest version
    /// that dropped rows of it stored.
    pub async fn dropped_rows(&self, batch: &str) -> Result<Vec<checks::QuarantinedRow>, String> {
        let all = self
            .quarantine
            .read_all()
            .await
            .map_err(|e| e.to_string())?;
        let mut rows: Vec<_> = checks::read_quarantined(&all)?
            .into_iter()
            .filter(|r| r.check == checks::BAD_ROWS && r.batch_id == batch)
            .collect();
        let latest = rows.iter().map(|r| r.version).max().unwrap_or(0);
        rows.retain(|r| r.version == latest);
        rows.sort_by_key(|r| r.line);
        Ok(rows)
    }

    /// Every batch with rows dropped as bad input, with how many, from the quarantine table.
    pub async fn dropped_batches(&self) -> Result<Vec<DroppedBatch>, String> {
        let all = self
            .quarantine
            .read_all()
            .await
            .map_err(|e| e.to_string())?;
        let mut by_batch: std::collections::BTreeMap<String, (i64, String, u64)> =
            Default::default();
        for r in checks::read_quarantined(&all)? {
            if r.check != checks::BAD_ROWS {
                continue;
            }
            let e = by_batch.entry(r.batch_id.clone()).or_insert((
                r.version,
                r.file.clone().unwrap_or_default(),
                0,
            ));
            if r.version > e.0 {
                *e = (r.version, r.file.clone().unwrap_or_default(), 0);
            }
            if r.version == e.0 {
                e.2 += 1;
            }
        }
        Ok(by_batch
            .into_iter()
            .map(|(batch_id, (_, file, rows))| DroppedBatch {
                batch_id,
                file,
                rows,
            })
            .collect())
    }

    /// Reads a slice on the blocking pool (file I/O and parsing).
    pub async fn read(&self, slice: &BatchSlice) -> Result<arrow::array::RecordBatch, BatchError> {
        self.read_batch(slice, &[]).await.map(|r| r.batch)
    }

    /// Reads a batch's input: a slice (of a plain file, a compressed file's spool, or replayed
    /// dropped rows) and the further files of a grouped batch, in order, as one batch, leaving
    /// out bad rows under `bad_rows: drop`. A file that cannot be read fails the batch with
    /// that file's name and line.
    async fn read_batch(
        &self,
        slice: &BatchSlice,
        grouped: &[BatchSlice],
    ) -> Result<BatchRead, BatchError> {
        let format = self.format;
        let input = self.input.clone();
        let delimiter = self.spec.source.csv.delimiter as u8;
        let drop = self.spec.source.bad_rows.drops();
        let reads = if let Some(original) = slice.path.strip_prefix(DROPPED_SCHEME) {
            let rows = self.dropped_rows(original).await.map_err(|e| {
                BatchError::new(
                    ErrorKind::External,
                    format!("reading the rows dropped from {original}: {e}"),
                    0,
                )
            })?;
            if rows.is_empty() {
                return Err(BatchError::new(
                    ErrorKind::User,
                    format!(
                        "no rows dropped from batch {original} are in {}: nothing to replay",
                        self.quarantine.url()
                    ),
                    0,
                ));
            }
            // A grouped batch's rows came from several files: each run of one file is read
            // with its own header.
            let mut runs: Vec<ReplayRun> = Vec::new();
            for r in rows {
                let file = r.file.clone().unwrap_or_default();
                let row = (r.line.unwrap_or(0).max(0) as u64, r.row);
                match runs.last_mut() {
                    Some((f, h, listed)) if *f == file && *h == r.header => listed.push(row),
                    _ => runs.push((file, r.header, vec![row])),
                }
            }
            tokio::task::spawn_blocking(sluice_core::usage::carried(move || {
                runs.into_iter()
                    .map(|(file, header, listed)| {
                        let rec = TextRecords::replay(&file, header, &listed);
                        source::read_records(
                            &rec,
                            format,
                            &input,
                            delimiter,
                            drop,
                            listed.len().max(1),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
            }))
            .await
        } else {
            let slices: Vec<(BatchSlice, Compression)> = std::iter::once(slice)
                .chain(grouped)
                .map(|s| (s.clone(), self.compression_of(&s.path)))
                .collect();
            let versions = self.versions.clone();
            let spool_dir = self.spool_dir.clone();
            tokio::task::spawn_blocking(sluice_core::usage::carried(move || {
                slices
                    .into_iter()
                    .map(|(slice, compression)| {
                        let original = slice.path.clone();
                        let data = match compression {
                            Compression::None => slice,
                            c => BatchSlice {
                                path: spool::ensure(&original, c, spool_dir.as_deref())
                                    .map_err(|e| e.in_file(&original))?
                                    .display()
                                    .to_string(),
                                ..slice
                            },
                        };
                        match &versions {
                            Some(v) => v.read(&data, format, delimiter, drop).map(|(r, _)| r),
                            None => source::read_slice_with(&data, format, &input, delimiter, drop),
                        }
                        .map(|r| SliceRead {
                            file: original.clone(),
                            ..r
                        })
                        .map_err(|e| e.in_file(&original))
                    })
                    .collect::<Result<Vec<_>, _>>()
            }))
            .await
        };
        let reads = reads.map_err(|e| {
            BatchError::new(ErrorKind::Internal, format!("reader task failed: {e}"), 0)
        })?;
        let reads = reads.map_err(|e| {
            let message = e.to_string();
            let new_columns = match &e {
                SourceError::NewColumns { columns, .. } => columns.clone(),
                _ => Vec::new(),
            };
            let e = EngineError::Source(e);
            let mut err = BatchError::new(e.kind(), message, 0).or_outage(&e);
            err.new_columns = new_columns;
            err
        })?;
        BatchRead::of(reads).map_err(|e| {
            BatchError::new(
                ErrorKind::Internal,
                format!("{}: joining its files' rows: {e}", slice_label(slice)),
                0,
            )
        })
    }
}

/// Dropped rows of one file being replayed: the file, its CSV header, each row's line and text.
type ReplayRun = (String, Option<Vec<String>>, Vec<(u64, String)>);

/// A batch's input as read: the rows of every file it holds, in order, as one batch.
struct BatchRead {
    batch: arrow::array::RecordBatch,
    /// Records read, good and bad.
    records: u64,
    /// Rows left out under `bad_rows: drop`, per file, in the batch's order.
    dropped: Vec<DroppedRows>,
}

impl BatchRead {
    fn of(reads: Vec<SliceRead>) -> Result<BatchRead, arrow::error::ArrowError> {
        let records = reads.iter().map(|r| r.records).sum();
        let mut dropped = Vec::new();
        let mut batches = Vec::with_capacity(reads.len());
        for r in reads {
            if !r.dropped.is_empty() {
                dropped.push(DroppedRows {
                    file: r.file,
                    header: r.header,
                    rows: r.dropped,
                });
            }
            batches.push(r.batch);
        }
        let batch = match batches.as_slice() {
            [] => {
                return Err(arrow::error::ArrowError::InvalidArgumentError(
                    "the batch holds no file".into(),
                ));
            }
            [_] => batches.remove(0),
            [first, ..] => arrow::compute::concat_batches(&first.schema(), &batches)?,
        };
        Ok(BatchRead {
            batch,
            records,
            dropped,
        })
    }

    fn dropped_rows(&self) -> u64 {
        self.dropped.iter().map(|d| d.rows.len() as u64).sum()
    }
}

/// Which errors of DataFusion are the data's fault (quarantine) and which the world's (retry).
fn datafusion_error_kind(e: &DataFusionError) -> ErrorKind {
    match e {
        DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::ResourcesExhausted(_) => ErrorKind::External,
        DataFusionError::Context(_, inner) => datafusion_error_kind(inner),
        DataFusionError::Internal(_) => ErrorKind::Internal,
        _ => ErrorKind::User,
    }
}

/// DataFusion messages can span lines (plans, hints); the first line says what went wrong.
pub(crate) fn first_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or_default().to_string()
}

fn column_list(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a batch is called in its errors: its slice, and how many more files a grouped batch
/// holds (each file's own errors name the file and line).
fn batch_label(slice: &BatchSlice, grouped: &[BatchSlice]) -> String {
    match grouped {
        [] => slice_label(slice),
        [.., last] => format!(
            "{} and {} more file(s) to {}",
            slice_label(slice),
            grouped.len(),
            last.path
        ),
    }
}

fn slice_label(slice: &BatchSlice) -> String {
    format!(
        "{} rows {}..{}",
        slice.path,
        slice.row_start + 1,
        slice.row_start + slice.row_count
    )
}

fn absolute_pattern(files: &str, base_dir: &Path) -> String {
    if Path::new(files).is_absolute() {
        files.to_string()
    } else {
        base_dir.join(files).display().to_string()
    }
}
