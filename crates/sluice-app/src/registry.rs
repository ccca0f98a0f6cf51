//! Registering a dataset schema version: the one code path `sluice schema register` and the
//! `evolve` policy (a landed file bringing new columns) share. The decisions (ids,
//! fingerprints, compatibility) are `sluice_schema::registry`'s; history and modes live in the
//! store; a registration racing another one re-reads the history and decides again.
//!
//! The worker pool sits below this crate and needs one call of it (the `evolve` proposal), so
//! it declares that call as [`sluice_worker::SchemaRegistry`] and [`StoreRegistry`] implements
//! it here: the service has one home and the pool keeps no copy of it.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_core::ErrorKind;
use sluice_schema::compat::Violation;
use sluice_schema::diff::Change;
use sluice_schema::registry::{self, Decision, RegisteredVersion};
use sluice_schema::{CompatibilityMode, Schema};
use sluice_store::{NewSchemaVersion, SchemaRegistration, Store};
use sluice_worker::{Evolution, SchemaRegistry};

use crate::{AppError, During};

/// Registrations that keep losing the race to other writers give up after this many rounds.
const ATTEMPTS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The schema itself is not valid (the caller's input).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(String),
    #[error(
        "other registrations of {0} kept changing its history ({ATTEMPTS} attempts); try again"
    )]
    Contended(String),
}

impl RegisterError {
    /// Who has to act on the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegisterError::Invalid(_) => ErrorKind::User,
            RegisterError::Store(_) | RegisterError::Contended(_) => ErrorKind::External,
        }
    }
}

impl From<RegisterError> for AppError {
    fn from(e: RegisterError) -> AppError {
        match e.kind() {
            ErrorKind::User => AppError::User(e.to_string()),
            _ => AppError::External(e.to_string()),
        }
    }
}

/// What registering a schema did (or, in a dry run, would do).
#[derive(Debug, Clone)]
pub struct Registration {
    pub dataset: String,
    pub mode: CompatibilityMode,
    pub fingerprint: String,
    /// The dataset's latest version before this registration.
    pub latest: Option<u32>,
    /// Changes from the latest version.
    pub changes: Vec<Change>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The same schema is already this version.
    Existing(u32),
    Registered(u32),
    /// A dry run: it would become this version.
    WouldRegister(u32),
    /// Incompatible under the dataset's mode: every violation.
    Refused(Vec<Violation>),
}

/// The registry default: what a dataset without a record of its own is checked under. No
/// dataset has the empty name (schemas refuse it), so asking for it reads the default.
pub async fn default_mode(store: &Arc<dyn Store>) -> crate::Result<String> {
    store
        .compatibility("")
        .await
        .during("reading the default compatibility mode")
}

/// `DATASET`, `DATASET@3`, `DATASET@v3` or `DATASET@latest`.
pub fn parse_reference(reference: &str) -> crate::Result<(&str, Option<i64>)> {
    let (dataset, version) = match reference.rsplit_once('@') {
        None => (reference, None),
        Some((dataset, "latest")) => (dataset, None),
        Some((dataset, v)) => {
            let number = v.strip_prefix('v').unwrap_or(v);
            match number.parse::<i64>() {
                Ok(n) if n >= 1 => (dataset, Some(n)),
                _ => {
                    return Err(AppError::User(format!(
                        "`{reference}`: `{v}` is not a version; write DATASET@N (N from 1) or DATASET for the latest"
                    )));
                }
            }
        }
    };
    if dataset.is_empty() {
        return Err(AppError::User(format!(
            "`{reference}` names no dataset; write DATASET or DATASET@N"
        )));
    }
    Ok((dataset, version))
}

