//! Object operations: PUT, GET (with `Range`), HEAD, DELETE, DeleteObjects, CopyObject.

use super::body::ingest;
use super::buckets::exists;
use super::conditions::{precondition_failed, Failed};
use super::error::{S3Error, S3Result};
use super::sigv4::Verified;
use super::xml::{self, NAMESPACE};
use super::{
    content_type, iso_time, object_headers, quoted, remove_blobs, user_metadata, xml_response,
    Target, S3,
};
use crate::store::{ObjectMeta, PutCondition, PutRefused};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Objects up to this size are read in one go; larger ones stream.
const READ_WHOLE_BYTES: u64 = 1 << 20;
/// Streaming reads move this much at a time.
const STREAM_CHUNK: usize = 256 << 10;

/// Records an object with its notifications; the replaced object's blob goes.
pub async fn record(
    s3: &Arc<S3>,
    object: ObjectMeta,
    condition: PutCondition,
    event: &'static str,
    lineage: Option<crate::lineage::Lineage>,
) -> S3Result<()> {
    let pending = Arc::new(s3.notifier.prepare(
        &object.bucket,
        &object.key,
        event,
        object.modified_ms,
        lineage,
    ));
    let (store, p) = (s3.store.clone(), pending.clone());
    let blob = object.blob.clone();
    let (bucket, key) = (object.bucket.clone(), object.key.clone());
    let if_match = matches!(condition, PutCondition::Etag(_));
    let outcome = store
        .put_object(&object, &condition, Box::new(move |o| p.events(o)))
        .await
        .map_err(S3Error::internal);
    match outcome {
        Ok(Ok(replaced)) => {
            s3.notifier.committed(&pending);
            if let Some(old) = replaced {
                remove_blobs(s3, vec![old.blob]);
            }
            Ok(())
        }
        Ok(Err(refused)) => {
            remove_blobs(s3, vec![blob]);
            Err(match refused {
                PutRefused::NoSuchBucket => S3Error::no_such_bucket(&bucket),
                // If-Match on a key with no object: S3 answers 404.
                PutRefused::PreconditionFailed { missing: true } if if_match => {
                    S3Error::no_such_key(&key)
                }
                PutRefused::PreconditionFailed { .. } => precondition_failed(),
            })
        }
        Err(e) => {
            remove_blobs(s3, vec![blob]);
            Err(e)
        }
    }
}

/// `If-None-Match: *` (create only) or `If-Match: "etag"` (replace only that version).
pub fn put_condition(headers: &HeaderMap) -> S3Result<PutCondition> {
    if let Some(etag) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        return Ok(PutCondition::Etag(etag.trim().trim_matches('"').to_owned()));
    }
    match headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(PutCondition::Any),
        Some(v) if v.trim() == "*" => Ok(PutCondition::Absent),
        Some(_) => Err(S3Error::not_implemented(
            "If-None-Match on writes other than *",
        )),
    }
}

/// `x-amz-checksum-*` for a verified checksum.
pub fn checksum_header(headers: &mut HeaderMap, checksum: &Option<(String, String)>) {
    if let Some((algorithm, value)) = checksum {
        if let (Some(a), Ok(v)) = (
            super::checksum::Algorithm::parse(algorithm),
            HeaderValue::from_str(value),
        ) {
            headers.insert(a.header(), v);
        }
    }
}

/// Streams a body into an object (checking what its headers promise), records it and
/// queues its notifications. `verified` is the SigV4 signature, when there is one;
/// `lineage` as for [`record`].
pub async fn store(
    s3: &Arc<S3>,
    bucket: &str,
    key: &str,
    headers: &HeaderMap,
    verified: Option<&Verified>,
    body: Body,
    lineage: Option<crate::lineage::Lineage>,
) -> S3Result<ObjectMeta> {
    exists(s3, bucket).await?;
    let condition = put_condition(headers)?;
    let ingested = ingest(
        body,
        headers,
        verified,
        s3.blobs.clone(),
        s3.limits.max_object_bytes,
    )
    .await?;
    let object = ObjectMeta {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        size: ingested.size,
        etag: hex::encode(ingested.md5),
        content_type: content_type(headers),
        metadata: user_metadata(headers),
        checksum: ingested.checksum,
        modified_ms: s3.clock.now_ms(),
        blob: ingested.blob,
        parts: Vec::new(),
    };
    record(s3, object.clone(), condition, "ObjectCreated:Put", lineage).await?;
    Ok(object)
}

