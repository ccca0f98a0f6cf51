//! One tick of the controller: every active deployment moved on by at most one step.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{BatchId, BatchOutcome, TaskState};
use sluice_engine::sink::{RepairBatch, SinkError};
use sluice_engine::spec::DeploySpec;
use sluice_quality::analysis::Verdict;
use sluice_quality::policy::{Step, Strategy};
use sluice_store::{
    DeploymentRecord, DeploymentRequest, DeploymentUpdate, Fence, Requeue, Route, RouteMode, Store,
    StoreError,
};
use sluice_worker::{LoadError, VersionCache};

use crate::analysis::{self, AnalysisRun};
use crate::hooks::ANALYSIS_FAILED;
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("deployment {id}: {message}")]
    Corrupt { id: i64, message: String },
    #[error("deployment {id}: {message}")]
    Sink { id: i64, message: String },
    #[error("deployment {id}: loading a pipeline version: {message}")]
    Load { id: i64, message: String },
}

/// The controller's own record in a deployment (the row's `data` JSON): what it must remember
/// across ticks and restarts, and what the history reports.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Data {
    /// Raised on every resume: analyses start over (an inconclusive one asks a person, whose
    /// resume means "measure again").
    pub run: u32,
    /// When the current run of analyses started (set on resume; else the step's start).
    pub analysis_t0: Option<i64>,
    /// Recreate: when routing stopped, and how long the switch left the pipeline without a
    /// version (the drain).
    pub drain_started_at: Option<i64>,
    pub gap_ms: Option<i64>,
    /// Abort: the first failed measurement that led to it, and when new batches went to stable.
    pub detected_at: Option<i64>,
    pub rerouted_at: Option<i64>,
    /// The abort is a rollback of a promoted version (`sluice rollback`).
    pub rollback: bool,
    pub repair: Option<RepairPlan>,
    /// Paused because a confirm-promotion webhook did not answer 2xx: the promotion is asked
    /// again every tick.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub confirm_hold: bool,
}

/// What a repair does, decided once the candidate's batches are settled and kept in the store
/// before the Delta commit, so a controller that dies halfway finishes the same plan.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RepairPlan {
    /// Published batches: removed from the table, queued for stable under this generation.
    pub repaired: Vec<(String, i64)>,
    /// Batches the candidate held (quarantined) or left pending: queued for stable.
    pub requeued: Vec<(String, i64)>,
    /// The data files the repaired batches added.
    pub files: Vec<String>,
    /// The table version of the repair commit, once made.
    pub committed: Option<i64>,
    /// Why the table refused the repair, while it does (files rewritten by another writer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Data {
    fn of(d: &DeploymentRecord) -> Result<Data, ControllerError> {
        if d.data.trim().is_empty() {
            return Ok(Data::default());
        }
        serde_json::from_str(&d.data).map_err(|e| ControllerError::Corrupt {
            id: d.id,
            message: format!("its controller data is not readable ({e})"),
        })
    }

    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// A move the controller makes: the state it goes to and what comes with it.
struct Move {
    to: State,
    step: i64,
    route: Route,
    reason: Option<String>,
    clear_request: bool,
    data: Data,
    message: String,
}

/// The strategy of a deployment `sluice rollback` starts: straight to the repair.
pub const ROLLBACK: &str = "rollback";

const LIVE_SLOT: Duration = Duration::from_secs(15);

/// How far before a deployment's start the repair reads the table's log for unrecorded runs:
/// commit timestamps are the writers' clocks, the deployment's the store's.
const CLOCK_MARGIN_MS: i64 = 5 * 60 * 1000;

/// Moves deployments on. Stateless between ticks: everything it knows is in the store.
pub struct Controller {
    store: Arc<dyn Store>,
    versions: Arc<VersionCache>,
}

impl Controller {
    pub fn new(store: Arc<dyn Store>, versions: Arc<VersionCache>) -> Controller {
        Controller { store, versions }
    }

