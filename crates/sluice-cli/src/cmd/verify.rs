//! `sluice verify pre FILE` and `sluice verify post PIPELINE`: arguments and rendering; the
//! suites are `sluice_app::verify`'s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use sluice_app::verify::{self, PostOptions, PreOptions};
use sluice_quality::Status;

use crate::cli::StoreArg;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(subcommand)]
    pub command: VerifyCommand,
}

#[derive(Debug, Subcommand)]
pub enum VerifyCommand {
    /// Before a candidate takes traffic: spec, SQL, sink schema, a dry run on recent batches,
    /// store, backlog, table freshness.
    Pre {
        /// The candidate pipeline spec.
        file: PathBuf,
        #[command(flatten)]
        store: StoreArg,
        /// Recent batches to dry-run the candidate on.
        #[arg(long, default_value_t = PreOptions::DEFAULT.sample)]
        sample: usize,
        /// A backlog above this many batches is a warning.
        #[arg(long, default_value_t = PreOptions::DEFAULT.max_backlog)]
        max_backlog: i64,
        /// A table whose newest commit is older than this is a warning.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        max_table_age: Duration,
        /// More warnings than this means INVESTIGATE (default: the spec's
        /// `deploy.max_warnings`, else 2).
        #[arg(long)]
        max_warnings: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// After a version took traffic: workers, error rate and p95 latency against the previous
    /// version, freshness, output volume, sink schema, checks.
    Post {
        /// The pipeline name.
        pipeline: String,
        #[command(flatten)]
        store: StoreArg,
        /// The window of recent runs judged.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        window: Duration,
        /// More warnings than this means INVESTIGATE (default: the current version's
        /// `deploy.max_warnings`, else 2).
        #[arg(long)]
        max_warnings: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (verification, max_warnings, json) = match args.command {
        VerifyCommand::Pre {
            file,
            store,
            sample,
            max_backlog,
            max_table_age,
            max_warnings,
            json,
        } => {
            let opts = PreOptions {
                sample,
                max_backlog,
                max_table_age,
            };
            (
                verify::pre(&file, &store.store, &opts).await,
                max_warnings,
                json,
            )
        }
        VerifyCommand::Post {
            pipeline,
            store,
            window,
            max_warnings,
            json,
        } => {
            let opts = PostOptions {
                window,
                ..PostOptions::DEFAULT
            };
            (
                verify::post(&pipeline, &store.store, &opts).await?,
                max_warnings,
                json,
            )
        }
    };
    let verdict = verification.verdict(max_warnings);
    let suite = &verification.suite;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "suite": suite.name,
                "items": suite.items,
                "decision": verdict.decision,
                "reasons": verdict.reasons,
            }))?
        );
    } else {
        print!("{}", suite.render());
        println!(
            "\n{}: {} pass, {} warn, {} fail -> {}",
            suite.name,
            suite.count(Status::Pass),
            suite.count(Status::Warn),
            suite.count(Status::Fail),
            verdict.decision
        );
    }
    // Scripts gate on the exit code: only PROCEED is 0.
    Ok(match verdict.decision {
        sluice_quality::Decision::Proceed => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}
