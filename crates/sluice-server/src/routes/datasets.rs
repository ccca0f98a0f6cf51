//! The dataset schema registry: datasets, their versions, registering and checking schemas,
//! and compatibility modes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sluice_app::registry::{self, Outcome};

use super::{AppState, Routes};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, Body, name, version};

pub(crate) fn add(routes: Routes) -> Routes {
    routes
        .get("/api/v1/datasets", list)
        .get("/api/v1/datasets/{dataset}", dataset)
        .post("/api/v1/datasets/{dataset}/versions", register)
        .get("/api/v1/datasets/{dataset}/versions/{version}", show)
        .post("/api/v1/datasets/{dataset}/checks", check)
        .get("/api/v1/datasets/{dataset}/mode", mode)
        .put("/api/v1/datasets/{dataset}/mode", set_mode)
        .get("/api/v1/registry/mode", default_mode)
        .put("/api/v1/registry/mode", set_default_mode)
}

async fn list(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(registry::list(&state.store).await?).into_response())
}

async fn dataset(
    State(state): State<AppState>,
    ApiPath(d): ApiPath<String>,
) -> ApiResult<Response> {
    let d = name("dataset", &d)?;
    Ok(Json(registry::dataset(&state.store, d).await?).into_response())
}

async fn show(
    State(state): State<AppState>,
    ApiPath((d, v)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let d = name("dataset", &d)?;
    let reference = if v == "latest" {
        d.to_string()
    } else {
        format!("{d}@{}", version(&v)?)
    };
    Ok(Json(registry::show(&state.store, &reference).await?).into_response())
}

/// Registers the schema in the body (YAML or JSON) as the dataset's next version: 201 when a
/// version was made, 200 when it was already registered, 409 with every violation when it is
/// not compatible under the dataset's mode.
async fn register(
    State(state): State<AppState>,
    ApiPath(d): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    let d = name("dataset", &d)?;
    let r =
        registry::register_text(&state.store, d, "the request body", body.text()?, false).await?;
    let report = r.report();
    let details = serde_json::to_value(&report)
        .map_err(|e| ApiError::internal(&format!("encoding a registration report: {e}")))?;
    match r.outcome {
        Outcome::Registered(_) => Ok((StatusCode::CREATED, Json(details)).into_response()),
        Outcome::Refused(violations) => Err(ApiError::user(
            StatusCode::CONFLICT,
            format!(
                "the schema is not {}-compatible with the registered versions of {d} ({} violation(s), in details): make the change compatible, or relax the mode with PUT /api/v1/datasets/{d}/mode",
                r.mode,
                violations.len()
            ),
        )
        .with_details(details)),
        Outcome::Existing(_) | Outcome::WouldRegister(_) => Ok(Json(details).into_response()),
    }
}

/// What registering the schema in the body would do; nothing is written. A refusal is an
/// answer here (outcome `refused`), not an error.
async fn check(
    State(state): State<AppState>,
    ApiPath(d): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    let d = name("dataset", &d)?;
    let r =
        registry::register_text(&state.store, d, "the request body", body.text()?, true).await?;
    Ok(Json(r.report()).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMode {
    mode: String,
}

async fn mode(State(state): State<AppState>, ApiPath(d): ApiPath<String>) -> ApiResult<Response> {
    let d = name("dataset", &d)?;
    Ok(Json(registry::set_mode(&state.store, Some(d), None).await?).into_response())
}

async fn set_mode(
    State(state): State<AppState>,
    ApiPath(d): ApiPath<String>,
    body: Body,
) -> ApiResult<Response> {
    let d = name("dataset", &d)?;
    let new: NewMode = body.json()?;
    let mode = registry::parse_mode(&new.mode)?;
    Ok(Json(registry::set_mode(&state.store, Some(d), Some(mode)).await?).into_response())
}

async fn default_mode(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(registry::set_mode(&state.store, None, None).await?).into_response())
}

async fn set_default_mode(State(state): State<AppState>, body: Body) -> ApiResult<Response> {
    let new: NewMode = body.json()?;
    let mode = registry::parse_mode(&new.mode)?;
    Ok(Json(registry::set_mode(&state.store, None, Some(mode)).await?).into_response())
}