    /// Moves every active deployment on by at most one step, under `fence`. A deployment that
    /// cannot move (a store error, a sink away) is logged and tried again next tick; the others
    /// go on.
    pub async fn tick(&self, fence: &Fence) -> Result<usize, ControllerError> {
        let mut moved = 0;
        for d in self.store.active_deployments().await? {
            match self.advance(fence, &d).await {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(ControllerError::Store(e)) if e.is_outage() => return Err(e.into()),
                Err(e) => tracing::warn!(deployment = d.id, pipeline = %d.pipeline, "{e}"),
            }
        }
        Ok(moved)
    }

    /// One deployment's next move, if it has one. True if it moved.
    pub async fn advance(
        &self,
        fence: &Fence,
        d: &DeploymentRecord,
    ) -> Result<bool, ControllerError> {
        let state: State = d
            .state
            .parse()
            .map_err(|message| ControllerError::Corrupt { id: d.id, message })?;
        let policy: DeploySpec =
            serde_json::from_str(&d.policy).map_err(|e| ControllerError::Corrupt {
                id: d.id,
                message: format!("its policy is not readable ({e})"),
            })?;
        let data = Data::of(d)?;
        let now = self.store.now().await?;
        if let Some(mv) = self.on_request(d, state, &policy, &data, now) {
            return match self.confirm_gate(d, state, &policy, mv).await {
                Some(mv) => self.apply(fence, d, state, mv).await,
                None => Ok(false),
            };
        }
        let mv = match state {
            State::Progressing => self.progress(fence, d, &policy, data, now).await?,
            State::Paused if data.confirm_hold => {
                match self
                    .background(fence, d, &policy, data.clone(), now, state)
                    .await?
                {
                    Some(mv) => Some(mv),
                    None => Some(promote(
                        d,
                        data,
                        "its confirm-promotion webhooks answered 2xx",
                    )),
                }
            }
            State::Paused => self.background(fence, d, &policy, data, now, state).await?,
            State::Draining => self.drain(d, data, now).await?,
            State::Aborting => self.settle(fence, d, data).await?,
            State::Repairing => return self.repair(fence, d, data).await,
            State::Promoted | State::Aborted | State::RolledBack => None,
        };
        match mv {
            Some(mv) => match self.confirm_gate(d, state, &policy, mv).await {
                Some(mv) => self.apply(fence, d, state, mv).await,
                None => Ok(false),
            },
            None => Ok(false),
        }
    }

    /// Every move passes here: a promotion is made only once each confirm-promotion webhook
    /// answers 2xx; until then the deployment is held paused with the reason (re-asked every
    /// tick). `None`: still held, nothing to write.
    async fn confirm_gate(
        &self,
        d: &DeploymentRecord,
        from: State,
        policy: &DeploySpec,
        mut mv: Move,
    ) -> Option<Move> {
        mv.data.confirm_hold = false;
        if mv.to != State::Promoted || policy.confirm_hooks().next().is_none() {
            return Some(mv);
        }
        let Err(reason) = crate::hooks::confirm(crate::hooks::client(), d, policy).await else {
            return Some(mv);
        };
        if from == State::Paused && d.reason.as_deref() == Some(reason.as_str()) {
            return None;
        }
        if from == State::Draining {
            // Recreate routes nothing while it drains: it stays draining, asking each tick.
            tracing::warn!(deployment = d.id, pipeline = %d.pipeline, "{reason}");
            return None;
        }
        Some(Move {
            to: State::Paused,
            step: d.step,
            route: d.route,
            message: format!("v{} not promoted yet: {reason}", d.candidate_version),
            reason: Some(reason),
            clear_request: mv.clear_request,
            data: Data {
                confirm_hold: true,
                ..mv.data
            },
        })
    }

