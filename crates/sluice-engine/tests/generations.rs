//! Generations on batch markers and the repair commit that removes a bad run's rows: a repaired
//! batch re-runs under the next generation exactly once, and every run of the repaired
//! generation (in flight or later) is fenced off.

mod common;

use std::collections::BTreeMap;

use common::*;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use sluice_engine::sink::{
    Commit, CommitExtras, CommitOutcome, DeltaSink, Part, RepairBatch, SinkError, table_url,
};

fn once(range: std::ops::Range<i64>) -> BTreeMap<i64, usize> {
    range.map(|i| (i, 1)).collect()
}

fn generation(g: i64) -> CommitExtras {
    CommitExtras {
        generation: g,
        ..CommitExtras::default()
    }
}

fn stamped(pipeline: &str, version: i64, batch: &str, g: i64) -> CommitExtras {
    CommitExtras {
        generation: g,
        metadata: vec![(
            "sluice".into(),
            serde_json::json!({"pipeline": pipeline, "version": version, "batch": batch}),
        )],
        ..CommitExtras::default()
    }
}

fn bad(app: &str, g: i64) -> RepairBatch {
    RepairBatch {
        app_id: app.to_string(),
        generation: g,
    }
}

async fn latest(sink: &DeltaSink) -> i64 {
    sink.describe().await.unwrap().unwrap().version
}

/// Where the log-scan tests start: the stable version's rows 0..3, then batch `a`'s first run
/// (rows 10..12), repaired so its file is gone by sluice's hand, and its second run, committed
/// without the store hearing of it (the worker died after its Delta commit). `run(g)` gives
/// generation g's commit extras. Returns both runs.
async fn a_repaired_run_then_an_unrecorded_one(
    s: &DeltaSink,
    a: &str,
    run: impl Fn(i64) -> CommitExtras,
) -> (Commit, Commit) {
    s.commit("p/stable", vec![batch(0..3)]).await.unwrap();
    let first = s.commit_with(a, vec![batch(10..12)], run(1)).await.unwrap();
    s.repair(
        &[bad(a, 1)],
        first.added.clone(),
        serde_json::json!("x"),
        None,
    )
    .await
    .unwrap();
    let unrecorded = s.commit_with(a, vec![batch(10..12)], run(2)).await.unwrap();
    (first, unrecorded)
}

#[tokio::test]
async fn a_repaired_batch_reruns_under_the_next_generation_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = table_url("t", dir.path()).unwrap();
    let s = DeltaSink::new(url.clone());
    let app = DeltaSink::app_id("p", "b1");
    s.commit("p/other", vec![batch(1000..1002)]).await.unwrap();
    let bad_run = s
        .commit_with(&app, vec![batch(0..5)], generation(1))
        .await
        .unwrap();
    assert!(matches!(bad_run.outcome, CommitOutcome::Committed { .. }));
    assert!(s.is_committed_at(&app, 1).await.unwrap());
    assert!(
        !s.is_committed_at(&app, 2).await.unwrap(),
        "generation 1's marker does not make generation 2 done"
    );

    let repaired = s
        .repair(
            &[bad(&app, 1)],
            bad_run.added.clone(),
            serde_json::json!("candidate v2 rolled back"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(repaired.removed, bad_run.added);
    assert_eq!(
        ids(&s).await,
        once(1000..1002),
        "the bad run's rows are gone"
    );

    // A run of the repaired generation starting now (this process, and another one reading
    // the markers from the log) finds its marker and writes nothing.
    let late = s
        .commit_with(&app, vec![batch(0..5)], generation(1))
        .await
        .unwrap();
    assert_eq!(late.outcome, CommitOutcome::AlreadyCommitted);
    let other = DeltaSink::new(url.clone());
    let late = other
        .commit_with(&app, vec![batch(0..5)], generation(1))
        .await
        .unwrap();
    assert_eq!(late.outcome, CommitOutcome::AlreadyCommitted);
    assert_eq!(ids(&s).await, once(1000..1002));

    // The trap: the re-run under generation 2 must not be taken for committed by generation
    // 1's marker, in this process or another one.
    assert!(!other.is_committed_at(&app, 2).await.unwrap());
    let rerun = other
        .commit_with(&app, vec![batch(100..105)], generation(2))
        .await
        .unwrap();
    assert!(
        matches!(rerun.outcome, CommitOutcome::Committed { .. }),
        "{rerun:?}"
    );
    for sink in [&s, &other, &DeltaSink::new(url.clone())] {
        let again = sink
            .commit_with(&app, vec![batch(100..105)], generation(2))
            .await
            .unwrap();
        assert_eq!(again.outcome, CommitOutcome::AlreadyCommitted);
        assert!(sink.is_committed_at(&app, 2).await.unwrap());
    }
    let mut want = once(1000..1002);
    want.extend(once(100..105));
    assert_eq!(ids(&s).await, want);
    assert_eq!(
        s.added_by(&app, 10).await.unwrap().map(|(_, f)| f),
        Some(rerun.added),
        "the batch's commit is the re-run's"
    );

    // Generations start at 1.
    let err = s
        .commit_with(&app, vec![batch(0..1)], generation(0))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("generations start at 1"), "{err}");
}

