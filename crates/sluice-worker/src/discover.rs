//! Discovery: landed files become queued batches, and files that change after they were taken
//! in are reported, fail the pipeline or are taken in again (`source.on_change`).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_engine::Pipeline;
use sluice_engine::source::{self, CutFrom, LandedFile, OnChange};
use sluice_engine::spec::{Compression, Format};
use sluice_store::{FileChange, FileUpdate, NewFile, NewTask, Store, StoreError, TakenFile};

/// What one discovery pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiscoveryReport {
    pub files: u64,
    pub batches: u64,
    /// Files that could not be sliced this time (I/O); they are tried again next pass.
    pub deferred: u64,
    /// Files taken in before whose new content was queued (`on_change: reprocess`).
    pub changed: u64,
    /// Under `on_change: fail`: why the pipeline queues nothing (a file changed after it was
    /// taken in). Nothing was queued in this pass.
    pub failed: Option<String>,
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

fn crashed(e: tokio::task::JoinError) -> DiscoverError {
    DiscoverError::Listing(e.to_string())
}

/// How a file differs from what was taken in of it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// The bytes taken in are still there; more follow them.
    Appended { detail: String },
    /// The bytes taken in are not there any more (or cannot be shown to be).
    Replaced { detail: String },
    /// Only the modification time changed: the content is the same.
    Touched,
}

/// Watches a pipeline's landing folder and queues new files' batches, pinned to the
/// pipeline's version. Several discoverers (processes, machines) may watch the same folder:
/// the store takes each file, and each change of it, in once.
pub struct Discoverer {
    store: Arc<dyn Store>,
    pipeline: Arc<Pipeline>,
    known: HashMap<String, TakenFile>,
}

impl Discoverer {
    pub async fn new(
        store: Arc<dyn Store>,
        pipeline: Arc<Pipeline>,
    ) -> Result<Discoverer, StoreError> {
        let mut d = Discoverer {
            store,
            pipeline,
            known: HashMap::new(),
        };
        d.reload().await?;
        Ok(d)
    }

    async fn reload(&mut self) -> Result<(), StoreError> {
        self.known = self
            .store
            .taken_files(self.pipeline.name())
            .await?
            .into_iter()
            .map(|f| (f.path.clone(), f))
            .collect();
        Ok(())
    }

    /// One pass: list settled files; look at the ones taken in before that changed; slice the
    /// new ones and queue their batches. Under `on_change: fail` a changed file makes the pass
    /// queue nothing.
    pub async fn poll(&mut self) -> Result<DiscoveryReport, DiscoverError> {
        let pipeline = self.pipeline.clone();
        let files = tokio::task::spawn_blocking(move || pipeline.discover())
            .await
            .map_err(crashed)?
            .map_err(DiscoverError::Listing)?;
        let mut report = DiscoveryReport::default();
        let mut new_files = Vec::new();
        let mut stale = false;
        for file in files {
            let Some(taken) = self.known.get(&file.path).cloned() else {
                new_files.push(file);
                continue;
            };
            stale |= !self.look_at(&taken, &file, &mut report).await?;
        }
        if stale {
            // Another discoverer took a change in first: see what it took.
            self.reload().await?;
        }
        if report.failed.is_some() {
            return Ok(report);
        }
        for file in new_files {
            self.take_in(&file, &mut report).await?;
        }
        Ok(report)
    }

    /// Deals with a file taken in before. False when the store's record moved on meanwhile.
    async fn look_at(
        &mut self,
        taken: &TakenFile,
        file: &LandedFile,
        report: &mut DiscoveryReport,
    ) -> Result<bool, DiscoverError> {
        let size = file.size as i64;
        if size == taken.size && file.modified_ms == taken.modified_ms {
            if taken.change.is_some() {
                // Back as it was taken in (restored): the change no longer stands.
                self.notice(taken, None).await?;
            }
            return Ok(true);
        }
        let policy = self.pipeline.on_change();
        if let Some(c) = &taken.change
            && c.size == size
            && c.modified_ms == file.modified_ms
            && c.action == policy.action()
        {
            // Noticed before: reported then, not again.
            if policy == OnChange::Fail {
                report.failed = Some(failure(&file.path, &c.detail));
            }
            return Ok(true);
        }
        let Some(change) = self.classify(taken, file).await? else {
            report.deferred += 1;
            return Ok(true);
        };
        match (change, policy) {
            (Change::Touched, _) => self.retake(taken, file, &Change::Touched, report).await,
            (Change::Appended { detail } | Change::Replaced { detail }, OnChange::Warn) => {
                let news = self.notice(taken, Some((file, &detail, policy))).await?;
                if news {
                    tracing::warn!(file = %file.path, "{detail} since it was taken in; the new content was not read (source.on_change: warn; `reprocess` reads it)");
                }
                Ok(true)
            }
            (Change::Appended { detail } | Change::Replaced { detail }, OnChange::Fail) => {
                let news = self.notice(taken, Some((file, &detail, policy))).await?;
                let message = failure(&file.path, &detail);
                if news {
                    tracing::error!("{message}");
                }
                report.failed = Some(message);
                Ok(true)
            }
            (change, OnChange::Reprocess) => self.retake(taken, file, &change, report).await,
        }
    }

