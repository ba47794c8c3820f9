//! Running one invocation of a `wasi:http/proxy` component.

use crate::limits::MemoryLimiter;
use crate::pipe::CappedPipe;
use crate::run::{
    arm_deadline, cancelled_error, classify, drain_logs, guest_failure, metered, platform,
    timeout_error, unless_cancelled, TIMEOUT_GRACE,
};
use crate::{Invocation, InvokeOutput, PlatformCalls};
use cirrus_api::{ApiError, ErrorCode, LogStream};
use http_body_util::{BodyExt, Full, Limited};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode as HttpErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Resources one invocation may hold at once; real handlers use a few dozen.
const MAX_RESOURCES: usize = 10_000;

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
struct OutboundPolicy {
    allowed_hosts: Arc<[String]>,
    platform: Option<PlatformCalls>,
}

impl OutboundPolicy {
    /// Whether `uri` names the platform: its own authority, or a loopback name with its
    /// port (the same server under another name, which a guest could use to pass as an
    /// outside caller).
    fn is_platform(&self, uri: &hyper::Uri) -> bool {
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

    /// An entry matches the host alone (any port) or `host:port` exactly.
    fn allows(&self, uri: &hyper::Uri) -> bool {
        let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
            return false;
        };
        self.allowed_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(authority.as_str()))
    }
}

impl WasiHttpHooks for OutboundPolicy {
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
        if self.is_platform(request.uri()) {
            if let Some(platform) = &self.platform {
                for (name, value) in &platform.headers {
                    request.headers_mut().insert(name.clone(), value.clone());
                }
            }
        }
        wasmtime_wasi_http::default_hooks().send_request(request, options, fut)
    }
}

pub(crate) async fn invoke(pre: &ProxyPre<HttpState>, invocation: Invocation) -> InvokeOutput {
    let Invocation {
        mut request,
        env,
        limits,
        allowed_hosts,
        platform: platform_calls,
        cancelled,
    } = invocation;
    let stdout = CappedPipe::logs(limits.max_log_bytes);
    let stderr = CappedPipe::logs(limits.max_log_bytes);
    let (limiter, stats) = MemoryLimiter::new(limits.memory_bytes);
    let wasi = WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .envs(&env)
        .build();
    let mut table = ResourceTable::new();
    // Host-side resources (headers, bodies, pollables) are memory the guest's cap does
    // not see; bound how many it may hold.
    table.set_max_capacity(MAX_RESOURCES);
    let mut store = Store::new(
        pre.engine(),
        HttpState {
            wasi,
            http: WasiHttpCtx::new(),
            table,
            limiter,
            outbound: OutboundPolicy {
                allowed_hosts,
                platform: platform_calls,
            },
        },
    );
    store.limiter(|s| &mut s.limiter);
    arm_deadline(&mut store, limits.timeout);

    let mut logs = Vec::new();
    if !request.headers().contains_key(hyper::header::HOST) {
        request.headers_mut().insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_static("localhost"),
        );
    }
    let (response_tx, response_rx) = tokio::sync::oneshot::channel();
    let prepared = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request.map(Full::new))
        .and_then(|req| {
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
            }
        }
    };

    // The guest and the host's reading of its response run concurrently in this one
    // task: the guest may still be streaming the body after handing over the response
    // head. No extra task means no cross-thread hand-offs on the hot path, and dropping
    // this future (timeout, caller gone) stops the guest with it.
    let guest = async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
    };
    let max_body = limits.max_response_bytes;
    let mut cpu_time = Duration::ZERO;
    // Dropping the exchange (timeout, cancelled) drops the store: the guest stops, and so
    // do the outgoing requests it is still waiting on.
    let outcome = unless_cancelled(
        tokio::time::timeout(
            limits.timeout + TIMEOUT_GRACE,
            metered(exchange(guest, response_rx, max_body), &mut cpu_time),
        ),
        cancelled,
    )
    .await;

    let result = match outcome {
        None => {
            platform(&mut logs, "cancelled: the caller went away".to_owned());
            Err(cancelled_error())
        }
        Some(Ok(Ok(response))) => Ok(response),
        Some(Err(_elapsed)) => {
            platform(
                &mut logs,
                format!(
                    "timed out after {}",
                    cirrus_api::duration::format(limits.timeout)
                ),
            );
            Err(timeout_error(&limits))
        }
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
        Some(Ok(Err(Failure::Guest(Err(e))))) => Err(classify(&e, &stats, &limits, &mut logs)),
    };
    let mut all_logs = Vec::new();
    drain_logs(
        &stdout,
        LogStream::Stdout,
        limits.max_log_bytes,
        &mut all_logs,
    );
    drain_logs(
        &stderr,
        LogStream::Stderr,
        limits.max_log_bytes,
        &mut all_logs,
    );
    all_logs.append(&mut logs);
    InvokeOutput {
        result,
        peak_memory_bytes: stats.peak_bytes(),
        cpu_time,
        logs: all_logs,
    }
}

