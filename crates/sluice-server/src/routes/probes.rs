//! `/health`, `/ready`, `/metrics` and the OpenAPI document.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, Routes};
use crate::error::{ApiError, ApiResult};

pub(crate) fn add(routes: Routes) -> Routes {
    routes
        .get("/health", health)
        .get("/ready", ready)
        .get("/metrics", metrics)
        .get("/api/v1/openapi.json", openapi)
}

/// The process is up (it answers); nothing else is checked.
async fn health() -> Response {
    axum::Json(json!({ "status": "up" })).into_response()
}

/// The store answers and holds this version's tables.
async fn ready(State(state): State<AppState>) -> ApiResult<Response> {
    sluice_app::status::ready(&state.store).await?;
    Ok(axum::Json(json!({ "status": "ready", "store": state.store.backend() })).into_response())
}

async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let metrics = sluice_app::metrics::metrics(&state.store).await?;
    let text = crate::metrics::render(metrics)
        .map_err(|_| ApiError::internal("encoding the metrics as text failed"))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}
