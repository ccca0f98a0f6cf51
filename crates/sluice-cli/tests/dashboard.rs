//! The dashboard in a real headless browser (Debian's chromium, driven through chromedriver
//! with WebDriver): a `sluice serve --workers 2 --public-read` over a real pipeline under
//! continuous input, a canary deployed through the API. Every page loads without a page error
//! and shows the numbers the API answers; the deployment page follows the canary live; its
//! promote button without the token is refused and the deployment stays where it was; with the
//! token it promotes. Screenshots of each page go to `$CARGO_TARGET_TMPDIR/screenshots`.
//!
//! A missing browser fails the test (run `.ci/setup-browser`), unless SLUICE_TEST_BROWSER=skip.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::deploy::{Bg, Lander};
use common::{BIN, Project};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const TOKEN: &str = "dashboard-test-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn spec(version: i64, deploy: &str) -> String {
    format!(
        "pipeline: crash\nsource:\n  files: landing/*.csv\n  columns: {{id: int64, customer: int64, amount: float64}}\n  required: [id]\n  settle: 0s\nbatch:\n  max_rows: 50\n  lease: 10s\ntransform: SELECT id, customer, amount * 2 AS doubled, CAST({version} AS BIGINT) AS ver FROM input\nsink:\n  delta: out\n  key: [id]\nchecks:\n  - range: {{ column: doubled, min: 0 }}\n{deploy}"
    )
}

/// `sluice serve` with workers, and the address it listens on.
fn serve(project: &Project) -> (Bg, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(project.sqlite())
        .args(["--workers", "2", "--public-read", "--root", "."])
        .env("SLUICE_API_TOKEN", TOKEN)
        .current_dir(project.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sluice serve");
    let log = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(log).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix("serving ") {
                    break rest.split(' ').next().unwrap_or_default().to_string();
                }
            }
            _ => panic!("sluice serve ended before saying where it listens"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Bg(child), base)
}

/// chromedriver on a free loopback port, ready.
async fn chromedriver() -> (Bg, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("{url}/status")).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (Bg(child), url)
}

async fn browser(driver: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1360,1100"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a chromium session through chromedriver")
}

async fn api(base: &str, path: &str) -> Value {
    let r = reqwest::get(format!("{base}{path}"))
        .await
        .expect("the API answers");
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.expect("JSON")
}

async fn api_post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("the API answers");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The text of the element with `data-k="key"` (None when absent).
async fn text(c: &Client, key: &str) -> Option<String> {
    let v = c
        .execute(
            "const e = document.querySelector(`[data-k=\"${arguments[0]}\"]`); return e ? e.textContent : null;",
            vec![json!(key)],
        )
        .await
        .expect("a script");
    v.as_str().map(str::to_string)
}

