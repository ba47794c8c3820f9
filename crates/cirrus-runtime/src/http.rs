//! Running one invocation of a `wasi:http/proxy` component.

use crate::executor::{BoxFuture, Environment, EnvironmentSpec, StartFailure};
use crate::limits::{MemoryBudget, MemoryLimiter, MemoryStats};
use crate::pipe::CappedPipe;
use crate::run::{
    arm_deadline, caller_gone, classify, drain_logs, guest_failure, metered, timed_out,
    unless_cancelled, CpuLanes, TIMEOUT_GRACE,
};
use crate::{Invocation, InvokeOutput, Limits, PlatformCalls};
use cirrus_api::{ApiError, ErrorCode, LogStream};
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode as HttpErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Resources one invocation may hold at once; real handlers use a few dozen.
const MAX_RESOURCES: usize = 10_000;

/// The per-invocation request headers a component gets (named once: a `&str` name is
/// parsed again on every insert).
const REQUEST_ID: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("cirrus-request-id");
const DEADLINE_MS: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("cirrus-deadline-ms");

/// Per-invocation host state of a component.
pub struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    outbound: OutboundPolicy,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Outbound HTTP is denied unless the request's host is in the function's `allowed_hosts`;
/// requests to the platform itself are marked as coming from this invocation.
/// The native runtimes' egress proxy applies the same policy.
pub(crate) struct OutboundPolicy {
    pub(crate) allowed_hosts: Arc<[String]>,
    pub(crate) platform: Option<PlatformCalls>,
    /// The token the guest's environment holds (see [`HttpEnvironment::env_token`]).
    pub(crate) env_token: Option<String>,
}

impl OutboundPolicy {
    /// Whether `uri` names the platform: its own authority, or a loopback name with its
    /// port (the same server under another name, which a guest could use to pass as an
    /// outside caller).
    pub(crate) fn is_platform(&self, uri: &hyper::Uri) -> bool {
        let (Some(platform), Some(authority)) = (&self.platform, uri.authority()) else {
            return false;
        };
        if authority.as_str().eq_ignore_ascii_case(&platform.authority) {
            return true;
        }
        let Ok(own) = platform.authority.parse::<hyper::http::uri::Authority>() else {
            return false;
        };
        let port = |a: &hyper::http::uri::Authority| {
            a.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            })
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        port(authority) == port(&own) && (loopback || host.eq_ignore_ascii_case(own.host()))
    }

    /// A warm environment presents the token it started with; the platform gets the
    /// current invocation's (scoped to its request, not expired) in its place. Any other
    /// credential the guest chose is left alone.
    fn refresh_token(&self, headers: &mut hyper::HeaderMap, platform: &PlatformCalls) {
        let (Some(old), Some(new)) = (&self.env_token, &platform.token) else {
            return;
        };
        // Any spelling the server accepts as a bearer credential: scheme in any case, any
        // spaces, in any of the Authorization headers.
        let presents_stand_in = headers
            .get_all(hyper::header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.trim().split_once(' '))
            .any(|(scheme, token)| {
                scheme.eq_ignore_ascii_case("bearer") && token.trim() == old.as_str()
            });
        if presents_stand_in {
            if let Ok(value) = hyper::header::HeaderValue::from_str(&format!("Bearer {new}")) {
                headers.insert(hyper::header::AUTHORIZATION, value);
            }
        }
    }

    fn allows(&self, uri: &hyper::Uri) -> bool {
        let Some(host) = uri.host() else {
            return false;
        };
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        self.allows_host(host, port)
    }

    /// An entry matches the host alone (any port) or `host:port` (a URL without a port
    /// has its scheme's).
    pub(crate) fn allows_host(&self, host: &str, port: u16) -> bool {
        let bare = |h: &str| h.trim_start_matches('[').trim_end_matches(']').to_owned();
        let host = bare(host);
        self.allowed_hosts.iter().any(|entry| {
            let Ok(allowed) = entry.parse::<hyper::http::uri::Authority>() else {
                return false;
            };
            bare(allowed.host()).eq_ignore_ascii_case(&host)
                && allowed.port_u16().is_none_or(|p| p == port)
        })
    }

    /// Marks a request to the platform itself as coming from this invocation.
    pub(crate) fn mark_platform_call(&self, uri: &hyper::Uri, headers: &mut hyper::HeaderMap) {
        if !self.is_platform(uri) {
            return;
        }
        if let Some(platform) = &self.platform {
            for (name, value) in &platform.headers {
                headers.insert(name.clone(), value.clone());
            }
            self.refresh_token(headers, platform);
        }
    }
}

