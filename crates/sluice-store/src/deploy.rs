//! Deployments, the router, leadership and analysis measurements: the store's half of
//! zero-downtime upgrades.
//!
//! * A **deployment** moves a pipeline from its stable version to a candidate. Its row holds
//!   the controller's persisted state (state, step, weight, route) and the commands' requests
//!   (promote, pause, resume, abort); every change of it is one transaction that also appends a
//!   [`DeploymentEvent`]. At most one deployment per pipeline is active (outcome not set).
//! * The **router** picks a batch's version when a worker first leases it, from the active
//!   deployment's route at that moment ([`Route`]); the choice is kept on the task, so a batch
//!   is finished by the version it started with (retries and rescues keep it).
//! * **Leadership**: one row per duty (`controller`) with a holder, an epoch and an expiry by
//!   the store clock. Every controller write carries the [`Fence`] it holds and is applied only
//!   while that fence is still the leadership, in the same transaction.
//! * **Measurements** of analyses, each stored with its inputs so a decision can be explained,
//!   and named **analysis templates** that several pipelines reference.

use sluice_core::BatchId;

/// `as_str` and `FromStr` for an enum stored as text, from one list of names (so the two can
/// never disagree): the serde names, which the store's CHECK constraints list too.
macro_rules! names {
    ($ty:ident, $what:literal { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;

            /// The names [`Self::as_str`] gives.
            fn from_str(s: &str) -> Result<$ty, String> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?}; expected one of ", $($name, " "),+),
                        other
                    )),
                }
            }
        }
    };
}

/// How the router sends batches of a pipeline with an active deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteMode {
    /// By batch: of the batches routed since the weight was set, the candidate gets
    /// `weight` percent (exactly: a batch goes to the candidate when that keeps its share at
    /// or below `weight`).
    Batch,
    /// By worker slot (rolling): the live worker slots (heartbeat in the last 15 s, state
    /// `running`), ordered by worker id, lease the candidate when their rank is below
    /// `ceil(weight * slots / 100)`; the others lease stable.
    Slots,
    /// By key (`deploy.route_key`): every batch is leased with both versions; rows whose key
    /// hashes below `weight` go to the candidate, and both parts commit together.
    Key,
    /// Route nothing (recreate while stable drains): new batches of the pipeline are not
    /// leased at all; batches already routed are.
    Hold,
}

names!(RouteMode, "route mode" {
    Batch = "batch",
    Slots = "slots",
    Key = "key",
    Hold = "hold",
});

/// The route a deployment sets: how, and the candidate's share in percent (0..=100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route {
    pub mode: RouteMode,
    pub weight: u8,
}

/// What a lease of a batch routed by key carries: rows whose key hashes below `percent` are
/// the candidate's (`sluice_engine::route`), the rest the lease's `version`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Split {
    pub candidate_version: i64,
    pub percent: u8,
}

/// A deployment to start; see [`crate::Store::start_deployment`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewDeployment {
    pub pipeline: String,
    pub stable_version: i64,
    pub candidate_version: i64,
    /// `recreate`, `rolling`, `canary` (part 2 adds more).
    pub strategy: String,
    /// The resolved deploy policy (steps, analyses), as JSON: what the controller follows.
    pub policy: String,
    /// The first state (the controller's word for it).
    pub state: String,
    pub route: Route,
    /// Who started it and how (`sluice deploy`, `sluice run`), for the history.
    pub started_by: String,
}

/// A deployment as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentRecord {
    pub id: i64,
    pub pipeline: String,
    pub stable_version: i64,
    pub candidate_version: i64,
    pub strategy: String,
    pub policy: String,
    /// The controller's state; the store keeps it as given.
    pub state: String,
    /// Index of the current step of the policy.
    pub step: i64,
    pub route: Route,
    /// The command waiting for the controller, if any.
    pub request: Option<DeploymentRequest>,
    /// Why it is paused, aborted, rolled back (or what it is waiting for).
    pub reason: Option<String>,
    /// Set when it ends; the deployment is active while this is `None`.
    pub outcome: Option<DeploymentOutcome>,
    /// The controller's scratch JSON (drain start, repair plan, ...), `{}` at first.
    pub data: String,
    pub started_by: String,
    pub created_at: i64,
    /// When the current step began (the route's counters restart then too).
    pub step_started_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// A command for the controller of an active deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentRequest {
    /// Go past the current pause (or analysis) to the next step.
    Promote,
    /// Skip the remaining steps: full weight, promote.
    PromoteFull,
    Pause,
    Resume,
    /// Back to stable and repair.
    Abort,
}

names!(DeploymentRequest, "deployment request" {
    Promote = "promote",
    PromoteFull = "promote_full",
    Pause = "pause",
    Resume = "resume",
    Abort = "abort",
});

