//! Fair sharing of the server's invocation capacity: a flooded function cannot starve
//! the others, reserved concurrency is kept for its function and caps it, and
//! reservations that would leave too little unreserved are refused.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use cirrus_api::{FunctionConfig, FunctionInfo, ServerStatus};
use cirrus_server::scaler::ScalerSettings;
use common::{error_of, start_with, Running};
use reqwest::Method;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a flood's callers got back.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    /// The message of every 429.
    throttled: Vec<String>,
    other: Vec<u16>,
}

/// Callers that call one path over and over until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    fn start(s: &Running, path: &str, callers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let tasks = (0..callers)
            .map(|_| {
                let (stop, tally) = (stop.clone(), tally.clone());
                let (http, url) = (s.http.clone(), format!("{}{path}", s.url));
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let r = http.get(&url).send().await.unwrap();
                        match r.status().as_u16() {
                            200 => tally.lock().unwrap().ok += 1,
                            429 => {
                                assert_eq!(r.headers()["retry-after"], "1");
                                let (_, _, message) = error_of(r).await;
                                tally.lock().unwrap().throttled.push(message);
                                // Paces the retries of refused callers (as Retry-After
                                // asks, only faster), so they do not spin the CPU.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            other => tally.lock().unwrap().other.push(other),
                        }
                    }
                })
            })
            .collect();
        Self { stop, tally, tasks }
    }

    fn ok(&self) -> usize {
        self.tally.lock().unwrap().ok
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.tally).unwrap().into_inner().unwrap()
    }
}

fn settings(
    max_in_flight: usize,
    queue_depth: usize,
) -> impl FnOnce(&mut cirrus_server::ServerConfig) {
    move |c| {
        c.scaler = ScalerSettings {
            global_concurrency: max_in_flight,
            queue_depth,
            queue_timeout: Duration::from_secs(1),
        }
    }
}

/// Waits until at least `n` invocations are in flight on the server.
async fn saturated(s: &Running, n: usize) {
    for _ in 0..3000 {
        let status: ServerStatus = s.get_json("/v1/status").await;
        if status.in_flight >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the flood never had {n} invocations in flight");
}

/// `slow` (sleeps) and `healthy` (echoes), for the tests where one starves the other.
async fn deploy_slow_and_healthy(s: &Running) {
    s.deploy("slow", "sleep.wat", FunctionConfig::default())
        .await;
    s.deploy("healthy", "echo.wat", FunctionConfig::default())
        .await;
}

/// The status of `healthy`'s call number `i`.
async fn call_healthy(s: &Running, i: usize) -> u16 {
    s.http
        .post(format!("{}/fn/healthy", s.url))
        .body(format!("call {i}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn reserved(n: u32) -> FunctionConfig {
    FunctionConfig {
        reserved_concurrency: Some(n),
        ..Default::default()
    }
}

/// The security probe: 200 callers of one slow function made 75 % of another
/// function's calls answer 429 (here 100 callers against a cap of 16). Now the flooded function is held to its fair share
/// (12 of 16) and the healthy one always finds room.
#[tokio::test]
async fn a_flooded_function_does_not_starve_another() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), settings(16, 4)).await;
    deploy_slow_and_healthy(&s).await;
    assert_eq!(s.call("/fn/slow").await.status(), 200);
    assert_eq!(s.call("/fn/healthy").await.status(), 200);

    let flood = Flood::start(&s, "/fn/slow", 100);
    saturated(&s, 12).await;
    let mut healthy = Vec::new();
    for i in 0..30 {
        healthy.push(call_healthy(&s, i).await);
    }
    let flood = flood.stop().await;

    assert!(healthy.iter().all(|&s| s == 200), "healthy: {healthy:?}");
    assert!(flood.other.is_empty(), "flood: {:?}", flood.other);
    assert!(flood.ok > 0);
    assert!(!flood.throttled.is_empty(), "the flood was never throttled");
    // Only its own share held it back, never a full server.
    for message in &flood.throttled {
        assert!(
            message.starts_with(
                "function \"slow\" holds its fair share of the server: 12 of the 16 invocations"
            ),
            "{message}"
        );
    }
    s.stop().await;
}

