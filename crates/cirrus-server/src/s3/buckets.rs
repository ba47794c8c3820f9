//! Bucket operations and listing objects (ListObjects and ListObjectsV2).

use super::error::{S3Error, S3Result};
use super::xml::{self, NAMESPACE, OWNER};
use super::{iso_time, quoted, url_encode, valid_bucket_name, xml_response, Target, S3};
use crate::store::BucketDelete;
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use std::sync::Arc;

/// ListBuckets, paged by `max-buckets` (1 to 10,000) with a continuation token (the last
/// name returned), filtered by `prefix` and `bucket-region`.
pub async fn list_buckets(s3: &Arc<S3>, t: &Target) -> S3Result<Response> {
    let max = match t.param("max-buckets") {
        None => None,
        Some(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    S3Error::invalid_argument("max-buckets must be an integer from 1 to 10000")
                })?,
        ),
    };
    let after = match t.param("continuation-token").filter(|v| !v.is_empty()) {
        None => None,
        Some(token) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    S3Error::invalid_argument("The continuation token provided is incorrect")
                })?,
        ),
    };
    let prefix = t.param("prefix").unwrap_or("").to_owned();
    let other_region = t.param("bucket-region").is_some_and(|r| r != super::REGION);
    let store = s3.store.clone();
    let mut buckets: Vec<(String, u64)> = store
        .list_buckets()
        .await
        .map_err(S3Error::internal)?
        .into_iter()
        .filter(|(name, _)| {
            !other_region && name.starts_with(&prefix) && after.as_ref().is_none_or(|a| name > a)
        })
        .collect();
    buckets.sort();
    let truncated = max.is_some_and(|m| buckets.len() > m);
    buckets.truncate(max.unwrap_or(usize::MAX));
    let continuation_token = if truncated {
        buckets
            .last()
            .map(|(name, _)| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name))
    } else {
        None
    };
    let doc = xml::document(
        "ListAllMyBucketsResult",
        &xml::ListAllMyBucketsResult {
            xmlns: NAMESPACE,
            owner: OWNER,
            buckets: xml::Buckets {
                bucket: buckets
                    .into_iter()
                    .map(|(name, created)| xml::BucketEntry {
                        name,
                        creation_date: iso_time(created),
                    })
                    .collect(),
            },
            continuation_token,
            prefix: t.param("prefix").map(str::to_owned),
        },
    )?;
    Ok(xml_response(StatusCode::OK, doc))
}

pub async fn create(s3: &Arc<S3>, t: &Target, body: Body) -> S3Result<Response> {
    if !valid_bucket_name(&t.bucket) {
        return Err(S3Error::bad_request(
            "InvalidBucketName",
            "The specified bucket is not valid.",
        )
        .with_resource(&t.bucket));
    }
    // A CreateBucketConfiguration (the region) may come along; it must at least be XML.
    let bytes = axum::body::to_bytes(body, 64 << 10).await.map_err(|_| {
        S3Error::malformed_xml("the bucket configuration is too large or broken off")
    })?;
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        let text = std::str::from_utf8(&bytes).map_err(S3Error::malformed_xml)?;
        let mut reader = quick_xml::Reader::from_str(text);
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(e) => return Err(S3Error::malformed_xml(e)),
            }
        }
    }
    let (store, name, now) = (s3.store.clone(), t.bucket.clone(), s3.clock.now_ms());
    if !store
        .create_bucket(&name, now)
        .await
        .map_err(S3Error::internal)?
    {
        return Err(S3Error::new(
            "BucketAlreadyOwnedByYou",
            StatusCode::CONFLICT,
            "Your previous request to create the named bucket succeeded and you already own it.",
        )
        .with_resource(&t.bucket));
    }
    Ok((
        StatusCode::OK,
        [(header::LOCATION, format!("/{}", t.bucket))],
    )
        .into_response())
}

