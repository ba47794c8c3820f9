//! The dead-letter queue: events that exhausted their attempts or expired, with their
//! last error; inspect, redrive (one or all) and purge.

use super::AppStateRef;
use crate::error::Failure;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cirrus_api::{Affected, ApiError, Page};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqQuery {
    function: Option<String>,
    limit: Option<usize>,
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn query(q: QueryResult<DlqQuery>) -> Result<DlqQuery, Failure> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())).into())
}

pub async fn list(
    State(state): State<AppStateRef>,
    q: QueryResult<DlqQuery>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let items = state
        .event_queue
        .dead(q.function.as_deref(), limit)
        .await
        .map_err(Failure::internal)?;
    Ok(Json(Page { items, next: None }).into_response())
}

pub async fn show(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let (mut event, data) = state
        .event_queue
        .dead_event(&id)
        .await
        .map_err(Failure::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no event {id:?} in the dead-letter queue")))?;
    event.data = String::from_utf8(data).ok();
    Ok(Json(event).into_response())
}

fn found(count: u64, id: &str) -> Result<Response, Failure> {
    if count == 0 {
        return Err(
            ApiError::not_found(format!("no event {id:?} in the dead-letter queue")).into(),
        );
    }
    Ok(Json(Affected { count }).into_response())
}

pub async fn redrive_one(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let now = state.invoker.clock.now_ms();
    let count = state
        .event_queue
        .redrive(Some(&id), None, now)
        .await
        .map_err(Failure::internal)?;
    state.wake.notify_one();
    found(count, &id)
}

pub async fn redrive_all(
    State(state): State<AppStateRef>,
    q: QueryResult<DlqQuery>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let now = state.invoker.clock.now_ms();
    let count = state
        .event_queue
        .redrive(None, q.function.as_deref(), now)
        .await
        .map_err(Failure::internal)?;
    state.wake.notify_one();
    Ok(Json(Affected { count }).into_response())
}

pub async fn purge_one(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let count = state
        .event_queue
        .purge(Some(&id), None)
        .await
        .map_err(Failure::internal)?;
    found(count, &id)
}

pub async fn purge_all(
    State(state): State<AppStateRef>,
    q: QueryResult<DlqQuery>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let count = state
        .event_queue
        .purge(None, q.function.as_deref())
        .await
        .map_err(Failure::internal)?;
    Ok(Json(Affected { count }).into_response())
}
