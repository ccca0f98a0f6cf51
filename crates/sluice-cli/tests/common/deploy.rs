//! Helpers of the deployment tests: processes killed when a test ends, a spec of pipeline
//! `crash` with a `deploy:` block, continuous input, and waits on `status --json`.

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// A child process killed when the test ends, however it ends.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Bg {
    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.0.id() as i32;
        unsafe { libc_kill(pid, 15) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub const SIGKILL: i32 = 9;

/// A `sluice worker` of `workers` slots on `store` with 3 s batch leases and a 1 s leader lease,
/// and `extra` args.
pub fn worker(p: &Project, store: &str, workers: &str, extra: &[&str]) -> Bg {
    let mut args = vec![
        "worker",
        "--store",
        store,
        "--workers",
        workers,
        "--lease",
        "3s",
        "--leader-lease",
        "1s",
    ];
    args.extend_from_slice(extra);
    Bg(p.sluice(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap())
}

pub fn signal(bg: &Bg, sig: i32) {
    unsafe { libc_kill(bg.0.id() as i32, sig) };
}

pub fn kill(mut bg: Bg) {
    signal(&bg, SIGKILL);
    let _ = bg.0.wait();
}

unsafe extern "C" {
    #[link_name = "kill"]
    pub fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A spec of pipeline `crash` over the project's landing folder, writing `ver` = `version`,
/// with `transform` (default: the plain one) and a `deploy:` block.
pub fn spec(version: i64, transform: Option<&str>, deploy: &str) -> String {
    let transform = transform.map(str::to_string).unwrap_or_else(|| {
        format!("SELECT id, customer, amount * 2 AS doubled, CAST({version} AS BIGINT) AS ver FROM input")
    });
    format!(
        "pipeline: crash\nsource:\n  files: landing/*.csv\n  columns: {{id: int64, customer: int64, amount: float64}}\n  required: [id]\n  settle: 0s\nbatch:\n  max_rows: 50\n  lease: 10s\n  max_attempts: 1\ntransform: {transform}\nsink:\n  delta: out\n  key: [id]\n{deploy}"
    )
}

/// Lands a 50-row file every `every` until stopped; the keys go into the project.
pub struct Lander {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Lander {
    pub fn start(p: Arc<Mutex<Project>>, every: Duration) -> Lander {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::SeqCst) {
                p.lock().unwrap().land(&format!("live_{n:05}"), 50);
                n += 1;
                std::thread::sleep(every);
            }
        });
        Lander {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
    }
}

pub fn run_bg(p: &Project, spec: &str, store: &str, workers: &str) -> Bg {
    Bg(p.sluice(&[
        "run",
        spec,
        "--store",
        store,
        "--workers",
        workers,
        "--poll",
        "200ms",
        "--leader-lease",
        "3s",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap())
}

/// Polls `status --json` until the pipeline has done at least `done` batches and nothing is
/// pending or leased (with `drained`), within `limit`.
pub fn wait_for(p: &Project, store: &str, done: i64, drained: bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let status = p.status(store);
        let s = status["pipelines"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["pipeline"] == "crash"))
            .cloned()
            .unwrap_or_default();
        let n = |k: &str| s[k].as_i64().unwrap_or(0);
        if n("done") >= done && (!drained || n("pending") + n("leased") == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pipeline not at {done} done batches (drained: {drained}) within {limit:?}: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `sluice deploy FILE --wait` in project folder `dir`, killed past `limit` (and when the test
/// ends early: a failed assertion must not leave it waiting forever).
pub fn deploy_wait(
    dir: &std::path::Path,
    file: &str,
    store: &str,
    limit: Duration,
) -> std::process::Output {
    let out_path = dir.join(format!("{file}.deploy.out"));
    let err_path = dir.join(format!("{file}.deploy.err"));
    let mut child = Bg(std::process::Command::new(BIN)
        .args(["deploy", file, "--store", store, "--wait"])
        .current_dir(dir)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            break child.0.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

pub fn history(p: &Project, store: &str) -> serde_json::Value {
    let out = p.run(&["history", "crash", "--store", store, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The deployment's state as `sluice status --json` shows it (`None`: none in progress).
pub fn deployment_state(p: &Project, store: &str) -> Option<serde_json::Value> {
    let status = p.status(store);
    status["deployments"].as_array()?.first().cloned()
}

pub fn wait_state(
    p: &Arc<Mutex<Project>>,
    store: &str,
    state: &str,
    limit: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let d = deployment_state(&p.lock().unwrap(), store);
        if let Some(d) = d.as_ref().filter(|d| d["state"] == state) {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no deployment {state} within {limit:?}: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the store has no deployment in progress.
pub fn wait_ended(p: &Arc<Mutex<Project>>, store: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while let Some(d) = deployment_state(&p.lock().unwrap(), store) {
        assert!(
            Instant::now() < deadline,
            "deployment not ended within {limit:?}: {d}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn command(p: &Arc<Mutex<Project>>, args: &[&str]) {
    let out = p.lock().unwrap().run(args);
    assert!(out.status.success(), "sluice {args:?}: {}", stderr(&out));
}
