//! The S3-compatible object API, served on its own listener (path-style addressing):
//! buckets, objects, listing, copies and multipart uploads, authenticated with SigV4.
//! Object changes become bucket notifications through the durable queue.
//!
//! - [`sigv4`] and [`credentials`]: who may call.
//! - [`body`] and [`checksum`]: request bodies as SDKs frame them, checked as they stream.
//! - [`blobs`]: object bytes on disk; [`crate::store::ObjectStore`]: their metadata.
//! - [`buckets`], [`objects`], [`multipart`]: the operations; [`xml`]: their documents.
//! - [`route`]: the allow-list from a request to the operation it names.
//!
//! Bucket notifications are an event source: [`crate::sources::bucket`].

pub mod blobs;
pub mod body;
pub mod buckets;
pub mod checksum;
pub mod conditions;
pub mod credentials;
pub mod error;
mod multipart;
pub mod objects;
pub mod route;
pub mod sigv4;
pub mod xml;

/// The region this API answers for, and that notification documents name.
pub const REGION: &str = "us-east-1";

use crate::clock::Clock;
use crate::store::{ObjectMeta, ObjectStore};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use error::{S3Error, S3Result};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::sync::Arc;

/// Size limits of the object API.
#[derive(Debug, Clone)]
pub struct S3Limits {
    /// Largest single PUT (S3: 5 GiB).
    pub max_object_bytes: u64,
    /// Largest part of a multipart upload (S3: 5 GiB).
    pub max_part_bytes: u64,
    /// Smallest part but the last (S3: 5 MiB).
    pub min_part_bytes: u64,
}

impl Default for S3Limits {
    fn default() -> Self {
        Self {
            max_object_bytes: 5 << 30,
            max_part_bytes: 5 << 30,
            min_part_bytes: 5 << 20,
        }
    }
}

/// Everything the object API's handlers reach.
pub struct S3 {
    pub store: Arc<dyn ObjectStore>,
    pub blobs: Arc<blobs::Blobs>,
    pub credentials: credentials::Credentials,
    pub notifier: crate::sources::bucket::Notifier,
    pub clock: Arc<dyn Clock>,
    pub limits: S3Limits,
}

pub fn router(s3: Arc<S3>) -> Router {
    Router::new().fallback(handle).with_state(s3)
}

/// The longest key S3 accepts, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// A request's target and sub-resources, decoded.
pub struct Target {
    pub bucket: String,
    pub key: String,
    query: Vec<(String, String)>,
}

impl Target {
    /// An object, without sub-resources.
    pub fn object(bucket: &str, key: &str) -> Self {
        Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            query: Vec::new(),
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.param(name).is_some()
    }
}

fn decode(text: &str) -> S3Result<String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| S3Error::invalid_argument("the request path is not valid UTF-8"))
}

fn target(path: &str, query: Option<&str>) -> S3Result<Target> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let query = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect::<S3Result<_>>()?;
    let key = decode(key)?;
    if key.len() > MAX_KEY_BYTES {
        return Err(S3Error::bad_request(
            "KeyTooLongError",
            "Your key is too long",
        ));
    }
    Ok(Target {
        bucket: decode(bucket)?,
        key,
        query,
    })
}

