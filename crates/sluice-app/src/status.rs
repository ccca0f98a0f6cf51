//! What is in the store, what is held back, and putting held work back: `sluice status`,
//! `sluice quarantine show`, `sluice retry`.

use std::sync::Arc;

use sluice_core::{BatchId, TaskState, now_millis};
use sluice_engine::checks::QuarantinedRow;
use sluice_store::{
    DeploymentRecord, LeaderRecord, PipelineStatus, RetryTarget, Store, TaskRecord, WorkerRecord,
};

use crate::error::{AppError, Result};

/// Rows per second over the window from the first start to the last finish of good runs.
pub fn throughput(s: &PipelineStatus) -> Option<f64> {
    let (a, b) = (s.first_started_at?, s.last_finished_at?);
    let secs = ((b - a) as f64 / 1000.0).max(0.001);
    Some(s.rows_in as f64 / secs)
}

/// A worker that says it is running but has not reported for this long has died (killed,
/// machine lost). Workers report between batches, so this is well above a batch's duration.
pub const LOST_AFTER_MS: i64 = 60_000;

/// The state to show: `lost` for a running worker that stopped reporting.
pub fn shown_state(w: &WorkerRecord, now: i64) -> &str {
    if w.state == "running" && now - w.last_heartbeat > LOST_AFTER_MS {
        "lost"
    } else {
        &w.state
    }
}

/// Every pipeline's queue, the workers (a silent running one as `lost`), the quarantined
/// batches and the files that changed after they were taken in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overview {
    pub pipelines: Vec<PipelineStatus>,
    pub workers: Vec<WorkerRecord>,
    pub quarantined: Vec<TaskRecord>,
    pub changed_files: Vec<ChangedFile>,
    /// Deployments in progress.
    pub deployments: Vec<DeploymentRecord>,
    /// Who holds the leader duties (discovery, deployments), if anyone does now.
    pub leader: Option<LeaderRecord>,
}

impl Overview {
    /// Why `pipeline` is failed (`source.on_change: fail` and a file changed), if it is.
    pub fn failed_reason(&self, pipeline: &str) -> Option<String> {
        self.changed_files
            .iter()
            .find(|c| c.pipeline == pipeline && c.action == "failed")
            .map(|c| {
                format!(
                    "{} since it was taken in (source.on_change: fail)",
                    c.change
                )
            })
    }
}

/// A file whose change discovery noticed and did not take in, as status shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangedFile {
    pub pipeline: String,
    pub path: String,
    /// Size when it was taken in.
    pub taken_size: i64,
    /// Size when the change was noticed.
    pub size: i64,
    /// What changed (`... grew from 10 to 25 bytes`).
    pub change: String,
    /// `warned` or `failed`.
    pub action: String,
    pub noticed_at: i64,
}

