//! Store throughput: how many `lease(limit 1)` + `complete` cycles per second each backend does,
//! with 1 and 4 concurrent leasers, and what one cycle costs. This is the queue's overhead per
//! batch; `bench/run.sh` divides it by the mean batch duration of a real run.
//!
//! `cargo bench -p sluice-store --bench lease` (a plain `main`, figures printed, nothing
//! asserted). Environment:
//!
//! * `SLUICE_BENCH_TASKS` — tasks queued per measurement (default 20000);
//! * `SLUICE_BENCH_LEASERS` — comma-separated concurrency levels (default `1,4`);
//! * `SLUICE_BENCH_JSON` — also write the figures as JSON to this path;
//! * `SLUICE_BENCH_DEPLOY` — a candidate's weight in percent: lease while a deployment routes
//!   that share of the batches to the candidate (`batch` mode), to see the router's cost
//!   (default: no deployment, the common case);
//! * `SLUICE_TEST_POSTGRES` — the PostgreSQL server (see `sluice_store::testing`); `skip` skips it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{BatchId, BatchOutcome, BatchSlice, WorkerId};
use sluice_store::{
    LeaseRequest, NewDeployment, NewFile, NewTask, Route, RouteMode, RunReport, Store,
};

#[derive(Debug, Clone, serde::Serialize)]
struct Figure {
    backend: String,
    /// The active deployment's route (`batch 50`), or `none`.
    route: String,
    leasers: usize,
    tasks: usize,
    /// Time to queue the tasks (one `register_file`).
    register_s: f64,
    seconds: f64,
    ops_per_s: f64,
    lease_mean_ms: f64,
    lease_p50_ms: f64,
    lease_p99_ms: f64,
    complete_mean_ms: f64,
    complete_p50_ms: f64,
    complete_p99_ms: f64,
    /// Mean lease + complete latency of one cycle, as one worker sees it.
    cycle_mean_ms: f64,
    /// Leases that came back empty while tasks were still queued (contention), if any.
    empty_leases: u64,
}

