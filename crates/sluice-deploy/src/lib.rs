//! The deployment controller.
//!
//! A deployment moves a pipeline from its stable version to a candidate under a strategy
//! (`recreate`, `rolling`, `canary`). It is a row in the store and a [`State`]; the controller
//! reads every active deployment, decides its next move from the policy, the time, the
//! measurements and the requests of commands (`promote`, `pause`, `resume`, `abort`), and
//! writes the move as one store transaction fenced by the leader's epoch. It keeps nothing in
//! memory between ticks, so a controller killed in any state is resumed by the next leader
//! from the store alone.
//!
//! Nothing here stops the batch flow: a move changes the router's route (which version a batch
//! gets when it is first leased) and the set of live versions. An abort routes every new batch
//! to stable at once, waits for the candidate's batches in flight, then **repairs**: one Delta
//! commit removes the data files the candidate's batches added and raises their exactly-once
//! markers to the candidate run's generation (fencing any late commit of it), and the store
//! queues those batches again for stable under the next generation. The table ends with every
//! input row once, written by stable.

mod analysis;
mod controller;
pub mod hooks;
pub mod prometheus;
mod state;

pub use analysis::{AnalysisRun, analysis_name};
pub use controller::{Controller, ControllerError, Data, ROLLBACK, RepairPlan};
pub use hooks::{Notifier, NotifierReport};
pub use state::State;

/// The leader duty deployments are controlled under.
pub const DUTY: &str = "leader";