/// The stored record and the decoded version a reference (see [`parse_reference`]) names; a
/// reference to nothing is a user error that says what there is.
pub async fn resolve(
    store: &Arc<dyn Store>,
    reference: &str,
) -> crate::Result<(sluice_store::SchemaVersionRecord, RegisteredVersion)> {
    let (dataset, version) = parse_reference(reference)?;
    let Some(record) = store.schema_version(dataset, version).await? else {
        let versions = store.schema_versions(dataset).await?;
        if versions.is_empty() {
            return Err(unknown_dataset(store, dataset).await);
        }
        let numbers: Vec<i64> = versions.iter().map(|v| v.version).collect();
        return Err(AppError::NotFound(format!(
            "{dataset} has no version {}: it has {}; see `sluice schema list`",
            version.map_or("latest".into(), |v| v.to_string()),
            ranges(&numbers)
        )));
    };
    let v = RegisteredVersion::from_stored(
        &record.dataset,
        record.version,
        &record.schema_json,
        &record.fingerprint,
        record.last_field_id,
    )
    .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok((record, v))
}

/// The error for a dataset the registry does not have, listing the ones it has.
pub async fn unknown_dataset(store: &Arc<dyn Store>, dataset: &str) -> AppError {
    let known: Vec<String> = match store.datasets().await {
        Ok(all) => all
            .into_iter()
            .filter(|d| d.versions > 0)
            .map(|d| d.name)
            .collect(),
        Err(_) => Vec::new(),
    };
    if known.is_empty() {
        AppError::NotFound(format!(
            "no dataset `{dataset}` in the registry, which is empty: register one with `sluice schema register SCHEMA.yaml`"
        ))
    } else {
        AppError::NotFound(format!(
            "no dataset `{dataset}` in the registry; registered datasets: {}",
            known.join(", ")
        ))
    }
}

