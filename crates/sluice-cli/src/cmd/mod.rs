//! One module per command. Each returns the exit code; errors carry their exit code in
//! [`Exit`] when it is not the default 1.

mod datasets;
mod demo;
pub mod diff;
pub mod quarantine;
mod run;
pub mod schema;
mod status;
mod validate;
pub mod verify;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use sluice_store::Store;

use crate::cli::{Cli, Command};

/// An error that is the user's input or usage: exit code 2.
#[derive(Debug)]
pub struct InputError(pub String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.downcast_ref::<InputError>().is_some()) {
        2
    } else {
        1
    }
}

/// An error and its causes on one line, each said once: a message that already quotes its
/// cause (as sqlx's and the store's do) is not followed by that cause again.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { file, json, store } => {
            validate::validate(&file, json, &store.store).await
        }
        Command::Run(args) => run::run(args).await,
        Command::Worker(args) => run::worker(args).await,
        Command::Status { store, json } => status::status(&store.store, json).await,
        Command::Retry {
            batch,
            all,
            pipeline,
            dropped: false,
            store,
        } => status::retry(&store.store, batch, all, pipeline).await,
        Command::Retry {
            batch,
            all,
            pipeline,
            dropped: true,
            store,
        } => status::retry_dropped(&store.store, batch, all, pipeline).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::Quarantine(args) => quarantine::quarantine(args).await,
        Command::Schema(args) => schema::schema(args).await,
        Command::Diff(args) => diff::diff(args).await,
        Command::Verify(args) => verify::verify(args).await,
    }
}

pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    sluice_store::open(url)
        .await
        .with_context(|| format!("opening the state store {}", redact(url)))
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

/// Loads and compiles a spec file; problems are input errors (exit 2) with file:line.
/// A spec naming registered datasets is resolved against the store at `store_url` (opened
/// only then).
pub async fn compile(
    path: &std::path::Path,
    version: i64,
    store_url: &str,
) -> anyhow::Result<sluice_engine::Pipeline> {
    let mut file =
        sluice_engine::spec::SpecFile::load(path).map_err(|e| InputError(e.to_string()))?;
    let names_datasets = file.spec.source.dataset.is_some() || file.spec.sink.dataset.is_some();
    let store = if names_datasets {
        Some(open_store(store_url).await?)
    } else {
        None
    };
    if let Some(store) = &store {
        datasets::resolve_source(&mut file, store).await?;
    }
    let mut pipeline = sluice_engine::Pipeline::compile(&file, version)
        .await
        .map_err(|e| anyhow::Error::new(InputError(e.to_string())))?;
    if let Some(store) = &store {
        datasets::check_sink(&file, &mut pipeline, store).await?;
    }
    Ok(pipeline)
}

#[cfg(test)]
mod tests {
    use super::{redact, render_error};

    #[test]
    fn causes_quoted_by_their_error_are_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let reset = io.to_string();
        let e = anyhow::Error::new(sluice_store::testing::io_error(io.kind())).context("leasing");
        let text = render_error(&e);
        assert_eq!(text.matches(&reset).count(), 1, "{text}");
        assert!(
            text.starts_with("leasing: state store unreachable"),
            "{text}"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(render_error(&plain), "outer: inner");
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact(".sluice/state.db"), ".sluice/state.db");
    }
}
