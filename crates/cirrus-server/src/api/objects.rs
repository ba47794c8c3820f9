//! Buckets and objects through the management API: `GET /v1/buckets`,
//! `PUT/DELETE /v1/buckets/{bucket}` (admin only), `GET/HEAD/PUT/DELETE
//! /v1/buckets/{bucket}/objects/{key}` and listing by prefix. This is how functions with
//! `bucket:` grants reach the object store (with `CIRRUS_TOKEN`); the S3 listener serves
//! the same buckets to SDKs.

use super::AppStateRef;
use crate::error::Failure;
use crate::function_token::Claims;
use crate::s3::error::S3Error;
use crate::s3::{objects, Target};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cirrus_api::{ApiError, ErrorCode};
use cirrus_api::{BucketInfo, ObjectInfo, Page};
use serde::Deserialize;

/// An S3 error in the JSON API's terms.
fn failure(e: S3Error) -> Failure {
    let code = match e.status.as_u16() {
        404 => ErrorCode::NotFound,
        // A failed precondition, as for KV writes.
        409 | 412 => ErrorCode::Conflict,
        416 => ErrorCode::RangeNotSatisfiable,
        413 => ErrorCode::PayloadTooLarge,
        403 => ErrorCode::Forbidden,
        s if s >= 500 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let message = match e.code {
        "EntityTooLarge" => e.message,
        code => format!("{code}: {}", e.message),
    };
    Failure(ApiError::new(code, message))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    State(state): State<AppStateRef>,
    Path(bucket): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<ObjectInfo>>, Failure> {
    crate::s3::buckets::exists(&state.s3, &bucket)
        .await
        .map_err(failure)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let store = state.s3.store.clone();
    let (b, prefix, after) = (bucket.clone(), q.prefix.clone(), q.after.clone());
    let mut found = store
        .list_objects(&b, &prefix, after.as_deref(), limit + 1)
        .await
        .map_err(S3Error::internal)
        .map_err(failure)?;
    found.retain(|o| o.key.starts_with(&q.prefix));
    let more = found.len() > limit;
    found.truncate(limit);
    let next = more.then(|| found.last().map(|o| o.key.clone())).flatten();
    Ok(Json(Page {
        items: found
            .into_iter()
            .map(|o| ObjectInfo {
                key: o.key,
                size: o.size,
                etag: o.etag,
                content_type: o.content_type,
                last_modified: crate::s3::iso_time(o.modified_ms),
            })
            .collect(),
        next,
    }))
}

pub async fn get(
    State(state): State<AppStateRef>,
    method: Method,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    objects::get(
        &state.s3,
        &Target::object(&bucket, &key),
        &headers,
        method == Method::HEAD,
    )
    .await
    .map_err(failure)
}

pub async fn put(
    State(state): State<AppStateRef>,
    Path((bucket, key)): Path<(String, String)>,
    claims: Option<axum::Extension<Claims>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    if key.len() > 1024 {
        return Err(Failure(ApiError::bad_request(
            "keys are at most 1024 bytes",
        )));
    }
    // Runs to its end even if the caller goes away: a stored blob is always recorded or
    // removed.
    let s3 = state.s3.clone();
    let object = tokio::spawn(async move {
        objects::store(
            &s3,
            &bucket,
            &key,
            &headers,
            None,
            body,
            claims.map(|c| c.lineage()),
        )
        .await
    })
    .await
    .map_err(Failure::internal)?
    .map_err(failure)?;
    Ok((
        StatusCode::CREATED,
        Json(ObjectInfo {
            key: object.key,
            size: object.size,
            etag: object.etag,
            content_type: object.content_type,
            last_modified: crate::s3::iso_time(object.modified_ms),
        }),
    )
        .into_response())
}

pub async fn delete(
    State(state): State<AppStateRef>,
    Path((bucket, key)): Path<(String, String)>,
    claims: Option<axum::Extension<Claims>>,
) -> Result<Response, Failure> {
    crate::s3::buckets::exists(&state.s3, &bucket)
        .await
        .map_err(failure)?;
    // Like a PUT, runs to its end: a committed delete always removes its blob.
    let (s3, b, k) = (state.s3.clone(), bucket.clone(), key.clone());
    let lineage = claims.map(|c| c.lineage());
    let removed = tokio::spawn(async move { objects::remove(&s3, &b, &k, lineage).await })
        .await
        .map_err(Failure::internal)?
        .map_err(failure)?;
    if removed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Failure(ApiError::new(
            ErrorCode::NotFound,
            format!("no object {key:?} in bucket {bucket:?}"),
        )))
    }
}

pub async fn list_buckets(
    State(state): State<AppStateRef>,
) -> Result<Json<Page<BucketInfo>>, Failure> {
    let store = state.s3.store.clone();
    let buckets = store
        .list_buckets()
        .await
        .map_err(S3Error::internal)
        .map_err(failure)?;
    Ok(Json(Page {
        items: buckets
            .into_iter()
            .map(|(name, created)| BucketInfo {
                name,
                created_at: crate::s3::iso_time(created),
            })
            .collect(),
        next: None,
    }))
}

pub async fn create_bucket(
    State(state): State<AppStateRef>,
    Path(bucket): Path<String>,
) -> Result<Response, Failure> {
    if !crate::s3::valid_bucket_name(&bucket) {
        return Err(Failure(ApiError::bad_request(format!(
            "invalid bucket name {bucket:?}: use 3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit"
        ))));
    }
    let (store, name, now) = (
        state.s3.store.clone(),
        bucket.clone(),
        state.s3.clock.now_ms(),
    );
    if !store
        .create_bucket(&name, now)
        .await
        .map_err(S3Error::internal)
        .map_err(failure)?
    {
        return Err(Failure(ApiError::new(
            ErrorCode::Conflict,
            format!("bucket {bucket:?} exists already"),
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(BucketInfo {
            name: bucket,
            created_at: crate::s3::iso_time(now),
        }),
    )
        .into_response())
}

pub async fn delete_bucket(
    State(state): State<AppStateRef>,
    Path(bucket): Path<String>,
) -> Result<Response, Failure> {
    let (store, name) = (state.s3.store.clone(), bucket.clone());
    match store
        .delete_bucket(&name)
        .await
        .map_err(S3Error::internal)
        .map_err(failure)?
    {
        crate::store::BucketDelete::Deleted(blobs) => {
            crate::s3::remove_blobs(&state.s3, blobs);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        crate::store::BucketDelete::Missing => Err(Failure(ApiError::not_found(format!(
            "no bucket {bucket:?}"
        )))),
        crate::store::BucketDelete::NotEmpty => Err(Failure(ApiError::new(
            ErrorCode::Conflict,
            format!("bucket {bucket:?} is not empty"),
        ))),
    }
}