    /// Whether the bytes taken in of `file` are still its first bytes.
    async fn classify(
        &self,
        taken: &TakenFile,
        file: &LandedFile,
    ) -> Result<Option<Change>, DiscoverError> {
        let (was, now) = (taken.size, file.size as i64);
        if now < taken.taken_bytes {
            return Ok(Some(Change::Replaced {
                detail: format!("{}: shrank from {was} to {now} bytes (replaced)", file.path),
            }));
        }
        let Some(sum) = taken.checksum.clone() else {
            return Ok(Some(Change::Replaced {
                detail: format!(
                    "{}: changed from {was} to {now} bytes; it was taken in before sluice kept checksums, so it counts as replaced",
                    file.path
                ),
            }));
        };
        // Parquet, and a compressed file (its appended bytes are no text of their own), can
        // only be taken in again whole.
        if self.pipeline.format() == Format::Parquet
            || self.pipeline.compression_of(&file.path) != Compression::None
        {
            return Ok(Some(Change::Replaced {
                detail: format!("{}: replaced ({was} -> {now} bytes)", file.path),
            }));
        }
        let path = file.path.clone();
        let len = taken.taken_bytes as u64;
        let read = tokio::task::spawn_blocking(move || source::checksum(&path, len))
            .await
            .map_err(crashed)?;
        let same = match read {
            Ok(s) => s.is_some_and(|s| s == sum),
            Err(e) => {
                tracing::warn!(file = %file.path, error = %e, "cannot read a changed file yet; will try again");
                return Ok(None);
            }
        };
        Ok(Some(match (same, now == was) {
            (false, _) => Change::Replaced {
                detail: format!(
                    "{}: replaced (its first {len} bytes differ from what was taken in; {was} -> {now} bytes)",
                    file.path
                ),
            },
            (true, true) => Change::Touched,
            (true, false) if now > was => Change::Appended {
                detail: format!("{}: grew from {was} to {now} bytes", file.path),
            },
            (true, false) => Change::Appended {
                detail: format!(
                    "{}: its unfinished last line changed ({was} -> {now} bytes)",
                    file.path
                ),
            },
        }))
    }

    /// Records a noticed change (or clears it); true if it is news.
    async fn notice(
        &mut self,
        taken: &TakenFile,
        change: Option<(&LandedFile, &str, OnChange)>,
    ) -> Result<bool, DiscoverError> {
        let change = change.map(|(file, detail, policy)| FileChange {
            size: file.size as i64,
            modified_ms: file.modified_ms,
            detail: detail.to_string(),
            action: policy.action().to_string(),
            noticed_at: 0,
        });
        let news = self
            .store
            .notice_file_change(self.pipeline.name(), &taken.path, change.as_ref())
            .await?;
        if let Some(t) = self.known.get_mut(&taken.path) {
            t.change = change;
        }
        Ok(news)
    }

