//! The API over real HTTP: a server on 127.0.0.1:0 in this process, a store on each backend
//! (SQLite in a temporary folder, a fresh PostgreSQL database), requests with `reqwest`.
//! Every route is called to succeed and to fail; the bypass tests try what an attacker would.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sluice_core::{BatchId, BatchOutcome, BatchSlice, ErrorKind, TaskState, WorkerId};
use sluice_store::{CheckRecord, LeaseRequest, NewFile, NewTask, RunReport, Store, WorkerBeat};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const TOKEN: &str = "test-token-0123456789abcdef";

/// A running server and what it serves.
struct Api {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
    store: Arc<dyn Store>,
    stop: CancellationToken,
    root: std::path::PathBuf,
    _dir: tempfile::TempDir,
    pg_url: Option<String>,
}

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Options {
    token: Option<&'static str>,
    public_read: bool,
    max_body: usize,
}

const WITH_TOKEN: Options = Options {
    token: Some(TOKEN),
    public_read: false,
    max_body: 64 * 1024,
};

impl Api {
    async fn start(backend: Backend, options: Options) -> Option<Api> {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("landing")).expect("creating the root");
        let (url, pg_url) = match backend {
            Backend::Sqlite => (dir.path().join("state.db").display().to_string(), None),
            Backend::Postgres => {
                let url = sluice_store::testing::fresh_postgres_url()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))?;
                (url.clone(), Some(url))
            }
        };
        let store = sluice_store::open(&url).await.expect("opening the store");
        let config = sluice_server::Config {
            listen: "127.0.0.1:0".parse().expect("an address"),
            token: options
                .token
                .map(|t| sluice_server::Token::new(t).expect("a token")),
            public_read: options.public_read,
            roots: sluice_app::roots::Roots::new(&[root.display().to_string()]).expect("roots"),
            max_body: options.max_body,
        };
        let server = sluice_server::Server::bind(config, store.clone())
            .await
            .expect("binding");
        let base = format!("http://{}", server.local_addr());
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        Some(Api {
            base,
            client: reqwest::Client::new(),
            token: options.token.map(str::to_string),
            store,
            stop,
            root: std::fs::canonicalize(root).expect("canonical root"),
            _dir: dir,
            pg_url,
        })
    }

    /// A request with the token (when the server has one).
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.request(method, path);
        if let Some(body) = body {
            r = r.json(&body);
        }
        answer(r).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn post_text(&self, path: &str, text: &str) -> (StatusCode, Value) {
        answer(
            self.request(Method::POST, path)
                .header("content-type", "application/yaml")
                .body(text.to_string()),
        )
        .await
    }

    async fn finish(self) {
        self.stop.cancel();
        drop(self.store);
        if let Some(url) = self.pg_url {
            let _ = sluice_store::testing::drop_postgres_database(&url).await;
        }
    }
}

/// A request sent byte for byte, so the path reaches the server exactly as written (a client
/// library would resolve `..` and `%2e%2e` segments first).
async fn raw_get(api: &Api, path: &str) -> (StatusCode, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("sending");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("reading");
    let text = String::from_utf8_lossy(&response);
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .expect("a status line");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (
        code,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
    )
}

async fn answer(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = r.send().await.expect("the server answers");
    let status = response.status();
    let text = response.text().await.expect("a body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Asserts the one error shape, its kind, and that the message says `needle`.
fn assert_error(answer: &(StatusCode, Value), status: StatusCode, kind: &str, needle: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"]["kind"], kind, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let api = super::Api::start(super::Backend::Sqlite, super::WITH_TOKEN)
                        .await
                        .expect("SQLite is always there");
                    super::$name(&api).await.expect(stringify!($name));
                    api.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(api) = super::Api::start(super::Backend::Postgres, super::WITH_TOKEN).await else {
                        eprintln!("SLUICE_TEST_POSTGRES=skip: not testing PostgreSQL");
                        return;
                    };
                    super::$name(&api).await.expect(stringify!($name));
                    api.finish().await;
                }
            )*
        }
    };
}

on_both_backends!(
    probes_answer,
    pipelines_and_their_versions,
    batches_pages_and_one_batch,
    measurements_over_a_window,
    quarantine_and_retries,
    the_schema_registry,
    metrics_are_the_store_numbers,
    deployments_start_move_and_end,
    series_and_status,
);

// ---- fixtures ----

fn spec(name: &str, sink: &str) -> String {
    format!(
        "pipeline: {name}\nsource:\n  files: landing/*.csv\n  columns: {{id: int64, amount: float64}}\n  required: [id]\ntransform: SELECT id, amount FROM input\nsink:\n  delta: {sink}\n  key: [id]\nchecks:\n  - not_null: {{columns: [amount]}}\n"
    )
}

/// The batches [`seed`] queued, in queue order, and what happened to each.
struct Seeded {
    /// committed, quarantined, leased, pending (in that order), all of orders@1.
    batches: Vec<BatchId>,
    /// one pending batch of orders@2.
    later: BatchId,
    /// The lease on the leased batch.
    leased: sluice_store::Lease,
}

