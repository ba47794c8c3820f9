//! Deploy-time refusals: a destination feeding the function's own trigger (a
//! one-function loop) and the same destination twice are 400s that change nothing,
//! whichever of the trigger and the destination comes first.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;
use common::*;

use cirrus_api::{FunctionConfig, InvocationRecord, Page, ServerStatus, TriggerInfo};
use reqwest::{Method, StatusCode};
use std::time::{Duration, Instant};

fn config(json: serde_json::Value) -> FunctionConfig {
    serde_json::from_value(json).unwrap()
}

/// A config-only deploy (the current code, a new config).
async fn reconfigure(s: &Running, name: &str, json: serde_json::Value) -> reqwest::Response {
    s.deploy_raw(name, None, Some(&config(json))).await
}

async fn add_trigger(s: &Running, function: &str, spec: serde_json::Value) -> reqwest::Response {
    s.req(Method::POST, &format!("/v1/functions/{function}/triggers"))
        .json(&spec)
        .send()
        .await
        .unwrap()
}

async fn versions(s: &Running, name: &str) -> usize {
    let versions: Vec<serde_json::Value> =
        s.get_json(&format!("/v1/functions/{name}/versions")).await;
    versions.len()
}

async fn triggers(s: &Running, name: &str) -> Vec<TriggerInfo> {
    s.get_json(&format!("/v1/triggers?function={name}")).await
}

/// Asserts a 400 whose message contains every one of `needles`.
async fn refused(response: reqwest::Response, needles: &[&str]) {
    let (status, code, message) = error_of(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "{message}"
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "{needle:?} missing from {message:?}"
        );
    }
}

#[tokio::test]
async fn a_destination_feeding_the_functions_own_topic_is_refused_whichever_comes_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;

    // Trigger first, then the destination.
    s.deploy("f", "echo.wat", FunctionConfig::default()).await;
    assert_eq!(
        add_trigger(&s, "f", serde_json::json!({"topic": "orders"}))
            .await
            .status(),
        201
    );
    refused(
        reconfigure(&s, "f", serde_json::json!({"on_success": ["topic:orders"]})).await,
        &[
            "on_success",
            "topic:orders",
            "\"orders\"",
            "remove trigger",
            "one-function loop",
        ],
    )
    .await;
    refused(
        reconfigure(&s, "f", serde_json::json!({"on_failure": "topic:orders"})).await,
        &["on_failure", "topic:orders", "one-function loop"],
    )
    .await;
    // With a new artifact too: nothing is compiled into a version.
    let bytes = std::fs::read(fixture("echo.wat")).unwrap();
    let with_code = s
        .deploy_raw(
            "f",
            Some(bytes),
            Some(&config(serde_json::json!({"on_success": ["topic:orders"]}))),
        )
        .await;
    refused(with_code, &["one-function loop"]).await;
    assert_eq!(
        versions(&s, "f").await,
        1,
        "a refused deploy makes no version"
    );

    // Destination first, then the trigger.
    s.deploy(
        "g",
        "echo.wat",
        config(serde_json::json!({"on_success": ["topic:shipped"]})),
    )
    .await;
    refused(
        add_trigger(&s, "g", serde_json::json!({"topic": "shipped"})).await,
        &["one-function loop", "version 1", "topic:shipped"],
    )
    .await;
    s.deploy(
        "h",
        "echo.wat",
        config(serde_json::json!({"on_failure": "topic:failed"})),
    )
    .await;
    refused(
        add_trigger(&s, "h", serde_json::json!({"topic": "failed"})).await,
        &["on_failure", "topic:failed"],
    )
    .await;
    assert!(triggers(&s, "g").await.is_empty() && triggers(&s, "h").await.is_empty());

    // Other functions may subscribe to what g publishes, and g to other topics.
    assert_eq!(
        add_trigger(&s, "h", serde_json::json!({"topic": "shipped"}))
            .await
            .status(),
        201
    );
    assert_eq!(
        add_trigger(&s, "g", serde_json::json!({"topic": "orders"}))
            .await
            .status(),
        201
    );
    // Dropping the destination makes room for the trigger.
    assert_eq!(
        reconfigure(&s, "g", serde_json::json!({})).await.status(),
        200
    );
    assert_eq!(
        add_trigger(&s, "g", serde_json::json!({"topic": "shipped"}))
            .await
            .status(),
        201
    );
    s.stop().await;
}

