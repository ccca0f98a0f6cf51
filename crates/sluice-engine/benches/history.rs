//! Per-batch time against the table's history: 10-row CSV files through one pipeline (read,
//! SQL transform, exactly-once Delta commit), one batch after another. Prints the median batch
//! time (wall and CPU) over a window around commit ~100 and around commit ~N, and their
//! ratios: flat means a batch costs the same however long the pipeline has run. No store: this
//! is the engine's own per-batch cost (see bench/README.md).
//!
//! Reaching 10,000 commits batch by batch takes hours in a dev build, so by default the bench
//! runs `2 x window` real batches on a fresh table, then fast-forwards the table to version N:
//! it writes commits N' .. N-1 as copies of the last real commit (each its own data file, a
//! hard link to the last one written, and its own batch marker), checkpoints the last one as
//! delta-rs does every 100 commits, opens the table again (a process restart) and runs
//! `2 x window` real batches more. The log then looks as the real run's would: N commits, one
//! add and one marker each, a checkpoint holding them all. SLUICE_BENCH_FAST_FORWARD=0 runs
//! every commit for real instead.
//!
//! `cargo bench -p sluice-engine --bench history` (release), or with a dev build:
//! `cargo bench --profile dev -p sluice-engine --bench history`.
//! SLUICE_BENCH_COMMITS (default 10000), SLUICE_BENCH_WINDOW (default 100),
//! SLUICE_BENCH_ROWS_PER_FILE (default 10), SLUICE_BENCH_FAST_FORWARD (default 1),
//! SLUICE_BENCH_FF_ADDS (default 1; 0 fast-forwards markers without files).

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_engine::Pipeline;
use sluice_engine::source::LandedFile;
use sluice_engine::spec::SpecFile;

