//! [`ApiError`]: the one error every route answers with, as one JSON shape:
//!
//! ```json
//! { "error": { "kind": "user", "message": "no pipeline \"x\" in the store: ..." } }
//! ```
//!
//! `kind` is the [`ErrorKind`] (who has to act); `message` says what to do. An internal error
//! is logged whole and answered with a reference to the log line only, so SQL, paths and
//! stacks never reach a client.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_app::AppError;
use sluice_core::ErrorKind;

/// An error as a route answers it: a status, a kind, a message, and sometimes details (a
/// refused schema's violations).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// The caller's request is wrong (400 unless said otherwise).
    pub fn user(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind: ErrorKind::User,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::user(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::user(StatusCode::NOT_FOUND, message)
    }

    /// No token, or not the right one.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::user(StatusCode::UNAUTHORIZED, message)
    }

    /// A bug or a state this server cannot read: logged whole, answered with a reference only.
    pub fn internal(detail: &str) -> ApiError {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let reference = format!(
            "{:x}-{}",
            sluice_core::now_millis(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        tracing::error!(reference = %reference, "internal error answering a request: {detail}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: ErrorKind::Internal,
            message: format!(
                "internal error (reference {reference}): the server's log has the details; please report it"
            ),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        let message = e.message();
        match e.kind() {
            ErrorKind::User if e.is_not_found() => ApiError::not_found(message),
            ErrorKind::User if e.is_conflict() => ApiError::user(StatusCode::CONFLICT, message),
            ErrorKind::User => ApiError::bad_request(message),
            // The store or a table is away: the client may try again.
            ErrorKind::External => {
                tracing::warn!("answering a request: {message}");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: ErrorKind::External,
                    message: format!("{message}; try again shortly"),
                    details: None,
                }
            }
            ErrorKind::Internal => ApiError::internal(&message),
        }
    }
}

/// How a kind is spelled in the JSON (`user`, `external`, `internal`).
fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::User => "user",
        ErrorKind::External => "external",
        ErrorKind::Internal => "internal",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({
            "kind": kind_name(self.kind),
            "message": self.message,
        });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({ "error": error })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
