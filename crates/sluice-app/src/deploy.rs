//! Deployments as the adapters see them: start one from a spec file, send it commands, read
//! its state and the history. The controller ([`sluice_deploy::Controller`], run by the
//! leader duties of whichever process holds the lease) does the moving; these functions only
//! write requests and read.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_deploy::{Data, State};
use sluice_engine::spec::DeploySpec;
use sluice_quality::Decision;
use sluice_quality::analysis::{AnalysisSpec, Scope};
use sluice_quality::policy::{Step, Strategy};
use sluice_store::{
    DeliveryState, DeploymentEvent, DeploymentOutcome, DeploymentRecord, DeploymentRequest,
    MeasurementRecord, NewDeployment, Route, RouteMode, Store, WebhookDelivery,
};

use crate::error::{AppError, During, Result};
use crate::roots::Roots;
use crate::verify::{self, PreOptions};

/// What [`deploy`] did with a spec.
pub enum Deployed {
    /// The pipeline had no version: this one is its first, current at once.
    First(Arc<sluice_engine::Pipeline>),
    /// The spec is the current version already: nothing to deploy.
    Unchanged(Arc<sluice_engine::Pipeline>),
    /// A deployment from the stable version to this one started.
    Started {
        pipeline: Arc<sluice_engine::Pipeline>,
        deployment: Box<DeploymentRecord>,
    },
}

impl Deployed {
    pub fn pipeline(&self) -> &Arc<sluice_engine::Pipeline> {
        match self {
            Deployed::First(p) | Deployed::Unchanged(p) => p,
            Deployed::Started { pipeline, .. } => pipeline,
        }
    }
}

/// How [`deploy`] starts a deployment.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Overrides the spec's `deploy.strategy`.
    pub strategy: Option<Strategy>,
    /// Run the pre-deploy suite and refuse on a FAIL (`sluice deploy`); `sluice run` starts
    /// the deployment the spec asks for and lets analysis judge.
    pub pre_suite: bool,
    /// For the history: `sluice deploy`, `sluice run`.
    pub started_by: String,
}

/// Registers the spec as an immutable version without making it current and starts a
/// deployment to it from the stable version, under the spec's `deploy:` policy (or
/// `opts.strategy`). Refused while the pipeline has a deployment in progress, and, with
/// `opts.pre_suite`, when the pre-deploy suite fails (its reasons in the message).
pub async fn deploy(
    store: &Arc<dyn Store>,
    store_url: &str,
    path: &Path,
    opts: &DeployOptions,
) -> Result<Deployed> {
    let pipeline = crate::compile(path, 0, store_url).await?;
    crate::probe_sink(&pipeline, path).await?;
    let pre = opts.pre_suite.then_some((path, store_url));
    start(store, pipeline, pre, opts).await
}

/// A spec sent over the network to deploy: its YAML (with the folder, under a root, its
/// relative paths resolve against), or a spec file under the server's roots.
#[derive(Debug, Clone, Copy)]
pub enum NetworkSpec<'a> {
    Text {
        text: &'a str,
        base_dir: Option<&'a str>,
    },
    File(&'a str),
}

/// [`deploy`] of a spec sent over the network to pipeline `name` (which the spec must name),
/// confined to `roots` (see [`crate::roots`]). The pre-deploy suite is not run (it reads the
/// spec as a file on the operator's machine): analysis judges the candidate, as for
/// `sluice run`.
pub async fn deploy_confined(
    store: &Arc<dyn Store>,
    name: &str,
    spec: NetworkSpec<'_>,
    roots: &Roots,
    opts: &DeployOptions,
) -> Result<Deployed> {
    let pipeline = match spec {
        NetworkSpec::Text { text, base_dir } => {
            crate::roots::compile_confined(store, text, base_dir, roots).await?
        }
        NetworkSpec::File(path) => {
            let (text, base) = roots.read_spec(path)?;
            let base = base.display().to_string();
            crate::roots::compile_confined(store, &text, Some(&base), roots).await?
        }
    };
    if pipeline.name() != name {
        return Err(AppError::User(format!(
            "the spec is for pipeline {:?}, not {name:?}: send it to /api/v1/pipelines/{}/deployments",
            pipeline.name(),
            pipeline.name()
        )));
    }
    crate::probe_sink(&pipeline, Path::new("<request>")).await?;
    start(store, pipeline, None, opts).await
}