    /// What a command's request asks for, as a move (if it applies in this state).
    fn on_request(
        &self,
        d: &DeploymentRecord,
        state: State,
        policy: &DeploySpec,
        data: &Data,
        now: i64,
    ) -> Option<Move> {
        let request = d.request?;
        let mut data = data.clone();
        let keep =
            |to: State, step: i64, data: Data, reason: Option<String>, message: String| Move {
                to,
                step,
                route: d.route,
                reason,
                clear_request: true,
                data,
                message,
            };
        match (request, state) {
            (_, State::Aborting | State::Repairing) => None,
            (DeploymentRequest::Abort, _) => {
                Some(abort_move(d, data, now, "aborted by `sluice abort`".into()))
            }
            (DeploymentRequest::Pause, State::Progressing) => Some(keep(
                State::Paused,
                d.step,
                data,
                Some("paused by `sluice pause`".into()),
                "paused on request".into(),
            )),
            (DeploymentRequest::Resume, State::Paused) => {
                // A resume on an indefinite pause step goes past it, as a promote does.
                let step = if matches!(step_at(policy, d.step), Some(Step::Pause(p)) if p.duration.is_none())
                {
                    d.step + 1
                } else {
                    d.step
                };
                data.run += 1;
                data.analysis_t0 = Some(now);
                Some(keep(
                    State::Progressing,
                    step,
                    data,
                    None,
                    "resumed on request".into(),
                ))
            }
            (DeploymentRequest::Promote, State::Progressing | State::Paused) => {
                data.run += 1;
                data.analysis_t0 = None;
                Some(keep(
                    State::Progressing,
                    d.step + 1,
                    data,
                    None,
                    format!("step {} skipped by `sluice promote`", d.step + 1),
                ))
            }
            (
                DeploymentRequest::PromoteFull,
                State::Progressing | State::Paused | State::Draining,
            ) => Some(Move {
                to: State::Promoted,
                step: d.step,
                route: Route {
                    mode: RouteMode::Batch,
                    weight: 100,
                },
                reason: Some("promoted by `sluice promote --full`".into()),
                clear_request: true,
                data,
                message: format!(
                    "v{} promoted on request, skipping the remaining steps",
                    d.candidate_version
                ),
            }),
            // A request that does not apply here (pause while paused, ...) is dropped.
            _ => Some(keep(
                state,
                d.step,
                data,
                d.reason.clone(),
                format!("request {} ignored while {state}", request.as_str()),
            ))
            .filter(|_| state.can_become(state)),
        }
    }

    async fn apply(
        &self,
        fence: &Fence,
        d: &DeploymentRecord,
        from: State,
        mv: Move,
    ) -> Result<bool, ControllerError> {
        let mut mv = mv;
        if mv.to == State::Aborting && from != State::Aborting {
            // When every new batch went to stable: the store's clock as the move is written.
            mv.data.rerouted_at = Some(self.store.now().await?);
        }
        if !from.can_become(mv.to) {
            return Err(ControllerError::Corrupt {
                id: d.id,
                message: format!("refused move {from} -> {} ({})", mv.to, mv.message),
            });
        }
        let update = DeploymentUpdate {
            from_state: from.as_str().to_string(),
            to_state: mv.to.as_str().to_string(),
            step: mv.step,
            route: mv.route,
            reason: mv.reason,
            seen_request: d.request,
            clear_request: mv.clear_request,
            data: mv.data.json(),
            outcome: mv.to.outcome(),
            message: mv.message.clone(),
        };
        let applied = self
            .store
            .transition_deployment(fence, d.id, &update)
            .await?;
        if applied {
            tracing::info!(deployment = d.id, pipeline = %d.pipeline, "{from} -> {}: {}", mv.to, mv.message);
        }
        Ok(applied)
    }

