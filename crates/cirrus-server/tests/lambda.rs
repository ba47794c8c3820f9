//! The AWS Lambda API, driven by the real clients Lambda users have: boto3 and the aws
//! CLI (installed from PyPI by scripts/test), with `--endpoint-url` pointing at Cirrus.
//! The suites live in tests/lambda/; their asserts are this test's.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{fixture, start};
use reqwest::{Method, StatusCode};
use std::path::Path;

/// Runs one of the Python suites against the server's main listener.
async fn python_suite(url: &str, data: &Path, script: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/lambda")
        .join(script);
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(url)
        .arg(data.join("s3-credentials"))
        .arg(fixture(""))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn python_has_boto3() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import boto3, awscli"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "boto3 and awscli are needed: scripts/test installs them (pip install boto3 awscli)"
    );
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

    let layers = s.send(Method::GET, "/2018-10-31/layers").await;
    assert_eq!(layers.status(), StatusCode::NOT_IMPLEMENTED);
    let text = layers.text().await.unwrap();
    assert!(text.contains("ListLayers"), "{text}");

    // Other paths still reach custom routes and the management API.
    let health = s.send(Method::GET, "/v1/health").await;
    assert_eq!(health.status(), StatusCode::OK);
    s.stop().await;
}
