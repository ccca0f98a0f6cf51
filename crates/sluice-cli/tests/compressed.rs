//! Compressed input: gzip and zstd CSV and JSON Lines are read once, exactly once, with errors
//! naming the compressed file and the line in its text; a truncated file publishes nothing.

mod common;

use std::io::Write;

use common::*;

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

fn zstd(text: &str) -> Vec<u8> {
    zstd::encode_all(text.as_bytes(), 3).unwrap()
}

fn land(p: &Project, rel: &str, bytes: &[u8]) {
    let path = p.dir.path().join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn run_drained(p: &Project, spec: &str) -> String {
    p.run_drained_spec(&p.dir.path().join(spec))
}

fn csv_rows(ids: std::ops::Range<i64>) -> String {
    let mut s = String::from("id,name\n");
    for i in ids {
        s.push_str(&format!("{i},name {i}\n"));
    }
    s
}

fn spec(name: &str, files: &str, format: &str) -> String {
    format!(
        "pipeline: {name}\nsource:\n  files: {files}\n  format: {format}\n  columns: {{id: int64, name: string}}\n  required: [id]\n  settle: 0s\nbatch:\n  max_rows: 4\ntransform: SELECT id, name FROM input\nsink:\n  delta: {name}_out\n  key: [id]\n"
    )
}

fn pipeline<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pipeline"] == name)
        .unwrap_or_else(|| panic!("no pipeline {name}: {st:#}"))
}

#[test]
fn gzip_and_zstd_csv_and_json_lines_land_exactly_once() {
    let p = Project::csv(0, 0, 1, "30s");
    // CSV: a gzip file, a zstd file (two gzip members in one) and a plain one in one folder.
    let mut two_members = gzip(&csv_rows(1..6));
    two_members.extend(gzip("6,name 6\n7,name 7\n"));
    land(&p, "in/a.csv.gz", &two_members);
    land(&p, "in/b.csv.zst", &zstd(&csv_rows(100..111)));
    land(&p, "in/c.csv", csv_rows(200..203).as_bytes());
    p.write("csv.yaml", &spec("csvs", "in/*.csv*", "csv"));
    // JSON Lines, the format told by the inner extension.
    let jsonl = |ids: std::ops::Range<i64>| -> String {
        ids.map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n"))
            .collect()
    };
    land(&p, "events/e1.jsonl.gz", &gzip(&jsonl(1..10)));
    land(&p, "events/e2.jsonl.zst", &zstd(&jsonl(10..13)));
    p.write(
        "json.yaml",
        &spec("events", "events/*.jsonl.gz", "jsonl").replace(
            "files: events/*.jsonl.gz\n  format: jsonl\n",
            "files: events/*.jsonl.*\n  format: jsonl\n",
        ),
    );
    for _ in 0..2 {
        // The second run finds nothing new: the batches' ids are stable.
        run_drained(&p, "csv.yaml");
        run_drained(&p, "json.yaml");
    }
    let st = p.status(&p.sqlite());
    let csvs = pipeline(&st, "csvs");
    assert_eq!(csvs["quarantined"], 0, "{st:#}");
    assert_eq!(csvs["files"], 3, "{st:#}");
    assert_eq!(
        csvs["done"],
        2 + 3 + 1,
        "7, 11 and 3 rows in batches of 4: {st:#}"
    );
    let keys: Vec<i64> = (1..8).chain(100..111).chain(200..203).collect();
    assert_exactly_once(&p.table_counts("csvs_out", "id"), &keys);
    assert_eq!(pipeline(&st, "events")["quarantined"], 0, "{st:#}");
    assert_exactly_once(
        &p.table_counts("events_out", "id"),
        &(1..13).collect::<Vec<_>>(),
    );
    // The decompressed text is spooled beside the landing files, under names discovery skips.
    let spool: Vec<_> = std::fs::read_dir(p.dir.path().join("in/_sluice_spool"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(spool.len(), 2, "{spool:?}");
    assert!(spool.iter().all(|n| n.starts_with('_')), "{spool:?}");
}

#[test]
fn errors_in_compressed_files_name_the_file_and_line_and_truncated_files_publish_nothing() {
    let p = Project::csv(0, 0, 1, "30s");
    // Line 7 of the text (header is line 1) holds a bad id.
    let bad = csv_rows(1..10).replace("6,name 6\n", "six,name 6\n");
    land(&p, "in/bad.csv.gz", &gzip(&bad));
    let full = gzip(&csv_rows(1000..6000));
    land(&p, "in/cut.csv.gz", &full[..full.len() / 2]);
    land(&p, "in/ok.csv.zst", &zstd(&csv_rows(500..503)));
    p.write("p.yaml", &spec("gz", "in/*.csv.*", "csv"));
    run_drained(&p, "p.yaml");
    let st = p.status(&p.sqlite());
    let reasons: Vec<String> = st["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["last_error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(reasons.len(), 2, "{st:#}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("bad.csv.gz:7") && r.contains("six") && r.contains("\"id\"")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("cut.csv.gz")
            && r.contains("truncated gzip stream after")
            && r.contains("land it again")),
        "{reasons:?}"
    );
    // bad.csv.gz's other batches and ok.csv.zst are published; nothing of cut.csv.gz.
    let counts = p.table_counts("gz_out", "id");
    let mut keys: Vec<i64> = counts.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, vec![1, 2, 3, 4, 9, 500, 501, 502]);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

#[test]
fn compressed_parquet_is_refused() {
    let p = Project::csv(0, 0, 1, "30s");
    p.write(
        "p.yaml",
        "pipeline: pq\nsource:\n  files: in/*.parquet.gz\ntransform: SELECT * FROM input\nsink:\n  delta: out\n",
    );
    let spec = p.spec().display().to_string();
    let out = p.run(&["validate", &spec]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("p.yaml:3") && stderr(&out).contains("compressed inside"),
        "{}",
        stderr(&out)
    );
}
