//! What the pool asks of the schema registry. The registry service itself (history and modes
//! in the store, racing registrations) is the application layer's (`sluice_app::registry`),
//! which sits above this crate; the pool only needs one call, so it names that call here and
//! the caller that builds the pool passes the implementation in.

use async_trait::async_trait;
use sluice_schema::CompatibilityMode;
use sluice_schema::compat::Violation;

/// What proposing a dataset's latest version plus new columns came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Evolution {
    /// This version of the dataset has the columns (registered now, or already).
    Has {
        version: u32,
        mode: CompatibilityMode,
    },
    /// The dataset's mode does not allow adding them: every violation.
    Refused {
        mode: CompatibilityMode,
        violations: Vec<Violation>,
    },
}

/// The schema registry as the pool sees it: `unknown_columns: evolve` proposes a version.
#[async_trait]
pub trait SchemaRegistry: Send + Sync {
    /// Proposes `dataset`'s latest version plus `columns` (name, type; nullable). An error is
    /// the reason nothing could be proposed (no such dataset, an unknown type, the store).
    async fn evolve(
        &self,
        dataset: &str,
        columns: &[(String, String)],
    ) -> Result<Evolution, String>;
}
