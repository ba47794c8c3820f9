//! Lambda's Invoke: `RequestResponse` through the invoker, `Event` through the durable
//! queue, `DryRun` as a check. A function that fails answers 200 with
//! `X-Amz-Function-Error` and Lambda's error document, as Lambda clients expect.

use super::shapes::Target;
use super::{Ctx, LambdaError, LambdaResult};
use crate::invoker::{Call, Invoked};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use cirrus_api::{ApiError, ErrorCode, Qualifier, Trigger};
use std::time::Duration;

/// `X-Amz-Log-Result` carries the end of the log, as Lambda's does.
const LOG_TAIL_BYTES: usize = 4096;
/// Lambda's limit on the client context (base64).
const MAX_CLIENT_CONTEXT: usize = 3583;

enum Kind {
    RequestResponse,
    Event,
    DryRun,
}

pub async fn invoke(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("Invoke", &["Qualifier"])?;
    let target = Target::from_request(ctx, name)?;
    let kind = match ctx.header("x-amz-invocation-type") {
        None | Some("RequestResponse") => Kind::RequestResponse,
        Some("Event") => Kind::Event,
        Some("DryRun") => Kind::DryRun,
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Invocation-Type {other:?}: use RequestResponse, Event or DryRun"
            )))
        }
    };
    let tail = match ctx.header("x-amz-log-type") {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Log-Type {other:?}: use None or Tail"
            )))
        }
    };
    let client_context = checked_payload(ctx, "Invoke")?;
    let state = &ctx.state;
    let qualifier = target.qualifier();
    match kind {
        Kind::DryRun => {
            state
                .registry
                .resolve(&target.name, &qualifier)
                .map_err(|_| not_found(ctx, &target))?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Kind::Event => {
            state
                .registry
                .resolve(&target.name, &qualifier)
                .map_err(|_| not_found(ctx, &target))?;
            if ctx.body.len() > state.max_event_bytes {
                return Err(LambdaError::too_large(format!(
                    "the event is {} bytes; asynchronous events may be at most {} bytes",
                    ctx.body.len(),
                    state.max_event_bytes
                )));
            }
            let mut headers = HeaderMap::new();
            headers.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            for name in ["traceparent", crate::lineage::HEADER] {
                if let Some(value) = ctx.headers.get(name) {
                    headers.insert(name, value.clone());
                }
            }
            let accepted = crate::api::invoke::enqueue_event(
                state,
                target.name.clone(),
                qualifier,
                &mut headers,
                ctx.body.clone(),
            )
            .await?;
            let mut response = StatusCode::ACCEPTED.into_response();
            if let Ok(value) = HeaderValue::from_str(&accepted.request_id) {
                response
                    .headers_mut()
                    .insert("cirrus-request-id", value.clone());
                response.headers_mut().insert("x-amzn-requestid", value);
            }
            Ok(response)
        }
        Kind::RequestResponse => {
            let event = event_request(ctx, client_context);
            let call = Call {
                keep_logs: tail,
                ..Call::new(target.name.clone(), qualifier, Trigger::Invoke, event, true)
            };
            // A function calling the platform: its lineage bounds the depth and the
            // calls in flight, and stops this call if the caller goes away.
            let mut headers = ctx.headers.clone();
            let call = match crate::api::invoke::take_lineage(state, &mut headers) {
                Some(caller) => call.from_caller(caller),
                None => call,
            };
            let invoked = state.invoker.invoke_detailed(call).await?;
            answer(ctx, &target, invoked, tail)
        }
    }
}

