//! A dataset evolves under a running pipeline: files written under v1 keep landing after v2
//! (an added field with a default, a widened type, a renamed field) is registered. Every row
//! reaches the table once, v1 rows upgraded to v2 before the SQL runs, and a reader of the
//! table's old version still reads what it read before.

mod common;

use std::path::Path;

use common::*;
use sluice_engine::arrow::array::{Array, AsArray, RecordBatch};
use sluice_engine::arrow::datatypes::Int64Type;
use sluice_engine::datafusion::prelude::SessionContext;

const V1: &str = "dataset: orders_raw
fields:
  - {name: id, type: int64, nullable: false}
  - {name: cust, type: string}
  - {name: amount, type: int32}
";

const V2: &str = "dataset: orders_raw
fields:
  - {name: id, type: int64, nullable: false}
  - {name: customer, type: string, aliases: [cust]}
  - {name: amount, type: int64}
  - {name: channel, type: string, default: web}
";

/// `max_files: 1`: every file a batch of its own, so each file's fate (upgraded, held with its
/// reason) shows on its own rather than holding a group of small files with it.
fn spec(transform: &str) -> String {
    format!(
        "pipeline: evolving\nsource:\n  files: in/*.csv\n  dataset: orders_raw\n  settle: 0s\nbatch:\n  max_rows: 3\n  max_files: 1\ntransform: {transform}\nsink:\n  delta: out\n"
    )
}

/// `SELECT sql` over the table (at `version`, or the latest), as sorted rows of text.
fn query(table: &Path, version: Option<i64>, sql: &str) -> Vec<RecordBatch> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url =
            sluice_engine::sink::table_url(&table.display().to_string(), Path::new("/")).unwrap();
        let table = match version {
            Some(v) => sluice_engine::deltalake::open_table_with_version(url, v as _)
                .await
                .unwrap(),
            None => sluice_engine::deltalake::open_table(url).await.unwrap(),
        };
        let ctx = SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    })
}

