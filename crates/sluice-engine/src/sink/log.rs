//! The local file system under a Delta table, with its `_delta_log` listed by probing.
//!
//! delta-rs lists the log on every snapshot update and every commit ("which versions exist
//! after N?"). Object stores answer that from an offset (S3, GCS), but the local file system
//! cannot: `object_store`'s `list_with_offset` walks the whole folder and drops what sorts
//! before the offset, so a table with 10,000 commits paid for 10,000 directory entries (path
//! parsing included) several times per batch. Commit files are named by consecutive version
//! numbers, so "what exists after N" is answered here by asking for N, N+1, ... until one is
//! missing: a few `stat` calls, whatever the log's length.
//!
//! Only what the probe can name is listed: commits (`N.json`) and classic single-file
//! checkpoints (`N.checkpoint.parquet`), the only kinds delta-rs writes for sluice's tables.
//! Anything the probe cannot prove complete (a multi-part or V2 checkpoint named by the
//! `_last_checkpoint` hint, a listing starting before the oldest commit left) goes to the full
//! listing, so the answer is never shorter than the folder's.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The root store of a local table (`file://`): [`LocalFileSystem`] but for log listings.
#[derive(Debug)]
pub(super) struct ProbedLocalLog {
    inner: Arc<LocalFileSystem>,
}

impl ProbedLocalLog {
    pub(super) fn new() -> ProbedLocalLog {
        ProbedLocalLog {
            inner: Arc::new(LocalFileSystem::new()),
        }
    }
}

impl fmt::Display for ProbedLocalLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProbedLocalLog({})", self.inner)
    }
}

/// The log folder and first version of a listing `list_with_offset` may answer by probing.
fn log_listing(prefix: Option<&Path>, offset: &Path) -> Option<(Path, u64)> {
    let prefix = prefix?;
    if prefix.filename() != Some("_delta_log") {
        return None;
    }
    let mut rest = offset.prefix_match(prefix)?;
    let name = rest.next()?;
    if rest.next().is_some() {
        return None;
    }
    let digits = name.as_ref().get(..20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((prefix.clone(), digits.parse().ok()?))
}

/// What the `_last_checkpoint` hint says, as far as probing is concerned.
enum Hint {
    /// No hint, or a classic single-file checkpoint at this version.
    Classic(Option<u64>),
    /// A checkpoint the probe cannot name (multi-part, V2): list the folder.
    Unnameable,
}

fn read_hint(dir: &std::path::Path) -> Hint {
    let Ok(bytes) = std::fs::read(dir.join("_last_checkpoint")) else {
        return Hint::Classic(None);
    };
    let Ok(hint) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Hint::Unnameable;
    };
    let parts = hint.get("parts").and_then(|p| p.as_u64()).unwrap_or(1);
    match hint.get("version").and_then(|v| v.as_u64()) {
        Some(v) if parts <= 1 && hint.get("v2Checkpoint").is_none() => Hint::Classic(Some(v)),
        _ => Hint::Unnameable,
    }
}

fn meta_of(dir: &std::path::Path, prefix: &Path, name: &str) -> Option<ObjectMeta> {
    let md = std::fs::metadata(dir.join(name)).ok()?;
    if !md.is_file() {
        return None;
    }
    Some(ObjectMeta {
        location: prefix.clone().join(name),
        last_modified: md.modified().ok()?.into(),
        size: md.len(),
        e_tag: None,
        version: None,
    })
}

