//! What a version did over a window, as the numbers conditions read.
//!
//! The inputs are plain samples (the store's batch runs and check results, converted by the
//! caller), so this crate needs no store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The built-in metrics a condition may read, per version over a window:
///
/// - `batches`: finished runs;
/// - `error_rate`: failed runs (failed, or whose lease expired) / runs;
/// - `quarantine_rate`: quarantined runs / runs;
/// - `p50_ms`, `p95_ms`: batch duration of successful runs (committed or already committed),
///   by nearest rank;
/// - `rows_ratio`: rows out / rows in of committed runs;
/// - `throughput_rps`: rows in of committed runs per second of the window;
/// - `cpu_ms`: CPU time of a successful run, median (nearest rank) over the runs that were
///   measured: the CPU its own code used on any thread (decode, SQL, checks, encode), not
///   the wall-clock time it waited;
/// - `peak_memory_bytes`: the most memory a successful run's own code held at once, median
///   over the runs that were measured;
/// - `check_failures`: error-level check results;
/// - `check_failure_rate`: failing rows / considered rows over all check results.
///
/// Plus `check_failures.NAME`: error-level results of the check NAME.
pub const METRICS: &[&str] = &[
    "batches",
    "error_rate",
    "quarantine_rate",
    "p50_ms",
    "p95_ms",
    CPU_MS,
    PEAK_MEMORY_BYTES,
    "rows_ratio",
    "throughput_rps",
    CHECK_FAILURES,
    "check_failure_rate",
];

/// CPU time per batch, ms (median of successful runs).
pub const CPU_MS: &str = "cpu_ms";

/// Peak memory per batch, bytes (median of successful runs).
pub const PEAK_MEMORY_BYTES: &str = "peak_memory_bytes";

/// What a condition of a metric with `prometheus:` reads: the query's value.
pub const RESULT: &str = "result";

/// The metric counting error-level check results; `check_failures.NAME` counts one check's.
pub const CHECK_FAILURES: &str = "check_failures";

/// How a run of a batch ended (the store's batch outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Rows were committed to the sink by this run.
    Committed,
    /// The sink already held the batch: a success, with no rows of its own.
    AlreadyCommitted,
    Failed,
    /// Held back by bad rows or a failed check.
    Quarantined,
    /// The lease ran out before the run reported: counted as a failed run.
    Expired,
}

impl RunOutcome {
    fn is_success(self) -> bool {
        matches!(self, RunOutcome::Committed | RunOutcome::AlreadyCommitted)
    }
}

impl std::str::FromStr for RunOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "committed" => RunOutcome::Committed,
            "already_committed" => RunOutcome::AlreadyCommitted,
            "failed" => RunOutcome::Failed,
            "quarantined" => RunOutcome::Quarantined,
            "expired" => RunOutcome::Expired,
            other => {
                return Err(format!(
                    "unknown run outcome {other:?}: expected committed, already_committed, failed, quarantined or expired"
                ));
            }
        })
    }
}

/// One finished run of one batch of one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSample {
    pub outcome: RunOutcome,
    pub duration_ms: u64,
    pub rows_in: u64,
    pub rows_out: u64,
    /// When the run ended, ms since the epoch: what the caller selects the window by.
    pub finished_at: i64,
    /// CPU time the run's own code used, in microseconds; `None` when not measured.
    #[serde(default)]
    pub cpu_us: Option<u64>,
    /// The most memory the run's own code held at once; `None` when not measured.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
}

/// The level of one check result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckLevel {
    Pass,
    Warn,
    Error,
}

impl std::str::FromStr for CheckLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pass" => CheckLevel::Pass,
            "warn" => CheckLevel::Warn,
            "error" => CheckLevel::Error,
            other => {
                return Err(format!(
                    "unknown check level {other:?}: expected pass, warn or error"
                ));
            }
        })
    }
}

/// One check's result on one batch run. The per-column `null_rate` profile the engine stores
/// beside check results is not a check: leave it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckSample {
    pub check: String,
    pub level: CheckLevel,
    /// Rows the check considered.
    pub considered: u64,
    /// Rows that failed it.
    pub failing: u64,
}

/// The measures of one version over one window: metric name -> value, absent when it cannot
/// be computed (a p95 with no successful run is absent, not 0).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Measures {
    values: BTreeMap<String, f64>,
    runs: u64,
    successful_runs: u64,
    /// Successful runs whose CPU time and peak memory were measured.
    #[serde(default)]
    measured_cpu_runs: u64,
    #[serde(default)]
    measured_memory_runs: u64,
    committed_runs: u64,
    check_results: u64,
    window_ms: u64,
}