fn tasks_for(pipeline: &str, file: &str, n: usize) -> Vec<NewTask> {
    (0..n)
        .map(|i| {
            let slice = BatchSlice {
                path: file.to_string(),
                index: i as u32,
                byte_start: i as u64 * 1000,
                byte_end: (i as u64 + 1) * 1000,
                row_start: i as u64 * 100,
                row_count: 100,
            };
            NewTask {
                batch_id: BatchId::derive(pipeline, &format!("{file}@1"), &slice),
                slice,
            }
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Queues `tasks` tasks in a fresh file, then lets `leasers` concurrent loops lease one and
/// complete it until the queue is empty.
async fn measure(
    store: Arc<dyn Store>,
    round: usize,
    tasks: usize,
    leasers: usize,
    route: &str,
) -> Result<Figure, Box<dyn std::error::Error>> {
    let pipeline = "bench";
    let v = register(&store, 1).await?;
    let path = format!("/landing/bench-{round}.csv");
    let file = NewFile {
        pipeline: pipeline.into(),
        path: path.clone(),
        size: tasks as i64 * 1000,
        modified_ms: 0,
        ..NewFile::default()
    };
    let queued = tasks_for(pipeline, &path, tasks);
    let t0 = Instant::now();
    store.register_file(&file, v.version, 3, &queued).await?;
    let register_s = t0.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut handles = Vec::new();
    for slot in 0..leasers {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let worker = WorkerId::new("bench", std::process::id(), slot);
            let mut lease_ms = Vec::new();
            let mut complete_ms = Vec::new();
            let mut empty = 0u64;
            let mut empty_in_a_row = 0u32;
            loop {
                let req = LeaseRequest {
                    worker: worker.clone(),
                    pipelines: Some(vec!["bench".to_string()]),
                    limit: 1,
                    lease_for: Duration::from_secs(300),
                };
                let t = Instant::now();
                let leases = store.lease(&req).await?;
                let l = t.elapsed().as_secs_f64() * 1000.0;
                let Some(lease) = leases.into_iter().next() else {
                    // Empty: the queue is drained (SKIP LOCKED or a lost race can also give an
                    // empty answer while tasks remain; a few in a row means drained).
                    empty += 1;
                    empty_in_a_row += 1;
                    if empty_in_a_row >= 3 {
                        break;
                    }
                    continue;
                };
                empty_in_a_row = 0;
                lease_ms.push(l);
                let now = sluice_core::now_millis();
                let report = RunReport {
                    started_at: now,
                    finished_at: now,
                    rows_in: 100,
                    rows_out: 100,
                    outcome: BatchOutcome::Committed,
                    error: None,
                    cpu_us: None,
                    peak_memory_bytes: None,
                };
                let t = Instant::now();
                let held = store.complete(&lease, &report).await?;
                complete_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                if !held {
                    return Err(sluice_store::StoreError::Invalid(format!(
                        "lease of {} lost during the bench",
                        lease.batch_id
                    )));
                }
            }
            // The final empty answers are the drain check, not contention.
            Ok::<_, sluice_store::StoreError>((lease_ms, complete_ms, empty.saturating_sub(3)))
        }));
    }
    let mut lease_ms = Vec::new();
    let mut complete_ms = Vec::new();
    let mut empty_leases = 0;
    for h in handles {
        let (l, c, e) = h.await??;
        lease_ms.extend(l);
        complete_ms.extend(c);
        empty_leases += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    if complete_ms.len() != tasks {
        return Err(format!("{} tasks queued but {} completed", tasks, complete_ms.len()).into());
    }
    let cycle_mean_ms = mean(&lease_ms) + mean(&complete_ms);
    lease_ms.sort_by(f64::total_cmp);
    complete_ms.sort_by(f64::total_cmp);
    Ok(Figure {
        backend: store.backend().to_string(),
        route: route.to_string(),
        leasers,
        tasks,
        register_s,
        seconds,
        ops_per_s: tasks as f64 / seconds,
        lease_mean_ms: mean(&lease_ms),
        lease_p50_ms: percentile(&lease_ms, 0.5),
        lease_p99_ms: percentile(&lease_ms, 0.99),
        complete_mean_ms: mean(&complete_ms),
        complete_p50_ms: percentile(&complete_ms, 0.5),
        complete_p99_ms: percentile(&complete_ms, 0.99),
        cycle_mean_ms,
        empty_leases,
    })
}

async fn bench_backend(
    url: &str,
    tasks: usize,
    levels: &[usize],
    deploy: Option<u8>,
    out: &mut Vec<Figure>,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = sluice_store::open(url).await?;
    let route = match deploy {
        Some(weight) => {
            let (stable, candidate) = (register(&store, 1).await?, register(&store, 2).await?);
            let route = Route {
                mode: RouteMode::Batch,
                weight,
            };
            let new = NewDeployment {
                pipeline: "bench".into(),
                stable_version: stable.version,
                candidate_version: candidate.version,
                strategy: "canary".into(),
                policy: "{}".into(),
                state: "progressing".into(),
                route,
                started_by: "bench".into(),
            };
            if let Err(active) = store.start_deployment(&new).await? {
                return Err(format!("deployment {} is active already", active.id).into());
            }
            format!("batch {weight}")
        }
        None => "none".to_string(),
    };
    for (round, &leasers) in levels.iter().enumerate() {
        let f = measure(store.clone(), round, tasks, leasers, &route).await?;
        print_row(&f);
        out.push(f);
    }
    Ok(())
}

/// Version `n` of the bench pipeline (the first is its current one).
async fn register(
    store: &Arc<dyn Store>,
    n: u32,
) -> Result<sluice_store::PipelineVersion, sluice_store::StoreError> {
    let hash = if n == 1 {
        "bench-spec-hash".to_string()
    } else {
        format!("bench-spec-hash-{n}")
    };
    store
        .register_pipeline_version("bench", &hash, "pipeline: bench", "/bench", false)
        .await
}

fn print_header() {
    println!(
        "{:<9} {:>9} {:>7} {:>7} {:>10} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9}",
        "backend",
        "route",
        "leasers",
        "tasks",
        "ops/s",
        "queue(s)",
        "lease ms",
        "p50",
        "p99",
        "compl ms",
        "p50",
        "p99",
        "cycle ms"
    );
}

fn print_row(f: &Figure) {
    println!(
        "{:<9} {:>9} {:>7} {:>7} {:>10.0} {:>9.2} | {:>9.3} {:>9.3} {:>9.3} | {:>9.3} {:>9.3} {:>9.3} | {:>9.3}{}",
        f.backend,
        f.route,
        f.leasers,
        f.tasks,
        f.ops_per_s,
        f.register_s,
        f.lease_mean_ms,
        f.lease_p50_ms,
        f.lease_p99_ms,
        f.complete_mean_ms,
        f.complete_p50_ms,
        f.complete_p99_ms,
        f.cycle_mean_ms,
        if f.empty_leases > 0 {
            format!("  ({} empty leases under contention)", f.empty_leases)
        } else {
            String::new()
        }
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not used.
    let tasks: usize = std::env::var("SLUICE_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let levels: Vec<usize> = std::env::var("SLUICE_BENCH_LEASERS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 4]);
    let deploy: Option<u8> = match std::env::var("SLUICE_BENCH_DEPLOY") {
        Ok(v) => match v.trim().parse() {
            Ok(w) if w <= 100 => Some(w),
            _ => {
                eprintln!("SLUICE_BENCH_DEPLOY={v:?} is not a weight: give 0 to 100");
                std::process::exit(2);
            }
        },
        Err(_) => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut figures = Vec::new();
    let mut failed = false;
    println!(
        "store bench: lease(limit 1) + complete until {tasks} queued tasks are done (queue(s): time to queue them)"
    );
    print_header();
    runtime.block_on(async {
        // SQLite: a temporary file, as `sluice run` uses by default.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.db").display().to_string();
        if let Err(e) = bench_backend(&path, tasks, &levels, deploy, &mut figures).await {
            eprintln!("sqlite bench failed: {e}");
            failed = true;
        }
        match sluice_store::testing::fresh_postgres_url().await {
            Ok(Some(url)) => {
                if let Err(e) = bench_backend(&url, tasks, &levels, deploy, &mut figures).await {
                    eprintln!("postgres bench failed: {e}");
                    failed = true;
                }
                if let Err(e) = sluice_store::testing::drop_postgres_database(&url).await {
                    eprintln!("dropping the bench database: {e}");
                }
            }
            Ok(None) => println!(
                "postgres  skipped: {}=skip",
                sluice_store::testing::POSTGRES_ENV
            ),
            Err(e) => {
                println!("postgres  skipped: {e}");
            }
        }
    });
    if let Ok(path) = std::env::var("SLUICE_BENCH_JSON") {
        let json = serde_json::to_string_pretty(&figures).expect("figures as JSON");
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("writing {path}: {e}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
