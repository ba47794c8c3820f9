//! The AWS Lambda API, driven by the real clients Lambda users have: boto3 and the aws
//! CLI (installed from PyPI by scripts/test), with `--endpoint-url` pointing at Cirrus.
//! The suites live in tests/lambda/; their asserts are this test's.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{fixture, python_has_boto3, start, start_with};
use reqwest::{Method, StatusCode};
use std::path::Path;

/// Runs one of the Python suites in tests/lambda against the server's main listener.
async fn python_suite(url: &str, data: &Path, script: &str) {
    let credentials = data.join("s3-credentials");
    let fixtures = fixture("");
    common::python_suite(
        "lambda",
        script,
        &[url.as_ref(), credentials.as_os_str(), fixtures.as_os_str()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_drives_every_operation() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    python_suite(&s.url, dir.path(), "boto3_suite.py").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_deploys_and_invokes() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    python_suite(&s.url, dir.path(), "aws_cli_suite.py").await;
    s.stop().await;
}

/// The admin bearer token opens the Lambda API too; without any credentials it answers
/// Lambda's own error, and what it does not implement is refused by name.
#[tokio::test]
async fn bearer_token_unsigned_calls_and_unknown_operations() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let listed = s.send(Method::GET, "/2015-03-31/functions/").await;
    assert_eq!(listed.status(), StatusCode::OK);
    let body: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(body["Functions"], serde_json::json!([]));

    let anonymous = s
        .http
        .get(format!("{}/2015-03-31/functions/", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        anonymous.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );

    // Refused before the body is read: no signature, or a key the server does not have.
    let big = vec![b'{'; 8 << 20];
    let unsigned = s
        .http
        .post(format!("{}/2015-03-31/functions", s.url))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        unsigned.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    let stranger = s
        .http
        .post(format!("{}/2015-03-31/functions", s.url))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=NOBODY/20260101/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=00",
        )
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        stranger.headers()["x-amzn-errortype"],
        "UnrecognizedClientException"
    );

    let layers = s.send(Method::GET, "/2018-10-31/layers").await;
    assert_eq!(layers.status(), StatusCode::NOT_IMPLEMENTED);
    let text = layers.text().await.unwrap();
    assert!(text.contains("ListLayers"), "{text}");

    // Other paths still reach custom routes and the management API.
    let health = s.send(Method::GET, "/v1/health").await;
    assert_eq!(health.status(), StatusCode::OK);
    s.stop().await;
}

