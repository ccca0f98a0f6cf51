//! How discovery cuts files into batches. Many small files make few batches: discovery groups
//! them up to `max_rows`, `max_files` and `max_bytes`, with batch ids every discoverer agrees on
//! (another store, another machine, a restart), and each file taken in once when discoverers
//! race. A large file's batches are queued while it is scanned, the same batches as one whole
//! cut, and a cut left part-way goes on where it stopped.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use sluice_engine::Pipeline;
use sluice_engine::spec::SpecFile;
use sluice_store::{Store, TaskRecord};
use sluice_worker::Discoverer;

/// `files` CSV files of `rows` rows each under `dir/landing`.
fn land(dir: &Path, files: usize, rows: usize) {
    let landing = dir.join("landing");
    std::fs::create_dir_all(&landing).unwrap();
    let mut id = 0;
    for f in 0..files {
        let mut out = std::fs::File::create(landing.join(format!("part_{f:03}.csv"))).unwrap();
        writeln!(out, "id,amount").unwrap();
        for _ in 0..rows {
            writeln!(out, "{id},{}.5", id % 100).unwrap();
            id += 1;
        }
    }
}

async fn pipeline(dir: &Path, batch: &str) -> Arc<Pipeline> {
    let text = format!(
        "pipeline: small\nsource:\n  files: landing/*.csv\n  columns: {{id: int64, amount: float64}}\n  settle: 0s\nbatch: {{{batch}}}\ntransform: SELECT id, amount FROM input\nsink:\n  delta: out\n"
    );
    let file = SpecFile::parse(&dir.join("p.yaml"), text).unwrap();
    Arc::new(Pipeline::compile(&file, 1).await.unwrap())
}

async fn sqlite(dir: &Path, name: &str) -> Arc<dyn Store> {
    sluice_store::open(&dir.join(name).display().to_string())
        .await
        .unwrap()
}

/// Registers the pipeline's version in `store`, discovers once, returns the queue.
async fn discover(store: &Arc<dyn Store>, p: &Arc<Pipeline>) -> Vec<TaskRecord> {
    store
        .register_pipeline_version(p.name(), &p.spec_hash(), &p.resolved_spec(), "/", false)
        .await
        .unwrap();
    let mut d = Discoverer::new(store.clone(), p.clone()).await.unwrap();
    let report = d.poll().await.unwrap();
    assert_eq!(report.deferred, 0, "{report:?}");
    store.tasks(p.name(), None).await.unwrap()
}

fn ids(tasks: &[TaskRecord]) -> Vec<String> {
    tasks.iter().map(|t| t.batch_id.0.clone()).collect()
}

/// Every file of the folder, in the queue's order, each exactly once.
fn files_in(tasks: &[TaskRecord]) -> Vec<String> {
    let mut paths: Vec<String> = tasks
        .iter()
        .flat_map(|t| std::iter::once(&t.slice).chain(&t.grouped))
        .map(|s| s.path.rsplit('/').next().unwrap().to_string())
        .collect();
    paths.sort();
    paths
}

fn every_file(n: usize) -> Vec<String> {
    (0..n).map(|f| format!("part_{f:03}.csv")).collect()
}

#[tokio::test]
async fn two_hundred_small_files_make_four_batches_with_the_same_ids_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    land(dir.path(), 200, 10);
    let p = pipeline(dir.path(), "max_rows: 500").await;
    let a = sqlite(dir.path(), "a.db").await;
    let tasks = discover(&a, &p).await;
    assert_eq!(tasks.len(), 4, "2,000 rows in batches of 500");
    for t in &tasks {
        let rows: u64 = std::iter::once(&t.slice)
            .chain(&t.grouped)
            .map(|s| s.row_count)
            .sum();
        assert_eq!((rows, t.grouped.len()), (500, 49), "{}", t.batch_id);
    }
    assert_eq!(files_in(&tasks), every_file(200));
    // A restart finds everything taken in and queues nothing more.
    let again = discover(&a, &p).await;
    assert_eq!(ids(&again), ids(&tasks));
    // Another store (another machine's discoverer) cuts the same batches.
    let b = sqlite(dir.path(), "b.db").await;
    assert_eq!(ids(&discover(&b, &p).await), ids(&tasks));
    let Some(url) = sluice_store::testing::fresh_postgres_url().await.unwrap() else {
        return;
    };
    let pg = sluice_store::open(&url).await.unwrap();
    assert_eq!(ids(&discover(&pg, &p).await), ids(&tasks));
    sluice_store::testing::drop_postgres_database(&url)
        .await
        .unwrap();
}

