//! `sluice serve` as the binary: after a real `sluice run --until-drained` of a small pipeline,
//! `/metrics` and the API say what the store holds; without a token it refuses to listen off
//! loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{BIN, Project, stderr};
use sluice_core::BatchOutcome;

const TOKEN: &str = "serve-test-token-0123456789";

/// A `sluice serve` child and the address it said it listens on.
struct Served {
    child: Child,
    base: String,
}

impl Served {
    fn start(project: &Project, extra: &[&str]) -> Served {
        let store = project.sqlite();
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--store", &store])
            .args(extra)
            .env("SLUICE_API_TOKEN", TOKEN)
            .current_dir(project.dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sluice serve");
        let log = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(log).lines();
        let base = loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                _ => panic!("sluice serve ended before saying where it listens"),
            };
            if let Some(rest) = line.strip_prefix("serving ") {
                break rest.split(' ').next().unwrap_or_default().to_string();
            }
        };
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Served { child, base }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        rt.block_on(async {
            let r = reqwest::Client::new()
                .get(format!("{}{path}", self.base))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("the server answers");
            (r.status().as_u16(), r.text().await.expect("a body"))
        })
    }

    /// SIGTERM, as a service manager stops it; it must exit 0.
    fn stop(mut self) {
        // SAFETY: sends a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().expect("waiting for sluice serve");
        assert!(status.success(), "sluice serve exited {status}");
    }
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn metrics_after_a_real_run_are_what_the_store_holds() {
    let project = Project::csv(2, 50, 20, "30s");
    // a warn-level check that some rows fail: the batches publish, the failures are measured
    let spec = std::fs::read_to_string(project.spec()).expect("spec");
    project.write(
        "p.yaml",
        &format!("{spec}checks:\n  - range: {{ column: doubled, min: 500, severity: warn }}\n"),
    );
    project.run_drained_spec(&project.spec());

    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let store = rt
        .block_on(sluice_store::open(&project.sqlite()))
        .expect("the run's store");
    let status = rt.block_on(store.status()).expect("status").remove(0);
    let runs = rt
        .block_on(store.batch_runs("crash", 10_000))
        .expect("runs");
    let committed = runs
        .iter()
        .filter(|r| r.outcome == BatchOutcome::Committed)
        .count();
    let checks = rt
        .block_on(store.check_results("crash", None, 10_000))
        .expect("check results");
    let warned = checks.iter().filter(|c| c.level == "warn").count();
    assert!(
        status.done >= 6 && committed >= 6 && warned > 0,
        "{status:?}"
    );

    let served = Served::start(&project, &[]);
    let (code, text) = served.get("/metrics");
    assert_eq!(code, 200, "{text}");
    let v = status.current_version;
    let series = |name: &str, labels: &str| format!("{name}{{pipeline=\"crash\",{labels}}}");
    assert_eq!(
        sample(
            &text,
            &series("sluice_batches", &format!("version=\"{v}\",state=\"done\""))
        ),
        status.done as f64
    );
    assert_eq!(
        sample(
            &text,
            &series("sluice_rows_in_total", &format!("version=\"{v}\""))
        ),
        status.rows_in as f64
    );
    assert_eq!(
        sample(
            &text,
            &series("sluice_rows_out_total", &format!("version=\"{v}\""))
        ),
        status.rows_out as f64
    );
    assert_eq!(status.rows_in, 100, "every landed row was read once");
    assert_eq!(
        sample(
            &text,
            &series(
                "sluice_batch_duration_seconds_count",
                &format!("version=\"{v}\"")
            )
        ),
        committed as f64
    );
    assert_eq!(
        sample(
            &text,
            &series(
                "sluice_batch_duration_seconds_bucket",
                &format!("version=\"{v}\"")
            )
            .replace("{pipeline", "{le=\"+Inf\",pipeline")
        ),
        committed as f64
    );
    assert_eq!(
        sample(&text, "sluice_backlog_batches{pipeline=\"crash\"}"),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            "sluice_check_failures_total{pipeline=\"crash\",check=\"range(doubled)\",level=\"warn\"}"
        ),
        warned as f64
    );
    assert_eq!(
        sample(&text, "sluice_workers_alive"),
        0.0,
        "the run's workers stopped"
    );

    let (code, pipelines) = served.get("/api/v1/pipelines");
    assert_eq!(code, 200, "{pipelines}");
    let pipelines: serde_json::Value = serde_json::from_str(&pipelines).expect("JSON");
    assert_eq!(pipelines["pipelines"][0]["done"], status.done);
    let (code, ready) = served.get("/ready");
    assert_eq!(code, 200, "{ready}");
    served.stop();
}

#[test]
fn serve_with_workers_runs_the_queue() {
    let mut project = Project::csv(1, 30, 10, "30s");
    // register the pipeline and take the first file in, then land more for the served workers
    project.run_drained_spec(&project.spec());
    let served = Served::start(&project, &["--workers", "2", "--public-read"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, text) = served.get("/metrics");
        assert_eq!(code, 200, "{text}");
        if sample(&text, "sluice_workers_alive") >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the served workers never reported in:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // `sluice serve` does no discovery (a `sluice run` does): the run queues the new file and
    // its workers and the served ones share the batches
    project.land("late", 25);
    project.run_drained_spec(&project.spec());
    served.stop();
    let counts = project.table_counts("out", "id");
    common::assert_exactly_once(&counts, &project.keys);
}

#[test]
fn without_a_token_it_refuses_to_listen_off_loopback() {
    let project = Project::csv(1, 1, 10, "30s");
    let out = project
        .sluice(&[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--store",
            &project.sqlite(),
        ])
        .env_remove("SLUICE_API_TOKEN")
        .output()
        .expect("running sluice serve");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("without an API token"),
        "{}",
        stderr(&out)
    );
    let short = project
        .sluice(&["serve", "--store", &project.sqlite()])
        .env("SLUICE_API_TOKEN", "short")
        .output()
        .expect("running sluice serve");
    assert_eq!(short.status.code(), Some(2));
    assert!(stderr(&short).contains("at least 16"), "{}", stderr(&short));
}

#[test]
fn a_worker_serves_its_health_and_its_own_process_metrics() {
    let project = Project::csv(1, 20, 10, "10s");
    project.run_drained_spec(&project.spec());
    let store = project.sqlite();
    let mut child = Command::new(BIN)
        .args(["worker", "--store", &store, "--workers", "1"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .current_dir(project.dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sluice worker");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix("worker metrics on ") {
                    break rest.split(' ').next().unwrap_or_default().to_string();
                }
            }
            _ => panic!("sluice worker ended before saying where its metrics are"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let get = |path: &str| {
        rt.block_on(async {
            let r = reqwest::get(format!("{base}{path}"))
                .await
                .expect("the worker answers");
            (r.status().as_u16(), r.text().await.expect("a body"))
        })
    };
    assert_eq!(get("/health"), (200, "ok\n".to_string()));
    let (code, text) = get("/metrics");
    assert_eq!(code, 200, "{text}");
    let cpu = sample(&text, "process_cpu_seconds_total");
    assert!(cpu > 0.0, "the worker spent some CPU: {text}");
    assert!(
        sample(&text, "process_max_resident_memory_bytes") > 1e6,
        "{text}"
    );
    assert!(
        sample(&text, "process_resident_memory_bytes") > 1e6,
        "{text}"
    );
    assert!(!text.contains("pipeline="), "process metrics only: {text}");
    assert_eq!(get("/nope").0, 404);
    // SAFETY: sends a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().expect("waiting for sluice worker");
    assert!(status.success(), "sluice worker exited {status}");
}