/// Registers a compiled candidate and starts its deployment; `pre` is the spec file and store
/// whose pre-deploy suite must pass first.
async fn start(
    store: &Arc<dyn Store>,
    mut pipeline: sluice_engine::Pipeline,
    pre: Option<(&Path, &str)>,
    opts: &DeployOptions,
) -> Result<Deployed> {
    let name = pipeline.name().to_string();
    let Some(record) = store.pipeline(&name).await.during("reading the pipeline")? else {
        crate::register_version(store, &mut pipeline, true).await?;
        return Ok(Deployed::First(Arc::new(pipeline)));
    };
    if let Some(active) = store
        .active_deployment(&name)
        .await
        .during("reading the pipeline's deployments")?
    {
        return Err(in_progress(&active));
    }
    if let Some((path, store_url)) = pre {
        let verification =
            verify::pre_compiled(&pipeline, Ok(store), store_url, &PreOptions::default()).await;
        let verdict = verification.verdict(None);
        if verdict.decision == Decision::Rollback {
            return Err(AppError::User(format!(
                "{}: the pre-deploy suite refuses this version: {}; nothing was deployed (see `sluice verify pre {}`)",
                path.display(),
                verdict.reasons.join("; "),
                path.display()
            )));
        }
    }
    crate::register_version(store, &mut pipeline, false).await?;
    if pipeline.version == record.current_version {
        return Ok(Deployed::Unchanged(Arc::new(pipeline)));
    }
    let policy = resolve_policy(store, pipeline.spec.deploy.clone(), opts.strategy).await?;
    let strategy = policy.strategy;
    let new = NewDeployment {
        pipeline: name.clone(),
        stable_version: record.current_version,
        candidate_version: pipeline.version,
        strategy: strategy.as_str().into(),
        policy: serde_json::to_string(&policy)
            .map_err(|e| AppError::Internal(format!("encoding the deploy policy: {e}")))?,
        state: State::Progressing.as_str().into(),
        route: Route {
            mode: RouteMode::Batch,
            weight: 0,
        },
        started_by: opts.started_by.clone(),
    };
    match store
        .start_deployment(&new)
        .await
        .during("starting the deployment")?
    {
        Ok(deployment) => Ok(Deployed::Started {
            pipeline: Arc::new(pipeline),
            deployment: Box::new(deployment),
        }),
        Err(active) => Err(in_progress(&active)),
    }
}

fn in_progress(active: &DeploymentRecord) -> AppError {
    AppError::Conflict(format!(
        "pipeline {} has a deployment in progress (#{}: v{} -> v{}, {}); wait for it to end (`sluice deploy status {}`) or abort it (`sluice abort {}`)",
        active.pipeline,
        active.id,
        active.stable_version,
        active.candidate_version,
        active.state,
        active.pipeline,
        active.pipeline
    ))
}

/// The policy a deployment follows: the spec's `deploy:` (defaults when absent), the strategy
/// override, and every analysis template it references resolved from the store, so the
/// deployment is immune to later edits of a template.
pub async fn resolve_policy(
    store: &Arc<dyn Store>,
    spec: Option<DeploySpec>,
    strategy: Option<Strategy>,
) -> Result<DeploySpec> {
    let mut policy = spec.unwrap_or_default();
    if let Some(s) = strategy {
        policy.strategy = s;
    }
    if let Some(analysis) = policy.analysis.as_mut() {
        resolve_analysis(store, analysis, Scope::Background).await?;
    }
    for step in &mut policy.steps {
        if let Step::Analysis(analysis) = step {
            resolve_analysis(store, analysis, Scope::Step).await?;
        }
    }
    Ok(policy)
}

