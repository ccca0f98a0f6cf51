//! `DeltaSink::commit_with`: removes carried in a batch's atomic commit (a replaced file's old
//! rows; a rollback's repair), the data files a commit added, and what happens when files to
//! remove are gone (removed by a racing commit, or rewritten).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::*;
use sluice_engine::sink::{
    CommitExtras, CommitOutcome, DeltaSink, MissingRemoves, SinkError, table_url,
};

fn removing(files: &[String], missing: MissingRemoves) -> CommitExtras {
    CommitExtras {
        removes: files.to_vec(),
        missing,
        metadata: vec![("sluice".into(), serde_json::json!({"batch": "x"}))],
        ..CommitExtras::default()
    }
}

#[tokio::test]
async fn removes_ride_in_the_commit_that_adds_and_the_marker_still_guards_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeltaSink::new(table_url("t", dir.path()).unwrap());
    let old = s
        .commit_with("a/old", vec![batch(0..5)], CommitExtras::default())
        .await
        .unwrap();
    assert_eq!(old.outcome, CommitOutcome::Committed { version: 0 });
    assert_eq!(old.added.len(), 1, "{old:?}");
    let keep = s
        .commit_with("a/keep", vec![batch(100..102)], CommitExtras::default())
        .await
        .unwrap();

    let new = s
        .commit_with(
            "a/new",
            vec![batch(10..13)],
            removing(&old.added, MissingRemoves::Skip),
        )
        .await
        .unwrap();
    assert_eq!(new.outcome, CommitOutcome::Committed { version: 2 });
    assert_eq!(new.removed, old.added);
    let expect: BTreeMap<i64, usize> = (10..13).chain(100..102).map(|k| (k, 1)).collect();
    assert_eq!(ids(&s).await, expect);
    // One commit: the adds, the remove, the txn marker and the metadata together.
    let log =
        std::fs::read_to_string(dir.path().join("t/_delta_log/00000000000000000002.json")).unwrap();
    assert!(log.contains("\"remove\""), "{log}");
    assert!(log.contains("\"add\""), "{log}");
    assert!(log.contains("\"appId\":\"a/new\""), "{log}");
    assert!(log.contains("\"sluice\":{\"batch\":\"x\"}"), "{log}");

    // The same batch again (a re-run) writes and removes nothing.
    let again = s
        .commit_with(
            "a/new",
            vec![batch(10..13)],
            removing(&keep.added, MissingRemoves::Skip),
        )
        .await
        .unwrap();
    assert_eq!(again.outcome, CommitOutcome::AlreadyCommitted);
    assert_eq!(ids(&s).await, expect);
    // ... and its data files are found in the log.
    assert_eq!(s.added_by("a/new", 10).await.unwrap(), Some((2, new.added)));
    assert_eq!(s.added_by("a/unknown", 10).await.unwrap(), None);
}

#[tokio::test]
async fn files_already_gone_are_skipped_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeltaSink::new(table_url("t", dir.path()).unwrap());
    let old = s
        .commit_with("b/old", vec![batch(0..5)], CommitExtras::default())
        .await
        .unwrap();
    s.commit_with(
        "b/first",
        vec![batch(10..11)],
        removing(&old.added, MissingRemoves::Skip),
    )
    .await
    .unwrap();
    // A sibling batch of the same replacement: the old rows are gone already; it adds its own.
    let sibling = s
        .commit_with(
            "b/second",
            vec![batch(11..12)],
            removing(&old.added, MissingRemoves::Skip),
        )
        .await
        .unwrap();
    assert!(sibling.removed.is_empty());
    assert!(matches!(sibling.outcome, CommitOutcome::Committed { .. }));
    // A repair that must remove exactly what was recorded refuses, naming the file.
    let refused = s
        .commit_with(
            "b/repair",
            vec![batch(20..21)],
            removing(&old.added, MissingRemoves::Refuse),
        )
        .await;
    match refused {
        Err(SinkError::Missing { files, .. }) => assert_eq!(files, old.added.join(", ")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let expect: BTreeMap<i64, usize> = [(10, 1), (11, 1)].into_iter().collect();
    assert_eq!(ids(&s).await, expect, "the refused commit wrote nothing");
}

#[tokio::test]
async fn racing_replacements_remove_the_old_rows_once_and_keep_all_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = table_url("t", dir.path()).unwrap();
    let s = DeltaSink::new(url.clone());
    let old = s
        .commit_with("c/old", vec![batch(0..5)], CommitExtras::default())
        .await
        .unwrap();
    // Eight batches of one replaced file, each on its own sink handle (its own worker), all
    // removing the old file: one commit removes it, the others find it gone and just add.
    let mut tasks = Vec::new();
    for k in 0..8i64 {
        let sink = DeltaSink::new(url.clone());
        let removes = old.added.clone();
        tasks.push(tokio::spawn(async move {
            sink.commit_with(
                &format!("c/new{k}"),
                vec![batch(100 + k * 10..100 + k * 10 + 10)],
                removing(&removes, MissingRemoves::Skip),
            )
            .await
        }));
    }
    let mut removed = 0;
    for t in tasks {
        let c = t.await.unwrap().unwrap();
        assert!(
            matches!(c.outcome, CommitOutcome::Committed { .. }),
            "{c:?}"
        );
        removed += c.removed.len();
    }
    assert_eq!(removed, 1, "the old file is removed by exactly one commit");
    let expect: BTreeMap<i64, usize> = (100..180).map(|k| (k, 1)).collect();
    assert_eq!(ids(&s).await, expect);
}

#[tokio::test]
async fn a_replacement_with_a_new_column_merges_the_schema_in_the_same_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeltaSink::new(table_url("t", dir.path()).unwrap());
    let old = s
        .commit_with("d/old", vec![batch(0..3)], CommitExtras::default())
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("note", DataType::Utf8, true),
    ]));
    let wider = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![7])),
            Arc::new(StringArray::from(vec![Some("new")])),
        ],
    )
    .unwrap();
    let c = s
        .commit_with(
            "d/new",
            vec![wider],
            removing(&old.added, MissingRemoves::Skip),
        )
        .await
        .unwrap();
    assert_eq!(c.removed, old.added);
    let rows = s.read_all().await.unwrap();
    let total: usize = rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(total, 1);
    assert!(rows[0].schema().field_with_name("note").is_ok());
}
