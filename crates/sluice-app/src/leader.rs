//! Leader duties: discovery of every pipeline, the deployment controller and the delivery of
//! its webhooks ([`sluice_deploy::Notifier`]), done by whichever
//! process holds the store's leader lease (`sluice run`, `sluice worker`, `sluice serve
//! --workers`). Another process takes them over when the holder's lease expires, so a pipeline
//! keeps running when the process that started it dies.
//!
//! The lease is a row with an epoch ([`sluice_store::Store::lead`]); every controller write
//! carries the [`Fence`] and is applied only while it still holds, so a leader that stalls past
//! its expiry (GC pause, SIGSTOP, a network partition) cannot write after its successor took
//! over. Discovery needs no fence: the store takes each file in once, whoever offers it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_deploy::{Controller, Notifier};
use sluice_store::{Fence, Store, StoreError};
use sluice_worker::{DiscoverError, Discoverer, DiscoveryReport, VersionCache};

/// How often the leader sends the webhooks' due deliveries.
const DELIVERY_EVERY: Duration = Duration::from_secs(1);

/// How long a leader's lease lasts unless renewed (every tick renews it).
pub const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(15);

/// One process's side of the leader duties.
pub struct Duties {
    store: Arc<dyn Store>,
    versions: Arc<VersionCache>,
    controller: Controller,
    /// Webhook deliveries run beside the other duties (a slow URL must not hold discovery or
    /// the controller); one pass at a time.
    notifier: Notifier,
    delivery: Option<tokio::task::JoinHandle<()>>,
    /// When the last delivery pass started.
    delivered_at: Option<std::time::Instant>,
    holder: String,
    lease: Duration,
    /// Only these pipelines are discovered (`None`: all in the store).
    pipelines: Option<Vec<String>>,
    /// A pipeline the caller discovers itself (`sluice run` watches its own spec's folder).
    skip: Option<String>,
    discoverers: HashMap<String, (i64, Discoverer)>,
    fence: Option<Fence>,
}

/// What a tick of the duties did.
#[derive(Debug, Default)]
pub struct DutyReport {
    /// Whether this process held the lease for the tick.
    pub leader: bool,
    /// Discovery per pipeline (only when leader).
    pub discovered: HashMap<String, DiscoveryReport>,
}

impl Duties {
    pub fn new(
        store: Arc<dyn Store>,
        versions: Arc<VersionCache>,
        pipelines: Option<Vec<String>>,
        lease: Duration,
    ) -> Duties {
        let holder = format!(
            "{}:{}:{:08x}",
            sluice_core::hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        Duties {
            controller: Controller::new(store.clone(), versions.clone()),
            notifier: Notifier::new(store.clone()),
            delivery: None,
            // The first pass a second in, once the process has settled into its work.
            delivered_at: Some(std::time::Instant::now()),
            store,
            versions,
            holder,
            lease,
            pipelines,
            skip: None,
            discoverers: HashMap::new(),
            fence: None,
        }
    }

    /// Leaves `pipeline`'s discovery to the caller.
    pub fn without(mut self, pipeline: &str) -> Duties {
        self.skip = Some(pipeline.to_string());
        self
    }

    /// Who this process is to the store's leadership row.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The fence held after the last tick, if this process is the leader.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// Takes or renews the lease; as leader, discovers and moves deployments on. A store
    /// error is returned for the caller's outage handling; a pipeline that cannot be
    /// discovered (its spec no longer compiles here, its folder unreadable) is logged and the
    /// others go on.
    pub async fn tick(&mut self) -> Result<DutyReport, StoreError> {
        let fence = self
            .store
            .lead(sluice_deploy::DUTY, &self.holder, self.lease)
            .await?;
        match (&self.fence, &fence) {
            (None, Some(f)) => {
                tracing::info!(
                    epoch = f.epoch,
                    "took the leader duties (discovery, deployments)"
                )
            }
            (Some(_), None) => {
                tracing::warn!("lost the leader duties to another process; it does them now")
            }
            _ => {}
        }
        self.fence = fence;
        let mut report = DutyReport::default();
        let Some(fence) = self.fence.clone() else {
            return Ok(report);
        };
        report.leader = true;
        report.discovered = self.discover().await?;
        match self.controller.tick(&fence).await {
            Ok(_) => {}
            Err(sluice_deploy::ControllerError::Store(e)) => return Err(e),
            Err(e) => tracing::warn!("deployment controller: {e}"),
        }
        // A pass a second at the most (back-offs start at 1s): the leader ticks far more often
        // under a short --poll, and the passes should not crowd the store's connections.
        let due = self
            .delivered_at
            .is_none_or(|t| t.elapsed() >= DELIVERY_EVERY);
        if due && self.delivery.as_ref().is_none_or(|h| h.is_finished()) {
            self.delivered_at = Some(std::time::Instant::now());
            let notifier = self.notifier.clone();
            self.delivery = Some(tokio::spawn(async move {
                if let Err(e) = notifier.tick(&fence).await {
                    tracing::warn!("webhook deliveries: {e}; tried again next tick");
                }
            }));
        }
        Ok(report)
    }

    /// Gives the lease up (a clean shutdown), so another process takes over at once.
    pub async fn resign(&mut self) {
        // A delivery pass in flight finishes first (its requests are bounded by their
        // timeouts), so its outcome is recorded rather than left `sending`.
        if let Some(h) = self.delivery.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        if let Some(fence) = self.fence.take()
            && let Err(e) = self.store.resign(&fence).await
        {
            tracing::debug!(error = %e, "resigning the leader duties failed; the lease expires");
        }
    }

    async fn discover(&mut self) -> Result<HashMap<String, DiscoveryReport>, StoreError> {
        let mut out = HashMap::new();
        for p in self.store.pipelines().await? {
            if self
                .pipelines
                .as_ref()
                .is_some_and(|only| !only.contains(&p.name))
                || self.skip.as_ref() == Some(&p.name)
            {
                continue;
            }
            // Files are sliced by the current (stable) version's source; the router picks
            // each batch's version when it is leased.
            let stale = self
                .discoverers
                .get(&p.name)
                .is_none_or(|(v, _)| *v != p.current_version);
            if stale {
                let pipeline = match self.versions.get(&p.name, p.current_version).await {
                    Ok(pipeline) => pipeline,
                    Err(sluice_worker::LoadError::Store(e)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(pipeline = %p.name, "not discovering: {e}");
                        continue;
                    }
                };
                let d = Discoverer::new(self.store.clone(), pipeline).await?;
                self.discoverers
                    .insert(p.name.clone(), (p.current_version, d));
            }
            let Some((_, discoverer)) = self.discoverers.get_mut(&p.name) else {
                continue;
            };
            match discoverer.poll().await {
                Ok(found) => {
                    out.insert(p.name.clone(), found);
                }
                Err(DiscoverError::Store(e)) => return Err(e),
                Err(e) => tracing::warn!(pipeline = %p.name, "discovering files: {e}"),
            }
        }
        Ok(out)
    }
}