/// `1..4` for contiguous versions (they always are), else the list.
pub fn ranges(numbers: &[i64]) -> String {
    match (numbers.first(), numbers.last()) {
        (Some(first), Some(last)) if last - first + 1 == numbers.len() as i64 && first != last => {
            format!("versions {first}..{last}")
        }
        (Some(only), Some(_)) if numbers.len() == 1 => format!("only version {only}"),
        _ => format!(
            "versions {}",
            numbers
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// One dataset as `sluice schema list` shows it: its latest version and the mode it is
/// checked under.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DatasetEntry {
    pub dataset: String,
    pub latest_version: Option<i64>,
    pub versions: i64,
    /// Its own mode, or the default when `mode_is_default`.
    pub mode: String,
    pub mode_is_default: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The registry: the default mode and every dataset, by name.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Datasets {
    pub default_mode: String,
    pub datasets: Vec<DatasetEntry>,
}

/// `sluice schema list`: every dataset with its latest version and mode.
pub async fn list(store: &Arc<dyn Store>) -> crate::Result<Datasets> {
    let records = store.datasets().await.during("listing the datasets")?;
    let default_mode = default_mode(store).await?;
    let datasets = records
        .into_iter()
        .map(|d| DatasetEntry {
            mode_is_default: d.compatibility.is_none(),
            mode: d.compatibility.unwrap_or_else(|| default_mode.clone()),
            dataset: d.name,
            latest_version: d.latest_version,
            versions: d.versions,
            created_at: d.created_at,
            updated_at: d.updated_at,
        })
        .collect();
    Ok(Datasets {
        default_mode,
        datasets,
    })
}

/// One dataset as [`list`] shows it.
pub async fn dataset(store: &Arc<dyn Store>, name: &str) -> crate::Result<DatasetEntry> {
    let Some(d) = store
        .dataset(name)
        .await
        .during("reading the dataset")?
        .filter(|d| d.versions > 0 || d.compatibility.is_some())
    else {
        return Err(unknown_dataset(store, name).await);
    };
    let default_mode = default_mode(store).await?;
    Ok(DatasetEntry {
        mode_is_default: d.compatibility.is_none(),
        mode: d.compatibility.unwrap_or(default_mode),
        dataset: d.name,
        latest_version: d.latest_version,
        versions: d.versions,
        created_at: d.created_at,
        updated_at: d.updated_at,
    })
}

/// A compatibility mode by name (`BACKWARD`, ...).
pub fn parse_mode(text: &str) -> crate::Result<CompatibilityMode> {
    text.parse::<CompatibilityMode>()
        .map_err(|e| AppError::User(e.to_string()))
}

/// `sluice schema register` (or, with `dry_run`, `check`) of a schema's text, which must be
/// of `dataset`; `origin` names the text in errors.
pub async fn register_text(
    store: &Arc<dyn Store>,
    dataset: &str,
    origin: &str,
    text: &str,
    dry_run: bool,
) -> crate::Result<Registration> {
    let schema = parse_schema(origin, text)?;
    if schema.dataset != dataset {
        return Err(AppError::User(format!(
            "{origin} is a schema of dataset {:?}, not {dataset:?}: send it to that dataset",
            schema.dataset
        )));
    }
    Ok(register_schema(store, &schema, dry_run).await?)
}

/// One registered schema version, decoded.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SchemaVersionShown {
    pub dataset: String,
    pub version: i64,
    pub fingerprint: String,
    pub last_field_id: i64,
    pub created_at: i64,
    pub schema: Schema,
}

/// `sluice schema show`: the version a reference (see [`parse_reference`]) names.
pub async fn show(store: &Arc<dyn Store>, reference: &str) -> crate::Result<SchemaVersionShown> {
    let (record, v) = resolve(store, reference).await?;
    Ok(SchemaVersionShown {
        dataset: record.dataset,
        version: record.version,
        fingerprint: record.fingerprint,
        last_field_id: record.last_field_id,
        created_at: record.created_at,
        schema: v.schema,
    })
}

/// A schema from its YAML (or JSON) text; `origin` names it in errors (a file, a request).
pub fn parse_schema(origin: &str, text: &str) -> crate::Result<Schema> {
    Schema::from_yaml(origin, text)
        .map_err(|e| AppError::User(format!("{e}\n  fix the schema and send it again")))
}

impl Registration {
    /// What happened, as adapters report it (`sluice schema register --json`, the API).
    pub fn report(&self) -> RegistrationReport {
        let (outcome, version, violations) = match &self.outcome {
            Outcome::Existing(v) => ("unchanged", Some(*v), Vec::new()),
            Outcome::Registered(v) => ("registered", Some(*v), Vec::new()),
            Outcome::WouldRegister(v) => ("would_register", Some(*v), Vec::new()),
            Outcome::Refused(violations) => ("refused", None, violations.clone()),
        };
        RegistrationReport {
            dataset: self.dataset.clone(),
            outcome,
            version,
            latest_version: self.latest,
            mode: self.mode.as_str(),
            fingerprint: self.fingerprint.clone(),
            changes: self.changes.clone(),
            violations,
        }
    }
}

/// [`Registration`] as adapters report it: `outcome` is `unchanged`, `registered`,
/// `would_register` (a check) or `refused` (with every violation).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegistrationReport {
    pub dataset: String,
    pub outcome: &'static str,
    pub version: Option<u32>,
    pub latest_version: Option<u32>,
    pub mode: &'static str,
    pub fingerprint: String,
    pub changes: Vec<Change>,
    pub violations: Vec<Violation>,
}

/// A dataset's (or the default's) compatibility mode, and whether it is the default.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModeOf {
    pub mode: String,
    #[serde(rename = "mode_is_default")]
    pub is_default: bool,
}

/// `sluice schema mode`: sets `dataset`'s mode (`None`: the default) when `set` is given, then
/// reads it back. A dataset the registry does not have is a user error.
pub async fn set_mode(
    store: &Arc<dyn Store>,
    dataset: Option<&str>,
    set: Option<CompatibilityMode>,
) -> crate::Result<ModeOf> {
    if let Some(m) = set {
        store.set_compatibility(dataset, m.as_str()).await?;
    }
    match dataset {
        Some(d) => {
            let record = store.dataset(d).await?;
            if record.is_none() {
                return Err(unknown_dataset(store, d).await);
            }
            let own = record.and_then(|r| r.compatibility);
            Ok(ModeOf {
                mode: store.compatibility(d).await?,
                is_default: own.is_none(),
            })
        }
        None => Ok(ModeOf {
            mode: default_mode(store).await?,
            is_default: true,
        }),
    }
}

