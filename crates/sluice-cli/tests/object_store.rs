//! A pipeline whose Delta table lives on Azure Blob Storage, end to end against a real local
//! emulator: Azurite (pinned in tools/azurite, installed on first use into
//! `~/.cache/sluice-azurite`) serves blobs from a temporary folder on a free port; `sluice run` writes
//! `az://sluice/orders` with two workers and several batches; the table read back through
//! delta-rs holds every order once, its log is in the emulator's container, and a second run
//! changes nothing. Then the emulator is stopped under a running pipeline: new batches wait
//! (workers pause, nothing is quarantined) and commit once it is back, each exactly once.
//!
//! Needs Node.js and npm (the first run installs Azurite with `npm ci`).
//! `SLUICE_TEST_AZURITE=skip` turns the test off; a missing Node or a failed install is an
//! error, not a skip, so a broken setup cannot pass as green.
//!
//! This file holds ONE test: it sets process environment variables, which delta-rs's Azure
//! client reads (the emulator's address has no option key; see `main`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_engine::arrow::array::{Array, Int64Array};
use sluice_engine::sink::DeltaSink;

const SKIP_ENV: &str = "SLUICE_TEST_AZURITE";
/// Azurite's well-known development account and key (public; the emulator accepts only these).
const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const API_VERSION: &str = "2023-11-03";
const CONTAINER: &str = "sluice";
const TABLE: &str = "az://sluice/orders";

