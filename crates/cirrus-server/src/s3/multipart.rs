//! Multipart uploads: create, upload part (parts may arrive concurrently and in any
//! order), complete, abort, list parts, list uploads.

use super::body::ingest;
use super::buckets::exists;
use super::checksum::Algorithm;
use super::error::{S3Error, S3Result};
use super::sigv4::Verified;
use super::xml::{self, NAMESPACE};
use super::{
    content_type, iso_time, quoted, remove_blobs, user_metadata, xml_response, Target, S3,
};
use crate::store::{CompleteConflict, CompletedUpload, ObjectMeta, Part, Upload};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use md5::Digest as _;
use std::sync::Arc;

const MAX_PARTS: u32 = 10_000;

/// The checksum an upload's object gets: `x-amz-checksum-algorithm`, and
/// `x-amz-checksum-type` where S3 offers a choice (CRC64NVME is full-object only; SHA-1
/// and SHA-256 composite only; the 32-bit CRCs either, composite by default).
fn checksum_choice(headers: &HeaderMap) -> S3Result<Option<(Algorithm, &'static str)>> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(name) = header("x-amz-checksum-algorithm") else {
        if header("x-amz-checksum-type").is_some() {
            return Err(S3Error::bad_request(
                "InvalidRequest",
                "x-amz-checksum-type needs x-amz-checksum-algorithm",
            ));
        }
        return Ok(None);
    };
    let algorithm = Algorithm::parse(name)
        .ok_or_else(|| S3Error::invalid_argument(format!("unknown checksum algorithm {name:?}")))?;
    let kind = match (algorithm, header("x-amz-checksum-type")) {
        (Algorithm::Crc64Nvme, None | Some("FULL_OBJECT")) => "FULL_OBJECT",
        (Algorithm::Crc32 | Algorithm::Crc32c, Some("FULL_OBJECT")) => "FULL_OBJECT",
        (Algorithm::Crc32 | Algorithm::Crc32c | Algorithm::Sha1 | Algorithm::Sha256, None) => {
            "COMPOSITE"
        }
        (_, Some("COMPOSITE")) if algorithm != Algorithm::Crc64Nvme => "COMPOSITE",
        (_, Some(kind)) => {
            return Err(S3Error::bad_request(
                "InvalidRequest",
                format!(
                    "The {} checksum algorithm does not support checksum type {kind}",
                    algorithm.name()
                ),
            ))
        }
    };
    Ok(Some((algorithm, kind)))
}

pub async fn create(s3: &Arc<S3>, t: &Target, headers: &HeaderMap) -> S3Result<Response> {
    let checksum = checksum_choice(headers)?;
    let upload = Upload {
        id: uuid::Uuid::now_v7().simple().to_string(),
        bucket: t.bucket.clone(),
        key: t.key.clone(),
        content_type: content_type(headers),
        metadata: user_metadata(headers),
        checksum_algorithm: checksum.map(|(a, _)| a.name().to_owned()),
        checksum_type: checksum.map(|(_, kind)| kind.to_owned()),
        created_ms: s3.clock.now_ms(),
    };
    let (store, u) = (s3.store.clone(), upload.clone());
    if store
        .create_upload(&u)
        .await
        .map_err(S3Error::internal)?
        .is_err()
    {
        return Err(S3Error::no_such_bucket(&t.bucket));
    }
    let doc = xml::document(
        "InitiateMultipartUploadResult",
        &xml::InitiateMultipartUploadResult {
            xmlns: NAMESPACE,
            bucket: upload.bucket,
            key: upload.key,
            upload_id: upload.id,
        },
    )?;
    let mut response = xml_response(StatusCode::OK, doc);
    if let Some((algorithm, kind)) = checksum {
        let h = response.headers_mut();
        h.insert(
            "x-amz-checksum-algorithm",
            HeaderValue::from_static(algorithm.name()),
        );
        h.insert("x-amz-checksum-type", HeaderValue::from_static(kind));
    }
    Ok(response)
}

/// The upload a request names, which must be for its bucket and key.
async fn upload_of(s3: &Arc<S3>, t: &Target) -> S3Result<Upload> {
    let id = t.param("uploadId").unwrap_or("").to_owned();
    match find_upload(s3, t).await? {
        Some(u) => Ok(u),
        None => {
            exists(s3, &t.bucket).await?;
            Err(S3Error::no_such_upload(&id))
        }
    }
}

