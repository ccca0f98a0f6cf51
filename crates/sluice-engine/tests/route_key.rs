//! `route_key` splits: one batch's rows routed between two versions by a stable hash of a
//! column, both parts committed in one commit under the batch's marker.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use sluice_core::BatchOutcome;
use sluice_engine::Pipeline;
use sluice_engine::RunOptions;
use sluice_engine::route::{Route, Side, run_batch_split};
use sluice_engine::sink::{DeltaSink, RepairBatch};
use sluice_engine::spec::SpecFile;

fn spec(tag: &str) -> String {
    format!(
        "pipeline: p
source:
  files: in/*.csv
  columns: {{id: int64, amount: float64}}
  settle: 0s
transform: SELECT id, amount, '{tag}' AS by FROM input
sink:
  delta: out
"
    )
}

async fn pipeline(dir: &Path, tag: &str, version: i64) -> Pipeline {
    let file = dir.join(format!("{tag}.yaml"));
    std::fs::write(&file, spec(tag)).unwrap();
    Pipeline::compile(&SpecFile::load(&file).unwrap(), version)
        .await
        .unwrap()
}

fn csv(dir: &Path, name: &str, ids: impl Iterator<Item = i64>) {
    let mut text = String::from("id,amount\n");
    for i in ids {
        text.push_str(&format!("{i},1.5\n"));
    }
    std::fs::write(dir.join("in").join(name), text).unwrap();
}

fn rows_by(batches: &[RecordBatch]) -> BTreeMap<i64, Vec<String>> {
    let mut out: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for b in batches {
        let id = arrow::compute::cast(b.column_by_name("id").unwrap(), &DataType::Int64).unwrap();
        let by = arrow::compute::cast(b.column_by_name("by").unwrap(), &DataType::Utf8).unwrap();
        let (id, by) = (id.as_primitive::<Int64Type>(), by.as_string::<i32>());
        for r in 0..b.num_rows() {
            out.entry(id.value(r))
                .or_default()
                .push(by.value(r).to_string());
        }
    }
    out
}

/// Rows of the given data files, read straight from their Parquet.
fn rows_of_files(table: &Path, files: &[String]) -> BTreeMap<i64, Vec<String>> {
    let mut batches = Vec::new();
    for f in files {
        let file = std::fs::File::open(table.join(f)).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(|b| b.unwrap()));
    }
    rows_by(&batches)
}

/// A folder with stable (v1) and candidate (v2) of pipeline `p`, and the table stable's first
/// batch created (ids 1000..1003).
async fn setup() -> (tempfile::TempDir, Pipeline, Pipeline) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    let stable = pipeline(dir.path(), "v1", 1).await;
    let candidate = pipeline(dir.path(), "v2", 2).await;
    csv(dir.path(), "a.csv", 1000..1003);
    let (id, slice) = slice_of(&stable, "a.csv").await;
    stable.run_batch(&id, &slice).await.unwrap();
    (dir, stable, candidate)
}

fn expected_side(route: &Route, id: i64) -> &'static str {
    match route.side_of(Some(id.to_string().as_bytes())) {
        Side::Stable => "v1",
        Side::Candidate => "v2",
    }
}

async fn slice_of(p: &Pipeline, name: &str) -> (sluice_core::BatchId, sluice_core::BatchSlice) {
    let file = p
        .discover()
        .unwrap()
        .into_iter()
        .find(|f| f.path.ends_with(name))
        .unwrap();
    p.batches_of(&file).unwrap().remove(0)
}

#[test]
fn the_route_hash_is_pinned_and_weights_move_keys_one_way() {
    // XxHash64 with seed 0 is specified byte for byte: these buckets hold on every machine,
    // process and Rust version. A change here moves live keys between versions.
    let pinned: Vec<u8> = ["", "42", "customer-7", "ü"]
        .iter()
        .map(|k| Route::bucket(k.as_bytes()))
        .collect();
    assert_eq!(
        pinned,
        ["", "42", "customer-7", "ü"]
            .iter()
            .map(|k| (twox_hash::XxHash64::oneshot(0, k.as_bytes()) % 100) as u8)
            .collect::<Vec<_>>()
    );
    assert_eq!(twox_hash::XxHash64::oneshot(0, b""), 0xEF46DB3751D8E999);
    // Raising the weight only moves keys from stable to candidate.
    for k in 0..500 {
        let key = k.to_string();
        let mut was = Side::Stable;
        for w in 0..=100 {
            let side = Route::new("id", w).unwrap().side_of(Some(key.as_bytes()));
            assert!(
                !(was == Side::Candidate && side == Side::Stable),
                "{k} at {w}"
            );
            was = side;
        }
        assert_eq!(was, Side::Candidate);
    }
    assert_eq!(Route::new("id", 100).unwrap().side_of(None), Side::Stable);
    assert!(Route::new("id", 101).is_err());
    assert!(Route::new(" ", 5).is_err());
}

#[tokio::test]
async fn a_split_batch_commits_both_versions_once_and_records_their_files() {
    let (dir, stable, candidate) = setup().await;

    let route = Route::new("id", 30).unwrap();
    csv(dir.path(), "b.csv", 0..200);
    let (id, slice) = slice_of(&stable, "b.csv").await;
    let split = run_batch_split(
        &stable,
        &candidate,
        &route,
        &id,
        &slice,
        RunOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(split.outcome, BatchOutcome::Committed);
    assert_eq!(split.stable.rows_in + split.candidate.rows_in, 200);
    assert!(
        split.stable.rows_out > 100 && split.candidate.rows_out > 20,
        "{split:?}"
    );

    let table = dir.path().join("out");
    let rows = rows_by(&stable.sink().read_all().await.unwrap());
    for i in 0..200 {
        assert_eq!(rows[&i], vec![expected_side(&route, i)], "id {i}");
    }
    // Each version's files hold its rows and only those, and the log says the same.
    let s_rows = rows_of_files(&table, &split.stable.added);
    let c_rows = rows_of_files(&table, &split.candidate.added);
    assert!(s_rows.values().all(|v| v == &["v1"]) && c_rows.values().all(|v| v == &["v2"]));
    assert_eq!(s_rows.len() + c_rows.len(), 200);
    let sink = stable.sink();
    let v2 = sink.commits_of_version("p", 2, 50).await.unwrap();
    assert_eq!(v2.len(), 1);
    assert_eq!(v2[0].files, split.candidate.added);
    let v1 = sink.commits_of_version("p", 1, 50).await.unwrap();
    assert_eq!(v1.last().unwrap().files, split.stable.added);

    // The same keys land on the same sides in another batch, and in another process's run.
    let candidate_again = pipeline(dir.path(), "v2", 2).await;
    let stable_again = pipeline(dir.path(), "v1", 1).await;
    csv(dir.path(), "c.csv", (100..300).rev());
    let (cid, cslice) = slice_of(&stable_again, "c.csv").await;
    run_batch_split(
        &stable_again,
        &candidate_again,
        &route,
        &cid,
        &cslice,
        RunOptions::default(),
    )
    .await
    .unwrap();
    let rows = rows_by(&sink.read_all().await.unwrap());
    for i in 100..200 {
        let side = expected_side(&route, i);
        assert_eq!(rows[&i], vec![side, side], "id {i} in both batches");
    }

    // Retried and raced: nothing more is written.
    let before = sink.describe().await.unwrap().unwrap().version;
    let (a, b) = tokio::join!(
        run_batch_split(
            &stable,
            &candidate,
            &route,
            &id,
            &slice,
            RunOptions::default()
        ),
        run_batch_split(
            &stable_again,
            &candidate_again,
            &route,
            &id,
            &slice,
            RunOptions::default()
        ),
    );
    assert_eq!(a.unwrap().outcome, BatchOutcome::AlreadyCommitted);
    assert_eq!(b.unwrap().outcome, BatchOutcome::AlreadyCommitted);
    assert_eq!(sink.describe().await.unwrap().unwrap().version, before);

    // Rolled back: the repair removes the whole commit, the batch re-runs under stable at
    // generation 2 exactly once, and the candidate's late run of generation 1 writes nothing.
    let app = DeltaSink::app_id("p", &id.0);
    sink.repair(
        &[RepairBatch {
            app_id: app.clone(),
            generation: 1,
        }],
        split.added.clone(),
        serde_json::json!("candidate rolled back"),
        None,
    )
    .await
    .unwrap();
    let late = run_batch_split(
        &stable,
        &candidate,
        &route,
        &id,
        &slice,
        RunOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(late.outcome, BatchOutcome::AlreadyCommitted);
    let gen2 = RunOptions {
        generation: 2,
        ..RunOptions::default()
    };
    let (r1, r2) = tokio::join!(
        stable.run_batch_with(&id, &slice, gen2.clone()),
        stable_again.run_batch_with(&id, &slice, gen2.clone()),
    );
    let mut outcomes = [r1.unwrap().outcome, r2.unwrap().outcome];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        [BatchOutcome::AlreadyCommitted, BatchOutcome::Committed]
    );
    let rows = rows_by(&sink.read_all().await.unwrap());
    for i in 0..100 {
        assert_eq!(rows[&i], vec!["v1"], "id {i}: re-run under stable, once");
    }
}

#[tokio::test]
async fn weights_0_and_100_put_every_row_on_one_side() {
    let (dir, stable, candidate) = setup().await;
    for (w, name, tag) in [(0, "b.csv", "v1"), (100, "c.csv", "v2")] {
        let base = if w == 0 { 0 } else { 500 };
        csv(dir.path(), name, base..base + 50);
        let (id, slice) = slice_of(&stable, name).await;
        let route = Route::new("id", w).unwrap();
        let split = run_batch_split(
            &stable,
            &candidate,
            &route,
            &id,
            &slice,
            RunOptions::default(),
        )
        .await
        .unwrap();
        let (full, empty) = if w == 0 {
            (&split.stable, &split.candidate)
        } else {
            (&split.candidate, &split.stable)
        };
        assert_eq!((full.rows_out, empty.rows_out), (50, 0), "weight {w}");
        assert!(empty.added.is_empty(), "weight {w}");
        let rows = rows_by(&stable.sink().read_all().await.unwrap());
        assert!(
            (base..base + 50).all(|i| rows[&i] == vec![tag]),
            "weight {w}"
        );
    }
    // A column the input lacks is a clear error.
    csv(dir.path(), "d.csv", 0..1);
    let (id, slice) = slice_of(&stable, "d.csv").await;
    let err = run_batch_split(
        &stable,
        &candidate,
        &Route::new("customer", 50).unwrap(),
        &id,
        &slice,
        RunOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        err.message
            .contains("\"customer\" is not among the input columns"),
        "{err}"
    );
}
