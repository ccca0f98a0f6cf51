//! One behaviour suite for every [`Store`] backend (River's `riverdrivertest` idea).
//!
//! Each test is written once against `Arc<dyn Store>` and instantiated by [`conformance!`] for
//! SQLite (a temporary file) and PostgreSQL (a fresh database per test; see
//! `sluice_store::testing`). Set `SLUICE_TEST_POSTGRES=skip` to run only the SQLite half.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{BatchId, BatchOutcome, BatchSlice, ErrorKind, LeaseToken, TaskState, WorkerId};
use sluice_store::{
    BatchFile, BatchQuery, CheckRecord, DURATION_BUCKETS_MS, DeploymentOutcome, DeploymentRecord,
    DeploymentRequest, DeploymentUpdate, FailDisposition, Fence, FileChange, FileUpdate, Lease,
    LeaseRequest, NewDeployment, NewFile, NewMeasurement, NewSchemaVersion, NewTask, Requeue,
    RetryTarget, Route, RouteMode, RunReport, SchemaRegistration, SchemaVersionRecord, Split,
    Store, StoreError, WorkerBeat, testing,
};
use sluice_store::{DeliveryResult, DeliveryState};
use sqlx::Connection;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A store under test, and how to open a second handle on the same data (a second process).
struct Harness {
    url: String,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        // a nested path: opening must create the missing directories
        let path = dir.path().join("state").join("sluice.db");
        let url = format!("sqlite://{}", path.display());
        let store = sluice_store::open(&url)
            .await
            .expect("opening SQLite store");
        assert_eq!(store.backend(), "sqlite");
        Harness {
            url,
            store,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Option<Harness> {
        let url = testing::fresh_postgres_url()
            .await
            .unwrap_or_else(|e| panic!("{e}"))?;
        let store = sluice_store::open(&url)
            .await
            .expect("opening PostgreSQL store");
        assert_eq!(store.backend(), "postgres");
        Some(Harness {
            url,
            store,
            _dir: None,
        })
    }

    /// Another handle on the same data, with its own connections.
    async fn open_again(&self) -> Arc<dyn Store> {
        sluice_store::open(&self.url)
            .await
            .expect("reopening store")
    }

    async fn finish(self) {
        if self.store.backend() == "postgres" {
            drop(self.store);
            // Leftovers are swept by age anyway; a failure to drop is not the test's failure.
            let _ = testing::drop_postgres_database(&self.url).await;
        }
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let h = super::Harness::sqlite().await;
                    let store = h.store.clone();
                    super::$name(&h, store).await.expect(stringify!($name));
                    h.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(h) = super::Harness::postgres().await else {
                        eprintln!("SLUICE_TEST_POSTGRES=skip: not testing PostgreSQL");
                        return;
                    };
                    let store = h.store.clone();
                    super::$name(&h, store).await.expect(stringify!($name));
                    h.finish().await;
                }
            )*
        }
    };
}

conformance!(
    migrations_are_idempotent,
    version_registration_is_idempotent_by_hash,
    current_version_rules,
    concurrent_registration_agrees,
    register_file_is_atomic_and_idempotent,
    register_file_refuses_unknown_version,
    taken_files_keep_the_take_and_its_checksum,
    a_change_is_taken_in_once,
    a_noticed_change_is_news_once,
    replacements_supersede_the_files_of_earlier_content,
    lease_is_fifo_and_limited,
    lease_filters_by_pipeline,
    lease_respects_backoff,
    heartbeat_extends_and_is_fenced,
    durations_past_any_clock_mean_forever,
    complete_is_fenced,
    fail_retries_then_quarantines,
    fail_with_quarantine_is_immediate,
    release_returns_the_attempt,
    rescue_expired_requeues,
    rescue_expired_quarantines_after_max_attempts,
    retry_routes_the_batch_again,
    status_numbers,
    counters_match_a_recount,
    counters_match_a_recount_under_concurrent_workers,
    migration_counts_the_history_already_there,
    workers_upsert,
    batch_runs_history,
    check_results_history,
    concurrent_leasers_drain_the_queue,
    schema_versions_are_numbered_and_found_by_fingerprint,
    schema_registration_refuses_a_stale_base,
    compatibility_defaults_and_overrides,
    datasets_list_versions_and_modes,
    concurrent_schema_registration_agrees,
    a_batch_has_its_runs_and_checks,
    abort_request_routes_to_stable_at_once,
    analysis_templates_are_named_and_replaced,
    analysis_windows_and_measurements,
    batches_are_paged_and_filtered,
    concurrent_lead_has_one_winner,
    hold_leases_only_routed_batches,
    key_routing_carries_the_split,
    leadership_is_exclusive_until_it_expires,
    metrics_aggregate_the_store,
    one_active_deployment_per_pipeline,
    pipeline_versions_are_listed_oldest_first,
    park_pending_holds_routed_retries_until_requeued,
    requeue_is_idempotent_and_skips_leased,
    routed_batches_keep_their_version,
    router_batch_share_is_exact,
    router_share_is_exact_under_concurrent_leasers,
    slots_route_by_worker_rank,
    totals_over_a_window,
    transitions_are_checked_and_logged,
    unrouted_batches_run_the_current_version,
    webhook_deliveries_are_recorded_before_and_after,
);

// ---- files that change after they were taken in ----

fn tasks_of(pipeline: &str, identity: &str, path: &str, n: u32) -> Vec<NewTask> {
    (0..n)
        .map(|i| {
            let slice = slice(path, i);
            NewTask {
                batch_id: BatchId::derive(pipeline, identity, &slice),
                slice,
            }
        })
        .collect()
}

fn taken(path: &str, size: i64, taken_bytes: i64, checksum: &str) -> NewFile {
    NewFile {
        pipeline: "logs".into(),
        path: path.into(),
        size,
        modified_ms: size,
        taken_bytes,
        taken_rows: taken_bytes / 10,
        checksum: Some(checksum.into()),
    }
}

async fn taken_files_keep_the_take_and_its_checksum(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    let v = pipeline(&store, "logs").await?;
    let file = taken("/in/a.jsonl", 105, 100, "c100");
    let tasks = tasks_of("logs", "a", "/in/a.jsonl", 1);
    assert!(store.register_file(&file, v, 3, &tasks).await?);
    let files = store.taken_files("logs").await?;
    assert_eq!(files.len(), 1);
    let f = &files[0];
    assert_eq!(
        (f.path.as_str(), f.size, f.modified_ms),
        ("/in/a.jsonl", 105, 105)
    );
    assert_eq!((f.taken_bytes, f.taken_rows), (100, 10));
    assert_eq!(f.checksum.as_deref(), Some("c100"));
    assert_eq!((f.generation, &f.change), (0, &None));
    // A file's first content supersedes nothing.
    assert!(store.superseded_files(&tasks[0].batch_id).await?.is_empty());
    assert!(store.taken_files("other").await?.is_empty());
    Ok(())
}

async fn a_change_is_taken_in_once(h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "logs").await?;
    let path = "/in/a.jsonl";
    store
        .register_file(
            &taken(path, 100, 100, "c100"),
            v,
            3,
            &tasks_of("logs", "a", path, 1),
        )
        .await?;
    let grown = FileUpdate {
        file: taken(path, 250, 240, "c240"),
        based_on: (100, Some("c100".into()), 0),
        generation: 0,
    };
    let more = tasks_of("logs", "a@100", path, 2);
    // Two discoverers (processes) race to take the append in: one does.
    let other = h.open_again().await;
    let (a, b) = tokio::join!(
        store.take_in_change(&grown, v, 3, &more),
        other.take_in_change(&grown, v, 3, &more)
    );
    assert_eq!([a?, b?].iter().filter(|x| **x).count(), 1);
    assert_eq!(store.tasks("logs", None).await?.len(), 3);
    let f = &store.taken_files("logs").await?[0];
    assert_eq!((f.size, f.taken_bytes, f.taken_rows), (250, 240, 24));
    assert_eq!(f.checksum.as_deref(), Some("c240"));
    // A take built on a stale base changes nothing and queues nothing.
    let stale = FileUpdate {
        file: taken(path, 300, 300, "c300"),
        based_on: (100, Some("c100".into()), 0),
        generation: 0,
    };
    let late = tasks_of("logs", "a@100-late", path, 1);
    assert!(!store.take_in_change(&stale, v, 3, &late).await?);
    assert_eq!(store.tasks("logs", None).await?.len(), 3);
    assert!(store.task(&late[0].batch_id).await?.is_none());
    // An unknown pipeline version is refused before anything changes.
    let next = FileUpdate {
        file: taken(path, 300, 300, "c300"),
        based_on: (240, Some("c240".into()), 0),
        generation: 0,
    };
    assert!(store.take_in_change(&next, v + 7, 3, &late).await.is_err());
    assert_eq!(store.taken_files("logs").await?[0].taken_bytes, 240);
    Ok(())
}

async fn a_noticed_change_is_news_once(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "logs").await?;
    let path = "/in/a.csv";
    store
        .register_file(
            &taken(path, 100, 100, "c"),
            v,
            3,
            &tasks_of("logs", "a", path, 1),
        )
        .await?;
    let change = FileChange {
        size: 150,
        modified_ms: 7,
        detail: "grew from 100 to 150 bytes".into(),
        action: "warned".into(),
        noticed_at: 0,
    };
    assert!(
        store
            .notice_file_change("logs", path, Some(&change))
            .await?
    );
    assert!(
        !store
            .notice_file_change("logs", path, Some(&change))
            .await?,
        "once per change"
    );
    let f = &store.taken_files("logs").await?[0];
    let seen = f.change.clone().ok_or("no change recorded")?;
    assert_eq!(
        (seen.size, seen.modified_ms, seen.detail.as_str()),
        (150, 7, "grew from 100 to 150 bytes")
    );
    assert_eq!(seen.action, "warned");
    assert!(seen.noticed_at > 0);
    let changed = store.changed_files("logs").await?;
    assert_eq!(
        changed.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        [path]
    );
    // The same change under another action (the spec moved to `fail`) is news again.
    let failed = FileChange {
        action: "failed".into(),
        ..change.clone()
    };
    assert!(
        store
            .notice_file_change("logs", path, Some(&failed))
            .await?
    );
    // Back as taken in: cleared, once.
    assert!(store.notice_file_change("logs", path, None).await?);
    assert!(!store.notice_file_change("logs", path, None).await?);
    assert_eq!(store.taken_files("logs").await?[0].change, None);
    assert!(store.changed_files("logs").await?.is_empty());
    // Taking a change in clears the noticed one.
    store
        .notice_file_change("logs", path, Some(&change))
        .await?;
    let update = FileUpdate {
        file: taken(path, 150, 150, "c150"),
        based_on: (100, Some("c".into()), 0),
        generation: 0,
    };
    assert!(store.take_in_change(&update, v, 3, &[]).await?);
    assert_eq!(store.taken_files("logs").await?[0].change, None);
    Ok(())
}

async fn replacements_supersede_the_files_of_earlier_content(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    let v = pipeline(&store, "logs").await?;
    let path = "/in/a.csv";
    let first = tasks_of("logs", "gen0", path, 2);
    store
        .register_file(&taken(path, 200, 200, "c0"), v, 3, &first)
        .await?;
    let appended = tasks_of("logs", "gen0+200", path, 1);
    let grown = FileUpdate {
        file: taken(path, 300, 300, "c0b"),
        based_on: (200, Some("c0".into()), 0),
        generation: 0,
    };
    assert!(store.take_in_change(&grown, v, 3, &appended).await?);
    let record = |batch: &BatchId, version: i64, files: &[&str]| -> Vec<BatchFile> {
        files
            .iter()
            .map(|f| BatchFile {
                pipeline: "logs".into(),
                batch_id: batch.clone(),
                table_version: version,
                data_file: f.to_string(),
            })
            .collect()
    };
    store
        .record_batch_files(&record(&first[0].batch_id, 1, &["part-a.parquet"]))
        .await?;
    store
        .record_batch_files(&record(
            &first[1].batch_id,
            2,
            &["part-b.parquet", "part-c.parquet"],
        ))
        .await?;
    store
        .record_batch_files(&record(&appended[0].batch_id, 3, &["part-d.parquet"]))
        .await?;
    // Recording a batch again (a re-run that found its commit) adds nothing.
    store
        .record_batch_files(&record(&first[0].batch_id, 1, &["part-a.parquet"]))
        .await?;
    let recorded = store.batch_files(&[first[1].batch_id.clone()]).await?;
    assert_eq!(
        recorded,
        record(&first[1].batch_id, 2, &["part-b.parquet", "part-c.parquet"])
    );
    assert_eq!(
        store.batch_files(&[first[0].batch_id.clone()]).await?.len(),
        1
    );
    // Appends supersede nothing: all of it is the same content.
    assert!(
        store
            .superseded_files(&appended[0].batch_id)
            .await?
            .is_empty()
    );

    // Replaced: the new content's batches (generation 1) supersede every file of generation 0.
    let replaced = tasks_of("logs", "gen1", path, 2);
    let update = FileUpdate {
        file: taken(path, 120, 120, "c1"),
        based_on: (300, Some("c0b".into()), 0),
        generation: 1,
    };
    assert!(store.take_in_change(&update, v, 3, &replaced).await?);
    assert_eq!(store.taken_files("logs").await?[0].generation, 1);
    let all = [
        "part-a.parquet",
        "part-b.parquet",
        "part-c.parquet",
        "part-d.parquet",
    ];
    for t in &replaced {
        assert_eq!(store.superseded_files(&t.batch_id).await?, all);
    }
    // Another pipeline's files of the same path are not touched.
    let w = pipeline(&store, "other").await?;
    let theirs = tasks_of("other", "gen0", path, 1);
    let mut file = taken(path, 200, 200, "c0");
    file.pipeline = "other".into();
    store.register_file(&file, w, 3, &theirs).await?;
    assert!(
        store
            .superseded_files(&theirs[0].batch_id)
            .await?
            .is_empty()
    );
    Ok(())
}

// ---- fixtures ----

const LONG: Duration = Duration::from_secs(60);

async fn pipeline(store: &Arc<dyn Store>, name: &str) -> Result<i64, StoreError> {
    let v = store
        .register_pipeline_version(name, &format!("hash-{name}-1"), "spec: 1", "/base", false)
        .await?;
    Ok(v.version)
}

fn slice(path: &str, index: u32) -> BatchSlice {
    BatchSlice {
        path: path.to_string(),
        index,
        byte_start: u64::from(index) * 100,
        byte_end: u64::from(index + 1) * 100,
        row_start: u64::from(index) * 10,
        row_count: 10,
    }
}

/// Queues `n` batches of file `path`; returns their ids in queue order.
async fn queue(
    store: &Arc<dyn Store>,
    pipeline: &str,
    version: i64,
    path: &str,
    n: u32,
    max_attempts: i32,
) -> Result<Vec<BatchId>, StoreError> {
    let tasks: Vec<NewTask> = (0..n)
        .map(|i| {
            let slice = slice(path, i);
            NewTask {
                batch_id: BatchId::derive(pipeline, path, &slice),
                slice,
            }
        })
        .collect();
    let file = NewFile {
        pipeline: pipeline.to_string(),
        path: path.to_string(),
        size: i64::from(n) * 100,
        modified_ms: 1_700_000_000_000,
        ..NewFile::default()
    };
    assert!(
        store
            .register_file(&file, version, max_attempts, &tasks)
            .await?
    );
    Ok(tasks.into_iter().map(|t| t.batch_id).collect())
}

fn worker(n: usize) -> WorkerId {
    WorkerId::new("testhost", 4242, n)
}

fn request(worker_n: usize, limit: usize, lease_for: Duration) -> LeaseRequest {
    LeaseRequest {
        worker: worker(worker_n),
        pipelines: None,
        limit,
        lease_for,
    }
}

fn report(outcome: BatchOutcome, rows: i64, error: Option<&str>) -> RunReport {
    let now = sluice_core::now_millis();
    RunReport {
        started_at: now - 50,
        finished_at: now,
        rows_in: rows,
        rows_out: rows / 2,
        outcome,
        error: error.map(str::to_string),
        cpu_us: None,
        peak_memory_bytes: None,
    }
}

fn ids(leases: &[Lease]) -> Vec<BatchId> {
    leases.iter().map(|l| l.batch_id.clone()).collect()
}

async fn lease_one(store: &Arc<dyn Store>, worker_n: usize, lease_for: Duration) -> Lease {
    let mut leases = store
        .lease(&request(worker_n, 1, lease_for))
        .await
        .expect("leasing");
    assert_eq!(leases.len(), 1, "expected one task to lease");
    leases.remove(0)
}

async fn state_of(store: &Arc<dyn Store>, batch: &BatchId) -> TaskState {
    store
        .task(batch)
        .await
        .expect("reading task")
        .expect("task exists")
        .state
}

// ---- migrations and versions ----

async fn migrations_are_idempotent(h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/a.csv", 2, 3).await?;
    // A second open runs the migrator again on a migrated store: it must change nothing.
    let again = h.open_again().await;
    let third = h.open_again().await;
    assert_eq!(again.tasks("orders", None).await?.len(), 2);
    assert_eq!(
        third.pipeline("orders").await?.map(|p| p.current_version),
        Some(1)
    );
    // and both handles write to the same data
    queue(&again, "orders", v, "/in/b.csv", 1, 3).await?;
    assert_eq!(store.tasks("orders", None).await?.len(), 3);
    Ok(())
}

