//! `deploy.route_key`: one batch's rows split between two versions of a pipeline (stable and
//! candidate) by a stable hash of one input column, both parts committed in one Delta commit
//! under the batch's marker.
//!
//! A row's key is the text of its `route_key` value (Arrow's cast to UTF-8: a string's bytes,
//! an integer's decimal digits), so a key routes the same whether a version reads the column
//! as a number or as a string. Its bucket is `XxHash64(seed 0, key bytes) % 100`; the row goes
//! to the candidate when the bucket is below the candidate's percentage. XxHash64 is specified
//! byte for byte, so the bucket is the same on every machine, process and Rust version, and a
//! key stays on one side for as long as the weight does not change (raising the weight only
//! moves keys from stable to candidate). A null key goes to stable.
//!
//! The commit records which data files each version wrote (`commitInfo.sluice.parts`, see the
//! `sink` module docs), so a repair of the candidate removes the whole commit's files and
//! re-runs the whole batch under stable at the next generation.

use std::time::Instant;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::DataType;
use sluice_core::{BatchId, BatchOutcome, BatchSlice, ErrorKind};

use crate::sink::{CommitExtras, CommitOutcome, DeltaSink, MissingRemoves, Part};
use crate::{BatchError, BatchResult, Pipeline, RunOptions, batch_label, commit_failed};

/// The seed of the route hash. Changing it moves almost every key to the other side.
pub const ROUTE_SEED: u64 = 0;

/// Which version a row goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Stable,
    Candidate,
}

/// A `route_key` split: the input column and the percentage of keys the candidate gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    column: String,
    candidate_percent: u8,
}

impl Route {
    /// A split on `column` giving the candidate `candidate_percent` (0..=100) of the keys.
    pub fn new(column: &str, candidate_percent: u8) -> Result<Route, String> {
        if candidate_percent > 100 {
            return Err(format!(
                "route_key weight {candidate_percent}% is not a percentage: use 0 to 100"
            ));
        }
        if column.trim().is_empty() {
            return Err("route_key names no column".into());
        }
        Ok(Route {
            column: column.to_string(),
            candidate_percent,
        })
    }

    pub fn column(&self) -> &str {
        &self.column
    }

    pub fn candidate_percent(&self) -> u8 {
        self.candidate_percent
    }

    /// A key's bucket, 0..100: `XxHash64(ROUTE_SEED, key) % 100`.
    pub fn bucket(key: &[u8]) -> u8 {
        (twox_hash::XxHash64::oneshot(ROUTE_SEED, key) % 100) as u8
    }

    /// The side of a key (`None`: a null value, which goes to stable).
    pub fn side_of(&self, key: Option<&[u8]>) -> Side {
        match key {
            Some(k) if Route::bucket(k) < self.candidate_percent => Side::Candidate,
            _ => Side::Stable,
        }
    }

    /// The side of each row of `batch` (read with a version's input columns).
    pub fn sides(&self, batch: &RecordBatch) -> Result<Vec<Side>, String> {
        let schema = batch.schema();
        let Some((i, _)) = schema.column_with_name(&self.column) else {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(format!(
                "deploy.route_key column {:?} is not among the input columns ({}); name one of them",
                self.column,
                names.join(", ")
            ));
        };
        let text = arrow::compute::cast(batch.column(i), &DataType::Utf8).map_err(|e| {
            format!(
                "deploy.route_key column {:?} cannot be read as text to route by: {e}",
                self.column
            )
        })?;
        let text = text.as_string::<i32>();
        Ok((0..text.len())
            .map(|r| self.side_of((!text.is_null(r)).then(|| text.value(r).as_bytes())))
            .collect())
    }

    /// The rows of `batch` that go to `side`.
    pub(crate) fn rows_of(&self, batch: &RecordBatch, side: Side) -> Result<RecordBatch, String> {
        let mask: BooleanArray = self
            .sides(batch)?
            .into_iter()
            .map(|s| Some(s == side))
            .collect();
        arrow::compute::filter_record_batch(batch, &mask).map_err(|e| e.to_string())
    }
}

/// What a split run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitResult {
    pub outcome: BatchOutcome,
    /// The table version of the commit (`None`: already committed and not found in the log's
    /// recent commits).
    pub table_version: Option<i64>,
    /// Every data file of the batch's commit (both versions').
    pub added: Vec<String>,
    /// Per version: its rows, checks and (when this run committed) the files it wrote.
    pub stable: BatchResult,
    pub candidate: BatchResult,
}

