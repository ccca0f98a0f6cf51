//! Running pipelines: [`drive`] (discovery and a pool for one pipeline, `sluice run` and the
//! demo) and [`work`] (a pool for every pipeline, `sluice worker`). Both run until `stop` is
//! cancelled (or, asked to, until the queue is drained) and ride out a state store that is
//! away, up to the pool's outage limit. Progress goes out on a `watch` channel; drawing it is
//! the caller's.

use std::sync::Arc;
use std::time::Duration;

use sluice_store::{PipelineStatus, Store, StoreError};
use sluice_worker::{
    Backoff, DiscoverError, Discoverer, PoolConfig, PoolReport, StoreWatch, VersionCache,
    WorkerPool,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{AppError, During, Result};
use crate::leader::Duties;
use crate::registry::StoreRegistry;

/// How [`drive`] runs.
#[derive(Debug, Clone)]
pub struct Drive {
    pub workers: usize,
    pub poll: Duration,
    pub grace: Duration,
    pub until_drained: bool,
    /// How long the state store may be away before the process gives up.
    pub store_outage_limit: Duration,
    /// How long this process's leader lease lasts without renewal (a successor takes over
    /// after it expires).
    pub leader_lease: Duration,
}

/// Where a driven pipeline is: its queue, and why the workers are waiting, while they are.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Progress {
    pub status: PipelineStatus,
    /// The pool's waiting state (a store or a table that is away), when it has one.
    pub waiting: Option<String>,
}

/// The queue of one pipeline (empty when it has none).
pub async fn pipeline_status(
    store: &Arc<dyn Store>,
    name: &str,
) -> Result<PipelineStatus, StoreError> {
    Ok(store
        .status()
        .await?
        .into_iter()
        .find(|s| s.pipeline == name)
        .unwrap_or_default())
}

/// A long-running loop's store call: `Some` when it went through; `None` after waiting out an
/// outage (reported to `watch`, which logs it once; the caller tries again); an error for
/// anything else.
async fn ride_out<T>(
    watch: &StoreWatch,
    backoff: &mut Backoff,
    stop: &CancellationToken,
    what: &str,
    result: Result<T, StoreError>,
) -> Result<Option<T>> {
    match result {
        // Only a write ends an outage (the pool's loops report those): a SQLite file locked by
        // another process still answers reads.
        Ok(v) => {
            backoff.reset();
            Ok(Some(v))
        }
        Err(e) if watch.failed(what, &e) => {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = watch.gave_up().cancelled() => {}
                _ = tokio::time::sleep(backoff.next_wait()) => {}
            }
            Ok(None)
        }
        Err(e) => Err(e).during(what),
    }
}

/// The error a process stops with once the store has been away past the limit.
fn gave_up(watch: &StoreWatch) -> Result<()> {
    match watch.give_up_message() {
        Some(message) => Err(AppError::External(message)),
        None => Ok(()),
    }
}

async fn finish(pool_task: tokio::task::JoinHandle<PoolReport>) -> Result<PoolReport> {
    pool_task
        .await
        .map_err(|e| AppError::Internal(format!("worker pool crashed: {e}")))
}