async fn version_registration_is_idempotent_by_hash(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    assert_eq!(store.pipeline("orders").await?, None);
    let v1 = store
        .register_pipeline_version("orders", "h1", "spec one", "/base1", false)
        .await?;
    assert_eq!(v1.version, 1);
    assert_eq!(v1.spec, "spec one");
    assert_eq!(v1.base_dir, "/base1");
    let same = store
        .register_pipeline_version("orders", "h1", "spec one, reformatted", "/elsewhere", false)
        .await?;
    assert_eq!(
        same, v1,
        "same hash must return the stored version unchanged"
    );
    let v2 = store
        .register_pipeline_version("orders", "h2", "spec two", "/base2", false)
        .await?;
    assert_eq!(v2.version, 2);
    // back to an old spec: still version 1, not a new number
    let back = store
        .register_pipeline_version("orders", "h1", "spec one", "/base1", false)
        .await?;
    assert_eq!(back.version, 1);
    let v3 = store
        .register_pipeline_version("orders", "h3", "spec three", "/base3", false)
        .await?;
    assert_eq!(v3.version, 3);
    // numbering is per pipeline, and so is hash identity
    let other = store
        .register_pipeline_version("users", "h1", "spec one", "/base1", false)
        .await?;
    assert_eq!(other.version, 1);
    assert_eq!(store.pipeline_version("orders", 2).await?, Some(v2));
    assert_eq!(store.pipeline_version("orders", 4).await?, None);
    let names: Vec<String> = store
        .pipelines()
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["orders", "users"]);
    Ok(())
}

async fn current_version_rules(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    store
        .register_pipeline_version("orders", "h1", "s1", "/b", false)
        .await?;
    let p = store.pipeline("orders").await?.ok_or("pipeline missing")?;
    assert_eq!(
        p.current_version, 1,
        "a new pipeline's first version is current"
    );
    store
        .register_pipeline_version("orders", "h2", "s2", "/b", false)
        .await?;
    assert_eq!(
        store
            .pipeline("orders")
            .await?
            .ok_or("missing")?
            .current_version,
        1
    );
    store
        .register_pipeline_version("orders", "h3", "s3", "/b", true)
        .await?;
    assert_eq!(
        store
            .pipeline("orders")
            .await?
            .ok_or("missing")?
            .current_version,
        3
    );
    store.set_current_version("orders", 2).await?;
    assert_eq!(
        store
            .pipeline("orders")
            .await?
            .ok_or("missing")?
            .current_version,
        2
    );
    // an existing hash with make_current switches back to it
    store
        .register_pipeline_version("orders", "h1", "s1", "/b", true)
        .await?;
    assert_eq!(
        store
            .pipeline("orders")
            .await?
            .ok_or("missing")?
            .current_version,
        1
    );
    let err = store.set_current_version("orders", 9).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::User);
    assert!(store.set_current_version("nope", 1).await.is_err());
    assert_eq!(
        store
            .pipeline("orders")
            .await?
            .ok_or("missing")?
            .current_version,
        1
    );
    Ok(())
}

async fn concurrent_registration_agrees(h: &Harness, store: Arc<dyn Store>) -> TestResult {
    // Two "processes", each registering the same specs at the same time.
    let other = h.open_again().await;
    let mut calls = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let hash = format!("h{}", i % 4);
        calls.push(tokio::spawn(async move {
            s.register_pipeline_version("orders", &hash, "spec", "/b", false)
                .await
                .map(|v| (hash, v.version))
        }));
    }
    let mut by_hash: HashMap<String, HashSet<i64>> = HashMap::new();
    for call in calls {
        let (hash, version) = call.await??;
        by_hash.entry(hash).or_default().insert(version);
    }
    assert_eq!(by_hash.len(), 4);
    let mut versions: Vec<i64> = Vec::new();
    for (hash, vs) in &by_hash {
        assert_eq!(vs.len(), 1, "hash {hash} got several versions: {vs:?}");
        versions.extend(vs);
    }
    versions.sort();
    assert_eq!(
        versions,
        [1, 2, 3, 4],
        "four hashes get four consecutive versions"
    );
    assert_eq!(
        store
            .pipeline("orders")
            .await?
            .ok_or("missing")?
            .current_version,
        1
    );
    Ok(())
}

// ---- files and queue ----

async fn register_file_is_atomic_and_idempotent(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    let ids_a = queue(&store, "orders", v, "/in/a.csv", 3, 5).await?;
    let tasks = store.tasks("orders", None).await?;
    assert_eq!(tasks.len(), 3);
    for (t, id) in tasks.iter().zip(&ids_a) {
        assert_eq!(&t.batch_id, id);
        assert_eq!(t.state, TaskState::Pending);
        assert_eq!(t.version, v);
        assert_eq!(t.attempts, 0);
        assert_eq!(t.max_attempts, 5);
        assert_eq!(t.lease_owner, None);
        assert_eq!(t.rows_in, None);
    }
    assert_eq!(tasks[2].slice, slice("/in/a.csv", 2));

    // The same path again queues nothing, even with different slices.
    let again = NewFile {
        pipeline: "orders".into(),
        path: "/in/a.csv".into(),
        size: 1,
        modified_ms: 2,
        ..NewFile::default()
    };
    let extra = NewTask {
        batch_id: BatchId("b-extra".into()),
        slice: slice("/in/a.csv", 9),
    };
    assert!(
        !store
            .register_file(&again, v, 5, std::slice::from_ref(&extra))
            .await?
    );
    assert_eq!(store.task(&extra.batch_id).await?, None);
    assert_eq!(store.tasks("orders", None).await?.len(), 3);

    // A batch id already queued (through another file) is skipped, the rest is queued.
    let b = NewFile {
        pipeline: "orders".into(),
        path: "/in/b.csv".into(),
        size: 1,
        modified_ms: 2,
        ..NewFile::default()
    };
    let dup = NewTask {
        batch_id: ids_a[0].clone(),
        slice: slice("/in/b.csv", 0),
    };
    let new = NewTask {
        batch_id: BatchId("b-new".into()),
        slice: slice("/in/b.csv", 1),
    };
    assert!(store.register_file(&b, v, 5, &[dup, new.clone()]).await?);
    assert_eq!(store.tasks("orders", None).await?.len(), 4);
    let kept = store.task(&ids_a[0]).await?.ok_or("missing")?;
    assert_eq!(kept.slice.path, "/in/a.csv", "the first queueing wins");

    // A slice the store cannot hold fails the whole file: nothing of it is taken in.
    let c = NewFile {
        pipeline: "orders".into(),
        path: "/in/c.csv".into(),
        size: 1,
        modified_ms: 2,
        ..NewFile::default()
    };
    let good = NewTask {
        batch_id: BatchId("b-good".into()),
        slice: slice("/in/c.csv", 0),
    };
    let mut huge = slice("/in/c.csv", 1);
    huge.byte_end = u64::MAX;
    let bad = NewTask {
        batch_id: BatchId("b-bad".into()),
        slice: huge,
    };
    assert!(
        store
            .register_file(&c, v, 5, &[good.clone(), bad])
            .await
            .is_err()
    );
    assert_eq!(store.task(&good.batch_id).await?, None);
    assert_eq!(
        store.known_files("orders").await?,
        ["/in/a.csv", "/in/b.csv"]
    );
    // ... and the file can be taken in once fixed.
    assert!(
        store
            .register_file(&c, v, 5, std::slice::from_ref(&good))
            .await?
    );
    assert_eq!(store.known_files("orders").await?.len(), 3);
    assert!(store.known_files("users").await?.is_empty());
    Ok(())
}

async fn register_file_refuses_unknown_version(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    let file = NewFile {
        pipeline: "orders".into(),
        path: "/in/a.csv".into(),
        size: 1,
        modified_ms: 1,
        ..NewFile::default()
    };
    let task = NewTask {
        batch_id: BatchId("b-1".into()),
        slice: slice("/in/a.csv", 0),
    };
    let err = store
        .register_file(&file, v + 1, 3, std::slice::from_ref(&task))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("orders@2"), "{err}");
    assert!(store.known_files("orders").await?.is_empty());
    assert_eq!(store.task(&task.batch_id).await?, None);
    Ok(())
}

async fn lease_is_fifo_and_limited(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    let mut all = queue(&store, "orders", v, "/in/b.csv", 3, 3).await?;
    all.extend(queue(&store, "orders", v, "/in/a.csv", 2, 3).await?);

    assert!(store.lease(&request(1, 0, LONG)).await?.is_empty());
    let before = store.now().await?;
    let first = store.lease(&request(1, 2, LONG)).await?;
    assert_eq!(ids(&first), all[..2], "oldest first, at most `limit`");
    for l in &first {
        assert_eq!(l.attempt, 1);
        assert_eq!(l.max_attempts, 3);
        assert_eq!(l.worker, worker(1));
        assert_eq!(l.pipeline, "orders");
        assert_eq!(l.version, v);
        assert!(
            l.expires_at >= before + 60_000,
            "expires_at {}",
            l.expires_at
        );
        assert!(l.expires_at <= store.now().await? + 60_000);
        let t = store.task(&l.batch_id).await?.ok_or("missing")?;
        assert_eq!(t.state, TaskState::Leased);
        assert_eq!(t.attempts, 1);
        assert_eq!(t.lease_owner, Some(worker(1)));
    }
    assert_ne!(first[0].token, first[1].token);
    assert_eq!(first[1].slice, slice("/in/b.csv", 1));

    let rest = store.lease(&request(2, 10, LONG)).await?;
    assert_eq!(ids(&rest), all[2..]);
    assert!(
        store.lease(&request(3, 10, LONG)).await?.is_empty(),
        "nothing left"
    );
    Ok(())
}

async fn lease_filters_by_pipeline(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let a = pipeline(&store, "alpha").await?;
    let b = pipeline(&store, "beta").await?;
    let c = pipeline(&store, "gamma").await?;
    queue(&store, "alpha", a, "/in/a.csv", 2, 3).await?;
    let beta = queue(&store, "beta", b, "/in/b.csv", 2, 3).await?;
    let gamma = queue(&store, "gamma", c, "/in/c.csv", 1, 3).await?;

    let mut req = request(1, 10, LONG);
    req.pipelines = Some(vec![]);
    assert!(
        store.lease(&req).await?.is_empty(),
        "an empty filter matches nothing"
    );
    req.pipelines = Some(vec!["beta".into()]);
    let got = store.lease(&req).await?;
    assert_eq!(ids(&got), beta);
    assert!(got.iter().all(|l| l.pipeline == "beta"));
    req.pipelines = Some(vec!["gamma".into(), "nope".into()]);
    assert_eq!(ids(&store.lease(&req).await?), gamma);
    req.pipelines = None;
    let rest = store.lease(&req).await?;
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|l| l.pipeline == "alpha"));
    Ok(())
}

async fn lease_respects_backoff(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    let [id] = <[BatchId; 1]>::try_from(queue(&store, "orders", v, "/in/a.csv", 1, 3).await?)
        .map_err(|_| "one task")?;
    let lease = lease_one(&store, 1, LONG).await;
    let d = store
        .fail(
            &lease,
            &report(BatchOutcome::Failed, 0, Some("disk hiccup")),
            ErrorKind::External,
            false,
            Duration::from_millis(1500),
        )
        .await?;
    assert_eq!(d, FailDisposition::Retrying);
    assert_eq!(state_of(&store, &id).await, TaskState::Pending);
    assert!(
        store.lease(&request(1, 5, LONG)).await?.is_empty(),
        "a backed-off task is not leasable yet"
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let again = lease_one(&store, 2, LONG).await;
    assert_eq!(again.batch_id, id);
    assert_eq!(again.attempt, 2);
    assert_ne!(again.token, lease.token);
    Ok(())
}

async fn heartbeat_extends_and_is_fenced(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/a.csv", 1, 3).await?;
    let lease = lease_one(&store, 1, Duration::from_millis(300)).await;
    assert!(
        store
            .heartbeat(&lease.batch_id, &lease.token, Duration::from_secs(30))
            .await?
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        store.rescue_expired().await?,
        0,
        "the heartbeat extended the lease"
    );
    assert_eq!(state_of(&store, &lease.batch_id).await, TaskState::Leased);

    let stale = LeaseToken::random();
    assert!(
        !store
            .heartbeat(&lease.batch_id, &stale, Duration::from_secs(30))
            .await?
    );
    assert!(
        !store
            .heartbeat(&BatchId("b-unknown".into()), &lease.token, LONG)
            .await?
    );
    assert!(
        store
            .complete(&lease, &report(BatchOutcome::Committed, 4, None))
            .await?
    );
    assert!(
        !store.heartbeat(&lease.batch_id, &lease.token, LONG).await?,
        "a finished lease cannot be extended"
    );
    assert_eq!(state_of(&store, &lease.batch_id).await, TaskState::Done);
    Ok(())
}

/// A lease or back-off longer than the store's numbers reach (`Duration::MAX`, from a spec's
/// `batch.lease` of a million years) means forever on both backends: PostgreSQL once refused
/// the clock plus it as out of range.
async fn durations_past_any_clock_mean_forever(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/a.csv", 1, 3).await?;
    let century_ms = 100 * 365 * 24 * 3600 * 1000_i64;
    let lease = lease_one(&store, 1, Duration::MAX).await;
    assert!(lease.expires_at > store.now().await? + century_ms);
    assert!(
        store
            .heartbeat(&lease.batch_id, &lease.token, Duration::MAX)
            .await?
    );
    assert_eq!(store.rescue_expired().await?, 0, "held forever");
    let d = store
        .fail(
            &lease,
            &report(BatchOutcome::Failed, 0, Some("disk hiccup")),
            ErrorKind::External,
            false,
            Duration::MAX,
        )
        .await?;
    assert_eq!(d, FailDisposition::Retrying);
    assert!(
        store.lease(&request(1, 5, LONG)).await?.is_empty(),
        "backed off forever"
    );
    Ok(())
}

async fn complete_is_fenced(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/a.csv", 1, 3).await?;
    let old = lease_one(&store, 1, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.rescue_expired().await?, 1);
    let new = lease_one(&store, 2, LONG).await;
    assert_eq!(new.batch_id, old.batch_id);
    assert_eq!(new.attempt, 2);

    // The old holder reports late: recorded, but the task stays with the new holder.
    assert!(
        !store
            .complete(&old, &report(BatchOutcome::Committed, 10, None))
            .await?
    );
    let t = store.task(&old.batch_id).await?.ok_or("missing")?;
    assert_eq!(t.state, TaskState::Leased);
    assert_eq!(t.lease_owner, Some(worker(2)));
    assert_eq!(t.rows_in, None);
    let d = store
        .fail(
            &old,
            &report(BatchOutcome::Failed, 0, Some("late")),
            ErrorKind::External,
            true,
            Duration::ZERO,
        )
        .await?;
    assert_eq!(d, FailDisposition::LeaseLost);
    store.release(&old).await?;
    let t = store.task(&old.batch_id).await?.ok_or("missing")?;
    assert_eq!(
        (t.state, t.attempts),
        (TaskState::Leased, 2),
        "stale calls change nothing"
    );
    assert!(
        t.last_error
            .as_deref()
            .is_some_and(|e| e.contains("lease expired")),
        "the stale failure must not overwrite the task's error: {:?}",
        t.last_error
    );

    assert!(
        store
            .complete(&new, &report(BatchOutcome::Committed, 10, None))
            .await?
    );
    let t = store.task(&new.batch_id).await?.ok_or("missing")?;
    assert_eq!(t.state, TaskState::Done);
    assert_eq!((t.rows_in, t.rows_out), (Some(10), Some(5)));
    assert_eq!(t.lease_owner, None);
    assert!(
        !store
            .complete(&new, &report(BatchOutcome::Committed, 99, None))
            .await?,
        "completing twice is refused"
    );
    assert_eq!(
        store.task(&new.batch_id).await?.ok_or("missing")?.rows_in,
        Some(10)
    );

    // Every report was recorded: the late one, the late failure, and the real and the repeated completion.
    let runs = store.batch_runs("orders", 100).await?;
    let outcomes: Vec<(String, BatchOutcome)> = runs
        .iter()
        .map(|r| (r.worker.0.clone(), r.outcome))
        .collect();
    assert_eq!(runs.len(), 5, "{outcomes:?}");
    assert_eq!(
        runs.iter()
            .filter(|r| r.outcome == BatchOutcome::Expired)
            .count(),
        1
    );
    assert_eq!(
        runs.iter()
            .filter(|r| r.outcome == BatchOutcome::Committed && r.worker == worker(1))
            .count(),
        1
    );
    Ok(())
}

async fn fail_retries_then_quarantines(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/a.csv", 1, 3).await?;
    for attempt in 1..=3 {
        let lease = lease_one(&store, 1, LONG).await;
        assert_eq!(lease.attempt, attempt);
        let d = store
            .fail(
                &lease,
                &report(BatchOutcome::Failed, 0, Some(&format!("boom {attempt}"))),
                ErrorKind::External,
                false,
                Duration::ZERO,
            )
            .await?;
        let t = store.task(&lease.batch_id).await?.ok_or("missing")?;
        assert_eq!(
            t.last_error.as_deref(),
            Some(format!("boom {attempt}").as_str())
        );
        assert_eq!(t.error_kind, Some(ErrorKind::External));
        assert_eq!(t.lease_owner, None);
        if attempt < 3 {
            assert_eq!(d, FailDisposition::Retrying);
            assert_eq!(t.state, TaskState::Pending);
        } else {
            assert_eq!(d, FailDisposition::Quarantined, "max_attempts used up");
            assert_eq!(t.state, TaskState::Quarantined);
        }
    }
    assert!(store.lease(&request(1, 5, LONG)).await?.is_empty());
    let runs = store.batch_runs("orders", 10).await?;
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r.outcome == BatchOutcome::Failed));
    let mut attempts: Vec<i32> = runs.iter().map(|r| r.attempt).collect();
    attempts.sort();
    assert_eq!(attempts, [1, 2, 3]);
    Ok(())
}