pub async fn put(
    s3: &Arc<S3>,
    t: &Target,
    headers: &HeaderMap,
    verified: &Verified,
    body: Body,
) -> S3Result<Response> {
    let object = store(s3, &t.bucket, &t.key, headers, Some(verified), body, None).await?;
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&quoted(&object.etag)).map_err(S3Error::internal)?,
    );
    checksum_header(h, &object.checksum);
    Ok(response)
}

pub async fn lookup(s3: &Arc<S3>, bucket: &str, key: &str) -> S3Result<ObjectMeta> {
    let (store, b, k) = (s3.store.clone(), bucket.to_owned(), key.to_owned());
    match store.get_object(&b, &k).await.map_err(S3Error::internal)? {
        Some(o) => Ok(o),
        None => {
            exists(s3, bucket).await?;
            Err(S3Error::no_such_key(key))
        }
    }
}

/// An inclusive byte range of an object of `size` bytes, from a `Range` header.
pub(crate) fn parse_range(text: &str, size: u64) -> S3Result<Option<(u64, u64)>> {
    let unsatisfiable = || {
        S3Error::new(
            "InvalidRange",
            StatusCode::RANGE_NOT_SATISFIABLE,
            "The requested range is not satisfiable",
        )
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Ok(None); // other units are ignored, as S3 does
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: S3 answers with the whole object
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let n: u64 = end.parse().map_err(|_| unsatisfiable())?;
        if n == 0 {
            return Err(unsatisfiable());
        }
        (size.saturating_sub(n), size.saturating_sub(1))
    } else {
        let s: u64 = start.parse().map_err(|_| unsatisfiable())?;
        let e: u64 = if end.is_empty() {
            u64::MAX
        } else {
            end.parse::<u64>().map_err(|_| unsatisfiable())?
        };
        if e < s {
            return Ok(None); // not a valid range: ignored, as RFC 9110 and S3 do
        }
        (s, e.min(size.saturating_sub(1)))
    };
    if size == 0 || range.0 >= size {
        return Err(unsatisfiable());
    }
    Ok(Some(range))
}

/// The byte range of part `number` of an object, and the object's part count (0 for an
/// object not uploaded in parts, which is its own part 1).
fn part_range(object: &ObjectMeta, number: &str) -> S3Result<((u64, u64), usize)> {
    let number: usize = number
        .parse()
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })?;
    let sizes: &[u64] = if object.parts.is_empty() {
        std::slice::from_ref(&object.size)
    } else {
        &object.parts
    };
    let Some(size) = sizes.get(number - 1) else {
        return Err(S3Error::new(
            "InvalidPartNumber",
            StatusCode::RANGE_NOT_SATISFIABLE,
            "The requested partnumber is not satisfiable",
        ));
    };
    let start: u64 = sizes[..number - 1].iter().sum();
    Ok((
        (start, (start + size).saturating_sub(1)),
        object.parts.len(),
    ))
}

pub async fn get(
    s3: &Arc<S3>,
    t: &Target,
    headers: &HeaderMap,
    head_only: bool,
) -> S3Result<Response> {
    // A concurrent overwrite may remove the blob between the lookup and the open: look
    // again (the new object is then the answer).
    let mut attempts = 0;
    loop {
        attempts += 1;
        let object = lookup(s3, &t.bucket, &t.key).await?;
        match super::conditions::for_read(headers, &object) {
            None => {}
            Some(Failed::Precondition) => return Err(precondition_failed()),
            Some(Failed::NotModified) => {
                let mut response = StatusCode::NOT_MODIFIED.into_response();
                object_headers(&object, response.headers_mut());
                return Ok(response);
            }
        }
        let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        let part = match t.param("partNumber") {
            None => None,
            Some(_) if range_header.is_some() => {
                return Err(S3Error::bad_request(
                    "InvalidRequest",
                    "Cannot specify both Range header and partNumber query parameter",
                ))
            }
            Some(n) => Some(part_range(&object, n)?),
        };
        let range = match (range_header, part) {
            (_, Some((range, _))) => Some(range),
            (Some(r), None) => parse_range(r, object.size).map_err(|e| {
                let mut e = e;
                e.resource = Some(t.key.clone());
                e
            })?,
            (None, None) => None,
        };
        let (start, end) = range.unwrap_or((0, object.size.saturating_sub(1)));
        let length = if object.size == 0 { 0 } else { end - start + 1 };
        let body = if head_only {
            Body::empty()
        } else {
            match open_body(s3, &object.blob, start, length).await {
                Ok(body) => body,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => continue,
                Err(e) => return Err(S3Error::internal(e)),
            }
        };
        let mut response = Response::new(body);
        let h = response.headers_mut();
        object_headers(&object, h);
        super::response_overrides(t, h);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if let Some((_, count)) = part.filter(|(_, count)| *count > 0) {
            response
                .headers_mut()
                .insert("x-amz-mp-parts-count", HeaderValue::from(count));
        }
        if range.is_some() {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let value = format!("bytes {start}-{end}/{}", object.size);
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).map_err(S3Error::internal)?,
            );
        } else if headers
            .get("x-amz-checksum-mode")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enabled"))
        {
            checksum_header(response.headers_mut(), &object.checksum);
            if let Some((_, value)) = &object.checksum {
                response.headers_mut().insert(
                    "x-amz-checksum-type",
                    HeaderValue::from_static(xml::checksum_type(value)),
                );
            }
        }
        return Ok(response);
    }
}