async fn find_upload(s3: &Arc<S3>, t: &Target) -> S3Result<Option<Upload>> {
    let id = t.param("uploadId").unwrap_or("").to_owned();
    let store = s3.store.clone();
    Ok(store
        .get_upload(&id)
        .await
        .map_err(S3Error::internal)?
        .filter(|u| u.bucket == t.bucket && u.key == t.key))
}

fn part_number(t: &Target) -> S3Result<u32> {
    t.param("partNumber")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| (1..=MAX_PARTS).contains(n))
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        })
}

pub async fn upload_part(
    s3: &Arc<S3>,
    t: &Target,
    headers: &HeaderMap,
    verified: &Verified,
    body: Body,
) -> S3Result<Response> {
    let number = part_number(t)?;
    let upload = upload_of(s3, t).await?;
    let headers = &part_checksum_headers(&upload, headers)?;
    let ingested = ingest(
        body,
        headers,
        Some(verified),
        s3.blobs.clone(),
        s3.limits.max_part_bytes,
    )
    .await?;
    let etag = hex::encode(ingested.md5);
    let part = Part {
        number,
        size: ingested.size,
        etag: etag.clone(),
        checksum: ingested.checksum.clone(),
        modified_ms: s3.clock.now_ms(),
        blob: ingested.blob.clone(),
    };
    record_part(s3, &upload, part).await?;
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&quoted(&etag)).map_err(S3Error::internal)?,
    );
    super::objects::checksum_header(h, &ingested.checksum);
    Ok(response)
}

/// A part of an upload with a checksum algorithm carries a checksum of that algorithm:
/// the one the client sent (which must be of that algorithm), or one computed here.
fn part_checksum_headers(upload: &Upload, headers: &HeaderMap) -> S3Result<HeaderMap> {
    let mut headers = headers.clone();
    let Some(wanted) = upload.checksum_algorithm.as_deref() else {
        return Ok(headers);
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let sent = super::checksum::ALL
        .into_iter()
        .find(|a| headers.contains_key(a.header()))
        .map(|a| a.name().to_owned())
        .or_else(|| {
            header("x-amz-trailer")
                .and_then(|t| {
                    super::checksum::ALL
                        .into_iter()
                        .find(|a| a.header().eq_ignore_ascii_case(t.trim()))
                })
                .map(|a| a.name().to_owned())
        })
        .or_else(|| header("x-amz-sdk-checksum-algorithm").map(str::to_ascii_uppercase));
    match sent {
        Some(sent) if sent != wanted => Err(S3Error::bad_request(
            "InvalidRequest",
            format!(
                "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                wanted.to_ascii_lowercase(),
                sent.to_ascii_lowercase()
            ),
        )),
        Some(_) => Ok(headers),
        None => {
            headers.insert(
                "x-amz-sdk-checksum-algorithm",
                HeaderValue::from_str(wanted).map_err(S3Error::internal)?,
            );
            Ok(headers)
        }
    }
}

/// Records a part whose blob is durable; the part it replaces goes. On failure the new
/// blob goes instead.
async fn record_part(s3: &Arc<S3>, upload: &Upload, part: Part) -> S3Result<()> {
    let (store, id, blob) = (s3.store.clone(), upload.id.clone(), part.blob.clone());
    match store.put_part(&id, &part).await.map_err(S3Error::internal) {
        Ok(Ok(replaced)) => {
            if let Some(old) = replaced {
                remove_blobs(s3, vec![old.blob]);
            }
            Ok(())
        }
        Ok(Err(_)) => {
            remove_blobs(s3, vec![blob]);
            Err(S3Error::no_such_upload(&upload.id))
        }
        Err(e) => {
            remove_blobs(s3, vec![blob]);
            Err(e)
        }
    }
}

/// UploadPartCopy: a part made of (a range of) an existing object, as `aws s3 cp`
/// between buckets does for large objects.
pub async fn upload_part_copy(s3: &Arc<S3>, t: &Target, headers: &HeaderMap) -> S3Result<Response> {
    let number = part_number(t)?;
    let upload = upload_of(s3, t).await?;
    let (bucket, key) = super::objects::copy_source(headers)?;
    let from = super::objects::lookup(s3, &bucket, &key).await?;
    super::conditions::for_copy_source(headers, &from)?;
    let (start, len) = match headers
        .get("x-amz-copy-source-range")
        .and_then(|v| v.to_str().ok())
    {
        None => (0, from.size),
        Some(range) => {
            let bad = || {
                S3Error::invalid_argument(format!(
                    "Range specified is not valid for source object of size: {}",
                    from.size
                ))
            };
            let (a, b) = range
                .trim()
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .ok_or_else(bad)?;
            let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if a > b {
                return Err(bad());
            }
            if b >= from.size {
                return Err(S3Error::new(
                    "InvalidRange",
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!(
                        "The requested range is not satisfiable: the source object has {} bytes",
                        from.size
                    ),
                ));
            }
            (a, b - a + 1)
        }
    };
    if len > s3.limits.max_part_bytes {
        return Err(S3Error::bad_request(
            "EntityTooLarge",
            format!(
                "Your proposed upload exceeds the maximum allowed size of {} bytes",
                s3.limits.max_part_bytes
            ),
        ));
    }
    let (blobs, source) = (s3.blobs.clone(), from.blob.clone());
    let copied = tokio::task::spawn_blocking(move || -> std::io::Result<(String, [u8; 16])> {
        use std::io::{Read as _, Seek as _};
        let mut file = blobs.read(&source)?;
        file.seek(std::io::SeekFrom::Start(start))?;
        let mut reader = file.take(len);
        let mut writer = blobs.writer()?;
        let mut md5 = md5::Md5::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            md5.update(&buf[..n]);
            writer.write(&buf[..n])?;
        }
        Ok((writer.finish(&blobs)?, md5.finalize().into()))
    })
    .await
    .map_err(S3Error::internal)?;
    let (blob, md5) = match copied {
        Ok(done) => done,
        // The source was replaced or deleted while it was read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(S3Error::no_such_key(&key))
        }
        Err(e) => return Err(S3Error::internal(e)),
    };
    let part = Part {
        number,
        size: len,
        etag: hex::encode(md5),
        checksum: None,
        modified_ms: s3.clock.now_ms(),
        blob,
    };
    let (etag, modified) = (part.etag.clone(), part.modified_ms);
    record_part(s3, &upload, part).await?;
    let doc = xml::document(
        "CopyPartResult",
        &xml::CopyObjectResult {
            etag: quoted(&etag),
            last_modified: iso_time(modified),
        },
    )?;
    Ok(xml_response(StatusCode::OK, doc))
}

