//! Pipelines as resources: each one with its queue, its versions and their specs, its batches
//! a page at a time, one batch with its runs and check results, and its measurements over a
//! window. What the HTTP API (and the dashboard after it) reads.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{BatchId, BatchOutcome, TaskState};
use sluice_store::{
    BatchPage, BatchQuery, BatchRun, CheckRecord, PipelineStatus, Store, TaskRecord,
};

use crate::error::{AppError, During, Result};
use crate::status::throughput;

/// The most batches one page holds.
pub const MAX_PAGE: i64 = 1_000;
/// A page's size when the caller does not say.
pub const DEFAULT_PAGE: i64 = 100;
/// The longest window measurements are summed over.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// One pipeline's queue, its throughput, and why it is failed, if it is.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PipelineSummary {
    #[serde(flatten)]
    pub status: PipelineStatus,
    pub rows_per_second: Option<f64>,
    /// Why the pipeline is failed (`source.on_change: fail` and a file changed).
    pub failed: Option<String>,
}

/// A pipeline version without its spec text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionSummary {
    pub version: i64,
    pub spec_hash: String,
    pub created_at: i64,
    /// The version new batches are pinned to.
    pub current: bool,
}

/// One pipeline: its summary and every version, oldest first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PipelineDetail {
    #[serde(flatten)]
    pub summary: PipelineSummary,
    pub versions: Vec<VersionSummary>,
}

/// The spec of one version, as registered (datasets resolved and pinned).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionSpec {
    pub pipeline: String,
    pub version: i64,
    pub spec_hash: String,
    pub created_at: i64,
    pub spec: String,
}

/// Every pipeline with its queue.
pub async fn list(store: &Arc<dyn Store>) -> Result<Vec<PipelineSummary>> {
    let statuses = store.status().await.during("reading the pipelines")?;
    let mut out = Vec::with_capacity(statuses.len());
    for status in statuses {
        out.push(summary(store, status).await?);
    }
    Ok(out)
}

async fn summary(store: &Arc<dyn Store>, status: PipelineStatus) -> Result<PipelineSummary> {
    let failed = store
        .changed_files(&status.pipeline)
        .await
        .during("reading the files that changed")?
        .into_iter()
        .filter_map(|f| f.change)
        .find(|c| c.action == "failed")
        .map(|c| {
            format!(
                "{} since it was taken in (source.on_change: fail)",
                c.detail
            )
        });
    Ok(PipelineSummary {
        rows_per_second: throughput(&status),
        failed,
        status,
    })
}

fn no_pipeline(name: &str) -> AppError {
    AppError::NotFound(format!(
        "no pipeline {name:?} in the store: list them at /api/v1/pipelines or with `sluice status`"
    ))
}

/// One pipeline with its versions.
pub async fn detail(store: &Arc<dyn Store>, name: &str) -> Result<PipelineDetail> {
    let Some(record) = store.pipeline(name).await.during("reading the pipeline")? else {
        return Err(no_pipeline(name));
    };
    let status = crate::pipeline_status(store, name)
        .await
        .during("reading the pipeline's queue")?;
    // A pipeline without batches has no status row: its name and version are still known.
    let status = PipelineStatus {
        pipeline: record.name.clone(),
        current_version: record.current_version,
        ..status
    };
    let versions = store
        .pipeline_versions(name)
        .await
        .during("reading the pipeline's versions")?
        .into_iter()
        .map(|v| VersionSummary {
            current: v.version == record.current_version,
            version: v.version,
            spec_hash: v.spec_hash,
            created_at: v.created_at,
        })
        .collect();
    Ok(PipelineDetail {
        summary: summary(store, status).await?,
        versions,
    })
}

/// The spec of `name@version`.
pub async fn spec(store: &Arc<dyn Store>, name: &str, version: i64) -> Result<VersionSpec> {
    match store
        .pipeline_version(name, version)
        .await
        .during("reading the pipeline version")?
    {
        Some(v) => Ok(VersionSpec {
            pipeline: v.pipeline,
            version: v.version,
            spec_hash: v.spec_hash,
            created_at: v.created_at,
            spec: v.spec,
        }),
        None if store
            .pipeline(name)
            .await
            .during("reading the pipeline")?
            .is_none() =>
        {
            Err(no_pipeline(name))
        }
        None => Err(AppError::NotFound(format!(
            "pipeline {name} has no version {version}: its versions are listed at /api/v1/pipelines/{name}"
        ))),
    }
}

/// Which of a pipeline's batches to list; see [`batches`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchFilter {
    pub state: Option<TaskState>,
    pub version: Option<i64>,
    /// The cursor a previous page returned as `next`.
    pub after: Option<i64>,
    /// At most this many ([`DEFAULT_PAGE`] if not given; 1 to [`MAX_PAGE`]).
    pub limit: Option<i64>,
}

