//! The decisions of the schema registry, as pure functions over a dataset's history.
//!
//! Registering a schema file goes: parse it ([`Schema::from_yaml`]), give its fields ids from
//! the latest version ([`prepare`]: renames keep ids through aliases, names that come back get
//! new ones, the id counter only moves forward), then decide ([`decide`]): a schema whose
//! fingerprint is already registered is that version; otherwise it must be compatible with the
//! history under the dataset's mode, or it is refused with every violation.
//!
//! Where the history lives is not this module's business: the caller reads it from the store,
//! decodes it with [`RegisteredVersion::from_stored`], and writes the [`Candidate`] back as
//! [`Candidate::json`] and [`Candidate::fingerprint`].
//!
//! ```
//! use sluice_schema::registry::{Decision, RegisteredVersion, decide, prepare};
//! use sluice_schema::{CompatibilityMode, Schema};
//!
//! let v1 = Schema::from_yaml("v1.yaml", "dataset: orders\nfields:\n  - {name: id, type: int64}\n")?;
//! let first = prepare(v1, None)?;
//! assert_eq!(decide(&first, &[], CompatibilityMode::Backward), Decision::Register { version: 1 });
//! let stored = RegisteredVersion::from_stored(
//!     "orders", 1, &first.json, &first.fingerprint, i64::from(first.last_field_id))?;
//!
//! let v2 = Schema::from_yaml("v2.yaml", "dataset: orders\nfields:\n  - {name: order_id, type: int64, aliases: [id]}\n")?;
//! let second = prepare(v2, Some(&stored))?;
//! assert_eq!(second.schema.fields[0].id, Some(1), "the rename keeps the id");
//! let history = [stored];
//! assert_eq!(decide(&second, &history, CompatibilityMode::Backward), Decision::Register { version: 2 });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compat::{CompatibilityMode, Violation, check_compatibility};
use crate::schema::{Schema, SchemaError, assign_ids};

/// A version read back from the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisteredVersion {
    pub version: u32,
    pub schema: Schema,
    /// As stored: the [`Candidate::fingerprint`] it was registered with.
    pub fingerprint: String,
    /// The highest field id given in the dataset up to this version.
    pub last_field_id: u32,
}

/// A schema ready to be registered: ids assigned, normalized, fingerprinted.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub schema: Schema,
    /// The normalized schema as compact JSON: what the registry stores.
    pub json: String,
    /// `sha256:` and the hex digest of [`Candidate::json`].
    pub fingerprint: String,
    pub last_field_id: u32,
    /// The version ids were assigned from (`None` for a dataset's first schema).
    pub based_on: Option<u32>,
}

/// What registering a [`Candidate`] would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    /// The same schema is already registered as this version.
    Existing { version: u32 },
    /// Compatible with the history under the mode: becomes this version.
    Register { version: u32 },
    /// Refused: every reason, each naming the field, the rule and the two versions.
    Incompatible {
        mode: CompatibilityMode,
        violations: Vec<Violation>,
    },
}

/// Problems with schemas the registry reads back or is asked to register.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "{dataset}@{version}: the registered schema cannot be read ({reason}); the store was \
         written by an incompatible sluice or edited by hand"
    )]
    Corrupt {
        dataset: String,
        version: i64,
        reason: String,
    },
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

impl RegisteredVersion {
    /// Decodes a stored version (the JSON written from [`Candidate::json`]).
    pub fn from_stored(
        dataset: &str,
        version: i64,
        schema_json: &str,
        fingerprint: &str,
        last_field_id: i64,
    ) -> Result<RegisteredVersion, RegistryError> {
        let corrupt = |reason: String| RegistryError::Corrupt {
            dataset: dataset.to_string(),
            version,
            reason,
        };
        let schema: Schema =
            serde_json::from_str(schema_json).map_err(|e| corrupt(e.to_string()))?;
        if !schema.has_ids() && !schema.fields.is_empty() {
            return Err(corrupt("a field has no id".into()));
        }
        Ok(RegisteredVersion {
            version: u32::try_from(version)
                .map_err(|_| corrupt(format!("version {version} is out of range")))?,
            schema,
            fingerprint: fingerprint.to_string(),
            last_field_id: u32::try_from(last_field_id)
                .map_err(|_| corrupt(format!("last field id {last_field_id} is out of range")))?,
        })
    }
}

/// Gives `schema` its field ids from `latest` (the dataset's newest version, if any) and
/// normalizes it. Ids already written in the file are replaced: ids belong to the registry.
pub fn prepare(
    mut schema: Schema,
    latest: Option<&RegisteredVersion>,
) -> Result<Candidate, RegistryError> {
    for field in &mut schema.fields {
        field.id = None;
    }
    let mut last_field_id = latest.map_or(0, |v| v.last_field_id);
    assign_ids(latest.map(|v| &v.schema), &mut schema, &mut last_field_id);
    let schema = normalize(schema);
    schema.check()?;
    let json = serde_json::to_string(&schema).map_err(|e| SchemaError::Invalid {
        dataset: schema.dataset.clone(),
        reason: format!("cannot be written as JSON: {e}"),
    })?;
    let fingerprint = fingerprint(&json);
    Ok(Candidate {
        schema,
        json,
        fingerprint,
        last_field_id,
        based_on: latest.map(|v| v.version),
    })
}

/// The canonical form two spellings of one schema share: aliases are a set, so they are
/// sorted and deduplicated. Field order is kept; it is the table's column order.
pub fn normalize(mut schema: Schema) -> Schema {
    for field in &mut schema.fields {
        field.aliases.sort();
        field.aliases.dedup();
    }
    schema
}

/// `sha256:<hex>` of a normalized schema's JSON.
pub fn fingerprint(json: &str) -> String {
    let digest = Sha256::digest(json.as_bytes());
    let mut hex = String::with_capacity(7 + digest.len() * 2);
    hex.push_str("sha256:");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Decides what registering `candidate` does, given the dataset's `history` (versions
/// `1..=n`, oldest first) and its compatibility mode. Transitive modes check every version.
pub fn decide(
    candidate: &Candidate,
    history: &[RegisteredVersion],
    mode: CompatibilityMode,
) -> Decision {
    if let Some(v) = history
        .iter()
        .find(|v| v.fingerprint == candidate.fingerprint)
    {
        return Decision::Existing { version: v.version };
    }
    let schemas: Vec<Schema> = history.iter().map(|v| v.schema.clone()).collect();
    let violations = check_compatibility(mode, &candidate.schema, &schemas);
    if violations.is_empty() {
        let next = history.last().map_or(1, |v| v.version.saturating_add(1));
        Decision::Register { version: next }
    } else {
        Decision::Incompatible { mode, violations }
    }
}
