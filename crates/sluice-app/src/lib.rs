//! sluice's application layer: every operation the adapters (the `sluice` binary, a server)
//! call, with typed results and one error type, [`AppError`], that says who has to act
//! ([`AppError::kind`]) and what to do. Adapters parse their input, call one function here and
//! render what it returns; no operation prints, draws progress or reads arguments.
//!
//! A tour:
//! - [`open_store`], [`compile`]: a spec file becomes a [`sluice_engine::Pipeline`], with the
//!   registered datasets it names resolved against the store ([`datasets`]).
//! - [`probe_sink`], [`register_version`], [`register_current`]: a compiled pipeline becomes an
//!   immutable version, current or not.
//! - [`drive`], [`work`]: discovery and a worker pool for one pipeline, or a pool for all of
//!   them, until stopped or drained; progress on a `watch` channel of [`Progress`].
//! - [`deploy`]: start a deployment from a spec, send it commands (promote, pause, resume,
//!   abort, rollback), read its state and the history; [`leader`]: the duties (discovery,
//!   the deployment controller) of the process holding the store's leader lease.
//! - [`verify`]: the pre- and post-deploy suites, their thresholds as [`verify::PreOptions`]
//!   and [`verify::PostOptions`], and the decision.
//! - [`status`]: the store's pipelines, workers and quarantined batches; retrying batches and
//!   replaying dropped rows.
//! - [`pipelines`]: pipelines as resources (queue, versions, specs, pages of batches, one
//!   batch with its runs and checks, measurements over a window); [`metrics`]: what
//!   `/metrics` reports, with bounded labels.
//! - [`roots`]: where a spec sent over the network may read and write, and compiling and
//!   registering such a spec.
//! - [`registry`]: the dataset schema registry service (register, resolve a reference, modes,
//!   migrate a table between versions); it also implements the worker pool's
//!   [`sluice_worker::SchemaRegistry`].
//!
//! ```no_run
//! # async fn example() -> Result<(), sluice_app::AppError> {
//! let store = sluice_app::open_store(".sluice/state.db").await?;
//! let path = std::path::Path::new("pipeline.yaml");
//! let pipeline = sluice_app::register_current(&store, ".sluice/state.db", path).await?;
//! println!("{}@{}", pipeline.name(), pipeline.version);
//! # Ok(()) }
//! ```

mod compile;
pub mod datasets;
pub mod deploy;
mod error;
pub mod leader;
pub mod metrics;
pub mod pipelines;
mod register;
pub mod registry;
pub mod roots;
mod run;
pub mod status;
pub mod verify;

pub use compile::{compile, open_store, redact};
pub use error::{AppError, During, Result};
pub use leader::{DEFAULT_LEADER_LEASE, Duties};
pub use register::{probe_sink, register_current, register_version};
pub use run::{Drive, Progress, Stopped, Work, drive, pipeline_status, work};
pub use sluice_worker::{DEFAULT_STORE_OUTAGE_LIMIT, PoolReport};