/// What [`migrate`] did to a table: `from -> to` as `DATASET@N -> DATASET@M`, the table,
/// and the engine's report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Migration {
    pub label: String,
    /// The table's URL.
    pub url: String,
    pub report: sluice_engine::migrate::MigrateReport,
}

/// `sluice schema migrate`: rewrites the Delta table at `table` (relative to `base`) from one
/// registered version of a dataset to another, in pieces; `progress` hears of each file.
pub async fn migrate(
    store: &Arc<dyn Store>,
    (from, to): (&str, &str),
    table: &str,
    base: &std::path::Path,
    options: sluice_engine::migrate::MigrateOptions,
    progress: impl FnMut(sluice_engine::migrate::Progress),
) -> crate::Result<Migration> {
    let (a_record, a) = resolve(store, from).await?;
    let (b_record, b) = resolve(store, to).await?;
    if a_record.dataset != b_record.dataset {
        return Err(AppError::User(format!(
            "{from} and {to} are versions of different datasets: migrate rewrites a table from one version of a dataset to another"
        )));
    }
    let url =
        sluice_engine::sink::table_url(table, base).map_err(|e| AppError::User(e.to_string()))?;
    if sluice_engine::sink::DeltaSink::new(url.clone())
        .describe()
        .await
        .map_err(|e| AppError::User(e.to_string()))?
        .is_none()
    {
        return Err(AppError::User(format!(
            "{url} is not a Delta table yet: nothing to migrate"
        )));
    }
    let report = sluice_engine::migrate::migrate_table(
        &url,
        (a_record.version, &a.schema),
        (b_record.version, &b.schema),
        options,
        progress,
    )
    .await
    .map_err(|e| match e {
        sluice_engine::migrate::MigrateError::Delta { .. } => {
            AppError::External(crate::error::chain(&e))
        }
        other => AppError::User(other.to_string()),
    })?;
    let label = format!(
        "{}@{} -> {}@{}",
        a_record.dataset, a_record.version, b_record.dataset, b_record.version
    );
    Ok(Migration {
        label,
        url: url.to_string(),
        report,
    })
}

/// The compatibility mode a dataset's registrations are checked under.
pub async fn dataset_mode(
    store: &Arc<dyn Store>,
    dataset: &str,
) -> Result<CompatibilityMode, RegisterError> {
    let name = store
        .compatibility(dataset)
        .await
        .map_err(|e| RegisterError::Store(e.to_string()))?;
    name.parse::<CompatibilityMode>().map_err(|e| {
        RegisterError::Store(format!(
            "the store's compatibility mode for {dataset} ({e}); set a valid one with `sluice schema mode {dataset} MODE`"
        ))
    })
}

/// Every registered version of a dataset, oldest first.
pub async fn load_history(
    store: &Arc<dyn Store>,
    dataset: &str,
) -> Result<Vec<RegisteredVersion>, RegisterError> {
    let records = store
        .schema_versions(dataset)
        .await
        .map_err(|e| RegisterError::Store(e.to_string()))?;
    records
        .iter()
        .map(|r| {
            RegisteredVersion::from_stored(
                &r.dataset,
                r.version,
                &r.schema_json,
                &r.fingerprint,
                r.last_field_id,
            )
            .map_err(|e| RegisterError::Store(e.to_string()))
        })
        .collect()
}