fn zip_of(name: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    zip.start_file(name, zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(data).unwrap();
    zip.finish().unwrap();
    out.into_inner()
}

/// A wasi:http component deployed the Lambda way gets the event as a `POST /` body, and
/// an `Event` invoke runs later from the durable queue, leaving its record.
#[tokio::test]
async fn components_get_the_event_and_event_invokes_run_from_the_queue() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let zip = zip_of("hello.wasm", &common::example("hello-rust/hello.wasm"));
    let created = s
        .req(Method::POST, "/2015-03-31/functions")
        .json(&serde_json::json!({
            "FunctionName": "greeter",
            "Runtime": "wasi",
            "Code": {"ZipFile": base64::engine::general_purpose::STANDARD.encode(&zip)},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let config: serde_json::Value = created.json().await.unwrap();
    assert_eq!(config["Handler"], "hello.wasm");

    let answer = s
        .req(Method::POST, "/2015-03-31/functions/greeter/invocations")
        .body(r#"{"n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-amz-executed-version"], "$LATEST");
    assert_eq!(answer.headers()["cirrus-function-status"], "200");
    assert!(answer.headers().contains_key("cirrus-request-id"));
    assert_eq!(
        answer.text().await.unwrap(),
        "Hello from Cirrus (Rust)!\n{\"n\":1}"
    );

    // The client context reaches the guest (a command module sees it in its environment).
    let env = zip_of("env.wat", &std::fs::read(fixture("env.wat")).unwrap());
    let created = s
        .req(Method::POST, "/2015-03-31/functions")
        .json(&serde_json::json!({
            "FunctionName": "context",
            "Code": {"ZipFile": base64::engine::general_purpose::STANDARD.encode(&env)},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let context = base64::engine::general_purpose::STANDARD.encode(r#"{"custom":{"k":"v"}}"#);
    let seen = s
        .req(Method::POST, "/2015-03-31/functions/context/invocations")
        .header("x-amz-client-context", &context)
        .body("{}")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        seen.contains(&format!("HTTP_CIRRUS_CLIENT_CONTEXT={context}")),
        "{seen}"
    );

    let queued = s
        .req(Method::POST, "/2015-03-31/functions/greeter/invocations")
        .header("x-amz-invocation-type", "Event")
        .body(r#"{"n":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), StatusCode::ACCEPTED);
    let id = queued.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_owned();
    let record = common::eventually(&s, "the event's invocation", || async {
        let page: cirrus_api::Page<cirrus_api::InvocationRecord> =
            s.get_json("/v1/functions/greeter/invocations").await;
        page.items.into_iter().find(|r| r.request_id == id)
    })
    .await;
    assert_eq!(record.trigger, cirrus_api::Trigger::Async);
    assert_eq!(record.outcome, cirrus_api::Outcome::Success);
    assert_eq!(record.request_bytes, 7);
    s.stop().await;
}

/// Lambda deploy scripts upload the package to S3 first: `Code.S3Bucket` and
/// `Code.S3Key` name an object in Cirrus's own storage.
#[tokio::test]
async fn packages_come_from_cirrus_storage_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    assert!(s
        .send(Method::PUT, "/v1/buckets/packages")
        .await
        .status()
        .is_success());
    let zip = zip_of("echo.wat", &std::fs::read(fixture("echo.wat")).unwrap());
    let put = s
        .req(Method::PUT, "/v1/buckets/packages/objects/echo.zip")
        .body(zip)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let create = |key: &str| {
        s.req(Method::POST, "/2015-03-31/functions")
            .json(&serde_json::json!({
                "FunctionName": "stored",
                "Code": {"S3Bucket": "packages", "S3Key": key},
            }))
            .send()
    };
    let missing = create("nope.zip").await.unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        missing.headers()["x-amzn-errortype"],
        "InvalidParameterValueException"
    );
    assert!(missing.text().await.unwrap().contains("NoSuchKey"));
    let gone = s.send(Method::GET, "/2015-03-31/functions/stored").await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND, "nothing was created");

    let created = create("echo.zip").await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let config: serde_json::Value = created.json().await.unwrap();
    assert_eq!(config["Handler"], "echo.wat");
    let answer = s
        .req(Method::POST, "/2015-03-31/functions/stored/invocations")
        .body(r#"{"from":"storage"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), r#"{"from":"storage"}"#);
    s.stop().await;
}

/// Abuse: a flood of zip bombs and oversized packages is refused one by one while a
/// healthy function keeps answering every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_packages_leaves_healthy_functions_serving() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.max_artifact_bytes = 4 << 20).await;
    let b64 = |zip: &[u8]| base64::engine::general_purpose::STANDARD.encode(zip);
    let echo = zip_of("echo.wat", &std::fs::read(fixture("echo.wat")).unwrap());
    let created = s
        .req(Method::POST, "/2015-03-31/functions")
        .json(&serde_json::json!({"FunctionName": "healthy", "Code": {"ZipFile": b64(&echo)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);

    // Inflates to 64 MiB (16 times the limit) from a few tens of KiB.
    let bomb = b64(&zip_of("f.wasm", &vec![0u8; 64 << 20]));
    let oversized = b64(&vec![7u8; (4 << 20) + 1]);
    let mut attackers = Vec::new();
    for i in 0..8 {
        let (http, url, token) = (s.http.clone(), s.url.clone(), s.token.clone());
        let body = if i % 2 == 0 {
            bomb.clone()
        } else {
            oversized.clone()
        };
        attackers.push(tokio::spawn(async move {
            let mut refused = 0;
            for round in 0..5 {
                let answer = http
                    .post(format!("{url}/2015-03-31/functions"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({
                        "FunctionName": format!("bomb-{i}-{round}"),
                        "Code": {"ZipFile": body},
                    }))
                    .send()
                    .await
                    .unwrap();
                let kind = answer.headers()["x-amzn-errortype"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert!(
                    kind == "RequestTooLargeException" || kind == "InvalidParameterValueException",
                    "{kind}"
                );
                refused += 1;
            }
            refused
        }));
    }
    let mut served = 0;
    while attackers.iter().any(|a| !a.is_finished()) {
        let answer = s
            .req(Method::POST, "/2015-03-31/functions/healthy/invocations")
            .body(r#"{"ok":true}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.text().await.unwrap(), r#"{"ok":true}"#);
        served += 1;
    }
    for attacker in attackers {
        assert_eq!(attacker.await.unwrap(), 5);
    }
    assert!(served > 0);
    let listed = s.send(Method::GET, "/2015-03-31/functions/").await;
    let listed: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(
        listed["Functions"].as_array().unwrap().len(),
        1,
        "no bomb left a function behind"
    );
    s.stop().await;
}

/// A change computed from what a caller read applies only if nobody changed the function
/// meanwhile: the registry checks the version it was read at under its deploy lock.
#[tokio::test]
async fn a_deploy_from_a_stale_read_is_a_conflict_not_an_overwrite() {
    use cirrus_server::registry::DeployRequest;
    let dir = tempfile::tempdir().unwrap();
    let server = cirrus_server::Server::start(
        cirrus_server::ServerConfig::new(dir.path()),
        std::sync::Arc::new(cirrus_server::ManualClock::new(1_700_000_000_000)),
    )
    .await
    .unwrap();
    let registry = &server.state().registry;
    let echo = std::fs::read(fixture("echo.wat")).unwrap();
    let deploy = |description: &str, expected_latest| DeployRequest {
        name: "f".into(),
        config: cirrus_api::FunctionConfig {
            description: description.into(),
            ..Default::default()
        },
        artifact: Some(echo.clone()),
        expected_latest,
    };
    // Created only if absent.
    registry.deploy(deploy("one", Some(None))).await.unwrap();
    let again = registry
        .deploy(deploy("two", Some(None)))
        .await
        .unwrap_err();
    assert_eq!(again.0.code, cirrus_api::ErrorCode::Conflict);
    // Changed from version 1: fine once; a second change from the same read is refused.
    let second = registry.deploy(deploy("two", Some(Some(1)))).await.unwrap();
    assert_eq!(second.version, 2);
    let stale = registry
        .deploy(deploy("three", Some(Some(1))))
        .await
        .unwrap_err();
    assert_eq!(stale.0.code, cirrus_api::ErrorCode::Conflict);
    assert!(stale.0.message.contains("changed by another request"));
    let latest = registry.get("f").unwrap().latest;
    assert_eq!(
        (latest.version, latest.config.description.as_str()),
        (2, "two"),
        "nothing was overwritten"
    );
}
