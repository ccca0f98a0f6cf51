//! Analysis: measuring a candidate version (against its stable predecessor) at intervals and
//! turning the measurements into a verdict, the way Argo Rollouts' AnalysisRuns do.
//!
//! A [`MetricSpec`] says what to measure and when: a condition over the [`Measures`] of the
//! last `window` (see [`condition`] for the syntax), taken every `interval`, `count` times.
//! [`judge`] turns one window's measures into a [`Measurement`] (Successful, Failed,
//! Inconclusive or Error, with every value it read), [`assess`] turns a metric's measurements
//! so far into a [`Verdict`], and [`combine`] the verdicts of several metrics into one.
//!
//! ```
//! use sluice_quality::analysis::{judge, assess, MetricSpec, Measures, Phase, RunOutcome, RunSample, Verdict};
//! let metric: MetricSpec = yaml_serde::from_str(
//!     "name: latency\nsuccess_condition: candidate.p95_ms < 1.2 * stable.p95_ms\ncount: 2",
//! ).unwrap();
//! let run = |ms| RunSample { outcome: RunOutcome::Committed, duration_ms: ms, rows_in: 10, rows_out: 10, finished_at: 0,
//!                       cpu_us: None, peak_memory_bytes: None };
//! let candidate = Measures::of(&[run(110), run(120)], &[], 10_000);
//! let stable = Measures::of(&[run(100), run(105)], &[], 10_000);
//! let m = judge(&metric, &candidate, Some(&stable));
//! assert_eq!(m.phase, Phase::Successful);
//! assert_eq!(assess(&metric, &[m.phase]), Verdict::Running);
//! assert_eq!(assess(&metric, &[m.phase, Phase::Successful]), Verdict::Successful);
//! ```
//!
//! Where this differs from Argo, it is toward never passing on missing data: a value that
//! cannot be measured is an Error, and a window with fewer than `min_samples` candidate
//! batches is Inconclusive.

pub mod condition;
pub mod measures;
pub mod prometheus;
mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use condition::{Condition, MetricRef, Side};
pub use measures::{
    CHECK_FAILURES, CPU_MS, CheckLevel, CheckSample, METRICS, Measures, PEAK_MEMORY_BYTES, RESULT,
    RunOutcome, RunSample,
};
pub use prometheus::PrometheusQuery;
pub use template::Template;

/// One step of a path into a spec (`steps`, `2`, `analysis`), so an error can be pointed at
/// its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Key(String),
    Index(usize),
}

impl From<&str> for PathPart {
    fn from(k: &str) -> Self {
        PathPart::Key(k.to_string())
    }
}

impl From<usize> for PathPart {
    fn from(i: usize) -> Self {
        PathPart::Index(i)
    }
}

/// A validation error and where it is, as a path from the value that was validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: Vec<PathPart>,
    pub message: String,
}

impl FieldError {
    pub fn new(path: Vec<PathPart>, message: impl Into<String>) -> FieldError {
        FieldError {
            path,
            message: message.into(),
        }
    }

    /// The same error, under `prefix` (the path of the value this one sits in).
    pub fn under(mut self, prefix: Vec<PathPart>) -> FieldError {
        let mut path = prefix;
        path.append(&mut self.path);
        self.path = path;
        self
    }

    /// The path as written in YAML terms: `steps[2].analysis.metrics[0].name`.
    pub fn dotted(&self) -> String {
        dotted(&self.path)
    }
}

/// `steps[2].analysis` for a path.
pub fn dotted(path: &[PathPart]) -> String {
    let mut out = String::new();
    for p in path {
        match p {
            PathPart::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathPart::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.dotted(), self.message)
        }
    }
}

macro_rules! at_path {
    ($($p:expr),* $(,)?) => { vec![$($crate::analysis::PathPart::from($p)),*] };
}
pub(crate) use at_path;

