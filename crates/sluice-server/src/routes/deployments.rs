//! Deployments of a pipeline: start one from a spec, its status, the commands a person sends
//! it (promote, pause, resume, abort), rollback, and the history. Each route calls the
//! `sluice_app::deploy` function the CLI's command calls; a spec sent here is compiled
//! confined to the server's roots (`sluice_app::deploy::deploy_confined`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sluice_app::deploy::{self, DeployOptions, Deployed, NetworkSpec};
use sluice_quality::policy::Strategy;
use sluice_store::DeploymentRequest;

use super::{AppState, Routes};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery, Body, name};

/// The most deployments one history answer carries.
const MAX_HISTORY: i64 = 1_000;
/// The longest `started_by` a client may give.
const MAX_STARTED_BY: usize = 64;

pub(crate) fn add(routes: Routes) -> Routes {
    routes
        .get("/api/v1/pipelines/{pipeline}/deployments", history)
        .post("/api/v1/pipelines/{pipeline}/deployments", start)
        .get("/api/v1/pipelines/{pipeline}/deployments/current", current)
        .post(
            "/api/v1/pipelines/{pipeline}/deployments/current/promote",
            promote,
        )
        .post(
            "/api/v1/pipelines/{pipeline}/deployments/current/pause",
            pause,
        )
        .post(
            "/api/v1/pipelines/{pipeline}/deployments/current/resume",
            resume,
        )
        .post(
            "/api/v1/pipelines/{pipeline}/deployments/current/abort",
            abort,
        )
        .post("/api/v1/pipelines/{pipeline}/rollback", rollback)
}

/// What to deploy: the spec's YAML (and the folder its relative paths resolve against), or a
/// spec file under the server's roots; a strategy overriding the spec's, and who asks.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDeployment {
    #[serde(default)]
    spec: Option<String>,
    #[serde(default)]
    base_dir: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    started_by: Option<String>,
}

fn strategy(text: &str) -> Result<Strategy, ApiError> {
    match text {
        "recreate" => Ok(Strategy::Recreate),
        "rolling" => Ok(Strategy::Rolling),
        "canary" => Ok(Strategy::Canary),
        _ => Err(ApiError::bad_request(format!(
            "strategy {:?} is not one this server deploys with: use recreate, rolling or canary",
            text.chars().take(20).collect::<String>()
        ))),
    }
}

/// Who started it, for the history: `api`, or `api: <what the client said>`.
fn started_by(given: Option<&str>) -> Result<String, ApiError> {
    match given {
        None => Ok("api".into()),
        Some(who)
            if !who.is_empty()
                && who.len() <= MAX_STARTED_BY
                && who.chars().all(|c| c.is_ascii_graphic() || c == ' ') =>
        {
            Ok(format!("api: {who}"))
        }
        Some(_) => Err(ApiError::bad_request(format!(
            "started_by must be 1 to {MAX_STARTED_BY} printable ASCII characters (a name or a CI job id)"
        ))),
    }
}

/// 201 with the deployment when one started; 200 when the spec is the pipeline's first
/// version (current at once) or its current version already.
async fn start(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let new: NewDeployment = body.json()?;
    let spec = match (&new.spec, &new.path) {
        (Some(text), None) => NetworkSpec::Text {
            text,
            base_dir: new.base_dir.as_deref(),
        },
        (None, Some(path)) if new.base_dir.is_none() => NetworkSpec::File(path),
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "base_dir goes with spec: a spec file's relative paths resolve against its own folder",
            ));
        }
        _ => {
            return Err(ApiError::bad_request(
                "give the spec to deploy as {\"spec\": \"<YAML>\"} or as {\"path\": \"<a spec file under the server's roots>\"}, one of the two",
            ));
        }
    };
    let opts = DeployOptions {
        strategy: new.strategy.as_deref().map(strategy).transpose()?,
        pre_suite: false,
        started_by: started_by(new.started_by.as_deref())?,
    };
    match deploy::deploy_confined(&state.store, pipeline, spec, &state.roots, &opts).await? {
        Deployed::Started { deployment, .. } => {
            let view = deploy::view(&state.store, *deployment).await?;
            Ok((
                StatusCode::CREATED,
                Json(serde_json::json!({ "started": true, "deployment": view })),
            )
                .into_response())
        }
        Deployed::First(p) => Ok(Json(serde_json::json!({
            "started": false,
            "version": p.version,
            "reason": "the pipeline's first version: current at once, nothing to deploy from",
        }))
        .into_response()),
        Deployed::Unchanged(p) => Ok(Json(serde_json::json!({
            "started": false,
            "version": p.version,
            "reason": "the spec is the current version already: nothing to deploy",
        }))
        .into_response()),
    }
}

/// The deployment in progress, else the latest, as `sluice deploy status --json` shows it.
async fn current(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    match deploy::status(&state.store, pipeline).await? {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::not_found(format!(
            "pipeline {pipeline} has no deployments; start one with POST /api/v1/pipelines/{pipeline}/deployments"
        ))),
    }
}

/// `{"full": true}` skips the remaining steps (`sluice promote --full`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Promote {
    #[serde(default)]
    full: bool,
}

async fn command(
    state: &AppState,
    pipeline: &str,
    request: DeploymentRequest,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", pipeline)?;
    let d = deploy::request(&state.store, pipeline, request).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(deploy::view(&state.store, d).await?),
    )
        .into_response())
}

/// An empty body, or `{}`: these commands take no options.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

async fn promote(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    let p: Promote = body.json()?;
    let request = if p.full {
        DeploymentRequest::PromoteFull
    } else {
        DeploymentRequest::Promote
    };
    command(&state, &pipeline, request).await
}

/// A command that takes no options.
async fn plain(
    state: &AppState,
    pipeline: &str,
    body: &Body,
    request: DeploymentRequest,
) -> ApiResult<Response> {
    let NoOptions {} = body.json()?;
    command(state, pipeline, request).await
}

async fn pause(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    plain(&state, &pipeline, &body, DeploymentRequest::Pause).await
}

async fn resume(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    plain(&state, &pipeline, &body, DeploymentRequest::Resume).await
}

async fn abort(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    plain(&state, &pipeline, &body, DeploymentRequest::Abort).await
}

/// With a deployment in progress, aborts it; else goes back to the version the current one
/// replaced (`sluice rollback`).
async fn rollback(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let NoOptions {} = body.json()?;
    let d = deploy::rollback(&state.store, pipeline).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(deploy::view(&state.store, d).await?),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<i64>,
}

/// Every deployment of the pipeline, newest first, with each metric before and after, as
/// `sluice history --json` shows them.
async fn history(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is out of range: ask for 1 to {MAX_HISTORY} deployments"
        )));
    }
    let views = deploy::history(&state.store, Some(pipeline), limit).await?;
    Ok(Json(serde_json::json!({ "deployments": views })).into_response())
}
