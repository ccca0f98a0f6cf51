//! A spec cannot escape: the transform, `sql` and `expression` checks and `where` filters are
//! one read-only query over the batch. Each statement that writes a file (`COPY ... TO`), opens
//! one (`CREATE EXTERNAL TABLE ... LOCATION`, a path as a table), changes a table (`INSERT`)
//! or comes second (`SELECT ...; SELECT ...`) is refused by `validate` and by `run` before
//! anything is queued: exit code 2, the spec line in the message, the COPY target never
//! created and the external file never opened (watched with inotify).

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::*;

/// Reports whether anything opened or read a file since the watch was set (inotify
/// `IN_OPEN | IN_ACCESS`: the kernel tells, whoever the opener is).
struct OpenWatch {
    fd: i32,
}

impl OpenWatch {
    fn new(path: &Path) -> OpenWatch {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain syscalls on a fresh descriptor and a NUL-terminated path.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0, "inotify_init1 failed");
            let wd = libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS);
            assert!(wd >= 0, "inotify_add_watch failed on {}", path.display());
            OpenWatch { fd }
        }
    }

    fn opened(&self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a local buffer of the given length; the descriptor is non-blocking.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        n > 0
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this watch owns.
        unsafe { libc::close(self.fd) };
    }
}

/// A project whose spec is the standard one with `transform` replaced and `checks` appended,
/// a secret file beside it (the thing a spec must never open) and a COPY target path.
struct Case {
    p: Project,
    secret: PathBuf,
    target: PathBuf,
}

impl Case {
    fn new() -> Case {
        let p = Project::csv(1, 10, 5, "30s");
        let secret = p.dir.path().join("secret.csv");
        std::fs::write(&secret, "user,password\nroot,hunter2\n").unwrap();
        let target = p.dir.path().join("copied.csv");
        Case { p, secret, target }
    }

    /// Substitutes `{secret}` and `{target}` in `text`.
    fn fill(&self, text: &str) -> String {
        text.replace("{secret}", &self.secret.display().to_string())
            .replace("{target}", &self.target.display().to_string())
    }

    fn write_spec(&self, transform: &str, checks: &str) {
        // No `key`: a transform like COPY then has nothing else to fail on, as in the report.
        let text = std::fs::read_to_string(self.p.spec())
            .unwrap()
            .replace(
                "transform: SELECT id, customer, amount * 2 AS doubled FROM input",
                &format!("transform: {}", yaml_quoted(&self.fill(transform))),
            )
            .replace("  key: [id]\n", "");
        let text = if checks.is_empty() {
            text
        } else {
            format!("{text}checks:\n  - {}\n", self.fill(checks))
        };
        self.p.write("p.yaml", &text);
    }

    /// `validate` and `run` both refuse with exit code 2, naming `at` (file:line:column) and
    /// `why`; nothing is written, the secret is never opened, nothing is queued.
    fn assert_refused(&self, at: &str, why: &str) {
        let spec = self.p.spec().display().to_string();
        let store = self.p.sqlite();
        let watch = OpenWatch::new(&self.secret);
        for args in [
            vec!["validate", spec.as_str()],
            vec!["run", spec.as_str(), "--store", &store, "--until-drained"],
        ] {
            let out = self.p.run(&args);
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?} was not refused: {err}"
            );
            assert!(err.contains(&format!("p.yaml:{at}")), "{args:?}: {err}");
            assert!(err.contains(why), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
        assert!(
            !self.target.exists(),
            "the COPY target {} was written",
            self.target.display()
        );
        assert!(!watch.opened(), "planning opened {}", self.secret.display());
        assert!(
            !self.p.dir.path().join("out/_delta_log").exists(),
            "a refused spec created its sink table"
        );
        // The watch itself works: reading the file now is seen.
        std::fs::read(&self.secret).unwrap();
        assert!(watch.opened(), "the inotify watch saw nothing");
    }
}

