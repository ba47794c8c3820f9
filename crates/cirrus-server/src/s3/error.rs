//! S3 error documents: `<Error><Code>…</Code><Message>…</Message>…</Error>` with the
//! status S3 gives each code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub code: &'static str,
    pub status: StatusCode,
    pub message: String,
    pub resource: Option<String>,
}

pub type S3Result<T> = Result<T, S3Error>;

impl S3Error {
    pub fn new(code: &'static str, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            status,
            message: message.into(),
            resource: None,
        }
    }

    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("s3 internal error: {detail}");
        Self::new(
            "InternalError",
            StatusCode::INTERNAL_SERVER_ERROR,
            "We encountered an internal error. Please try again.",
        )
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(code, StatusCode::BAD_REQUEST, message)
    }

    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new("AccessDenied", StatusCode::FORBIDDEN, message)
    }

    pub fn no_such_bucket(bucket: &str) -> Self {
        Self::new(
            "NoSuchBucket",
            StatusCode::NOT_FOUND,
            "The specified bucket does not exist",
        )
        .with_resource(bucket)
    }

    pub fn no_such_key(key: &str) -> Self {
        Self::new(
            "NoSuchKey",
            StatusCode::NOT_FOUND,
            "The specified key does not exist.",
        )
        .with_resource(key)
    }

    pub fn no_such_upload(id: &str) -> Self {
        Self::new(
            "NoSuchUpload",
            StatusCode::NOT_FOUND,
            "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
        )
        .with_resource(id)
    }

    pub fn malformed_xml(detail: impl std::fmt::Display) -> Self {
        Self::bad_request(
            "MalformedXML",
            format!("The XML you provided was not well-formed or did not validate against our published schema: {detail}"),
        )
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::bad_request("InvalidArgument", message)
    }

    /// S3's answer when it cannot take a request now (clients retry it).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            "ServiceUnavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            message,
        )
    }

    pub fn not_implemented(what: &str) -> Self {
        Self::new(
            "NotImplemented",
            StatusCode::NOT_IMPLEMENTED,
            format!("{what} is not implemented by Cirrus"),
        )
    }

    pub fn bad_digest(algorithm: &str) -> Self {
        Self::bad_request(
            "BadDigest",
            format!("The {algorithm} you specified did not match the calculated checksum."),
        )
    }
}

fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(text)
}

impl IntoResponse for S3Error {
    fn into_response(self) -> Response {
        let request_id = uuid::Uuid::now_v7().simple().to_string();
        let resource = self
            .resource
            .as_deref()
            .map(|r| format!("<Resource>{}</Resource>", escape(r)))
            .unwrap_or_default();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message>{resource}<RequestId>{request_id}</RequestId></Error>",
            self.code,
            escape(&self.message)
        );
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert("x-amz-request-id", v);
        }
        response
    }
}
