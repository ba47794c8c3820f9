//! Streamed responses and request bodies, end to end: a component writing its response
//! over time (examples/stream-rust) reaches the client as it writes; limits, timeouts,
//! slow and vanishing clients are handled, and metering counts what was streamed.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{repo, Up};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn stream_wasm() -> String {
    repo("examples/stream-rust/stream.wasm")
        .to_str()
        .unwrap()
        .to_owned()
}

fn authority(up: &Up) -> String {
    up.url.trim_start_matches("http://").to_owned()
}

/// Sends a GET and reads the response head; the rest is left in the reader.
fn get(up: &Up, path: &str) -> (BufReader<TcpStream>, String) {
    let mut stream = TcpStream::connect(authority(up)).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    (reader, head)
}

/// Reads one chunk of a chunked body (`None` at the terminating chunk).
fn chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    reader.read_line(&mut size).unwrap();
    let size = usize::from_str_radix(size.trim(), 16)
        .unwrap_or_else(|_| panic!("not a chunk size: {size:?}"));
    let mut data = vec![0; size + 2];
    reader.read_exact(&mut data).unwrap();
    data.truncate(size);
    (size > 0).then_some(data)
}

fn records(up: &Up, function: &str) -> Vec<serde_json::Value> {
    up.cli_json(&["invocations", function, "--limit", "50"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The newest record of `function`, once written (records are batched).
fn newest_record(up: &Up, function: &str) -> serde_json::Value {
    for _ in 0..100 {
        if let Some(r) = records(up, function).into_iter().next() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no record of {function}");
}

#[test]
fn events_reach_the_client_as_the_guest_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    up.cli_ok(&["deploy", "sse", &stream_wasm()]);
    // Warm it: the measurement below is of streaming, not of a cold start.
    let warm = up.curl(&[&format!("{}/fn/sse?chunks=1", up.url)]);
    assert_eq!(warm, "data: event 0\n\n");

    // Ten events 100 ms apart: the first is there long before the last is written.
    let mut best_first = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let (mut reader, head) = get(&up, "/fn/sse?chunks=10&interval_ms=100");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        assert!(lower.contains("content-type: text/event-stream"), "{head}");
        assert!(lower.contains("cirrus-request-id: "), "{head}");
        let mut arrivals = Vec::new();
        let mut text = String::new();
        while let Some(data) = chunk(&mut reader) {
            arrivals.push(started.elapsed());
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        let expected: String = (0..10).map(|i| format!("data: event {i}\n\n")).collect();
        assert_eq!(text, expected);
        let first = arrivals[0];
        let last = *arrivals.last().unwrap();
        assert!(
            last - first >= Duration::from_millis(800),
            "the events arrived together ({first:?} .. {last:?}): the response was buffered"
        );
        best_first = best_first.min(first);
    }
    assert!(
        best_first <= Duration::from_millis(150),
        "the first event took {best_first:?}"
    );

    // Metering: the whole duration and every byte streamed.
    let record = newest_record(&up, "sse");
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["response_bytes"], 10 * "data: event 0\n\n".len());
    assert!(record["duration_ms"].as_f64().unwrap() >= 900.0, "{record}");
    assert!(record["billed_ms"].as_u64().unwrap() >= 900, "{record}");

    // A short answer stays a plain buffered one, with its length and timings.
    let head = up.curl(&[
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{}/fn/sse?bytes=10", up.url),
    ]);
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("content-length: 10") && lower.contains("cirrus-duration-ms"),
        "{head}"
    );
}

/// The server's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib << 10
}