fn texts(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in batches {
        let c = sluice_engine::arrow::compute::cast(
            b.column_by_name(column).unwrap(),
            &sluice_engine::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let s = c.as_string::<i32>();
        out.extend((0..s.len()).map(|i| (!s.is_null(i)).then(|| s.value(i).to_string())));
    }
    out
}

#[test]
fn v1_files_landing_after_v2_are_upgraded_and_the_old_table_version_still_reads() {
    let p = Project::csv(0, 0, 3, "30s");
    let store = p.sqlite();
    p.write("v1.yaml", V1);
    let out = p.run(&["schema", "register", "v1.yaml", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Phase 1: the pipeline reads orders_raw@1.
    p.write(
        "p.yaml",
        &spec("SELECT id, cust AS customer, CAST(amount AS BIGINT) AS amount FROM input"),
    );
    p.write(
        "in/a.csv",
        "id,cust,amount\n1,ann,10\n2,bob,20\n3,cy,30\n4,di,40\n",
    );
    let spec_path = p.dir.path().join("p.yaml").display().to_string();
    let drain = |p: &Project| {
        let out = p.run(&["run", &spec_path, "--store", &store, "--until-drained"]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    drain(&p);
    let v1_rows = query(
        &p.dir.path().join("out"),
        None,
        "SELECT count(*) AS n FROM t",
    );
    assert_eq!(v1_rows[0].column(0).as_primitive::<Int64Type>().value(0), 4);

    // v2: a rename (cust -> customer, by alias), a widening (int32 -> int64), a new field
    // with a default. BACKWARD compatible, so the registry takes it.
    p.write("v2.yaml", V2);
    let out = p.run(&["schema", "register", "v2.yaml", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));
    p.write(
        "p.yaml",
        &spec("SELECT id, customer, amount, channel FROM input"),
    );
    // Still v1 files (recognised by their columns, or by a schema_version column), and v2
    // files with amounts only int64 holds.
    p.write("in/b.csv", "id,cust,amount\n5,eve,50\n6,fay,60\n");
    p.write(
        "in/c.csv",
        "id,customer,amount,channel\n7,gus,5000000000,shop\n8,hal,80,\n",
    );
    p.write(
        "in/d.csv",
        "schema_version,id,cust,amount\n1,9,ida,90\n1,10,jo,100\n",
    );
    drain(&p);

    let status = p.run(&["status", "--store", &store, "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["pipelines"][0]["quarantined"], 0, "{st:#}");
    let keys: Vec<i64> = (1..=10).collect();
    assert_exactly_once(&p.table_counts("out", "id"), &keys);

    let rows = query(
        &p.dir.path().join("out"),
        None,
        "SELECT id, customer, amount, channel FROM t ORDER BY id",
    );
    let some = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(
        texts(&rows, "customer"),
        some(&[
            "ann", "bob", "cy", "di", "eve", "fay", "gus", "hal", "ida", "jo"
        ])
    );
    assert_eq!(
        texts(&rows, "amount"),
        some(&[
            "10",
            "20",
            "30",
            "40",
            "50",
            "60",
            "5000000000",
            "80",
            "90",
            "100"
        ])
    );
    // Rows written before v2 have no channel (the column was added in place); v1 rows that
    // landed after v2 take its default; v2 rows keep theirs (an empty CSV field is NULL).
    let channel = texts(&rows, "channel");
    assert_eq!(&channel[..4], &[None, None, None, None]);
    assert_eq!(
        &channel[4..],
        &[
            Some("web".to_string()),
            Some("web".to_string()),
            Some("shop".to_string()),
            None,
            Some("web".to_string()),
            Some("web".to_string())
        ]
    );

    // A reader pinned to the table's first version still reads it, in its old shape.
    let old = query(&p.dir.path().join("out"), Some(0), "SELECT * FROM t");
    let n: usize = old.iter().map(|b| b.num_rows()).sum();
    assert!(n >= 1, "the first version holds the first batch");
    assert!(old[0].schema().index_of("channel").is_err());
    let first_phase = query(&p.dir.path().join("out"), Some(1), "SELECT count(*) FROM t");
    assert_eq!(
        first_phase[0]
            .column(0)
            .as_primitive::<Int64Type>()
            .value(0),
        4,
        "version 1 is the end of phase 1: both batches of a.csv"
    );
}

#[test]
fn a_file_naming_an_unknown_version_or_mixing_versions_is_quarantined_with_the_reason() {
    let p = Project::csv(0, 0, 10, "30s");
    let store = p.sqlite();
    p.write("v1.yaml", V1);
    p.write("v2.yaml", V2);
    for f in ["v1.yaml", "v2.yaml"] {
        let out = p.run(&["schema", "register", f, "--store", &store]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    p.write(
        "p.yaml",
        &spec("SELECT id, customer, amount, channel FROM input"),
    );
    p.write("in/good.csv", "id,cust,amount\n1,ann,10\n");
    p.write(
        "in/future.csv",
        "schema_version,id,cust,amount\n7,2,bob,20\n",
    );
    p.write(
        "in/mixed.csv",
        "schema_version,id,customer,amount\n1,3,cy,30\n2,4,di,40\n",
    );
    // v1 says amount is int32: a value beyond it is bad v1 data, caught where it is read.
    p.write("in/bad.csv", "id,cust,amount\n5,eve,5000000000\n");
    let spec_path = p.dir.path().join("p.yaml").display().to_string();
    let out = p.run(&["run", &spec_path, "--store", &store, "--until-drained"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = p.run(&["status", "--store", &store, "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let reasons: Vec<String> = st["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["last_error"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    let has = |file: &str, text: &str| reasons.iter().any(|r| r.contains(file) && r.contains(text));
    assert!(
        has(
            "future.csv",
            "schema_version 7 is not a version of orders_raw"
        ),
        "{reasons:?}"
    );
    assert!(
        has("mixed.csv", "mix schema_version values [1, 2]"),
        "{reasons:?}"
    );
    assert!(has("bad.csv", "amount"), "{reasons:?}");
    assert_exactly_once(&p.table_counts("out", "id"), &[1]);
}

#[test]
fn schema_migrate_rewrites_a_table_in_pieces_and_commits_once() {
    let p = Project::csv(0, 0, 3, "30s");
    let store = p.sqlite();
    p.write("v1.yaml", V1);
    let out = p.run(&["schema", "register", "v1.yaml", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));
    p.write("p.yaml", &spec("SELECT id, cust, amount FROM input"));
    p.write(
        "in/a.csv",
        "id,cust,amount\n1,ann,10\n2,bob,20\n3,cy,30\n4,di,40\n5,ed,50\n",
    );
    let spec_path = p.dir.path().join("p.yaml").display().to_string();
    let out = p.run(&["run", &spec_path, "--store", &store, "--until-drained"]);
    assert!(out.status.success(), "{}", stderr(&out));
    p.write("v2.yaml", V2);
    let out = p.run(&["schema", "register", "v2.yaml", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));

    let migrate = |extra: &[&str]| {
        let mut args = vec![
            "schema",
            "migrate",
            "orders_raw@1",
            "orders_raw@2",
            "--table",
            "out",
            "--store",
            &store,
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = p.run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Two batches of at most 3 rows: two files. One in the first run, the other after.
    let first = migrate(&["--max-files", "1"]);
    assert_eq!(first["files_remaining"], 1, "{first:#}");
    assert!(first["committed_version"].is_null());
    let done = migrate(&[]);
    assert_eq!(done["files_resumed"], 1, "{done:#}");
    assert_eq!(done["rows"], 5, "{done:#}");
    assert!(done["committed_version"].is_i64(), "{done:#}");
    assert_eq!(migrate(&[])["already_done"], true);

    let rows = query(
        &p.dir.path().join("out"),
        None,
        "SELECT id, customer, amount, channel FROM t ORDER BY id",
    );
    assert_eq!(
        texts(&rows, "customer"),
        ["ann", "bob", "cy", "di", "ed"]
            .iter()
            .map(|s| Some(s.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(texts(&rows, "channel"), vec![Some("web".to_string()); 5]);
    assert_eq!(
        rows[0]
            .schema()
            .field_with_name("amount")
            .unwrap()
            .data_type(),
        &sluice_engine::arrow::datatypes::DataType::Int64
    );

    // Bad requests are refused with what to do.
    let out = p.run(&[
        "schema",
        "migrate",
        "orders_raw@1",
        "orders_raw@2",
        "--table",
        "nowhere",
        "--store",
        &store,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a Delta table yet"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn evolve_proposes_a_new_dataset_version_and_retry_lands_the_new_columns() {
    let p = Project::csv(0, 0, 10, "30s");
    let store = p.sqlite();
    p.write("v1.yaml", V1);
    let out = p.run(&["schema", "register", "v1.yaml", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evolving = "pipeline: evolving\nsource:\n  files: in/*.csv\n  dataset: orders_raw\n  settle: 0s\n  unknown_columns: evolve\nbatch:\n  max_rows: 10\n  max_files: 1\ntransform: SELECT * FROM input\nsink:\n  delta: out\n";
    p.write("p.yaml", evolving);
    p.write("in/a.csv", "id,cust,amount\n1,ann,10\n");
    p.write(
        "in/b.csv",
        "id,cust,amount,coupon\n2,bob,20,SAVE10\n3,cy,30,\n",
    );
    let spec_path = p.dir.path().join("p.yaml").display().to_string();
    let drain = || {
        let out = p.run(&["run", &spec_path, "--store", &store, "--until-drained"]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    drain();
    let status = |p: &Project| -> serde_json::Value {
        let out = p.run(&["status", "--store", &store, "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let st = status(&p);
    let held = st["quarantined"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{st:#}");
    let reason = held[0]["last_error"].as_str().unwrap();
    assert!(reason.contains("b.csv"), "{reason}");
    assert!(reason.contains("coupon (string)"), "{reason}");
    assert!(reason.contains("orders_raw@2 has them"), "{reason}");
    assert_exactly_once(&p.table_counts("out", "id"), &[1]);

    // The registry took the proposal: v2 = v1 + coupon, nullable.
    let shown = p.run(&[
        "schema",
        "show",
        "orders_raw@2",
        "--store",
        &store,
        "--json",
    ]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let fields: Vec<&str> = shown["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["id", "cust", "amount", "coupon"]);

    // Started again, the pipeline reads v2; the held batch replays and lands with its coupon.
    drain();
    let out = p.run(&["retry", "--all", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));
    drain();
    assert_eq!(status(&p)["quarantined"].as_array().unwrap().len(), 0);
    assert_exactly_once(&p.table_counts("out", "id"), &[1, 2, 3]);
    let rows = query(
        &p.dir.path().join("out"),
        None,
        "SELECT coupon FROM t ORDER BY id",
    );
    assert_eq!(
        texts(&rows, "coupon"),
        vec![None, Some("SAVE10".to_string()), None]
    );

    // Without a dataset, `evolve` is a spec error.
    p.write(
        "bad.yaml",
        "pipeline: bad\nsource:\n  files: in/*.csv\n  columns: {id: int64}\n  unknown_columns: evolve\ntransform: SELECT * FROM input\nsink:\n  delta: out2\n",
    );
    let out = p.run(&["validate", "bad.yaml", "--store", &store]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.yaml:5"), "{}", stderr(&out));
}
