//! Delta Lake sink with exactly-once batch commits.
//!
//! # How a batch is committed exactly once
//!
//! Every batch commits under its own Delta *application transaction*: app id
//! `sluice/<pipeline>/<batch id>`, version 1, written in the same atomic commit as the batch's
//! data files. Before writing, the sink brings its snapshot up to date and asks whether that app
//! id is already recorded:
//!
//! * recorded -> an earlier run committed this batch (and died before telling the store):
//!   nothing is written, the run reports [`CommitOutcome::AlreadyCommitted`];
//! * absent -> the data and the txn action are committed together.
//!
//! Two runs of one batch can race (a lease expired while the first run was still working).
//! Both see the app id absent; the first commit wins and the second is refused by Delta's
//! conflict checker, because a winning commit carries a txn action with an app id the losing
//! commit also carries (`ConcurrentTransaction`). The loser refreshes, finds the app id and
//! reports `AlreadyCommitted`. So each batch's rows enter the table once, whatever dies when.
//!
//! Why one app id per batch and not one per worker with increasing versions: Delta keeps only
//! the highest version per app id and treats any lower one as done. Parallel workers finish
//! batches out of order, so a shared app id would make an earlier, still uncommitted batch look
//! committed and its rows would be lost. The price is one small txn entry per batch in the
//! table's state, bounded by `delta.setTransactionRetentionDuration` ([`TXN_RETENTION`], set
//! when sluice creates the table; the store's task state prevents re-queueing done batches).
//!
//! # Generations
//!
//! A batch's marker is written with txn version = the run's *generation* (1 unless the batch
//! was repaired), and a run counts the batch as committed when the table records its app id at
//! its generation or higher ([`DeltaSink::is_committed_at`], [`CommitExtras::generation`]).
//! Delta keeps the latest txn action per app id; sluice never writes a lower one.
//!
//! # Repair: removing a bad run's rows, fencing its generation
//!
//! [`DeltaSink::repair`] removes, in one commit, exactly the data files recorded for the bad
//! runs of some batches (refusing, with the list, if any is no longer in the table: a
//! compaction rewrote it and its rows cannot be told apart) and carries for each batch a txn
//! action at the bad run's generation `g`. So:
//!
//! * a run of generation `g` still in flight, whose commit was prepared from a snapshot before
//!   the repair, carries the same app id as the repair: delta-rs's conflict checker refuses it
//!   (`check_for_updated_application_transaction_ids_that_current_txn_depends_on`, i.e.
//!   `ConcurrentTransaction`: a winning commit's txn app ids against the ones the losing commit
//!   carries). It refreshes, finds the marker at `g` and reports already committed, writing
//!   nothing;
//! * a run of generation `g` starting after the repair finds the marker and writes nothing;
//! * the re-run under `g + 1` does not count the marker at `g` and commits once.
//!
//! If a run of a repaired batch wins the race against the repair instead, the repair's retry
//! reads that commit and removes its files too. `commitInfo.sluice.repair` records the
//! batches, the removed files and the reason.
//!
//! # Which files a version wrote
//!
//! Every batch commit's `commitInfo` holds a `sluice` entry (pipeline, version, batch,
//! generation), and the commit's adds are the batch's files; a `route_key` commit
//! ([`DeltaSink::commit_split`]) holds both versions' rows and says which files each wrote in
//! `sluice.parts`. [`DeltaSink::commits_of_version`] reads this back from the log, so a repair
//! does not depend on the store's record alone.
//!
//! # route_key
//!
//! Under `deploy.route_key` one batch's rows are split by a stable hash of a column between
//! stable and candidate (see `crate::route`); both parts commit together under the batch's one
//! marker, so everything above holds for the batch as a whole. A repair of the candidate
//! removes the whole commit's files and the batch is re-run under stable at `g + 1`.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Transaction};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::DeltaOperation;
use deltalake::protocol::SaveMode;
use deltalake::table::config::TablePropertiesExt;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tokio::sync::Mutex;
use url::Url;

use self::markers::Markers;

mod log;
mod markers;

/// How long a batch's commit marker is kept in the table's state (set when sluice creates the
/// table). A batch is only ever re-run within its lease expiry plus retries, minutes after its
/// commit; the store's task state guards anything older. Bounding the markers keeps snapshot
/// state and checkpoints from growing with every batch a pipeline ever ran.
pub const TXN_RETENTION: &str = "interval 7 days";

/// What `describe` reports about a table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub version: i64,
    pub schema: SchemaRef,
    /// Milliseconds since the epoch of the latest commit, when the log records it.
    pub last_commit_ms: Option<i64>,
}

/// What a commit carries besides the batch's rows and its txn marker.
#[derive(Debug, Clone)]
pub struct CommitExtras {
    /// The run's generation: the marker is written with this txn version, and the batch counts
    /// as committed when the table records its app id at this version or higher (see the
    /// module docs, "Generations"). At least 1; plain runs are generation 1.
    pub generation: i64,
    /// Data files (paths relative to the table root, as the Delta log names them) to remove in
    /// the same commit.
    pub removes: Vec<String>,
    pub missing: MissingRemoves,
    /// Entries for the commit's `commitInfo` (who committed what: pipeline, batch, version).
    pub metadata: Vec<(String, serde_json::Value)>,
}

/// What to do when a file to remove is no longer in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MissingRemoves {
    /// Remove the others: another commit removed it already (the batches of one replaced file
    /// each remove what of its old rows is left; the first to commit removes them all).
    #[default]
    Skip,
    /// Refuse the commit: the file was rewritten (compacted) since it was recorded, so its rows
    /// cannot be told apart any more (a rollback's repair).
    Refuse,
}

impl Default for CommitExtras {
    fn default() -> CommitExtras {
        CommitExtras {
            generation: 1,
            removes: Vec::new(),
            missing: MissingRemoves::default(),
            metadata: Vec::new(),
        }
    }
}

/// The rows of one pipeline version in a commit that carries several (a `route_key` split).
#[derive(Debug, Clone)]
pub struct Part {
    /// The pipeline version that wrote them (recorded in the commit's `commitInfo`).
    pub version: i64,
    pub batches: Vec<RecordBatch>,
}

/// One batch to repair: its app id and the generation of the run whose rows are removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairBatch {
    pub app_id: String,
    pub generation: i64,
}

/// What [`DeltaSink::repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The table version of the repair commit.
    pub version: i64,
    /// The data files it removed: those asked for, and those of a run of a repaired batch at
    /// or below its generation that committed while the repair was being made.
    pub removed: Vec<String>,
}

/// One batch commit as the log tells it (see [`DeltaSink::commits_of_version`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCommit {
    /// The table version of the commit.
    pub table_version: i64,
    pub batch: String,
    pub generation: i64,
    /// The data files the pipeline version wrote in it.
    pub files: Vec<String>,
}

/// What [`DeltaSink::commit_with`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub outcome: CommitOutcome,
    /// Data files this commit added (empty when the batch was already committed).
    pub added: Vec<String>,
    /// Data files this commit removed.
    pub removed: Vec<String>,
    /// Per [`Part`] of a split commit, in the order given, the data files it added (one entry
    /// holding `added` for a plain commit; empty when already committed).
    pub parts: Vec<Vec<String>>,
}

