//! Deploy suites: `sluice verify pre` on good and bad candidates, `sluice verify post` on a
//! healthy version and on one whose batches fail, with the decision and exit code of each.

mod common;

use common::*;

fn verify(p: &Project, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let store = p.sqlite();
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--store", &store, "--json"]);
    let out = p.run(&all);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&out), stderr(&out)));
    (out.status.code(), json)
}

fn item<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no item {name:?} in {v:#}"))
}

fn drain(p: &Project, spec: &str) {
    let out = p.run(&["run", spec, "--store", &p.sqlite(), "--until-drained"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn pre_deploy_suite_passes_a_good_candidate_and_rolls_back_bad_ones() {
    let p = Project::csv(2, 100, 50, "30s");
    let spec = p.spec().display().to_string();
    drain(&p, &spec);

    let (code, v) = verify(&p, &["pre", &spec]);
    assert_eq!(v["decision"], "PROCEED", "{v:#}");
    assert_eq!(code, Some(0));
    assert_eq!(
        item(&v, "candidate dry run on recent batches")["status"],
        "PASS",
        "{v:#}"
    );
    assert_eq!(
        item(&v, "compatible with the sink table")["status"],
        "PASS",
        "{v:#}"
    );
    assert_eq!(item(&v, "store reachable and migrated")["status"], "PASS");

    // A candidate that drops an output column breaks the sink's readers.
    let text = std::fs::read_to_string(p.spec()).unwrap();
    p.write(
        "drop.yaml",
        &text.replace("amount * 2 AS doubled", "customer + 0 AS doubled_customer"),
    );
    let (code, v) = verify(
        &p,
        &["pre", &p.dir.path().join("drop.yaml").display().to_string()],
    );
    assert_eq!(code, Some(1));
    assert_eq!(v["decision"], "ROLLBACK", "{v:#}");
    assert_eq!(
        item(&v, "compatible with the sink table")["status"],
        "FAIL",
        "{v:#}"
    );

    // A candidate whose new check fails on recent data.
    p.write(
        "strict.yaml",
        &format!("{text}checks:\n  - range: {{column: doubled, max: 10}}\n"),
    );
    let (code, v) = verify(
        &p,
        &[
            "pre",
            &p.dir.path().join("strict.yaml").display().to_string(),
        ],
    );
    assert_eq!(code, Some(1));
    let dry = item(&v, "candidate dry run on recent batches");
    assert_eq!(dry["status"], "FAIL", "{v:#}");
    assert!(
        dry["detail"].as_str().unwrap().contains("range(doubled)"),
        "{dry:#}"
    );

    // The pipeline's own rules decide how many warnings are too many: a stale table and a
    // big backlog are two warnings, INVESTIGATE under `deploy.max_warnings: 1`.
    p.write("picky.yaml", &format!("{text}deploy:\n  max_warnings: 1\n"));
    let picky = p.dir.path().join("picky.yaml").display().to_string();
    let args = [
        "pre",
        picky.as_str(),
        "--max-table-age",
        "1ms",
        "--max-backlog=-1",
    ];
    let (code, v) = verify(&p, &args);
    assert_eq!(v["decision"], "INVESTIGATE", "{v:#}");
    assert_eq!(code, Some(1));
    let mut lenient = args.to_vec();
    lenient.extend_from_slice(&["--max-warnings", "5"]);
    let (code, v) = verify(&p, &lenient);
    assert_eq!(
        (code, v["decision"].as_str()),
        (Some(0), Some("PROCEED")),
        "{v:#}"
    );

    // A candidate whose SQL does not plan.
    p.write("bad.yaml", &text.replace("amount * 2", "nope * 2"));
    let (code, v) = verify(
        &p,
        &["pre", &p.dir.path().join("bad.yaml").display().to_string()],
    );
    assert_eq!(code, Some(1));
    let spec_item = item(&v, "spec valid, SQL plans");
    assert_eq!(spec_item["status"], "FAIL");
    assert!(
        spec_item["detail"].as_str().unwrap().contains("nope"),
        "{spec_item:#}"
    );
}

#[test]
fn post_deploy_suite_judges_the_current_version_against_the_previous_one() {
    let p = Project::csv(2, 100, 50, "30s");
    let spec = p.spec().display().to_string();
    drain(&p, &spec);
    let (code, v) = verify(&p, &["post", "crash"]);
    assert_eq!(v["decision"], "PROCEED", "{v:#}");
    assert_eq!(code, Some(0));
    assert_eq!(item(&v, "batch error rate")["status"], "PASS");
    assert_eq!(item(&v, "freshness")["status"], "PASS");
    assert_eq!(
        item(&v, "sink schema matches the version")["status"],
        "PASS",
        "{v:#}"
    );

    // Version 2 adds a check every row fails: its batches are held.
    let text = std::fs::read_to_string(p.spec()).unwrap();
    p.write(
        "p.yaml",
        &format!("{text}checks:\n  - range: {{column: doubled, max: -1}}\n"),
    );
    p.write(
        "landing/late.csv",
        "id,customer,amount\n900001,1,5.0\n900002,2,6.0\n",
    );
    drain(&p, &spec);
    let (code, v) = verify(&p, &["post", "crash"]);
    assert_eq!(code, Some(1));
    assert_eq!(v["decision"], "ROLLBACK", "{v:#}");
    assert_eq!(item(&v, "batch error rate")["status"], "FAIL", "{v:#}");
    assert_eq!(
        item(&v, "declared checks passing")["status"],
        "FAIL",
        "{v:#}"
    );

    let out = p.run(&["verify", "post", "nope", "--store", &p.sqlite()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "unknown pipeline is an input error"
    );
}

/// A measurement that cannot be taken never passes: with the store's task counters gone (a
/// store that answers, but fails the status query, which reads them), `verify pre` used to
/// report a passing backlog of 0.
#[test]
fn a_backlog_the_store_cannot_count_fails_instead_of_passing() {
    use sqlx::{Connection, Executor};
    let p = Project::csv(1, 20, 10, "30s");
    let spec = p.spec().display().to_string();
    drain(&p, &spec);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", p.sqlite()))
            .await
            .unwrap();
        conn.execute("DROP TABLE task_counts").await.unwrap();
    });
    let (code, v) = verify(&p, &["pre", &spec]);
    let backlog = item(&v, "backlog");
    assert_eq!(backlog["status"], "FAIL", "{v:#}");
    assert!(
        backlog["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot count the batches waiting"),
        "{v:#}"
    );
    assert_eq!(v["decision"], "ROLLBACK", "{v:#}");
    assert_eq!(code, Some(1));
}
