//! The sink's exactly-once protocol, attacked directly: batches committed out of order, the
//! same batch committed again, and the same batch raced by many writers at once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use common::*;
use sluice_engine::deltalake;
use sluice_engine::sink::{CommitOutcome, DeltaSink, table_url};

fn sink(dir: &std::path::Path) -> DeltaSink {
    DeltaSink::new(table_url("t", dir).unwrap())
}

async fn counts(sink: &DeltaSink) -> HashMap<i64, usize> {
    let mut out = HashMap::new();
    for b in sink.read_all().await.unwrap() {
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        for v in ids.iter().flatten() {
            *out.entry(v).or_default() += 1;
        }
    }
    out
}

#[tokio::test]
async fn batches_committed_out_of_order_are_all_found_and_never_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(dir.path());
    // Batch k holds ids k*10..k*10+10; commit in a scrambled order, as parallel workers do.
    let order = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4];
    for k in order {
        let app = DeltaSink::app_id("p", &format!("b{k}"));
        let out = s
            .commit(&app, vec![batch(k * 10..k * 10 + 10)])
            .await
            .unwrap();
        assert!(
            matches!(out, CommitOutcome::Committed { .. }),
            "b{k}: {out:?}"
        );
    }
    // Every batch is known as committed, including the ones committed before higher ones.
    for k in 0..10 {
        let app = DeltaSink::app_id("p", &format!("b{k}"));
        assert!(s.is_committed(&app).await.unwrap(), "b{k} must be found");
    }
    // A re-run (worker died after commit, before reporting) writes nothing.
    for k in order {
        let app = DeltaSink::app_id("p", &format!("b{k}"));
        let out = s
            .commit(&app, vec![batch(k * 10..k * 10 + 10)])
            .await
            .unwrap();
        assert_eq!(out, CommitOutcome::AlreadyCommitted, "b{k}");
    }
    // Another process (a fresh handle on the same table) sees the same.
    let other = sink(dir.path());
    assert!(
        other
            .is_committed(&DeltaSink::app_id("p", "b0"))
            .await
            .unwrap()
    );
    assert!(
        !other
            .is_committed(&DeltaSink::app_id("p", "b10"))
            .await
            .unwrap()
    );
    let c = counts(&other).await;
    assert_eq!(c.len(), 100);
    assert!(c.values().all(|&n| n == 1), "no id twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_batch_raced_by_many_writers_is_committed_once() {
    let dir = tempfile::tempdir().unwrap();
    // Create the table first with an unrelated batch so every racer starts from version 0.
    sink(dir.path())
        .commit("sluice/p/seed", vec![batch(1000..1001)])
        .await
        .unwrap();
    for round in 0..3 {
        let app = DeltaSink::app_id("p", &format!("raced-{round}"));
        let mut handles = Vec::new();
        for _ in 0..6 {
            // Separate handles: as separate processes would be.
            let s = sink(dir.path());
            let app = app.clone();
            handles.push(tokio::spawn(async move {
                s.commit(&app, vec![batch(round * 100..round * 100 + 50)])
                    .await
            }));
        }
        let mut committed = 0;
        for h in handles {
            match h.await.unwrap().unwrap() {
                CommitOutcome::Committed { .. } => committed += 1,
                CommitOutcome::AlreadyCommitted => {}
            }
        }
        assert_eq!(committed, 1, "round {round}: exactly one racer commits");
    }
    let c = counts(&sink(dir.path())).await;
    assert_eq!(c.len(), 151);
    assert!(c.values().all(|&n| n == 1), "no id twice: {c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn different_batches_from_concurrent_writers_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let mut handles = Vec::new();
    for w in 0..4i64 {
        let s = sink(dir.path());
        handles.push(tokio::spawn(async move {
            for k in 0..5i64 {
                let id = w * 5 + k;
                let app = DeltaSink::app_id("p", &format!("w{w}-{k}"));
                s.commit(&app, vec![batch(id * 10..id * 10 + 10)])
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let c = counts(&sink(dir.path())).await;
    assert_eq!(
        c.len(),
        200,
        "every batch of every writer landed, including the table's creation race"
    );
    assert!(c.values().all(|&n| n == 1));
}

#[tokio::test]
async fn tables_sluice_creates_bound_their_commit_markers() {
    let dir = tempfile::tempdir().unwrap();
    let url = table_url("t", dir.path()).unwrap();
    DeltaSink::new(url.clone())
        .commit("sluice/p/b0", vec![batch(0..3)])
        .await
        .unwrap();
    let info = DeltaSink::new(url.clone())
        .describe()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.version, 0);
    assert_eq!(info.schema.field(0).name(), "id");
    let age = sluice_core::now_millis() - info.last_commit_ms.unwrap();
    assert!(
        (0..60_000).contains(&age),
        "last commit is recent: {age} ms"
    );
    let empty = table_url("empty", dir.path()).unwrap();
    assert!(DeltaSink::new(empty).describe().await.unwrap().is_none());
    let table = deltalake::DeltaTable::try_from_url(url).await.unwrap();
    let config = table.snapshot().unwrap().metadata().configuration().clone();
    assert_eq!(
        config
            .get("delta.setTransactionRetentionDuration")
            .map(String::as_str),
        Some(sluice_engine::sink::TXN_RETENTION)
    );
}

#[tokio::test]
async fn a_version_that_adds_a_column_evolves_the_table_in_place() {
    use arrow::array::StringArray;
    let dir = tempfile::tempdir().unwrap();
    let s = sink(dir.path());
    s.commit("sluice/p/v1-a", vec![batch(0..3)]).await.unwrap();
    let wider = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![3, 4])),
            Arc::new(StringArray::from(vec![Some("x"), None])),
        ],
    )
    .unwrap();
    s.commit("sluice/p/v2-a", vec![wider]).await.unwrap();
    // A batch of the previous version, still in flight, lands too.
    s.commit("sluice/p/v1-b", vec![batch(5..7)]).await.unwrap();
    let info = s.describe().await.unwrap().unwrap();
    let names: Vec<_> = info
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, vec!["id", "note"]);
    let c = counts(&sink(dir.path())).await;
    assert_eq!(c.len(), 7);
    let notes: usize = sink(dir.path())
        .read_all()
        .await
        .unwrap()
        .iter()
        .map(|b| {
            b.column_by_name("note").unwrap().len() - b.column_by_name("note").unwrap().null_count()
        })
        .sum();
    assert_eq!(notes, 1, "old rows read the new column as null");
}