/// What to measure, how often and how to judge it; Argo's `Metric`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// Names the metric in measurements and verdicts; unique within an analysis.
    pub name: String,
    /// Time between measurements (default 10s, at least 1s).
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How many measurements (Errors not counted) complete the metric. Absent: a background
    /// analysis measures until the deployment ends; a step's analysis measures once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Wait this long before the first measurement (default 0).
    #[serde(default, with = "humantime_serde")]
    pub initial_delay: Duration,
    /// A measurement is Successful when this holds (see [`condition`] for the syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// A measurement is Failed when this holds, whatever `success_condition` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// More Failed measurements than this fail the metric (default 0).
    #[serde(default)]
    pub failure_limit: u32,
    /// More Inconclusive measurements than this make the metric Inconclusive (default 0).
    #[serde(default)]
    pub inconclusive_limit: u32,
    /// More Errors in a row than this fail the metric (default 4).
    #[serde(default = "default_consecutive_error_limit")]
    pub consecutive_error_limit: u32,
    /// Measured and reported, but never fails or holds the deployment.
    #[serde(default)]
    pub dry_run: bool,
    /// A window with fewer candidate batches than this is Inconclusive, never a pass
    /// (default 1).
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// How far back each measurement looks (default: `interval`).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    /// Measure a Prometheus query instead of the built-in measures: the conditions read its
    /// value as `result` (see [`prometheus`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusQuery>,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_consecutive_error_limit() -> u32 {
    4
}
fn default_min_samples() -> u64 {
    1
}

impl MetricSpec {
    /// A metric with the defaults and no conditions (set one before use).
    pub fn new(name: impl Into<String>) -> MetricSpec {
        MetricSpec {
            name: name.into(),
            interval: default_interval(),
            count: None,
            initial_delay: Duration::ZERO,
            success_condition: None,
            failure_condition: None,
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: default_consecutive_error_limit(),
            dry_run: false,
            min_samples: default_min_samples(),
            window: None,
            prometheus: None,
        }
    }

    /// How far back a measurement looks.
    pub fn window(&self) -> Duration {
        self.window.unwrap_or(self.interval)
    }

    /// The parsed conditions (success, failure).
    pub fn conditions(&self) -> Result<(Option<Condition>, Option<Condition>), String> {
        let parse = |c: &Option<String>, field: &str| {
            c.as_deref()
                .map(|t| Condition::parse(t).map_err(|e| format!("{field}: {e}")))
                .transpose()
        };
        Ok((
            parse(&self.success_condition, "success_condition")?,
            parse(&self.failure_condition, "failure_condition")?,
        ))
    }

    /// Whether a condition reads the stable version.
    pub fn needs_stable(&self) -> bool {
        matches!(self.conditions(), Ok((s, f))
            if s.as_ref().is_some_and(Condition::needs_stable)
                || f.as_ref().is_some_and(Condition::needs_stable))
    }