async fn fail_with_quarantine_is_immediate(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/a.csv", 1, 5).await?;
    let lease = lease_one(&store, 1, LONG).await;
    let d = store
        .fail(
            &lease,
            &report(BatchOutcome::Quarantined, 10, Some("line 3: not a number")),
            ErrorKind::User,
            true,
            Duration::ZERO,
        )
        .await?;
    assert_eq!(d, FailDisposition::Quarantined);
    let t = store.task(&lease.batch_id).await?.ok_or("missing")?;
    assert_eq!(t.state, TaskState::Quarantined);
    assert_eq!(t.attempts, 1);
    assert_eq!(t.error_kind, Some(ErrorKind::User));
    assert_eq!(t.last_error.as_deref(), Some("line 3: not a number"));
    assert!(store.lease(&request(1, 5, LONG)).await?.is_empty());
    let q = store.tasks("orders", Some(TaskState::Quarantined)).await?;
    assert_eq!(q.len(), 1);
    assert!(
        store
            .tasks("orders", Some(TaskState::Pending))
            .await?
            .is_empty()
    );
    Ok(())
}

async fn release_returns_the_attempt(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/a.csv", 1, 1).await?;
    let lease = lease_one(&store, 1, LONG).await;
    store.release(&lease).await?;
    let t = store.task(&lease.batch_id).await?.ok_or("missing")?;
    assert_eq!(t.state, TaskState::Pending);
    assert_eq!(t.attempts, 0, "a released lease does not count");
    assert_eq!(t.lease_owner, None);
    // max_attempts is 1: had the release counted, this failure would not be the first attempt
    let again = lease_one(&store, 2, LONG).await;
    assert_eq!(again.attempt, 1);
    assert!(
        !store.heartbeat(&lease.batch_id, &lease.token, LONG).await?,
        "the released token is dead"
    );
    assert!(
        store.batch_runs("orders", 10).await?.is_empty(),
        "a release is not a run"
    );
    Ok(())
}

async fn rescue_expired_requeues(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/a.csv", 2, 3).await?;
    // long enough that a busy machine cannot expire it before the "not yet" check
    let short = lease_one(&store, 1, Duration::from_millis(800)).await;
    let live = lease_one(&store, 2, LONG).await;
    assert_eq!(store.rescue_expired().await?, 0, "nothing expired yet");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.rescue_expired().await?, 1);
    assert_eq!(store.rescue_expired().await?, 0, "rescued once");

    let t = store.task(&short.batch_id).await?.ok_or("missing")?;
    assert_eq!(t.state, TaskState::Pending);
    assert_eq!(t.lease_owner, None);
    assert_eq!(t.attempts, 1, "the expired attempt counts");
    assert!(
        t.last_error
            .as_deref()
            .is_some_and(|e| e.contains("lease expired"))
    );
    assert_eq!(state_of(&store, &live.batch_id).await, TaskState::Leased);

    let runs = store.batch_runs("orders", 10).await?;
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.outcome, BatchOutcome::Expired);
    assert_eq!(
        run.worker,
        worker(1),
        "the run names the worker that lost the lease"
    );
    assert_eq!(run.batch_id, short.batch_id);
    assert_eq!(run.attempt, 1);
    assert!(run.duration_ms >= 800, "duration {}", run.duration_ms);

    let again = lease_one(&store, 3, LONG).await;
    assert_eq!(again.batch_id, short.batch_id);
    assert_eq!(again.attempt, 2);
    Ok(())
}

async fn rescue_expired_quarantines_after_max_attempts(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/a.csv", 1, 2).await?;
    for attempt in 1..=2 {
        let lease = lease_one(&store, attempt, Duration::from_millis(50)).await;
        assert_eq!(lease.attempt, attempt as i32);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(store.rescue_expired().await?, 1);
    }
    let t = &store.tasks("orders", None).await?[0];
    assert_eq!(t.state, TaskState::Quarantined);
    let error = t.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("lease expired 2 times"), "{error}");
    assert!(store.lease(&request(1, 5, LONG)).await?.is_empty());
    let runs = store.batch_runs("orders", 10).await?;
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.outcome == BatchOutcome::Expired));
    Ok(())
}

async fn retry_routes_the_batch_again(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v1 = pipeline(&store, "orders").await?;
    let u1 = pipeline(&store, "users").await?;
    let ids = queue(&store, "orders", v1, "/in/a.csv", 3, 3).await?;
    let users = queue(&store, "users", u1, "/in/u.csv", 1, 3).await?;
    for _ in 0..4 {
        let lease = lease_one(&store, 1, LONG).await;
        quarantine(&store, &lease).await?;
    }
    assert_eq!(
        store
            .tasks("orders", Some(TaskState::Quarantined))
            .await?
            .len(),
        3
    );

    // A fixed spec, registered but not current yet: the retried batch waits for the router,
    // with the current version meanwhile.
    let v2 = store
        .register_pipeline_version("orders", "fixed", "spec 2", "/b", false)
        .await?
        .version;
    assert_eq!(store.retry(&RetryTarget::Batch(ids[0].clone())).await?, 1);
    let t = store.task(&ids[0]).await?.ok_or("missing")?;
    assert_eq!(
        (t.state, t.version, t.attempts, t.routed_at),
        (TaskState::Pending, v1, 0, None)
    );
    assert_eq!((t.last_error, t.error_kind), (None, None));
    assert_eq!(
        store.retry(&RetryTarget::Batch(ids[0].clone())).await?,
        0,
        "not quarantined"
    );
    assert_eq!(
        store
            .retry(&RetryTarget::Batch(BatchId("b-nope".into())))
            .await?,
        0
    );

    store.set_current_version("orders", v2).await?;
    assert_eq!(store.retry(&RetryTarget::Batch(ids[1].clone())).await?, 1);
    assert_eq!(store.task(&ids[1]).await?.ok_or("missing")?.version, v2);
    let mut req = request(1, 10, LONG);
    req.pipelines = Some(vec!["orders".into()]);
    let leased = store.lease(&req).await?;
    assert_eq!(
        leased
            .iter()
            .map(|l| (l.batch_id.clone(), l.version, l.attempt))
            .collect::<Vec<_>>(),
        [(ids[0].clone(), v2, 1), (ids[1].clone(), v2, 1)],
        "a retried batch runs with fresh attempts under the version the router chose when it \
         was leased: the current one (v2 by then, for the batch retried under v1 too)"
    );

    assert_eq!(
        store
            .retry(&RetryTarget::All {
                pipeline: Some("orders".into())
            })
            .await?,
        1
    );
    assert_eq!(store.task(&ids[2]).await?.ok_or("missing")?.version, v2);
    assert_eq!(state_of(&store, &users[0]).await, TaskState::Quarantined);
    assert_eq!(store.retry(&RetryTarget::All { pipeline: None }).await?, 1);
    assert_eq!(state_of(&store, &users[0]).await, TaskState::Pending);
    assert_eq!(store.retry(&RetryTarget::All { pipeline: None }).await?, 0);
    Ok(())
}

async fn status_numbers(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    pipeline(&store, "users").await?;
    queue(&store, "orders", v, "/in/a.csv", 3, 3).await?;
    queue(&store, "orders", v, "/in/b.csv", 3, 3).await?;
    let mut leases = store.lease(&request(1, 5, LONG)).await?.into_iter();
    let now = sluice_core::now_millis();
    let (a, b, c, d) = (
        leases.next().ok_or("lease")?,
        leases.next().ok_or("lease")?,
        leases.next().ok_or("lease")?,
        leases.next().ok_or("lease")?,
    );
    let run = |start: i64, finish: i64, rows: i64, outcome: BatchOutcome| RunReport {
        started_at: start,
        finished_at: finish,
        rows_in: rows,
        rows_out: rows - 1,
        outcome,
        error: None,
        cpu_us: None,
        peak_memory_bytes: None,
    };
    assert!(
        store
            .complete(
                &a,
                &run(now - 5_000, now - 4_000, 10, BatchOutcome::Committed)
            )
            .await?
    );
    assert!(
        store
            .complete(
                &b,
                &run(now - 3_000, now - 1_000, 20, BatchOutcome::AlreadyCommitted)
            )
            .await?
    );
    // a failure that started earlier and a quarantine that ended later do not widen the window
    store
        .fail(
            &c,
            &run(now - 9_000, now - 8_000, 7, BatchOutcome::Failed),
            ErrorKind::User,
            true,
            Duration::ZERO,
        )
        .await?;
    store
        .fail(
            &d,
            &run(now - 2_000, now, 7, BatchOutcome::Quarantined),
            ErrorKind::User,
            true,
            Duration::ZERO,
        )
        .await?;

    let status = store.status().await?;
    assert_eq!(status.len(), 2);
    let s = &status[0];
    assert_eq!(s.pipeline, "orders");
    assert_eq!(s.current_version, v);
    assert_eq!(s.files, 2);
    assert_eq!((s.pending, s.leased, s.done, s.quarantined), (1, 1, 2, 2));
    assert_eq!(
        (s.rows_in, s.rows_out),
        (30, 28),
        "sums over done batches only"
    );
    assert_eq!(s.first_started_at, Some(now - 5_000));
    assert_eq!(s.last_finished_at, Some(now - 1_000));
    let u = &status[1];
    assert_eq!(u.pipeline, "users");
    assert_eq!(
        (
            u.files,
            u.pending,
            u.leased,
            u.done,
            u.quarantined,
            u.rows_in
        ),
        (0, 0, 0, 0, 0, 0)
    );
    assert_eq!((u.first_started_at, u.last_finished_at), (None, None));
    Ok(())
}

// ---- counters (migration 0008) ----

/// A small deterministic generator (xorshift64*), so a failing mix can be replayed by its seed.
struct Mix(u64);

impl Mix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Durations on, just past and far past the bucket bounds.
const DURATIONS_MS: [i64; 10] = [0, 50, 51, 100, 999, 1_000, 2_501, 60_000, 900_000, 900_001];

async fn assert_no_drift(h: &Harness, when: &str) -> TestResult {
    let mut raw = testing::RawConnection::open(&h.url).await?;
    let drift = raw.counter_drift().await?;
    assert!(drift.is_empty(), "{when}: {drift:?}");
    Ok(())
}

fn run_of(duration_ms: i64, rows: i64, outcome: BatchOutcome) -> RunReport {
    let now = sluice_core::now_millis();
    RunReport {
        started_at: now - duration_ms,
        finished_at: now,
        rows_in: rows,
        rows_out: rows / 2,
        outcome,
        error: None,
        cpu_us: None,
        peak_memory_bytes: None,
    }
}

fn check_of(pipeline: &str, batch: &BatchId, kind: &str, level: &str, dropped: i64) -> CheckRecord {
    CheckRecord {
        pipeline: pipeline.into(),
        version: 1,
        batch_id: batch.clone(),
        check: format!("{kind}(x)"),
        kind: kind.into(),
        level: level.into(),
        considered: 10,
        failing: i64::from(level != "pass"),
        dropped,
        detail: String::new(),
        recorded_at: 0,
    }
}

/// Every kind of change the store makes to tasks, runs, check results and files, in a random
/// order, and the counters checked against a full recount along the way.
async fn counters_match_a_recount(h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    pipeline(&store, "users").await?;
    let fence = lead(&store, "ctl").await?;
    let mut mix = Mix(0x5EED_0008);
    let mut held: Vec<Lease> = Vec::new();
    let mut batches: Vec<(String, BatchId)> = Vec::new();
    let mut deployment: Option<DeploymentRecord> = None;
    for step in 0..400 {
        match mix.below(12) {
            0 | 1 => {
                let p = *mix.pick(&["orders", "users"]);
                let path = format!("/in/{step}.csv");
                let n = 1 + mix.below(4) as u32;
                for b in queue(&store, p, 1, &path, n, 2).await? {
                    batches.push((p.to_string(), b));
                }
            }
            2 | 3 => {
                let lease_for = if mix.below(4) == 0 {
                    Duration::from_millis(1)
                } else {
                    LONG
                };
                let limit = 1 + mix.below(3) as usize;
                held.extend(store.lease(&request(1, limit, lease_for)).await?);
            }
            4 | 5 if !held.is_empty() => {
                let l = held.swap_remove(mix.below(held.len() as u64) as usize);
                let outcome = *mix.pick(&[BatchOutcome::Committed, BatchOutcome::AlreadyCommitted]);
                let d = *mix.pick(&DURATIONS_MS);
                store
                    .complete(&l, &run_of(d, mix.below(1_000) as i64, outcome))
                    .await?;
            }
            6 if !held.is_empty() => {
                let l = held.swap_remove(mix.below(held.len() as u64) as usize);
                let quarantine = mix.below(2) == 0;
                let outcome = if quarantine {
                    BatchOutcome::Quarantined
                } else {
                    BatchOutcome::Failed
                };
                let d = *mix.pick(&DURATIONS_MS);
                store
                    .fail(
                        &l,
                        &run_of(d, 3, outcome),
                        ErrorKind::User,
                        quarantine,
                        Duration::ZERO,
                    )
                    .await?;
            }
            7 if !held.is_empty() => {
                let l = held.swap_remove(mix.below(held.len() as u64) as usize);
                if mix.below(2) == 0 {
                    store.release(&l).await?;
                } else {
                    store.heartbeat(&l.batch_id, &l.token, LONG).await?;
                    held.push(l);
                }
            }
            8 => {
                tokio::time::sleep(Duration::from_millis(2)).await;
                store.rescue_expired().await?;
                store.retry(&RetryTarget::All { pipeline: None }).await?;
            }
            9 if !batches.is_empty() => {
                let (p, b) = mix.pick(&batches).clone();
                let level = *mix.pick(&["pass", "warn", "error"]);
                store
                    .record_checks(&[
                        check_of(&p, &b, "bad_rows", "pass", mix.below(6) as i64),
                        check_of(&p, &b, "not_null", level, 0),
                    ])
                    .await?;
            }
            10 => match &deployment {
                None => {
                    let weight = *mix.pick(&[0u8, 50, 100]);
                    deployment =
                        Some(deploy(&store, "orders", route(RouteMode::Batch, weight)).await?);
                }
                Some(d) => {
                    let weight = *mix.pick(&[0u8, 50, 100]);
                    let mode = *mix.pick(&[RouteMode::Batch, RouteMode::Key]);
                    set_route(&store, &fence, d, route(mode, weight)).await?;
                }
            },
            11 => {
                // The controller's rollback moves: park the candidate's retries, then requeue
                // its batches for stable.
                store.park_pending(&fence, "orders", v2).await?;
                let of_v2 = store.version_tasks("orders", v2).await?;
                let rq = Requeue {
                    pipeline: "orders".into(),
                    version: v1,
                    batches: of_v2
                        .iter()
                        .map(|t| (t.batch_id.clone(), t.generation + 1))
                        .collect(),
                };
                store.requeue(&fence, &rq).await?;
            }
            _ => {}
        }
        if step % 50 == 49 {
            assert_no_drift(h, &format!("after step {step}")).await?;
        }
    }
    assert_no_drift(h, "at the end").await?;
    // What the reads built on the counters say agrees with the tasks themselves.
    let status = store.status().await?;
    for s in &status {
        for (state, n) in [
            (TaskState::Pending, s.pending),
            (TaskState::Leased, s.leased),
            (TaskState::Done, s.done),
            (TaskState::Quarantined, s.quarantined),
        ] {
            assert_eq!(
                store.tasks(&s.pipeline, Some(state)).await?.len() as i64,
                n,
                "{} {state}",
                s.pipeline
            );
        }
    }
    let m = store.metrics(LONG).await?;
    let pending: i64 = m
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Pending)
        .map(|t| t.batches)
        .sum();
    assert_eq!(pending, status.iter().map(|s| s.pending).sum::<i64>());
    assert!(
        m.tasks.iter().all(|t| t.batches > 0),
        "no empty series: {:?}",
        m.tasks
    );
    Ok(())
}