/// The sink answers marker lookups from memory; a batch another process committed since must
/// still be seen, whichever way this sink learned of the table (its own commits, a lookup).
#[tokio::test]
async fn a_batch_committed_by_another_process_is_seen_by_this_one() {
    let dir = tempfile::tempdir().unwrap();
    let ours = sink(dir.path());
    let theirs = sink(dir.path());
    // Ours knows the table from its own commits, the markers included.
    for k in 0..3 {
        let app = DeltaSink::app_id("p", &format!("ours-{k}"));
        ours.commit(&app, vec![batch(k * 10..k * 10 + 10)])
            .await
            .unwrap();
    }
    for round in 0..3 {
        let app = DeltaSink::app_id("p", &format!("theirs-{round}"));
        assert!(!ours.is_committed(&app).await.unwrap(), "round {round}");
        let out = theirs
            .commit(&app, vec![batch(100 + round * 10..110 + round * 10)])
            .await
            .unwrap();
        assert!(matches!(out, CommitOutcome::Committed { .. }), "{out:?}");
        // Right after, with no commit of ours in between: a lookup and a commit both see it.
        assert!(ours.is_committed(&app).await.unwrap(), "round {round}");
        let again = ours
            .commit(&app, vec![batch(100 + round * 10..110 + round * 10)])
            .await
            .unwrap();
        assert_eq!(again, CommitOutcome::AlreadyCommitted, "round {round}");
        // And one of ours after theirs: our commit's version is past theirs.
        let next = DeltaSink::app_id("p", &format!("ours-after-{round}"));
        ours.commit(&next, vec![batch(200 + round * 10..210 + round * 10)])
            .await
            .unwrap();
        assert!(theirs.is_committed(&next).await.unwrap(), "round {round}");
    }
    // Past a checkpoint (every 100 versions) the markers still hold: the fresh handle reads
    // them from the checkpoint, the old ones from the commits.
    for k in 0..100 {
        let app = DeltaSink::app_id("p", &format!("bulk-{k}"));
        theirs
            .commit(&app, vec![batch(1000 + k..1001 + k)])
            .await
            .unwrap();
    }
    let fresh = sink(dir.path());
    for k in [0, 57, 99] {
        let app = DeltaSink::app_id("p", &format!("bulk-{k}"));
        assert!(ours.is_committed(&app).await.unwrap(), "bulk-{k}");
        assert!(fresh.is_committed(&app).await.unwrap(), "bulk-{k}");
    }
    for app in ["ours-0", "theirs-2", "ours-after-1"] {
        let app = DeltaSink::app_id("p", app);
        assert!(fresh.is_committed(&app).await.unwrap(), "{app}");
    }
    assert!(
        !fresh
            .is_committed(&DeltaSink::app_id("p", "never"))
            .await
            .unwrap()
    );
    let c = counts(&fresh).await;
    assert_eq!(c.len(), 30 + 30 + 30 + 100);
    assert!(c.values().all(|&n| n == 1), "no id twice");
}
