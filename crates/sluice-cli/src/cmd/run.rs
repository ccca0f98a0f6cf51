//! `sluice run` and `sluice worker`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_store::{PipelineStatus, Store, StoreError};
use sluice_worker::{
    Backoff, DiscoverError, Discoverer, PoolConfig, PoolReport, StoreWatch, VersionCache,
    WorkerPool,
};
use tokio_util::sync::CancellationToken;

use crate::cli::{RunArgs, WorkerArgs};

/// Cancels `stop` on Ctrl-C or SIGTERM: the pool then drains.
pub fn stop_on_signals(stop: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        stop.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!(
            "stopping: no new batches are leased; in-flight batches finish (press Ctrl-C again to force)"
        );
        stop.cancel();
    });
}

pub fn progress_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

pub fn update_bar(bar: &ProgressBar, s: &PipelineStatus) {
    bar.set_length((s.pending + s.leased + s.done + s.quarantined) as u64);
    bar.set_position((s.done + s.quarantined) as u64);
    bar.set_message(format!("{} rows, {} quarantined", s.rows_in, s.quarantined));
}

pub async fn pipeline_status(store: &Arc<dyn Store>, name: &str) -> anyhow::Result<PipelineStatus> {
    Ok(status_of(store, name).await?)
}

async fn status_of(store: &Arc<dyn Store>, name: &str) -> Result<PipelineStatus, StoreError> {
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
) -> anyhow::Result<Option<T>> {
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
        Err(e) => Err(anyhow::Error::new(e).context(what.to_string())),
    }
}

/// The error a process stops with once the store has been away past the limit.
fn gave_up(watch: &StoreWatch) -> anyhow::Result<()> {
    match watch.give_up_message() {
        Some(message) => Err(anyhow::anyhow!(message)),
        None => Ok(()),
    }
}

/// How [`drive`] runs.
pub struct Drive {
    pub workers: usize,
    pub poll: Duration,
    pub grace: Duration,
    pub until_drained: bool,
    /// How long the state store may be away before the process gives up.
    pub store_outage_limit: Duration,
}