impl Commit {
    fn already() -> Commit {
        Commit {
            outcome: CommitOutcome::AlreadyCommitted,
            added: Vec::new(),
            removed: Vec::new(),
            parts: Vec::new(),
        }
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The batch's rows were committed in this Delta version.
    Committed { version: i64 },
    /// The table already held this batch: nothing was written.
    AlreadyCommitted,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Delta table {url}: {source}")]
    Delta {
        url: String,
        #[source]
        source: DeltaTableError,
    },
    #[error("Delta table location {location:?} is not valid: {reason}")]
    Location { location: String, reason: String },
    #[error(
        "Delta table {url}: files to remove are no longer in the table: {files}; nothing was removed. If another writer rewrote them (a compaction), their rows are now in files that also hold other rows: remove those rows by hand (or restore the table to a version before the rewrite) and retry"
    )]
    Missing { url: String, files: String },
    /// A repair's log scan found files a run of a repaired batch added that another writer
    /// than sluice removed since (a compaction, which rewrites their rows into new files):
    /// those rows cannot be told apart from others, so nothing was removed.
    #[error(
        "Delta table {url}: files a run of the repaired batches added were rewritten since by another writer ({files}): their rows are now in files that also hold other rows and cannot be told apart, so nothing was removed and no batch was re-queued; remove those rows by hand (or restore the table to a version before the rewrite) and retry the repair"
    )]
    Rewritten { url: String, files: String },
    #[error("output does not fit the Delta table {url}: {reason}")]
    Schema { url: String, reason: String },
    #[error("Delta table {url}: {reason}")]
    Invalid { url: String, reason: String },
}

/// How often a process cleans up expired log files (after a checkpoint): the cleanup lists the
/// whole log, and files expire after days (`delta.logRetentionDuration`, 30 by default).
const CLEANUP_EVERY: Duration = Duration::from_secs(600);

/// What a commit left: the table delta-rs brought to it, or (`append_on`) only its version
/// and whether it changed the table's metadata (merged new columns).
enum Committed {
    Table(DeltaTable),
    Appended { version: u64, changed: bool },
}

/// A Delta table sluice appends batches to. Cheap to share between the workers of a process:
/// it keeps one snapshot and the table's batch markers, and moves both forward by the commits
/// that appear in the log, never by replaying it.
///
/// The snapshot carries the table's file list, which delta-rs rebuilds (parsing every file's
/// statistics) whenever the snapshot moves forward: a cost that grows with the table's file
/// count. A plain append needs none of it (its conflicts are a marker, a metadata or protocol
/// change, all read from the new commits), so appends are committed straight into the log
/// and the snapshot only moves when something reads the files (`register`, `may_hold_range`,
/// removes), the metadata changed, or a checkpoint is due.
pub struct DeltaSink {
    url: Url,
    handle: Mutex<Option<Handle>>,
    /// When this process last cleaned up the table's expired log files.
    cleaned: std::sync::Mutex<Option<Instant>>,
}

/// The table as this process knows it.
struct Handle {
    /// The table with its file list; may lag behind the markers (see [`DeltaSink`]).
    table: DeltaTable,
    /// Every marker of the table through its version; `None` when the log could not be read
    /// here (`unreadable`) or not yet: lookups then ask delta-rs, which replays the log.
    markers: Option<Markers>,
    /// When reading the markers from the log last failed (tried again after a minute).
    unreadable: Option<Instant>,
}

impl Handle {
    /// Moves the markers to the table's version: reads the commits that are new to them, or,
    /// the first time (or when those commits are gone), the table's state once.
    async fn catch_up(&mut self) {
        let Some(version) = self.table.version() else {
            return;
        };
        let store = self.table.object_store();
        let advanced = match self.markers.as_mut() {
            Some(m) => m.advance(store.as_ref(), version as i64).await,
            None => Err("not read yet".into()),
        };
        if advanced.is_ok()
            || self
                .unreadable
                .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        match Markers::load(store.as_ref(), version as i64).await {
            Ok(m) => {
                self.markers = Some(m);
                self.unreadable = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the table's batch markers failed; looking them up through delta-rs (a log replay per batch)");
                self.unreadable = Some(Instant::now());
            }
        }
    }

    /// The latest version this handle knows of: the snapshot's or, past it, the markers'.
    fn latest(&self) -> Option<u64> {
        let markers = self
            .markers
            .as_ref()
            .and_then(|m| m.through())
            .map(|v| v as u64);
        self.table.version().max(markers)
    }

    /// The version a lagging snapshot may append on top of: the latest known, when the markers
    /// are read through it, no commit since the snapshot changed metadata or protocol, and the
    /// log store writes commits with a conditional put (the default log store). `None`: bring
    /// the snapshot up to date and commit through delta-rs.
    fn append_base(&self) -> Option<i64> {
        let snapshot = self.table.version()? as i64;
        let m = self.markers.as_ref()?;
        let current = m.changed_at().is_none_or(|at| at <= snapshot);
        (current && self.table.log_store().name() == "DefaultLogStore")
            .then(|| m.through().unwrap_or(snapshot).max(snapshot))
    }

    /// `app_id`'s recorded version from memory; `None` when the markers are behind the table.
    fn known_marker(&self, app_id: &str) -> Option<Option<i64>> {
        let m = self.markers.as_ref()?;
        let current = self.table.version().map(|v| v as i64);
        (m.through() >= current).then(|| m.get(app_id))
    }
}

/// Resolves a sink location: a URL as is, a path relative to `base_dir` made absolute.
pub fn table_url(location: &str, base_dir: &std::path::Path) -> Result<Url, SinkError> {
    let bad = |reason: String| SinkError::Location {
        location: location.to_string(),
        reason,
    };
    if location.contains("://") {
        let url = Url::parse(location).map_err(|e| bad(e.to_string()))?;
        // Say now, not at the first commit, when a scheme cannot be written to.
        match url.scheme() {
            "file" | "memory" => {}
            // delta-rs registers these handlers itself when the binary starts.
            "az" | "abfs" | "abfss" | "azure" | "adl" | "gs" => {}
            "s3" | "s3a" if cfg!(feature = "s3") => {}
            "s3" | "s3a" => {
                return Err(bad(
                    "this sluice was built without S3 support, which needs the AWS SDK; rebuild with `cargo build --release --features s3` (see README, \"Tables on object stores\")".into(),
                ));
            }
            other => {
                return Err(bad(format!(
                    "unknown table URL scheme {other:?}; use a local path, file://, az:// (or abfs://, abfss://), gs:// or s3:// (see README, \"Tables on object stores\")"
                )));
            }
        }
        return Ok(url);
    }
    let path = base_dir.join(location);
    std::fs::create_dir_all(&path)
        .map_err(|e| bad(format!("cannot create {}: {e}", path.display())))?;
    let path = std::fs::canonicalize(&path).map_err(|e| bad(e.to_string()))?;
    Url::from_directory_path(&path)
        .map_err(|_| bad(format!("{} is not an absolute path", path.display())))
}

impl std::fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaSink")
            .field("url", &self.url.as_str())
            .finish()
    }
}

