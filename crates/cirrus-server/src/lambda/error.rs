//! Errors as Lambda sends them: REST-JSON with the type in `x-amzn-ErrorType`, so
//! botocore and the other SDKs raise the exception a Lambda user already catches.

use crate::sigv4::{AuthError, AuthFailure};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cirrus_api::{ApiError, ErrorCode};

#[derive(Debug, Clone)]
pub struct LambdaError {
    /// The exception's name (`ResourceNotFoundException`).
    pub kind: &'static str,
    pub status: StatusCode,
    pub message: String,
    /// Why a call was throttled (`TooManyRequestsException` only).
    pub reason: Option<&'static str>,
}

pub type LambdaResult<T> = Result<T, LambdaError>;

impl LambdaError {
    pub fn new(kind: &'static str, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            kind,
            status,
            message: message.into(),
            reason: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("ResourceNotFoundException", StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new("ResourceConflictException", StatusCode::CONFLICT, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            "InvalidParameterValueException",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    /// A body that is not the JSON the operation takes.
    pub fn bad_content(message: impl Into<String>) -> Self {
        Self::new(
            "InvalidRequestContentException",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(
            "PreconditionFailedException",
            StatusCode::PRECONDITION_FAILED,
            message,
        )
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            "RequestTooLargeException",
            StatusCode::PAYLOAD_TOO_LARGE,
            message,
        )
    }

    /// An operation of Lambda's that Cirrus does not implement.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new("NotImplemented", StatusCode::NOT_IMPLEMENTED, message)
    }
}

impl From<ApiError> for LambdaError {
    fn from(e: ApiError) -> Self {
        let (kind, status) = match e.code {
            ErrorCode::BadRequest | ErrorCode::InvalidArtifact => {
                ("InvalidParameterValueException", StatusCode::BAD_REQUEST)
            }
            ErrorCode::NotFound => ("ResourceNotFoundException", StatusCode::NOT_FOUND),
            ErrorCode::Conflict => ("ResourceConflictException", StatusCode::CONFLICT),
            ErrorCode::PayloadTooLarge => {
                ("RequestTooLargeException", StatusCode::PAYLOAD_TOO_LARGE)
            }
            ErrorCode::Throttled => {
                // Reserved capacity (or a reservation of 0) is the function's own limit;
                // everything else is the server's.
                let reason = if e.message.contains("reserved concurrency") {
                    "ReservedFunctionConcurrentInvocationLimitExceeded"
                } else {
                    "ConcurrentInvocationLimitExceeded"
                };
                return Self {
                    kind: "TooManyRequestsException",
                    status: StatusCode::TOO_MANY_REQUESTS,
                    message: e.message,
                    reason: Some(reason),
                };
            }
            ErrorCode::LoopDetected => ("RecursiveInvocationException", StatusCode::BAD_REQUEST),
            ErrorCode::Unauthorized | ErrorCode::Forbidden => {
                ("AccessDeniedException", StatusCode::FORBIDDEN)
            }
            ErrorCode::MethodNotAllowed => {
                ("InvalidRequestContentException", StatusCode::BAD_REQUEST)
            }
            ErrorCode::NotImplemented => {
                ("UnsupportedOperationException", StatusCode::NOT_IMPLEMENTED)
            }
            ErrorCode::Unavailable => ("ServiceException", StatusCode::SERVICE_UNAVAILABLE),
            ErrorCode::RangeNotSatisfiable
            | ErrorCode::Cancelled
            | ErrorCode::FunctionError
            | ErrorCode::MemoryLimitExceeded
            | ErrorCode::Timeout
            | ErrorCode::Internal => ("ServiceException", StatusCode::INTERNAL_SERVER_ERROR),
        };
        Self::new(kind, status, e.message)
    }
}

impl From<AuthError> for LambdaError {
    fn from(e: AuthError) -> Self {
        match e.failure {
            AuthFailure::Missing => Self::new(
                "MissingAuthenticationTokenException",
                StatusCode::FORBIDDEN,
                format!(
                    "Missing Authentication Token: sign requests with SigV4 for service lambda \
                     (keys are in <data-dir>/s3-credentials, or an API key's pair) or send the admin \
                     token or an API key as a bearer token ({})",
                    e.message
                ),
            ),
            AuthFailure::MalformedHeader
            | AuthFailure::MalformedQuery
            | AuthFailure::MissingPayloadHash => Self::new(
                "IncompleteSignatureException",
                StatusCode::BAD_REQUEST,
                e.message,
            ),
            // AWS's words for a key it never issued; ours for one revoked or expired.
            AuthFailure::UnknownKey => Self::new(
                "UnrecognizedClientException",
                StatusCode::FORBIDDEN,
                if e.message == crate::s3::credentials::UNKNOWN_KEY {
                    "The security token included in the request is invalid.".to_owned()
                } else {
                    e.message
                },
            ),
            AuthFailure::Denied | AuthFailure::Skewed | AuthFailure::Mismatch => Self::new(
                "InvalidSignatureException",
                StatusCode::FORBIDDEN,
                e.message,
            ),
        }
    }
}

impl IntoResponse for LambdaError {
    fn into_response(self) -> Response {
        let user = self.status.is_client_error();
        let mut body = serde_json::json!({
            "Type": if user { "User" } else { "Service" },
            "Message": self.message,
        });
        if let Some(reason) = self.reason {
            body["Reason"] = reason.into();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert("x-amzn-errortype", HeaderValue::from_static(self.kind));
        if self.reason.is_some() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::error::RETRY_AFTER_SECS),
            );
        }
        response
    }
}