/// Runs discovery and a pool for `pipeline` until stopped (or drained). `progress`, when given,
/// gets the queue after every discovery pass and once more at the end.
pub async fn drive(
    store: Arc<dyn Store>,
    pipeline: Arc<sluice_engine::Pipeline>,
    opts: Drive,
    stop: CancellationToken,
    progress: Option<watch::Sender<Progress>>,
) -> Result<PoolReport> {
    let versions = Arc::new(VersionCache::new(store.clone()));
    versions.insert(pipeline.clone()).await;
    let Drive {
        workers,
        poll,
        grace,
        until_drained,
        store_outage_limit,
        leader_lease,
    } = opts;
    let config = PoolConfig {
        workers,
        lease_for: pipeline.spec.batch.lease,
        grace,
        pipelines: Some(vec![pipeline.name().to_string()]),
        store_outage_limit,
        ..PoolConfig::default()
    };
    let registry = StoreRegistry::new(store.clone());
    let pool = Arc::new(WorkerPool::new(
        store.clone(),
        config,
        versions.clone(),
        registry,
    ));
    let watch = pool.watch().clone();
    let pool_task = tokio::spawn(pool.clone().run(stop.clone()));
    let report = |status: Option<PipelineStatus>| {
        if let Some(progress) = &progress {
            progress.send_modify(|p| {
                if let Some(status) = status {
                    p.status = status;
                }
                p.waiting = pool.waiting();
            });
        }
    };
    // Discovery of the other pipelines and the deployment controller are leader duties: done
    // here while this process holds the store's leader lease, by another process otherwise.
    // This pipeline's folder is watched here either way, with the spec being run (two
    // discoverers take a file in once), so a run that is to drain knows what landed.
    let name = pipeline.name().to_string();
    let mut duties =
        Duties::new(store.clone(), versions.clone(), None, leader_lease).without(&name);
    let mut discoverer = Discoverer::new(store.clone(), pipeline.clone())
        .await
        .during("loading the files already taken in")?;
    let result: Result<()> = async {
        let mut backoff = Backoff::default();
        while !stop.is_cancelled() && !watch.gave_up().is_cancelled() {
            let what = "doing the leader duties (discovery, deployments)";
            if ride_out(&watch, &mut backoff, &stop, what, duties.tick().await).await?.is_none() {
                continue;
            }
            let found = match discoverer.poll().await {
                Ok(found) => found,
                Err(DiscoverError::Store(e)) => {
                    let what = "discovering files";
                    ride_out(&watch, &mut backoff, &stop, what, Err::<(), _>(e)).await?;
                    continue;
                }
                Err(e) => return Err(AppError::External(format!("discovering files: {e}"))),
            };
            // `on_change: fail`: a running pipeline queues nothing while the change stands
            // (the discoverer logged it once); one that was to drain stops with the error (the
            // outside world changed a file: not the caller's input, so not a user error).
            if let (Some(reason), true) = (&found.failed, until_drained) {
                return Err(AppError::External(format!("pipeline {name} failed: {reason}")));
            }
            let status = pipeline_status(&store, &name).await;
            let what = "reading the queue's status";
            let Some(status) = ride_out(&watch, &mut backoff, &stop, what, status).await? else {
                report(None);
                continue;
            };
            let drained = status.pending + status.leased == 0;
            report(Some(status));
            if until_drained && drained && found.files == 0 && found.deferred == 0 {
                // A deployment in progress is waited for unless it waits for a person.
                let deployment = store.active_deployment(&name).await;
                let what = "reading the pipeline's deployment";
                let Some(deployment) = ride_out(&watch, &mut backoff, &stop, what, deployment).await? else {
                    continue;
                };
                if deployment.is_none_or(|d| d.state == sluice_deploy::State::Paused.as_str()) {
                    break;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(if until_drained { poll.min(Duration::from_millis(200)) } else { poll }) => {}
            }
        }
        Ok(())
    }
    .await;
    duties.resign().await;
    stop.cancel();
    let pool_report = finish(pool_task).await?;
    if let Ok(status) = pipeline_status(&store, pipeline.name()).await
        && let Some(progress) = &progress
    {
        progress.send_modify(|p| {
            p.status = status;
            p.waiting = None;
        });
    }
    result?;
    gave_up(&watch)?;
    Ok(pool_report)
}

/// How [`work`] runs.
#[derive(Debug, Clone)]
pub struct Work {
    pub workers: usize,
    pub lease: Duration,
    pub grace: Duration,
    /// Only these pipelines (`None`: every pipeline in the store).
    pub pipelines: Option<Vec<String>>,
    /// Stop once the queue of those pipelines has been empty for four checks (two seconds).
    pub until_drained: bool,
    /// Take a turn at the leader duties (discovery of the pipelines, deployments).
    pub leader: bool,
    /// See [`Drive::leader_lease`].
    pub leader_lease: Duration,
    /// How long the state store may be away before the process gives up.
    pub store_outage_limit: Duration,
}

/// What [`work`] came to: the pool's totals, and the store outage it gave up on, if it did
/// (the totals are worth saying either way).
#[derive(Debug)]
pub struct Stopped {
    pub report: PoolReport,
    pub gave_up: Option<AppError>,
}

/// Runs a pool over the store's pipelines until stopped (or drained).
pub async fn work(store: Arc<dyn Store>, opts: Work, stop: CancellationToken) -> Result<Stopped> {
    let config = PoolConfig {
        workers: opts.workers,
        lease_for: opts.lease,
        grace: opts.grace,
        pipelines: opts.pipelines.clone(),
        store_outage_limit: opts.store_outage_limit,
        ..PoolConfig::default()
    };
    let versions = Arc::new(VersionCache::new(store.clone()));
    let registry = StoreRegistry::new(store.clone());
    let pool = Arc::new(WorkerPool::new(
        store.clone(),
        config,
        versions.clone(),
        registry,
    ));
    let watch = pool.watch().clone();
    let pool_task = tokio::spawn(pool.run(stop.clone()));
    let filter = opts.pipelines.clone();
    let mut duties = opts
        .leader
        .then(|| Duties::new(store.clone(), versions, opts.pipelines, opts.leader_lease));
    let mut empty_checks = 0;
    let mut backoff = Backoff::default();
    while !stop.is_cancelled() && !watch.gave_up().is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let mut found = 0;
        if let Some(duties) = duties.as_mut() {
            let what = "doing the leader duties (discovery, deployments)";
            let Some(duty) =
                ride_out(&watch, &mut backoff, &stop, what, duties.tick().await).await?
            else {
                continue;
            };
            found = duty
                .discovered
                .values()
                .map(|r| r.files + r.deferred)
                .sum::<u64>();
        }
        if !opts.until_drained {
            continue;
        }
        let status = store.status().await;
        let what = "reading the queue's status";
        let Some(status) = ride_out(&watch, &mut backoff, &stop, what, status).await? else {
            continue;
        };
        let busy: i64 = status
            .iter()
            .filter(|s| filter.as_ref().is_none_or(|f| f.contains(&s.pipeline)))
            .map(|s| s.pending + s.leased)
            .sum();
        // A deployment in progress is waited for unless it waits for a person.
        let deployments = store.active_deployments().await;
        let what = "reading the deployments";
        let Some(deployments) = ride_out(&watch, &mut backoff, &stop, what, deployments).await?
        else {
            continue;
        };
        let moving = deployments.iter().any(|d| {
            filter.as_ref().is_none_or(|f| f.contains(&d.pipeline))
                && d.state != sluice_deploy::State::Paused.as_str()
        });
        empty_checks = if busy == 0 && found == 0 && !moving {
            empty_checks + 1
        } else {
            0
        };
        if empty_checks >= 4 {
            stop.cancel();
        }
    }
    if let Some(duties) = duties.as_mut() {
        duties.resign().await;
    }
    let report = finish(pool_task).await?;
    Ok(Stopped {
        report,
        gave_up: gave_up(&watch).err(),
    })
}