    /// Progressing: background analysis first (it can abort), the progress deadline, then the
    /// strategy's current step.
    async fn progress(
        &self,
        fence: &Fence,
        d: &DeploymentRecord,
        policy: &DeploySpec,
        data: Data,
        now: i64,
    ) -> Result<Option<Move>, ControllerError> {
        if let Some(mv) = self
            .background(fence, d, policy, data.clone(), now, State::Progressing)
            .await?
        {
            return Ok(Some(mv));
        }
        if let Some(mv) = self.deadline(d, policy, &data, now).await? {
            return Ok(Some(mv));
        }
        match policy.strategy {
            Strategy::Recreate => Ok(Some(Move {
                to: State::Draining,
                step: d.step,
                route: Route {
                    mode: RouteMode::Hold,
                    weight: 0,
                },
                reason: Some(format!("draining v{}", d.stable_version)),
                clear_request: false,
                data: Data {
                    drain_started_at: Some(now),
                    ..data
                },
                message: format!(
                    "recreate: routing stopped; v{}'s batches in flight finish",
                    d.stable_version
                ),
            })),
            Strategy::Rolling => self.rolling(fence, d, policy, data, now).await,
            Strategy::Canary => self.canary(fence, d, policy, data, now).await,
        }
    }

    async fn canary(
        &self,
        fence: &Fence,
        d: &DeploymentRecord,
        policy: &DeploySpec,
        mut data: Data,
        now: i64,
    ) -> Result<Option<Move>, ControllerError> {
        let mode = if policy.route_key.is_some() {
            RouteMode::Key
        } else {
            RouteMode::Batch
        };
        let Some(step) = step_at(policy, d.step) else {
            return Ok(Some(promote(d, data, "every step passed")));
        };
        let n = d.step + 1;
        let next = |data: Data, route: Route, message: String| Move {
            to: State::Progressing,
            step: d.step + 1,
            route,
            reason: None,
            clear_request: false,
            data: Data {
                analysis_t0: None,
                ..data
            },
            message,
        };
        Ok(match step {
            Step::SetWeight(w) => Some(next(
                data,
                Route {
                    mode,
                    weight: (*w).min(100) as u8,
                },
                format!("step {n}: weight {w}%"),
            )),
            Step::Pause(p) => match p.duration {
                Some(wait) if now - d.step_started_at >= millis(wait) => Some(next(
                    data,
                    d.route,
                    format!("step {n}: paused {}", humantime::format_duration(wait)),
                )),
                Some(_) => None,
                None => Some(Move {
                    to: State::Paused,
                    step: d.step,
                    route: d.route,
                    reason: Some(format!("step {n}: paused until `sluice promote`")),
                    clear_request: false,
                    data,
                    message: format!("step {n}: paused until promoted"),
                }),
            },
            Step::Analysis(spec) => {
                let t0 = data.analysis_t0.unwrap_or(d.step_started_at);
                let run = AnalysisRun {
                    name: analysis::analysis_name(&format!("step-{n}"), data.run),
                    spec,
                    started_at: t0,
                };
                let assessed = analysis::measure(&self.store, fence, d, &run, now).await?;
                match assessed.verdict {
                    Verdict::Running => None,
                    Verdict::Successful => Some(next(
                        data,
                        d.route,
                        format!("step {n}: analysis successful"),
                    )),
                    Verdict::Failed(why) => {
                        data.detected_at = assessed.first_failure;
                        Some(abort_move(
                            d,
                            data,
                            now,
                            format!("step {n}: {ANALYSIS_FAILED}: {why}"),
                        ))
                    }
                    Verdict::Inconclusive(why) => Some(Move {
                        to: State::Paused,
                        step: d.step,
                        route: d.route,
                        reason: Some(format!(
                            "step {n}: analysis inconclusive ({why}); `sluice resume` measures again, `sluice promote` goes on, `sluice abort` rolls back"
                        )),
                        clear_request: false,
                        data,
                        message: format!("step {n}: analysis inconclusive"),
                    }),
                }
            }
        })
    }

