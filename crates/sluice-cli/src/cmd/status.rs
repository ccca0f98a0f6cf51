//! `sluice status` and `sluice retry`.

use std::process::ExitCode;

use sluice_core::{BatchId, TaskState, now_millis};
use sluice_store::{PipelineStatus, RetryTarget, TaskRecord, WorkerRecord};

use super::InputError;

/// Rows per second over the window from the first start to the last finish of good runs.
pub fn throughput(s: &PipelineStatus) -> Option<f64> {
    let (a, b) = (s.first_started_at?, s.last_finished_at?);
    let secs = ((b - a) as f64 / 1000.0).max(0.001);
    Some(s.rows_in as f64 / secs)
}

/// A worker that says it is running but has not reported for this long has died (killed,
/// machine lost). Workers report between batches, so this is well above a batch's duration.
const LOST_AFTER_MS: i64 = 60_000;

/// The state to show: `lost` for a running worker that stopped reporting.
fn shown_state(w: &WorkerRecord, now: i64) -> &str {
    if w.state == "running" && now - w.last_heartbeat > LOST_AFTER_MS {
        "lost"
    } else {
        &w.state
    }
}

pub async fn status(store_url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let pipelines = store.status().await?;
    let now = now_millis();
    let mut workers = store.workers().await?;
    for w in &mut workers {
        w.state = shown_state(w, now).to_string();
    }
    let mut quarantined: Vec<TaskRecord> = Vec::new();
    for p in &pipelines {
        quarantined.extend(
            store
                .tasks(&p.pipeline, Some(TaskState::Quarantined))
                .await?,
        );
    }
    let mut changed = Vec::new();
    for p in &pipelines {
        for f in store.changed_files(&p.pipeline).await? {
            if let Some(c) = f.change {
                changed.push(ChangedFile {
                    pipeline: p.pipeline.clone(),
                    path: f.path,
                    taken_size: f.size,
                    size: c.size,
                    change: c.detail,
                    action: c.action,
                    noticed_at: c.noticed_at,
                });
            }
        }
    }
    let failed_reason = |name: &str| {
        changed
            .iter()
            .find(|c| c.pipeline == name && c.action == "failed")
            .map(|c| {
                format!(
                    "{} since it was taken in (source.on_change: fail)",
                    c.change
                )
            })
    };
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
    for p in &pipelines {
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
    for p in &pipelines {
        if let Some(reason) = failed_reason(&p.pipeline) {
            println!("\npipeline {} FAILED: {reason}", p.pipeline);
        }
    }
    if !changed.is_empty() {
        println!("\nfiles changed after they were taken in (see source.on_change):");
        for c in &changed {
            let what = if c.action == "failed" {
                "the pipeline failed; the new content was not read"
            } else {
                "the new content was not read"
            };
            println!("  {}  {}\n      {what}", c.pipeline, c.change);
        }
    }
    print_workers(&workers);
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
        for t in &quarantined {
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

/// A file whose change discovery noticed and did not take in, as status shows it.
#[derive(Debug, serde::Serialize)]
struct ChangedFile {
    pipeline: String,
    path: String,
    /// Size when it was taken in.
    taken_size: i64,
    /// Size when the change was noticed.
    size: i64,
    /// What changed (`... grew from 10 to 25 bytes`).
    change: String,
    /// `warned` or `failed`.
    action: String,
    noticed_at: i64,
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
    if let RetryTarget::Batch(id) = &target {
        match store.task(id).await? {
            None => {
                return Err(InputError(format!(
                    "no batch {id} in the store: see `sluice status` for quarantined batch ids"
                ))
                .into());
            }
            Some(t) if t.state != TaskState::Quarantined => {
                return Err(InputError(format!(
                    "batch {id} is {}, not quarantined: only quarantined batches are retried",
                    t.state
                ))
                .into());
            }
            Some(_) => {}
        }
    }
    let n = store.retry(&target).await?;
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
    let store = super::open_store(store_url).await?;
    let mut pipelines = store.pipelines().await?;
    if let Some(b) = &batch {
        let Some(t) = store.task(&BatchId(b.clone())).await? else {
            return Err(InputError(format!(
                "no batch {b} in the store: see `sluice quarantine show` for batches with dropped rows"
            ))
            .into());
        };
        pipelines.retain(|p| p.name == t.pipeline);
    } else if let Some(p) = &pipeline {
        pipelines.retain(|r| &r.name == p);
        if pipelines.is_empty() {
            return Err(InputError(format!(
                "no pipeline {p:?} in the store: see `sluice status`"
            ))
            .into());
        }
    }
    let (mut queued, mut before) = (0u64, 0u64);
    for p in &pipelines {
        let Some(v) = store.pipeline_version(&p.name, p.current_version).await? else {
            continue;
        };
        let compiled =
            sluice_engine::Pipeline::from_stored(&v.spec, &v.base_dir, p.current_version).await?;
        let mut batches = compiled
            .dropped_batches()
            .await
            .map_err(|e| anyhow::anyhow!("reading the quarantine table of {}: {e}", p.name))?;
        if let Some(b) = &batch {
            batches.retain(|d| &d.batch_id == b);
            if batches.is_empty() {
                return Err(InputError(format!(
                    "batch {b} has no dropped rows in the quarantine table: see `sluice quarantine show --batch {b}`"
                ))
                .into());
            }
        }
        for d in batches {
            let (batch_id, slice) = sluice_engine::replay_batch(&p.name, &d.batch_id, d.rows);
            let file = sluice_store::NewFile {
                pipeline: p.name.clone(),
                path: slice.path.clone(),
                size: d.rows as i64,
                modified_ms: now_millis(),
                ..sluice_store::NewFile::default()
            };
            let added = store
                .register_file(
                    &file,
                    p.current_version,
                    compiled.spec.batch.max_attempts,
                    &[sluice_store::NewTask {
                        batch_id: batch_id.clone(),
                        slice,
                    }],
                )
                .await?;
            if added {
                queued += 1;
                println!(
                    "{}: {} row(s) dropped from {} ({}) queued as batch {batch_id} under v{}",
                    p.name, d.rows, d.batch_id, d.file, p.current_version
                );
            } else {
                before += 1;
            }
        }
    }
    if before > 0 {
        println!("{before} batch(es) had their dropped rows queued before: each is replayed once");
    }
    println!(
        "{queued} replay batch(es) queued; a running `sluice run` or `sluice worker` picks them up"
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(state: &str, last_heartbeat: i64) -> WorkerRecord {
        WorkerRecord {
            worker: sluice_core::WorkerId("h/1/0".into()),
            host: "h".into(),
            pid: 1,
            state: state.into(),
            started_at: 0,
            last_heartbeat,
        }
    }

    #[test]
    fn silent_running_workers_show_as_lost() {
        assert_eq!(shown_state(&worker("running", 1_000), 2_000), "running");
        assert_eq!(
            shown_state(&worker("running", 1_000), 1_000 + LOST_AFTER_MS + 1),
            "lost"
        );
        assert_eq!(
            shown_state(&worker("stopped", 0), 10 * LOST_AFTER_MS),
            "stopped"
        );
    }

    #[test]
    fn throughput_needs_a_window() {
        let mut s = PipelineStatus {
            rows_in: 10_000,
            ..Default::default()
        };
        assert_eq!(throughput(&s), None);
        s.first_started_at = Some(0);
        s.last_finished_at = Some(2_000);
        assert_eq!(throughput(&s), Some(5_000.0));
    }
}