fn invalid_part(number: u32) -> S3Error {
    S3Error::bad_request(
        "InvalidPart",
        format!("One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag. (part {number})"),
    )
}

pub async fn complete(
    s3: &Arc<S3>,
    t: &Target,
    headers: &HeaderMap,
    body: Body,
) -> S3Result<Response> {
    let condition = super::objects::put_condition(headers)?;
    let if_match = matches!(condition, crate::store::PutCondition::Etag(_));
    let bytes = axum::body::to_bytes(body, 4 << 20).await.map_err(|_| {
        S3Error::malformed_xml("the CompleteMultipartUpload document is too large or broken off")
    })?;
    let request: xml::CompleteMultipartUpload = xml::parse(&bytes)?;
    if request.parts.is_empty() {
        return Err(S3Error::malformed_xml(
            "CompleteMultipartUpload lists no parts",
        ));
    }
    // Strictly ascending: a repeated part number is out of order too, as in S3.
    if request.parts.windows(2).any(|w| w[0].number >= w[1].number) {
        return Err(S3Error::bad_request(
            "InvalidPartOrder",
            "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
        ));
    }
    let receipt_parts = request
        .parts
        .iter()
        .map(|p| format!("{}:{}", p.number, p.etag.trim().trim_matches('"')))
        .collect::<Vec<_>>()
        .join(",");
    let Some(upload) = find_upload(s3, t).await? else {
        return retried_completion(s3, t, &receipt_parts).await;
    };
    let (store, id) = (s3.store.clone(), upload.id.clone());
    let stored = store.parts(&id).await.map_err(S3Error::internal)?;
    let mut chosen: Vec<Part> = Vec::with_capacity(request.parts.len());
    for wanted in &request.parts {
        match stored.iter().find(|p| p.number == wanted.number) {
            Some(part)
                if wanted.etag.trim().trim_matches('"') == part.etag
                    && checksum_agrees(wanted, part) =>
            {
                chosen.push(part.clone())
            }
            _ => return Err(invalid_part(wanted.number)),
        }
    }
    if let Some(small) = chosen[..chosen.len() - 1]
        .iter()
        .find(|p| p.size < s3.limits.min_part_bytes)
    {
        return Err(S3Error::bad_request(
            "EntityTooSmall",
            format!(
                "Your proposed upload is smaller than the minimum allowed object size: part {} has {} bytes; every part but the last needs {}",
                small.number, small.size, s3.limits.min_part_bytes
            ),
        ));
    }
    let size: u64 = chosen.iter().map(|p| p.size).sum();
    if size > s3.limits.max_object_bytes {
        return Err(S3Error::bad_request(
            "EntityTooLarge",
            format!(
                "Your proposed upload exceeds the maximum allowed size of {} bytes",
                s3.limits.max_object_bytes
            ),
        ));
    }
    if let Some(declared) = headers
        .get("x-amz-mp-object-size")
        .and_then(|v| v.to_str().ok())
    {
        if declared.trim().parse::<u64>().ok() != Some(size) {
            return Err(S3Error::bad_request(
                "InvalidRequest",
                format!("x-amz-mp-object-size is {declared} but the parts hold {size} bytes"),
            ));
        }
    }
    // S3's multipart ETag: the MD5 of the parts' MD5s, then the number of parts.
    let mut md5s = md5::Md5::new();
    for p in &chosen {
        md5s.update(hex::decode(&p.etag).map_err(S3Error::internal)?);
    }
    let etag = format!("{}-{}", hex::encode(md5s.finalize()), chosen.len());
    // A full-object checksum is computed over the bytes as they are joined.
    let full_object = (upload.checksum_type.as_deref() == Some("FULL_OBJECT"))
        .then(|| {
            upload
                .checksum_algorithm
                .as_deref()
                .and_then(Algorithm::parse)
        })
        .flatten();
    let part_blobs: Vec<String> = chosen.iter().map(|p| p.blob.clone()).collect();
    let blobs = s3.blobs.clone();
    let joined = tokio::task::spawn_blocking(move || join_parts(&blobs, &part_blobs, full_object))
        .await
        .map_err(S3Error::internal)?;
    let (blob, full_checksum) = match joined {
        Ok(done) => done,
        // A part was replaced or the upload aborted while we read it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            upload_of(s3, t).await?;
            return Err(S3Error::bad_request(
                "InvalidPart",
                "One or more of the specified parts changed while the upload was being completed.",
            ));
        }
        Err(e) => return Err(S3Error::internal(e)),
    };
    let checksum = match (full_object, full_checksum) {
        (Some(algorithm), Some(value)) => Some((algorithm.name().to_owned(), value)),
        _ => composite_checksum(&upload, &chosen),
    };
    let object = ObjectMeta {
        bucket: upload.bucket.clone(),
        key: upload.key.clone(),
        size,
        etag: etag.clone(),
        content_type: upload.content_type.clone(),
        metadata: upload.metadata.clone(),
        checksum: checksum.clone(),
        modified_ms: s3.clock.now_ms(),
        blob: blob.clone(),
        parts: chosen.iter().map(|p| p.size).collect(),
    };
    let receipt = CompletedUpload {
        bucket: upload.bucket.clone(),
        key: upload.key.clone(),
        parts: receipt_parts,
        etag: etag.clone(),
        checksum,
    };
    // The object, its notifications and the end of the upload commit together, and only
    // if the parts are still the ones joined: a concurrent Abort, UploadPart or Complete
    // either happened first (and this one fails) or finds the upload gone.
    let pending = Arc::new(s3.notifier.prepare(
        &object.bucket,
        &object.key,
        "ObjectCreated:CompleteMultipartUpload",
        object.modified_ms,
        None,
    ));
    let (store, id, p, r) = (
        s3.store.clone(),
        upload.id.clone(),
        pending.clone(),
        receipt.clone(),
    );
    let parts: Vec<(u32, String)> = chosen.iter().map(|p| (p.number, p.blob.clone())).collect();
    let outcome = store
        .complete_upload(
            &id,
            &parts,
            &object,
            &condition,
            &r,
            Box::new(move |o| p.events(o)),
        )
        .await
        .map_err(S3Error::internal);
    match outcome {
        Ok(Ok(done)) => {
            s3.notifier.committed(&pending);
            let mut stale = done.part_blobs;
            stale.extend(done.replaced.map(|o| o.blob));
            remove_blobs(s3, stale);
        }
        Ok(Err(conflict)) => {
            remove_blobs(s3, vec![blob]);
            return Err(match conflict {
                CompleteConflict::NoSuchUpload => S3Error::no_such_upload(&upload.id),
                CompleteConflict::NoSuchBucket => S3Error::no_such_bucket(&upload.bucket),
                CompleteConflict::PartChanged(n) => invalid_part(n),
                CompleteConflict::PreconditionFailed { missing: true } if if_match => {
                    S3Error::no_such_key(&upload.key)
                }
                CompleteConflict::PreconditionFailed { .. } => {
                    super::conditions::precondition_failed()
                }
            });
        }
        Err(e) => {
            remove_blobs(s3, vec![blob]);
            return Err(e);
        }
    }
    completion_answer(&receipt)
}

