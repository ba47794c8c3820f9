//! The server in-process on an ephemeral port, driven over real HTTP with real wasm
//! guests. Time-dependent behaviour (idle unloading) uses a manual clock.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use cirrus_api::{
    DeployResult, FunctionConfig, FunctionInfo, InvocationRecord, LogLine, Page, VersionInfo,
};
use cirrus_server::scaler::ScalerSettings;
use reqwest::Method;
use std::path::Path;
use std::time::Duration;

mod common;
use common::*;

#[tokio::test]
async fn deploy_invoke_and_response_headers() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let result = s
        .deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    assert_eq!(result.version, 1);
    assert!(result.created);
    assert_eq!(
        result.function.latest.kind,
        cirrus_api::ArtifactKind::Command
    );

    // HTTP trigger: body in, body out; first call is a cold start, the next is warm.
    let r = s
        .http
        .post(format!("{}/fn/echo/some/path?q=1", s.url))
        .body("ping")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cirrus-cold-start"], "true");
    let id = r.headers()["cirrus-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36);
    let billed: u64 = r.headers()["cirrus-billed-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let duration: f64 = r.headers()["cirrus-duration-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        billed >= 1 && billed as f64 >= duration,
        "billed {billed} duration {duration}"
    );
    assert_eq!(r.text().await.unwrap(), "ping");

    let r = s.invoke("echo", "{\"a\":1}").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cirrus-cold-start"], "false");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), "{\"a\":1}");

    // The record of the first call.
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/echo/invocations").await;
    assert_eq!(page.items.len(), 2);
    let first = page
        .items
        .iter()
        .find(|r| r.request_id == id)
        .expect("recorded");
    assert!(first.cold_start);
    assert!(first.init_ms.is_some());
    assert_eq!(first.trigger, cirrus_api::Trigger::Http);
    assert_eq!(first.memory_mb, 128);
    assert_eq!(first.outcome, cirrus_api::Outcome::Success);
    assert!(
        first.peak_memory_bytes >= 2 * 65536,
        "echo has two pages: {}",
        first.peak_memory_bytes
    );
    assert_eq!(
        page.items[0].trigger,
        cirrus_api::Trigger::Invoke,
        "newest first"
    );
    assert_eq!((first.request_bytes, first.response_bytes), (4, 4));
    assert!(
        first.cpu_ms > 0.0 && first.cpu_ms <= first.duration_ms + 1.0,
        "cpu {} ms",
        first.cpu_ms
    );

    // Guest stderr is in the logs, tagged with the request.
    let logs: Page<LogLine> = s
        .get_json(&format!("/v1/functions/echo/logs?request_id={id}"))
        .await;
    assert_eq!(logs.items.len(), 1);
    assert_eq!(logs.items[0].line, "echo: done");
    assert_eq!(logs.items[0].stream, cirrus_api::LogStream::Stderr);
    s.stop().await;
}

#[tokio::test]
async fn versions_aliases_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("f", "echo.wat", FunctionConfig::default()).await;
    // The same artifact and config again: nothing new.
    let again = s.deploy("f", "echo.wat", FunctionConfig::default()).await;
    assert!(!again.created);
    assert_eq!(again.version, 1);
    // New code: version 2.
    let v2 = s.deploy("f", "env.wat", FunctionConfig::default()).await;
    assert_eq!(v2.version, 2);
    // Config only: version 3 keeps v2's code.
    let mut config = FunctionConfig::default();
    config.env.insert("STAGE".into(), "three".into());
    let r = s.deploy_raw("f", None, Some(&config)).await;
    assert_eq!(r.status(), 200);
    let v3: DeployResult = r.json().await.unwrap();
    assert_eq!(v3.version, 3);
    assert_eq!(v3.function.latest.sha256, v2.function.latest.sha256);

    let versions: Vec<VersionInfo> = s.get_json("/v1/functions/f/versions").await;
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    // $LATEST runs v3; @1 runs the echo code; an alias follows its target.
    assert!(s
        .call("/fn/f")
        .await
        .text()
        .await
        .unwrap()
        .contains("STAGE=three"));
    let r = s
        .http
        .post(format!("{}/fn/f@1", s.url))
        .body("v1!")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cirrus-version"], "1");
    assert_eq!(r.text().await.unwrap(), "v1!");
    let r = s
        .req(Method::PUT, "/v1/functions/f/aliases/prod")
        .json(&serde_json::json!({"version": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(s
        .call("/fn/f@prod")
        .await
        .text()
        .await
        .unwrap()
        .contains("STAGE=three"));
    // Roll back by moving the alias.
    s.req(Method::PUT, "/v1/functions/f/aliases/prod")
        .json(&serde_json::json!({"version": 1}))
        .send()
        .await
        .unwrap();
    let r = s
        .http
        .post(format!("{}/fn/f@prod", s.url))
        .body("rolled back")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "rolled back");
    let r = s
        .req(Method::POST, "/v1/functions/f/invoke?qualifier=prod")
        .body("via api")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "via api");

    // An alias to a missing version, or a numeric alias name, is refused.
    let r = s
        .req(Method::PUT, "/v1/functions/f/aliases/beta")
        .json(&serde_json::json!({"version": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "not_found");
    let r = s
        .req(Method::PUT, "/v1/functions/f/aliases/12")
        .json(&serde_json::json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "bad_request");
    let r = s
        .req(Method::PUT, "/v1/functions/f/aliases/beta")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(r).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "bad_request"));
    assert!(message.contains("invalid alias body"), "{message}");

    let r = s.send(Method::DELETE, "/v1/functions/f/aliases/prod").await;
    assert_eq!(r.status(), 200);
    assert_eq!(error_of(s.call("/fn/f@prod").await).await.1, "not_found");

    // Delete: gone from listings and routes; history stays readable.
    let list: Vec<FunctionInfo> = s.get_json("/v1/functions").await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        s.send(Method::DELETE, "/v1/functions/f").await.status(),
        200
    );
    assert_eq!(error_of(s.call("/fn/f").await).await.0, 404);
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/f/invocations").await;
    assert!(page.items.len() >= 5);
    s.stop().await;
}

#[tokio::test]
async fn bad_deploys_are_rejected_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.max_artifact_bytes = 4096).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"this is not wasm".to_vec(),
            "not a WebAssembly artifact",
        ),
        ("badwat", b"(module (func (oops)))".to_vec(), "invalid WAT"),
        (
            "nostart",
            std::fs::read(fixture("no_start.wat")).unwrap(),
            "no `_start`",
        ),
        (
            "badimport",
            std::fs::read(fixture("bad_import.wat")).unwrap(),
            "host_magic",
        ),
        (
            "truncated",
            b"\0asm\x01\0\0\0\x01\xff".to_vec(),
            "invalid WebAssembly",
        ),
    ];
    for (name, bytes, expect) in cases {
        let (status, code, message) = error_of(s.deploy_raw(name, Some(bytes), None).await).await;
        assert_eq!(
            (status.as_u16(), code.as_str()),
            (400, "invalid_artifact"),
            "{name}: {message}"
        );
        assert!(message.contains(expect), "{name}: {message}");
    }
    let (status, code, message) =
        error_of(s.deploy_raw("big", Some(vec![b' '; 8192]), None).await).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "invalid_artifact"));
    assert!(
        message.contains("over the limit of 4096 bytes"),
        "{message}"
    );
    let r = s
        .req(Method::PUT, "/v1/functions/raw")
        .body("not a form")
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(r).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "bad_request"));
    assert!(message.contains("multipart/form-data"), "{message}");

    let bytes = std::fs::read(fixture("echo.wat")).unwrap();
    let r = s
        .req(Method::PUT, "/v1/functions/cfg")
        .multipart(
            reqwest::multipart::Form::new()
                .text("config", r#"{"memory_mb": 64, "memroy": 1}"#)
                .part("artifact", reqwest::multipart::Part::bytes(bytes.clone())),
        )
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(message.contains("unknown field `memroy`"), "{message}");
    let too_long = FunctionConfig {
        timeout: Duration::from_secs(3600),
        ..Default::default()
    };
    let (status, _, message) = error_of(
        s.deploy_raw("cfg", Some(bytes.clone()), Some(&too_long))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("timeout"), "{message}");
    let (status, _, message) =
        error_of(s.deploy_raw("bad name", Some(bytes.clone()), None).await).await;
    assert_eq!(status, 400, "{message}");
    let (status, _, message) = error_of(
        s.deploy_raw("nothing", None, Some(&FunctionConfig::default()))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("needs an artifact"), "{message}");
    // Nothing half-deployed is left behind.
    let list: Vec<FunctionInfo> = s.get_json("/v1/functions").await;
    assert!(list.is_empty(), "{list:?}");
    s.stop().await;
}

