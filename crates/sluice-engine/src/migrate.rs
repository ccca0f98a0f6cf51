//! `sluice schema migrate`: rewrites a Delta table written under one schema version into
//! another, for the changes Delta cannot make in place (a type widening, a rename, a drop).
//!
//! # How it stays safe
//!
//! * **Atomic.** Every data file of the table (at the version the run starts from) is read,
//!   converted with the registry's record conversion (renames by field id, defaults, widening;
//!   a value that would be lost stops the run with row, field and reason) and written as new
//!   files that nothing references yet. One Delta commit then swaps them in: it removes every
//!   old file, adds every new one and sets the new schema. Readers see the old table or the new
//!   one, never a mix; earlier versions stay readable by time travel until vacuumed.
//! * **Resumable.** After each source file, the new files' add actions are saved in a
//!   checkpoint under `_sluice_migrate/` in the table folder (ignored by Delta readers, written
//!   by rename so it is never half-written). A run killed half-way starts again where it
//!   stopped: files already converted are not converted again.
//! * **Once.** The commit carries the application transaction
//!   `sluice-migrate/<dataset>/<from>-<to>`; a run finding it reports the migration as done.
//! * **No silent loss.** A table column neither version knows is refused up front (the
//!   rewrite would drop it), except a plan's own `<field>__new` helper columns. If the table changes while the run converts (a pipeline still
//!   appending), the commit is refused by Delta's conflict check; run again: converted files
//!   are reused and only the new ones are converted.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, MetadataExt as _, StructType, Transaction};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};
use sluice_schema::Schema;
use url::Url;

/// How to run a migration.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions {
    /// Convert every row (so a value that cannot be carried over is found) but write and
    /// commit nothing.
    pub dry_run: bool,
    /// Convert at most this many files in this run, then stop without committing: a big table
    /// can be migrated in pieces (each run resumes where the last stopped).
    pub max_files: Option<usize>,
}

/// Where a migration is, for a progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub files_done: usize,
    pub files_total: usize,
    pub rows_done: u64,
}

/// What a migration did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MigrateReport {
    /// The table version the data was read from.
    pub source_version: i64,
    /// The table version that holds the migrated data; `None` for a dry run.
    pub committed_version: Option<i64>,
    pub files_read: usize,
    /// Files converted by an earlier, interrupted run and reused.
    pub files_resumed: usize,
    pub files_written: usize,
    pub rows: u64,
    /// The migration had already been committed (nothing was done).
    pub already_done: bool,
    /// Files still to convert when the run stopped at `max_files`.
    pub files_remaining: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("Delta table {url}: {source}")]
    Delta {
        url: String,
        #[source]
        source: DeltaTableError,
    },
    #[error("{0}")]
    Refused(String),
    #[error("{file}: {reason}")]
    Data { file: String, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
}

/// The saved progress of a migration: new files per source file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    app_id: String,
    converted: BTreeMap<String, Vec<Add>>,
    rows: BTreeMap<String, u64>,
}

/// Rows converted and written at a time.
const CHUNK_ROWS: usize = 65_536;

/// The application transaction that marks a migration as committed.
pub fn app_id(dataset: &str, from: i64, to: i64) -> String {
    format!("sluice-migrate/{dataset}/{from}-{to}")
}