#[test]
fn a_slow_reader_holds_the_guest_back_instead_of_growing_memory() {
    let dir = tempfile::tempdir().unwrap();
    let total: usize = 96 << 20;
    let up = Up::start(
        dir.path(),
        &["--max-response-bytes", &(128u64 << 20).to_string()],
    );
    up.cli_ok(&["deploy", "big", &stream_wasm(), "--timeout", "60s"]);
    up.curl(&[&format!("{}/fn/big?bytes=1", up.url)]);
    let before = rss_bytes(up.child.id());

    let (mut reader, head) = get(&up, &format!("/fn/big?bytes={total}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let first = chunk(&mut reader).unwrap();
    assert!(!first.is_empty());
    // The client stops reading. The guest can only have written what the buffers hold.
    std::thread::sleep(Duration::from_secs(2));
    let during = rss_bytes(up.child.id());
    assert!(
        during < before + (32 << 20),
        "the server grew from {} MiB to {} MiB for a reader that stopped",
        before >> 20,
        during >> 20
    );
    let live: serde_json::Value = serde_json::from_str(&up.curl(&[
        "-H",
        &format!(
            "Authorization: Bearer {}",
            std::fs::read_to_string(dir.path().join("admin.token"))
                .unwrap()
                .trim()
        ),
        &format!("{}/v1/status", up.url),
    ]))
    .unwrap();
    assert_eq!(
        live["in_flight"], 1,
        "the guest waits for its reader: {live}"
    );

    // Reading again, everything arrives.
    let mut received = first.len();
    while let Some(data) = chunk(&mut reader) {
        received += data.len();
    }
    assert_eq!(received, total);
    let record = newest_record(&up, "big");
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["response_bytes"], total as u64);
}

/// Reads a response to its end; whether it ended properly (the terminating chunk).
fn read_to_end(mut reader: BufReader<TcpStream>) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).unwrap_or(0) == 0 {
            return (body, false);
        }
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return (body, false);
        };
        if size == 0 {
            return (body, true);
        }
        let mut data = vec![0; size + 2];
        if reader.read_exact(&mut data).is_err() {
            return (body, false);
        }
        body.extend_from_slice(&data[..size]);
    }
}

