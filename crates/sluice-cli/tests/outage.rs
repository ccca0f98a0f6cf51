//! Outages are waited out (DESIGN guarantee 7): a PostgreSQL store restarted under a running
//! pipeline, a SQLite store locked by another process, a table whose disk fills up. No
//! long-running process exits, no batch is quarantined, every key lands exactly once.
//!
//! These tests start their own PostgreSQL server (`initdb`/`pg_ctl` from
//! `/usr/lib/postgresql/*/bin`, run as the `postgres` user when the test runs as root) and
//! mount a small tmpfs (as root). Where either cannot be done the test fails and says why;
//! `SLUICE_TEST_PRIVATE_POSTGRES=skip` and `SLUICE_TEST_TMPFS=skip` skip them explicitly.

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Project, assert_exactly_once};

/// A PostgreSQL server of the test's own: its own folder, port and socket directory, so
/// restarting it disturbs nobody (the shared server at 5432 serves the other tests).
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// `None` when skipped by the environment; panics (with what to do) when it cannot start.
    fn start() -> Option<PrivatePostgres> {
        if std::env::var("SLUICE_TEST_PRIVATE_POSTGRES").as_deref() == Ok("skip") {
            eprintln!("SLUICE_TEST_PRIVATE_POSTGRES=skip: not testing a PostgreSQL restart");
            return None;
        }
        let bin = glob_bins().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (initdb, pg_ctl): install \
                 the postgresql package, or set SLUICE_TEST_PRIVATE_POSTGRES=skip"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            // initdb refuses to run as root: the cluster belongs to the postgres user.
            let status = Command::new("chown")
                .args(["postgres:postgres", &dir.path().display().to_string()])
                .status()
                .unwrap();
            assert!(
                status.success(),
                "chown of the cluster folder to postgres failed"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres { dir, bin, port };
        let data = pg.data().display().to_string();
        pg.pg(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        pg.start_server();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// One of the server's programs, run as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        }
    }

    /// Runs one of the server's programs; panics with its output if it fails.
    fn pg(&self, program: &str, args: &[&str]) {
        let mut cmd = self.command(program);
        let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let data = self.data().display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        self.pg(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
    }

    fn stop_server(&self, mode: &str) {
        let data = self.data().display().to_string();
        self.pg("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let mut cmd = self.command("pg_ctl");
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn glob_bins() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A long-running `sluice` process with its output in files under the project.
struct Running {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Running {
    fn spawn(project: &Project, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Running {
        let out = project.dir.path().join(format!("{name}.out"));
        let err = project.dir.path().join(format!("{name}.err"));
        let child = project
            .sluice(args)
            .envs(envs.iter().copied())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Running { child, out, err }
    }

    fn assert_alive(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{what} exited ({status}) during the outage:\n{}",
                self.output()
            );
        }
    }

    /// What the process logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// SIGTERM, then the exit status must be 0 within the drain.
    fn stop(mut self, what: &str) -> String {
        // SAFETY: kill with a pid we spawned and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let output = self.output();
                assert!(
                    status.success(),
                    "{what} exited {status} on SIGTERM:\n{output}"
                );
                return output;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{what} did not stop on SIGTERM:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lands a small file every `every` for `how_long`.
fn land_for(project: &mut Project, next: &mut usize, how_long: Duration, every: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        project.land(&format!("late_{next:03}"), 40);
        *next += 1;
        std::thread::sleep(every);
    }
}

/// Waits until the table holds as many keys as were landed (or the deadline passes).
fn wait_for_table(project: &Project, within: Duration) -> std::collections::HashMap<i64, usize> {
    let deadline = Instant::now() + within;
    loop {
        let counts = if project.dir.path().join("out/_delta_log").exists() {
            project.table_counts("out", "id")
        } else {
            Default::default()
        };
        if counts.len() >= project.keys.len() || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn quarantined(project: &Project, store: &str) -> i64 {
    let status = project.status(store);
    status["pipelines"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["quarantined"].as_i64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn postgres_restarts_under_run_and_worker_lose_and_duplicate_nothing() {
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    let url = pg.url();
    let mut project = Project::csv(2, 100, 50, "3s");
    let mut run = Running::spawn(
        &project,
        "run",
        &[
            "run",
            "p.yaml",
            "--workers",
            "2",
            "--store",
            &url,
            "--poll",
            "200ms",
        ],
        &[],
    );
    let mut worker = Running::spawn(
        &project,
        "worker",
        &["worker", "--store", &url, "--workers", "2", "--lease", "3s"],
        &[],
    );
    let mut next = 0;
    let every = Duration::from_millis(400);
    land_for(&mut project, &mut next, Duration::from_secs(2), every);
    for restart in 0..2 {
        pg.stop_server("fast");
        land_for(&mut project, &mut next, Duration::from_secs(3), every);
        run.assert_alive(&format!("sluice run (restart {restart})"));
        worker.assert_alive(&format!("sluice worker (restart {restart})"));
        pg.start_server();
        land_for(&mut project, &mut next, Duration::from_secs(3), every);
    }
    let counts = wait_for_table(&project, Duration::from_secs(30));
    run.assert_alive("sluice run");
    worker.assert_alive("sluice worker");
    assert_exactly_once(&counts, &project.keys);
    assert_eq!(quarantined(&project, &url), 0, "nothing is quarantined");
    let worker_output = worker.stop("sluice worker");
    let run_output = run.stop("sluice run");
    for (what, output) in [("run", &run_output), ("worker", &worker_output)] {
        assert!(
            !output.contains("error:"),
            "{what} reported an error:\n{output}"
        );
        // Each outage is said once when it starts, not once per retry of every loop.
        let said = output.matches("the state store is unreachable").count();
        assert!(
            said <= 6,
            "{what} logged the outage {said} times:\n{output}"
        );
    }
    assert!(
        run_output.contains("the state store is unreachable")
            && run_output.contains("the state store is back"),
        "sluice run says when the store goes away and comes back:\n{run_output}"
    );

    // Past --store-outage-limit a process gives up: exit 1, saying why, each cause once.
    let mut short = Running::spawn(
        &project,
        "short",
        &["worker", "--store", &url, "--store-outage-limit", "2s"],
        &[],
    );
    std::thread::sleep(Duration::from_millis(500));
    pg.stop_server("fast");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = short.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not give up after its 2s limit:\n{}",
            short.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = short.output();
    assert_eq!(status.code(), Some(1), "{output}");
    let error = output
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{output}"));
    assert!(
        error.contains("unreachable for") && error.contains("--store-outage-limit"),
        "{error}"
    );
    assert_eq!(
        error.matches("pool timed out").count()
            + error.matches("Connection refused").count()
            + error.matches("terminating connection").count(),
        1,
        "the cause is said once: {error}"
    );
}

#[test]
fn a_locked_sqlite_store_is_waited_for() {
    let mut project = Project::csv(2, 100, 50, "3s");
    let db = project.dir.path().join(".sluice/state.db");
    // A short busy timeout, so the lock outlasts it and the pipeline sees "database is locked".
    let store = format!("sqlite://{}?busy_timeout=300ms", db.display());
    let mut run = Running::spawn(
        &project,
        "run",
        &["run", "p.yaml", "--store", &store, "--poll", "200ms"],
        &[],
    );
    let counts = wait_for_table(&project, Duration::from_secs(20));
    assert_exactly_once(&counts, &project.keys);

    let rt = tokio::runtime::Runtime::new().unwrap();
    // The run's own writers may have timed out on each other before (a loaded machine, a
    // 300 ms busy timeout); what counts is what it says while the file is locked.
    let before = run.log().len();
    let mut lock = rt.block_on(async {
        use sqlx::{ConnectOptions, Executor};
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .busy_timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        conn.execute("BEGIN EXCLUSIVE").await.unwrap();
        conn
    });
    let mut next = 0;
    land_for(
        &mut project,
        &mut next,
        Duration::from_secs(4),
        Duration::from_millis(500),
    );
    run.assert_alive("sluice run while the store is locked");
    let during = run.log()[before..].to_string();
    assert_eq!(
        during
            .matches("waiting: the state store is unreachable")
            .count(),
        1,
        "the run says once that it waits for the locked store:\n{during}"
    );
    assert!(!during.contains("the state store is back"), "{during}");
    rt.block_on(async {
        use sqlx::Executor;
        lock.execute("COMMIT").await.unwrap();
    });
    drop(lock);

    let counts = wait_for_table(&project, Duration::from_secs(30));
    assert_exactly_once(&counts, &project.keys);
    assert_eq!(quarantined(&project, &store), 0, "nothing is quarantined");
    let after = run.log()[before..].to_string();
    assert!(
        after.contains("the state store is back"),
        "and when it is back:\n{after}"
    );
    run.stop("sluice run");
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if std::env::var("SLUICE_TEST_TMPFS").as_deref() == Ok("skip") {
            eprintln!("SLUICE_TEST_TMPFS=skip: not testing a full disk");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}; set SLUICE_TEST_TMPFS=skip"));
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs at {} failed (the full-disk test needs root): {}; \
             set SLUICE_TEST_TMPFS=skip to skip it",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// CSV rows that do not compress (Parquet files of a known size on the small disk).
fn land_incompressible(project: &mut Project, name: &str, rows: usize) {
    let landing = project.dir.path().join("landing");
    let mut out = std::fs::File::create(landing.join(format!("{name}.csv"))).unwrap();
    writeln!(out, "id,customer,amount").unwrap();
    let first = project.keys.iter().max().copied().unwrap_or(1_000) + 1;
    let mut x: u64 = first as u64;
    for id in (first..).take(rows) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        writeln!(
            out,
            "{id},{},{}.{:04}",
            x >> 20,
            (x >> 8) % 1000,
            x % 10_000
        )
        .unwrap();
        project.keys.push(id);
    }
}

#[test]
fn a_full_disk_pauses_the_table_and_commits_once_space_is_back() {
    let mut project = Project::csv(0, 0, 10_000, "5s");
    let table_dir = project.dir.path().join("disk");
    let Some(_disk) = Tmpfs::mount(&table_dir, "3m") else {
        return;
    };
    let spec = std::fs::read_to_string(project.spec())
        .unwrap()
        .replace("delta: out", "delta: disk/out");
    std::fs::write(project.spec(), spec).unwrap();
    for f in 0..8 {
        land_incompressible(&mut project, &format!("part_{f:03}"), 10_000);
    }
    // Fill the disk but for ~400 KB: the first batches fit, the later ones hit ENOSPC.
    let ballast = table_dir.join("ballast");
    let mut b = File::create(&ballast).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..((3 * 1024 - 400) / 64) {
        if b.write_all(&chunk).is_err() {
            break;
        }
    }
    drop(b);
    let store = project.sqlite();
    let mut run = Running::spawn(
        &project,
        "run",
        &["run", "p.yaml", "--store", &store, "--poll", "200ms"],
        // a panic's stack trace would reach the terminal with this; none may
        &[("RUST_BACKTRACE", "1")],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let waiting = loop {
        let status = project.status(&store);
        let waiting = status["workers"].as_array().and_then(|ws| {
            ws.iter()
                .filter_map(|w| w["state"].as_str())
                .find(|s| s.starts_with("waiting: table storage full"))
                .map(str::to_string)
        });
        if let Some(w) = waiting {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "no worker says it waits for the full disk: {status:#}\n{}",
            run.output()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(waiting.contains("No space left on device"), "{waiting}");
    std::thread::sleep(Duration::from_secs(2));
    run.assert_alive("sluice run on a full disk");
    assert_eq!(
        quarantined(&project, &store),
        0,
        "a full disk quarantines nothing"
    );

    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let counts = loop {
        let counts = common::table_counts(&table_dir.join("out"), "id");
        if counts.len() >= project.keys.len() || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_exactly_once(&counts, &project.keys);
    assert_eq!(quarantined(&project, &store), 0, "nothing is quarantined");
    let output = run.stop("sluice run");
    for noise in [
        "panicked",
        "RUST_BACKTRACE",
        "stack backtrace",
        "Already shut down",
    ] {
        assert!(
            !output.contains(noise),
            "{noise:?} reached the terminal:\n{output}"
        );
    }
    assert!(output.contains("waiting: table storage full"), "{output}");
}