/// A page of a pipeline's batches, in queue order.
pub async fn batches(
    store: &Arc<dyn Store>,
    name: &str,
    filter: &BatchFilter,
) -> Result<BatchPage> {
    let limit = filter.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(AppError::User(format!(
            "limit {limit} is out of range: ask for 1 to {MAX_PAGE} batches a page, and follow `next` for more"
        )));
    }
    if filter.after.is_some_and(|a| a < 0) {
        return Err(AppError::User(
            "after must be a cursor a previous page returned as `next`".into(),
        ));
    }
    if store
        .pipeline(name)
        .await
        .during("reading the pipeline")?
        .is_none()
    {
        return Err(no_pipeline(name));
    }
    store
        .batches(&BatchQuery {
            pipeline: name.to_string(),
            state: filter.state,
            version: filter.version,
            after: filter.after,
            limit,
        })
        .await
        .during("listing the pipeline's batches")
}

/// One batch with every run of it and every check result recorded for it, oldest first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BatchDetail {
    #[serde(flatten)]
    pub batch: TaskRecord,
    pub runs: Vec<BatchRun>,
    pub checks: Vec<CheckRecord>,
}

/// One batch of `pipeline`, with its runs and check results.
pub async fn batch(store: &Arc<dyn Store>, pipeline: &str, id: &str) -> Result<BatchDetail> {
    let id = BatchId(id.to_string());
    let task = store.task(&id).await.during("reading the batch")?;
    let Some(task) = task.filter(|t| t.pipeline == pipeline) else {
        return Err(AppError::NotFound(format!(
            "pipeline {pipeline} has no batch {id}: list its batches at /api/v1/pipelines/{pipeline}/batches"
        )));
    };
    let runs = store
        .batch_runs_of(&id)
        .await
        .during("reading the batch's runs")?;
    let checks = store
        .check_results_of(&id)
        .await
        .during("reading the batch's check results")?;
    Ok(BatchDetail {
        batch: task,
        runs,
        checks,
    })
}

/// How one pipeline version did over a window: its runs by outcome, rows, durations, and its
/// check results.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct VersionMeasurements {
    pub version: i64,
    /// Every run that finished in the window, and those that committed, failed, were
    /// quarantined, or expired (their worker died or hung).
    pub runs: i64,
    pub committed: i64,
    pub failed: i64,
    pub quarantined: i64,
    pub expired: i64,
    /// Runs that did not publish (failed, quarantined, expired) over all runs.
    pub error_rate: Option<f64>,
    /// Rows of the runs that published (committed or found committed).
    pub rows_in: i64,
    pub rows_out: i64,
    /// Of committed runs.
    pub mean_duration_ms: Option<f64>,
    pub max_duration_ms: Option<i64>,
    /// Per check and level: how many batch runs, and how many failing rows.
    pub checks: Vec<CheckMeasurement>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckMeasurement {
    pub check: String,
    pub level: String,
    pub results: i64,
    pub failing_rows: i64,
}

/// A pipeline's measurements over `[since, until]` (store clock, epoch milliseconds).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Measurements {
    pub pipeline: String,
    pub since: i64,
    pub until: i64,
    pub versions: Vec<VersionMeasurements>,
}

/// The last `window` of an existing pipeline, `[since, until]` by the store clock.
async fn window_of(store: &Arc<dyn Store>, pipeline: &str, window: Duration) -> Result<(i64, i64)> {
    if window.is_zero() || window > MAX_WINDOW {
        return Err(AppError::User(format!(
            "window {} is out of range: give 1s to {}",
            humantime::format_duration(window),
            humantime::format_duration(MAX_WINDOW)
        )));
    }
    if store
        .pipeline(pipeline)
        .await
        .during("reading the pipeline")?
        .is_none()
    {
        return Err(no_pipeline(pipeline));
    }
    let until = store.now().await.during("reading the store clock")?;
    let since = until.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
    Ok((since, until))
}

