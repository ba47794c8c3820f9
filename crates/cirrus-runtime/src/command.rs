//! Running one invocation of a WASI preview-1 command module, CGI-style: the event body
//! on stdin, the response on stdout, logs on stderr, metadata in the environment.

use crate::executor::{BoxFuture, Environment, EnvironmentSpec, StartFailure};
use crate::limits::{MemoryBudget, MemoryLimiter};
use crate::pipe::CappedPipe;
use crate::run::{
    arm_deadline, caller_gone, classify, drain_logs, guest_failure, metered, timed_out,
    unless_cancelled, CpuLanes, TIMEOUT_GRACE,
};
use crate::{Invocation, InvocationContext, InvokeOutput, Limits};
use bytes::Bytes;
use cirrus_api::{ApiError, ErrorCode, LogStream};
use wasmtime::{InstancePre, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

pub struct CommandState {
    pub(crate) wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
}

/// An instantiated command module waiting for its one call: `_start` runs once per
/// instance, so this environment serves a single invocation. Instantiating ahead of the
/// call (and of the request, whose WASI context is put in just before `_start`) is what
/// lets the scaler keep one ready.
pub(crate) struct CommandEnvironment {
    store: Store<CommandState>,
    instance: wasmtime::Instance,
    env: Vec<(String, String)>,
    max_log_bytes: usize,
    lanes: CpuLanes,
    used: bool,
}

impl CommandEnvironment {
    pub(crate) async fn start(
        pre: &InstancePre<CommandState>,
        spec: EnvironmentSpec,
        budget: Option<MemoryBudget>,
        lanes: CpuLanes,
    ) -> Result<Self, StartFailure> {
        // No WASI call happens before `_start`: the real context replaces this one then.
        let wasi = WasiCtxBuilder::new().build_p1();
        let limiter = MemoryLimiter::new(spec.memory_bytes, budget);
        let mut store = Store::new(pre.module().engine(), CommandState { wasi, limiter });
        store.limiter(|s| &mut s.limiter);
        let stats = store.data_mut().limiter.begin();
        let _lane = arm_deadline(&mut store, spec.timeout, &lanes);
        let instance = match pre.instantiate_async(&mut store).await {
            Ok(instance) => instance,
            Err(e) => {
                let limits = Limits {
                    memory_bytes: spec.memory_bytes,
                    timeout: spec.timeout,
                    max_response_bytes: 0,
                    max_log_bytes: 0,
                };
                let capacity = stats.hit_budget() || e.is::<wasmtime::PoolConcurrencyLimitError>();
                let error = classify(&e, &stats, &limits, &mut Vec::new());
                return Err(StartFailure { error, capacity });
            }
        };
        let mut env = spec.env;
        if let Some(token) = spec.token {
            env.push(("CIRRUS_TOKEN".into(), token));
        }
        Ok(Self {
            store,
            instance,
            env,
            max_log_bytes: spec.max_log_bytes,
            lanes,
            used: false,
        })
    }

    async fn run(&mut self, invocation: Invocation) -> InvokeOutput {
        self.used = true;
        let Invocation {
            context,
            request,
            limits,
            platform: platform_calls,
            cancelled,
            ..
        } = invocation;
        let stdout = CappedPipe::response(limits.max_response_bytes);
        let stderr = CappedPipe::logs(self.max_log_bytes);
        let mut env = self.env.clone();
        // The environment was started with another invocation's token, if any.
        if let Some(token) = platform_calls.and_then(|p| p.token) {
            env.retain(|(k, _)| k != "CIRRUS_TOKEN");
            env.push(("CIRRUS_TOKEN".into(), token));
        }
        cgi_env(&context, &request, &mut env);
        let wasi = WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(request.into_body()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .envs(&env)
            .args(&[context.function.as_str()])
            .build_p1();
        let store = &mut self.store;
        store.data_mut().wasi = wasi;
        let stats = store.data_mut().limiter.begin();
        let lane = arm_deadline(store, limits.timeout, &self.lanes);

        let instance = self.instance;
        let run = async move {
            let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
            start.call_async(&mut *store, ()).await
        };
        let mut cpu_time = std::time::Duration::ZERO;
        let finished = {
            let run = std::pin::pin!(run);
            let timed = std::pin::pin!(tokio::time::timeout(
                limits.timeout + TIMEOUT_GRACE,
                metered(run, &mut cpu_time, Some(&lane)),
            ));
            unless_cancelled(timed, cancelled).await
        };

        let mut logs = Vec::new();
        let result = match finished {
            None => Err(caller_gone(&mut logs)),
            Some(Err(_elapsed)) => Err(timed_out(&mut logs, &limits)),
            Some(Ok(run)) => {
                let exit = match run {
                    Ok(()) => Ok(0),
                    Err(e) => match e.downcast_ref::<I32Exit>() {
                        Some(I32Exit(code)) => Ok(*code),
                        None => Err(e),
                    },
                };
                match exit {
                    _ if stdout.overflowed() => Err(ApiError::new(
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "function output exceeds the response limit of {} bytes",
                            limits.max_response_bytes
                        ),
                    )),
                    Ok(0) => Ok(cgi_response(stdout.contents())),
                    Ok(code) => Err(guest_failure(
                        format!("function exited with status {code} (its stderr is in the logs)"),
                        &stats,
                        &limits,
                        &mut logs,
                    )),
                    Err(e) => Err(classify(&e, &stats, &limits, &mut logs)),
                }
            }
        };
        let mut all_logs = Vec::new();
        drain_logs(
            &stderr,
            LogStream::Stderr,
            self.max_log_bytes,
            &mut all_logs,
        );
        all_logs.append(&mut logs);
        InvokeOutput {
            result,
            peak_memory_bytes: stats.peak_bytes(),
            cpu_time,
            logs: all_logs,
            streamed_bytes: None,
        }
    }
}

impl Environment for CommandEnvironment {
    fn invoke(&mut self, invocation: Invocation) -> BoxFuture<'_, InvokeOutput> {
        Box::pin(self.run(invocation))
    }

    fn reusable(&self) -> bool {
        !self.used
    }

    fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.total()
    }
}