/// A CompleteMultipartUpload for an upload that is gone: if it completed with this very
/// part list (a client retrying after a lost response), the answer it had; otherwise
/// NoSuchUpload.
async fn retried_completion(s3: &Arc<S3>, t: &Target, parts: &str) -> S3Result<Response> {
    let id = t.param("uploadId").unwrap_or("").to_owned();
    let (store, i) = (s3.store.clone(), id.clone());
    if let Some(receipt) = store
        .completed_upload(&i)
        .await
        .map_err(S3Error::internal)?
    {
        if receipt.bucket == t.bucket && receipt.key == t.key && receipt.parts == parts {
            return completion_answer(&receipt);
        }
    }
    exists(s3, &t.bucket).await?;
    Err(S3Error::no_such_upload(&id))
}

fn completion_answer(receipt: &CompletedUpload) -> S3Result<Response> {
    let doc = xml::document(
        "CompleteMultipartUploadResult",
        &xml::CompleteMultipartUploadResult {
            xmlns: NAMESPACE,
            location: format!("/{}/{}", receipt.bucket, super::url_encode(&receipt.key)),
            bucket: receipt.bucket.clone(),
            key: receipt.key.clone(),
            etag: quoted(&receipt.etag),
            checksums: xml::Checksums::of_object(&receipt.checksum),
        },
    )?;
    Ok(xml_response(StatusCode::OK, doc))
}