#[test]
fn limits_hold_while_streaming_and_a_cut_stream_is_never_passed_off_as_complete() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &["--max-response-bytes", "65536"]);
    up.cli_ok(&["deploy", "forever", &stream_wasm(), "--timeout", "1s"]);
    up.cli_ok(&["deploy", "big", &stream_wasm()]);
    up.cli_ok(&[
        "deploy",
        "hello",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);

    // A guest that never finishes is cut at its timeout: the client has the events
    // written so far and a body without its terminating chunk.
    let started = Instant::now();
    let (reader, head) = get(&up, "/fn/forever?forever&interval_ms=100");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (body, complete) = read_to_end(reader);
    let took = started.elapsed();
    assert!(
        !complete,
        "a timed-out stream must not end like a complete one"
    );
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.starts_with("data: event 0\n\ndata: event 1\n\n"),
        "{text}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let record = newest_record(&up, "forever");
    assert_eq!(record["error_code"], "timeout", "{record}");
    // What did go out is metered.
    assert_eq!(record["response_bytes"], text.len(), "{record}");

    // The response cap holds for a streamed body too: a slow writer going past it is cut.
    let (reader, head) = get(&up, "/fn/big?bytes=200000&pause_ms=2");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (body, complete) = read_to_end(reader);
    assert!(!complete);
    assert!(body.len() <= 65536, "{} bytes passed the cap", body.len());
    let record = newest_record(&up, "big");
    assert_eq!(record["error_code"], "payload_too_large", "{record}");
    // A fast one is refused whole, before anything is sent.
    let answer = up.curl(&[
        "-w",
        "\n%{http_code}",
        &format!("{}/fn/big?bytes=200000", up.url),
    ]);
    assert!(answer.ends_with("\n413"), "{answer}");

    // A client that goes away stops the guest; the invocation is recorded as cancelled.
    {
        let (mut reader, _) = get(&up, "/fn/big?bytes=60000&pause_ms=20");
        chunk(&mut reader).unwrap();
    }
    let mut outcome = serde_json::Value::Null;
    for _ in 0..100 {
        outcome = newest_record(&up, "big")["error_code"].clone();
        if outcome == "cancelled" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(outcome, "cancelled");

    // Meanwhile and after, other functions answer.
    assert_eq!(
        up.cli_ok(&["invoke", "hello", "--data", "still here"]),
        "still here"
    );
}

#[test]
fn request_bodies_stream_into_the_guest_both_ways_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &["--max-request-bytes", "100000"]);
    up.cli_ok(&["deploy", "echo", &stream_wasm()]);
    let mut stream = TcpStream::connect(authority(&up)).unwrap();
    stream
        .write_all(b"POST /fn/echo?echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    // Each piece comes back before the next is sent: the guest reads the body as it
    // arrives and its answer streams back meanwhile.
    for i in 0..3 {
        let piece = format!("ping{i}");
        stream
            .write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes())
            .unwrap();
        if i == 0 {
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        let echoed = chunk(&mut reader).unwrap();
        assert_eq!(String::from_utf8(echoed).unwrap(), piece);
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    assert_eq!(chunk(&mut reader), None);
    let record = newest_record(&up, "echo");
    assert_eq!(record["request_bytes"], 15, "{record}");
    assert_eq!(record["response_bytes"], 15, "{record}");

    // A declared length over the limit is refused before the guest runs.
    let answer = up.curl(&[
        "-w",
        "\n%{http_code}",
        "--data-binary",
        &"x".repeat(100_001),
        &format!("{}/fn/echo?echo", up.url),
    ]);
    assert!(answer.ends_with("\n413"), "{answer}");
    assert!(
        answer.contains("request body exceeds the limit"),
        "{answer}"
    );
    // One sent without a length is cut where it passes the limit: the guest reads an
    // error there, and what it echoed stops short of it.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'y'; 300_000]).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-H", "Transfer-Encoding: chunked", "--data-binary"])
        .arg(format!("@{}", big.display()))
        .arg(format!("{}/fn/echo?echo", up.url))
        .output()
        .unwrap();
    assert!(
        out.stdout.len() <= 100_000,
        "{} bytes echoed",
        out.stdout.len()
    );
}

/// A Node.js handler in Lambda's streaming style: HTTP calls get a prelude (status 201,
/// its own headers), other events the raw stream; `?fail` breaks off mid-stream.
const NODE_STREAMING: &str = r#"
export const handler = awslambda.streamifyResponse(async (event, responseStream) => {
  const query = event.queryStringParameters || {};
  const http = Boolean(event.requestContext && event.requestContext.http);
  const out = http
    ? awslambda.HttpResponseStream.from(responseStream, {
        statusCode: 201,
        headers: { "content-type": "text/event-stream", "x-from": "node" },
      })
    : responseStream;
  for (let i = 0; i < 5; i++) {
    out.write(`data: event ${i}\n\n`);
    if (query.fail !== undefined || event.fail) throw new Error("it broke mid-stream");
    await new Promise((r) => setTimeout(r, 100));
  }
  out.end();
});
"#;

fn deploy_node_streaming(up: &Up, dir: &std::path::Path) {
    let zip = common::package(dir, "index.mjs", NODE_STREAMING.as_bytes());
    up.cli_ok(&[
        "deploy",
        "node-sse",
        zip.to_str().unwrap(),
        "--runtime",
        "nodejs20.x",
        "--handler",
        "index.handler",
    ]);
}

#[test]
fn native_handlers_stream_through_the_runtime_apis_streaming_mode() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), &[]);
    deploy_node_streaming(&up, dir.path());

    let started = Instant::now();
    let (mut reader, head) = get(&up, "/fn/node-sse");
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-from: node"), "{head}");
    assert!(lower.contains("content-type: text/event-stream"), "{head}");
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(data) = chunk(&mut reader) {
        arrivals.push(started.elapsed());
        text.push_str(std::str::from_utf8(&data).unwrap());
    }
    let expected: String = (0..5).map(|i| format!("data: event {i}\n\n")).collect();
    assert_eq!(text, expected);
    assert!(
        *arrivals.last().unwrap() - arrivals[0] >= Duration::from_millis(300),
        "{arrivals:?}"
    );
    let record = newest_record(&up, "node-sse");
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["response_bytes"], expected.len());

    // An error after the first bytes comes as the runtime's trailers: the client's body
    // is cut, the record has the handler's error.
    let (reader, head) = get(&up, "/fn/node-sse?fail");
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let (body, complete) = read_to_end(reader);
    assert!(!complete);
    assert_eq!(String::from_utf8(body).unwrap(), "data: event 0\n\n");
    let record = newest_record(&up, "node-sse");
    assert_eq!(record["error_code"], "function_error", "{record}");
    assert!(
        record["error_message"]
            .as_str()
            .unwrap()
            .contains("it broke mid-stream"),
        "{record}"
    );
    // The environment is still good for the next call.
    assert!(up
        .curl(&[&format!("{}/fn/node-sse", up.url)])
        .ends_with("data: event 4\n\n"));
}

