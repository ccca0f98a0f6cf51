//! `sluice diff` as users and scripts run it: exit 0 for identical tables, 1 for differences,
//! 2 for bad input, a readable table by default and the report as JSON with `--json`.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use sluice_engine::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use sluice_engine::sink::{DeltaSink, table_url};

fn write(dir: &Path, name: &str, ids: Vec<i64>, names: Vec<&str>) {
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
        ("name", Arc::new(StringArray::from(names)) as ArrayRef),
    ])
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let sink = DeltaSink::new(table_url(name, dir).unwrap());
        sink.commit(&DeltaSink::app_id("diff-cli", name), vec![batch])
            .await
            .unwrap();
    });
}

fn sluice(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tables() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a", vec![1, 2, 3, 4], vec!["w", "x", "y", "z"]);
    write(
        dir.path(),
        "same",
        vec![4, 3, 2, 1],
        vec!["z", "y", "x", "w"],
    );
    write(dir.path(), "b", vec![1, 2, 4, 5], vec!["w", "X", "z", "v"]);
    dir
}

#[test]
fn identical_tables_exit_0() {
    let dir = tables();
    let out = sluice(dir.path(), &["diff", "a", "same", "--key", "id"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("the tables are identical"),
        "{}",
        text(&out.stdout)
    );

    let out = sluice(dir.path(), &["diff", "a", "same", "--key", "id", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["identical"], true);
    assert_eq!(json["rows_a"], 4);
}

#[test]
fn differences_exit_1_with_a_table_and_json() {
    let dir = tables();
    let out = sluice(dir.path(), &["diff", "a", "b", "--key", "id"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("the tables differ"), "{table}");
    assert!(table.contains("id=3"), "{table}");
    assert!(table.contains("id=2: x -> X"), "{table}");

    let out = sluice(dir.path(), &["diff", "a", "b", "--key", "id", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["identical"], false);
    assert_eq!(json["only_in_a"]["count"], 1);
    assert_eq!(json["only_in_a"]["samples"][0]["id"], "3");
    assert_eq!(json["only_in_b"]["count"], 1);
    assert_eq!(json["only_in_b"]["samples"][0]["id"], "5");
    assert_eq!(json["changed"]["count"], 1);
    let name = &json["changed"]["columns"][0];
    assert_eq!(name["column"], "name");
    assert_eq!(name["count"], 1);
    assert_eq!(name["samples"][0]["key"]["id"], "2");
    assert_eq!(name["samples"][0]["a"], "x");
    assert_eq!(name["samples"][0]["b"], "X");
}

#[test]
fn bad_input_exits_2_and_says_what_exists() {
    let dir = tables();
    let out = sluice(dir.path(), &["diff", "a", "b", "--key", "order_id"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("\"order_id\"") && err.contains("its columns: id, name"),
        "{err}"
    );

    let out = sluice(dir.path(), &["diff", "a", "missing", "--key", "id"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("missing"),
        "{}",
        text(&out.stderr)
    );

    // No --key: clap's usage error, also 2.
    let out = sluice(dir.path(), &["diff", "a", "b"]);
    assert_eq!(out.status.code(), Some(2));
}