pub async fn overview(store: &Arc<dyn Store>) -> Result<Overview> {
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
    let mut changed_files = Vec::new();
    for p in &pipelines {
        for f in store.changed_files(&p.pipeline).await? {
            if let Some(c) = f.change {
                changed_files.push(ChangedFile {
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
    let deployments = store.active_deployments().await?;
    let clock = store.now().await?;
    let leader = store
        .leader(sluice_deploy::DUTY)
        .await?
        .filter(|l| l.expires_at > clock);
    Ok(Overview {
        pipelines,
        workers,
        quarantined,
        changed_files,
        deployments,
        leader,
    })
}

/// Queues quarantined batches again; a batch named on its own must be quarantined. Returns
/// how many were queued.
pub async fn retry(store: &Arc<dyn Store>, target: &RetryTarget) -> Result<u64> {
    if let RetryTarget::Batch(id) = target {
        match store.task(id).await? {
            None => {
                return Err(AppError::NotFound(format!(
                    "no batch {id} in the store: see `sluice status` for quarantined batch ids"
                )));
            }
            Some(t) if t.state != TaskState::Quarantined => {
                return Err(AppError::User(format!(
                    "batch {id} is {}, not quarantined: only quarantined batches are retried",
                    t.state
                )));
            }
            Some(_) => {}
        }
    }
    Ok(store.retry(target).await?)
}

/// What [`retry_pipeline`] queued: quarantined batches again, or replays of dropped rows.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Retried {
    /// Quarantined batches queued again.
    pub queued: u64,
    /// Replay batches of dropped rows queued, and how many had been queued before.
    pub replays: Vec<Replay>,
    pub replayed_before: u64,
}

/// `sluice retry` for one pipeline: its quarantined batches (all, or `batch`, which must be
/// the pipeline's), or with `dropped` the replays of their dropped rows.
pub async fn retry_pipeline(
    store: &Arc<dyn Store>,
    pipeline: &str,
    batch: Option<&str>,
    dropped: bool,
) -> Result<Retried> {
    if store.pipeline(pipeline).await?.is_none() {
        return Err(AppError::NotFound(format!(
            "no pipeline {pipeline:?} in the store: see `sluice status`"
        )));
    }
    if let Some(b) = batch
        && store
            .task(&BatchId(b.to_string()))
            .await?
            .is_none_or(|t| t.pipeline != pipeline)
    {
        return Err(AppError::NotFound(format!(
            "pipeline {pipeline} has no batch {b}: its quarantined batches are in `sluice quarantine show --pipeline {pipeline}`"
        )));
    }
    if dropped {
        let scope = match batch {
            Some(b) => DroppedScope::Batch(b.to_string()),
            None => DroppedScope::All {
                pipeline: Some(pipeline.to_string()),
            },
        };
        let replays = retry_dropped(store, &scope).await?;
        return Ok(Retried {
            queued: 0,
            replays: replays.queued,
            replayed_before: replays.before,
        });
    }
    let target = match batch {
        Some(b) => RetryTarget::Batch(BatchId(b.to_string())),
        None => RetryTarget::All {
            pipeline: Some(pipeline.to_string()),
        },
    };
    Ok(Retried {
        queued: retry(store, &target).await?,
        ..Retried::default()
    })
}

/// Whether the store answers and holds this version's tables (`/ready`): a read of the
/// store clock and one of the newest tables.
pub async fn ready(store: &Arc<dyn Store>) -> Result<()> {
    store.now().await?;
    store.superseded_files(&BatchId(String::new())).await?;
    Ok(())
}

/// Whose dropped rows [`retry_dropped`] replays.
#[derive(Debug, Clone)]
pub enum DroppedScope {
    Batch(String),
    /// Every batch with dropped rows (of one pipeline, or of all).
    All {
        pipeline: Option<String>,
    },
}

/// One replay batch [`retry_dropped`] queued.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replay {
    pub pipeline: String,
    pub rows: u64,
    /// The batch whose rows were dropped, and its file.
    pub from_batch: String,
    pub file: String,
    /// The replay batch, pinned to `version`.
    pub batch_id: BatchId,
    pub version: i64,
}

/// What [`retry_dropped`] did: the replays queued, and how many had been queued before.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DroppedReplays {
    pub queued: Vec<Replay>,
    pub before: u64,
}

/// `sluice retry --dropped`: queues, for each batch with dropped rows, one replay batch pinned
/// to the pipeline's current version. The store takes each replay in once (by its
/// `sluice-dropped://BATCH` source), so asking again queues nothing.
pub async fn retry_dropped(store: &Arc<dyn Store>, scope: &DroppedScope) -> Result<DroppedReplays> {
    let mut pipelines = store.pipelines().await?;
    let batch = match scope {
        DroppedScope::Batch(b) => {
            let Some(t) = store.task(&BatchId(b.clone())).await? else {
                return Err(AppError::NotFound(format!(
                    "no batch {b} in the store: see `sluice quarantine show` for batches with dropped rows"
                )));
            };
            pipelines.retain(|p| p.name == t.pipeline);
            Some(b)
        }
        DroppedScope::All { pipeline: Some(p) } => {
            pipelines.retain(|r| &r.name == p);
            if pipelines.is_empty() {
                return Err(AppError::NotFound(format!(
                    "no pipeline {p:?} in the store: see `sluice status`"
                )));
            }
            None
        }
        DroppedScope::All { pipeline: None } => None,
    };
    let mut out = DroppedReplays::default();
    for p in &pipelines {
        let Some(v) = store.pipeline_version(&p.name, p.current_version).await? else {
            continue;
        };
        let compiled =
            sluice_engine::Pipeline::from_stored(&v.spec, &v.base_dir, p.current_version)
                .await
                .map_err(|e| AppError::Internal(e.to_string()))?;
        let mut batches = compiled.dropped_batches().await.map_err(|e| {
            AppError::External(format!("reading the quarantine table of {}: {e}", p.name))
        })?;
        if let Some(b) = batch {
            batches.retain(|d| &d.batch_id == b);
            if batches.is_empty() {
                return Err(AppError::User(format!(
                    "batch {b} has no dropped rows in the quarantine table: see `sluice quarantine show --batch {b}`"
                )));
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
                out.queued.push(Replay {
                    pipeline: p.name.clone(),
                    rows: d.rows,
                    from_batch: d.batch_id.clone(),
                    file: d.file.clone(),
                    batch_id,
                    version: p.current_version,
                });
            } else {
                out.before += 1;
            }
        }
    }
    Ok(out)
}

/// One pipeline's held work: its quarantined batches and the rows its quarantine table holds
/// (rows checks held back, and rows dropped as bad input).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Held {
    pub pipeline: String,
    pub batches: Vec<TaskRecord>,
    pub rows: Vec<QuarantinedRow>,
}

/// `sluice quarantine show`: what is held back and why, of one pipeline or all, of one batch
/// or all, at most `limit` rows per pipeline.
pub async fn held(
    store: &Arc<dyn Store>,
    pipeline: Option<&str>,
    batch: Option<&str>,
    limit: usize,
) -> Result<Vec<Held>> {
    let mut pipelines = store.pipelines().await?;
    if let Some(p) = pipeline {
        pipelines.retain(|r| r.name == p);
        if pipelines.is_empty() {
            return Err(AppError::NotFound(format!(
                "no pipeline {p:?} in the store: see `sluice status`"
            )));
        }
    }
    let mut report = Vec::new();
    for p in &pipelines {
        let mut batches = store.tasks(&p.name, Some(TaskState::Quarantined)).await?;
        if let Some(b) = batch {
            batches.retain(|t| t.batch_id.0 == b);
        }
        let rows = held_rows(store, &p.name, p.current_version, batch, limit).await?;
        report.push(Held {
            pipeline: p.name.clone(),
            batches,
            rows,
        });
    }
    Ok(report)
}

/// Reads the pipeline's quarantine table (located through its current version's spec).
async fn held_rows(
    store: &Arc<dyn Store>,
    pipeline: &str,
    version: i64,
    batch: Option<&str>,
    limit: usize,
) -> Result<Vec<QuarantinedRow>> {
    let Some(v) = store.pipeline_version(pipeline, version).await? else {
        return Ok(vec![]);
    };
    let compiled = sluice_engine::Pipeline::from_stored(&v.spec, &v.base_dir, version)
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let Some(table) = compiled.quarantine_table() else {
        return Ok(vec![]);
    };
    let all = table
        .read_all()
        .await
        .map_err(|e| AppError::External(e.to_string()))?;
    let mut out = sluice_engine::checks::read_quarantined(&all).map_err(AppError::Internal)?;
    out.retain(|r| batch.is_none_or(|b| b == r.batch_id));
    out.truncate(limit);
    Ok(out)
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
