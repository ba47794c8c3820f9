//! `GET /v1/usage`: requests, errors, cold starts, GB-seconds, CPU and cost over a period.

use super::AppStateRef;
use crate::billing;
use crate::clock::rfc3339;
use crate::error::Failure;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cirrus_api::usage::GroupBy;
use cirrus_api::ApiError;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
}

/// Reads `2026-11-01`, `2026-11-01T10:00:00Z` or with fractions; answers the canonical
/// form records are stored in, so string order is time order.
pub(crate) fn instant(param: &str, text: &str) -> Result<String, Failure> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    let time = humantime::parse_rfc3339_weak(&full).map_err(|e| {
        ApiError::bad_request(format!(
            "{param}: {text:?} is not a time ({e}); use RFC 3339 like 2026-11-01T10:00:00Z or a date like 2026-11-01"
        ))
    })?;
    Ok(humantime::format_rfc3339_millis(time).to_string())
}

pub async fn usage(
    State(state): State<AppStateRef>,
    q: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let group_by: GroupBy = q
        .group_by
        .as_deref()
        .unwrap_or("function")
        .parse()
        .map_err(|e: String| ApiError::bad_request(format!("group_by: {e}")))?;
    let now_ms = state.invoker.clock.now_ms();
    let now = rfc3339(now_ms);
    let to = match &q.to {
        Some(t) => instant("to", t)?,
        // `to` is exclusive; by default include what started this very millisecond.
        None => rfc3339(now_ms + 1),
    };
    let from = match &q.from {
        Some(f) => instant("from", f)?,
        // The current month so far.
        None => format!("{}-01T00:00:00.000Z", now.get(..7).unwrap_or("1970-01")),
    };
    if from >= to {
        return Err(
            ApiError::bad_request(format!("from ({from}) must be before to ({to})")).into(),
        );
    }
    state.records.flush().await;
    let store = state.record_store.clone();
    let (f, t) = (from.clone(), to.clone());
    let free_tier = state.prices.free_tier.is_some();
    let (hourly, earlier) = tokio::task::spawn_blocking(move || {
        let hourly = store.hourly_usage(&f, &t)?;
        // The free tier is per calendar month: usage earlier in `from`'s month counts.
        let month_start = format!("{}-01T00:00:00.000Z", f.get(..7).unwrap_or("1970-01"));
        let earlier = if free_tier && month_start < f {
            store.hourly_usage(&month_start, &f)?
        } else {
            Vec::new()
        };
        anyhow::Ok((hourly, earlier))
    })
    .await
    .map_err(Failure::internal)?
    .map_err(Failure::internal)?;
    Ok(Json(billing::report(
        &hourly,
        &earlier,
        group_by,
        &state.prices,
        from,
        to,
    ))
    .into_response())
}
