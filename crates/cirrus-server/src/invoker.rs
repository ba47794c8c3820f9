//! One place executes invocations: resolve → read the event → admit → load (cold) or
//! reuse (warm) → run in a fresh instance → record → answer.

use crate::clock::{rfc3339, Clock};
use crate::error::{body_error, error_response};
use crate::lineage::{Lineage, MAX_PIPELINE_DEPTH};
use crate::records::RecordSink;
use crate::registry::Registry;
use crate::scaler::Scaler;
use crate::trace::TraceContext;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response};
use bytes::Bytes;
use cirrus_api::{
    ApiError, ErrorCode, InvocationRecord, LogLine, Outcome, Qualifier, Trigger, VersionInfo,
};
use cirrus_runtime::{EnvironmentSpec, Invocation, InvocationContext, Limits};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Size limits that apply to every function (Lambda's synchronous limit is 6 MB).
#[derive(Debug, Clone)]
pub struct PayloadLimits {
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    /// Guest stdout/stderr kept per invocation; the rest is dropped and noted.
    pub max_log_bytes: usize,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: 6 << 20,
            max_response_bytes: 6 << 20,
            max_log_bytes: 256 << 10,
        }
    }
}

/// A request for one invocation, as the gateway parsed it.
pub struct Call {
    pub function: String,
    pub qualifier: Qualifier,
    pub trigger: Trigger,
    /// The request as the function sees it: its URI is the path below the function.
    pub request: Request<Body>,
    /// Whether the caller presented the admin token (needed for non-public functions).
    pub authorized: bool,
    /// Set for queued events: every attempt shares the event's request id.
    pub request_id: Option<String>,
    /// 1 for a first try.
    pub attempt: u32,
    /// The invocation that caused this one (a destination's step, a storage write, a
    /// function calling the platform).
    pub parent_request_id: Option<String>,
    /// The request this call's lineage started with; `None` when this call is it.
    pub root: Option<String>,
    /// Steps between this call and its lineage's first request; what the function
    /// causes carries it on (events, storage writes, calls to the platform), so loops stop.
    pub hops: u32,
    /// Made by a function from inside its invocation (it carried a signed lineage): it is
    /// stopped if that caller goes away, and counts against its lineage's cap on calls
    /// in flight. Calls from outside run to their end.
    pub nested: bool,
    /// Hand the invocation's log lines back to the caller too (Lambda's `LogType: Tail`).
    pub keep_logs: bool,
    /// The caller takes the response streamed when the function writes it over time
    /// (HTTP triggers of components): see [`Invoker::invoke`].
    pub stream: bool,
}

impl Call {
    /// A synchronous call: a fresh request id, first attempt.
    pub fn new(
        function: String,
        qualifier: Qualifier,
        trigger: Trigger,
        request: Request<Body>,
        authorized: bool,
    ) -> Self {
        Self {
            function,
            qualifier,
            trigger,
            request,
            authorized,
            request_id: None,
            attempt: 1,
            parent_request_id: None,
            root: None,
            hops: 0,
            nested: false,
            keep_logs: false,
            stream: false,
        }
    }

    /// Lets the response stream to the caller while the function writes it.
    pub fn streamed(self) -> Self {
        Self {
            stream: true,
            ..self
        }
    }

    /// Makes this a call that the invocation `caller` made to the platform.
    pub fn from_caller(self, caller: Lineage) -> Self {
        Self {
            parent_request_id: Some(caller.request_id.clone()),
            hops: caller.next_hops(),
            root: Some(caller.root),
            nested: true,
            ..self
        }
    }
}

pub struct Invoker {
    pub registry: Arc<Registry>,
    pub scaler: Arc<Scaler>,
    pub records: RecordSink,
    pub clock: Arc<dyn Clock>,
    pub limits: PayloadLimits,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where spans go, when an OTLP endpoint is configured.
    pub otlp: Option<crate::otlp::OtlpSink>,
    /// Tokens and the API address for functions with storage grants.
    pub platform: Arc<PlatformAccess>,
}

