//! Crash tests: `sluice run` (and `sluice worker`) killed with SIGKILL at random moments,
//! restarted, until the input is drained; the Delta table must hold every key exactly once.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;

fn spawn(p: &Project, args: &[&str]) -> Child {
    p.sluice(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Kills the processes after a random delay unless the first one finished; returns whether
/// the first one finished by itself (the input is drained).
fn kill_at_random(children: &mut [Child], rng: &mut impl Rng, max_ms: u64) -> bool {
    let deadline = Instant::now() + Duration::from_millis(rng.random_range(150..max_ms));
    while Instant::now() < deadline {
        if let Ok(Some(status)) = children[0].try_wait() {
            assert!(status.success(), "sluice run failed: {status}");
            for c in children.iter_mut().skip(1) {
                let _ = c.kill();
                let _ = c.wait();
            }
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in children.iter_mut() {
        let _ = c.kill(); // SIGKILL
        let _ = c.wait();
    }
    false
}

/// Runs `trials` trials: each lands one more file (so every trial has work, however fast the
/// machine), starts `sluice run` (and `extra_workers` worker processes) and SIGKILLs them all at
/// a random moment unless the run drained first. Then one last run finishes the input.
/// Returns how many trials ended in a kill.
fn crash_until_drained(p: &mut Project, store: &str, extra_workers: usize, trials: usize) -> usize {
    crash_landing(p, store, extra_workers, trials, 1200, |p, trial| {
        p.land(&format!("trial_{trial:02}"), 6000)
    })
}

/// [`crash_until_drained`], landing what `land` lands before each trial.
fn crash_landing(
    p: &mut Project,
    store: &str,
    extra_workers: usize,
    trials: usize,
    kill_within_ms: u64,
    land: impl Fn(&mut Project, usize),
) -> usize {
    let mut rng = rand::rng();
    let spec = p.spec().display().to_string();
    let run_args = [
        "run",
        &spec,
        "--store",
        store,
        "--workers",
        "2",
        "--until-drained",
        "--poll",
        "100ms",
    ];
    let worker_args = [
        "worker",
        "--store",
        store,
        "--workers",
        "2",
        "--lease",
        "2s",
    ];
    let mut kills = 0;
    for trial in 0..trials {
        land(p, trial);
        let mut children = vec![spawn(p, &run_args)];
        for _ in 0..extra_workers {
            children.push(spawn(p, &worker_args));
        }
        if !kill_at_random(&mut children, &mut rng, kill_within_ms) {
            kills += 1;
        }
    }
    // Finish: no more kills.
    let out = p.run(&run_args);
    assert!(out.status.success(), "final run failed: {}", stderr(&out));
    let status = p.run(&["status", "--store", store, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["pipelines"][0]["quarantined"], 0,
        "no batch may end in quarantine: {status:#}"
    );
    kills
}

#[test]
fn sigkill_at_random_moments_on_sqlite_keeps_exactly_once() {
    // Kills hit the same batch several times: allow many attempts so the poison-pill guard
    // (quarantine after max_attempts lost leases) does not hold batches back here.
    let mut p = Project::csv_with(4, 3000, 250, "2s", 100);
    let store = p.sqlite();
    let kills = crash_until_drained(&mut p, &store, 0, 10);
    assert!(
        kills >= 7,
        "the test must actually kill runs mid-way (killed {kills})"
    );
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
}

#[test]
fn sigkill_while_small_files_run_grouped_keeps_exactly_once() {
    // 300 files of 10 rows to start with, 100 more before every trial: batches of up to 200
    // rows group 20 files each, and kills land mid-group. Enough files a trial that a run is
    // still at work when the random kill comes, on a fast machine or a loaded one.
    let mut p = Project::csv_with(300, 10, 200, "2s", 100);
    let store = p.sqlite();
    // Small files drain fast: the kill comes within 500 ms of the start.
    let kills = crash_landing(&mut p, &store, 1, 8, 500, |p, trial| {
        for f in 0..100 {
            p.land(&format!("small_{trial:02}_{f:03}"), 10);
        }
    });
    assert!(
        kills >= 4,
        "the test must actually kill runs mid-way (killed {kills} of 8)"
    );
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    let st = p.status(&store);
    let done = st["pipelines"][0]["done"].as_i64().unwrap();
    // 1,100 files: 55 full groups; a pass cut short by a kill closes a partial one.
    assert!(done <= 75, "{} files in {done} batches", 300 + 8 * 100);
}

#[test]
fn sigkill_of_several_processes_on_postgres_keeps_exactly_once() {
    let Some(url) = postgres() else { return };
    // Kills hit the same batch several times: allow many attempts so the poison-pill guard
    // (quarantine after max_attempts lost leases) does not hold batches back here.
    let mut p = Project::csv_with(4, 3000, 250, "2s", 100);
    let kills = crash_until_drained(&mut p, &url, 2, 10);
    assert!(
        kills >= 7,
        "the test must actually kill runs mid-way (killed {kills})"
    );
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
}

#[test]
fn sigterm_drains_in_flight_batches_and_leaves_nothing_leased() {
    let p = Project::csv(12, 2000, 100, "30s");
    let store = p.sqlite();
    let spec = p.spec().display().to_string();
    let child = p
        .sluice(&[
            "run",
            &spec,
            "--store",
            &store,
            "--workers",
            "2",
            "--grace",
            "20s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "drain must exit cleanly: {}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "drained within the grace period"
    );
    let status = p.run(&["status", "--store", &store, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let pl = &status["pipelines"][0];
    assert_eq!(pl["leased"], 0, "no lease left behind: {status:#}");
    assert!(
        pl["done"].as_i64().unwrap() > 0,
        "some work was done before the signal"
    );
    assert!(
        pl["pending"].as_i64().unwrap() > 0,
        "the signal stopped leasing before the end"
    );
    // The rest runs later with nothing lost or repeated.
    let out = p.run(&["run", &spec, "--store", &store, "--until-drained"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
}
