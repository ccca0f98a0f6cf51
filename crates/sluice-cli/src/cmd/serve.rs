//! `sluice serve`: the HTTP API over the store, and optionally a worker pool beside it.

use std::process::ExitCode;
use std::time::Duration;

use sluice_app::roots::Roots;
use sluice_app::{Stopped, Work};
use sluice_server::{Config, Server, Token};
use tokio_util::sync::CancellationToken;

use super::InputError;
use crate::cli::ServeArgs;

/// The variable the API token is read from when no --token-file is given.
const TOKEN_ENV: &str = "SLUICE_API_TOKEN";

/// The token from --token-file, else SLUICE_API_TOKEN; `None` when neither is set.
fn token(args: &ServeArgs) -> anyhow::Result<Option<Token>> {
    let (text, from) = match &args.token_file {
        Some(file) => (
            std::fs::read_to_string(file).map_err(|e| {
                InputError(format!(
                    "reading the token file {}: {e}; check the path",
                    file.display()
                ))
            })?,
            format!("token file {}", file.display()),
        ),
        None => match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => (t, TOKEN_ENV.to_string()),
            _ => return Ok(None),
        },
    };
    Token::new(&text)
        .map(Some)
        .map_err(|e| InputError(format!("{from}: {e}")).into())
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let token = token(&args)?;
    let roots = Roots::new(&args.roots)?;
    let store = super::open_store(&args.store.store).await?;
    let secured = token.is_some();
    let config = Config {
        listen: args.listen,
        token,
        public_read: args.public_read,
        roots: roots.clone(),
        max_body: args.max_body,
    };
    let server = Server::bind(config, store.clone())
        .await
        .map_err(|e| InputError(e.to_string()))?;
    eprintln!(
        "serving http://{} (API /api/v1, /metrics, /health, /ready) on store {}; specs may name locations under {}",
        server.local_addr(),
        super::redact(&args.store.store),
        roots.describe()
    );
    if !secured {
        eprintln!(
            "no API token ({TOKEN_ENV} or --token-file): listening on loopback only, where every user of this machine may read and change the pipelines"
        );
    } else if args.public_read {
        eprintln!("--public-read: reads need no token; changes do");
    }
    let stop = CancellationToken::new();
    super::run::stop_on_signals(stop.clone());
    let workers = (args.workers > 0).then(|| {
        eprintln!(
            "running {} worker(s) for every pipeline, and the leader duties in turn",
            args.workers
        );
        let opts = Work {
            workers: args.workers,
            lease: Duration::from_secs(30),
            grace: args.grace,
            pipelines: None,
            until_drained: false,
            store_outage_limit: sluice_app::DEFAULT_STORE_OUTAGE_LIMIT,
            // `serve --workers` takes its turn at the leader duties (discovery, deployments).
            leader: true,
            leader_lease: sluice_app::DEFAULT_LEADER_LEASE,
        };
        let pool = tokio::spawn(sluice_app::work(store.clone(), opts, stop.clone()));
        // Workers that stop on their own (the store away past the limit) stop the server too.
        let stop = stop.clone();
        tokio::spawn(async move {
            let stopped = pool.await;
            stop.cancel();
            stopped
        })
    });
    let served = server.run(stop.clone()).await;
    // The server stopped (a signal, or an error): the workers drain too.
    stop.cancel();
    if let Some(workers) = workers {
        let Stopped { report, gave_up } = workers
            .await
            .and_then(|pool| pool)
            .map_err(|e| anyhow::anyhow!("the worker pool crashed: {e}"))??;
        eprintln!(
            "workers stopped: {} committed, {} already committed, {} quarantined, {} released",
            report.committed, report.already_committed, report.quarantined, report.released
        );
        if let Some(e) = gave_up {
            return Err(e.into());
        }
    }
    served?;
    Ok(ExitCode::SUCCESS)
}
