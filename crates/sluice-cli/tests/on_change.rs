//! Files that change after they were taken in: `source.on_change: warn | fail | reprocess`,
//! through the binary. An appended file and a replaced file under each policy, a JSON Lines
//! file tailed while `sluice run` is SIGKILLed between appends, and the Delta log of a
//! replacement (its old rows removed in the commit that adds its new ones).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use sluice_engine::arrow::array::{Array, Int64Array};
use sluice_engine::deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn csv(ids: &[i64]) -> String {
    let mut s = String::from("id,name\n");
    for id in ids {
        s.push_str(&format!("{id},n{id}\n"));
    }
    s
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A project with `a.csv` (ids 1..=3) and `b.csv` (ids 10..=12) under `on_change`.
fn project(on_change: &str) -> Project {
    let dir = tempfile::tempdir().unwrap();
    let p = Project { dir, keys: vec![] };
    p.write("landing/a.csv", &csv(&[1, 2, 3]));
    p.write("landing/b.csv", &csv(&[10, 11, 12]));
    p.write(
        "p.yaml",
        &format!(
            "pipeline: changes\nsource:\n  files: landing/*.csv\n  columns: {{id: int64, name: string}}\n  settle: 0s\n  on_change: {on_change}\nbatch:\n  max_rows: 2\ntransform: SELECT id, name FROM input\nsink:\n  delta: out\n  key: [id]\n"
        ),
    );
    p
}

fn run(p: &Project) -> std::process::Output {
    p.run(&[
        "run",
        "p.yaml",
        "--store",
        &p.sqlite(),
        "--until-drained",
        "--poll",
        "100ms",
    ])
}

fn keys(p: &Project) -> BTreeSet<i64> {
    let counts = p.table_counts("out", "id");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "keys in the table more than once: {twice:?}"
    );
    counts.into_keys().collect()
}

fn set(ids: impl IntoIterator<Item = i64>) -> BTreeSet<i64> {
    ids.into_iter().collect()
}

/// Appends two rows to `a.csv` and replaces `b.csv` with longer content (new ids 20..=23):
/// only the checksum of the bytes taken in tells the two apart.
fn change_both(p: &Project) {
    append(&p.dir.path().join("landing/a.csv"), "4,n4\n5,n5\n");
    p.write("landing/b.csv", &csv(&[20, 21, 22, 23]));
}