async fn resolve_analysis(
    store: &Arc<dyn Store>,
    analysis: &mut AnalysisSpec,
    scope: Scope,
) -> Result<()> {
    let mut texts = std::collections::BTreeMap::new();
    for t in &analysis.templates {
        if let Some(template) = store
            .analysis_template(&t.name)
            .await
            .during("reading an analysis template")?
        {
            texts.insert(t.name.clone(), template.spec);
        }
    }
    let metrics = analysis
        .resolve(|name| texts.get(name).cloned(), scope)
        .map_err(|e| {
            AppError::User(format!(
                "{e} (store a template with `sluice analysis put NAME FILE`)"
            ))
        })?;
    analysis.templates.clear();
    analysis.metrics = metrics;
    Ok(())
}

/// A command on a pipeline's active deployment.
pub async fn request(
    store: &Arc<dyn Store>,
    pipeline: &str,
    request: DeploymentRequest,
) -> Result<DeploymentRecord> {
    let active = active(store, pipeline).await?;
    applies(&active, request)?;
    let message = format!("`sluice {}` requested", command_of(request));
    let accepted = store
        .request_deployment(active.id, request, &message)
        .await
        .during("sending the request")?;
    if !accepted {
        return Err(AppError::Conflict(format!(
            "deployment #{} of {pipeline} ended before the request reached it; see `sluice history {pipeline}`",
            active.id
        )));
    }
    store
        .deployment(active.id)
        .await
        .during("reading the deployment")?
        .ok_or_else(|| AppError::Internal(format!("deployment #{} vanished", active.id)))
}

fn command_of(request: DeploymentRequest) -> &'static str {
    match request {
        DeploymentRequest::Promote => "promote",
        DeploymentRequest::PromoteFull => "promote --full",
        DeploymentRequest::Pause => "pause",
        DeploymentRequest::Resume => "resume",
        DeploymentRequest::Abort => "abort",
    }
}

/// Refuses a command the deployment's state does not take (the controller would drop it):
/// the moves of [`sluice_deploy::State::can_become`] a person may ask for.
fn applies(d: &DeploymentRecord, request: DeploymentRequest) -> Result<()> {
    let state: State = d
        .state
        .parse()
        .map_err(|e| AppError::Internal(format!("deployment #{}: {e}", d.id)))?;
    let ok = match request {
        DeploymentRequest::Abort => !matches!(state, State::Aborting | State::Repairing),
        DeploymentRequest::Pause => state == State::Progressing,
        DeploymentRequest::Resume => state == State::Paused,
        DeploymentRequest::Promote => matches!(state, State::Progressing | State::Paused),
        DeploymentRequest::PromoteFull => {
            matches!(state, State::Progressing | State::Paused | State::Draining)
        }
    };
    if ok {
        return Ok(());
    }
    let hint = match state {
        State::Paused => "resume, promote or abort it",
        State::Progressing => "pause, promote or abort it",
        State::Draining => "promote --full or abort it",
        _ => "wait for it to end",
    };
    Err(AppError::Conflict(format!(
        "deployment #{} of {} is {state}: `{}` does not apply now; {hint} (see `sluice deploy status {}`)",
        d.id,
        d.pipeline,
        command_of(request),
        d.pipeline
    )))
}

async fn active(store: &Arc<dyn Store>, pipeline: &str) -> Result<DeploymentRecord> {
    match store
        .active_deployment(pipeline)
        .await
        .during("reading the pipeline's deployments")?
    {
        Some(d) => Ok(d),
        None => {
            known(store, pipeline).await?;
            Err(AppError::Conflict(format!(
                "pipeline {pipeline} has no deployment in progress; see `sluice history {pipeline}`"
            )))
        }
    }
}

/// NotFound unless the store has pipeline `name`.
async fn known(store: &Arc<dyn Store>, name: &str) -> Result<()> {
    match store.pipeline(name).await.during("reading the pipeline")? {
        Some(_) => Ok(()),
        None => Err(AppError::NotFound(format!(
            "no pipeline {name:?} in the store: list them at /api/v1/pipelines or with `sluice status`"
        ))),
    }
}