impl DeltaSink {
    pub fn new(url: Url) -> DeltaSink {
        DeltaSink {
            url,
            handle: Mutex::new(None),
            cleaned: std::sync::Mutex::new(None),
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    fn err(&self, source: DeltaTableError) -> SinkError {
        SinkError::Delta {
            url: self.url.to_string(),
            source,
        }
    }

    /// The app id that marks a batch as committed.
    pub fn app_id(pipeline: &str, batch_id: &str) -> String {
        format!("sluice/{pipeline}/{batch_id}")
    }

    /// Opens the table (not yet created: `version()` is `None`). A local table lists its log
    /// by probing version numbers (see `log`), not by walking the folder.
    async fn open(&self) -> Result<DeltaTable, DeltaTableError> {
        let mut builder = DeltaTableBuilder::from_url(self.url.clone())?;
        if self.url.scheme() == "file" {
            builder = builder
                .with_storage_backend(Arc::new(log::ProbedLocalLog::new()), self.url.clone());
        }
        let mut table = builder.build()?;
        match table.load().await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
            Err(e) => Err(e),
        }
    }

    /// Brings the handle up to date: the markers to the latest version and, when `files` is
    /// set or an append could not commit on top of it (see [`Handle::append_base`]), the
    /// snapshot with them. Asks for the next version's commit file first: no new commit, no
    /// log read at all.
    async fn refresh(&self, slot: &mut Option<Handle>, files: bool) -> Result<(), SinkError> {
        match slot.as_mut() {
            Some(h) if h.table.version().is_some() => {
                let known = h.latest().unwrap_or_default();
                let probe = Path::from(format!("_delta_log/{:020}.json", known + 1));
                let found = match h.table.object_store().head(&probe).await {
                    Err(object_store::Error::NotFound { .. }) => false,
                    // Found, or the store could not say: read the new commits' markers (the
                    // listing reports what went wrong).
                    _ => {
                        let latest = h
                            .table
                            .log_store()
                            .get_latest_version(known)
                            .await
                            .map_err(|e| self.err(e))?;
                        let store = h.table.object_store();
                        if let Some(m) = h.markers.as_mut()
                            && let Err(e) = m.advance(store.as_ref(), latest as i64).await
                        {
                            tracing::debug!(error = %e, "batch markers fell behind; reading them again");
                            h.markers = None;
                        }
                        true
                    }
                };
                let behind = h.table.version() < h.latest() || (found && h.markers.is_none());
                if behind && (files || h.append_base().is_none()) {
                    h.table
                        .update_incremental(None)
                        .await
                        .map_err(|e| self.err(e))?;
                }
            }
            _ => {
                let table = self.open().await.map_err(|e| self.err(e))?;
                *slot = Some(Handle {
                    table,
                    markers: None,
                    unreadable: None,
                });
            }
        }
        if let Some(h) = slot.as_mut() {
            h.catch_up().await;
        }
        Ok(())
    }

    /// An up-to-date handle on the table with its files (not yet created: `version()` is
    /// `None`).
    async fn refreshed(&self) -> Result<DeltaTable, SinkError> {
        let mut slot = self.handle.lock().await;
        self.refresh(&mut slot, true).await?;
        slot.as_ref()
            .map(|h| h.table.clone())
            .ok_or_else(|| self.err(DeltaTableError::Generic("table handle vanished".into())))
    }

    /// The table, the version recorded for `app_id`'s marker, if any, and the version an
    /// append may commit on top of without bringing the table's files up to date (see
    /// [`Handle::append_base`]; `None`: the table is up to date). A commit by another process
    /// is in the log before the lookup, so it is found; one landing after it is refused at
    /// commit time (by Delta's conflict check, or by `append_on`).
    async fn marker(
        &self,
        app_id: &str,
        files: bool,
    ) -> Result<(DeltaTable, Option<i64>, Option<i64>), SinkError> {
        let mut slot = self.handle.lock().await;
        self.refresh(&mut slot, files).await?;
        let Some(h) = slot.as_ref() else {
            return Err(self.err(DeltaTableError::Generic("table handle vanished".into())));
        };
        let table = h.table.clone();
        if table.version().is_none() {
            return Ok((table, None, None));
        }
        let base = if files { None } else { h.append_base() };
        if let Some(known) = h.known_marker(app_id) {
            return Ok((table, known, base));
        }
        drop(slot);
        let snapshot = table.snapshot().map_err(|e| self.err(e))?;
        let v = snapshot
            .transaction_version(table.log_store().as_ref(), app_id)
            .await
            .map_err(|e| self.err(e))?;
        Ok((table, v, None))
    }

    /// Whether the table already records this app id (at any generation).
    pub async fn is_committed(&self, app_id: &str) -> Result<bool, SinkError> {
        self.is_committed_at(app_id, 1).await
    }

    /// Whether the table records this app id at `generation` or a later one: a run of that
    /// generation is done. A marker of an earlier generation (a run a repair removed) is not.
    pub async fn is_committed_at(&self, app_id: &str, generation: i64) -> Result<bool, SinkError> {
        Ok(self
            .marker(app_id, false)
            .await?
            .1
            .is_some_and(|v| v >= generation))
    }

    /// Takes in a commit carrying the markers `txns` (the table delta-rs returned, or what
    /// `append_on` wrote), and every few commits (a checkpoint is due) cleans up expired log
    /// files beside the batches.
    async fn adopt(&self, txns: &[(String, i64)], committed: Committed) {
        let (version, table, changed) = match committed {
            Committed::Table(t) => match t.version() {
                Some(v) => (v, Some(t), false),
                None => return,
            },
            Committed::Appended { version, changed } => (version, None, changed),
        };
        let ours = table.is_none();
        let mut slot = self.handle.lock().await;
        let h = match (slot.as_mut(), table) {
            (Some(h), table) => {
                if let Some(t) = table.filter(|_| h.table.version() < Some(version)) {
                    h.table = t;
                }
                h
            }
            (None, Some(table)) => slot.insert(Handle {
                table,
                markers: None,
                unreadable: None,
            }),
            // Appended through a handle: it is there.
            (None, None) => return,
        };
        let store = h.table.object_store();
        if let Some(m) = h.markers.as_mut() {
            if let Err(e) = m.committed(store.as_ref(), txns, version as i64).await {
                tracing::debug!(error = %e, "batch markers fell behind; reading them again");
                h.markers = None;
            }
            if let Some(m) = h.markers.as_mut().filter(|_| changed) {
                m.changed(version as i64);
            }
        }
        let Ok(state) = h.table.snapshot() else {
            return;
        };
        let config = state.table_config();
        if !(version + 1).is_multiple_of(config.checkpoint_interval().get()) {
            return;
        }
        if ours {
            // delta-rs checkpoints its own commits; this one is ours to write, from the
            // snapshot brought to it (the one file-list rebuild in a checkpoint interval).
            let moved = match h.table.version() < Some(version) {
                true => h.table.update_incremental(Some(version)).await,
                false => Ok(()),
            };
            let written = match moved {
                Ok(()) => deltalake::checkpoints::create_checkpoint(&h.table, None).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::warn!(version, error = %e, "writing a Delta checkpoint failed; the next interval tries again");
                return;
            }
        }
        let Ok(state) = h.table.snapshot() else {
            return;
        };
        let config = state.table_config();
        let now = sluice_core::now_millis();
        if let (Some(m), Some(keep)) = (
            h.markers.as_mut(),
            config.set_transaction_retention_duration,
        ) {
            m.expire(now - keep.as_millis() as i64);
        }
        if !config.enable_expired_log_cleanup() {
            return;
        }
        {
            let mut cleaned = self.cleaned.lock().unwrap_or_else(|e| e.into_inner());
            if cleaned.is_some_and(|at| at.elapsed() < CLEANUP_EVERY) {
                return;
            }
            *cleaned = Some(Instant::now());
        }
        let cutoff = now - config.log_retention_duration().as_millis() as i64;
        let log_store = h.table.log_store();
        tokio::spawn(async move {
            match deltalake::checkpoints::cleanup_expired_logs_for(
                version,
                log_store.as_ref(),
                cutoff,
                None,
            )
            .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(files = n, "expired Delta log files cleaned up"),
                Err(e) => tracing::warn!(error = %e, "cleaning up expired Delta log files failed"),
            }
        });
    }

    /// Commits `batches` once under `app_id`. See the module docs for the protocol.
    pub async fn commit(
        &self,
        app_id: &str,
        batches: Vec<RecordBatch>,
    ) -> Result<CommitOutcome, SinkError> {
        Ok(self
            .commit_with(app_id, batches, CommitExtras::default())
            .await?
            .outcome)
    }

