//! End to end: the real `cirrus` binary on port 0, driven by the CLI itself and by curl.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::browser::Browser;
use common::{repo, Up, BIN};

use std::process::Command;
use std::time::Duration;

#[test]
fn quickstart_app_answers_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = repo("examples/cirrus.toml");
    let up = Up::start(dir.path(), &["--app", manifest.to_str().unwrap()]);
    assert_eq!(
        up.curl(&[&format!("{}/fn/hello", up.url)]),
        "Hello from Cirrus (C)!\n"
    );
    assert_eq!(
        up.curl(&["--data-binary", "12345", &format!("{}/fn/hello", up.url)]),
        "Hello from Cirrus (C)!\nYou sent 5 bytes.\n"
    );
    assert_eq!(
        up.curl(&[&format!("{}/fn/hello-rust", up.url)]),
        "Hello from Cirrus (Rust)!\n"
    );
    assert_eq!(
        up.curl(&[
            "--data-binary",
            "echo me",
            &format!("{}/fn/hello-rust", up.url)
        ]),
        "Hello from Cirrus (Rust)!\necho me"
    );
    let headers = up.curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{}/fn/hello", up.url),
    ]);
    for name in [
        "cirrus-request-id:",
        "cirrus-cold-start: false",
        "cirrus-duration-ms:",
        "cirrus-billed-ms:",
    ] {
        assert!(headers.contains(name), "{name} missing in {headers}");
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The management API refuses requests without the token.
    let status = up.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/v1/functions", up.url),
    ]);
    assert_eq!(status, "401");
}