/// The one forbidden-header rule (wasmtime's defaults: hop-by-hop headers and `host`),
/// made once: wasmtime's default hook builds a new `Arc` closure for every header it
/// checks, about seven allocations per invocation of a hello component.
fn forbidden_header(name: &hyper::header::HeaderName) -> bool {
    wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
}

static FORBIDDEN_HEADER_FILTER: std::sync::LazyLock<wasmtime_wasi_http::ForbiddenHeaderFilter> =
    std::sync::LazyLock::new(|| Arc::new(forbidden_header));

impl WasiHttpHooks for OutboundPolicy {
    fn is_forbidden_header(&mut self, name: &hyper::header::HeaderName) -> bool {
        forbidden_header(name)
    }

    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        FORBIDDEN_HEADER_FILTER.clone()
    }

    fn send_request(
        &mut self,
        request: hyper::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    hyper::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        if !self.allows(request.uri()) {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let mut request = request;
        let uri = request.uri().clone();
        self.mark_platform_call(&uri, request.headers_mut());
        wasmtime_wasi_http::default_hooks().send_request(request, options, fut)
    }
}

/// An instance of a component and its store: serves invocations one after another
/// (calling `incoming-handler.handle` again on the same instance, so guest globals
/// survive, as in a warm Lambda environment) until one leaves it in doubt.
pub(crate) struct HttpEnvironment {
    store: Store<HttpState>,
    proxy: Proxy,
    stdout: CappedPipe,
    stderr: CappedPipe,
    max_log_bytes: usize,
    lanes: CpuLanes,
    /// The `CIRRUS_TOKEN` in the guest's environment, replaced on its calls to the
    /// platform by the current invocation's.
    env_token: Option<String>,
    reusable: bool,
}

impl HttpEnvironment {
    pub(crate) async fn start(
        pre: &ProxyPre<HttpState>,
        spec: EnvironmentSpec,
        budget: Option<MemoryBudget>,
        lanes: CpuLanes,
    ) -> Result<Self, StartFailure> {
        let stdout = CappedPipe::logs(spec.max_log_bytes);
        let stderr = CappedPipe::logs(spec.max_log_bytes);
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .envs(&spec.env);
        if let Some(token) = &spec.token {
            builder.env("CIRRUS_TOKEN", token);
        }
        let mut table = ResourceTable::new();
        // Host-side resources (headers, bodies, pollables) are memory the guest's cap does
        // not see; bound how many it may hold.
        table.set_max_capacity(MAX_RESOURCES);
        let mut store = Store::new(
            pre.engine(),
            HttpState {
                wasi: builder.build(),
                http: WasiHttpCtx::new(),
                table,
                limiter: MemoryLimiter::new(spec.memory_bytes, budget),
                outbound: OutboundPolicy {
                    allowed_hosts: Arc::from(Vec::new()),
                    platform: None,
                    env_token: None,
                },
            },
        );
        store.limiter(|s| &mut s.limiter);
        let stats = store.data_mut().limiter.begin();
        let _lane = arm_deadline(&mut store, spec.timeout, &lanes);
        let instantiated = tokio::time::timeout(
            spec.timeout + TIMEOUT_GRACE,
            pre.instantiate_async(&mut store),
        )
        .await;
        let proxy = match instantiated {
            Ok(Ok(proxy)) => proxy,
            Ok(Err(e)) => return Err(start_failure(&e, &stats, spec.memory_bytes)),
            Err(_elapsed) => {
                return Err(ApiError::new(
                    ErrorCode::Timeout,
                    "the function's initialisation did not finish within its timeout",
                )
                .into())
            }
        };
        Ok(Self {
            store,
            proxy,
            stdout,
            stderr,
            max_log_bytes: spec.max_log_bytes,
            lanes,
            env_token: spec.token,
            reusable: true,
        })
    }
}

/// Why instantiating failed: out of instance slots or server memory (the host's
/// capacity, worth a retry), or the guest's own fault.
fn start_failure(err: &wasmtime::Error, stats: &MemoryStats, memory_bytes: u64) -> StartFailure {
    let limits = Limits {
        memory_bytes,
        timeout: Duration::ZERO,
        max_response_bytes: 0,
        max_log_bytes: 0,
    };
    let capacity = stats.hit_budget() || err.is::<wasmtime::PoolConcurrencyLimitError>();
    let mut logs = Vec::new();
    let error = classify(err, stats, &limits, &mut logs);
    tracing::debug!("starting an environment failed: {err:#}");
    StartFailure { error, capacity }
}