/// Registers `schema` as the next version of its dataset if it passes the dataset's mode.
pub async fn register_schema(
    store: &Arc<dyn Store>,
    schema: &Schema,
    dry_run: bool,
) -> Result<Registration, RegisterError> {
    let dataset = schema.dataset.clone();
    let mode = dataset_mode(store, &dataset).await?;
    for _ in 0..ATTEMPTS {
        let history = load_history(store, &dataset).await?;
        let candidate = registry::prepare(schema.clone(), history.last())
            .map_err(|e| RegisterError::Invalid(e.to_string()))?;
        let changes = history
            .last()
            .map(|latest| sluice_schema::diff(&latest.schema, &candidate.schema))
            .unwrap_or_default();
        let mut out = Registration {
            dataset: dataset.clone(),
            mode,
            fingerprint: candidate.fingerprint.clone(),
            latest: history.last().map(|v| v.version),
            changes,
            outcome: Outcome::Refused(Vec::new()),
        };
        out.outcome = match registry::decide(&candidate, &history, mode) {
            Decision::Existing { version } => Outcome::Existing(version),
            Decision::Incompatible { violations, .. } => Outcome::Refused(violations),
            Decision::Register { version } if dry_run => Outcome::WouldRegister(version),
            Decision::Register { .. } => {
                let new = NewSchemaVersion {
                    dataset: &dataset,
                    fingerprint: &candidate.fingerprint,
                    schema_json: &candidate.json,
                    last_field_id: i64::from(candidate.last_field_id),
                    based_on: candidate.based_on.map(i64::from),
                };
                match store
                    .register_schema_version(&new)
                    .await
                    .map_err(|e| RegisterError::Store(format!("registering {dataset}: {e}")))?
                {
                    SchemaRegistration::Created(v) => Outcome::Registered(version_u32(v.version)),
                    SchemaRegistration::Existing(v) => Outcome::Existing(version_u32(v.version)),
                    // Someone registered a version since we read the history: decide again.
                    SchemaRegistration::Stale { .. } => continue,
                }
            }
        };
        return Ok(out);
    }
    Err(RegisterError::Contended(dataset))
}

fn version_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// `unknown_columns: evolve`: registers `dataset`'s latest version plus `columns` (nullable)
/// if the dataset's mode allows it.
pub async fn propose_columns(
    store: &Arc<dyn Store>,
    dataset: &str,
    columns: &[(String, String)],
) -> Result<Registration, RegisterError> {
    let history = load_history(store, dataset).await?;
    let latest = history
        .last()
        .ok_or_else(|| RegisterError::Store(format!("{dataset} has no registered version")))?;
    let mut schema = latest.schema.clone();
    for (name, t) in columns {
        if schema.field(name).is_some() {
            continue; // a version registered meanwhile already has it
        }
        let t = t
            .parse::<sluice_schema::FieldType>()
            .map_err(|err| RegisterError::Invalid(err.to_string()))?;
        schema
            .fields
            .push(sluice_schema::schema::Field::new(name.clone(), t));
    }
    register_schema(store, &schema, false).await
}

/// The registry service over a store, as the worker pool calls it.
pub struct StoreRegistry {
    store: Arc<dyn Store>,
}

impl StoreRegistry {
    pub fn new(store: Arc<dyn Store>) -> Arc<StoreRegistry> {
        Arc::new(StoreRegistry { store })
    }
}

#[async_trait]
impl SchemaRegistry for StoreRegistry {
    async fn evolve(
        &self,
        dataset: &str,
        columns: &[(String, String)],
    ) -> Result<Evolution, String> {
        let r = propose_columns(&self.store, dataset, columns)
            .await
            .map_err(|e| e.to_string())?;
        match r.outcome {
            Outcome::Registered(version) | Outcome::Existing(version) => Ok(Evolution::Has {
                version,
                mode: r.mode,
            }),
            Outcome::Refused(violations) => Ok(Evolution::Refused {
                mode: r.mode,
                violations,
            }),
            Outcome::WouldRegister(v) => Err(format!(
                "the registry answered a dry run (version {v}) to a registration"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        assert_eq!(parse_reference("orders").ok(), Some(("orders", None)));
        assert_eq!(parse_reference("orders@3").ok(), Some(("orders", Some(3))));
        assert_eq!(parse_reference("orders@v2").ok(), Some(("orders", Some(2))));
        assert_eq!(parse_reference("a@b@latest").ok(), Some(("a@b", None)));
        assert!(parse_reference("orders@0").is_err());
        assert!(parse_reference("orders@x").is_err());
        assert!(parse_reference("@1").is_err());
    }

    #[test]
    fn version_ranges_read_well() {
        assert_eq!(ranges(&[1, 2, 3]), "versions 1..3");
        assert_eq!(ranges(&[1]), "only version 1");
        assert_eq!(ranges(&[1, 3]), "versions 1, 3");
    }
}
