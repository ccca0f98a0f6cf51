//! Discovery: landed files become queued batches.

use std::collections::HashSet;
use std::sync::Arc;

use sluice_engine::Pipeline;
use sluice_store::{NewFile, NewTask, Store, StoreError};

/// What one discovery pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiscoveryReport {
    pub files: u64,
    pub batches: u64,
    /// Files that could not be sliced this time (I/O); they are tried again next pass.
    pub deferred: u64,
}

/// Why a discovery pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The store refused or is away ([`StoreError::is_outage`]): the pass runs again later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Listing the landing folder failed (a bad glob, a crashed listing task).
    #[error("{0}")]
    Listing(String),
}

/// Watches a pipeline's landing folder and queues new files' batches, pinned to the
/// pipeline's version. Several discoverers (processes, machines) may watch the same folder:
/// the store takes each file in once.
pub struct Discoverer {
    store: Arc<dyn Store>,
    pipeline: Arc<Pipeline>,
    known: HashSet<String>,
}

impl Discoverer {
    pub async fn new(
        store: Arc<dyn Store>,
        pipeline: Arc<Pipeline>,
    ) -> Result<Discoverer, sluice_store::StoreError> {
        let known = store
            .known_files(pipeline.name())
            .await?
            .into_iter()
            .collect();
        Ok(Discoverer {
            store,
            pipeline,
            known,
        })
    }

    /// One pass: list settled files, slice the new ones, queue their batches.
    pub async fn poll(&mut self) -> Result<DiscoveryReport, DiscoverError> {
        let pipeline = self.pipeline.clone();
        let files = tokio::task::spawn_blocking(move || pipeline.discover())
            .await
            .map_err(|e| DiscoverError::Listing(e.to_string()))?
            .map_err(DiscoverError::Listing)?;
        let mut report = DiscoveryReport::default();
        for file in files {
            if self.known.contains(&file.path) {
                continue;
            }
            let pipeline = self.pipeline.clone();
            let f = file.clone();
            let sliced = tokio::task::spawn_blocking(move || pipeline.batches_of(&f))
                .await
                .map_err(|e| DiscoverError::Listing(e.to_string()))?;
            let batches = match sliced {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %file.path, error = %e, "cannot slice file yet; will try again");
                    report.deferred += 1;
                    continue;
                }
            };
            let tasks: Vec<NewTask> = batches
                .into_iter()
                .map(|(batch_id, slice)| NewTask { batch_id, slice })
                .collect();
            let new_file = NewFile {
                pipeline: self.pipeline.name().to_string(),
                path: file.path.clone(),
                size: file.size as i64,
                modified_ms: file.modified_ms,
            };
            let added = self
                .store
                .register_file(
                    &new_file,
                    self.pipeline.version,
                    self.pipeline.spec.batch.max_attempts,
                    &tasks,
                )
                .await?;
            self.known.insert(file.path.clone());
            if added {
                report.files += 1;
                report.batches += tasks.len() as u64;
            }
        }
        Ok(report)
    }
}