#[tokio::test]
async fn a_run_in_flight_from_before_the_repair_conflicts_and_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = table_url("t", dir.path()).unwrap();
    let s = DeltaSink::new(url.clone());
    let app = DeltaSink::app_id("p", "b1");
    let bad_run = s
        .commit_with(&app, vec![batch(0..5)], generation(1))
        .await
        .unwrap();

    // Two writers prepared their commits from the snapshot before the repair: a run of the
    // repaired batch at the repaired generation, and an unrelated batch.
    let stale = deltalake::open_table(url.clone()).await.unwrap();
    s.repair(
        &[bad(&app, 1)],
        bad_run.added,
        serde_json::json!("test"),
        None,
    )
    .await
    .unwrap();
    let fenced = stale
        .clone()
        .write(vec![batch(50..55)])
        .with_save_mode(SaveMode::Append)
        .with_commit_properties(
            CommitProperties::default()
                .with_application_transaction(Transaction::new(&app, 1))
                .with_max_retries(5),
        )
        .await;
    fenced.expect_err("a stale run of the repaired batch must be refused");
    assert!(ids(&s).await.is_empty(), "neither bad run's rows appear");

    // A repair that removes nothing (an abort of a batch still in flight) fences by the txn
    // action alone: the stale run is refused for its app id (`ConcurrentTransaction`), while a
    // stale commit of another batch, a blind append, goes through.
    let in_flight = DeltaSink::app_id("p", "b3");
    let stale = deltalake::open_table(url.clone()).await.unwrap();
    let before = stale.version();
    s.repair(
        &[bad(&in_flight, 1)],
        Vec::new(),
        serde_json::json!("abort"),
        None,
    )
    .await
    .unwrap();
    let write = |table: deltalake::DeltaTable, app: String, rows| async move {
        table
            .write(vec![batch(rows)])
            .with_save_mode(SaveMode::Append)
            .with_commit_properties(
                CommitProperties::default()
                    .with_application_transaction(Transaction::new(app, 1))
                    .with_max_retries(5),
            )
            .await
    };
    let err = write(stale.clone(), in_flight.clone(), 50..55)
        .await
        .expect_err("the repair's txn action must fence the stale run");
    assert!(
        format!("{err:?}").contains("ConcurrentTransaction"),
        "refused for the app id: {err:?}"
    );
    let other = write(stale, DeltaSink::app_id("p", "b4"), 60..62)
        .await
        .unwrap();
    assert!(other.version() > before);
    assert_eq!(ids(&s).await, once(60..62));

    // The sink's own retry after such a refusal: it finds the marker and reports done.
    for app in [&app, &in_flight] {
        let retry = DeltaSink::new(url.clone())
            .commit_with(app, vec![batch(50..55)], generation(1))
            .await
            .unwrap();
        assert_eq!(retry.outcome, CommitOutcome::AlreadyCommitted);
    }
    assert_eq!(ids(&s).await, once(60..62));
}

