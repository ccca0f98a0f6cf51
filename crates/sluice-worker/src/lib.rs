//! The worker pool: how batches get from the queue to the table.
//!
//! Names follow River's: each **worker** is a lease loop that never holds more than one batch
//! (so a pool of N never takes more than its N free slots); its **executor** runs the batch
//! through the pinned pipeline version; the **completer** reports the result to the store,
//! fenced by the lease token; a **heartbeat** extends the lease while the batch runs; the
//! **rescuer** takes back leases that expired (a worker died or hung). A [`Discoverer`] turns
//! landed files into queued batches.
//!
//! A state store that is away (restarting, unreachable, a SQLite file locked past its busy
//! timeout) pauses the loops, not the process: each waits with a [`Backoff`] and reports to the
//! pool's [`StoreWatch`], which logs the outage once and gives up after
//! [`PoolConfig::store_outage_limit`]. A lease that cannot be settled (completed, failed,
//! released) is retried for the lease's length and otherwise left to expire: the rescuer takes
//! it back and the batch's second run finds its Delta commit. A table whose storage is full or
//! read-only is an outage too: the batch's lease goes back unspent and the worker pauses.
//!
//! Shutdown drains: on the cancel signal workers stop leasing, in-flight batches get `grace`
//! to finish, and what is still running after that is released back to the queue.
//! Exactly-once does not depend on the drain: a batch whose worker is killed mid-commit is
//! taken back by the rescuer and its second run finds the first run's Delta commit.

mod discover;
mod outage;
mod schema_registry;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use sluice_core::usage::{Metered, Usage};
use sluice_core::{BatchOutcome, ErrorKind, WorkerId, now_millis};
use sluice_engine::checks::{CheckResult, Level};
use sluice_engine::{BatchError, BatchResult, Pipeline, RunOptions};
use sluice_store::{
    BatchFile, CheckRecord, FailDisposition, Lease, LeaseRequest, RunReport, Split, Store,
    StoreError, WorkerBeat,
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use discover::{DiscoverError, Discoverer, DiscoveryReport};
pub use outage::{Backoff, StoreWatch};
pub use schema_registry::{Evolution, SchemaRegistry};

/// How a pool runs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Workers in this process.
    pub workers: usize,
    /// Lease length; heartbeats extend it every third of it.
    pub lease_for: Duration,
    /// Sleep between lease attempts when the queue is empty.
    pub poll: Duration,
    /// How long in-flight batches may run after a drain starts before they are released.
    pub grace: Duration,
    /// Only these pipelines (`None`: all pipelines in the store).
    pub pipelines: Option<Vec<String>>,
    /// Back-off before a failed batch runs again.
    pub retry_backoff: Duration,
    /// How long the state store may be away before the pool gives up and stops.
    pub store_outage_limit: Duration,
}

/// The default of [`PoolConfig::store_outage_limit`]: a store restart, a failover or a network
/// blip is ridden out; a store that is gone for good stops the process within the hour.
pub const DEFAULT_STORE_OUTAGE_LIMIT: Duration = Duration::from_secs(3600);

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 2,
            lease_for: Duration::from_secs(30),
            poll: Duration::from_millis(200),
            grace: Duration::from_secs(30),
            pipelines: None,
            retry_backoff: Duration::from_secs(1),
            store_outage_limit: DEFAULT_STORE_OUTAGE_LIMIT,
        }
    }
}

/// Totals of what a pool did, for the CLI's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolReport {
    pub committed: u64,
    pub already_committed: u64,
    pub failed: u64,
    pub quarantined: u64,
    pub released: u64,
    pub rows_in: i64,
    pub rows_out: i64,
}

/// Compiled pipeline versions, loaded from the store on first use: a batch runs with the
/// version it was pinned to when queued, whatever version is current now.
pub struct VersionCache {
    store: Arc<dyn Store>,
    compiled: Mutex<HashMap<(String, i64), Arc<Pipeline>>>,
}