    /// Takes a changed file's content in: an append's new complete lines, or a replacement's
    /// whole content (whose commits remove the earlier rows). False if another discoverer
    /// took this change in first.
    async fn retake(
        &mut self,
        taken: &TakenFile,
        file: &LandedFile,
        change: &Change,
        report: &mut DiscoveryReport,
    ) -> Result<bool, DiscoverError> {
        let (from, identity, generation) = match change {
            Change::Touched | Change::Appended { .. } => (
                CutFrom {
                    byte: taken.taken_bytes as u64,
                    row: taken.taken_rows as u64,
                    complete_lines: true,
                },
                format!(
                    "{}@{}+{}",
                    file.path,
                    taken.taken_bytes,
                    taken.checksum.as_deref().unwrap_or_default()
                ),
                taken.generation,
            ),
            Change::Replaced { .. } => (
                CutFrom {
                    complete_lines: true,
                    ..CutFrom::default()
                },
                String::new(), // named by the new content's checksum, below
                taken.generation + 1,
            ),
        };
        let Some((tasks, new)) = self.cut(file, from, identity).await? else {
            report.deferred += 1;
            return Ok(true);
        };
        let update = FileUpdate {
            file: new,
            based_on: (taken.taken_bytes, taken.checksum.clone(), taken.generation),
            generation,
        };
        let pipeline = &self.pipeline;
        let applied = self
            .store
            .take_in_change(
                &update,
                pipeline.version,
                pipeline.spec.batch.max_attempts,
                &tasks,
            )
            .await?;
        if !applied {
            return Ok(false);
        }
        match change {
            Change::Touched => {}
            Change::Appended { detail } => {
                tracing::info!(file = %file.path, "{detail}; queued {} batch(es) of the appended lines", tasks.len())
            }
            Change::Replaced { detail } => {
                tracing::info!(file = %file.path, "{detail}; queued {} batch(es) of its new content, whose commit removes its earlier rows", tasks.len())
            }
        }
        if !tasks.is_empty() {
            report.changed += 1;
            report.batches += tasks.len() as u64;
        }
        self.known
            .insert(file.path.clone(), now_taken(update.file, generation));
        Ok(true)
    }

    /// Cuts a file from `from` into tasks and says what is then taken in of it (bytes, rows,
    /// checksum). An empty `identity` names the content by its checksum (a replacement).
    /// `None` when the file cannot be read right now.
    async fn cut(
        &self,
        file: &LandedFile,
        from: CutFrom,
        identity: String,
    ) -> Result<Option<(Vec<NewTask>, NewFile)>, DiscoverError> {
        let pipeline = self.pipeline.clone();
        let f = file.clone();
        let cut = tokio::task::spawn_blocking(move || {
            let cut = pipeline.cut(&f, &from)?;
            let sum =
                source::checksum(&f.path, cut.end)?.ok_or_else(|| source::SourceError::Io {
                    file: f.path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file got shorter while it was read",
                    ),
                })?;
            Ok::<_, source::SourceError>((cut, sum))
        })
        .await
        .map_err(crashed)?;
        let (cut, sum) = match cut {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(file = %file.path, error = %e, "cannot slice file yet; will try again");
                return Ok(None);
            }
        };
        let identity = if identity.is_empty() {
            format!("{}#{sum}", file.path)
        } else {
            identity
        };
        let tasks = cut
            .slices
            .iter()
            .map(|slice| NewTask {
                batch_id: self.pipeline.batch_id(&identity, slice),
                slice: slice.clone(),
            })
            .collect();
        let new = NewFile {
            pipeline: self.pipeline.name().to_string(),
            path: file.path.clone(),
            size: file.size as i64,
            modified_ms: file.modified_ms,
            taken_bytes: cut.end as i64,
            taken_rows: (from.row + cut.rows) as i64,
            checksum: Some(sum),
        };
        Ok(Some((tasks, new)))
    }

    /// Takes a new file in: slices it and queues its batches.
    async fn take_in(
        &mut self,
        file: &LandedFile,
        report: &mut DiscoveryReport,
    ) -> Result<(), DiscoverError> {
        let from = CutFrom {
            complete_lines: self.pipeline.on_change() == OnChange::Reprocess,
            ..CutFrom::default()
        };
        let identity = format!("{}@{}", file.path, file.size);
        let Some((tasks, new_file)) = self.cut(file, from, identity).await? else {
            report.deferred += 1;
            return Ok(());
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
        if added {
            report.files += 1;
            report.batches += tasks.len() as u64;
            self.known.insert(file.path.clone(), now_taken(new_file, 0));
        } else {
            // Another discoverer took it in first: learn what it took.
            self.reload().await?;
        }
        Ok(())
    }
}

/// What the store now holds of a file just taken in.
fn now_taken(file: NewFile, generation: i64) -> TakenFile {
    TakenFile {
        path: file.path,
        size: file.size,
        modified_ms: file.modified_ms,
        taken_bytes: file.taken_bytes,
        taken_rows: file.taken_rows,
        checksum: file.checksum,
        generation,
        change: None,
    }
}

/// The pipeline's error under `on_change: fail`.
fn failure(path: &str, detail: &str) -> String {
    format!(
        "{detail} since it was taken in (source.on_change: fail): the pipeline queues nothing more; restore {path}, or land the new content under a new name, or set on_change to warn or reprocess and start again"
    )
}