/// `orders` registered through the API; four batches of v1: one committed (with check results),
/// one quarantined, one leased, one pending; v2 registered and made current with one batch.
async fn seed(api: &Api) -> Result<Seeded, Box<dyn std::error::Error + Send + Sync>> {
    let (status, v1) = api
        .post(
            "/api/v1/pipelines/orders/versions",
            json!({ "spec": spec("orders", "tables/orders") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(v1["version"], 1);
    let store = &api.store;
    let file = |path: &str| NewFile {
        pipeline: "orders".into(),
        path: path.into(),
        size: 400,
        modified_ms: 1,
        ..NewFile::default()
    };
    let tasks = |path: &str, n: u32| -> Vec<NewTask> {
        (0..n)
            .map(|i| {
                let slice = BatchSlice {
                    path: path.into(),
                    index: i,
                    byte_start: u64::from(i) * 100,
                    byte_end: u64::from(i + 1) * 100,
                    row_start: u64::from(i) * 10,
                    row_count: 10,
                };
                NewTask {
                    batch_id: BatchId::derive("orders", path, &slice),
                    slice,
                }
            })
            .collect()
    };
    let a = api.root.join("landing/a.csv").display().to_string();
    let queued = tasks(&a, 4);
    assert!(store.register_file(&file(&a), 1, 3, &queued).await?);
    let worker = WorkerId::new("testhost", 1, 0);
    let mut leases = store
        .lease(&LeaseRequest {
            worker: worker.clone(),
            pipelines: None,
            limit: 3,
            lease_for: Duration::from_secs(600),
        })
        .await?;
    assert_eq!(leases.len(), 3);
    let now = sluice_core::now_millis();
    let run = |outcome, error: Option<&str>| RunReport {
        started_at: now - 300,
        finished_at: now,
        rows_in: 10,
        rows_out: 9,
        outcome,
        error: error.map(str::to_string),
        cpu_us: None,
        peak_memory_bytes: None,
    };
    let committed = leases.remove(0);
    assert!(
        store
            .complete(&committed, &run(BatchOutcome::Committed, None))
            .await?
    );
    let held = leases.remove(0);
    store
        .fail(
            &held,
            &run(
                BatchOutcome::Quarantined,
                Some("check not_null(amount) failed"),
            ),
            ErrorKind::User,
            true,
            Duration::ZERO,
        )
        .await?;
    let leased = leases.remove(0);
    let check = |batch: &BatchId, level: &str, failing: i64| CheckRecord {
        pipeline: "orders".into(),
        version: 1,
        batch_id: batch.clone(),
        check: "not_null(amount)".into(),
        kind: "not_null".into(),
        level: level.into(),
        considered: 10,
        failing,
        dropped: 0,
        detail: format!("{failing} of 10 rows fail"),
        recorded_at: 0,
    };
    store
        .record_checks(&[
            check(&committed.batch_id, "pass", 0),
            check(&held.batch_id, "error", 2),
        ])
        .await?;
    store
        .worker_heartbeat(&WorkerBeat {
            worker,
            host: "testhost".into(),
            pid: 1,
            state: "running".into(),
        })
        .await?;
    // v2 becomes current; v1 stays live while its batches are pending or leased
    let v2 = sluice_app::roots::register_confined(
        store,
        "orders",
        &spec("orders", "tables/orders").replace("amount FROM", "amount * 2 AS amount FROM"),
        None,
        &sluice_app::roots::Roots::new(&[api.root.display().to_string()])?,
    )
    .await?;
    store.set_current_version("orders", v2.version).await?;
    let b = api.root.join("landing/b.csv").display().to_string();
    let later = tasks(&b, 1);
    let mut b_file = file(&b);
    b_file.size = 100;
    assert!(store.register_file(&b_file, v2.version, 3, &later).await?);
    Ok(Seeded {
        batches: queued.into_iter().map(|t| t.batch_id).collect(),
        later: later[0].batch_id.clone(),
        leased,
    })
}

// ---- the routes, on both backends ----

async fn probes_answer(api: &Api) -> TestResult {
    let anonymous = |path: &str| api.client.get(format!("{}{path}", api.base));
    let (status, body) = answer(anonymous("/health")).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("up")));
    let (status, body) = answer(anonymous("/ready")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["store"], api.store.backend());
    let (status, doc) = api.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    Ok(())
}

async fn pipelines_and_their_versions(api: &Api) -> TestResult {
    let (status, body) = api.get("/api/v1/pipelines").await;
    assert_eq!(
        (status, body["pipelines"].clone()),
        (StatusCode::OK, json!([]))
    );
    assert_error(
        &api.get("/api/v1/pipelines/orders").await,
        StatusCode::NOT_FOUND,
        "user",
        "no pipeline \"orders\"",
    );
    seed(api).await?;
    let (status, body) = api.get("/api/v1/pipelines").await;
    assert_eq!(status, StatusCode::OK);
    let orders = &body["pipelines"][0];
    assert_eq!(orders["pipeline"], "orders");
    assert_eq!(orders["current_version"], 2);
    assert_eq!(
        (
            orders["pending"].clone(),
            orders["leased"].clone(),
            orders["done"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );
    assert_eq!(orders["quarantined"], 1);
    let (status, one) = api.get("/api/v1/pipelines/orders").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    let versions = one["versions"].as_array().ok_or("versions")?;
    assert_eq!(versions.len(), 2);
    assert_eq!(
        (
            versions[0]["current"].clone(),
            versions[1]["current"].clone()
        ),
        (json!(false), json!(true))
    );
    let (status, v1) = api.get("/api/v1/pipelines/orders/versions/1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        v1["spec"]
            .as_str()
            .ok_or("spec")?
            .contains("pipeline: orders")
    );
    assert!(
        v1.get("base_dir").is_none(),
        "the server's folders stay out of answers"
    );
    // registering the same spec again is the same version
    let (status, again) = api
        .post(
            "/api/v1/pipelines/orders/versions",
            json!({ "spec": spec("orders", "tables/orders") }),
        )
        .await;
    assert_eq!(
        (status, again["version"].clone()),
        (StatusCode::OK, json!(1))
    );

    assert_error(
        &api.get("/api/v1/pipelines/orders/versions/9").await,
        StatusCode::NOT_FOUND,
        "user",
        "has no version 9",
    );
    assert_error(
        &api.get("/api/v1/pipelines/orders/versions/0").await,
        StatusCode::BAD_REQUEST,
        "user",
        "not a version number",
    );
    assert_error(
        &api.get("/api/v1/pipelines/nope/versions/1").await,
        StatusCode::NOT_FOUND,
        "user",
        "no pipeline",
    );
    // a spec for another pipeline, a broken spec, one naming paths outside the roots
    assert_error(
        &api.post(
            "/api/v1/pipelines/orders/versions",
            json!({ "spec": spec("users", "tables/u") }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "not \"orders\"",
    );
    assert_error(
        &api.post(
            "/api/v1/pipelines/orders/versions",
            json!({ "spec": "pipeline: [" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "<request>",
    );
    for (sink, needle) in [
        ("/tmp/stolen", "outside the server's roots"),
        ("../escape", "`..`"),
        ("s3://bucket/t", "outside the server's roots"),
    ] {
        assert_error(
            &api.post(
                "/api/v1/pipelines/orders/versions",
                json!({ "spec": spec("orders", sink) }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "user",
            needle,
        );
    }
    assert_error(
        &api.post(
            "/api/v1/pipelines/orders/versions",
            json!({ "spec": spec("orders", "t"), "base_dir": "/etc" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "outside the server's roots",
    );
    assert_error(
        &api.post("/api/v1/pipelines/orders/versions", json!({ "yaml": "x" }))
            .await,
        StatusCode::BAD_REQUEST,
        "user",
        "unknown field",
    );
    assert!(
        !std::path::Path::new("/tmp/stolen").exists(),
        "a refused spec wrote nothing"
    );
    Ok(())
}

async fn batches_pages_and_one_batch(api: &Api) -> TestResult {
    let seeded = seed(api).await?;
    let ids = |page: &Value| -> Vec<String> {
        page["batches"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b["batch_id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, all) = api.get("/api/v1/pipelines/orders/batches").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let mut expected: Vec<String> = seeded.batches.iter().map(|b| b.0.clone()).collect();
    expected.push(seeded.later.0.clone());
    assert_eq!(ids(&all), expected);
    assert_eq!(all["next"], Value::Null);
    // two pages of three
    let (_, first) = api.get("/api/v1/pipelines/orders/batches?limit=3").await;
    assert_eq!(ids(&first), expected[..3].to_vec());
    let next = first["next"].as_i64().ok_or("a next cursor")?;
    let (_, second) = api
        .get(&format!(
            "/api/v1/pipelines/orders/batches?limit=3&after={next}"
        ))
        .await;
    assert_eq!(ids(&second), expected[3..].to_vec());
    assert_eq!(second["next"], Value::Null);
    let (_, pending) = api
        .get("/api/v1/pipelines/orders/batches?state=pending")
        .await;
    assert_eq!(
        ids(&pending),
        vec![expected[3].clone(), expected[4].clone()]
    );
    let (_, pending_v1) = api
        .get("/api/v1/pipelines/orders/batches?state=pending&version=1")
        .await;
    assert_eq!(ids(&pending_v1), vec![expected[3].clone()]);
    let (_, quarantined) = api
        .get("/api/v1/pipelines/orders/batches?state=quarantined")
        .await;
    assert_eq!(
        quarantined["batches"][0]["last_error"],
        "check not_null(amount) failed"
    );
    for (query, needle) in [
        ("state=broken", "not a batch state"),
        ("limit=0", "out of range"),
        ("limit=100000", "out of range"),
        ("after=-1", "cursor"),
        ("version=x", "query string is not valid"),
        ("colour=blue", "query string is not valid"),
    ] {
        assert_error(
            &api.get(&format!("/api/v1/pipelines/orders/batches?{query}"))
                .await,
            StatusCode::BAD_REQUEST,
            "user",
            needle,
        );
    }
    assert_error(
        &api.get("/api/v1/pipelines/nope/batches").await,
        StatusCode::NOT_FOUND,
        "user",
        "no pipeline",
    );

    let (status, one) = api
        .get(&format!(
            "/api/v1/pipelines/orders/batches/{}",
            seeded.batches[0]
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["state"], "done");
    assert_eq!(one["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["runs"][0]["outcome"], "committed");
    assert_eq!(one["checks"][0]["check"], "not_null(amount)");
    let (_, held) = api
        .get(&format!(
            "/api/v1/pipelines/orders/batches/{}",
            seeded.batches[1]
        ))
        .await;
    assert_eq!(
        (held["state"].clone(), held["checks"][0]["level"].clone()),
        (json!("quarantined"), json!("error"))
    );
    assert_error(
        &api.get("/api/v1/pipelines/orders/batches/b-0000").await,
        StatusCode::NOT_FOUND,
        "user",
        "has no batch b-0000",
    );
    // a batch id of one pipeline asked for under another is not there
    api.post(
        "/api/v1/pipelines/users/versions",
        json!({ "spec": spec("users", "tables/users") }),
    )
    .await;
    assert_error(
        &api.get(&format!(
            "/api/v1/pipelines/users/batches/{}",
            seeded.batches[0]
        ))
        .await,
        StatusCode::NOT_FOUND,
        "user",
        "has no batch",
    );
    Ok(())
}

async fn measurements_over_a_window(api: &Api) -> TestResult {
    seed(api).await?;
    let (status, m) = api
        .get("/api/v1/pipelines/orders/measurements?window=10m")
        .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    let v1 = &m["versions"][0];
    assert_eq!(v1["version"], 1);
    assert_eq!(
        (
            v1["runs"].clone(),
            v1["committed"].clone(),
            v1["quarantined"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );
    assert_eq!(v1["error_rate"], 0.5);
    assert_eq!(
        (v1["rows_in"].clone(), v1["rows_out"].clone()),
        (json!(10), json!(9))
    );
    assert_eq!(v1["mean_duration_ms"], 300.0);
    let checks = v1["checks"].as_array().ok_or("checks")?;
    assert_eq!(checks.len(), 2, "{checks:?}");
    let since = m["since"].as_i64().ok_or("since")?;
    let until = m["until"].as_i64().ok_or("until")?;
    assert_eq!(until - since, 600_000);
    let (status, default) = api.get("/api/v1/pipelines/orders/measurements").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        default["until"].as_i64().unwrap_or(0) - default["since"].as_i64().unwrap_or(0),
        3_600_000
    );
    for (query, needle) in [
        ("window=soon", "not a duration"),
        ("window=0s", "out of range"),
        ("window=400d", "out of range"),
    ] {
        assert_error(
            &api.get(&format!("/api/v1/pipelines/orders/measurements?{query}"))
                .await,
            StatusCode::BAD_REQUEST,
            "user",
            needle,
        );
    }
    assert_error(
        &api.get("/api/v1/pipelines/nope/measurements").await,
        StatusCode::NOT_FOUND,
        "user",
        "no pipeline",
    );
    Ok(())
}

async fn quarantine_and_retries(api: &Api) -> TestResult {
    let seeded = seed(api).await?;
    let held_id = &seeded.batches[1];
    let (status, held) = api.get("/api/v1/pipelines/orders/quarantine").await;
    assert_eq!(status, StatusCode::OK, "{held}");
    assert_eq!(held["pipeline"], "orders");
    assert_eq!(held["batches"].as_array().map(Vec::len), Some(1));
    assert_eq!(held["batches"][0]["batch_id"], held_id.0);
    assert_eq!(
        held["rows"],
        json!([]),
        "nothing was written to the quarantine table"
    );
    let (_, only) = api
        .get(&format!(
            "/api/v1/pipelines/orders/quarantine?batch={}",
            seeded.batches[0]
        ))
        .await;
    assert_eq!(only["batches"], json!([]));
    assert_error(
        &api.get("/api/v1/pipelines/orders/quarantine?limit=0").await,
        StatusCode::BAD_REQUEST,
        "user",
        "out of range",
    );
    assert_error(
        &api.get("/api/v1/pipelines/nope/quarantine").await,
        StatusCode::NOT_FOUND,
        "user",
        "no pipeline",
    );
    // a batch that is not quarantined, one that is not there, then the held one
    assert_error(
        &api.post(
            "/api/v1/pipelines/orders/quarantine/retries",
            json!({ "batch": seeded.batches[0].0 }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "not quarantined",
    );
    assert_error(
        &api.post(
            "/api/v1/pipelines/orders/quarantine/retries",
            json!({ "batch": "b-none" }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "user",
        "has no batch b-none",
    );
    let (status, retried) = api
        .post(
            "/api/v1/pipelines/orders/quarantine/retries",
            json!({ "batch": held_id.0 }),
        )
        .await;
    assert_eq!(
        (status, retried["queued"].clone()),
        (StatusCode::OK, json!(1)),
        "{retried}"
    );
    let task = api.store.task(held_id).await?.ok_or("the batch")?;
    assert_eq!(
        (task.state, task.version),
        (TaskState::Pending, 2),
        "re-pinned to current"
    );
    // nothing left to retry
    let (status, none) = api
        .post("/api/v1/pipelines/orders/quarantine/retries", json!({}))
        .await;
    assert_eq!((status, none["queued"].clone()), (StatusCode::OK, json!(0)));
    assert_error(
        &api.post("/api/v1/pipelines/nope/quarantine/retries", json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "user",
        "no pipeline",
    );
    assert_error(
        &api.post(
            "/api/v1/pipelines/orders/quarantine/retries",
            json!({ "all": true }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "unknown field",
    );
    Ok(())
}

const ORDERS_V1: &str = "dataset: orders\nfields:\n  - {name: id, type: int64, nullable: false}\n  - {name: amount, type: float64}\n";
const ORDERS_V2: &str = "dataset: orders\nfields:\n  - {name: id, type: int64, nullable: false}\n  - {name: amount, type: float64}\n  - {name: note, type: string}\n";
/// Drops a required field and adds another without a default: not BACKWARD-compatible.
const ORDERS_BAD: &str =
    "dataset: orders\nfields:\n  - {name: key, type: string, nullable: false}\n";

async fn the_schema_registry(api: &Api) -> TestResult {
    let (status, empty) = api.get("/api/v1/datasets").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (empty["default_mode"].clone(), empty["datasets"].clone()),
        (json!("BACKWARD"), json!([]))
    );
    assert_error(
        &api.get("/api/v1/datasets/orders").await,
        StatusCode::NOT_FOUND,
        "user",
        "no dataset `orders`",
    );
    let (status, created) = api
        .post_text("/api/v1/datasets/orders/versions", ORDERS_V1)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (created["outcome"].clone(), created["version"].clone()),
        (json!("registered"), json!(1))
    );
    let (status, same) = api
        .post_text("/api/v1/datasets/orders/versions", ORDERS_V1)
        .await;
    assert_eq!(
        (status, same["outcome"].clone()),
        (StatusCode::OK, json!("unchanged"))
    );
    let (status, would) = api
        .post_text("/api/v1/datasets/orders/checks", ORDERS_V2)
        .await;
    assert_eq!(
        (status, would["outcome"].clone(), would["version"].clone()),
        (StatusCode::OK, json!("would_register"), json!(2))
    );
    let (_, refused_check) = api
        .post_text("/api/v1/datasets/orders/checks", ORDERS_BAD)
        .await;
    assert_eq!(refused_check["outcome"], "refused");
    let refused = api
        .post_text("/api/v1/datasets/orders/versions", ORDERS_BAD)
        .await;
    assert_error(
        &refused,
        StatusCode::CONFLICT,
        "user",
        "not BACKWARD-compatible",
    );
    assert!(
        refused.1["error"]["details"]["violations"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    );
    let (status, v2) = api
        .post_text("/api/v1/datasets/orders/versions", ORDERS_V2)
        .await;
    assert_eq!(
        (status, v2["version"].clone()),
        (StatusCode::CREATED, json!(2))
    );

    let (_, list) = api.get("/api/v1/datasets").await;
    assert_eq!(list["datasets"][0]["latest_version"], 2);
    let (status, one) = api.get("/api/v1/datasets/orders").await;
    assert_eq!(
        (
            status,
            one["versions"].clone(),
            one["mode_is_default"].clone()
        ),
        (StatusCode::OK, json!(2), json!(true))
    );
    let (_, latest) = api.get("/api/v1/datasets/orders/versions/latest").await;
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["schema"]["fields"].as_array().map(Vec::len), Some(3));
    let (_, first) = api.get("/api/v1/datasets/orders/versions/1").await;
    assert_eq!(first["schema"]["fields"].as_array().map(Vec::len), Some(2));
    assert_error(
        &api.get("/api/v1/datasets/orders/versions/7").await,
        StatusCode::NOT_FOUND,
        "user",
        "has no version 7",
    );
    assert_error(
        &api.get("/api/v1/datasets/orders/versions/x").await,
        StatusCode::BAD_REQUEST,
        "user",
        "not a version number",
    );
    assert_error(
        &api.post_text("/api/v1/datasets/users/versions", ORDERS_V1)
            .await,
        StatusCode::BAD_REQUEST,
        "user",
        "not \"users\"",
    );
    assert_error(
        &api.post_text(
            "/api/v1/datasets/orders/versions",
            "dataset: orders\nfields: 3\n",
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "fix the schema",
    );

    let (status, mode) = api.get("/api/v1/datasets/orders/mode").await;
    assert_eq!(
        (status, mode["mode"].clone()),
        (StatusCode::OK, json!("BACKWARD"))
    );
    let (status, set) = api
        .call(
            Method::PUT,
            "/api/v1/datasets/orders/mode",
            Some(json!({ "mode": "NONE" })),
        )
        .await;
    assert_eq!(
        (status, set["mode"].clone(), set["mode_is_default"].clone()),
        (StatusCode::OK, json!("NONE"), json!(false))
    );
    let (status, accepted) = api
        .post_text("/api/v1/datasets/orders/versions", ORDERS_BAD)
        .await;
    assert_eq!(
        (status, accepted["version"].clone()),
        (StatusCode::CREATED, json!(3)),
        "NONE checks nothing"
    );
    assert_error(
        &api.call(
            Method::PUT,
            "/api/v1/datasets/orders/mode",
            Some(json!({ "mode": "SIDEWAYS" })),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "SIDEWAYS",
    );
    assert_error(
        &api.get("/api/v1/datasets/nope/mode").await,
        StatusCode::NOT_FOUND,
        "user",
        "no dataset `nope`",
    );
    let (status, default) = api.get("/api/v1/registry/mode").await;
    assert_eq!(
        (status, default["mode"].clone()),
        (StatusCode::OK, json!("BACKWARD"))
    );
    let (status, changed) = api
        .call(
            Method::PUT,
            "/api/v1/registry/mode",
            Some(json!({ "mode": "FULL" })),
        )
        .await;
    assert_eq!(
        (status, changed["mode"].clone()),
        (StatusCode::OK, json!("FULL"))
    );
    assert_error(
        &api.call(Method::PUT, "/api/v1/registry/mode", Some(json!({})))
            .await,
        StatusCode::BAD_REQUEST,
        "user",
        "missing field `mode`",
    );
    Ok(())
}

/// A sample line's value, by its name and labels as written (`name{a="b",c="d"}`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

async fn metrics_are_the_store_numbers(api: &Api) -> TestResult {
    let seeded = seed(api).await?;
    let response = api.request(Method::GET, "/metrics").send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await?;
    assert!(text.ends_with("# EOF\n"), "{text}");
    let at =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        at(r#"sluice_batches{pipeline="orders",version="1",state="done"}"#),
        1.0
    );
    assert_eq!(
        at(r#"sluice_batches{pipeline="orders",version="1",state="quarantined"}"#),
        1.0
    );
    assert_eq!(
        at(r#"sluice_batches{pipeline="orders",version="1",state="leased"}"#),
        1.0
    );
    assert_eq!(
        at(r#"sluice_batches{pipeline="orders",version="1",state="pending"}"#),
        1.0
    );
    assert_eq!(
        at(r#"sluice_batches{pipeline="orders",version="2",state="pending"}"#),
        1.0
    );
    assert_eq!(
        at(r#"sluice_rows_in_total{pipeline="orders",version="1"}"#),
        10.0
    );
    assert_eq!(
        at(r#"sluice_rows_out_total{pipeline="orders",version="1"}"#),
        9.0
    );
    assert_eq!(
        at(r#"sluice_batch_duration_seconds_count{pipeline="orders",version="1"}"#),
        1.0
    );
    assert_eq!(
        at(r#"sluice_batch_duration_seconds_sum{pipeline="orders",version="1"}"#),
        0.3
    );
    assert_eq!(
        at(r#"sluice_batch_duration_seconds_bucket{le="0.25",pipeline="orders",version="1"}"#),
        0.0
    );
    assert_eq!(
        at(r#"sluice_batch_duration_seconds_bucket{le="0.5",pipeline="orders",version="1"}"#),
        1.0
    );
    assert_eq!(
        at(r#"sluice_batch_duration_seconds_bucket{le="+Inf",pipeline="orders",version="1"}"#),
        1.0
    );
    assert_eq!(at(r#"sluice_backlog_batches{pipeline="orders"}"#), 2.0);
    assert!(at(r#"sluice_oldest_pending_age_seconds{pipeline="orders"}"#) >= 0.0);
    assert_eq!(at("sluice_workers_alive"), 1.0);
    assert_eq!(
        at(
            r#"sluice_check_failures_total{pipeline="orders",check="not_null(amount)",level="error"}"#
        ),
        1.0
    );
    assert!(!text.contains("b-"), "no batch ids in labels:\n{text}");

    // once version 1 has nothing pending or leased it is not live: its series fold into
    // "retired" and its histogram goes
    let now = sluice_core::now_millis();
    let quick = RunReport {
        started_at: now - 20,
        finished_at: now,
        rows_in: 1,
        rows_out: 1,
        outcome: BatchOutcome::Committed,
        error: None,
        cpu_us: None,
        peak_memory_bytes: None,
    };
    assert!(api.store.complete(&seeded.leased, &quick).await?);
    let rest = api
        .store
        .lease(&LeaseRequest {
            worker: WorkerId::new("testhost", 1, 1),
            pipelines: None,
            limit: 5,
            lease_for: Duration::from_secs(600),
        })
        .await?;
    // Both run v2: a batch waiting in the queue is routed when first leased, to the version
    // current then (v2), whichever version was current when it was queued.
    assert_eq!(rest.len(), 2, "the two pending batches");
    assert!(rest.iter().all(|l| l.version == 2), "{rest:?}");
    for l in &rest {
        assert!(api.store.complete(l, &quick).await?);
    }
    let text = api
        .request(Method::GET, "/metrics")
        .send()
        .await?
        .text()
        .await?;
    let at =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert!(!text.contains(r#"version="1""#), "v1 is not live:\n{text}");
    assert_eq!(
        at(r#"sluice_batches{pipeline="orders",version="retired",state="done"}"#),
        2.0
    );
    assert_eq!(
        at(r#"sluice_batches{pipeline="orders",version="retired",state="quarantined"}"#),
        1.0
    );
    assert_eq!(
        at(r#"sluice_batches{pipeline="orders",version="2",state="done"}"#),
        2.0
    );
    assert_eq!(
        at(r#"sluice_rows_in_total{pipeline="orders",version="retired"}"#),
        11.0
    );
    assert_eq!(
        at(r#"sluice_batch_duration_seconds_count{pipeline="orders",version="2"}"#),
        2.0
    );
    assert_eq!(at(r#"sluice_backlog_batches{pipeline="orders"}"#), 0.0);
    assert_eq!(
        at(r#"sluice_oldest_pending_age_seconds{pipeline="orders"}"#),
        0.0
    );
    Ok(())
}

/// A measurement of `metric` of deployment `id`, as the leader's analysis records it.
async fn measure(
    api: &Api,
    fence: &sluice_store::Fence,
    id: i64,
    metric: &str,
    phase: &str,
    value: f64,
) -> TestResult {
    let m = sluice_store::NewMeasurement {
        deployment_id: id,
        analysis: "background".into(),
        metric: metric.into(),
        phase: phase.into(),
        value: Some(value),
        stable_value: Some(value / 2.0),
        inputs: "{}".into(),
        message: format!("{metric} measured {value}"),
    };
    assert!(api.store.record_measurement(fence, &m).await?);
    Ok(())
}

async fn deployments_start_move_and_end(api: &Api) -> TestResult {
    seed(api).await?;
    let deployments = "/api/v1/pipelines/orders/deployments";
    let v3 = spec("orders", "tables/orders").replace("amount FROM", "amount * 3 AS amount FROM")
        + "deploy:\n  strategy: recreate\n";
    std::fs::write(api.root.join("orders-v3.yaml"), &v3)?;

    // what to deploy must be said once, be valid, name this pipeline, stay under the roots
    assert_error(
        &api.post(deployments, json!({})).await,
        StatusCode::BAD_REQUEST,
        "user",
        "give the spec to deploy",
    );
    assert_error(
        &api.post(deployments, json!({ "spec": v3, "path": "orders-v3.yaml" }))
            .await,
        StatusCode::BAD_REQUEST,
        "user",
        "one of the two",
    );
    assert_error(
        &api.post(
            deployments,
            json!({ "spec": "pipeline: orders\nsource: 3\n" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "<request>",
    );
    assert_error(
        &api.post(
            deployments,
            json!({ "spec": spec("billing", "tables/billing") }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "not \"orders\"",
    );
    assert_error(
        &api.post(deployments, json!({ "path": "../../etc/passwd" }))
            .await,
        StatusCode::BAD_REQUEST,
        "user",
        "..",
    );
    assert_error(
        &api.post(deployments, json!({ "path": "missing.yaml" }))
            .await,
        StatusCode::BAD_REQUEST,
        "user",
        "not a spec file",
    );
    assert_error(
        &api.post(
            deployments,
            json!({ "path": "orders-v3.yaml", "strategy": "blue-green" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "recreate, rolling or canary",
    );
    assert_error(
        &api.post(
            deployments,
            json!({ "spec": v3, "started_by": "x".repeat(65) }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "started_by",
    );
    assert_error(
        &api.post(
            "/api/v1/pipelines/or%20ders/deployments",
            json!({ "spec": v3 }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "user",
        "not a valid name",
    );
    // no token, a wrong token
    let bare = api
        .client
        .post(format!("{}{deployments}", api.base))
        .json(&json!({ "path": "orders-v3.yaml" }));
    assert_error(
        &answer(bare).await,
        StatusCode::UNAUTHORIZED,
        "user",
        "needs the API token",
    );
    let wrong = api
        .client
        .post(format!("{}{deployments}", api.base))
        .bearer_auth("not-the-token-0123456789")
        .json(&json!({ "path": "orders-v3.yaml" }));
    assert_error(
        &answer(wrong).await,
        StatusCode::UNAUTHORIZED,
        "user",
        "not this server's",
    );
    assert!(
        api.store.active_deployment("orders").await?.is_none(),
        "refused ones start nothing"
    );

    // from a spec file under the root, the strategy overridden
    let (status, started) = api
        .post(
            deployments,
            json!({ "path": "orders-v3.yaml", "strategy": "rolling", "started_by": "ci job 42" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(started["started"], true);
    let d = &started["deployment"]["deployment"];
    let id = d["id"].as_i64().expect("an id");
    assert_eq!(
        (
            &d["stable_version"],
            &d["candidate_version"],
            &d["strategy"],
            &d["state"]
        ),
        (
            &json!(2),
            &json!(3),
            &json!("rolling"),
            &json!("progressing")
        ),
        "{started}"
    );
    assert_eq!(d["started_by"], "api: ci job 42");
    // a second one while it runs is refused, and says what to do
    let v4 = v3.replace("amount * 3", "amount * 4");
    assert_error(
        &api.post(deployments, json!({ "spec": v4 })).await,
        StatusCode::CONFLICT,
        "user",
        "has a deployment in progress",
    );
    // status: steps, weights, measurements
    let current = "/api/v1/pipelines/orders/deployments/current";
    let (status, view) = api.get(current).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["deployment"]["id"], id);
    assert_eq!(view["deployment"]["route"]["weight"], 0);
    assert_eq!(view["policy"]["strategy"], "rolling", "{view}");
    assert_eq!(view["metrics"], json!([]));
    let fence = api
        .store
        .lead("leader", "api-test", Duration::from_secs(60))
        .await?
        .expect("the leader lease");
    measure(api, &fence, id, "errors", "successful", 0.0).await?;
    measure(api, &fence, id, "errors", "failed", 0.25).await?;
    measure(api, &fence, id, "latency", "successful", 120.0).await?;
    let (_, view) = api.get(current).await;
    let errors = &view["metrics"][0];
    assert_eq!(
        (
            &errors["metric"],
            &errors["measured"],
            &errors["first_value"],
            &errors["last_value"]
        ),
        (&json!("errors"), &json!(2), &json!(0.0), &json!(0.25)),
        "{view}"
    );
    assert_eq!(errors["last_stable_value"], 0.125);
    assert_eq!(errors["phases"], json!({ "failed": 1, "successful": 1 }));
    assert_eq!(view["measurements"].as_array().map(Vec::len), Some(3));

    // /metrics: the phase, the weights of both live versions, the measurement phases
    let text = api
        .request(Method::GET, "/metrics")
        .send()
        .await?
        .text()
        .await?;
    let at =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        at(r#"sluice_deployment_phase{pipeline="orders",phase="progressing"}"#),
        1.0
    );
    assert_eq!(
        at(r#"sluice_deployment_phase{pipeline="orders",phase="idle"}"#),
        0.0
    );
    assert_eq!(
        at(r#"sluice_deployment_phase{pipeline="orders",phase="paused"}"#),
        0.0
    );
    assert_eq!(
        at(r#"sluice_deployment_weight{pipeline="orders",version="3",role="candidate"}"#),
        0.0
    );
    assert_eq!(
        at(r#"sluice_deployment_weight{pipeline="orders",version="2",role="stable"}"#),
        100.0
    );
    assert_eq!(
        at(
            r#"sluice_analysis_measurements{pipeline="orders",analysis="background",metric="errors",phase="failed"}"#
        ),
        1.0
    );
    assert_eq!(
        at(
            r#"sluice_analysis_measurements{pipeline="orders",analysis="background",metric="latency",phase="successful"}"#
        ),
        1.0
    );

    // commands: refused when the state does not take them, accepted when it does
    let command = |c: &str| format!("{current}/{c}");
    assert_error(
        &api.post(&command("resume"), json!({})).await,
        StatusCode::CONFLICT,
        "user",
        "does not apply now",
    );
    assert_error(
        &api.post(&command("promote"), json!({ "fast": true })).await,
        StatusCode::BAD_REQUEST,
        "user",
        "unknown field",
    );
    let (status, paused) = api.post(&command("pause"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{paused}");
    assert_eq!(paused["deployment"]["request"], "pause");
    let (status, promoted) = api.post(&command("promote"), json!({ "full": true })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{promoted}");
    assert_eq!(promoted["deployment"]["request"], "promote_full");
    for token in [None, Some("not-the-token-0123456789")] {
        let mut r = api.client.post(format!("{}{}", api.base, command("abort")));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        assert_error(&answer(r).await, StatusCode::UNAUTHORIZED, "user", "token");
    }
    assert_eq!(
        api.store.deployment(id).await?.expect("it").request,
        Some(sluice_store::DeploymentRequest::PromoteFull),
        "a refused command changes nothing"
    );
    // rollback with a deployment in progress aborts it
    let (status, rolled) = api
        .post("/api/v1/pipelines/orders/rollback", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rolled}");
    assert_eq!(rolled["deployment"]["request"], "abort");
    assert_eq!(rolled["deployment"]["route"]["weight"], 0);

    // the history, as `sluice history --json`
    let (status, history) = api.get(deployments).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let first = &history["deployments"][0];
    assert_eq!(first["deployment"]["id"], id);
    assert_eq!(first["metrics"][1]["metric"], "latency");
    assert_eq!(first["metrics"][1]["last_value"], 120.0);
    assert_error(
        &api.get(&format!("{deployments}?limit=0")).await,
        StatusCode::BAD_REQUEST,
        "user",
        "out of range",
    );

    // unknown pipelines are 404 everywhere; a known one without deployments too, for current
    for path in [
        "/api/v1/pipelines/nope/deployments".to_string(),
        "/api/v1/pipelines/nope/deployments/current".to_string(),
    ] {
        assert_error(&api.get(&path).await, StatusCode::NOT_FOUND, "user", "nope");
    }
    for path in [
        "/api/v1/pipelines/nope/deployments/current/promote",
        "/api/v1/pipelines/nope/deployments/current/abort",
        "/api/v1/pipelines/nope/rollback",
    ] {
        assert_error(
            &api.post(path, json!({})).await,
            StatusCode::NOT_FOUND,
            "user",
            "nope",
        );
    }
    // a spec for a new pipeline is its first version: current at once
    let (status, first) = api
        .post(
            "/api/v1/pipelines/billing/deployments",
            json!({ "spec": spec("billing", "tables/billing") }),
        )
        .await;
    assert_eq!(
        (status, &first["started"]),
        (StatusCode::OK, &json!(false)),
        "{first}"
    );
    assert_error(
        &api.get("/api/v1/pipelines/billing/deployments/current")
            .await,
        StatusCode::NOT_FOUND,
        "user",
        "has no deployments",
    );
    assert_error(
        &api.post(
            "/api/v1/pipelines/billing/deployments/current/pause",
            json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "user",
        "no deployment in progress",
    );
    assert_error(
        &api.post("/api/v1/pipelines/billing/rollback", json!({}))
            .await,
        StatusCode::CONFLICT,
        "user",
        "not promoted by a deployment",
    );
    let (status, again) = api
        .post(
            "/api/v1/pipelines/billing/deployments",
            json!({ "spec": spec("billing", "tables/billing") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert!(
        again["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("current version already")
    );
    Ok(())
}

async fn series_and_status(api: &Api) -> TestResult {
    seed(api).await?;
    let (status, series) = api
        .get("/api/v1/pipelines/orders/series?window=1h&step=1m")
        .await;
    assert_eq!(status, StatusCode::OK, "{series}");
    let points = series["points"].as_array().expect("points");
    // one committed and one quarantined run of v1, both in the last minute
    let runs: i64 = points.iter().map(|p| p["runs"].as_i64().unwrap_or(0)).sum();
    assert_eq!(runs, 2, "{series}");
    let committed: Vec<_> = points.iter().filter(|p| p["committed"] == 1).collect();
    assert_eq!(committed.len(), 1, "{series}");
    assert_eq!(committed[0]["version"], 1);
    assert_eq!(committed[0]["rows_out"], 9);
    assert_eq!(committed[0]["mean_duration_ms"], 300.0);
    assert_eq!(series["step_ms"], 60_000);
    for bad in ["window=0s", "step=1ms", "window=1h&step=1s", "step=soon"] {
        assert_error(
            &api.get(&format!("/api/v1/pipelines/orders/series?{bad}"))
                .await,
            StatusCode::BAD_REQUEST,
            "user",
            "",
        );
    }
    assert_error(
        &api.get("/api/v1/pipelines/nope/series").await,
        StatusCode::NOT_FOUND,
        "user",
        "nope",
    );
    let (status, overview) = api.get("/api/v1/status").await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert_eq!(overview["workers"][0]["host"], "testhost");
    assert_eq!(overview["pipelines"][0]["pipeline"], "orders");
    assert_eq!(overview["deployments"], json!([]));
    Ok(())
}

// ---- the dashboard's assets ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_without_a_token_and_its_data_needs_one() {
    let api = Api::start(Backend::Sqlite, WITH_TOKEN)
        .await
        .expect("sqlite");
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let r = api
            .client
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert!(header("content-security-policy").contains("default-src 'self'"));
        let body = r.text().await.expect("a body");
        let own = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !own.contains("http:") && !own.contains("https:") && !own.contains("//cdn"),
            "{path} loads nothing from elsewhere"
        );
    }
    // the pages' data is the API's, behind the token
    assert_error(
        &answer(api.client.get(format!("{}/api/v1/status", api.base))).await,
        StatusCode::UNAUTHORIZED,
        "user",
        "needs the API token",
    );
    api.finish().await;
}

// ---- security: each bypass, on SQLite ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_wrong_token_and_token_in_the_query_are_refused() {
    let api = Api::start(Backend::Sqlite, WITH_TOKEN)
        .await
        .expect("sqlite");
    let bare = |m: Method, path: &str| api.client.request(m, format!("{}{path}", api.base));
    assert_error(
        &answer(bare(Method::GET, "/api/v1/pipelines")).await,
        StatusCode::UNAUTHORIZED,
        "user",
        "needs the API token",
    );
    assert_error(
        &answer(bare(Method::GET, "/metrics")).await,
        StatusCode::UNAUTHORIZED,
        "user",
        "needs the API token",
    );
    let refused =
        answer(bare(Method::PUT, "/api/v1/registry/mode").json(&json!({"mode": "NONE"}))).await;
    assert_error(
        &refused,
        StatusCode::UNAUTHORIZED,
        "user",
        "this change needs the API token",
    );
    let response = bare(Method::GET, "/api/v1/pipelines")
        .send()
        .await
        .expect("answer");
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"sluice\"")
    );
    for wrong in [
        "test-token-0123456789abcdeX",
        "",
        "test-token-0123456789abcdef0",
        "Bearer",
    ] {
        let r = bare(Method::GET, "/api/v1/pipelines")
            .header("authorization", format!("Bearer {wrong}"));
        let got = answer(r).await;
        assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{wrong:?}: {}", got.1);
    }
    // other schemes and the token without a scheme
    for header in [
        format!("Basic {TOKEN}"),
        TOKEN.to_string(),
        format!("Token {TOKEN}"),
    ] {
        let got =
            answer(bare(Method::GET, "/api/v1/pipelines").header("authorization", header.clone()))
                .await;
        assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{header:?}");
    }
    // the token in the query string is refused even alongside the right header
    for query in [
        format!("token={TOKEN}"),
        format!("access_token={TOKEN}"),
        format!("api_token={TOKEN}"),
    ] {
        assert_error(
            &answer(bare(Method::GET, &format!("/api/v1/pipelines?{query}"))).await,
            StatusCode::BAD_REQUEST,
            "user",
            "token in the URL",
        );
        assert_error(
            &api.get(&format!("/api/v1/pipelines?{query}")).await,
            StatusCode::BAD_REQUEST,
            "user",
            "token in the URL",
        );
    }
    // the default mode did not change through any of it
    let (_, mode) = api.get("/api/v1/registry/mode").await;
    assert_eq!(mode["mode"], "BACKWARD");
    // probes need no token
    assert_eq!(answer(bare(Method::GET, "/health")).await.0, StatusCode::OK);
    assert_eq!(answer(bare(Method::GET, "/ready")).await.0, StatusCode::OK);
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_read_opens_reads_only() {
    let api = Api::start(
        Backend::Sqlite,
        Options {
            public_read: true,
            ..WITH_TOKEN
        },
    )
    .await
    .expect("sqlite");
    let bare = |m: Method, path: &str| api.client.request(m, format!("{}{path}", api.base));
    assert_eq!(
        answer(bare(Method::GET, "/api/v1/pipelines")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        answer(bare(Method::GET, "/metrics")).await.0,
        StatusCode::OK
    );
    assert_error(
        &answer(bare(Method::PUT, "/api/v1/registry/mode").json(&json!({"mode": "NONE"}))).await,
        StatusCode::UNAUTHORIZED,
        "user",
        "this change needs the API token",
    );
    assert_error(
        &answer(bare(Method::POST, "/api/v1/datasets/orders/versions").body(ORDERS_V1)).await,
        StatusCode::UNAUTHORIZED,
        "user",
        "needs the API token",
    );
    assert!(api.store.datasets().await.expect("datasets").is_empty());
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_checked_before_they_reach_the_store() {
    let api = Api::start(Backend::Sqlite, WITH_TOKEN)
        .await
        .expect("sqlite");
    seed(&api).await.expect("seeding");
    for name in [
        "orders'%20OR%20'1'='1",
        "orders%3B%20DROP%20TABLE%20tasks",
        "%2e%2e",
        "..%2f..%2fetc",
        "orders%00",
        "a.b",
        &"x".repeat(200),
    ] {
        for path in [
            format!("/api/v1/pipelines/{name}"),
            format!("/api/v1/pipelines/{name}/batches"),
            format!("/api/v1/pipelines/orders/batches/{name}"),
            format!("/api/v1/datasets/{name}"),
            format!("/api/v1/pipelines/orders/quarantine?batch={name}"),
        ] {
            let got = raw_get(&api, &path).await;
            assert_error(&got, StatusCode::BAD_REQUEST, "user", "is not a valid name");
        }
    }
    // plain `..` segments are not resolved by the server: they are no route
    let got = raw_get(&api, "/api/v1/pipelines/../../etc/passwd").await;
    assert_error(&got, StatusCode::NOT_FOUND, "user", "no route");
    // the store is as it was
    let (_, list) = api.get("/api/v1/pipelines").await;
    assert_eq!(list["pipelines"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        api.store.tasks("orders", None).await.expect("tasks").len(),
        5
    );
    let retry = api
        .post(
            "/api/v1/pipelines/orders/quarantine/retries",
            json!({ "batch": "x' OR '1'='1" }),
        )
        .await;
    assert_error(
        &retry,
        StatusCode::BAD_REQUEST,
        "user",
        "is not a valid name",
    );
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let api = Api::start(
        Backend::Sqlite,
        Options {
            max_body: 1024,
            ..WITH_TOKEN
        },
    )
    .await
    .expect("sqlite");
    let big = format!("{ORDERS_V1}# {}\n", "x".repeat(4096));
    assert_error(
        &api.post_text("/api/v1/datasets/orders/versions", &big)
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "user",
        "larger than this server takes",
    );
    let huge_spec = json!({ "spec": "y".repeat(10_000) });
    assert_error(
        &api.post("/api/v1/pipelines/orders/versions", huge_spec)
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "user",
        "larger",
    );
    assert!(api.store.datasets().await.expect("datasets").is_empty());
    let (status, _) = api
        .post_text("/api/v1/datasets/orders/versions", ORDERS_V1)
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a body under the limit goes through"
    );
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let api = Api::start(Backend::Sqlite, WITH_TOKEN)
        .await
        .expect("sqlite");
    assert_error(
        &api.get("/api/v2/pipelines").await,
        StatusCode::NOT_FOUND,
        "user",
        "no route GET /api/v2/pipelines",
    );
    assert_error(
        &api.call(Method::DELETE, "/api/v1/pipelines", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "user",
        "does not take DELETE",
    );
    api.finish().await;
}

#[tokio::test]
async fn without_a_token_the_server_stays_on_loopback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = sluice_store::open(&dir.path().join("s.db").display().to_string())
        .await
        .expect("store");
    let config = |listen: &str, token: Option<&str>| sluice_server::Config {
        listen: listen.parse().expect("address"),
        token: token.map(|t| sluice_server::Token::new(t).expect("token")),
        public_read: false,
        roots: sluice_app::roots::Roots::new(&[dir.path().display().to_string()]).expect("roots"),
        max_body: 1024,
    };
    let refused = sluice_server::Server::bind(config("0.0.0.0:0", None), store.clone()).await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("without an API token"), "{message}");
    assert!(
        sluice_server::Server::bind(config("[::]:0", None), store.clone())
            .await
            .is_err()
    );
    assert!(
        sluice_server::Server::bind(config("127.0.0.1:0", None), store.clone())
            .await
            .is_ok()
    );
    assert!(
        sluice_server::Server::bind(config("0.0.0.0:0", Some(TOKEN)), store)
            .await
            .is_ok()
    );
}

/// Without a token (loopback only) every request passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_without_a_token_needs_none() {
    let api = Api::start(
        Backend::Sqlite,
        Options {
            token: None,
            ..WITH_TOKEN
        },
    )
    .await
    .expect("sqlite");
    let (status, _) = api
        .post_text("/api/v1/datasets/orders/versions", ORDERS_V1)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    api.finish().await;
}

// ---- the OpenAPI document and the routes ----

/// Every route is documented, every documented route is routed, and each answers (not the
/// router's "no route" or "wrong method").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_the_route_table() {
    let doc: Value = serde_json::from_str(sluice_server::OPENAPI).expect("the document is JSON");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            documented.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut routed: Vec<(String, String)> = sluice_server::route_table()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    routed.sort();
    assert_eq!(documented, routed, "openapi.json and the router disagree");

    let api = Api::start(Backend::Sqlite, WITH_TOKEN)
        .await
        .expect("sqlite");
    seed(&api).await.expect("seeding");
    for (method, path) in &routed {
        let concrete = path
            .replace("{pipeline}", "orders")
            .replace("{dataset}", "orders")
            .replace("{batch}", "b-0")
            .replace("{version}", "1");
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let (status, body) = api.call(method.clone(), &concrete, Some(json!({}))).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.starts_with("no route") && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {concrete}: {status} {body}"
        );
    }
    api.finish().await;
}
