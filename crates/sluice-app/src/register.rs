//! Registering a pipeline version.

use std::path::Path;
use std::sync::Arc;

use sluice_store::Store;

use crate::error::{AppError, During, Result};

/// Opens the pipeline's sink table. A table location or object store that cannot be read (no
/// credentials, no such bucket or container) is refused before anything is queued, not found
/// by every batch in turn, which would quarantine them all. `path` is the spec file, for the
/// message.
pub async fn probe_sink(pipeline: &sluice_engine::Pipeline, path: &Path) -> Result<()> {
    match pipeline.sink().describe().await {
        Ok(_) => Ok(()),
        Err(e) => Err(AppError::User(format!(
            "{}: cannot open the sink table: {e}\n  check the location and, for an object store, its credentials (README, \"Tables on object stores\"); nothing was queued",
            path.display()
        ))),
    }
}

/// Registers `pipeline` as an immutable version of its pipeline (sequence + content hash; the
/// same spec again is the same version) and pins `pipeline.version` to it. `make_current`
/// makes it the version new batches run under; a deployment registers without.
pub async fn register_version(
    store: &Arc<dyn Store>,
    pipeline: &mut sluice_engine::Pipeline,
    make_current: bool,
) -> Result<i64> {
    let version = store
        .register_pipeline_version(
            pipeline.name(),
            &pipeline.spec_hash(),
            &pipeline.resolved_spec(),
            &pipeline.base_dir.display().to_string(),
            make_current,
        )
        .await
        .during("registering the pipeline version")?;
    pipeline.version = version.version;
    Ok(version.version)
}

/// `sluice run`'s registration: compiles the spec file, probes its sink, registers it as the
/// current version and returns it compiled and pinned.
pub async fn register_current(
    store: &Arc<dyn Store>,
    store_url: &str,
    path: &Path,
) -> Result<Arc<sluice_engine::Pipeline>> {
    let mut pipeline = crate::compile(path, 0, store_url).await?;
    probe_sink(&pipeline, path).await?;
    register_version(store, &mut pipeline, true).await?;
    Ok(Arc::new(pipeline))
}
