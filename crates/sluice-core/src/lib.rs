//! The shared vocabulary of sluice.
//!
//! Every other crate speaks in these types: a [`BatchId`] names a unit of input for its whole
//! life (queue, lease, commit, retry), a [`BatchSlice`] says which rows of which file it holds,
//! a [`TaskState`] says where it is in the queue, and [`ErrorKind`] tells a caller whether an
//! error is the user's to fix, the outside world's (retry may help) or ours.
//!
//! ```
//! use sluice_core::{BatchId, BatchSlice};
//! let slice = BatchSlice { path: "landing/a.csv".into(), index: 0, byte_start: 10, byte_end: 200,
//!                          row_start: 0, row_count: 5 };
//! let a = BatchId::derive("orders", "fp-1", &slice);
//! assert_eq!(a, BatchId::derive("orders", "fp-1", &slice)); // stable across runs
//! ```

mod error;
mod ids;
mod model;
pub mod usage;

pub use error::{ErrorKind, Located};
pub use ids::{BatchId, LeaseToken, MAX_NAME_LEN, WorkerId, is_name};
pub use model::{BatchOutcome, BatchSlice, TaskState, hostname, now_millis};
