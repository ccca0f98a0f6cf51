//! The schema registry's rows and statements, shared by both backends.
//!
//! The store keeps schemas as JSON text and compatibility modes as names; it does not read
//! them. Parsing, id assignment and compatibility checks live in `sluice-schema`, so this crate
//! stays free of it.

use crate::{DatasetRecord, SchemaVersionRecord, StoreError};

/// `registry_config` key of the default compatibility mode (seeded by migration 0002).
pub(crate) const DEFAULT_COMPATIBILITY_KEY: &str = "compatibility";

/// Columns of a schema version query, in [`SchemaVersionRow`]'s shape.
macro_rules! schema_version_columns {
    () => {
        "dataset, version, schema_json, fingerprint, last_field_id, created_at"
    };
}

pub(crate) const SCHEMA_VERSION_BY_FINGERPRINT_SQL: &str = concat!(
    "SELECT ",
    schema_version_columns!(),
    " FROM schema_versions WHERE dataset = $1 AND fingerprint = $2"
);

pub(crate) const LATEST_VERSION_SQL: &str =
    "SELECT MAX(version) FROM schema_versions WHERE dataset = $1";

/// `$1` dataset, `$2` version or NULL for the latest.
pub(crate) const SCHEMA_VERSION_SQL: &str = concat!(
    "SELECT ",
    schema_version_columns!(),
    " FROM schema_versions WHERE dataset = $1 AND ($2 IS NULL OR version = $2) \
     ORDER BY version DESC LIMIT 1"
);

pub(crate) const SCHEMA_VERSIONS_SQL: &str = concat!(
    "SELECT ",
    schema_version_columns!(),
    " FROM schema_versions WHERE dataset = $1 ORDER BY version"
);

/// `$1` dataset, `$2` version, `$3` schema, `$4` fingerprint, `$5` last field id, `$6` now.
pub(crate) const INSERT_SCHEMA_VERSION_SQL: &str = concat!(
    "INSERT INTO schema_versions (",
    schema_version_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
    schema_version_columns!()
);

/// `$1` dataset or NULL for all.
pub(crate) const DATASETS_SQL: &str = "SELECT d.name, d.compatibility, d.created_at, \
    d.updated_at, MAX(v.version) AS latest_version, CAST(COUNT(v.version) AS BIGINT) AS versions \
    FROM datasets d LEFT JOIN schema_versions v ON v.dataset = d.name \
    WHERE ($1 IS NULL OR d.name = $1) \
    GROUP BY d.name, d.compatibility, d.created_at, d.updated_at ORDER BY d.name";

/// `$1` dataset, `$2` mode, `$3` now.
pub(crate) const SET_DATASET_COMPATIBILITY_SQL: &str = "INSERT INTO datasets (name, compatibility, created_at, updated_at) VALUES ($1, $2, $3, $3) \
     ON CONFLICT (name) DO UPDATE SET compatibility = excluded.compatibility, \
     updated_at = excluded.updated_at";

/// `$1` key, `$2` value.
pub(crate) const SET_CONFIG_SQL: &str = "INSERT INTO registry_config (key, value) VALUES ($1, $2) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// `$1` dataset, `$2` the default's key.
pub(crate) const COMPATIBILITY_SQL: &str = "SELECT COALESCE((SELECT compatibility FROM datasets WHERE name = $1), \
     (SELECT value FROM registry_config WHERE key = $2))";

#[derive(sqlx::FromRow)]
pub(crate) struct SchemaVersionRow {
    dataset: String,
    version: i64,
    schema_json: String,
    fingerprint: String,
    last_field_id: i64,
    created_at: i64,
}

impl From<SchemaVersionRow> for SchemaVersionRecord {
    fn from(r: SchemaVersionRow) -> Self {
        SchemaVersionRecord {
            dataset: r.dataset,
            version: r.version,
            schema_json: r.schema_json,
            fingerprint: r.fingerprint,
            last_field_id: r.last_field_id,
            created_at: r.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DatasetRow {
    name: String,
    compatibility: Option<String>,
    created_at: i64,
    updated_at: i64,
    latest_version: Option<i64>,
    versions: i64,
}

impl From<DatasetRow> for DatasetRecord {
    fn from(r: DatasetRow) -> Self {
        DatasetRecord {
            name: r.name,
            compatibility: r.compatibility,
            latest_version: r.latest_version,
            versions: r.versions,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The migration seeds the default, so its absence means the store was tampered with.
pub(crate) fn compatibility_or_corrupt(mode: Option<String>) -> Result<String, StoreError> {
    mode.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "registry_config has no `{DEFAULT_COMPATIBILITY_KEY}` row (the default compatibility \
             mode); set one with `sluice schema mode MODE`"
        ))
    })
}

/// Version numbers and field ids are positive; anything else is the caller's bug.
pub(crate) fn check_new_version(new: &crate::NewSchemaVersion<'_>) -> Result<(), StoreError> {
    if new.dataset.is_empty() || new.fingerprint.is_empty() {
        return Err(StoreError::Invalid(
            "a schema version needs a dataset name and a fingerprint".into(),
        ));
    }
    if new.last_field_id < 0 || new.based_on.is_some_and(|v| v < 1) {
        return Err(StoreError::Invalid(format!(
            "schema version of {}: last_field_id {} and based_on {:?} must be positive",
            new.dataset, new.last_field_id, new.based_on
        )));
    }
    Ok(())
}