fn yaml_quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[test]
fn a_transform_that_is_not_one_read_only_query_is_refused() {
    let cases = [
        (
            "COPY (SELECT id, customer, amount FROM input) TO '{target}' STORED AS CSV",
            "`COPY (SELECT id, customer, ...` is not a query",
        ),
        (
            "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '{secret}'",
            "`CREATE EXTERNAL TABLE leak ...` is not a query",
        ),
        (
            "INSERT INTO input SELECT * FROM input",
            "`INSERT INTO input SELECT ...` is not a query",
        ),
        (
            "SELECT id FROM input; COPY (SELECT 1) TO '{target}' STORED AS CSV",
            "found 2 statements",
        ),
        // A query that defines a table passes the first guard and is caught by the second.
        (
            "SELECT id INTO copied FROM input",
            "the query would change something (DDL not supported",
        ),
        // A path or URL is not a table: only `input` can be read.
        ("SELECT * FROM '{secret}'", "not found"),
    ];
    for (transform, why) in cases {
        let c = Case::new();
        c.write_spec(transform, "");
        c.assert_refused("11:1", why);
    }
}

#[test]
fn checks_that_are_not_read_only_queries_are_refused() {
    let cases = [
        (
            r#"sql: {name: leak, query: "COPY (SELECT * FROM output) TO '{target}' STORED AS CSV"}"#,
            "check leak: must be one read-only query over `output`: `COPY",
        ),
        (
            r#"sql: {name: leak, query: "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '{secret}'"}"#,
            "`CREATE EXTERNAL TABLE leak ...` is not a query",
        ),
        (
            r#"sql: {name: leak, query: "INSERT INTO output SELECT * FROM output"}"#,
            "`INSERT INTO output SELECT ...` is not a query",
        ),
        (
            r#"sql: {name: leak, query: "SELECT * FROM output; SELECT * FROM output"}"#,
            "found 2 statements",
        ),
        // An expression's subquery sees only `output`: another table, or a file, is unknown.
        (
            r#"expression: {name: leak, expr: "id IN (SELECT user FROM '{secret}')"}"#,
            "check leak: Error during planning: table",
        ),
        (
            r#"expression: {name: leak, expr: "id IN (SELECT id FROM other)"}"#,
            "check leak: Error during planning: table 'datafusion.public.other' not found",
        ),
        // A subquery over `output` plans, but cannot run inside an expression: refused at
        // validate rather than holding every batch.
        (
            r#"expression: {name: leak, expr: "id IN (SELECT id FROM output)"}"#,
            "a subquery cannot run inside an `expr` or a `where` filter",
        ),
        // A `where` filter cannot smuggle in a second statement, in any kind of check.
        (
            r#"not_null: {columns: [id], where: "true; COPY (SELECT 1) TO '{target}' STORED AS CSV"}"#,
            "found 2 statements",
        ),
        (
            r#"relationships: {column: id, to: {delta: ref, column: id}, where: "true; COPY (SELECT 1) TO '{target}' STORED AS CSV"}"#,
            "found 2 statements",
        ),
    ];
    for (check, why) in cases {
        let c = Case::new();
        c.write_spec(
            "SELECT id, customer, amount * 2 AS doubled FROM input",
            check,
        );
        c.assert_refused("15:3", why);
    }
}

/// The guards refuse only what writes: subqueries over the batch itself still plan and run.
#[test]
fn read_only_queries_over_the_batch_still_run() {
    let c = Case::new();
    c.write_spec(
        "WITH t AS (SELECT id, customer, amount FROM input) SELECT id, customer, amount * 2 AS doubled FROM t WHERE id IN (SELECT id FROM input)",
        r#"sql: {name: known, query: "SELECT * FROM output WHERE id NOT IN (SELECT id FROM output WHERE doubled >= 0)"}"#,
    );
    let spec = c.p.spec().display().to_string();
    let out =
        c.p.run(&["run", &spec, "--store", &c.p.sqlite(), "--until-drained"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_exactly_once(&c.p.table_counts("out", "id"), &c.p.keys);
}