    /// Rolling: the share of worker slots leasing the candidate grows by `max_surge` a group;
    /// each group must complete `healthy_batches` candidate batches, none failing, first.
    async fn rolling(
        &self,
        _fence: &Fence,
        d: &DeploymentRecord,
        policy: &DeploySpec,
        data: Data,
        now: i64,
    ) -> Result<Option<Move>, ControllerError> {
        let slots = self.live_slots(now).await?.max(1);
        // max_surge in slots (rounded up, as Kubernetes does), as a share of the live slots.
        let surge_slots = policy.max_surge.of(slots, true).max(1);
        let surge = (u64::from(surge_slots) * 100)
            .div_ceil(u64::from(slots))
            .clamp(1, 100);
        let group = d.step;
        let weight = ((group + 1) * surge as i64).min(100) as u8;
        let route = Route {
            mode: RouteMode::Slots,
            weight,
        };
        if d.route.mode != RouteMode::Slots || d.route.weight == 0 {
            return Ok(Some(Move {
                to: State::Progressing,
                step: group,
                route,
                reason: None,
                clear_request: false,
                data,
                message: format!("rolling: group 1, {weight}% of {slots} worker slots"),
            }));
        }
        let runs = self
            .store
            .version_runs(&d.pipeline, d.candidate_version, d.step_started_at)
            .await?;
        if let Some(bad) = runs
            .iter()
            .find(|r| matches!(r.outcome, BatchOutcome::Failed | BatchOutcome::Quarantined))
        {
            let why = format!(
                "rolling group {}: batch {} {} on v{}: {}",
                group + 1,
                bad.batch_id,
                bad.outcome.as_str(),
                d.candidate_version,
                bad.error.as_deref().unwrap_or("no message")
            );
            let data = Data {
                detected_at: Some(bad.finished_at),
                ..data
            };
            return Ok(Some(abort_move(d, data, now, why)));
        }
        let healthy = runs
            .iter()
            .filter(|r| r.outcome == BatchOutcome::Committed)
            .count() as u32;
        if healthy < policy.healthy_batches {
            return Ok(None);
        }
        if d.route.weight >= 100 {
            return Ok(Some(promote(
                d,
                data,
                "every worker slot runs it healthily",
            )));
        }
        let weight = ((group + 2) * surge as i64).min(100) as u8;
        Ok(Some(Move {
            to: State::Progressing,
            step: group + 1,
            route: Route {
                mode: RouteMode::Slots,
                weight,
            },
            reason: None,
            clear_request: false,
            data,
            message: format!(
                "rolling: group {} healthy ({healthy} batches); group {}, {weight}% of {slots} worker slots",
                group + 1,
                group + 2
            ),
        }))
    }

    /// Background analysis (across steps, while progressing or paused): failed aborts,
    /// inconclusive pauses.
    async fn background(
        &self,
        fence: &Fence,
        d: &DeploymentRecord,
        policy: &DeploySpec,
        mut data: Data,
        now: i64,
        state: State,
    ) -> Result<Option<Move>, ControllerError> {
        let Some(spec) = policy.analysis.as_ref() else {
            return Ok(None);
        };
        let run = AnalysisRun {
            name: analysis::analysis_name("background", data.run),
            spec,
            started_at: data.analysis_t0.unwrap_or(d.created_at),
        };
        let assessed = analysis::measure(&self.store, fence, d, &run, now).await?;
        Ok(match assessed.verdict {
            Verdict::Running | Verdict::Successful => None,
            Verdict::Failed(why) => {
                data.detected_at = assessed.first_failure;
                Some(abort_move(
                    d,
                    data,
                    now,
                    format!("background {ANALYSIS_FAILED}: {why}"),
                ))
            }
            Verdict::Inconclusive(why) if state == State::Progressing => Some(Move {
                to: State::Paused,
                step: d.step,
                route: d.route,
                reason: Some(format!(
                    "background analysis inconclusive ({why}); `sluice resume` measures again"
                )),
                clear_request: false,
                data,
                message: "background analysis inconclusive".into(),
            }),
            Verdict::Inconclusive(_) => None,
        })
    }

