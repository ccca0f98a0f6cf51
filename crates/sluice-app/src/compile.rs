//! Opening the store and compiling a spec file into a pipeline version.

use std::path::Path;
use std::sync::Arc;

use sluice_engine::spec::SpecFile;
use sluice_store::Store;

use crate::datasets;
use crate::error::{AppError, During, Result};

/// Opens (and migrates) the state store at `url`.
pub async fn open_store(url: &str) -> Result<Arc<dyn Store>> {
    sluice_store::open(url)
        .await
        .during(format!("opening the state store {}", redact(url)))
}

/// Hides a password in a store URL before printing it.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Loads and compiles a spec file; problems are user errors with file:line. A spec naming
/// registered datasets is resolved against the store at `store_url` (opened only then).
pub async fn compile(
    path: &Path,
    version: i64,
    store_url: &str,
) -> Result<sluice_engine::Pipeline> {
    let file =
        sluice_engine::spec::SpecFile::load(path).map_err(|e| AppError::User(e.to_string()))?;
    let store = if names_datasets(&file) {
        Some(open_store(store_url).await?)
    } else {
        None
    };
    compile_spec(file, version, store.as_ref()).await
}

fn names_datasets(file: &SpecFile) -> bool {
    file.spec.source.dataset.is_some() || file.spec.sink.dataset.is_some()
}

/// Compiles a parsed spec, resolving the datasets it names against `store` (which must be
/// given when it names any).
pub(crate) async fn compile_spec(
    mut file: SpecFile,
    version: i64,
    store: Option<&Arc<dyn Store>>,
) -> Result<sluice_engine::Pipeline> {
    let store = match (names_datasets(&file), store) {
        (true, None) => {
            return Err(AppError::Internal(
                "a spec naming datasets was compiled without a store".into(),
            ));
        }
        (true, Some(store)) => Some(store),
        (false, _) => None,
    };
    if let Some(store) = store {
        datasets::resolve_source(&mut file, store).await?;
    }
    let mut pipeline = sluice_engine::Pipeline::compile(&file, version)
        .await
        .map_err(|e| AppError::User(e.to_string()))?;
    if let Some(store) = store {
        datasets::check_sink(&file, &mut pipeline, store).await?;
    }
    Ok(pipeline)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact(".sluice/state.db"), ".sluice/state.db");
    }
}
