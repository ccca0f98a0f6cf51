//! `sluice run` and `sluice worker`.

use std::process::ExitCode;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use sluice_app::{Drive, PoolReport, Progress, Stopped, Work, pipeline_status};
use sluice_store::{PipelineStatus, Store};

use tokio::sync::watch;
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

/// Draws `progress` on `bar` until the sender is dropped, then finishes the bar.
pub fn draw(bar: ProgressBar) -> (watch::Sender<Progress>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = watch::channel(Progress::default());
    let task = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            update_bar(&bar, &p.status);
            if let Some(waiting) = p.waiting {
                bar.set_message(waiting);
            }
        }
        bar.finish();
    });
    (tx, task)
}

/// [`sluice_app::drive`] with its progress drawn on `bar`.
pub async fn drive(
    store: Arc<dyn Store>,
    pipeline: Arc<sluice_engine::Pipeline>,
    opts: Drive,
    stop: CancellationToken,
    bar: Option<ProgressBar>,
) -> anyhow::Result<PoolReport> {
    let (progress, drawing) = bar.map(draw).unzip();
    let report = sluice_app::drive(store, pipeline, opts, stop, progress).await;
    if let Some(drawing) = drawing {
        let _ = drawing.await;
    }
    Ok(report?)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(&args.store.store).await?;
    // A changed spec of a pipeline with a stable version is deployed under its `deploy:`
    // policy (recreate unless it says otherwise), never switched silently.
    let opts = sluice_app::deploy::DeployOptions {
        strategy: None,
        pre_suite: false,
        started_by: "sluice run".into(),
    };
    let deployed = sluice_app::deploy::deploy(&store, &args.store.store, &args.file, &opts).await?;
    if let sluice_app::deploy::Deployed::Started { deployment, .. } = &deployed {
        eprintln!(
            "deploying {}: v{} -> v{} by {} (deployment #{}; `sluice deploy status {}`)",
            deployment.pipeline,
            deployment.stable_version,
            deployment.candidate_version,
            deployment.strategy,
            deployment.id,
            deployment.pipeline
        );
    }
    let pipeline = deployed.pipeline().clone();
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
            leader_lease: args.leader_lease,
        },
        stop,
        bar,
    )
    .await?;
    // Stopped (a signal) while the store is away: the run's own totals are still worth saying.
    let status = pipeline_status(&store, pipeline.name()).await;
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
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let server = sluice_server::process_metrics(addr).await?;
            eprintln!(
                "worker metrics on http://{} (/health, /metrics)",
                server.local_addr()
            );
            let stop = stop.clone();
            Some(tokio::spawn(async move { server.run(stop).await }))
        }
        None => None,
    };
    let opts = Work {
        workers: args.workers,
        lease: args.lease,
        grace: args.grace,
        pipelines: filter,
        until_drained: args.until_drained,
        store_outage_limit: args.store_outage_limit,
        leader: !args.no_leader,
        leader_lease: args.leader_lease,
    };
    let Stopped { report, gave_up } = sluice_app::work(store, opts, stop.clone()).await?;
    stop.cancel();
    if let Some(h) = metrics
        && let Ok(Err(e)) = h.await
    {
        tracing::warn!("worker metrics: {e}");
    }
    eprintln!(
        "worker stopped: {} committed, {} already committed, {} quarantined, {} released",
        report.committed, report.already_committed, report.quarantined, report.released
    );
    if let Some(e) = gave_up {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}
