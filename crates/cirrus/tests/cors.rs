//! CORS for function URLs, from a real browser: a page on one origin (a static file
//! server) calling functions on another (the Cirrus server) in headless Chromium.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::browser::Browser;
use common::{free_port, repo, wait_listening, Up};
use std::process::{Command, Stdio};

/// A static file server for the calling page, killed when dropped.
struct PageServer(std::process::Child);

impl Drop for PageServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the page's script does: each call's status and body, or "blocked" when the
/// browser refused it (a CORS failure is a TypeError, with no details for the page).
const CALLS: &str = r#"
const [api, key, done] = arguments;
const out = {};
async function attempt(name, path, init) {
  try {
    const r = await fetch(api + path, init);
    out[name] = r.status + ':' + (await r.text()) + ':' + (r.headers.get('cirrus-request-id') ? 'id' : 'no-id');
  } catch (e) {
    out[name] = 'blocked';
  }
}
(async () => {
  await attempt('put', '/fn/open', {method: 'PUT', headers: {'X-Custom': '1'}, body: 'hello'});
  await attempt('delete', '/fn/open', {method: 'DELETE'});
  await attempt('other_origin', '/fn/closed', {method: 'POST', body: 'x'});
  await attempt('no_cors', '/fn/plain', {method: 'POST', body: 'x'});
  await attempt('private_with_key', '/fn/private', {method: 'POST', headers: {'Authorization': 'Bearer ' + key}, body: 'hi'});
  await attempt('private_without', '/fn/private', {method: 'POST', body: 'hi'});
  done(out);
})();
"#;

#[tokio::test]
async fn a_page_on_another_origin_calls_functions_as_their_cors_settings_allow() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("index.html"), "<!doctype html><title>app</title>").unwrap();
    let page_port = free_port();
    let _pages = PageServer(
        Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(page_port.to_string())
            .arg("--directory")
            .arg(&site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(page_port, "the page server");
    let page_origin = format!("http://127.0.0.1:{page_port}");

    let echo = repo("fixtures/echo.wat");
    let manifest = dir.path().join("cirrus.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
[functions.open]
source = "{echo}"
[functions.open.cors]
allow_origins = ["{page_origin}"]
allow_methods = ["PUT", "POST"]
allow_headers = ["X-Custom"]
expose_headers = ["cirrus-request-id"]
max_age = 60

[functions.closed]
source = "{echo}"
cors = {{ allow_origins = ["https://elsewhere.example"] }}

[functions.plain]
source = "{echo}"

[functions.private]
source = "{echo}"
public = false
cors = {{ allow_origins = ["{page_origin}"], allow_headers = ["authorization"] }}
"#,
            echo = echo.display()
        ),
    )
    .unwrap();
    let up = Up::start(&dir.path().join("data"), &[]);
    up.cli_ok(&["deploy", "-f", manifest.to_str().unwrap()]);
    let key = up.cli_json(&["key", "create", "--scope", "invoke:private"]);

    let (browser, session) = Browser::start().await;
    browser
        .call(
            reqwest::Method::POST,
            &format!("/session/{session}/url"),
            serde_json::json!({"url": format!("{page_origin}/index.html")}),
        )
        .await;
    let out = browser
        .call(
            reqwest::Method::POST,
            &format!("/session/{session}/execute/async"),
            serde_json::json!({"script": CALLS, "args": [up.url, key["token"]]}),
        )
        .await;
    // Preflighted PUT with a custom header: allowed, the body and the exposed header read.
    assert_eq!(out["put"], "200:hello:id", "{out}");
    // A method the settings do not list: the preflight refuses it.
    assert_eq!(out["delete"], "blocked", "{out}");
    // Another origin's settings, or none at all: the browser may not read the answer.
    assert_eq!(out["other_origin"], "blocked", "{out}");
    assert_eq!(out["no_cors"], "blocked", "{out}");
    // A private function: its preflight is answered without credentials, the call
    // itself needs the invoke key; without it the platform's 404 is readable.
    // (Its settings expose no headers: the request id stays unreadable.)
    assert_eq!(out["private_with_key"], "200:hi:no-id", "{out}");
    assert!(
        out["private_without"].as_str().unwrap().starts_with("404:"),
        "{out}"
    );
}

