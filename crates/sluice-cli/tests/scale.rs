//! Scale-out: workers in one process and in several processes share the queue with no batch
//! executed twice (no lease expires here) and no row committed twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;

use common::*;
use sluice_core::BatchOutcome;

/// Every batch ran exactly once, committed, by some worker; returns the workers used.
fn assert_disjoint(store_url: &str, batches: usize) -> HashSet<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let runs = rt.block_on(async {
        let store = sluice_store::open(store_url).await.unwrap();
        store.batch_runs("crash", 100_000).await.unwrap()
    });
    let mut per_batch: HashMap<String, usize> = HashMap::new();
    for r in &runs {
        assert_eq!(r.outcome, BatchOutcome::Committed, "unexpected run {r:?}");
        *per_batch.entry(r.batch_id.0.clone()).or_default() += 1;
    }
    let twice: Vec<_> = per_batch.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "batches executed more than once: {twice:?}"
    );
    assert_eq!(per_batch.len(), batches, "every batch runs once");
    runs.iter().map(|r| r.worker.0.clone()).collect()
}

#[test]
fn four_in_process_workers_on_sqlite_take_disjoint_batches() {
    let p = Project::csv(4, 2000, 200, "60s");
    let spec = p.spec().display().to_string();
    let store = p.sqlite();
    let out = p.run(&[
        "run",
        &spec,
        "--store",
        &store,
        "--workers",
        "4",
        "--until-drained",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let workers = assert_disjoint(&store, 40);
    assert!(workers.len() >= 2, "work was shared: {workers:?}");
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
}

#[test]
fn worker_processes_and_in_process_workers_on_postgres_take_disjoint_batches() {
    let Some(url) = postgres() else { return };
    let p = Project::csv(6, 2000, 100, "60s");
    let spec = p.spec().display().to_string();
    // Register the pipeline first so the worker processes have something to join.
    let validate = p.run(&["validate", &spec]);
    assert!(validate.status.success(), "{}", stderr(&validate));
    let mut run = p
        .sluice(&[
            "run",
            &spec,
            "--store",
            &url,
            "--workers",
            "4",
            "--until-drained",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            p.sluice(&[
                "worker",
                "--store",
                &url,
                "--workers",
                "2",
                "--until-drained",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    assert!(run.wait().unwrap().success());
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let used = assert_disjoint(&url, 120);
    let processes: HashSet<_> = used
        .iter()
        .map(|w| w.rsplit_once('/').unwrap().0.to_string())
        .collect();
    assert!(
        processes.len() >= 2,
        "work was shared across processes: {used:?}"
    );
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
}