/// Runs discovery and a pool until stopped (or drained). Shared by `run` and `demo`.
pub async fn drive(
    store: Arc<dyn Store>,
    pipeline: Arc<sluice_engine::Pipeline>,
    opts: Drive,
    stop: CancellationToken,
    bar: Option<ProgressBar>,
) -> anyhow::Result<PoolReport> {
    let versions = Arc::new(VersionCache::new(store.clone()));
    versions.insert(pipeline.clone()).await;
    let Drive {
        workers,
        poll,
        grace,
        until_drained,
        store_outage_limit,
    } = opts;
    let config = PoolConfig {
        workers,
        lease_for: pipeline.spec.batch.lease,
        grace,
        pipelines: Some(vec![pipeline.name().to_string()]),
        store_outage_limit,
        ..PoolConfig::default()
    };
    let pool = Arc::new(WorkerPool::new(
        store.clone(),
        config,
        versions,
        sluice_app::registry::StoreRegistry::new(store.clone()),
    ));
    let watch = pool.watch().clone();
    let pool_task = tokio::spawn(pool.clone().run(stop.clone()));
    let mut discoverer = Discoverer::new(store.clone(), pipeline.clone())
        .await
        .context("loading the files already taken in")?;
    let result: anyhow::Result<()> = async {
        let mut backoff = Backoff::default();
        while !stop.is_cancelled() && !watch.gave_up().is_cancelled() {
            let found = match discoverer.poll().await {
                Ok(found) => found,
                Err(DiscoverError::Store(e)) => {
                    let what = "discovering files";
                    let outcome = ride_out(&watch, &mut backoff, &stop, what, Err::<(), _>(e));
                    outcome.await?;
                    continue;
                }
                Err(e) => return Err(anyhow::anyhow!("discovering files: {e}")),
            };
            // `on_change: fail`: a running pipeline queues nothing while the change stands
            // (the discoverer logged it once); one that was to drain stops with the error.
            if let (Some(reason), true) = (&found.failed, until_drained) {
                anyhow::bail!("pipeline {} failed: {reason}", pipeline.name());
            }
            let status = status_of(&store, pipeline.name()).await;
            let what = "reading the queue's status";
            let Some(status) = ride_out(&watch, &mut backoff, &stop, what, status).await? else {
                if let (Some(bar), Some(waiting)) = (&bar, pool.waiting()) {
                    bar.set_message(waiting);
                }
                continue;
            };
            if let Some(bar) = &bar {
                update_bar(bar, &status);
                if let Some(waiting) = pool.waiting() {
                    bar.set_message(waiting);
                }
            }
            if until_drained && found.files == 0 && found.deferred == 0 && status.pending + status.leased == 0 {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(if until_drained { poll.min(Duration::from_millis(200)) } else { poll }) => {}
            }
        }
        Ok(())
    }
    .await;
    stop.cancel();
    let report = pool_task.await.context("worker pool crashed")?;
    if let Some(bar) = &bar {
        if let Ok(status) = pipeline_status(&store, pipeline.name()).await {
            update_bar(bar, &status);
        }
        bar.finish();
    }
    result?;
    gave_up(&watch)?;
    Ok(report)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(&args.store.store).await?;
    let pipeline = sluice_app::register_current(&store, &args.store.store, &args.file).await?;
    eprintln!(
        "running {}@{} with {} worker(s); store {}; sink {}",
        pipeline.name(),
        pipeline.version,
        args.workers,
        super::redact(&args.store.store),
        pipeline.sink().url()
    );
    let stop = CancellationToken::new();
    stop_on_signals(stop.clone());
    let bar = (!args.json).then(|| progress_bar(pipeline.name()));
    let report = drive(
        store.clone(),
        pipeline.clone(),
        Drive {
            workers: args.workers,
            poll: args.poll,
            grace: args.grace,
            until_drained: args.until_drained,
            store_outage_limit: args.store_outage_limit,
        },
        stop,
        bar,
    )
    .await?;
    // Stopped (a signal) while the store is away: the run's own totals are still worth saying.
    let status = status_of(&store, pipeline.name()).await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "pipeline": pipeline.name(),
                "version": pipeline.version,
                "this_run": report,
                "status": status.as_ref().ok(),
            }))?
        );
    } else {
        println!(
            "{}@{}: this run committed {} batch(es) ({} rows in, {} rows out), found {} already committed, quarantined {}, released {}",
            pipeline.name(),
            pipeline.version,
            report.committed,
            report.rows_in,
            report.rows_out,
            report.already_committed,
            report.quarantined,
            report.released
        );
        match status {
            Ok(status) => println!(
                "queue: {} pending, {} leased, {} done, {} quarantined (see `sluice status`)",
                status.pending, status.leased, status.done, status.quarantined
            ),
            Err(e) => println!("queue: unknown ({e})"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(&args.store.store).await?;
    let filter = (!args.pipelines.is_empty()).then(|| args.pipelines.clone());
    let config = PoolConfig {
        workers: args.workers,
        lease_for: args.lease,
        grace: args.grace,
        pipelines: filter.clone(),
        store_outage_limit: args.store_outage_limit,
        ..PoolConfig::default()
    };
    let versions = Arc::new(VersionCache::new(store.clone()));
    let pool = Arc::new(WorkerPool::new(
        store.clone(),
        config,
        versions,
        sluice_app::registry::StoreRegistry::new(store.clone()),
    ));
    let watch = pool.watch().clone();
    let stop = CancellationToken::new();
    stop_on_signals(stop.clone());
    eprintln!(
        "worker: {} worker(s) on {} for {}",
        args.workers,
        super::redact(&args.store.store),
        filter
            .as_ref()
            .map(|f| f.join(", "))
            .unwrap_or_else(|| "all pipelines".into())
    );
    let pool_task = tokio::spawn(pool.run(stop.clone()));
    if args.until_drained {
        let mut empty_checks = 0;
        let mut backoff = Backoff::default();
        while !stop.is_cancelled() && !watch.gave_up().is_cancelled() {
            tokio::time::sleep(Duration::from_millis(500)).await;
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
            empty_checks = if busy == 0 { empty_checks + 1 } else { 0 };
            if empty_checks >= 4 {
                stop.cancel();
            }
        }
    }
    let report = pool_task.await.context("worker pool crashed")?;
    eprintln!(
        "worker stopped: {} committed, {} already committed, {} quarantined, {} released",
        report.committed, report.already_committed, report.quarantined, report.released
    );
    gave_up(&watch)?;
    Ok(ExitCode::SUCCESS)
}
