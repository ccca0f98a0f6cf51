//! The controller talking to real HTTP services, end to end, with a running pipeline and a
//! canary going out, each on SQLite and on PostgreSQL:
//!
//! - webhooks: real HTTP listeners in the test receive its events (JSON and Slack), a
//!   confirm-promotion hook holds the promotion until it answers 200, and an unreachable URL is
//!   recorded as failed while batches keep flowing; a delivery in flight when its leader is
//!   SIGKILLed is sent again by the next leader, with the same Idempotency-Key;
//! - Prometheus analysis: a real Prometheus (Debian's `prometheus`, installed by `.ci/setup`)
//!   scrapes a `sluice serve` of the test's store, and the canary's analysis queries it: a
//!   healthy candidate is promoted, one whose batches start failing is rolled back and its rows
//!   repaired.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::deploy::*;
use common::*;

/// What the listener received and how it answers.
#[derive(Default)]
struct Received {
    /// (path, Idempotency-Key, body) in arrival order.
    requests: Mutex<Vec<(String, String, serde_json::Value)>>,
    /// The status `/confirm` answers.
    confirm: AtomicU16,
    confirms: AtomicUsize,
    /// The event whose first request is held open, never answered (a delivery in flight).
    hold: Mutex<Option<String>>,
}

impl Received {
    fn at(&self, path: &str) -> Vec<(String, serde_json::Value)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == path)
            .map(|r| (r.1.clone(), r.2.clone()))
            .collect()
    }
}

async fn record(
    State(r): State<Arc<Received>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::Json<serde_json::Value>,
) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let event = body.0["event"].as_str().unwrap_or_default().to_string();
    r.requests
        .lock()
        .unwrap()
        .push((uri.path().to_string(), key, body.0));
    let held = {
        let mut hold = r.hold.lock().unwrap();
        let held = hold.as_deref() == Some(event.as_str());
        if held {
            *hold = None;
        }
        held
    };
    if held {
        std::future::pending::<()>().await;
    }
    if uri.path() == "/confirm" {
        r.confirms.fetch_add(1, Ordering::SeqCst);
        return StatusCode::from_u16(r.confirm.load(Ordering::SeqCst)).unwrap();
    }
    StatusCode::OK
}