#[tokio::test]
async fn tables_buckets_and_the_function_itself_are_loops_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;

    // A kv destination into the table whose changes trigger the function.
    s.deploy(
        "k",
        "echo.wat",
        config(serde_json::json!({"on_success": ["kv:rows"]})),
    )
    .await;
    refused(
        add_trigger(&s, "k", serde_json::json!({"table": "rows"})).await,
        &["on_success results to kv:rows", "one-function loop"],
    )
    .await;
    assert_eq!(
        add_trigger(&s, "k", serde_json::json!({"table": "other"}))
            .await
            .status(),
        201
    );
    refused(
        reconfigure(&s, "k", serde_json::json!({"on_success": ["kv:other"]})).await,
        &["kv:other", "one-function loop"],
    )
    .await;

    // Objects written where the function's own bucket trigger fires.
    s.deploy("b", "echo.wat", FunctionConfig::default()).await;
    let ppm =
        serde_json::json!({"bucket": {"name": "uploads", "events": ["created"], "suffix": ".ppm"}});
    assert_eq!(add_trigger(&s, "b", ppm).await.status(), 201);
    refused(
        reconfigure(
            &s,
            "b",
            serde_json::json!({"on_success": ["bucket:uploads/small/{key}"]}),
        )
        .await,
        &[
            "bucket:uploads/small/{key}",
            "suffix \".ppm\"",
            "remove trigger",
        ],
    )
    .await;
    // Keys that cannot match the trigger's suffix, or another bucket, are fine.
    for fine in [
        "bucket:uploads/small/{key}.json",
        "bucket:uploads/{request_id}",
        "bucket:thumbnails/{key}",
    ] {
        let response = reconfigure(&s, "b", serde_json::json!({"on_success": [fine]})).await;
        assert_eq!(
            response.status(),
            200,
            "{fine}: {}",
            response.text().await.unwrap()
        );
    }
    // A trigger on removals only is not fed by writes.
    s.deploy(
        "r",
        "echo.wat",
        config(serde_json::json!({"on_success": ["bucket:uploads/x"]})),
    )
    .await;
    let removed = serde_json::json!({"bucket": {"name": "uploads", "events": ["removed"]}});
    assert_eq!(add_trigger(&s, "r", removed).await.status(), 201);
    let created = serde_json::json!({"bucket": {"name": "uploads", "events": ["created"]}});
    refused(add_trigger(&s, "r", created).await, &["bucket:uploads/x"]).await;

    // Straight back to itself by name.
    refused(
        reconfigure(&s, "r", serde_json::json!({"on_failure": "function:r"})).await,
        &["on_failure", "function:r", "itself"],
    )
    .await;
    refused(
        reconfigure(&s, "r", serde_json::json!({"on_success": ["function:r"]})).await,
        &["function:r"],
    )
    .await;
    assert_eq!(versions(&s, "r").await, 1);
    s.stop().await;
}

