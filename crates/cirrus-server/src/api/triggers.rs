//! Triggers (HTTP routes and topic subscriptions), topic publishing, and serving custom
//! routes.

use super::{parse_json, AppStateRef};
use crate::error::{body_error, error_response, Failure};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use cirrus_api::trigger::validate_topic;
use cirrus_api::{ApiError, Qualifier, TriggerInfo, TriggerSpec};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggersQuery {
    function: Option<String>,
}

pub async fn list(
    State(state): State<AppStateRef>,
    q: Result<Query<TriggersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let triggers = state.registry.triggers(q.function.as_deref());
    Ok(Json(state.sources.annotate(triggers)).into_response())
}

pub async fn add(
    State(state): State<AppStateRef>,
    Path(function): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let spec: TriggerSpec = parse_json(
        &body,
        "trigger (expected {\"route\": \"GET /path\"} or {\"topic\": \"name\"})",
    )?;
    let trigger: TriggerInfo = state.registry.add_trigger(&function, spec).await?;
    Ok((StatusCode::CREATED, Json(trigger)).into_response())
}

pub async fn remove(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    Ok(Json(state.registry.remove_trigger(&id).await?).into_response())
}

/// The answer to a publish: one durable event per subscribed function.
#[derive(Serialize)]
struct Published {
    topic: String,
    request_ids: Vec<String>,
}

/// `POST /v1/topics/{topic}`: every subscribed function receives the body as an
/// asynchronous CloudEvent (`ce-type: dev.cirrus.topic`, `ce-source: /topics/{topic}`).
pub async fn publish(
    State(state): State<AppStateRef>,
    Path(topic): Path<String>,
    request: Request,
) -> Result<Response, Failure> {
    validate_topic(&topic).map_err(ApiError::bad_request)?;
    let subscribers = state.registry.subscribers(&topic);
    if subscribers.is_empty() {
        return Err(ApiError::not_found(format!(
            "no function subscribes to topic {topic:?}: add one with `cirrus trigger add FUNCTION --topic {topic}`"
        ))
        .into());
    }
    let (mut parts, body) = request.into_parts();
    // A function publishing (with the admin token) passes its lineage on.
    let caller = super::invoke::take_lineage(&state, &mut parts.headers);
    let data = axum::body::to_bytes(body, state.max_event_bytes)
        .await
        .map_err(|e| body_error(e, state.max_event_bytes, "message (asynchronous limit)"))?;
    let incoming = crate::cloudevents::incoming(&parts.headers, data)?;
    let message = crate::sources::topic::Message {
        topic: &topic,
        traceparent: crate::trace::valid_traceparent(
            super::header(&parts.headers, "traceparent").as_deref(),
        ),
        idempotency_key: super::invoke::idempotency_key(&parts.headers)?
            .or(incoming.dedup_key.clone()),
        incoming,
        caller,
    };
    let now = state.invoker.clock.now_ms();
    let request_ids =
        crate::sources::topic::publish(&state.events, subscribers, message, now).await?;
    Ok((StatusCode::ACCEPTED, Json(Published { topic, request_ids })).into_response())
}

/// Requests no built-in route matched: custom HTTP routes, else 404.
pub async fn custom_route(State(state): State<AppStateRef>, request: Request) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let reserved = cirrus_api::trigger::RESERVED_PREFIXES
        .iter()
        .any(|p| path == *p || (p.ends_with('/') && path.starts_with(p)));
    // Without credentials to invoke it, a route to a private function looks like no route
    // at all (the function's name stays unknown too).
    let principal = state
        .keys
        .authenticate(request.headers(), state.invoker.clock.now_ms())
        .ok()
        .flatten();
    let visible = |function: &String| {
        principal
            .as_ref()
            .is_some_and(|p| p.scope.allows(cirrus_api::access::Need::Invoke(function)))
            || state
                .registry
                .resolve(function, &Qualifier::Latest)
                .is_ok_and(|v| v.config.public)
    };
    let Some(function) = (!reserved)
        .then(|| state.registry.route(&method, &path))
        .flatten()
        .filter(visible)
    else {
        return error_response(ApiError::not_found(format!("no route for {method} {path}")));
    };
    let (parts, body) = request.into_parts();
    // The function sees the whole path: it was routed by it.
    super::invoke::invoke_http(&state, function, Qualifier::Latest, parts, body).await
}