/// Several processes leasing, completing and failing the batches of one pipeline at once: the
/// counters stay exact (PostgreSQL: concurrent transactions on the same counter rows).
async fn counters_match_a_recount_under_concurrent_workers(
    h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    for f in 0..10 {
        queue(&store, "orders", v, &format!("/in/{f}.csv"), 20, 3).await?;
    }
    let mut workers = Vec::new();
    for n in 0..4 {
        let store = h.open_again().await;
        workers.push(tokio::spawn(async move {
            let mut mix = Mix(0xC0FFEE + n as u64);
            loop {
                let leases = store
                    .lease(&request(n, 1 + mix.below(3) as usize, LONG))
                    .await?;
                if leases.is_empty() {
                    return Ok::<_, StoreError>(());
                }
                for l in leases {
                    let d = *mix.pick(&DURATIONS_MS);
                    if mix.below(5) == 0 {
                        store
                            .fail(
                                &l,
                                &run_of(d, 1, BatchOutcome::Failed),
                                ErrorKind::External,
                                false,
                                Duration::ZERO,
                            )
                            .await?;
                    } else {
                        store
                            .complete(&l, &run_of(d, 10, BatchOutcome::Committed))
                            .await?;
                        store
                            .record_checks(&[check_of(
                                "orders",
                                &l.batch_id,
                                "bad_rows",
                                "pass",
                                2,
                            )])
                            .await?;
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    assert_no_drift(h, "after the drain").await?;
    let s = store.status().await?;
    assert_eq!((s[0].pending, s[0].leased), (0, 0));
    assert_eq!(s[0].done + s[0].quarantined, 200);
    assert_eq!(
        s[0].dropped_rows,
        2 * s[0].done,
        "each done batch's 2 dropped rows, once"
    );
    Ok(())
}

/// A store an older sluice filled (migrations up to 0007, history written as it wrote it) gets
/// counters that match its history when it is opened and migrated.
async fn migration_counts_the_history_already_there(
    _h: &Harness,
    _store: Arc<dyn Store>,
) -> TestResult {
    let (url, _dir) = match _h.store.backend() {
        "sqlite" => {
            let dir = tempfile::tempdir()?;
            (
                format!("sqlite://{}", dir.path().join("old.db").display()),
                Some(dir),
            )
        }
        _ => (
            testing::fresh_postgres_url()
                .await?
                .ok_or("no PostgreSQL")?,
            None,
        ),
    };
    let mut raw = testing::RawConnection::open(&url).await?;
    raw.migrate_up_to(7).await?;
    for p in ["orders", "users"] {
        raw.execute(&format!("INSERT INTO pipelines VALUES ('{p}', 2, 1)"))
            .await?;
        for v in [1, 2] {
            raw.execute(&format!(
                "INSERT INTO pipeline_versions VALUES ('{p}', {v}, 'h{v}', 'spec', '/b', 1)"
            ))
            .await?;
        }
    }
    let mut mix = Mix(7);
    let states = ["pending", "leased", "done", "quarantined"];
    for i in 0..300 {
        let p = *mix.pick(&["orders", "users"]);
        let v = 1 + mix.below(2);
        let state = *mix.pick(&states);
        let rows = if state == "done" {
            format!("{}, {}", mix.below(100), mix.below(50))
        } else {
            "NULL, NULL".into()
        };
        if i % 3 == 0 {
            raw.execute(&format!(
                "INSERT INTO files (pipeline, path, size, modified_ms, registered_at) \
                 VALUES ('{p}', '/in/{i}.csv', 10, 1, 1)"
            ))
            .await?;
        }
        raw.execute(&format!(
            "INSERT INTO tasks (batch_id, pipeline, version, path, slice_index, byte_start, byte_end, \
             row_start, row_count, state, max_attempts, run_after, rows_in, rows_out, created_at, \
             updated_at) VALUES ('b{i}', '{p}', {v}, '/in/{i}.csv', 0, 0, 10, 0, 1, '{state}', 3, 0, \
             {rows}, {i}, {i})"
        ))
        .await?;
        for run in 0..mix.below(3) {
            let outcome = *mix.pick(&["committed", "already_committed", "failed", "expired"]);
            let d = *mix.pick(&DURATIONS_MS);
            raw.execute(&format!(
                "INSERT INTO batch_runs (batch_id, pipeline, version, worker, attempt, started_at, \
                 finished_at, duration_ms, rows_in, rows_out, outcome) VALUES ('b{i}', '{p}', {v}, \
                 'w', {run}, {}, {}, {d}, 5, 4, '{outcome}')",
                1_000 + i,
                1_000 + i + d
            ))
            .await?;
            let level = *mix.pick(&["pass", "warn", "error"]);
            raw.execute(&format!(
                "INSERT INTO check_results (pipeline, version, batch_id, check_name, kind, level, \
                 considered, failing, dropped, detail, recorded_at) VALUES \
                 ('{p}', {v}, 'b{i}', 'bad_rows', 'bad_rows', '{level}', 10, 1, {}, '', {i})",
                mix.below(5)
            ))
            .await?;
        }
    }
    let before = raw
        .scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM tasks")
        .await?;
    assert_eq!(before, 300);
    // Opening migrates to 0008, whose backfill counts what is there.
    let store = sluice_store::open(&url).await?;
    assert_eq!(raw.counter_drift().await?, Vec::<String>::new());
    let status = store.status().await?;
    let count = |p: &str, s: &str| {
        format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM tasks WHERE pipeline = '{p}' AND state = '{s}'"
        )
    };
    for st in &status {
        assert_eq!(
            st.pending,
            raw.scalar(&count(&st.pipeline, "pending")).await?
        );
        assert_eq!(st.done, raw.scalar(&count(&st.pipeline, "done")).await?);
        assert!(st.files > 0 && st.first_started_at.is_some());
    }
    // And the counters go on from there.
    let lease = lease_one(&store, 1, LONG).await;
    store
        .complete(&lease, &report(BatchOutcome::Committed, 5, None))
        .await?;
    assert_eq!(raw.counter_drift().await?, Vec::<String>::new());
    drop(store);
    if url.starts_with("postgres") {
        drop(raw);
        let _ = testing::drop_postgres_database(&url).await;
    }
    Ok(())
}

async fn workers_upsert(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    assert!(store.workers().await?.is_empty());
    let beat = |n: usize, state: &str| WorkerBeat {
        worker: worker(n),
        host: "testhost".into(),
        pid: 4242,
        state: state.into(),
    };
    store.worker_heartbeat(&beat(1, "running")).await?;
    store.worker_heartbeat(&beat(2, "running")).await?;
    let first = store.workers().await?;
    assert_eq!(first.len(), 2);
    tokio::time::sleep(Duration::from_millis(30)).await;
    store.worker_heartbeat(&beat(1, "draining")).await?;
    let second = store.workers().await?;
    assert_eq!(second.len(), 2);
    let (w1_before, w1) = (&first[0], &second[0]);
    assert_eq!(w1.worker, worker(1));
    assert_eq!(w1.state, "draining");
    assert_eq!(w1.pid, 4242);
    assert_eq!(
        w1.started_at, w1_before.started_at,
        "started_at is kept from the first beat"
    );
    assert!(w1.last_heartbeat >= w1_before.last_heartbeat + 20);
    assert_eq!(second[1].state, "running");
    assert_eq!(second[1].last_heartbeat, first[1].last_heartbeat);
    Ok(())
}

async fn check_results_history(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let record = |version: i64, batch: &str, level: &str, failing: i64| CheckRecord {
        pipeline: "orders".into(),
        version,
        batch_id: BatchId(batch.into()),
        check: "not_null(email)".into(),
        kind: "not_null".into(),
        level: level.into(),
        considered: 100,
        failing,
        dropped: 0,
        detail: format!("{failing} of 100 row(s) fail"),
        recorded_at: 0,
    };
    store.record_checks(&[]).await?;
    store
        .record_checks(&[record(1, "b1", "pass", 0), record(1, "b2", "error", 3)])
        .await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.record_checks(&[record(2, "b3", "warn", 1)]).await?;
    let all = store.check_results("orders", None, 10).await?;
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].batch_id.0, "b3", "newest first");
    assert!(
        all.iter().all(|r| r.recorded_at > 0),
        "the store stamps records"
    );
    let v1 = store.check_results("orders", Some(1), 10).await?;
    assert_eq!(v1.len(), 2);
    assert_eq!(v1.iter().map(|r| r.failing).sum::<i64>(), 3);
    assert_eq!(v1[0].detail, "3 of 100 row(s) fail");
    assert_eq!(store.check_results("orders", Some(1), 1).await?.len(), 1);
    assert!(store.check_results("users", None, 10).await?.is_empty());
    assert!(store.check_results("orders", None, -1).await?.is_empty());
    Ok(())
}

async fn batch_runs_history(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    pipeline(&store, "users").await?;
    queue(&store, "orders", v, "/in/a.csv", 3, 3).await?;
    let base = sluice_core::now_millis();
    for i in 0..3 {
        let lease = lease_one(&store, i, LONG).await;
        let rep = RunReport {
            started_at: base + i as i64 * 1000,
            finished_at: base + i as i64 * 1000 + 250,
            rows_in: 100 + i as i64,
            rows_out: 90,
            outcome: BatchOutcome::Committed,
            error: None,
            cpu_us: None,
            peak_memory_bytes: None,
        };
        assert!(store.complete(&lease, &rep).await?);
    }
    let runs = store.batch_runs("orders", 2).await?;
    assert_eq!(runs.len(), 2, "limit");
    assert_eq!(runs[0].finished_at, base + 2250, "newest first");
    assert_eq!(runs[1].finished_at, base + 1250);
    let r = &runs[0];
    assert_eq!((r.rows_in, r.rows_out, r.duration_ms), (102, 90, 250));
    assert_eq!((r.worker.clone(), r.attempt, r.version), (worker(2), 1, v));
    assert_eq!(r.pipeline, "orders");
    assert_eq!(r.error, None);
    assert_eq!(store.batch_runs("orders", 100).await?.len(), 3);
    assert!(store.batch_runs("orders", 0).await?.is_empty());
    assert!(store.batch_runs("orders", -1).await?.is_empty());
    assert!(store.batch_runs("users", 100).await?.is_empty());
    Ok(())
}

/// Leasers on two store handles (two "processes") drain the queue concurrently. While a lease is
/// live no one else may hold its batch, and every batch is completed exactly once.
async fn concurrent_leasers_drain_the_queue(h: &Harness, store: Arc<dyn Store>) -> TestResult {
    const TASKS: u32 = 200;
    const LEASERS: usize = 6;
    let v = pipeline(&store, "orders").await?;
    let mut all = Vec::new();
    for f in 0..4 {
        all.extend(queue(&store, "orders", v, &format!("/in/{f}.csv"), TASKS / 4, 3).await?);
    }
    let other = h.open_again().await;
    let held: Arc<Mutex<HashSet<BatchId>>> = Arc::default();
    let completed: Arc<Mutex<HashMap<BatchId, usize>>> = Arc::default();
    let mut leasers = Vec::new();
    for n in 0..LEASERS {
        let s = if n % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let held = held.clone();
        let completed = completed.clone();
        leasers.push(tokio::spawn(async move {
            let mut empty_rounds = 0;
            while empty_rounds < 3 {
                let leases = s.lease(&request(n, 4, LONG)).await?;
                if leases.is_empty() {
                    empty_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                empty_rounds = 0;
                for l in &leases {
                    let fresh = held
                        .lock()
                        .map_err(|_| "poisoned")?
                        .insert(l.batch_id.clone());
                    assert!(
                        fresh,
                        "{} leased while another lease on it was live",
                        l.batch_id
                    );
                }
                tokio::task::yield_now().await;
                for l in leases {
                    let ok = s
                        .complete(&l, &report(BatchOutcome::Committed, 10, None))
                        .await?;
                    assert!(ok, "live lease on {} refused completion", l.batch_id);
                    held.lock().map_err(|_| "poisoned")?.remove(&l.batch_id);
                    *completed
                        .lock()
                        .map_err(|_| "poisoned")?
                        .entry(l.batch_id)
                        .or_default() += 1;
                }
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for l in leasers {
        l.await??;
    }
    let completed = completed.lock().map_err(|_| "poisoned")?.clone();
    assert_eq!(completed.len(), TASKS as usize);
    assert!(
        completed.values().all(|&n| n == 1),
        "a batch completed twice"
    );
    let done = store.tasks("orders", Some(TaskState::Done)).await?;
    assert_eq!(done.len(), TASKS as usize);
    assert!(done.iter().all(|t| t.attempts == 1));
    let runs = store.batch_runs("orders", 1000).await?;
    assert_eq!(runs.len(), TASKS as usize);
    let status = &store.status().await?[0];
    assert_eq!((status.done, status.pending, status.leased), (200, 0, 0));
    assert_eq!(status.rows_in, 2000);
    let mut seen: Vec<BatchId> = completed.into_keys().collect();
    seen.sort();
    all.sort();
    assert_eq!(seen, all);
    Ok(())
}

// ---- schema registry ----

fn schema_version<'a>(
    dataset: &'a str,
    fingerprint: &'a str,
    based_on: Option<i64>,
) -> NewSchemaVersion<'a> {
    NewSchemaVersion {
        dataset,
        fingerprint,
        schema_json: "{\"dataset\":\"orders\",\"fields\":[]}",
        last_field_id: 3,
        based_on,
    }
}

fn created(r: SchemaRegistration) -> Result<SchemaVersionRecord, String> {
    match r {
        SchemaRegistration::Created(v) => Ok(v),
        other => Err(format!("expected a new version, got {other:?}")),
    }
}

async fn schema_versions_are_numbered_and_found_by_fingerprint(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    assert_eq!(store.schema_version("orders", None).await?, None);
    assert!(store.schema_versions("orders").await?.is_empty());
    let v1 = created(
        store
            .register_schema_version(&schema_version("orders", "f1", None))
            .await?,
    )?;
    assert_eq!(
        (v1.version, v1.fingerprint.as_str(), v1.last_field_id),
        (1, "f1", 3)
    );
    assert_eq!(v1.schema_json, "{\"dataset\":\"orders\",\"fields\":[]}");
    // The same fingerprint is the same version, whatever base the caller thought it had.
    for based_on in [None, Some(1), Some(7)] {
        let again = store
            .register_schema_version(&schema_version("orders", "f1", based_on))
            .await?;
        assert_eq!(again, SchemaRegistration::Existing(v1.clone()));
    }
    let v2 = created(
        store
            .register_schema_version(&NewSchemaVersion {
                last_field_id: 5,
                schema_json: "{\"v\":2}",
                ..schema_version("orders", "f2", Some(1))
            })
            .await?,
    )?;
    assert_eq!((v2.version, v2.last_field_id), (2, 5));
    // Going back to the first schema finds version 1, it does not make a version 3.
    assert_eq!(
        store
            .register_schema_version(&schema_version("orders", "f1", Some(2)))
            .await?,
        SchemaRegistration::Existing(v1.clone())
    );
    // Numbering and fingerprints are per dataset.
    let users = created(
        store
            .register_schema_version(&schema_version("users", "f1", None))
            .await?,
    )?;
    assert_eq!(users.version, 1);

    assert_eq!(
        store.schema_version("orders", None).await?,
        Some(v2.clone())
    );
    assert_eq!(
        store.schema_version("orders", Some(1)).await?,
        Some(v1.clone())
    );
    assert_eq!(store.schema_version("orders", Some(3)).await?, None);
    assert_eq!(store.schema_version("nope", Some(1)).await?, None);
    assert_eq!(store.schema_versions("orders").await?, vec![v1, v2]);

    let bad = store
        .register_schema_version(&schema_version("orders", "", Some(2)))
        .await
        .unwrap_err();
    assert!(matches!(bad, StoreError::Invalid(_)), "{bad}");
    Ok(())
}

async fn schema_registration_refuses_a_stale_base(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    // A caller that checked against "no versions" loses to one that registered v1 first.
    created(
        store
            .register_schema_version(&schema_version("orders", "f1", None))
            .await?,
    )?;
    assert_eq!(
        store
            .register_schema_version(&schema_version("orders", "f2", None))
            .await?,
        SchemaRegistration::Stale { latest: Some(1) }
    );
    // A base ahead of the history is just as stale.
    assert_eq!(
        store
            .register_schema_version(&schema_version("orders", "f2", Some(2)))
            .await?,
        SchemaRegistration::Stale { latest: Some(1) }
    );
    // A new dataset has no versions: only `None` is current.
    assert_eq!(
        store
            .register_schema_version(&schema_version("users", "f1", Some(1)))
            .await?,
        SchemaRegistration::Stale { latest: None }
    );
    // Nothing was written by the refused calls, not even the new dataset.
    assert_eq!(store.schema_versions("orders").await?.len(), 1);
    assert_eq!(store.dataset("users").await?, None);
    let v2 = created(
        store
            .register_schema_version(&schema_version("orders", "f2", Some(1)))
            .await?,
    )?;
    assert_eq!(v2.version, 2);
    Ok(())
}

async fn compatibility_defaults_and_overrides(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    // The migration seeds BACKWARD as the default, for datasets known or not.
    assert_eq!(store.compatibility("orders").await?, "BACKWARD");
    store.set_compatibility(None, "FULL").await?;
    assert_eq!(store.compatibility("orders").await?, "FULL");

    // A mode can be set before the first version: it creates the dataset record.
    store
        .set_compatibility(Some("orders"), "BACKWARD_TRANSITIVE")
        .await?;
    assert_eq!(store.compatibility("orders").await?, "BACKWARD_TRANSITIVE");
    assert_eq!(store.compatibility("users").await?, "FULL");
    let orders = store.dataset("orders").await?.ok_or("orders missing")?;
    assert_eq!(orders.compatibility.as_deref(), Some("BACKWARD_TRANSITIVE"));
    assert_eq!((orders.latest_version, orders.versions), (None, 0));

    // Registering keeps the override; changing the default does not touch it.
    created(
        store
            .register_schema_version(&schema_version("orders", "f1", None))
            .await?,
    )?;
    store.set_compatibility(None, "NONE").await?;
    assert_eq!(store.compatibility("orders").await?, "BACKWARD_TRANSITIVE");
    assert_eq!(store.compatibility("users").await?, "NONE");
    store.set_compatibility(Some("orders"), "FORWARD").await?;
    assert_eq!(store.compatibility("orders").await?, "FORWARD");
    Ok(())
}

async fn datasets_list_versions_and_modes(h: &Harness, store: Arc<dyn Store>) -> TestResult {
    assert!(store.datasets().await?.is_empty());
    created(
        store
            .register_schema_version(&schema_version("orders", "f1", None))
            .await?,
    )?;
    created(
        store
            .register_schema_version(&schema_version("orders", "f2", Some(1)))
            .await?,
    )?;
    created(
        store
            .register_schema_version(&schema_version("events", "f1", None))
            .await?,
    )?;
    store.set_compatibility(Some("events"), "NONE").await?;
    // Another process sees the same registry.
    let other = h.open_again().await;
    let datasets = other.datasets().await?;
    let summary: Vec<(&str, Option<&str>, Option<i64>, i64)> = datasets
        .iter()
        .map(|d| {
            (
                d.name.as_str(),
                d.compatibility.as_deref(),
                d.latest_version,
                d.versions,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("events", Some("NONE"), Some(1), 1),
            ("orders", None, Some(2), 2)
        ]
    );
    let orders = &datasets[1];
    assert!(orders.updated_at >= orders.created_at);
    assert_eq!(other.dataset("orders").await?.as_ref(), Some(orders));
    assert_eq!(other.dataset("nope").await?, None);
    Ok(())
}

async fn concurrent_schema_registration_agrees(h: &Harness, store: Arc<dyn Store>) -> TestResult {
    // Two "processes" register four schemas from sixteen callers at once, each the way the
    // registry does: read the latest version, register based on it, start over when stale.
    let other = h.open_again().await;
    let mut calls = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let fingerprint = format!("f{}", i % 4);
        calls.push(tokio::spawn(async move {
            for _ in 0..200 {
                let latest = s.schema_version("orders", None).await?.map(|v| v.version);
                let new = NewSchemaVersion {
                    dataset: "orders",
                    fingerprint: &fingerprint,
                    schema_json: "{}",
                    last_field_id: latest.unwrap_or(0) + 1,
                    based_on: latest,
                };
                match s.register_schema_version(&new).await? {
                    SchemaRegistration::Created(v) => {
                        assert_eq!(v.version, latest.unwrap_or(0) + 1);
                        return Ok::<_, StoreError>((fingerprint, v.version, true));
                    }
                    SchemaRegistration::Existing(v) => {
                        return Ok((fingerprint, v.version, false));
                    }
                    SchemaRegistration::Stale { latest: now } => {
                        assert_ne!(now, latest, "stale must mean the history moved");
                    }
                }
            }
            Err(StoreError::Invalid(format!(
                "{fingerprint} stayed stale for 200 attempts"
            )))
        }));
    }
    let mut by_fingerprint: HashMap<String, HashSet<i64>> = HashMap::new();
    let mut creations = 0;
    for call in calls {
        let (fingerprint, version, was_created) = call.await??;
        by_fingerprint
            .entry(fingerprint)
            .or_default()
            .insert(version);
        creations += usize::from(was_created);
    }
    assert_eq!(creations, 4, "each schema is created once");
    let mut versions: Vec<i64> = Vec::new();
    for (fingerprint, vs) in &by_fingerprint {
        assert_eq!(vs.len(), 1, "{fingerprint} got several versions: {vs:?}");
        versions.extend(vs);
    }
    versions.sort();
    assert_eq!(versions, [1, 2, 3, 4], "no gaps, no twins");
    let history = store.schema_versions("orders").await?;
    assert_eq!(
        history.iter().map(|v| v.last_field_id).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "every version was based on the one before it"
    );
    Ok(())
}

// ---- deployments: the router, leadership, fenced writes ----

/// Registers `pipeline` with versions 1 (current) and 2 (the candidate, not current).
async fn two_versions(store: &Arc<dyn Store>, pipeline: &str) -> Result<(i64, i64), StoreError> {
    let v1 = self::pipeline(store, pipeline).await?;
    let v2 = store
        .register_pipeline_version(
            pipeline,
            &format!("hash-{pipeline}-2"),
            "spec: 2",
            "/base",
            false,
        )
        .await?
        .version;
    Ok((v1, v2))
}

fn route(mode: RouteMode, weight: u8) -> Route {
    Route { mode, weight }
}

fn new_deployment(pipeline: &str, stable: i64, candidate: i64, route: Route) -> NewDeployment {
    NewDeployment {
        pipeline: pipeline.into(),
        stable_version: stable,
        candidate_version: candidate,
        strategy: "canary".into(),
        policy: "{\"steps\":[]}".into(),
        state: "progressing".into(),
        route,
        started_by: "test".into(),
    }
}

/// Starts a deployment of `pipeline` from 1 to 2 and returns it.
async fn deploy(
    store: &Arc<dyn Store>,
    pipeline: &str,
    route: Route,
) -> Result<DeploymentRecord, Box<dyn std::error::Error + Send + Sync>> {
    let started = store
        .start_deployment(&new_deployment(pipeline, 1, 2, route))
        .await?
        .map_err(|active| format!("deployment {} is active already", active.id))?;
    Ok(started)
}

/// A controller's transition of `d` that keeps its state and sets `route`.
fn reroute(d: &DeploymentRecord, route: Route) -> DeploymentUpdate {
    DeploymentUpdate {
        from_state: d.state.clone(),
        to_state: d.state.clone(),
        step: d.step,
        route,
        reason: None,
        seen_request: d.request,
        clear_request: false,
        data: d.data.clone(),
        outcome: None,
        message: format!("route {} {}", route.mode.as_str(), route.weight),
    }
}

async fn lead(store: &Arc<dyn Store>, holder: &str) -> Result<Fence, String> {
    store
        .lead("controller", holder, LONG)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{holder} could not take the leadership"))
}

/// Sets the route of the active deployment `d` as the controller holding `fence`; returns the
/// deployment as it is then.
async fn set_route(
    store: &Arc<dyn Store>,
    fence: &Fence,
    d: &DeploymentRecord,
    route: Route,
) -> Result<DeploymentRecord, Box<dyn std::error::Error + Send + Sync>> {
    let current = store.deployment(d.id).await?.ok_or("no such deployment")?;
    if !store
        .transition_deployment(fence, d.id, &reroute(&current, route))
        .await?
    {
        return Err(format!("setting route {route:?} on deployment {} was refused", d.id).into());
    }
    Ok(store.deployment(d.id).await?.ok_or("no such deployment")?)
}

/// Fails `lease` as a worker would after a transient error: back in the queue after `backoff`.
async fn fail_transiently(
    store: &Arc<dyn Store>,
    lease: &Lease,
    backoff: Duration,
) -> Result<FailDisposition, StoreError> {
    let boom = report(BatchOutcome::Failed, 0, Some("boom"));
    store
        .fail(lease, &boom, ErrorKind::External, false, backoff)
        .await
}

/// Runs `call` from 8 tasks at once, alternating between `store` and a second handle on the
/// same data (another process); returns their answers in task order.
async fn at_once<T, F, Fut>(
    h: &Harness,
    store: &Arc<dyn Store>,
    call: F,
) -> Result<Vec<T>, Box<dyn std::error::Error + Send + Sync>>
where
    T: Send + 'static,
    F: Fn(usize, Arc<dyn Store>) -> Fut,
    Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let other = h.open_again().await;
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let s = if n % 2 == 0 { store } else { &other };
            tokio::spawn(call(n, s.clone()))
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await??);
    }
    Ok(answers)
}

/// Fails `lease` as a worker would on bad input: quarantined at once.
async fn quarantine(store: &Arc<dyn Store>, lease: &Lease) -> Result<FailDisposition, StoreError> {
    let bad = report(BatchOutcome::Quarantined, 0, Some("bad row"));
    store
        .fail(lease, &bad, ErrorKind::User, true, Duration::ZERO)
        .await
}

/// Leases `n` batches one lease call at a time (limits 1, 2, 3, ... as they fit) and returns
/// their versions in lease order.
async fn lease_versions(store: &Arc<dyn Store>, n: usize) -> Result<Vec<i64>, StoreError> {
    let mut versions = Vec::new();
    let mut limit = 1;
    while versions.len() < n {
        let leases = store
            .lease(&request(1, limit.min(n - versions.len()), LONG))
            .await?;
        assert!(!leases.is_empty(), "queue ran dry after {}", versions.len());
        versions.extend(leases.iter().map(|l| l.version));
        limit += 1;
    }
    Ok(versions)
}

async fn router_batch_share_is_exact(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    // Queued before the deployment starts: routed when leased, not when queued.
    queue(&store, "orders", v1, "/in/a.csv", 40, 3).await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 25)).await?;
    let versions = lease_versions(&store, 20).await?;
    let expected: Vec<i64> = (1..=20).map(|i| if i % 4 == 0 { v2 } else { v1 }).collect();
    assert_eq!(
        versions, expected,
        "exactly one in four, never ahead of its share"
    );

    // The route changes: the share restarts from zero. (Had the counters stayed at 20/5, the
    // very next batch would have gone to the candidate.)
    let fence = lead(&store, "ctl").await?;
    set_route(&store, &fence, &d, route(RouteMode::Batch, 50)).await?;
    assert_eq!(lease_versions(&store, 6).await?, [v1, v2, v1, v2, v1, v2]);
    let routed = store.tasks("orders", Some(TaskState::Leased)).await?;
    assert_eq!(routed.len(), 26);
    assert!(
        routed
            .iter()
            .all(|t| t.routed_at.is_some() && t.split.is_none())
    );
    assert_eq!(routed.iter().filter(|t| t.version == v2).count(), 5 + 3);
    Ok(())
}

async fn router_share_is_exact_under_concurrent_leasers(
    h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    queue(&store, "orders", v1, "/in/a.csv", 200, 3).await?;
    deploy(&store, "orders", route(RouteMode::Batch, 25)).await?;
    let leased = at_once(h, &store, |n, s| async move {
        let mut versions = Vec::new();
        loop {
            let leases = s.lease(&request(n, 1 + n % 3, LONG)).await?;
            if leases.is_empty() {
                return Ok(versions);
            }
            versions.extend(leases.iter().map(|l| l.version));
        }
    })
    .await?;
    let versions: Vec<i64> = leased.into_iter().flatten().collect();
    assert_eq!(versions.len(), 200, "every batch leased once");
    assert_eq!(
        versions.iter().filter(|&&v| v == v2).count(),
        50,
        "25% of 200, exactly"
    );
    Ok(())
}

async fn routed_batches_keep_their_version(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    queue(&store, "orders", v1, "/in/a.csv", 3, 5).await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 100)).await?;
    let first = lease_one(&store, 1, LONG).await;
    assert_eq!(first.version, v2);
    // From now on every new batch goes to stable; the routed one must not follow.
    let fence = lead(&store, "ctl").await?;
    set_route(&store, &fence, &d, route(RouteMode::Batch, 0)).await?;
    let failed = fail_transiently(&store, &first, Duration::from_millis(100)).await?;
    assert_eq!(failed, FailDisposition::Retrying);
    let t = store.task(&first.batch_id).await?.ok_or("missing")?;
    assert_eq!((t.state, t.version), (TaskState::Pending, v2));
    let second = lease_one(&store, 2, LONG).await;
    assert_ne!(second.batch_id, first.batch_id, "still backing off");
    assert_eq!(second.version, v1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let retried = lease_one(&store, 3, Duration::from_millis(50)).await;
    assert_eq!(
        (retried.batch_id.clone(), retried.version, retried.attempt),
        (first.batch_id.clone(), v2, 2)
    );
    // expiry and rescue
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.rescue_expired().await?, 1);
    let rescued = lease_one(&store, 4, LONG).await;
    assert_eq!(
        (rescued.batch_id.clone(), rescued.version),
        (first.batch_id.clone(), v2)
    );
    // release (a drain)
    store.release(&rescued).await?;
    let released = lease_one(&store, 5, LONG).await;
    assert_eq!((released.batch_id, released.version), (first.batch_id, v2));
    Ok(())
}

async fn hold_leases_only_routed_batches(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    let u1 = pipeline(&store, "users").await?;
    let orders = queue(&store, "orders", v1, "/in/a.csv", 4, 3).await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 100)).await?;
    let routed = lease_one(&store, 1, LONG).await;
    assert_eq!(
        (routed.batch_id.clone(), routed.version),
        (orders[0].clone(), v2)
    );
    store.release(&routed).await?;

    let fence = lead(&store, "ctl").await?;
    set_route(&store, &fence, &d, route(RouteMode::Hold, 0)).await?;
    let users = queue(&store, "users", u1, "/in/u.csv", 1, 3).await?;
    // Two slots, two leasable batches: the held ones ahead of the second must not use a slot.
    let leased = store.lease(&request(1, 2, LONG)).await?;
    assert_eq!(
        leased
            .iter()
            .map(|l| (l.batch_id.clone(), l.version))
            .collect::<Vec<_>>(),
        [(orders[0].clone(), v2), (users[0].clone(), u1)],
        "the routed batch and other pipelines' batches are leased, new ones held"
    );
    assert!(store.lease(&request(1, 10, LONG)).await?.is_empty());
    let held = store.tasks("orders", Some(TaskState::Pending)).await?;
    assert_eq!(held.len(), 3);
    assert!(
        held.iter()
            .all(|t| t.routed_at.is_none() && t.attempts == 0)
    );

    set_route(&store, &fence, &d, route(RouteMode::Batch, 0)).await?;
    let rest = store.lease(&request(1, 10, LONG)).await?;
    assert_eq!(ids(&rest), orders[1..].to_vec());
    assert!(rest.iter().all(|l| l.version == v1 && l.attempt == 1));
    Ok(())
}

