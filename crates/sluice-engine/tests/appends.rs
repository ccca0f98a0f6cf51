//! Appends committed on top of a snapshot whose file list lags behind the log (the sink moves
//! its snapshot only when something reads the files): what another writer changed in between
//! is still respected, readers still see every file, and checkpoints are still written.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use sluice_engine::sink::{CommitOutcome, DeltaSink, table_url};

fn narrow(ids: std::ops::Range<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(ids))]).unwrap()
}

fn wide(id: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("note", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![id])),
            Arc::new(StringArray::from(vec![Some("wide")])),
        ],
    )
    .unwrap()
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

#[tokio::test]
async fn another_writers_new_column_survives_an_append_from_a_lagging_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let url = table_url("t", dir.path()).unwrap();
    let a = DeltaSink::new(url.clone());
    let b = DeltaSink::new(url);
    a.commit("a/0", vec![narrow(0..3)]).await.unwrap();
    a.commit("a/1", vec![narrow(3..6)]).await.unwrap();
    // Another process merges a column in; then both keep appending the old shape.
    assert_eq!(
        b.commit("b/0", vec![wide(100)]).await.unwrap(),
        CommitOutcome::Committed { version: 2 }
    );
    assert_eq!(
        a.commit("a/2", vec![narrow(6..9)]).await.unwrap(),
        CommitOutcome::Committed { version: 3 }
    );
    b.commit("b/1", vec![narrow(9..10)]).await.unwrap();
    for sink in [&a, &b] {
        let info = sink.describe().await.unwrap().unwrap();
        assert_eq!(info.version, 4);
        assert!(
            info.schema.field_with_name("note").is_ok(),
            "the merged column is kept: {:?}",
            info.schema
        );
        let all = sink.read_all().await.unwrap();
        assert_eq!(rows(&all), 11, "every file of every writer is read");
    }
    // The other writer's batch is found by its marker, whoever asks.
    assert!(a.is_committed("b/1").await.unwrap());
    assert_eq!(
        a.commit("b/0", vec![wide(100)]).await.unwrap(),
        CommitOutcome::AlreadyCommitted
    );
}

#[tokio::test]
async fn racing_appends_of_two_writers_land_once_each_and_checkpoints_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let url = table_url("t", dir.path()).unwrap();
    let a = Arc::new(DeltaSink::new(url.clone()));
    let b = Arc::new(DeltaSink::new(url));
    a.commit("x/first", vec![narrow(0..1)]).await.unwrap();
    // Both writers run every batch of 1..=104: each batch lands once, whoever wins a version.
    let mut tasks = Vec::new();
    for sink in [a.clone(), b.clone()] {
        tasks.push(tokio::spawn(async move {
            let mut won = 0;
            for i in 1..=104i64 {
                let id = format!("x/{i}");
                if let CommitOutcome::Committed { .. } =
                    sink.commit(&id, vec![narrow(i..i + 1)]).await.unwrap()
                {
                    won += 1;
                }
            }
            won
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap();
    }
    assert_eq!(won, 104, "each batch committed by exactly one writer");
    let all = a.read_all().await.unwrap();
    assert_eq!(rows(&all), 105);
    let info = b.describe().await.unwrap().unwrap();
    assert_eq!(info.version, 104);
    // delta-rs checkpoints every 100 commits; appends committed by the sink itself too.
    let log = dir.path().join("t/_delta_log");
    assert!(
        log.join(format!("{:020}.checkpoint.parquet", 99)).is_file(),
        "checkpoint at version 99"
    );
    let hint = std::fs::read_to_string(log.join("_last_checkpoint")).unwrap();
    assert!(hint.contains("\"version\":99"), "{hint}");
}