/// How a function with storage grants reaches the platform: `CIRRUS_API` and a token
/// scoped to its grants in `CIRRUS_TOKEN`, and outbound HTTP to that address. Every
/// function that may make outbound requests has its calls to that address marked with
/// its lineage.
pub struct PlatformAccess {
    pub issuer: crate::function_token::TokenIssuer,
    pub lineage: crate::lineage::LineageSigner,
    /// The management API's address (`127.0.0.1:8080`), known once the server listens.
    pub api_authority: std::sync::OnceLock<String>,
    /// Calls from functions running now, per lineage.
    pub nested: Arc<crate::lineage::NestedCalls>,
    /// What `secret:NAME` values in `env` resolve to.
    pub secrets: Arc<crate::secrets::Secrets>,
}

impl PlatformAccess {
    /// What every environment of a version starts with: the function's variables, the
    /// platform's `CIRRUS_FUNCTION`/`CIRRUS_VERSION`, and with storage grants
    /// `CIRRUS_API` plus a `CIRRUS_TOKEN` that is a stand-in: it is worth nothing by itself,
    /// and the runtime puts the current invocation's token in its place on every call to
    /// the platform (a warm environment outlives any one invocation's token).
    ///
    /// `secret:NAME` values are resolved here, so an environment started after a secret
    /// is rotated gets its new value.
    pub fn environment(
        &self,
        version: &VersionInfo,
        max_log_bytes: usize,
    ) -> Result<EnvironmentSpec, ApiError> {
        let mut env = Vec::with_capacity(version.config.env.len() + 4);
        for (name, value) in &version.config.env {
            let value = match cirrus_api::access::secret_reference(value) {
                None => value.clone(),
                Some(secret) => self
                    .secrets
                    .resolve(secret)
                    .map(|v| v.to_string())
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::Internal,
                            format!("{name} references secret {secret:?}, which no longer exists"),
                        )
                    })?,
            };
            env.push((name.clone(), value));
        }
        env.push(("CIRRUS_FUNCTION".into(), version.function.clone()));
        env.push(("CIRRUS_VERSION".into(), version.version.to_string()));
        let mut token = None;
        if let (false, Some(authority)) =
            (version.config.storage.is_empty(), self.api_authority.get())
        {
            env.push(("CIRRUS_API".into(), format!("http://{authority}")));
            token = Some(format!("environment.{}", uuid::Uuid::new_v4().simple()));
        }
        Ok(EnvironmentSpec {
            env,
            memory_bytes: version.config.memory_bytes(),
            max_log_bytes,
            timeout: version.config.timeout,
            token,
            allowed_hosts: version.config.allowed_hosts.clone(),
        })
    }

    /// What an invocation may reach, and how its calls to this server are marked: with
    /// storage grants, a token and the API's address among its hosts; with any host at
    /// all, its lineage on every call to this server.
    fn reach(
        &self,
        version: &VersionInfo,
        incarnation: u64,
        lineage: &Lineage,
        now_ms: u64,
    ) -> (Arc<[String]>, Option<cirrus_runtime::PlatformCalls>) {
        let mut allowed_hosts = version.config.allowed_hosts.clone();
        let Some(authority) = self.api_authority.get() else {
            return (allowed_hosts.into(), None);
        };
        let expires_ms = now_ms + (version.config.timeout + TOKEN_GRACE).as_millis() as u64;
        let mut token = None;
        if !version.config.storage.is_empty() {
            token = Some(self.issuer.issue(&crate::function_token::Claims {
                function: version.function.clone(),
                incarnation,
                request_id: lineage.request_id.clone(),
                hops: lineage.hops,
                root: Some(lineage.root.clone()),
                grants: version.config.storage.clone(),
                expires_ms,
            }));
            allowed_hosts.push(authority.clone());
        }
        if allowed_hosts.is_empty() {
            return (allowed_hosts.into(), None);
        }
        let platform = HeaderValue::from_str(&self.lineage.sign(lineage, expires_ms))
            .ok()
            .map(|value| cirrus_runtime::PlatformCalls {
                authority: authority.clone(),
                headers: vec![(
                    axum::http::HeaderName::from_static(crate::lineage::HEADER),
                    value,
                )],
                token,
            });
        (allowed_hosts.into(), platform)
    }
}