async fn handle(State(s3): State<Arc<S3>>, request: Request) -> Response {
    let method = request.method().clone();
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    // A request runs to its end even if the client goes away mid-way (hyper then drops
    // this future): a commit is always followed by its clean-up, and a blob made durable
    // is always either recorded or removed.
    let outcome = tokio::spawn(async move { dispatch(&s3, request).await })
        .await
        .unwrap_or_else(|e| Err(S3Error::internal(e)));
    match outcome {
        Ok(response) => response,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(code = e.code, "s3 request failed: {}", e.message);
            }
            let mut response = e.into_response();
            if method == Method::HEAD {
                *response.body_mut() = Body::empty();
            }
            if has_body {
                // The body may be left unread, so the connection cannot carry another
                // request: say so, and clients open a new one instead of finding this
                // one closed under them.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

async fn dispatch(s3: &Arc<S3>, request: Request) -> S3Result<Response> {
    let (parts, body) = request.into_parts();
    let verified = sigv4::verify(
        &s3.credentials,
        &sigv4::SignedRequest {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
        },
        std::time::SystemTime::now(),
    )?;
    // Reads need a key of scope read; everything else (writes, deletes, uploads) deploy.
    let need = if matches!(parts.method, Method::GET | Method::HEAD) {
        cirrus_api::access::Need::Read
    } else {
        cirrus_api::access::Need::Deploy
    };
    if !verified.principal.scope.allows(need) {
        return Err(S3Error::access_denied(format!(
            "{} has scope {}; this request needs scope {need}",
            verified.principal.actor, verified.principal.scope
        )));
    }
    let t = target(parts.uri.path(), parts.uri.query())?;
    let h = &parts.headers;
    use route::Operation as Op;
    match route::route(&parts.method, &t, h)? {
        Op::ListBuckets => buckets::list_buckets(s3, &t).await,
        Op::CreateBucket => buckets::create(s3, &t, body).await,
        Op::DeleteBucket => buckets::delete(s3, &t).await,
        Op::HeadBucket => buckets::head(s3, &t).await,
        Op::GetBucketLocation => buckets::location(s3, &t).await,
        Op::ListObjects | Op::ListObjectsV2 => buckets::list_objects(s3, &t).await,
        Op::ListMultipartUploads => multipart::list_uploads(s3, &t).await,
        Op::DeleteObjects => objects::delete_many(s3, &t, h, body).await,
        Op::PutObject => objects::put(s3, &t, h, &verified, body).await,
        Op::CopyObject => objects::copy(s3, &t, h).await,
        Op::GetObject => objects::get(s3, &t, h, false).await,
        Op::HeadObject => objects::get(s3, &t, h, true).await,
        Op::DeleteObject => objects::delete(s3, &t).await,
        Op::CreateMultipartUpload => multipart::create(s3, &t, h).await,
        Op::UploadPart => multipart::upload_part(s3, &t, h, &verified, body).await,
        Op::UploadPartCopy => multipart::upload_part_copy(s3, &t, h).await,
        Op::CompleteMultipartUpload => multipart::complete(s3, &t, h, body).await,
        Op::AbortMultipartUpload => multipart::abort(s3, &t).await,
        Op::ListParts => multipart::list_parts(s3, &t).await,
    }
}

/// Keys and prefixes in listings with `encoding-type=url` (what SDKs ask for).
const URL_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

pub fn url_encode(text: &str) -> String {
    utf8_percent_encode(text, URL_ENCODE).to_string()
}

/// `2006-02-03T16:45:09.000Z`, as listings show times.
pub fn iso_time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// `Fri, 03 Feb 2006 16:45:09 GMT`, as `Last-Modified` shows them.
pub fn http_time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

pub fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

pub fn xml_response(status: StatusCode, document: String) -> Response {
    let mut response = (status, document).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    response
}

/// Headers an object keeps and answers with, besides its content type (S3's "system
/// metadata").
const KEPT_HEADERS: [&str; 5] = [
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
];

/// Stored metadata entries named `header:NAME` are kept headers; the rest are
/// `x-amz-meta-*` names without the prefix. (A `:` cannot occur in a header name, so the
/// two never collide.)
const KEPT_PREFIX: &str = "header:";

/// What an object keeps of a request's headers: `x-amz-meta-*` (names without the
/// prefix) and the [`KEPT_HEADERS`] (named `header:NAME`).
///
/// Metadata values that are not ASCII are kept as text, as S3 keeps them: the bytes are
/// read as UTF-8, or as ISO-8859-1 (what HTTP clients such as Python's send) when they
/// are not UTF-8; [`object_headers`] answers them RFC 2047-encoded.
pub fn user_metadata(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut metadata: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(name, value)| {
            if let Some(meta) = name.as_str().strip_prefix("x-amz-meta-") {
                return Some((meta.to_owned(), header_text(value.as_bytes())));
            }
            if !KEPT_HEADERS.contains(&name.as_str()) {
                return None;
            }
            let value = value.to_str().ok()?;
            // aws-chunked is how the body travelled, not how it is stored.
            let value = value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.eq_ignore_ascii_case("aws-chunked") && !v.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            (!value.is_empty()).then(|| (format!("{KEPT_PREFIX}{name}"), value))
        })
        .collect();
    metadata.sort();
    metadata
}

/// A header value's text: UTF-8 when it is, ISO-8859-1 otherwise (every byte a char).
pub(crate) fn header_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// A metadata value as a header: ASCII as it is, anything else RFC 2047-encoded
/// (`=?UTF-8?B?…?=`), as S3 answers it.
fn mail_safe(value: &str) -> std::borrow::Cow<'_, str> {
    use base64::Engine as _;
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
    {
        return value.into();
    }
    format!(
        "=?UTF-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(value)
    )
    .into()
}