#[tokio::test]
async fn faults_are_contained_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("healthy", "echo.wat", FunctionConfig::default())
        .await;
    let cases = [
        ("loop", "loop.wat", small(16, 300), 504, "timeout"),
        (
            "grow",
            "grow.wat",
            small(8, 5_000),
            502,
            "memory_limit_exceeded",
        ),
        ("trap", "trap.wat", small(16, 5_000), 502, "function_error"),
        (
            "overflow",
            "stack_overflow.wat",
            small(16, 5_000),
            502,
            "function_error",
        ),
        (
            "exit",
            "exit_fail.wat",
            small(16, 5_000),
            502,
            "function_error",
        ),
        (
            "big",
            "big_output.wat",
            small(16, 5_000),
            413,
            "payload_too_large",
        ),
    ];
    for (name, file, config, status, code) in cases {
        s.deploy(name, file, config).await;
        let r = s.call(&format!("/fn/{name}")).await;
        assert!(r.headers().contains_key("cirrus-request-id"));
        let (got_status, got_code, message) = error_of(r).await;
        assert_eq!(
            (got_status.as_u16(), got_code.as_str()),
            (status, code),
            "{name}: {message}"
        );
        // Everyone else is still served.
        let r = s
            .http
            .post(format!("{}/fn/healthy", s.url))
            .body(name)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "after {name}");
        assert_eq!(r.text().await.unwrap(), name);
    }
    // The detail is in each function's logs.
    let logs = |name: &str| {
        let req = s.req(Method::GET, &format!("/v1/functions/{name}/logs"));
        async move {
            req.send()
                .await
                .unwrap()
                .json::<Page<LogLine>>()
                .await
                .unwrap()
                .items
        }
    };
    let trap = logs("trap").await;
    assert!(
        trap.iter().any(|l| l.line.contains("unreachable")),
        "{trap:?}"
    );
    let overflow = logs("overflow").await;
    assert!(
        overflow
            .iter()
            .any(|l| l.line.contains("call stack exhausted")),
        "{overflow:?}"
    );
    let exit = logs("exit").await;
    assert!(
        exit.iter()
            .any(|l| l.line == "database unreachable: giving up"),
        "{exit:?}"
    );
    assert!(exit.iter().any(|l| l.line.contains("status 3")), "{exit:?}");
    // A CPU-bound loop's CPU time is metered (a loose bound: on a busy machine the guest
    // gets only part of a core before its deadline).
    let looped: Page<InvocationRecord> = s.get_json("/v1/functions/loop/invocations").await;
    assert!(
        looped.items[0].cpu_ms > 40.0,
        "cpu {} ms",
        looped.items[0].cpu_ms
    );
    let timeout = logs("loop").await;
    assert!(
        timeout.iter().any(|l| l.line.contains("timed out")),
        "{timeout:?}"
    );
    // The memory record shows the guest got right up to its cap.
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/grow/invocations").await;
    let rec = &page.items[0];
    assert_eq!(rec.error_code.as_deref(), Some("memory_limit_exceeded"));
    assert_eq!(rec.response_bytes, 0);
    assert!(
        rec.peak_memory_bytes > 7 << 20 && rec.peak_memory_bytes <= 8 << 20,
        "{}",
        rec.peak_memory_bytes
    );
    s.stop().await;
}

#[tokio::test]
async fn request_limits_routing_errors_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.payload.max_request_bytes = 1024).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    let private = FunctionConfig {
        public: false,
        ..Default::default()
    };
    s.deploy("secret", "echo.wat", private).await;

    let r = s
        .http
        .post(format!("{}/fn/echo", s.url))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "payload_too_large");
    let r = s
        .http
        .post(format!("{}/fn/echo", s.url))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    for path in [
        "/fn/nope",
        "/fn/echo@7",
        "/fn/echo@prod",
        "/v1/functions/nope",
    ] {
        let r = s.send(Method::GET, path).await;
        let (status, code, message) = error_of(r).await;
        assert_eq!(
            (status.as_u16(), code.as_str()),
            (404, "not_found"),
            "{path}: {message}"
        );
    }
    let (status, _, _) = error_of(s.call("/no/such/route").await).await;
    assert_eq!(status, 404);
    let r = s.send(Method::PATCH, "/v1/functions").await;
    assert_eq!(error_of(r).await.1, "method_not_allowed");

    // The management API needs the token; public HTTP routes do not.
    let r = s
        .http
        .get(format!("{}/v1/functions", s.url))
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(r).await;
    assert_eq!((status.as_u16(), code.as_str()), (401, "unauthorized"));
    assert!(message.contains("admin.token"), "{message}");
    let r = s
        .http
        .get(format!("{}/v1/functions", s.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(s.call("/v1/health").await.status(), 200);
    // Without the token a private function answers like a missing one.
    assert_eq!(error_of(s.call("/fn/secret").await).await.0, 404);
    assert_eq!(s.send(Method::GET, "/fn/secret").await.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn concurrency_cap_throttles_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| {
        c.scaler = ScalerSettings {
            global_concurrency: 64,
            queue_depth: 1,
            queue_timeout: Duration::from_millis(100),
        }
    })
    .await;
    let config = FunctionConfig {
        max_concurrency: Some(1),
        ..Default::default()
    };
    s.deploy("sleepy", "sleep.wat", config).await;
    s.deploy("other", "echo.wat", FunctionConfig::default())
        .await;
    // One runs (500 ms), one waits 100 ms in the queue then gets 429, the third finds
    // the queue full and gets 429 at once.
    let calls = (0..3).map(|_| s.call("/fn/sleepy"));
    let responses = futures_util::future::join_all(calls).await;
    let mut ok = 0;
    let mut throttled = 0;
    for r in responses {
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(r.headers()["retry-after"], "1");
                let (_, code, message) = error_of(r).await;
                assert_eq!(code, "throttled");
                assert!(message.contains("concurrency limit of 1"), "{message}");
                throttled += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, throttled), (1, 2));
    // The cap is per function: others are unaffected, and sleepy serves again.
    assert_eq!(s.call("/fn/other").await.status(), 200);
    assert_eq!(s.call("/fn/sleepy").await.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn global_cap_protects_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| {
        c.scaler = ScalerSettings {
            global_concurrency: 1,
            queue_depth: 0,
            queue_timeout: Duration::from_millis(10),
        }
    })
    .await;
    s.deploy("sleepy", "sleep.wat", FunctionConfig::default())
        .await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    s.call("/fn/sleepy").await; // load it, so the next call is quick to admit
    let slow = s.call("/fn/sleepy");
    let fast = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.call("/fn/echo").await
    };
    let (slow, fast) = tokio::join!(slow, fast);
    assert_eq!(slow.status(), 200);
    let (status, code, message) = error_of(fast).await;
    assert_eq!((status.as_u16(), code.as_str()), (429, "throttled"));
    assert!(message.contains("the server"), "{message}");
    s.stop().await;
}

