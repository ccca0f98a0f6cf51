//! Schemas for sluice datasets: the type model, versioned schemas with stable field ids,
//! compatibility checks, change classification, migration plans, record conversion
//! between versions and batch validation.
//!
//! A dataset is a named table contract with a history of schema versions `v1..vn`. This
//! crate knows nothing about where that history is stored or how tables are written;
//! it answers the questions around a new version:
//!
//! | question | module |
//! | --- | --- |
//! | what is `decimal(12,2)` in Arrow? | [`types`] |
//! | is this YAML a valid schema, and which field ids does it get? | [`schema`] |
//! | may v3 be registered under `BACKWARD_TRANSITIVE`? | [`compat`] |
//! | what changed from v2 to v3, and how bad is it? | [`mod@diff`] |
//! | how do we roll it out without downtime? | [`mod@plan`] |
//! | is this file a new version, an old one, or refused? | [`registry`] |
//! | read a v1 batch as v3, or a v3 batch as v1 | [`convert`] |
//! | does this batch satisfy v3's types and constraints? | [`validate`] |
//!
//! It depends only on the light Arrow crates, serde and regex, so it builds fast and
//! other crates can use it without pulling in DataFusion or delta-rs.
//!
//! # Example
//!
//! ```
//! use sluice_schema::compat::{CompatibilityMode, check_compatibility};
//! use sluice_schema::convert::{convert_json, json_to_batch, convert_batch};
//! use sluice_schema::diff::{diff, Severity};
//! use sluice_schema::schema::{Schema, assign_ids};
//!
//! let mut v1 = Schema::from_yaml("orders.v1.yaml", r#"
//! dataset: orders
//! fields:
//!   - {name: order_id, type: int64, nullable: false}
//!   - {name: mail, type: string}
//!   - {name: amount, type: "decimal(10,2)"}
//! "#)?;
//! let mut v2 = Schema::from_yaml("orders.v2.yaml", r#"
//! dataset: orders
//! fields:
//!   - {name: order_id, type: int64, nullable: false}
//!   - {name: email, type: string, aliases: [mail]}
//!   - {name: amount, type: "decimal(12,2)", default: 0}
//!   - {name: channel, type: string, default: web}
//! "#)?;
//!
//! // Registration gives stable ids; the rename keeps the id of `mail`.
//! let mut last_id = 0;
//! assign_ids(None, &mut v1, &mut last_id);
//! assign_ids(Some(&v1), &mut v2, &mut last_id);
//! assert_eq!(v2.field("email").and_then(|f| f.id), v1.field("mail").and_then(|f| f.id));
//!
//! // v2 can read v1 data: the rename is followed, the widening is a promotion,
//! // the new field has a default.
//! assert!(check_compatibility(CompatibilityMode::Backward, &v2, &[v1.clone()]).is_empty());
//! let changes = diff(&v1, &v2);
//! assert!(changes.iter().all(|c| c.severity <= Severity::Warning));
//!
//! // Old records are upgraded on read.
//! let old = serde_json::json!({"order_id": 7, "mail": "a@example.com", "amount": "12.50"});
//! let new = convert_json(&old, &v1, &v2)?;
//! assert_eq!(new["email"], "a@example.com");
//! assert_eq!(new["channel"], "web");
//!
//! // The same works on Arrow batches.
//! let batch = json_to_batch(&[old], &v1)?;
//! let upgraded = convert_batch(&batch, &v1, &v2)?;
//! assert_eq!(upgraded.num_columns(), 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod compat;
pub mod convert;
pub mod diff;
pub mod plan;
pub mod registry;
pub mod schema;
pub mod types;
pub mod validate;
pub mod value;

pub use compat::{CompatibilityMode, Violation, check_compatibility};
pub use convert::{ConversionError, convert_batch, convert_json};
pub use diff::{Change, ChangeKind, Severity, diff};
pub use plan::{Dialect, Plan, Risk, plan};
pub use schema::{Field, Schema, SchemaError, assign_ids};
pub use types::{Column, Columns, FieldType, StructField, TimeUnit, TypeError};
pub use validate::{ValidationError, validate_batch};