async fn slots_route_by_worker_rank(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    queue(&store, "orders", v1, "/in/a.csv", 8, 3).await?;
    let beat = |n: usize, state: &str| WorkerBeat {
        worker: worker(n),
        host: "testhost".into(),
        pid: 4242,
        state: state.into(),
    };
    for n in 0..4 {
        store.worker_heartbeat(&beat(n, "running")).await?;
    }
    deploy(&store, "orders", route(RouteMode::Slots, 50)).await?;
    // ceil(50% of 4 slots) = 2: the first two by id lease the candidate
    let versions = |n: usize| {
        let store = store.clone();
        async move { Ok::<_, StoreError>(lease_one(&store, n, LONG).await.version) }
    };
    assert_eq!(
        [
            versions(0).await?,
            versions(1).await?,
            versions(2).await?,
            versions(3).await?
        ],
        [v2, v2, v1, v1]
    );
    assert_eq!(versions(9).await?, v1, "a slot not live leases stable");
    // A draining slot no longer counts: of 3 live slots, ceil(1.5) = 2 lease the candidate.
    store.worker_heartbeat(&beat(0, "draining")).await?;
    assert_eq!(versions(2).await?, v2);
    assert_eq!(versions(3).await?, v1);
    Ok(())
}

async fn key_routing_carries_the_split(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    let batches = queue(&store, "orders", v1, "/in/a.csv", 2, 3).await?;
    deploy(&store, "orders", route(RouteMode::Key, 30)).await?;
    let lease = lease_one(&store, 1, LONG).await;
    let split = Some(Split {
        candidate_version: v2,
        percent: 30,
    });
    assert_eq!((lease.version, lease.split), (v1, split));
    let t = store.task(&lease.batch_id).await?.ok_or("missing")?;
    assert_eq!((t.version, t.split), (v1, split));
    // A retried batch is routed again from scratch: its split goes with its route.
    quarantine(&store, &lease).await?;
    assert_eq!(
        store.retry(&RetryTarget::Batch(batches[0].clone())).await?,
        1
    );
    let t = store.task(&batches[0]).await?.ok_or("missing")?;
    assert_eq!((t.split, t.routed_at), (None, None));
    Ok(())
}