/// The measurements of `pipeline` over the last `window`.
pub async fn measurements(
    store: &Arc<dyn Store>,
    pipeline: &str,
    window: Duration,
) -> Result<Measurements> {
    let (since, until) = window_of(store, pipeline, window).await?;
    let runs = store
        .run_totals(pipeline, since, until)
        .await
        .during("summing the pipeline's runs")?;
    let checks = store
        .check_totals(pipeline, since, until)
        .await
        .during("summing the pipeline's check results")?;
    let mut versions: Vec<VersionMeasurements> = Vec::new();
    fn entry(versions: &mut Vec<VersionMeasurements>, version: i64) -> &mut VersionMeasurements {
        let at = match versions.iter().position(|v| v.version == version) {
            Some(at) => at,
            None => {
                versions.push(VersionMeasurements {
                    version,
                    ..VersionMeasurements::default()
                });
                versions.len() - 1
            }
        };
        &mut versions[at]
    }
    for t in runs {
        let v = entry(&mut versions, t.version);
        v.runs += t.runs;
        match t.outcome {
            BatchOutcome::Committed => {
                v.committed += t.runs;
                v.mean_duration_ms = Some(t.duration_ms_sum as f64 / t.runs.max(1) as f64);
                v.max_duration_ms = Some(t.duration_ms_max);
            }
            BatchOutcome::AlreadyCommitted => {}
            BatchOutcome::Failed => v.failed += t.runs,
            BatchOutcome::Quarantined => v.quarantined += t.runs,
            BatchOutcome::Expired => v.expired += t.runs,
        }
        if matches!(
            t.outcome,
            BatchOutcome::Committed | BatchOutcome::AlreadyCommitted
        ) {
            v.rows_in += t.rows_in;
            v.rows_out += t.rows_out;
        }
    }
    for c in checks {
        entry(&mut versions, c.version)
            .checks
            .push(CheckMeasurement {
                check: c.check,
                level: c.level,
                results: c.results,
                failing_rows: c.failing,
            });
    }
    for v in &mut versions {
        let bad = v.failed + v.quarantined + v.expired;
        v.error_rate = (v.runs > 0).then(|| bad as f64 / v.runs as f64);
    }
    versions.sort_by_key(|v| v.version);
    Ok(Measurements {
        pipeline: pipeline.to_string(),
        since,
        until,
        versions,
    })
}

/// The most recent runs [`series`] reads.
pub const MAX_SERIES_RUNS: i64 = 20_000;
/// The most points per version [`series`] answers.
pub const MAX_SERIES_STEPS: u128 = 1_000;

/// One version's runs that finished in one step of a [`Series`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesPoint {
    /// The step's start (store clock, epoch milliseconds).
    pub at: i64,
    pub version: i64,
    pub runs: i64,
    pub committed: i64,
    /// Runs that did not publish (failed, quarantined, expired).
    pub failed: i64,
    pub rows_in: i64,
    pub rows_out: i64,
    /// Rows published per second of the step.
    pub rows_per_second: f64,
    /// Of committed runs.
    pub mean_duration_ms: Option<f64>,
    pub max_duration_ms: Option<i64>,
}

/// A pipeline's throughput and latency over time, per version: its runs of the last window
/// (at most [`MAX_SERIES_RUNS`] of the newest) in steps.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Series {
    pub pipeline: String,
    pub since: i64,
    pub until: i64,
    pub step_ms: i64,
    /// Steps without runs are left out; ordered by step, then version.
    pub points: Vec<SeriesPoint>,
}

/// The runs of `pipeline` over the last `window`, summed per `step` and version.
pub async fn series(
    store: &Arc<dyn Store>,
    pipeline: &str,
    window: Duration,
    step: Duration,
) -> Result<Series> {
    if step < Duration::from_secs(1) || window.as_millis() / step.as_millis() > MAX_SERIES_STEPS {
        return Err(AppError::User(format!(
            "step {} is out of range for window {}: give at least 1s and at most {MAX_SERIES_STEPS} steps a window",
            humantime::format_duration(step),
            humantime::format_duration(window)
        )));
    }
    let (since, until) = window_of(store, pipeline, window).await?;
    let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX).max(1);
    let runs = store
        .batch_runs(pipeline, MAX_SERIES_RUNS)
        .await
        .during("reading the pipeline's runs")?;
    let mut steps: std::collections::BTreeMap<(i64, i64), (SeriesPoint, i64)> = Default::default();
    for r in runs.into_iter().filter(|r| r.finished_at >= since) {
        let at = since + (r.finished_at - since) / step_ms * step_ms;
        let (p, duration_sum) = steps.entry((at, r.version)).or_insert_with(|| {
            (
                SeriesPoint {
                    at,
                    version: r.version,
                    runs: 0,
                    committed: 0,
                    failed: 0,
                    rows_in: 0,
                    rows_out: 0,
                    rows_per_second: 0.0,
                    mean_duration_ms: None,
                    max_duration_ms: None,
                },
                0,
            )
        });
        p.runs += 1;
        match r.outcome {
            BatchOutcome::Committed => {
                p.committed += 1;
                *duration_sum += r.duration_ms;
                p.max_duration_ms = Some(p.max_duration_ms.unwrap_or(0).max(r.duration_ms));
            }
            BatchOutcome::AlreadyCommitted => {}
            BatchOutcome::Failed | BatchOutcome::Quarantined | BatchOutcome::Expired => {
                p.failed += 1
            }
        }
        if matches!(
            r.outcome,
            BatchOutcome::Committed | BatchOutcome::AlreadyCommitted
        ) {
            p.rows_in += r.rows_in;
            p.rows_out += r.rows_out;
        }
    }
    let points = steps
        .into_values()
        .map(|(mut p, duration_sum)| {
            p.rows_per_second = p.rows_out as f64 * 1000.0 / step_ms as f64;
            p.mean_duration_ms =
                (p.committed > 0).then(|| duration_sum as f64 / p.committed as f64);
            p
        })
        .collect();
    Ok(Series {
        pipeline: pipeline.to_string(),
        since,
        until,
        step_ms,
        points,
    })
}
