//! Invocation records and logs, including `?follow=true` live streaming (NDJSON).

use super::AppStateRef;
use crate::error::Failure;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use cirrus_api::{ApiError, LogLine, Page};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationsQuery {
    limit: Option<usize>,
    before: Option<String>,
}

fn page_size(limit: Option<usize>) -> Result<usize, Failure> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        0 => Err(ApiError::bad_request("limit must be at least 1").into()),
        n if n > MAX_PAGE => {
            Err(ApiError::bad_request(format!("limit must be at most {MAX_PAGE}")).into())
        }
        n => Ok(n),
    }
}

fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, Failure> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())).into())
}

/// Newest first; records of deleted functions stay readable.
pub async fn invocations(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
    q: Result<Query<InvocationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let limit = page_size(q.limit)?;
    if let Some(before) = &q.before {
        if before.parse::<i64>().is_err() {
            return Err(ApiError::bad_request(
                "invalid `before` cursor: pass the `next` value of the previous page",
            )
            .into());
        }
    }
    // Read-your-writes: whatever was invoked before this request is listed.
    state.records.flush().await;
    let store = state.record_store.clone();
    let page =
        tokio::task::spawn_blocking(move || store.invocations(&name, q.before.as_deref(), limit))
            .await
            .map_err(Failure::internal)?
            .map_err(Failure::internal)?;
    Ok(Json(page).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
    limit: Option<usize>,
    request_id: Option<String>,
}

pub async fn logs(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let limit = page_size(q.limit.or(Some(100)))?;
    // Subscribe before reading history so no line falls between the two.
    let live = q.follow.then(|| state.records.follow());
    state.records.flush().await;
    let store = state.record_store.clone();
    let (function, request_id) = (name.clone(), q.request_id.clone());
    let history =
        tokio::task::spawn_blocking(move || store.logs(&function, request_id.as_deref(), limit))
            .await
            .map_err(Failure::internal)?
            .map_err(Failure::internal)?;
    let Some(live) = live else {
        return Ok(Json(Page {
            items: history,
            next: None,
        })
        .into_response());
    };

    // Lines of one invocation arrive together, so a request id already in the history
    // identifies live lines that were also read from the store.
    let seen: HashSet<String> = history.iter().map(|l| l.request_id.clone()).collect();
    let filter = LiveFilter {
        function: name,
        request_id: q.request_id,
        seen,
    };
    let history = futures_util::stream::iter(
        history
            .into_iter()
            .map(|l| Ok::<_, std::io::Error>(ndjson(&l))),
    );
    let live = futures_util::stream::unfold(
        (live, state.shutdown.clone(), filter),
        |(mut rx, mut shutdown, filter)| async move {
            loop {
                if *shutdown.borrow() {
                    return None;
                }
                let line = tokio::select! {
                    line = rx.recv() => line,
                    _ = shutdown.changed() => return None,
                };
                match line {
                    Ok(line) if filter.wants(&line) => {
                        return Some((Ok(ndjson(&line)), (rx, shutdown, filter)))
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let body = Body::from_stream(futures_util::StreamExt::chain(history, live));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

struct LiveFilter {
    function: String,
    request_id: Option<String>,
    seen: HashSet<String>,
}

impl LiveFilter {
    fn wants(&self, line: &Arc<LogLine>) -> bool {
        line.function == self.function
            && self
                .request_id
                .as_ref()
                .is_none_or(|r| *r == line.request_id)
            && !self.seen.contains(&line.request_id)
    }
}

fn ndjson(line: &LogLine) -> Bytes {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// `GET /v1/trace/{request_id}`: every invocation of the request's trace: the request,
/// its retries, and the events its results led to through destinations, oldest first.
pub async fn trace(
    State(state): State<AppStateRef>,
    Path(request_id): Path<String>,
) -> Result<Response, Failure> {
    state.records.flush().await;
    let store = state.record_store.clone();
    let id = request_id.clone();
    let found = tokio::task::spawn_blocking(move || {
        let Some(trace_id) = store.trace_of(&id)? else {
            return anyhow::Ok(None);
        };
        let invocations = store.trace(&trace_id)?;
        anyhow::Ok(Some((trace_id, invocations)))
    })
    .await
    .map_err(Failure::internal)?
    .map_err(Failure::internal)?;
    let (trace_id, invocations) = found.ok_or_else(|| {
        ApiError::not_found(format!("no invocation with request id {request_id:?}"))
    })?;
    Ok(
        Json(serde_json::json!({ "trace_id": trace_id, "invocations": invocations }))
            .into_response(),
    )
}
