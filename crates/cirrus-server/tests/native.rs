//! Native Lambda runtimes: unmodified Python, Node.js and shell (`provided`) handlers,
//! deployed through the Lambda API and run in sandboxed processes through the Runtime
//! API; then the faults a handler can commit, each while a healthy function serves.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use base64::Engine as _;
use common::{fixture, start, Running};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A zip of files from fixtures/native, executable where the file is.
fn package(files: &[&str]) -> String {
    let entries: Vec<(&str, std::path::PathBuf)> = files
        .iter()
        .map(|name| (*name, fixture("native").join(name)))
        .collect();
    package_entries(&entries)
}

/// A zip of `(name in the zip, file)` pairs.
fn package_entries(entries: &[(&str, std::path::PathBuf)]) -> String {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    for (name, path) in entries {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        let options = zip::write::SimpleFileOptions::default().unix_permissions(mode & 0o777);
        zip.start_file(*name, options).unwrap();
        zip.write_all(&std::fs::read(path).unwrap()).unwrap();
    }
    zip.finish().unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

async fn create(s: &Running, name: &str, runtime: &str, handler: &str, zip: &str, extra: Value) {
    let mut body = json!({
        "FunctionName": name, "Runtime": runtime, "Handler": handler,
        "Code": {"ZipFile": zip}, "Timeout": 5, "MemorySize": 128,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let answer = s
        .req(Method::POST, "/2015-03-31/functions")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        answer.text().await.unwrap()
    );
}

/// Invokes through the Lambda API: (status, X-Amz-Function-Error, payload).
async fn invoke(s: &Running, name: &str, event: Value) -> (StatusCode, Option<String>, Value) {
    let answer = s
        .req(
            Method::POST,
            &format!("/2015-03-31/functions/{name}/invocations"),
        )
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let error = answer
        .headers()
        .get("x-amz-function-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = answer.text().await.unwrap();
    (
        status,
        error,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The harness's clock starts in 2023; the runtimes' remaining time is measured
/// against the real one, so move it there.
fn real_time(s: &Running) {
    use cirrus_server::Clock as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    s.clock.advance(std::time::Duration::from_millis(
        now.saturating_sub(s.clock.now_ms()),
    ));
}

async fn healthy(s: &Running) {
    let (status, error, payload) = invoke(s, "steady", json!({"n": 1})).await;
    assert_eq!((status, error), (StatusCode::OK, None), "{payload}");
    assert_eq!(payload["event"], json!({"n": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_node_and_shell_handlers_run_with_lambdas_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    real_time(&s);
    let py = package(&["app.py"]);
    create(
        &s,
        "py",
        "python3.11",
        "app.hello",
        &py,
        json!({"Environment": {"Variables": {"GREETING": "hi"}}}),
    )
    .await;
    let (status, error, first) = invoke(&s, "py", json!({"who": "ada"})).await;
    assert_eq!((status, error), (StatusCode::OK, None), "{first}");
    assert_eq!(first["event"], json!({"who": "ada"}));
    assert_eq!(first["function_name"], "py");
    assert_eq!(first["function_version"], "1");
    assert_eq!(first["memory"], "128");
    assert_eq!(
        first["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:py:1"
    );
    let remaining = first["remaining"].as_u64().unwrap();
    assert!(remaining > 0 && remaining <= 5000, "{remaining}");
    assert_eq!(first["uid"], 65534, "the handler runs unprivileged");
    assert_eq!(first["cwd"], "/var/task");
    assert_eq!(first["env"]["GREETING"], "hi");
    assert_eq!(first["env"]["_HANDLER"], "app.hello");
    assert_eq!(first["env"]["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(first["count"], 1);
    // Warm: the same process serves the next call, its globals kept.
    let (_, _, second) = invoke(&s, "py", json!({})).await;
    assert_eq!(second["count"], 2);
    assert_eq!(second["pid"], first["pid"]);
    assert_ne!(second["request_id"], first["request_id"]);
    // Logs reach the invocation's record.
    let tail = s
        .req(Method::POST, "/2015-03-31/functions/py/invocations")
        .header("x-amz-log-type", "Tail")
        .body("{}")
        .send()
        .await
        .unwrap();
    let log = base64::engine::general_purpose::STANDARD
        .decode(tail.headers()["x-amz-log-result"].as_bytes())
        .unwrap();
    assert!(
        String::from_utf8_lossy(&log).contains("hello from python"),
        "{}",
        String::from_utf8_lossy(&log)
    );

    // A handler's exception is Lambda's Unhandled function error, with its type.
    create(&s, "py-fail", "python3.11", "app.fail", &py, json!({})).await;
    let (status, error, payload) = invoke(&s, "py-fail", json!({"x": 1})).await;
    assert_eq!(
        (status, error.as_deref()),
        (StatusCode::OK, Some("Unhandled"))
    );
    assert_eq!(payload["errorType"], "ValueError", "{payload}");
    assert!(payload["errorMessage"]
        .as_str()
        .unwrap()
        .contains("bad input"));
    assert!(payload["stackTrace"]
        .as_array()
        .is_some_and(|t| !t.is_empty()));

    // An import that fails is an init error.
    create(
        &s,
        "py-broken",
        "python3.11",
        "broken.handler",
        &package(&["broken.py"]),
        json!({}),
    )
    .await;
    let (status, error, payload) = invoke(&s, "py-broken", json!({})).await;
    assert_eq!(
        (status, error.as_deref()),
        (StatusCode::OK, Some("Unhandled"))
    );
    assert_eq!(
        payload["errorType"], "Runtime.ImportModuleError",
        "{payload}"
    );

    let node = s
        .send(Method::GET, "/2015-03-31/functions/py")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(node["Configuration"]["Runtime"], "python3.11");

    // Node.js.
    let runtimes = cirrus_runtime::native::Runtimes::detect().names();
    let nodejs = runtimes
        .iter()
        .find(|r| r.starts_with("nodejs"))
        .unwrap()
        .clone();
    let js = package(&["app.mjs"]);
    create(&s, "js", &nodejs, "app.handler", &js, json!({})).await;
    let (status, error, payload) = invoke(&s, "js", json!({"lang": "js"})).await;
    assert_eq!((status, error), (StatusCode::OK, None), "{payload}");
    assert_eq!(payload["event"], json!({"lang": "js"}));
    assert_eq!(payload["function_name"], "js");
    assert!(payload["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    create(&s, "js-fail", &nodejs, "app.fail", &js, json!({})).await;
    let (_, error, payload) = invoke(&s, "js-fail", json!({})).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(payload["errorType"], "TypeError", "{payload}");

    // A custom runtime: AWS's tutorial bootstrap, a shell script using curl.
    create(
        &s,
        "sh",
        "provided.al2023",
        "function.handler",
        &package(&["bootstrap"]),
        json!({}),
    )
    .await;
    let (status, error, payload) = invoke(&s, "sh", json!({"via": "curl"})).await;
    assert_eq!((status, error), (StatusCode::OK, None), "{payload}");
    assert_eq!(payload, json!({"shell": true, "event": {"via": "curl"}}));

    // A custom runtime built with AWS's `lambda_runtime` crate, unchanged.
    let rust = package_entries(&[("bootstrap", fixture("native/rust-bootstrap/bootstrap"))]);
    create(&s, "rust", "provided.al2023", "bootstrap", &rust, json!({})).await;
    let (status, error, payload) = invoke(&s, "rust", json!({"via": "lambda_runtime"})).await;
    assert_eq!((status, error), (StatusCode::OK, None), "{payload}");
    assert_eq!(payload["rust"], true);
    assert_eq!(payload["event"], json!({"via": "lambda_runtime"}));
    assert_eq!(
        payload["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:rust:1"
    );
    let (_, error, payload) = invoke(&s, "rust", json!({"fail": true})).await;
    assert_eq!(error.as_deref(), Some("Unhandled"), "{payload}");
    assert!(payload["errorMessage"]
        .as_str()
        .is_some_and(|m| m.contains("asked to fail")));

    // HTTP calls arrive as API Gateway HTTP API events; the handler's shaped answer is
    // the HTTP response.
    create(&s, "web", "python3.11", "app.web", &py, json!({})).await;
    let answer = s
        .req(Method::POST, "/fn/web/some/path?q=1")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    assert_eq!(answer.headers()["content-type"], "text/plain");
    assert_eq!(answer.headers()["x-path"], "/some/path");
    assert_eq!(answer.headers()["set-cookie"], "seen=1");
    assert_eq!(answer.text().await.unwrap(), "POST hi 1");

    // A runtime the host lacks is refused, naming the ones it has.
    let refused = s
        .req(Method::POST, "/2015-03-31/functions")
        .json(
            &json!({"FunctionName": "j", "Runtime": "java21", "Handler": "a.b",
                      "Code": {"ZipFile": py}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(refused.text().await.unwrap().contains("python3.11"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_stay_in_their_sandbox_while_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let py = package(&["app.py"]);
    create(&s, "steady", "python3.11", "app.hello", &py, json!({})).await;
    healthy(&s).await;

    // An infinite loop: the timeout kills the environment.
    create(
        &s,
        "spin",
        "python3.11",
        "app.spin",
        &py,
        json!({"Timeout": 1}),
    )
    .await;
    let (status, error, payload) = invoke(&s, "spin", json!({})).await;
    assert_eq!(
        (status, error.as_deref()),
        (StatusCode::OK, Some("Unhandled"))
    );
    assert_eq!(payload["errorType"], "Sandbox.Timedout", "{payload}");
    healthy(&s).await;

    // A memory bomb: the cgroup's limit, not the host, stops it.
    create(&s, "eat", "python3.11", "app.eat", &py, json!({})).await;
    let (_, error, payload) = invoke(&s, "eat", json!({})).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(payload["errorType"], "Runtime.OutOfMemory", "{payload}");
    healthy(&s).await;

    // A fork bomb runs out of processes.
    create(&s, "forks", "python3.11", "app.forks", &py, json!({})).await;
    let (status, error, payload) = invoke(&s, "forks", json!({})).await;
    assert_eq!((status, error), (StatusCode::OK, None), "{payload}");
    assert!(payload["forked"].as_u64().unwrap() < 128, "{payload}");
    healthy(&s).await;

    // Nothing of the host is there to read or write, and no network.
    create(&s, "probe", "python3.11", "app.probe", &py, json!({})).await;
    let data_dir = dir.path().display().to_string();
    let port: u16 = s.url.rsplit(':').next().unwrap().parse().unwrap();
    let (_, _, seen) = invoke(
        &s,
        "probe",
        json!({"read": ["/etc/shadow", "/root", data_dir], "port": port}),
    )
    .await;
    assert_eq!(seen["/etc/shadow"], "FileNotFoundError", "{seen}");
    assert_eq!(seen["/root"], "FileNotFoundError", "{seen}");
    assert_ne!(seen[data_dir.as_str()], "read", "{seen}");
    assert_ne!(seen["/var/task/written"], "wrote", "{seen}");
    assert_ne!(seen["/usr/written"], "wrote", "{seen}");
    assert_eq!(seen["/tmp/written"], "wrote", "{seen}");
    assert_ne!(
        seen["connect"], 0,
        "the server's own port is out of reach: {seen}"
    );

    // The runtime process dies mid-invocation.
    create(&s, "die", "python3.11", "app.die", &py, json!({})).await;
    let (_, error, payload) = invoke(&s, "die", json!({})).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(payload["errorType"], "Runtime.ExitError", "{payload}");
    healthy(&s).await;
    s.stop().await;
}

/// An idle environment is retired after `idle_timeout`: its processes are killed and its
/// cgroups removed, and the next call starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_environments_are_retired_and_their_processes_killed() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let py = package(&["app.py"]);
    create(&s, "sleepy", "python3.11", "app.hello", &py, json!({})).await;
    let (_, _, first) = invoke(&s, "sleepy", json!({})).await;
    assert_eq!(first["count"], 1);
    let cgroups = || {
        std::fs::read_dir("/sys/fs/cgroup/memory/cirrus")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with("-sleepy"))
            .count()
    };
    assert_eq!(cgroups(), 1, "one environment, in its own cgroup");
    let (_, _, warm) = invoke(&s, "sleepy", json!({})).await;
    assert_eq!(warm["count"], 2, "the warm environment served again");

    s.clock.advance(std::time::Duration::from_secs(6 * 60));
    assert_eq!((s.sweep)(), 1, "the idle version was unloaded");
    common::eventually(&s, "the environment's cgroups to go", || async {
        (cgroups() == 0).then_some(())
    })
    .await;
    let (_, _, cold) = invoke(&s, "sleepy", json!({})).await;
    assert_eq!(
        cold["count"], 1,
        "a new environment: its globals start afresh"
    );
    s.stop().await;
}
