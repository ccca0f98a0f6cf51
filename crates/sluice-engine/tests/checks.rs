//! Every check kind: pass, warn and fail; thresholds as counts and percentages; `where`
//! filters; NULLs; empty batches; drop; and spec errors for columns that do not exist.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_engine::checks::{Audit, CheckSpec, Checks, Level};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]))
}

/// Six rows: a duplicate id (4), a negative and a huge amount, a NULL amount, a status outside
/// the accepted set, a malformed email, NULLs here and there; timestamps 1h..6h old.
fn batch() -> RecordBatch {
    let now = sluice_core::now_millis() * 1000;
    let hour = 3_600_000_000i64;
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(vec![
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                Some(4),
                Some(6),
            ])),
            Arc::new(Float64Array::from(vec![
                Some(10.0),
                Some(-5.0),
                Some(20.0),
                None,
                Some(30.0),
                Some(1000.0),
            ])),
            Arc::new(StringArray::from(vec![
                Some("paid"),
                Some("paid"),
                Some("bogus"),
                Some("shipped"),
                None,
                Some("paid"),
            ])),
            Arc::new(StringArray::from(vec![
                Some("a@x.io"),
                Some("bad"),
                Some("c@x.io"),
                Some("d@x.io"),
                Some("e@x.io"),
                None,
            ])),
            Arc::new(
                TimestampMicrosecondArray::from(
                    (1..=6).map(|h| now - h * hour).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

async fn compile(yaml: &str) -> Result<Checks, (usize, String)> {
    let specs: Vec<CheckSpec> = yaml_serde::from_str(yaml).expect("check YAML");
    Checks::compile(&specs, schema(), std::path::Path::new("/tmp")).await
}

async fn audit_on(yaml: &str, batches: Vec<RecordBatch>) -> Audit {
    let checks = compile(yaml).await.unwrap();
    checks.audit(batches, schema(), &[]).await.unwrap()
}

async fn audit(yaml: &str) -> Audit {
    audit_on(yaml, vec![batch()]).await
}

/// (level, failing, considered) of the only check.
async fn one(yaml: &str) -> (Level, u64, u64) {
    let a = audit(yaml).await;
    assert_eq!(a.results.len(), 1);
    let r = &a.results[0];
    assert_eq!(
        a.hold.is_some(),
        r.level == Level::Error,
        "hold iff error: {a:?}"
    );
    (r.level, r.failing, r.considered)
}

#[tokio::test]
async fn not_null_fails_passes_and_warns() {
    assert_eq!(
        one("- not_null: {columns: [amount]}").await,
        (Level::Error, 1, 6)
    );
    assert_eq!(
        one("- not_null: {columns: [id]}").await,
        (Level::Pass, 0, 6)
    );
    assert_eq!(
        one("- not_null: {columns: [amount, email]}").await,
        (Level::Error, 2, 6)
    );
    assert_eq!(
        one("- not_null: {columns: [amount], severity: warn}").await,
        (Level::Warn, 1, 6)
    );
    assert_eq!(
        one("- not_null: {columns: [amount], action: warn}").await,
        (Level::Warn, 1, 6)
    );
}

#[tokio::test]
async fn thresholds_as_counts_and_percentages() {
    // 1 of 6 rows fails (16.7%).
    assert_eq!(
        one("- not_null: {columns: [amount], error_if: '> 1'}")
            .await
            .0,
        Level::Pass
    );
    assert_eq!(
        one("- not_null: {columns: [amount], error_if: '> 0'}")
            .await
            .0,
        Level::Error
    );
    assert_eq!(
        one("- not_null: {columns: [amount], error_if: 1, warn_if: 0}")
            .await
            .0,
        Level::Warn
    );
    assert_eq!(
        one("- not_null: {columns: [amount], error_if: '> 10%'}")
            .await
            .0,
        Level::Error
    );
    assert_eq!(
        one("- not_null: {columns: [amount], error_if: '> 20%', warn_if: '> 10%'}")
            .await
            .0,
        Level::Warn
    );
    assert_eq!(
        one("- not_null: {columns: [amount], error_if: '> 20%', warn_if: '> 17%'}")
            .await
            .0,
        Level::Pass
    );
    assert_eq!(
        one("- not_null: {columns: [amount], severity: warn, warn_if: '> 50%'}")
            .await
            .0,
        Level::Pass
    );
    let bad: Result<Vec<CheckSpec>, _> =
        yaml_serde::from_str("- not_null: {columns: [a], error_if: 'lots'}");
    assert!(bad.unwrap_err().to_string().contains("threshold"));
    let bad: Result<Vec<CheckSpec>, _> =
        yaml_serde::from_str("- not_null: {columns: [a], error_if: '> 150%'}");
    assert!(bad.is_err());
}

#[tokio::test]
async fn where_filters_choose_the_rows_considered() {
    // Paid rows have amounts 10, -5, 1000.
    assert_eq!(
        one("- range: {column: amount, min: 0, where: \"status = 'paid'\"}").await,
        (Level::Error, 1, 3)
    );
    assert_eq!(
        one("- range: {column: amount, min: 0, where: \"status = 'shipped'\"}").await,
        (Level::Pass, 0, 1)
    );
    assert_eq!(
        one("- not_null: {columns: [email], where: 'id > 100'}").await,
        (Level::Pass, 0, 0)
    );
}

#[tokio::test]
async fn range_accepted_values_and_regex_ignore_nulls() {
    assert_eq!(
        one("- range: {column: amount, min: 0, max: 100}").await,
        (Level::Error, 2, 6)
    );
    assert_eq!(
        one("- range: {column: amount, min: 10, inclusive: false}").await,
        (Level::Error, 2, 6)
    );
    assert_eq!(
        one("- range: {column: amount, min: -10, max: 1000}").await,
        (Level::Pass, 0, 6)
    );
    assert_eq!(
        one("- accepted_values: {column: status, values: [paid, shipped]}").await,
        (Level::Error, 1, 6)
    );
    assert_eq!(
        one("- accepted_values: {column: status, values: [paid, shipped, bogus]}")
            .await
            .0,
        Level::Pass
    );
    assert_eq!(
        one("- accepted_values: {column: id, values: [1, 2, 3, 4, 6]}")
            .await
            .0,
        Level::Pass
    );
    assert_eq!(
        one("- regex: {column: email, pattern: '^[^@]+@[^@]+$'}").await,
        (Level::Error, 1, 6)
    );
    assert_eq!(
        one("- regex: {column: email, pattern: '@', severity: warn}").await,
        (Level::Warn, 1, 6)
    );
}

#[tokio::test]
async fn expression_counts_null_as_failing() {
    assert_eq!(
        one("- expression: {expr: 'amount < 500'}").await,
        (Level::Error, 2, 6)
    );
    assert_eq!(
        one("- expression: {expr: 'id > 0'}").await,
        (Level::Pass, 0, 6)
    );
}

#[tokio::test]
async fn unique_flags_every_duplicated_row() {
    assert_eq!(one("- unique: {columns: [id]}").await, (Level::Error, 2, 6));
    assert_eq!(
        one("- unique: {columns: [id, amount]}").await,
        (Level::Pass, 0, 6)
    );
}

#[tokio::test]
async fn sql_row_count_schema_and_freshness() {
    assert_eq!(
        one("- sql: {query: 'SELECT * FROM output WHERE amount > 100'}").await,
        (Level::Error, 1, 6)
    );
    assert_eq!(
        one("- sql: {query: 'SELECT * FROM output WHERE amount > 5000'}")
            .await
            .0,
        Level::Pass
    );
    assert_eq!(one("- row_count: {min: 1, max: 10}").await.0, Level::Pass);
    assert_eq!(one("- row_count: {min: 10}").await.0, Level::Error);
    assert_eq!(
        one("- row_count: {max: 3, severity: warn}").await.0,
        Level::Warn
    );
    assert_eq!(
        one("- schema: {required: {id: int64, amount: float64}}")
            .await
            .0,
        Level::Pass
    );
    let a = audit("- schema: {required: {id: string}, forbidden: [email]}").await;
    assert_eq!(a.results[0].failing, 2, "{:?}", a.results[0]);
    assert!(a.results[0].detail.contains("forbidden column \"email\""));
    assert_eq!(
        one("- freshness: {column: ts, max_age: 2h}").await.0,
        Level::Pass
    );
    assert_eq!(
        one("- freshness: {column: ts, max_age: 10m}").await.0,
        Level::Error
    );
}

#[tokio::test]
async fn empty_batches_pass_row_checks_and_fail_a_minimum_row_count() {
    let empty = vec![RecordBatch::new_empty(schema())];
    let a = audit_on(
        "- not_null: {columns: [amount]}\n- unique: {columns: [id]}\n- range: {column: amount, min: 0}\n- freshness: {column: ts, max_age: 1h}\n",
        empty.clone(),
    )
    .await;
    assert!(
        a.results
            .iter()
            .all(|r| r.level == Level::Pass && r.considered == 0),
        "{a:?}"
    );
    let a = audit_on("- row_count: {min: 1}", empty).await;
    assert_eq!(a.results[0].level, Level::Error);
    assert!(a.hold.is_some());
    let a = audit_on("- not_null: {columns: [id]}", vec![]).await;
    assert_eq!(a.results[0].level, Level::Pass);
}

#[tokio::test]
async fn drop_publishes_the_rest_and_keeps_failing_rows() {
    let a =
        audit("- regex: {column: email, pattern: '^[^@]+@[^@]+$', action: drop, severity: warn}")
            .await;
    assert!(a.hold.is_none());
    let published: usize = a.publish.iter().map(|b| b.num_rows()).sum();
    assert_eq!(published, 5);
    assert_eq!(a.results[0].dropped, 1);
    assert_eq!(a.failing_rows.len(), 1);
    assert_eq!(a.failing_rows[0].2.num_rows(), 1);
    assert_eq!(
        a.failing_rows[0].2.num_columns(),
        5,
        "helper columns are not stored"
    );
    // Two drops at once, one of them a window predicate.
    let a = audit("- unique: {columns: [id], action: drop, severity: warn}\n- range: {column: amount, min: 0, action: drop, severity: warn}\n").await;
    let published: usize = a.publish.iter().map(|b| b.num_rows()).sum();
    assert_eq!(published, 3, "ids 4,4 and the negative amount dropped");
    // A drop whose error threshold is exceeded holds the batch.
    let a =
        audit("- range: {column: amount, min: 0, max: 100, action: drop, error_if: '> 20%'}").await;
    assert!(a.hold.is_some(), "2 of 6 rows exceed 20%");
    // Warn-level failures are recorded and everything is published.
    let a = audit("- range: {column: amount, min: 0, severity: warn}").await;
    assert!(a.hold.is_none());
    assert_eq!(a.results[0].level, Level::Warn);
    assert_eq!(a.publish.iter().map(|b| b.num_rows()).sum::<usize>(), 6);
}

#[tokio::test]
async fn held_batches_carry_their_failing_rows() {
    let a = audit("- not_null: {columns: [amount]}\n- accepted_values: {column: status, values: [paid, shipped]}\n").await;
    let held = a.hold.unwrap();
    assert!(held.contains("not_null(amount)"), "{held}");
    assert_eq!(a.failing_rows.len(), 2);
    let rec = sluice_engine::checks::quarantine_records("p", 1, "b-1", &a.failing_rows).unwrap();
    assert_eq!(rec.num_rows(), 2);
}

#[tokio::test]
async fn spec_errors_are_found_when_compiling() {
    let cases = [
        (
            "- not_null: {columns: [nope]}",
            "column \"nope\" is not in the transform's output",
        ),
        (
            "- range: {column: amount, min: 0}\n- regex: {column: ghost, pattern: x}",
            "ghost",
        ),
        ("- expression: {expr: 'nope > 1'}", "nope"),
        (
            "- not_null: {columns: [id], where: 'missing = 1'}",
            "missing",
        ),
        ("- sql: {query: 'SELECT * FROM nowhere'}", "nowhere"),
        ("- row_count: {min: 1, action: drop}", "drop"),
        (
            "- regex: {column: email, pattern: '(['}",
            "regular expression",
        ),
        ("- freshness: {column: status, max_age: 1h}", "timestamp"),
        ("- schema: {required: {id: money}}", "money"),
        ("- not_null: {columns: []}", "at least one column"),
        (
            "- regex: {column: amount, pattern: '^1'}",
            "regex needs a text column",
        ),
    ];
    for (yaml, expected) in cases {
        let err = compile(yaml)
            .await
            .err()
            .unwrap_or_else(|| panic!("{yaml} must be refused"));
        assert!(err.1.contains(expected), "{yaml}: {err:?}");
    }
    let (index, _) =
        compile("- range: {column: amount, min: 0}\n- regex: {column: ghost, pattern: x}")
            .await
            .err()
            .unwrap();
    assert_eq!(index, 1, "the error names the failing check");
    let unknown: Result<Vec<CheckSpec>, _> =
        yaml_serde::from_str("- not_null: {columns: [id], severty: warn}");
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `severty`")
    );
}

#[tokio::test]
async fn relationships_look_values_up_in_another_table() {
    let dir = tempfile::tempdir().unwrap();
    let url = sluice_engine::sink::table_url("customers", dir.path()).unwrap();
    let ids = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("cid", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![1, 2, 3, 4]))],
    )
    .unwrap();
    sluice_engine::sink::DeltaSink::new(url)
        .commit("seed", vec![ids])
        .await
        .unwrap();
    let yaml = format!(
        "- relationships: {{column: id, to: {{delta: {}, column: cid}}}}",
        dir.path().join("customers").display()
    );
    assert_eq!(
        one(&yaml).await,
        (Level::Error, 1, 6),
        "id 6 has no customer"
    );
}

