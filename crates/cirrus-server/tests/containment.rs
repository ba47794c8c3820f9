//! Containment of functions that call or trigger themselves: each attack runs bounded in
//! count and time against the real server, while a healthy function is measured and must
//! keep answering.
//!
//! The attacker is `fixtures/relay.wasm` (source in `fixtures/relay/`): a component that
//! calls its own route (or `RELAY_TO`) from inside its invocation, optionally several
//! times at once, and tries to pass each call off as a fresh request with a forged
//! `cirrus-lineage` header.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use cirrus_api::{DeadEvent, FunctionConfig, InvocationRecord, Page, ServerStatus};
use cirrus_server::lineage::{Lineage, LineageSigner};
use cirrus_server::Clock as _;
use reqwest::{Method, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A function that only answers; its latency is what an attack must not ruin.
const HEALTHY: &str = "healthy";

/// Calls the healthy function every 50 ms until stopped (at most 60 s or 1,200 calls),
/// keeping each answer's status and latency.
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(StatusCode, Duration)>>,
}

impl Watch {
    fn start(s: &Running) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{}/fn/{HEALTHY}", s.url);
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let began = Instant::now();
            let mut seen = Vec::new();
            while !stopping.load(Ordering::Relaxed)
                && seen.len() < 1_200
                && began.elapsed() < Duration::from_secs(60)
            {
                let sent = Instant::now();
                let status = match http
                    .post(&url)
                    .body("ping")
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await
                {
                    Ok(r) => r.status(),
                    Err(_) => StatusCode::REQUEST_TIMEOUT,
                };
                seen.push((status, sent.elapsed()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        });
        Self { stop, task }
    }

    /// Stops watching; every call must have answered 200, none slower than 5 s (the
    /// machine is noisy: this is "keeps answering", not a latency benchmark).
    async fn healthy_throughout(self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.task.await.unwrap();
        assert!(
            seen.len() >= 3,
            "{what}: too few healthy calls to judge ({})",
            seen.len()
        );
        let bad: Vec<_> = seen
            .iter()
            .filter(|(status, took)| *status != StatusCode::OK || *took > Duration::from_secs(5))
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: the healthy function suffered in {} of {} calls: {bad:?}",
            bad.len(),
            seen.len()
        );
    }
}

async fn status(s: &Running) -> ServerStatus {
    s.get_json("/v1/status").await
}