    /// Checks the metric: a name, at least one condition, conditions that parse and name
    /// known metrics (and, given the pipeline's check names, known checks), intervals of at
    /// least 1s, a count of at least 1. Paths are relative to the metric.
    pub fn validate(&self, checks: Option<&[String]>) -> Result<(), FieldError> {
        if !valid_name(&self.name) {
            return Err(FieldError::new(
                at_path!["name"],
                format!(
                    "metric name {:?} is not valid: use letters, digits, '_', '-' and '.'",
                    self.name
                ),
            ));
        }
        if self.success_condition.is_none() && self.failure_condition.is_none() {
            return Err(FieldError::new(
                at_path![],
                format!(
                    "metric {:?} has no condition: give success_condition, failure_condition or both",
                    self.name
                ),
            ));
        }
        for (field, text) in [
            ("success_condition", &self.success_condition),
            ("failure_condition", &self.failure_condition),
        ] {
            let Some(text) = text else { continue };
            let c = Condition::parse(text).map_err(|e| FieldError::new(at_path![field], e))?;
            let reads_result = c.metrics().iter().any(|m| m.name == RESULT);
            match &self.prometheus {
                Some(_) => {
                    if let Some(m) = c.metrics().iter().find(|m| m.name != RESULT) {
                        return Err(FieldError::new(
                            at_path![field],
                            format!(
                                "condition `{text}` reads {m}, but a metric with `prometheus:` judges its query's value only: write it as `result` (e.g. `result < 0.05`)"
                            ),
                        ));
                    }
                    if !reads_result {
                        return Err(FieldError::new(
                            at_path![field],
                            format!(
                                "condition `{text}` does not read `result`, the value of the metric's prometheus query: compare it (e.g. `result < 0.05`)"
                            ),
                        ));
                    }
                }
                None if reads_result => {
                    return Err(FieldError::new(
                        at_path![field],
                        format!(
                            "condition `{text}` reads `result`, the value of a prometheus query, but the metric has no `prometheus: {{address, query}}`: add one, or read a built-in metric ({})",
                            METRICS.join(", ")
                        ),
                    ));
                }
                None => {}
            }
            if let Some(checks) = checks {
                for m in c.metrics() {
                    let Some(check) = m.name.strip_prefix(&format!("{CHECK_FAILURES}.")) else {
                        continue;
                    };
                    if !checks.iter().any(|c| c == check) {
                        return Err(FieldError::new(
                            at_path![field],
                            format!(
                                "condition `{text}` reads {m}, but the pipeline has no check named {check:?}; its checks are: {}",
                                if checks.is_empty() {
                                    "none".to_string()
                                } else {
                                    checks.join(", ")
                                }
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(p) = &self.prometheus {
            p.validate().map_err(|e| e.under(at_path!["prometheus"]))?;
        }
        if self.interval < Duration::from_secs(1) {
            return Err(FieldError::new(
                at_path!["interval"],
                "interval must be at least 1s",
            ));
        }
        if self.window.is_some_and(|w| w < Duration::from_secs(1)) {
            return Err(FieldError::new(
                at_path!["window"],
                "window must be at least 1s",
            ));
        }
        if self.count == Some(0) {
            return Err(FieldError::new(
                at_path!["count"],
                "count must be at least 1 (leave it out to measure until the deployment ends)",
            ));
        }
        Ok(())
    }
}

/// Names of metrics, templates and arguments: letters, digits, `_`, `-`, `.`.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A stored analysis template, by name, with arguments for its `{{args.NAME}}` placeholders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    pub name: String,
    /// Argument values, over the analysis's `args` and the template's defaults.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "template::scalar_map"
    )]
    pub args: BTreeMap<String, String>,
}

/// An argument: in a template, a declaration with an optional default; in a spec's analysis,
/// a value passed to every template it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arg {
    pub name: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "template::scalar_option"
    )]
    pub value: Option<String>,
}

/// An analysis: stored templates by name plus metrics written in place; Argo's
/// `RolloutAnalysis` (in a spec) and `AnalysisTemplate` (a template's text is one of these,
/// with `args` declaring its arguments and no `templates`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<TemplateRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
}

/// Where an analysis runs: its metrics' default `count` differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A canary step's analysis: the step waits for it, so a metric without `count` is
    /// measured once.
    Step,
    /// The deployment's background analysis: a metric without `count` is measured until the
    /// deployment ends.
    Background,
}

