//! `sluice status` and `sluice retry`: arguments and rendering; the queries are
//! `sluice_app::status`'s.

use std::process::ExitCode;

use sluice_app::status::{self as app, DroppedReplays, DroppedScope, Overview, throughput};
use sluice_core::{BatchId, now_millis};
use sluice_store::{RetryTarget, WorkerRecord};

use super::InputError;

pub async fn status(store_url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let overview = app::overview(&store).await?;
    let failed_reason = |name: &str| overview.failed_reason(name);
    let Overview {
        pipelines,
        workers,
        quarantined,
        changed_files: changed,
        deployments,
        leader,
    } = &overview;
    if json {
        let out = serde_json::json!({
            "pipelines": pipelines.iter().map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                v["rows_per_second"] = serde_json::json!(throughput(p));
                v["failed"] = serde_json::json!(failed_reason(&p.pipeline));
                v
            }).collect::<Vec<_>>(),
            "workers": workers,
            "quarantined": quarantined,
            "changed_files": changed,
            "deployments": deployments,
            "leader": leader,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if pipelines.is_empty() {
        println!(
            "no pipelines in {} yet: start one with `sluice run PIPELINE.yaml`",
            super::redact(store_url)
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:>4} {:>6} {:>8} {:>7} {:>8} {:>11} {:>10} {:>10} {:>8} {:>10}",
        "PIPELINE",
        "VER",
        "FILES",
        "PENDING",
        "LEASED",
        "DONE",
        "QUARANTINED",
        "ROWS IN",
        "ROWS OUT",
        "DROPPED",
        "ROWS/S"
    );
    for p in pipelines {
        println!(
            "{:<20} {:>4} {:>6} {:>8} {:>7} {:>8} {:>11} {:>10} {:>10} {:>8} {:>10}",
            p.pipeline,
            p.current_version,
            p.files,
            p.pending,
            p.leased,
            p.done,
            p.quarantined,
            p.rows_in,
            p.rows_out,
            p.dropped_rows,
            throughput(p)
                .map(|t| format!("{t:.0}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    for p in pipelines {
        if let Some(reason) = failed_reason(&p.pipeline) {
            println!("\npipeline {} FAILED: {reason}", p.pipeline);
        }
    }
    if !changed.is_empty() {
        println!("\nfiles changed after they were taken in (see source.on_change):");
        for c in changed {
            let what = if c.action == "failed" {
                "the pipeline failed; the new content was not read"
            } else {
                "the new content was not read"
            };
            println!("  {}  {}\n      {what}", c.pipeline, c.change);
        }
    }
    if !deployments.is_empty() {
        println!("\ndeployments in progress (`sluice deploy status PIPELINE`):");
        for d in deployments {
            println!(
                "  {}  #{} v{} -> v{} by {}: {}, {}% to v{}{}",
                d.pipeline,
                d.id,
                d.stable_version,
                d.candidate_version,
                d.strategy,
                d.state,
                d.route.weight,
                d.candidate_version,
                d.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
    }
    match leader {
        Some(l) => println!(
            "\nleader duties (discovery, deployments): {} (epoch {})",
            l.holder, l.epoch
        ),
        None if !deployments.is_empty() => println!(
            "\nno process holds the leader duties: deployments move while `sluice run` or `sluice worker` runs"
        ),
        None => {}
    }
    print_workers(workers);
    let dropped: i64 = pipelines.iter().map(|p| p.dropped_rows).sum();
    if dropped > 0 {
        println!(
            "\n{dropped} row(s) dropped as bad input are in the quarantine tables: see them with `sluice quarantine show`, replay them after a fix with `sluice retry --dropped --all`"
        );
    }
    if !quarantined.is_empty() {
        println!(
            "\nquarantined batches (replay with `sluice retry BATCH` or `sluice retry --all`):"
        );
        for t in quarantined {
            println!(
                "  {}  {}@{}  {} rows {}..{}  attempts {}\n      {}",
                t.batch_id,
                t.pipeline,
                t.version,
                t.slice.path,
                t.slice.row_start + 1,
                t.slice.row_start + t.slice.row_count,
                t.attempts,
                t.last_error.as_deref().unwrap_or("(no error recorded)")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_workers(workers: &[WorkerRecord]) {
    if workers.is_empty() {
        return;
    }
    let now = now_millis();
    println!("\nworkers:");
    for w in workers {
        // The state goes last: a waiting worker's says what it waits for, at some length.
        println!(
            "  {:<40} last heartbeat {:>4}s ago  {}",
            w.worker.0,
            ((now - w.last_heartbeat).max(0)) / 1000,
            w.state
        );
    }
}

pub async fn retry(
    store_url: &str,
    batch: Option<String>,
    all: bool,
    pipeline: Option<String>,
) -> anyhow::Result<ExitCode> {
    let target = match (batch, all) {
        (Some(b), false) => RetryTarget::Batch(BatchId(b)),
        (None, true) => RetryTarget::All { pipeline },
        _ => {
            return Err(InputError(
                "say which batches to retry: a batch id, or --all (see `sluice status`)".into(),
            )
            .into());
        }
    };
    let store = super::open_store(store_url).await?;
    let n = app::retry(&store, &target).await?;
    println!("{n} batch(es) queued again; a running `sluice run` or `sluice worker` picks them up");
    Ok(ExitCode::SUCCESS)
}

/// `sluice retry --dropped`: queues, for each batch with dropped rows, one replay batch pinned
/// to the pipeline's current version. The store takes each replay in once (by its
/// `sluice-dropped://BATCH` source), so asking again queues nothing.
pub async fn retry_dropped(
    store_url: &str,
    batch: Option<String>,
    all: bool,
    pipeline: Option<String>,
) -> anyhow::Result<ExitCode> {
    if batch.is_none() && !all {
        return Err(InputError(
            "say whose dropped rows to replay: a batch id, or --all (see `sluice quarantine show`)"
                .into(),
        )
        .into());
    }
    let scope = match batch {
        Some(b) => DroppedScope::Batch(b),
        None => DroppedScope::All { pipeline },
    };
    let store = super::open_store(store_url).await?;
    let DroppedReplays { queued, before } = app::retry_dropped(&store, &scope).await?;
    for r in &queued {
        println!(
            "{}: {} row(s) dropped from {} ({}) queued as batch {} under v{}",
            r.pipeline, r.rows, r.from_batch, r.file, r.batch_id, r.version
        );
    }
    let queued = queued.len();
    if before > 0 {
        println!("{before} batch(es) had their dropped rows queued before: each is replayed once");
    }
    println!(
        "{queued} replay batch(es) queued; a running `sluice run` or `sluice worker` picks them up"
    );
    Ok(ExitCode::SUCCESS)
}