#[tokio::test]
async fn a_repair_refuses_files_that_are_no_longer_in_the_table_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeltaSink::new(table_url("t", dir.path()).unwrap());
    let a = DeltaSink::app_id("p", "a");
    let b = DeltaSink::app_id("p", "b");
    let run_a = s
        .commit_with(&a, vec![batch(0..3)], generation(1))
        .await
        .unwrap();
    let run_b = s
        .commit_with(&b, vec![batch(10..13)], generation(1))
        .await
        .unwrap();
    // b's file is rewritten (what a compaction does): removed, its rows in a new file.
    s.commit_with(
        "compact",
        vec![batch(10..13)],
        CommitExtras {
            removes: run_b.added.clone(),
            ..CommitExtras::default()
        },
    )
    .await
    .unwrap();
    let version = latest(&s).await;
    let files: Vec<String> = run_a.added.iter().chain(&run_b.added).cloned().collect();
    let err = s
        .repair(
            &[bad(&a, 1), bad(&b, 1)],
            files,
            serde_json::json!("test"),
            None,
        )
        .await
        .unwrap_err();
    match &err {
        SinkError::Missing { files, .. } => {
            assert_eq!(
                files,
                &run_b.added.join(", "),
                "names the rewritten file only"
            )
        }
        other => panic!("expected Missing, got {other}"),
    }
    assert_eq!(latest(&s).await, version, "nothing was committed");
    let mut want = once(0..3);
    want.extend(once(10..13));
    assert_eq!(ids(&s).await, want, "no row was removed");
    // Not fenced either: the batches' generation 1 markers are as they were.
    assert!(s.is_committed_at(&a, 1).await.unwrap());
    assert!(!s.is_committed_at(&a, 2).await.unwrap());
}

#[tokio::test]
async fn a_repair_of_a_batch_never_committed_fences_its_generation() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeltaSink::new(table_url("t", dir.path()).unwrap());
    s.commit("p/first", vec![batch(0..1)]).await.unwrap();
    let app = DeltaSink::app_id("p", "in-flight");
    s.repair(
        &[bad(&app, 3)],
        Vec::new(),
        serde_json::json!("abort"),
        None,
    )
    .await
    .unwrap();
    for g in 1..=3 {
        let c = s
            .commit_with(&app, vec![batch(5..6)], generation(g))
            .await
            .unwrap();
        assert_eq!(c.outcome, CommitOutcome::AlreadyCommitted, "generation {g}");
    }
    let c = s
        .commit_with(&app, vec![batch(5..6)], generation(4))
        .await
        .unwrap();
    assert!(matches!(c.outcome, CommitOutcome::Committed { .. }));
    let mut want = once(0..1);
    want.extend(once(5..6));
    assert_eq!(ids(&s).await, want);
    // A repair of a lower generation than the marker records never lowers it.
    s.repair(&[bad(&app, 1)], c.added, serde_json::json!("again"), None)
        .await
        .unwrap();
    assert!(s.is_committed_at(&app, 4).await.unwrap());
    let err = s
        .repair(&[bad(&app, 0)], Vec::new(), serde_json::json!("x"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("generations start at 1"), "{err}");
}