/// A real HTTP server on 127.0.0.1:0 in its own thread; its address.
fn listen(r: Arc<Received>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new()
                .route("/{*path}", axum::routing::post(record))
                .with_state(r);
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn done(p: &Project, store: &str) -> i64 {
    p.status(store)["pipelines"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["pipeline"] == "crash"))
        .and_then(|s| s["done"].as_i64())
        .unwrap_or(0)
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_event_arrives_once_in_order_and_a_confirm_hook_holds_the_promotion_until_200_on_sqlite() {
    events_and_confirm_hook(None);
}

#[test]
fn every_event_arrives_once_in_order_and_a_confirm_hook_holds_the_promotion_until_200_on_postgres()
{
    let Some(url) = postgres() else { return };
    events_and_confirm_hook(Some(url));
}

fn events_and_confirm_hook(store: Option<String>) {
    let received = Arc::new(Received::default());
    received.confirm.store(503, Ordering::SeqCst);
    let addr = listen(received.clone());
    let dead = format!("http://127.0.0.1:{}/gone", closed_port());
    let mut p = Project::csv(2, 100, 50, "10s");
    let store = store.unwrap_or_else(|| p.sqlite());
    p.write("v1.yaml", &spec(1, None, ""));
    let deploy = format!(
        "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - pause: {{duration: 1s}}\n    - set_weight: 100\n  webhooks:\n    - url: http://{addr}/events\n    - url: http://{addr}/slack\n      format: slack\n      events: [promoted]\n    - url: http://{addr}/confirm\n      confirm_promotion: true\n      timeout: 2s\n    - url: {dead}\n      retries: 1\n      timeout: 1s\n"
    );
    p.write("v2.yaml", &spec(2, None, &deploy));
    let out = p.run(&["validate", "v2.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _run = run_bg(&p, "v1.yaml", &store, "2");
    wait_until("v1 runs its batches", Duration::from_secs(60), || {
        (done(&p, &store) >= 4).then_some(())
    });
    let out = p.run(&["deploy", "v2.yaml", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Every step passes; the confirm hook answers 503, so the deployment is held paused.
    let held = wait_until("held by the confirm hook", Duration::from_secs(60), || {
        let s = p.status(&store);
        let d = s["deployments"].as_array()?.first()?.clone();
        (d["state"] == "paused").then_some(d)
    });
    let reason = held["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("confirm-promotion") && reason.contains("503"),
        "{held}"
    );
    // It is asked again while held, and stays held; batches keep flowing meanwhile.
    let asked = received.confirms.load(Ordering::SeqCst);
    let before = done(&p, &store);
    p.land("while_held", 100);
    wait_until("asked again", Duration::from_secs(20), || {
        (received.confirms.load(Ordering::SeqCst) >= asked + 3).then_some(())
    });
    let s = p.status(&store);
    assert_eq!(s["deployments"][0]["state"], "paused", "{s}");
    wait_until("batches flow while held", Duration::from_secs(30), || {
        (done(&p, &store) >= before + 2).then_some(())
    });

    received.confirm.store(200, Ordering::SeqCst);
    let h = wait_until(
        "promoted once the hook says 200",
        Duration::from_secs(30),
        || {
            let h = history(&p, &store);
            (h[0]["deployment"]["outcome"] == "promoted").then_some(h)
        },
    );
    let view = &h[0];

    // The event hook: every event once, in order.
    let kinds = wait_until(
        "the promoted event delivered",
        Duration::from_secs(30),
        || {
            let got = received.at("/events");
            let kinds: Vec<String> = got
                .iter()
                .map(|(_, b)| b["event"].as_str().unwrap_or_default().to_string())
                .collect();
            kinds.contains(&"promoted".to_string()).then_some(kinds)
        },
    );
    assert_eq!(
        kinds,
        [
            "started",
            "step_reached",
            "step_reached",
            "step_reached",
            "paused",
            "promoted"
        ],
        "every event once, in order"
    );
    let got = received.at("/events");
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    let mut unique = keys.clone();
    unique.dedup();
    assert_eq!(keys, unique, "one request per event");
    assert!(got.iter().all(|(k, b)| b["id"] == *k && !k.is_empty()));
    assert!(
        got.iter()
            .all(|(_, b)| b["pipeline"] == "crash" && b["candidate_version"] == 2)
    );
    assert!(
        got[4].1["message"]
            .as_str()
            .unwrap_or_default()
            .contains("503"),
        "the paused event says why: {}",
        got[4].1
    );
    // The Slack hook: only what it asked for, as {"text": ...}.
    let slack = received.at("/slack");
    assert_eq!(slack.len(), 1, "{slack:?}");
    let text = slack[0].1["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("crash") && text.contains("promoted"),
        "{text}"
    );

    // The unreachable URL: every delivery recorded as failed, after its retry; shown.
    let dead_deliveries = wait_until("the dead URL given up", Duration::from_secs(30), || {
        let h = history(&p, &store);
        let ds: Vec<serde_json::Value> = h[0]["webhooks"]
            .as_array()?
            .iter()
            .filter(|w| w["url"] == dead.as_str())
            .cloned()
            .collect();
        (ds.len() == 6 && ds.iter().all(|w| w["state"] == "failed")).then_some(ds)
    });
    assert!(
        dead_deliveries.iter().all(|w| w["attempts"] == 2),
        "{dead_deliveries:?}"
    );
    assert!(
        dead_deliveries[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("connect"),
        "{dead_deliveries:?}"
    );
    let delivered = view["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["url"] == format!("http://{addr}/events") && w["state"] == "delivered")
        .count();
    assert!(delivered >= 5, "{view}");
    let text = p.run(&["history", "crash", "--store", &store]);
    let text = stdout(&text);
    assert!(text.contains(&dead) && text.contains("6 failed"), "{text}");
    let status = p.run(&["deploy", "status", "crash", "--store", &store, "--once"]);
    let status = stdout(&status);
    assert!(
        status.contains(&format!("webhook   {dead}: 0 delivered, 6 failed")),
        "{status}"
    );
}

#[test]
fn a_delivery_in_flight_when_the_leader_is_sigkilled_is_sent_again_by_the_next_on_sqlite() {
    delivery_in_flight_survives_the_leader(None);
}

#[test]
fn a_delivery_in_flight_when_the_leader_is_sigkilled_is_sent_again_by_the_next_on_postgres() {
    let Some(url) = postgres() else { return };
    delivery_in_flight_survives_the_leader(Some(url));
}

/// The hook listener holds the first `step_reached` request open; the leader sending it is
/// SIGKILLed there, a new process takes the leader duties and sends it again with the same
/// Idempotency-Key, and then the rest: every event at least once, in order, none lost.
fn delivery_in_flight_survives_the_leader(store: Option<String>) {
    let received = Arc::new(Received::default());
    *received.hold.lock().unwrap() = Some("step_reached".into());
    let addr = listen(received.clone());
    let p = Project::csv(2, 100, 50, "3s");
    let store = store.unwrap_or_else(|| p.sqlite());
    p.write("v1.yaml", &spec(1, None, ""));
    let deploy = format!(
        "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - pause: {{duration: 1s}}\n    - set_weight: 100\n  webhooks:\n    - url: http://{addr}/events\n      timeout: 60s\n"
    );
    p.write("v2.yaml", &spec(2, None, &deploy));
    let leader = run_bg(&p, "v1.yaml", &store, "1");
    wait_until("v1 runs its batches", Duration::from_secs(60), || {
        (done(&p, &store) >= 2).then_some(())
    });
    let out = p.run(&["deploy", "v2.yaml", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The held request arrives and the store has it as sent, not answered.
    let held_key = wait_until("the held request", Duration::from_secs(60), || {
        let got = received.at("/events");
        got.iter()
            .find(|(_, b)| b["event"] == "step_reached")
            .map(|(k, _)| k.clone())
    });
    let sending = history(&p, &store)[0]["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["state"] == "sending")
        .count();
    assert_eq!(sending, 1, "the held delivery is in flight in the store");
    assert!(
        received.hold.lock().unwrap().is_none(),
        "the listener holds it"
    );
    kill(leader);
    let sent_before = received.at("/events").len();

    // Another process takes the leader duties (the run's 3 s lease expires) and goes on.
    let _next = worker(&p, &store, "1", &[]);
    let got = wait_until("promoted delivered", Duration::from_secs(60), || {
        let got = received.at("/events");
        got.iter()
            .any(|(_, b)| b["event"] == "promoted")
            .then_some(got)
    });
    assert!(got.len() > sent_before, "nothing sent after the kill");
    let again: Vec<&(String, serde_json::Value)> =
        got.iter().filter(|(k, _)| *k == held_key).collect();
    assert!(
        again.len() >= 2,
        "the held event is sent again with the same Idempotency-Key: {got:?}"
    );
    assert!(again.iter().all(|(k, b)| b["id"] == *k));
    // At least once and in order: with repeats of one request side by side folded, each
    // event once, in the order they happened, none missing.
    let mut keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    keys.dedup();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        keys.len(),
        unique.len(),
        "an event repeated out of order: {got:?}"
    );
    let mut folded = Vec::new();
    let mut last = "";
    for (k, b) in &got {
        if k.as_str() != last {
            folded.push(b["event"].as_str().unwrap_or_default());
            last = k.as_str();
        }
    }
    assert_eq!(
        folded,
        [
            "started",
            "step_reached",
            "step_reached",
            "step_reached",
            "promoted"
        ],
        "every event, in order: {got:?}"
    );
    let h = history(&p, &store);
    assert_eq!(h[0]["deployment"]["outcome"], "promoted", "{h}");
    let ws = h[0]["webhooks"].as_array().cloned().unwrap_or_default();
    assert!(
        ws.len() == 5 && ws.iter().all(|w| w["state"] == "delivered"),
        "every delivery recorded delivered: {ws:?}"
    );
}

// ---- Prometheus analysis ----

/// The Prometheus binary, or `None` when SLUICE_TEST_PROMETHEUS=skip; fails the test when it is
/// missing otherwise.
fn prometheus_binary() -> Option<String> {
    if std::env::var("SLUICE_TEST_PROMETHEUS").as_deref() == Ok("skip") {
        eprintln!("SLUICE_TEST_PROMETHEUS=skip: not testing the Prometheus analysis provider");
        return None;
    }
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    match found {
        Some(p) => Some(p.to_string()),
        None => panic!(
            "no prometheus binary: run .ci/setup (it installs Debian's `prometheus`), or set SLUICE_TEST_PROMETHEUS=skip"
        ),
    }
}

fn free_port() -> u16 {
    closed_port()
}

/// `sluice serve` of the store (no token: loopback, where Prometheus scrapes it); its port.
fn serve(p: &Project, store: &str) -> (Bg, u16) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
        .env_remove("SLUICE_API_TOKEN")
        .current_dir(p.dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
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
    let port = base
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    (Bg(child), port)
}

/// A Prometheus of the test's own: its config, a temporary storage folder, a free port,
/// scraping `target` every second. Returns once it has scraped it.
fn prometheus(bin: &str, dir: &std::path::Path, target: u16) -> (Bg, String) {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let data = dir.join("prometheus-data");
    let child = Bg(Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap());
    let address = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Ready, and scraping: it finds its targets a few seconds after start.
    wait_until(
        "prometheus scraping sluice serve",
        Duration::from_secs(30),
        || {
            rt.block_on(async {
                let r = reqwest::Client::new()
                    .get(format!("{address}/api/v1/query"))
                    .query(&[("query", "up")])
                    .send()
                    .await
                    .ok()?;
                let v: serde_json::Value = r.json().await.ok()?;
                (v["data"]["result"][0]["value"][1] == "1").then_some(())
            })
        },
    );
    (child, address)
}

/// The share of the candidate's batches quarantined, as Prometheus has scraped them. `or
/// vector(0)`: no quarantined batch is 0, but no batch at all stays empty (an Error).
const QUARANTINED_SHARE: &str = r#"(sum(sluice_batches{pipeline="{{pipeline}}",version="{{candidate}}",state="quarantined"}) or vector(0)) / sum(sluice_batches{pipeline="{{pipeline}}",version="{{candidate}}"})"#;

/// An analysis of one Prometheus metric, its lines indented by `indent` spaces.
fn prom_analysis(address: &str, count: Option<u32>, indent: usize) -> String {
    let lines = [
        "metrics:".to_string(),
        "  - name: prom-errors".into(),
        "    interval: 1s".into(),
        count.map(|c| format!("    count: {c}")).unwrap_or_default(),
        "    initial_delay: 2s".into(),
        "    consecutive_error_limit: 15".into(),
        "    prometheus:".into(),
        format!("      address: {address}"),
        format!("      query: '{QUARANTINED_SHARE}'"),
        "      timeout: 2s".into(),
        "    failure_condition: result > 0.05".into(),
    ];
    lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| format!("{}{l}\n", " ".repeat(indent)))
        .collect()
}

#[test]
fn a_canary_judged_by_prometheus_is_promoted_when_healthy_and_rolled_back_when_it_fails_on_sqlite()
{
    judged_by_prometheus(None);
}

#[test]
fn a_canary_judged_by_prometheus_is_promoted_when_healthy_and_rolled_back_when_it_fails_on_postgres()
 {
    let Some(url) = postgres() else { return };
    judged_by_prometheus(Some(url));
}

fn judged_by_prometheus(store: Option<String>) {
    let Some(bin) = prometheus_binary() else {
        return;
    };
    let p = Project::csv(2, 100, 50, "10s");
    let store = store.unwrap_or_else(|| p.sqlite());
    p.write("v1.yaml", &spec(1, None, ""));
    let run = run_bg(&p, "v1.yaml", &store, "2");
    wait_until("v1 runs its batches", Duration::from_secs(60), || {
        (done(&p, &store) >= 4).then_some(())
    });
    let (_serve, serve_port) = serve(&p, &store);
    let (_prom, address) = prometheus(&bin, p.dir.path(), serve_port);
    let dir = p.dir.path().to_path_buf();
    let p = Arc::new(Mutex::new(p));
    let lander = {
        let p = p.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::SeqCst) {
                p.lock().unwrap().land(&format!("live_{n:05}"), 50);
                n += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        (stop, h)
    };

    // Healthy: three measurements of a 0 share, promoted.
    let healthy = format!(
        "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - analysis:\n{}    - set_weight: 100\n",
        prom_analysis(&address, Some(3), 8)
    );
    {
        let p = p.lock().unwrap();
        p.write("v2.yaml", &spec(2, None, &healthy));
        let out = p.run(&["validate", "v2.yaml"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = deploy_wait(&dir, "v2.yaml", &store, Duration::from_secs(120));
    assert_eq!(
        out.status.code(),
        Some(0),
        "the healthy candidate is promoted: {}\n{}\nmeasurements: {}",
        stdout(&out),
        stderr(&out),
        history(&p.lock().unwrap(), &store)[0]["measurements"]
    );
    let h = history(&p.lock().unwrap(), &store);
    let ms: Vec<&serde_json::Value> = h[0]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["metric"] == "prom-errors" && m["phase"] == "successful")
        .collect();
    assert_eq!(ms.len(), 3, "{}", h[0]["measurements"]);
    let inputs: serde_json::Value =
        serde_json::from_str(ms[0]["inputs"].as_str().unwrap()).unwrap();
    let query = inputs["query"].as_str().unwrap();
    assert!(
        query.contains("version=\"2\"") && query.contains("pipeline=\"crash\""),
        "the query as sent, with the versions filled in: {inputs}"
    );
    assert_eq!(inputs["response_value"], "0", "{inputs}");
    assert_eq!(ms[0]["value"], 0.0);

    // Failing: v3's SQL errors on rows past what has landed; its batches are quarantined, the
    // share Prometheus sees rises, and the background analysis rolls it back.
    {
        let p = p.lock().unwrap();
        let from = p.keys.iter().max().copied().unwrap_or(0) + 300;
        let transform = format!(
            "SELECT id, customer, amount * 2 AS doubled, CASE WHEN id >= {from} AND id % 7 = 3 THEN CAST(concat('x', CAST(id AS VARCHAR)) AS BIGINT) ELSE CAST(3 AS BIGINT) END AS ver FROM input"
        );
        let failing = format!(
            "deploy:\n  strategy: canary\n  steps:\n    - set_weight: 50\n    - pause: {{duration: 60s}}\n    - set_weight: 100\n  analysis:\n{}",
            prom_analysis(&address, None, 4)
        );
        p.write("v3.yaml", &spec(3, Some(&transform), &failing));
    }
    let out = deploy_wait(&dir, "v3.yaml", &store, Duration::from_secs(120));
    lander.0.store(true, Ordering::SeqCst);
    lander.1.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the failing candidate is rolled back: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let p = p.lock().unwrap();
    wait_until("drained on v2", Duration::from_secs(90), || {
        let s = p.status(&store);
        let s = s["pipelines"]
            .as_array()?
            .iter()
            .find(|s| s["pipeline"] == "crash")?
            .clone();
        (s["pending"].as_i64()? + s["leased"].as_i64()? == 0).then_some(())
    });
    drop(run);
    let h = history(&p, &store);
    let view = &h[0];
    assert_eq!(view["deployment"]["outcome"], "aborted", "{view}");
    let reason = view["deployment"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("analysis failed") && reason.contains("prom-errors"),
        "{reason}"
    );
    let failed = view["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["phase"] == "failed")
        .expect("a failed measurement");
    assert!(failed["value"].as_f64().unwrap() > 0.05, "{failed}");
    assert_exactly_once(&p.table_counts("out", "id"), &p.keys);
    let by_version = p.table_counts("out", "ver");
    assert_eq!(
        by_version.get(&3),
        None,
        "rows of v3 remain: {by_version:?}"
    );
}