pub async fn delete(s3: &Arc<S3>, t: &Target) -> S3Result<Response> {
    let (store, name) = (s3.store.clone(), t.bucket.clone());
    match store
        .delete_bucket(&name)
        .await
        .map_err(S3Error::internal)?
    {
        BucketDelete::Deleted(blobs) => {
            super::remove_blobs(s3, blobs);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        BucketDelete::Missing => Err(S3Error::no_such_bucket(&t.bucket)),
        BucketDelete::NotEmpty => Err(S3Error::new(
            "BucketNotEmpty",
            StatusCode::CONFLICT,
            "The bucket you tried to delete is not empty",
        )
        .with_resource(&t.bucket)),
    }
}

pub async fn exists(s3: &Arc<S3>, bucket: &str) -> S3Result<()> {
    let (store, name) = (s3.store.clone(), bucket.to_owned());
    if store
        .bucket_exists(&name)
        .await
        .map_err(S3Error::internal)?
    {
        Ok(())
    } else {
        Err(S3Error::no_such_bucket(bucket))
    }
}

pub async fn head(s3: &Arc<S3>, t: &Target) -> S3Result<Response> {
    exists(s3, &t.bucket).await?;
    Ok((StatusCode::OK, [("x-amz-bucket-region", super::REGION)]).into_response())
}

pub async fn location(s3: &Arc<S3>, t: &Target) -> S3Result<Response> {
    exists(s3, &t.bucket).await?;
    let doc = xml::document(
        "LocationConstraint",
        &xml::LocationConstraint {
            xmlns: NAMESPACE,
            region: String::new(),
        },
    )?;
    Ok(xml_response(StatusCode::OK, doc))
}

/// The smallest string greater than every string that starts with `prefix` (the last
/// character incremented, carrying past U+10FFFF); `None` when nothing is greater.
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Where a listing resumes: after a key it returned, or at the first key past a common
/// prefix it returned. Continuation tokens carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cursor {
    After(String),
    From(String),
    /// Past the end: nothing more.
    End,
}

impl Cursor {
    fn past_prefix(common: &str) -> Self {
        successor(common).map_or(Cursor::End, Cursor::From)
    }