fn changed_files(status: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = status["changed_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
                c["change"].as_str().unwrap().to_string(),
                c["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn warn_reports_an_appended_and_a_replaced_file_once_and_reads_neither() {
    let p = project("warn");
    let first = run(&p);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(keys(&p), set([1, 2, 3, 10, 11, 12]));
    change_both(&p);

    let second = run(&p);
    assert!(second.status.success(), "{}", stderr(&second));
    let log = stderr(&second);
    assert!(
        log.contains(
            "a.csv: grew from 23 to 33 bytes since it was taken in; the new content was not read"
        ),
        "{log}"
    );
    assert!(
        log.contains("b.csv: replaced (its first 29 bytes differ from what was taken in; 29 -> 36 bytes) since it was taken in; the new content was not read"),
        "{log}"
    );
    assert_eq!(keys(&p), set([1, 2, 3, 10, 11, 12]), "nothing new was read");

    let status = p.status(&p.sqlite());
    let changed = changed_files(&status);
    assert_eq!(changed.len(), 2, "{status:#}");
    assert_eq!(changed[0].0, "a.csv");
    assert!(
        changed[0].1.ends_with("grew from 23 to 33 bytes"),
        "{changed:?}"
    );
    assert_eq!(changed[1].0, "b.csv");
    assert!(changed[1].1.contains("replaced"), "{changed:?}");
    assert!(changed.iter().all(|c| c.2 == "warned"), "{changed:?}");
    assert!(status["pipelines"][0]["failed"].is_null(), "{status:#}");
    let human = stdout(&p.run(&["status", "--store", &p.sqlite()]));
    assert!(
        human.contains("files changed after they were taken in"),
        "{human}"
    );
    assert!(human.contains("a.csv: grew from 23 to 33 bytes"), "{human}");
    assert!(human.contains("the new content was not read"), "{human}");

    // Once per change: the next run says nothing more about them.
    let third = run(&p);
    assert!(third.status.success(), "{}", stderr(&third));
    assert!(!stderr(&third).contains("grew from"), "{}", stderr(&third));
    // A further change is news again.
    append(&p.dir.path().join("landing/a.csv"), "6,n6\n");
    let fourth = run(&p);
    assert!(
        stderr(&fourth).contains("a.csv: grew from 23 to 38 bytes"),
        "{}",
        stderr(&fourth)
    );
}

#[test]
fn fail_stops_the_pipeline_for_an_appended_or_a_replaced_file() {
    let p = project("fail");
    let first = run(&p);
    assert!(first.status.success(), "{}", stderr(&first));
    let a = p.dir.path().join("landing/a.csv");
    let taken_at = std::fs::metadata(&a).unwrap().modified().unwrap();

    // Appended: the run exits non-zero with the reason; a new file landing meanwhile is not
    // queued either.
    append(&a, "4,n4\n");
    p.write("landing/c.csv", &csv(&[30]));
    let failed = run(&p);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "must fail: {}",
        stderr(&failed)
    );
    let err = stderr(&failed);
    assert!(err.contains("pipeline changes failed"), "{err}");
    assert!(
        err.contains(
            "a.csv: grew from 23 to 28 bytes since it was taken in (source.on_change: fail)"
        ),
        "{err}"
    );
    assert_eq!(keys(&p), set([1, 2, 3, 10, 11, 12]));
    let status = p.status(&p.sqlite());
    let reason = status["pipelines"][0]["failed"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("a.csv: grew from 23 to 28 bytes"),
        "{status:#}"
    );
    assert_eq!(changed_files(&status)[0].2, "failed");
    let human = stdout(&p.run(&["status", "--store", &p.sqlite()]));
    assert!(human.contains("pipeline changes FAILED: "), "{human}");

    // Restored as it was taken in: the pipeline goes on, and c.csv is read.
    std::fs::write(&a, csv(&[1, 2, 3])).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_modified(taken_at)
        .unwrap();
    let resumed = run(&p);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(keys(&p), set([1, 2, 3, 10, 11, 12, 30]));
    let status = p.status(&p.sqlite());
    assert!(status["pipelines"][0]["failed"].is_null(), "{status:#}");
    assert!(changed_files(&status).is_empty(), "{status:#}");

    // Replaced: fails the same way, naming the file.
    p.write("landing/b.csv", &csv(&[20, 21]));
    let failed = run(&p);
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains(
            "b.csv: shrank from 29 to 22 bytes (replaced) since it was taken in (source.on_change: fail)"
        ),
        "{}",
        stderr(&failed)
    );
    assert_eq!(keys(&p), set([1, 2, 3, 10, 11, 12, 30]));
}

/// Every `add` and `remove` path of each Delta commit, by version.
fn delta_log(table: &Path) -> Vec<(u64, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(table.join("_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let version: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(p) = action["add"]["path"].as_str() {
                adds.push(p.to_string());
            }
            if let Some(p) = action["remove"]["path"].as_str() {
                removes.push(p.to_string());
            }
        }
        out.push((version, adds, removes));
    }
    out.sort();
    out
}

fn ids_in(table: &Path, files: &[String]) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    for f in files {
        let file = std::fs::File::open(table.join(f)).unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let col = batch.column_by_name("id").unwrap();
            let col = col.as_any().downcast_ref::<Int64Array>().unwrap();
            ids.extend(col.iter().flatten());
        }
    }
    ids
}

#[test]
fn reprocess_reads_the_appended_lines_and_swaps_a_replaced_file_in_one_commit() {
    let p = project("reprocess");
    let first = run(&p);
    assert!(first.status.success(), "{}", stderr(&first));
    change_both(&p);
    let second = run(&p);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        keys(&p),
        set([1, 2, 3, 4, 5, 20, 21, 22, 23]),
        "the appended rows once, the replaced file's new rows only"
    );
    let status = p.status(&p.sqlite());
    assert!(changed_files(&status).is_empty(), "{status:#}");
    assert_eq!(status["pipelines"][0]["quarantined"], 0, "{status:#}");

    // One commit removed b.csv's old files: the same commit that added (some of) its new rows.
    let table = p.dir.path().join("out");
    let log = delta_log(&table);
    let removing: Vec<_> = log.iter().filter(|(_, _, r)| !r.is_empty()).collect();
    assert_eq!(removing.len(), 1, "one commit removes: {log:?}");
    let (version, adds, removes) = removing[0];
    assert_eq!(
        ids_in(&table, removes),
        set([10, 11, 12]),
        "v{version} removed b.csv's old rows"
    );
    let added = ids_in(&table, adds);
    assert!(
        !added.is_empty() && added.is_subset(&set([20, 21])),
        "v{version} added {added:?}"
    );
    // The commit says who made it.
    let commit =
        std::fs::read_to_string(table.join(format!("_delta_log/{version:020}.json"))).unwrap();
    assert!(commit.contains("\"pipeline\":\"changes\""), "{commit}");

    // Replaced again, shorter: the second replacement removes the first's rows, nothing else.
    p.write("landing/b.csv", &csv(&[40]));
    let third = run(&p);
    assert!(third.status.success(), "{}", stderr(&third));
    assert_eq!(keys(&p), set([1, 2, 3, 4, 5, 40]));
}

