//! Running one invocation of a WASI preview-1 command module, CGI-style: the event body
//! on stdin, the response on stdout, logs on stderr, metadata in the environment.

use crate::limits::MemoryLimiter;
use crate::pipe::CappedPipe;
use crate::run::{
    arm_deadline, cancelled_error, classify, drain_logs, guest_failure, metered, platform,
    timeout_error, unless_cancelled, TIMEOUT_GRACE,
};
use crate::{Invocation, InvokeOutput};
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

pub(crate) async fn invoke(
    pre: &InstancePre<CommandState>,
    invocation: Invocation,
) -> InvokeOutput {
    let Invocation {
        request,
        env,
        limits,
        cancelled,
        ..
    } = invocation;
    let stdout = CappedPipe::response(limits.max_response_bytes);
    let stderr = CappedPipe::logs(limits.max_log_bytes);
    let (limiter, stats) = MemoryLimiter::new(limits.memory_bytes);
    let program = env
        .iter()
        .find(|(k, _)| k == "CIRRUS_FUNCTION")
        .map_or("function", |(_, v)| v.as_str())
        .to_owned();
    let wasi = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(request.into_body()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .envs(&env)
        .args(&[program])
        .build_p1();
    let mut store = Store::new(pre.module().engine(), CommandState { wasi, limiter });
    store.limiter(|s| &mut s.limiter);
    arm_deadline(&mut store, limits.timeout);

    let run = async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    };
    let mut cpu_time = std::time::Duration::ZERO;
    let finished = unless_cancelled(
        tokio::time::timeout(limits.timeout + TIMEOUT_GRACE, metered(run, &mut cpu_time)),
        cancelled,
    )
    .await;

    let mut logs = Vec::new();
    let result = match finished {
        None => {
            platform(&mut logs, "cancelled: the caller went away".to_owned());
            Err(cancelled_error())
        }
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