impl Measures {
    /// The measures of the runs and check results of one version that finished in a window of
    /// `window_ms` (the caller selects them; the length is what throughput is per).
    pub fn of(runs: &[RunSample], checks: &[CheckSample], window_ms: u64) -> Measures {
        let mut values = BTreeMap::new();
        let n = runs.len() as f64;
        values.insert("batches".to_string(), n);
        let count = |f: &dyn Fn(&RunSample) -> bool| runs.iter().filter(|r| f(r)).count() as f64;
        if !runs.is_empty() {
            let failed = count(&|r| matches!(r.outcome, RunOutcome::Failed | RunOutcome::Expired));
            values.insert("error_rate".into(), failed / n);
            let held = count(&|r| r.outcome == RunOutcome::Quarantined);
            values.insert("quarantine_rate".into(), held / n);
        }
        let durations: Vec<f64> = runs
            .iter()
            .filter(|r| r.outcome.is_success())
            .map(|r| r.duration_ms as f64)
            .collect();
        for (name, p) in [("p50_ms", 50.0), ("p95_ms", 95.0)] {
            if let Some(v) = crate::percentile(&durations, p) {
                values.insert(name.into(), v);
            }
        }
        let successful = || runs.iter().filter(|r| r.outcome.is_success());
        let cpu: Vec<f64> = successful()
            .filter_map(|r| r.cpu_us)
            .map(|us| us as f64 / 1000.0)
            .collect();
        let memory: Vec<f64> = successful()
            .filter_map(|r| r.peak_memory_bytes)
            .map(|b| b as f64)
            .collect();
        for (name, samples) in [(CPU_MS, &cpu), (PEAK_MEMORY_BYTES, &memory)] {
            if let Some(v) = crate::percentile(samples, 50.0) {
                values.insert(name.into(), v);
            }
        }
        let committed: Vec<&RunSample> = runs
            .iter()
            .filter(|r| r.outcome == RunOutcome::Committed)
            .collect();
        let rows_in: u64 = committed.iter().map(|r| r.rows_in).sum();
        let rows_out: u64 = committed.iter().map(|r| r.rows_out).sum();
        if rows_in > 0 {
            values.insert("rows_ratio".into(), rows_out as f64 / rows_in as f64);
        }
        if window_ms > 0 {
            values.insert(
                "throughput_rps".into(),
                rows_in as f64 / (window_ms as f64 / 1000.0),
            );
        }
        let errors = checks
            .iter()
            .filter(|c| c.level == CheckLevel::Error)
            .count();
        values.insert(CHECK_FAILURES.into(), errors as f64);
        let considered: u64 = checks.iter().map(|c| c.considered).sum();
        let failing: u64 = checks.iter().map(|c| c.failing).sum();
        if considered > 0 {
            values.insert(
                "check_failure_rate".into(),
                failing as f64 / considered as f64,
            );
        }
        for c in checks {
            let v = values
                .entry(format!("{CHECK_FAILURES}.{}", c.check))
                .or_insert(0.0);
            if c.level == CheckLevel::Error {
                *v += 1.0;
            }
        }
        Measures {
            values,
            runs: runs.len() as u64,
            successful_runs: durations.len() as u64,
            measured_cpu_runs: cpu.len() as u64,
            measured_memory_runs: memory.len() as u64,
            committed_runs: committed.len() as u64,
            check_results: checks.len() as u64,
            window_ms,
        }
    }

    /// Measures holding one value only (a Prometheus query's [`RESULT`]).
    pub fn single(name: &str, value: f64) -> Measures {
        Measures {
            values: BTreeMap::from([(name.to_string(), value)]),
            ..Measures::default()
        }
    }

    /// A metric's value; `None` when it cannot be computed over this window.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// Every value that could be computed.
    pub fn values(&self) -> &BTreeMap<String, f64> {
        &self.values
    }

    /// Finished runs in the window (the `batches` metric).
    pub fn batches(&self) -> u64 {
        self.runs
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// The sample counts, for a measurement's record of what it was computed from.
    pub fn samples(&self) -> serde_json::Value {
        serde_json::json!({
            "runs": self.runs,
            "successful_runs": self.successful_runs,
            "measured_cpu_runs": self.measured_cpu_runs,
            "measured_memory_runs": self.measured_memory_runs,
            "committed_runs": self.committed_runs,
            "check_results": self.check_results,
        })
    }

    /// Why a metric is absent, for error messages.
    pub fn why_absent(&self, name: &str) -> String {
        match name {
            "error_rate" | "quarantine_rate" => "no finished run in the window".into(),
            "p50_ms" | "p95_ms" => format!(
                "no successful run in the window ({} run(s) finished, none of them successfully)",
                self.runs
            ),
            CPU_MS | PEAK_MEMORY_BYTES => format!(
                "no successful run in the window had its {} measured ({} successful run(s); runs recorded before sluice measured them, and runs of a binary without the counting allocator for memory, have none)",
                if name == CPU_MS {
                    "CPU time"
                } else {
                    "peak memory"
                },
                self.successful_runs
            ),
            "rows_ratio" => "no committed run with input rows in the window".into(),
            "throughput_rps" => "the window is empty".into(),
            "check_failure_rate" => "no check considered any row in the window".into(),
            _ => match name.strip_prefix(&format!("{CHECK_FAILURES}.")) {
                Some(check) => format!(
                    "no result of check {check:?} in the window: is it the name of one of the pipeline's checks?"
                ),
                None => format!("{name:?} is not a metric"),
            },
        }
    }
}