impl Environment for HttpEnvironment {
    fn reusable(&self) -> bool {
        self.reusable
    }

    fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.total()
    }

    fn invoke(&mut self, invocation: Invocation) -> BoxFuture<'_, InvokeOutput> {
        Box::pin(self.run(invocation))
    }
}

impl HttpEnvironment {
    async fn run(&mut self, invocation: Invocation) -> InvokeOutput {
        // Until this invocation ends cleanly, the guest's state is in doubt.
        self.reusable = false;
        let Invocation {
            context,
            mut request,
            limits,
            allowed_hosts,
            platform: platform_calls,
            cancelled,
            stream,
            body,
        } = invocation;
        let store = &mut self.store;
        let stats = store.data_mut().limiter.begin();
        store.data_mut().outbound = OutboundPolicy {
            allowed_hosts,
            platform: platform_calls,
            env_token: self.env_token.clone(),
        };
        let lane = arm_deadline(store, limits.timeout, &self.lanes);

        let mut logs = Vec::new();
        let headers = request.headers_mut();
        if !headers.contains_key(hyper::header::HOST) {
            headers.insert(
                hyper::header::HOST,
                hyper::header::HeaderValue::from_static("localhost"),
            );
        }
        // Per-invocation facts travel with the request: a warm environment's variables
        // are those it started with.
        if let Ok(value) = hyper::header::HeaderValue::from_str(&context.request_id) {
            headers.insert(REQUEST_ID, value);
        }
        headers.insert(
            DEADLINE_MS,
            hyper::header::HeaderValue::from(context.deadline_ms),
        );
        let (response_tx, response_rx) = tokio::sync::oneshot::channel();
        let incoming = match body {
            // The guest reads the body as it arrives.
            Some(body) => store.data_mut().http().new_incoming_request(
                Scheme::Http,
                request.map(|_| {
                    body.map_err(|e| match e {
                        crate::RequestBodyError::TooLarge(limit) => {
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
                        }
                        crate::RequestBodyError::Broken => {
                            wasmtime_wasi_http::Error::ConnectionTerminated
                        }
                    })
                }),
            ),
            None => store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, request.map(Full::new)),
        };
        let prepared = incoming.and_then(|req| {
            Ok((
                req,
                store.data_mut().http().new_response_outparam(response_tx)?,
            ))
        });
        let (req, out) = match prepared {
            Ok(handles) => handles,
            Err(e) => {
                return InvokeOutput {
                    result: Err(ApiError::bad_request(format!(
                        "request cannot be passed to the function: {e}"
                    ))),
                    peak_memory_bytes: 0,
                    cpu_time: Duration::ZERO,
                    logs,
                    streamed_bytes: None,
                }
            }
        };

        // The guest and the host's reading of its response run concurrently in this one
        // task: the guest may still be streaming the body after handing over the response
        // head. No extra task means no cross-thread hand-offs on the hot path, and
        // dropping this future (timeout, caller gone) stops the guest with it.
        let proxy = &self.proxy;
        let guest = async move {
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut *store, req, out)
                .await
        };
        let max_body = limits.max_response_bytes;
        let sent = Streamed::default();
        let mut cpu_time = Duration::ZERO;
        let outcome = {
            let exchanged = std::pin::pin!(exchange(guest, response_rx, max_body, stream, &sent));
            let timed = std::pin::pin!(tokio::time::timeout(
                limits.timeout + TIMEOUT_GRACE,
                metered(exchanged, &mut cpu_time, Some(&lane)),
            ));
            unless_cancelled(timed, cancelled).await
        };

        let result = match outcome {
            None => Err(caller_gone(&mut logs)),
            Some(Ok(Ok(Answer::Buffered(response)))) => {
                self.reusable = true;
                Ok(response)
            }
            Some(Ok(Ok(Answer::Streamed(response)))) => {
                self.reusable = true;
                Ok(response)
            }
            Some(Ok(Err(Failure::ClientGone))) => Err(caller_gone(&mut logs)),
            Some(Err(_elapsed)) => Err(timed_out(&mut logs, &limits)),
            Some(Ok(Err(Failure::TooLarge))) => Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("function response body exceeds the limit of {max_body} bytes"),
            )),
            Some(Ok(Err(Failure::ErrorCode(code)))) => Err(guest_failure(
                format!("function answered with error {code:?}"),
                &stats,
                &limits,
                &mut logs,
            )),
            Some(Ok(Err(Failure::Guest(Ok(()))))) => Err(guest_failure(
                "function returned without setting a response (response-outparam::set was never called)".to_owned(),
                &stats,
                &limits,
                &mut logs,
            )),
            Some(Ok(Err(Failure::Guest(Err(e))))) => {
                Err(classify(&e, &stats, &limits, &mut logs))
            }
        };
        let mut all_logs = Vec::new();
        drain_logs(
            &self.stdout,
            LogStream::Stdout,
            self.max_log_bytes,
            &mut all_logs,
        );
        drain_logs(
            &self.stderr,
            LogStream::Stderr,
            self.max_log_bytes,
            &mut all_logs,
        );
        all_logs.append(&mut logs);
        // The live token and lineage go with the invocation, not with the environment.
        self.store.data_mut().outbound.platform = None;
        InvokeOutput {
            result,
            peak_memory_bytes: stats.peak_bytes(),
            cpu_time,
            logs: all_logs,
            streamed_bytes: sent.bytes(),
        }
    }
}

