//! Bad input: malformed CSV, JSON Lines and Parquet, and bad SQL. Each gives a clear error
//! naming file and line; nothing panics; every good batch is published; retry replays.

mod common;

use std::sync::Arc;

use common::*;
use sluice_engine::arrow::array::{Int64Array, RecordBatch, StringArray};
use sluice_engine::arrow::datatypes::{DataType, Field, Schema};

fn run_drained(p: &Project) {
    p.run_drained_spec(&p.spec());
}

fn spec(format_glob: &str, columns: &str) -> String {
    format!(
        "pipeline: bad\nsource:\n  files: {format_glob}\n  columns: {columns}\n  required: [id]\n  settle: 0s\nbatch:\n  max_rows: 3\ntransform: SELECT id, name FROM input\nsink:\n  delta: out\n"
    )
}

fn quarantine_reasons(status: &serde_json::Value) -> Vec<String> {
    status["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["last_error"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn malformed_csv_rows_quarantine_their_batch_only() {
    let p = Project::csv(0, 0, 1, "30s");
    p.write("p.yaml", &spec("in/*.csv", "{id: int64, name: string}"));
    // Rows 1-3 good, 4-6 hold a bad id (line 6), 7-9 a short row (line 9), 10-11 good.
    p.write(
        "in/a.csv",
        "id,name\n1,a\n2,b\n3,c\n4,d\n5,e\nsix,f\n7,g\n8,h\n9\n10,\"multi\nline\"\n11,k\n",
    );
    run_drained(&p);
    let st = p.status(&p.sqlite());
    assert_eq!(st["pipelines"][0]["quarantined"], 2, "{st:#}");
    assert_eq!(st["pipelines"][0]["done"], 2, "{st:#}");
    let reasons = quarantine_reasons(&st);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("a.csv:7") && r.contains("six") && r.contains("\"id\"")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("a.csv:10") && r.contains("fields")),
        "{reasons:?}"
    );
    let counts = p.table_counts("out", "id");
    let mut keys: Vec<_> = counts.keys().copied().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![1, 2, 3, 10, 11],
        "good batches published, bad ones not at all"
    );
}

#[test]
fn malformed_jsonl_names_the_line() {
    let p = Project::csv(0, 0, 1, "30s");
    p.write("p.yaml", &spec("in/*.jsonl", "{id: int64, name: string}"));
    p.write(
        "in/a.jsonl",
        "{\"id\":1,\"name\":\"a\"}\n{\"id\":2}\n{\"id\":3}\n{\"id\":4}\n{\"id\": \"four\"}\n{\"id\":6}\n{\"id\":7}\n{\"id\":8,\n{\"id\":9}\n{\"id\":10}\n",
    );
    run_drained(&p);
    let st = p.status(&p.sqlite());
    let reasons = quarantine_reasons(&st);
    assert_eq!(reasons.len(), 2, "{st:#}");
    assert!(
        reasons.iter().any(|r| r.contains("a.jsonl:5")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("a.jsonl:8")),
        "{reasons:?}"
    );
    let counts = p.table_counts("out", "id");
    let mut keys: Vec<_> = counts.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, vec![1, 2, 3, 10]);
}

fn write_parquet(p: &Project, rel: &str, batch: RecordBatch) {
    use sluice_engine::deltalake::parquet::arrow::ArrowWriter;
    let path = p.dir.path().join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn malformed_parquet_is_quarantined_with_its_reason() {
    let p = Project::csv(0, 0, 1, "30s");
    p.write("p.yaml", &spec("in/*.parquet", "{id: int64, name: string}"));
    // A good file, a file whose id column holds text that is not a number at row 5, and a
    // file that is not Parquet at all.
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let good = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
        ],
    )
    .unwrap();
    write_parquet(&p, "in/good.parquet", good);
    let text_ids = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
    let bad = RecordBatch::try_new(
        text_ids,
        vec![Arc::new(StringArray::from(vec![
            "20", "21", "22", "23", "x24", "25",
        ]))],
    )
    .unwrap();
    write_parquet(&p, "in/text_ids.parquet", bad);
    p.write("in/broken.parquet", "this is not parquet");
    run_drained(&p);
    let st = p.status(&p.sqlite());
    let reasons = quarantine_reasons(&st);
    assert_eq!(reasons.len(), 2, "{st:#}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("text_ids.parquet:5") && r.contains("x24")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("broken.parquet") && r.contains("not a readable Parquet file")),
        "{reasons:?}"
    );
    let counts = p.table_counts("out", "id");
    let mut keys: Vec<_> = counts.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, vec![1, 2, 3, 4, 20, 21, 22]);
}