/// The commits and checkpoints from version `start` on, in name order; `None` when the probe
/// cannot prove its answer complete.
fn probe(dir: PathBuf, prefix: &Path, start: u64) -> Option<Vec<ObjectMeta>> {
    let last_checkpoint = match read_hint(&dir) {
        Hint::Classic(v) => v,
        Hint::Unnameable => return None,
    };
    let mut out = Vec::new();
    let mut version = start;
    loop {
        // "N.checkpoint.parquet" sorts before "N.json".
        let checkpoint = meta_of(&dir, prefix, &format!("{version:020}.checkpoint.parquet"));
        let commit = meta_of(&dir, prefix, &format!("{version:020}.json"));
        if commit.is_none() && checkpoint.is_none() {
            // Past the end of the log, after what was found, or right after its last commit.
            let after_last =
                || start > 0 && meta_of(&dir, prefix, &format!("{:020}.json", start - 1)).is_some();
            if version > start || after_last() {
                break;
            }
            // The listing starts before the oldest commit left (cleaned up under a
            // checkpoint): only the folder knows which checkpoints remain.
            return None;
        }
        out.extend(checkpoint);
        out.extend(commit);
        version += 1;
    }
    // A hint newer than the end found means a commit vanished mid-probe: ask the folder.
    if last_checkpoint.is_some_and(|c| c >= version) {
        return None;
    }
    Some(out)
}

#[async_trait]
impl ObjectStore for ProbedLocalLog {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let Some((log, start)) = log_listing(prefix, offset) else {
            return self.inner.list_with_offset(prefix, offset);
        };
        let dir = match self.inner.path_to_filesystem(&log) {
            Ok(dir) => dir,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let inner = self.inner.clone();
        let offset = offset.clone();
        futures::stream::once(async move {
            let probed = {
                let (log, offset) = (log.clone(), offset.clone());
                tokio::task::spawn_blocking(sluice_core::usage::carried(move || {
                    probe(dir, &log, start).map(|metas| {
                        metas
                            .into_iter()
                            .filter(|m| m.location > offset)
                            .collect::<Vec<_>>()
                    })
                }))
                .await
                .ok()
                .flatten()
            };
            match probed {
                Some(metas) => futures::stream::iter(metas.into_iter().map(Ok)).boxed(),
                None => inner.list_with_offset(Some(&log), &offset),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    async fn names(store: &dyn ObjectStore, log: &Path, offset: &str) -> Vec<String> {
        let mut v: Vec<String> = store
            .list_with_offset(Some(log), &log.clone().join(offset))
            .map_ok(|m| m.location.filename().unwrap_or_default().to_string())
            .try_collect()
            .await
            .unwrap();
        v.sort();
        v
    }

    #[tokio::test]
    async fn probing_lists_what_the_folder_holds_after_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("_delta_log");
        std::fs::create_dir(&log_dir).unwrap();
        let touch = |name: &str| std::fs::write(log_dir.join(name), b"{}").unwrap();
        for v in 0..12u64 {
            touch(&format!("{v:020}.json"));
        }
        touch(&format!("{:020}.checkpoint.parquet", 9));
        touch("_last_checkpoint");
        std::fs::write(
            log_dir.join("_last_checkpoint"),
            br#"{"version":9,"size":3}"#,
        )
        .unwrap();
        let log = Path::from_filesystem_path(&log_dir).unwrap();
        let probed = ProbedLocalLog::new();
        let plain = LocalFileSystem::new();
        for offset in [
            format!("{:020}", 0),
            format!("{:020}", 9),
            format!("{:020}.json", 9),
            format!("{:020}", 10),
            format!("{:020}", 12),
        ] {
            let want: Vec<String> = names(&plain, &log, &offset)
                .await
                .into_iter()
                .filter(|n| n != "_last_checkpoint")
                .collect();
            assert_eq!(names(&probed, &log, &offset).await, want, "from {offset}");
        }
        // Commits cleaned up under the checkpoint: a listing from before it falls back to the
        // folder, which still holds the checkpoint and what follows.
        for v in 0..9u64 {
            std::fs::remove_file(log_dir.join(format!("{v:020}.json"))).unwrap();
        }
        let from_zero = names(&probed, &log, &format!("{:020}", 0)).await;
        assert_eq!(from_zero, names(&plain, &log, &format!("{:020}", 0)).await);
        assert!(from_zero.contains(&format!("{:020}.checkpoint.parquet", 9)));
    }
}