#[tokio::test]
async fn max_files_and_max_bytes_bound_a_group() {
    let dir = tempfile::tempdir().unwrap();
    land(dir.path(), 200, 10);
    let size = std::fs::metadata(dir.path().join("landing/part_000.csv"))
        .unwrap()
        .len();
    let store = sqlite(dir.path(), "files.db").await;
    let by_files = discover(
        &store,
        &pipeline(dir.path(), "max_rows: 500, max_files: 30").await,
    )
    .await;
    assert_eq!(by_files.len(), 7, "200 files, 30 a batch");
    assert!(by_files.iter().all(|t| t.grouped.len() < 30));
    assert_eq!(files_in(&by_files), every_file(200));
    // Room for 20 files of the first file's size (later ones are as long or longer).
    let store = sqlite(dir.path(), "bytes.db").await;
    let bound = format!("max_rows: 500, max_bytes: {}", size * 20);
    let by_bytes = discover(&store, &pipeline(dir.path(), &bound).await).await;
    assert!(by_bytes.len() >= 10, "{} batches", by_bytes.len());
    for t in &by_bytes {
        let bytes: u64 = std::iter::once(&t.slice)
            .chain(&t.grouped)
            .map(|s| std::fs::metadata(&s.path).unwrap().len())
            .sum();
        assert!(bytes <= size * 20, "{bytes} bytes in {}", t.batch_id);
    }
    assert_eq!(files_in(&by_bytes), every_file(200));
    // max_files: 1 gives every file its own batch, named as before grouping existed.
    let store = sqlite(dir.path(), "one.db").await;
    let p = pipeline(dir.path(), "max_rows: 500, max_files: 1").await;
    let own = discover(&store, &p).await;
    assert_eq!(own.len(), 200);
    let first = sluice_engine::source::discover(
        &dir.path().join("landing/*.csv").display().to_string(),
        std::time::Duration::ZERO,
    )
    .unwrap()
    .remove(0);
    let (id, _) = p.batches_of(&first).unwrap().remove(0);
    assert_eq!(own[0].batch_id, id);
}

#[tokio::test]
async fn racing_discoverers_take_each_file_in_once() {
    let Some(url) = sluice_store::testing::fresh_postgres_url().await.unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    land(dir.path(), 120, 10);
    let p = pipeline(dir.path(), "max_rows: 100").await;
    let store = sluice_store::open(&url).await.unwrap();
    store
        .register_pipeline_version(p.name(), &p.spec_hash(), &p.resolved_spec(), "/", false)
        .await
        .unwrap();
    let mut one = Discoverer::new(store.clone(), p.clone()).await.unwrap();
    let mut two = Discoverer::new(sluice_store::open(&url).await.unwrap(), p.clone())
        .await
        .unwrap();
    let (r1, r2) = tokio::join!(one.poll(), two.poll());
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    // Whoever lost a group takes the rest in on its next pass.
    let (r3, r4) = tokio::join!(one.poll(), two.poll());
    let files = r1.files + r2.files + r3.unwrap().files + r4.unwrap().files;
    assert_eq!(files, 120, "each file taken in once");
    let tasks = store.tasks(p.name(), None).await.unwrap();
    assert_eq!(files_in(&tasks), every_file(120));
    assert_eq!(tasks.len(), 12, "{r1:?} {r2:?}");
    sluice_store::testing::drop_postgres_database(&url)
        .await
        .unwrap();
}

/// A CSV (or JSON Lines) file of `rows` rows, with quoted newlines in a free-text column.
fn land_large(dir: &Path, name: &str, rows: usize) -> String {
    let landing = dir.join("landing");
    std::fs::create_dir_all(&landing).unwrap();
    let path = landing.join(name);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let jsonl = name.ends_with(".jsonl");
    if !jsonl {
        writeln!(out, "id,amount,note").unwrap();
    }
    for id in 0..rows {
        if jsonl {
            writeln!(out, "{{\"id\": {id}, \"amount\": {}.5}}", id % 100).unwrap();
        } else if id % 7 == 0 {
            writeln!(out, "{id},{}.5,\"two\nlines, \"\"quoted\"\"\"", id % 100).unwrap();
        } else {
            writeln!(out, "{id},{}.5,plain", id % 100).unwrap();
        }
    }
    drop(out);
    path.display().to_string()
}

async fn pipeline_of(dir: &Path, files: &str, max_rows: u64) -> Arc<Pipeline> {
    let text = format!(
        "pipeline: large\nsource:\n  files: {files}\n  columns: {{id: int64, amount: float64}}\n  settle: 0s\nbatch: {{max_rows: {max_rows}}}\ntransform: SELECT id, amount FROM input\nsink:\n  delta: out\n"
    );
    let file = SpecFile::parse(&dir.join("p.yaml"), text).unwrap();
    Arc::new(Pipeline::compile(&file, 1).await.unwrap())
}

/// The file's batches as one whole cut makes them (what discovery queued before it streamed).
fn whole_cut(p: &Pipeline, path: &str) -> Vec<(String, sluice_core::BatchSlice)> {
    let file = sluice_engine::source::discover(path, std::time::Duration::ZERO)
        .unwrap()
        .remove(0);
    p.batches_of(&file)
        .unwrap()
        .into_iter()
        .map(|(id, s)| (id.0, s))
        .collect()
}

