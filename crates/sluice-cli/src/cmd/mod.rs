//! One module per command. Each returns the exit code; errors carry their exit code in
//! [`Exit`] when it is not the default 1.

mod demo;
mod demo_deploy;
pub mod deploy;
pub mod diff;
pub mod quarantine;
mod run;
pub mod schema;
mod serve;
mod status;
mod validate;
pub mod verify;

use std::process::ExitCode;
use std::sync::Arc;

use sluice_core::ErrorKind;
use sluice_store::Store;

use crate::cli::{Cli, Command};

/// An error that is the user's input or usage: exit code 2 (as is an [`sluice_app::AppError`]
/// of [`ErrorKind::User`]).
#[derive(Debug)]
pub struct InputError(pub String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    let user = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<InputError>().is_some()
            || c.downcast_ref::<sluice_app::AppError>()
                .is_some_and(|a| a.kind() == ErrorKind::User)
    };
    if e.chain().any(user) { 2 } else { 1 }
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
        Command::Deploy(args) => deploy::deploy(args).await,
        Command::Promote {
            pipeline,
            full,
            store,
        } => {
            let request = if full {
                sluice_store::DeploymentRequest::PromoteFull
            } else {
                sluice_store::DeploymentRequest::Promote
            };
            deploy::request(&store.store, &pipeline, request).await
        }
        Command::Pause { pipeline, store } => {
            deploy::request(
                &store.store,
                &pipeline,
                sluice_store::DeploymentRequest::Pause,
            )
            .await
        }
        Command::Resume { pipeline, store } => {
            deploy::request(
                &store.store,
                &pipeline,
                sluice_store::DeploymentRequest::Resume,
            )
            .await
        }
        Command::Abort { pipeline, store } => {
            deploy::request(
                &store.store,
                &pipeline,
                sluice_store::DeploymentRequest::Abort,
            )
            .await
        }
        Command::Rollback { pipeline, store } => deploy::rollback(&store.store, &pipeline).await,
        Command::History {
            pipeline,
            json,
            limit,
            store,
        } => deploy::history(&store.store, pipeline.as_deref(), json, limit).await,
        Command::Analysis(args) => deploy::analysis(args).await,
        Command::Serve(args) => serve::serve(args).await,
    }
}

pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    Ok(sluice_app::open_store(url).await?)
}

pub use sluice_app::redact;

/// Loads and compiles a spec file (see [`sluice_app::compile`]).
pub async fn compile(
    path: &std::path::Path,
    version: i64,
    store_url: &str,
) -> anyhow::Result<sluice_engine::Pipeline> {
    Ok(sluice_app::compile(path, version, store_url).await?)
}

#[cfg(test)]
mod tests {
    use super::render_error;

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
}