    /// No candidate batch finished within the progress deadline while the candidate gets
    /// batches: pause with that reason (a pull-based pipeline may simply have no input).
    async fn deadline(
        &self,
        d: &DeploymentRecord,
        policy: &DeploySpec,
        data: &Data,
        now: i64,
    ) -> Result<Option<Move>, ControllerError> {
        let deadline = millis(policy.progress_deadline);
        if d.route.weight == 0 || deadline <= 0 {
            return Ok(None);
        }
        let since = data
            .analysis_t0
            .unwrap_or(d.step_started_at)
            .max(d.step_started_at);
        if now - since < deadline {
            return Ok(None);
        }
        let runs = self
            .store
            .version_runs(&d.pipeline, d.candidate_version, now - deadline)
            .await?;
        if !runs.is_empty() {
            return Ok(None);
        }
        Ok(Some(Move {
            to: State::Paused,
            step: d.step,
            route: d.route,
            reason: Some(format!(
                "no batch of v{} finished within the progress deadline of {}: is input landing? `sluice resume` waits again",
                d.candidate_version,
                humantime::format_duration(policy.progress_deadline)
            )),
            clear_request: false,
            data: data.clone(),
            message: "progress deadline passed".into(),
        }))
    }

    /// Recreate: once no batch of stable is in flight, switch (promote).
    async fn drain(
        &self,
        d: &DeploymentRecord,
        data: Data,
        now: i64,
    ) -> Result<Option<Move>, ControllerError> {
        let leased = self
            .store
            .tasks(&d.pipeline, Some(TaskState::Leased))
            .await?;
        if leased.iter().any(|t| t.version != d.candidate_version) {
            return Ok(None);
        }
        let started = data.drain_started_at.unwrap_or(d.step_started_at);
        let gap = now - started;
        Ok(Some(promote(
            d,
            Data {
                gap_ms: Some(gap),
                ..data
            },
            &format!(
                "recreate: v{} drained in {gap} ms and switched",
                d.stable_version
            ),
        )))
    }

    /// Aborting: candidate batches waiting to be retried go to stable; once none of the
    /// candidate's batches is in flight, plan the repair.
    async fn settle(
        &self,
        fence: &Fence,
        d: &DeploymentRecord,
        data: Data,
    ) -> Result<Option<Move>, ControllerError> {
        self.store
            .park_pending(fence, &d.pipeline, d.candidate_version)
            .await?;
        let tasks = self
            .store
            .version_tasks(&d.pipeline, d.candidate_version)
            .await?;
        if tasks.iter().any(|t| t.state == TaskState::Leased) {
            return Ok(None);
        }
        let mut plan = RepairPlan::default();
        let mut repaired = Vec::new();
        for t in &tasks {
            match t.state {
                TaskState::Done => {
                    plan.repaired.push((t.batch_id.0.clone(), t.generation + 1));
                    repaired.push(t.batch_id.clone());
                }
                // Held, or parked (routed to the candidate, pending again): no publish the
                // store knows of, but a run of the candidate may have committed unrecorded or
                // still be in flight, so the repair commit fences them too and removes what
                // the log shows they added; the next generation is how the store tells a
                // batch to queue from one it queued already.
                TaskState::Quarantined | TaskState::Pending if t.routed_at.is_some() => {
                    plan.requeued.push((t.batch_id.0.clone(), t.generation + 1))
                }
                // Not routed since it was queued: no run of it exists; the router sends it to
                // stable.
                TaskState::Quarantined | TaskState::Pending | TaskState::Leased => {}
            }
        }
        let mut files: Vec<String> = self
            .store
            .batch_files(&repaired)
            .await?
            .into_iter()
            .map(|f| f.data_file)
            .collect();
        files.sort();
        files.dedup();
        plan.files = files;
        let message = format!(
            "v{}'s batches settled: {} published to remove and re-run on v{}, {} held or waiting to re-run there",
            d.candidate_version,
            plan.repaired.len(),
            d.stable_version,
            plan.requeued.len()
        );
        Ok(Some(Move {
            to: State::Repairing,
            step: d.step,
            route: d.route,
            reason: d.reason.clone(),
            clear_request: false,
            data: Data {
                repair: Some(plan),
                ..data
            },
            message,
        }))
    }