impl AnalysisSpec {
    /// Checks an analysis written in a spec: at least one template or metric, well-formed
    /// template and argument names, every argument with a value, each metric valid
    /// ([`MetricSpec::validate`]) and named once. Templates are resolved when a deployment
    /// starts (the store holds them), so only their names are checked here.
    pub fn validate(&self, checks: Option<&[String]>) -> Result<(), FieldError> {
        if self.templates.is_empty() && self.metrics.is_empty() {
            return Err(FieldError::new(
                at_path![],
                "the analysis names no templates and no metrics: give `templates: [{name: ...}]` or `metrics: [...]`",
            ));
        }
        for (i, t) in self.templates.iter().enumerate() {
            if !valid_name(&t.name) {
                return Err(FieldError::new(
                    at_path!["templates", i, "name"],
                    format!(
                        "template name {:?} is not valid: use letters, digits, '_', '-' and '.'",
                        t.name
                    ),
                ));
            }
            if let Some(bad) = t.args.keys().find(|k| !valid_name(k)) {
                return Err(FieldError::new(
                    at_path!["templates", i, "args"],
                    format!(
                        "argument name {bad:?} is not valid: use letters, digits, '_', '-' and '.'"
                    ),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, a) in self.args.iter().enumerate() {
            if !valid_name(&a.name) {
                return Err(FieldError::new(
                    at_path!["args", i, "name"],
                    format!(
                        "argument name {:?} is not valid: use letters, digits, '_', '-' and '.'",
                        a.name
                    ),
                ));
            }
            if a.value.is_none() {
                return Err(FieldError::new(
                    at_path!["args", i],
                    format!("argument {:?} has no value: give `value: ...`", a.name),
                ));
            }
            if !seen.insert(a.name.as_str()) {
                return Err(FieldError::new(
                    at_path!["args", i, "name"],
                    format!("argument {:?} is given twice", a.name),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, m) in self.metrics.iter().enumerate() {
            m.validate(checks)
                .map_err(|e| e.under(at_path!["metrics", i]))?;
            if !names.insert(m.name.as_str()) {
                return Err(FieldError::new(
                    at_path!["metrics", i, "name"],
                    format!("metric {:?} is named twice in this analysis", m.name),
                ));
            }
        }
        Ok(())
    }

    /// The metrics to run: each named template's (fetched by `template`, which returns its
    /// text, and instantiated with its arguments), then the ones written in place. Under
    /// [`Scope::Step`] a metric without `count` gets `count: 1`. Errors name the template and
    /// the argument or metric at fault.
    pub fn resolve(
        &self,
        template: impl Fn(&str) -> Option<String>,
        scope: Scope,
    ) -> Result<Vec<MetricSpec>, String> {
        let shared: BTreeMap<String, String> = self
            .args
            .iter()
            .filter_map(|a| Some((a.name.clone(), a.value.clone()?)))
            .collect();
        let mut out: Vec<MetricSpec> = Vec::new();
        for r in &self.templates {
            let text = template(&r.name).ok_or_else(|| {
                format!(
                    "analysis template {:?} is not in the store: add it, or fix the name",
                    r.name
                )
            })?;
            let t = Template::parse(&r.name, &text)?;
            out.extend(t.instantiate(&shared, &r.args)?);
        }
        for m in &self.metrics {
            let mut m = m.clone();
            if let Some(p) = &m.prometheus {
                m.prometheus = Some(
                    p.with_args(&shared)
                        .map_err(|e| format!("metric {:?}: {e}", m.name))?,
                );
            }
            out.push(m);
        }
        let mut names = BTreeSet::new();
        for m in &mut out {
            if !names.insert(m.name.clone()) {
                return Err(format!(
                    "metric {:?} is defined twice (by two templates, or a template and the analysis): rename one",
                    m.name
                ));
            }
            if scope == Scope::Step && m.count.is_none() {
                m.count = Some(1);
            }
        }
        Ok(out)
    }
}

/// What one measurement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Successful,
    Failed,
    Inconclusive,
    /// The metric could not be measured (a value absent, a division by zero).
    Error,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Successful => "successful",
            Phase::Failed => "failed",
            Phase::Inconclusive => "inconclusive",
            Phase::Error => "error",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measurement of one metric, with what it was computed from so the decision can be
/// explained afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub phase: Phase,
    /// The candidate's value of the first metric the conditions read.
    pub value: Option<f64>,
    /// The stable version's value of that metric.
    pub stable_value: Option<f64>,
    pub message: String,
    /// Every value the conditions read on each side, the window, the sample counts and
    /// `min_samples`.
    pub inputs: serde_json::Value,
}

/// Judges one window: Argo's rules, with missing data never passing.
///
/// - fewer than `min_samples` candidate batches: Inconclusive;
/// - a condition that cannot be evaluated (a value absent, division by zero): Error;
/// - `failure_condition` holds: Failed;
/// - both conditions given and neither holds: Inconclusive;
/// - only `success_condition` given and it does not hold: Failed;
/// - only `failure_condition` given and it does not hold: Successful;
/// - otherwise (`success_condition` holds): Successful.
pub fn judge(metric: &MetricSpec, candidate: &Measures, stable: Option<&Measures>) -> Measurement {
    let conditions = metric.conditions();
    let read: Vec<MetricRef> = match &conditions {
        Ok((s, f)) => {
            let mut seen = BTreeSet::new();
            s.iter()
                .chain(f.iter())
                .flat_map(Condition::metrics)
                .filter(|m| seen.insert(m.clone()))
                .collect()
        }
        Err(_) => Vec::new(),
    };
    let names: Vec<&str> = {
        let mut seen = BTreeSet::new();
        read.iter()
            .map(|m| m.name.as_str())
            .filter(|n| seen.insert(*n))
            .collect()
    };
    let side = |m: &Measures| -> serde_json::Value {
        names
            .iter()
            .map(|n| (n.to_string(), serde_json::json!(m.get(n))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let inputs = serde_json::json!({
        "candidate": side(candidate),
        "stable": stable.map(side),
        "window_ms": candidate.window_ms(),
        "samples": {
            "candidate": candidate.samples(),
            "stable": stable.map(Measures::samples),
        },
        "min_samples": metric.min_samples,
    });
    let primary = names.first().copied();
    let value = primary.and_then(|n| candidate.get(n));
    let stable_value = primary.and_then(|n| stable.and_then(|s| s.get(n)));
    let at = |phase: Phase, message: String| Measurement {
        phase,
        value,
        stable_value,
        message,
        inputs: inputs.clone(),
    };
    let (success, failure) = match conditions {
        Ok(c) => c,
        Err(e) => return at(Phase::Error, format!("metric {:?}: {e}", metric.name)),
    };
    if success.is_none() && failure.is_none() {
        return at(
            Phase::Error,
            format!(
                "metric {:?} has no condition: give success_condition or failure_condition",
                metric.name
            ),
        );
    }
    // A Prometheus query has no batches of its own to count: its query decides.
    if metric.prometheus.is_none() && candidate.batches() < metric.min_samples {
        return at(
            Phase::Inconclusive,
            format!(
                "{} candidate batch(es) finished in the last {}, fewer than min_samples {}: not enough to judge",
                candidate.batches(),
                humantime::format_duration(Duration::from_millis(candidate.window_ms())),
                metric.min_samples
            ),
        );
    }
    let eval = |c: &Option<Condition>| c.as_ref().map(|c| c.eval(candidate, stable)).transpose();
    let (s, f) = match (eval(&success), eval(&failure)) {
        (Ok(s), Ok(f)) => (s, f),
        (Err(e), _) | (_, Err(e)) => return at(Phase::Error, e),
    };
    let values = read
        .iter()
        .map(|m| {
            let v = match m.side {
                Side::Candidate => candidate.get(&m.name),
                Side::Stable => stable.and_then(|s| s.get(&m.name)),
            };
            match v {
                Some(v) => format!("{m} = {v}"),
                None => format!("{m} absent"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let text = |c: &Option<Condition>| c.as_ref().map(|c| c.text().to_string()).unwrap_or_default();
    let (phase, why) = match (s, f) {
        (_, Some(true)) => (
            Phase::Failed,
            format!("failure_condition `{}` holds", text(&failure)),
        ),
        (Some(false), Some(false)) => (
            Phase::Inconclusive,
            format!(
                "neither success_condition `{}` nor failure_condition `{}` holds",
                text(&success),
                text(&failure)
            ),
        ),
        (Some(false), None) => (
            Phase::Failed,
            format!("success_condition `{}` does not hold", text(&success)),
        ),
        (None, Some(false)) => (
            Phase::Successful,
            format!("failure_condition `{}` does not hold", text(&failure)),
        ),
        (Some(true), _) => (
            Phase::Successful,
            format!("success_condition `{}` holds", text(&success)),
        ),
        (None, None) => (
            Phase::Error,
            format!("metric {:?} has no condition", metric.name),
        ),
    };
    at(phase, format!("{why} ({values})"))
}

/// Where a metric stands, given its measurements so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "lowercase")]
pub enum Verdict {
    /// More measurements are due.
    Running,
    Successful,
    Failed(String),
    Inconclusive(String),
}

impl Verdict {
    /// Whether no more measurements are due.
    pub fn is_done(&self) -> bool {
        !matches!(self, Verdict::Running)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Running => f.write_str("running"),
            Verdict::Successful => f.write_str("successful"),
            Verdict::Failed(r) => write!(f, "failed: {r}"),
            Verdict::Inconclusive(r) => write!(f, "inconclusive: {r}"),
        }
    }
}

/// A metric's verdict with the counts behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    pub verdict: Verdict,
    /// For a dry-run metric: the Failed or Inconclusive verdict it would have given (its own
    /// verdict is then Successful: it is done and holds nothing).
    pub would_have: Option<Verdict>,
    /// Measurements that count toward `count` (all but Errors).
    pub measured: usize,
    pub successful: usize,
    pub failed: usize,
    pub inconclusive: usize,
    pub errors: usize,
    pub consecutive_errors: usize,
}

/// A metric's verdict from its measurements so far, oldest first; see [`assess_detail`].
pub fn assess(metric: &MetricSpec, phases: &[Phase]) -> Verdict {
    assess_detail(metric, phases).verdict
}

/// A metric's verdict and counts, by Argo's rules, applied after each measurement in turn (so
/// measurements after the one that decided change nothing):
///
/// - Failed more than `failure_limit` times: Failed;
/// - Inconclusive more than `inconclusive_limit` times: Inconclusive;
/// - Error more than `consecutive_error_limit` times in a row: Failed (it could not be
///   measured); an Error does not count toward `count`, and any other phase ends the run;
/// - `count` measurements with none of those: Successful;
/// - otherwise Running.
///
/// A dry-run metric that would have Failed or been Inconclusive is Successful instead, with
/// the verdict it would have given in [`Assessment::would_have`].
pub fn assess_detail(metric: &MetricSpec, phases: &[Phase]) -> Assessment {
    let mut a = Assessment {
        verdict: Verdict::Running,
        would_have: None,
        measured: 0,
        successful: 0,
        failed: 0,
        inconclusive: 0,
        errors: 0,
        consecutive_errors: 0,
    };
    let name = &metric.name;
    for phase in phases {
        match phase {
            Phase::Successful => a.successful += 1,
            Phase::Failed => a.failed += 1,
            Phase::Inconclusive => a.inconclusive += 1,
            Phase::Error => a.errors += 1,
        }
        if *phase == Phase::Error {
            a.consecutive_errors += 1;
        } else {
            a.consecutive_errors = 0;
            a.measured += 1;
        }
        let decided = if a.failed > metric.failure_limit as usize {
            Some(Verdict::Failed(format!(
                "metric {name:?} failed {} time(s), more than failure_limit {}",
                a.failed, metric.failure_limit
            )))
        } else if a.inconclusive > metric.inconclusive_limit as usize {
            Some(Verdict::Inconclusive(format!(
                "metric {name:?} was inconclusive {} time(s), more than inconclusive_limit {}",
                a.inconclusive, metric.inconclusive_limit
            )))
        } else if a.consecutive_errors > metric.consecutive_error_limit as usize {
            Some(Verdict::Failed(format!(
                "metric {name:?} could not be measured {} times in a row (consecutive_error_limit {})",
                a.consecutive_errors, metric.consecutive_error_limit
            )))
        } else if metric.count.is_some_and(|c| a.measured >= c as usize) {
            Some(Verdict::Successful)
        } else {
            None
        };
        if let Some(v) = decided {
            if metric.dry_run && v != Verdict::Successful {
                a.would_have = Some(v);
                a.verdict = Verdict::Successful;
            } else {
                a.verdict = v;
            }
            break;
        }
    }
    a
}

/// The verdict of several metrics: any Failed is Failed, else any Inconclusive is
/// Inconclusive, else all Successful is Successful (so is none at all), else Running. The
/// reasons of every Failed (or Inconclusive) metric are joined.
pub fn combine<'a>(verdicts: impl IntoIterator<Item = &'a Verdict>) -> Verdict {
    let (mut failed, mut inconclusive, mut running) = (Vec::new(), Vec::new(), false);
    for v in verdicts {
        match v {
            Verdict::Failed(r) => failed.push(r.as_str()),
            Verdict::Inconclusive(r) => inconclusive.push(r.as_str()),
            Verdict::Running => running = true,
            Verdict::Successful => {}
        }
    }
    if !failed.is_empty() {
        Verdict::Failed(failed.join("; "))
    } else if !inconclusive.is_empty() {
        Verdict::Inconclusive(inconclusive.join("; "))
    } else if running {
        Verdict::Running
    } else {
        Verdict::Successful
    }
}

#[cfg(test)]
mod tests;