const SPEC: &str = "pipeline: history
source:
  files: in/*.csv
  columns: {id: int64, email: string, amount: float64}
  settle: 0s
transform: SELECT id, lower(email) AS email, CAST(amount AS DOUBLE) AS amount FROM input WHERE amount >= 0
sink:
  delta: out
";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(d: &[Duration]) -> Duration {
    let mut d = d.to_vec();
    d.sort();
    d.get(d.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time of the whole process (all threads) so far: a batch's CPU, with nothing else
/// running in it, whatever else the machine runs.
fn cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

struct Times {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

/// Runs the batches of files `from..to` (one 10-row file each), timing each.
async fn run(pipeline: &Pipeline, dir: &Path, rows: usize, files: std::ops::Range<usize>) -> Times {
    let mut times = Times {
        wall: Vec::new(),
        cpu: Vec::new(),
    };
    for i in files {
        let path = dir.join(format!("in/f{i:07}.csv"));
        let mut csv = String::from("id,email,amount\n");
        for r in 0..rows {
            let id = i * rows + r;
            csv.push_str(&format!("{id},User{id}@Example.com,{}.5\n", id % 1000));
        }
        std::fs::write(&path, &csv).expect("an input file");
        let file = LandedFile {
            path: path.display().to_string(),
            size: csv.len() as u64,
            modified_ms: 0,
        };
        let (t, c) = (Instant::now(), cpu());
        for (id, slice) in pipeline.batches_of(&file).expect("the file slices") {
            pipeline
                .run_batch(&id, &slice)
                .await
                .expect("the batch commits");
        }
        times.wall.push(t.elapsed());
        times.cpu.push(cpu().saturating_sub(c));
        if (i + 1) % 1000 == 0 {
            eprintln!("commit {}", i + 1);
        }
    }
    times
}

/// Writes commits `from..to` as copies of commit `from - 1`, each adding its own file (a hard
/// link to that commit's file) under its own batch marker.
fn fast_forward(table: &Path, from: usize, to: usize, adds: bool) {
    let log = table.join("_delta_log");
    let last = std::fs::read_to_string(log.join(format!("{:020}.json", from - 1)))
        .expect("the last real commit");
    let field = |key: &str| {
        let start = last.find(key).expect(key) + key.len();
        let end = start + last[start..].find('"').expect(key);
        last[start..end].to_string()
    };
    let data = field("\"add\":{\"path\":\"");
    let app = field("\"appId\":\"");
    for v in from..to {
        let file = format!("ff-{v:07}-{data}");
        let mut commit = last.replace(&app, &format!("sluice/history/ff-{v:07}"));
        if adds {
            std::fs::hard_link(table.join(&data), table.join(&file)).expect("a data file");
            commit = commit.replace(&data, &file);
        } else {
            commit = commit
                .lines()
                .filter(|l| !l.contains("\"add\""))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        std::fs::write(log.join(format!("{v:020}.json")), commit).expect("a commit");
    }
}

fn report(label: &str, early: &Times, late: &Times, window: usize, late_at: usize) {
    let w = |t: &[Duration]| median(&t[window / 2..window / 2 + window]);
    let (ew, lw, ec, lc) = (w(&early.wall), w(&late.wall), w(&early.cpu), w(&late.cpu));
    println!(
        "{label}: median over {window} batches at commit ~100 / ~{late_at}: wall {:.1} / {:.1} ms (ratio {:.2}), CPU {:.1} / {:.1} ms (ratio {:.2})",
        ms(ew),
        ms(lw),
        ms(lw) / ms(ew).max(f64::MIN_POSITIVE),
        ms(ec),
        ms(lc),
        ms(lc) / ms(ec).max(f64::MIN_POSITIVE),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let commits = env("SLUICE_BENCH_COMMITS", 10_000);
    let window = env("SLUICE_BENCH_WINDOW", 100).max(2);
    let rows = env("SLUICE_BENCH_ROWS_PER_FILE", 10);
    let fast = env("SLUICE_BENCH_FAST_FORWARD", 1) != 0;
    // 0: the fast-forwarded commits carry their markers but no files (what the history costs
    // without the table's file count growing with it).
    let adds = env("SLUICE_BENCH_FF_ADDS", 1) != 0;
    let span = 2 * window;
    let commits = commits.max(2 * span);
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::create_dir(dir.path().join("in")).expect("in/");
    std::fs::write(dir.path().join("p.yaml"), SPEC).expect("the spec");
    let spec = SpecFile::load(&dir.path().join("p.yaml")).expect("the spec loads");
    let started = Instant::now();

    let pipeline = Pipeline::compile(&spec, 1)
        .await
        .expect("the spec compiles");
    // Batches 0..span: the window is centred on commit ~100 when window is 100.
    let early = run(&pipeline, dir.path(), rows, 0..span).await;
    let late = if fast {
        // Up to commits - span, with a checkpoint at a multiple of 100 as delta-rs writes.
        let until = (commits - span).div_ceil(100) * 100;
        fast_forward(&dir.path().join("out"), span, until, adds);
        let table = sluice_engine::deltalake::open_table(
            url::Url::from_directory_path(dir.path().join("out")).expect("a table URL"),
        )
        .await
        .expect("the table opens");
        sluice_engine::deltalake::checkpoints::create_checkpoint(&table, None)
            .await
            .expect("a checkpoint");
        eprintln!(
            "fast-forwarded to version {} in {:.0} s",
            until - 1,
            started.elapsed().as_secs_f64()
        );
        // A restart: the table is opened again, at version `until - 1`.
        let pipeline = Pipeline::compile(&spec, 1)
            .await
            .expect("the spec compiles");
        run(&pipeline, dir.path(), rows, until..until + span).await
    } else {
        run(&pipeline, dir.path(), rows, span..commits).await
    };
    let late_at = if fast {
        (commits - span).div_ceil(100) * 100 + span / 2
    } else {
        commits - span / 2
    };
    let tail = Times {
        wall: late.wall[late.wall.len() - span..].to_vec(),
        cpu: late.cpu[late.cpu.len() - span..].to_vec(),
    };
    let log_files = std::fs::read_dir(dir.path().join("out/_delta_log"))
        .map(|d| d.count())
        .unwrap_or(0);
    report(
        &format!(
            "history ({rows}-row files, {}; {log_files} entries in _delta_log; {:.0} s)",
            if fast {
                "fast-forwarded"
            } else {
                "every commit real"
            },
            started.elapsed().as_secs_f64()
        ),
        &early,
        &tail,
        window,
        late_at,
    );
}
