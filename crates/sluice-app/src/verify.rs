//! The deploy suites (`sluice verify pre FILE`, `sluice verify post PIPELINE`): each returns a
//! [`Verification`], every check an item, with the thresholds it judged by in [`PreOptions`] /
//! [`PostOptions`]; [`Verification::verdict`] decides.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{BatchOutcome, TaskState, now_millis};
use sluice_engine::arrow::datatypes::SchemaRef;
use sluice_engine::sink::delta_schema;
use sluice_quality::{
    DecisionRules, Status, Suite, Verdict, compare_latency, compare_rate, percentile,
};
use sluice_schema::diff::Severity;
use sluice_store::Store;

use crate::error::{AppError, Result};

/// What the pre-deploy suite judges by. [`PreOptions::DEFAULT`] is `sluice verify pre`'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PreOptions {
    /// Recent done batches of the pipeline to dry-run the candidate on.
    pub sample: usize,
    /// A backlog (pending + leased batches) above this is a warning.
    pub max_backlog: i64,
    /// A sink table whose newest commit is older than this is a warning.
    pub max_table_age: Duration,
}

impl PreOptions {
    pub const DEFAULT: PreOptions = PreOptions {
        sample: 5,
        max_backlog: 1000,
        max_table_age: Duration::from_secs(3600),
    };
}

impl Default for PreOptions {
    fn default() -> Self {
        PreOptions::DEFAULT
    }
}

/// What the post-deploy suite judges by. [`PostOptions::DEFAULT`] is `sluice verify post`'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PostOptions {
    /// The window of recent runs judged.
    pub window: Duration,
    /// A running worker whose last heartbeat is older than this counts as lost.
    pub silent_after: Duration,
    /// A batch error rate at or below this passes whatever the previous version's was.
    pub error_rate_floor: f64,
    /// The error rate warns above this many times the previous version's...
    pub error_rate_warn_ratio: f64,
    /// ... and fails above this many times.
    pub error_rate_fail_ratio: f64,
    /// p95 batch latency warns above this many times the previous version's...
    pub latency_warn_ratio: f64,
    /// ... and fails above this many times.
    pub latency_fail_ratio: f64,
    /// The share of input rows that come out warns when it moves by more than this fraction of
    /// the previous version's share...
    pub volume_warn_drift: f64,
    /// ... and fails beyond this.
    pub volume_fail_drift: f64,
}

impl PostOptions {
    pub const DEFAULT: PostOptions = PostOptions {
        window: Duration::from_secs(15 * 60),
        silent_after: Duration::from_secs(60),
        error_rate_floor: 0.01,
        error_rate_warn_ratio: 1.5,
        error_rate_fail_ratio: 3.0,
        latency_warn_ratio: 1.5,
        latency_fail_ratio: 3.0,
        volume_warn_drift: 0.2,
        volume_fail_drift: 0.5,
    };
}

impl Default for PostOptions {
    fn default() -> Self {
        PostOptions::DEFAULT
    }
}

/// A suite's items and the decision rules the version's spec declares (`deploy:`), if any.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verification {
    pub suite: Suite,
    pub rules: Option<DecisionRules>,
}

impl Verification {
    /// The decision: `max_warnings` when given, else the spec's rules, else the defaults.
    pub fn verdict(&self, max_warnings: Option<usize>) -> Verdict {
        let rules = match max_warnings.or(self.rules.as_ref().map(|r| r.max_warnings)) {
            Some(max_warnings) => DecisionRules { max_warnings },
            None => DecisionRules::default(),
        };
        rules.decide(&self.suite)
    }
}

/// The pre-deploy suite of a candidate spec file. Never fails as a call: every problem is an
/// item.
pub async fn pre(file: &Path, store_url: &str, opts: &PreOptions) -> Verification {
    let candidate = match crate::compile(file, 0, store_url).await {
        Ok(p) => p,
        Err(e) => {
            let mut suite = Suite::new("verify pre");
            suite.push("spec valid, SQL plans", Status::Fail, e.message());
            return Verification { suite, rules: None };
        }
    };
    let store = crate::open_store(store_url).await;
    pre_compiled(&candidate, store.as_ref(), store_url, opts).await
}

