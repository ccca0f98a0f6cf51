//! Deployments, the router, leadership, measurements and analysis templates: rows, statements
//! and the router's arithmetic, shared by both backends (run by `shared.rs`; the public types
//! are in `deploy.rs`).
//!
//! `{now}`, `{for_update}` and `{for_share}` are the backend's words (see `shared::Backend`):
//! PostgreSQL locks the deployment row a leaser routes by and the leadership row a fenced write
//! relies on; SQLite's write transaction holds the whole file already.

use sluice_core::WorkerId;

use crate::rows::from_db;
use crate::{
    AnalysisTemplateRecord, DeploymentEvent, DeploymentOutcome, DeploymentRecord,
    DeploymentRequest, Fence, LeaderRecord, MeasurementRecord, Result, Route, RouteMode, Split,
    StoreError,
};

/// How long a worker slot counts as live for [`RouteMode::Slots`] after its last heartbeat.
pub(crate) const LIVE_SLOT_MS: i64 = 15_000;

// ---- leadership ----

/// `$1` duty, `$2` holder, `$3` ttl in ms. Takes the duty when no one holds it or its lease ran
/// out, renews it for its holder; the epoch grows only when the holder changes. Returns nothing
/// when someone else holds it. On PostgreSQL concurrent callers take turns on the row (the
/// upsert locks it and re-checks its WHERE on the latest version), so only one of them wins.
/// (`WHERE true`: SQLite needs it to tell the upsert's ON from a join's.)
pub(crate) const LEAD_SQL: &str = "INSERT INTO leadership (duty, holder, epoch, acquired_at, \
    expires_at) SELECT $1, $2, 1, c.now, c.now + $3 FROM (SELECT {now} AS now) c WHERE true \
    ON CONFLICT (duty) DO UPDATE SET \
    epoch = CASE WHEN leadership.holder = excluded.holder THEN leadership.epoch \
        ELSE leadership.epoch + 1 END, \
    acquired_at = CASE WHEN leadership.holder = excluded.holder THEN leadership.acquired_at \
        ELSE excluded.acquired_at END, \
    holder = excluded.holder, expires_at = excluded.expires_at \
    WHERE leadership.holder = excluded.holder OR leadership.expires_at <= excluded.acquired_at \
    RETURNING duty, holder, epoch, expires_at";

/// `$1..$3` the fence. Expires the leadership now, keeping the row (and so the epoch).
pub(crate) const RESIGN_SQL: &str = "UPDATE leadership SET expires_at = {now} \
    WHERE duty = $1 AND holder = $2 AND epoch = $3 AND expires_at > {now}";

/// `$1` duty.
pub(crate) const LEADER_SQL: &str = "SELECT duty, holder, epoch, acquired_at, expires_at \
    FROM leadership WHERE duty = $1";

/// `$1..$3` the fence: a row while it is still the leadership. PostgreSQL holds the row
/// `FOR SHARE` to the end of the transaction, so a takeover (which updates it) waits for the
/// fenced write, or the write, coming second, sees the takeover and finds nothing.
pub(crate) const FENCE_SQL: &str = "SELECT epoch FROM leadership \
    WHERE duty = $1 AND holder = $2 AND epoch = $3 AND expires_at > {now}{for_share}";

#[derive(sqlx::FromRow)]
pub(crate) struct FenceRow {
    duty: String,
    holder: String,
    epoch: i64,
    expires_at: i64,
}