/// `sluice rollback`: with a deployment in progress, abort it; else go back from the current
/// version to the stable version it replaced, skipping every step: new batches go to that
/// version at once and the current version's rows are repaired (removed, re-run).
pub async fn rollback(store: &Arc<dyn Store>, pipeline: &str) -> Result<DeploymentRecord> {
    if store
        .active_deployment(pipeline)
        .await
        .during("reading the pipeline's deployments")?
        .is_some()
    {
        return request(store, pipeline, DeploymentRequest::Abort).await;
    }
    let Some(record) = store
        .pipeline(pipeline)
        .await
        .during("reading the pipeline")?
    else {
        return Err(AppError::NotFound(format!(
            "no pipeline {pipeline:?} in the store: see `sluice status`"
        )));
    };
    let current = record.current_version;
    let previous = store
        .deployments(Some(pipeline), 1000)
        .await
        .during("reading the pipeline's deployments")?
        .into_iter()
        .find(|d| d.outcome == Some(DeploymentOutcome::Promoted) && d.candidate_version == current)
        .map(|d| d.stable_version)
        .ok_or_else(|| {
            AppError::Conflict(format!(
                "{pipeline}@{current} was not promoted by a deployment, so there is no stable version before it to go back to; deploy the version you want with `sluice deploy`"
            ))
        })?;
    let new = NewDeployment {
        pipeline: pipeline.to_string(),
        stable_version: previous,
        candidate_version: current,
        strategy: sluice_deploy::ROLLBACK.into(),
        policy: serde_json::to_string(&DeploySpec::default())
            .map_err(|e| AppError::Internal(format!("encoding the deploy policy: {e}")))?,
        state: State::Aborting.as_str().into(),
        route: Route {
            mode: RouteMode::Batch,
            weight: 0,
        },
        started_by: "sluice rollback".into(),
    };
    let started = store
        .start_deployment(&new)
        .await
        .during("starting the rollback")?
        .map_err(|active| in_progress(&active))?;
    Ok(started)
}

/// A deployment with everything `deploy status` and `history` show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeploymentView {
    pub deployment: DeploymentRecord,
    pub policy: Option<DeploySpec>,
    pub data: Data,
    pub events: Vec<DeploymentEvent>,
    pub measurements: Vec<MeasurementRecord>,
    /// Each analysis metric's first and last measurement (before and after) and its phases.
    pub metrics: Vec<MetricSummary>,
    /// What became of each event sent to each webhook URL.
    pub webhooks: Vec<WebhookDelivery>,
}

/// One analysis metric of a deployment: its first and last measurement (before and after,
/// for the candidate and for stable), the last phase and message, and how many measurements
/// ended in each phase.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricSummary {
    pub analysis: String,
    pub metric: String,
    pub measured: usize,
    pub first_value: Option<f64>,
    pub last_value: Option<f64>,
    pub first_stable_value: Option<f64>,
    pub last_stable_value: Option<f64>,
    pub last_phase: String,
    pub last_message: String,
    /// Phase (`successful`, `failed`, `inconclusive`, `error`, ...) -> measurements.
    pub phases: std::collections::BTreeMap<String, usize>,
}

/// The metrics of `measurements` (oldest first), in the order each was first measured.
pub fn summarize(measurements: &[MeasurementRecord]) -> Vec<MetricSummary> {
    let mut out: Vec<MetricSummary> = Vec::new();
    for m in measurements {
        let at = match out
            .iter()
            .position(|s| s.analysis == m.analysis && s.metric == m.metric)
        {
            Some(at) => at,
            None => {
                out.push(MetricSummary {
                    analysis: m.analysis.clone(),
                    metric: m.metric.clone(),
                    measured: 0,
                    first_value: m.value,
                    last_value: None,
                    first_stable_value: m.stable_value,
                    last_stable_value: None,
                    last_phase: String::new(),
                    last_message: String::new(),
                    phases: Default::default(),
                });
                out.len() - 1
            }
        };
        let s = &mut out[at];
        s.measured += 1;
        s.last_value = m.value;
        s.last_stable_value = m.stable_value;
        s.last_phase = m.phase.clone();
        s.last_message = m.message.clone();
        *s.phases.entry(m.phase.clone()).or_default() += 1;
    }
    out
}

/// One webhook URL's deliveries of a deployment, summed up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookSummary {
    pub url: String,
    pub delivered: usize,
    pub failed: usize,
    /// Sending or waiting for a retry.
    pub pending: usize,
    /// The last error of a delivery not delivered.
    pub last_error: Option<String>,
}

