//! Pipelines that name registered datasets: `source.dataset` gives the input columns,
//! `sink.dataset` is the contract the output must keep under the dataset's compatibility mode.
//! Both are resolved against the store when a pipeline version is compiled from a file, and
//! pinned (`name@version`) in the stored spec, so a version always reads what it was built for.

use std::sync::Arc;

use indexmap::IndexMap;
use sluice_engine::spec::SpecFile;
use sluice_schema::compat::{CompatibilityMode, check_compatibility};
use sluice_schema::registry::RegisteredVersion;
use sluice_store::{SchemaVersionRecord, Store};

use crate::error::{AppError, Result};

/// `orders` -> (orders, None); `orders@3` -> (orders, Some(3)).
fn parse_ref(file: &SpecFile, key: &[&str], text: &str) -> Result<(String, Option<i64>)> {
    match text.split_once('@') {
        None => Ok((text.to_string(), None)),
        Some((name, v)) => v
            .parse::<i64>()
            .ok()
            .filter(|v| *v > 0)
            .map(|v| (name.to_string(), Some(v)))
            .ok_or_else(|| {
                AppError::User(
                    file.error_at(key, format!("{text:?} is not DATASET or DATASET@VERSION"))
                        .to_string(),
                )
            }),
    }
}

fn decode(rec: &SchemaVersionRecord) -> Result<RegisteredVersion> {
    RegisteredVersion::from_stored(
        &rec.dataset,
        rec.version,
        &rec.schema_json,
        &rec.fingerprint,
        rec.last_field_id,
    )
    .map_err(|e| AppError::Internal(e.to_string()))
}

async fn fetch(
    store: &Arc<dyn Store>,
    file: &SpecFile,
    key: &[&str],
    name: &str,
    version: Option<i64>,
) -> Result<SchemaVersionRecord> {
    match store.schema_version(name, version).await? {
        Some(rec) => Ok(rec),
        None => {
            let known: Vec<String> = store
                .schema_versions(name)
                .await?
                .iter()
                .map(|r| format!("{name}@{}", r.version))
                .collect();
            let what = match version {
                Some(v) => format!("{name}@{v}"),
                None => name.to_string(),
            };
            Err(AppError::User(
                file.error_at(
                    key,
                    format!(
                        "dataset {what} is not registered ({}): register it with `sluice schema register FILE`",
                        if known.is_empty() { "no versions".to_string() } else { format!("registered: {}", known.join(", ")) }
                    ),
                )
                .to_string(),
            ))
        }
    }
}

/// Copies the source dataset's columns into the spec and pins the version.
pub async fn resolve_source(file: &mut SpecFile, store: &Arc<dyn Store>) -> Result<()> {
    let Some(text) = file.spec.source.dataset.clone() else {
        return Ok(());
    };
    let key = ["source", "dataset"];
    if file.spec.source.columns.is_some() {
        return Err(AppError::User(
            file.error_at(
                &key,
                "declare either `columns` or `dataset`, not both".into(),
            )
            .to_string(),
        ));
    }
    let (name, version) = parse_ref(file, &key, &text)?;
    let rec = fetch(store, file, &key, &name, version).await?;
    let schema = decode(&rec)?.schema;
    let columns: IndexMap<String, String> = schema
        .fields
        .iter()
        .map(|f| (f.name.clone(), f.field_type.to_string()))
        .collect();
    file.spec.source.required = schema
        .fields
        .iter()
        .filter(|f| !f.nullable)
        .map(|f| f.name.clone())
        .collect();
    file.spec.source.columns = Some(columns);
    file.spec.source.dataset = Some(format!("{name}@{}", rec.version));
    // Every version up to the pinned one travels with the pipeline version, so files written
    // under an older one are read with its columns and upgraded (sluice_engine::upgrade).
    let mut history = store.schema_versions(&name).await?;
    history.retain(|r| r.version <= rec.version);
    history.sort_by_key(|r| r.version);
    file.spec.source.versions = history
        .iter()
        .map(|r| {
            Ok(sluice_engine::spec::SourceVersion {
                version: r.version,
                schema: decode(r)?.schema,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(())
}

/// Refuses a pipeline whose output breaks the sink dataset's compatibility mode; pins the
/// dataset version it was checked against.
pub async fn check_sink(
    file: &SpecFile,
    pipeline: &mut sluice_engine::Pipeline,
    store: &Arc<dyn Store>,
) -> Result<()> {
    let Some(text) = pipeline.spec.sink.dataset.clone() else {
        return Ok(());
    };
    let key = ["sink", "dataset"];
    let (name, version) = parse_ref(file, &key, &text)?;
    let latest = fetch(store, file, &key, &name, version).await?;
    let mut history = Vec::new();
    for rec in store.schema_versions(&name).await? {
        if rec.version <= latest.version {
            history.push(decode(&rec)?.schema);
        }
    }
    let mode_name = store.compatibility(&name).await?;
    let mode: CompatibilityMode = mode_name
        .parse()
        .map_err(|e| AppError::Internal(format!("dataset {name} has mode {mode_name:?}: {e}")))?;
    let output = sluice_engine::sink::delta_schema(&pipeline.output_schema());
    let new = sluice_schema::Schema::from_arrow(&name, output.as_ref())
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let violations = check_compatibility(mode, &new, &history);
    if !violations.is_empty() {
        let list = violations
            .iter()
            .map(|v| format!("  - {v}"))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(AppError::User(
            file.error_at(
                &key,
                format!(
                    "the transform's output breaks dataset {name}@{} under {mode_name}:\n{list}\nfix the SQL, or register a new version of {name} the mode allows",
                    latest.version
                ),
            )
            .to_string(),
        ));
    }
    pipeline.spec.sink.dataset = Some(format!("{name}@{}", latest.version));
    Ok(())
}