#[tokio::test]
async fn row_count_against_the_median_of_recent_batches() {
    let checks = compile("- row_count: {within_pct_of_median: 50, last: 5}")
        .await
        .unwrap();
    assert_eq!(checks.history_wanted(), 5);
    let level = |history: Vec<u64>| {
        let checks = checks.clone();
        async move {
            let a = checks
                .audit(vec![batch()], schema(), &history)
                .await
                .unwrap();
            (a.results[0].level, a.results[0].detail.clone())
        }
    };
    // 6 rows against a median of 6: fine; of 20: 70% off; of 4: 50% off, allowed.
    assert_eq!(level(vec![6, 5, 7]).await.0, Level::Pass);
    let (l, detail) = level(vec![20, 20, 20, 1, 1]).await;
    assert_eq!(l, Level::Error, "{detail}");
    assert!(detail.contains("70% from the median 20"), "{detail}");
    assert_eq!(level(vec![4, 4, 4]).await.0, Level::Pass);
    // Only the last `last` batches count: older huge batches are ignored.
    assert_eq!(
        level(vec![6, 6, 6, 6, 6, 1000, 1000, 1000]).await.0,
        Level::Pass
    );
    // Too little history: no verdict yet.
    let (l, detail) = level(vec![100]).await;
    assert_eq!(l, Level::Pass);
    assert!(detail.contains("1 of 3 batches of history"), "{detail}");
    assert_eq!(
        compile("- not_null: {columns: [id]}")
            .await
            .unwrap()
            .history_wanted(),
        0
    );
}

