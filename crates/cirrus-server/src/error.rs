//! How failures leave the server: `{"error": {"code", "message"}}` with the code's status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cirrus_api::{ApiError, ErrorBody, ErrorCode};

/// Seconds a throttled caller is told to wait before retrying.
pub const RETRY_AFTER_SECS: u32 = 1;

/// An error answer. Internal errors are logged in full and answered without detail.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl Failure {
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        Failure(ApiError::internal(
            "internal error; the server log has the details",
        ))
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

pub fn error_response(error: ApiError) -> Response {
    let status =
        StatusCode::from_u16(error.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let throttled = error.code == ErrorCode::Throttled;
    let mut response = (status, axum::Json(ErrorBody { error })).into_response();
    if throttled {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        error_response(self.0)
    }
}

/// Why a request body could not be read: over `limit` (413, naming `what`) or broken off
/// by the client (400).
pub fn body_error(error: axum::Error, limit: usize, what: &str) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("{what} exceeds the limit of {limit} bytes"),
            );
        }
        source = e.source();
    }
    ApiError::bad_request(format!("the request body could not be read: {error}"))
}
