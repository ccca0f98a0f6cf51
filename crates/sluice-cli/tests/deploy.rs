//! Deployments end to end: a running pipeline under continuous input, a new version going out
//! by canary, recreate (`sluice run` of a changed spec) and rollback, and bad candidates
//! aborted by analysis with their rows repaired. Every test checks the table by key: every
//! input key exactly once, and which version wrote it.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::deploy::*;
use common::*;

const CANARY: &str = "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - analysis:\n        metrics:\n          - name: errors\n            interval: 1s\n            count: 2\n            success_condition: candidate.error_rate <= 0\n    - set_weight: 100\n";

/// Runs v1 (`sluice run` with 2 workers, and `extra` `sluice worker` processes of 2 workers
/// each) on `store` under continuous input, deploys v2 with `deploy` and checks it is promoted
/// with the table holding every input key once, some written by each version. Returns the
/// deployment's view.
fn goes_out_under_continuous_input(
    store: Option<String>,
    extra: usize,
    deploy: &str,
) -> serde_json::Value {
    let p = Arc::new(Mutex::new(Project::csv(2, 100, 50, "10s")));
    let store = {
        let p = p.lock().unwrap();
        p.write("v1.yaml", &spec(1, None, ""));
        p.write("v2.yaml", &spec(2, None, deploy));
        store.unwrap_or_else(|| p.sqlite())
    };
    let run = run_bg(&p.lock().unwrap(), "v1.yaml", &store, "2");
    wait_for(
        &p.lock().unwrap(),
        &store,
        4,
        false,
        Duration::from_secs(60),
    );
    let workers: Vec<Bg> = (0..extra)
        .map(|_| {
            Bg(p.lock()
                .unwrap()
                .sluice(&[
                    "worker",
                    "--store",
                    &store,
                    "--workers",
                    "2",
                    "--leader-lease",
                    "3s",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap())
        })
        .collect();
    let lander = Lander::start(p.clone(), Duration::from_millis(300));
    let dir = p.lock().unwrap().dir.path().to_path_buf();
    let out = deploy_wait(&dir, "v2.yaml", &store, Duration::from_secs(120));
    lander.stop();
    assert!(
        out.status.success(),
        "deploy --wait: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let p = p.lock().unwrap();
    wait_for(&p, &store, 1, true, Duration::from_secs(60));
    for w in workers {
        assert!(w.stop().success());
    }
    assert!(run.stop().success());
    let h = history(&p, &store);
    assert_eq!(h[0]["deployment"]["outcome"], "promoted", "{h}");
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    let by_version = p.table_counts("out", "ver");
    assert!(
        by_version.get(&1).copied().unwrap_or(0) > 0,
        "{by_version:?}"
    );
    assert!(
        by_version.get(&2).copied().unwrap_or(0) > 0,
        "{by_version:?}"
    );
    h[0].clone()
}

#[test]
fn canary_goes_out_under_continuous_input_and_every_key_lands_once() {
    let view = goes_out_under_continuous_input(None, 0, CANARY);
    assert_eq!(view["deployment"]["strategy"], "canary");
    // Each step was taken, in order, and the analysis measured twice.
    let weights: Vec<i64> = view["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["route"]["weight"].as_i64())
        .collect();
    assert!(weights.windows(2).all(|w| w[0] <= w[1]), "{weights:?}");
    assert!(
        weights.contains(&50) && weights.contains(&100),
        "{weights:?}"
    );
    let measured = view["measurements"].as_array().unwrap();
    assert_eq!(measured.len(), 2, "{measured:?}");
    assert!(
        measured.iter().all(|m| m["phase"] == "successful"),
        "{measured:?}"
    );
}

#[test]
fn canary_on_postgres_with_a_second_worker_process() {
    let Some(url) = postgres() else { return };
    goes_out_under_continuous_input(Some(url), 1, CANARY);
}

const ROLLING: &str = "deploy:\n  strategy: rolling\n  max_surge: 50%\n  healthy_batches: 2\n";

#[test]
fn rolling_moves_worker_slots_in_groups_on_sqlite_with_a_second_process() {
    let view = goes_out_under_continuous_input(None, 1, ROLLING);
    assert_eq!(view["deployment"]["strategy"], "rolling");
    let events = view["events"].as_array().unwrap();
    let groups: Vec<i64> = events
        .iter()
        .filter(|e| e["route"]["mode"] == "slots")
        .filter_map(|e| e["route"]["weight"].as_i64())
        .collect();
    // 4 live slots, max_surge 50%: two groups of two slots.
    assert_eq!(groups.first(), Some(&50), "{events:?}");
    assert!(groups.contains(&100), "{events:?}");
}

#[test]
fn rolling_on_postgres() {
    let Some(url) = postgres() else { return };
    goes_out_under_continuous_input(Some(url), 1, ROLLING);
}

#[test]
fn recreate_on_postgres_under_continuous_input_reports_its_gap() {
    let Some(url) = postgres() else { return };
    let view = goes_out_under_continuous_input(Some(url), 1, "deploy:\n  strategy: recreate\n");
    assert_eq!(view["deployment"]["strategy"], "recreate");
    assert!(view["data"]["gap_ms"].as_i64().is_some(), "{view}");
}

/// Runs v1 under continuous input, deploys bad `v3` by canary (weight 50 for up to a minute,
/// with the background analysis `analysis`), and checks it is aborted by the analysis, with
/// none of its rows left and every key once. Returns the deployment's view. `{FROM}` in
/// `transform` is where the bad rows start: in the live input only, so the pre-deploy suite's
/// dry run passes and analysis is what catches the candidate, as in production.
fn bad_candidate_is_rolled_back(transform: &str, extra: &str, analysis: &str) -> serde_json::Value {
    let p = Arc::new(Mutex::new(Project::csv(2, 100, 50, "10s")));
    let store = p.lock().unwrap().sqlite();
    p.lock().unwrap().write("v1.yaml", &spec(1, None, ""));
    // Analysis templates the candidate's spec references: `# template NAME` then its YAML.
    for template in analysis.split("# template ").skip(1) {
        let (name, text) = template.split_once('\n').unwrap();
        let p = p.lock().unwrap();
        p.write(&format!("{name}.yaml"), text);
        let out = p.run(&[
            "analysis",
            "put",
            name,
            &format!("{name}.yaml"),
            "--store",
            &store,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let analysis = analysis.split("# template ").next().unwrap();
    let deploy = format!(
        "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - pause: {{duration: 60s}}\n    - set_weight: 100\n  analysis:\n{analysis}"
    );
    let run = run_bg(&p.lock().unwrap(), "v1.yaml", &store, "2");
    wait_for(
        &p.lock().unwrap(),
        &store,
        4,
        false,
        Duration::from_secs(60),
    );
    let lander = Lander::start(p.clone(), Duration::from_millis(200));
    {
        // The bad rows start 300 keys past what has landed: the pre-deploy suite's dry run on
        // recent batches passes, and the candidate publishes good batches before it meets
        // them, so the repair has rows to remove.
        let p = p.lock().unwrap();
        let from = p.keys.iter().max().copied().unwrap_or(0) + 300;
        let transform = transform.replace("{FROM}", &from.to_string());
        p.write(
            "v3.yaml",
            &format!("{}{extra}", spec(3, Some(&transform), &deploy)),
        );
    }
    let dir = p.lock().unwrap().dir.path().to_path_buf();
    let started = Instant::now();
    let out = deploy_wait(&dir, "v3.yaml", &store, Duration::from_secs(120));
    let took = started.elapsed();
    lander.stop();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad candidate ends aborted (exit 1): {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let p = p.lock().unwrap();
    wait_for(&p, &store, 1, true, Duration::from_secs(90));
    assert!(run.stop().success());
    let h = history(&p, &store);
    let view = h[0].clone();
    assert_eq!(view["deployment"]["outcome"], "aborted", "{view}");
    let reason = view["deployment"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("analysis failed"), "{reason}");
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    let by_version = p.table_counts("out", "ver");
    assert_eq!(
        by_version.get(&3),
        None,
        "rows of the aborted version remain: {by_version:?}"
    );
    let data = &view["data"];
    let detect = data["rerouted_at"].as_i64().unwrap() - data["detected_at"].as_i64().unwrap();
    eprintln!(
        "aborted in {took:?}; first failed measurement to every new batch on stable: {detect} ms; repaired {} batches",
        data["repair"]["repaired"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0)
    );
    assert!(
        (0..=1_000).contains(&detect),
        "rerouted {detect} ms after detection"
    );
    view
}

const ERRORS: &str = "    metrics:\n      - name: errors\n        interval: 1s\n        failure_condition: candidate.error_rate > 0 OR candidate.quarantine_rate > 0\n";

#[test]
fn sql_that_errors_on_some_rows_is_aborted_and_its_rows_repaired() {
    let view = bad_candidate_is_rolled_back(
        "SELECT id, customer, amount * 2 AS doubled, CASE WHEN id >= {FROM} AND id % 70 = 3 THEN CAST(concat('x', CAST(id AS VARCHAR)) AS BIGINT) ELSE CAST(3 AS BIGINT) END AS ver FROM input",
        "",
        ERRORS,
    );
    assert!(
        !view["data"]["repair"]["repaired"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the candidate published batches before it failed, and they were repaired: {view}"
    );
}

#[test]
fn nulls_an_error_check_forbids_are_aborted_and_repaired() {
    bad_candidate_is_rolled_back(
        "SELECT id, customer, CASE WHEN id >= {FROM} AND id % 70 = 3 THEN NULL ELSE amount * 2 END AS doubled, CAST(3 AS BIGINT) AS ver FROM input",
        "checks:\n  - not_null: {columns: [doubled]}\n",
        ERRORS,
    );
}

#[test]
fn a_version_that_drops_a_fifth_of_the_rows_is_aborted_and_repaired() {
    bad_candidate_is_rolled_back(
        "SELECT id, customer, amount * 2 AS doubled, CAST(3 AS BIGINT) AS ver FROM input WHERE id % 5 <> 0",
        "",
        // A named template with an argument, stored with `sluice analysis put`.
        "    templates: [{name: rows, args: {ratio: 0.95}}]\n# template rows\nargs:\n  - name: ratio\nmetrics:\n  - name: rows\n    interval: 1s\n    failure_condition: candidate.rows_ratio < {{args.ratio}} * stable.rows_ratio\n",
    );
}

#[test]
fn run_of_a_changed_spec_recreates_and_rollback_repairs_back_to_v1() {
    let mut p = Project::csv(2, 100, 50, "10s");
    let store = p.sqlite();
    p.write("v1.yaml", &spec(1, None, ""));
    p.write("v2.yaml", &spec(2, None, ""));
    p.run_drained_spec(&p.dir.path().join("v1.yaml"));
    p.land("more_0", 120);
    let log = p.run_drained_spec(&p.dir.path().join("v2.yaml"));
    assert!(log.contains("by recreate"), "{log}");
    let h = history(&p, &store);
    assert_eq!(h[0]["deployment"]["outcome"], "promoted", "{h}");
    assert_eq!(h[0]["deployment"]["strategy"], "recreate");
    assert!(
        h[0]["data"]["gap_ms"].as_i64().is_some(),
        "the switch's gap is reported: {h}"
    );
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    let by_version = p.table_counts("out", "ver");
    assert_eq!(by_version.get(&2).copied(), Some(120), "{by_version:?}");

    // Back to v1: v2's 120 rows are removed and run again by v1.
    let out = p.run(&["rollback", "crash", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Nothing runs: status shows the rollback waiting, and that no process leads.
    let status = p.status(&store);
    assert_eq!(status["deployments"][0]["state"], "aborting", "{status}");
    assert_eq!(status["deployments"][0]["strategy"], "rollback", "{status}");
    assert!(status["leader"].is_null(), "{status}");
    let text = stdout(&p.run(&["status", "--store", &store]));
    assert!(
        text.contains("no process holds the leader duties"),
        "{text}"
    );
    let out = p.run(&[
        "worker",
        "--store",
        &store,
        "--until-drained",
        "--leader-lease",
        "2s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let h = history(&p, &store);
    assert_eq!(h[0]["deployment"]["outcome"], "rolled_back", "{h}");
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    let by_version = p.table_counts("out", "ver");
    assert_eq!(by_version.get(&2), None, "{by_version:?}");
    let status = p.status(&store);
    let current = status["pipelines"][0]["current_version"].as_i64();
    assert_eq!(current, Some(1), "{status}");
}

#[test]
fn a_rollback_after_a_compaction_rewrote_the_versions_files_refuses_and_duplicates_nothing() {
    let mut p = Project::csv(2, 100, 50, "10s");
    let store = p.sqlite();
    p.write("v1.yaml", &spec(1, None, ""));
    p.write("v2.yaml", &spec(2, None, ""));
    p.run_drained_spec(&p.dir.path().join("v1.yaml"));
    p.land("more_0", 120);
    p.run_drained_spec(&p.dir.path().join("v2.yaml"));
    // Another writer compacts the table (delta-rs's OPTIMIZE): v2's files are gone, their
    // rows now in files that hold v1's rows too. Re-running v2's batches on v1 after this would
    // write them twice; removing the new files would lose v1's.
    let table = p.dir.path().join("out");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let url =
            sluice_engine::sink::table_url(&table.display().to_string(), std::path::Path::new("/"))
                .unwrap();
        let t = sluice_engine::deltalake::open_table(url).await.unwrap();
        let (_, metrics) = t.optimize().await.unwrap();
        assert!(metrics.num_files_removed >= 2, "{metrics:?}");
    });
    let out = p.run(&["rollback", "crash", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));
    let w = worker(&p, &store, "2", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let out = p.run(&["deploy", "status", "crash", "--store", &store, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if view["data"]["repair"]["refused"].is_string() {
            break view;
        }
        assert!(Instant::now() < deadline, "no refusal recorded: {view}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // A few more ticks of the leader: the refusal stands, nothing is queued again.
    std::thread::sleep(Duration::from_secs(3));
    kill(w);
    assert_eq!(view["deployment"]["state"], "repairing", "{view}");
    let refused = view["data"]["repair"]["refused"].as_str().unwrap();
    assert!(
        refused.contains("no longer in the table") && refused.contains("restore the table"),
        "says what happened and what to do: {refused}"
    );
    let text = stdout(&p.run(&["deploy", "status", "crash", "--store", &store, "--once"]));
    assert!(text.contains("repair    repair refused"), "{text}");
    let status = p.status(&store);
    assert_eq!(status["deployments"][0]["state"], "repairing", "{status}");
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    let by_version = p.table_counts("out", "ver");
    assert_eq!(
        by_version.get(&2).copied(),
        Some(120),
        "nothing removed: {by_version:?}"
    );
}

#[test]
fn a_version_three_times_slower_is_aborted_by_latency_analysis_and_repaired() {
    // A sum over a three-way self join of the 50-row batch: ~125,000 rows more work per batch,
    // about 3-5 times the batch time here (debug build), with the same rows out.
    bad_candidate_is_rolled_back(
        "SELECT id, customer, amount * 2 AS doubled, CAST(3 AS BIGINT) AS ver FROM input WHERE amount < 1 + (SELECT sum(a.amount + b.amount * c.amount) FROM input a CROSS JOIN input b CROSS JOIN input c)",
        "",
        "    metrics:\n      - name: latency\n        interval: 2s\n        failure_condition: candidate.p95_ms > 2 * stable.p95_ms\n",
    );
}

#[test]
fn a_version_three_times_as_cpu_hungry_is_aborted_by_cpu_analysis_and_repaired() {
    // The same heavier SQL, judged on the CPU time each batch's own code used (measured in the
    // worker around the batch's polls, not the process's total, which stable's batches share).
    let view = bad_candidate_is_rolled_back(
        "SELECT id, customer, amount * 2 AS doubled, CAST(3 AS BIGINT) AS ver FROM input WHERE amount < 1 + (SELECT sum(a.amount + b.amount * c.amount) FROM input a CROSS JOIN input b CROSS JOIN input c)",
        "",
        "    metrics:\n      - name: cpu\n        interval: 2s\n        failure_condition: candidate.cpu_ms > 2 * stable.cpu_ms\n",
    );
    let reason = view["deployment"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("cpu"), "{reason}");
    let measured = view["measurements"].as_array().unwrap();
    let failed = measured
        .iter()
        .find(|m| m["metric"] == "cpu" && m["phase"] == "failed")
        .unwrap_or_else(|| panic!("no failed cpu measurement: {measured:?}"));
    let (candidate, stable) = (
        failed["value"].as_f64().unwrap(),
        failed["stable_value"].as_f64().unwrap(),
    );
    assert!(
        stable > 0.0 && candidate > 2.0 * stable,
        "candidate {candidate} CPU ms per batch against stable's {stable}"
    );
}

#[test]
fn a_person_promotes_past_a_pause_then_pauses_resumes_and_aborts_the_next() {
    let p = Arc::new(Mutex::new(Project::csv(2, 100, 50, "10s")));
    let store = {
        let p = p.lock().unwrap();
        p.write("v1.yaml", &spec(1, None, ""));
        p.write(
            "v2.yaml",
            &spec(2, None, "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - pause: {}\n    - set_weight: 100\n"),
        );
        p.write(
            "v3.yaml",
            &spec(3, None, "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - pause: {duration: 10m}\n"),
        );
        p.sqlite()
    };
    let run = run_bg(&p.lock().unwrap(), "v1.yaml", &store, "2");
    wait_for(
        &p.lock().unwrap(),
        &store,
        4,
        false,
        Duration::from_secs(60),
    );
    let lander = Lander::start(p.clone(), Duration::from_millis(250));

    command(&p, &["deploy", "v2.yaml", "--store", &store]);
    let paused = wait_state(&p, &store, "paused", Duration::from_secs(30));
    assert!(
        paused["reason"]
            .as_str()
            .unwrap()
            .contains("until `sluice promote`"),
        "{paused}"
    );
    assert_eq!(
        paused["route"]["weight"], 50,
        "the pause holds the weight: {paused}"
    );
    command(&p, &["promote", "crash", "--store", &store]);
    wait_ended(&p, &store, Duration::from_secs(30));
    assert_eq!(
        history(&p.lock().unwrap(), &store)[0]["deployment"]["outcome"],
        "promoted"
    );

    command(&p, &["deploy", "v3.yaml", "--store", &store]);
    // At weight 50, in its 10-minute pause: pause it, resume it, then abort it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = deployment_state(&p.lock().unwrap(), &store);
        if d.as_ref().is_some_and(|d| d["route"]["weight"] == 50) {
            break;
        }
        assert!(Instant::now() < deadline, "v3 not at weight 50: {d:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2)); // let v3 publish some batches
    command(&p, &["pause", "crash", "--store", &store]);
    let paused = wait_state(&p, &store, "paused", Duration::from_secs(30));
    assert!(
        paused["reason"].as_str().unwrap().contains("sluice pause"),
        "{paused}"
    );
    command(&p, &["resume", "crash", "--store", &store]);
    wait_state(&p, &store, "progressing", Duration::from_secs(30));
    command(&p, &["abort", "crash", "--store", &store]);
    wait_ended(&p, &store, Duration::from_secs(60));
    lander.stop();
    let p = p.lock().unwrap();
    wait_for(&p, &store, 1, true, Duration::from_secs(60));
    assert!(run.stop().success());
    let h = history(&p, &store);
    assert_eq!(h[0]["deployment"]["outcome"], "aborted", "{h}");
    assert!(
        h[0]["deployment"]["reason"]
            .as_str()
            .unwrap()
            .contains("sluice abort"),
        "{h}"
    );
    let repaired = h[0]["data"]["repair"]["repaired"].as_array().unwrap().len();
    assert!(
        repaired > 0,
        "v3 published batches before the abort, and they were repaired: {h}"
    );
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    let by_version = p.table_counts("out", "ver");
    assert_eq!(by_version.get(&3), None, "{by_version:?}");
    assert!(
        by_version.get(&2).copied().unwrap_or(0) > 0,
        "{by_version:?}"
    );
    // The history lists both, newest first, with their outcomes.
    let text = stdout(&p.run(&["history", "crash", "--store", &store]));
    let aborted = text.find("aborted").unwrap_or(usize::MAX);
    let promoted = text.find("promoted").unwrap_or(0);
    assert!(aborted < promoted, "{text}");
}

/// Every (customer, ver) pair in the table.
fn customers_by_version(p: &Project) -> Vec<(i64, i64)> {
    use sluice_engine::arrow::array::{Array, Int64Array};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = sluice_engine::sink::table_url(
        &p.dir.path().join("out").display().to_string(),
        std::path::Path::new("/"),
    )
    .unwrap();
    let batches = rt
        .block_on(sluice_engine::sink::DeltaSink::new(url).read_all())
        .unwrap();
    let mut out = Vec::new();
    for b in batches {
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone()
        };
        let (c, v) = (col("customer"), col("ver"));
        out.extend((0..b.num_rows()).map(|i| (c.value(i), v.value(i))));
    }
    out
}

#[test]
fn route_key_sends_each_customer_to_one_version_and_abort_repairs_whole_batches() {
    let p = Arc::new(Mutex::new(Project::csv(2, 100, 50, "10s")));
    let store = {
        let p = p.lock().unwrap();
        p.write("v1.yaml", &spec(1, None, ""));
        p.write(
            "v2.yaml",
            &spec(2, None, "deploy:\n  strategy: canary\n  route_key: customer\n  steps:\n    - set_weight: 50\n    - pause: {}\n"),
        );
        p.sqlite()
    };
    let run = run_bg(&p.lock().unwrap(), "v1.yaml", &store, "2");
    wait_for(
        &p.lock().unwrap(),
        &store,
        4,
        false,
        Duration::from_secs(60),
    );
    let lander = Lander::start(p.clone(), Duration::from_millis(250));
    command(&p, &["deploy", "v2.yaml", "--store", &store]);
    wait_state(&p, &store, "paused", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3)); // split batches land
    // Every row v2 wrote is of a customer whose key hashes below 50; and v2 wrote some.
    let rows = customers_by_version(&p.lock().unwrap());
    let v2: Vec<i64> = rows
        .iter()
        .filter(|(_, v)| *v == 2)
        .map(|(c, _)| *c)
        .collect();
    assert!(!v2.is_empty(), "the candidate took its share of keys");
    for c in &v2 {
        let bucket = sluice_engine::route::Route::bucket(c.to_string().as_bytes());
        assert!(
            bucket < 50,
            "customer {c} (bucket {bucket}) was written by v2"
        );
    }
    command(&p, &["abort", "crash", "--store", &store]);
    wait_ended(&p, &store, Duration::from_secs(60));
    lander.stop();
    let p = p.lock().unwrap();
    wait_for(&p, &store, 1, true, Duration::from_secs(60));
    assert!(run.stop().success());
    // The split commits were removed whole and their batches re-run whole on v1.
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    let rows = customers_by_version(&p);
    assert!(
        rows.iter().all(|(_, v)| *v == 1),
        "rows of v2 remain after the abort"
    );
}