/// Runs one batch split by `route` between `stable` and `candidate` (two versions of one
/// pipeline writing one table): each reads the slice and transforms and checks the rows routed
/// to it; both outputs are committed in one commit under the batch's marker at
/// `opts.generation`, exactly once. An error-level check failing on either side holds the
/// whole batch (nothing is published). Volume checks see no history here: a side's share of a
/// batch is not comparable with whole batches.
pub async fn run_batch_split(
    stable: &Pipeline,
    candidate: &Pipeline,
    route: &Route,
    batch_id: &BatchId,
    slice: &BatchSlice,
    opts: RunOptions,
) -> Result<SplitResult, BatchError> {
    let started = Instant::now();
    if stable.name() != candidate.name() || stable.sink().url() != candidate.sink().url() {
        return Err(BatchError::new(
            ErrorKind::User,
            format!(
                "a route_key split runs two versions of one pipeline into one table, not {:?} ({}) and {:?} ({})",
                stable.name(),
                stable.sink().url(),
                candidate.name(),
                candidate.sink().url()
            ),
            0,
        ));
    }
    let RunOptions {
        generation,
        superseded,
        grouped,
        ..
    } = opts;
    let sides = [(stable, Side::Stable), (candidate, Side::Candidate)];
    let mut audits = Vec::new();
    for (p, side) in sides {
        audits.push(
            p.audit_slice(slice, &grouped, &[], Some((route, side)))
                .await?,
        );
    }
    let rows_in: i64 = audits.iter().map(|a| a.0).sum();
    let app_id = DeltaSink::app_id(stable.name(), &batch_id.0);
    let sink = stable.sink();
    let side_result = |i: usize, outcome, version, added: Vec<String>| {
        let (rows_in, audit, _) = &audits[i];
        BatchResult {
            rows_in: *rows_in,
            rows_out: audit.publish.iter().map(|b| b.num_rows() as i64).sum(),
            outcome,
            duration_ms: started.elapsed().as_millis() as i64,
            checks: audit
                .results
                .iter()
                .chain(&audit.profile)
                .cloned()
                .collect(),
            table_version: version,
            added,
            removed: Vec::new(),
        }
    };
    let flagged = audits
        .iter()
        .any(|(_, a, _)| a.hold.is_some() || !a.failing_rows.is_empty());
    if flagged
        && sink
            .is_committed_at(&app_id, generation)
            .await
            .unwrap_or(false)
    {
        // As in `run_batch_with`: an earlier run committed the batch; hold nothing.
        let (version, added) = stable.added_earlier(&app_id).await.unwrap_or_default();
        return Ok(SplitResult {
            outcome: BatchOutcome::AlreadyCommitted,
            table_version: version,
            added,
            stable: side_result(0, BatchOutcome::AlreadyCommitted, version, vec![]),
            candidate: side_result(1, BatchOutcome::AlreadyCommitted, version, vec![]),
        });
    }
    for (i, (p, _)) in sides.into_iter().enumerate() {
        let (rows, audit, dropped) = &audits[i];
        if audit.failing_rows.is_empty() && dropped.is_empty() {
            continue;
        }
        p.write_quarantine(batch_id, &audit.failing_rows, dropped)
            .await
            .map_err(|e| {
                BatchError::new(
                    ErrorKind::External,
                    format!(
                        "{}: storing version {}'s rows failing checks or dropped as bad input: {e}",
                        batch_label(slice, &grouped),
                        p.version
                    ),
                    *rows,
                )
                .or_outage(&*e)
            })?;
    }
    for (i, (p, _)) in sides.into_iter().enumerate() {
        let (_, audit, _) = &audits[i];
        if let Some(reason) = &audit.hold {
            let mut err = BatchError::new(
                ErrorKind::User,
                format!(
                    "{}: version {} (its share of the route_key split): {reason}; nothing was published, failing rows are in {}",
                    batch_label(slice, &grouped),
                    p.version,
                    p.quarantine.url()
                ),
                rows_in,
            );
            err.checks = audits
                .iter()
                .flat_map(|(_, a, _)| a.results.iter().chain(&a.profile).cloned())
                .collect();
            return Err(err);
        }
    }
    let parts: Vec<Part> = sides
        .iter()
        .zip(&audits)
        .map(|((p, _), (_, a, _))| Part {
            version: p.version,
            batches: a.publish.clone(),
        })
        .collect();
    let extras = CommitExtras {
        generation,
        metadata: vec![(
            "sluice".to_string(),
            serde_json::json!({
                "pipeline": stable.name(),
                "version": stable.version,
                "batch": batch_id.0,
                "generation": generation,
                "removes": superseded.len(),
                "route_key": route.column(),
                "candidate_percent": route.candidate_percent(),
            }),
        )],
        removes: superseded,
        missing: MissingRemoves::Skip,
    };
    let commit = sink
        .commit_split(&app_id, parts, extras)
        .await
        .map_err(|e| commit_failed(slice, rows_in, e))?;
    let (outcome, version, added, mut by_part) = match commit.outcome {
        CommitOutcome::Committed { version } => (
            BatchOutcome::Committed,
            Some(version),
            commit.added,
            commit.parts,
        ),
        CommitOutcome::AlreadyCommitted => {
            let (version, added) = stable.added_earlier(&app_id).await.unwrap_or_default();
            (BatchOutcome::AlreadyCommitted, version, added, Vec::new())
        }
    };
    by_part.resize(2, Vec::new());
    let candidate_files = by_part.pop().unwrap_or_default();
    let stable_files = by_part.pop().unwrap_or_default();
    let mut stable_result = side_result(0, outcome, version, stable_files);
    stable_result.removed = commit.removed;
    Ok(SplitResult {
        outcome,
        table_version: version,
        added,
        stable: stable_result,
        candidate: side_result(1, outcome, version, candidate_files),
    })
}
