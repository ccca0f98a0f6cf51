//! What `/metrics` reports, from the store (so one server covers every worker on every
//! machine), with bounded labels: no batch ids, and a version label only for live versions
//! (the current one, both versions of a deployment in progress, and those with pending or
//! leased batches). The batches and rows of every other version are summed under
//! `version="retired"`, so totals still add up while the label set stays as small as the live
//! versions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::TaskState;
use sluice_store::{CheckFailures, DURATION_BUCKETS_MS, DurationHistogram, Store};

use crate::error::{During, Result};
use crate::status::LOST_AFTER_MS;

/// The `version` label of the versions that are not live.
pub const RETIRED: &str = "retired";

/// The batches of one pipeline version label in one state.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BatchCount {
    pub pipeline: String,
    /// A live version's number, or [`RETIRED`].
    pub version: String,
    pub state: TaskState,
    pub batches: i64,
}

/// Rows of the committed runs of one pipeline version label (counted from runs, which are only
/// added, so a rollback's requeue does not take rows back from the counter).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowCount {
    pub pipeline: String,
    pub version: String,
    pub rows_in: i64,
    pub rows_out: i64,
}

/// A pipeline's queue: how many batches wait, and how long the longest-waiting one has.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Backlog {
    pub pipeline: String,
    pub pending: i64,
    /// 0 when nothing waits.
    pub oldest_pending_seconds: f64,
}

/// The phases `sluice_deployment_phase` reports per pipeline: `idle` (no deployment in
/// progress) and the states of an active deployment.
pub const PHASES: [&str; 6] = [
    "idle",
    "progressing",
    "paused",
    "draining",
    "aborting",
    "repairing",
];

/// A pipeline's deployment in progress: its phase, versions, the candidate's weight and how
/// many measurements of each analysis metric ended in each phase.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeploymentGauge {
    pub pipeline: String,
    /// One of [`PHASES`] other than `idle`.
    pub phase: String,
    pub stable_version: i64,
    pub candidate_version: i64,
    /// Percent of new batches (or keys) routed to the candidate.
    pub candidate_weight: u8,
    /// (analysis, metric, measurement phase) -> measurements.
    pub measurements: Vec<(String, String, String, usize)>,
}

/// Every series of `/metrics`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metrics {
    pub batches: Vec<BatchCount>,
    pub rows: Vec<RowCount>,
    /// Committed runs of live versions; bucket bounds are [`bucket_bounds_seconds`].
    pub durations: Vec<DurationHistogram>,
    /// Every pipeline, including those with nothing pending.
    pub backlog: Vec<Backlog>,
    pub workers_alive: i64,
    pub check_failures: Vec<CheckFailures>,
    /// Every pipeline and its phase (one of [`PHASES`]).
    pub phases: Vec<(String, String)>,
    /// The deployments in progress.
    pub deployments: Vec<DeploymentGauge>,
}

/// The upper bounds of the batch duration buckets, in seconds.
pub fn bucket_bounds_seconds() -> Vec<f64> {
    DURATION_BUCKETS_MS
        .iter()
        .map(|ms| *ms as f64 / 1000.0)
        .collect()
}

/// Reads the store's metrics snapshot and labels it.
pub async fn metrics(store: &Arc<dyn Store>) -> Result<Metrics> {
    let lost_after = Duration::from_millis(LOST_AFTER_MS.unsigned_abs());
    let m = store
        .metrics(lost_after)
        .await
        .during("reading the metrics")?;
    let mut deployments = Vec::new();
    for d in store
        .active_deployments()
        .await
        .during("reading the deployments in progress")?
    {
        let measurements = store
            .measurements(d.id)
            .await
            .during("reading the measurements of a deployment in progress")?;
        let mut counted = Vec::new();
        for s in crate::deploy::summarize(&measurements) {
            for (phase, n) in s.phases {
                counted.push((s.analysis.clone(), s.metric.clone(), phase, n));
            }
        }
        deployments.push(DeploymentGauge {
            pipeline: d.pipeline,
            phase: d.state,
            stable_version: d.stable_version,
            candidate_version: d.candidate_version,
            candidate_weight: d.route.weight,
            measurements: counted,
        });
    }
    let phases = m
        .current
        .iter()
        .map(|(p, _)| {
            let phase = deployments
                .iter()
                .find(|d| &d.pipeline == p)
                .map_or("idle", |d| d.phase.as_str());
            (p.clone(), phase.to_string())
        })
        .collect();
    let mut live: BTreeSet<(&str, i64)> = m.current.iter().map(|(p, v)| (p.as_str(), *v)).collect();
    // Both versions of a deployment in progress are live.
    for d in &deployments {
        live.insert((d.pipeline.as_str(), d.stable_version));
        live.insert((d.pipeline.as_str(), d.candidate_version));
    }
    for t in &m.tasks {
        if matches!(t.state, TaskState::Pending | TaskState::Leased) {
            live.insert((t.pipeline.as_str(), t.version));
        }
    }
    let label = |pipeline: &str, version: i64| {
        if live.contains(&(pipeline, version)) {
            version.to_string()
        } else {
            RETIRED.to_string()
        }
    };
    let mut batches: BTreeMap<(String, String, TaskState), i64> = BTreeMap::new();
    let mut rows: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    let mut backlog: BTreeMap<String, (i64, Option<i64>)> = m
        .current
        .iter()
        .map(|(p, _)| (p.clone(), (0, None)))
        .collect();
    for t in &m.tasks {
        let version = label(&t.pipeline, t.version);
        *batches
            .entry((t.pipeline.clone(), version.clone(), t.state))
            .or_default() += t.batches;
        if t.state == TaskState::Pending {
            let b = backlog.entry(t.pipeline.clone()).or_default();
            b.0 += t.batches;
            b.1 = Some(b.1.map_or(t.oldest_change, |o| o.min(t.oldest_change)));
        }
    }
    for c in &m.rows {
        let r = rows
            .entry((c.pipeline.clone(), label(&c.pipeline, c.version)))
            .or_default();
        r.0 += c.rows_in;
        r.1 += c.rows_out;
    }
    Ok(Metrics {
        batches: batches
            .into_iter()
            .map(|((pipeline, version, state), batches)| BatchCount {
                pipeline,
                version,
                state,
                batches,
            })
            .collect(),
        rows: rows
            .into_iter()
            .map(|((pipeline, version), (rows_in, rows_out))| RowCount {
                pipeline,
                version,
                rows_in,
                rows_out,
            })
            .collect(),
        durations: m.durations,
        backlog: backlog
            .into_iter()
            .map(|(pipeline, (pending, oldest))| Backlog {
                pipeline,
                pending,
                oldest_pending_seconds: oldest.map_or(0.0, |o| (m.now - o).max(0) as f64 / 1000.0),
            })
            .collect(),
        workers_alive: m.workers_alive,
        check_failures: m.check_failures,
        phases,
        deployments,
    })
}