/// Whether one instance of a component can serve a second request. Some toolchains'
/// runtimes keep per-request state they never reset (componentize-js 0.23's
/// StarlingMonkey answers a second request with "respondWith can't be called twice");
/// deployed as reusable, every warm call of theirs would fail. So at deploy time the
/// component serves `GET /` twice on one instance, with no environment, no outbound
/// access and a 256 MiB cap: if the first call answers and the second does not, its
/// environments are single-use. Anything inconclusive (the first call failing too, the
/// probe not finishing in time) counts as reusable, as the function's own fault would.
/// Blocking: called by `Runtime::prepare`.
pub(crate) fn probe_reuse(pre: &ProxyPre<HttpState>, lanes: &CpuLanes) -> bool {
    let probe = async {
        let spec = EnvironmentSpec {
            env: Vec::new(),
            memory_bytes: 256 << 20,
            max_log_bytes: 4 << 10,
            timeout: Duration::from_secs(5),
            token: None,
            allowed_hosts: Vec::new(),
        };
        let Ok(mut env) = HttpEnvironment::start(pre, spec, None, lanes.clone()).await else {
            return true;
        };
        let mut answers = Vec::new();
        for _ in 0..2 {
            let output = env.run(probe_invocation()).await;
            answers.push(output.result.is_ok());
        }
        !answers[0] || answers[1]
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(probe),
        Err(_) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(probe),
            Err(_) => true,
        },
    }
}

fn probe_invocation() -> Invocation {
    Invocation {
        context: crate::InvocationContext {
            request_id: "deploy-probe".into(),
            function: String::new(),
            version: 0,
            event_type: "probe",
            attempt: 1,
            traceparent: String::new(),
            deadline_ms: 0,
        },
        request: hyper::Request::builder()
            .uri("/")
            .header("cirrus-probe", "reuse")
            .body(bytes::Bytes::new())
            .unwrap_or_default(),
        limits: Limits {
            memory_bytes: 256 << 20,
            timeout: Duration::from_secs(5),
            max_response_bytes: 1 << 20,
            max_log_bytes: 4 << 10,
        },
        allowed_hosts: Arc::from(Vec::new()),
        platform: None,
        cancelled: None,
        stream: None,
        body: None,
    }
}

enum Failure {
    ErrorCode(HttpErrorCode),
    TooLarge,
    Guest(wasmtime::Result<()>),
    /// The client stopped taking a streamed response.
    ClientGone,
}

type ResponseHead =
    Result<hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>, HttpErrorCode>;

/// How the answer left: whole, or through the caller's stream (with its length).
enum Answer {
    Buffered(hyper::Response<bytes::Bytes>),
    /// The body went through the caller's stream.
    Streamed(hyper::Response<bytes::Bytes>),
}

/// Where the body goes: collected, or (once streaming began) to the caller.
struct Sink<'a> {
    stream: Option<crate::ResponseStream>,
    /// What went out through the stream, kept outside the exchange so a timeout or an
    /// error still meters it.
    sent: &'a Streamed,
    /// Set once the head went out; the body follows piece by piece.
    streaming: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    collected: Vec<bytes::Bytes>,
    total: usize,
    max_body: usize,
}

/// Whether a response began streaming, and how many body bytes went out that way.
#[derive(Default)]
struct Streamed {
    began: std::sync::atomic::AtomicBool,
    bytes: std::sync::atomic::AtomicU64,
}