async fn open_body(s3: &Arc<S3>, blob: &str, start: u64, length: u64) -> std::io::Result<Body> {
    use std::io::{Read as _, Seek as _};
    let (blobs, blob) = (s3.blobs.clone(), blob.to_owned());
    if length <= READ_WHOLE_BYTES {
        let bytes = tokio::task::spawn_blocking(move || {
            let mut file = blobs.read(&blob)?;
            file.seek(std::io::SeekFrom::Start(start))?;
            let mut buf = Vec::with_capacity(length as usize);
            file.take(length).read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        return Ok(Body::from(bytes));
    }
    use tokio::io::AsyncReadExt as _;
    // Opened (in a cluster, perhaps fetched) and positioned off the async runtime.
    let file = tokio::task::spawn_blocking(move || {
        let mut file = blobs.read(&blob)?;
        file.seek(std::io::SeekFrom::Start(start))?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(std::io::Error::other)??;
    let file = tokio::fs::File::from_std(file);
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(length), STREAM_CHUNK);
    Ok(Body::from_stream(stream))
}

/// Deletes an object with its notifications; `false` when there was none.
/// `lineage` as for [`record`].
pub async fn remove(
    s3: &Arc<S3>,
    bucket: &str,
    key: &str,
    lineage: Option<crate::lineage::Lineage>,
) -> S3Result<bool> {
    let pending = Arc::new(s3.notifier.prepare(
        bucket,
        key,
        "ObjectRemoved:Delete",
        s3.clock.now_ms(),
        lineage,
    ));
    let (store, b, k, p) = (
        s3.store.clone(),
        bucket.to_owned(),
        key.to_owned(),
        pending.clone(),
    );
    match store
        .delete_object(&b, &k, Box::new(move |o| p.events(o)))
        .await
        .map_err(S3Error::internal)?
    {
        Some(old) => {
            s3.notifier.committed(&pending);
            remove_blobs(s3, vec![old.blob]);
            Ok(true)
        }
        None => Ok(false),
    }
}

pub async fn delete(s3: &Arc<S3>, t: &Target) -> S3Result<Response> {
    exists(s3, &t.bucket).await?;
    remove(s3, &t.bucket, &t.key, None).await?;
    // Deleting a missing key succeeds, as in S3.
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// DeleteObjects: at most 1,000 keys, each deleted on its own.
pub async fn delete_many(
    s3: &Arc<S3>,
    t: &Target,
    headers: &HeaderMap,
    body: Body,
) -> S3Result<Response> {
    exists(s3, &t.bucket).await?;
    let bytes = axum::body::to_bytes(body, 2 << 20)
        .await
        .map_err(|_| S3Error::malformed_xml("the Delete document is too large or broken off"))?;
    verify_small_body(headers, &bytes)?;
    let request: xml::Delete = xml::parse(&bytes)?;
    if request.objects.len() > 1000 || request.objects.is_empty() {
        return Err(S3Error::malformed_xml("a Delete names 1 to 1000 objects"));
    }
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for o in request.objects {
        // A version that is not the current object is refused for that key alone.
        if let Some(Err(e)) = o.version_id.as_deref().map(super::route::refuse_version) {
            errors.push(xml::DeleteError {
                key: o.key,
                code: e.code.to_owned(),
                message: e.message,
            });
            continue;
        }
        match remove(s3, &t.bucket, &o.key, None).await {
            Ok(_) => {
                if !request.quiet {
                    deleted.push(xml::Deleted { key: o.key });
                }
            }
            Err(e) => errors.push(xml::DeleteError {
                key: o.key,
                code: e.code.to_owned(),
                message: e.message,
            }),
        }
    }
    let doc = xml::document(
        "DeleteResult",
        &xml::DeleteResult {
            xmlns: NAMESPACE,
            deleted,
            errors,
        },
    )?;
    Ok(xml_response(StatusCode::OK, doc))
}

/// Checks what a small, buffered body's headers promise: `Content-MD5`, a checksum
/// header, or the signed payload hash.
pub fn verify_small_body(headers: &HeaderMap, bytes: &[u8]) -> S3Result<()> {
    use base64::Engine as _;
    use md5::Digest as _;
    if let Some(given) = headers.get("content-md5").and_then(|v| v.to_str().ok()) {
        let computed = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes));
        if computed != given.trim() {
            return Err(S3Error::bad_digest("Content-MD5"));
        }
    }
    for algorithm in super::checksum::ALL {
        if let Some(given) = headers
            .get(algorithm.header())
            .and_then(|v| v.to_str().ok())
        {
            let mut h = algorithm.hasher();
            h.update(bytes);
            if h.finish() != given.trim() {
                return Err(S3Error::bad_digest(algorithm.name()));
            }
        }
    }
    if let Some(hash) = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        if hash.len() == 64 && !hash.eq_ignore_ascii_case(&super::sigv4::sha256_hex(bytes)) {
            return Err(S3Error::bad_request(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            ));
        }
    }
    Ok(())
}

/// The bucket and key of `x-amz-copy-source` (`bucket/key` or `/bucket/key`,
/// URL-encoded, perhaps with `?versionId=`).
pub fn copy_source(headers: &HeaderMap) -> S3Result<(String, String)> {
    let source = headers
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let source = match source.split_once("?versionId=") {
        Some((source, version)) => {
            super::route::refuse_version(version)?;
            source
        }
        None => source,
    };
    let source = percent_encoding::percent_decode_str(source.trim_start_matches('/'))
        .decode_utf8()
        .map_err(|_| S3Error::invalid_argument("x-amz-copy-source is not valid UTF-8"))?
        .into_owned();
    match source.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok((b.to_owned(), k.to_owned())),
        _ => Err(S3Error::invalid_argument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
        )),
    }
}

