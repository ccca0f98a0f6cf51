//! Many small files make few batches: 200 files of 10 rows with `max_rows: 500` run as four
//! batches, every key lands once, another store's discoverer cuts the same batches (their
//! commits are found, nothing is written twice), and a bad value in one file of a group is
//! reported with that file's name and line.

mod common;

use common::*;

fn run_on(p: &Project, store: &str) {
    let spec = p.spec().display().to_string();
    let out = p.run(&[
        "run",
        &spec,
        "--store",
        store,
        "--workers",
        "2",
        "--until-drained",
    ]);
    assert!(out.status.success(), "run failed: {}", stderr(&out));
}

#[test]
fn small_files_run_as_few_batches_exactly_once_and_another_store_cuts_the_same() {
    let p = Project::csv(200, 10, 500, "30s");
    let store = p.sqlite();
    run_on(&p, &store);
    let st = p.status(&store);
    let pl = &st["pipelines"][0];
    assert_eq!(
        (pl["done"].as_i64(), pl["files"].as_i64()),
        (Some(4), Some(200)),
        "{st:#}"
    );
    assert_eq!(pl["quarantined"], 0, "{st:#}");
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    // A second machine's store on the same folder and table: the same four batch ids, whose
    // commits are found, so nothing is published twice (other ids would publish every key
    // again).
    let other = p.dir.path().join("other.db").display().to_string();
    run_on(&p, &other);
    let st = p.status(&other);
    assert_eq!(st["pipelines"][0]["done"], 4, "{st:#}");
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
}

#[test]
fn a_bad_value_in_file_37_of_a_group_names_that_file_and_line() {
    let p = Project::csv(200, 10, 500, "30s");
    // The 37th file's fourth row (line 5): an amount that is no number.
    let path = p.dir.path().join("landing/part_036.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let id = lines[4].split(',').next().unwrap().to_string();
    lines[4] = format!("{id},7,lots");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    run_on(&p, &p.sqlite());
    let st = p.status(&p.sqlite());
    assert_eq!(st["pipelines"][0]["quarantined"], 1, "{st:#}");
    assert_eq!(st["pipelines"][0]["done"], 3, "{st:#}");
    let reason = st["quarantined"][0]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("part_036.csv:5") && reason.contains("lots") && reason.contains("amount"),
        "{reason}"
    );
    // The other three groups are published whole; the held one publishes nothing.
    let counts = p.table_counts("out", "id");
    assert_eq!(counts.len(), 1500, "three batches of 500");
    assert!(counts.values().all(|n| *n == 1));
}