impl From<FenceRow> for Fence {
    fn from(r: FenceRow) -> Fence {
        Fence {
            duty: r.duty,
            holder: r.holder,
            epoch: r.epoch,
            expires_at: r.expires_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct LeaderRow {
    duty: String,
    holder: String,
    epoch: i64,
    acquired_at: i64,
    expires_at: i64,
}

impl From<LeaderRow> for LeaderRecord {
    fn from(r: LeaderRow) -> LeaderRecord {
        LeaderRecord {
            duty: r.duty,
            holder: r.holder,
            epoch: r.epoch,
            acquired_at: r.acquired_at,
            expires_at: r.expires_at,
        }
    }
}

// ---- deployments ----

/// Columns of a deployment query, in [`DeploymentRow`]'s shape.
macro_rules! deployment_columns {
    () => {
        "id, pipeline, stable_version, candidate_version, strategy, policy, state, step, \
         route_mode, weight, request, reason, outcome, data, started_by, created_at, \
         step_started_at, updated_at, finished_at"
    };
}

/// A query of deployments in [`DeploymentRow`]'s shape: `SELECT ... FROM deployments` and `$rest`.
macro_rules! select_deployments {
    ($rest:literal) => {
        concat!(
            "SELECT ",
            deployment_columns!(),
            " FROM deployments ",
            $rest
        )
    };
}

/// `$1` pipeline, `$2` stable, `$3` candidate, `$4` strategy, `$5` policy, `$6` state,
/// `$7` route mode, `$8` weight, `$9` started by. Inserts nothing while the pipeline has an
/// active deployment (the partial unique index `deployments_one_active` is the guard; a
/// concurrent start waits for the other to commit, then conflicts).
pub(crate) const INSERT_DEPLOYMENT_SQL: &str = concat!(
    "INSERT INTO deployments (pipeline, stable_version, candidate_version, strategy, policy, \
     state, step, route_mode, weight, started_by, created_at, step_started_at, updated_at) \
     SELECT $1, $2, $3, $4, $5, $6, 0, $7, $8, $9, c.now, c.now, c.now \
     FROM (SELECT {now} AS now) c WHERE true ON CONFLICT DO NOTHING RETURNING ",
    deployment_columns!()
);

/// `$1` id.
pub(crate) const DEPLOYMENT_SQL: &str = select_deployments!("WHERE id = $1");

/// `$1` id: the deployment while it is active, locked for a change on PostgreSQL.
pub(crate) const ACTIVE_DEPLOYMENT_FOR_UPDATE_SQL: &str =
    select_deployments!("WHERE id = $1 AND outcome IS NULL{for_update}");

/// `$1` pipeline.
pub(crate) const ACTIVE_DEPLOYMENT_SQL: &str =
    select_deployments!("WHERE pipeline = $1 AND outcome IS NULL");

pub(crate) const ACTIVE_DEPLOYMENTS_SQL: &str =
    select_deployments!("WHERE outcome IS NULL ORDER BY id");

/// `$1` pipeline or NULL for all, `$2` limit. Newest first.
pub(crate) const DEPLOYMENTS_SQL: &str =
    select_deployments!("WHERE ($1 IS NULL OR pipeline = $1) ORDER BY id DESC LIMIT $2");

/// `$1` id, `$2` state, `$3` step, `$4` route mode, `$5` weight, `$6` whether the route changed
/// (the counters restart), `$7` whether the step or the route changed (the step restarts),
/// `$8` request, `$9` reason, `$10` data, `$11` outcome, `$12` epoch (NULL keeps it), `$13` now.
pub(crate) const UPDATE_DEPLOYMENT_SQL: &str = "UPDATE deployments SET state = $2, step = $3, \
    route_mode = $4, weight = $5, \
    routed_total = CASE WHEN $6 THEN 0 ELSE routed_total END, \
    routed_candidate = CASE WHEN $6 THEN 0 ELSE routed_candidate END, \
    step_started_at = CASE WHEN $7 THEN $13 ELSE step_started_at END, \
    request = $8, reason = $9, data = $10, outcome = $11, epoch = COALESCE($12, epoch), \
    updated_at = $13, \
    finished_at = CASE WHEN $11 IS NULL THEN NULL ELSE $13 END \
    WHERE id = $1";

/// `$1` deployment, `$2` at, `$3` from state, `$4` to state, `$5` step, `$6` route mode,
/// `$7` weight, `$8` message, `$9` epoch.
pub(crate) const INSERT_EVENT_SQL: &str = "INSERT INTO deployment_events (deployment_id, at, \
    from_state, to_state, step, route_mode, weight, message, epoch) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// `$1` deployment. Oldest first.
pub(crate) const EVENTS_SQL: &str = "SELECT deployment_id, at, from_state, to_state, step, \
    route_mode, weight, message, epoch FROM deployment_events WHERE deployment_id = $1 \
    ORDER BY id";

#[derive(sqlx::FromRow)]
pub(crate) struct DeploymentRow {
    id: i64,
    pipeline: String,
    stable_version: i64,
    candidate_version: i64,
    strategy: String,
    policy: String,
    state: String,
    step: i64,
    route_mode: String,
    weight: i64,
    request: Option<String>,
    reason: Option<String>,
    outcome: Option<String>,
    data: String,
    started_by: String,
    created_at: i64,
    step_started_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
}

impl DeploymentRow {
    pub(crate) fn into_record(self) -> Result<DeploymentRecord> {
        let what = |column: &str| format!("deployments.{column} of deployment {}", self.id);
        let route = route_of(&self.route_mode, self.weight, || what("route"))?;
        let request = self
            .request
            .as_deref()
            .map(|r| r.parse().map_err(|e| corrupt(what("request"), e)))
            .transpose()?;
        let outcome = self
            .outcome
            .as_deref()
            .map(|o| o.parse().map_err(|e| corrupt(what("outcome"), e)))
            .transpose()?;
        Ok(DeploymentRecord {
            id: self.id,
            pipeline: self.pipeline,
            stable_version: self.stable_version,
            candidate_version: self.candidate_version,
            strategy: self.strategy,
            policy: self.policy,
            state: self.state,
            step: self.step,
            route,
            request,
            reason: self.reason,
            outcome,
            data: self.data,
            started_by: self.started_by,
            created_at: self.created_at,
            step_started_at: self.step_started_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    deployment_id: i64,
    at: i64,
    from_state: Option<String>,
    to_state: String,
    step: i64,
    route_mode: String,
    weight: i64,
    message: String,
    epoch: i64,
}

impl EventRow {
    pub(crate) fn into_event(self) -> Result<DeploymentEvent> {
        let route = route_of(&self.route_mode, self.weight, || {
            format!(
                "deployment_events.route of deployment {}",
                self.deployment_id
            )
        })?;
        Ok(DeploymentEvent {
            deployment_id: self.deployment_id,
            at: self.at,
            from_state: self.from_state,
            to_state: self.to_state,
            step: self.step,
            route,
            message: self.message,
            epoch: self.epoch,
        })
    }
}

fn route_of(mode: &str, weight: i64, what: impl Fn() -> String) -> Result<Route> {
    let mode = mode.parse().map_err(|e| corrupt(what(), e))?;
    let weight: u8 = from_db(weight, &what)?;
    if weight > 100 {
        return Err(corrupt(what(), format!("weight {weight} is over 100")));
    }
    Ok(Route { mode, weight })
}

fn corrupt(what: String, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// Refuses a route the store cannot keep: weights are percentages.
pub(crate) fn check_route(route: &Route, what: &str) -> Result<()> {
    if route.weight > 100 {
        return Err(StoreError::Invalid(format!(
            "{what}: weight {} is not a percentage; give 0 to 100",
            route.weight
        )));
    }
    Ok(())
}

/// The first event's message.
pub(crate) fn started_message(d: &DeploymentRecord) -> String {
    format!(
        "{} deployment of {} from version {} to {} started by {}",
        d.strategy, d.pipeline, d.stable_version, d.candidate_version, d.started_by
    )
}

/// What an abort request routes every new batch to at once: stable.
pub(crate) const ABORT_ROUTE: Route = Route {
    mode: RouteMode::Batch,
    weight: 0,
};

/// Whether `request` may replace the request waiting: anything may, except that a waiting
/// abort stays until the controller acts on it (a later pause or promote must not undo it).
pub(crate) fn replaces(waiting: Option<DeploymentRequest>, request: DeploymentRequest) -> bool {
    waiting != Some(DeploymentRequest::Abort) || request == DeploymentRequest::Abort
}

pub(crate) fn outcome_str(outcome: Option<DeploymentOutcome>) -> Option<&'static str> {
    outcome.map(DeploymentOutcome::as_str)
}

// ---- the router ----

/// `$1` pipeline: what the router routes by, locked on PostgreSQL so concurrent leasers of the
/// pipeline take turns (and the exact share stays exact).
pub(crate) const ROUTE_SQL: &str = "SELECT id, stable_version, candidate_version, route_mode, \
    weight, routed_total, routed_candidate FROM deployments \
    WHERE pipeline = $1 AND outcome IS NULL{for_update}";

/// `$1` batch, `$2` version, `$3` split version, `$4` split percent. Returns when it was routed.
pub(crate) const ROUTE_TASK_SQL: &str = "UPDATE tasks SET version = $2, split_version = $3, \
    split_percent = $4, routed_at = {now} WHERE batch_id = $1 RETURNING routed_at";

/// `$1` batch: gives back a batch leased while its pipeline holds new batches (the route
/// became `hold` between the lease's query and the router), without counting the attempt.
pub(crate) const UNLEASE_SQL: &str = "UPDATE tasks SET state = 'pending', \
    attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, lease_owner = NULL, \
    lease_token = NULL, leased_at = NULL, lease_expires_at = NULL WHERE batch_id = $1";

/// `$1` deployment, `$2` batches routed since the route was set, `$3` of them to the
/// candidate (counted on the row the router read and locked).
pub(crate) const COUNT_ROUTED_SQL: &str = "UPDATE deployments SET \
    routed_total = $2, routed_candidate = $3 WHERE id = $1";

/// `$1` pipeline: its current version, where a batch goes without an active deployment.
pub(crate) const CURRENT_VERSION_SQL: &str =
    "SELECT current_version FROM pipelines WHERE name = $1";

/// `$1` how long a slot stays live (ms): the live worker slots.
pub(crate) const LIVE_SLOTS_SQL: &str = "SELECT worker FROM workers \
    WHERE state = 'running' AND last_heartbeat >= {now} - $1";

/// A pipeline's active deployment as the router reads it.
#[derive(sqlx::FromRow)]
pub(crate) struct RouteRow {
    pub id: i64,
    stable_version: i64,
    candidate_version: i64,
    route_mode: String,
    weight: i64,
    routed_total: i64,
    routed_candidate: i64,
}

/// The router's choice for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Routed {
    pub version: i64,
    pub split: Option<Split>,
    /// Whether it counts as the candidate's (for the deployment's counters).
    pub candidate: bool,
}

/// The router of one pipeline with an active deployment, for one lease call.
pub(crate) struct Router {
    pub deployment: i64,
    stable: i64,
    candidate: i64,
    route: Route,
    total: i64,
    to_candidate: i64,
    /// For [`RouteMode::Slots`]: whether the leasing worker's slot leases the candidate.
    slot_leases_candidate: bool,
    /// Whether it routed a batch, so its counters are to be stored.
    routed: bool,
}

impl Router {
    pub(crate) fn new(row: RouteRow) -> Result<Router> {
        let route = route_of(&row.route_mode, row.weight, || {
            format!("deployments.route of deployment {}", row.id)
        })?;
        Ok(Router {
            deployment: row.id,
            stable: row.stable_version,
            candidate: row.candidate_version,
            route,
            total: row.routed_total,
            to_candidate: row.routed_candidate,
            slot_leases_candidate: false,
            routed: false,
        })
    }

    pub(crate) fn mode(&self) -> RouteMode {
        self.route.mode
    }

    /// The counters to store (batches routed since the route was set, and how many of them
    /// went to the candidate), if it routed any.
    pub(crate) fn counters(&self) -> Option<(i64, i64)> {
        self.routed.then_some((self.total, self.to_candidate))
    }

    /// For [`RouteMode::Slots`]: the live slots, and the worker leasing.
    pub(crate) fn rank_slots(&mut self, live: Vec<String>, worker: &WorkerId) {
        self.slot_leases_candidate = slot_leases_candidate(live, &worker.0, self.route.weight);
    }

    /// Routes the next batch (`None`: hold it), counting it.
    pub(crate) fn next(&mut self) -> Option<Routed> {
        let to = |version, split, candidate| Routed {
            version,
            split,
            candidate,
        };
        let routed = match self.route.mode {
            RouteMode::Hold => return None,
            RouteMode::Batch => {
                if share_stays_within(self.route.weight, self.total, self.to_candidate) {
                    to(self.candidate, None, true)
                } else {
                    to(self.stable, None, false)
                }
            }
            RouteMode::Slots if self.slot_leases_candidate => to(self.candidate, None, true),
            RouteMode::Slots => to(self.stable, None, false),
            RouteMode::Key => {
                let split = Split {
                    candidate_version: self.candidate,
                    percent: self.route.weight,
                };
                to(self.stable, Some(split), self.route.weight > 0)
            }
        };
        self.routed = true;
        self.total = self.total.saturating_add(1);
        if routed.candidate {
            self.to_candidate = self.to_candidate.saturating_add(1);
        }
        Some(routed)
    }
}

/// [`RouteMode::Batch`]: whether one more batch to the candidate keeps its share of the
/// batches routed at or below `weight` percent.
fn share_stays_within(weight: u8, total: i64, to_candidate: i64) -> bool {
    let (weight, total, to_candidate) = (
        i128::from(weight),
        i128::from(total),
        i128::from(to_candidate),
    );
    (to_candidate + 1) * 100 <= weight * (total + 1)
}

/// [`RouteMode::Slots`]: whether `worker`, ranked by id among the `live` slots, is one of the
/// first `ceil(weight * slots / 100)`. A slot not live (no heartbeat yet) leases stable.
fn slot_leases_candidate(mut live: Vec<String>, worker: &str, weight: u8) -> bool {
    // Ranked here, not in SQL: the two databases order text by different collations.
    live.sort_unstable();
    live.dedup();
    let Ok(rank) = live.binary_search_by(|w| w.as_str().cmp(worker)) else {
        return false;
    };
    let slots = live.len();
    rank < (usize::from(weight) * slots).div_ceil(100)
}

// ---- measurements, analysis windows, requeue ----

/// `$1` deployment, `$2` analysis, `$3` metric, `$4` phase, `$5` value, `$6` stable value,
/// `$7` inputs, `$8` message.
pub(crate) const INSERT_MEASUREMENT_SQL: &str = "INSERT INTO analysis_measurements \
    (deployment_id, analysis, metric, phase, value, stable_value, inputs, message, measured_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {now})";

/// `$1` deployment. Oldest first.
pub(crate) const MEASUREMENTS_SQL: &str = "SELECT id, deployment_id, analysis, metric, phase, \
    value, stable_value, inputs, message, measured_at FROM analysis_measurements \
    WHERE deployment_id = $1 ORDER BY id";

#[derive(sqlx::FromRow)]
pub(crate) struct MeasurementRow {
    id: i64,
    deployment_id: i64,
    analysis: String,
    metric: String,
    phase: String,
    value: Option<f64>,
    stable_value: Option<f64>,
    inputs: String,
    message: String,
    measured_at: i64,
}

impl From<MeasurementRow> for MeasurementRecord {
    fn from(r: MeasurementRow) -> MeasurementRecord {
        MeasurementRecord {
            id: r.id,
            deployment_id: r.deployment_id,
            analysis: r.analysis,
            metric: r.metric,
            phase: r.phase,
            value: r.value,
            stable_value: r.stable_value,
            inputs: r.inputs,
            message: r.message,
            measured_at: r.measured_at,
        }
    }
}

/// `$1` pipeline, `$2` version, `$3` since. Oldest first (`batch_runs_by_version_finished`).
pub(crate) const VERSION_RUNS_SQL: &str = concat!(
    "SELECT ",
    crate::rows::run_columns!(),
    " FROM batch_runs WHERE pipeline = $1 AND version = $2 AND finished_at >= $3 \
     ORDER BY finished_at, id"
);

/// `$1` pipeline, `$2` version, `$3` since. Oldest first (`check_results_by_version`).
pub(crate) const VERSION_CHECKS_SQL: &str = "SELECT pipeline, version, batch_id, check_name, \
    kind, level, considered, failing, dropped, detail, recorded_at FROM check_results \
    WHERE pipeline = $1 AND version = $2 AND recorded_at >= $3 ORDER BY recorded_at, id";

/// `$1` pipeline, `$2` version: its routed pending batches parked (`run_after` at the end of
/// time, so no lease finds them) until a requeue.
pub(crate) const PARK_SQL: &str = "UPDATE tasks SET run_after = 9223372036854775807, \
    updated_at = {now} \
    WHERE pipeline = $1 AND state = 'pending' AND routed_at IS NOT NULL \
    AND (version = $2 OR split_version = $2) AND run_after < 9223372036854775807";

/// `$1` batch, `$2` pipeline, `$3` version, `$4` generation. Skips a leased batch, and one
/// already at that generation (a repeated requeue changes nothing). Pinned: routed now.
pub(crate) const REQUEUE_SQL: &str = "UPDATE tasks SET state = 'pending', version = $3, \
    generation = $4, attempts = 0, run_after = {now}, routed_at = {now}, split_version = NULL, \
    split_percent = NULL, lease_owner = NULL, lease_token = NULL, leased_at = NULL, \
    lease_expires_at = NULL, last_error = NULL, error_kind = NULL, rows_in = NULL, \
    rows_out = NULL, updated_at = {now} \
    WHERE batch_id = $1 AND pipeline = $2 AND state <> 'leased' AND generation < $4";

/// `$1` batch: the data files its removed run added, which the repair removed.
pub(crate) const FORGET_BATCH_FILES_SQL: &str = "DELETE FROM batch_files WHERE batch_id = $1";

// ---- analysis templates ----

/// `$1` name, `$2` spec.
pub(crate) const PUT_TEMPLATE_SQL: &str = "INSERT INTO analysis_templates \
    (name, spec, created_at, updated_at) VALUES ($1, $2, {now}, {now}) \
    ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at";

/// `$1` name or NULL for all, by name.
pub(crate) const TEMPLATES_SQL: &str = "SELECT name, spec, created_at, updated_at \
    FROM analysis_templates WHERE ($1 IS NULL OR name = $1) ORDER BY name";

#[derive(sqlx::FromRow)]
pub(crate) struct TemplateRow {
    name: String,
    spec: String,
    created_at: i64,
    updated_at: i64,
}

impl From<TemplateRow> for AnalysisTemplateRecord {
    fn from(r: TemplateRow) -> AnalysisTemplateRecord {
        AnalysisTemplateRecord {
            name: r.name,
            spec: r.spec,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(mode: RouteMode, weight: u8) -> Router {
        Router {
            deployment: 1,
            stable: 1,
            candidate: 2,
            route: Route { mode, weight },
            total: 0,
            to_candidate: 0,
            slot_leases_candidate: false,
            routed: false,
        }
    }

    #[test]
    fn batch_share_is_exact_at_every_prefix() {
        for weight in [0_u8, 1, 10, 25, 33, 50, 99, 100] {
            let mut r = router(RouteMode::Batch, weight);
            let mut candidate = 0_i64;
            for n in 1..=400_i64 {
                let routed = r.next().expect("batch mode routes");
                candidate += i64::from(routed.candidate);
                // never above the weight, and never a whole batch below it
                assert!(
                    candidate * 100 <= i64::from(weight) * n,
                    "{weight}% after {n}"
                );
                assert!(
                    (candidate + 1) * 100 > i64::from(weight) * n,
                    "{weight}% after {n}"
                );
            }
        }
    }

    #[test]
    fn batch_share_continues_from_the_stored_counters() {
        let mut r = router(RouteMode::Batch, 25);
        r.total = 3;
        let next = r.next().expect("routes");
        assert_eq!(
            (next.version, next.candidate),
            (2, true),
            "the 4th of 4 at 25%"
        );
        assert_eq!((r.total, r.to_candidate), (4, 1));
    }

    #[test]
    fn slots_rank_by_worker_id() {
        let live = || {
            vec![
                "h/1/2".to_string(),
                "h/1/0".into(),
                "h/1/1".into(),
                "h/1/3".into(),
            ]
        };
        // 50% of 4 slots: the first two by id
        assert!(slot_leases_candidate(live(), "h/1/0", 50));
        assert!(slot_leases_candidate(live(), "h/1/1", 50));
        assert!(!slot_leases_candidate(live(), "h/1/2", 50));
        // ceil(10% of 4) = 1 slot
        assert!(slot_leases_candidate(live(), "h/1/0", 10));
        assert!(!slot_leases_candidate(live(), "h/1/1", 10));
        assert!(!slot_leases_candidate(live(), "h/1/0", 0));
        assert!(slot_leases_candidate(live(), "h/1/3", 100));
        assert!(
            !slot_leases_candidate(live(), "h/9/0", 100),
            "not live: stable"
        );
    }

    #[test]
    fn key_carries_the_split_and_hold_routes_nothing() {
        let mut r = router(RouteMode::Key, 30);
        let routed = r.next().expect("key routes");
        assert_eq!(routed.version, 1);
        assert_eq!(
            routed.split,
            Some(Split {
                candidate_version: 2,
                percent: 30
            })
        );
        assert_eq!(router(RouteMode::Hold, 50).next(), None);
    }

    #[test]
    fn a_waiting_abort_is_not_replaced() {
        use DeploymentRequest::*;
        assert!(replaces(None, Pause));
        assert!(replaces(Some(Pause), Promote));
        assert!(!replaces(Some(Abort), Pause));
        assert!(replaces(Some(Abort), Abort));
    }
}