/// Waits until `key` shows `want` (within `limit`), and returns how many renders it took.
async fn wait_text(c: &Client, key: &str, want: impl Fn(&str) -> bool, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = text(c, key).await
            && want(&t)
        {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never showed what was expected; it shows {:?}",
            text(c, key).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn renders(c: &Client) -> i64 {
    c.execute("return Number(document.body.dataset.renders || 0)", vec![])
        .await
        .ok()
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

/// Opens `hash` and waits for the page to have rendered after it.
async fn open(c: &Client, base: &str, hash: &str, page: &str) {
    c.goto(&format!("{base}/{hash}")).await.expect("navigating");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let at = c
            .execute("return document.body.dataset.page || ''", vec![])
            .await
            .expect("a script");
        if at == page && renders(c).await > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{hash}: page {page} never rendered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The page's own errors (script errors, rejected promises, console.error) must be none.
async fn no_page_errors(c: &Client, page: &str) {
    let errors = c
        .execute("return window.__sluiceErrors", vec![])
        .await
        .expect("a script");
    assert_eq!(errors, json!([]), "page errors on {page}");
}

async fn screenshot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).expect("writing the screenshot");
    eprintln!("screenshot: {}", path.display());
}

// The page's formatting, for comparing what it shows with what the API answers.
fn int(v: &Value) -> String {
    v.as_i64().map_or("–".into(), |n| n.to_string())
}
fn rate(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |n| format!("{n:.1}"))
}
fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("–".into(), |n| format!("{:.1}%", n * 100.0))
}
fn value(v: &Value) -> String {
    match v.as_f64() {
        None => "–".into(),
        Some(n) if n.fract() == 0.0 => format!("{}", n as i64),
        Some(n) => format!("{n:.3}"),
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshots folder");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() -> TestResult {
    if std::env::var("SLUICE_TEST_BROWSER").as_deref() == Ok("skip") {
        eprintln!("SLUICE_TEST_BROWSER=skip: not testing the dashboard in a browser");
        return Ok(());
    }
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run .ci/setup-browser (apt-get install chromium chromium-driver), or set SLUICE_TEST_BROWSER=skip"
        );
    }
    let began = Instant::now();
    let shots = screenshots();
    let project = Project::csv(2, 100, 50, "10s");
    project.write("v1.yaml", &spec(1, ""));
    // a canary held at 50% until a person promotes it, measured every second meanwhile
    project.write(
        "v2.yaml",
        &spec(
            2,
            "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - pause: {}\n    - set_weight: 100\n  analysis:\n    metrics:\n      - name: errors\n        interval: 1s\n        window: 30s\n        dry_run: true\n        failure_condition: candidate.error_rate > 0.5\n",
        ),
    );
    project.run_drained_spec(&project.dir.path().join("v1.yaml"));
    let (_served, base) = serve(&project);
    let project = Arc::new(Mutex::new(project));
    let lander = Lander::start(project.clone(), Duration::from_millis(300));
    let (_driver, driver_url) = chromedriver().await;
    let c = browser(&driver_url).await;

    // the canary, started through the API from a spec file under the server's root
    let (status, started) = api_post(
        &base,
        "/api/v1/pipelines/crash/deployments",
        json!({ "path": "v2.yaml", "started_by": "browser test" }),
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let id = started["deployment"]["deployment"]["id"].clone();

    // the deployment page follows it live: to 50%, then paused for a person
    open(&c, &base, "#/pipelines/crash/deployment", "deployment").await;
    let first = renders(&c).await;
    wait_text(
        &c,
        "deployment:weight",
        |t| t == "50%",
        Duration::from_secs(30),
    )
    .await;
    wait_text(
        &c,
        "deployment:state",
        |t| t == "paused",
        Duration::from_secs(30),
    )
    .await;
    wait_text(
        &c,
        "deployment:metric:background:errors:measured",
        |t| t.parse::<i64>().unwrap_or(0) >= 2,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        renders(&c).await > first + 1,
        "the page polled while the canary ran"
    );
    let view = api(&base, "/api/v1/pipelines/crash/deployments/current").await;
    let d = &view["deployment"];
    assert_eq!(
        text(&c, "deployment:versions").await.as_deref(),
        Some(format!("v{} → v{}", d["stable_version"], d["candidate_version"]).as_str())
    );
    assert_eq!(
        text(&c, "deployment:strategy").await.as_deref(),
        d["strategy"].as_str()
    );
    assert_eq!(
        text(&c, "deployment:started_by").await.as_deref(),
        Some("api: browser test")
    );
    let steps = view["policy"]["steps"].as_array().map_or(0, Vec::len);
    assert_eq!(
        text(&c, "deployment:step").await,
        Some(format!(
            "{} of {steps}",
            d["step"].as_i64().unwrap_or(0) + 1
        ))
    );
    // measurements keep coming: the page shows a count between two reads of the API
    let before =
        api(&base, "/api/v1/pipelines/crash/deployments/current").await["metrics"][0]["measured"]
            .as_i64()
            .unwrap_or(0);
    let shown_at = renders(&c).await;
    while renders(&c).await <= shown_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown: i64 = text(&c, "deployment:metric:background:errors:measured")
        .await
        .unwrap_or_default()
        .parse()?;
    let after =
        api(&base, "/api/v1/pipelines/crash/deployments/current").await["metrics"][0]["measured"]
            .as_i64()
            .unwrap_or(0);
    assert!(
        before <= shown && shown <= after,
        "{before} <= {shown} <= {after}"
    );
    let chart_points = c
        .execute("return document.querySelectorAll('[data-k=\"deployment:chart:background:errors\"] circle').length", vec![])
        .await?;
    assert!(
        chart_points.as_i64().unwrap_or(0) >= 2,
        "the measurements are on the chart"
    );
    no_page_errors(&c, "deployment").await;

    // promote without the token: refused, shown, and the deployment does not move
    c.find(Locator::Id("promote")).await?.click().await?;
    let refusal = wait_text_id(
        &c,
        "action-result",
        |t| t.contains("refused"),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        refusal.contains("401") && refusal.contains("token"),
        "{refusal}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = api(&base, "/api/v1/pipelines/crash/deployments/current").await;
    assert_eq!(still["deployment"]["state"], "paused", "{still}");
    assert_eq!(still["deployment"]["step"], d["step"]);
    assert_eq!(still["deployment"]["request"], Value::Null);
    assert_eq!(
        text(&c, "deployment:state").await.as_deref(),
        Some("paused")
    );
    screenshot(&c, &shots, "deployment-refused").await;
    no_page_errors(&c, "deployment").await;

    // with the token: promoted
    c.find(Locator::Id("token")).await?.send_keys(TOKEN).await?;
    c.find(Locator::Css("#token-form button"))
        .await?
        .click()
        .await?;
    wait_text_id(
        &c,
        "token-state",
        |t| t == "token set",
        Duration::from_secs(5),
    )
    .await;
    c.find(Locator::Id("promote")).await?.click().await?;
    wait_text(
        &c,
        "deployment:outcome",
        |t| t == "promoted",
        Duration::from_secs(30),
    )
    .await;
    screenshot(&c, &shots, "deployment-promoted").await;
    no_page_errors(&c, "deployment").await;

    // drained, the numbers hold still: the overview shows what the API answers
    lander.stop();
    // (the same answer twice, 2.5 s apart: the last landed file is taken in and run)
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut previous = Value::Null;
    let pipelines = loop {
        let list = api(&base, "/api/v1/pipelines").await;
        let p = &list["pipelines"][0];
        if p["pending"] == 0 && p["leased"] == 0 && list == previous {
            break list;
        }
        assert!(Instant::now() < deadline, "never drained: {p}");
        previous = list;
        tokio::time::sleep(Duration::from_millis(2500)).await;
    };
    let status = api(&base, "/api/v1/status").await;
    open(&c, &base, "#/", "overview").await;
    let p = &pipelines["pipelines"][0];
    let k = |f: &str| format!("overview:crash:{f}");
    assert_eq!(
        text(&c, &k("version")).await,
        Some(format!("v{}", p["current_version"]))
    );
    for f in ["pending", "leased", "done", "quarantined"] {
        assert_eq!(text(&c, &k(f)).await, Some(int(&p[f])), "{f}");
    }
    assert_eq!(
        text(&c, &k("rows_per_second")).await,
        Some(rate(&p["rows_per_second"]))
    );
    let measured = api(&base, "/api/v1/pipelines/crash/measurements?window=1h").await;
    let current = measured["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["version"] == p["current_version"]))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        text(&c, &k("error_rate")).await,
        Some(pct(&current["error_rate"]))
    );
    let alive = status["workers"].as_array().map_or(0, |w| {
        w.iter()
            .filter(|w| w["state"] != "stopped" && w["state"] != "lost")
            .count()
    });
    assert_eq!(text(&c, "overview:workers").await, Some(alive.to_string()));
    assert_eq!(text(&c, "overview:pipelines").await.as_deref(), Some("1"));
    screenshot(&c, &shots, "overview").await;
    no_page_errors(&c, "overview").await;

    // the pipeline: its queue, charts per version, recent batches
    open(&c, &base, "#/pipelines/crash", "pipeline").await;
    let detail = api(&base, "/api/v1/pipelines/crash").await;
    for f in ["pending", "done", "quarantined", "rows_in", "rows_out"] {
        assert_eq!(
            text(&c, &format!("pipeline:crash:{f}")).await,
            Some(int(&detail[f])),
            "{f}"
        );
    }
    let lines = c
        .execute("return document.querySelectorAll('[data-k=\"pipeline:crash:chart:throughput\"] circle').length", vec![])
        .await?;
    assert!(lines.as_i64().unwrap_or(0) >= 1, "throughput is charted");
    let batches = api(&base, "/api/v1/pipelines/crash/batches?limit=1000").await;
    let rows = c
        .execute("return document.querySelectorAll('[data-k=\"pipeline:crash:batches\"] tbody tr').length", vec![])
        .await?;
    assert_eq!(
        rows.as_u64().unwrap_or(0) as usize,
        batches["batches"].as_array().map_or(0, |b| b.len().min(20))
    );
    screenshot(&c, &shots, "pipeline").await;
    no_page_errors(&c, "pipeline").await;

    // the history: the deployment with its metric before and after
    open(&c, &base, "#/history", "history").await;
    let history = api(&base, "/api/v1/pipelines/crash/deployments").await;
    let h = &history["deployments"][0];
    assert_eq!(h["deployment"]["id"], id);
    let hk = |f: &str| format!("history:{id}:{f}");
    assert_eq!(text(&c, &hk("outcome")).await.as_deref(), Some("promoted"));
    let m = &h["metrics"][0];
    let mk = |f: &str| hk(&format!("metric:background:errors:{f}"));
    for f in [
        "first_value",
        "last_value",
        "first_stable_value",
        "last_stable_value",
    ] {
        assert_eq!(text(&c, &mk(f)).await, Some(value(&m[f])), "{f}");
    }
    assert_eq!(text(&c, &mk("measured")).await, Some(int(&m["measured"])));
    screenshot(&c, &shots, "history").await;
    no_page_errors(&c, "history").await;

    c.close().await?;
    eprintln!("browser test took {:?}", began.elapsed());
    Ok(())
}

/// Waits until the element with id `id` has text that `want` accepts.
async fn wait_text_id(
    c: &Client,
    id: &str,
    want: impl Fn(&str) -> bool,
    limit: Duration,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(e) = c.find(Locator::Id(id)).await
            && let Ok(t) = e.text().await
            && want(&t)
        {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "#{id} never showed what was expected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