/// How a deployment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentOutcome {
    /// The candidate became the pipeline's current (stable) version.
    Promoted,
    /// Aborted (by analysis, a check, a person): stable kept, the candidate's rows repaired.
    Aborted,
    /// A rollback to the previous stable version, rows repaired.
    RolledBack,
}

names!(DeploymentOutcome, "deployment outcome" {
    Promoted = "promoted",
    Aborted = "aborted",
    RolledBack = "rolled_back",
});

/// A change the controller makes to a deployment, applied only if the deployment is still in
/// `from_state` and `fence` still holds (see [`crate::Store::transition_deployment`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentUpdate {
    pub from_state: String,
    pub to_state: String,
    pub step: i64,
    /// A new route; the router's counters restart when it changes.
    pub route: Route,
    pub reason: Option<String>,
    /// The request the controller saw when it decided (`None`: none was waiting). The
    /// transition applies only while this is still the deployment's request, so a command that
    /// arrives meanwhile is neither overwritten (an abort's weight 0) nor cleared unseen: the
    /// transition returns false and the next pass sees the command.
    pub seen_request: Option<DeploymentRequest>,
    /// Clear the request it acted on (`seen_request`).
    pub clear_request: bool,
    pub data: String,
    /// Ending it. `Promoted` also makes the candidate the pipeline's current version, an abort
    /// or rollback the stable version, in the same transaction.
    pub outcome: Option<DeploymentOutcome>,
    /// For the event log: what happened, in a sentence.
    pub message: String,
}

/// One line of a deployment's history: a transition or a request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentEvent {
    pub deployment_id: i64,
    pub at: i64,
    pub from_state: Option<String>,
    pub to_state: String,
    pub step: i64,
    pub route: Route,
    pub message: String,
    /// The leader epoch that wrote it (0 for commands).
    pub epoch: i64,
}

/// A leadership held: what every fenced write carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fence {
    /// The duty (`controller`).
    pub duty: String,
    pub holder: String,
    /// Grows by one every time the leadership changes hands.
    pub epoch: i64,
    /// By the store clock.
    pub expires_at: i64,
}

/// Who holds a duty, for status.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LeaderRecord {
    pub duty: String,
    pub holder: String,
    pub epoch: i64,
    pub acquired_at: i64,
    pub expires_at: i64,
}

/// One measurement of one metric of an analysis, with its inputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewMeasurement {
    pub deployment_id: i64,
    /// Which analysis: `step-2`, `background`.
    pub analysis: String,
    pub metric: String,
    /// `successful`, `failed`, `inconclusive` or `error`.
    pub phase: String,
    /// The candidate's value (`None` when it could not be measured).
    pub value: Option<f64>,
    /// The stable version's value in the same window, when the condition compares with it.
    pub stable_value: Option<f64>,
    /// JSON: the window, the sample counts, every value the condition read.
    pub inputs: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeasurementRecord {
    pub id: i64,
    pub deployment_id: i64,
    pub analysis: String,
    pub metric: String,
    pub phase: String,
    pub value: Option<f64>,
    pub stable_value: Option<f64>,
    pub inputs: String,
    pub message: String,
    pub measured_at: i64,
}

/// A named, reusable analysis (Argo's AnalysisTemplate): its spec as YAML text.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnalysisTemplateRecord {
    pub name: String,
    pub spec: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a repair puts back in the queue: these batches, pending again with fresh attempts,
/// pinned to `version` (stable) and set to the generation given (one more than they had: the
/// repair commit recorded it in their exactly-once markers, so the marker of the removed run
/// no longer counts). Setting, not incrementing, makes a repeated requeue change nothing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Requeue {
    pub pipeline: String,
    pub version: i64,
    pub batches: Vec<(BatchId, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store writes `as_str` and reads it back with `parse`; the API speaks serde.
    fn round_trips<T>(all: &[T], as_str: fn(T) -> &'static str)
    where
        T: Copy + PartialEq + std::fmt::Debug + std::str::FromStr + serde::Serialize,
        T::Err: std::fmt::Debug,
    {
        for &v in all {
            assert_eq!(as_str(v).parse::<T>().ok(), Some(v));
            let json = serde_json::to_value(v).expect("serializing a name");
            assert_eq!(json.as_str(), Some(as_str(v)));
        }
    }

    #[test]
    fn names_round_trip_and_are_the_serde_names() {
        use DeploymentOutcome as O;
        use DeploymentRequest as R;
        round_trips(
            &[
                RouteMode::Batch,
                RouteMode::Slots,
                RouteMode::Key,
                RouteMode::Hold,
            ],
            RouteMode::as_str,
        );
        round_trips(
            &[R::Promote, R::PromoteFull, R::Pause, R::Resume, R::Abort],
            R::as_str,
        );
        round_trips(&[O::Promoted, O::Aborted, O::RolledBack], O::as_str);
        let err = "paused".parse::<R>().expect_err("not a request");
        assert!(err.contains("promote_full"), "{err}");
    }
}
