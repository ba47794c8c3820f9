//! Conditional requests on an existing object: `If-Match`, `If-None-Match`,
//! `If-Modified-Since`, `If-Unmodified-Since` on GET and HEAD (RFC 9110 §13.2.2, as S3
//! applies it), and their `x-amz-copy-source-if-*` forms on the source of a copy.

use super::error::{S3Error, S3Result};
use crate::store::ObjectMeta;
use axum::http::{HeaderMap, StatusCode};

/// What a failed condition answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// 412: the caller's picture of the object is wrong.
    Precondition,
    /// 304: the caller's copy is current (reads only).
    NotModified,
}

/// The four conditions, read from headers named `{prefix}if-match` and so on.
struct Conditions<'a> {
    if_match: Option<&'a str>,
    if_none_match: Option<&'a str>,
    if_modified_since: Option<&'a str>,
    if_unmodified_since: Option<&'a str>,
}

impl<'a> Conditions<'a> {
    fn read(headers: &'a HeaderMap, prefix: &str) -> Self {
        let get = |name: &str| {
            headers
                .get(format!("{prefix}{name}"))
                .and_then(|v| v.to_str().ok())
        };
        Self {
            if_match: get("if-match"),
            if_none_match: get("if-none-match"),
            if_modified_since: get("if-modified-since"),
            if_unmodified_since: get("if-unmodified-since"),
        }
    }

    /// The evaluation order of RFC 9110 §13.2.2: a date condition is skipped when its
    /// ETag counterpart is present.
    fn evaluate(&self, object: &ObjectMeta) -> Option<Failed> {
        let modified_s = (object.modified_ms / 1000) as i64;
        if let Some(cond) = self.if_match {
            if !etag_matches(cond, &object.etag) {
                return Some(Failed::Precondition);
            }
        } else if let Some(since) = self.if_unmodified_since.and_then(http_date) {
            if modified_s > since {
                return Some(Failed::Precondition);
            }
        }
        if let Some(cond) = self.if_none_match {
            if etag_matches(cond, &object.etag) {
                return Some(Failed::NotModified);
            }
        } else if let Some(since) = self.if_modified_since.and_then(http_date) {
            if modified_s <= since {
                return Some(Failed::NotModified);
            }
        }
        None
    }
}

/// `If-*` on a GET or HEAD.
pub fn for_read(headers: &HeaderMap, object: &ObjectMeta) -> Option<Failed> {
    Conditions::read(headers, "").evaluate(object)
}

/// `x-amz-copy-source-if-*` on CopyObject and UploadPartCopy: every failure is a 412.
pub fn for_copy_source(headers: &HeaderMap, object: &ObjectMeta) -> S3Result<()> {
    match Conditions::read(headers, "x-amz-copy-source-").evaluate(object) {
        None => Ok(()),
        Some(_) => Err(precondition_failed()),
    }
}

pub fn precondition_failed() -> S3Error {
    S3Error::new(
        "PreconditionFailed",
        StatusCode::PRECONDITION_FAILED,
        "At least one of the pre-conditions you specified did not hold",
    )
}

/// Whether an `If-Match`/`If-None-Match` list names this ETag (or is `*`).
pub fn etag_matches(condition: &str, etag: &str) -> bool {
    condition
        .split(',')
        .map(|c| c.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|c| c == "*" || c == etag)
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) in Unix seconds; `None` when it is not
/// one, and then the condition is ignored, as RFC 9110 says.
fn http_date(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc2822(text.trim())
        .ok()
        .map(|d| d.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(modified_ms: u64) -> ObjectMeta {
        ObjectMeta {
            bucket: "b".into(),
            key: "k".into(),
            size: 1,
            etag: "abc".into(),
            content_type: None,
            metadata: Vec::new(),
            checksum: None,
            modified_ms,
            blob: "x".into(),
            parts: Vec::new(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn reads_follow_rfc_9110_order() {
        // 2023-11-14T22:13:20Z
        let o = object(1_700_000_000_500);
        let before = "Tue, 14 Nov 2023 22:13:19 GMT";
        let same = "Tue, 14 Nov 2023 22:13:20 GMT";
        assert_eq!(for_read(&headers(&[]), &o), None);
        assert_eq!(
            for_read(&headers(&[("if-modified-since", same)]), &o),
            Some(Failed::NotModified)
        );
        assert_eq!(
            for_read(&headers(&[("if-modified-since", before)]), &o),
            None
        );
        assert_eq!(
            for_read(&headers(&[("if-unmodified-since", before)]), &o),
            Some(Failed::Precondition)
        );
        assert_eq!(
            for_read(&headers(&[("if-unmodified-since", same)]), &o),
            None
        );
        // If-Match wins over If-Unmodified-Since; If-None-Match over If-Modified-Since.
        assert_eq!(
            for_read(
                &headers(&[("if-match", "\"abc\""), ("if-unmodified-since", before)]),
                &o
            ),
            None
        );
        assert_eq!(
            for_read(
                &headers(&[("if-none-match", "\"zzz\""), ("if-modified-since", same)]),
                &o
            ),
            None
        );
        assert_eq!(
            for_read(&headers(&[("if-none-match", "*")]), &o),
            Some(Failed::NotModified)
        );
        assert_eq!(
            for_read(&headers(&[("if-modified-since", "yesterday")]), &o),
            None
        );
    }

    #[test]
    fn copy_sources_fail_with_412() {
        let o = object(1_700_000_000_000);
        let h = headers(&[("x-amz-copy-source-if-none-match", "\"abc\"")]);
        assert_eq!(
            for_copy_source(&h, &o).expect_err("none-match").code,
            "PreconditionFailed"
        );
        let h = headers(&[("x-amz-copy-source-if-match", "\"abc\"")]);
        assert!(for_copy_source(&h, &o).is_ok());
        let h = headers(&[(
            "x-amz-copy-source-if-modified-since",
            "Wed, 15 Nov 2023 00:00:00 GMT",
        )]);
        assert!(for_copy_source(&h, &o).is_err());
    }
}