    /// Repairing: the Delta commit removing the candidate's rows (once), then the batches
    /// queued for stable, then the end.
    async fn repair(
        &self,
        fence: &Fence,
        d: &DeploymentRecord,
        mut data: Data,
    ) -> Result<bool, ControllerError> {
        let mut plan = data.repair.clone().unwrap_or_default();
        if plan.committed.is_none() && !(plan.repaired.is_empty() && plan.requeued.is_empty()) {
            let candidate = self
                .versions
                .get(&d.pipeline, d.candidate_version)
                .await
                .map_err(|e| ControllerError::Load {
                    id: d.id,
                    message: match e {
                        LoadError::Store(s) => s.to_string(),
                        LoadError::Other(m) => m,
                    },
                })?;
            let sink = candidate.sink();
            let batches: Vec<RepairBatch> = plan
                .repaired
                .iter()
                .chain(&plan.requeued)
                .map(|(b, g)| RepairBatch {
                    app_id: sluice_engine::sink::DeltaSink::app_id(&d.pipeline, b),
                    // the run whose rows go: the batch's engine generation (task generation + 1)
                    generation: *g,
                })
                .collect();
            let reason = serde_json::json!({
                "deployment": d.id,
                "pipeline": d.pipeline,
                "candidate_version": d.candidate_version,
                "stable_version": d.stable_version,
                "why": d.reason,
            });
            // No run of the candidate predates its deployment (a margin for clocks apart).
            let scan_since = d.created_at - CLOCK_MARGIN_MS;
            let outcome = match sink
                .repair(&batches, plan.files.clone(), reason, Some(scan_since))
                .await
            {
                Ok(r) => Ok(r.version),
                // Files gone: the repair commit of an earlier try landed and its controller
                // died before recording it, or another writer (a compaction) rewrote them,
                // their rows now elsewhere. Only the log can tell: this deployment's repair
                // commit is in it, or the refusal stands (re-queueing would duplicate rows).
                Err(e @ SinkError::Missing { .. }) => {
                    let ours = serde_json::json!(d.id);
                    match sink
                        .find_repair(scan_since, |r| r.get("deployment") == Some(&ours))
                        .await
                    {
                        Ok(Some(version)) => Ok(version),
                        Ok(None) => Err(e),
                        Err(other) => Err(other),
                    }
                }
                Err(e) => Err(e),
            };
            let committed = match outcome {
                Ok(version) => version,
                Err(e @ (SinkError::Missing { .. } | SinkError::Rewritten { .. })) => {
                    return self.refused(fence, d, data, plan, e).await;
                }
                Err(e) => return Err(sink_error(d, e)),
            };
            plan.refused = None;
            plan.committed = Some(committed);
            data.repair = Some(plan.clone());
            let mv = Move {
                to: State::Repairing,
                step: d.step,
                route: d.route,
                reason: d.reason.clone(),
                clear_request: false,
                data: data.clone(),
                message: format!(
                    "removed {} data files of {} batches of v{} (table version {committed})",
                    plan.files.len(),
                    plan.repaired.len(),
                    d.candidate_version
                ),
            };
            return self.apply(fence, d, State::Repairing, mv).await;
        }
        let batches: Vec<(BatchId, i64)> = plan
            .repaired
            .iter()
            .chain(&plan.requeued)
            .map(|(b, g)| (BatchId(b.clone()), *g))
            .collect();
        // A leased batch would be skipped by the requeue and its run, under the generation the
        // repair fenced, would find itself committed: wait for it (none is expected: the plan's
        // batches are done, held or parked).
        let leased = self
            .store
            .tasks(&d.pipeline, Some(TaskState::Leased))
            .await?;
        if leased
            .iter()
            .any(|t| batches.iter().any(|(b, _)| *b == t.batch_id))
        {
            return Ok(false);
        }
        let queued = self
            .store
            .requeue(
                fence,
                &Requeue {
                    pipeline: d.pipeline.clone(),
                    version: d.stable_version,
                    batches,
                },
            )
            .await?;
        let to = if data.rollback || d.strategy == ROLLBACK {
            State::RolledBack
        } else {
            State::Aborted
        };
        let message = format!(
            "{} batches queued again for v{} ({} repaired, {} held or pending); {}",
            queued,
            d.stable_version,
            plan.repaired.len(),
            plan.requeued.len(),
            d.reason.as_deref().unwrap_or("aborted")
        );
        let mv = Move {
            to,
            step: d.step,
            route: Route {
                mode: RouteMode::Batch,
                weight: 0,
            },
            reason: d.reason.clone(),
            clear_request: true,
            data,
            message,
        };
        self.apply(fence, d, State::Repairing, mv).await
    }