#[tokio::test]
async fn idle_versions_unload_and_pinned_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let idle = FunctionConfig {
        idle_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let pinned = FunctionConfig {
        min_loaded: 1,
        idle_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    s.deploy("idle", "echo.wat", idle).await;
    s.deploy("pinned", "echo.wat", pinned).await;
    assert_eq!(
        s.call("/fn/idle").await.headers()["cirrus-cold-start"],
        "true"
    );
    assert_eq!(
        s.call("/fn/idle").await.headers()["cirrus-cold-start"],
        "false"
    );
    s.call("/fn/pinned").await;

    s.clock.advance(Duration::from_secs(59));
    assert_eq!((s.sweep)(), 0, "not idle long enough yet");
    assert_eq!(
        s.call("/fn/idle").await.headers()["cirrus-cold-start"],
        "false"
    );
    s.clock.advance(Duration::from_secs(61));
    assert_eq!((s.sweep)(), 1, "only the unpinned version unloads");
    assert_eq!(
        s.call("/fn/idle").await.headers()["cirrus-cold-start"],
        "true"
    );
    assert_eq!(
        s.call("/fn/pinned").await.headers()["cirrus-cold-start"],
        "false"
    );
    s.stop().await;

    // After a restart, pinned functions are loaded before the first request.
    let s = start(dir.path()).await;
    assert_eq!(
        s.call("/fn/pinned").await.headers()["cirrus-cold-start"],
        "false"
    );
    assert_eq!(
        s.call("/fn/idle").await.headers()["cirrus-cold-start"],
        "true"
    );
    s.stop().await;
}

#[tokio::test]
async fn restart_keeps_everything_and_never_recompiles() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let first = s
        .deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    assert!(first.compile_ms > 0 || first.created);
    s.req(Method::PUT, "/v1/functions/echo/aliases/prod")
        .json(&serde_json::json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(s.invoke("echo", "before").await.status(), 200);
    s.stop().await;

    let compiled = dir.path().join("compiled");
    let snapshot = |dir: &Path| {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().modified().unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(&compiled);
    assert_eq!(before.len(), 1, "one compiled artifact: {before:?}");

    let s = start(dir.path()).await;
    let r = s
        .http
        .post(format!("{}/fn/echo@prod", s.url))
        .body("after")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cirrus-cold-start"], "true");
    assert_eq!(r.text().await.unwrap(), "after");
    assert_eq!(
        snapshot(&compiled),
        before,
        "the cold start deserialized cached code"
    );
    // Redeploying the same artifact finds it in the cache: no compilation.
    let again = s
        .deploy("echo2", "echo.wat", FunctionConfig::default())
        .await;
    assert_eq!(again.compile_ms, 0);
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/echo/invocations").await;
    assert_eq!(page.items.len(), 2, "records survive the restart");

    // A lost cache entry is rebuilt from the stored artifact on the next cold start.
    std::fs::remove_dir_all(&compiled).unwrap();
    std::fs::create_dir_all(&compiled).unwrap();
    s.stop().await;
    let s = start(dir.path()).await;
    assert_eq!(
        s.invoke("echo", "rebuilt").await.text().await.unwrap(),
        "rebuilt"
    );
    s.stop().await;
}

#[tokio::test]
async fn invocations_page_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = s.invoke("echo", &i.to_string()).await;
        ids.push(
            r.headers()["cirrus-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut seen = Vec::new();
    let mut path = "/v1/functions/echo/invocations?limit=2".to_owned();
    loop {
        let page: Page<InvocationRecord> = s.get_json(&path).await;
        seen.extend(page.items.iter().map(|r| r.request_id.clone()));
        match page.next {
            Some(next) => path = format!("/v1/functions/echo/invocations?limit=2&before={next}"),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let r = s
        .send(Method::GET, "/v1/functions/echo/invocations?limit=0")
        .await;
    assert_eq!(r.status(), 400);
    let r = s
        .send(Method::GET, "/v1/functions/echo/invocations?before=x")
        .await;
    assert_eq!(r.status(), 400);
    s.stop().await;
}

#[tokio::test]
async fn logs_follow_streams_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    s.invoke("echo", "old").await;
    let mut stream = s
        .send(Method::GET, "/v1/functions/echo/logs?follow=true")
        .await;
    assert_eq!(stream.headers()["content-type"], "application/x-ndjson");
    let mut buffer = Vec::new();
    let mut lines = Vec::new();
    let mut read_line = async || -> LogLine {
        loop {
            if let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            buffer.extend_from_slice(&chunk);
        }
    };
    lines.push(read_line().await); // history
    let r = s.invoke("echo", "new").await;
    let id = r.headers()["cirrus-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    lines.push(read_line().await); // live
    assert_eq!(lines[1].request_id, id);
    assert_ne!(lines[0].request_id, id);
    assert!(lines.iter().all(|l| l.line == "echo: done"));
    drop(stream);
    s.stop().await;
}

#[tokio::test]
async fn openapi_document_matches_the_router() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json"),
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).expect("openapi.json is valid JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let ops = ops.as_object().unwrap();
        // Each operation documents the scope its route declares.
        for (method, op) in ops.iter().filter(|(k, _)| *k != "parameters") {
            let declared = cirrus_server::api::ROUTES
                .iter()
                .find(|(m, p, _)| p == path && (*m == method.to_uppercase() || *m == "ANY"))
                .map(|(_, _, access)| format!("{access:?}"));
            assert_eq!(
                op["x-cirrus-access"].as_str().map(str::to_owned),
                declared,
                "{method} {path}"
            );
        }
        let methods: Vec<String> = ops
            .keys()
            .filter(|k| *k != "parameters")
            .map(|m| m.to_uppercase())
            .collect();
        let all = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"];
        if all.iter().all(|m| methods.iter().any(|x| x == m)) {
            documented.push(("ANY".to_owned(), path.clone()));
        } else {
            for m in methods {
                documented.push((m, path.clone()));
            }
        }
    }
    let mut served: Vec<(String, String)> = cirrus_server::api::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);

    // And every listed route really is served (not the fallback).
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    for (method, path, _) in cirrus_server::api::ROUTES {
        let method = if *method == "ANY" { "GET" } else { method };
        let concrete = path
            .replace("{name}", "nope")
            .replace("{alias}", "a")
            .replace("{target}", "nope")
            .replace("{path}", "x");
        let r = s
            .req(Method::from_bytes(method.as_bytes()).unwrap(), &concrete)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("no route for"),
            "{method} {path} is not routed: {status} {body}"
        );
        assert_ne!(status, 405, "{method} {path}");
    }
    s.stop().await;
}

#[tokio::test]
async fn guests_see_raw_paths_and_never_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let private = FunctionConfig {
        public: false,
        ..Default::default()
    };
    s.deploy("env", "env.wat", private).await;
    let r = s
        .req(Method::GET, "/fn/env/a%20b%2Fc/%FF?x=%3F")
        .header("x-trace", "t1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let env = r.text().await.unwrap();
    assert!(env.contains("PATH_INFO=/a%20b%2Fc/%FF\n"), "{env}");
    assert!(env.contains("QUERY_STRING=x=%3F\n"), "{env}");
    assert!(env.contains("HTTP_X_TRACE=t1\n"), "{env}");
    assert!(
        !env.contains(&s.token),
        "the admin token leaked into the guest: {env}"
    );
    assert!(!env.contains("HTTP_AUTHORIZATION"), "{env}");
    // An escaped qualifier works too.
    assert_eq!(
        s.send(Method::GET, "/fn/env%40%24LATEST").await.status(),
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn nothing_is_billed_when_nothing_ran() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let r = s.call("/fn/missing").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["cirrus-billed-ms"], "0");
    assert!(r.headers().contains_key("cirrus-request-id"));
    s.stop().await;
}

#[tokio::test]
async fn a_recreated_function_never_runs_the_old_code() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("f", "echo.wat", FunctionConfig::default()).await;
    let r = s
        .http
        .post(format!("{}/fn/f", s.url))
        .body("old")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "old");
    s.send(Method::DELETE, "/v1/functions/f").await;
    let v = s.deploy("f", "env.wat", FunctionConfig::default()).await;
    assert_eq!(v.version, 1, "numbering restarts after a delete");
    assert!(s
        .call("/fn/f")
        .await
        .text()
        .await
        .unwrap()
        .contains("CIRRUS_FUNCTION=f"));
    s.stop().await;
}

#[tokio::test]
async fn a_caller_that_goes_away_still_leaves_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("sleepy", "sleep.wat", FunctionConfig::default())
        .await;
    let impatient = s
        .http
        .get(format!("{}/fn/sleepy", s.url))
        .timeout(Duration::from_millis(150))
        .send()
        .await;
    assert!(impatient.is_err(), "the client gave up first");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/sleepy/invocations").await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].outcome, cirrus_api::Outcome::Success);
    assert!(
        page.items[0].duration_ms >= 450.0,
        "{}",
        page.items[0].duration_ms
    );
    // Waiting is wall time, not CPU time.
    assert!(
        page.items[0].cpu_ms < 100.0,
        "cpu {} ms",
        page.items[0].cpu_ms
    );
    s.stop().await;
}

#[tokio::test]
async fn components_answer_and_their_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| {
        c.payload.max_request_bytes = 2 << 20;
        c.payload.max_response_bytes = 1 << 20;
    })
    .await;
    let r = s
        .deploy_raw("web", Some(example("hello-rust/hello.wasm")), None)
        .await;
    assert_eq!(r.status(), 201);
    let deployed: DeployResult = r.json().await.unwrap();
    assert_eq!(
        deployed.function.latest.kind,
        cirrus_api::ArtifactKind::HttpComponent
    );

    let r = s.call("/fn/web/anything").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cirrus-cold-start"], "true");
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "Hello from Cirrus (Rust)!\n");
    let r = s
        .http
        .post(format!("{}/fn/web", s.url))
        .body("echo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cirrus-cold-start"], "false");
    assert_eq!(r.text().await.unwrap(), "Hello from Cirrus (Rust)!\necho");

    // The guest echoes 1.5 MiB: within the request limit, over the response limit.
    let r = s
        .http
        .post(format!("{}/fn/web", s.url))
        .body(vec![b'z'; 3 << 19])
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(r).await;
    assert_eq!(
        (status.as_u16(), code.as_str()),
        (413, "payload_too_large"),
        "{message}"
    );
    assert!(message.contains("response"), "{message}");
    assert_eq!(s.call("/fn/web").await.status(), 200, "still serving");
    s.stop().await;
}