#[tokio::test]
async fn pipeline_commits_to_a_delta_table_on_azurite_exactly_once() {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v.trim() == "skip") {
        eprintln!("{SKIP_ENV}=skip: not testing Delta tables on Azure (Azurite)");
        return;
    }
    let entry = install_azurite();
    let storage = tempfile::tempdir().unwrap();
    let azurite = Azurite::start(&entry, 0, storage.path());
    let endpoint = format!("http://127.0.0.1:{}", azurite.port);
    // SAFETY: setting the environment is unsound while another thread may read it. This file
    // holds a single test, so its binary runs no other test thread; the runtime is
    // current-thread and nothing has been spawned on it yet; the only other threads are the
    // two draining Azurite's output pipes, which never touch the environment. From here on,
    // delta-rs reads these (in this process, for the reader below) and `sluice` inherits them.
    unsafe {
        std::env::set_var("AZURE_STORAGE_USE_EMULATOR", "true");
        std::env::set_var("AZURITE_BLOB_STORAGE_URL", &endpoint);
    }
    // Containers are not created on demand, by Azurite or by delta-rs.
    let (status, body) = azurite.request("PUT", CONTAINER, &[("restype", "container")]);
    assert_eq!(status, 201, "creating container {CONTAINER:?}: {body}");

    // 4 files x 10 orders, batches of at most 4 rows: 12 batches for 2 workers.
    let p = Project::csv(4, 10, 4, "30s");
    p.write(
        "p.yaml",
        &format!(
            "pipeline: orders_az\nsource:\n  files: landing/*.csv\n  columns: {{id: int64, customer: int64, amount: float64}}\n  required: [id]\n  settle: 0s\nbatch:\n  max_rows: 4\ntransform: SELECT id AS order_id, customer, amount * 2 AS doubled FROM input\nsink:\n  delta: {TABLE}\n  key: [order_id]\n"
        ),
    );
    let run = || {
        let spec = p.spec().display().to_string();
        let store = p.dir.path().join("state.db").display().to_string();
        let out = p
            .sluice(&[
                "run",
                &spec,
                "--store",
                &store,
                "--workers",
                "2",
                "--until-drained",
                "--json",
            ])
            .env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", &endpoint)
            .output()
            .expect("running sluice");
        assert!(
            out.status.success(),
            "sluice run failed\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("sluice run printed no JSON ({e}): {}", stdout(&out)));
        summary
    };

    let first = run();
    let committed = first["this_run"]["committed"].as_u64().unwrap();
    assert_eq!(committed, 12, "{first:#}");
    assert_eq!(first["this_run"]["rows_in"], 40, "{first:#}");
    assert_eq!(first["status"]["done"], 12, "{first:#}");
    assert_eq!(first["status"]["quarantined"], 0, "{first:#}");

    let sink = DeltaSink::new(TABLE.parse().unwrap());
    let info = sink.describe().await.unwrap().expect("the table exists");
    // One Delta version per batch: version 0 created the table with the first batch.
    assert_eq!(info.version, committed as i64 - 1);
    let counts = order_counts(&sink).await;
    assert_exactly_once(&counts, &p.keys);

    // The table is in the emulator's container, not in some local folder.
    let (status, listing) = azurite.request(
        "GET",
        CONTAINER,
        &[
            ("comp", "list"),
            ("prefix", "orders/"),
            ("restype", "container"),
        ],
    );
    assert_eq!(status, 200, "listing the container: {listing}");
    let blobs = blob_names(&listing);
    for v in 0..=info.version {
        let log = format!("orders/_delta_log/{v:020}.json");
        assert!(
            blobs.contains(&log),
            "{log} not in the container: {blobs:?}"
        );
    }
    // At least one data file per commit; a writer that lost the race to create the table
    // wrote its file again, leaving the first unreferenced (Delta's VACUUM removes those).
    let parquet = blobs.iter().filter(|b| b.ends_with(".parquet")).count();
    assert!(parquet >= committed as usize, "{blobs:?}");
    assert!(!p.dir.path().join("orders").exists());
    assert!(!p.dir.path().join("az:").exists());

    // Nothing new landed: a second run commits nothing and the table stays as it was.
    let second = run();
    assert_eq!(second["this_run"]["committed"], 0, "{second:#}");
    assert_eq!(second["this_run"]["already_committed"], 0, "{second:#}");
    assert_eq!(second["status"]["done"], 12, "{second:#}");
    let again = DeltaSink::new(TABLE.parse().unwrap());
    let info_again = again.describe().await.unwrap().expect("the table exists");
    assert_eq!(info_again.version, info.version);
    assert_eq!(order_counts(&again).await, counts);

    // The store goes away under a running pipeline: its batches wait for it, none is
    // quarantined or loses an attempt, and they commit once it is back.
    let mut p = p;
    let spec = p.spec().display().to_string();
    let store = p.dir.path().join("state.db").display().to_string();
    let mut child = Running(
        p.sluice(&["run", &spec, "--store", &store, "--workers", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sluice run"),
    );
    wait_for(&p, &store, "the run's workers", |s| {
        s["workers"]
            .as_array()
            .is_some_and(|w| w.iter().filter(|w| w["state"] == "running").count() >= 2)
    });
    let port = azurite.port;
    azurite.stop();
    p.land("late_1", 8);
    p.land("late_2", 8);
    let s = wait_for(&p, &store, "a worker waiting for the sink", |s| {
        s["workers"].as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w["state"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("waiting"))
            })
        })
    });
    let pipeline = &s["pipelines"][0];
    assert_eq!(pipeline["quarantined"], 0, "{s:#}");
    assert_eq!(pipeline["done"], 12, "{s:#}");
    assert_eq!(s["quarantined"], serde_json::json!([]), "{s:#}");
    let azurite = Azurite::start(&entry, port, storage.path());
    let s = wait_for(&p, &store, "the late batches to commit", |s| {
        s["pipelines"][0]["done"] == 16
    });
    assert_eq!(s["pipelines"][0]["quarantined"], 0, "{s:#}");
    let term = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(child.0.wait().unwrap().success(), "run drains on SIGTERM");
    let after = DeltaSink::new(TABLE.parse().unwrap());
    assert_exactly_once(&order_counts(&after).await, &p.keys);
    drop(azurite);
}