#[test]
fn bad_sql_is_refused_at_validate_and_run_with_the_spec_line() {
    let p = Project::csv(1, 10, 5, "30s");
    let text = std::fs::read_to_string(p.spec()).unwrap().replace(
        "transform: SELECT id, customer, amount * 2 AS doubled FROM input",
        "transform: SELECT id, no_such_column FROM input",
    );
    p.write("p.yaml", &text);
    let spec = p.spec().display().to_string();
    for args in [
        vec!["validate", spec.as_str()],
        vec!["run", spec.as_str(), "--until-drained"],
    ] {
        let out = p.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("p.yaml:11:1"), "{err}");
        assert!(err.contains("no_such_column"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let json = p.run(&["validate", &spec, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["valid"], false);
}

/// A sink on an object store sluice cannot open (here: Azure without an account) stops `run`
/// before anything is queued; no batch is tried and quarantined for a configuration mistake.
#[test]
fn an_unreachable_sink_is_refused_before_anything_is_queued() {
    let p = Project::csv(2, 10, 5, "30s");
    let text = std::fs::read_to_string(p.spec())
        .unwrap()
        .replace("delta: out", "delta: az://nowhere/orders");
    p.write("p.yaml", &text);
    let spec = p.spec().display().to_string();
    let without_azure = |args: &[&str]| {
        p.sluice(args)
            .env_remove("AZURE_STORAGE_ACCOUNT_NAME")
            .env_remove("AZURE_STORAGE_USE_EMULATOR")
            .output()
            .unwrap()
    };
    // validate plans the spec and warns; run refuses.
    let out = without_azure(&["validate", &spec]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("warning: cannot open it from here"),
        "{}",
        stdout(&out)
    );
    let out = without_azure(&["run", &spec, "--store", &p.sqlite(), "--until-drained"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot open the sink table"), "{err}");
    assert!(err.contains("az://nowhere/orders"), "{err}");
    assert!(err.contains("nothing was queued"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let status = p.status(&p.sqlite());
    assert_eq!(
        status["pipelines"],
        serde_json::json!([]),
        "nothing registered: {status}"
    );
    assert_eq!(status["quarantined"], serde_json::json!([]), "{status}");
}

#[test]
fn retry_after_a_spec_fix_publishes_the_quarantined_batches_once() {
    // The spec says amount is an integer; the data has decimals: every batch is quarantined.
    let p = Project::csv(2, 20, 10, "30s");
    let wrong = std::fs::read_to_string(p.spec())
        .unwrap()
        .replace("amount: float64", "amount: int64");
    p.write("p.yaml", &wrong);
    run_drained(&p);
    assert_eq!(p.status(&p.sqlite())["pipelines"][0]["quarantined"], 4);
    // Fix the spec: `run` registers version 2; retry re-pins the batches to it.
    let fixed = wrong.replace("amount: int64", "amount: float64");
    p.write("p.yaml", &fixed);
    let spec = p.spec().display().to_string();
    let out = p.run(&["validate", &spec]);
    assert!(out.status.success(), "{}", stderr(&out));
    run_drained(&p); // registers v2, nothing to do yet
    let retry = p.run(&["retry", "--all", "--store", &p.sqlite()]);
    assert!(retry.status.success(), "{}", stderr(&retry));
    assert!(stdout(&retry).contains("4 batch(es)"), "{}", stdout(&retry));
    run_drained(&p);
    let st = p.status(&p.sqlite());
    assert_eq!(st["pipelines"][0]["quarantined"], 0, "{st:#}");
    assert_eq!(st["pipelines"][0]["done"], 4, "{st:#}");
    assert_eq!(st["pipelines"][0]["current_version"], 2, "{st:#}");
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    // Retrying a batch that is not quarantined is a usage error.
    let again = p.run(&["retry", "nope", "--store", &p.sqlite()]);
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn validate_reports_whether_the_sink_table_exists() {
    let p = Project::csv(1, 10, 5, "30s");
    let spec = p.spec().display().to_string();
    let out = p.run(&["validate", &spec]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no table yet"), "{}", stdout(&out));
    run_drained(&p);
    let out = p.run(&["validate", &spec, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Two batches of 5 rows: versions 0 and 1.
    assert_eq!(v["sink_state"]["table_version"], 1, "{v}");
}

/// A CSV header naming a column twice cannot say which value is meant: the batch is held with
/// the file and the column, and inference refuses the file, instead of one value silently
/// winning.
#[test]
fn a_csv_header_naming_a_column_twice_is_refused() {
    let p = Project::csv(0, 0, 1, "30s");
    p.write("p.yaml", &spec("in/*.csv", "{id: int64, name: string}"));
    p.write("in/a.csv", "id,name,name\n1,first,second\n");
    run_drained(&p);
    let st = p.status(&p.sqlite());
    let reasons = quarantine_reasons(&st);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("a.csv:1") && r.contains("\"name\" twice")),
        "{reasons:?}"
    );
    assert!(
        p.table_counts("out", "id").is_empty(),
        "nothing was published"
    );

    // Without declared columns, inference refuses the file at validate.
    p.write(
        "p.yaml",
        "pipeline: bad\nsource:\n  files: in/*.csv\n  settle: 0s\ntransform: SELECT * FROM input\nsink:\n  delta: out\n",
    );
    let out = p.run(&["validate", &p.spec().display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("p.yaml:3:3"), "{err}");
    assert!(
        err.contains("a.csv:1") && err.contains("\"name\" twice"),
        "{err}"
    );
}

/// Log lines written to a pipe are plain text; on a terminal they are coloured unless
/// `NO_COLOR` is set. `script` (util-linux) gives the command a pseudo-terminal.
#[test]
fn log_lines_are_coloured_only_on_a_terminal_without_no_color() {
    let p = Project::csv(0, 0, 1, "30s");
    p.write("p.yaml", &spec("in/*.csv", "{id: int64, name: string}"));
    p.write("in/a.csv", "id,name\n1,a\ntwo,b\n");
    let spec = p.spec().display().to_string();
    let run = |store: &str| {
        vec![
            "run".to_string(),
            spec.clone(),
            "--store".into(),
            p.dir.path().join(store).display().to_string(),
            "--until-drained".into(),
        ]
    };
    // stderr to a pipe, as `Command::output` sets it up.
    let out = p.sluice(&[]).args(run("piped.db")).output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("quarantined"),
        "no log line was written: {err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in piped logs: {err:?}"
    );

    let on_terminal = |store: &str, no_color: bool| {
        let line = std::iter::once(BIN.to_string())
            .chain(run(store))
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &line, "/dev/null"])
            .current_dir(p.dir.path())
            .env_remove("NO_COLOR");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let out = c.output().expect("script(1) from util-linux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // On a terminal the progress bar redraws its line (`ESC [2K`); colours are `ESC [...m`.
    let coloured = on_terminal("tty.db", false);
    assert!(coloured.contains("quarantined"), "{coloured}");
    assert!(
        has_colour(&coloured),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_terminal("tty-no-color.db", true);
    assert!(plain.contains("quarantined"), "{plain}");
    assert!(!has_colour(&plain), "NO_COLOR ignored: {plain:?}");
}

/// Whether `s` holds an ANSI colour (SGR) sequence: ESC [ digits and `;` then `m`.
fn has_colour(s: &str) -> bool {
    s.split('\u{1b}').skip(1).any(|rest| {
        rest.strip_prefix('[').is_some_and(|r| {
            let params = r.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';');
            params.starts_with('m')
        })
    })
}

#[test]
fn a_reader_that_closes_the_pipe_early_gets_no_panic() {
    let p = Project::csv(0, 0, 1, "30s");
    p.write("p.yaml", &spec("in/*.csv", "{id: int64, name: string}"));
    // The reader goes away before `validate` has planned the spec and printed a line, as
    // `sluice validate p.yaml | head -0` does: every write then meets a closed pipe.
    let mut child = p
        .sluice(&["validate", &p.spec().display().to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "closing the pipe early made sluice complain: {err}"
    );
}
