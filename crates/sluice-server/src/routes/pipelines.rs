//! Pipelines, their versions and specs, their batches and measurements.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use sluice_app::pipelines::{self, BatchFilter};
use sluice_core::TaskState;

use super::{AppState, Routes};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery, Body, name, version};

pub(crate) fn add(routes: Routes) -> Routes {
    routes
        .get("/api/v1/pipelines", list)
        .get("/api/v1/pipelines/{pipeline}", detail)
        .post("/api/v1/pipelines/{pipeline}/versions", register)
        .get("/api/v1/pipelines/{pipeline}/versions/{version}", spec)
        .get("/api/v1/pipelines/{pipeline}/batches", batches)
        .get("/api/v1/pipelines/{pipeline}/batches/{batch}", batch)
        .get("/api/v1/pipelines/{pipeline}/measurements", measurements)
        .get("/api/v1/pipelines/{pipeline}/series", series)
        .get("/api/v1/status", status)
}

/// Every pipeline's queue, the workers, quarantined batches, deployments in progress and the
/// leader, as `sluice status --json` shows them.
async fn status(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(sluice_app::status::overview(&state.store).await?).into_response())
}

async fn list(State(state): State<AppState>) -> ApiResult<Response> {
    let pipelines = pipelines::list(&state.store).await?;
    Ok(Json(serde_json::json!({ "pipelines": pipelines })).into_response())
}

async fn detail(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    Ok(Json(pipelines::detail(&state.store, pipeline).await?).into_response())
}

async fn spec(
    State(state): State<AppState>,
    ApiPath((pipeline, v)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let v = version(&v)?;
    Ok(Json(pipelines::spec(&state.store, pipeline, v).await?).into_response())
}

/// A spec to register: its YAML and the folder (under a root) its relative paths resolve
/// against.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    spec: String,
    #[serde(default)]
    base_dir: Option<String>,
}

async fn register(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let new: NewVersion = body.json()?;
    let v = sluice_app::roots::register_confined(
        &state.store,
        pipeline,
        &new.spec,
        new.base_dir.as_deref(),
        &state.roots,
    )
    .await?;
    // The same spec again answers its existing version.
    let body = pipelines::spec(&state.store, pipeline, v.version).await?;
    Ok(Json(body).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchesQuery {
    state: Option<String>,
    version: Option<i64>,
    after: Option<i64>,
    limit: Option<i64>,
}

async fn batches(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    ApiQuery(q): ApiQuery<BatchesQuery>,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let task_state = q
        .state
        .as_deref()
        .map(|s| {
            s.parse::<TaskState>().map_err(|_| {
                ApiError::bad_request(format!(
                    "state {:?} is not a batch state: use pending, leased, done or quarantined",
                    s.chars().take(20).collect::<String>()
                ))
            })
        })
        .transpose()?;
    let filter = BatchFilter {
        state: task_state,
        version: q.version,
        after: q.after,
        limit: q.limit,
    };
    Ok(Json(pipelines::batches(&state.store, pipeline, &filter).await?).into_response())
}

async fn batch(
    State(state): State<AppState>,
    ApiPath((pipeline, batch)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let batch = name("batch id", &batch)?;
    Ok(Json(pipelines::batch(&state.store, pipeline, batch).await?).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowQuery {
    window: Option<String>,
}

async fn measurements(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    ApiQuery(q): ApiQuery<WindowQuery>,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let window = duration("window", q.window.as_deref(), Duration::from_secs(3600))?;
    Ok(Json(pipelines::measurements(&state.store, pipeline, window).await?).into_response())
}

fn duration(what: &str, given: Option<&str>, default: Duration) -> ApiResult<Duration> {
    match given {
        None => Ok(default),
        Some(w) => humantime::parse_duration(w).map_err(|e| {
            ApiError::bad_request(format!(
                "{what} {:?} is not a duration ({e}): write e.g. 10m or 1h",
                w.chars().take(20).collect::<String>()
            ))
        }),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    window: Option<String>,
    step: Option<String>,
}

/// Throughput and latency over time, per version.
async fn series(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    ApiQuery(q): ApiQuery<SeriesQuery>,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let window = duration("window", q.window.as_deref(), Duration::from_secs(3600))?;
    let step = duration("step", q.step.as_deref(), Duration::from_secs(60))?;
    Ok(Json(pipelines::series(&state.store, pipeline, window, step).await?).into_response())
}