/// A command module's view of the invocation, CGI-style: its metadata in `CIRRUS_*`
/// and the request's in `REQUEST_METHOD`, `PATH_INFO`, `QUERY_STRING`, `CONTENT_*`,
/// `HTTP_*`.
fn cgi_env(
    context: &InvocationContext,
    request: &hyper::Request<Bytes>,
    env: &mut Vec<(String, String)>,
) {
    env.push(("CIRRUS_REQUEST_ID".into(), context.request_id.clone()));
    env.push(("CIRRUS_EVENT_TYPE".into(), context.event_type.to_owned()));
    env.push(("REQUEST_METHOD".into(), request.method().to_string()));
    env.push(("PATH_INFO".into(), request.uri().path().to_owned()));
    env.push((
        "QUERY_STRING".into(),
        request.uri().query().unwrap_or("").to_owned(),
    ));
    env.push(("CONTENT_LENGTH".into(), request.body().len().to_string()));
    if let Some(ct) = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        env.push(("CONTENT_TYPE".into(), ct.to_owned()));
    }
    for (name, value) in request.headers() {
        if name == hyper::header::CONTENT_TYPE || name == hyper::header::CONTENT_LENGTH {
            continue;
        }
        // UTF-8 values (an MQTT topic in `ce-subject`) as they are; other bytes are
        // not text an environment variable can hold.
        if let Ok(value) = std::str::from_utf8(value.as_bytes()) {
            let var = format!(
                "HTTP_{}",
                name.as_str().to_ascii_uppercase().replace('-', "_")
            );
            env.push((var, value.to_owned()));
        }
    }
}

/// A command's stdout is the response body. As in CGI, it may start with a header block
/// (`Content-Type:` or `Status:` among `Name: value` lines, then a blank line); otherwise
/// the content type is guessed: JSON, UTF-8 text, or bytes.
pub(crate) fn cgi_response(stdout: Bytes) -> hyper::Response<Bytes> {
    if let Some((status, headers, body)) = parse_cgi_headers(&stdout) {
        let mut response = hyper::Response::new(stdout.slice(body..));
        *response.status_mut() = status;
        for (name, value) in headers {
            response.headers_mut().append(name, value);
        }
        return response;
    }
    let content_type = guess_content_type(&stdout);
    let mut response = hyper::Response::new(stdout);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

type CgiHead = (
    hyper::StatusCode,
    Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    usize,
);

fn parse_cgi_headers(out: &[u8]) -> Option<CgiHead> {
    let mut status = hyper::StatusCode::OK;
    let mut headers = Vec::new();
    let mut pos = 0;
    let mut recognised = false;
    loop {
        let end = out[pos..].iter().position(|&b| b == b'\n')? + pos;
        let line = out[pos..end].strip_suffix(b"\r").unwrap_or(&out[pos..end]);
        pos = end + 1;
        if line.is_empty() {
            break;
        }
        let text = std::str::from_utf8(line).ok()?;
        let (name, value) = text.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next()?.parse().ok()?;
            status = hyper::StatusCode::from_u16(code).ok()?;
            recognised = true;
        } else {
            let name = hyper::header::HeaderName::from_bytes(name.as_bytes()).ok()?;
            recognised |= name == hyper::header::CONTENT_TYPE || name == hyper::header::LOCATION;
            headers.push((name, hyper::header::HeaderValue::from_str(value).ok()?));
        }
    }
    recognised.then_some((status, headers, pos))
}

fn guess_content_type(body: &[u8]) -> &'static str {
    let trimmed = body.trim_ascii_start();
    if (trimmed.starts_with(b"{") || trimmed.starts_with(b"[")) && serde_json_like(trimmed) {
        "application/json"
    } else if std::str::from_utf8(body).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// Cheap check that a body that opens like JSON also closes like JSON.
fn serde_json_like(body: &[u8]) -> bool {
    let end = body.trim_ascii_end();
    matches!(
        (end.first(), end.last()),
        (Some(b'{'), Some(b'}')) | (Some(b'['), Some(b']'))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_output_is_the_body() {
        let r = cgi_response(Bytes::from_static(b"hello\n"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(&r.body()[..], b"hello\n");
        let r = cgi_response(Bytes::from_static(b"{\"a\":1}\n"));
        assert_eq!(r.headers()["content-type"], "application/json");
    }

    #[test]
    fn cgi_header_block_sets_status_and_headers() {
        let r = cgi_response(Bytes::from_static(
            b"Status: 201 Created\r\nContent-Type: text/csv\r\nX-A: b\r\n\r\na,b\n",
        ));
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["content-type"], "text/csv");
        assert_eq!(r.headers()["x-a"], "b");
        assert_eq!(&r.body()[..], b"a,b\n");
    }

    #[test]
    fn text_that_merely_has_a_colon_is_not_headers() {
        let r = cgi_response(Bytes::from_static(b"Note: this is text\n\nmore\n"));
        assert_eq!(&r.body()[..], b"Note: this is text\n\nmore\n");
    }
}