#[test]
fn preflights_and_bad_cors_settings_get_precise_answers() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let echo = repo("fixtures/echo.wat");
    let manifest = dir.path().join("cirrus.toml");
    let write = |cors: &str| {
        std::fs::write(
            &manifest,
            format!(
                "[functions.app]\nsource = \"{}\"\ncors = {cors}\n",
                echo.display()
            ),
        )
        .unwrap();
    };
    // Not an origin, or credentials with "*": refused at deploy, naming the problem.
    for (cors, expected) in [
        (
            r#"{ allow_origins = ["https://app.example.com/"] }"#,
            "is not an origin",
        ),
        (
            r#"{ allow_origins = ["app.example.com"] }"#,
            "is not an origin",
        ),
        (
            r#"{ allow_origins = ["*"], allow_credentials = true }"#,
            "allow_credentials",
        ),
        (r#"{ allow_origins = ["*"], max_age = 100000 }"#, "max_age"),
        (r#"{ allow_origin = ["*"] }"#, "allow_origin"),
    ] {
        write(cors);
        let out = up.cli(&["deploy", "-f", manifest.to_str().unwrap()]);
        assert!(!out.status.success(), "{cors}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{cors}: {err}");
    }
    assert_eq!(up.cli_json(&["ls"]), serde_json::json!([]));

    write(
        r#"{ allow_origins = ["https://app.example.com"], allow_methods = ["*"], allow_headers = ["*"], allow_credentials = true, max_age = 600 }"#,
    );
    up.cli_ok(&["deploy", "-f", manifest.to_str().unwrap()]);
    let url = format!("{}/fn/app", up.url);
    let preflight = |origin: &str| {
        up.curl(&[
            "-i",
            "-X",
            "OPTIONS",
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Access-Control-Request-Method: PATCH",
            "-H",
            "Access-Control-Request-Headers: x-a, x-b",
            &url,
        ])
        .to_ascii_lowercase()
    };
    let ok = preflight("https://app.example.com");
    assert!(ok.starts_with("http/1.1 204"), "{ok}");
    for expected in [
        "access-control-allow-origin: https://app.example.com",
        "access-control-allow-methods: patch",
        "access-control-allow-headers: x-a, x-b",
        "access-control-allow-credentials: true",
        "access-control-max-age: 600",
    ] {
        assert!(ok.contains(expected), "{expected} in {ok}");
    }
    let refused = preflight("https://evil.example");
    assert!(refused.starts_with("http/1.1 403"), "{refused}");
    assert!(
        refused.contains("not in the function's allow_origins"),
        "{refused}"
    );
    assert!(
        !refused.contains("access-control-allow-origin"),
        "{refused}"
    );
    // An actual request gets the headers (the function was invoked: it echoes).
    let answer = up.curl(&[
        "-i",
        "-H",
        "Origin: https://app.example.com",
        "--data",
        "x",
        &url,
    ]);
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example.com"),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\nx"), "{answer}");
}

#[test]
fn the_dashboard_has_an_origin_of_its_own_that_serves_nothing_a_function_controls() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    up.cli_ok(&[
        "deploy",
        "page",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    let dashboard = up.dashboard.trim_end_matches("/ui").to_owned();
    assert_ne!(
        dashboard, up.url,
        "the dashboard shares the functions' origin"
    );
    // The page is there, and the API it calls.
    let page = up.curl(&[&up.dashboard]);
    assert!(page.contains("<html"), "{page}");
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let listed = up.curl(&[
        "-H",
        &format!("Authorization: Bearer {}", token.trim()),
        &format!("{dashboard}/v1/functions"),
    ]);
    assert!(listed.contains("\"page\""), "{listed}");
    // No function, custom route or Lambda API answers there.
    for path in ["/fn/page", "/2015-03-31/functions", "/anything"] {
        let answer = up.curl(&["-w", "\n%{http_code}", &format!("{dashboard}{path}")]);
        assert!(answer.ends_with("\n404"), "{path}: {answer}");
        assert!(answer.contains("main listener"), "{path}: {answer}");
    }
    // The functions' listener points to it instead of serving it.
    let answer = up.curl(&["-w", "\n%{http_code}", &format!("{}/ui", up.url)]);
    assert!(answer.ends_with("\n404"), "{answer}");
    assert!(answer.contains(&up.dashboard), "{answer}");
}
