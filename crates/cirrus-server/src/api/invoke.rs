//! Invocation entry points: HTTP triggers (`/fn/{name}[@qualifier]/{path}`) and the
//! invoke API (`POST /v1/functions/{name}/invoke`).

use super::AppStateRef;
use crate::error::{body_error, error_response};
use crate::invoker::Call;
use crate::lineage::Lineage;
use crate::store::{Enqueued, NewEvent};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::http::{Method, Uri};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use cirrus_api::{Accepted, ApiError, Qualifier, Trigger};
use serde::Deserialize;

/// `ANY /fn/{target}`, `ANY /fn/{target}/` and `ANY /fn/{target}/{*path}`. The path is
/// taken from the raw URI, not axum's decoded parameters, so the function sees exactly
/// what was sent (`%2F`, `%3F` and non-UTF-8 escapes included).
pub async fn http_trigger(State(state): State<AppStateRef>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let raw = parts.uri.path().strip_prefix("/fn/").unwrap_or_default();
    let (target, rest) = raw.split_once('/').unwrap_or((raw, ""));
    let target = match percent_decode(target) {
        Some(target) => target,
        None => {
            return error_response(ApiError::bad_request(format!(
                "invalid function target {target:?}"
            )))
        }
    };
    let (function, qualifier) = match Qualifier::split(&target) {
        Ok(split) => split,
        Err(e) => {
            return error_response(ApiError::bad_request(format!(
                "invalid function target {target:?}: {e}"
            )))
        }
    };
    // The function sees the path below its own prefix, query included.
    let uri = match parts.uri.query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    parts.uri = match uri.parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => return error_response(ApiError::bad_request(format!("invalid path: {e}"))),
    };
    invoke_http(&state, function.to_owned(), qualifier, parts, body).await
}

/// Runs an HTTP-triggered invocation (`/fn/…` or a custom route). The admin token, if
/// the caller sent it, opens private functions; it is never handed to guest code.
pub(crate) async fn invoke_http(
    state: &AppStateRef,
    function: String,
    qualifier: Qualifier,
    mut parts: axum::http::request::Parts,
    body: axum::body::Body,
) -> Response {
    // CORS comes from the version the request names (an alias's, when it names one).
    let cors = state
        .registry
        .resolve(&function, &qualifier)
        .ok()
        .and_then(|v| v.config.cors.clone());
    if let Some(cors) = &cors {
        if crate::cors::is_preflight(&parts.method, &parts.headers) {
            return crate::cors::preflight(cors, &parts.headers);
        }
    }
    let origin = parts.headers.get(axum::http::header::ORIGIN).cloned();
    let authorized = may_invoke_private(state, &mut parts.headers, &function);
    let caller = take_lineage(state, &mut parts.headers);
    let call = Call::new(
        function,
        qualifier,
        Trigger::Http,
        Request::from_parts(parts, body),
        authorized,
    )
    .streamed();
    let mut response = state.invoker.invoke(with_caller(call, caller)).await;
    if let Some(cors) = &cors {
        crate::cors::decorate(cors, origin.as_ref(), &mut response);
    }
    response
}

/// Whether the caller's credentials (the admin token, or an API key whose scope covers
/// invoking `function`) open a private function. Credentials the platform recognises —
/// valid or not — are removed, so no guest ever sees one.
pub(crate) fn may_invoke_private(
    state: &AppStateRef,
    headers: &mut axum::http::HeaderMap,
    function: &str,
) -> bool {
    match state
        .keys
        .authenticate(headers, state.invoker.clock.now_ms())
    {
        Ok(Some(principal)) => {
            headers.remove(axum::http::header::AUTHORIZATION);
            principal
                .scope
                .allows(cirrus_api::access::Need::Invoke(function))
        }
        Err(_) => {
            headers.remove(axum::http::header::AUTHORIZATION);
            false
        }
        Ok(None) => false,
    }
}

/// The calling invocation, when a function calls the platform: the signed
/// `cirrus-lineage` header its runtime added. The header is always removed, so no guest
/// ever sees one to pass on; a forged or expired one counts as absent (the call is then
/// an outside call, which is what its sender could have made anyway).
pub(crate) fn take_lineage(
    state: &AppStateRef,
    headers: &mut axum::http::HeaderMap,
) -> Option<Lineage> {
    let value = headers.remove(crate::lineage::HEADER)?;
    let lineage = value.to_str().ok().and_then(|v| {
        state
            .invoker
            .platform
            .lineage
            .verify(v, state.invoker.clock.now_ms())
    });
    if lineage.is_none() {
        tracing::debug!(
            "ignored a {} header that is not genuine",
            crate::lineage::HEADER
        );
    }
    lineage
}