/// InvokeWithResponseStream: the function's response as event-stream `PayloadChunk`s as
/// it is written, then `InvokeComplete` (with the error, if the function failed). A
/// component that finishes quickly, or a native handler that answers buffered, comes
/// as one chunk.
pub async fn invoke_with_response_stream(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("InvokeWithResponseStream", &["Qualifier"])?;
    let target = Target::from_request(ctx, name)?;
    match ctx.header("x-amz-invocation-type") {
        None | Some("RequestResponse") => {}
        Some("DryRun") => {
            ctx.state
                .registry
                .resolve(&target.name, &target.qualifier())
                .map_err(|_| not_found(ctx, &target))?;
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Invocation-Type {other:?}: use RequestResponse or DryRun"
            )))
        }
    }
    match ctx.header("x-amz-log-type") {
        None | Some("None") => {}
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Log-Type {other:?}: Cirrus returns no log tail on a response stream (use Invoke, or `cirrus logs`)"
            )))
        }
    }
    let client_context = checked_payload(ctx, "InvokeWithResponseStream")?;
    let state = &ctx.state;
    let call = Call::new(
        target.name.clone(),
        target.qualifier(),
        Trigger::Invoke,
        event_request(ctx, client_context),
        true,
    )
    .streamed();
    let mut headers = ctx.headers.clone();
    let call = match crate::api::invoke::take_lineage(state, &mut headers) {
        Some(caller) => call.from_caller(caller),
        None => call,
    };
    let (mut response, version) = match state.invoker.invoke_streamed(call).await {
        crate::invoker::Streamed::Streaming {
            headers, mut body, ..
        } => {
            let version = headers
                .get("cirrus-version")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            let request_id = headers.get("cirrus-request-id").cloned();
            let frames = async_stream_frames(move |tx| async move {
                while let Some(piece) = body.next().await {
                    if tx
                        .send(super::eventstream::payload_chunk(&piece))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let done = match body.outcome().await {
                    Ok(()) => super::eventstream::invoke_complete(None),
                    Err(message) => {
                        super::eventstream::invoke_complete(Some(("Unhandled", &message)))
                    }
                };
                let _ = tx.send(done).await;
            });
            let mut response = Response::new(frames);
            if let Some(id) = request_id {
                response
                    .headers_mut()
                    .insert("x-amzn-requestid", id.clone());
                response.headers_mut().insert("cirrus-request-id", id);
            }
            (response, version)
        }
        crate::invoker::Streamed::Done(invoked) => {
            let invoked = (*invoked)?;
            let version = invoked.version();
            let frames = match &invoked.result {
                Ok(guest) => vec![
                    super::eventstream::payload_chunk(guest.body()),
                    super::eventstream::invoke_complete(None),
                ],
                Err(e) => {
                    match function_error(e, invoked.request_id(), timeout(ctx, &target, &invoked)) {
                        Some(document) => {
                            let kind = document["errorType"]
                                .as_str()
                                .unwrap_or("Unhandled")
                                .to_owned();
                            vec![super::eventstream::invoke_complete(Some((
                                &kind,
                                &document.to_string(),
                            )))]
                        }
                        None => {
                            let mut error = LambdaError::from(e.clone());
                            if e.code == ErrorCode::NotFound {
                                error = not_found(ctx, &target);
                            }
                            return Err(error);
                        }
                    }
                }
            };
            let mut response = Response::new(Body::from(frames.concat()));
            invoked.stamp(response.headers_mut());
            if let Ok(value) = HeaderValue::from_str(invoked.request_id()) {
                response.headers_mut().insert("x-amzn-requestid", value);
            }
            (response, version)
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    executed_version(headers, &target, version);
    Ok(response)
}

/// `X-Amz-Executed-Version`: Lambda names `$LATEST` when that is what was called, else
/// the version that ran.
fn executed_version(headers: &mut HeaderMap, target: &Target, version: Option<u32>) {
    match (target.qualifier(), version) {
        (Qualifier::Latest, Some(_)) => {
            headers.insert(
                "x-amz-executed-version",
                HeaderValue::from_static("$LATEST"),
            );
        }
        (_, Some(version)) => {
            headers.insert("x-amz-executed-version", HeaderValue::from(version));
        }
        (_, None) => {}
    }
}

/// The event as the function gets it: a POST of the JSON payload.
fn event_request(ctx: &Ctx, client_context: Option<HeaderValue>) -> Request<Body> {
    let mut event = Request::new(Body::from(ctx.body.clone()));
    *event.method_mut() = Method::POST;
    *event.uri_mut() = Uri::from_static("/");
    let headers = event.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(value) = ctx.headers.get("traceparent") {
        headers.insert("traceparent", value.clone());
    }
    if let Some(context) = client_context {
        headers.insert("cirrus-client-context", context);
    }
    event
}

/// A body whose frames a task produces into a small channel (so a slow reader holds the
/// producer back).
fn async_stream_frames<F, Fut>(produce: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<bytes::Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, std::convert::Infallible>(frame), rx))
    });
    Body::from_stream(frames)
}

