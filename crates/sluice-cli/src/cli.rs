//! Command-line arguments, as parsed. `cmd` turns them into work.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Run data pipelines that scale out and upgrade while they run",
    long_about = "sluice takes files as they land, cuts them into batches, transforms each batch \
with SQL (Apache DataFusion) and commits the result to a Delta Lake table exactly once. \
Workers scale out in one process (--workers) and across machines (`sluice worker` on a \
shared PostgreSQL store).\n\nExit codes: 0 ok, 1 the thing checked failed, 2 usage or input error."
)]
pub struct Cli {
    /// Log more (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct StoreArg {
    /// State store: a SQLite file path (default `.sluice/state.db`) or a postgres:// URL shared
    /// by workers on many machines.
    #[arg(long, env = "SLUICE_STORE", default_value = ".sluice/state.db")]
    pub store: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a pipeline spec without running it: YAML, columns, SQL planned against the input.
    Validate {
        /// The pipeline spec (YAML).
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Only opened when the spec names registered datasets.
        #[command(flatten)]
        store: StoreArg,
    },
    /// Run a pipeline: watch its landing folder, queue batches, process them with N workers.
    Run(RunArgs),
    /// Join a store's pipelines as extra workers (this or another machine); takes its turn at
    /// the leader duties (discovery of every pipeline, deployments).
    Worker(WorkerArgs),
    /// Deploy a new version of a pipeline under its `deploy:` policy (recreate, rolling,
    /// canary), or show a deployment (`deploy status PIPELINE`).
    Deploy(crate::cmd::deploy::DeployArgs),
    /// Go past the current pause or analysis step of a deployment (`--full`: skip the rest).
    Promote {
        pipeline: String,
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Pause a deployment where it is (batches keep flowing on the current weights).
    Pause {
        pipeline: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Resume a paused deployment (an inconclusive analysis measures again).
    Resume {
        pipeline: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Abort a deployment: every new batch to stable at once, the candidate's rows repaired.
    Abort {
        pipeline: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Go back to the previous stable version (aborting a deployment in progress), skipping
    /// every step, and repair the rows of the version rolled back.
    Rollback {
        pipeline: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Every deployment: outcome, duration, reason, and each metric before and after.
    History {
        pipeline: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Named analysis templates that pipelines' `deploy:` analyses reference.
    Analysis(crate::cmd::deploy::AnalysisArgs),
    /// Per pipeline: batches pending / leased / done / quarantined, rows, throughput, workers.
    Status {
        #[command(flatten)]
        store: StoreArg,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put quarantined batches back in the queue (for example after fixing the spec or data).
    Retry {
        /// The batch id to retry (see `sluice status`).
        batch: Option<String>,
        /// Retry every quarantined batch (of `--pipeline`, or of all pipelines).
        #[arg(long, conflicts_with = "batch")]
        all: bool,
        #[arg(long, requires = "all")]
        pipeline: Option<String>,
        /// Replay the rows `source.bad_rows: drop` left out (of BATCH, or with --all of every
        /// batch) through the pipeline's current version, as a new batch per original batch
        /// with its own stable id: queued once, published once.
        #[arg(long)]
        dropped: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Inspect what is held back: quarantined batches and the rows checks held.
    Quarantine(crate::cmd::quarantine::QuarantineArgs),
    /// Generate sample orders, run them through a pipeline with several workers, and prove the
    /// Delta table holds every good row exactly once.
    Demo(DemoArgs),
    /// Dataset schemas: register versions, check compatibility, diff, plan migrations.
    Schema(crate::cmd::schema::SchemaArgs),
    /// Compare two Delta tables by key: rows only in A, only in B, changed rows per column.
    Diff(crate::cmd::diff::DiffArgs),
    /// Deploy suites: PASS / WARN / FAIL per item and a decision (PROCEED / INVESTIGATE /
    /// ROLLBACK); exit 0 only on PROCEED.
    Verify(crate::cmd::verify::VerifyArgs),
    /// Serve the HTTP API (/api/v1), /metrics, /health and /ready over the store; with
    /// --workers also run workers for every pipeline.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Address and port to listen on. Off loopback it needs an API token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Also run this many workers (of every pipeline in the store) in this process.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Reads (GET) need no token; changes still do.
    #[arg(long)]
    pub public_read: bool,
    /// A file holding the API token (else SLUICE_API_TOKEN). Without a token the server
    /// listens on loopback only.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A folder (or object-store URL prefix) a spec sent over the API may name locations
    /// under; repeatable. Default: the working directory.
    #[arg(long = "root")]
    pub roots: Vec<String>,
    /// The largest request body taken, in bytes.
    #[arg(long, default_value_t = sluice_server::DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// On SIGTERM / Ctrl-C, how long the workers' in-flight batches may finish.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline spec (YAML).
    pub file: PathBuf,
    /// Workers in this process.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub store: StoreArg,
    /// Stop once every landed file is processed (no new files, queue empty), instead of watching.
    #[arg(long)]
    pub until_drained: bool,
    /// How often to look for new files.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// On SIGTERM / Ctrl-C, how long in-flight batches may finish before they are released.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long the state store may be unreachable (restarting, failing over, a SQLite file
    /// locked) before the process gives up and exits 1; until then it waits and retries.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub store_outage_limit: Duration,
    /// How long this process's leader lease lasts unless renewed; another process takes the
    /// leader duties over after it expires.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub leader_lease: Duration,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Workers in this process.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Only work on these pipelines (default: all in the store).
    #[arg(long = "pipeline")]
    pub pipelines: Vec<String>,
    /// Lease length; a worker that dies loses its batches to others after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Exit once the queue has stayed empty for a few seconds.
    #[arg(long)]
    pub until_drained: bool,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// How long the state store may be unreachable (restarting, failing over, a SQLite file
    /// locked) before the process gives up and exits 1; until then it waits and retries.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub store_outage_limit: Duration,
    /// See `sluice run --leader-lease`.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub leader_lease: Duration,
    /// Never take the leader duties (only lease and run batches).
    #[arg(long)]
    pub no_leader: bool,
    /// Serve /health and this process's own metrics (CPU, memory) at ADDR:PORT, for a
    /// liveness probe and a per-process scrape (the pipelines' series are `sluice serve`'s).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Rows of sample orders to generate.
    #[arg(long, default_value_t = 200_000)]
    pub rows: u64,
    /// Files to spread them over.
    #[arg(long, default_value_t = 8)]
    pub files: u64,
    /// Workers in this process.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Project folder to use (kept afterwards). Default: a temporary folder, removed at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn init_tracing(verbose: u8, quiet: bool) {
    // delta-rs logs every optimistic-concurrency retry at warn; they are routine for us.
    let default = match verbose {
        // delta-rs logs the optimistic-concurrency conflicts sluice retries (at error level, when
        // workers race to create a table) and the kernel logs "No files in log segment" for a
        // table not created yet; what sluice cannot recover from, it reports itself. -v shows all.
        // sqlx warns of every slow connection while a store is away; sluice says so once.
        0 if quiet => "error,deltalake_core=off,buoyant_kernel=off",
        0 => "warn,deltalake_core=off,buoyant_kernel=off,sqlx::pool::acquire=error",
        1 => "info,sluice=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_stderr())
        .try_init();
}

/// Colour log lines only on a terminal, and never when `NO_COLOR` is set to anything but the
/// empty string (<https://no-color.org>): a pipe or a file gets plain text.
fn colour_stderr() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}