const STREAM_WITH_BOTO3: &str = r#"
import boto3, configparser, json, sys, time
from botocore.config import Config
url, creds, name, payload = sys.argv[1:5]
keys = configparser.ConfigParser(); keys.read(creds)
lam = boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
    aws_access_key_id=keys["default"]["aws_access_key_id"],
    aws_secret_access_key=keys["default"]["aws_secret_access_key"],
    config=Config(retries={"max_attempts": 1}))
started = time.time()
r = lam.invoke_with_response_stream(FunctionName=name, Payload=payload.encode())
chunks, arrivals, complete = [], [], None
for event in r["EventStream"]:
    if "PayloadChunk" in event:
        chunks.append(event["PayloadChunk"]["Payload"].decode())
        arrivals.append(time.time() - started)
    if "InvokeComplete" in event:
        complete = event["InvokeComplete"]
print(json.dumps({"status": r["StatusCode"], "version": r.get("ExecutedVersion"),
    "text": "".join(chunks), "pieces": len(chunks),
    "spread": (arrivals[-1] - arrivals[0]) if arrivals else 0, "complete": complete}))
"#;

fn stream_with_boto3(up: &Up, name: &str, payload: &str) -> serde_json::Value {
    let credentials = up.data_dir.join("s3-credentials");
    common::python_json(STREAM_WITH_BOTO3, &[&up.url, &credentials, &name, &payload])
}

#[test]
fn invoke_with_response_stream_answers_boto3_as_lambda_does() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), &[]);
    up.cli_ok(&["deploy", "sse", &stream_wasm()]);
    deploy_node_streaming(&up, dir.path());

    // A component writing over time: several chunks, spread out, then InvokeComplete.
    let seen = stream_with_boto3(&up, "sse", "{}");
    let expected: String = (0..10).map(|i| format!("data: event {i}\n\n")).collect();
    assert_eq!(seen["text"], expected, "{seen}");
    assert!(seen["pieces"].as_u64().unwrap() >= 5, "{seen}");
    assert!(seen["spread"].as_f64().unwrap() >= 0.5, "{seen}");
    assert_eq!(seen["complete"], serde_json::json!({}), "{seen}");
    assert_eq!(seen["version"], "$LATEST");

    // A Node.js handler streaming its raw response.
    let seen = stream_with_boto3(&up, "node-sse", "{}");
    let expected: String = (0..5).map(|i| format!("data: event {i}\n\n")).collect();
    assert_eq!(seen["text"], expected, "{seen}");
    assert_eq!(seen["complete"], serde_json::json!({}), "{seen}");
    // Failing mid-stream: what was written, then InvokeComplete with the error.
    let seen = stream_with_boto3(&up, "node-sse", r#"{"fail": true}"#);
    assert_eq!(seen["text"], "data: event 0\n\n", "{seen}");
    assert_eq!(seen["complete"]["ErrorCode"], "Unhandled", "{seen}");
    assert!(
        seen["complete"]["ErrorDetails"]
            .as_str()
            .unwrap()
            .contains("it broke mid-stream"),
        "{seen}"
    );
    // An unknown function is the API's error, as on Lambda.
    let out = std::process::Command::new("python3")
        .args(["-c", STREAM_WITH_BOTO3, &up.url])
        .arg(up.data_dir.join("s3-credentials"))
        .args(["nope", "{}"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ResourceNotFoundException"));
}