#[test]
fn cli_manages_and_invokes_functions() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let echo = repo("fixtures/echo.wat");
    let env = repo("fixtures/env.wat");
    let out = up.cli_ok(&[
        "deploy",
        "echo",
        echo.to_str().unwrap(),
        "--memory",
        "64",
        "--timeout",
        "2s",
        "--concurrency",
        "10",
        "--env",
        "K=V",
    ]);
    assert!(out.contains("deployed echo version 1"), "{out}");

    let list = up.cli_json(&["ls"]);
    assert_eq!(list[0]["name"], "echo");
    assert_eq!(list[0]["latest"]["config"]["memory_mb"], 64);
    assert_eq!(list[0]["latest"]["config"]["timeout"], "2s");
    assert_eq!(list[0]["latest"]["config"]["max_concurrency"], 10);
    assert_eq!(list[0]["latest"]["config"]["env"]["K"], "V");
    let table = up.cli_ok(&["ls"]);
    assert!(
        table.starts_with("NAME") && table.contains("echo") && table.contains("64 MiB"),
        "{table}"
    );

    assert_eq!(
        up.cli_ok(&["invoke", "echo", "--data", "hello cli"]),
        "hello cli"
    );
    let body = dir.path().join("event.json");
    std::fs::write(&body, "{\"from\":\"file\"}").unwrap();
    assert_eq!(
        up.cli_ok(&["invoke", "echo", "--file", body.to_str().unwrap()]),
        "{\"from\":\"file\"}"
    );

    // A redeploy without flags keeps the configuration.
    up.cli_ok(&["deploy", "echo", env.to_str().unwrap()]);
    let got = up.cli_json(&["get", "echo"]);
    assert_eq!(got["latest"]["config"]["memory_mb"], 64);
    assert_eq!(got["latest"]["config"]["env"]["K"], "V");
    let versions = up.cli_json(&["versions", "echo"]);
    assert_eq!(versions.as_array().unwrap().len(), 2);
    up.cli_ok(&["alias", "set", "echo", "prod", "1"]);
    assert_eq!(
        up.cli_ok(&["invoke", "echo@prod", "-d", "still v1"]),
        "still v1"
    );
    assert!(up
        .cli_ok(&["invoke", "echo"])
        .contains("CIRRUS_FUNCTION=echo"));
    let got = up.cli_json(&["get", "echo"]);
    assert_eq!(got["aliases"]["prod"], 1);
    assert_eq!(got["versions"], 2);
    let aliases = up.cli_ok(&["alias", "ls", "echo"]);
    assert!(aliases.contains("prod"), "{aliases}");

    let logs = up.cli_ok(&["--json", "logs", "echo"]);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["line"] == "echo: done" && l["stream"] == "stderr"),
        "{logs}"
    );
    let text = up.cli_ok(&["logs", "echo"]);
    assert!(text.contains("echo: done"), "{text}");
    let invocations = up.cli_json(&["invocations", "echo"]);
    assert!(invocations["items"].as_array().unwrap().len() >= 4);

    // Usage and cost, as CSV, a table and JSON.
    let csv = up.cli_ok(&["usage", "--csv"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("function,requests,errors,cold_starts,billed_ms,gb_seconds,cpu_seconds,cost")
    );
    let echo_row = lines.next().unwrap();
    assert!(echo_row.starts_with("echo,"), "{csv}");
    let requests: u64 = echo_row.split(',').nth(1).unwrap().parse().unwrap();
    assert!(requests >= 4, "{csv}");
    let table = up.cli_ok(&["usage", "--group-by", "day"]);
    assert!(
        table.contains("TOTAL") || table.contains("total"),
        "{table}"
    );
    assert!(table.contains("USD"), "{table}");
    let report = up.cli_json(&["usage"]);
    assert_eq!(report["prices"]["per_gb_second"], "0.0000166667");
    let out = up.cli(&["usage", "--group-by", "week"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("group_by"));

    // Errors are clear and the exit status says so.
    let out = up.cli(&["invoke", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("function \"nope\" does not exist"), "{err}");
    let out = up.cli(&[
        "deploy",
        "bad",
        repo("fixtures/no_start.wat").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_artifact"));

    // A manifest deploy, then removal.
    let manifest = dir.path().join("cirrus.toml");
    std::fs::write(
        &manifest,
        format!(
            "[functions.m1]\nsource = {:?}\nmemory_mb = 32\n",
            echo.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = up.cli_ok(&["deploy", "-f", manifest.to_str().unwrap()]);
    assert!(out.contains("deployed m1 version 1"), "{out}");
    let out = up.cli_ok(&["deploy", "-f", manifest.to_str().unwrap()]);
    assert!(out.contains("unchanged m1 version 1"), "{out}");
    std::fs::write(
        &manifest,
        "[functions.m1]\nsource = \"x.wasm\"\nmemroy_mb = 32\n",
    )
    .unwrap();
    let out = up.cli(&["deploy", "-f", manifest.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("memroy_mb"));
    up.cli_ok(&["rm", "m1"]);
    assert!(!up.cli_ok(&["ls"]).contains("m1"));
}

#[test]
fn cli_without_a_server_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["ls", "--url", "http://127.0.0.1:9", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Cirrus server"));
}

#[test]
fn sigterm_drains_in_flight_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &[]);
    up.cli_ok(&[
        "deploy",
        "sleepy",
        repo("fixtures/sleep.wat").to_str().unwrap(),
    ]);
    let url = format!("{}/fn/sleepy", up.url);
    let call =
        std::thread::spawn(move || Command::new("curl").args(["-sS", &url]).output().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let pid = up.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = call.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "slept\n",
        "the in-flight call completes"
    );
    let status = up.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let rest: Vec<String> = up.stderr.try_iter().collect();
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
}

#[test]
fn python_component_built_by_componentize_py_runs() {
    let wasm = repo("examples/hello-py/hello.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run examples/hello-py/build.sh (scripts/test does it)",
        wasm.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let out = up.cli_ok(&[
        "deploy",
        "-f",
        repo("examples/hello-py/cirrus.toml").to_str().unwrap(),
    ]);
    assert!(out.contains("deployed hello-py version 1"), "{out}");
    assert_eq!(
        up.curl(&[&format!("{}/fn/hello-py/hi?x=1", up.url)]),
        "Hello from Cirrus (Python)! method=GET path=/hi?x=1\n"
    );
    let posted = up.curl(&["--data-binary", "ping", &format!("{}/fn/hello-py", up.url)]);
    assert!(
        posted.contains("method=POST") && posted.contains("echo: ping"),
        "{posted}"
    );
    // Too little memory for CPython is reported as such, and the server carries on.
    up.cli_ok(&["deploy", "tiny-py", wasm.to_str().unwrap(), "--memory", "4"]);
    let out = up.curl(&[&format!("{}/fn/tiny-py", up.url)]);
    assert!(out.contains("memory_limit_exceeded"), "{out}");
    assert!(up
        .curl(&[&format!("{}/fn/hello-py", up.url)])
        .starts_with("Hello from Cirrus (Python)!"));
}

#[test]
fn a_malformed_price_table_stops_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "per_million_requests = \"0.20\"\nper_gb_second = \"lots\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--s3-listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--prices")
        .arg(&prices)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("per_gb_second") && err.contains("lots"),
        "{err}"
    );
}

#[test]
fn server_logs_can_be_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &["--log-format", "json"]);
    up.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    let pid = up.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    up.child.wait().unwrap();
    let lines: Vec<String> = up.stderr.try_iter().collect();
    let json: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let deployed = json
        .iter()
        .find(|v| v["fields"]["message"] == "deployed")
        .unwrap_or_else(|| panic!("no JSON 'deployed' event in {lines:#?}"));
    assert_eq!(deployed["fields"]["function"], "echo");
    assert_eq!(deployed["level"], "INFO");
}

/// True once both overview charts have data above zero and pixels drawn on their canvas.
const CHART_DRAWN: &str = "const c = window.cirrusCharts || {};
  const drawn = (id) => { const u = c[id]; if (!u || !u.data[1].some((v) => v > 0)) return false;
    const canvas = document.querySelector('#' + id + ' canvas');
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    return px.some((v) => v !== 0); };
  return drawn('chart') && drawn('cost-chart');";

/// Signs the browser in to the dashboard with `token`.
async fn sign_in(browser: &Browser, session: &str, token: &str) {
    browser.type_into(session, "#token", token).await;
    browser.click(session, "#login-button").await;
    browser
        .wait_for(
            session,
            "return !document.getElementById('app').hidden",
            "sign-in",
        )
        .await;
}

#[tokio::test]
async fn the_dashboard_fits_1024_and_1440_and_names_every_trigger_kind() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let echo = repo("fixtures/echo.wat");
    up.cli_ok(&[
        "deploy",
        "orders-processing-pipeline",
        echo.to_str().unwrap(),
    ]);
    let f = "orders-processing-pipeline";
    up.cli_ok(&["bucket", "mb", "uploads"]);
    for flags in [
        vec![
            "--route",
            "POST /orders/{id}/very/long/route/that/would/overflow/a/narrow/table",
        ],
        vec!["--topic", "orders"],
        vec!["--schedule", "cron(0 9 ? * MON-FRI *)"],
        vec!["--table", "orders"],
        vec!["--bucket", "uploads", "--suffix", ".ppm"],
        vec!["--mqtt", "sensors/+/temp", "--broker", "mqtt://127.0.0.1:1"],
        vec!["--nats", "orders.>", "--broker", "nats://127.0.0.1:1"],
        vec![
            "--postgres",
            "postgres://nobody@127.0.0.1:1/none",
            "--table",
            "orders",
        ],
    ] {
        let mut args = vec!["trigger", "add", f];
        args.extend(flags);
        up.cli_ok(&args);
    }
    for _ in 0..3 {
        up.cli_ok(&["invoke", f, "--data", "x"]);
    }
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let (browser, session) = Browser::start().await;
    browser.goto(&session, &up.dashboard).await;
    sign_in(&browser, &session, token.trim()).await;
    browser
        .wait_for(&session, CHART_DRAWN, "drawn charts")
        .await;
    // Every trigger kind in words, none "undefined"; money as money.
    browser
        .wait_for(
            &session,
            "const t = document.querySelector('#fn-orders-processing-pipeline .triggers').textContent;
             return ['HTTP /fn/', 'route POST /orders', 'topic orders', 'schedule cron(0 9 ? * MON-FRI *)',
               'table orders', 'bucket uploads *.ppm', 'mqtt sensors/+/temp on mqtt://127.0.0.1:1',
               'nats orders.> on nats://127.0.0.1:1', 'postgres orders'].every((s) => t.includes(s))
               && !t.includes('undefined');",
            "every trigger kind's label",
        )
        .await;
    browser
        .wait_for(
            &session,
            "const m = document.getElementById('month-cost').textContent; return m === '< $0.01' || /^\\$\\d+\\.\\d\\d$/.test(m);",
            "the month's cost as money",
        )
        .await;
    let row = browser
        .element(&session, "#fn-orders-processing-pipeline")
        .await;
    browser
        .call(
            Method::POST,
            &format!("/session/{session}/element/{row}/click"),
            serde_json::json!({}),
        )
        .await;
    browser
        .wait_for(
            &session,
            "const u = (window.cirrusCharts || {})['fn-calls']; return !!u && u.data[1].reduce((a, b) => a + b, 0) >= 3;",
            "the function's invocations chart",
        )
        .await;
    for width in [1024, 1440] {
        browser
            .call(
                Method::POST,
                &format!("/session/{session}/window/rect"),
                serde_json::json!({ "width": width, "height": 900 }),
            )
            .await;
        browser
            .wait_for(
                &session,
                &format!("return window.innerWidth <= {width} && document.documentElement.scrollWidth <= window.innerWidth;"),
                &format!("no horizontal overflow at {width} px"),
            )
            .await;
        browser
            .screenshot(&session, &format!("dashboard-{width}.png"))
            .await;
    }
    // Moving an alias from the page (a rollback) reaches the server.
    up.cli_ok(&["deploy", f, echo.to_str().unwrap(), "--memory", "64"]);
    up.cli_ok(&["alias", "set", f, "live", "2"]);
    browser
        .wait_for(
            &session,
            "return !!document.querySelector('#alias-name option[value=live]');",
            "the alias form",
        )
        .await;
    browser
        .call(
            Method::POST,
            &format!("/session/{session}/execute/sync"),
            serde_json::json!({"script": "document.getElementById('alias-name').value = 'live'; document.getElementById('alias-version').value = '1'; document.getElementById('alias-move').click();", "args": []}),
        )
        .await;
    let mut moved = serde_json::Value::Null;
    for _ in 0..50 {
        moved = up.cli_json(&["get", f])["aliases"]["live"].clone();
        if moved == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(moved, 1, "the alias moved back to version 1");
    browser
        .call(
            Method::DELETE,
            &format!("/session/{session}"),
            serde_json::Value::Null,
        )
        .await;
}

#[tokio::test]
async fn dashboard_in_headless_chromium_shows_a_fresh_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = repo("examples/cirrus.toml");
    let up = Up::start(dir.path(), &["--app", manifest.to_str().unwrap()]);
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let (browser, session) = Browser::start().await;
    browser.goto(&session, &up.dashboard).await;

    // A wrong token is refused, the right one signs in.
    browser.type_into(&session, "#token", "wrong").await;
    browser.click(&session, "#login-button").await;
    browser
        .wait_for(
            &session,
            "return document.getElementById('login-error').textContent.includes('refused')",
            "the refusal",
        )
        .await;
    sign_in(&browser, &session, &token).await;

    // Invoke after signing in: the live page picks it up without a reload.
    assert_eq!(
        up.curl(&[&format!("{}/fn/hello", up.url)]),
        "Hello from Cirrus (C)!\n"
    );
    browser
        .wait_for(
            &session,
            "const row = document.getElementById('fn-hello'); return !!row && row.textContent.includes('loaded v1');",
            "the function row showing hello loaded",
        )
        .await;
    browser
        .wait_for(
            &session,
            CHART_DRAWN,
            "points in the invocations and cost charts",
        )
        .await;
    browser.click(&session, "#fn-hello").await;
    browser
        .wait_for(
            &session,
            "const rows = document.querySelectorAll('#invocations tr.invocation'); return rows.length > 0 && rows[0].textContent.includes('cold');",
            "hello's invocation listed as a cold start",
        )
        .await;
    browser.click(&session, "#invocations tr.invocation").await;
    browser
        .wait_for(
            &session,
            "return document.getElementById('logs').textContent.includes('hello-c: handled')",
            "the invocation's logs",
        )
        .await;

    browser.screenshot(&session, "dashboard.png").await;
    browser.close(&session).await;
}