async fn unrouted_batches_run_the_current_version(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    let backlog = queue(&store, "orders", v1, "/in/a.csv", 4, 3).await?;
    let t = store.task(&backlog[0]).await?.ok_or("missing")?;
    assert_eq!((t.version, t.routed_at, t.generation), (v1, None, 0));
    let first = lease_one(&store, 1, LONG).await;
    assert_eq!(first.version, v1);
    let routed_at = store
        .task(&first.batch_id)
        .await?
        .ok_or("missing")?
        .routed_at;
    assert!(routed_at.is_some_and(|at| at >= t.created_at));

    // A promote: the backlog queued before it runs on the new version.
    store.set_current_version("orders", v2).await?;
    assert_eq!(lease_one(&store, 1, LONG).await.version, v2);
    // ...and so through a deployment that ends promoted.
    store.set_current_version("orders", v1).await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 0)).await?;
    let fence = lead(&store, "ctl").await?;
    let promote = DeploymentUpdate {
        to_state: "promoted".into(),
        outcome: Some(DeploymentOutcome::Promoted),
        ..reroute(&d, route(RouteMode::Batch, 100))
    };
    assert!(store.transition_deployment(&fence, d.id, &promote).await?);
    assert_eq!(
        store.pipeline("orders").await?.map(|p| p.current_version),
        Some(v2)
    );
    let rest = store.lease(&request(1, 10, LONG)).await?;
    assert_eq!(rest.iter().map(|l| l.version).collect::<Vec<_>>(), [v2, v2]);
    Ok(())
}

async fn leadership_is_exclusive_until_it_expires(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    let short = Duration::from_millis(300);
    let a = store
        .lead("controller", "a", short)
        .await?
        .ok_or("a leads")?;
    assert_eq!(
        (a.duty.as_str(), a.holder.as_str(), a.epoch),
        ("controller", "a", 1)
    );
    assert_eq!(
        store.lead("controller", "b", short).await?,
        None,
        "a holds it"
    );
    assert!(
        store.lead("other-duty", "b", short).await?.is_some(),
        "duties are separate"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let renewed = store
        .lead("controller", "a", short)
        .await?
        .ok_or("a renews")?;
    assert_eq!(renewed.epoch, 1, "renewal keeps the epoch");
    assert!(renewed.expires_at > a.expires_at);
    let leader = store.leader("controller").await?.ok_or("a leader")?;
    assert_eq!((leader.holder.as_str(), leader.epoch), ("a", 1));

    // Some fenced state for a's writes to try.
    let (v1, _) = two_versions(&store, "orders").await?;
    let batches = queue(&store, "orders", v1, "/in/a.csv", 2, 3).await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 0)).await?;
    assert!(
        store
            .transition_deployment(&a, d.id, &reroute(&d, route(RouteMode::Batch, 10)))
            .await?
    );
    let d = store.deployment(d.id).await?.ok_or("missing")?;

    tokio::time::sleep(Duration::from_millis(400)).await;
    // Expired: a's writes are refused even before anyone takes over.
    assert!(
        !store
            .transition_deployment(&a, d.id, &reroute(&d, route(RouteMode::Batch, 20)))
            .await?
    );
    let b = store
        .lead("controller", "b", LONG)
        .await?
        .ok_or("b takes over")?;
    assert_eq!(b.epoch, 2, "a change of hands raises the epoch");
    assert_eq!(
        store.lead("controller", "a", short).await?,
        None,
        "b holds it now"
    );

    let events = store.deployment_events(d.id).await?.len();
    assert!(
        !store
            .transition_deployment(&a, d.id, &reroute(&d, route(RouteMode::Batch, 20)))
            .await?
    );
    let m = NewMeasurement {
        deployment_id: d.id,
        analysis: "step-1".into(),
        metric: "error_rate".into(),
        phase: "successful".into(),
        value: Some(0.0),
        stable_value: None,
        inputs: "{}".into(),
        message: "ok".into(),
    };
    assert!(!store.record_measurement(&a, &m).await?);
    let rq = Requeue {
        pipeline: "orders".into(),
        version: v1,
        batches: vec![(batches[0].clone(), 1)],
    };
    assert_eq!(store.requeue(&a, &rq).await?, 0);
    assert_eq!(store.park_pending(&a, "orders", v1).await?, 0);
    store.resign(&a).await?;
    // nothing of a's was written
    assert_eq!(store.deployment(d.id).await?.ok_or("missing")?, d);
    assert_eq!(store.deployment_events(d.id).await?.len(), events);
    assert!(store.measurements(d.id).await?.is_empty());
    assert_eq!(
        store.task(&batches[0]).await?.ok_or("missing")?.generation,
        0
    );
    assert_eq!(store.leader("controller").await?.ok_or("b")?.holder, "b");

    // b's fence works, and a clean resign hands the duty on with the next epoch.
    assert!(store.record_measurement(&b, &m).await?);
    store.resign(&b).await?;
    assert!(!store.record_measurement(&b, &m).await?, "resigned");
    let c = store
        .lead("controller", "c", LONG)
        .await?
        .ok_or("c leads")?;
    assert_eq!(c.epoch, 3);
    Ok(())
}

async fn concurrent_lead_has_one_winner(h: &Harness, store: Arc<dyn Store>) -> TestResult {
    for round in 0..3 {
        let answers = at_once(h, &store, |n, s| async move {
            let holder = format!("holder-{round}-{n}");
            s.lead("controller", &holder, Duration::from_millis(200))
                .await
        })
        .await?;
        let winners: Vec<Fence> = answers.into_iter().flatten().collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(winners[0].epoch, round + 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

async fn one_active_deployment_per_pipeline(h: &Harness, store: Arc<dyn Store>) -> TestResult {
    two_versions(&store, "orders").await?;
    two_versions(&store, "users").await?;
    let first = deploy(&store, "orders", route(RouteMode::Batch, 0)).await?;
    assert_eq!((first.step, first.outcome, first.request), (0, None, None));
    assert_eq!(first.data, "{}");
    let second = store
        .start_deployment(&new_deployment("orders", 1, 2, route(RouteMode::Batch, 50)))
        .await?;
    assert_eq!(second, Err(first.clone()), "refused with the active one");
    assert!(
        store
            .start_deployment(&new_deployment("orders", 1, 7, route(RouteMode::Batch, 0)))
            .await
            .is_err(),
        "an unregistered version"
    );
    let events = store.deployment_events(first.id).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].from_state.as_deref(), events[0].epoch),
        (None, 0)
    );

    // Concurrent starts of one pipeline: the unique index lets one through.
    let starts = at_once(h, &store, |_, s| async move {
        s.start_deployment(&new_deployment("users", 1, 2, route(RouteMode::Batch, 0)))
            .await
    })
    .await?;
    let (mut started, mut refused) = (Vec::new(), Vec::new());
    for s in starts {
        match s {
            Ok(d) => started.push(d),
            Err(active) => refused.push(active),
        }
    }
    assert_eq!(started.len(), 1);
    assert!(refused.iter().all(|a| a.id == started[0].id));
    assert_eq!(
        store
            .active_deployments()
            .await?
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        [first.id, started[0].id]
    );

    // After an outcome the pipeline may deploy again.
    let fence = lead(&store, "ctl").await?;
    let abort = DeploymentUpdate {
        to_state: "aborted".into(),
        reason: Some("analysis failed".into()),
        outcome: Some(DeploymentOutcome::Aborted),
        ..reroute(&first, route(RouteMode::Batch, 0))
    };
    assert!(
        store
            .transition_deployment(&fence, first.id, &abort)
            .await?
    );
    let ended = store.deployment(first.id).await?.ok_or("missing")?;
    assert_eq!(ended.outcome, Some(DeploymentOutcome::Aborted));
    assert!(ended.finished_at.is_some());
    assert_eq!(
        store.pipeline("orders").await?.map(|p| p.current_version),
        Some(1)
    );
    assert_eq!(store.active_deployment("orders").await?, None);
    assert!(
        !store
            .transition_deployment(&fence, first.id, &abort)
            .await?,
        "ended"
    );
    let again = deploy(&store, "orders", route(RouteMode::Batch, 0)).await?;
    assert_eq!(
        store.active_deployment("orders").await?,
        Some(again.clone())
    );
    let history = store.deployments(Some("orders"), 10).await?;
    assert_eq!(
        history.iter().map(|d| d.id).collect::<Vec<_>>(),
        [again.id, first.id]
    );
    assert_eq!(store.deployments(None, 10).await?.len(), 3);
    assert_eq!(store.deployments(None, 1).await?.len(), 1);
    Ok(())
}

async fn transitions_are_checked_and_logged(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let (_, v2) = two_versions(&store, "orders").await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 10)).await?;
    let fence = lead(&store, "ctl").await?;
    let stale = DeploymentUpdate {
        from_state: "paused".into(),
        ..reroute(&d, route(RouteMode::Batch, 20))
    };
    assert!(
        !store.transition_deployment(&fence, d.id, &stale).await?,
        "not in from_state"
    );
    assert!(
        !store
            .transition_deployment(&fence, d.id + 100, &reroute(&d, d.route))
            .await?,
        "no such deployment"
    );
    let mut bad = reroute(&d, route(RouteMode::Batch, 101));
    bad.message = "too much".into();
    assert!(
        store
            .transition_deployment(&fence, d.id, &bad)
            .await
            .is_err()
    );

    // Same step, same route: the step keeps its start.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let note = DeploymentUpdate {
        to_state: "analysing".into(),
        data: "{\"window\":1}".into(),
        reason: Some("waiting for 10 batches".into()),
        ..reroute(&d, d.route)
    };
    assert!(store.transition_deployment(&fence, d.id, &note).await?);
    let after = store.deployment(d.id).await?.ok_or("missing")?;
    assert_eq!(after.state, "analysing");
    assert_eq!(after.data, "{\"window\":1}");
    assert_eq!(after.reason.as_deref(), Some("waiting for 10 batches"));
    assert_eq!(after.step_started_at, d.step_started_at);
    assert!(after.updated_at > d.updated_at);
    // The next step: it starts now.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let next = DeploymentUpdate {
        step: 1,
        ..reroute(&after, route(RouteMode::Batch, 50))
    };
    assert!(store.transition_deployment(&fence, d.id, &next).await?);
    let stepped = store.deployment(d.id).await?.ok_or("missing")?;
    assert_eq!(
        (stepped.step, stepped.route),
        (1, route(RouteMode::Batch, 50))
    );
    assert!(stepped.step_started_at > after.step_started_at);

    // Promote: the candidate becomes current in the same transaction.
    let promote = DeploymentUpdate {
        to_state: "promoted".into(),
        outcome: Some(DeploymentOutcome::Promoted),
        message: "promoted".into(),
        ..reroute(&stepped, route(RouteMode::Batch, 100))
    };
    assert!(store.transition_deployment(&fence, d.id, &promote).await?);
    assert_eq!(
        store.pipeline("orders").await?.map(|p| p.current_version),
        Some(v2)
    );
    let events = store.deployment_events(d.id).await?;
    assert_eq!(
        events
            .iter()
            .map(|e| (
                e.from_state.as_deref(),
                e.to_state.as_str(),
                e.step,
                e.route.weight,
                e.epoch
            ))
            .collect::<Vec<_>>(),
        [
            (None, "progressing", 0, 10, 0),
            (Some("progressing"), "analysing", 0, 10, fence.epoch),
            (Some("analysing"), "analysing", 1, 50, fence.epoch),
            (Some("analysing"), "promoted", 1, 100, fence.epoch),
        ]
    );
    assert_eq!(events[3].message, "promoted");
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
    Ok(())
}

async fn abort_request_routes_to_stable_at_once(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let (v1, _) = two_versions(&store, "orders").await?;
    queue(&store, "orders", v1, "/in/a.csv", 2, 3).await?;
    let d = deploy(&store, "orders", route(RouteMode::Key, 60)).await?;
    let fence = lead(&store, "ctl").await?;
    assert!(
        store
            .request_deployment(d.id, DeploymentRequest::Pause, "pause by x")
            .await?
    );
    let paused = store.deployment(d.id).await?.ok_or("missing")?;
    assert_eq!(paused.request, Some(DeploymentRequest::Pause));
    // The controller decided on what it read before the pause: refused, the pause stays.
    assert!(
        !store
            .transition_deployment(&fence, d.id, &reroute(&d, d.route))
            .await?
    );

    assert!(
        store
            .request_deployment(d.id, DeploymentRequest::Abort, "abort by x")
            .await?
    );
    let aborting = store.deployment(d.id).await?.ok_or("missing")?;
    assert_eq!(aborting.request, Some(DeploymentRequest::Abort));
    assert_eq!(
        aborting.route,
        route(RouteMode::Batch, 0),
        "without waiting for the controller"
    );
    let lease = lease_one(&store, 1, LONG).await;
    assert_eq!((lease.version, lease.split), (v1, None));
    assert!(
        !store
            .request_deployment(d.id, DeploymentRequest::Resume, "resume")
            .await?,
        "a waiting abort is not replaced"
    );
    assert_eq!(
        store.deployment(d.id).await?.ok_or("missing")?.request,
        Some(DeploymentRequest::Abort)
    );
    let events = store.deployment_events(d.id).await?;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.message.as_str(), e.epoch))
            .collect::<Vec<_>>(),
        [
            (events[0].message.as_str(), 0),
            ("pause by x", 0),
            ("abort by x", 0)
        ]
    );
    // The controller acts on the abort it saw and clears it.
    let act = DeploymentUpdate {
        to_state: "aborting".into(),
        clear_request: true,
        ..reroute(&aborting, aborting.route)
    };
    assert!(store.transition_deployment(&fence, d.id, &act).await?);
    let acted = store.deployment(d.id).await?.ok_or("missing")?;
    assert_eq!((acted.state.as_str(), acted.request), ("aborting", None));
    assert!(
        !store
            .request_deployment(d.id + 100, DeploymentRequest::Pause, "x")
            .await?
    );
    Ok(())
}

async fn requeue_is_idempotent_and_skips_leased(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    let batches = queue(&store, "orders", v1, "/in/a.csv", 3, 3).await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 100)).await?;
    let leases = store.lease(&request(1, 3, LONG)).await?;
    assert!(leases.iter().all(|l| l.version == v2));
    let done = |i: usize| BatchFile {
        pipeline: "orders".into(),
        batch_id: batches[i].clone(),
        table_version: i as i64,
        data_file: format!("part-{i}.parquet"),
    };
    for l in &leases[..2] {
        assert!(
            store
                .complete(l, &report(BatchOutcome::Committed, 10, None))
                .await?
        );
    }
    store
        .record_batch_files(&[done(0), done(1), done(2)])
        .await?;

    let fence = lead(&store, "ctl").await?;
    let rq = Requeue {
        pipeline: "orders".into(),
        version: v1,
        batches: batches.iter().map(|b| (b.clone(), 1)).collect(),
    };
    assert_eq!(
        store.requeue(&fence, &rq).await?,
        2,
        "the leased one is skipped"
    );
    for b in &batches[..2] {
        let t = store.task(b).await?.ok_or("missing")?;
        assert_eq!(
            (t.state, t.version, t.generation, t.attempts),
            (TaskState::Pending, v1, 1, 0)
        );
        assert!(t.routed_at.is_some(), "pinned: the router leaves it alone");
        assert_eq!((t.rows_in, t.rows_out), (None, None));
    }
    let leased = store.task(&batches[2]).await?.ok_or("missing")?;
    assert_eq!(
        (leased.state, leased.version, leased.generation),
        (TaskState::Leased, v2, 0)
    );
    assert_eq!(store.batch_files(&batches).await?, vec![done(2)]);
    assert_eq!(
        store.requeue(&fence, &rq).await?,
        0,
        "a repeated requeue changes nothing"
    );

    // Pinned to stable although the route sends every new batch to the candidate.
    let again = store.lease(&request(1, 5, LONG)).await?;
    assert_eq!(
        again
            .iter()
            .map(|l| (l.version, l.generation, l.attempt))
            .collect::<Vec<_>>(),
        [(v1, 1, 1), (v1, 1, 1)]
    );
    assert_eq!(store.requeue(&fence, &rq).await?, 0, "leased now");
    assert_eq!(
        store.deployment(d.id).await?.ok_or("missing")?.route.weight,
        100
    );
    let unknown = Requeue {
        version: 9,
        ..rq.clone()
    };
    assert!(
        store.requeue(&fence, &unknown).await.is_err(),
        "no version 9"
    );
    Ok(())
}

