//! Table diff against planted differences: every missing, extra and changed row of a million-row
//! table is found with exact counts and samples; identical tables written in another order and
//! file layout compare equal; composite and NULL keys, schema changes and repeated keys.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use sluice_engine::diff::{DiffError, DiffOptions, DiffReport, KeyValues, Side, diff_tables};
use sluice_engine::sink::{DeltaSink, table_url};

/// One row of the big tables; every column derives from the id unless a test changes it.
#[derive(Clone)]
struct Row {
    id: i64,
    name: String,
    amount: f64,
    qty: Option<i32>,
    day: i32,
}

fn row(id: i64) -> Row {
    Row {
        id,
        name: format!("n{id}"),
        amount: id as f64 * 0.5,
        qty: (id % 7 != 0).then_some((id % 1000) as i32),
        day: (id % 3650) as i32,
    }
}

fn batch(rows: &[Row]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("qty", DataType::Int32, true),
        Field::new("day", DataType::Date32, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.name.as_str()),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.amount),
        )),
        Arc::new(Int32Array::from_iter(rows.iter().map(|r| r.qty))),
        Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.day))),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Writes `batches` as one Delta commit per group, so tables can differ in file layout.
async fn write_table(dir: &std::path::Path, name: &str, commits: Vec<Vec<RecordBatch>>) -> String {
    let sink = DeltaSink::new(table_url(name, dir).unwrap());
    for (i, batches) in commits.into_iter().enumerate() {
        sink.commit(
            &DeltaSink::app_id("diff-test", &format!("{name}-{i}")),
            batches,
        )
        .await
        .unwrap();
    }
    dir.join(name).display().to_string()
}

fn key(id: i64) -> KeyValues {
    KeyValues::from([("id".to_string(), Some(id.to_string()))])
}