/// Waits in real time (nested calls and cancellations do not follow the manual clock)
/// for the server to have nothing in flight.
async fn settles(s: &Running, within: Duration) -> Duration {
    let began = Instant::now();
    loop {
        let now = status(s).await;
        if now.in_flight == 0 {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < within,
            "still {} invocations in flight after {within:?}",
            now.in_flight
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn relay_config(timeout: Duration, env: &[(&str, &str)]) -> FunctionConfig {
    FunctionConfig {
        memory_mb: 32,
        timeout,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

/// A relay that calls its own route: any storage grant opens the platform's address.
fn self_caller(timeout: Duration) -> FunctionConfig {
    FunctionConfig {
        storage: vec!["kv:scratch:read".parse().unwrap()],
        ..relay_config(timeout, &[])
    }
}

async fn invocations(s: &Running, function: &str) -> Vec<InvocationRecord> {
    let page: Page<InvocationRecord> = s
        .get_json(&format!("/v1/functions/{function}/invocations?limit=1000"))
        .await;
    page.items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_calling_itself_stops_at_the_depth_limit_while_others_keep_answering() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy(HEALTHY, "echo.wat", small(16, 5_000)).await;
    s.deploy("relay", "relay.wasm", self_caller(Duration::from_secs(60)))
        .await;
    let watch = Watch::start(&s);

    // Two storms at once, again and again for two seconds (at most 10 rounds): each is
    // one outside request that calls itself until stopped.
    let storm = || {
        s.http
            .get(format!("{}/fn/relay/deeper", s.url))
            .timeout(Duration::from_secs(60))
            .send()
    };
    let began = Instant::now();
    let mut rounds = 0;
    while rounds < 10 && (rounds == 0 || began.elapsed() < Duration::from_secs(2)) {
        rounds += 1;
        let (a, b) = tokio::join!(storm(), storm());
        for answer in [a.unwrap(), b.unwrap()] {
            assert_eq!(answer.status(), 508, "the refusal reaches the first caller");
            let body = answer.text().await.unwrap();
            let relays = body.lines().filter(|l| l.starts_with("relay ")).count();
            assert_eq!(relays, 33, "the first request and 32 nested calls:\n{body}");
            assert!(body.contains("\"loop_detected\""), "{body}");
            assert!(body.contains("(the limit is 32)"), "{body}");
            // The forged header each relay sent was replaced, and the genuine one never
            // reached a guest.
            assert!(!body.contains("lineage=seen"), "{body}");
        }
    }
    watch.healthy_throughout("self-invocation storms").await;
    settles(&s, Duration::from_secs(10)).await;

    let records = invocations(&s, "relay").await;
    assert_eq!(records.len(), 66 * rounds);
    let roots: Vec<_> = records
        .iter()
        .filter(|r| r.parent_request_id.is_none())
        .collect();
    assert_eq!(
        roots.len(),
        2 * rounds,
        "only the outside requests start a lineage"
    );
    // Every nested call names its caller, so the chain can be followed back.
    for record in &records {
        if let Some(parent) = &record.parent_request_id {
            assert!(records.iter().any(|r| &r.request_id == parent), "{parent}");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_storms_of_nested_calls_stay_within_their_lineage_cap() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.containment.max_lineage_in_flight = 16).await;
    s.deploy(HEALTHY, "echo.wat", small(16, 5_000)).await;
    // Each call makes two more at once: 2^33 calls if nothing stopped it.
    s.deploy("relay", "relay.wasm", self_caller(Duration::from_secs(10)))
        .await;
    let watch = Watch::start(&s);
    // Two attackers, each sending storm after storm for three seconds.
    let attacker = || {
        let url = format!("{}/fn/relay?fanout=2", s.url);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let began = Instant::now();
            let mut answers = Vec::new();
            while began.elapsed() < Duration::from_secs(3) && answers.len() < 200 {
                let sent = Instant::now();
                let answer = http
                    .get(&url)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .unwrap();
                answers.push((answer.status(), sent.elapsed()));
            }
            answers
        })
    };
    let attackers = [attacker(), attacker()];
    let mut most = 0;
    while !attackers.iter().all(|a| a.is_finished()) {
        most = most.max(status(&s).await.in_flight);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for attacker in attackers {
        for (answered, took) in attacker.await.unwrap() {
            // Some branch was refused: over the lineage's cap (429) or too deep (508).
            assert!(answered == 429 || answered == 508, "{answered}");
            assert!(took < Duration::from_secs(10), "{took:?}");
        }
    }
    // Per storm its first request and 16 nested calls, and a healthy call.
    assert!(most <= 2 * 17 + 1, "{most} invocations in flight at once");
    watch.healthy_throughout("fan-out storms").await;
    settles(&s, Duration::from_secs(10)).await;
    let ran = invocations(&s, "relay").await.len();
    assert!(ran > 2 * 16, "the storms did fan out ({ran} invocations)");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_calls_are_cancelled_when_their_caller_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy(HEALTHY, "echo.wat", small(16, 5_000)).await;
    // impatient (1 s) → middle (30 s) → sleeper (sleeps 20 s): without cancellation the
    // two inner calls would hold their slots for 20 s after nobody waits for them.
    let to = |f: &str| format!("{}/fn/{f}", s.url);
    let local = |mut config: FunctionConfig| {
        config.allowed_hosts = vec!["127.0.0.1".into()];
        config
    };
    let sleeper = s
        .deploy(
            "sleeper",
            "relay.wasm",
            relay_config(Duration::from_secs(30), &[("RELAY_SLEEP_MS", "20000")]),
        )
        .await;
    assert_eq!(sleeper.function.name, "sleeper");
    s.deploy(
        "middle",
        "relay.wasm",
        local(relay_config(
            Duration::from_secs(30),
            &[("RELAY_TO", &to("sleeper"))],
        )),
    )
    .await;
    s.deploy(
        "impatient",
        "relay.wasm",
        local(relay_config(
            Duration::from_secs(1),
            &[("RELAY_TO", &to("middle"))],
        )),
    )
    .await;
    let watch = Watch::start(&s);
    let began = Instant::now();
    let answer = s.call("/fn/impatient").await;
    assert_eq!(answer.status(), 504, "{}", answer.text().await.unwrap());
    let after_timeout = settles(&s, Duration::from_secs(10)).await;
    assert!(
        began.elapsed() < Duration::from_secs(12),
        "the inner calls stopped with their caller (settled {after_timeout:?} after it)"
    );
    watch.healthy_throughout("a cancelled chain").await;

    // Both inner calls are on record, as cancelled, short, and naming their caller.
    let impatient = invocations(&s, "impatient").await;
    assert_eq!(impatient.len(), 1);
    assert_eq!(impatient[0].error_code.as_deref(), Some("timeout"));
    let middle = eventually_records(&s, "middle").await;
    let sleeper = eventually_records(&s, "sleeper").await;
    for (record, caller) in [(&middle, &impatient[0]), (&sleeper, &middle)] {
        assert_eq!(
            record.error_code.as_deref(),
            Some("cancelled"),
            "{record:?}"
        );
        assert_eq!(record.status, 499);
        assert!(record.duration_ms < 10_000.0, "{}", record.duration_ms);
        assert_eq!(
            record.parent_request_id.as_deref(),
            Some(caller.request_id.as_str())
        );
    }
    let logs: Page<cirrus_api::LogLine> = s.get_json("/v1/functions/sleeper/logs").await;
    assert!(
        logs.items
            .iter()
            .any(|l| l.line.contains("cancelled: the caller went away")),
        "{:?}",
        logs.items
    );
    s.stop().await;
}

/// The one invocation record of `function`, once it is written.
async fn eventually_records(s: &Running, function: &str) -> InvocationRecord {
    for _ in 0..100 {
        if let Some(record) = invocations(s, function).await.into_iter().next() {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no invocation record of {function}");
}

#[tokio::test]
async fn lineage_headers_from_outside_are_ignored_and_never_reach_guests() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    // A relay that only answers: its first line says whether a lineage header reached it.
    s.deploy(
        "leaf",
        "relay.wasm",
        relay_config(Duration::from_secs(5), &[("RELAY_SLEEP_MS", "0")]),
    )
    .await;
    let now_ms = s.clock.now_ms();
    let deep = |signer: &LineageSigner, expires_ms: u64| {
        signer.sign(
            &Lineage {
                root: "r0".into(),
                request_id: "r31".into(),
                hops: 32,
            },
            expires_ms,
        )
    };
    let genuine = LineageSigner::new(&s.token);
    for (what, value) in [
        ("garbage", "not a lineage".to_owned()),
        (
            "unsigned",
            "cl1.eyJvIjoicjAiLCJyIjoicjEiLCJoIjozMn0.AAAA".to_owned(),
        ),
        (
            "signed with another key",
            deep(&LineageSigner::new("not the admin token"), now_ms + 60_000),
        ),
        ("expired", deep(&genuine, now_ms)),
    ] {
        let answer = s
            .http
            .get(format!("{}/fn/leaf", s.url))
            .header("cirrus-lineage", value)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{what}");
        let body = answer.text().await.unwrap();
        assert!(body.contains("lineage=absent"), "{what}: {body}");
    }
    let records = invocations(&s, "leaf").await;
    assert!(records.iter().all(|r| r.parent_request_id.is_none()));

    // Only the server's own key makes a header that counts: 32 steps deep already, the
    // next call is one too many.
    let answer = s
        .http
        .get(format!("{}/fn/leaf", s.url))
        .header("cirrus-lineage", deep(&genuine, now_ms + 60_000))
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(answer).await;
    assert_eq!((status.as_u16(), code.as_str()), (508, "loop_detected"));
    assert!(message.contains("33 steps from request r0"), "{message}");
    s.stop().await;
}

fn loop_member(publishes_to: &str) -> FunctionConfig {
    FunctionConfig {
        on_success: vec![format!("topic:{publishes_to}").parse().unwrap()],
        ..small(16, 5_000)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_loop_that_doubles_stops_at_its_lineage_event_budget() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.containment.max_lineage_events = 50).await;
    s.deploy(HEALTHY, "echo.wat", small(16, 5_000)).await;
    // ping listens on `loop` and publishes to `back`; pong1 and pong2 listen on `back`
    // and publish to `loop`: every round trip doubles, so one message grows toward 2^33
    // events. (A function publishing to its own topic is refused at deploy.)
    for (f, listens, publishes) in [
        ("ping", "loop", "back"),
        ("pong1", "back", "loop"),
        ("pong2", "back", "loop"),
    ] {
        s.deploy(f, "echo.wat", loop_member(publishes)).await;
        let added = s
            .req(Method::POST, &format!("/v1/functions/{f}/triggers"))
            .json(&serde_json::json!({ "topic": listens }))
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 201);
    }
    let watch = Watch::start(&s);
    let published = s
        .req(Method::POST, "/v1/topics/loop")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 202);

    // The queue drains and the dead-letter queue stops growing.
    let mut last_dead = u64::MAX;
    let mut stable = 0;
    let began = Instant::now();
    while stable < 3 {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the loop did not stop"
        );
        s.clock.advance(Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = status(&s).await;
        if now.queued_events == 0 && now.dead_events == last_dead {
            stable += 1;
        } else {
            stable = 0;
        }
        last_dead = now.dead_events;
    }
    watch.healthy_throughout("a doubling topic loop").await;

    // One lineage (the message reached one subscriber), allowed 50 events.
    let ran = invocations(&s, "ping").await.len()
        + invocations(&s, "pong1").await.len()
        + invocations(&s, "pong2").await.len();
    assert!((25..=102).contains(&ran), "{ran} deliveries");
    assert!(
        last_dead > 0 && last_dead <= 2 * 2 * 50,
        "{last_dead} dead events"
    );
    let page: Page<DeadEvent> = s.get_json("/v1/dlq?limit=1000").await;
    assert_eq!(page.items.len() as u64, last_dead);
    for dead in &page.items {
        assert!(
            dead.last_error.starts_with("lineage budget exhausted")
                && dead.last_error.contains("have already created 50 events"),
            "{}",
            dead.last_error
        );
    }

    // Redriving is the operator's decision to go on: the lineage gets a fresh budget
    // (and the loop, still there, stops again after it).
    let one = &page.items[0].request_id;
    let redriven = s
        .send(Method::POST, &format!("/v1/dlq/{one}/redrive"))
        .await;
    assert_eq!(redriven.status(), 200);
    eventually(&s, "the redriven event ran", || async {
        let ran_now = invocations(&s, "ping").await.len()
            + invocations(&s, "pong1").await.len()
            + invocations(&s, "pong2").await.len();
        (ran_now > ran).then_some(())
    })
    .await;
    s.stop().await;
}