/// Events are delivered as wide as the server's capacity, so a backlog of one
/// function's events is held to that function's fair share like synchronous callers:
/// 300 queued events of a slow function fill 12 of 16 invocations, and a healthy
/// function's calls meanwhile all answer 200.
#[tokio::test]
async fn a_backlog_of_events_does_not_starve_another_function() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), settings(16, 4)).await;
    deploy_slow_and_healthy(&s).await;
    let sends = (0..300).map(|_| common::invoke_async(&s, "slow", "{}", None));
    for response in futures_util::future::join_all(sends).await {
        assert_eq!(response.status(), 202);
    }
    saturated(&s, 12).await;
    let mut healthy = Vec::new();
    let mut widest = 0;
    for i in 0..30 {
        healthy.push(call_healthy(&s, i).await);
        let status: ServerStatus = s.get_json("/v1/status").await;
        widest = widest.max(status.in_flight);
    }
    assert!(healthy.iter().all(|&s| s == 200), "healthy: {healthy:?}");
    assert!(
        widest <= 13,
        "{widest} in flight: the events' 12 and a healthy call"
    );
    let status: ServerStatus = s.get_json("/v1/status").await;
    assert!(
        status.queued_events > 0,
        "the backlog was still there meanwhile"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_reservation_is_kept_for_its_function_and_caps_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), settings(16, 0)).await;
    s.deploy("kept", "sleep.wat", reserved(3)).await;
    for name in ["hot1", "hot2"] {
        s.deploy(name, "sleep.wat", FunctionConfig::default()).await;
    }
    for name in ["kept", "hot1", "hot2"] {
        assert_eq!(s.call(&format!("/fn/{name}")).await.status(), 200);
    }

    // Two floods take all 13 unreserved invocations.
    let hot1 = Flood::start(&s, "/fn/hot1", 30);
    let hot2 = Flood::start(&s, "/fn/hot2", 30);
    saturated(&s, 13).await;
    let kept = Flood::start(&s, "/fn/kept", 8);
    for _ in 0..6000 {
        if kept.ok() >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kept = kept.stop().await;
    let (hot1, hot2) = (hot1.stop().await, hot2.stop().await);

    assert!(
        kept.ok >= 9,
        "the reserved function got in {} times",
        kept.ok
    );
    assert!(kept.other.is_empty(), "{:?}", kept.other);
    // Eight callers, three places: it was held to its reservation, and by nothing else.
    assert!(!kept.throttled.is_empty());
    for message in &kept.throttled {
        assert_eq!(
            message,
            "function \"kept\" is at its reserved concurrency of 3; retry later"
        );
    }
    // The floods did fill the rest of the server.
    for flood in [&hot1, &hot2] {
        assert!(flood.other.is_empty(), "{:?}", flood.other);
        assert!(!flood.throttled.is_empty());
    }
    assert!(
        hot1.throttled
            .iter()
            .chain(&hot2.throttled)
            .any(|m| m.contains("13 invocations shared by functions without a reservation")),
        "{:?}",
        hot1.throttled
    );
    s.stop().await;
}

async fn deploy_error(s: &Running, name: &str, config: FunctionConfig) -> (u16, String, String) {
    let bytes = std::fs::read(common::fixture("echo.wat")).unwrap();
    let (status, code, message) =
        error_of(s.deploy_raw(name, Some(bytes), Some(&config)).await).await;
    (status.as_u16(), code, message)
}

#[tokio::test]
async fn reservations_that_leave_too_little_unreserved_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), settings(16, 0)).await;
    s.deploy("a", "echo.wat", reserved(10)).await;

    let refused = deploy_error(&s, "b", reserved(5)).await;
    assert_eq!(
        refused,
        (
            400,
            "bad_request".to_owned(),
            "invalid config: reserved_concurrency: 5 does not fit: the server runs 16 \
             invocations at once (--max-in-flight), at least 2 of them stay unreserved, and \
             other functions reserve 10, so at most 4 can be reserved for \"b\""
                .to_owned()
        )
    );
    // Nothing happened: no function, and a's reservation is whole.
    assert_eq!(s.send(Method::GET, "/v1/functions/b").await.status(), 404);
    let (status, _, message) = deploy_error(&s, "a", reserved(15)).await;
    assert_eq!(status, 400);
    assert!(
        message.contains("at most 14 can be reserved for \"a\""),
        "{message}"
    );
    let a: FunctionInfo = s.get_json("/v1/functions/a").await;
    assert_eq!(
        (a.versions, a.latest.config.reserved_concurrency),
        (1, Some(10))
    );
    s.deploy("b", "echo.wat", reserved(4)).await;

    // A deleted function's reservation is free again; the latest version's counts.
    assert_eq!(
        s.send(Method::DELETE, "/v1/functions/a").await.status(),
        200
    );
    s.deploy("c", "echo.wat", reserved(10)).await;
    let (status, _, message) = deploy_error(&s, "d", reserved(1)).await;
    assert_eq!(status, 400);
    assert!(message.contains("other functions reserve 14"), "{message}");
    s.deploy("b", "echo.wat", reserved(3)).await;
    s.deploy("d", "echo.wat", reserved(1)).await;
    s.stop().await;

    // After a restart the live functions' reservations are known before any deploy.
    let s = start_with(dir.path(), settings(16, 0)).await;
    let (status, _, message) = deploy_error(&s, "e", reserved(1)).await;
    assert_eq!(status, 400);
    assert!(message.contains("other functions reserve 14"), "{message}");
    s.stop().await;
}
