//! `sluice quarantine show`: what is held back and why.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use sluice_core::TaskState;
use sluice_engine::arrow::array::{Array, AsArray};
use sluice_engine::arrow::compute::cast;
use sluice_engine::arrow::datatypes::DataType;

use super::InputError;
use crate::cli::StoreArg;

#[derive(Debug, Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    pub command: QuarantineCommand,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// Quarantined batches with their reason, and the rows checks held back.
    Show {
        /// Only this pipeline (default: all).
        #[arg(long)]
        pipeline: Option<String>,
        /// Only this batch.
        #[arg(long)]
        batch: Option<String>,
        /// At most this many held rows per pipeline.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
}

/// A row from a quarantine table.
#[derive(Debug, serde::Serialize)]
struct HeldRow {
    batch_id: String,
    version: i64,
    check: String,
    reason: String,
    row: String,
}

pub async fn quarantine(args: QuarantineArgs) -> anyhow::Result<ExitCode> {
    let QuarantineCommand::Show {
        pipeline,
        batch,
        limit,
        store,
        json,
    } = args.command;
    let store = super::open_store(&store.store).await?;
    let mut pipelines = store.pipelines().await?;
    if let Some(p) = &pipeline {
        pipelines.retain(|r| &r.name == p);
        if pipelines.is_empty() {
            return Err(InputError(format!(
                "no pipeline {p:?} in the store: see `sluice status`"
            ))
            .into());
        }
    }
    let mut report = Vec::new();
    for p in &pipelines {
        let mut batches = store.tasks(&p.name, Some(TaskState::Quarantined)).await?;
        if let Some(b) = &batch {
            batches.retain(|t| &t.batch_id.0 == b);
        }
        let rows = held_rows(&store, &p.name, p.current_version, batch.as_deref(), limit).await?;
        report.push((p.name.clone(), batches, rows));
    }
    if json {
        let out: Vec<_> = report
            .iter()
            .map(|(name, batches, rows)| {
                serde_json::json!({ "pipeline": name, "batches": batches, "rows": rows })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (name, batches, rows) in &report {
        println!("{name}: {} quarantined batch(es)", batches.len());
        for t in batches {
            println!(
                "  {}  v{}  {} rows {}..{}\n      {}",
                t.batch_id,
                t.version,
                t.slice.path,
                t.slice.row_start + 1,
                t.slice.row_start + t.slice.row_count,
                t.last_error.as_deref().unwrap_or("")
            );
        }
        if !rows.is_empty() {
            println!("  rows held back by checks (first {}):", rows.len());
            for r in rows {
                println!("    {}  v{}  {}  {}", r.batch_id, r.version, r.check, r.row);
            }
        }
    }
    if report.is_empty() {
        println!("no pipelines in the store yet");
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the pipeline's quarantine table (located through its current version's spec).
async fn held_rows(
    store: &std::sync::Arc<dyn sluice_store::Store>,
    pipeline: &str,
    version: i64,
    batch: Option<&str>,
    limit: usize,
) -> anyhow::Result<Vec<HeldRow>> {
    let Some(v) = store.pipeline_version(pipeline, version).await? else {
        return Ok(vec![]);
    };
    let compiled = sluice_engine::Pipeline::from_stored(&v.spec, &v.base_dir, version).await?;
    let Some(table) = compiled.quarantine_table() else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for b in table.read_all().await? {
        let text = |name: &str| -> anyhow::Result<Vec<String>> {
            let col = b
                .column_by_name(name)
                .ok_or_else(|| anyhow::anyhow!("quarantine table has no column {name:?}"))?;
            let col = cast(col, &DataType::Utf8)?;
            let s = col.as_string::<i32>();
            Ok((0..s.len()).map(|i| s.value(i).to_string()).collect())
        };
        let (ids, versions, checks, reasons, rows) = (
            text("batch_id")?,
            text("version")?,
            text("check")?,
            text("reason")?,
            text("row")?,
        );
        for i in 0..ids.len() {
            if batch.is_some_and(|b| b != ids[i]) {
                continue;
            }
            out.push(HeldRow {
                batch_id: ids[i].clone(),
                version: versions[i].parse().unwrap_or(0),
                check: checks[i].clone(),
                reason: reasons[i].clone(),
                row: rows[i].clone(),
            });
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}
