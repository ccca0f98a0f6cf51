//! The dashboard: plain HTML, CSS and JavaScript embedded in the binary (no CDN, no build
//! step; it works offline), served at `/`. The pages read and change everything through the
//! `/api/v1` routes, with the token a person types in (kept in the tab's session storage), so
//! they pass the same guard as any client; the assets themselves hold no data and are open.
//!
//! Pages (the part after `#`): `/` every pipeline; `/pipelines/NAME` one pipeline (charts of
//! throughput and latency per version, recent batches, quarantine, checks);
//! `/pipelines/NAME/deployment` its deployment, live (polled every second, with promote,
//! pause, resume and abort); `/history` every deployment with each metric before and after.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// The paths the dashboard's assets are served at (open to anyone: they hold no data).
pub const ASSETS: [&str; 3] = ["/", "/dashboard/app.js", "/dashboard/app.css"];

/// The pages may only load this server's own assets and call its own API.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            ASSETS[0],
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            ASSETS[1],
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            ASSETS[2],
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
