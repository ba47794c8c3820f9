//! stream-rust: a Cirrus function that streams its response as it writes it.
//!
//! - `GET /` (or `?chunks=N&interval_ms=M`): server-sent events, `N` events (10) `M`
//!   milliseconds (100) apart: `data: event I` each.
//! - `?forever`: events every `interval_ms`, never ending (the platform's timeout ends it).
//! - `?bytes=N[&pause_ms=M]`: `N` bytes of `x`, 4 KiB at a time, as fast as the client
//!   takes them (or `M` milliseconds apart).
//! - `POST ?echo`: the request body back, each piece as soon as it arrives.

use std::collections::HashMap;
use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::{OutputStream, StreamError};

/// wasi:io output streams accept at most 4096 bytes per blocking write.
const WRITE_CHUNK: usize = 4096;

struct Stream;

wasip2::http::proxy::export!(Stream);

fn query(request: &IncomingRequest) -> HashMap<String, String> {
    let path = request.path_with_query().unwrap_or_default();
    let Some((_, query)) = path.split_once('?') else {
        return HashMap::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn sleep_ms(ms: u64) {
    monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

/// Writes all of `data`; false once the client is gone.
fn write(out: &OutputStream, data: &[u8]) -> bool {
    data.chunks(WRITE_CHUNK)
        .all(|chunk| out.blocking_write_and_flush(chunk).is_ok())
}

impl wasip2::exports::http::incoming_handler::Guest for Stream {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let q = query(&request);
        let number = |name: &str, default: u64| {
            q.get(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let content_type = if q.contains_key("bytes") || q.contains_key("echo") {
            "application/octet-stream"
        } else {
            "text/event-stream"
        };
        let headers = Fields::from_list(&[
            ("content-type".to_owned(), content_type.as_bytes().to_vec()),
            ("cache-control".to_owned(), b"no-cache".to_vec()),
        ])
        .expect("valid headers");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let out = body.write().expect("stream is taken once");

        if q.contains_key("echo") {
            if let Ok(incoming) = request.consume() {
                if let Ok(input) = incoming.stream() {
                    loop {
                        match input.blocking_read(65536) {
                            Ok(piece) => {
                                if !write(&out, &piece) {
                                    break;
                                }
                            }
                            Err(StreamError::Closed) | Err(StreamError::LastOperationFailed(_)) => {
                                break
                            }
                        }
                    }
                    drop(input);
                }
                let _ = IncomingBody::finish(incoming);
            }
        } else if q.contains_key("bytes") {
            let mut left = number("bytes", 0) as usize;
            let pause = number("pause_ms", 0);
            let block = vec![b'x'; WRITE_CHUNK];
            while left > 0 {
                if pause > 0 {
                    sleep_ms(pause);
                }
                let n = left.min(WRITE_CHUNK);
                if out.blocking_write_and_flush(&block[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        } else {
            let interval = number("interval_ms", 100);
            let chunks = if q.contains_key("forever") {
                u64::MAX
            } else {
                number("chunks", 10)
            };
            for i in 0..chunks {
                if i > 0 {
                    sleep_ms(interval);
                }
                if !write(&out, format!("data: event {i}\n\n").as_bytes()) {
                    break;
                }
            }
        }
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}
