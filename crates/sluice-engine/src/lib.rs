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
pub mod sink;
pub mod source;
pub mod spec;
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
use crate::sink::{CommitOutcome, DeltaSink, SinkError};
use crate::source::{InputSchema, LandedFile, SourceError};
use crate::spec::{Format, PipelineSpec, SpecError, SpecFile};
use crate::transform::SqlTransform;

pub use arrow;
pub use datafusion;
pub use deltalake;

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

/// The measurements of a successful run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    pub rows_in: i64,
    pub rows_out: i64,
    pub outcome: BatchOutcome,
    pub duration_ms: i64,
    pub checks: Vec<CheckResult>,
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
    /// Where rows held back by checks go; present when the pipeline has checks.
    quarantine: Option<Arc<DeltaSink>>,
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
            let columns = InputSchema::infer(
                &first.display().to_string(),
                format,
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
        let quarantine = if checks.is_empty() {
            None
        } else {
            let location =
                spec.sink.quarantine.clone().unwrap_or_else(|| {
                    format!("{}_quarantine", spec.sink.delta.trim_end_matches('/'))
                });
            let url = sink::table_url(&location, &base_dir)
                .map_err(|e| file.error_at(&["sink", "quarantine"], e.to_string()))?;
            Some(Arc::new(DeltaSink::new(url)))
        };
        Ok(Pipeline {
            checks,
            quarantine,
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
        let slices = source::slice_file(&file.path, self.format, self.spec.batch.max_rows)?;
        let identity = format!("{}@{}", file.path, file.size);
        Ok(slices
            .into_iter()
            .map(|s| (BatchId::derive(self.name(), &identity, &s), s))
            .collect())
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
        let started = Instant::now();
        let (rows_in, audit) = self.audit_slice(slice, recent_rows).await?;
        let app_id = DeltaSink::app_id(self.name(), &batch_id.0);
        if (audit.hold.is_some() || !audit.failing_rows.is_empty())
            && self.sink.is_committed(&app_id).await.unwrap_or(false)
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
            });
        }
        if !audit.failing_rows.is_empty() {
            self.write_quarantine(batch_id, &audit.failing_rows)
                .await
                .map_err(|e| {
                    let mut err = BatchError::new(
                        ErrorKind::External,
                        format!("{}: storing rows failing checks: {e}", slice_label(slice)),
                        rows_in,
                    )
                    .or_outage(&*e);
                    err.checks = audit.results.clone();
                    err
                })?;
        }
        if let Some(reason) = audit.hold {
            let table = self
                .quarantine
                .as_ref()
                .map(|q| q.url().to_string())
                .unwrap_or_default();
            let mut err = BatchError::new(
                ErrorKind::User,
                format!(
                    "{}: {reason}; nothing was published, failing rows are in {table}",
                    slice_label(slice)
                ),
                rows_in,
            );
            err.checks = audit.results.into_iter().chain(audit.profile).collect();
            return Err(err);
        }
        let rows_out: i64 = audit.publish.iter().map(|b| b.num_rows() as i64).sum();
        let outcome = self
            .sink
            .commit(&app_id, audit.publish)
            .await
            .map_err(|e| {
                let message = format!("{}: {e}", slice_label(slice));
                let e = EngineError::Sink(e);
                BatchError::new(e.kind(), message, rows_in).or_outage(&e)
            })?;
        Ok(BatchResult {
            rows_in,
            rows_out,
            outcome: match outcome {
                CommitOutcome::Committed { .. } => BatchOutcome::Committed,
                CommitOutcome::AlreadyCommitted => BatchOutcome::AlreadyCommitted,
            },
            duration_ms: started.elapsed().as_millis() as i64,
            checks: audit.results.into_iter().chain(audit.profile).collect(),
        })
    }

    /// Reads, transforms and checks a slice: everything before publishing.
    async fn audit_slice(
        &self,
        slice: &BatchSlice,
        recent_rows: &[u64],
    ) -> Result<(i64, checks::Audit), BatchError> {
        let input = self.read(slice).await?;
        let rows_in = input.num_rows() as i64;
        let output = self.transform.run(input).await.map_err(|e| {
            BatchError::new(
                datafusion_error_kind(&e),
                format!(
                    "{}: the transform failed on this batch: {}",
                    slice_label(slice),
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
                        slice_label(slice),
                        first_line(&e)
                    ),
                    rows_in,
                )
            })?;
        Ok((rows_in, audit))
    }

    /// Runs a batch through this version without publishing anything: what `verify pre` uses
    /// to try a candidate on recent data. `outcome` is `Quarantined` when a check would hold it.
    pub async fn dry_run(&self, slice: &BatchSlice) -> Result<BatchResult, BatchError> {
        let started = Instant::now();
        let (rows_in, audit) = self.audit_slice(slice, &[]).await?;
        Ok(BatchResult {
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
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let Some(q) = &self.quarantine else {
            return Ok(());
        };
        let record = checks::quarantine_records(self.name(), self.version, &batch_id.0, rows)?;
        let app_id = format!(
            "sluice-quarantine/{}/{}/v{}",
            self.name(),
            batch_id.0,
            self.version
        );
        q.commit(&app_id, vec![record]).await?;
        Ok(())
    }

    /// The quarantine table of rows held back by checks, if the pipeline has checks.
    pub fn quarantine_table(&self) -> Option<&Arc<DeltaSink>> {
        self.quarantine.as_ref()
    }

    /// Reads a slice on the blocking pool (file I/O and parsing).
    pub async fn read(&self, slice: &BatchSlice) -> Result<arrow::array::RecordBatch, BatchError> {
        let slice = slice.clone();
        let format = self.format;
        let input = self.input.clone();
        let versions = self.versions.clone();
        let delimiter = self.spec.source.csv.delimiter as u8;
        let read = tokio::task::spawn_blocking(move || match versions {
            Some(v) => v.read(&slice, format, delimiter).map(|(b, _)| b),
            None => source::read_slice(&slice, format, &input, delimiter),
        })
        .await
        .map_err(|e| BatchError::new(ErrorKind::Internal, format!("reader task failed: {e}"), 0))?;
        read.map_err(|e| {
            let message = e.to_string();
            let new_columns = match &e {
                SourceError::NewColumns { columns, .. } => columns.clone(),
                _ => Vec::new(),
            };
            let e = EngineError::Source(e);
            let mut err = BatchError::new(e.kind(), message, 0).or_outage(&e);
            err.new_columns = new_columns;
            err
        })
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
