//! Execution environments on the real server with real guests: warm reuse, retirement
//! of environments left in doubt, single-use spares, provisioned environments, the
//! memory budget and CPU lanes.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use cirrus_api::{FunctionConfig, InvocationRecord, Page, ServerStatus};
use reqwest::StatusCode;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn cold(r: &reqwest::Response) -> bool {
    r.headers()["cirrus-cold-start"] == "true"
}

async fn post(s: &Running, path: &str, body: Vec<u8>) -> reqwest::Response {
    s.http
        .post(format!("{}{path}", s.url))
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn metric(s: &Running, name: &str) -> f64 {
    let text = s
        .send(reqwest::Method::GET, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

async fn status(s: &Running, function: &str) -> cirrus_api::FunctionStatus {
    let status: ServerStatus = s.get_json("/v1/status").await;
    status
        .functions
        .into_iter()
        .find(|f| f.name == function)
        .unwrap()
}

#[tokio::test]
async fn a_component_environment_serves_warm_calls_until_left_in_doubt() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.payload.max_response_bytes = 1 << 20).await;
    let hello = example("hello-rust/hello.wasm");
    let r = s.deploy_raw("web", Some(hello), None).await;
    assert_eq!(r.status(), 201);

    let r = s.call("/fn/web").await;
    assert!(cold(&r));
    for _ in 0..3 {
        let r = s.call("/fn/web").await;
        assert_eq!(r.status(), 200);
        assert!(!cold(&r), "the environment is reused");
    }
    assert_eq!(metric(&s, "cirrus_environments_started_total").await, 1.0);
    assert_eq!(metric(&s, "cirrus_environments_reused_total").await, 3.0);
    let live = status(&s, "web").await;
    assert_eq!((live.environments, live.idle_environments), (1, 1));

    // The guest echoes 1.5 MiB, over the response limit: the body is cut off mid-write,
    // so the instance is in doubt and is retired; the next call starts a new one.
    let r = post(&s, "/fn/web", vec![b'x'; 1536 << 10]).await;
    assert_eq!(r.status(), 413);
    assert_eq!(metric(&s, "cirrus_environments_retired_total").await, 1.0);
    let r = s.call("/fn/web").await;
    assert_eq!(r.status(), 200);
    assert!(cold(&r), "a faulty environment is never reused");
    let r = s.call("/fn/web").await;
    assert!(!cold(&r));

    // Each record has its own figures; cold ones have init_ms.
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/web/invocations").await;
    let starts: Vec<(bool, bool)> = page
        .items
        .iter()
        .rev()
        .map(|r| (r.cold_start, r.init_ms.is_some()))
        .collect();
    assert_eq!(
        starts,
        [
            (true, true),
            (false, false),
            (false, false),
            (false, false),
            (false, false),
            (true, true),
            (false, false)
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn reuse_counts_and_a_timeout_retires_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let config = FunctionConfig {
        reuse: 2,
        ..Default::default()
    };
    let r = s
        .deploy_raw(
            "twice",
            Some(example("hello-rust/hello.wasm")),
            Some(&config),
        )
        .await;
    assert_eq!(r.status(), 201);
    let colds: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(cold(&s.call("/fn/twice").await));
        }
        v
    };
    assert_eq!(colds, [true, false, true, false, true], "two calls each");

    // relay sleeps RELAY_SLEEP_MS: past its timeout the guest is stopped mid-call, and
    // its environment must not serve again.
    let mut env = BTreeMap::new();
    env.insert("RELAY_SLEEP_MS".to_owned(), "400".to_owned());
    let slow = FunctionConfig {
        timeout: Duration::from_millis(200),
        env,
        ..Default::default()
    };
    let relay = std::fs::read(fixture("relay.wasm")).unwrap();
    let r = s.deploy_raw("slow", Some(relay), Some(&slow)).await;
    assert_eq!(r.status(), 201);
    let r = s.call("/fn/slow").await;
    assert_eq!(r.status(), 504);
    assert_eq!(status(&s, "slow").await.environments, 0, "retired");
    s.stop().await;
}

#[tokio::test]
async fn command_modules_get_a_fresh_instance_started_ahead_of_each_call() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("env", "env.wat", FunctionConfig::default()).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = s.call("/fn/env").await;
        assert_eq!(r.status(), 200);
        assert_eq!(cold(&r), i == 0, "call {i}");
        let id = r.headers()["cirrus-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let text = r.text().await.unwrap();
        // Per-call facts are in each call's own environment.
        assert!(text.contains(&format!("CIRRUS_REQUEST_ID={id}")), "{text}");
        ids.push(id);
    }
    // Every call ran in its own instance: started = calls + the spare waiting now.
    let started = metric(&s, "cirrus_environments_started_total").await;
    assert!(started >= 4.0, "{started}");
    assert_eq!(metric(&s, "cirrus_environments_reused_total").await, 3.0);
    s.stop().await;
}