pub fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// An object's headers on GET and HEAD.
pub fn object_headers(object: &ObjectMeta, headers: &mut HeaderMap) {
    let mut set = |name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::try_from(name),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    };
    set("etag", &quoted(&object.etag));
    set("last-modified", &http_time(object.modified_ms));
    set("accept-ranges", "bytes");
    set(
        "content-type",
        object
            .content_type
            .as_deref()
            .unwrap_or("binary/octet-stream"),
    );
    for (name, value) in &object.metadata {
        match name.strip_prefix(KEPT_PREFIX) {
            Some(kept) => set(kept, value),
            None => set(&format!("x-amz-meta-{name}"), &mail_safe(value)),
        }
    }
}

/// GetObject's `response-*` query parameters (used in presigned URLs, e.g. to name a
/// download): they replace the stored headers in this answer.
pub fn response_overrides(t: &Target, headers: &mut HeaderMap) {
    for name in [
        "content-type",
        "content-language",
        "expires",
        "cache-control",
        "content-disposition",
        "content-encoding",
    ] {
        if let Some(value) = t.param(&format!("response-{name}")) {
            if let (Ok(n), Ok(v)) = (
                axum::http::HeaderName::try_from(name),
                HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
    }
}

pub use cirrus_api::trigger::valid_bucket_name;

/// Runs store work off the async runtime; its failures are internal errors.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> S3Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(S3Error::internal)?
        .map_err(S3Error::internal)
}

/// Removes blobs off the async runtime.
pub fn remove_blobs(s3: &Arc<S3>, names: Vec<String>) {
    if names.is_empty() {
        return;
    }
    let blobs = s3.blobs.clone();
    tokio::task::spawn_blocking(move || {
        for name in names {
            blobs.remove(&name);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_decode_opaque_keys() {
        let t = target("/b/a%20b/..%2F../c+d", Some("uploadId=x&partNumber=2")).unwrap();
        assert_eq!(t.bucket, "b");
        assert_eq!(t.key, "a b/../../c+d");
        assert_eq!(t.param("partNumber"), Some("2"));
        assert!(valid_bucket_name("my-bucket.1"));
        assert!(!valid_bucket_name("My_Bucket"));
        assert!(!valid_bucket_name("ab"));
        assert_eq!(url_encode("a b+c/d"), "a%20b%2Bc/d");
        // Header bytes: UTF-8 when they are, ISO-8859-1 (as Python sends) otherwise.
        assert_eq!(header_text("Zürich".as_bytes()), "Zürich");
        assert_eq!(header_text(b"caf\xe9"), "café");
        assert_eq!(mail_safe("plain"), "plain");
        assert_eq!(mail_safe("café"), "=?UTF-8?B?Y2Fmw6k=?=");
    }
}