fn keys(samples: &[KeyValues]) -> BTreeSet<String> {
    samples
        .iter()
        .map(|k| {
            k.iter()
                .map(|(c, v)| format!("{c}={}", v.as_deref().unwrap_or("NULL")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

fn ids(list: &[i64]) -> BTreeSet<String> {
    keys(&list.iter().map(|&i| key(i)).collect::<Vec<_>>())
}

async fn diff(a: &str, b: &str, key: &[&str], samples: usize) -> DiffReport {
    let key: Vec<String> = key.iter().map(|s| s.to_string()).collect();
    let opts = DiffOptions {
        samples,
        ..DiffOptions::default()
    };
    diff_tables(a, b, &key, opts, |_| {}).await.unwrap()
}

const ROWS: i64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_planted_difference_in_a_million_rows_is_found_and_identical_tables_match() {
    let dir = tempfile::tempdir().unwrap();
    let base: Vec<Row> = (0..ROWS).map(row).collect();

    // A: four commits of 250,000 rows in id order.
    let a = write_table(
        dir.path(),
        "a",
        base.chunks(250_000).map(|c| vec![batch(c)]).collect(),
    )
    .await;

    // Planted differences. Ids multiple of 7 have a NULL qty.
    let missing: Vec<i64> = (0..10).map(|k| k * 99_991 + 13).collect();
    let extra: Vec<i64> = (0..7).map(|k| 2_000_000 + k * 3).collect();
    let name_changed = [5_i64, 77_777, 123_456, 500_001, 999_999];
    let amount_changed = [1_i64, 250_000, 250_001, 888_888];
    let qty_null_to_value = [14_i64, 700_000, 70_007]; // multiples of 7: NULL in A
    let qty_value_to_null = [15_i64, 333_334];
    let day_changed = [42_i64];
    let mut b_rows = Vec::with_capacity(base.len());
    for r in &base {
        if missing.contains(&r.id) {
            continue;
        }
        let mut r = r.clone();
        if name_changed.contains(&r.id) {
            r.name = format!("renamed {}", r.id);
        }
        if amount_changed.contains(&r.id) {
            r.amount += 0.25;
        }
        if qty_null_to_value.contains(&r.id) {
            assert_eq!(r.qty, None);
            r.qty = Some(-1);
        }
        if qty_value_to_null.contains(&r.id) {
            assert!(r.qty.is_some());
            r.qty = None;
        }
        if day_changed.contains(&r.id) {
            r.day += 1;
        }
        b_rows.push(r);
    }
    b_rows.extend(extra.iter().map(|&id| row(id)));
    // B in another order and layout: reversed, in uneven commits.
    b_rows.reverse();
    let (first, rest) = b_rows.split_at(100_000);
    let b = write_table(
        dir.path(),
        "b",
        vec![
            vec![batch(first)],
            rest.chunks(300_000).map(batch).collect(),
        ],
    )
    .await;
    let report = diff(&a, &b, &["id"], 20).await;
    assert_eq!(report.rows_a, ROWS as u64);
    assert_eq!(report.rows_b, (ROWS - 10 + 7) as u64);
    assert!(report.schema.is_empty(), "{:?}", report.schema);
    assert_eq!(report.compared_columns, ["name", "amount", "qty", "day"]);
    assert_eq!(report.only_in_a.count, 10);
    assert_eq!(keys(&report.only_in_a.samples), ids(&missing));
    assert_eq!(report.only_in_b.count, 7);
    assert_eq!(keys(&report.only_in_b.samples), ids(&extra));
    assert_eq!(report.changed.count, 5 + 4 + 3 + 2 + 1);
    assert!(report.duplicates.is_empty());
    let columns: BTreeMap<&str, _> = report
        .changed
        .columns
        .iter()
        .map(|c| (c.column.as_str(), c))
        .collect();
    assert_eq!(
        columns.keys().copied().collect::<Vec<_>>(),
        ["amount", "day", "name", "qty"]
    );
    assert_eq!(columns["name"].count, 5);
    assert_eq!(
        keys(
            &columns["name"]
                .samples
                .iter()
                .map(|s| s.key.clone())
                .collect::<Vec<_>>()
        ),
        ids(&name_changed)
    );
    for s in &columns["name"].samples {
        let id = &s.key["id"].clone().unwrap();
        assert_eq!(s.a.as_deref(), Some(format!("n{id}").as_str()));
        assert_eq!(s.b.as_deref(), Some(format!("renamed {id}").as_str()));
    }
    assert_eq!(columns["amount"].count, 4);
    let amount_one = columns["amount"]
        .samples
        .iter()
        .find(|s| s.key == key(1))
        .unwrap();
    assert_eq!(
        (amount_one.a.as_deref(), amount_one.b.as_deref()),
        (Some("0.5"), Some("0.75"))
    );
    assert_eq!(columns["qty"].count, 5);
    let qty: BTreeMap<String, (Option<String>, Option<String>)> = columns["qty"]
        .samples
        .iter()
        .map(|s| (s.key["id"].clone().unwrap(), (s.a.clone(), s.b.clone())))
        .collect();
    assert_eq!(qty["14"], (None, Some("-1".into())));
    assert_eq!(qty["700000"], (None, Some("-1".into())));
    assert_eq!(qty["15"], (Some("15".into()), None));
    assert_eq!(qty["333334"], (Some("334".into()), None));
    assert_eq!(columns["day"].count, 1);
    assert_eq!(columns["day"].samples[0].key, key(42));
    // Only the buckets holding a planted difference were compared row by row.
    assert!(report.buckets.drilled <= 32, "{:?}", report.buckets);
    assert!(
        report.buckets.rows_drilled < 2 * ROWS as u64 / 10,
        "{:?}",
        report.buckets
    );
    assert!(report.has_differences());

    // The same rows, reversed and laid out in other files: no difference.
    let mut same = base.clone();
    same.reverse();
    let c = write_table(
        dir.path(),
        "c",
        vec![
            same[..1_000].chunks(333).map(batch).collect(),
            vec![batch(&same[1_000..])],
        ],
    )
    .await;
    let report = diff(&a, &c, &["id"], 5).await;
    assert!(!report.has_differences(), "{report:#?}");
    assert_eq!(report.buckets.drilled, 0);
    assert_eq!((report.rows_a, report.rows_b), (ROWS as u64, ROWS as u64));
}

fn small(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

#[tokio::test]
async fn composite_keys_with_nulls_match_null_to_null() {
    let dir = tempfile::tempdir().unwrap();
    let region = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let int = |v: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
    let a = write_table(
        dir.path(),
        "a",
        vec![vec![small(vec![
            (
                "region",
                region(vec![Some("eu"), Some("eu"), Some("us"), None, None]),
            ),
            ("id", int(vec![1, 2, 1, 1, 2])),
            ("total", int(vec![10, 20, 30, 40, 50])),
        ])]],
    )
    .await;
    // (us,1) is missing, (us,2) is extra, (NULL,2) changed, (NULL,1) equal.
    let b = write_table(
        dir.path(),
        "b",
        vec![vec![small(vec![
            (
                "region",
                region(vec![None, Some("us"), None, Some("eu"), Some("eu")]),
            ),
            ("id", int(vec![1, 2, 2, 2, 1])),
            ("total", int(vec![40, 60, 55, 20, 10])),
        ])]],
    )
    .await;
    let report = diff(&a, &b, &["region", "id"], 5).await;
    let rk = |r: Option<&str>, id: i64| -> KeyValues {
        KeyValues::from([
            ("region".to_string(), r.map(str::to_string)),
            ("id".to_string(), Some(id.to_string())),
        ])
    };
    assert_eq!(report.only_in_a.count, 1);
    assert_eq!(report.only_in_a.samples, vec![rk(Some("us"), 1)]);
    assert_eq!(report.only_in_b.count, 1);
    assert_eq!(report.only_in_b.samples, vec![rk(Some("us"), 2)]);
    assert_eq!(report.changed.count, 1);
    let total = &report.changed.columns[0];
    assert_eq!(total.column, "total");
    assert_eq!(total.samples[0].key, rk(None, 2));
    assert_eq!(
        (total.samples[0].a.as_deref(), total.samples[0].b.as_deref()),
        (Some("50"), Some("55"))
    );
    assert!(report.duplicates.is_empty());

    // The sample count caps samples, never counts.
    let capped = diff(&a, &b, &["region", "id"], 0).await;
    assert_eq!(
        (
            capped.only_in_a.count,
            capped.only_in_b.count,
            capped.changed.count
        ),
        (1, 1, 1)
    );
    assert!(capped.only_in_a.samples.is_empty() && capped.changed.columns[0].samples.is_empty());
}

#[tokio::test]
async fn schema_differences_are_reported_and_common_columns_still_compared() {
    let dir = tempfile::tempdir().unwrap();
    let int = |v: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
    let text = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let a = write_table(
        dir.path(),
        "a",
        vec![vec![small(vec![
            ("id", int(vec![1, 2])),
            ("gone", int(vec![0, 0])),
            ("kind", int(vec![7, 8])),
            ("note", text(vec!["x", "y"])),
        ])]],
    )
    .await;
    let b = write_table(
        dir.path(),
        "b",
        vec![vec![small(vec![
            ("id", int(vec![1, 2])),
            ("kind", text(vec!["7", "8"])),
            ("note", text(vec!["x", "z"])),
            ("added", int(vec![1, 1])),
        ])]],
    )
    .await;
    let report = diff(&a, &b, &["id"], 5).await;
    let names = |v: &[sluice_engine::diff::ColumnType]| {
        v.iter().map(|c| c.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&report.schema.only_in_a), ["gone"]);
    assert_eq!(names(&report.schema.only_in_b), ["added"]);
    assert_eq!(report.schema.type_changes.len(), 1);
    assert_eq!(report.schema.type_changes[0].name, "kind");
    assert_eq!(report.schema.type_changes[0].a, "Int64");
    assert_eq!(report.schema.type_changes[0].b, "Utf8");
    assert_eq!(report.compared_columns, ["note"]);
    assert_eq!(report.changed.count, 1);
    assert_eq!(report.changed.columns[0].samples[0].key, key(2));
    assert!(report.has_differences());
}

#[tokio::test]
async fn repeated_keys_are_reported_not_miscounted() {
    let dir = tempfile::tempdir().unwrap();
    let int = |v: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
    // 5 twice in A, once in B; 9 twice in both, identically (only a uniqueness check sees it).
    let a = write_table(
        dir.path(),
        "a",
        vec![vec![small(vec![
            ("id", int(vec![1, 5, 5, 9, 9, 3])),
            ("v", int(vec![1, 5, 6, 9, 9, 3])),
        ])]],
    )
    .await;
    let b = write_table(
        dir.path(),
        "b",
        vec![vec![small(vec![
            ("id", int(vec![9, 1, 5, 9, 3])),
            ("v", int(vec![9, 1, 5, 9, 4])),
        ])]],
    )
    .await;
    let report = diff(&a, &b, &["id"], 5).await;
    assert_eq!(report.duplicates.len(), 2, "{:#?}", report.duplicates);
    let in_a = report
        .duplicates
        .iter()
        .find(|d| d.table == Side::A)
        .unwrap();
    assert_eq!((in_a.keys, in_a.rows), (2, 4));
    assert_eq!(
        keys(
            &in_a
                .samples
                .iter()
                .map(|s| s.key.clone())
                .collect::<Vec<_>>()
        ),
        ids(&[5, 9])
    );
    let in_b = report
        .duplicates
        .iter()
        .find(|d| d.table == Side::B)
        .unwrap();
    assert_eq!((in_b.keys, in_b.rows), (1, 2));
    assert_eq!(in_b.samples[0].key, key(9));
    // Key 5 is repeated in A: B's row 5 is neither "only in B" nor "changed"; key 3 changed.
    assert_eq!(report.only_in_a.count, 0);
    assert_eq!(report.only_in_b.count, 0);
    assert_eq!(report.changed.count, 1);
    assert_eq!(report.changed.columns[0].samples[0].key, key(3));
}

#[tokio::test]
async fn bad_inputs_say_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let int = |v: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
    let a = write_table(
        dir.path(),
        "a",
        vec![vec![small(vec![("id", int(vec![1])), ("v", int(vec![1]))])]],
    )
    .await;
    let key = |k: &str| vec![k.to_string()];
    let err = diff_tables(&a, &a, &key("order_id"), DiffOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, DiffError::KeyColumn { .. }), "{err}");
    assert!(err.to_string().contains("its columns: id, v"), "{err}");
    assert!(err.is_input());

    let missing = dir.path().join("nope").display().to_string();
    let err = diff_tables(&a, &missing, &key("id"), DiffOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(err.is_input());
    assert!(err.to_string().contains("no such directory"), "{err}");

    let not_delta = dir.path().join("plain");
    std::fs::create_dir_all(&not_delta).unwrap();
    let err = diff_tables(
        &a,
        &not_delta.display().to_string(),
        &key("id"),
        DiffOptions::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(err.is_input(), "{err}");

    let err = diff_tables(&a, &a, &[], DiffOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, DiffError::NoKey));
}