#[tokio::test]
async fn min_loaded_keeps_that_many_environments_started() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let config = FunctionConfig {
        min_loaded: 3,
        ..Default::default()
    };
    let r = s
        .deploy_raw(
            "warm",
            Some(example("hello-rust/hello.wasm")),
            Some(&config),
        )
        .await;
    assert_eq!(r.status(), 201);
    // Preloading runs after the deploy answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&s, "warm").await.idle_environments < 3 {
        assert!(Instant::now() < deadline, "three environments started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three callers at once: all warm.
    let calls = (0..3).map(|_| s.call("/fn/warm"));
    for r in futures_util::future::join_all(calls).await {
        assert!(!cold(&r));
    }
    // Idle far past idle_timeout: provisioned environments stay.
    s.clock.advance(Duration::from_secs(3600));
    (s.sweep)();
    assert_eq!(status(&s, "warm").await.environments, 3);
    s.stop().await;
}

#[tokio::test]
async fn the_memory_budget_refuses_growth_and_new_environments_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| {
        c.memory_budget_bytes = Some(24 << 20);
        c.scaler.queue_timeout = Duration::from_millis(200);
    })
    .await;
    // hold.wat takes 12 MiB and keeps it for 300 ms: two fit in the budget, six at once
    // do not.
    s.deploy("grow", "hold.wat", small(16, 5_000)).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    let calls = (0..6).map(|_| s.call("/fn/grow"));
    let mut statuses = BTreeMap::new();
    for r in futures_util::future::join_all(calls).await {
        let status = r.status().as_u16();
        let code = match status {
            200 => "ok".to_owned(),
            _ => error_of(r).await.1,
        };
        *statuses.entry((status, code)).or_insert(0) += 1;
    }
    // Each ran, or was refused by the budget (429, "retry"): nothing else, and the
    // server is fine.
    let allowed = [(200, "ok".to_owned()), (429, "throttled".to_owned())];
    assert!(statuses.keys().all(|k| allowed.contains(k)), "{statuses:?}");
    assert!(
        statuses.contains_key(&(429, "throttled".to_owned())),
        "the budget was reached: {statuses:?}"
    );
    let used = metric(&s, "cirrus_memory_budget_used_bytes").await;
    assert!(used <= (24 << 20) as f64, "{used}");
    let r = s.invoke("echo", "still here").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "still here");
    s.stop().await;
}

// Two workers, as on a 2-core host: the lanes matter only when guests could run in
// parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guests_take_turns_on_the_cpu_lanes_and_leave_a_core_free() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.cpu_lanes = Some(1)).await;
    s.deploy("spin", "loop.wat", small(16, 1_500)).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let (http, url) = (s.http.clone(), format!("{}/fn/spin", s.url));
            tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A healthy function answers meanwhile.
    for _ in 0..20 {
        let r = s.invoke("echo", "ok").await;
        assert_eq!(r.status(), 200);
    }
    for spinner in spinners {
        assert_eq!(spinner.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    }
    // Three spinners for 1.5 s each on one lane: together they got about one core's
    // worth of CPU (1.5 s, plus each one's free slices before it needed a lane), not three.
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/spin/invocations").await;
    let cpu_ms: f64 = page.items.iter().map(|r| r.cpu_ms).sum();

    assert_eq!(page.items.len(), 3);
    assert!(cpu_ms < 2_500.0, "spinners used {cpu_ms} ms of CPU");
    s.stop().await;
}
