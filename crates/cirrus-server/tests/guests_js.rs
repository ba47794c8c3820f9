//! JavaScript guests: `examples/hello-js`, a wasi:http/proxy component built with
//! componentize-js (SpiderMonkey inside the component), deployed to the server
//! in-process and called over real HTTP.
//!
//! The component (~13 MB) is not committed: `examples/hello-js/build.sh` builds it, and
//! `scripts/test` runs that when it is missing or stale. Compiling it takes tens of
//! seconds, once per server, so each test here does several things on one server.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use cirrus_api::{DeployResult, FunctionConfig, InvocationRecord, LogLine, Outcome, Page};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn hello_js() -> Vec<u8> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-js/hello.wasm");
    assert!(
        path.is_file(),
        "{} is missing: run examples/hello-js/build.sh (scripts/test does it)",
        path.display()
    );
    std::fs::read(path).unwrap()
}

async fn deploy_js(s: &Running, name: &str, config: FunctionConfig) -> DeployResult {
    let r = s.deploy_raw(name, Some(hello_js()), Some(&config)).await;
    assert_eq!(r.status(), 201, "deploy {name}");
    r.json().await.unwrap()
}

async fn post_json(s: &Running, path: &str, body: &str) -> reqwest::Response {
    s.http
        .post(format!("{}{path}", s.url))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

fn cold(r: &reqwest::Response) -> bool {
    r.headers()["cirrus-cold-start"] == "true"
}

async fn records(s: &Running, name: &str) -> Vec<InvocationRecord> {
    let page: Page<InvocationRecord> = s
        .get_json(&format!("/v1/functions/{name}/invocations"))
        .await;
    page.items
}

#[tokio::test]
async fn javascript_answers_cold_then_warm_and_refuses_bad_json_itself() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let deployed = deploy_js(&s, "hello-js", small(128, 10_000)).await;
    assert_eq!(
        deployed.function.latest.kind,
        cirrus_api::ArtifactKind::HttpComponent
    );

    // Cold: the first call after deploy loads the compiled engine and instantiates it.
    let r = s.call("/fn/hello-js/hi?x=1&lang=js").await;
    assert_eq!(r.status(), 200);
    assert!(cold(&r), "the first call is a cold start");
    assert_eq!(r.headers()["content-type"], "application/json");
    let first_id = r.headers()["cirrus-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer,
        json!({
            "message": "Hello from Cirrus (JavaScript)!",
            "method": "GET",
            "path": "/hi",
            "query": {"x": "1", "lang": "js"},
            "served": 1,
        })
    );

    // Warm: the guest parses a JSON body and answers with what it understood.
    let r = post_json(
        &s,
        "/fn/hello-js/orders",
        r#"{"item":"tea","qty":2,"tags":["hot"]}"#,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(!cold(&r), "the second call is warm");
    let answer: Value = r.json().await.unwrap();
    // Same environment: the module's state survived (as in a warm Lambda environment).
    assert_eq!(answer["served"], 2);
    assert_eq!(
        (&answer["method"], &answer["path"]),
        (&json!("POST"), &json!("/orders"))
    );
    assert_eq!(
        answer["body"],
        json!({"item": "tea", "qty": 2, "tags": ["hot"]})
    );
    // Through the management API too.
    let r = s.invoke("hello-js", "[1,2,3]").await;
    assert_eq!(r.status(), 200);
    assert!(!cold(&r));
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["body"], json!([1, 2, 3]));
    assert_eq!(answer["served"], 3);

    // With reuse = 1 every call gets a fresh instance (started ahead of it, so warm).
    let fresh = FunctionConfig {
        reuse: 1,
        ..small(128, 10_000)
    };
    deploy_js(&s, "hello-js-fresh", fresh).await;
    for _ in 0..3 {
        let r = s.call("/fn/hello-js-fresh/").await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["served"], 1, "a fresh sandbox every call");
    }

    // The records say cold, then warm, and show what a JS engine weighs.
    let page = records(&s, "hello-js").await;
    let starts: Vec<bool> = page.iter().rev().map(|r| r.cold_start).collect();
    assert_eq!(starts, [true, false, false], "oldest first");
    for record in &page {
        assert_eq!((record.outcome, record.status), (Outcome::Success, 200));
        assert!(
            record.peak_memory_bytes > 4 << 20,
            "SpiderMonkey's heap is megabytes: {}",
            record.peak_memory_bytes
        );
    }
    let first = page.last().unwrap();
    assert_eq!(first.request_id, first_id);
    assert!(first.init_ms.is_some(), "a cold start measures its init");

    // console.log reaches the function's logs, tagged with the request.
    let logs: Page<LogLine> = s
        .get_json(&format!(
            "/v1/functions/hello-js/logs?request_id={first_id}"
        ))
        .await;
    let lines: Vec<&str> = logs.items.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(lines, ["hello-js: GET /hi"]);

    // A malformed JSON body gets the error the guest chose: its own 400, recorded as
    // an answer, not a trap or a platform error.
    for bad in [r#"{"item": "tea""#, "not json", "{'single': 'quotes'}"] {
        let r = post_json(&s, "/fn/hello-js/orders", bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_json", "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.starts_with("the request body is not JSON: ") && message.len() > 30,
            "the parser's reason follows: {message}"
        );
    }
    let page = records(&s, "hello-js").await;
    assert_eq!(page.len(), 6);
    for record in &page[..3] {
        assert_eq!(
            (record.outcome, record.status, record.error_code.as_deref()),
            (Outcome::Success, 400, None)
        );
    }
    assert_eq!(s.call("/fn/hello-js").await.status(), 200, "still serving");
    s.stop().await;
}