#[tokio::test]
async fn on_demand_allocation_works_when_pooling_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.pooling = false).await;
    s.deploy_raw("web", Some(example("hello-rust/hello.wasm")), None)
        .await;
    s.deploy("grow", "grow.wat", small(8, 5_000)).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    assert_eq!(
        s.call("/fn/web").await.text().await.unwrap(),
        "Hello from Cirrus (Rust)!\n"
    );
    assert_eq!(
        error_of(s.call("/fn/grow").await).await.1,
        "memory_limit_exceeded"
    );
    let r = s
        .http
        .post(format!("{}/fn/echo", s.url))
        .body("fine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "fine");
    s.stop().await;
}

#[tokio::test]
async fn usage_reports_cost_exactly_and_keep_deleted_functions() {
    use cirrus_api::usage::UsageReport;
    use rust_decimal::Decimal;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    s.deploy("trap", "trap.wat", small(256, 5_000)).await;
    for _ in 0..3 {
        assert_eq!(s.invoke("echo", "x").await.status(), 200);
    }
    assert_eq!(s.call("/fn/trap").await.status(), 502);
    let echo: Page<InvocationRecord> = s.get_json("/v1/functions/echo/invocations").await;
    let trap: Page<InvocationRecord> = s.get_json("/v1/functions/trap/invocations").await;
    assert_eq!(
        s.send(Method::DELETE, "/v1/functions/trap").await.status(),
        200
    );

    let report: UsageReport = s.get_json("/v1/usage").await;
    assert_eq!(
        report
            .rows
            .iter()
            .map(|r| r.key.as_str())
            .collect::<Vec<_>>(),
        ["echo", "trap"]
    );
    let (e, t) = (&report.rows[0], &report.rows[1]);
    assert_eq!((e.requests, e.errors, e.cold_starts), (3, 0, 1));
    assert_eq!((t.requests, t.errors), (1, 1));
    // GB-s and cost follow from the records, exactly.
    let mib_ms = |p: &Page<InvocationRecord>| {
        p.items
            .iter()
            .map(|r| r.billed_ms * r.memory_mb as u64)
            .sum::<u64>()
    };
    let gbs = |mib_ms: u64| Decimal::from(mib_ms) / Decimal::from(1_024_000);
    assert_eq!(e.gb_seconds, gbs(mib_ms(&echo)).normalize());
    let price = |requests: u64, gb_s: Decimal| {
        Decimal::new(2, 7) * Decimal::from(requests) + Decimal::new(166_667, 10) * gb_s
    };
    assert_eq!(e.cost, price(3, gbs(mib_ms(&echo))).normalize());
    assert_eq!(report.total.requests, 4);
    assert_eq!(
        report.total_cost,
        price(4, gbs(mib_ms(&echo) + mib_ms(&trap))).normalize()
    );
    assert_eq!(report.free_tier_discount, Decimal::ZERO);

    let by_day: UsageReport = s
        .get_json("/v1/usage?group_by=day&from=2023-11-01&to=2023-12-01")
        .await;
    assert_eq!(by_day.rows.len(), 1);
    assert_eq!(by_day.rows[0].key, "2023-11-14", "the manual clock's day");
    let empty: UsageReport = s.get_json("/v1/usage?from=2020-01-01&to=2020-02-01").await;
    assert!(empty.rows.is_empty());
    assert_eq!(empty.total_cost, Decimal::ZERO);

    for (query, field) in [
        ("group_by=week", "group_by"),
        ("from=yesterday", "from"),
        ("to=2023-13-45", "to"),
        ("from=2024-01-01&to=2023-01-01", "must be before"),
        ("bogus=1", "unknown field"),
    ] {
        let (status, code, message) =
            error_of(s.send(Method::GET, &format!("/v1/usage?{query}")).await).await;
        assert_eq!(
            (status.as_u16(), code.as_str()),
            (400, "bad_request"),
            "{query}"
        );
        assert!(message.contains(field), "{query}: {message}");
    }
    s.stop().await;
}

#[tokio::test]
async fn free_tier_from_the_price_table_is_discounted() {
    use cirrus_api::usage::UsageReport;
    use rust_decimal::Decimal;
    let dir = tempfile::tempdir().unwrap();
    let prices = cirrus_server::billing::parse_prices(
        "per_million_requests = 1000000\nper_gb_second = 0\n[free_tier]\nrequests = 2\ngb_seconds = 0\n",
    )
    .unwrap();
    let s = start_with(dir.path(), |c| c.prices = prices).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    for _ in 0..5 {
        s.invoke("echo", "x").await;
    }
    let report: UsageReport = s.get_json("/v1/usage").await;
    // A dollar a request, two free.
    assert_eq!(report.total.cost, Decimal::from(5));
    assert_eq!(report.free_tier_discount, Decimal::from(2));
    assert_eq!(report.total_cost, Decimal::from(3));
    s.stop().await;
}

/// `name{labels} value` lines of an OpenMetrics exposition whose name starts with `metric`.
fn samples(text: &str, metric: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.starts_with(metric))
        .map(|(series, value)| (series.to_owned(), value.parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn every_declared_metric_moves() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| {
        c.scaler = ScalerSettings {
            global_concurrency: 64,
            queue_depth: 0,
            queue_timeout: Duration::from_millis(10),
        }
    })
    .await;
    let scrape = || async {
        let r = s.send(Method::GET, "/metrics").await;
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"));
        r.text().await.unwrap()
    };
    let before = scrape().await;
    assert!(before.trim_end().ends_with("# EOF"));
    assert_eq!(
        s.http
            .get(format!("{}/metrics", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    s.deploy("trap", "trap.wat", FunctionConfig::default())
        .await;
    let capped = FunctionConfig {
        max_concurrency: Some(1),
        ..Default::default()
    };
    s.deploy("sleepy", "sleep.wat", capped).await;
    s.deploy("slow", "sleep.wat", FunctionConfig::default())
        .await;
    let flaky = FunctionConfig {
        max_attempts: 2,
        retry_delay: Duration::from_millis(10),
        ..Default::default()
    };
    s.deploy("flaky", "trap.wat", flaky).await;
    s.invoke("echo", "a").await;
    s.invoke("echo", "b").await;
    s.call("/fn/trap").await;
    // While one sleepy call runs: it is in flight, and a second is throttled.
    let (running, during) = tokio::join!(s.call("/fn/sleepy"), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let throttled = s.call("/fn/sleepy").await.status();
        assert_eq!(invoke_async(&s, "slow", "{}", None).await.status(), 202);
        (throttled, scrape().await)
    });
    assert_eq!(running.status(), 200);
    assert_eq!(during.0, 429);
    let in_flight = samples(&during.1, "cirrus_in_flight");
    // The sleepy call (and the slow event, if its delivery has already begun).
    assert!(
        matches!(in_flight.as_slice(), [(_, v)] if *v >= 1.0),
        "{}",
        during.1
    );
    let queued = samples(&during.1, "cirrus_queued_events");
    assert_eq!(
        queued,
        vec![("cirrus_queued_events".to_owned(), 1.0)],
        "{}",
        during.1
    );
    // An event that fails twice: one retry, then the dead-letter queue.
    invoke_async(&s, "flaky", "{}", None).await;
    eventually(&s, "the flaky event in the DLQ", || async {
        let status: cirrus_api::ServerStatus = s.get_json("/v1/status").await;
        (status.dead_events == 1).then_some(())
    })
    .await;

    let after = scrape().await;
    for name in cirrus_server::metrics::NAMES {
        if *name == "cirrus_in_flight" || *name == "cirrus_queued_events" {
            continue; // proved above, while a call ran and an event waited
        }
        let moved = samples(&after, name).iter().any(|(_, v)| *v > 0.0)
            && samples(&before, name)
                .iter()
                .all(|(_, v)| *v == 0.0 || name.contains("resident"));
        assert!(moved, "{name} did not move:\n{after}");
    }
    let count = |series: &str| samples(&after, series).first().map(|(_, v)| *v);
    assert_eq!(
        count("cirrus_invocations_total{function=\"echo\",outcome=\"success\",start=\"cold\"}"),
        Some(1.0)
    );
    assert_eq!(
        count("cirrus_invocations_total{function=\"echo\",outcome=\"success\",start=\"warm\"}"),
        Some(1.0)
    );
    assert_eq!(
        count(
            "cirrus_invocations_total{function=\"trap\",outcome=\"function_error\",start=\"cold\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        count("cirrus_throttled_total{function=\"sleepy\"}"),
        Some(1.0)
    );
    assert_eq!(
        count("cirrus_invocation_duration_seconds_count{function=\"echo\"}"),
        Some(2.0)
    );
    assert_eq!(
        count("cirrus_cold_start_seconds_count{function=\"echo\"}"),
        Some(1.0)
    );
    assert_eq!(count("cirrus_loaded_versions"), Some(5.0));
    assert_eq!(
        count("cirrus_event_retries_total{function=\"flaky\"}"),
        Some(1.0)
    );
    assert_eq!(count("cirrus_dead_letter_events"), Some(1.0));
    s.stop().await;
}

#[tokio::test]
async fn traceparent_is_continued_into_the_guest_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("env", "env.wat", FunctionConfig::default()).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = s
        .http
        .get(format!("{}/fn/env", s.url))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cirrus-trace-id"], trace);
    let id = r.headers()["cirrus-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let env = r.text().await.unwrap();
    let passed = env
        .lines()
        .find_map(|l| l.strip_prefix("HTTP_TRACEPARENT="))
        .expect("guest got a traceparent");
    let parts: Vec<&str> = passed.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace, "01"));
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the guest's parent is this invocation"
    );
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/env/invocations").await;
    let rec = page.items.iter().find(|r| r.request_id == id).unwrap();
    assert_eq!(rec.trace_id, trace);
    assert_eq!(rec.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));

    // Without one, a new trace starts.
    let r = s.call("/fn/env").await;
    let fresh = r.headers()["cirrus-trace-id"].to_str().unwrap().to_owned();
    assert_eq!(fresh.len(), 32);
    assert_ne!(fresh, trace);
    s.stop().await;
}