/// [`pre`] of a candidate already compiled, against a store already opened (or the reason it
/// could not be), as `deploy` runs it: the spec is compiled once.
pub async fn pre_compiled(
    candidate: &sluice_engine::Pipeline,
    store: std::result::Result<&Arc<dyn Store>, &AppError>,
    store_url: &str,
    opts: &PreOptions,
) -> Verification {
    let PreOptions {
        sample,
        max_backlog,
        max_table_age,
    } = *opts;
    let mut suite = Suite::new("verify pre");
    suite.push(
        "spec valid, SQL plans",
        Status::Pass,
        format!(
            "{} output columns",
            candidate.output_schema().fields().len()
        ),
    );
    let info = candidate.sink().describe().await;
    match &info {
        Ok(Some(table)) => {
            let (status, detail) = schema_against_table(&candidate.output_schema(), &table.schema);
            suite.push("compatible with the sink table", status, detail);
        }
        Ok(None) => suite.push(
            "compatible with the sink table",
            Status::Pass,
            "the table does not exist yet: the candidate creates it",
        ),
        Err(e) => suite.push(
            "compatible with the sink table",
            Status::Fail,
            e.to_string(),
        ),
    }
    let store = match store {
        Ok(s) => {
            suite.push(
                "store reachable and migrated",
                Status::Pass,
                format!("{} at {}", s.backend(), crate::redact(store_url)),
            );
            Some(s)
        }
        Err(e) => {
            suite.push("store reachable and migrated", Status::Fail, e.message());
            None
        }
    };
    if let Some(store) = store {
        dry_run(&mut suite, store, candidate, sample).await;
        // A backlog that cannot be counted is a failure, never a passing 0.
        match store.status().await {
            Ok(status) => {
                let backlog: i64 = status
                    .iter()
                    .filter(|s| s.pipeline == candidate.name())
                    .map(|s| s.pending + s.leased)
                    .sum();
                suite.push(
                    "backlog",
                    if backlog > max_backlog {
                        Status::Warn
                    } else {
                        Status::Pass
                    },
                    format!("{backlog} batch(es) waiting (warn above {max_backlog})"),
                );
            }
            Err(e) => suite.push(
                "backlog",
                Status::Fail,
                format!("cannot count the batches waiting: {e}"),
            ),
        }
    }
    match info {
        Ok(Some(table)) => {
            let age = table
                .last_commit_ms
                .map(|t| Duration::from_millis((now_millis() - t).max(0) as u64));
            let status = match age {
                Some(a) if a <= max_table_age => Status::Pass,
                _ => Status::Warn,
            };
            suite.push(
                "newest table snapshot",
                status,
                match age {
                    Some(a) => format!(
                        "version {} committed {} ago (warn above {})",
                        table.version,
                        humantime::format_duration(Duration::from_secs(a.as_secs())),
                        humantime::format_duration(max_table_age)
                    ),
                    None => format!("version {}: commit time unknown", table.version),
                },
            );
        }
        _ => suite.push("newest table snapshot", Status::Pass, "no table yet"),
    }
    let rules = candidate.spec.deploy.as_ref().map(|d| d.rules());
    Verification { suite, rules }
}

