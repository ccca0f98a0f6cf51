//! Discovery: landed files become queued batches, and files that change after they were taken
//! in are reported, fail the pipeline or are taken in again (`source.on_change`).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::BatchSlice;
use sluice_engine::Pipeline;
use sluice_engine::source::{self, Cut, CutFrom, LandedFile, OnChange};
use sluice_engine::spec::{Compression, Format};
use sluice_store::{
    CutPart, FileChange, FileUpdate, NewFile, NewGroup, NewTask, Store, StoreError, TakenFile,
};

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
            if taken.cutting {
                self.resume_cut(&taken, &mut report).await?;
                continue;
            }
            stale |= !self.look_at(&taken, &file, &mut report).await?;
        }
        if stale {
            // Another discoverer took a change in first: see what it took.
            self.reload().await?;
        }
        if report.failed.is_some() {
            return Ok(report);
        }
        self.take_in_all(&new_files, &mut report).await?;
        Ok(report)
    }

    /// Takes new files in: each small one (all its rows in one slice) joins a group of small
    /// files, cut in path order and closed when the next file would take it past
    /// `batch.max_rows`, `max_files` or `max_bytes`; a group is one batch. Every discoverer
    /// groups the same listed files the same way, so their batch ids agree. A larger file is
    /// cut into batches of its own. Under `on_change: reprocess` every file has batches of its
    /// own: a replacement removes the data files its earlier batches wrote, which must hold
    /// that file's rows alone.
    async fn take_in_all(
        &mut self,
        files: &[LandedFile],
        report: &mut DiscoveryReport,
    ) -> Result<(), DiscoverError> {
        let batch = &self.pipeline.spec.batch;
        let (max_rows, max_files, max_bytes) = (batch.max_rows, batch.max_files, batch.max_bytes);
        if max_files <= 1 || self.pipeline.on_change() == OnChange::Reprocess {
            for file in files {
                self.take_in(file, report).await?;
            }
            return Ok(());
        }
        let mut group = Group::default();
        for file in files {
            let identity = format!("{}@{}", file.path, file.size);
            let (tasks, new_file) = match self
                .cut_new(file, CutFrom::default(), identity.clone(), None, report)
                .await?
            {
                NewCut::Whole(tasks, new_file) => (tasks, new_file),
                NewCut::Queued | NewCut::Deferred => continue,
            };
            // A slice of no rows stands for a file that cannot be read (a broken compressed
            // stream, an unreadable Parquet file): it fails alone, not with a group.
            let small = match tasks.as_slice() {
                [one] => {
                    file.size <= max_bytes
                        && one.slice.row_count > 0
                        && one.slice.row_count <= max_rows
                }
                _ => false,
            };
            if !small {
                self.register(&new_file, &tasks, report).await?;
                continue;
            }
            let slice = tasks[0].slice.clone();
            if !group.fits(&slice, file.size, max_rows, max_files, max_bytes) {
                self.register_group(std::mem::take(&mut group), report)
                    .await?;
            }
            group.push(identity, slice, new_file, file.size);
        }
        self.register_group(group, report).await
    }

    /// Queues a group of small files as one batch (a group of one file as that file's own
    /// batch, with the id it has always had).
    async fn register_group(
        &mut self,
        group: Group,
        report: &mut DiscoveryReport,
    ) -> Result<(), DiscoverError> {
        match group.files.len() {
            0 => return Ok(()),
            1 => {
                let task = NewTask {
                    batch_id: self
                        .pipeline
                        .batch_id(&group.identities[0], &group.slices[0]),
                    slice: group.slices[0].clone(),
                };
                return self.register(&group.files[0], &[task], report).await;
            }
            _ => {}
        }
        let batch = NewGroup {
            batch_id: self.pipeline.group_id(&group.identities, &group.slices),
            slices: group.slices,
        };
        let added = self
            .store
            .register_group(
                &group.files,
                self.pipeline.version,
                self.pipeline.spec.batch.max_attempts,
                &batch,
            )
            .await?;
        if added {
            report.files += group.files.len() as u64;
            report.batches += 1;
            for f in group.files {
                self.known.insert(f.path.clone(), now_taken(f, 0));
            }
        } else {
            // Another discoverer took one of them in first: learn what it took; the rest are
            // grouped again next pass.
            self.reload().await?;
        }
        Ok(())
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
                    // An appended part is named by its own identity: its slices count from 0.
                    index: 0,
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
            let sum = cut.checksum_of(&f.path)?;
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
        match self.cut_new(file, from, identity, None, report).await? {
            NewCut::Whole(tasks, new_file) => self.register(&new_file, &tasks, report).await,
            NewCut::Queued | NewCut::Deferred => Ok(()),
        }
    }

    /// Goes on with a first cut a discoverer left part-way (it died, or the file could not be
    /// read for a while): from the end of the last slice it queued, with the identity it
    /// started under, so the batches are the ones one whole cut makes.
    async fn resume_cut(
        &mut self,
        taken: &TakenFile,
        report: &mut DiscoveryReport,
    ) -> Result<(), DiscoverError> {
        let max_rows = self.pipeline.spec.batch.max_rows.max(1);
        let from = CutFrom {
            byte: taken.taken_bytes as u64,
            row: taken.taken_rows as u64,
            complete_lines: self.pipeline.on_change() == OnChange::Reprocess,
            // Every slice queued before is full.
            index: u32::try_from(taken.taken_rows as u64 / max_rows).unwrap_or(u32::MAX),
        };
        let file = LandedFile {
            path: taken.path.clone(),
            size: taken.size as u64,
            modified_ms: taken.modified_ms,
        };
        let identity = format!("{}@{}", taken.path, taken.size);
        tracing::info!(file = %taken.path, "going on with a cut left at byte {}", taken.taken_bytes);
        self.cut_new(&file, from, identity, Some(taken.taken_bytes), report)
            .await?;
        Ok(())
    }

    /// Cuts a new file (or goes on with a cut left part-way: `resumed` is where it stands) and
    /// queues each batch as soon as the scan finds its end, so a large file's first batches
    /// run long before it is scanned: the file is taken in with its first batch, marked
    /// `cutting`, and each further batch moves the take on, atomically with its queueing, so
    /// a discoverer that dies mid-scan leaves a take the next one goes on from. A file whose
    /// only full slice ends with it (a small file, which may be grouped) comes back
    /// [`NewCut::Whole`], not taken in.
    async fn cut_new(
        &mut self,
        file: &LandedFile,
        from: CutFrom,
        identity: String,
        resumed: Option<i64>,
        report: &mut DiscoveryReport,
    ) -> Result<NewCut, DiscoverError> {
        enum Found {
            Slice(BatchSlice),
            Done(Result<(Cut, String), source::SourceError>),
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pipeline = self.pipeline.clone();
        let f = file.clone();
        let scan = tokio::task::spawn_blocking(move || {
            let done = tx.clone();
            let cut = pipeline
                .cut_streaming(&f, &from, &mut |s| tx.send(Found::Slice(s.clone())).is_ok())
                .and_then(|cut| {
                    let sum = cut.checksum_of(&f.path)?;
                    Ok((cut, sum))
                });
            let _ = done.send(Found::Done(cut));
        });
        let (version, attempts) = (self.pipeline.version, self.pipeline.spec.batch.max_attempts);
        let name = self.pipeline.name().to_string();
        let taken = |bytes: u64, rows: u64, checksum: Option<String>| NewFile {
            pipeline: name.clone(),
            path: file.path.clone(),
            size: file.size as i64,
            modified_ms: file.modified_ms,
            taken_bytes: bytes as i64,
            taken_rows: rows as i64,
            checksum,
        };
        let pipeline = self.pipeline.clone();
        let tasks_of = |slices: &[BatchSlice]| -> Vec<NewTask> {
            slices
                .iter()
                .map(|s| NewTask {
                    batch_id: pipeline.batch_id(&identity, s),
                    slice: s.clone(),
                })
                .collect()
        };
        let mut based_on = resumed;
        let mut found: Vec<BatchSlice> = Vec::new();
        let mut queued = 0;
        while let Some(msg) = rx.recv().await {
            let (cut, sum) = match msg {
                Found::Slice(slice) => {
                    let small = based_on.is_none() && slice.byte_end >= file.size;
                    let end = (slice.byte_end, slice.row_start + slice.row_count);
                    found.push(slice);
                    if small {
                        continue; // it may be the file's only slice
                    }
                    let part = CutPart {
                        file: taken(end.0, end.1, None),
                        based_on,
                        last: false,
                    };
                    let tasks = tasks_of(&found[queued..]);
                    if !self
                        .store
                        .take_in_part(&part, version, attempts, &tasks)
                        .await?
                    {
                        // Taken in, or moved on, by another discoverer: stop scanning.
                        drop(rx);
                        let _ = scan.await;
                        self.reload().await?;
                        return Ok(NewCut::Queued);
                    }
                    if based_on.is_none() {
                        report.files += 1;
                    }
                    report.batches += tasks.len() as u64;
                    queued = found.len();
                    based_on = Some(part.file.taken_bytes);
                    continue;
                }
                Found::Done(Ok(done)) => done,
                Found::Done(Err(e)) => {
                    tracing::warn!(file = %file.path, error = %e, "cannot slice file yet; will try again");
                    report.deferred += 1;
                    if based_on.is_some() {
                        // The take stands where the last batch left it; the next pass goes on.
                        self.reload().await?;
                    }
                    return Ok(NewCut::Deferred);
                }
            };
            let whole = taken(cut.end, from.row + cut.rows, Some(sum));
            let Some(before) = based_on else {
                return Ok(NewCut::Whole(tasks_of(&cut.slices), whole));
            };
            let tasks = tasks_of(cut.slices.get(queued..).unwrap_or_default());
            let part = CutPart {
                file: whole,
                based_on: Some(before),
                last: true,
            };
            if self
                .store
                .take_in_part(&part, version, attempts, &tasks)
                .await?
            {
                report.batches += tasks.len() as u64;
                self.known
                    .insert(file.path.clone(), now_taken(part.file, 0));
            } else {
                self.reload().await?;
            }
            return Ok(NewCut::Queued);
        }
        // The scan ended without a word: it crashed.
        scan.await.map_err(crashed)?;
        report.deferred += 1;
        Ok(NewCut::Deferred)
    }

    /// Takes a file in with its own batches.
    async fn register(
        &mut self,
        new_file: &NewFile,
        tasks: &[NewTask],
        report: &mut DiscoveryReport,
    ) -> Result<(), DiscoverError> {
        let added = self
            .store
            .register_file(
                new_file,
                self.pipeline.version,
                self.pipeline.spec.batch.max_attempts,
                tasks,
            )
            .await?;
        if added {
            report.files += 1;
            report.batches += tasks.len() as u64;
            self.known
                .insert(new_file.path.clone(), now_taken(new_file.clone(), 0));
        } else {
            // Another discoverer took it in first: learn what it took.
            self.reload().await?;
        }
        Ok(())
    }
}