    /// The table refused the repair (files rewritten since they were recorded): nothing was
    /// removed and nothing is queued again. The reason goes on the plan once, for `deploy
    /// status` and the history; the repair is tried again every tick, so it goes through once
    /// a person has dealt with the rewritten files as the reason says.
    async fn refused(
        &self,
        fence: &Fence,
        d: &DeploymentRecord,
        mut data: Data,
        mut plan: RepairPlan,
        e: SinkError,
    ) -> Result<bool, ControllerError> {
        let message = format!("repair refused: {e}");
        if plan.refused.as_deref() == Some(message.as_str()) {
            return Ok(false);
        }
        tracing::warn!(deployment = d.id, pipeline = %d.pipeline, "{message}");
        plan.refused = Some(message.clone());
        data.repair = Some(plan);
        let mv = Move {
            to: State::Repairing,
            step: d.step,
            route: d.route,
            reason: d.reason.clone(),
            clear_request: false,
            data,
            message,
        };
        self.apply(fence, d, State::Repairing, mv).await
    }

    /// Worker slots heartbeating as running now.
    async fn live_slots(&self, now: i64) -> Result<u32, ControllerError> {
        let live = millis(LIVE_SLOT);
        Ok(self
            .store
            .workers()
            .await?
            .iter()
            .filter(|w| w.state == "running" && now - w.last_heartbeat <= live)
            .count() as u32)
    }
}

fn step_at(policy: &DeploySpec, step: i64) -> Option<&Step> {
    usize::try_from(step).ok().and_then(|i| policy.steps.get(i))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn sink_error(d: &DeploymentRecord, e: SinkError) -> ControllerError {
    ControllerError::Sink {
        id: d.id,
        message: format!("repairing the table: {e}"),
    }
}

/// Every new batch to stable, now; the repair follows once the candidate's batches settle.
fn abort_move(d: &DeploymentRecord, mut data: Data, now: i64, reason: String) -> Move {
    data.rerouted_at = Some(now);
    Move {
        to: State::Aborting,
        step: d.step,
        route: Route {
            mode: RouteMode::Batch,
            weight: 0,
        },
        message: format!(
            "aborting: {reason}; every new batch goes to v{}",
            d.stable_version
        ),
        reason: Some(reason),
        clear_request: true,
        data,
    }
}

fn promote(d: &DeploymentRecord, data: Data, why: &str) -> Move {
    Move {
        to: State::Promoted,
        step: d.step,
        route: Route {
            mode: RouteMode::Batch,
            weight: 100,
        },
        reason: None,
        clear_request: true,
        data,
        message: format!("v{} promoted: {why}", d.candidate_version),
    }
}
