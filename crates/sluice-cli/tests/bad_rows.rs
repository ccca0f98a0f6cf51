//! `source.bad_rows: drop`: good rows are published, bad ones are kept in the quarantine table
//! with file, line, column, reason and raw text, a batch over `error_if` is held, and after a
//! fix `sluice retry --dropped` replays the dropped rows exactly once.

mod common;

use common::*;

fn run_drained(p: &Project) {
    p.run_drained_spec(&p.spec());
}

fn spec(amount: &str) -> String {
    format!(
        "pipeline: drops\nsource:\n  files: in/*.csv\n  columns: {{id: int64, customer: int64, amount: {amount}}}\n  required: [id]\n  settle: 0s\n  bad_rows: {{action: drop, error_if: \"> 30%\"}}\nbatch:\n  max_rows: 10\ntransform: SELECT id, customer, CAST(amount AS DOUBLE) AS amount FROM input\nsink:\n  delta: out\n  key: [id]\n"
    )
}

fn quarantine_json(p: &Project) -> serde_json::Value {
    let out = p.run(&["quarantine", "show", "--store", &p.sqlite(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn dropped_rows_are_kept_shown_and_replayed_once_after_a_fix() {
    let p = Project::csv(0, 0, 1, "30s");
    // a.csv: ids 1..=20 at lines 2..=21. Lines 4 and 9 carry decimal amounts (bad while the
    // spec says int64, good after the fix), line 15 an amount nothing parses.
    let mut a = String::from("id,customer,amount\n");
    for id in 1..=20 {
        let amount = match id {
            3 => "2.5".to_string(),
            8 => "7.25".to_string(),
            14 => "oops".to_string(),
            _ => format!("{id}"),
        };
        a.push_str(&format!("{id},{},{amount}\n", id % 7));
    }
    p.write("in/a.csv", &a);
    // b.csv: 4 of 5 rows bad, above error_if: the batch is held whole.
    p.write(
        "in/b.csv",
        "id,customer,amount\n101,1,x\n102,1,y\n103,1,5\n104,1,z\n105,1,w\n",
    );
    p.write("p.yaml", &spec("int64"));
    run_drained(&p);

    let st = p.status(&p.sqlite());
    let ps = &st["pipelines"][0];
    assert_eq!(ps["dropped_rows"], 3, "{st:#}");
    assert_eq!(ps["quarantined"], 1, "{st:#}");
    assert_eq!(ps["done"], 2, "{st:#}");
    let held = st["quarantined"][0]["last_error"].as_str().unwrap();
    assert!(
        held.contains("4 of 5 rows") && held.contains("> 30%") && held.contains("b.csv:2"),
        "{held}"
    );
    let good: Vec<i64> = (1..=20).filter(|i| ![3, 8, 14].contains(i)).collect();
    assert_exactly_once(&p.table_counts("out", "id"), &good);

    // The dropped rows are in the quarantine table with where, why and their text.
    let q = quarantine_json(&p);
    let rows = q[0]["rows"].as_array().unwrap();
    let mut bad: Vec<_> = rows.iter().filter(|r| r["check"] == "bad_rows").collect();
    bad.sort_by_key(|r| r["line"].as_i64());
    assert_eq!(bad.len(), 3, "{q:#}");
    let lines: Vec<i64> = bad.iter().map(|r| r["line"].as_i64().unwrap()).collect();
    assert_eq!(lines, vec![4, 9, 15]);
    for r in &bad {
        assert!(r["file"].as_str().unwrap().ends_with("in/a.csv"), "{r}");
        assert_eq!(r["column"], "amount", "{r}");
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    }
    assert_eq!(bad[0]["raw"], "3,3,2.5");
    assert_eq!(bad[2]["raw"], "14,0,oops");
    assert!(
        bad[2]["reason"].as_str().unwrap().contains("oops"),
        "{}",
        bad[2]
    );
    let text = p.run(&["quarantine", "show", "--store", &p.sqlite()]);
    assert!(
        stdout(&text).contains("a.csv:15 column \"amount\""),
        "{}",
        stdout(&text)
    );

    // The fix: amounts are decimals. Version 2 replays the dropped rows.
    p.write("p.yaml", &spec("float64"));
    run_drained(&p);
    let retry = p.run(&["retry", "--dropped", "--all", "--store", &p.sqlite()]);
    assert!(retry.status.success(), "{}", stderr(&retry));
    assert!(
        stdout(&retry).contains("2 replay batch(es) queued"),
        "{}",
        stdout(&retry)
    );
    run_drained(&p);
    let mut landed = good.clone();
    landed.extend([3, 8]);
    assert_exactly_once(&p.table_counts("out", "id"), &landed);
    // "oops" still does not parse: its replay batch is all bad rows, above error_if, so it is
    // held (for `sluice retry` after another fix) rather than dropped again.
    let st = p.status(&p.sqlite());
    assert_eq!(st["pipelines"][0]["current_version"], 2, "{st:#}");
    assert_eq!(st["pipelines"][0]["quarantined"], 2, "{st:#}");
    let replay = st["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["version"] == 2)
        .expect("the held replay");
    let reason = replay["last_error"].as_str().unwrap();
    assert!(
        reason.contains("a.csv:15") && reason.contains("oops"),
        "{reason}"
    );

    // Asking again queues the original batches' replays no second time.
    let again = p.run(&["retry", "--dropped", "--all", "--store", &p.sqlite()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("2 batch(es) had their dropped rows queued before"),
        "{}",
        stdout(&again)
    );
    run_drained(&p);
    assert_exactly_once(&p.table_counts("out", "id"), &landed);
    // A batch without dropped rows is a usage error.
    let none = p.run(&["retry", "--dropped", "nope", "--store", &p.sqlite()]);
    assert_eq!(none.status.code(), Some(2), "{}", stderr(&none));
}
