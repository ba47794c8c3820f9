//! KV tables: the built-in database. `PUT/GET/DELETE /v1/kv/{table}/{key}`, listing by
//! prefix with paging, conditional writes by version (`If-Match: "N"`, or
//! `If-None-Match: *` to create only); change events come from [`crate::kv`].

use super::{header, AppStateRef};
use crate::error::{body_error, Failure};
use crate::store::{KvCondition, KvWrite};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header as h, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cirrus_api::spec::validate_name;
use cirrus_api::{ApiError, ErrorCode, Page};
use serde::Deserialize;

/// Values are documents, not objects: at most 1 MiB.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
const MAX_KEY_BYTES: usize = 1024;

fn check(table: &str, key: Option<&str>) -> Result<(), ApiError> {
    validate_name(table)
        .map_err(|e| ApiError::bad_request(e.message.replace("name", "table name")))?;
    if let Some(key) = key {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(ApiError::bad_request(format!(
                "keys are 1-{MAX_KEY_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// `If-Match: "3"` (or `3`), `If-None-Match: *`.
pub(crate) fn condition(headers: &HeaderMap) -> Result<KvCondition, ApiError> {
    if let Some(tag) = header(headers, "if-match") {
        let version = tag.trim().trim_matches('"');
        return version.parse().map(KvCondition::Version).map_err(|_| {
            ApiError::bad_request(format!("If-Match must be a version number, got {tag:?}"))
        });
    }
    match header(headers, "if-none-match").as_deref() {
        Some("*") => Ok(KvCondition::Absent),
        Some(other) => Err(ApiError::bad_request(format!(
            "If-None-Match supports only *, got {other:?}"
        ))),
        None => Ok(KvCondition::Any),
    }
}

async fn write(
    state: &AppStateRef,
    table: String,
    key: String,
    value: Option<(Vec<u8>, Option<String>)>,
    cond: KvCondition,
    lineage: Option<crate::lineage::Lineage>,
) -> Result<Response, Failure> {
    let written = state
        .kv_writer
        .write(&table, &key, value, cond, lineage)
        .await
        .map_err(Failure::internal)?;
    match written {
        KvWrite::Done(entry) => Ok(Json(entry).into_response()),
        KvWrite::Conflict(current) => Err(ApiError::new(
            ErrorCode::Conflict,
            match current {
                Some(v) => format!("{table}/{key} is at version {v}: the condition did not hold, nothing was written"),
                None => format!("{table}/{key} does not exist: the condition did not hold, nothing was written"),
            },
        )
        .into()),
        KvWrite::Missing => Err(ApiError::not_found(format!("{table}/{key} does not exist")).into()),
        KvWrite::TooLarge(limit) => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the value exceeds the {limit} bytes a row holds in cluster mode (the NATS server's max_payload, less the row's head); nothing was written"),
        )
        .into()),
    }
}

/// Writes by a function (with its token) carry its lineage, so a function feeding a
/// table that triggers it stops at the pipeline depth limit.
pub async fn put(
    State(state): State<AppStateRef>,
    Path((table, key)): Path<(String, String)>,
    claims: Option<axum::Extension<crate::function_token::Claims>>,
    request: Request,
) -> Result<Response, Failure> {
    check(&table, Some(&key))?;
    let (parts, body) = request.into_parts();
    let cond = condition(&parts.headers)?;
    let value = axum::body::to_bytes(body, MAX_VALUE_BYTES)
        .await
        .map_err(|e| body_error(e, MAX_VALUE_BYTES, "value"))?;
    let content_type = header(&parts.headers, "content-type");
    if content_type.as_deref().is_some_and(|c| c.contains("json"))
        && serde_json::from_slice::<serde_json::Value>(&value).is_err()
    {
        return Err(ApiError::bad_request("the value is declared JSON but does not parse").into());
    }
    write(
        &state,
        table,
        key,
        Some((value.to_vec(), content_type)),
        cond,
        claims.map(|c| c.lineage()),
    )
    .await
}

pub async fn delete(
    State(state): State<AppStateRef>,
    Path((table, key)): Path<(String, String)>,
    claims: Option<axum::Extension<crate::function_token::Claims>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    check(&table, Some(&key))?;
    let cond = condition(&headers)?;
    write(&state, table, key, None, cond, claims.map(|c| c.lineage())).await
}

pub async fn get(
    State(state): State<AppStateRef>,
    Path((table, key)): Path<(String, String)>,
) -> Result<Response, Failure> {
    check(&table, Some(&key))?;
    let (entry, value) = state
        .kv
        .kv_get(&table, &key)
        .await
        .map_err(Failure::internal)?
        .ok_or_else(|| ApiError::not_found(format!("{table}/{key} does not exist")))?;
    let mut response = (StatusCode::OK, Body::from(value)).into_response();
    let headers = response.headers_mut();
    if let Some(ct) = entry
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        headers.insert(h::CONTENT_TYPE, ct);
    }
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", entry.version)) {
        headers.insert(h::ETAG, tag);
    }
    headers.insert("cirrus-kv-version", HeaderValue::from(entry.version));
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

pub async fn list(
    State(state): State<AppStateRef>,
    Path(table): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    check(&table, None)?;
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000").into());
    }
    let items = state
        .kv
        .kv_list(
            &table,
            q.prefix.as_deref().unwrap_or(""),
            q.after.as_deref(),
            limit,
        )
        .await
        .map_err(Failure::internal)?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|e| e.key.clone()))
        .flatten();
    Ok(Json(Page { items, next }).into_response())
}