/// Whether a part named in a completion carries the checksum the part was stored with
/// (when it names one).
fn checksum_agrees(wanted: &xml::CompletedPart, part: &Part) -> bool {
    match (wanted.checksum(), &part.checksum) {
        (None, _) => true,
        (Some((algorithm, value)), Some((stored_alg, stored))) => {
            algorithm == stored_alg && value.trim() == stored
        }
        (Some(_), None) => false,
    }
}

/// Joins part blobs into one new blob; with `full_object`, also that checksum of the
/// whole (base64).
fn join_parts(
    blobs: &super::blobs::Blobs,
    parts: &[String],
    full_object: Option<Algorithm>,
) -> std::io::Result<(String, Option<String>)> {
    use std::io::Read as _;
    let mut writer = blobs.writer()?;
    let Some(algorithm) = full_object else {
        for b in parts {
            writer.append(blobs.read(b)?)?;
        }
        return Ok((writer.finish(blobs)?, None));
    };
    let mut hasher = algorithm.hasher();
    let mut buf = vec![0u8; 1 << 20];
    for b in parts {
        let mut file = blobs.read(b)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer.write(&buf[..n])?;
        }
    }
    Ok((writer.finish(blobs)?, Some(hasher.finish())))
}

/// S3's checksum of a multipart object: the checksum of the parts' checksums, then the
/// number of parts (only when every part carried one of the upload's algorithm).
fn composite_checksum(upload: &Upload, parts: &[Part]) -> Option<(String, String)> {
    use base64::Engine as _;
    let algorithm = super::checksum::Algorithm::parse(upload.checksum_algorithm.as_deref()?)?;
    let mut h = algorithm.hasher();
    for p in parts {
        let (a, v) = p.checksum.as_ref()?;
        if a != algorithm.name() {
            return None;
        }
        h.update(&base64::engine::general_purpose::STANDARD.decode(v).ok()?);
    }
    Some((
        algorithm.name().to_owned(),
        format!("{}-{}", h.finish(), parts.len()),
    ))
}