#[tokio::test]
async fn spans_are_exported_to_an_otlp_collector() {
    // A collector endpoint that keeps what it receives.
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<(String, serde_json::Value)>();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let got_tx = got_tx.clone();
            async move {
                let content_type = headers["content-type"].to_str().unwrap().to_owned();
                got_tx
                    .send((content_type, serde_json::from_str(&body).unwrap()))
                    .unwrap();
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.otlp_endpoint = Some(endpoint)).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    s.deploy("trap", "trap.wat", FunctionConfig::default())
        .await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = s
        .http
        .post(format!("{}/fn/echo", s.url))
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .body("hi")
        .send()
        .await
        .unwrap();
    let id = r.headers()["cirrus-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    s.call("/fn/trap").await;

    let mut spans = Vec::new();
    while spans.len() < 2 {
        let (content_type, doc) = tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(content_type, "application/json");
        let resource = &doc["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0]["value"]["stringValue"],
            "cirrus"
        );
        spans.extend(
            resource["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
    }
    let attr = |span: &serde_json::Value, key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
    };
    let echo = spans.iter().find(|s| s["name"] == "invoke echo").unwrap();
    assert_eq!(echo["traceId"], trace);
    assert_eq!(echo["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(echo["spanId"].as_str().unwrap().len(), 16);
    assert_eq!(echo["status"]["code"], 1);
    assert_eq!(
        attr(echo, "faas.invocation_id").unwrap()["stringValue"],
        id.as_str()
    );
    assert_eq!(attr(echo, "faas.coldstart").unwrap()["boolValue"], true);
    let start: u128 = echo["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = echo["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end > start && start > 1_600_000_000_000_000_000);
    let trap = spans.iter().find(|s| s["name"] == "invoke trap").unwrap();
    assert_eq!(trap["status"]["code"], 2);
    assert_eq!(
        attr(trap, "error.type").unwrap()["stringValue"],
        "function_error"
    );
    assert!(trap.get("parentSpanId").is_none());
    s.stop().await;
}

/// Polls `check` until it returns `Some`, advancing the manual clock so that retries
/// scheduled in the future come due.
#[tokio::test]
async fn async_events_are_acknowledged_then_delivered_as_cloudevents() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("envlog", "env_log.wat", FunctionConfig::default())
        .await;
    let r = invoke_async(&s, "envlog", "{\"order\":1}", None).await;
    assert_eq!(r.status(), 202);
    let header_id = r.headers()["cirrus-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let accepted: cirrus_api::Accepted = r.json().await.unwrap();
    assert_eq!(accepted.request_id, header_id);
    assert!(!accepted.duplicate);
    let id = accepted.request_id;
    let record = eventually(&s, "the event's invocation", || async {
        let page: Page<InvocationRecord> = s.get_json("/v1/functions/envlog/invocations").await;
        page.items.into_iter().find(|r| r.request_id == id)
    })
    .await;
    assert_eq!(record.trigger, cirrus_api::Trigger::Async);
    assert_eq!(record.attempt, 1);
    assert_eq!(record.outcome, cirrus_api::Outcome::Success);
    assert_eq!(record.request_bytes, 11);
    let logs: Page<LogLine> = s
        .get_json(&format!("/v1/functions/envlog/logs?request_id={id}"))
        .await;
    let lines: Vec<&str> = logs.items.iter().map(|l| l.line.as_str()).collect();
    for expected in [
        "HTTP_CE_SPECVERSION=1.0".to_owned(),
        format!("HTTP_CE_ID={id}"),
        "HTTP_CE_TYPE=dev.cirrus.invoke".to_owned(),
        "HTTP_CE_SOURCE=/functions/envlog".to_owned(),
        "CONTENT_TYPE=application/json".to_owned(),
        "CIRRUS_EVENT_TYPE=async".to_owned(),
        format!("CIRRUS_REQUEST_ID={id}"),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "{expected} missing from {lines:#?}"
        );
    }
    // Delivered: the record is written first, then the event leaves the queue.
    eventually(&s, "an empty queue", || async {
        let status: cirrus_api::ServerStatus = s.get_json("/v1/status").await;
        ((status.queued_events, status.dead_events) == (0, 0)).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn failing_events_retry_then_wait_in_the_dead_letter_queue() {
    use cirrus_api::DeadEvent;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let config = FunctionConfig {
        max_attempts: 3,
        retry_delay: Duration::from_millis(100),
        ..Default::default()
    };
    s.deploy("trap", "trap.wat", config).await;
    let accepted: cirrus_api::Accepted = invoke_async(&s, "trap", "{\"n\":7}", None)
        .await
        .json()
        .await
        .unwrap();
    let id = accepted.request_id;
    let dead = eventually(&s, "the event in the DLQ", || async {
        let page: Page<DeadEvent> = s.get_json("/v1/dlq?function=trap").await;
        page.items.into_iter().find(|e| e.request_id == id)
    })
    .await;
    assert_eq!(dead.attempts, 3);
    assert!(
        dead.last_error.contains("function_error") && dead.last_error.contains("after 3 attempts"),
        "{}",
        dead.last_error
    );
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/trap/invocations").await;
    let mut attempts: Vec<u32> = page
        .items
        .iter()
        .filter(|r| r.request_id == id)
        .map(|r| r.attempt)
        .collect();
    attempts.sort();
    assert_eq!(
        attempts,
        vec![1, 2, 3],
        "every attempt recorded under one request id"
    );
    let shown: DeadEvent = s.get_json(&format!("/v1/dlq/{id}")).await;
    assert_eq!(shown.data.as_deref(), Some("{\"n\":7}"));
    let status: cirrus_api::ServerStatus = s.get_json("/v1/status").await;
    assert_eq!((status.queued_events, status.dead_events), (0, 1));

    // Redrive: three fresh attempts, then back in the DLQ.
    let r = s.send(Method::POST, &format!("/v1/dlq/{id}/redrive")).await;
    assert_eq!(r.json::<cirrus_api::Affected>().await.unwrap().count, 1);
    eventually(&s, "six attempts in all", || async {
        let page: Page<InvocationRecord> = s.get_json("/v1/functions/trap/invocations").await;
        let dead: Page<DeadEvent> = s.get_json("/v1/dlq").await;
        (page.items.iter().filter(|r| r.request_id == id).count() == 6 && dead.items.len() == 1)
            .then_some(())
    })
    .await;
    // Purge: gone.
    assert_eq!(
        s.send(Method::DELETE, &format!("/v1/dlq/{id}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        error_of(s.send(Method::GET, &format!("/v1/dlq/{id}")).await)
            .await
            .1,
        "not_found"
    );
    assert_eq!(
        error_of(s.send(Method::POST, &format!("/v1/dlq/{id}/redrive")).await)
            .await
            .1,
        "not_found"
    );
    s.stop().await;
}

#[tokio::test]
async fn events_past_their_age_are_not_retried() {
    use cirrus_api::DeadEvent;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let config = FunctionConfig {
        max_attempts: 10,
        retry_delay: Duration::from_secs(120),
        max_event_age: Duration::from_secs(60),
        ..Default::default()
    };
    s.deploy("trap", "trap.wat", config).await;
    invoke_async(&s, "trap", "{}", None).await;
    let dead = eventually(&s, "the expired event", || async {
        let page: Page<DeadEvent> = s.get_json("/v1/dlq").await;
        page.items.into_iter().next()
    })
    .await;
    assert_eq!(dead.attempts, 1);
    assert!(
        dead.last_error.contains("max_event_age"),
        "{}",
        dead.last_error
    );
    s.stop().await;
}

#[tokio::test]
async fn idempotency_keys_deduplicate_and_bad_events_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.queue.max_event_bytes = 1024).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    let first: cirrus_api::Accepted = invoke_async(&s, "echo", "1", Some("order-42"))
        .await
        .json()
        .await
        .unwrap();
    let second: cirrus_api::Accepted = invoke_async(&s, "echo", "2", Some("order-42"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second.request_id, first.request_id);
    assert!(second.duplicate && !first.duplicate);
    let other: cirrus_api::Accepted = invoke_async(&s, "echo", "3", Some("order-43"))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(other.request_id, first.request_id);
    eventually(&s, "two deliveries", || async {
        let page: Page<InvocationRecord> = s.get_json("/v1/functions/echo/invocations").await;
        (page.items.len() == 2).then_some(())
    })
    .await;

    let (status, code, _) = error_of(invoke_async(&s, "nope", "{}", None).await).await;
    assert_eq!((status.as_u16(), code.as_str()), (404, "not_found"));
    let (status, code, message) =
        error_of(invoke_async(&s, "echo", &"x".repeat(2048), None).await).await;
    assert_eq!((status.as_u16(), code.as_str()), (413, "payload_too_large"));
    assert!(message.contains("1024"), "{message}");
    let (status, _, message) =
        error_of(invoke_async(&s, "echo", "{}", Some("has space")).await).await;
    assert_eq!(status, 400, "{message}");
    let r = s
        .req(Method::POST, "/v1/functions/echo/invoke")
        .header("x-cirrus-invocation-type", "Later")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
    // The two accepted events leave the queue once delivered; the refused ones never entered.
    eventually(&s, "an empty queue", || async {
        let status: cirrus_api::ServerStatus = s.get_json("/v1/status").await;
        (status.queued_events == 0).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn busy_functions_delay_events_without_spending_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| {
        c.scaler = ScalerSettings {
            global_concurrency: 64,
            queue_depth: 0,
            queue_timeout: Duration::from_millis(10),
        }
    })
    .await;
    let config = FunctionConfig {
        max_concurrency: Some(1),
        max_attempts: 1,
        ..Default::default()
    };
    s.deploy("sleepy", "sleep.wat", config).await;
    for i in 0..3 {
        assert_eq!(
            invoke_async(&s, "sleepy", &i.to_string(), None)
                .await
                .status(),
            202
        );
    }
    eventually(&s, "three deliveries", || async {
        let page: Page<InvocationRecord> = s.get_json("/v1/functions/sleepy/invocations").await;
        (page
            .items
            .iter()
            .filter(|r| r.outcome == cirrus_api::Outcome::Success)
            .count()
            == 3)
            .then_some(())
    })
    .await;
    let status: cirrus_api::ServerStatus = s.get_json("/v1/status").await;
    assert_eq!(status.dead_events, 0, "throttling is not a failure");
    s.stop().await;
}

#[tokio::test]
async fn custom_routes_reach_their_function_and_conflicts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("orders", "env.wat", FunctionConfig::default())
        .await;
    s.deploy("new-order", "echo.wat", FunctionConfig::default())
        .await;
    let add = |function: &str, spec: serde_json::Value| {
        s.req(Method::POST, &format!("/v1/functions/{function}/triggers"))
            .json(&spec)
            .send()
    };
    let r = add("orders", serde_json::json!({"route": "GET /orders/{id}"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let route: cirrus_api::TriggerInfo = r.json().await.unwrap();
    assert_eq!(
        route.spec,
        cirrus_api::TriggerSpec::Route("GET /orders/{id}".into())
    );
    assert_eq!(
        add(
            "new-order",
            serde_json::json!({"route": "POST /orders/new"})
        )
        .await
        .unwrap()
        .status(),
        201
    );
    // Same shape, overlapping method: refused, naming the other route.
    let (status, code, message) = error_of(
        add("new-order", serde_json::json!({"route": "/orders/{order}"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status.as_u16(), code.as_str()), (409, "conflict"));
    assert!(
        message.contains("GET /orders/{id}") && message.contains("orders"),
        "{message}"
    );
    for bad in [
        serde_json::json!({"route": "/v1/functions"}),
        serde_json::json!({"route": "FETCH /x"}),
        serde_json::json!({"topic": "no spaces"}),
        serde_json::json!({"queue": "x"}),
    ] {
        let (status, _, message) = error_of(add("orders", bad.clone()).await.unwrap()).await;
        assert_eq!(status, 400, "{bad}: {message}");
    }
    assert_eq!(
        error_of(
            add("nobody", serde_json::json!({"topic": "t"}))
                .await
                .unwrap()
        )
        .await
        .0,
        404
    );

    // The routed request reaches the function with its whole path.
    let env = s.call("/orders/42?full=1").await.text().await.unwrap();
    assert!(
        env.contains("PATH_INFO=/orders/42\n") && env.contains("QUERY_STRING=full=1\n"),
        "{env}"
    );
    let r = s
        .http
        .post(format!("{}/orders/new", s.url))
        .body("created")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "created");
    assert_eq!(error_of(s.call("/orders").await).await.0, 404);
    let r = s
        .http
        .delete(format!("{}/orders/42", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 404);

    // Listed with the function and globally; removed by id.
    let info: FunctionInfo = s.get_json("/v1/functions/orders").await;
    assert_eq!(info.triggers.len(), 1);
    let all: Vec<cirrus_api::TriggerInfo> = s.get_json("/v1/triggers").await;
    assert_eq!(all.len(), 2);
    assert_eq!(
        s.send(Method::DELETE, &format!("/v1/triggers/{}", route.id))
            .await
            .status(),
        200
    );
    assert_eq!(error_of(s.call("/orders/42").await).await.0, 404);
    assert_eq!(
        error_of(
            s.send(Method::DELETE, &format!("/v1/triggers/{}", route.id))
                .await
        )
        .await
        .0,
        404
    );
    s.stop().await;

    // Triggers survive a restart.
    let s = start(dir.path()).await;
    let r = s
        .http
        .post(format!("{}/orders/new", s.url))
        .body("again")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "again");
    s.stop().await;
}

#[tokio::test]
async fn topics_fan_out_to_every_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("audit", "env_log.wat", FunctionConfig::default())
        .await;
    s.deploy("mailer", "env_log.wat", FunctionConfig::default())
        .await;
    s.deploy("other", "env_log.wat", FunctionConfig::default())
        .await;
    for f in ["audit", "mailer"] {
        let r = s
            .req(Method::POST, &format!("/v1/functions/{f}/triggers"))
            .json(&serde_json::json!({"topic": "orders.created"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = s
        .req(Method::POST, "/v1/topics/orders.created")
        .header("content-type", "application/json")
        .body("{\"id\":7}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let published: serde_json::Value = r.json().await.unwrap();
    let ids: Vec<String> = published["request_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    for (f, id) in ["audit", "mailer"].iter().zip(&ids) {
        let lines = eventually(&s, "the topic event's delivery", || async {
            let logs: Page<LogLine> = s
                .get_json(&format!("/v1/functions/{f}/logs?request_id={id}"))
                .await;
            (!logs.items.is_empty()).then_some(logs.items)
        })
        .await;
        let lines: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
        assert!(
            lines.contains(&"HTTP_CE_TYPE=dev.cirrus.topic"),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"HTTP_CE_SOURCE=/topics/orders.created"),
            "{lines:?}"
        );
    }
    let other: Page<InvocationRecord> = s.get_json("/v1/functions/other/invocations").await;
    assert!(other.items.is_empty(), "not subscribed");
    let (status, _, message) =
        error_of(s.send(Method::POST, "/v1/topics/nobody-listens").await).await;
    assert_eq!(status, 404);
    assert!(message.contains("trigger add"), "{message}");
    assert_eq!(
        error_of(s.send(Method::POST, "/v1/topics/bad%20name").await)
            .await
            .0,
        400
    );
    s.stop().await;
}

fn then(destinations: &[&str]) -> FunctionConfig {
    FunctionConfig {
        on_success: destinations.iter().map(|d| d.parse().unwrap()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn pipelines_carry_results_through_destinations_with_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    // a → b → (c, topic done → audit); a and b echo their input on.
    s.deploy("c", "env_log.wat", FunctionConfig::default())
        .await;
    s.deploy("audit", "env_log.wat", FunctionConfig::default())
        .await;
    let r = s
        .req(Method::POST, "/v1/functions/audit/triggers")
        .json(&serde_json::json!({"topic": "done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    s.deploy("b", "echo.wat", then(&["function:c", "topic:done"]))
        .await;
    s.deploy("a", "echo.wat", then(&["function:b"])).await;

    let accepted: cirrus_api::Accepted = invoke_async(&s, "a", "{\"photo\":1}", None)
        .await
        .json()
        .await
        .unwrap();
    let root = accepted.request_id;
    let trace = eventually(&s, "the whole pipeline", || async {
        let trace: serde_json::Value = s.get_json(&format!("/v1/trace/{root}")).await;
        trace["invocations"]
            .as_array()
            .is_some_and(|a| a.len() == 4)
            .then_some(trace)
    })
    .await;
    let records: Vec<InvocationRecord> =
        serde_json::from_value(trace["invocations"].clone()).unwrap();
    let by = |f: &str| records.iter().find(|r| r.function == f).unwrap();
    assert!(records
        .iter()
        .all(|r| r.trace_id == trace["trace_id"].as_str().unwrap()
            && r.outcome == cirrus_api::Outcome::Success));
    assert_eq!(by("a").trigger, cirrus_api::Trigger::Async);
    assert_eq!(by("c").trigger, cirrus_api::Trigger::Destination);
    assert_eq!(by("audit").trigger, cirrus_api::Trigger::Destination);
    assert_eq!(by("a").parent_request_id, None);
    assert_eq!(by("b").parent_request_id.as_deref(), Some(root.as_str()));
    assert_eq!(
        by("c").parent_request_id.as_ref(),
        Some(&by("b").request_id)
    );
    assert_eq!(
        by("audit").parent_request_id.as_ref(),
        Some(&by("b").request_id)
    );
    // c got b's output (a's input, echoed twice) as a result event.
    assert_eq!(by("c").request_bytes, 11);
    let logs: Page<LogLine> = s
        .get_json(&format!(
            "/v1/functions/c/logs?request_id={}",
            by("c").request_id
        ))
        .await;
    let lines: Vec<&str> = logs.items.iter().map(|l| l.line.as_str()).collect();
    assert!(
        lines.contains(&"HTTP_CE_TYPE=dev.cirrus.result"),
        "{lines:?}"
    );
    assert!(lines.contains(&"HTTP_CE_SOURCE=/functions/b"), "{lines:?}");
    assert_eq!(
        error_of(s.send(Method::GET, "/v1/trace/no-such-request").await)
            .await
            .0,
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn failures_go_to_on_failure_destinations_and_cycles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("report", "env_log.wat", FunctionConfig::default())
        .await;
    let failing = FunctionConfig {
        max_attempts: 1,
        on_failure: Some("function:report".parse().unwrap()),
        ..Default::default()
    };
    s.deploy("trap", "trap.wat", failing).await;
    let accepted: cirrus_api::Accepted = invoke_async(&s, "trap", "{\"x\":1}", None)
        .await
        .json()
        .await
        .unwrap();
    let report = eventually(&s, "the failure report", || async {
        let page: Page<InvocationRecord> = s.get_json("/v1/functions/report/invocations").await;
        page.items.into_iter().next()
    })
    .await;
    assert_eq!(
        report.parent_request_id.as_deref(),
        Some(accepted.request_id.as_str())
    );
    let logs: Page<LogLine> = s
        .get_json(&format!(
            "/v1/functions/report/logs?request_id={}",
            report.request_id
        ))
        .await;
    assert!(logs
        .items
        .iter()
        .any(|l| l.line == "HTTP_CE_TYPE=dev.cirrus.failure"));
    let dead: Page<cirrus_api::DeadEvent> = s.get_json("/v1/dlq").await;
    assert!(
        dead.items.is_empty(),
        "sent to on_failure instead of the DLQ"
    );

    // x → y, then y → x would loop forever: refused, naming the cycle.
    s.deploy("x", "echo.wat", then(&["function:y"])).await;
    let bytes = std::fs::read(fixture("echo.wat")).unwrap();
    let (status, _, message) = error_of(
        s.deploy_raw("y", Some(bytes.clone()), Some(&then(&["function:x"])))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        message.contains("cycle") && message.contains("x → y → x") || message.contains("y → x → y"),
        "{message}"
    );
    let (status, _, message) = error_of(
        s.deploy_raw("z", Some(bytes), Some(&then(&["function:z"])))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{message}");
    s.stop().await;
}

#[tokio::test]
async fn schedules_fire_on_time_and_missed_ticks_fire_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("tick", "env_log.wat", FunctionConfig::default())
        .await;
    let add = |spec: serde_json::Value| {
        s.req(Method::POST, "/v1/functions/tick/triggers")
            .json(&spec)
            .send()
    };
    for bad in ["0 25 * * *", "rate(0 minutes)", "TZ=Nowhere/City 0 9 * * *"] {
        let (status, _, message) =
            error_of(add(serde_json::json!({ "schedule": bad })).await.unwrap()).await;
        assert_eq!(status, 400, "{bad}: {message}");
    }
    assert_eq!(
        add(serde_json::json!({"schedule": "rate(1 minute)"}))
            .await
            .unwrap()
            .status(),
        201
    );
    let count = || async {
        let page: Page<InvocationRecord> = s.get_json("/v1/functions/tick/invocations").await;
        page.items
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(count().await.is_empty(), "not due yet");

    s.clock.advance(Duration::from_secs(61));
    let first = eventually(&s, "the first tick", || async {
        count().await.into_iter().next()
    })
    .await;
    assert_eq!(first.trigger, cirrus_api::Trigger::Schedule);
    let logs: Page<LogLine> = s
        .get_json(&format!(
            "/v1/functions/tick/logs?request_id={}",
            first.request_id
        ))
        .await;
    assert!(
        logs.items
            .iter()
            .any(|l| l.line == "HTTP_CE_TYPE=dev.cirrus.schedule"),
        "{:?}",
        logs.items
    );
    assert!(logs
        .items
        .iter()
        .any(|l| l.line.starts_with("HTTP_CE_SOURCE=/schedules/")));

    // Ten minutes pass at once: one tick, not ten.
    s.clock.advance(Duration::from_secs(600));
    eventually(&s, "the second tick", || async {
        (count().await.len() == 2).then_some(())
    })
    .await;
    s.stop().await;

    // The server was down past several ticks: on start-up, the missed ones fire once.
    let s = start(dir.path()).await;
    s.clock.advance(Duration::from_secs(3600));
    let count = || async {
        let page: Page<InvocationRecord> = s.get_json("/v1/functions/tick/invocations").await;
        page.items.len()
    };
    let mut seen = 0;
    for _ in 0..40 {
        seen = count().await;
        if seen >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        (seen, count().await),
        (3, 3),
        "one catch-up tick after the restart"
    );
    s.stop().await;
}

#[tokio::test]
async fn cloudevents_are_accepted_in_both_modes_and_malformed_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("sink", "env_log.wat", FunctionConfig::default())
        .await;
    let structured = serde_json::json!({
        "specversion": "1.0", "id": "evt-1", "source": "/shop", "type": "order.created", "data": {"n": 1}
    });
    let r = s
        .req(Method::POST, "/v1/functions/sink/invoke")
        .header("x-cirrus-invocation-type", "Event")
        .header("content-type", "application/cloudevents+json")
        .body(structured.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<cirrus_api::Accepted>().await.unwrap().request_id;
    let lines = eventually(&s, "the structured event's delivery", || async {
        let logs: Page<LogLine> = s
            .get_json(&format!("/v1/functions/sink/logs?request_id={id}"))
            .await;
        (!logs.items.is_empty()).then_some(logs.items)
    })
    .await;
    let lines: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    assert!(
        lines.contains(&"HTTP_CE_TYPE=order.created") && lines.contains(&"HTTP_CE_SOURCE=/shop"),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"CONTENT_TYPE=application/json") && lines.contains(&"CONTENT_LENGTH=7"),
        "{lines:?}"
    );

    // Malformed: refused with the attribute at fault, nothing queued.
    for (content_type, body, expect) in [
        ("application/cloudevents+json", "{oops", "not JSON"),
        (
            "application/cloudevents+json",
            r#"{"specversion":"1.0","id":"1","type":"t"}"#,
            "`source`",
        ),
    ] {
        let r = s
            .req(Method::POST, "/v1/functions/sink/invoke")
            .header("x-cirrus-invocation-type", "Event")
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, _, message) = error_of(r).await;
        assert_eq!(status, 400);
        assert!(message.contains(expect), "{message}");
    }
    s.req(Method::POST, "/v1/functions/sink/triggers")
        .json(&serde_json::json!({"topic": "t"}))
        .send()
        .await
        .unwrap();
    let r = s
        .req(Method::POST, "/v1/topics/t")
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(message.contains("ce-source"), "{message}");
    eventually(&s, "an empty queue", || async {
        let status: cirrus_api::ServerStatus = s.get_json("/v1/status").await;
        (status.queued_events == 0).then_some(())
    })
    .await;
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/sink/invocations").await;
    assert_eq!(page.items.len(), 1, "only the valid event ran");
    s.stop().await;
}

#[tokio::test]
async fn kv_tables_store_values_conditionally_and_emit_ordered_changes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("watch", "log_input.wat", FunctionConfig::default())
        .await;
    let r = s
        .req(Method::POST, "/v1/functions/watch/triggers")
        .json(&serde_json::json!({"table": "photos"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let put = |key: &str, body: &str, if_match: Option<&str>| {
        let mut r = s
            .req(Method::PUT, &format!("/v1/kv/photos/{key}"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(tag) = if_match {
            r = r.header("if-match", tag);
        }
        r.send()
    };
    let first: cirrus_api::KvEntry = put("cat.ppm", r#"{"w":4}"#, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    let second: cirrus_api::KvEntry = put("cat.ppm", r#"{"w":2}"#, Some("\"1\""))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    // A stale version is a conflict and writes nothing.
    let (status, code, message) =
        error_of(put("cat.ppm", r#"{"w":9}"#, Some("1")).await.unwrap()).await;
    assert_eq!((status.as_u16(), code.as_str()), (409, "conflict"));
    assert!(message.contains("version 2"), "{message}");
    let create_only = s
        .req(Method::PUT, "/v1/kv/photos/cat.ppm")
        .header("if-none-match", "*")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(create_only.status(), 409);
    let r = s.send(Method::GET, "/v1/kv/photos/cat.ppm").await;
    assert_eq!(r.headers()["etag"], "\"2\"");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), r#"{"w":2}"#);
    put("dog.ppm", "{}", None).await.unwrap();
    put("z/other", "{}", None).await.unwrap();
    let listed: Page<cirrus_api::KvEntry> = s.get_json("/v1/kv/photos?prefix=&limit=2").await;
    assert_eq!(
        listed
            .items
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        ["cat.ppm", "dog.ppm"]
    );
    let rest: Page<cirrus_api::KvEntry> = s
        .get_json(&format!(
            "/v1/kv/photos?limit=2&after={}",
            listed.next.unwrap()
        ))
        .await;
    assert_eq!(
        rest.items
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        ["z/other"]
    );
    let prefixed: Page<cirrus_api::KvEntry> = s.get_json("/v1/kv/photos?prefix=d").await;
    assert_eq!(prefixed.items.len(), 1);
    assert_eq!(
        s.send(Method::DELETE, "/v1/kv/photos/cat.ppm")
            .await
            .status(),
        200
    );
    assert_eq!(
        error_of(s.send(Method::GET, "/v1/kv/photos/cat.ppm").await)
            .await
            .0,
        404
    );
    assert_eq!(
        error_of(s.send(Method::DELETE, "/v1/kv/photos/cat.ppm").await)
            .await
            .0,
        404
    );
    let (status, _, message) = error_of(put("bad", "{not json", None).await.unwrap()).await;
    assert_eq!(status, 400, "{message}");
    assert_eq!(
        error_of(s.send(Method::GET, "/v1/kv/bad%20table/x").await)
            .await
            .0,
        400
    );

    // The watcher saw cat.ppm's changes in commit order: insert, update, delete.
    let ops = eventually(&s, "five change events", || async {
        let logs: Page<LogLine> = s.get_json("/v1/functions/watch/logs?limit=1000").await;
        let changes: Vec<serde_json::Value> = logs
            .items
            .iter()
            .filter_map(|l| serde_json::from_str(&l.line[..=l.line.rfind('}')?]).ok())
            .collect();
        (changes.len() == 5).then_some(changes)
    })
    .await;
    let cat: Vec<(String, u64)> = ops
        .iter()
        .filter(|c| c["key"] == "cat.ppm")
        .map(|c| {
            (
                c["op"].as_str().unwrap().to_owned(),
                c["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cat,
        [
            ("insert".to_owned(), 1),
            ("update".to_owned(), 2),
            ("delete".to_owned(), 2)
        ]
    );
    let update = ops.iter().find(|c| c["op"] == "update").unwrap();
    assert_eq!(
        (update["old"]["w"].as_u64(), update["new"]["w"].as_u64()),
        (Some(4), Some(2))
    );
    s.stop().await;
}

#[tokio::test]
async fn loops_through_topics_stop_at_the_depth_limit_and_resent_cloudevents_are_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    // Two echoes, each publishing to the topic the other subscribes to: a loop no deploy
    // check sees (one function feeding its own topic is refused at deploy).
    s.deploy("loop", "echo.wat", then(&["topic:again"])).await;
    s.deploy("loop2", "echo.wat", then(&["topic:back"])).await;
    for (function, topic) in [("loop2", "again"), ("loop", "back")] {
        let added = s
            .req(Method::POST, &format!("/v1/functions/{function}/triggers"))
            .json(&serde_json::json!({ "topic": topic }))
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 201);
    }
    invoke_async(&s, "loop", "{}", None).await;
    let dead = eventually(&s, "the loop stopped", || async {
        let page: Page<cirrus_api::DeadEvent> = s.get_json("/v1/dlq").await;
        page.items.into_iter().next()
    })
    .await;
    assert!(
        dead.last_error.contains("deeper than 32"),
        "{}",
        dead.last_error
    );
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/loop/invocations?limit=100").await;
    let page2: Page<InvocationRecord> = s
        .get_json("/v1/functions/loop2/invocations?limit=100")
        .await;
    assert_eq!(
        page.items.len() + page2.items.len(),
        33,
        "the first run and 32 steps"
    );

    // The same CloudEvent (source + id) published twice is queued once.
    s.deploy("sink", "echo.wat", FunctionConfig::default())
        .await;
    s.req(Method::POST, "/v1/functions/sink/triggers")
        .json(&serde_json::json!({"topic": "orders"}))
        .send()
        .await
        .unwrap();
    let publish = || {
        s.req(Method::POST, "/v1/topics/orders")
            .header("ce-specversion", "1.0")
            .header("ce-id", "order-7")
            .header("ce-source", "/shop")
            .header("ce-type", "order.created")
            .body("{}")
            .send()
    };
    let first: serde_json::Value = publish().await.unwrap().json().await.unwrap();
    let again: serde_json::Value = publish().await.unwrap().json().await.unwrap();
    assert_eq!(first["request_ids"].as_array().unwrap().len(), 1);
    assert!(
        again["request_ids"].as_array().unwrap().is_empty(),
        "{again}"
    );
    s.stop().await;
}

#[tokio::test]
async fn kv_destinations_write_results_as_rows_and_their_triggers_fire() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("watch", "log_input.wat", FunctionConfig::default())
        .await;
    s.req(Method::POST, "/v1/functions/watch/triggers")
        .json(&serde_json::json!({"table": "results"}))
        .send()
        .await
        .unwrap();
    // A command module (no HTTP of its own) feeds a table through its destination.
    s.deploy("produce", "echo.wat", then(&["kv:results"])).await;
    let accepted: cirrus_api::Accepted = invoke_async(&s, "produce", "{\"answer\":42}", None)
        .await
        .json()
        .await
        .unwrap();
    let id = accepted.request_id;
    let row = eventually(&s, "the result row", || async {
        let r = s.send(Method::GET, &format!("/v1/kv/results/{id}")).await;
        if r.status() == 200 {
            Some(r.text().await.unwrap())
        } else {
            None
        }
    })
    .await;
    assert_eq!(row, "{\"answer\":42}");
    let change = eventually(&s, "the table trigger", || async {
        let page: Page<InvocationRecord> = s.get_json("/v1/functions/watch/invocations").await;
        page.items.into_iter().next()
    })
    .await;
    assert_eq!(change.trigger, cirrus_api::Trigger::Table);
    assert_eq!(
        change.parent_request_id.as_deref(),
        Some(id.as_str()),
        "lineage through the table"
    );
    s.stop().await;
}

/// Asynchronous events run as many at once as the server lets one function run, not a
/// fixed 64: 100 events of a function that sleeps 500 ms reach more than 64 deliveries
/// in flight, and never more than its fair share of the default `--max-in-flight`.
#[tokio::test]
async fn events_are_delivered_as_wide_as_the_servers_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("slow", "sleep.wat", FunctionConfig::default())
        .await;
    let sends = (0..100).map(|_| invoke_async(&s, "slow", "{}", None));
    for response in futures_util::future::join_all(sends).await {
        assert_eq!(response.status(), 202);
    }
    let fair_share =
        cirrus_server::admission::fair_share(ScalerSettings::default().global_concurrency);
    let mut widest = 0;
    for _ in 0..400 {
        let status: cirrus_api::ServerStatus = s.get_json("/v1/status").await;
        let running = status
            .functions
            .iter()
            .find(|f| f.name == "slow")
            .map_or(0, |f| f.in_flight);
        widest = widest.max(running);
        if status.queued_events == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        widest > 64 && widest <= fair_share,
        "{widest} deliveries at once (fair share {fair_share})"
    );
    s.stop().await;
}