impl Streamed {
    fn bytes(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        self.began.load(Relaxed).then(|| self.bytes.load(Relaxed))
    }
}

impl Sink<'_> {
    /// Sends the head and what was collected so far; the rest goes out as it comes.
    async fn start_streaming(
        &mut self,
        parts: &hyper::http::response::Parts,
    ) -> Result<(), Failure> {
        let Some(stream) = self.stream.take() else {
            return Ok(());
        };
        if stream
            .head
            .send((parts.status, parts.headers.clone()))
            .is_err()
        {
            return Err(Failure::ClientGone);
        }
        self.sent
            .began
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for piece in std::mem::take(&mut self.collected) {
            let n = piece.len() as u64;
            stream
                .body
                .send(piece)
                .await
                .map_err(|_| Failure::ClientGone)?;
            self.sent
                .bytes
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        self.streaming = Some(stream.body);
        Ok(())
    }

    async fn push(&mut self, piece: bytes::Bytes) -> Result<(), Failure> {
        self.total += piece.len();
        if self.total > self.max_body {
            return Err(Failure::TooLarge);
        }
        match &self.streaming {
            // Awaiting the send holds the guest back (it runs in this same task): a
            // slow reader slows the writer, nothing piles up.
            Some(tx) => {
                let n = piece.len() as u64;
                tx.send(piece).await.map_err(|_| Failure::ClientGone)?;
                self.sent
                    .bytes
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            None => {
                self.collected.push(piece);
                Ok(())
            }
        }
    }
}

/// Drives the guest until it has answered, its body is read (within `max_body`) and it
/// has returned. With a `stream`, a body still being written [`crate::STREAM_AFTER`]
/// after the head is handed over as it is written.
async fn exchange(
    guest: impl Future<Output = wasmtime::Result<()>>,
    mut head: tokio::sync::oneshot::Receiver<ResponseHead>,
    max_body: usize,
    stream: Option<crate::ResponseStream>,
    sent: &Streamed,
) -> Result<Answer, Failure> {
    tokio::pin!(guest);
    let mut finished = None;
    let head = tokio::select! {
        head = &mut head => head.ok(),
        result = &mut guest => {
            finished = Some(result);
            // It may have answered just before returning.
            head.try_recv().ok()
        }
    };
    let response = match head {
        Some(Ok(response)) => response,
        Some(Err(code)) => return Err(Failure::ErrorCode(code)),
        None => {
            let result = match finished {
                Some(result) => result,
                None => guest.await,
            };
            return Err(Failure::Guest(result));
        }
    };
    let (parts, mut body) = response.into_parts();
    let switch = tokio::time::sleep(crate::STREAM_AFTER);
    tokio::pin!(switch);
    let mut sink = Sink {
        stream,
        sent,
        streaming: None,
        collected: Vec::new(),
        total: 0,
        max_body,
    };
    let complete = loop {
        tokio::select! {
            frame = body.frame() => match frame {
                None => break true,
                Some(Ok(frame)) => {
                    if let Ok(piece) = frame.into_data() {
                        sink.push(piece).await?;
                    }
                }
                // The body broke off: the guest's own result says why.
                Some(Err(_)) => break false,
            },
            () = &mut switch, if sink.stream.is_some() => sink.start_streaming(&parts).await?,
            result = &mut guest, if finished.is_none() => finished = Some(result),
        }
    };
    let result = match finished {
        Some(result) => result,
        None => guest.await,
    };
    match (complete, result) {
        (true, Ok(())) => Ok(match sink.streaming {
            Some(_) => Answer::Streamed(hyper::Response::from_parts(parts, bytes::Bytes::new())),
            None => Answer::Buffered(hyper::Response::from_parts(
                parts,
                sink.collected.concat().into(),
            )),
        }),
        (_, Err(e)) => Err(Failure::Guest(Err(e))),
        (false, Ok(())) => Err(Failure::Guest(Err(wasmtime::Error::msg(
            "the response body was cut off before its end",
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_never_reach_a_guest_and_the_rule_is_made_once() {
        let mut policy = OutboundPolicy {
            allowed_hosts: Vec::new().into(),
            platform: None,
            env_token: None,
        };
        let mut headers = hyper::HeaderMap::new();
        for (name, value) in [
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic eA=="),
            ("upgrade", "websocket"),
            ("content-type", "text/plain"),
            ("x-kept", "yes"),
        ] {
            headers.insert(
                hyper::header::HeaderName::from_static(name),
                hyper::header::HeaderValue::from_static(value),
            );
        }
        let seen = wasmtime_wasi_http::FieldMap::new_immutable(&mut policy, headers);
        let mut names: Vec<&str> = seen.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-kept"]);

        // The filter handed to wasmtime's p3 paths is the same rule, and the same one
        // each time rather than a closure allocated per header.
        let filter = policy.forbidden_header_filter();
        assert!(Arc::ptr_eq(&filter, &policy.forbidden_header_filter()));
        for name in &wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS {
            assert!(filter(name) && policy.is_forbidden_header(name), "{name}");
        }
        assert!(!filter(&hyper::header::CONTENT_TYPE));
    }

    #[test]
    fn outbound_policy_matches_hosts_and_exact_authorities() {
        let policy = OutboundPolicy {
            allowed_hosts: vec![
                "api.example.com".to_owned(),
                "10.0.0.1:8443".to_owned(),
                "[::1]".to_owned(),
                "secure.example.com:443".to_owned(),
            ]
            .into(),
            platform: None,
            env_token: None,
        };
        let allows = |u: &str| policy.allows(&u.parse().unwrap());
        assert!(allows("https://api.example.com/x"));
        assert!(allows("http://API.example.com:8080/x"));
        assert!(allows("https://10.0.0.1:8443/"));
        assert!(!allows("https://10.0.0.1:9000/"));
        assert!(allows("http://[::1]:3000/"));
        assert!(!allows("https://evil.example.com/"));
        assert!(!allows("/relative"));
        assert!(allows("https://secure.example.com/"));
        assert!(!allows("http://secure.example.com/"));
        assert!(policy.allows_host("secure.example.com", 443));
        assert!(policy.allows_host("::1", 22));
        let none = OutboundPolicy {
            allowed_hosts: Vec::new().into(),
            platform: None,
            env_token: None,
        };
        assert!(!none.allows(&"https://api.example.com/".parse().unwrap()));
    }

    #[test]
    fn a_warm_environments_stand_in_token_is_replaced_by_the_invocations() {
        let policy = OutboundPolicy {
            allowed_hosts: Vec::new().into(),
            platform: None,
            env_token: Some("environment.abc".to_owned()),
        };
        let platform = PlatformCalls {
            authority: "127.0.0.1:8080".to_owned(),
            headers: Vec::new(),
            token: Some("live".to_owned()),
        };
        for spelling in ["Bearer environment.abc", "bearer  environment.abc"] {
            let mut headers = hyper::HeaderMap::new();
            headers.insert("authorization", spelling.parse().unwrap());
            policy.refresh_token(&mut headers, &platform);
            assert_eq!(headers["authorization"], "Bearer live", "{spelling}");
        }
        // A credential the guest chose itself is not touched.
        let mut own = hyper::HeaderMap::new();
        own.insert("authorization", "Bearer mine".parse().unwrap());
        policy.refresh_token(&mut own, &platform);
        assert_eq!(own["authorization"], "Bearer mine");
    }

    #[test]
    fn calls_to_the_platform_are_recognised_under_its_loopback_names() {
        let policy = OutboundPolicy {
            allowed_hosts: Vec::new().into(),
            platform: Some(PlatformCalls {
                authority: "127.0.0.1:8080".to_owned(),
                headers: Vec::new(),
                token: None,
            }),
            env_token: None,
        };
        let platform = |u: &str| policy.is_platform(&u.parse().unwrap());
        assert!(platform("http://127.0.0.1:8080/fn/me"));
        assert!(platform("http://localhost:8080/fn/me"));
        assert!(platform("http://LOCALHOST:8080/"));
        assert!(platform("http://127.0.0.2:8080/"));
        assert!(platform("http://[::1]:8080/"));
        assert!(platform("http://0.0.0.0:8080/"));
        assert!(!platform("http://127.0.0.1:9000/"));
        assert!(!platform("http://127.0.0.1/"));
        assert!(!platform("http://api.example.com:8080/"));
        let on_80 = OutboundPolicy {
            allowed_hosts: Vec::new().into(),
            platform: Some(PlatformCalls {
                authority: "cirrus.internal:80".to_owned(),
                headers: Vec::new(),
                token: None,
            }),
            env_token: None,
        };
        assert!(on_80.is_platform(&"http://cirrus.internal/".parse().unwrap()));
        assert!(on_80.is_platform(&"http://localhost/".parse().unwrap()));
        assert!(!on_80.is_platform(&"https://cirrus.internal/".parse().unwrap()));
    }
}