/// Memory the guest needs just to start: the StarlingMonkey snapshot's initial linear
/// memory is about 9 MiB (145 pages of 64 KiB) with componentize-js 0.23.0.
const TOO_SMALL_MB: u32 = 4;
/// Enough to start and answer a hello, far too little for the bomb below.
const SMALL_MB: u32 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_memory_limit_holds_under_a_storm_while_a_healthy_js_function_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    deploy_js(&s, "hello-js", small(128, 10_000)).await;
    deploy_js(&s, "tiny-js", small(TOO_SMALL_MB, 10_000)).await;
    deploy_js(&s, "small-js", small(SMALL_MB, 10_000)).await;

    // Too little memory for the engine itself: refused as such at instantiation.
    let (status, code, message) = error_of(s.call("/fn/tiny-js").await).await;
    assert_eq!(
        (status.as_u16(), code.as_str()),
        (502, "memory_limit_exceeded"),
        "{message}"
    );
    assert!(message.contains("4 MiB"), "{message}");

    // Enough to answer a hello...
    assert_eq!(s.call("/fn/small-js").await.status(), 200);
    // ...but not to parse ~2.8 MB of JSON into 200,000 objects (tens of MiB of heap):
    // SpiderMonkey's allocation is refused and it aborts, which Cirrus reports as the
    // memory limit, never by growing past it.
    let bomb = Arc::new(format!("[{}1]", r#"{"a":[1,2,3]},"#.repeat(200_000)));
    let storm = {
        let (http, url, bomb) = (s.http.clone(), s.url.clone(), bomb.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut codes = Vec::new();
            for _round in 0..3 {
                let calls = (0..6).map(|_| {
                    http.post(format!("{url}/fn/small-js/bomb"))
                        .header("content-type", "application/json")
                        .body(bomb.to_string())
                        .send()
                });
                for r in futures_util::future::join_all(calls).await {
                    codes.push(error_of(r.unwrap()).await.1);
                }
                if Instant::now() > deadline {
                    break;
                }
            }
            codes
        })
    };
    // Meanwhile a healthy JS function keeps answering (generous bound: a shared,
    // noisy 2-core machine).
    let mut healthy = Vec::new();
    while !storm.is_finished() && healthy.len() < 500 {
        let t = Instant::now();
        let r = s.call("/fn/hello-js/healthy").await;
        assert_eq!(r.status(), 200, "a healthy call during the storm");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["path"], "/healthy");
        healthy.push(t.elapsed());
    }
    let codes = storm.await.unwrap();
    assert!(!codes.is_empty());
    assert!(
        codes.iter().all(|c| c == "memory_limit_exceeded"),
        "{codes:?}"
    );
    assert!(!healthy.is_empty(), "the healthy function was measured");
    let slowest = healthy.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(10),
        "slowest healthy call {slowest:?}"
    );

    // No invocation went past its cap, and the logs say why each bomb died.
    let bombs = records(&s, "small-js").await;
    assert_eq!(bombs.len(), codes.len() + 1);
    for record in &bombs {
        assert!(
            record.peak_memory_bytes <= u64::from(SMALL_MB) << 20,
            "peak {} over the cap",
            record.peak_memory_bytes
        );
    }
    let logs: Page<LogLine> = s.get_json("/v1/functions/small-js/logs").await;
    assert!(
        logs.items
            .iter()
            .any(|l| l.line.contains("unhandlable oom")),
        "SpiderMonkey names the refused allocation"
    );
    // After the storm, every function serves as before.
    assert_eq!(s.call("/fn/small-js").await.status(), 200);
    assert_eq!(s.call("/fn/hello-js").await.status(), 200);
    s.stop().await;
}