    /// Commits `batches` once under `app_id`, together with `extras`: data files to remove in
    /// the same atomic commit (a replaced source file's old rows; a rolled-back version's) and
    /// metadata for the commit's `commitInfo`. Returns the data files the commit added.
    pub async fn commit_with(
        &self,
        app_id: &str,
        batches: Vec<RecordBatch>,
        extras: CommitExtras,
    ) -> Result<Commit, SinkError> {
        self.commit_parts(app_id, None, batches, extras).await
    }

    /// Commits the rows of several pipeline versions of one batch (a `route_key` split) in
    /// one commit under `app_id`, exactly once like [`DeltaSink::commit_with`]. Each part's
    /// rows go to data files of their own, and the commit's `commitInfo` records which files
    /// each version wrote: `sluice.parts = [{"version": v, "files": [...]}, ...]` inside the
    /// `sluice` entry of `extras.metadata` (created when absent). `Commit::parts` says the same.
    pub async fn commit_split(
        &self,
        app_id: &str,
        parts: Vec<Part>,
        extras: CommitExtras,
    ) -> Result<Commit, SinkError> {
        let versions: Vec<i64> = parts.iter().map(|p| p.version).collect();
        let mut grouped = Vec::new();
        for p in parts {
            grouped.push(self.compatible(p.batches)?);
        }
        let batches: Vec<RecordBatch> = grouped.iter().flatten().cloned().collect();
        if batches.is_empty() && versions.is_empty() {
            return self.commit_with(app_id, batches, extras).await;
        }
        self.commit_parts(app_id, Some((versions, grouped)), Vec::new(), extras)
            .await
    }