/// A token outlives the invocation's timeout by this much (its last request may start
/// just before the deadline).
const TOKEN_GRACE: Duration = Duration::from_secs(60);

/// What was measured of an invocation, besides its duration.
#[derive(Default)]
struct Measured {
    started_ms: u64,
    init: Option<Duration>,
    peak_memory_bytes: u64,
    cpu_time: Duration,
    request_bytes: u64,
    /// The response body's length when it was streamed (not in the result).
    streamed_bytes: Option<u64>,
}

/// What every invocation answer carries, error or not.
struct Meta {
    request_id: String,
    attempt: u32,
    parent_request_id: Option<String>,
    trace: TraceContext,
    cold: bool,
    /// Whether the guest ran at all; only then is anything billed.
    ran: bool,
    duration: Duration,
    version: Option<u32>,
    /// The invocation's log lines, one per line, when the call kept them.
    logs: Option<String>,
}

/// An invocation as its caller sees it, before it is rendered as an HTTP answer (an API
/// that answers in its own shape, such as Lambda's, starts here).
pub struct Invoked {
    pub result: Result<Response<Bytes>, ApiError>,
    meta: Meta,
}

impl Invoked {
    pub fn request_id(&self) -> &str {
        &self.meta.request_id
    }

    /// The version that ran (or would have), once the function was resolved.
    pub fn version(&self) -> Option<u32> {
        self.meta.version
    }

    pub fn duration(&self) -> Duration {
        self.meta.duration
    }

    pub fn billed_ms(&self) -> u64 {
        self.meta.billed_ms()
    }

    /// Log lines, when the call asked for them (`Call::keep_logs`) and the guest ran.
    pub fn logs(&self) -> Option<&str> {
        self.meta.logs.as_deref()
    }

    /// Adds the `cirrus-*` headers every invocation answer carries.
    pub fn stamp(&self, headers: &mut HeaderMap) {
        stamp(headers, &self.meta);
    }
}

impl Meta {
    fn billed_ms(&self) -> u64 {
        if self.ran {
            billed_ms(self.duration)
        } else {
            0
        }
    }
}

impl Invoker {
    /// Runs one invocation in its own task: a caller from outside that disconnects does
    /// not cut it short, so its record is written and its permits are released in order.
    /// A nested call (from a function) is stopped when its caller goes away, which is
    /// when this future is dropped; it is still recorded, as `cancelled`.
    ///
    /// A streamed call ([`Call::streamed`]) whose function is still writing its body a
    /// moment after answering is answered at once, its body following as it is written;
    /// the invocation goes on in its task, and the client going away stops it.
    pub async fn invoke(self: &Arc<Self>, call: Call) -> Response<Body> {
        if !call.stream {
            return self.answer(self.invoke_detailed(call).await);
        }
        match self.invoke_streamed(call).await {
            Streamed::Streaming {
                status,
                headers,
                body,
            } => {
                let mut response = Response::new(Body::new(body));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                response
            }
            Streamed::Done(invoked) => self.answer(*invoked),
        }
    }

