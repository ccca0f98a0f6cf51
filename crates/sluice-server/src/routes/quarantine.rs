//! What a pipeline holds back (quarantined batches, held and dropped rows) and putting it back.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{AppState, Routes};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery, Body, name};

/// The most held rows one answer carries.
const MAX_ROWS: usize = 1_000;

pub(crate) fn add(routes: Routes) -> Routes {
    routes
        .get("/api/v1/pipelines/{pipeline}/quarantine", held)
        .post("/api/v1/pipelines/{pipeline}/quarantine/retries", retry)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HeldQuery {
    batch: Option<String>,
    limit: Option<usize>,
}

async fn held(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    ApiQuery(q): ApiQuery<HeldQuery>,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let batch = q
        .batch
        .as_deref()
        .map(|b| name("batch id", b))
        .transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_ROWS).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is out of range: ask for 1 to {MAX_ROWS} held rows"
        )));
    }
    let mut held = sluice_app::status::held(&state.store, Some(pipeline), batch, limit).await?;
    match held.pop() {
        Some(one) => Ok(Json(one).into_response()),
        None => Err(ApiError::internal(
            "quarantine of one existing pipeline came back empty",
        )),
    }
}

/// Which held work to queue again: every quarantined batch of the pipeline, or one; with
/// `dropped`, the rows `source.bad_rows: drop` left out, replayed as new batches.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    #[serde(default)]
    batch: Option<String>,
    #[serde(default)]
    dropped: bool,
}

async fn retry(
    State(state): State<AppState>,
    ApiPath(pipeline): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    let pipeline = name("pipeline", &pipeline)?;
    let request: RetryRequest = body.json()?;
    let batch = request
        .batch
        .as_deref()
        .map(|b| name("batch id", b))
        .transpose()?;
    let retried =
        sluice_app::status::retry_pipeline(&state.store, pipeline, batch, request.dropped).await?;
    Ok(Json(retried).into_response())
}