/// Rewrites the table at `url` from `from` to `to` (version number and schema each).
pub async fn migrate_table(
    url: &Url,
    from: (i64, &Schema),
    to: (i64, &Schema),
    options: MigrateOptions,
    mut progress: impl FnMut(Progress),
) -> Result<MigrateReport, MigrateError> {
    let dry_run = options.dry_run;
    let delta = |source: DeltaTableError| MigrateError::Delta {
        url: url.to_string(),
        source,
    };
    let table = deltalake::open_table(url.clone()).await.map_err(delta)?;
    let source_version = table.version().unwrap_or(0) as i64;
    let dataset = &to.1.dataset;
    let app_id = app_id(dataset, from.0, to.0);
    let snapshot = table.snapshot().map_err(delta)?;
    let mut report = MigrateReport {
        source_version,
        committed_version: None,
        files_read: 0,
        files_resumed: 0,
        files_written: 0,
        rows: 0,
        already_done: false,
        files_remaining: 0,
    };
    if snapshot
        .transaction_version(table.log_store().as_ref(), &app_id)
        .await
        .map_err(delta)?
        .is_some()
    {
        report.already_done = true;
        return Ok(report);
    }
    refuse_unknown_columns(&table, from, to.1, url)?;

    let files: Vec<(String, deltalake::kernel::Remove)> = snapshot
        .log_data()
        .into_iter()
        .map(|f| (f.object_store_path().to_string(), f.remove_action(true)))
        .collect();
    let checkpoint_path = checkpoint_path(url, &app_id)?;
    let mut checkpoint = if dry_run {
        Checkpoint::default()
    } else {
        load_checkpoint(&checkpoint_path, &app_id)?
    };
    let target = crate::sink::delta_schema(&Arc::new(to.1.to_arrow()));
    let store = table.log_store().object_store(None);
    let mut state = Progress {
        files_done: 0,
        files_total: files.len(),
        rows_done: 0,
    };
    progress(state);
    let mut converted_now = 0usize;
    for (path, _) in &files {
        if !checkpoint.converted.contains_key(path)
            && options.max_files.is_some_and(|m| converted_now >= m)
        {
            report.files_remaining += 1;
            continue;
        }
        report.files_read += 1;
        if let Some(adds) = checkpoint.converted.get(path) {
            report.files_resumed += 1;
            report.files_written += adds.len();
            let rows = checkpoint.rows.get(path).copied().unwrap_or(0);
            report.rows += rows;
            state.rows_done += rows;
            state.files_done += 1;
            progress(state);
            continue;
        }
        let data = |reason: String| MigrateError::Data {
            file: path.clone(),
            reason,
        };
        let bytes = store
            .get(&deltalake::Path::from(path.as_str()))
            .await
            .map_err(|e| data(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| data(e.to_string()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| data(format!("not a readable Parquet file: {e}")))?
            .with_batch_size(CHUNK_ROWS)
            .build()
            .map_err(|e| data(e.to_string()))?;
        let mut writer = if dry_run {
            None
        } else {
            Some(
                RecordBatchWriter::try_new(url.as_str(), target.clone(), None, None)
                    .map_err(delta)?,
            )
        };
        let mut rows = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| data(e.to_string()))?;
            let converted = convert(&batch, from, to, rows).map_err(data)?;
            rows += batch.num_rows() as u64;
            if let Some(w) = writer.as_mut() {
                w.write(converted).await.map_err(delta)?;
            }
            state.rows_done += batch.num_rows() as u64;
            progress(state);
        }
        report.rows += rows;
        if let Some(mut w) = writer {
            let adds = w.flush().await.map_err(delta)?;
            report.files_written += adds.len();
            checkpoint.converted.insert(path.clone(), adds);
            checkpoint.rows.insert(path.clone(), rows);
            save_checkpoint(&checkpoint_path, &checkpoint)?;
        }
        converted_now += 1;
        state.files_done += 1;
        progress(state);
    }
    if dry_run || report.files_remaining > 0 {
        return Ok(report);
    }

    let schema: StructType = target.as_ref().try_into_kernel().map_err(|e| {
        delta(DeltaTableError::Generic(format!(
            "the new schema has no Delta equivalent: {e}"
        )))
    })?;
    let metadata = snapshot
        .metadata()
        .clone()
        .with_schema(&schema)
        .map_err(|e| delta(DeltaTableError::Generic(e.to_string())))?;
    let mut actions = vec![Action::Metadata(metadata)];
    actions.extend(files.iter().map(|(_, r)| Action::Remove(r.clone())));
    for (path, _) in &files {
        for add in checkpoint.converted.get(path).into_iter().flatten() {
            actions.push(Action::Add(add.clone()));
        }
    }
    let props = CommitProperties::default().with_application_transaction(
        Transaction::new_with_last_update(&app_id, 1, Some(sluice_core::now_millis())),
    );
    let commit = CommitBuilder::from(props)
        .with_actions(actions)
        .build(
            Some(snapshot),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Overwrite,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .map_err(|e| {
            MigrateError::Refused(format!(
                "the rewrite of {url} could not be committed: {e}. If a pipeline is still writing to the table, stop it (or let it drain) and run the migration again: the {} converted file(s) are kept and reused",
                report.files_read
            ))
        })?;
    report.committed_version = Some(commit.version() as i64);
    let _ = std::fs::remove_file(&checkpoint_path);
    Ok(report)
}

/// Converts a chunk, naming the table row of a value that cannot be carried over.
fn convert(
    batch: &RecordBatch,
    from: (i64, &Schema),
    to: (i64, &Schema),
    offset: u64,
) -> Result<RecordBatch, String> {
    let converted = sluice_schema::convert::convert_batch(batch, from.1, to.1).map_err(|e| {
        let at = e
            .row()
            .map(|r| format!(" (row {} of the file)", offset + r as u64 + 1))
            .unwrap_or_default();
        format!(
            "converting from {ds}@{} to {ds}@{}{at}: {e}",
            from.0,
            to.0,
            ds = to.1.dataset
        )
    })?;
    crate::sink::delta_compatible(&converted)
}

/// A table column that neither version has would be dropped by the rewrite: refuse.
fn refuse_unknown_columns(
    table: &DeltaTable,
    (from_version, from): (i64, &Schema),
    to: &Schema,
    url: &Url,
) -> Result<(), MigrateError> {
    let Ok(snapshot) = table.snapshot() else {
        return Ok(());
    };
    let current = snapshot.snapshot().arrow_schema();
    let unknown: Vec<String> = current
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| from.field(n).is_none() && to.field(n).is_none())
        // A migration plan's own helper column (`amount__new`, added and backfilled in
        // place before the swap Delta cannot do in place) is superseded by the rewrite.
        .filter(|n| {
            !n.strip_suffix("__new")
                .is_some_and(|base| from.field(base).is_some() || to.field(base).is_some())
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(MigrateError::Refused(format!(
        "{url} has column(s) {} that neither {ds}@{} nor the target version declares: the rewrite would drop them. Register a version that declares them first",
        unknown.join(", "),
        from_version,
        ds = from.dataset
    )))
}

fn checkpoint_path(url: &Url, app_id: &str) -> Result<std::path::PathBuf, MigrateError> {
    let root = url.to_file_path().map_err(|_| MigrateError::Checkpoint {
        path: url.to_string(),
        reason: "migrations keep their checkpoint beside a local table; this is not a local path"
            .into(),
    })?;
    let name: String = app_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(root.join("_sluice_migrate").join(format!("{name}.json")))
}

fn load_checkpoint(path: &std::path::Path, app_id: &str) -> Result<Checkpoint, MigrateError> {
    let bad = |reason: String| MigrateError::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let c: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
                bad(format!(
                    "cannot be read ({e}); delete it to start the migration over"
                ))
            })?;
            if c.app_id != app_id {
                return Err(bad(format!("belongs to {}, not {app_id}", c.app_id)));
            }
            Ok(c)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint {
            app_id: app_id.to_string(),
            ..Default::default()
        }),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn save_checkpoint(path: &std::path::Path, c: &Checkpoint) -> Result<(), MigrateError> {
    let bad = |reason: String| MigrateError::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec(c).map_err(|e| bad(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| bad(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| bad(e.to_string()))
}
