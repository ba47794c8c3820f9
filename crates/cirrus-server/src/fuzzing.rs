//! Entry points for the fuzz targets in `fuzz/`: every parser of untrusted input the
//! server has, reachable from outside the crate without widening the modules themselves.
//!
//! Not an API (hidden from the docs, free to change with the parsers). It is compiled in
//! every build on purpose: a parser whose signature changes breaks here, in the normal
//! build and its CI, not only in the separately built fuzz targets.

use axum::http::HeaderMap;

pub use crate::cloudevents::{incoming as cloudevent, Incoming};
pub use crate::keys::Principal;
pub use crate::s3::body::ChunkedDecoder;
pub use crate::s3::credentials::Credentials;
pub use crate::s3::error::{S3Error, S3Result};
pub use crate::s3::objects::{copy_source, put_condition};
pub use crate::s3::sigv4::{
    hmac, sha256_hex, sign, signing_key, verify, SignedRequest, Signing, Verified,
};
pub use crate::store::PutCondition;
pub use crate::trace::TraceContext;

/// A `Range` header against an object of `size` bytes: `Ok(None)` means the whole object.
pub fn range(text: &str, size: u64) -> S3Result<Option<(u64, u64)>> {
    crate::s3::objects::parse_range(text, size)
}

/// Whether an `If-Match` / `If-None-Match` value names `etag`.
pub fn etag_matches(condition: &str, etag: &str) -> bool {
    crate::s3::conditions::etag_matches(condition, etag)
}

/// What a PUT's headers promise about its body (framing, checksums, lengths): `Ok` when
/// the body may be read.
pub fn body_headers(headers: &HeaderMap, verified: Option<&Verified>) -> S3Result<()> {
    crate::s3::body::expectations(headers, verified).map(drop)
}

/// A CompleteMultipartUpload document: its parts as `(number, etag)`.
pub fn complete_multipart(document: &[u8]) -> S3Result<Vec<(u32, String)>> {
    let request: crate::s3::xml::CompleteMultipartUpload = crate::s3::xml::parse(document)?;
    Ok(request
        .parts
        .into_iter()
        .map(|p| (p.number, p.etag))
        .collect())
}

/// A DeleteObjects document: its keys and whether it asked to be quiet.
pub fn delete_objects(document: &[u8]) -> S3Result<(Vec<String>, bool)> {
    let request: crate::s3::xml::Delete = crate::s3::xml::parse(document)?;
    Ok((
        request.objects.into_iter().map(|o| o.key).collect(),
        request.quiet,
    ))
}

/// A listing document (as ListObjectsV2 answers) naming one object `key` and one
/// common prefix `prefix`: what clients parse from untrusted key names.
pub fn listing_document(key: &str, prefix: &str) -> S3Result<String> {
    use crate::s3::xml;
    xml::document(
        "ListBucketResult",
        &xml::ListBucketResult {
            xmlns: xml::NAMESPACE,
            name: "bucket".into(),
            prefix: prefix.into(),
            delimiter: None,
            max_keys: 1000,
            encoding_type: None,
            is_truncated: false,
            key_count: Some(1),
            continuation_token: None,
            next_continuation_token: None,
            start_after: None,
            marker: None,
            next_marker: None,
            contents: vec![xml::ObjectEntry {
                key: key.into(),
                last_modified: crate::s3::iso_time(0),
                etag: crate::s3::quoted("d41d8cd98f00b204e9800998ecf8427e"),
                size: 0,
                storage_class: "STANDARD",
                owner: Some(xml::OWNER),
            }],
            common_prefixes: vec![xml::CommonPrefix {
                prefix: prefix.into(),
            }],
        },
    )
}

/// The `{name}[@qualifier]` segment of `/fn/...` paths, percent-decoded.
pub fn function_path_segment(text: &str) -> Option<String> {
    crate::api::invoke::percent_decode(text)
}

/// `X-Cirrus-Idempotency-Key`, checked.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, cirrus_api::ApiError> {
    crate::api::invoke::idempotency_key(headers)
}

/// `If-Match` / `If-None-Match` of a KV write.
pub fn kv_condition(
    headers: &HeaderMap,
) -> Result<crate::store::KvCondition, cirrus_api::ApiError> {
    crate::api::kv::condition(headers)
}

/// The `from` / `to` of a usage query, in the canonical form records are stored in.
pub fn usage_instant(text: &str) -> Option<String> {
    crate::api::usage::instant("from", text).ok()
}