    fn compatible(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, SinkError> {
        batches
            .into_iter()
            .map(|b| delta_compatible(&b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| SinkError::Schema {
                url: self.url.to_string(),
                reason,
            })
    }

    async fn commit_parts(
        &self,
        app_id: &str,
        split: Option<(Vec<i64>, Vec<Vec<RecordBatch>>)>,
        batches: Vec<RecordBatch>,
        extras: CommitExtras,
    ) -> Result<Commit, SinkError> {
        if extras.generation < 1 {
            return Err(SinkError::Invalid {
                url: self.url.to_string(),
                reason: format!(
                    "generation {} of batch {app_id}: generations start at 1",
                    extras.generation
                ),
            });
        }
        let batches = self.compatible(batches)?;
        // Conflicts with other writers' appends are resolved inside delta-rs; what reaches us is
        // a real conflict (our app id, a file we remove removed by another commit, or the table
        // being created concurrently): refresh, look again, retry a few times.
        let mut last_error = None;
        for _ in 0..5 {
            // Removes are looked up in the table's files; an append needs none of them.
            let needs_files = !extras.removes.is_empty() || split.is_some();
            let (table, marker, base) = self.marker(app_id, needs_files).await?;
            if marker.is_some_and(|v| v >= extras.generation) {
                return Ok(Commit::already());
            }
            if split.is_some() && table.version().is_none() {
                return Err(SinkError::Invalid {
                    url: self.url.to_string(),
                    reason: "a route_key split commits into an existing table (stable's first batch creates it)".into(),
                });
            }
            if let Some(base) = base.filter(|_| !needs_files) {
                match self
                    .append_on(
                        &table,
                        base,
                        app_id,
                        extras.generation,
                        batches.clone(),
                        &extras.metadata,
                    )
                    .await
                {
                    Ok(None) => return Ok(Commit::already()),
                    Ok(Some((commit, changed))) => {
                        if let CommitOutcome::Committed { version } = commit.outcome {
                            let version = version as u64;
                            self.adopt(
                                &[(app_id.to_string(), extras.generation)],
                                Committed::Appended { version, changed },
                            )
                            .await;
                        }
                        return Ok(commit);
                    }
                    Err(e) if crate::storage_outage(&e).is_some() => return Err(self.err(e)),
                    Err(e) => {
                        tracing::debug!(app_id, error = %e, "append refused; refreshing");
                        last_error = Some(e);
                        continue;
                    }
                }
            }
            let removes = self.removes_in(&table, &extras.removes, extras.missing)?;
            let txn = Transaction::new_with_last_update(
                app_id,
                extras.generation,
                Some(sluice_core::now_millis()),
            );
            let props = commit_properties(vec![txn], extras.metadata.clone());
            let attempt = match &split {
                Some((versions, parts)) => {
                    let metadata = extras.metadata.clone();
                    let versions = versions.clone();
                    let record =
                        move |files: &[Vec<String>]| with_parts(metadata.clone(), &versions, files);
                    self.replace(&table, parts.clone(), removes, props, Some(&record))
                        .await
                }
                None if removes.is_empty() => self.append(&table, batches.clone(), props).await,
                None => {
                    self.replace(&table, vec![batches.clone()], removes, props, None)
                        .await
                }
            };
            match attempt {
                Ok((t, commit)) => {
                    self.adopt(
                        &[(app_id.to_string(), extras.generation)],
                        Committed::Table(t),
                    )
                    .await;
                    return Ok(commit);
                }
                // A full or read-only disk will not clear up in a retry; the worker waits for it.
                Err(e) if crate::storage_outage(&e).is_some() => return Err(self.err(e)),
                Err(e) => {
                    tracing::debug!(app_id, error = %e, "delta commit refused; refreshing");
                    last_error = Some(e);
                }
            }
        }
        if self
            .marker(app_id, false)
            .await?
            .1
            .is_some_and(|v| v >= extras.generation)
        {
            return Ok(Commit::already());
        }
        Err(self
            .err(last_error.unwrap_or_else(|| DeltaTableError::Generic("commit failed".into()))))
    }

    /// Removes the rows of bad runs of `batches` in one commit: exactly the data files `files`
    /// (what the store recorded those runs added; see [`DeltaSink::commits_of_version`] for the
    /// log's own record), and for each batch a txn action at the bad run's generation, which
    /// fences every run of that generation:
    ///
    /// * one still in flight that commits later carries the same app id, so Delta's conflict
    ///   check refuses it (`ConcurrentTransaction`); it refreshes, finds its generation's
    ///   marker and reports already committed, writing nothing;
    /// * one that starts later finds the marker and writes nothing;
    /// * the re-run under generation + 1 does not count the marker and commits once.
    ///
    /// Refused, listing them, when any of `files` is no longer in the table (rewritten by a
    /// compaction, or removed by another repair): the rows cannot be told apart, so nothing is
    /// removed. When a run of a repaired batch at or below its generation commits while the
    /// repair is being made, the retry removes its files too (read from that commit).
    /// `reason` goes into `commitInfo` (`sluice.repair`) with the batches and files.
    ///
    /// With `scan_since` (milliseconds since the epoch), the log's commits from then on are read
    /// too, and what a run of a repaired batch at or below its generation added there and is
    /// still in the table is removed as well: the runs nobody recorded (a worker killed between
    /// its Delta commit and its report, or stalled past its lease and committing late).
    pub async fn repair(
        &self,
        batches: &[RepairBatch],
        files: Vec<String>,
        reason: serde_json::Value,
        scan_since: Option<i64>,
    ) -> Result<Repaired, SinkError> {
        let invalid = |reason: String| SinkError::Invalid {
            url: self.url.to_string(),
            reason,
        };
        if let Some(b) = batches.iter().find(|b| b.generation < 1) {
            return Err(invalid(format!(
                "repair of {}: generation {} (generations start at 1)",
                b.app_id, b.generation
            )));
        }
        let mut files = files;
        let mut base = None;
        let mut last_error = None;
        for _ in 0..5 {
            let table = self.refreshed().await?;
            let Some(current) = table.version() else {
                return Err(invalid(
                    "the table does not exist yet: there is nothing to repair".into(),
                ));
            };
            // Runs of the repaired batches that committed since the last attempt looked.
            if let Some(from) = base {
                files.extend(self.landed_since(&table, from, batches).await?);
                files.sort();
                files.dedup();
            }
            let mut removes = self.removes_in(&table, &files, MissingRemoves::Refuse)?;
            if let (None, Some(since)) = (base, scan_since) {
                let landed = self.landed_after(&table, since, batches).await?;
                let unrecorded: Vec<String> = landed
                    .added
                    .into_iter()
                    .filter(|f| !files.contains(f))
                    .collect();
                // Only what is still there. What is gone must have gone in a commit of
                // sluice's (an earlier repair, or a replaced file's batches): one of another
                // writer (a compaction) moved the rows elsewhere, and they would stay.
                let more = self.removes_in(&table, &unrecorded, MissingRemoves::Skip)?;
                let live: std::collections::HashSet<&str> =
                    more.iter().map(|r| r.path.as_str()).collect();
                let rewritten: Vec<String> = unrecorded
                    .iter()
                    .filter(|f| !live.contains(f.as_str()))
                    .filter_map(|f| match landed.removed_by.get(f) {
                        Some(r) if r.sluice => None,
                        Some(r) => Some(format!(
                            "{f} (removed by {} at table version {})",
                            r.operation, r.version
                        )),
                        None => Some(format!("{f} (removed by a commit no longer in the log)")),
                    })
                    .collect();
                if !rewritten.is_empty() {
                    return Err(SinkError::Rewritten {
                        url: self.url.to_string(),
                        files: rewritten.join(", "),
                    });
                }
                files.extend(more.iter().map(|r| r.path.clone()));
                removes.extend(more);
            }
            base = Some(current);
            let mut txns = Vec::new();
            let now = sluice_core::now_millis();
            for b in batches {
                // Never lower a marker: Delta keeps the latest txn action per app id.
                let recorded = self.marker(&b.app_id, false).await?.1.unwrap_or(0);
                txns.push(Transaction::new_with_last_update(
                    &b.app_id,
                    recorded.max(b.generation),
                    Some(now),
                ));
            }
            let removed: Vec<String> = removes.iter().map(|r| r.path.clone()).collect();
            let metadata = vec![(
                "sluice".to_string(),
                serde_json::json!({
                    "repair": {
                        "batches": batches
                            .iter()
                            .map(|b| serde_json::json!({"app_id": b.app_id, "generation": b.generation}))
                            .collect::<Vec<_>>(),
                        "removed": removed,
                        "reason": reason,
                    }
                }),
            )];
            let adopted: Vec<(String, i64)> =
                txns.iter().map(|t| (t.app_id.clone(), t.version)).collect();
            // The builder adds the txn actions to the commit's actions, where the conflict
            // checker reads a commit's app ids from.
            let props = commit_properties(txns, metadata);
            let actions: Vec<Action> = removes.into_iter().map(Action::Remove).collect();
            let snapshot = table.snapshot().map_err(|e| self.err(e))?;
            let operation = DeltaOperation::Delete {
                predicate: Some("sluice repair".into()),
            };
            match CommitBuilder::from(props)
                .with_actions(actions)
                .build(Some(snapshot), table.log_store(), operation)
                .await
            {
                Ok(finalized) => {
                    let version = finalized.version();
                    let mut t = table.clone();
                    t.update_incremental(Some(version))
                        .await
                        .map_err(|e| self.err(e))?;
                    self.adopt(&adopted, Committed::Table(t)).await;
                    return Ok(Repaired {
                        version: version as i64,
                        removed,
                    });
                }
                Err(e) if crate::storage_outage(&e).is_some() => return Err(self.err(e)),
                Err(e) => {
                    tracing::debug!(error = %e, "repair commit refused; refreshing");
                    last_error = Some(e);
                }
            }
        }
        Err(self
            .err(last_error.unwrap_or_else(|| DeltaTableError::Generic("repair failed".into()))))
    }

    /// The data files added by commits after table version `from` that carry a marker of one
    /// of `batches` at or below its generation (a run the repair must remove too).
    async fn landed_since(
        &self,
        table: &DeltaTable,
        from: u64,
        batches: &[RepairBatch],
    ) -> Result<Vec<String>, SinkError> {
        let Some(latest) = table.version() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for version in from + 1..=latest {
            let actions = self.commit_actions(table, version).await?;
            out.extend(adds_of_runs(actions, batches));
        }
        Ok(out)
    }

    /// The data files added by commits made at or after `since` (milliseconds since the epoch,
    /// by each commit's `commitInfo` timestamp; read newest first, stopping at the first older
    /// commit or at a log file cleaned up) that carry a marker of one of `batches` at or below
    /// its generation.
    ///
    /// Also which commit in that range removed each file it removed, so that a file found
    /// gone can be told removed by sluice from rewritten by another writer.
    async fn landed_after(
        &self,
        table: &DeltaTable,
        since: i64,
        batches: &[RepairBatch],
    ) -> Result<Landed, SinkError> {
        let mut out = Landed::default();
        self.walk_back(table, since, |version, actions| {
            let info = commit_info(&actions);
            let remover = Remover {
                version,
                operation: info
                    .and_then(|c| c.operation.clone())
                    .unwrap_or_else(|| "an unnamed operation".into()),
                sluice: info.is_some_and(|c| c.info.contains_key("sluice")),
            };
            for a in &actions {
                if let Action::Remove(r) = a {
                    out.removed_by.insert(r.path.clone(), remover.clone());
                }
            }
            out.added.extend(adds_of_runs(actions, batches));
            ControlFlow::Continue(())
        })
        .await?;
        Ok(out)
    }

    /// The table version of the newest repair commit made at or after `since` (milliseconds
    /// since the epoch) whose `reason` (as given to [`DeltaSink::repair`]) satisfies `is_ours`.
    /// A repair retried after its process died can tell this way that its commit landed:
    /// finding its files gone says only that someone removed them, maybe a compaction that
    /// moved their rows elsewhere.
    pub async fn find_repair(
        &self,
        since: i64,
        is_ours: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<Option<i64>, SinkError> {
        let table = self.refreshed().await?;
        let mut found = None;
        self.walk_back(&table, since, |version, actions| {
            let reason = commit_info(&actions)
                .and_then(|c| c.info.get("sluice"))
                .and_then(|s| s.get("repair"))
                .and_then(|r| r.get("reason"));
            if reason.is_some_and(&is_ours) {
                found = Some(version as i64);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .await?;
        Ok(found)
    }

    /// Hands `visit` the actions of each commit made at or after `since` (by its
    /// `commitInfo` timestamp), newest first, until `visit` breaks, an older commit comes, or
    /// a log file is gone (cleaned up).
    async fn walk_back(
        &self,
        table: &DeltaTable,
        since: i64,
        mut visit: impl FnMut(u64, Vec<Action>) -> ControlFlow<()>,
    ) -> Result<(), SinkError> {
        let Some(latest) = table.version() else {
            return Ok(());
        };
        for version in (0..=latest).rev() {
            let actions = self.commit_actions(table, version).await?;
            let stamp = commit_info(&actions).and_then(|c| c.timestamp);
            if actions.is_empty() || stamp.is_some_and(|t| t < since) {
                break;
            }
            if visit(version, actions).is_break() {
                break;
            }
        }
        Ok(())
    }

    async fn commit_actions(
        &self,
        table: &DeltaTable,
        version: u64,
    ) -> Result<Vec<Action>, SinkError> {
        let Some(bytes) = table
            .log_store()
            .read_commit_entry(version)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(Vec::new());
        };
        deltalake::logstore::get_actions(version, &bytes).map_err(|e| self.err(e))
    }

    /// Every batch commit pipeline `pipeline` at version `pipeline_version` made among the
    /// table's newest `within` commits, read from each commit's `commitInfo` (`sluice` entry)
    /// and adds: the log's own record of a version's rows, for a repair when the store lost
    /// them. In a split commit only the files that version wrote count. Repair commits and
    /// commits of other versions are left out. Oldest first.
    pub async fn commits_of_version(
        &self,
        pipeline: &str,
        pipeline_version: i64,
        within: u64,
    ) -> Result<Vec<VersionCommit>, SinkError> {
        let table = self.refreshed().await?;
        let Some(latest) = table.version() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for version in latest.saturating_sub(within)..=latest {
            let actions = self.commit_actions(&table, version).await?;
            let Some(info) = commit_info(&actions).and_then(|c| c.info.get("sluice").cloned())
            else {
                continue;
            };
            if info.get("pipeline").and_then(|p| p.as_str()) != Some(pipeline) {
                continue;
            }
            let Some(batch) = info.get("batch").and_then(|b| b.as_str()) else {
                continue;
            };
            let files: Vec<String> = match info.get("parts").and_then(|p| p.as_array()) {
                Some(parts) => parts
                    .iter()
                    .filter(|p| p.get("version").and_then(|v| v.as_i64()) == Some(pipeline_version))
                    .flat_map(|p| {
                        p.get("files")
                            .and_then(|f| f.as_array())
                            .into_iter()
                            .flatten()
                            .filter_map(|f| f.as_str().map(str::to_string))
                    })
                    .collect(),
                None if info.get("version").and_then(|v| v.as_i64()) == Some(pipeline_version) => {
                    actions
                        .iter()
                        .filter_map(|a| match a {
                            Action::Add(add) => Some(add.path.clone()),
                            _ => None,
                        })
                        .collect()
                }
                None => continue,
            };
            if files.is_empty() && info.get("parts").is_some() {
                continue;
            }
            let app_id = DeltaSink::app_id(pipeline, batch);
            let generation = actions
                .iter()
                .find_map(|a| match a {
                    Action::Txn(t) if t.app_id == app_id => Some(t.version),
                    _ => None,
                })
                .unwrap_or(1);
            out.push(VersionCommit {
                table_version: version as i64,
                batch: batch.to_string(),
                generation,
                files,
            });
        }
        Ok(out)
    }

    /// The remove actions for `extras.removes` that are still in `table`. A file no longer in
    /// the table was removed by another commit (a sibling batch of the same replacement) or
    /// rewritten (compaction): skipped, or refused under [`MissingRemoves::Refuse`].
    fn removes_in(
        &self,
        table: &DeltaTable,
        removes: &[String],
        missing: MissingRemoves,
    ) -> Result<Vec<deltalake::kernel::Remove>, SinkError> {
        if removes.is_empty() {
            return Ok(Vec::new());
        }
        if table.version().is_none() {
            if missing == MissingRemoves::Refuse {
                return Err(SinkError::Missing {
                    url: self.url.to_string(),
                    files: removes.join(", "),
                });
            }
            return Ok(Vec::new());
        }
        let wanted: std::collections::HashSet<&str> = removes.iter().map(String::as_str).collect();
        let snapshot = table.snapshot().map_err(|e| self.err(e))?;
        let live: Vec<_> = snapshot
            .log_data()
            .iter()
            .filter(|f| wanted.contains(f.path().as_ref()))
            .collect();
        if missing == MissingRemoves::Refuse && live.len() < wanted.len() {
            let present: std::collections::HashSet<String> =
                live.iter().map(|f| f.path().to_string()).collect();
            let gone: Vec<&str> = removes
                .iter()
                .filter(|p| !present.contains(p.as_str()))
                .map(String::as_str)
                .collect();
            return Err(SinkError::Missing {
                url: self.url.to_string(),
                files: gone.join(", "),
            });
        }
        Ok(live.iter().map(|f| f.remove_action(true)).collect())
    }

    /// An append (creating the table on the first commit; new columns merged in place).
    async fn append(
        &self,
        table: &DeltaTable,
        batches: Vec<RecordBatch>,
        props: CommitProperties,
    ) -> Result<(DeltaTable, Commit), DeltaTableError> {
        let t = table
            .clone()
            .write(batches)
            .with_save_mode(SaveMode::Append)
            // New output columns (a pipeline version that adds a field) are added to the
            // table in place; old rows read them as null. Batches of the previous version,
            // still in flight, write without them. Narrowing or retyping a column is not
            // merged: delta-rs refuses it and the batch fails (see `schema plan`).
            .with_schema_mode(SchemaMode::Merge)
            .with_configuration([("delta.setTransactionRetentionDuration", Some(TXN_RETENTION))])
            .with_commit_properties(props)
            .with_writer_properties(writer_properties())
            .await?;
        let version = t.version().unwrap_or(0);
        // The writer does not hand its add actions back: read them from the commit it made.
        let added = match t.log_store().read_commit_entry(version).await? {
            Some(bytes) => deltalake::logstore::get_actions(version, &bytes)?
                .into_iter()
                .filter_map(|a| match a {
                    Action::Add(add) => Some(add.path),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let commit = Commit {
            outcome: CommitOutcome::Committed {
                version: version as i64,
            },
            parts: vec![added.clone()],
            added,
            removed: Vec::new(),
        };
        Ok((t, commit))
    }

    /// Appends on top of version `base` without moving `table` (whose metadata and protocol
    /// are those of `base`; see [`Handle::append_base`]): writes the data files, then puts the
    /// commit (adds, marker, merged schema) at `base + 1`, or, when another commit took that
    /// version, at the next free one. A taken version is read as delta-rs's conflict check
    /// would for a blind append: carrying `app_id`, the batch is in (`None`); a metadata or
    /// protocol change refuses the commit (the caller refreshes and retries); anything else
    /// (other batches' appends) commutes with this one. Returns the commit and whether it
    /// changed the table's metadata.
    async fn append_on(
        &self,
        table: &DeltaTable,
        base: i64,
        app_id: &str,
        generation: i64,
        batches: Vec<RecordBatch>,
        metadata: &[(String, serde_json::Value)],
    ) -> Result<Option<(Commit, bool)>, DeltaTableError> {
        use deltalake::kernel::transaction::{CommitData, PROTOCOL, TransactionError};
        use deltalake::logstore::CommitOrBytes;
        let (actions, added, _, changed) = self.write_files(table, vec![batches]).await?;
        let snapshot = table.snapshot()?;
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let txn =
            Transaction::new_with_last_update(app_id, generation, Some(sluice_core::now_millis()));
        let data = CommitData::new(
            actions,
            operation,
            metadata.iter().cloned().collect(),
            vec![txn],
        );
        PROTOCOL.can_commit(snapshot, &data.actions, &data.operation)?;
        let bytes = data.get_bytes()?;
        let log_store = table.log_store();
        let mut version = base as u64 + 1;
        for _ in 0..50 {
            let put = CommitOrBytes::LogBytes(bytes.clone());
            match log_store
                .write_commit_entry(version, put, uuid::Uuid::new_v4())
                .await
            {
                Ok(()) => {
                    let commit = Commit {
                        outcome: CommitOutcome::Committed {
                            version: version as i64,
                        },
                        added: added.clone(),
                        removed: Vec::new(),
                        parts: vec![added],
                    };
                    return Ok(Some((commit, changed)));
                }
                Err(TransactionError::VersionAlreadyExists(_)) => {
                    let Some(winner) = log_store.read_commit_entry(version).await? else {
                        return Err(DeltaTableError::Generic(format!(
                            "version {version} exists but cannot be read"
                        )));
                    };
                    for action in deltalake::logstore::get_actions(version, &winner)? {
                        match action {
                            // This batch's marker at this run's generation or later: it is in.
                            // An earlier generation's (a repair fencing a removed run) is not.
                            Action::Txn(t) if t.app_id == app_id && t.version >= generation => {
                                return Ok(None);
                            }
                            Action::Metadata(_) | Action::Protocol(_) => {
                                return Err(DeltaTableError::Generic(format!(
                                    "version {version} changed the table's metadata or protocol"
                                )));
                            }
                            _ => {}
                        }
                    }
                    version += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(DeltaTableError::Generic(format!(
            "no free version after {base} in 50 attempts"
        )))
    }

    /// Writes `parts` as data files of `table` (new columns merged), each part flushed to files
    /// of its own: the add actions, then a metadata action carrying the merged schema when the
    /// batches brought new columns. Returns the actions, the files' paths, the paths per part
    /// and whether the schema changed.
    async fn write_files(
        &self,
        table: &DeltaTable,
        parts: Vec<Vec<RecordBatch>>,
    ) -> Result<(Vec<Action>, Vec<String>, Vec<Vec<String>>, bool), DeltaTableError> {
        use deltalake::kernel::MetadataExt as _;
        use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
        use deltalake::writer::{DeltaWriter as _, RecordBatchWriter, WriteMode};
        let snapshot = table.snapshot()?;
        let mut writer =
            RecordBatchWriter::for_table(table)?.with_writer_properties(writer_properties());
        let before = writer.arrow_schema();
        let mut adds = Vec::new();
        let mut by_part = Vec::new();
        for batches in parts {
            for batch in batches {
                writer
                    .write_with_mode(batch, WriteMode::MergeSchema)
                    .await?;
            }
            let flushed = writer.flush().await?;
            by_part.push(flushed.iter().map(|a| a.path.clone()).collect::<Vec<_>>());
            adds.extend(flushed);
        }
        let after = writer.arrow_schema();
        let added: Vec<String> = adds.iter().map(|a| a.path.clone()).collect();
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        let changed = after != before;
        if changed {
            let schema: deltalake::kernel::StructType = after.as_ref().try_into_kernel()?;
            actions.push(Action::Metadata(
                snapshot.metadata().clone().with_schema(&schema)?,
            ));
        }
        Ok((actions, added, by_part, changed))
    }

    /// Adds and removes in one commit: the data files are written first, then one commit
    /// carries their adds, the removes, the txn marker and (when the batch brings new columns)
    /// the merged schema, so readers see the old rows or the new ones, never both or neither.
    ///
    /// Each of `parts` is flushed to files of its own; `record`, when given, turns the files
    /// of each part into the commit's `commitInfo` entries (which version wrote which files).
    async fn replace(
        &self,
        table: &DeltaTable,
        parts: Vec<Vec<RecordBatch>>,
        removes: Vec<deltalake::kernel::Remove>,
        props: CommitProperties,
        record: Option<&RecordParts>,
    ) -> Result<(DeltaTable, Commit), DeltaTableError> {
        let snapshot = table.snapshot()?;
        let (mut actions, added, by_part, _) = self.write_files(table, parts).await?;
        let props = match record {
            Some(record) => props.with_metadata(record(&by_part)),
            None => props,
        };
        let removed: Vec<String> = removes.iter().map(|r| r.path.clone()).collect();
        actions.extend(removes.into_iter().map(Action::Remove));
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let finalized = CommitBuilder::from(props)
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await?;
        let version = finalized.version();
        // Rare (a replaced file's first batch): reading the log once more is cheap enough.
        let mut t = table.clone();
        t.update_incremental(Some(version)).await?;
        let commit = Commit {
            outcome: CommitOutcome::Committed {
                version: version as i64,
            },
            added,
            removed,
            parts: by_part,
        };
        Ok((t, commit))
    }

    /// The version of the commit carrying `app_id` and the data files it added, looked up in
    /// the newest `within` commits of the log: for a batch whose commit an earlier run made
    /// (and died before recording what it added). `None` when not found there.
    pub async fn added_by(
        &self,
        app_id: &str,
        within: u64,
    ) -> Result<Option<(i64, Vec<String>)>, SinkError> {
        let table = self.refreshed().await?;
        let Some(latest) = table.version() else {
            return Ok(None);
        };
        let store = table.log_store();
        for version in (latest.saturating_sub(within)..=latest).rev() {
            let Some(bytes) = store
                .read_commit_entry(version)
                .await
                .map_err(|e| self.err(e))?
            else {
                continue;
            };
            let actions =
                deltalake::logstore::get_actions(version, &bytes).map_err(|e| self.err(e))?;
            let ours = actions
                .iter()
                .any(|a| matches!(a, Action::Txn(t) if t.app_id == app_id));
            if ours {
                let added = actions
                    .into_iter()
                    .filter_map(|a| match a {
                        Action::Add(add) => Some(add.path),
                        _ => None,
                    })
                    .collect();
                return Ok(Some((version as i64, added)));
            }
        }
        Ok(None)
    }

    /// The table's latest version, schema and last commit time; `None` if not created yet.
    pub async fn describe(&self) -> Result<Option<TableInfo>, SinkError> {
        use futures::StreamExt;
        let table = self.refreshed().await?;
        let Some(version) = table.version() else {
            return Ok(None);
        };
        let state = table.snapshot().map_err(|e| self.err(e))?;
        let schema = state.snapshot().arrow_schema();
        let last_commit_ms = match table.history(Some(1)).next().await {
            Some(Ok(info)) => info.timestamp,
            _ => None,
        };
        Ok(Some(TableInfo {
            version: version as i64,
            schema,
            last_commit_ms,
        }))
    }

    /// Every row of the table at its latest version (for checks, the demo and tests).
    pub async fn read_all(&self) -> Result<Vec<RecordBatch>, SinkError> {
        let ctx = datafusion::prelude::SessionContext::new();
        if !self.register(&ctx, "t").await? {
            return Ok(vec![]);
        }
        let generic = |e: &dyn std::fmt::Display| self.err(DeltaTableError::Generic(e.to_string()));
        let df = ctx.table("t").await.map_err(|e| generic(&e))?;
        df.collect().await.map_err(|e| generic(&e))
    }

    /// Whether a data file of the table may hold a value of `column` within `[min, max]`,
    /// judged from the files' statistics in the Delta log alone (no data file is opened).
    /// `Some(false)`: no file can (or there is no table yet); `None`: the statistics cannot
    /// tell (a file without them, a column the table lacks). `min` and `max` must share a type.
    ///
    /// Only for columns whose statistics are exact: integers, dates and timestamps. String
    /// statistics may be truncated prefixes, which cannot prove a range absent.
    pub async fn may_hold_range(
        &self,
        column: &str,
        min: &datafusion::common::ScalarValue,
        max: &datafusion::common::ScalarValue,
    ) -> Result<Option<bool>, SinkError> {
        use datafusion::common::ScalarValue;
        let exact = |t: &DataType| {
            t.is_integer()
                || matches!(
                    t,
                    DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
                )
        };
        if column.contains('.') || !exact(&min.data_type()) {
            return Ok(None);
        }
        let table = self.refreshed().await?;
        if table.version().is_none() {
            return Ok(Some(false));
        }
        let files = table
            .snapshot()
            .and_then(|s| s.add_actions_table(true))
            .map_err(|e| self.err(e))?;
        if files.num_rows() == 0 {
            return Ok(Some(false));
        }
        let stat = |side: &str| {
            files
                .column_by_name(&format!("{side}.{column}"))
                .and_then(|a| cast(a, &min.data_type()).ok())
        };
        let (Some(lows), Some(highs)) = (stat("min"), stat("max")) else {
            return Ok(None);
        };
        for i in 0..files.num_rows() {
            let (Ok(low), Ok(high)) = (
                ScalarValue::try_from_array(&lows, i),
                ScalarValue::try_from_array(&highs, i),
            ) else {
                return Ok(None);
            };
            if low.is_null() || high.is_null() {
                return Ok(None);
            }
            // Disjoint only when provably so; an incomparable pair counts as overlapping.
            let below = matches!(high.partial_cmp(min), Some(std::cmp::Ordering::Less));
            let above = matches!(low.partial_cmp(max), Some(std::cmp::Ordering::Greater));
            if !below && !above {
                return Ok(Some(true));
            }
        }
        Ok(Some(false))
    }

    /// Registers the table's latest version in `ctx` as `name`, for queries that read it
    /// (checks against what the table holds). Scans through it skip files by their statistics
    /// when the query filters on a column. `false` when the table does not exist yet.
    pub async fn register(
        &self,
        ctx: &datafusion::prelude::SessionContext,
        name: &str,
    ) -> Result<bool, SinkError> {
        let table = self.refreshed().await?;
        if table.version().is_none() {
            return Ok(false);
        }
        let generic = |e: &dyn std::fmt::Display| self.err(DeltaTableError::Generic(e.to_string()));
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| generic(&e))?;
        let provider = table.table_provider().await.map_err(|e| generic(&e))?;
        ctx.register_table(name, provider)
            .map_err(|e| generic(&e))?;
        Ok(true)
    }
}

/// Turns the files each part of a split commit wrote into its `commitInfo` entries.
type RecordParts = dyn Fn(&[Vec<String>]) -> Vec<(String, serde_json::Value)> + Sync;

/// The data files a commit added, if it carries a marker of one of `batches` at or below its
/// generation (a run a repair removes).
/// What a repair's log scan found: the files runs of the repaired batches added, and which
/// commit removed each file removed in the scanned range.
#[derive(Default)]
struct Landed {
    added: Vec<String>,
    removed_by: std::collections::HashMap<String, Remover>,
}

/// A commit's `commitInfo` action, if it has one.
fn commit_info(actions: &[Action]) -> Option<&deltalake::kernel::CommitInfo> {
    actions.iter().find_map(|a| match a {
        Action::CommitInfo(c) => Some(c),
        _ => None,
    })
}

/// A commit that removed a file.
#[derive(Clone)]
struct Remover {
    version: u64,
    /// Its `commitInfo.operation` (`OPTIMIZE` for a compaction).
    operation: String,
    /// Made by sluice (its `commitInfo` has a `sluice` entry): a repair, or a batch removing a
    /// replaced file's rows. Their rows are gone, not moved.
    sluice: bool,
}

fn adds_of_runs(actions: Vec<Action>, batches: &[RepairBatch]) -> Vec<String> {
    let ours = actions.iter().any(|a| {
        matches!(a, Action::Txn(t) if batches.iter().any(|b| b.app_id == t.app_id && t.version <= b.generation))
    });
    if !ours {
        return Vec::new();
    }
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Add(add) => Some(add.path),
            _ => None,
        })
        .collect()
}

/// The properties of a sluice commit: its txn markers and `commitInfo` entries.
fn commit_properties(
    txns: Vec<Transaction>,
    metadata: Vec<(String, serde_json::Value)>,
) -> CommitProperties {
    CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata(metadata)
        .with_max_retries(50)
        // Not after every commit: the cleanup lists the whole log (see `adopt`).
        .with_cleanup_expired_logs(Some(false))
}

/// `metadata` with `sluice.parts` recording the files each pipeline version of a split commit
/// wrote.
fn with_parts(
    mut metadata: Vec<(String, serde_json::Value)>,
    versions: &[i64],
    files: &[Vec<String>],
) -> Vec<(String, serde_json::Value)> {
    let parts: Vec<serde_json::Value> = versions
        .iter()
        .zip(files)
        .map(|(v, f)| serde_json::json!({"version": v, "files": f}))
        .collect();
    match metadata.iter_mut().find(|(k, _)| k == "sluice") {
        Some((_, serde_json::Value::Object(m))) => {
            m.insert("parts".into(), serde_json::Value::Array(parts));
        }
        Some((_, other)) => *other = serde_json::json!({"parts": parts}),
        None => metadata.push(("sluice".into(), serde_json::json!({"parts": parts}))),
    }
    metadata
}

/// Parquet settings of the data files sluice writes: snappy (what Spark, DuckDB and delta-rs
/// write by default) and dictionaries capped at 64 KiB per column chunk. Low-cardinality
/// columns (a status, a country) fit and stay dictionary-encoded; near-unique ones (ids,
/// emails, timestamps) give up after a few thousand values instead of hashing half a batch
/// into a 1 MiB dictionary they then discard (~12% of a batch's CPU in the benchmark).
fn writer_properties() -> deltalake::parquet::file::properties::WriterProperties {
    use deltalake::parquet::basic::Compression;
    deltalake::parquet::file::properties::WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_page_size_limit(64 * 1024)
        .build()
}

/// Delta has fewer types than Arrow: microsecond timestamps, 32-bit dates, plain strings and
/// binaries, signed integers. Cast what Delta lacks to the nearest type it has.
pub fn delta_type(t: &DataType) -> DataType {
    match t {
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Date64 => DataType::Date32,
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary | DataType::FixedSizeBinary(_) => {
            DataType::Binary
        }
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) => DataType::List(
            Arc::new(Field::new(f.name(), delta_type(f.data_type()), true)),
        ),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Field::new(f.name(), delta_type(f.data_type()), f.is_nullable()))
                .collect(),
        ),
        other => other.clone(),
    }
}

pub fn delta_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), delta_type(f.data_type()), true))
            .collect::<Vec<_>>(),
    ))
}