impl DeploymentView {
    /// Per webhook URL: delivered, failed and pending deliveries, in the order of the URLs'
    /// first delivery.
    pub fn webhook_summary(&self) -> Vec<WebhookSummary> {
        let mut out: Vec<WebhookSummary> = Vec::new();
        for w in &self.webhooks {
            let i = match out.iter().position(|s| s.url == w.url) {
                Some(i) => i,
                None => {
                    out.push(WebhookSummary {
                        url: w.url.clone(),
                        delivered: 0,
                        failed: 0,
                        pending: 0,
                        last_error: None,
                    });
                    out.len() - 1
                }
            };
            let s = &mut out[i];
            match w.state {
                DeliveryState::Delivered => s.delivered += 1,
                DeliveryState::Failed => s.failed += 1,
                DeliveryState::Sending | DeliveryState::Retrying => s.pending += 1,
            }
            if w.state != DeliveryState::Delivered && w.last_error.is_some() {
                s.last_error = w.last_error.clone();
            }
        }
        out
    }

    /// How long it ran (to its end, or until now).
    pub fn duration(&self, now: i64) -> Duration {
        let end = self.deployment.finished_at.unwrap_or(now);
        Duration::from_millis((end - self.deployment.created_at).max(0) as u64)
    }
}

/// A deployment and its history.
pub async fn view(store: &Arc<dyn Store>, deployment: DeploymentRecord) -> Result<DeploymentView> {
    let events = store
        .deployment_events(deployment.id)
        .await
        .during("reading the deployment's events")?;
    let measurements = store
        .measurements(deployment.id)
        .await
        .during("reading the deployment's measurements")?;
    let webhooks = store
        .webhook_deliveries(deployment.id)
        .await
        .during("reading the deployment's webhook deliveries")?;
    Ok(DeploymentView {
        policy: serde_json::from_str(&deployment.policy).ok(),
        data: serde_json::from_str(&deployment.data).unwrap_or_default(),
        deployment,
        events,
        metrics: summarize(&measurements),
        measurements,
        webhooks,
    })
}

/// The pipeline's active deployment, else its latest.
pub async fn status(store: &Arc<dyn Store>, pipeline: &str) -> Result<Option<DeploymentView>> {
    let latest = match store
        .active_deployment(pipeline)
        .await
        .during("reading the pipeline's deployments")?
    {
        Some(d) => Some(d),
        None => store
            .deployments(Some(pipeline), 1)
            .await
            .during("reading the pipeline's deployments")?
            .into_iter()
            .next(),
    };
    match latest {
        Some(d) => Ok(Some(view(store, d).await?)),
        None => {
            known(store, pipeline).await?;
            Ok(None)
        }
    }
}

/// Every deployment of a pipeline (or of all), newest first.
pub async fn history(
    store: &Arc<dyn Store>,
    pipeline: Option<&str>,
    limit: i64,
) -> Result<Vec<DeploymentView>> {
    if let Some(name) = pipeline {
        known(store, name).await?;
    }
    let mut out = Vec::new();
    for d in store
        .deployments(pipeline, limit)
        .await
        .during("reading the deployments")?
    {
        out.push(view(store, d).await?);
    }
    Ok(out)
}

/// Waits until deployment `id` ends; `on_change` sees it every time its state, step or route
/// changes. Store outages are waited out.
pub async fn wait(
    store: &Arc<dyn Store>,
    id: i64,
    poll: Duration,
    mut on_change: impl FnMut(&DeploymentRecord),
) -> Result<DeploymentRecord> {
    let mut last: Option<(String, i64, Route)> = None;
    loop {
        match store.deployment(id).await {
            Ok(Some(d)) => {
                let now = (d.state.clone(), d.step, d.route);
                if last.as_ref() != Some(&now) {
                    on_change(&d);
                    last = Some(now);
                }
                if d.outcome.is_some() {
                    return Ok(d);
                }
            }
            Ok(None) => return Err(AppError::Internal(format!("deployment #{id} vanished"))),
            Err(e) if e.is_outage() => {}
            Err(e) => return Err(e).during("reading the deployment"),
        }
        tokio::time::sleep(poll).await;
    }
}