/// Runs the candidate on the newest `sample` done batches of its pipeline without publishing;
/// one item: every batch's checks pass, or which would fail or be held and why.
pub async fn dry_run(
    suite: &mut Suite,
    store: &Arc<dyn Store>,
    candidate: &sluice_engine::Pipeline,
    sample: usize,
) {
    let name = "candidate dry run on recent batches";
    let mut done = match store.tasks(candidate.name(), Some(TaskState::Done)).await {
        Ok(t) => t,
        Err(e) => {
            suite.push(name, Status::Fail, e.to_string());
            return;
        }
    };
    done.sort_by_key(|t| std::cmp::Reverse(t.updated_at));
    done.truncate(sample);
    if done.is_empty() {
        suite.push(
            name,
            Status::Warn,
            "no processed batches to try the candidate on yet",
        );
        return;
    }
    let (mut held, mut failed, mut rows_in, mut rows_out) = (Vec::new(), Vec::new(), 0, 0);
    for t in &done {
        match candidate.dry_run(&t.slice).await {
            Ok(r) if r.outcome == BatchOutcome::Quarantined => {
                let why = r
                    .checks
                    .iter()
                    .filter(|c| c.level == sluice_engine::checks::Level::Error)
                    .map(|c| format!("{} ({})", c.name, c.detail))
                    .collect::<Vec<_>>()
                    .join(", ");
                held.push(format!("{}: {why}", t.batch_id));
            }
            Ok(r) => {
                rows_in += r.rows_in;
                rows_out += r.rows_out;
            }
            Err(e) => failed.push(format!("{}: {}", t.batch_id, e.message)),
        }
    }
    if !failed.is_empty() || !held.is_empty() {
        suite.push(
            name,
            Status::Fail,
            format!(
                "{} of {} batch(es) would fail or be held: {}",
                failed.len() + held.len(),
                done.len(),
                failed
                    .iter()
                    .chain(&held)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
    } else {
        suite.push(
            name,
            Status::Pass,
            format!(
                "{} batch(es): {rows_in} rows in, {rows_out} out, every check passes",
                done.len()
            ),
        );
    }
}

/// Compares the candidate's output with the table's schema using the schema library's change
/// classification: destructive or breaking changes fail, warnings warn.
pub fn schema_against_table(output: &SchemaRef, table: &SchemaRef) -> (Status, String) {
    let as_schema = |s: &SchemaRef| sluice_schema::Schema::from_arrow("sink", s.as_ref());
    let (old, new) = match (as_schema(table), as_schema(&delta_schema(output))) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return (Status::Fail, e.to_string()),
    };
    let changes = sluice_schema::diff::diff(&old, &new);
    let worst = changes.iter().map(|c| c.severity).max();
    let list = changes
        .iter()
        .map(|c| format!("{} {} {}", c.code, c.field, c.reason))
        .collect::<Vec<_>>()
        .join("; ");
    match worst {
        None => (
            Status::Pass,
            "the output matches the table's columns".into(),
        ),
        Some(Severity::Info | Severity::Safe) => (Status::Pass, list),
        Some(Severity::Warning) => (Status::Warn, list),
        Some(_) => (Status::Fail, list),
    }
}

/// The post-deploy suite of a pipeline's current version.
pub async fn post(pipeline: &str, store_url: &str, opts: &PostOptions) -> Result<Verification> {
    let store = crate::open_store(store_url).await?;
    let Some(record) = store.pipeline(pipeline).await? else {
        return Err(AppError::User(format!(
            "no pipeline {pipeline:?} in {}: see `sluice status`",
            crate::redact(store_url)
        )));
    };
    let window = opts.window;
    let version = record.current_version;
    let mut suite = Suite::new(format!("verify post {pipeline}@{version}"));
    let now = now_millis();
    let since = now - window.as_millis() as i64;

    let alive_after = now - opts.silent_after.as_millis() as i64;
    let workers = store.workers().await?;
    let alive = workers
        .iter()
        .filter(|w| w.state == "running" && w.last_heartbeat >= alive_after)
        .count();
    let lost = workers
        .iter()
        .filter(|w| w.state == "running" && w.last_heartbeat < alive_after)
        .count();
    let status = store
        .status()
        .await?
        .into_iter()
        .find(|s| s.pipeline == pipeline)
        .unwrap_or_default();
    let waiting = status.pending + status.leased;
    suite.push(
        "workers healthy",
        match (alive, lost, waiting) {
            (0, _, w) if w > 0 => Status::Fail,
            (_, l, _) if l > 0 => Status::Warn,
            _ => Status::Pass,
        },
        format!(
            "{alive} alive, {lost} silent for over {}s; {waiting} batch(es) waiting",
            opts.silent_after.as_secs()
        ),
    );

    let runs = store.batch_runs(pipeline, 100_000).await?;
    let in_window = |v: i64| {
        runs.iter()
            .filter(move |r| r.version == v && r.finished_at >= since)
    };
    let error_rate = |v: i64| -> Option<f64> {
        let all: Vec<_> = runs.iter().filter(|r| r.version == v).collect();
        (!all.is_empty()).then(|| {
            all.iter()
                .filter(|r| matches!(r.outcome, BatchOutcome::Failed | BatchOutcome::Quarantined))
                .count() as f64
                / all.len() as f64
        })
    };
    let previous = runs
        .iter()
        .map(|r| r.version)
        .filter(|v| *v < version)
        .max();
    let current: Vec<_> = in_window(version).collect();
    if current.is_empty() {
        suite.push(
            "batch error rate",
            Status::Warn,
            format!(
                "no runs of version {version} in the last {}",
                humantime::format_duration(window)
            ),
        );
    } else {
        let failed = current
            .iter()
            .filter(|r| matches!(r.outcome, BatchOutcome::Failed | BatchOutcome::Quarantined))
            .count();
        let rate = failed as f64 / current.len() as f64;
        let (s, d) = compare_rate(
            rate,
            previous.and_then(error_rate),
            opts.error_rate_floor,
            opts.error_rate_warn_ratio,
            opts.error_rate_fail_ratio,
        );
        suite.push(
            "batch error rate",
            s,
            format!("{d} ({failed} of {} runs)", current.len()),
        );
        let p95 = |v: i64, only_window: bool| {
            let d: Vec<f64> = runs
                .iter()
                .filter(|r| r.version == v && (!only_window || r.finished_at >= since))
                .filter(|r| {
                    matches!(
                        r.outcome,
                        BatchOutcome::Committed | BatchOutcome::AlreadyCommitted
                    )
                })
                .map(|r| r.duration_ms as f64)
                .collect();
            percentile(&d, 95.0)
        };
        match p95(version, true) {
            Some(c) => {
                let (s, d) = compare_latency(
                    c,
                    previous.and_then(|v| p95(v, false)),
                    opts.latency_warn_ratio,
                    opts.latency_fail_ratio,
                );
                suite.push("p95 batch latency", s, d);
            }
            None => suite.push(
                "p95 batch latency",
                Status::Warn,
                "no successful runs in the window",
            ),
        }
    }

    let newest = runs
        .iter()
        .filter(|r| {
            matches!(
                r.outcome,
                BatchOutcome::Committed | BatchOutcome::AlreadyCommitted
            )
        })
        .map(|r| r.finished_at)
        .max();
    suite.push(
        "freshness",
        match newest {
            Some(t) if t >= since => Status::Pass,
            _ if waiting == 0 => Status::Pass,
            _ => Status::Fail,
        },
        match newest {
            Some(t) => format!(
                "last batch published {} ago; {waiting} waiting",
                humantime::format_duration(Duration::from_secs(((now - t).max(0) / 1000) as u64))
            ),
            None => format!("nothing published yet; {waiting} waiting"),
        },
    );

    // Output volume: the share of input rows that come out, against the previous version.
    let selectivity = |v: i64| -> Option<f64> {
        let (i, o) = runs
            .iter()
            .filter(|r| r.version == v && r.outcome == BatchOutcome::Committed)
            .fold((0i64, 0i64), |(i, o), r| (i + r.rows_in, o + r.rows_out));
        (i > 0).then(|| o as f64 / i as f64)
    };
    match (selectivity(version), previous.and_then(selectivity)) {
        (Some(c), Some(b)) => {
            let drift = if b > 0.0 { (c - b).abs() / b } else { c };
            suite.push(
                "row count against expectation",
                if drift > opts.volume_fail_drift {
                    Status::Fail
                } else if drift > opts.volume_warn_drift {
                    Status::Warn
                } else {
                    Status::Pass
                },
                format!(
                    "{:.1}% of input rows out vs {:.1}% before",
                    c * 100.0,
                    b * 100.0
                ),
            );
        }
        (Some(c), None) => suite.push(
            "row count against expectation",
            Status::Pass,
            format!("{:.1}% of input rows out (no previous version)", c * 100.0),
        ),
        _ => suite.push(
            "row count against expectation",
            Status::Warn,
            "no committed runs yet",
        ),
    }

    let mut rules = None;
    if let Some(v) = store.pipeline_version(pipeline, version).await? {
        match sluice_engine::Pipeline::from_stored(&v.spec, &v.base_dir, version).await {
            Ok(compiled) => {
                rules = compiled.spec.deploy.as_ref().map(|d| d.rules());
                match compiled.sink().describe().await {
                    Ok(Some(table)) => {
                        let (s, d) = schema_against_table(&compiled.output_schema(), &table.schema);
                        suite.push("sink schema matches the version", s, d);
                    }
                    Ok(None) => suite.push(
                        "sink schema matches the version",
                        Status::Warn,
                        "no table yet",
                    ),
                    Err(e) => suite.push(
                        "sink schema matches the version",
                        Status::Fail,
                        e.to_string(),
                    ),
                }
            }
            Err(e) => suite.push(
                "sink schema matches the version",
                Status::Fail,
                e.to_string(),
            ),
        }
    }

    let checks = store.check_results(pipeline, Some(version), 10_000).await?;
    // null_rate rows are measurements, not checks.
    let recent: Vec<_> = checks
        .iter()
        .filter(|c| c.recorded_at >= since && c.kind != "null_rate")
        .collect();
    let errors = recent.iter().filter(|c| c.level == "error").count();
    let warns = recent.iter().filter(|c| c.level == "warn").count();
    suite.push(
        "declared checks passing",
        if errors > 0 {
            Status::Fail
        } else if warns > 0 {
            Status::Warn
        } else {
            Status::Pass
        },
        format!(
            "{} result(s) in the window: {errors} error, {warns} warn",
            recent.len()
        ),
    );
    Ok(Verification { suite, rules })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_quality::Decision;

    fn verification(warnings: usize, rules: Option<DecisionRules>) -> Verification {
        let mut suite = Suite::new("t");
        for i in 0..warnings {
            suite.push(format!("w{i}"), Status::Warn, "");
        }
        Verification { suite, rules }
    }

    #[test]
    fn the_argument_beats_the_spec_which_beats_the_default() {
        let spec = Some(DecisionRules { max_warnings: 5 });
        // Three warnings: over the default (2), within the spec's 5, over an argument of 1.
        let v = verification(3, None);
        assert_eq!(v.verdict(None).decision, Decision::Investigate);
        let v = verification(3, spec);
        assert_eq!(v.verdict(None).decision, Decision::Proceed);
        assert_eq!(v.verdict(Some(1)).decision, Decision::Investigate);
    }

    #[test]
    fn the_sink_check_passes_a_match_and_fails_a_dropped_column() {
        use sluice_engine::arrow::datatypes::{DataType, Field, Schema};
        let table: SchemaRef = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let same = schema_against_table(&table, &table);
        assert_eq!(same.0, Status::Pass, "{}", same.1);
        let dropped: SchemaRef = Arc::new(Schema::new(Vec::<Field>::new()));
        let (status, detail) = schema_against_table(&dropped, &table);
        assert_eq!(status, Status::Fail, "{detail}");
        assert!(detail.contains("id"), "{detail}");
    }
}