fn queued(tasks: &[TaskRecord]) -> Vec<(String, sluice_core::BatchSlice)> {
    tasks
        .iter()
        .map(|t| (t.batch_id.0.clone(), t.slice.clone()))
        .collect()
}

#[tokio::test]
async fn a_large_file_queues_its_first_batches_while_it_is_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let path = land_large(dir.path(), "big.csv", 600_000);
    let p = pipeline_of(dir.path(), "landing/*.csv", 10_000).await;
    let store = sqlite(dir.path(), "s.db").await;
    store
        .register_pipeline_version(p.name(), &p.spec_hash(), &p.resolved_spec(), "/", false)
        .await
        .unwrap();
    let mut d = Discoverer::new(store.clone(), p.clone()).await.unwrap();
    let poll = tokio::spawn(async move { d.poll().await.unwrap() });
    // Watch the queue while the file is cut: batches appear while the take is still `cutting`.
    let mut seen_while_cutting = 0;
    while !poll.is_finished() {
        let files = store.taken_files(p.name()).await.unwrap();
        if files.first().is_some_and(|f| f.cutting) {
            seen_while_cutting =
                seen_while_cutting.max(store.tasks(p.name(), None).await.unwrap().len());
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let report = poll.await.unwrap();
    assert_eq!((report.files, report.batches), (1, 60), "{report:?}");
    assert!(
        seen_while_cutting > 0,
        "no batch was queued before the scan ended"
    );
    // The same ids and slices as one whole cut.
    let tasks = store.tasks(p.name(), None).await.unwrap();
    assert_eq!(queued(&tasks), whole_cut(&p, &path));
    let taken = store.taken_files(p.name()).await.unwrap().remove(0);
    assert!(!taken.cutting && taken.checksum.is_some(), "{taken:?}");
    assert_eq!(taken.taken_rows, 600_000);
}

#[tokio::test]
async fn a_cut_left_part_way_goes_on_with_the_same_batches_csv_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    for (name, glob) in [("a.csv", "landing/*.csv"), ("b.jsonl", "landing/*.jsonl")] {
        let path = land_large(dir.path(), name, 5_000);
        let p = pipeline_of(dir.path(), glob, 400).await;
        let whole = whole_cut(&p, &path);
        assert_eq!(whole.len(), 13);
        let mut stores = vec![sqlite(dir.path(), &format!("{name}.db")).await];
        // A database per format: the pipelines share a name.
        if let Some(url) = sluice_store::testing::fresh_postgres_url().await.unwrap() {
            stores.push(sluice_store::open(&url).await.unwrap());
        }
        for store in stores {
            store
                .register_pipeline_version(p.name(), &p.spec_hash(), &p.resolved_spec(), "/", false)
                .await
                .unwrap();
            // A discoverer queued the first three batches and died.
            let (_, third) = &whole[2];
            let size = std::fs::metadata(&path).unwrap().len() as i64;
            let part = sluice_store::CutPart {
                file: sluice_store::NewFile {
                    pipeline: p.name().to_string(),
                    path: path.clone(),
                    size,
                    modified_ms: 0,
                    taken_bytes: third.byte_end as i64,
                    taken_rows: (third.row_start + third.row_count) as i64,
                    checksum: None,
                },
                based_on: None,
                last: false,
            };
            let tasks: Vec<sluice_store::NewTask> = whole[..3]
                .iter()
                .map(|(id, s)| sluice_store::NewTask {
                    batch_id: sluice_core::BatchId(id.clone()),
                    slice: s.clone(),
                })
                .collect();
            assert!(store.take_in_part(&part, 1, 3, &tasks).await.unwrap());
            // Moving it on from anywhere but where it stands changes nothing.
            let stale = sluice_store::CutPart {
                based_on: Some(1),
                ..part.clone()
            };
            assert!(!store.take_in_part(&stale, 1, 3, &[]).await.unwrap());
            // The next discoverer goes on from there: the batches one whole cut makes.
            let mut d = Discoverer::new(store.clone(), p.clone()).await.unwrap();
            let report = d.poll().await.unwrap();
            assert_eq!(report.batches, 10, "{name}: {report:?}");
            let tasks = store.tasks(p.name(), None).await.unwrap();
            assert_eq!(queued(&tasks), whole, "{name} on {}", store.backend());
            let taken = store.taken_files(p.name()).await.unwrap();
            let taken = taken.iter().find(|f| f.path == path).unwrap();
            assert!(!taken.cutting && taken.checksum.is_some(), "{taken:?}");
            assert_eq!(d.poll().await.unwrap().batches, 0, "nothing more to queue");
        }
    }
}
