//! A request's parts as routes take them, each refused in the API's error shape: names in the
//! path checked against the one name rule before they reach the store, the query, and bodies
//! (size-limited by the router's `DefaultBodyLimit`).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A name from a request (a pipeline, a dataset, a batch id), checked with
/// [`sluice_core::is_name`]: nothing else reaches SQL or a path.
pub fn name<'a>(what: &str, text: &'a str) -> Result<&'a str, ApiError> {
    if sluice_core::is_name(text) {
        Ok(text)
    } else {
        let shown: String = text.chars().take(40).collect();
        Err(ApiError::bad_request(format!(
            "{what} {shown:?} is not a valid name: use 1 to {} letters, digits, '_' and '-'",
            sluice_core::MAX_NAME_LEN
        )))
    }
}

/// A version number from the path: 1 or more.
pub fn version(text: &str) -> Result<i64, ApiError> {
    match text.parse::<i64>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(ApiError::bad_request(format!(
            "version {:?} is not a version number: use 1, 2, ...",
            text.chars().take(20).collect::<String>()
        ))),
    }
}

/// The query string, deserialized; unknown or malformed parameters are a 400 that says which.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(format!(
                    "the query string is not valid: {}; see /api/v1/openapi.json for the parameters",
                    e.body_text()
                ))
            })
    }
}

/// Path parameters; a path that does not decode (bad percent-encoding) is a 400.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::bad_request(format!("the path is not valid: {}", e.body_text())))
    }
}

/// The body's bytes, refused past the router's body limit with 413.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(Body)
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::user(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the request body is larger than this server takes (see `sluice serve --max-body`)",
                    )
                } else {
                    ApiError::bad_request(format!("reading the request body: {}", e.body_text()))
                }
            })
    }
}

impl Body {
    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, ApiError> {
        std::str::from_utf8(&self.0)
            .map_err(|_| ApiError::bad_request("the request body is not UTF-8 text"))
    }

    /// The body as JSON of `T`; an empty body reads as `{}`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let bytes: &[u8] = if self.0.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.0
        };
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body is not the JSON this route takes: {e}; see /api/v1/openapi.json"
            ))
        })
    }
}