fn not_found(ctx: &Ctx, target: &Target) -> LambdaError {
    LambdaError::not_found(format!(
        "Function not found: {}",
        ctx.arn(&target.name, target.qualifier.as_deref())
    ))
}

/// What both invoke operations check of a request: headers Cirrus does not support are
/// refused, the payload must be JSON; answers the client context to pass on.
fn checked_payload(ctx: &Ctx, operation: &str) -> LambdaResult<Option<HeaderValue>> {
    for unsupported in ["x-amz-tenant-id", "x-amz-durable-execution-name"] {
        if ctx.headers.contains_key(unsupported) {
            return Err(LambdaError::invalid(format!(
                "Cirrus does not support {unsupported} on {operation}"
            )));
        }
    }
    let client_context = client_context(ctx)?;
    if !ctx.body.is_empty() {
        serde_json::from_slice::<serde::de::IgnoredAny>(&ctx.body).map_err(|e| {
            LambdaError::bad_content(format!("Could not parse request body into json: {e}"))
        })?;
    }
    Ok(client_context)
}

/// `X-Amz-Client-Context`: base64 of a JSON object, handed to the guest unchanged as
/// the `cirrus-client-context` request header (`HTTP_CIRRUS_CLIENT_CONTEXT` for command
/// modules).
fn client_context(ctx: &Ctx) -> LambdaResult<Option<HeaderValue>> {
    let Some(value) = ctx.headers.get("x-amz-client-context") else {
        return Ok(None);
    };
    let invalid =
        || LambdaError::invalid("Client context must be a valid Base64-encoded JSON object.");
    if value.len() > MAX_CLIENT_CONTEXT {
        return Err(LambdaError::invalid(format!(
            "Client context must be at most {MAX_CLIENT_CONTEXT} bytes"
        )));
    }
    let text = value.to_str().map_err(|_| invalid())?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| invalid())?;
    let doc: serde_json::Value = serde_json::from_slice(&raw).map_err(|_| invalid())?;
    if !doc.is_object() {
        return Err(invalid());
    }
    Ok(Some(value.clone()))
}

fn answer(ctx: &Ctx, target: &Target, invoked: Invoked, tail: bool) -> LambdaResult<Response> {
    let failure = match &invoked.result {
        Ok(_) => None,
        Err(e) => match function_error(e, invoked.request_id(), timeout(ctx, target, &invoked)) {
            Some(document) => Some(document),
            None => {
                let mut error = LambdaError::from(e.clone());
                if e.code == ErrorCode::NotFound {
                    error = not_found(ctx, target);
                }
                return Err(error);
            }
        },
    };
    let mut response = match (&invoked.result, failure) {
        (Ok(guest), _) => {
            let mut response = Response::new(Body::from(guest.body().clone()));
            // The guest's own status is part of its answer, not the invocation's.
            response.headers_mut().insert(
                "cirrus-function-status",
                HeaderValue::from(guest.status().as_u16()),
            );
            if let Some(value) = guest.headers().get(axum::http::header::CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(axum::http::header::CONTENT_TYPE, value.clone());
            }
            response
        }
        (Err(_), Some(document)) => {
            let mut response = axum::Json(document).into_response();
            response.headers_mut().insert(
                "x-amz-function-error",
                HeaderValue::from_static("Unhandled"),
            );
            response
        }
        (Err(_), None) => unreachable!("errors without a document returned above"),
    };
    let headers = response.headers_mut();
    invoked.stamp(headers);
    if let Ok(value) = HeaderValue::from_str(invoked.request_id()) {
        headers.insert("x-amzn-requestid", value);
    }
    executed_version(headers, target, invoked.version());
    if tail {
        let log = log_result(&invoked);
        if let Ok(value) = HeaderValue::from_str(&log) {
            headers.insert("x-amz-log-result", value);
        }
    }
    Ok(response)
}

