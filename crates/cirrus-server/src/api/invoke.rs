//! Invocation entry points: HTTP triggers (`/fn/{name}[@qualifier]/{path}`) and the
//! invoke API (`POST /v1/functions/{name}/invoke`).

use super::AppStateRef;
use crate::auth::is_authorized;
use crate::error::error_response;
use crate::invoker::Call;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, Uri};
use axum::response::Response;
use cirrus_api::{ApiError, Qualifier, Trigger};
use serde::Deserialize;

pub async fn http_trigger_root(
    State(state): State<AppStateRef>,
    Path(target): Path<String>,
    request: Request,
) -> Response {
    trigger(state, &target, "", request).await
}

pub async fn http_trigger(
    State(state): State<AppStateRef>,
    Path((target, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    trigger(state, &target, &path, request).await
}

async fn trigger(state: AppStateRef, target: &str, path: &str, request: Request) -> Response {
    let (function, qualifier) = match Qualifier::split(target) {
        Ok(split) => split,
        Err(e) => {
            return error_response(ApiError::bad_request(format!(
                "invalid function target {target:?}: {e}"
            )))
        }
    };
    let (mut parts, body) = request.into_parts();
    // The function sees the path below its own prefix, query included.
    let uri = match parts.uri.query() {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    parts.uri = match uri.parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => return error_response(ApiError::bad_request(format!("invalid path: {e}"))),
    };
    let authorized = is_authorized(&parts.headers, &state.token);
    state
        .invoker
        .invoke(Call {
            function: function.to_owned(),
            qualifier,
            trigger: Trigger::Http,
            request: Request::from_parts(parts, body),
            authorized,
        })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeQuery {
    #[serde(default)]
    qualifier: Option<String>,
}

/// The body is the event; the answer is the function's own response.
pub async fn invoke_api(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
    query: Result<Query<InvokeQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    let qualifier = match query {
        Ok(Query(q)) => match Qualifier::parse(q.qualifier.as_deref().unwrap_or("")) {
            Ok(q) => q,
            Err(e) => {
                return error_response(ApiError::bad_request(format!("invalid qualifier: {e}")))
            }
        },
        Err(e) => {
            return error_response(ApiError::bad_request(format!(
                "invalid query: {}",
                e.body_text()
            )))
        }
    };
    let (parts, body) = request.into_parts();
    let mut event = Request::new(body);
    *event.method_mut() = Method::POST;
    *event.uri_mut() = Uri::from_static("/");
    for name in [axum::http::header::CONTENT_TYPE, axum::http::header::HOST] {
        if let Some(value) = parts.headers.get(&name) {
            event.headers_mut().insert(name, value.clone());
        }
    }
    state
        .invoker
        .invoke(Call {
            function: name,
            qualifier,
            trigger: Trigger::Invoke,
            request: event.map(Body::new),
            authorized: true,
        })
        .await
}