pub(crate) fn delta_compatible(batch: &RecordBatch) -> Result<RecordBatch, String> {
    let target = delta_schema(&batch.schema());
    if target
        .fields()
        .iter()
        .zip(batch.schema().fields())
        .all(|(a, b)| a.data_type() == b.data_type() && a.is_nullable() == b.is_nullable())
    {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(c, f)| cast(c, f.data_type()).map_err(|e| format!("column {:?}: {e}", f.name())))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(target, columns).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_to_urls() {
        let dir = tempfile::tempdir().unwrap();
        let url = table_url("t/x", dir.path()).unwrap();
        assert_eq!(url.scheme(), "file");
        assert!(url.path().ends_with("/t/x/"), "{url}");
        assert!(
            dir.path().join("t/x").is_dir(),
            "a local table folder is created"
        );
        assert_eq!(
            table_url("memory:///t", dir.path()).unwrap().scheme(),
            "memory"
        );
        for cloud in [
            "az://c/t",
            "abfss://c@acct.dfs.core.windows.net/t",
            "gs://b/t",
        ] {
            assert_eq!(table_url(cloud, dir.path()).unwrap().as_str(), cloud);
        }
        let s3 = table_url("s3://bucket/t", dir.path()).map_err(|e| e.to_string());
        if cfg!(feature = "s3") {
            assert!(s3.is_ok(), "{s3:?}");
        } else {
            assert!(s3.is_err_and(|e| e.contains("--features s3")));
        }
        let err = table_url("ftp://host/t", dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown table URL scheme \"ftp\""), "{err}");
        assert!(table_url("file://[bad", dir.path()).is_err());
    }
}