#[tokio::test]
async fn the_same_destination_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let bytes = std::fs::read(fixture("echo.wat")).unwrap();
    for (twice, named) in [
        (
            serde_json::json!(["topic:done", "kv:rows", "topic:done"]),
            "topic:done",
        ),
        // Without a key template, a bucket destination is keyed by the request id.
        (
            serde_json::json!(["bucket:out", "bucket:out/{request_id}"]),
            "bucket:out/{request_id}",
        ),
        (
            serde_json::json!(["function:next", "function:next"]),
            "function:next",
        ),
    ] {
        let config = config(serde_json::json!({ "on_success": twice }));
        let response = s.deploy_raw("d", Some(bytes.clone()), Some(&config)).await;
        refused(response, &["on_success", named, "listed twice"]).await;
    }
    // Nothing was created.
    let missing = s.send(Method::GET, "/v1/functions/d").await;
    assert_eq!(missing.status(), 404);
    // The same target on success and on failure is two different outcomes: fine.
    s.deploy(
        "d",
        "echo.wat",
        config(serde_json::json!({"on_success": ["topic:done"], "on_failure": "topic:done"})),
    )
    .await;
    // And a redeploy cannot add the repeat later.
    refused(
        reconfigure(
            &s,
            "d",
            serde_json::json!({"on_success": ["topic:done", "topic:done"]}),
        )
        .await,
        &["listed twice"],
    )
    .await;
    assert_eq!(versions(&s, "d").await, 1);
    s.stop().await;
}

/// The attack: racing a destination against a trigger (both orders at once, many
/// times) must never leave a one-function loop behind; what is left delivers each
/// message exactly once and drains, while another function keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_a_destination_against_a_trigger_never_leaves_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("healthy", "echo.wat", FunctionConfig::default())
        .await;
    s.deploy("g", "echo.wat", FunctionConfig::default()).await;

    let stop = std::sync::atomic::AtomicBool::new(false);
    let probe = async {
        let (mut answered, mut worst) = (0u32, Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            let started = Instant::now();
            let response = s.invoke("healthy", "ping").await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.text().await.unwrap(), "ping");
            worst = worst.max(started.elapsed());
            answered += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (answered, worst)
    };
    let attack = async {
        let mut subscribed = Vec::new();
        for round in 0..16 {
            let topic = format!("race{round}");
            let destination = serde_json::json!({ "on_success": [format!("topic:{topic}")] });
            let (deployed, added) = tokio::join!(
                reconfigure(&s, "g", destination),
                add_trigger(&s, "g", serde_json::json!({ "topic": topic })),
            );
            let (deployed, added) = (deployed.status(), added.status());
            assert!(
                !(deployed.is_success() && added.is_success()),
                "round {round}: both the destination and the trigger were accepted"
            );
            assert!(
                deployed.is_success() || added.is_success(),
                "round {round}: one of them goes first and wins ({deployed}, {added})"
            );
            if added.is_success() {
                subscribed.push(topic);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        subscribed
    };
    let ((answered, worst), subscribed) = tokio::join!(probe, attack);
    assert!(answered > 0, "the healthy function was measured");
    assert!(
        worst < Duration::from_secs(5),
        "healthy answered within 5 s (worst {worst:?})"
    );

    // What is left runs once per message and drains.
    let latest = s
        .get_json::<cirrus_api::FunctionInfo>("/v1/functions/g")
        .await
        .latest;
    for topic in &subscribed {
        assert!(
            !latest
                .config
                .on_success
                .contains(&format!("topic:{topic}").parse().unwrap()),
            "g publishes to {topic}, which it subscribes to"
        );
        let published = s.send(Method::POST, &format!("/v1/topics/{topic}")).await;
        assert_eq!(published.status(), 202);
    }
    let expected = subscribed.len();
    eventually(&s, "the queue to drain", || async {
        let status: ServerStatus = s.get_json("/v1/status").await;
        (status.queued_events == 0).then_some(())
    })
    .await;
    let status: ServerStatus = s.get_json("/v1/status").await;
    assert_eq!(status.dead_events, 0);
    let runs: Page<InvocationRecord> = s.get_json("/v1/functions/g/invocations?limit=100").await;
    assert_eq!(
        runs.items.len(),
        expected,
        "one run per message, nothing more"
    );
    s.stop().await;
}