impl VersionCache {
    pub fn new(store: Arc<dyn Store>) -> VersionCache {
        VersionCache {
            store,
            compiled: Mutex::new(HashMap::new()),
        }
    }

    /// Seeds the cache with a pipeline compiled by the caller (saves compiling it twice).
    pub async fn insert(&self, pipeline: Arc<Pipeline>) {
        self.compiled
            .lock()
            .await
            .insert((pipeline.name().to_string(), pipeline.version), pipeline);
    }

    pub async fn get(&self, pipeline: &str, version: i64) -> Result<Arc<Pipeline>, LoadError> {
        let key = (pipeline.to_string(), version);
        if let Some(p) = self.compiled.lock().await.get(&key) {
            return Ok(p.clone());
        }
        let stored = self
            .store
            .pipeline_version(pipeline, version)
            .await?
            .ok_or_else(|| {
                LoadError::Other(format!(
                    "pipeline {pipeline} has no version {version} in the store"
                ))
            })?;
        let compiled = Pipeline::from_stored(&stored.spec, &stored.base_dir, version)
            .await
            .map_err(|e| LoadError::Other(format!("compiling {pipeline}@{version}: {e}")))?;
        let compiled = Arc::new(compiled);
        self.compiled.lock().await.insert(key, compiled.clone());
        Ok(compiled)
    }
}

/// Why a pipeline version could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// The longest a worker waits between tries while its sink table cannot be opened.
const MAX_SINK_PAUSE: Duration = Duration::from_secs(60);

/// A pool of workers sharing one store.
pub struct WorkerPool {
    store: Arc<dyn Store>,
    config: PoolConfig,
    versions: Arc<VersionCache>,
    registry: Arc<dyn SchemaRegistry>,
    host: String,
    report: Mutex<PoolReport>,
    watch: Arc<StoreWatch>,
    /// Why workers are pausing for the table's storage, while they are (logged once a pause).
    sink_outage: std::sync::Mutex<Option<String>>,
}

impl WorkerPool {
    /// A pool over `store`; `registry` takes the versions `unknown_columns: evolve` proposes.
    pub fn new(
        store: Arc<dyn Store>,
        config: PoolConfig,
        versions: Arc<VersionCache>,
        registry: Arc<dyn SchemaRegistry>,
    ) -> Self {
        let host = sluice_core::hostname();
        WorkerPool {
            store,
            watch: Arc::new(StoreWatch::new(config.store_outage_limit)),
            config,
            versions,
            registry,
            host,
            report: Mutex::new(PoolReport::default()),
            sink_outage: std::sync::Mutex::new(None),
        }
    }

    /// The store's health as this pool sees it; share it with the process's other loops
    /// (discovery) so an outage is reported once and one limit applies.
    pub fn watch(&self) -> &Arc<StoreWatch> {
        &self.watch
    }

