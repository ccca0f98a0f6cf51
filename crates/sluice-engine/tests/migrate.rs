//! `schema migrate` rewrites a Delta table from one schema version to another: atomically,
//! resumably, once, and never dropping data silently.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema as ArrowSchema};
use sluice_engine::migrate::{MigrateError, MigrateOptions, migrate_table};
use sluice_engine::sink::{DeltaSink, table_url};
use sluice_schema::Schema;
use sluice_schema::schema::assign_ids;

const V1: &str = "dataset: orders
fields:
  - {name: id, type: int32, nullable: false}
  - {name: cust, type: string}
";
const V2: &str = "dataset: orders
fields:
  - {name: id, type: int64, nullable: false}
  - {name: customer, type: string, aliases: [cust]}
  - {name: channel, type: string, default: web}
";

/// v1 and v2 with registry-style field ids (the rename keeps its id).
fn versions() -> (Schema, Schema) {
    let mut last = 0;
    let mut v1 = Schema::from_yaml("v1", V1).unwrap();
    assign_ids(None, &mut v1, &mut last);
    let mut v2 = Schema::from_yaml("v2", V2).unwrap();
    assign_ids(Some(&v1), &mut v2, &mut last);
    (v1, v2)
}

fn v1_batch(ids: std::ops::Range<i32>) -> RecordBatch {
    let schema = Arc::new(ArrowSchema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("cust", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from_iter_values(ids.clone())),
            Arc::new(StringArray::from_iter_values(ids.map(|i| format!("c{i}")))),
        ],
    )
    .unwrap()
}

/// A v1 table of three commits (three data files), ids 0..30.
async fn v1_table(dir: &std::path::Path) -> (DeltaSink, url::Url) {
    let url = table_url("t", dir).unwrap();
    let sink = DeltaSink::new(url.clone());
    for k in 0..3 {
        sink.commit(&format!("b{k}"), vec![v1_batch(k * 10..k * 10 + 10)])
            .await
            .unwrap();
    }
    (sink, url)
}

async fn rows(url: &url::Url, version: Option<i64>) -> Vec<RecordBatch> {
    let table = match version {
        Some(v) => sluice_engine::deltalake::open_table_with_version(url.clone(), v as _)
            .await
            .unwrap(),
        None => sluice_engine::deltalake::open_table(url.clone())
            .await
            .unwrap(),
    };
    let ctx = sluice_engine::datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    ctx.sql("SELECT * FROM t ORDER BY id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_table_is_rewritten_to_the_new_version_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (_, url) = v1_table(dir.path()).await;
    let (v1, v2) = versions();
    let report = migrate_table(&url, (1, &v1), (2, &v2), MigrateOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.source_version, 2);
    assert_eq!(report.committed_version, Some(3));
    assert_eq!((report.files_read, report.rows), (3, 30));

    let new = rows(&url, None).await;
    let b = &new[0];
    assert_eq!(
        b.schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        vec!["id", "customer", "channel"]
    );
    assert_eq!(b.column(0).data_type(), &DataType::Int64, "widened");
    let n: usize = new.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 30, "every row once");
    let ids: Vec<i64> = new
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(ids, (0..30).collect::<Vec<i64>>());
    let text = |i: usize| arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
    let customer = text(1);
    let customer = customer.as_string::<i32>();
    assert_eq!(customer.value(7), "c7", "renamed by id");
    let channel = text(2);
    let channel = channel.as_string::<i32>();
    assert!(
        (0..channel.len()).all(|i| channel.value(i) == "web"),
        "default filled"
    );

    // The old version still reads, in its old shape; the migration is done once.
    let old = rows(&url, Some(2)).await;
    assert_eq!(old[0].schema().field(1).name(), "cust");
    assert_eq!(old.iter().map(|b| b.num_rows()).sum::<usize>(), 30);
    let again = migrate_table(&url, (1, &v1), (2, &v2), MigrateOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(again.already_done);
    assert!(
        !dir.path()
            .join("t/_sluice_migrate")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "the checkpoint is gone after the commit"
    );
}

#[tokio::test]
async fn an_interrupted_migration_resumes_without_converting_files_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_, url) = v1_table(dir.path()).await;
    let (v1, v2) = versions();
    let first = migrate_table(
        &url,
        (1, &v1),
        (2, &v2),
        MigrateOptions {
            max_files: Some(2),
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((first.files_read, first.files_remaining), (2, 1));
    assert_eq!(first.committed_version, None);
    // Nothing is visible yet: the table is still v1 with all its rows.
    let still = rows(&url, None).await;
    assert_eq!(still[0].schema().field(1).name(), "cust");
    assert_eq!(still.iter().map(|b| b.num_rows()).sum::<usize>(), 30);

    let mut seen = Vec::new();
    let second = migrate_table(&url, (1, &v1), (2, &v2), MigrateOptions::default(), |p| {
        seen.push(p.rows_done)
    })
    .await
    .unwrap();
    assert_eq!(second.files_resumed, 2);
    assert_eq!(second.rows, 30);
    assert!(second.committed_version.is_some());
    assert_eq!(seen.last(), Some(&30), "progress reaches every row");
    let new = rows(&url, None).await;
    assert_eq!(new.iter().map(|b| b.num_rows()).sum::<usize>(), 30);
}

#[tokio::test]
async fn values_that_cannot_be_carried_over_and_unknown_columns_stop_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let (_, url) = v1_table(dir.path()).await;
    let (v1, v2) = versions();
    migrate_table(&url, (1, &v1), (2, &v2), MigrateOptions::default(), |_| {})
        .await
        .unwrap();
    // Down again, v2 -> v1: fine while every id fits int32...
    let dry = migrate_table(
        &url,
        (2, &v2),
        (1, &v1),
        MigrateOptions {
            dry_run: true,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((dry.rows, dry.committed_version), (30, None));
    // ...but not once one does not.
    let sink = DeltaSink::new(url.clone());
    let big = RecordBatch::try_new(
        Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("customer", DataType::Utf8, true),
            Field::new("channel", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(arrow::array::Int64Array::from(vec![5_000_000_000i64])),
            Arc::new(StringArray::from(vec!["big"])),
            Arc::new(StringArray::from(vec!["shop"])),
        ],
    )
    .unwrap();
    sink.commit("big", vec![big]).await.unwrap();
    let err = migrate_table(&url, (2, &v2), (1, &v1), MigrateOptions::default(), |_| {})
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, MigrateError::Data { .. }), "{msg}");
    assert!(msg.contains("5000000000") && msg.contains("row 1"), "{msg}");
    assert_eq!(
        rows(&url, None)
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        31,
        "nothing changed"
    );

    // A column neither version declares would be dropped: refused.
    let extra = RecordBatch::try_new(
        Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(arrow::array::Int64Array::from(vec![99i64])),
            Arc::new(StringArray::from(vec!["keep me"])),
        ],
    )
    .unwrap();
    sink.commit("extra", vec![extra]).await.unwrap();
    let err = migrate_table(&url, (2, &v2), (1, &v1), MigrateOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("note"), "{err}");
    assert!(err.to_string().contains("would drop"), "{err}");
}