fn with_caller(call: Call, caller: Option<Lineage>) -> Call {
    match caller {
        Some(caller) => call.from_caller(caller),
        None => call,
    }
}

/// Decodes `%XX` escapes; `None` for malformed escapes or non-UTF-8 results.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits exactly: `from_str_radix` alone would take `%+1` as 0x01.
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
    match request.headers().get("x-cirrus-invocation-type").map(|v| v.to_str().unwrap_or("")) {
        None | Some("RequestResponse") => {}
        Some("Event") => return accept_event(&state, name, qualifier, request).await.unwrap_or_else(error_response),
        Some(other) => {
            return error_response(ApiError::bad_request(format!(
                "X-Cirrus-Invocation-Type {other:?}: use RequestResponse (wait for the result) or Event (asynchronous)"
            )))
        }
    }
    let (mut parts, body) = request.into_parts();
    let caller = take_lineage(&state, &mut parts.headers);
    let mut event = Request::new(body);
    *event.method_mut() = Method::POST;
    *event.uri_mut() = Uri::from_static("/");
    for name in [axum::http::header::CONTENT_TYPE, axum::http::header::HOST] {
        if let Some(value) = parts.headers.get(&name) {
            event.headers_mut().insert(name, value.clone());
        }
    }
    let call = Call::new(name, qualifier, Trigger::Invoke, event.map(Body::new), true);
    state.invoker.invoke(with_caller(call, caller)).await
}

/// Idempotency keys: printable ASCII, at most this long.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// `X-Cirrus-Idempotency-Key`, checked: a key that is not printable ASCII (non-UTF-8
/// bytes included) is refused, never ignored, since ignoring it would deliver twice.
pub(crate) fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("x-cirrus-idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_IDEMPOTENCY_KEY
        || !bytes.iter().all(u8::is_ascii_graphic)
    {
        return Err(ApiError::bad_request(format!(
            "X-Cirrus-Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// `X-Cirrus-Invocation-Type: Event`: the event is committed to the durable queue, then
/// acknowledged with 202 and the request id every attempt will carry.
async fn accept_event(
    state: &AppStateRef,
    name: String,
    qualifier: Qualifier,
    request: Request,
) -> Result<Response, ApiError> {
    state.registry.resolve(&name, &qualifier)?;
    let (mut parts, body) = request.into_parts();
    let data = axum::body::to_bytes(body, state.max_event_bytes)
        .await
        .map_err(|e| body_error(e, state.max_event_bytes, "event (asynchronous limit)"))?;
    let accepted = enqueue_event(state, name, qualifier, &mut parts.headers, data).await?;
    let mut response = (StatusCode::ACCEPTED, Json(&accepted)).into_response();
    if let Ok(value) = HeaderValue::from_str(&accepted.request_id) {
        response.headers_mut().insert("cirrus-request-id", value);
    }
    Ok(response)
}

/// Commits an event for `name` to the durable queue; the headers give its type, trace,
/// idempotency key and lineage.
pub(crate) async fn enqueue_event(
    state: &AppStateRef,
    name: String,
    qualifier: Qualifier,
    headers: &mut axum::http::HeaderMap,
    data: bytes::Bytes,
) -> Result<Accepted, ApiError> {
    let caller = take_lineage(state, headers);
    let idempotency_key = idempotency_key(headers)?;
    let incoming = crate::cloudevents::incoming(headers, data)?;
    let header = |name: &str| super::header(headers, name);
    let mut event = NewEvent::fired(
        name,
        cirrus_api::Trigger::Async,
        incoming.event_type,
        incoming.source,
        state.invoker.clock.now_ms(),
    )
    .with_data(incoming.content_type, incoming.data)
    .caused_by(caller.as_ref())
    .deduplicated_by(idempotency_key.or(incoming.dedup_key));
    event.qualifier = qualifier.to_string();
    event.traceparent = crate::trace::valid_traceparent(header("traceparent").as_deref());
    let id = event.id.clone();
    Ok(match state.events.enqueue(event).await? {
        Enqueued::New => Accepted {
            request_id: id,
            duplicate: false,
        },
        Enqueued::Duplicate(earlier) => Accepted {
            request_id: earlier,
            duplicate: true,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_escapes_and_refuses_broken_ones() {
        assert_eq!(
            percent_decode("hello%40prod").as_deref(),
            Some("hello@prod")
        );
        assert_eq!(percent_decode("f%24LATEST").as_deref(), Some("f$LATEST"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%4"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        // Found by fuzzing (api_params): a sign is not a hex digit.
        assert_eq!(percent_decode("a%+1"), None);
        assert_eq!(percent_decode("a%-1"), None);
    }
}