    /// What the workers are waiting for, if they are: the store, or the table's storage.
    pub fn waiting(&self) -> Option<String> {
        self.watch.waiting().or_else(|| {
            self.sink_outage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }

    /// Runs the workers and the rescuer until `stop` is cancelled, then drains.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> PoolReport {
        // A store away past the limit stops the pool as a signal would; the caller finds out
        // why from `watch().give_up_message()`.
        let stop = stop.child_token();
        {
            let stop = stop.clone();
            let gave_up = self.watch.gave_up().clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = gave_up.cancelled() => stop.cancel(),
                    _ = stop.cancelled() => {}
                }
            });
        }
        // Cancelled after the grace period: in-flight batches are abandoned and released.
        let abandon = CancellationToken::new();
        let mut handles = Vec::new();
        for slot in 0..self.config.workers {
            let pool = self.clone();
            let stop = stop.clone();
            let abandon = abandon.clone();
            handles.push(tokio::spawn(async move {
                pool.worker_loop(slot, stop, abandon).await
            }));
        }
        let rescuer = {
            let pool = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move { pool.rescuer_loop(stop).await })
        };
        stop.cancelled().await;
        let grace = self.config.grace;
        let all = futures::future::join_all(handles);
        tokio::pin!(all);
        tokio::select! {
            _ = &mut all => {}
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("grace period of {grace:?} over: releasing batches still running");
                abandon.cancel();
                all.await;
            }
        }
        rescuer.abort();
        self.report.lock().await.clone()
    }

    async fn beat(&self, worker: &WorkerId, state: &str) {
        let beat = WorkerBeat {
            worker: worker.clone(),
            host: self.host.clone(),
            pid: std::process::id() as i64,
            state: state.to_string(),
        };
        match self.store.worker_heartbeat(&beat).await {
            Ok(()) => self.watch.succeeded(),
            Err(e) => self.store_failed(&e, "recording the worker's state"),
        }
    }

    /// Reports a failed store call: an outage to the watch (which logs it once), anything
    /// else here.
    fn store_failed(&self, e: &StoreError, what: &str) {
        if !self.watch.failed(what, e) {
            tracing::warn!(error = %e, "{what} failed");
        }
    }

    /// Runs a store call that settles a lease (complete, fail, release) until it goes through,
    /// waiting out an outage for up to a lease's length. Past that the lease has expired
    /// anyway: the rescuer takes it back and the batch's next run finds its commit. The lease
    /// token fences every call, so a late success after expiry changes nothing.
    async fn settle<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = Instant::now() + self.config.lease_for;
        let mut backoff = Backoff::default();
        loop {
            match call().await {
                Ok(v) => {
                    self.watch.succeeded();
                    return Ok(v);
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    if !self.watch.failed(what, &e)
                        || Instant::now() + wait > deadline
                        || self.watch.gave_up().is_cancelled()
                    {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn worker_loop(&self, slot: usize, stop: CancellationToken, abandon: CancellationToken) {
        let worker = WorkerId::new(&self.host, std::process::id(), slot);
        self.beat(&worker, "running").await;
        let mut last_beat = std::time::Instant::now();
        let mut paused = Duration::ZERO;
        let mut store_backoff = Backoff::default();
        while !stop.is_cancelled() {
            if last_beat.elapsed() > Duration::from_secs(5) {
                self.beat(&worker, "running").await;
                last_beat = std::time::Instant::now();
            }
            let req = LeaseRequest {
                worker: worker.clone(),
                pipelines: self.config.pipelines.clone(),
                limit: 1,
                lease_for: self.config.lease_for,
            };
            let leases = match self.store.lease(&req).await {
                Ok(l) => {
                    self.watch.succeeded();
                    store_backoff.reset();
                    l
                }
                Err(e) if self.watch.failed("leasing a batch", &e) => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(store_backoff.next_wait()) => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%worker, error = %e, "leasing failed; backing off");
                    Vec::new()
                }
            };
            if leases.is_empty() {
                let jitter = rand::random_range(0..=self.config.poll.as_millis() as u64 / 2);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(self.config.poll + Duration::from_millis(jitter)) => {}
                }
                continue;
            }
            let mut waiting = None;
            for lease in leases {
                if let Some(why) = self.execute(&lease, &abandon).await {
                    waiting = Some(why);
                }
            }
            if let Some(why) = waiting {
                // Back off while the sink is away: 1 s, doubling, at most a minute.
                paused = (paused * 2).clamp(Duration::from_secs(1), MAX_SINK_PAUSE);
                self.beat(&worker, &why).await;
                last_beat = std::time::Instant::now();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(paused) => {}
                }
            } else {
                if !paused.is_zero() {
                    self.beat(&worker, "running").await;
                    last_beat = std::time::Instant::now();
                }
                paused = Duration::ZERO;
            }
        }
        self.beat(&worker, "stopped").await;
    }

    /// Runs one leased batch with a heartbeat beside it and reports the result. `Some(why)`
    /// (`waiting: ...`, for the worker's state) when the batch could not run for an outage of
    /// the table's storage or of the store: the lease went back unspent and the worker should
    /// wait before leasing again.
    async fn execute(&self, lease: &Lease, abandon: &CancellationToken) -> Option<String> {
        let started_at = now_millis();
        let heartbeat = self.heartbeat(lease);
        let run = async {
            // A version that cannot be loaded here may load later (store back, spec fixed):
            // retry, and quarantine after max_attempts like any other failure.
            let pipeline = self
                .versions
                .get(&lease.pipeline, lease.version)
                .await
                .map_err(|e| {
                    let outage = match &e {
                        LoadError::Store(s) if s.is_outage() => {
                            self.watch.failed("loading the batch's pipeline version", s);
                            Some("waiting: state store unreachable".to_string())
                        }
                        _ => None,
                    };
                    BatchError {
                        kind: ErrorKind::External,
                        quarantine: false,
                        message: e.to_string(),
                        rows_in: 0,
                        checks: Vec::new(),
                        new_columns: Vec::new(),
                        outage,
                    }
                })?;
            let recent = self.recent_rows(&pipeline).await;
            // A replaced file's new batches remove its earlier rows in their commit.
            let superseded = self
                .store
                .superseded_files(&lease.batch_id)
                .await
                .map_err(|e| {
                    let outage = e.is_outage().then(|| {
                        self.watch
                            .failed("looking up the rows this batch replaces", &e);
                        "waiting: state store unreachable".to_string()
                    });
                    BatchError {
                        kind: ErrorKind::External,
                        quarantine: false,
                        message: format!("looking up the rows this batch replaces: {e}"),
                        rows_in: 0,
                        checks: Vec::new(),
                        new_columns: Vec::new(),
                        outage,
                    }
                })?;
            // The task's generation counts repairs from 0; runs count from 1.
            let opts = RunOptions {
                generation: lease.generation + 1,
                recent_rows: recent,
                superseded,
                grouped: lease.grouped.clone(),
            };
            let result = match lease.split {
                Some(split) => self.run_split(&pipeline, lease, split, opts).await,
                None => {
                    pipeline
                        .run_batch_with(&lease.batch_id, &lease.slice, opts)
                        .await
                }
            };
            match result {
                Err(mut e) if !e.new_columns.is_empty() => {
                    e.message = self.propose_version(&pipeline, &e).await;
                    Err(e)
                }
                other => other,
            }
        };
        // What the batch costs is charged to it while its code runs on a thread (several
        // batches share this runtime's threads); see `sluice_core::usage`.
        let usage = Arc::new(Usage::new());
        let run = Metered::new(usage.clone(), run);
        // A panic in a dependency must not take the worker with it: the batch fails like any
        // other (logged once by the panic hook) and runs again.
        let run = std::panic::AssertUnwindSafe(run)
            .catch_unwind()
            .map(|r| r.unwrap_or_else(|panic| Err(panicked(panic))));
        let result = tokio::select! {
            r = run => Some(r),
            _ = abandon.cancelled() => None,
        };
        heartbeat.abort();
        let Some(result) = result else {
            self.give_back(lease).await;
            return None;
        };
        let finished_at = now_millis();
        let checks = match &result {
            Ok(r) => &r.checks,
            Err(e) => &e.checks,
        };
        self.record_checks(lease, checks).await;
        match result {
            Ok(r) => {
                self.record_files(lease, &r).await;
                let report = RunReport {
                    started_at,
                    finished_at,
                    rows_in: r.rows_in,
                    rows_out: r.rows_out,
                    outcome: r.outcome,
                    error: None,
                    cpu_us: usage.cpu_us(),
                    peak_memory_bytes: usage.peak_memory_bytes(),
                };
                let completed = self
                    .settle("completing a batch", || self.store.complete(lease, &report))
                    .await;
                self.sink_back();
                match completed {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(batch = %lease.batch_id, "lease was lost before completion; the batch's commit stands and its new holder will find it")
                    }
                    Err(e) => {
                        tracing::warn!(batch = %lease.batch_id, error = %e, "completing failed; the batch will be re-run and found committed")
                    }
                }
                let mut rep = self.report.lock().await;
                match r.outcome {
                    BatchOutcome::AlreadyCommitted => rep.already_committed += 1,
                    _ => rep.committed += 1,
                }
                rep.rows_in += r.rows_in;
                rep.rows_out += r.rows_out;
            }
            Err(BatchError {
                kind,
                quarantine,
                message,
                rows_in,
                outage,
                ..
            }) => {
                if let Some(why) = outage {
                    self.sink_away(&why, &message);
                    self.give_back(lease).await;
                    return Some(why);
                }
                // An outage of the table's store (or credentials missing on this machine) is
                // no fault of the batch: give the lease back without spending an attempt, so
                // the backlog is not quarantined batch by batch while the store is away.
                if kind == ErrorKind::External && !quarantine && self.sink_unreachable(lease).await
                {
                    let why = "waiting: sink table unreachable";
                    self.sink_away(why, &message);
                    self.give_back(lease).await;
                    return Some(why.to_string());
                }
                let report = RunReport {
                    started_at,
                    finished_at,
                    rows_in,
                    rows_out: 0,
                    outcome: if quarantine {
                        BatchOutcome::Quarantined
                    } else {
                        BatchOutcome::Failed
                    },
                    error: Some(message.clone()),
                    cpu_us: usage.cpu_us(),
                    peak_memory_bytes: usage.peak_memory_bytes(),
                };
                let disposition = self
                    .settle("recording a batch's failure", || {
                        self.store
                            .fail(lease, &report, kind, quarantine, self.config.retry_backoff)
                    })
                    .await;
                let mut rep = self.report.lock().await;
                match disposition {
                    Ok(FailDisposition::Quarantined) => {
                        tracing::warn!(batch = %lease.batch_id, "quarantined: {message}");
                        rep.quarantined += 1
                    }
                    Ok(_) => {
                        tracing::info!(batch = %lease.batch_id, attempt = lease.attempt, "failed, will retry: {message}");
                        rep.failed += 1
                    }
                    Err(e) => {
                        tracing::warn!(batch = %lease.batch_id, error = %e, "recording a failure failed; the rescuer will take the batch back")
                    }
                }
            }
        }
        None
    }

    /// A batch routed by key: its rows split between the lease's version (stable) and the
    /// candidate by the candidate's `deploy.route_key`, both parts in one commit. Reported as
    /// one run of the batch (rows and checks of both sides).
    async fn run_split(
        &self,
        stable: &Pipeline,
        lease: &Lease,
        split: Split,
        opts: RunOptions,
    ) -> Result<BatchResult, BatchError> {
        let failed = |message: String| BatchError {
            kind: ErrorKind::External,
            quarantine: false,
            message,
            rows_in: 0,
            checks: Vec::new(),
            new_columns: Vec::new(),
            outage: None,
        };
        let candidate = self
            .versions
            .get(&lease.pipeline, split.candidate_version)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let Some(column) = candidate
            .spec
            .deploy
            .as_ref()
            .and_then(|d| d.route_key.clone())
        else {
            return Err(failed(format!(
                "batch {} is routed by key but {}@{} has no deploy.route_key",
                lease.batch_id, lease.pipeline, split.candidate_version
            )));
        };
        let route = sluice_engine::route::Route::new(&column, split.percent)
            .map_err(|e| failed(format!("route_key {column}: {e}")))?;
        let r = sluice_engine::route::run_batch_split(
            stable,
            &candidate,
            &route,
            &lease.batch_id,
            &lease.slice,
            opts,
        )
        .await?;
        let mut checks = r.stable.checks;
        checks.extend(r.candidate.checks);
        Ok(BatchResult {
            rows_in: r.stable.rows_in + r.candidate.rows_in,
            rows_out: r.stable.rows_out + r.candidate.rows_out,
            outcome: r.outcome,
            duration_ms: r.stable.duration_ms.max(r.candidate.duration_ms),
            checks,
            table_version: r.table_version,
            added: r.added,
            removed: Vec::new(),
        })
    }

    /// The table's storage (or the store) kept a batch from running: logged once a pause.
    fn sink_away(&self, why: &str, message: &str) {
        let mut outage = self.sink_outage.lock().unwrap_or_else(|p| p.into_inner());
        if outage.is_none() {
            tracing::warn!(
                "{why}; batches go back to the queue unspent and workers pause: {message}"
            );
            *outage = Some(why.to_string());
        }
    }

    /// A batch committed: a pause for the table's storage, if there was one, is over.
    fn sink_back(&self) {
        let mut outage = self.sink_outage.lock().unwrap_or_else(|p| p.into_inner());
        if outage.take().is_some() {
            tracing::warn!("the sink table takes commits again; resuming");
        }
    }

    /// Records the data files a batch's commit added, so a later commit can remove exactly
    /// them (a replaced file's old rows). Before completing: a worker that dies in between
    /// leaves the batch to a re-run, which finds its commit and records them then.
    async fn record_files(&self, lease: &Lease, r: &sluice_engine::BatchResult) {
        if r.added.is_empty() {
            return;
        }
        let files: Vec<BatchFile> = r
            .added
            .iter()
            .map(|f| BatchFile {
                pipeline: lease.pipeline.clone(),
                batch_id: lease.batch_id.clone(),
                // -1: an earlier run's commit whose version was not found (`added_earlier`).
                table_version: r.table_version.unwrap_or(-1),
                data_file: f.clone(),
            })
            .collect();
        if let Err(e) = self.store.record_batch_files(&files).await {
            tracing::warn!(batch = %lease.batch_id, error = %e, "recording the batch's data files failed; a later replacement of its file cannot remove its rows");
        }
    }

    /// Returns a lease to the queue without spending its attempt, and counts it as released.
    async fn give_back(&self, lease: &Lease) {
        let released = self
            .settle("releasing a batch", || self.store.release(lease))
            .await;
        if let Err(e) = released {
            tracing::warn!(batch = %lease.batch_id, error = %e, "releasing failed; the rescuer will take it back");
        }
        self.report.lock().await.released += 1;
    }

    /// Whether the table the lease's pipeline version writes to cannot be opened right now.
    async fn sink_unreachable(&self, lease: &Lease) -> bool {
        match self.versions.get(&lease.pipeline, lease.version).await {
            Ok(pipeline) => pipeline.sink().describe().await.is_err(),
            Err(_) => false,
        }
    }

    /// `unknown_columns: evolve`: a file brought new columns. Proposes the source dataset's
    /// latest version plus those columns (nullable) to the registry, which takes it if it passes
    /// the dataset's mode. Returns the held batch's message: what was proposed, what the
    /// registry said, and what to do next.
    async fn propose_version(&self, pipeline: &Pipeline, e: &BatchError) -> String {
        let columns = e
            .new_columns
            .iter()
            .map(|(n, t)| format!("{n} ({t})"))
            .collect::<Vec<_>>()
            .join(", ");
        let Some(dataset) = pipeline
            .spec
            .source
            .dataset
            .as_deref()
            .map(|d| d.split('@').next().unwrap_or(d).to_string())
        else {
            return format!("{}; `evolve` needs source.dataset", e.message);
        };
        let head = e.message.split(": new columns").next().unwrap_or_default();
        match self.registry.evolve(&dataset, &e.new_columns).await {
            Ok(Evolution::Has { version: v, mode }) => format!(
                "{head}: new columns {columns}: {dataset}@{v} has them (registered, {mode}-compatible); start the pipeline again to read {dataset}@{v}, then `sluice retry` the held batches",
            ),
            Ok(Evolution::Refused { mode, violations }) => format!(
                "{head}: new columns {columns}: adding them to {dataset} breaks its {mode} mode ({}); declare them in a compatible version or set unknown_columns to rescue",
                violations
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Err(err) => format!(
                "{}; proposing a new version of {dataset} failed: {err}",
                e.message
            ),
        }
    }

    /// Row counts of the pipeline's latest published batches, newest first, when a volume
    /// check wants them. Without history the check waits; it does not fail the batch.
    async fn recent_rows(&self, pipeline: &Pipeline) -> Vec<u64> {
        let wanted = pipeline.history_wanted();
        if wanted == 0 {
            return Vec::new();
        }
        match self
            .store
            .batch_runs(pipeline.name(), wanted as i64 * 4)
            .await
        {
            Ok(runs) => runs
                .into_iter()
                .filter(|r| r.outcome == BatchOutcome::Committed)
                .take(wanted)
                .map(|r| r.rows_out.max(0) as u64)
                .collect(),
            Err(e) => {
                self.store_failed(&e, "reading batch history for volume checks");
                Vec::new()
            }
        }
    }

    /// Stores the checks' measurements of a run, per pipeline version. A failure to record
    /// them loses history, not data: it is logged and the batch goes on.
    async fn record_checks(&self, lease: &Lease, checks: &[CheckResult]) {
        if checks.is_empty() {
            return;
        }
        let records: Vec<CheckRecord> = checks
            .iter()
            .map(|c| CheckRecord {
                pipeline: lease.pipeline.clone(),
                version: lease.version,
                batch_id: lease.batch_id.clone(),
                check: c.name.clone(),
                kind: c.kind.clone(),
                level: match c.level {
                    Level::Pass => "pass",
                    Level::Warn => "warn",
                    Level::Error => "error",
                }
                .to_string(),
                considered: c.considered as i64,
                failing: c.failing as i64,
                dropped: c.dropped as i64,
                detail: c.detail.clone(),
                recorded_at: 0,
            })
            .collect();
        if let Err(e) = self.store.record_checks(&records).await {
            self.store_failed(&e, "recording check results");
        }
    }

    fn heartbeat(&self, lease: &Lease) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let watch = self.watch.clone();
        let lease_for = self.config.lease_for;
        let batch = lease.batch_id.clone();
        let token = lease.token.clone();
        tokio::spawn(async move {
            let every = (lease_for / 3).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(every).await;
                match store.heartbeat(&batch, &token, lease_for).await {
                    Ok(true) => watch.succeeded(),
                    Ok(false) => {
                        tracing::warn!(%batch, "lease lost while running; finishing anyway (the commit is idempotent)");
                        return;
                    }
                    Err(e) if watch.failed("extending a lease", &e) => {}
                    Err(e) => tracing::warn!(%batch, error = %e, "heartbeat failed"),
                }
            }
        })
    }

    async fn rescuer_loop(&self, stop: CancellationToken) {
        let every =
            (self.config.lease_for / 2).clamp(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.store.rescue_expired().await {
                Ok(n) => {
                    self.watch.succeeded();
                    if n > 0 {
                        tracing::info!("took back {n} expired lease(s)");
                    }
                }
                Err(e) => self.store_failed(&e, "rescuing expired leases"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// A batch's run that panicked, as a failure to retry.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> BatchError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    BatchError {
        kind: ErrorKind::Internal,
        quarantine: false,
        message: format!("internal error: the batch's run crashed ({what}); it runs again"),
        rows_in: 0,
        checks: Vec::new(),
        new_columns: Vec::new(),
        outage: None,
    }
}
