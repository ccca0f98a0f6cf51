//! `sluice quarantine show`: what is held back and why (arguments and rendering; the query is
//! `sluice_app::status::held`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use sluice_app::status::Held;

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

use sluice_engine::checks::QuarantinedRow as HeldRow;

pub async fn quarantine(args: QuarantineArgs) -> anyhow::Result<ExitCode> {
    let QuarantineCommand::Show {
        pipeline,
        batch,
        limit,
        store,
        json,
    } = args.command;
    let store = super::open_store(&store.store).await?;
    let report =
        sluice_app::status::held(&store, pipeline.as_deref(), batch.as_deref(), limit).await?;
    if json {
        let out: Vec<_> = report
            .iter()
            .map(|h| serde_json::json!({ "pipeline": h.pipeline, "batches": h.batches, "rows": h.rows }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    for Held {
        pipeline: name,
        batches,
        rows,
    } in &report
    {
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
        let (bad, held): (Vec<&HeldRow>, Vec<&HeldRow>) = rows
            .iter()
            .partition(|r| r.check == sluice_engine::checks::BAD_ROWS);
        if !held.is_empty() {
            println!("  rows held back by checks (first {}):", held.len());
            for r in held {
                println!("    {}  v{}  {}  {}", r.batch_id, r.version, r.check, r.row);
            }
        }
        if !bad.is_empty() {
            println!(
                "  rows dropped as bad input (first {}; replay with `sluice retry --dropped BATCH|--all`):",
                bad.len()
            );
            for r in bad {
                println!(
                    "    {}  v{}  {}:{}{}  {}\n        {}",
                    r.batch_id,
                    r.version,
                    r.file.as_deref().unwrap_or("?"),
                    r.line.unwrap_or(0),
                    r.column
                        .as_deref()
                        .map(|c| format!(" column {c:?}"))
                        .unwrap_or_default(),
                    r.reason,
                    r.row
                );
            }
        }
    }
    if report.is_empty() {
        println!("no pipelines in the store yet");
    }
    Ok(ExitCode::SUCCESS)
}