    /// [`Invoker::invoke`] for a call that may stream, answering with the stream itself
    /// (an API that frames a stream in its own way, such as Lambda's, starts here).
    pub async fn invoke_streamed(self: &Arc<Self>, mut call: Call) -> Streamed {
        let (head_tx, mut head_rx) = tokio::sync::oneshot::channel();
        let (body_tx, body_rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
        let (outcome_tx, outcome_rx) = tokio::sync::oneshot::channel();
        call.stream = false;
        let this = self.clone();
        let cancel = call.nested.then(CancellationToken::new);
        let mut cancel_on_drop = cancel.clone().map(CancellationToken::drop_guard);
        let streaming = StreamTo {
            head: head_tx,
            body: body_tx,
            outcome: outcome_tx,
        };
        let mut task = tokio::spawn(async move {
            let (meta, result) = this.execute(call, cancel, Some(streaming)).await;
            Invoked { result, meta }
        });
        tokio::select! {
            biased;
            Ok((status, headers)) = &mut head_rx => Streamed::Streaming {
                status,
                headers,
                body: StreamedBody {
                    rx: body_rx,
                    outcome: Some(outcome_rx),
                    cut: None,
                    // Dropping the body (the client went away) stops a nested call.
                    _cancel_on_drop: cancel_on_drop.take(),
                },
            },
            done = &mut task => Streamed::Done(Box::new(
                done.map_err(|e| ApiError::internal(format!("invocation task failed: {e}"))),
            )),
        }
    }

    fn answer(&self, invoked: Result<Invoked, ApiError>) -> Response<Body> {
        match invoked {
            Ok(Invoked { result, meta }) => {
                let mut response = match result {
                    Ok(response) => response.map(Body::from),
                    Err(error) => error_response(error),
                };
                stamp(response.headers_mut(), &meta);
                response
            }
            Err(error) => error_response(error),
        }
    }

    /// [`Invoker::invoke`], answering with the invocation's parts instead of a response.
    /// The error is the platform's own (the invocation's task failed).
    pub async fn invoke_detailed(self: &Arc<Self>, call: Call) -> Result<Invoked, ApiError> {
        let this = self.clone();
        let cancel = call.nested.then(CancellationToken::new);
        let _cancel_on_drop = cancel.clone().map(CancellationToken::drop_guard);
        let outcome = tokio::spawn(async move {
            let (meta, result) = this.execute(call, cancel, None).await;
            Invoked { result, meta }
        });
        outcome
            .await
            .map_err(|e| ApiError::internal(format!("invocation task failed: {e}")))
    }

    /// Runs a queued event's attempt (to its end, in its own task). Returns the outcome
    /// and the `traceparent` naming this invocation, for events its result leads to.
    pub async fn invoke_event(
        self: &Arc<Self>,
        call: Call,
    ) -> (String, Result<Response<Bytes>, ApiError>) {
        let this = self.clone();
        match tokio::spawn(async move {
            let (meta, result) = this.execute(call, None, None).await;
            (meta.trace.traceparent(), result)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => (
                String::new(),
                Err(ApiError::internal(format!("invocation task failed: {e}"))),
            ),
        }
    }

    async fn execute(
        &self,
        mut call: Call,
        cancel: Option<CancellationToken>,
        stream: Option<StreamTo>,
    ) -> (Meta, Result<Response<Bytes>, ApiError>) {
        let request_id = call
            .request_id
            .take()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let trace = TraceContext::from_header(
            call.request
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok()),
        );
        let span = tracing::info_span!(
            "invoke",
            request_id = %request_id,
            function = %call.function,
            trace_id = %trace.trace_id,
            version = tracing::field::Empty,
            cold = tracing::field::Empty,
        );
        let mut meta = Meta {
            request_id,
            attempt: call.attempt,
            parent_request_id: call.parent_request_id.clone(),
            cold: false,
            ran: false,
            duration: Duration::ZERO,
            version: None,
            trace,
            logs: None,
        };
        // Boxed: `run`'s state (about 3 KiB) would otherwise be inline in every future
        // that awaits it, up to the spawned task, and copied each time one is moved: on
        // every request, tens of KiB of `memmove` (4-5 % of a small function's CPU).
        let result = Box::pin(self.run(call, cancel, stream, &mut meta))
            .instrument(span.clone())
            .await;
        if let Some(version) = meta.version {
            span.record("version", version);
        }
        span.record("cold", meta.cold);
        (meta, result)
    }

    async fn run(
        &self,
        call: Call,
        cancel: Option<CancellationToken>,
        stream: Option<StreamTo>,
        meta: &mut Meta,
    ) -> Result<Response<Bytes>, ApiError> {
        let Call {
            function,
            qualifier,
            trigger,
            request,
            authorized,
            root,
            hops,
            nested,
            keep_logs,
            ..
        } = call;
        let lineage = Lineage {
            root: root.unwrap_or_else(|| meta.request_id.clone()),
            request_id: meta.request_id.clone(),
            hops,
        };
        if hops > MAX_PIPELINE_DEPTH {
            return Err(ApiError::new(
                ErrorCode::LoopDetected,
                format!(
                    "call to {function:?} is {hops} steps from request {} (the limit is {MAX_PIPELINE_DEPTH}): is a function calling itself?",
                    lineage.root
                ),
            ));
        }
        let _nested_call = if nested {
            Some(self.platform.nested.enter(&lineage.root)?)
        } else {
            None
        };
        // Without the admin token, a private function looks exactly like a missing one.
        let version = match self.registry.resolve(&function, &qualifier) {
            Ok(version) if version.config.public || authorized => version,
            Err(e) if authorized => return Err(e),
            _ => return Err(hidden_function(&function)),
        };
        meta.version = Some(version.version);
        // Admission first: buffered request bodies are then bounded by the caps too. A
        // nested call whose caller went away meanwhile gives up its place in the queue.
        let admitted = match &cancel {
            None => self.scaler.admit(&version).await,
            Some(cancel) => tokio::select! {
                admitted = self.scaler.admit(&version) => admitted,
                () = cancel.cancelled() => return Err(cancelled()),
            },
        };
        let _admission = admitted.inspect_err(|e| {
            if e.code == ErrorCode::Throttled && matches!(trigger, Trigger::Http | Trigger::Invoke)
            {
                self.metrics.throttled(&version.function);
            }
        })?;
        let (parts, body) = request.into_parts();
        let limit = self.limits.max_request_bytes;
        // A component answering a streamed call reads the body as it arrives; everything
        // else gets it whole.
        let streams_in =
            stream.is_some() && version.kind == cirrus_api::ArtifactKind::HttpComponent;
        let (request, streamed_body, mut request_bytes) = if streams_in {
            let declared = parts
                .headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request body exceeds the limit of {limit} bytes"),
                ));
            }
            let counted = CountedBody::new(body, limit as u64);
            let read = counted.read.clone();
            (
                Request::from_parts(parts, Bytes::new()),
                Some((http_body_util::BodyExt::boxed_unsync(counted), read)),
                0,
            )
        } else {
            let body = axum::body::to_bytes(body, limit)
                .await
                .map_err(|e| body_error(e, limit, "request body"))?;
            let n = body.len() as u64;
            (Request::from_parts(parts, body), None, n)
        };
        let (request_body, body_read) = match streamed_body {
            Some((body, read)) => (Some(body), Some(read)),
            None => (None, None),
        };
        let started_ms = self.clock.now_ms();
        let mut lease = match self.scaler.ready(&version).await {
            Ok(lease) => lease,
            Err(error) => {
                meta.cold = true;
                let usage = Measured {
                    started_ms,
                    request_bytes,
                    ..Measured::default()
                };
                self.record(
                    &version,
                    trigger,
                    meta,
                    usage,
                    &Err(error.clone()),
                    Vec::new(),
                )
                .await;
                return Err(error);
            }
        };
        meta.cold = lease.cold;

        let mut request = request;
        let traceparent = meta.trace.traceparent();
        // The guest's outgoing calls are children of this invocation's span.
        if let Ok(value) = HeaderValue::from_str(&traceparent) {
            request.headers_mut().insert(header::TRACEPARENT, value);
        }
        let incarnation = self.registry.incarnation(&version.function).unwrap_or(0);
        let now_ms = self.clock.now_ms();
        let (allowed_hosts, platform) =
            self.platform.reach(&version, incarnation, &lineage, now_ms);
        // The runtime hands over a head when it starts streaming; the caller gets it with
        // the headers known by then (duration and billed time come only at the end).
        let (runtime_stream, forward_head, outcome) = match stream {
            Some(StreamTo {
                head,
                body,
                outcome,
            }) => {
                let (runtime_head, head_rx) = tokio::sync::oneshot::channel();
                let known = HeadStamp {
                    request_id: meta.request_id.clone(),
                    trace_id: meta.trace.trace_id.clone(),
                    cold: meta.cold,
                    version: version.version,
                };
                let forward = async move {
                    if let Ok((status, mut headers)) = head_rx.await {
                        known.apply(&mut headers);
                        let _ = head.send((status, headers));
                    }
                };
                (
                    Some(cirrus_runtime::ResponseStream {
                        head: runtime_head,
                        body,
                    }),
                    Some(forward),
                    Some(outcome),
                )
            }
            None => (None, None, None),
        };
        let invocation = Invocation {
            context: InvocationContext {
                request_id: meta.request_id.clone(),
                function: version.function.clone(),
                version: version.version,
                event_type: trigger.as_str(),
                attempt: meta.attempt,
                traceparent,
                deadline_ms: now_ms + version.config.timeout.as_millis() as u64,
            },
            request,
            limits: Limits {
                memory_bytes: version.config.memory_bytes(),
                timeout: version.config.timeout,
                max_response_bytes: self.limits.max_response_bytes,
                max_log_bytes: self.limits.max_log_bytes,
            },
            allowed_hosts,
            platform,
            cancelled: cancel.map(|c| Box::pin(c.cancelled_owned()) as cirrus_runtime::Cancelled),
            stream: runtime_stream,
            body: request_body,
        };
        let run_started = Instant::now();
        let (output, ()) = tokio::join!(lease.invoke(invocation), async {
            if let Some(forward) = forward_head {
                forward.await;
            }
        });
        meta.duration = run_started.elapsed();
        if let Some(read) = body_read {
            request_bytes = read.load(std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(outcome) = outcome {
            // A streamed body ends cleanly only if the invocation did.
            let _ = outcome.send(
                output
                    .result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| e.message.clone()),
            );
        }
        meta.ran = true;
        let init = lease.init;
        drop(lease);

        let now = if output.logs.is_empty() {
            String::new()
        } else {
            rfc3339(self.clock.now_ms())
        };
        let logs: Vec<LogLine> = output
            .logs
            .into_iter()
            .map(|entry| LogLine {
                time: now.clone(),
                function: version.function.clone(),
                version: version.version,
                request_id: meta.request_id.clone(),
                stream: entry.stream,
                line: entry.line,
            })
            .collect();
        if keep_logs {
            let mut text = String::new();
            for line in &logs {
                text.push_str(&line.line);
                text.push('\n');
            }
            meta.logs = Some(text);
        }
        let usage = Measured {
            started_ms,
            init,
            peak_memory_bytes: output.peak_memory_bytes,
            cpu_time: output.cpu_time,
            request_bytes,
            streamed_bytes: output.streamed_bytes,
        };
        self.record(&version, trigger, meta, usage, &output.result, logs)
            .await;
        output.result
    }

    async fn record(
        &self,
        version: &VersionInfo,
        trigger: Trigger,
        meta: &Meta,
        usage: Measured,
        result: &Result<Response<Bytes>, ApiError>,
        logs: Vec<LogLine>,
    ) {
        let (outcome, status, error_code, error_message) = match result {
            Ok(response) => (Outcome::Success, response.status().as_u16(), None, None),
            Err(e) => (
                Outcome::Error,
                e.code.status(),
                Some(e.code.as_str().to_owned()),
                Some(e.message.clone()),
            ),
        };
        let record = InvocationRecord {
            request_id: meta.request_id.clone(),
            function: version.function.clone(),
            version: version.version,
            trigger,
            attempt: meta.attempt,
            parent_request_id: meta.parent_request_id.clone(),
            started_at: rfc3339(usage.started_ms),
            duration_ms: millis(meta.duration),
            billed_ms: meta.billed_ms(),
            init_ms: usage.init.map(millis),
            memory_mb: version.config.memory_mb,
            peak_memory_bytes: usage.peak_memory_bytes,
            cpu_ms: millis(usage.cpu_time),
            request_bytes: usage.request_bytes,
            response_bytes: usage
                .streamed_bytes
                .unwrap_or_else(|| result.as_ref().map_or(0, |r| r.body().len() as u64)),
            cold_start: meta.cold,
            trace_id: meta.trace.trace_id.clone(),
            parent_span_id: meta.trace.parent_id.clone(),
            span_id: meta.trace.span_id.clone(),
            outcome,
            status,
            error_code,
            error_message,
        };
        tracing::debug!(
            version = version.version,
            cold = meta.cold,
            duration_ms = record.duration_ms,
            status,
            "invoked"
        );
        self.metrics.observe(&record);
        if let Some(otlp) = &self.otlp {
            otlp.export(&record);
        }
        self.records.record(record, logs).await;
    }
}

