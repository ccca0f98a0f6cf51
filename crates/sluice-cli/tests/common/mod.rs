//! Shared helpers for the end-to-end tests: a generated project, the binary, the Delta table.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sluice_engine::arrow::array::{Array, Int64Array};

pub mod deploy;

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A project folder with landing files and a spec.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub keys: Vec<i64>,
}

impl Project {
    /// `files` CSV files of `rows` rows each, batches of `max_rows`, a short lease.
    pub fn csv(files: usize, rows: usize, max_rows: usize, lease: &str) -> Project {
        Project::csv_with(files, rows, max_rows, lease, 3)
    }

    pub fn csv_with(
        files: usize,
        rows: usize,
        max_rows: usize,
        lease: &str,
        max_attempts: u32,
    ) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let landing = dir.path().join("landing");
        std::fs::create_dir_all(&landing).unwrap();
        let mut keys = Vec::new();
        let mut id = 1_000i64;
        for f in 0..files {
            let mut out = std::fs::File::create(landing.join(format!("part_{f:03}.csv"))).unwrap();
            writeln!(out, "id,customer,amount").unwrap();
            for r in 0..rows {
                writeln!(out, "{id},{},{}.{:02}", r % 97, r % 1000, r % 100).unwrap();
                keys.push(id);
                id += 1;
            }
        }
        let spec = format!(
            "pipeline: crash\nsource:\n  files: landing/*.csv\n  columns: {{id: int64, customer: int64, amount: float64}}\n  required: [id]\n  settle: 0s\nbatch:\n  max_rows: {max_rows}\n  lease: {lease}\n  max_attempts: {max_attempts}\ntransform: SELECT id, customer, amount * 2 AS doubled FROM input\nsink:\n  delta: out\n  key: [id]\n"
        );
        std::fs::write(dir.path().join("p.yaml"), spec).unwrap();
        Project { dir, keys }
    }

    /// Lands one more CSV file of `rows` fresh keys (written under a temporary name and
    /// renamed, as a careful writer does).
    pub fn land(&mut self, name: &str, rows: usize) {
        let landing = self.dir.path().join("landing");
        let tmp = landing.join(format!("{name}.csv.tmp"));
        let mut out = std::fs::File::create(&tmp).unwrap();
        writeln!(out, "id,customer,amount").unwrap();
        let first = self.keys.iter().max().copied().unwrap_or(1_000) + 1;
        for (r, id) in (first..).take(rows).enumerate() {
            writeln!(out, "{id},{},{}.{:02}", r % 97, r % 1000, r % 100).unwrap();
            self.keys.push(id);
        }
        drop(out);
        std::fs::rename(&tmp, landing.join(format!("{name}.csv"))).unwrap();
    }

    pub fn spec(&self) -> PathBuf {
        self.dir.path().join("p.yaml")
    }

    pub fn sqlite(&self) -> String {
        self.dir
            .path()
            .join(".sluice/state.db")
            .display()
            .to_string()
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn sluice(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).current_dir(self.dir.path());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.sluice(args).output().unwrap()
    }

    /// `sluice run SPEC --until-drained` with two workers on the project's SQLite store; fails
    /// the test on an error or a panic. Returns stderr (the log).
    pub fn run_drained_spec(&self, spec: &Path) -> String {
        let spec = spec.display().to_string();
        let out = self.run(&[
            "run",
            &spec,
            "--store",
            &self.sqlite(),
            "--workers",
            "2",
            "--until-drained",
        ]);
        assert!(out.status.success(), "run failed: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        stderr(&out)
    }

    /// `sluice status --json` of the state store at `store`.
    pub fn status(&self, store: &str) -> serde_json::Value {
        let out = self.run(&["status", "--store", store, "--json"]);
        assert!(
            out.status.success(),
            "sluice status failed: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every value of an int64 column in the Delta table, with how often it appears.
    pub fn table_counts(&self, table: &str, column: &str) -> HashMap<i64, usize> {
        table_counts(&self.dir.path().join(table), column)
    }
}

pub fn table_counts(path: &Path, column: &str) -> HashMap<i64, usize> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = sluice_engine::sink::table_url(&path.display().to_string(), Path::new("/")).unwrap();
    let sink = sluice_engine::sink::DeltaSink::new(url);
    let batches = rt.block_on(sink.read_all()).unwrap();
    let mut counts = HashMap::new();
    for b in batches {
        let col = b.column_by_name(column).unwrap();
        let ints = col.as_any().downcast_ref::<Int64Array>().unwrap();
        for v in ints.iter() {
            *counts.entry(v.expect("null key")).or_default() += 1;
        }
    }
    counts
}

/// Asserts the table holds exactly `keys`, each once.
pub fn assert_exactly_once(counts: &HashMap<i64, usize>, keys: &[i64]) {
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dupes.is_empty(), "keys committed more than once: {dupes:?}");
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !counts.contains_key(k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from the table: {missing:?} (of {})",
        keys.len()
    );
    assert_eq!(
        counts.len(),
        keys.len(),
        "the table holds keys that were never input"
    );
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh PostgreSQL database URL, or None when explicitly skipped.
pub fn postgres() -> Option<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(sluice_store::testing::fresh_postgres_url())
        .expect("PostgreSQL for tests (set SLUICE_TEST_POSTGRES=skip to skip)")
}
