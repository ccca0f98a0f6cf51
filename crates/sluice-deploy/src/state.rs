//! The states of a deployment and the moves between them.
//!
//! A deployment is one row in the store; its `state` column holds a [`State`], and every move
//! is one fenced store transaction ([`sluice_store::Store::transition_deployment`]) that names
//! the state it leaves. A move not in [`State::can_become`] is a bug and is refused before it
//! reaches the store, so a controller resumed after a crash in any state can only go on the
//! way the table below allows.
//!
//! ```text
//!  Progressing ──► Progressing (next step)     Paused ──► Progressing (resume, promote)
//!       │  ├─────► Paused (pause, inconclusive, no input)   │
//!       │  ├─────► Draining (recreate)                      ├──► Promoted (promote --full)
//!       │  ├─────► Promoted (steps done)                    └──► Aborting
//!       │  └─────► Aborting (analysis failed, abort)
//!  Draining ──► Promoted (stable drained, switched) │ Aborting
//!  Aborting ──► Repairing (the candidate's batches are settled)
//!  Repairing ──► Repairing (the repair commit made) ──► Aborted │ RolledBack (batches queued
//!                                                               for stable)
//! ```

use std::fmt;
use std::str::FromStr;

use sluice_store::DeploymentOutcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Following the strategy's steps.
    Progressing,
    /// Held for a person: a `pause` step without a duration, `sluice pause`, an inconclusive
    /// analysis, no candidate batch within the progress deadline. `resume` or `promote` goes on.
    Paused,
    /// Recreate: nothing new is routed; the stable version's batches in flight finish.
    Draining,
    /// Every new batch goes to stable; the candidate's batches in flight finish or expire.
    Aborting,
    /// Removing the candidate's rows from the table and queueing its batches for stable.
    Repairing,
    Promoted,
    Aborted,
    RolledBack,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Progressing,
        State::Paused,
        State::Draining,
        State::Aborting,
        State::Repairing,
        State::Promoted,
        State::Aborted,
        State::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Progressing => "progressing",
            State::Paused => "paused",
            State::Draining => "draining",
            State::Aborting => "aborting",
            State::Repairing => "repairing",
            State::Promoted => "promoted",
            State::Aborted => "aborted",
            State::RolledBack => "rolled_back",
        }
    }

    pub fn is_terminal(self) -> bool {
        self.outcome().is_some()
    }

    /// The outcome a terminal state records.
    pub fn outcome(self) -> Option<DeploymentOutcome> {
        match self {
            State::Promoted => Some(DeploymentOutcome::Promoted),
            State::Aborted => Some(DeploymentOutcome::Aborted),
            State::RolledBack => Some(DeploymentOutcome::RolledBack),
            _ => None,
        }
    }

    /// Whether a deployment in `self` may move to `to`.
    pub fn can_become(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (
                Progressing,
                Progressing | Paused | Draining | Promoted | Aborting
            ) | (Paused, Progressing | Paused | Promoted | Aborting)
                | (Draining, Promoted | Aborting)
                | (Aborting, Repairing)
                | (Repairing, Repairing | Aborted | RolledBack)
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<State, String> {
        State::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown deployment state {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>(), Ok(s));
        }
        assert!("done".parse::<State>().is_err());
    }

    #[test]
    fn terminal_states_go_nowhere_and_only_repairing_ends_an_abort() {
        for from in State::ALL {
            for to in State::ALL {
                if from.is_terminal() {
                    assert!(!from.can_become(to), "{from} -> {to}");
                }
                if matches!(to, State::Aborted | State::RolledBack) {
                    assert_eq!(
                        from.can_become(to),
                        from == State::Repairing,
                        "{from} -> {to}"
                    );
                }
            }
        }
        // An abort cannot be undone: once aborting, the only way is through the repair.
        for to in State::ALL {
            assert_eq!(State::Aborting.can_become(to), to == State::Repairing);
        }
    }
}