/// A child process killed if the test fails before it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `sluice status` of `store` until `ready` holds (at most two minutes); returns that status.
fn wait_for(
    p: &Project,
    store: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = p.status(store);
        if ready(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited two minutes for {what}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How often each order id appears in the table.
async fn order_counts(sink: &DeltaSink) -> std::collections::HashMap<i64, usize> {
    let mut counts = std::collections::HashMap::new();
    for batch in sink.read_all().await.expect("reading the table back") {
        let ids = batch
            .column_by_name("order_id")
            .expect("an order_id column");
        let ids = ids
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("int64 ids");
        for id in ids.iter() {
            *counts.entry(id.expect("null order id")).or_default() += 1;
        }
    }
    counts
}

/// The `<Name>`s of a List Blobs response.
fn blob_names(xml: &str) -> Vec<String> {
    xml.split("<Name>")
        .skip(1)
        .filter_map(|s| s.split_once("</Name>").map(|(name, _)| name.to_string()))
        .collect()
}

/// Azurite's folder: installed from tools/azurite's lock file on first use, and again when that
/// lock file changes. Returns the blob service's entry point.
fn install_azurite() -> PathBuf {
    let pinned = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/azurite");
    let home = std::env::var_os("HOME").expect("HOME is not set");
    let dir = Path::new(&home).join(".cache/sluice-azurite");
    let entry = dir.join("node_modules/azurite/dist/src/blob/main.js");
    let lock = |d: &Path| std::fs::read(d.join("package-lock.json")).ok();
    if entry.is_file() && lock(&dir) == lock(&pinned) {
        return entry;
    }
    let how = format!(
        "`npm ci --no-audit --no-fund` in {} (from tools/azurite); needs Node.js and npm \
         (set {SKIP_ENV}=skip to skip this test)",
        dir.display()
    );
    if Command::new("node").arg("--version").output().is_err() {
        panic!("installing Azurite: `node` is not on PATH; {how}");
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(pinned.join(file), dir.join(file))
            .unwrap_or_else(|e| panic!("copying tools/azurite/{file}: {e}"));
    }
    eprintln!("installing Azurite: {how}");
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("installing Azurite: cannot run npm ({e}); {how}"));
    assert!(
        out.status.success() && entry.is_file(),
        "installing Azurite failed ({}): {how}\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    entry
}

/// A running Azurite blob service; killed when dropped.
struct Azurite {
    child: Child,
    port: u16,
}

impl Azurite {
    /// Starts the blob service on `port` (0: a free one), keeping its blobs under `location`
    /// so a restart finds them again.
    fn start(entry: &Path, port: u16, location: &Path) -> Azurite {
        let mut child = Command::new("node")
            .arg(entry)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(location)
            .args(["--skipApiVersionCheck", "--disableTelemetry"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting Azurite ({}): {e}", entry.display()));
        // Both pipes are drained for the emulator's whole life (it logs every request); lines
        // go to the channel until the port is known.
        let (lines, seen) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx = lines.clone();
        std::thread::spawn(move || drain(stdout, tx));
        std::thread::spawn(move || drain(stderr, lines));
        let mut output = String::new();
        let marker = "successfully listens on http://127.0.0.1:";
        let port = loop {
            match seen.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(port) = line
                        .split_once(marker)
                        .and_then(|(_, rest)| rest.trim().parse::<u16>().ok())
                    {
                        break port;
                    }
                    output.push_str(&line);
                    output.push('\n');
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("Azurite did not report its port ({e:?}); its output:\n{output}");
                }
            }
        };
        Azurite { child, port }
    }

    /// One SharedKey-signed request with an empty body; returns the status and the body.
    /// HTTP/1.0, so the response comes whole (no chunked encoding) and the connection closes.
    fn request(&self, verb: &str, path: &str, query: &[(&str, &str)]) -> (u16, String) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let mut sorted = query.to_vec();
        sorted.sort();
        // Verb, 11 standard headers (all empty: Content-Length too, for an empty body), the
        // x-ms- headers, then the resource with its query parameters by name.
        let mut to_sign = format!(
            "{verb}\n{}x-ms-date:{date}\nx-ms-version:{API_VERSION}\n/{ACCOUNT}/{ACCOUNT}/{path}",
            "\n".repeat(11)
        );
        for (k, v) in &sorted {
            to_sign.push_str(&format!("\n{k}:{v}"));
        }
        let key = B64.decode(ACCOUNT_KEY).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let signature = B64.encode(mac.finalize().into_bytes());
        let query: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let request = format!(
            "{verb} /{ACCOUNT}/{path}?{} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\n\
             x-ms-version: {API_VERSION}\r\nAuthorization: SharedKey {ACCOUNT}:{signature}\r\n\
             Content-Length: 0\r\n\r\n",
            query.join("&"),
            self.port
        );
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to Azurite");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reading Azurite's response");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Azurite {
    /// Stops the service as an operator would (SIGTERM): it saves its metadata and exits.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(term.success(), "signalling Azurite");
        let _ = self.child.wait();
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(pipe: impl Read, lines: mpsc::Sender<String>) {
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { return };
        // Once the port is known nobody listens; keep reading so the pipe never fills.
        let _ = lines.send(line);
    }
}