/// Every invocation record of a function, all pages.
async fn all_records(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    function: &str,
) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut path = format!("{url}/v1/functions/{function}/invocations?limit=1000");
        if let Some(cursor) = &next {
            path.push_str(&format!("&before={cursor}"));
        }
        let page: serde_json::Value = http
            .get(path)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        records.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(cursor) => next = Some(cursor.to_owned()),
            None => return records,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill() {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};
    const EVENTS: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &[]);
    up.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let http = reqwest::Client::new();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let url = format!("{}/v1/functions/echo/invoke", up.url);

    // 16 clients enqueue as fast as they can; the server is killed part-way through.
    let senders: Vec<_> = (0..16)
        .map(|worker| {
            let (http, url, token, acked) =
                (http.clone(), url.clone(), token.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0..EVENTS / 16 {
                    let sent = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("x-cirrus-invocation-type", "Event")
                        .body(format!("{worker}-{i}"))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 202 => {
                            let id = r.headers()["cirrus-request-id"]
                                .to_str()
                                .unwrap()
                                .to_owned();
                            acked.lock().unwrap().push(id);
                        }
                        _ => return, // the server is gone
                    }
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < EVENTS / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    up.child.kill().unwrap(); // SIGKILL: no drain, no flush
    up.child.wait().unwrap();
    for s in senders {
        s.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() >= EVENTS / 3);

    let up = Up::start(dir.path(), &[]);
    let mut drained = false;
    for _ in 0..600 {
        let status: serde_json::Value = http
            .get(format!("{}/v1/status", up.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["queued_events"] == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained, "the queue drained after the restart");
    let records = all_records(&http, &up.url, &token, "echo").await;
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for r in &records {
        if r["outcome"] == "success" {
            *delivered
                .entry(r["request_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let dead: serde_json::Value = http
        .get(format!("{}/v1/dlq", up.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dead: HashSet<&str> = dead["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !delivered.contains_key(*id) && !dead.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events were lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let duplicates = delivered.values().filter(|&&n| n > 1).count();
    eprintln!(
        "{} acknowledged, {} delivered, {} delivered more than once, {} dead",
        acked.len(),
        delivered.len(),
        duplicates,
        dead.len()
    );
}

#[test]
fn cli_invokes_asynchronously_and_manages_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let trap = repo("fixtures/trap.wat");
    up.cli_ok(&[
        "deploy",
        "trap",
        trap.to_str().unwrap(),
        "--max-attempts",
        "2",
        "--retry-delay",
        "10ms",
    ]);
    let got = up.cli_json(&["get", "trap"]);
    assert_eq!(got["latest"]["config"]["max_attempts"], 2);
    let id = up
        .cli_ok(&["invoke", "trap", "--async", "-d", "{\"x\":1}"])
        .trim()
        .to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let again = up.cli_json(&["invoke", "trap", "--async", "--idempotency-key", "k1"]);
    let dup = up.cli_json(&["invoke", "trap", "--async", "--idempotency-key", "k1"]);
    assert_eq!(again["request_id"], dup["request_id"]);
    assert_eq!(dup["duplicate"], true);

    let mut listed = serde_json::Value::Null;
    for _ in 0..100 {
        listed = up.cli_json(&["dlq", "ls", "--function", "trap"]);
        if listed.as_array().unwrap().len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let items = listed.as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    assert!(items.iter().all(|e| e["attempts"] == 2));
    let table = up.cli_ok(&["dlq", "ls"]);
    assert!(
        table.contains(&id) && table.contains("function_error"),
        "{table}"
    );
    let shown = up.cli_json(&["dlq", "show", &id]);
    assert_eq!(shown["data"], "{\"x\":1}");
    assert_eq!(
        up.cli_ok(&["dlq", "redrive", &id]).trim(),
        "redrove 1 event(s)"
    );
    let out = up.cli(&["dlq", "redrive"]);
    assert!(!out.status.success(), "a request id or --all is required");
    assert_eq!(
        up.cli_ok(&["dlq", "purge", "--all", "--function", "nobody"])
            .trim(),
        "purged 0 event(s)"
    );
    // The redriven event fails again and returns; then everything is purged.
    for _ in 0..100 {
        if up.cli_json(&["dlq", "ls"]).as_array().unwrap().len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every attempt, the redriven ones included, is in one trace.
    let mut attempts = 0;
    for _ in 0..100 {
        let trace = up.cli_json(&["trace", &id]);
        attempts = trace["invocations"].as_array().unwrap().len();
        if attempts == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(attempts, 4, "two attempts, then two more after the redrive");
    assert_eq!(
        up.cli_ok(&["dlq", "purge", "--all"]).trim(),
        "purged 2 event(s)"
    );
    assert!(up.cli_json(&["dlq", "ls"]).as_array().unwrap().is_empty());
    let out = up.cli(&["dlq", "show", &id]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
}

#[test]
fn manifests_declare_triggers_and_the_cli_manages_them() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("cirrus.toml");
    let env = repo("fixtures/env.wat");
    let env_log = repo("fixtures/env_log.wat");
    std::fs::write(
        &manifest,
        format!(
            "[functions.orders]\nsource = {:?}\ntriggers = [{{ route = \"GET /orders/{{id}}\" }}]\n\n[functions.audit]\nsource = {:?}\ntriggers = [{{ topic = \"orders\" }}]\n",
            env.to_str().unwrap(),
            env_log.to_str().unwrap()
        ),
    )
    .unwrap();
    let up = Up::start(dir.path(), &["--app", manifest.to_str().unwrap()]);
    assert!(up
        .curl(&[&format!("{}/orders/7", up.url)])
        .contains("PATH_INFO=/orders/7"));
    let listed = up.cli_json(&["trigger", "ls"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let table = up.cli_ok(&["trigger", "ls", "audit"]);
    assert!(
        table.contains("topic") && table.contains("orders") && !table.contains("route"),
        "{table}"
    );
    let ids = up.cli_ok(&["publish", "orders", "-d", "{\"id\":7}"]);
    assert_eq!(ids.lines().count(), 1, "{ids}");

    // Redeploying the manifest with a changed trigger replaces the old one.
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("GET /orders/{id}", "GET /v2/orders/{id}");
    std::fs::write(&manifest, text).unwrap();
    up.cli_ok(&["deploy", "-f", manifest.to_str().unwrap()]);
    assert!(up
        .curl(&[&format!("{}/v2/orders/8", up.url)])
        .contains("PATH_INFO=/v2/orders/8"));
    assert!(up
        .curl(&[&format!("{}/orders/8", up.url)])
        .contains("not_found"));

    // By hand: add, conflict, remove.
    let added = up.cli_json(&["trigger", "add", "audit", "--route", "POST /audit"]);
    let out = up.cli(&["trigger", "add", "orders", "--route", "/audit"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflict"));
    up.cli_ok(&["trigger", "rm", added[0]["id"].as_str().unwrap()]);
    let bucket = up.cli_json(&[
        "trigger", "add", "audit", "--bucket", "uploads", "--events", "created", "--prefix",
        "photos/", "--suffix", ".ppm",
    ]);
    assert_eq!(
        bucket[0]["bucket"],
        serde_json::json!({ "name": "uploads", "events": ["created"], "prefix": "photos/", "suffix": ".ppm" })
    );
    let table = up.cli_ok(&["trigger", "ls", "audit"]);
    assert!(
        table.contains("uploads created prefix=photos/ suffix=.ppm"),
        "{table}"
    );
    let out = up.cli(&["trigger", "add", "audit", "--bucket", "Not_A_Bucket"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid bucket name"));
    let out = up.cli(&[
        "trigger", "add", "audit", "--bucket", "uploads", "--events", "changed",
    ]);
    assert!(!out.status.success());
    up.cli_ok(&["trigger", "rm", bucket[0]["id"].as_str().unwrap()]);
    let out = up.cli(&["publish", "nobody"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));

    // Starting again with the same manifest finds its triggers already there.
    drop(up);
    let up = Up::start(dir.path(), &["--app", manifest.to_str().unwrap()]);
    assert!(up
        .curl(&[&format!("{}/v2/orders/9", up.url)])
        .contains("PATH_INFO=/v2/orders/9"));
    assert_eq!(up.cli_json(&["trigger", "ls"]).as_array().unwrap().len(), 2);
    // Reserved paths never reach a function, whatever its routes.
    assert!(up
        .curl(&[&format!("{}/v1/nothing/here", up.url)])
        .contains("not_found"));
}

#[test]
fn cli_builds_a_pipeline_and_traces_it() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let echo = repo("fixtures/echo.wat");
    up.cli_ok(&["deploy", "second", echo.to_str().unwrap()]);
    up.cli_ok(&[
        "deploy",
        "first",
        echo.to_str().unwrap(),
        "--on-success",
        "function:second",
        "--on-failure",
        "dlq",
    ]);
    let got = up.cli_json(&["get", "first"]);
    assert_eq!(got["latest"]["config"]["on_success"][0], "function:second");
    let out = up.cli(&[
        "deploy",
        "second",
        echo.to_str().unwrap(),
        "--on-success",
        "function:first",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cycle"),
        "a loop is refused"
    );
    let id = up
        .cli_ok(&["invoke", "first", "--async", "-d", "hello"])
        .trim()
        .to_owned();
    let mut trace = String::new();
    for _ in 0..100 {
        // Until the event is delivered there is no trace yet (404): wait for it.
        let out = up.cli(&["trace", &id]);
        trace = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && trace.lines().count() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines: Vec<&str> = trace.lines().collect();
    assert_eq!(lines.len(), 3, "{trace}");
    assert!(lines[0].starts_with("trace "));
    assert!(
        lines[1].contains(" first ") && lines[1].contains(&id),
        "{trace}"
    );
    assert!(
        lines[2].starts_with("  ") && lines[2].contains(" second "),
        "the second step is indented under the first: {trace}"
    );
}

#[test]
fn schedules_survive_sigkill_without_repeating_a_tick() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &[]);
    up.cli_ok(&[
        "deploy",
        "tick",
        repo("fixtures/log_input.wat").to_str().unwrap(),
    ]);
    up.cli_ok(&["trigger", "add", "tick", "--schedule", "rate(1 second)"]);
    std::thread::sleep(Duration::from_millis(2500));
    up.child.kill().unwrap(); // SIGKILL
    up.child.wait().unwrap();
    let up = Up::start(dir.path(), &[]);
    std::thread::sleep(Duration::from_millis(2500));

    // Every tick logged its event body; each scheduled time appears once.
    let mut times = up.scheduled_times("tick");
    let fired = times.len();
    times.sort();
    times.dedup();
    assert_eq!(times.len(), fired, "a tick fired twice: {times:?}");
    assert!(fired >= 3, "ticks before and after the kill: {fired}");
}

#[test]
fn cli_reads_and_writes_kv_tables() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    assert_eq!(
        up.cli_ok(&["kv", "put", "feedback", "msg/1", "{\"text\":\"hi\"}"])
            .trim(),
        "feedback/msg/1 version 1"
    );
    assert_eq!(
        up.cli_ok(&["kv", "get", "feedback", "msg/1"]),
        "{\"text\":\"hi\"}"
    );
    let out = up.cli(&["kv", "put", "feedback", "msg/1", "{}", "--if-version", "7"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflict"));
    up.cli_ok(&[
        "kv",
        "put",
        "feedback",
        "msg/1",
        "{\"text\":\"bye\"}",
        "--if-version",
        "1",
    ]);
    let listed = up.cli_json(&["kv", "ls", "feedback", "--prefix", "msg/"]);
    assert_eq!(listed["items"][0]["version"], 2);
    assert!(up.cli_ok(&["kv", "ls", "feedback"]).contains("msg/1"));
    up.cli_ok(&["kv", "rm", "feedback", "msg/1"]);
    let out = up.cli(&["kv", "get", "feedback", "msg/1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
    up.cli_ok(&["deploy", "w", repo("fixtures/echo.wat").to_str().unwrap()]);
    let added = up.cli_json(&["trigger", "add", "w", "--table", "feedback"]);
    assert_eq!(added[0]["table"], "feedback");
}
