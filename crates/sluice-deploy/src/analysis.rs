//! Analyses as the controller runs them: each metric measured on its schedule over its window,
//! every measurement stored with its inputs (fenced by the leader's epoch), and the verdict
//! assessed from the stored history alone, so a new leader picks up where the old one was.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::BatchOutcome;
use sluice_quality::analysis::prometheus::QueryVars;
use sluice_quality::analysis::{
    AnalysisSpec, CheckLevel, CheckSample, Measurement, Measures, MetricSpec, Phase,
    PrometheusQuery, RESULT, RunOutcome, RunSample, Verdict, assess, combine, judge,
};
use sluice_store::{BatchRun, CheckRecord, DeploymentRecord, Fence, NewMeasurement, Store};

use crate::controller::ControllerError;

/// One run of an analysis: a step's (`step-3`) or the background one, started at `started_at`
/// (store clock). A resume starts a new run (`step-3#1`): earlier measurements stay in the
/// history but no longer count.
pub struct AnalysisRun<'a> {
    pub name: String,
    pub spec: &'a AnalysisSpec,
    pub started_at: i64,
}

/// The name of run `run` of analysis `base`.
pub fn analysis_name(base: &str, run: u32) -> String {
    if run == 0 {
        base.to_string()
    } else {
        format!("{base}#{run}")
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An analysis' verdict so far, and when it first measured a failure (store clock), for the
/// detect-to-rollback time.
pub(crate) struct Assessed {
    pub verdict: Verdict,
    pub first_failure: Option<i64>,
}

/// Takes the measurements that are due and returns the analysis' verdict so far. The stored
/// history is read once per call.
pub(crate) async fn measure(
    store: &Arc<dyn Store>,
    fence: &Fence,
    d: &DeploymentRecord,
    run: &AnalysisRun<'_>,
    now: i64,
) -> Result<Assessed, ControllerError> {
    let history: Vec<_> = store
        .measurements(d.id)
        .await?
        .into_iter()
        .filter(|m| m.analysis == run.name)
        .collect();
    let mut first_failure = history
        .iter()
        .filter(|m| m.phase == Phase::Failed.as_str())
        .map(|m| m.measured_at)
        .min();
    let mut verdicts = Vec::with_capacity(run.spec.metrics.len());
    for metric in &run.spec.metrics {
        let mut phases: Vec<Phase> = history
            .iter()
            .filter(|m| m.metric == metric.name)
            .filter_map(|m| phase_of(&m.phase))
            .collect();
        let mut verdict = assess(metric, &phases);
        let taken = phases.len() as i64;
        let due =
            run.started_at + millis(metric.initial_delay) + (taken + 1) * millis(metric.interval);
        if !verdict.is_done()
            && now >= due
            && let Some(phase) = measure_one(store, fence, d, run, metric, now).await?
        {
            // stored at the store's clock as of this tick (`now`, to the millisecond or so)
            if phase == Phase::Failed && first_failure.is_none() {
                first_failure = Some(now);
            }
            phases.push(phase);
            verdict = assess(metric, &phases);
        }
        verdicts.push(verdict);
    }
    Ok(Assessed {
        verdict: combine(&verdicts),
        first_failure,
    })
}

fn phase_of(s: &str) -> Option<Phase> {
    [
        Phase::Successful,
        Phase::Failed,
        Phase::Inconclusive,
        Phase::Error,
    ]
    .into_iter()
    .find(|p| p.as_str() == s)
}

/// One measurement of one metric, stored. `None` when the fence no longer holds (nothing was
/// written; the new leader measures).
async fn measure_one(
    store: &Arc<dyn Store>,
    fence: &Fence,
    d: &DeploymentRecord,
    run: &AnalysisRun<'_>,
    metric: &MetricSpec,
    now: i64,
) -> Result<Option<Phase>, ControllerError> {
    let window = millis(metric.window());
    let since = (now - window).max(run.started_at);
    let of = async |version: i64| -> Result<Measures, ControllerError> {
        let runs = store.version_runs(&d.pipeline, version, since).await?;
        let checks = store.version_checks(&d.pipeline, version, since).await?;
        Ok(Measures::of(
            &runs.iter().map(run_sample).collect::<Vec<_>>(),
            &checks.iter().filter_map(check_sample).collect::<Vec<_>>(),
            u64::try_from(now - since).unwrap_or(0),
        ))
    };
    let (m, mut inputs) = match &metric.prometheus {
        Some(q) => asked(metric, q, d).await,
        None => {
            let candidate = of(d.candidate_version).await?;
            let stable = of(d.stable_version).await?;
            let m = judge(metric, &candidate, Some(&stable));
            let inputs = m.inputs.clone();
            (m, inputs)
        }
    };
    if let Some(obj) = inputs.as_object_mut() {
        obj.insert("window_start".into(), since.into());
        obj.insert("window_end".into(), now.into());
        obj.insert("candidate_version".into(), d.candidate_version.into());
        obj.insert("stable_version".into(), d.stable_version.into());
    }
    let recorded = store
        .record_measurement(
            fence,
            &NewMeasurement {
                deployment_id: d.id,
                analysis: run.name.clone(),
                metric: metric.name.clone(),
                phase: m.phase.as_str().to_string(),
                value: m.value,
                stable_value: m.stable_value,
                inputs: inputs.to_string(),
                message: m.message.clone(),
            },
        )
        .await?;
    Ok(recorded.then_some(m.phase))
}

/// A Prometheus metric's measurement: its query asked, the one value judged as `result`. The
/// inputs keep the query as sent and the value as answered; no answer, or not exactly one
/// value, is an Error.
async fn asked(
    metric: &MetricSpec,
    q: &PrometheusQuery,
    d: &DeploymentRecord,
) -> (Measurement, serde_json::Value) {
    let vars = QueryVars {
        pipeline: &d.pipeline,
        candidate: d.candidate_version,
        stable: d.stable_version,
    };
    let answer = crate::prometheus::ask(crate::hooks::client(), q, &vars).await;
    let mut inputs = serde_json::json!({
        "prometheus": q.address,
        "query": answer.query,
    });
    match answer.value {
        Ok(v) => {
            let m = judge(metric, &Measures::single(RESULT, v.value), None);
            inputs["response_value"] = v.raw.clone().into();
            inputs["labels"] = v.labels.clone();
            (m, inputs)
        }
        Err(e) => {
            inputs["error"] = e.clone().into();
            let m = Measurement {
                phase: Phase::Error,
                value: None,
                stable_value: None,
                message: format!("metric {:?}: {e}", metric.name),
                inputs: inputs.clone(),
            };
            (m, inputs)
        }
    }
}

fn run_sample(r: &BatchRun) -> RunSample {
    RunSample {
        outcome: match r.outcome {
            BatchOutcome::Committed => RunOutcome::Committed,
            BatchOutcome::AlreadyCommitted => RunOutcome::AlreadyCommitted,
            BatchOutcome::Failed => RunOutcome::Failed,
            BatchOutcome::Expired => RunOutcome::Expired,
            BatchOutcome::Quarantined => RunOutcome::Quarantined,
        },
        duration_ms: r.duration_ms.max(0) as u64,
        rows_in: r.rows_in.max(0) as u64,
        rows_out: r.rows_out.max(0) as u64,
        finished_at: r.finished_at,
        cpu_us: r.cpu_us.map(|us| us.max(0) as u64),
        peak_memory_bytes: r.peak_memory_bytes.map(|b| b.max(0) as u64),
    }
}

/// A check result as analysis reads it; `None` for the per-column profile the engine stores
/// beside them (not a check).
fn check_sample(c: &CheckRecord) -> Option<CheckSample> {
    if c.kind == "null_rate" {
        return None;
    }
    Some(CheckSample {
        check: c.check.clone(),
        level: c.level.parse::<CheckLevel>().ok()?,
        considered: c.considered.max(0) as u64,
        failing: c.failing.max(0) as u64,
    })
}