async fn park_pending_holds_routed_retries_until_requeued(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    let batches = queue(&store, "orders", v1, "/in/a.csv", 4, 3).await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 100)).await?;
    let fence = lead(&store, "ctl").await?;
    // Two routed to the candidate and failed, due again at once.
    let mut leases = store.lease(&request(1, 2, LONG)).await?;
    // One split by key and failed too.
    set_route(&store, &fence, &d, route(RouteMode::Key, 50)).await?;
    let split = lease_one(&store, 1, LONG).await;
    assert_eq!(split.split.map(|s| s.candidate_version), Some(v2));
    leases.push(split);
    for l in &leases {
        fail_transiently(&store, l, Duration::ZERO).await?;
    }
    // The candidate's tasks: the two routed to it and the split one, not the unrouted one.
    let of_v2: Vec<BatchId> = store
        .version_tasks("orders", v2)
        .await?
        .into_iter()
        .map(|t| t.batch_id)
        .collect();
    assert_eq!(of_v2, batches[..3].to_vec());
    assert!(store.version_tasks("other", v2).await?.is_empty());
    // The abort: new batches to stable, the candidate's retries parked.
    set_route(&store, &fence, &d, route(RouteMode::Batch, 0)).await?;
    assert_eq!(store.park_pending(&fence, "orders", v2).await?, 3);
    assert_eq!(store.park_pending(&fence, "orders", v2).await?, 0, "once");
    let routed: Vec<&BatchId> = batches[..3].iter().collect();
    for b in &routed {
        let t = store.task(b).await?.ok_or("missing")?;
        assert_eq!(t.state, TaskState::Pending);
    }
    // Only the batch never routed is leased, by stable.
    let leases = store.lease(&request(2, 10, LONG)).await?;
    let leased: Vec<&BatchId> = leases.iter().map(|l| &l.batch_id).collect();
    assert_eq!(
        leased,
        vec![&batches[3]],
        "parked batches are leased by nobody"
    );
    assert_eq!(leases[0].version, v1);
    // The requeue releases them to stable under the next generation.
    let rq = Requeue {
        pipeline: "orders".into(),
        version: v1,
        batches: batches[..3].iter().map(|b| (b.clone(), 1)).collect(),
    };
    assert_eq!(store.requeue(&fence, &rq).await?, 3);
    let leases = store.lease(&request(2, 10, LONG)).await?;
    assert_eq!(leases.len(), 3, "released");
    for l in &leases {
        assert_eq!((l.version, l.generation, l.split), (v1, 1, None));
    }
    Ok(())
}

async fn analysis_windows_and_measurements(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let (v1, v2) = two_versions(&store, "orders").await?;
    queue(&store, "orders", v1, "/in/a.csv", 4, 3).await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 50)).await?;
    let since = store.now().await?;
    for l in store.lease(&request(1, 4, LONG)).await? {
        let mut r = report(BatchOutcome::Committed, 10 * l.version, None);
        r.finished_at = since + 100 - l.slice.index as i64;
        store.complete(&l, &r).await?;
    }
    let runs = store.version_runs("orders", v2, since).await?;
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.version == v2 && r.rows_in == 20));
    assert!(runs[0].finished_at <= runs[1].finished_at, "oldest first");
    assert_eq!(store.version_runs("orders", v1, since).await?.len(), 2);
    assert!(
        store
            .version_runs("orders", v1, since + 101)
            .await?
            .is_empty()
    );

    let check = |version: i64, batch: &str| CheckRecord {
        pipeline: "orders".into(),
        version,
        batch_id: BatchId(batch.into()),
        check: "not_null(id)".into(),
        kind: "not_null".into(),
        level: "pass".into(),
        considered: 10,
        failing: 0,
        dropped: 0,
        detail: String::new(),
        recorded_at: 0,
    };
    store
        .record_checks(&[check(v2, "b1"), check(v1, "b2")])
        .await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.record_checks(&[check(v2, "b3")]).await?;
    let checks = store.version_checks("orders", v2, since).await?;
    assert_eq!(
        checks
            .iter()
            .map(|c| c.batch_id.0.as_str())
            .collect::<Vec<_>>(),
        ["b1", "b3"]
    );
    assert!(
        store
            .version_checks("orders", v2, store.now().await? + 1000)
            .await?
            .is_empty()
    );

    let fence = lead(&store, "ctl").await?;
    let m = |metric: &str, value: Option<f64>, stable: Option<f64>| NewMeasurement {
        deployment_id: d.id,
        analysis: "step-1".into(),
        metric: metric.into(),
        phase: if value.is_some() {
            "successful"
        } else {
            "error"
        }
        .into(),
        value,
        stable_value: stable,
        inputs: "{\"samples\":2}".into(),
        message: format!("{metric} measured"),
    };
    assert!(
        store
            .record_measurement(&fence, &m("error_rate", Some(0.25), Some(0.5)))
            .await?
    );
    assert!(
        store
            .record_measurement(&fence, &m("latency", None, None))
            .await?
    );
    let ms = store.measurements(d.id).await?;
    assert_eq!(
        ms.iter()
            .map(|r| (r.metric.as_str(), r.phase.as_str(), r.value, r.stable_value))
            .collect::<Vec<_>>(),
        [
            ("error_rate", "successful", Some(0.25), Some(0.5)),
            ("latency", "error", None, None)
        ]
    );
    assert!(
        ms.iter()
            .all(|r| r.deployment_id == d.id && r.measured_at >= since)
    );
    assert_eq!(ms[0].inputs, "{\"samples\":2}");
    Ok(())
}

async fn analysis_templates_are_named_and_replaced(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    assert_eq!(store.analysis_template("errors").await?, None);
    store
        .put_analysis_template("errors", "metrics: [a]")
        .await?;
    store
        .put_analysis_template("latency", "metrics: [b]")
        .await?;
    let first = store.analysis_template("errors").await?.ok_or("missing")?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .put_analysis_template("errors", "metrics: [c]")
        .await?;
    let replaced = store.analysis_template("errors").await?.ok_or("missing")?;
    assert_eq!(replaced.spec, "metrics: [c]");
    assert_eq!(replaced.created_at, first.created_at);
    assert!(replaced.updated_at > first.updated_at);
    assert_eq!(
        store
            .analysis_templates()
            .await?
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["errors", "latency"]
    );
    Ok(())
}

// ---- backend-specific: the things the generic suite cannot see ----

/// Opens `url` from several handles at once on a store nobody has migrated yet: the migration
/// must be applied once and every open must succeed (processes starting together).
async fn first_opens_race(url: &str) -> TestResult {
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { sluice_store::open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await??);
    }
    let v = pipeline(&stores[0], "orders").await?;
    queue(&stores[1], "orders", v, "/in/a.csv", 1, 3).await?;
    assert_eq!(stores[3].tasks("orders", None).await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_first_opens_race() -> TestResult {
    let dir = tempfile::tempdir()?;
    first_opens_race(&format!("sqlite://{}", dir.path().join("new.db").display())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_first_opens_race() -> TestResult {
    let Some(url) = testing::fresh_postgres_url().await? else {
        return Ok(());
    };
    first_opens_race(&url).await?;
    let _ = testing::drop_postgres_database(&url).await;
    Ok(())
}

/// Runs `change` in a transaction, then `call` beside it; checks that `call` waits for the
/// rows `change` locked, commits, and returns what `call` got once it went on.
async fn commit_while_waiting<T: Send + 'static>(
    conn: &mut sqlx::PgConnection,
    change: &[String],
    call: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    let mut tx = conn.begin().await?;
    for sql in change {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    let call = tokio::spawn(call);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !call.is_finished(),
        "the call waits for the rows the change holds"
    );
    tx.commit().await?;
    Ok(call.await??)
}

/// The route changing while a lease waits for the deployment row (PostgreSQL, where leasers
/// do not hold the whole store): the router reads the route as it is once the change commits.
/// A `hold` set meanwhile gives the batches back unleased; a deployment ended meanwhile routes
/// them to the current version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_route_changed_while_leasing_is_read_as_committed() -> TestResult {
    let Some(h) = Harness::postgres().await else {
        return Ok(());
    };
    let store = h.store.clone();
    let (v1, v2) = two_versions(&store, "orders").await?;
    let batches = queue(&store, "orders", v1, "/in/a.csv", 3, 3).await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 100)).await?;
    let mut conn = sqlx::PgConnection::connect(&h.url).await?;
    let lease = || {
        let s = store.clone();
        async move { s.lease(&request(1, 2, LONG)).await }
    };

    let hold = format!(
        "UPDATE deployments SET route_mode = 'hold' WHERE id = {}",
        d.id
    );
    assert!(
        commit_while_waiting(&mut conn, &[hold], lease())
            .await?
            .is_empty()
    );
    let pending = store.tasks("orders", Some(TaskState::Pending)).await?;
    assert_eq!(pending.len(), 3, "given back");
    assert!(
        pending
            .iter()
            .all(|t| t.attempts == 0 && t.routed_at.is_none() && t.lease_owner.is_none())
    );

    let back = format!(
        "UPDATE deployments SET route_mode = 'batch' WHERE id = {}",
        d.id
    );
    sqlx::query(&back).execute(&mut conn).await?;
    let end = [
        format!(
            "UPDATE deployments SET outcome = 'promoted', finished_at = 1 WHERE id = {}",
            d.id
        ),
        format!("UPDATE pipelines SET current_version = {v2} WHERE name = 'orders'"),
    ];
    let leased = commit_while_waiting(&mut conn, &end, lease()).await?;
    assert_eq!(ids(&leased), batches[..2].to_vec());
    assert!(leased.iter().all(|l| l.version == v2 && l.attempt == 1));
    drop(conn);
    h.finish().await;
    Ok(())
}

/// A takeover in flight while the old leader writes (PostgreSQL): the fenced write waits for
/// the leadership row, then sees the takeover and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_fenced_write_waits_for_a_takeover_in_flight() -> TestResult {
    let Some(h) = Harness::postgres().await else {
        return Ok(());
    };
    let store = h.store.clone();
    two_versions(&store, "orders").await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 0)).await?;
    let a = lead(&store, "a").await?;
    let mut conn = sqlx::PgConnection::connect(&h.url).await?;
    let takeover =
        "UPDATE leadership SET holder = 'b', epoch = epoch + 1 WHERE duty = 'controller'";
    let s = store.clone();
    let update = reroute(&d, route(RouteMode::Batch, 50));
    let write = async move { s.transition_deployment(&a, d.id, &update).await };
    let written = commit_while_waiting(&mut conn, &[takeover.to_string()], write).await?;
    assert!(!written, "refused: the leadership changed hands");
    assert_eq!(
        store.deployment(d.id).await?.ok_or("missing")?.route.weight,
        0
    );
    assert_eq!(store.deployment_events(d.id).await?.len(), 1);
    drop(conn);
    h.finish().await;
    Ok(())
}

/// The two migration sequences must describe the same tables with the same columns, or the
/// conformance suite would be testing two different products.
#[tokio::test]
async fn schemas_have_the_same_tables_and_columns() -> TestResult {
    let dir = env!("CARGO_MANIFEST_DIR");
    let names = |backend: &str| -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(format!("{dir}/migrations/{backend}"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        Ok(names)
    };
    assert_eq!(
        names("sqlite")?,
        names("postgres")?,
        "migration files differ"
    );

    let Some(pg_url) = testing::fresh_postgres_url().await? else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let sqlite_path = tmp.path().join("s.db");
    sluice_store::open(&sqlite_path.display().to_string()).await?;
    sluice_store::open(&pg_url).await?;

    let mut sqlite =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", sqlite_path.display())).await?;
    let mut sqlite_columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut sqlite)
    .await?;
    let mut pg = sqlx::PgConnection::connect(&pg_url).await?;
    let mut pg_columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut pg)
    .await?;
    sqlite_columns.sort();
    pg_columns.sort();
    assert!(
        sqlite_columns.len() > 40,
        "introspection found too little: {sqlite_columns:?}"
    );
    assert_eq!(sqlite_columns, pg_columns);
    drop(pg);
    let _ = testing::drop_postgres_database(&pg_url).await;
    Ok(())
}

// ---- processes killed mid-transaction ----

/// Set in a child process started by [`killed_leasers_leave_a_consistent_store`]: the store URL
/// the child leases from until it is killed.
const CHILD_ENV: &str = "SLUICE_STORE_TEST_CHILD_URL";

/// Not a test of its own: the body of the child processes. Without [`CHILD_ENV`] it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_child() -> TestResult {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return Ok(());
    };
    let store = sluice_store::open(&url).await?;
    let me = std::process::id() as usize;
    // Bounded, so a child whose parent died does not run forever.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let leases = store.lease(&request(me, 4, Duration::from_secs(2))).await?;
        if leases.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for l in leases {
            store
                .complete(&l, &report(BatchOutcome::Committed, 10, None))
                .await?;
        }
    }
    Ok(())
}