/// A sink table holding `ids` (and an amount), for `unique` against the table.
async fn table_with(dir: &std::path::Path, ids: &[i64]) -> Arc<sluice_engine::sink::DeltaSink> {
    let sink = Arc::new(sluice_engine::sink::DeltaSink::new(
        sluice_engine::sink::table_url("t", dir).unwrap(),
    ));
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("amount", DataType::Float64, true),
        ])),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(Float64Array::from(vec![1.0; ids.len()])),
        ],
    )
    .unwrap();
    sink.commit("seed", vec![b]).await.unwrap();
    sink
}

async fn audit_with_table(yaml: &str, sink: Arc<sluice_engine::sink::DeltaSink>) -> Audit {
    let checks = compile(yaml).await.unwrap().with_sink(sink);
    checks.audit(vec![batch()], schema(), &[]).await.unwrap()
}

#[tokio::test]
async fn unique_compares_with_what_the_table_already_holds() {
    let dir = tempfile::tempdir().unwrap();
    // The table holds 2 and 6 (and ids far outside the batch's range, which pruning skips).
    let sink = table_with(dir.path(), &[2, 6, 1000, 2000]).await;
    let a = audit_with_table("- unique: {columns: [id]}", sink.clone()).await;
    let r = &a.results[0];
    assert_eq!((r.level, r.failing), (Level::Error, 4), "{r:?}"); // 2, 4, 4, 6
    let held: Vec<i64> = a
        .failing_rows
        .iter()
        .flat_map(|(_, _, b)| {
            b.column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    let mut held = held;
    held.sort();
    assert_eq!(held, vec![2, 4, 4, 6]);
    // scope: batch ignores the table.
    let a = audit_with_table("- unique: {columns: [id], scope: batch}", sink.clone()).await;
    assert_eq!(a.results[0].failing, 2);
    // drop removes exactly the clashing rows from what is published.
    let a = audit_with_table(
        "- unique: {columns: [id], action: drop, severity: warn}",
        sink.clone(),
    )
    .await;
    assert!(a.hold.is_none());
    let published: usize = a.publish.iter().map(|b| b.num_rows()).sum();
    assert_eq!(published, 2, "ids 1 and 3 remain");
    // A `where` filter limits which batch rows are considered; composite keys compare whole.
    let a = audit_with_table("- unique: {columns: [id], where: 'id < 3'}", sink.clone()).await;
    assert_eq!(a.results[0].failing, 1, "{:?}", a.results[0]); // id 2
    let a = audit_with_table("- unique: {columns: [id, amount]}", sink).await;
    assert_eq!(
        a.results[0].failing, 0,
        "no (id, amount) pair of the batch is in the table"
    );
}

#[tokio::test]
async fn unique_ignores_null_keys_and_tables_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(sluice_engine::sink::DeltaSink::new(
        sluice_engine::sink::table_url("t", dir.path()).unwrap(),
    ));
    // No table yet: only duplicates within the batch count.
    let a = audit_with_table("- unique: {columns: [id]}", sink.clone()).await;
    assert_eq!(a.results[0].failing, 2);
    // NULL keys are not duplicates of each other (as dbt's unique test): the batch has one
    // NULL amount, so (amount) is unique; two NULLs would be too.
    let nulls = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(vec![None, None, Some(7)])),
            Arc::new(Float64Array::from(vec![None, None, Some(1.0)])),
            Arc::new(StringArray::from(vec![Some("paid"); 3])),
            Arc::new(StringArray::from(vec![Some("a@x.io"); 3])),
            Arc::new(TimestampMicrosecondArray::from(vec![0i64; 3]).with_timezone("UTC")),
        ],
    )
    .unwrap();
    let a = audit_on("- unique: {columns: [id]}", vec![nulls]).await;
    assert_eq!((a.results[0].level, a.results[0].failing), (Level::Pass, 0));
    // A table whose columns do not include the key: nothing to compare with.
    let other = dir.path().join("other");
    let sink = Arc::new(sluice_engine::sink::DeltaSink::new(
        sluice_engine::sink::table_url("o", &other).unwrap(),
    ));
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
    )
    .unwrap();
    sink.commit("seed", vec![b]).await.unwrap();
    let a = audit_with_table("- unique: {columns: [id]}", sink).await;
    assert_eq!(a.results[0].failing, 2);
}