enum Failure {
    ErrorCode(HttpErrorCode),
    TooLarge,
    Guest(wasmtime::Result<()>),
}

type ResponseHead =
    Result<hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>, HttpErrorCode>;

/// Drives the guest until it has answered, its body is read (within `max_body`) and it
/// has returned.
async fn exchange(
    guest: impl Future<Output = wasmtime::Result<()>>,
    mut head: tokio::sync::oneshot::Receiver<ResponseHead>,
    max_body: usize,
) -> Result<hyper::Response<bytes::Bytes>, Failure> {
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
    let (parts, body) = response.into_parts();
    let collect = Limited::new(body, max_body).collect();
    tokio::pin!(collect);
    let body = loop {
        tokio::select! {
            body = &mut collect => break body,
            result = &mut guest, if finished.is_none() => finished = Some(result),
        }
    };
    let body = match body {
        Ok(body) => Some(body.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(Failure::TooLarge)
        }
        // The body broke off: the guest's own result says why.
        Err(_) => None,
    };
    let result = match finished {
        Some(result) => result,
        None => guest.await,
    };
    match (body, result) {
        (Some(body), Ok(())) => Ok(hyper::Response::from_parts(parts, body)),
        (_, Err(e)) => Err(Failure::Guest(Err(e))),
        (None, Ok(())) => Err(Failure::Guest(Err(wasmtime::Error::msg(
            "the response body was cut off before its end",
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_policy_matches_hosts_and_exact_authorities() {
        let policy = OutboundPolicy {
            allowed_hosts: vec![
                "api.example.com".to_owned(),
                "10.0.0.1:8443".to_owned(),
                "[::1]".to_owned(),
            ]
            .into(),
            platform: None,
        };
        let allows = |u: &str| policy.allows(&u.parse().unwrap());
        assert!(allows("https://api.example.com/x"));
        assert!(allows("http://API.example.com:8080/x"));
        assert!(allows("https://10.0.0.1:8443/"));
        assert!(!allows("https://10.0.0.1:9000/"));
        assert!(allows("http://[::1]:3000/"));
        assert!(!allows("https://evil.example.com/"));
        assert!(!allows("/relative"));
        let none = OutboundPolicy {
            allowed_hosts: Vec::new().into(),
            platform: None,
        };
        assert!(!none.allows(&"https://api.example.com/".parse().unwrap()));
    }

    #[test]
    fn calls_to_the_platform_are_recognised_under_its_loopback_names() {
        let policy = OutboundPolicy {
            allowed_hosts: Vec::new().into(),
            platform: Some(PlatformCalls {
                authority: "127.0.0.1:8080".to_owned(),
                headers: Vec::new(),
            }),
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
            }),
        };
        assert!(on_80.is_platform(&"http://cirrus.internal/".parse().unwrap()));
        assert!(on_80.is_platform(&"http://localhost/".parse().unwrap()));
        assert!(!on_80.is_platform(&"https://cirrus.internal/".parse().unwrap()));
    }
}