/// Lambda's error document for a function that failed, or `None` when the failure is
/// the platform's answer (not found, throttled, too large) rather than the function's.
fn function_error(
    e: &ApiError,
    request_id: &str,
    timeout: Option<Duration>,
) -> Option<serde_json::Value> {
    // A native runtime's own error document travels as the message.
    if e.code == ErrorCode::FunctionError {
        if let Ok(document) = serde_json::from_str::<serde_json::Value>(&e.message) {
            if document
                .get("errorType")
                .is_some_and(serde_json::Value::is_string)
            {
                return Some(document);
            }
        }
    }
    let (kind, message) = match e.code {
        ErrorCode::Timeout => (
            "Sandbox.Timedout",
            match timeout {
                Some(t) => format!(
                    "RequestId: {request_id} Error: Task timed out after {:.2} seconds",
                    t.as_secs_f64()
                ),
                None => format!("RequestId: {request_id} Error: {}", e.message),
            },
        ),
        // The runtime says "function …" of an answer over the limit; a request over it is
        // the caller's (RequestTooLargeException).
        ErrorCode::PayloadTooLarge if e.message.starts_with("function ") => (
            "Function.ResponseSizeTooLarge",
            format!("RequestId: {request_id} Error: {}", e.message),
        ),
        ErrorCode::MemoryLimitExceeded => (
            "Runtime.OutOfMemory",
            format!(
                "RequestId: {request_id} Error: Runtime exited with error: {}",
                e.message
            ),
        ),
        ErrorCode::FunctionError => {
            // The runtime's messages say how the guest failed.
            let kind = if e.message.starts_with("function exited with status") {
                "Runtime.ExitError"
            } else if e.message.starts_with("function trapped") {
                "Runtime.Trap"
            } else {
                "Runtime.Unknown"
            };
            (
                kind,
                format!("RequestId: {request_id} Error: {}", e.message),
            )
        }
        _ => return None,
    };
    Some(serde_json::json!({
        "errorType": kind,
        "errorMessage": message,
        "stackTrace": [],
    }))
}

/// The timeout of the version that ran.
fn timeout(ctx: &Ctx, target: &Target, invoked: &Invoked) -> Option<Duration> {
    let version = invoked.version()?;
    let v = ctx
        .state
        .registry
        .resolve(&target.name, &Qualifier::Version(version))
        .ok()?;
    Some(v.config.timeout)
}

/// The base64 log tail: the guest's lines between Lambda's START, END and REPORT lines.
fn log_result(invoked: &Invoked) -> String {
    let id = invoked.request_id();
    let version = invoked
        .version()
        .map_or_else(|| "$LATEST".to_owned(), |v| v.to_string());
    let mut text = format!("START RequestId: {id} Version: {version}\n");
    text.push_str(invoked.logs().unwrap_or(""));
    text.push_str(&format!(
        "END RequestId: {id}\nREPORT RequestId: {id}\tDuration: {:.2} ms\tBilled Duration: {} ms\n",
        invoked.duration().as_secs_f64() * 1000.0,
        invoked.billed_ms()
    ));
    let mut start = text.len().saturating_sub(LOG_TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    base64::engine::general_purpose::STANDARD.encode(&text.as_bytes()[start..])
}