/// Rows with these ids and emails (other columns constant).
fn keyed(ids: &[Option<i64>], emails: &[&str]) -> RecordBatch {
    let n = ids.len();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(Float64Array::from(vec![Some(1.0); n])),
            Arc::new(StringArray::from(vec![Some("paid"); n])),
            Arc::new(StringArray::from(emails.to_vec())),
            Arc::new(TimestampMicrosecondArray::from(vec![0i64; n]).with_timezone("UTC")),
        ],
    )
    .unwrap()
}

/// Ids of the rows a `unique` check failed.
fn failing_ids(a: &Audit) -> Vec<i64> {
    let mut ids: Vec<i64> = a
        .failing_rows
        .iter()
        .flat_map(|(_, _, b)| {
            let c = b.column_by_name("id").unwrap();
            let c = c.as_any().downcast_ref::<Int64Array>().unwrap();
            c.iter().flatten().collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    ids
}

/// `unique` proves fresh keys clean from the batch alone (ascending or hashed) and the table's
/// file statistics; every case where that proof must not hold still finds the clashing rows.
#[tokio::test]
async fn unique_fast_path_never_misses_a_clash() {
    let dir = tempfile::tempdir().unwrap();
    // Two data files: ids 5..=9 and 20..=30 (with gaps).
    let sink = table_with(dir.path(), &[5, 7, 9]).await;
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("amount", DataType::Float64, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![20, 25, 30])),
            Arc::new(Float64Array::from(vec![1.0; 3])),
        ],
    )
    .unwrap();
    sink.commit("seed2", vec![b]).await.unwrap();
    let check = |yaml: &'static str, batches: Vec<RecordBatch>| {
        let sink = sink.clone();
        async move {
            let checks = compile(yaml).await.unwrap().with_sink(sink);
            checks.audit(batches, schema(), &[]).await.unwrap()
        }
    };
    let e = ["e@x.io"; 4];
    let u = "- unique: {columns: [id]}";
    // Outside every file's range, ascending, shuffled, split over two batches: clean.
    for batches in [
        vec![keyed(&[Some(10), Some(11), None, Some(12)], &e)],
        vec![keyed(&[Some(19), Some(10), Some(31), None], &e)],
        vec![
            keyed(&[Some(1), Some(2)], &e[..2]),
            keyed(&[Some(40), Some(3)], &e[..2]),
        ],
    ] {
        let a = check(u, batches).await;
        assert_eq!((a.results[0].level, a.results[0].failing), (Level::Pass, 0));
    }
    // Inside a file's range but not in it (gaps): the statistics cannot prove it, the query can.
    let a = check(u, vec![keyed(&[Some(6), Some(8), Some(21)], &e[..3])]).await;
    assert_eq!((a.results[0].level, a.results[0].failing), (Level::Pass, 0));
    // A key the table holds, ascending batch: found.
    let a = check(u, vec![keyed(&[Some(10), Some(25), Some(31)], &e[..3])]).await;
    assert_eq!(failing_ids(&a), vec![25]);
    // A repeat in the batch, in order, shuffled, across two batches.
    for batches in [
        vec![keyed(&[Some(10), Some(11), Some(11)], &e[..3])],
        vec![keyed(&[Some(11), Some(10), Some(11)], &e[..3])],
        vec![keyed(&[Some(11)], &e[..1]), keyed(&[Some(11)], &e[..1])],
    ] {
        let a = check(u, batches).await;
        assert_eq!(failing_ids(&a), vec![11, 11]);
    }
    // String keys: distinct in the batch, but one is in the table; statistics of strings never
    // prove absence (they may be truncated), so the query runs and finds it.
    let names = dir.path().join("names");
    let named = Arc::new(sluice_engine::sink::DeltaSink::new(
        sluice_engine::sink::table_url("n", &names).unwrap(),
    ));
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("email", DataType::Utf8, true)])),
        vec![Arc::new(StringArray::from(vec!["b@x.io"]))],
    )
    .unwrap();
    named.commit("seed", vec![b]).await.unwrap();
    let checks = compile("- unique: {columns: [email]}")
        .await
        .unwrap()
        .with_sink(named);
    let a = checks
        .audit(
            vec![keyed(
                &[Some(1), Some(2), Some(3)],
                &["c@x.io", "a@x.io", "b@x.io"],
            )],
            schema(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(failing_ids(&a), vec![3]);
    let a = checks
        .audit(
            vec![keyed(&[Some(1), Some(2)], &["a@x.io", "c@x.io"])],
            schema(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(a.results[0].failing, 0);
}

#[tokio::test]
async fn file_statistics_bound_what_a_table_may_hold() {
    use datafusion::common::ScalarValue;
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(sluice_engine::sink::DeltaSink::new(
        sluice_engine::sink::table_url("t", dir.path()).unwrap(),
    ));
    let i = |v: i64| ScalarValue::Int64(Some(v));
    assert_eq!(
        sink.may_hold_range("id", &i(1), &i(2)).await.unwrap(),
        Some(false),
        "no table"
    );
    let sink = table_with(dir.path(), &[5, 9]).await;
    for (lo, hi, want) in [
        (1, 4, false),
        (10, 20, false),
        (1, 5, true),
        (9, 9, true),
        (6, 8, true),
    ] {
        assert_eq!(
            sink.may_hold_range("id", &i(lo), &i(hi)).await.unwrap(),
            Some(want),
            "[{lo}, {hi}]"
        );
    }
    let s = |v: &str| ScalarValue::Utf8(Some(v.into()));
    assert_eq!(
        sink.may_hold_range("id", &s("a"), &s("b")).await.unwrap(),
        None
    );
    assert_eq!(
        sink.may_hold_range("nope", &i(1), &i(2)).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn null_rates_of_checked_columns_are_measured_once_per_column() {
    let a = audit(
        "- not_null: {columns: [amount], severity: warn}\n- range: {column: amount, min: 0, severity: warn}\n- accepted_values: {column: status, values: [paid], severity: warn}\n",
    )
    .await;
    let profile: Vec<(String, u64, u64)> = a
        .profile
        .iter()
        .map(|r| (r.name.clone(), r.failing, r.considered))
        .collect();
    assert_eq!(
        profile,
        vec![
            ("null_rate(amount)".to_string(), 1, 6),
            ("null_rate(status)".to_string(), 1, 6)
        ]
    );
    assert!(
        a.profile
            .iter()
            .all(|r| r.level == Level::Pass && r.kind == "null_rate")
    );
    assert_eq!(a.results.len(), 3, "measurements are not check results");
    // Batch-level checks read no column; an empty batch has no rows to rate.
    assert!(audit("- row_count: {min: 1}").await.profile.is_empty());
    let empty = audit_on(
        "- not_null: {columns: [id]}",
        vec![RecordBatch::new_empty(schema())],
    )
    .await;
    assert_eq!(empty.profile[0].considered, 0);
    assert_eq!(empty.profile[0].detail, "no rows");
}

/// A batch large enough to be checked in several partitions: counts, drops and the failing
/// rows come out as for one partition.
#[tokio::test]
async fn large_batches_are_checked_in_partitions_with_the_same_results() {
    let n = 200_000i64;
    let ids: Vec<Option<i64>> = (0..n).map(Some).collect();
    let b = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Float64Array::from(
                (0..n)
                    .map(|i| Some(if i % 1000 == 999 { -1.0 } else { 1.0 }))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(vec![Some("paid"); n as usize])),
            Arc::new(StringArray::from(
                (0..n)
                    .map(|i| {
                        Some(if i % 7 == 0 {
                            "bad".to_string()
                        } else {
                            format!("{i}@x.io")
                        })
                    })
                    .collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMicrosecondArray::from(vec![0i64; n as usize]).with_timezone("UTC")),
        ],
    )
    .unwrap();
    // Split over two input batches as well, to cross batch and partition edges.
    let (head, tail) = (b.slice(0, 70_001), b.slice(70_001, (n - 70_001) as usize));
    let a = audit_on(
        "- range: {column: amount, min: 0, action: drop, severity: warn}\n- regex: {column: email, pattern: '^[^@]+@[^@]+$', severity: warn}\n- unique: {columns: [id]}\n",
        vec![head, tail],
    )
    .await;
    let failing: Vec<u64> = a.results.iter().map(|r| r.failing).collect();
    assert_eq!(
        failing,
        vec![200, (n as u64).div_ceil(7), 0],
        "{:?}",
        a.results
    );
    let published: Vec<i64> = a
        .publish
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("id").unwrap();
            c.as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    let expected: Vec<i64> = (0..n).filter(|i| i % 1000 != 999).collect();
    assert_eq!(
        published, expected,
        "dropped exactly the negative amounts, order kept"
    );
    let mut dropped = failing_ids(&a);
    dropped.dedup();
    assert_eq!(
        dropped,
        (0..n).filter(|i| i % 1000 == 999).collect::<Vec<_>>()
    );
}