/// Two processes lease and complete from one store and are SIGKILLed mid-stream (most likely
/// inside a transaction). Afterwards the store must be consistent: a batch is done exactly when
/// it has one committed run, and rescue plus a survivor finish everything exactly once.
async fn killed_leasers_leave_a_consistent_store(url: &str) -> TestResult {
    const TASKS: u32 = 1000;
    let store = sluice_store::open(url).await?;
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/big.csv", TASKS, 5).await?;
    let spawn = || {
        std::process::Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "killed_process_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, url)
            .stdout(std::process::Stdio::null())
            .spawn()
    };
    let mut children = [spawn()?, spawn()?];
    // Kill once the children are well into the queue, but far from its end.
    let waited = tokio::time::Instant::now();
    loop {
        let done = store.status().await?[0].done;
        if done >= 100 {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "children made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for child in &mut children {
        child.kill()?; // SIGKILL
        child.wait()?;
    }
    // A COMMIT the server had already received still completes after its client dies. Let such
    // in-flight statements finish, or the two reads below may straddle one and disagree.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let consistent = |tasks: &[sluice_store::TaskRecord], runs: &[sluice_store::BatchRun]| {
        let mut committed: HashMap<&BatchId, usize> = HashMap::new();
        for r in runs.iter().filter(|r| r.outcome == BatchOutcome::Committed) {
            *committed.entry(&r.batch_id).or_default() += 1;
        }
        for t in tasks {
            let n = committed.get(&t.batch_id).copied().unwrap_or(0);
            let expected = usize::from(t.state == TaskState::Done);
            assert_eq!(
                n, expected,
                "batch {} is {} with {n} committed runs",
                t.batch_id, t.state
            );
        }
        committed.len()
    };
    let tasks = store.tasks("orders", None).await?;
    let runs = store.batch_runs("orders", 100_000).await?;
    let done_at_kill = consistent(&tasks, &runs);
    assert!(
        (100..TASKS as usize).contains(&done_at_kill),
        "the kill should land mid-queue: {done_at_kill} done"
    );

    // The children's leases expire; the rescuer takes them back and a survivor drains the rest.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    store.rescue_expired().await?;
    loop {
        let leases = store.lease(&request(99, 64, LONG)).await?;
        if leases.is_empty() {
            break;
        }
        for l in leases {
            assert!(
                store
                    .complete(&l, &report(BatchOutcome::Committed, 10, None))
                    .await?
            );
        }
    }
    let tasks = store.tasks("orders", None).await?;
    assert!(tasks.iter().all(|t| t.state == TaskState::Done));
    let runs = store.batch_runs("orders", 100_000).await?;
    assert_eq!(consistent(&tasks, &runs), TASKS as usize);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_killed_leasers_leave_a_consistent_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    killed_leasers_leave_a_consistent_store(&format!(
        "sqlite://{}",
        dir.path().join("shared.db").display()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_leasers_leave_a_consistent_store() -> TestResult {
    let Some(url) = testing::fresh_postgres_url().await? else {
        return Ok(());
    };
    killed_leasers_leave_a_consistent_store(&url).await?;
    let _ = testing::drop_postgres_database(&url).await;
    Ok(())
}

/// What the planner believes `tasks` holds.
async fn reltuples(conn: &mut sqlx::PgConnection) -> f64 {
    sqlx::query_scalar("SELECT reltuples::float8 FROM pg_class WHERE oid = 'tasks'::regclass")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// PostgreSQL only: a backlog queued in one go is planned with fresh statistics at once, not a
/// minute later when autovacuum gets to it, so leases go through the pending-tasks index
/// instead of sorting every pending row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backlog_is_analyzed_when_queued() {
    use sqlx::Connection;
    let Some(h) = Harness::postgres().await else {
        eprintln!("SLUICE_TEST_POSTGRES=skip: not testing PostgreSQL");
        return;
    };
    let store = h.store.clone();
    let version = pipeline(&store, "orders").await.unwrap();
    // Below the threshold nothing is analyzed yet (a fresh table: no statistics at all)...
    queue(&store, "orders", version, "/in/small.csv", 100, 3)
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&h.url).await.unwrap();
    assert!(reltuples(&mut conn).await < 100.0);
    // ...a backlog of 5,000 batches is.
    queue(&store, "orders", version, "/in/backlog.csv", 5_000, 3)
        .await
        .unwrap();
    let rows = reltuples(&mut conn).await;
    assert!(
        rows >= 5_000.0,
        "tasks analyzed after the backlog: {rows} rows known"
    );
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT seq FROM tasks WHERE state = 'pending' \
         AND run_after <= (extract(epoch from clock_timestamp()) * 1000)::bigint \
         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("tasks_pending_by_seq") && !plan.contains("Sort"),
        "the lease reads the pending index in order:\n{plan}"
    );
    drop(conn);
    h.finish().await;
}

// ---- reads for the API and metrics ----

async fn pipeline_versions_are_listed_oldest_first(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    assert!(store.pipeline_versions("orders").await?.is_empty());
    for n in 1..=3 {
        store
            .register_pipeline_version(
                "orders",
                &format!("h{n}"),
                &format!("spec {n}"),
                "/b",
                false,
            )
            .await?;
    }
    store
        .register_pipeline_version("users", "u1", "spec u", "/b", false)
        .await?;
    let versions = store.pipeline_versions("orders").await?;
    let numbers: Vec<i64> = versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    assert_eq!(versions[1].spec, "spec 2");
    assert!(versions.iter().all(|v| v.pipeline == "orders"));
    Ok(())
}

async fn batches_are_paged_and_filtered(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v1 = pipeline(&store, "orders").await?;
    let all = queue(&store, "orders", v1, "/in/a.csv", 5, 3).await?;
    let v2 = store
        .register_pipeline_version("orders", "hash-orders-2", "spec: 2", "/base", true)
        .await?
        .version;
    let later = queue(&store, "orders", v2, "/in/b.csv", 2, 3).await?;
    pipeline(&store, "users").await?;
    queue(&store, "users", 1, "/in/u.csv", 2, 3).await?;
    // two of orders@1 done, so states differ
    for _ in 0..2 {
        let lease = store
            .lease(&LeaseRequest {
                pipelines: Some(vec!["orders".into()]),
                ..request(1, 1, LONG)
            })
            .await?
            .remove(0);
        assert!(
            store
                .complete(&lease, &report(BatchOutcome::Committed, 10, None))
                .await?
        );
    }
    let q = |state, version, after, limit| BatchQuery {
        pipeline: "orders".into(),
        state,
        version,
        after,
        limit,
    };
    // pages of 3 walk the queue in order, each batch once, and the last has no next
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store.batches(&q(None, None, after, 3)).await?;
        pages += 1;
        assert!(page.batches.len() <= 3);
        seen.extend(page.batches.iter().map(|t| t.batch_id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let expected: Vec<BatchId> = all.iter().chain(&later).cloned().collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
    // a page that ends exactly at the last batch says there is no next one
    let exact = store.batches(&q(None, None, None, 7)).await?;
    assert_eq!((exact.batches.len(), exact.next), (7, None));
    let done = store
        .batches(&q(Some(TaskState::Done), None, None, 10))
        .await?;
    assert_eq!(
        done.batches.iter().map(|t| &t.batch_id).collect::<Vec<_>>(),
        all[..2].iter().collect::<Vec<_>>()
    );
    // The router gives a batch its version when it is first leased (the current one), so the
    // version filter is checked against the queue as `tasks` reads it.
    let tasks = store.tasks("orders", None).await?;
    let count = |state: Option<TaskState>, version| {
        tasks
            .iter()
            .filter(|t| t.version == version && state.is_none_or(|s| t.state == s))
            .count()
    };
    let of_v2 = store.batches(&q(None, Some(v2), None, 10)).await?;
    assert!(count(None, v2) >= 2);
    assert_eq!(of_v2.batches.len(), count(None, v2));
    assert!(of_v2.batches.iter().all(|t| t.version == v2));
    let pending_v1 = store
        .batches(&q(Some(TaskState::Pending), Some(v1), None, 10))
        .await?;
    assert!(count(Some(TaskState::Pending), v1) >= 1);
    assert_eq!(
        pending_v1.batches.len(),
        count(Some(TaskState::Pending), v1)
    );
    assert!(
        store
            .batches(&q(None, None, None, 0))
            .await?
            .batches
            .is_empty()
    );
    assert!(
        store
            .batches(&q(None, None, None, -1))
            .await?
            .batches
            .is_empty()
    );
    let nothing = BatchQuery {
        pipeline: "nope".into(),
        ..q(None, None, None, 10)
    };
    assert!(store.batches(&nothing).await?.batches.is_empty());
    Ok(())
}

async fn a_batch_has_its_runs_and_checks(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    let ids = queue(&store, "orders", v, "/in/a.csv", 2, 3).await?;
    let first = lease_one(&store, 1, LONG).await;
    assert_eq!(first.batch_id, ids[0]);
    store
        .fail(
            &first,
            &report(BatchOutcome::Failed, 0, Some("boom")),
            ErrorKind::External,
            false,
            Duration::ZERO,
        )
        .await?;
    let again = lease_one(&store, 2, LONG).await;
    assert_eq!(
        again.batch_id, ids[0],
        "the failed batch is first in the queue again"
    );
    assert!(
        store
            .complete(&again, &report(BatchOutcome::Committed, 8, None))
            .await?
    );
    let check = |batch: &BatchId, level: &str| CheckRecord {
        pipeline: "orders".into(),
        version: v,
        batch_id: batch.clone(),
        check: "unique(id)".into(),
        kind: "unique".into(),
        level: level.into(),
        considered: 8,
        failing: 0,
        dropped: 0,
        detail: String::new(),
        recorded_at: 0,
    };
    store
        .record_checks(&[check(&ids[0], "pass"), check(&ids[1], "error")])
        .await?;
    let runs = store.batch_runs_of(&ids[0]).await?;
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (
            runs[0].outcome,
            runs[0].attempt,
            runs[1].outcome,
            runs[1].attempt
        ),
        (BatchOutcome::Failed, 1, BatchOutcome::Committed, 2),
        "oldest first"
    );
    assert_eq!(runs[0].error.as_deref(), Some("boom"));
    let checks = store.check_results_of(&ids[0]).await?;
    assert_eq!(checks.len(), 1);
    assert_eq!(
        (checks[0].level.as_str(), &checks[0].batch_id),
        ("pass", &ids[0])
    );
    assert!(store.batch_runs_of(&ids[1]).await?.is_empty());
    assert!(
        store
            .check_results_of(&BatchId("b-none".into()))
            .await?
            .is_empty()
    );
    Ok(())
}

async fn totals_over_a_window(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let v = pipeline(&store, "orders").await?;
    queue(&store, "orders", v, "/in/a.csv", 4, 3).await?;
    let base = sluice_core::now_millis();
    let run = |at: i64, ms: i64, rows: i64, outcome| RunReport {
        started_at: base + at - ms,
        finished_at: base + at,
        rows_in: rows,
        rows_out: rows - 1,
        outcome,
        error: None,
        cpu_us: None,
        peak_memory_bytes: None,
    };
    let leases = store.lease(&request(1, 4, LONG)).await?;
    assert_eq!(leases.len(), 4);
    // one run long before the window, two inside it, one failure inside it
    assert!(
        store
            .complete(&leases[0], &run(-100_000, 10, 5, BatchOutcome::Committed))
            .await?
    );
    assert!(
        store
            .complete(&leases[1], &run(-1_000, 200, 10, BatchOutcome::Committed))
            .await?
    );
    assert!(
        store
            .complete(&leases[2], &run(-500, 400, 20, BatchOutcome::Committed))
            .await?
    );
    store
        .fail(
            &leases[3],
            &run(-200, 50, 0, BatchOutcome::Failed),
            ErrorKind::User,
            true,
            Duration::ZERO,
        )
        .await?;
    let totals = store.run_totals("orders", base - 10_000, base).await?;
    assert_eq!(totals.len(), 2, "{totals:?}");
    let committed = totals
        .iter()
        .find(|t| t.outcome == BatchOutcome::Committed)
        .ok_or("committed totals")?;
    assert_eq!(
        (
            committed.version,
            committed.runs,
            committed.rows_in,
            committed.rows_out
        ),
        (v, 2, 30, 28)
    );
    assert_eq!(
        (committed.duration_ms_sum, committed.duration_ms_max),
        (600, 400)
    );
    let failed = totals
        .iter()
        .find(|t| t.outcome == BatchOutcome::Failed)
        .ok_or("failed totals")?;
    assert_eq!(failed.runs, 1);
    assert!(
        store
            .run_totals("orders", base + 1, base + 10)
            .await?
            .is_empty()
    );
    assert!(store.run_totals("users", 0, base).await?.is_empty());

    let check = |level: &str, failing: i64| CheckRecord {
        pipeline: "orders".into(),
        version: v,
        batch_id: BatchId("b-x".into()),
        check: "not_null(email)".into(),
        kind: "not_null".into(),
        level: level.into(),
        considered: 10,
        failing,
        dropped: 0,
        detail: String::new(),
        recorded_at: 0,
    };
    let before = store.now().await?;
    store
        .record_checks(&[check("pass", 0), check("error", 3), check("error", 4)])
        .await?;
    let after = store.now().await?;
    let checks = store.check_totals("orders", before, after).await?;
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert_eq!(
        (
            checks[0].level.as_str(),
            checks[0].results,
            checks[0].failing
        ),
        ("error", 2, 7)
    );
    assert_eq!((checks[1].level.as_str(), checks[1].results), ("pass", 1));
    assert!(
        store
            .check_totals("orders", 0, before - 1)
            .await?
            .is_empty()
    );
    Ok(())
}

async fn metrics_aggregate_the_store(_h: &Harness, store: Arc<dyn Store>) -> TestResult {
    let empty = store.metrics(LONG).await?;
    assert!(empty.tasks.is_empty() && empty.durations.is_empty() && empty.current.is_empty());
    assert_eq!(empty.workers_alive, 0);
    let v1 = pipeline(&store, "orders").await?;
    queue(&store, "orders", v1, "/in/a.csv", 3, 3).await?;
    // version 1 keeps one pending batch, so it stays live after version 2 becomes current
    let leases = store.lease(&request(1, 2, LONG)).await?;
    let now = sluice_core::now_millis();
    let run = |ms: i64| RunReport {
        started_at: now - ms,
        finished_at: now,
        rows_in: 10,
        rows_out: 9,
        outcome: BatchOutcome::Committed,
        error: None,
        cpu_us: None,
        peak_memory_bytes: None,
    };
    assert!(store.complete(&leases[0], &run(70)).await?);
    assert!(store.complete(&leases[1], &run(2_000_000)).await?);
    let v2 = store
        .register_pipeline_version("orders", "hash-orders-2", "spec: 2", "/base", true)
        .await?
        .version;
    queue(&store, "orders", v2, "/in/b.csv", 1, 3).await?;
    // users@2 is current and the batches of users@1 are all done: users@1 is not live
    pipeline(&store, "users").await?;
    queue(&store, "users", 1, "/in/u.csv", 1, 3).await?;
    let u = store
        .lease(&LeaseRequest {
            pipelines: Some(vec!["users".into()]),
            ..request(2, 1, LONG)
        })
        .await?
        .remove(0);
    assert!(store.complete(&u, &run(30)).await?);
    store
        .register_pipeline_version("users", "hash-users-2", "spec: u2", "/base", true)
        .await?;
    store
        .record_checks(&[
            CheckRecord {
                pipeline: "orders".into(),
                version: v1,
                batch_id: leases[0].batch_id.clone(),
                check: "unique(id)".into(),
                kind: "unique".into(),
                level: "error".into(),
                considered: 10,
                failing: 2,
                dropped: 0,
                detail: String::new(),
                recorded_at: 0,
            },
            CheckRecord {
                pipeline: "orders".into(),
                version: v1,
                batch_id: leases[1].batch_id.clone(),
                check: "unique(id)".into(),
                kind: "unique".into(),
                level: "pass".into(),
                considered: 10,
                failing: 0,
                dropped: 0,
                detail: String::new(),
                recorded_at: 0,
            },
        ])
        .await?;
    let beat = |n: usize, state: &str| WorkerBeat {
        worker: worker(n),
        host: "testhost".into(),
        pid: 4242,
        state: state.into(),
    };
    store.worker_heartbeat(&beat(1, "running")).await?;
    store
        .worker_heartbeat(&beat(2, "waiting for the store"))
        .await?;
    store.worker_heartbeat(&beat(3, "stopped")).await?;

    let m = store.metrics(LONG).await?;
    assert!(m.now >= now);
    assert_eq!(m.current, vec![("orders".into(), v2), ("users".into(), 2)]);
    let count = |p: &str, v: i64, s: TaskState| {
        m.tasks
            .iter()
            .find(|t| t.pipeline == p && t.version == v && t.state == s)
            .map(|t| (t.batches, t.rows_in, t.rows_out))
    };
    assert_eq!(count("orders", v1, TaskState::Done), Some((2, 20, 18)));
    assert_eq!(
        count("orders", v1, TaskState::Pending).map(|c| c.0),
        Some(1)
    );
    assert_eq!(
        count("orders", v2, TaskState::Pending).map(|c| c.0),
        Some(1)
    );
    assert_eq!(count("users", 1, TaskState::Done).map(|c| c.0), Some(1));
    let pending = m
        .tasks
        .iter()
        .find(|t| t.pipeline == "orders" && t.version == v1 && t.state == TaskState::Pending)
        .ok_or("pending count")?;
    assert!(pending.oldest_change <= m.now && pending.oldest_change > 0);
    // live: orders@1 (pending), orders@2 (current, no runs yet), users@2 (current, no runs)
    let live: Vec<(&str, i64)> = m
        .durations
        .iter()
        .map(|h| (h.pipeline.as_str(), h.version))
        .collect();
    assert_eq!(
        live,
        vec![("orders", v1)],
        "only live versions with committed runs"
    );
    let h = &m.durations[0];
    assert_eq!((h.runs, h.duration_ms_sum), (2, 2_000_070));
    assert_eq!(h.buckets.len(), DURATION_BUCKETS_MS.len());
    let at_100 = DURATION_BUCKETS_MS
        .iter()
        .position(|b| *b == 100)
        .ok_or("bound 100")?;
    assert_eq!((h.buckets[0], h.buckets[at_100]), (0, 1));
    assert_eq!(h.buckets.last(), Some(&1), "2,000 s is past every bound");
    assert_eq!(m.workers_alive, 2, "the stopped worker is not alive");
    assert_eq!(store.metrics(Duration::ZERO).await?.workers_alive, 0);
    assert_eq!(m.check_failures.len(), 1);
    let f = &m.check_failures[0];
    assert_eq!(
        (
            f.pipeline.as_str(),
            f.check.as_str(),
            f.level.as_str(),
            f.results
        ),
        ("orders", "unique(id)", "error", 1)
    );
    Ok(())
}

// ---- webhooks ----

async fn webhook_deliveries_are_recorded_before_and_after(
    _h: &Harness,
    store: Arc<dyn Store>,
) -> TestResult {
    two_versions(&store, "orders").await?;
    let d = deploy(&store, "orders", route(RouteMode::Batch, 0)).await?;
    let fence = lead(&store, "ctl").await?;
    assert!(
        store
            .transition_deployment(&fence, d.id, &reroute(&d, route(RouteMode::Batch, 10)))
            .await?
    );
    let outbox = store.outbox(d.id).await?;
    assert_eq!(outbox.len(), 2, "the start and the transition: {outbox:?}");
    assert!(outbox[0].id < outbox[1].id, "oldest first");
    assert_eq!(outbox[0].event.from_state, None);
    assert_eq!(
        outbox.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        store.deployment_events(d.id).await?,
        "the same events as the history"
    );
    let (first, url) = (outbox[0].id, "http://127.0.0.1:9/hook");

    // before: recorded as sending, attempt 1
    assert_eq!(
        store.begin_delivery(&fence, d.id, first, url).await?,
        Some(1)
    );
    let dl = store.webhook_deliveries(d.id).await?;
    assert_eq!(dl.len(), 1);
    assert_eq!((dl[0].state, dl[0].attempts), (DeliveryState::Sending, 1));
    // after: a failure to retry in a while
    let failed = DeliveryResult {
        status: Some(503),
        error: Some("503 Service Unavailable".into()),
        state: DeliveryState::Retrying,
        retry_in_ms: 60_000,
    };
    store.finish_delivery(first, url, 1, &failed).await?;
    let dl = store.webhook_deliveries(d.id).await?;
    assert_eq!(dl[0].state, DeliveryState::Retrying);
    assert_eq!(dl[0].last_status, Some(503));
    assert!(dl[0].next_attempt_at >= store.now().await? + 50_000);
    // a sender that died between before and after leaves `sending`: the next one sends again
    assert_eq!(
        store.begin_delivery(&fence, d.id, first, url).await?,
        Some(2)
    );
    assert_eq!(
        store.begin_delivery(&fence, d.id, first, url).await?,
        Some(3)
    );
    // a late answer of attempt 2 does not overwrite attempt 3's record
    store.finish_delivery(first, url, 2, &failed).await?;
    assert_eq!(
        store.webhook_deliveries(d.id).await?[0].state,
        DeliveryState::Sending
    );
    let ok = DeliveryResult {
        status: Some(200),
        error: None,
        state: DeliveryState::Delivered,
        retry_in_ms: 0,
    };
    store.finish_delivery(first, url, 3, &ok).await?;
    let dl = store.webhook_deliveries(d.id).await?;
    assert_eq!((dl[0].state, dl[0].attempts), (DeliveryState::Delivered, 3));
    assert_eq!(dl[0].last_error, None);
    // final: never sent again
    assert_eq!(store.begin_delivery(&fence, d.id, first, url).await?, None);
    let attempts = store.webhook_attempts(d.id).await?;
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.attempt, a.status))
            .collect::<Vec<_>>(),
        [(1, Some(503)), (2, Some(503)), (3, Some(200))]
    );
    assert!(attempts.iter().all(|a| a.finished_at.is_some()));

    // each URL has its own delivery; a lost fence sends nothing
    assert_eq!(
        store
            .begin_delivery(&fence, d.id, first, "http://other/")
            .await?,
        Some(1)
    );
    store.resign(&fence).await?;
    assert_eq!(
        store
            .begin_delivery(&fence, d.id, outbox[1].id, url)
            .await?,
        None
    );
    assert_eq!(store.webhook_deliveries(d.id).await?.len(), 2);
    Ok(())
}