/// JSON Lines appended five times, a last line each time left without its newline (the
/// writer is mid-line), while `sluice run` is SIGKILLed and restarted between appends: every
/// line ends up in the table exactly once.
#[test]
fn a_tailed_json_lines_file_is_read_exactly_once_across_kills() {
    let dir = tempfile::tempdir().unwrap();
    let p = Project { dir, keys: vec![] };
    p.write("landing/events.jsonl", "");
    p.write(
        "p.yaml",
        "pipeline: tail\nsource:\n  files: landing/*.jsonl\n  columns: {id: int64, msg: string}\n  settle: 0s\n  on_change: reprocess\nbatch:\n  max_rows: 40\n  lease: 2s\ntransform: SELECT id, msg FROM input\nsink:\n  delta: out\n  key: [id]\n",
    );
    let log = p.dir.path().join("landing/events.jsonl");
    let store = p.sqlite();
    let line = |id: i64| format!("{{\"id\": {id}, \"msg\": \"event {id}\"}}\n");
    let mut next = 0i64;
    let mut pending_tail = String::new();
    let mut rng_state = 7u64;
    for round in 0..5 {
        let mut child = p
            .sluice(&["run", "p.yaml", "--store", &store, "--poll", "100ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The rest of the line left unfinished last round, then 150 lines, the last unfinished.
        let mut text = std::mem::take(&mut pending_tail);
        for _ in 0..150 {
            text.push_str(&line(next));
            next += 1;
        }
        let whole = line(next);
        next += 1;
        let cut = whole.len() / 2;
        text.push_str(&whole[..cut]);
        pending_tail = whole[cut..].to_string();
        append(&log, &text);
        // Kill at a varying moment: before, during or after the batches of this append.
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = 300 + (rng_state >> 33) % 1500;
        std::thread::sleep(Duration::from_millis(wait));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let _ = round;
    }
    append(&log, &pending_tail);
    let started = Instant::now();
    let out = p.run(&[
        "run",
        "p.yaml",
        "--store",
        &store,
        "--until-drained",
        "--poll",
        "100ms",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    let counts: HashMap<i64, usize> = p.table_counts("out", "id");
    assert_exactly_once(&counts, &(0..next).collect::<Vec<_>>());
    let status = p.status(&store);
    assert_eq!(status["pipelines"][0]["quarantined"], 0, "{status:#}");
}

fn gzip(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

/// A gzip file that grows by a second member (`cat more.gz >> a.csv.gz`, as log shippers
/// append) keeps its first bytes, but its appended bytes are no text of their own: it is taken
/// in again whole, as a replacement, and its earlier rows are swapped out in the same commit.
#[test]
fn a_compressed_file_that_grows_is_reprocessed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = Project { dir, keys: vec![] };
    let landing = p.dir.path().join("landing");
    std::fs::create_dir_all(&landing).unwrap();
    let file = landing.join("a.csv.gz");
    std::fs::write(&file, gzip(&csv(&[1, 2, 3]))).unwrap();
    p.write(
        "p.yaml",
        "pipeline: changes\nsource:\n  files: landing/*.csv.gz\n  columns: {id: int64, name: string}\n  settle: 0s\n  on_change: reprocess\nbatch:\n  max_rows: 2\ntransform: SELECT id, name FROM input\nsink:\n  delta: out\n  key: [id]\n",
    );
    let out = run(&p);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(keys(&p), set(1..=3));

    // A second gzip member: the first bytes stay the same, the text grows by two rows.
    let mut more = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    more.write_all(&gzip("4,n4\n5,n5\n")).unwrap();
    drop(more);
    let out = run(&p);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(keys(&p), set(1..=5), "every row of the grown file, once");
    let status = p.status(&p.sqlite());
    assert_eq!(status["pipelines"][0]["quarantined"], 0, "{status}");
}
