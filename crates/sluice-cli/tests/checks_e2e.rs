//! Write-audit-publish end to end: a `not_null` error check and a `range` warn check on data
//! where some batches violate them. Violating batches are held with their failing rows,
//! warnings are recorded, nothing violating an error check reaches the table, and after the
//! data is fixed, `sluice retry` lands everything exactly once.

mod common;

use common::*;

const SPEC: &str = "pipeline: audited
source:
  files: in/*.csv
  columns: {id: int64, email: string, amount: float64}
  required: [id]
  settle: 0s
batch:
  max_rows: 4
transform: SELECT id, NULLIF(email, 'NONE') AS email, amount FROM input
sink:
  delta: out
  key: [id]
checks:
  - not_null: {columns: [email]}
  - range: {column: amount, min: 0, severity: warn}
";

fn drain(p: &Project) {
    let spec = p.spec().display().to_string();
    let out = p.run(&["run", &spec, "--store", &p.sqlite(), "--until-drained"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn failing_batches_are_held_warnings_recorded_and_retry_lands_fixed_data_once() {
    let p = Project::csv(0, 0, 1, "30s");
    p.write("p.yaml", SPEC);
    // Batch 1 (ids 1-4): clean. Batch 2 (5-8): an email of NONE (-> NULL: error check).
    // Batch 3 (9-12): a negative amount (warn check). Batch 4 (13-14): NONE again.
    p.write(
        "in/a.csv",
        "id,email,amount\n1,a@x,1\n2,b@x,2\n3,c@x,3\n4,d@x,4\n5,e@x,5\n6,NONE,6\n7,g@x,7\n8,h@x,8\n9,i@x,9\n10,j@x,-10\n11,k@x,11\n12,l@x,12\n13,NONE,13\n14,n@x,14\n",
    );
    drain(&p);
    let st = p.status(&p.sqlite());
    assert_eq!(st["pipelines"][0]["quarantined"], 2, "{st:#}");
    assert_eq!(st["pipelines"][0]["done"], 2, "{st:#}");
    let reasons: Vec<String> = st["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["last_error"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.iter().all(|r| r.contains("not_null(email)")),
        "{reasons:?}"
    );
    // Nothing violating the error check was published; the warned row was.
    let counts = p.table_counts("out", "id");
    let mut ids: Vec<_> = counts.keys().copied().collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4, 9, 10, 11, 12]);
    // The failing rows are in the quarantine table with batch, check and reason.
    let q = p.dir.path().join("out_quarantine");
    let rows = read_strings(&q, "row");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().any(|r| r.contains("\"id\":6")), "{rows:?}");
    assert!(rows.iter().any(|r| r.contains("\"id\":13")), "{rows:?}");
    assert_eq!(read_strings(&q, "check"), vec!["not_null(email)"; 2]);
    let shown = p.run(&["quarantine", "show", "--store", &p.sqlite(), "--json"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        shown[0]["batches"].as_array().unwrap().len(),
        2,
        "{shown:#}"
    );
    assert_eq!(shown[0]["rows"].as_array().unwrap().len(), 2, "{shown:#}");
    assert_eq!(shown[0]["rows"][0]["check"], "not_null(email)");

    // Every check result was recorded per version: 4 batches x 2 checks, one warning; and
    // the null rates of the checked columns (email, amount) of every batch, held ones too.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let all = rt.block_on(async {
        let store = sluice_store::open(&p.sqlite()).await.unwrap();
        store.check_results("audited", Some(1), 100).await.unwrap()
    });
    let (rates, results): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.kind == "null_rate");
    assert_eq!(rates.len(), 8, "{rates:?}");
    let null_emails: Vec<i64> = rates
        .iter()
        .filter(|r| r.check == "null_rate(email)")
        .map(|r| r.failing)
        .collect();
    assert_eq!(null_emails.iter().sum::<i64>(), 2, "{rates:?}");
    assert_eq!(results.len(), 8, "{results:?}");
    let level = |l: &str| results.iter().filter(|r| r.level == l).count();
    assert_eq!(
        (level("error"), level("warn"), level("pass")),
        (2, 1, 5),
        "{results:?}"
    );
    let warned = results.iter().find(|r| r.level == "warn").unwrap();
    assert_eq!(
        (warned.check.as_str(), warned.failing),
        ("range(amount)", 1)
    );

    // Fix the data in place (same length, so the landed file's slices still hold) and retry.
    let fixed = std::fs::read_to_string(p.dir.path().join("in/a.csv"))
        .unwrap()
        .replace("NONE", "ok@x");
    p.write("in/a.csv", &fixed);
    let out = p.run(&["retry", "--all", "--store", &p.sqlite()]);
    assert!(out.status.success(), "{}", stderr(&out));
    drain(&p);
    let st = p.status(&p.sqlite());
    assert_eq!(st["pipelines"][0]["quarantined"], 0, "{st:#}");
    assert_exactly_once(&p.table_counts("out", "id"), &(1..=14).collect::<Vec<_>>());
}

#[test]
fn a_check_on_a_missing_column_is_a_spec_error_at_validate() {
    let p = Project::csv(0, 0, 1, "30s");
    p.write(
        "p.yaml",
        &SPEC.replace("columns: [email]", "columns: [emial]"),
    );
    let out = p.run(&["validate", &p.spec().display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("p.yaml:14:3"), "{err}");
    assert!(
        err.contains("\"emial\" is not in the transform's output"),
        "{err}"
    );
}

fn read_strings(table: &std::path::Path, column: &str) -> Vec<String> {
    use sluice_engine::arrow::array::{Array, AsArray};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url =
        sluice_engine::sink::table_url(&table.display().to_string(), std::path::Path::new("/"))
            .unwrap();
    let batches = rt
        .block_on(sluice_engine::sink::DeltaSink::new(url).read_all())
        .unwrap();
    let mut out = Vec::new();
    for b in batches {
        let col = sluice_engine::arrow::compute::cast(
            b.column_by_name(column).unwrap(),
            &sluice_engine::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let s = col.as_string::<i32>();
        out.extend((0..s.len()).map(|i| s.value(i).to_string()));
    }
    out
}
