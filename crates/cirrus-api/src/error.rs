//! Error codes shared by every API answer: `{"error": {"code", "message"}}`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong, as a stable machine-readable code. Each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    InvalidArtifact,
    Unauthorized,
    /// Authenticated, but not allowed this (a function token beyond its grants).
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    /// A `Range` outside the object.
    RangeNotSatisfiable,
    Throttled,
    /// A call made from inside a function went deeper than the pipeline depth limit.
    LoopDetected,
    /// The caller of a nested call went away (its invocation ended), so the call stopped.
    Cancelled,
    FunctionError,
    MemoryLimitExceeded,
    Timeout,
    Unavailable,
    /// What this server does not do (in this mode): refused before anything happens.
    NotImplemented,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidArtifact => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::Throttled => 429,
            // nginx's "client closed request": nobody is left to read the answer.
            ErrorCode::Cancelled => 499,
            ErrorCode::FunctionError | ErrorCode::MemoryLimitExceeded => 502,
            ErrorCode::Unavailable => 503,
            ErrorCode::NotImplemented => 501,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
            ErrorCode::LoopDetected => 508,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidArtifact => "invalid_artifact",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::Throttled => "throttled",
            ErrorCode::LoopDetected => "loop_detected",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::FunctionError => "function_error",
            ErrorCode::MemoryLimitExceeded => "memory_limit_exceeded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a caller can branch on: a code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

/// The JSON envelope of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_names() {
        for code in [
            ErrorCode::Throttled,
            ErrorCode::MemoryLimitExceeded,
            ErrorCode::NotFound,
        ] {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        let body = serde_json::to_string(&ErrorBody {
            error: ApiError::new(ErrorCode::Timeout, "too slow"),
        })
        .unwrap();
        assert_eq!(body, r#"{"error":{"code":"timeout","message":"too slow"}}"#);
    }
}