pub async fn copy(s3: &Arc<S3>, t: &Target, headers: &HeaderMap) -> S3Result<Response> {
    exists(s3, &t.bucket).await?;
    let (src_bucket, src_key) = copy_source(headers)?;
    let condition = put_condition(headers)?;
    let from = lookup(s3, &src_bucket, &src_key).await?;
    super::conditions::for_copy_source(headers, &from)?;
    let replace = match headers
        .get("x-amz-metadata-directive")
        .and_then(|v| v.to_str().ok())
    {
        None | Some("COPY") => false,
        Some("REPLACE") => true,
        Some(other) => {
            return Err(S3Error::invalid_argument(format!(
                "Unknown metadata directive {other:?}"
            )))
        }
    };
    let (blobs, from_blob) = (s3.blobs.clone(), from.blob.clone());
    let blob = tokio::task::spawn_blocking(move || {
        let mut writer = blobs.writer()?;
        writer.append(blobs.read(&from_blob)?)?;
        writer.finish(&blobs)
    })
    .await
    .map_err(S3Error::internal)?
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            S3Error::no_such_key(&src_key) // overwritten or deleted meanwhile
        } else {
            S3Error::internal(e)
        }
    })?;
    let object = ObjectMeta {
        bucket: t.bucket.clone(),
        key: t.key.clone(),
        size: from.size,
        etag: from.etag.clone(),
        content_type: if replace {
            content_type(headers)
        } else {
            from.content_type.clone()
        },
        metadata: if replace {
            user_metadata(headers)
        } else {
            from.metadata.clone()
        },
        checksum: from.checksum.clone(),
        modified_ms: s3.clock.now_ms(),
        blob,
        parts: from.parts.clone(),
    };
    let modified = object.modified_ms;
    record(s3, object, condition, "ObjectCreated:Copy", None).await?;
    let doc = xml::document(
        "CopyObjectResult",
        &xml::CopyObjectResult {
            etag: quoted(&from.etag),
            last_modified: iso_time(modified),
        },
    )?;
    Ok(xml_response(StatusCode::OK, doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100).unwrap(), Some((95, 99)));
        assert_eq!(
            parse_range("bytes=100-", 100).unwrap_err().code,
            "InvalidRange"
        );
        assert_eq!(parse_range("bytes=5-2", 100).unwrap(), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100).unwrap(), None);
    }
}