#[tokio::test]
async fn the_log_tells_which_files_each_pipeline_version_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeltaSink::new(table_url("t", dir.path()).unwrap());
    let b1 = s
        .commit_with(
            &DeltaSink::app_id("p", "b1"),
            vec![batch(0..2)],
            stamped("p", 1, "b1", 1),
        )
        .await
        .unwrap();
    let b2 = s
        .commit_with(
            &DeltaSink::app_id("p", "b2"),
            vec![batch(2..4)],
            stamped("p", 2, "b2", 1),
        )
        .await
        .unwrap();
    s.commit_with(
        &DeltaSink::app_id("q", "b9"),
        vec![batch(9..10)],
        stamped("q", 1, "b9", 1),
    )
    .await
    .unwrap();
    let split = s
        .commit_split(
            &DeltaSink::app_id("p", "b3"),
            vec![
                Part {
                    version: 1,
                    batches: vec![batch(4..6)],
                },
                Part {
                    version: 2,
                    batches: vec![batch(6..9)],
                },
            ],
            stamped("p", 1, "b3", 2),
        )
        .await
        .unwrap();
    assert_eq!(split.parts.len(), 2);
    assert!(split.parts.iter().all(|f| !f.is_empty()));
    let mut all = split.parts.concat();
    all.sort();
    let mut added = split.added.clone();
    added.sort();
    assert_eq!(all, added, "the parts' files are the commit's files");
    // A repair commit is not a version's batch commit.
    s.repair(
        &[bad(&DeltaSink::app_id("p", "b2"), 1)],
        b2.added.clone(),
        serde_json::json!("rollback of v2"),
        None,
    )
    .await
    .unwrap();

    let v1 = s.commits_of_version("p", 1, 100).await.unwrap();
    let got: Vec<(&str, i64, &Vec<String>)> = v1
        .iter()
        .map(|c| (c.batch.as_str(), c.generation, &c.files))
        .collect();
    assert_eq!(got, vec![("b1", 1, &b1.added), ("b3", 2, &split.parts[0])]);
    let v2 = s.commits_of_version("p", 2, 100).await.unwrap();
    let got: Vec<(&str, &Vec<String>)> = v2.iter().map(|c| (c.batch.as_str(), &c.files)).collect();
    assert_eq!(got, vec![("b2", &b2.added), ("b3", &split.parts[1])]);
    assert!(s.commits_of_version("p", 3, 100).await.unwrap().is_empty());
    // Only the newest `within` commits are read.
    assert_eq!(s.commits_of_version("p", 1, 1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_repair_finds_in_the_log_the_runs_nobody_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeltaSink::new(table_url("t", dir.path()).unwrap());
    let before = sluice_core::now_millis() - 1;
    let a = DeltaSink::app_id("p", "a");
    a_repaired_run_then_an_unrecorded_one(&s, &a, generation).await;
    // And a batch in the same state at its first generation; another at a later generation,
    // not to be touched.
    let b = DeltaSink::app_id("p", "b");
    s.commit_with(&b, vec![batch(20..22)], generation(1))
        .await
        .unwrap();
    let c = DeltaSink::app_id("p", "c");
    s.commit_with(&c, vec![batch(30..32)], generation(3))
        .await
        .unwrap();
    // Without the scan the store's (empty) record is all the repair removes.
    let unscanned = s
        .repair(&[bad(&a, 2)], Vec::new(), serde_json::json!("y"), None)
        .await
        .unwrap();
    assert!(unscanned.removed.is_empty());
    let repaired = s
        .repair(
            &[bad(&a, 2), bad(&b, 1), bad(&c, 2)],
            Vec::new(),
            serde_json::json!("abort"),
            Some(before),
        )
        .await
        .unwrap();
    assert_eq!(repaired.removed.len(), 2, "{:?}", repaired.removed);
    let mut want = once(0..3);
    want.extend(once(30..32));
    assert_eq!(ids(&s).await, want, "only the unrecorded runs' rows went");
    // A scan that starts after those commits finds nothing.
    let later = s
        .repair(
            &[bad(&c, 3)],
            Vec::new(),
            serde_json::json!("late"),
            Some(sluice_core::now_millis() + 60_000),
        )
        .await
        .unwrap();
    assert!(later.removed.is_empty());
    assert_eq!(ids(&s).await, want);
}

/// Regression: a file the log scan found (a run nobody recorded) that a compaction rewrote was
/// skipped as "removed by an earlier repair", so the repair fenced the batch and left its rows
/// in the compacted file: stable's re-run would have written them twice. It is refused, like a
/// recorded file, naming the file and the commit that rewrote it; a file an earlier repair
/// removed is still skipped.
#[tokio::test]
async fn a_repair_refuses_a_scanned_file_that_a_compaction_rewrote() {
    let dir = tempfile::tempdir().unwrap();
    let url = table_url("t", dir.path()).unwrap();
    let s = DeltaSink::new(url.clone());
    let before = sluice_core::now_millis() - 1;
    let a = DeltaSink::app_id("p", "a");
    let (first, unrecorded) =
        a_repaired_run_then_an_unrecorded_one(&s, &a, |g| stamped("p", 2, "a", g)).await;
    // A real compaction: delta-rs's OPTIMIZE rewrites the small files into one.
    let table = deltalake::open_table(url.clone()).await.unwrap();
    let (_, metrics) = table.optimize().await.unwrap();
    assert!(metrics.num_files_removed >= 2, "{metrics:?}");
    let version = latest(&s).await;
    let mut want = once(0..3);
    want.extend(once(10..12));
    assert_eq!(ids(&s).await, want);

    let err = s
        .repair(
            &[bad(&a, 2)],
            Vec::new(),
            serde_json::json!("abort"),
            Some(before),
        )
        .await
        .unwrap_err();
    match &err {
        SinkError::Rewritten { files, .. } => {
            assert!(
                files.contains(&unrecorded.added[0]) && files.contains("OPTIMIZE"),
                "names the rewritten file and the compaction: {files}"
            );
            assert!(
                !files.contains(&first.added[0]),
                "the file the earlier repair removed is not listed: {files}"
            );
        }
        other => panic!("expected Rewritten, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("nothing was removed") && message.contains("retry"),
        "{message}"
    );
    assert_eq!(latest(&s).await, version, "nothing was committed");
    assert_eq!(ids(&s).await, want, "no row was removed");
}

/// A retried repair finds its recorded files gone either way: its own earlier commit removed
/// them (the process died before recording it), or a compaction rewrote them into files that
/// hold other rows too. The log tells them apart: only the first has a repair commit with the
/// retry's reason in it.
#[tokio::test]
async fn a_retried_repair_tells_its_own_landed_commit_from_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let url = table_url("t", dir.path()).unwrap();
    let s = DeltaSink::new(url.clone());
    let before = sluice_core::now_millis() - 1;
    s.commit("p/stable", vec![batch(0..3)]).await.unwrap();
    let (a, b) = (DeltaSink::app_id("p", "a"), DeltaSink::app_id("p", "b"));
    let run_a = s
        .commit_with(&a, vec![batch(10..12)], generation(1))
        .await
        .unwrap();
    let run_b = s
        .commit_with(&b, vec![batch(20..22)], generation(1))
        .await
        .unwrap();

    // Deployment 7 repairs a; its retry finds the files gone, and its commit in the log.
    let ours =
        |id: i64| move |r: &serde_json::Value| r.get("deployment") == Some(&serde_json::json!(id));
    let landed = s
        .repair(
            &[bad(&a, 1)],
            run_a.added.clone(),
            serde_json::json!({"deployment": 7}),
            None,
        )
        .await
        .unwrap();
    let retry = s
        .repair(
            &[bad(&a, 1)],
            run_a.added.clone(),
            serde_json::json!({"deployment": 7}),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(retry, SinkError::Missing { .. }), "{retry}");
    assert_eq!(
        s.find_repair(before, ours(7)).await.unwrap(),
        Some(landed.version)
    );

    // b's file is compacted away (with the stable rows'): deployment 8's repair of b finds
    // it gone too, and no commit of its own, so it must not count the repair as done.
    let table = deltalake::open_table(url.clone()).await.unwrap();
    let (_, metrics) = table.optimize().await.unwrap();
    assert!(metrics.num_files_removed >= 2, "{metrics:?}");
    let err = s
        .repair(
            &[bad(&b, 1)],
            run_b.added.clone(),
            serde_json::json!({"deployment": 8}),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Missing { .. }), "{err}");
    assert_eq!(s.find_repair(before, ours(8)).await.unwrap(), None);
    // Deployment 7's commit is still found past the compaction's, and nothing older than
    // `since` is read.
    assert_eq!(
        s.find_repair(before, ours(7)).await.unwrap(),
        Some(landed.version)
    );
    let future = sluice_core::now_millis() + 60_000;
    assert_eq!(s.find_repair(future, ours(7)).await.unwrap(), None);
    let mut want = once(0..3);
    want.extend(once(20..22));
    assert_eq!(ids(&s).await, want, "b's rows are still there, once");
}