/// What cutting a new file came to.
enum NewCut {
    /// The scan ended before any batch was queued: these batches, and the take, to register
    /// (alone or in a group).
    Whole(Vec<NewTask>, NewFile),
    /// Batches were queued as the scan went (or another discoverer took the file in).
    Queued,
    /// The file cannot be read right now; the next pass tries again.
    Deferred,
}

/// Small files collected into one batch, in path order.
#[derive(Default)]
struct Group {
    identities: Vec<String>,
    slices: Vec<BatchSlice>,
    files: Vec<NewFile>,
    rows: u64,
    bytes: u64,
}

impl Group {
    /// Whether a file of `slice` (its only slice) and `size` bytes still fits.
    fn fits(
        &self,
        slice: &BatchSlice,
        size: u64,
        max_rows: u64,
        max_files: u64,
        max_bytes: u64,
    ) -> bool {
        self.files.is_empty()
            || (self.rows + slice.row_count <= max_rows
                && (self.files.len() as u64) < max_files
                && self.bytes + size <= max_bytes)
    }

    fn push(&mut self, identity: String, slice: BatchSlice, file: NewFile, size: u64) {
        self.rows += slice.row_count;
        self.bytes += size;
        self.identities.push(identity);
        self.slices.push(slice);
        self.files.push(file);
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
        cutting: false,
    }
}

/// The pipeline's error under `on_change: fail`.
fn failure(path: &str, detail: &str) -> String {
    format!(
        "{detail} since it was taken in (source.on_change: fail): the pipeline queues nothing more; restore {path}, or land the new content under a new name, or set on_change to warn or reprocess and start again"
    )
}