pub async fn abort(s3: &Arc<S3>, t: &Target) -> S3Result<Response> {
    let upload = upload_of(s3, t).await?;
    let (store, id) = (s3.store.clone(), upload.id.clone());
    match store.finish_upload(&id).await.map_err(S3Error::internal)? {
        Some(parts) => {
            remove_blobs(s3, parts.into_iter().map(|p| p.blob).collect());
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        None => Err(S3Error::no_such_upload(&upload.id)),
    }
}

pub async fn list_parts(s3: &Arc<S3>, t: &Target) -> S3Result<Response> {
    let upload = upload_of(s3, t).await?;
    let marker: u32 = t
        .param("part-number-marker")
        .map(|m| {
            m.parse()
                .map_err(|_| S3Error::invalid_argument("part-number-marker must be an integer"))
        })
        .transpose()?
        .unwrap_or(0);
    let max: usize = t
        .param("max-parts")
        .map(|m| {
            m.parse()
                .map_err(|_| S3Error::invalid_argument("max-parts must be an integer"))
        })
        .transpose()?
        .unwrap_or(1000)
        .min(1000);
    let (store, id) = (s3.store.clone(), upload.id.clone());
    let parts: Vec<Part> = store
        .parts(&id)
        .await
        .map_err(S3Error::internal)?
        .into_iter()
        .filter(|p| p.number > marker)
        .collect();
    let truncated = parts.len() > max;
    let parts: Vec<Part> = parts.into_iter().take(max).collect();
    let doc = xml::document(
        "ListPartsResult",
        &xml::ListPartsResult {
            xmlns: NAMESPACE,
            bucket: upload.bucket,
            key: upload.key,
            upload_id: upload.id,
            part_number_marker: marker,
            next_part_number_marker: parts.last().map_or(marker, |p| p.number),
            max_parts: max,
            is_truncated: truncated,
            checksum_algorithm: upload.checksum_algorithm,
            checksum_type: upload.checksum_type,
            parts: parts
                .into_iter()
                .map(|p| xml::PartEntry {
                    number: p.number,
                    last_modified: iso_time(p.modified_ms),
                    etag: quoted(&p.etag),
                    size: p.size,
                    checksums: xml::Checksums::of(&p.checksum),
                })
                .collect(),
        },
    )?;
    Ok(xml_response(StatusCode::OK, doc))
}

pub async fn list_uploads(s3: &Arc<S3>, t: &Target) -> S3Result<Response> {
    exists(s3, &t.bucket).await?;
    let prefix = t.param("prefix").unwrap_or("").to_owned();
    let max: usize = t
        .param("max-uploads")
        .map(|m| {
            m.parse()
                .map_err(|_| S3Error::invalid_argument("max-uploads must be an integer"))
        })
        .transpose()?
        .unwrap_or(1000)
        .min(1000);
    let key_marker = t.param("key-marker").unwrap_or("").to_owned();
    let id_marker = t
        .param("upload-id-marker")
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    let (store, bucket, p) = (s3.store.clone(), t.bucket.clone(), prefix.clone());
    let all = store
        .list_uploads(&bucket, &p)
        .await
        .map_err(S3Error::internal)?;
    // Uploads come by key, then start: resume after the marker's key (and, with an
    // upload-id marker, after that upload of the key).
    let start = if key_marker.is_empty() {
        0
    } else {
        match &id_marker {
            Some(id) => all
                .iter()
                .position(|u| u.key == key_marker && &u.id == id)
                .map(|i| i + 1)
                .unwrap_or_else(|| all.iter().take_while(|u| u.key <= key_marker).count()),
            None => all.iter().take_while(|u| u.key <= key_marker).count(),
        }
    };
    let rest = &all[start.min(all.len())..];
    let truncated = rest.len() > max;
    let page = &rest[..rest.len().min(max)];
    let last = page.last().filter(|_| truncated);
    let doc = xml::document(
        "ListMultipartUploadsResult",
        &xml::ListMultipartUploadsResult {
            xmlns: NAMESPACE,
            bucket: t.bucket.clone(),
            prefix,
            key_marker,
            upload_id_marker: id_marker.unwrap_or_default(),
            next_key_marker: last.map(|u| u.key.clone()),
            next_upload_id_marker: last.map(|u| u.id.clone()),
            max_uploads: max,
            is_truncated: truncated,
            uploads: page
                .iter()
                .map(|u| xml::UploadEntry {
                    key: u.key.clone(),
                    upload_id: u.id.clone(),
                    initiated: iso_time(u.created_ms),
                    storage_class: "STANDARD",
                })
                .collect(),
        },
    )?;
    Ok(xml_response(StatusCode::OK, doc))
}