    fn token(&self) -> String {
        let text = match self {
            Cursor::After(k) => format!("a{k}"),
            Cursor::From(k) => format!("f{k}"),
            Cursor::End => "e".to_owned(),
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    fn parse(token: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let rest = text.get(1..)?.to_owned();
        match text.chars().next()? {
            'a' => Some(Cursor::After(rest)),
            'f' => Some(Cursor::From(rest)),
            'e' => Some(Cursor::End),
            _ => None,
        }
    }
}

/// The common prefix `key` rolls up into, if any.
fn common_prefix(key: &str, prefix: &str, delimiter: Option<&str>) -> Option<String> {
    let d = delimiter?;
    let rest = key.strip_prefix(prefix)?;
    rest.find(d)
        .map(|i| key[..prefix.len() + i + d.len()].to_owned())
}

fn max_keys(t: &Target) -> S3Result<usize> {
    match t.param("max-keys") {
        None => Ok(1000),
        Some(v) => v
            .parse::<usize>()
            .map(|n| n.min(1000))
            .map_err(|_| S3Error::invalid_argument("max-keys must be a non-negative integer")),
    }
}

pub async fn list_objects(s3: &Arc<S3>, t: &Target) -> S3Result<Response> {
    exists(s3, &t.bucket).await?;
    let v2 = t.param("list-type") == Some("2");
    let prefix = t.param("prefix").unwrap_or("").to_owned();
    let delimiter = t
        .param("delimiter")
        .filter(|d| !d.is_empty())
        .map(str::to_owned);
    let url = match t.param("encoding-type") {
        None => false,
        Some("url") => true,
        Some(_) => {
            return Err(S3Error::invalid_argument(
                "Invalid Encoding Method specified in Request",
            ))
        }
    };
    let limit = max_keys(t)?;
    // An empty token is no token (some SDKs send the parameter empty on the first page).
    let token = t
        .param("continuation-token")
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let owner = (!v2 || t.param("fetch-owner") == Some("true")).then_some(OWNER);
    let start_after = t.param("start-after").map(str::to_owned);
    let marker = t.param("marker").map(str::to_owned);
    let resume = |marker: &str| {
        // A marker that is itself a common prefix resumes past everything under it.
        if common_prefix(marker, &prefix, delimiter.as_deref()).as_deref() == Some(marker) {
            Cursor::past_prefix(marker)
        } else {
            Cursor::After(marker.to_owned())
        }
    };
    let mut cursor: Option<Cursor> = if v2 {
        match &token {
            Some(token) => Some(Cursor::parse(token).ok_or_else(|| {
                S3Error::invalid_argument("The continuation token provided is incorrect")
            })?),
            None => start_after.as_deref().map(resume),
        }
    } else {
        marker.as_deref().map(resume)
    };
    let mut contents = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut truncated = false;
    if limit == 0 {
        // Nothing asked for: an empty, complete answer (S3's max-keys=0).
        cursor = Some(Cursor::End);
    }
    let mut last_returned: Option<String> = None;
    // With a delimiter most rows of a batch may roll up into one prefix: fetch less.
    let batch = if delimiter.is_some() { 100 } else { 1000 };
    'scan: loop {
        let (from, after) = match &cursor {
            Some(Cursor::End) => break,
            Some(Cursor::From(f)) => (f.clone().max(prefix.clone()), None),
            Some(Cursor::After(a)) => (prefix.clone(), Some(a.clone())),
            None => (prefix.clone(), None),
        };
        let (store, bucket) = (s3.store.clone(), t.bucket.clone());
        let found = store
            .list_objects(&bucket, &from, after.as_deref(), batch)
            .await
            .map_err(S3Error::internal)?;
        if found.is_empty() {
            break;
        }
        for object in found {
            if !object.key.starts_with(&prefix) {
                break 'scan;
            }
            if contents.len() + prefixes.len() >= limit {
                truncated = true;
                break 'scan;
            }
            match common_prefix(&object.key, &prefix, delimiter.as_deref()) {
                Some(common) => {
                    cursor = Some(Cursor::past_prefix(&common));
                    last_returned = Some(common.clone());
                    prefixes.push(common);
                    continue 'scan; // the next query starts past this prefix
                }
                None => {
                    cursor = Some(Cursor::After(object.key.clone()));
                    last_returned = Some(object.key.clone());
                    contents.push(object);
                }
            }
        }
    }
    let enc = |s: &str| if url { url_encode(s) } else { s.to_owned() };
    let count = contents.len() + prefixes.len();
    let result = xml::ListBucketResult {
        xmlns: NAMESPACE,
        name: t.bucket.clone(),
        prefix: enc(&prefix),
        delimiter: delimiter.as_deref().map(enc),
        max_keys: limit,
        encoding_type: url.then_some("url"),
        is_truncated: truncated,
        key_count: v2.then_some(count),
        continuation_token: if v2 { token } else { None },
        next_continuation_token: if v2 && truncated {
            cursor.map(|c| c.token())
        } else {
            None
        },
        start_after: if v2 {
            start_after.as_deref().map(enc)
        } else {
            None
        },
        marker: if v2 {
            None
        } else {
            Some(enc(marker.as_deref().unwrap_or("")))
        },
        next_marker: if !v2 && truncated && delimiter.is_some() {
            last_returned.as_deref().map(enc)
        } else {
            None
        },
        contents: contents
            .into_iter()
            .map(|o| xml::ObjectEntry {
                key: enc(&o.key),
                last_modified: iso_time(o.modified_ms),
                etag: quoted(&o.etag),
                size: o.size,
                storage_class: "STANDARD",
                owner,
            })
            .collect(),
        common_prefixes: prefixes
            .into_iter()
            .map(|p| xml::CommonPrefix { prefix: enc(&p) })
            .collect(),
    };
    Ok(xml_response(
        StatusCode::OK,
        xml::document("ListBucketResult", &result)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_bound_every_key_under_a_prefix() {
        assert_eq!(successor("a/").as_deref(), Some("a0"));
        let odd = "a/\u{10FFFF}";
        let next = successor(odd).unwrap();
        assert!(next.as_str() > "a/\u{10FFFF}\u{10FFFF}z");
        assert_eq!(next, "a0");
        assert_eq!(successor("\u{10FFFF}"), None);
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        for c in [
            Cursor::After("k".into()),
            Cursor::From("x/".into()),
            Cursor::End,
        ] {
            assert_eq!(Cursor::parse(&c.token()), Some(c));
        }
        assert_eq!(
            common_prefix("photos/a.jpg", "", Some("/")).as_deref(),
            Some("photos/")
        );
        assert_eq!(common_prefix("photos/", "photos/", Some("/")), None);
    }
}