/// A request body passed on as it arrives, counted, and cut at the request limit.
struct CountedBody {
    inner: Body,
    limit: u64,
    read: Arc<std::sync::atomic::AtomicU64>,
}

impl CountedBody {
    fn new(inner: Body, limit: u64) -> Self {
        Self {
            inner,
            limit,
            read: Arc::default(),
        }
    }
}

impl hyper::body::Body for CountedBody {
    type Data = Bytes;
    type Error = cirrus_runtime::RequestBodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::sync::atomic::Ordering;
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let read = self.read.fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if read > self.limit {
                        return Poll::Ready(Some(Err(cirrus_runtime::RequestBodyError::TooLarge(
                            self.limit,
                        ))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => {
                Poll::Ready(Some(Err(cirrus_runtime::RequestBodyError::Broken)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Pieces of a streamed body waiting for the client; with the runtime's own buffer and
/// the socket's, what a slow reader can make the server hold for one response.
const STREAM_QUEUE: usize = 8;

/// Where a streamed response goes: its head (with the platform's headers), its body,
/// and finally whether the invocation ended well.
struct StreamTo {
    head: tokio::sync::oneshot::Sender<(axum::http::StatusCode, HeaderMap)>,
    body: tokio::sync::mpsc::Sender<Bytes>,
    outcome: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The `cirrus-*` headers a streamed response can carry: what is known when it starts.
struct HeadStamp {
    request_id: String,
    trace_id: String,
    cold: bool,
    version: u32,
}

impl HeadStamp {
    fn apply(&self, headers: &mut HeaderMap) {
        stamp_known(
            headers,
            &self.request_id,
            &self.trace_id,
            self.cold,
            Some(self.version),
        );
    }
}

/// How a call that may stream was answered.
pub enum Streamed {
    /// The function is writing its body: the head, and the body as it comes.
    Streaming {
        status: axum::http::StatusCode,
        headers: HeaderMap,
        body: StreamedBody,
    },
    /// It finished (or failed) before streaming began.
    Done(Box<Result<Invoked, ApiError>>),
}

/// A response body fed by a running invocation. It ends cleanly when the invocation
/// succeeded; otherwise with an error, so the connection is cut without the final chunk
/// (HTTP/1.1) or the stream reset (HTTP/2) and the client can tell the body is partial.
pub struct StreamedBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    outcome: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
    /// The failure that cuts the body, held back for one turn (see `poll_frame`).
    cut: Option<String>,
    _cancel_on_drop: Option<tokio_util::sync::DropGuard>,
}

impl StreamedBody {
    /// The next piece of the body; `None` once it has all come.
    pub async fn next(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// How the invocation ended (after the last piece): the error's message if it failed.
    pub async fn outcome(&mut self) -> Result<(), String> {
        match self.outcome.take() {
            Some(outcome) => outcome
                .await
                .unwrap_or_else(|_| Err("the invocation ended without an outcome".to_owned())),
            None => Ok(()),
        }
    }
}

impl hyper::body::Body for StreamedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Some(message) = self.cut.take() {
            return Poll::Ready(Some(Err(
                format!("streamed response cut off: {message}").into()
            )));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(piece)) => {
                return Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
            }
            Poll::Ready(None) => {}
            Poll::Pending => return Poll::Pending,
        }
        let Some(outcome) = self.outcome.as_mut() else {
            return Poll::Ready(None);
        };
        let ended = match std::future::Future::poll(std::pin::Pin::new(outcome), cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Ok(()))) => None,
            Poll::Ready(Ok(Err(message))) => Some(message),
            Poll::Ready(Err(_)) => Some("the invocation ended without an outcome".to_owned()),
        };
        self.outcome = None;
        match ended {
            None => Poll::Ready(None),
            // hyper drops what it has not yet flushed (the head, the last pieces) when a
            // body fails: one `Pending` first lets it flush them, so the client gets
            // everything sent before the cut.
            Some(message) => {
                self.cut = Some(message);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

fn cancelled() -> ApiError {
    ApiError::new(
        ErrorCode::Cancelled,
        "the caller went away (its invocation ended) before this call was admitted",
    )
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Billed time: the duration rounded up to the next whole millisecond, at least 1 ms.
pub fn billed_ms(d: Duration) -> u64 {
    let nanos = d.as_nanos();
    (nanos.div_ceil(1_000_000) as u64).max(1)
}

/// What a caller without the admin token hears of a function it may not call, whether
/// it is private or does not exist.
fn hidden_function(function: &str) -> ApiError {
    ApiError::not_found(format!(
        "no public function {function:?}: it does not exist, or it is private (private functions need `Authorization: Bearer` with the admin token or an API key of scope invoke:NAME)"
    ))
}

fn stamp(headers: &mut HeaderMap, meta: &Meta) {
    stamp_known(
        headers,
        &meta.request_id,
        &meta.trace.trace_id,
        meta.cold,
        meta.version,
    );
    headers.insert(header::DURATION_MS, duration_ms(meta.duration));
    headers.insert(header::BILLED_MS, HeaderValue::from(meta.billed_ms()));
}

/// The headers a response carries from the moment its invocation has an environment.
fn stamp_known(
    headers: &mut HeaderMap,
    request_id: &str,
    trace_id: &str,
    cold: bool,
    version: Option<u32>,
) {
    for (name, value) in [
        (header::REQUEST_ID, request_id),
        (header::TRACE_ID, trace_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    headers.insert(
        header::COLD_START,
        HeaderValue::from_static(if cold { "true" } else { "false" }),
    );
    if let Some(version) = version {
        headers.insert(header::VERSION, HeaderValue::from(version));
    }
}

/// `cirrus-duration-ms`: milliseconds with three decimals, written without a heap
/// `String` (this is on every response).
fn duration_ms(d: Duration) -> HeaderValue {
    use std::io::Write as _;
    let micros = (d.as_nanos() + 500) / 1000;
    let mut buf = [0u8; 48];
    let mut rest = &mut buf[..];
    let _ = write!(rest, "{}.{:03}", micros / 1000, micros % 1000);
    let len = 48 - rest.len();
    HeaderValue::from_bytes(&buf[..len]).expect("digits and a dot are a valid header value")
}

/// The headers the invoker sets. Named once: a `&str` name is parsed again on every
/// insert, and these go on every response.
mod header {
    use axum::http::HeaderName;
    pub const REQUEST_ID: HeaderName = HeaderName::from_static("cirrus-request-id");
    pub const TRACE_ID: HeaderName = HeaderName::from_static("cirrus-trace-id");
    pub const COLD_START: HeaderName = HeaderName::from_static("cirrus-cold-start");
    pub const DURATION_MS: HeaderName = HeaderName::from_static("cirrus-duration-ms");
    pub const BILLED_MS: HeaderName = HeaderName::from_static("cirrus-billed-ms");
    pub const VERSION: HeaderName = HeaderName::from_static("cirrus-version");
    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_header_has_three_decimals() {
        for (d, text) in [
            (Duration::from_nanos(151_499), "0.151"),
            (Duration::from_nanos(151_500), "0.152"),
            (Duration::from_micros(12_345_678), "12345.678"),
            (Duration::ZERO, "0.000"),
            (Duration::from_secs(900), "900000.000"),
        ] {
            assert_eq!(duration_ms(d), text);
        }
    }

    #[test]
    fn billing_rounds_up_to_whole_milliseconds() {
        assert_eq!(billed_ms(Duration::from_micros(1)), 1);
        assert_eq!(billed_ms(Duration::ZERO), 1);
        assert_eq!(billed_ms(Duration::from_micros(1000)), 1);
        assert_eq!(billed_ms(Duration::from_micros(1001)), 2);
        assert_eq!(billed_ms(Duration::from_millis(250)), 250);
    }
}
