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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Failure::internal)?
        .map_err(Failure::internal)
}

pub async fn list(
    State(state): State<AppStateRef>,
    q: QueryResult<DlqQuery>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let queue = state.event_queue.clone();
    let items = blocking(move || queue.dead(q.function.as_deref(), limit)).await?;
    Ok(Json(Page { items, next: None }).into_response())
}

pub async fn show(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let queue = state.event_queue.clone();
    let key = id.clone();
    let (mut event, data) = blocking(move || queue.dead_event(&key))
        .await?
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
    let (queue, now, key) = (
        state.event_queue.clone(),
        state.invoker.clock.now_ms(),
        id.clone(),
    );
    let count = blocking(move || queue.redrive(Some(&key), None, now)).await?;
    state.wake.notify_one();
    found(count, &id)
}

pub async fn redrive_all(
    State(state): State<AppStateRef>,
    q: QueryResult<DlqQuery>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let (queue, now) = (state.event_queue.clone(), state.invoker.clock.now_ms());
    let count = blocking(move || queue.redrive(None, q.function.as_deref(), now)).await?;
    state.wake.notify_one();
    Ok(Json(Affected { count }).into_response())
}

pub async fn purge_one(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let (queue, key) = (state.event_queue.clone(), id.clone());
    let count = blocking(move || queue.purge(Some(&key), None)).await?;
    found(count, &id)
}

pub async fn purge_all(
    State(state): State<AppStateRef>,
    q: QueryResult<DlqQuery>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let queue = state.event_queue.clone();
    let count = blocking(move || queue.purge(None, q.function.as_deref())).await?;
    Ok(Json(Affected { count }).into_response())
}
