//! `sluice deploy`, `deploy status`, `promote`, `pause`, `resume`, `abort`, `rollback`,
//! `history`, `analysis`: parsing and rendering over `sluice_app::deploy`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use sluice_app::deploy::{self, DeployOptions, Deployed, DeploymentView};
use sluice_quality::policy::Strategy;
use sluice_store::{DeploymentOutcome, DeploymentRecord, DeploymentRequest};

use crate::cli::StoreArg;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub action: Option<DeployAction>,
    /// The new version's pipeline spec (YAML).
    pub file: Option<PathBuf>,
    /// Overrides the spec's `deploy.strategy`.
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// Block until the deployment ends: exit 0 promoted, 1 aborted or rolled back (with the
    /// reason), so a CI job can gate a release on it. The deployment moves while a `sluice
    /// run` or `sluice worker` process runs on the store.
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    Recreate,
    Rolling,
    Canary,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Strategy {
        match s {
            StrategyArg::Recreate => Strategy::Recreate,
            StrategyArg::Rolling => Strategy::Rolling,
            StrategyArg::Canary => Strategy::Canary,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DeployAction {
    /// The pipeline's deployment in progress (else its latest): strategy, step, weights, each
    /// analysis with its last measurements. Live on a terminal unless --json or --once.
    Status {
        pipeline: String,
        #[arg(long)]
        json: bool,
        /// Print once and exit (the default off a terminal).
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Debug, Args)]
pub struct AnalysisArgs {
    #[command(subcommand)]
    pub action: AnalysisAction,
}

#[derive(Debug, Subcommand)]
pub enum AnalysisAction {
    /// Store (or replace) a named analysis template from a YAML file.
    Put {
        name: String,
        file: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// The stored templates.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    if let Some(DeployAction::Status {
        pipeline,
        json,
        once,
        store,
    }) = args.action
    {
        return status(&store.store, &pipeline, json, once).await;
    }
    let Some(file) = args.file else {
        return Err(super::InputError(
            "`sluice deploy` needs a spec file (`sluice deploy FILE`) or `sluice deploy status PIPELINE`"
                .into(),
        )
        .into());
    };
    let store = super::open_store(&args.store.store).await?;
    let opts = DeployOptions {
        strategy: args.strategy.map(Strategy::from),
        pre_suite: true,
        started_by: "sluice deploy".into(),
    };
    let deployed = deploy::deploy(&store, &args.store.store, &file, &opts).await?;
    let deployment = match deployed {
        Deployed::First(p) => {
            println!(
                "{}@{} is the pipeline's first version: current at once, nothing to deploy from",
                p.name(),
                p.version
            );
            return Ok(ExitCode::SUCCESS);
        }
        Deployed::Unchanged(p) => {
            println!(
                "{}@{} is the current version already: nothing to deploy",
                p.name(),
                p.version
            );
            return Ok(ExitCode::SUCCESS);
        }
        Deployed::Started { deployment, .. } => deployment,
    };
    if !args.json {
        println!(
            "deployment #{} of {}: v{} -> v{} by {}",
            deployment.id,
            deployment.pipeline,
            deployment.stable_version,
            deployment.candidate_version,
            deployment.strategy
        );
    }
    if !args.wait {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&deployment)?);
        } else {
            println!(
                "it moves while a `sluice run` or `sluice worker` runs on this store; follow it with `sluice deploy status {}`",
                deployment.pipeline
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let json = args.json;
    let ended = deploy::wait(&store, deployment.id, Duration::from_millis(250), |d| {
        if !json {
            println!("  {}", one_line(d));
        }
    })
    .await?;
    if json {
        let view = deploy::view(&store, ended.clone()).await?;
        println!("{}", serde_json::to_string_pretty(&view)?);
    }
    Ok(exit_of(&ended))
}

/// 0 promoted, 1 aborted or rolled back.
fn exit_of(d: &DeploymentRecord) -> ExitCode {
    match d.outcome {
        Some(DeploymentOutcome::Promoted) => ExitCode::SUCCESS,
        _ => {
            eprintln!(
                "deployment #{} of {} {}: {}",
                d.id,
                d.pipeline,
                d.outcome.map(|o| o.as_str()).unwrap_or("ended"),
                d.reason.as_deref().unwrap_or("no reason recorded")
            );
            ExitCode::FAILURE
        }
    }
}

fn one_line(d: &DeploymentRecord) -> String {
    let mut line = format!(
        "#{} {} step {} route {} {}% to v{}",
        d.id,
        d.state,
        d.step,
        d.route.mode.as_str(),
        d.route.weight,
        d.candidate_version
    );
    if let Some(reason) = &d.reason {
        line.push_str(&format!(": {reason}"));
    }
    line
}

pub async fn request(
    store_url: &str,
    pipeline: &str,
    request: DeploymentRequest,
) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let d = deploy::request(&store, pipeline, request).await?;
    println!(
        "{} requested on deployment #{} of {pipeline} ({}); the controller acts on it within a tick",
        request.as_str(),
        d.id,
        d.state
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(store_url: &str, pipeline: &str) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let d = deploy::rollback(&store, pipeline).await?;
    println!(
        "rolling {pipeline} back: new batches go to v{} now; v{}'s rows are repaired (deployment #{}; `sluice deploy status {pipeline}`)",
        d.stable_version, d.candidate_version, d.id
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(
    store_url: &str,
    pipeline: &str,
    json: bool,
    once: bool,
) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let live = !json && !once && std::io::stdout().is_terminal();
    loop {
        let Some(view) = deploy::status(&store, pipeline).await? else {
            return Err(super::InputError(format!(
                "pipeline {pipeline} has no deployments; start one with `sluice deploy FILE`"
            ))
            .into());
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&view)?);
            return Ok(ExitCode::SUCCESS);
        }
        if live {
            // Clear the screen and draw again.
            print!("\x1b[2J\x1b[H");
        }
        let now = store.now().await?;
        print!("{}", render(&view, now));
        if !live || view.deployment.outcome.is_some() {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A deployment for a terminal: header, route, reason, each analysis's last measurements.
pub fn render(view: &DeploymentView, now: i64) -> String {
    let d = &view.deployment;
    let mut out = format!(
        "deployment #{} of {}: v{} -> v{} by {} ({})\n",
        d.id, d.pipeline, d.stable_version, d.candidate_version, d.strategy, d.started_by
    );
    out.push_str(&format!(
        "  state     {}{}\n",
        d.state,
        d.outcome
            .map(|o| format!(" ({})", o.as_str()))
            .unwrap_or_default()
    ));
    if let Some(policy) = &view.policy {
        let steps = policy.steps.len();
        if steps > 0 {
            out.push_str(&format!(
                "  step      {} of {steps}\n",
                (d.step + 1).min(steps as i64)
            ));
        }
    }
    out.push_str(&format!(
        "  route     {} {}% to v{}, {}% to v{}\n",
        d.route.mode.as_str(),
        d.route.weight,
        d.candidate_version,
        100 - u32::from(d.route.weight.min(100)),
        d.stable_version
    ));
    out.push_str(&format!(
        "  running   {}\n",
        humantime::format_duration(Duration::from_secs(view.duration(now).as_secs()))
    ));
    if let Some(reason) = &d.reason {
        out.push_str(&format!("  reason    {reason}\n"));
    }
    if let Some(refused) = view.data.repair.as_ref().and_then(|r| r.refused.as_ref()) {
        out.push_str(&format!("  repair    {refused}\n"));
    }
    if let Some(gap) = view.data.gap_ms {
        out.push_str(&format!(
            "  switch    {gap} ms without a version (recreate's drain)\n"
        ));
    }
    if let (Some(detected), Some(rerouted)) = (view.data.detected_at, view.data.rerouted_at) {
        out.push_str(&format!(
            "  detect    first failed measurement to every new batch on v{}: {} ms\n",
            d.stable_version,
            (rerouted - detected).max(0)
        ));
    }
    for w in view.webhook_summary() {
        out.push_str(&format!("  webhook   {}\n", webhook_line(&w)));
    }
    // The last measurement of each analysis's metrics.
    if !view.metrics.is_empty() {
        out.push_str("  analysis\n");
        for m in &view.metrics {
            out.push_str(&format!(
                "    {:<14} {:<18} {:<12} candidate {} stable {} ({} measured): {}\n",
                m.analysis,
                m.metric,
                m.last_phase,
                fmt_value(m.last_value),
                fmt_value(m.last_stable_value),
                m.measured,
                m.last_message
            ));
        }
    }
    out
}

/// `URL: 5 delivered, 1 failed, 0 pending (last error: ...)`.
fn webhook_line(w: &deploy::WebhookSummary) -> String {
    format!(
        "{}: {} delivered, {} failed, {} pending{}",
        w.url,
        w.delivered,
        w.failed,
        w.pending,
        w.last_error
            .as_deref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default()
    )
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        Some(v) if v.fract() == 0.0 && v.abs() < 1e12 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
        None => "-".into(),
    }
}

pub async fn history(
    store_url: &str,
    pipeline: Option<&str>,
    json: bool,
    limit: i64,
) -> anyhow::Result<ExitCode> {
    let store = super::open_store(store_url).await?;
    let views = deploy::history(&store, pipeline, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(ExitCode::SUCCESS);
    }
    if views.is_empty() {
        println!("no deployments yet");
        return Ok(ExitCode::SUCCESS);
    }
    let now = store.now().await?;
    print!("{}", render_history(&views, now));
    Ok(ExitCode::SUCCESS)
}

/// One block per deployment, newest first: outcome, duration, reason, and each metric's first
/// and last measurement (before and after).
pub fn render_history(views: &[DeploymentView], now: i64) -> String {
    let mut out = String::new();
    for view in views {
        let d = &view.deployment;
        out.push_str(&format!(
            "#{:<3} {:<10} v{} -> v{} {:<9} {:<12} {:>8}  {}\n",
            d.id,
            d.pipeline,
            d.stable_version,
            d.candidate_version,
            d.strategy,
            d.outcome.map(|o| o.as_str()).unwrap_or(d.state.as_str()),
            humantime::format_duration(Duration::from_secs(view.duration(now).as_secs()))
                .to_string(),
            d.reason.as_deref().unwrap_or("")
        ));
        for w in view
            .webhook_summary()
            .iter()
            .filter(|w| w.failed + w.pending > 0)
        {
            out.push_str(&format!("      webhook {}\n", webhook_line(w)));
        }
        for m in &view.metrics {
            out.push_str(&format!(
                "      {}/{}: {} -> {} (stable {} -> {}), last {}\n",
                m.analysis,
                m.metric,
                fmt_value(m.first_value),
                fmt_value(m.last_value),
                fmt_value(m.first_stable_value),
                fmt_value(m.last_stable_value),
                m.last_phase
            ));
        }
    }
    out
}

pub async fn analysis(args: AnalysisArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        AnalysisAction::Put { name, file, store } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| super::InputError(format!("cannot read {}: {e}", file.display())))?;
            // Checked now, with no arguments bound yet: syntax and conditions.
            sluice_quality::analysis::Template::parse(&name, &text)
                .map_err(|e| super::InputError(format!("{}: {e}", file.display())))?;
            let store = super::open_store(&store.store).await?;
            store.put_analysis_template(&name, &text).await?;
            println!("analysis template {name} stored");
        }
        AnalysisAction::List { json, store } => {
            let store = super::open_store(&store.store).await?;
            let templates = store.analysis_templates().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&templates)?);
            } else {
                for t in templates {
                    println!("{}", t.name);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
