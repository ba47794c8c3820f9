//! Hardening of both listeners and the gateway: connection floods and slowloris, the
//! edges of authentication, and small input checks. Real server, real sockets, real
//! guests; every attack is bounded in count and time and goes to 127.0.0.1 only.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use cirrus_api::{FunctionConfig, Manifest};
use cirrus_server::s3::sigv4;
use cirrus_server::{ManualClock, Server, ServerConfig};
use common::*;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// The harness's server with the S3 listener as well.
struct WithS3 {
    s: Running,
    s3: SocketAddr,
    access: String,
    secret: String,
}

async fn start_with_s3(dir: &Path, tune: impl FnOnce(&mut ServerConfig)) -> WithS3 {
    let mut config = ServerConfig::new(dir);
    config.sweep_interval = Duration::from_secs(3600);
    tune(&mut config);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let server = Server::start(config, clock.clone()).await.unwrap();
    let (access, secret) = server.s3().credentials.default_pair().unwrap();
    let (access, secret) = (access.to_owned(), secret.to_owned());
    let token = server.admin_token().to_owned();
    let state = server.state().clone();
    let s3_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s3 = s3_listener.local_addr().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        server
            .with_s3_listener(s3_listener)
            .serve(listener, async move {
                let _ = stopped.await;
            }),
    );
    WithS3 {
        s: Running {
            url,
            token,
            // A fresh connection per request, like a client arriving during the flood.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            clock,
            sweep: Arc::new(move || cirrus_server::server::sweep_idle(&state)),
            stop: Some(stop),
            task: Some(task),
        },
        s3,
        access,
        secret,
    }
}

impl WithS3 {
    /// A SigV4-signed GET on the S3 listener (SigV4 dates are checked against real time).
    async fn s3_get(&self, path: &str) -> reqwest::Response {
        let mut headers = HeaderMap::new();
        headers.insert("host", self.s3.to_string().parse().unwrap());
        sigv4::sign(
            &Method::GET,
            path,
            None,
            &mut headers,
            &self.access,
            &self.secret,
            &sigv4::sha256_hex(b""),
            SystemTime::now(),
        )
        .unwrap();
        self.s
            .http
            .get(format!("http://{}{path}", self.s3))
            .headers(headers)
            .send()
            .await
            .unwrap()
    }

    /// A bucket holding `k` = "hello", and the echo function.
    async fn seed(&self) {
        let s = &self.s;
        let r = s.send(Method::PUT, "/v1/buckets/bucket").await;
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let r = s
            .req(Method::PUT, "/v1/buckets/bucket/objects/k")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        s.deploy("echo", "echo.wat", FunctionConfig::default())
            .await;
    }

    /// The echo function and the S3 object both answer, each within a generous bound.
    async fn healthy(&self, round: usize) -> Duration {
        let started = Instant::now();
        let body = format!("ping {round}");
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            self.s
                .http
                .post(format!("{}/fn/echo", self.s.url))
                .body(body.clone())
                .send(),
        )
        .await
        .expect("the function answers within 10 s")
        .unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        assert_eq!(r.text().await.unwrap(), body);
        let r = tokio::time::timeout(Duration::from_secs(10), self.s3_get("/bucket/k"))
            .await
            .expect("S3 answers within 10 s");
        let status = r.status();
        assert_eq!(status, 200, "round {round}: {}", r.text().await.unwrap());
        assert_eq!(r.text().await.unwrap(), "hello");
        started.elapsed()
    }
}

/// Opens `n` connections that never complete a request head: every other one sends
/// the start of a head and stops there (slowloris).
async fn half_open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let connecting = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr));
        let Ok(Ok(mut socket)) = connecting.await else {
            continue; // the backlog is full: that attacker got nowhere either
        };
        if i % 2 == 1 {
            let _ = socket
                .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
                .await;
        }
        sockets.push(socket);
    }
    sockets
}

/// Whether the server closes the socket (end of stream or reset) within `within`.
async fn closed_by_server(socket: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn count_closed(sockets: &mut [TcpStream], within: Duration) -> usize {
    futures_util::future::join_all(sockets.iter_mut().map(|s| closed_by_server(s, within)))
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_silent_connections_make_room_for_real_requests() {
    let dir = tempfile::tempdir().unwrap();
    // Timeouts far beyond the test: only the cap can close the silent connections.
    let w = start_with_s3(dir.path(), |c| {
        c.connections.max_connections = Some(16);
        c.connections.s3_max_connections = Some(16);
        c.connections.header_read_timeout = Duration::from_secs(120);
        c.connections.keep_alive_timeout = Duration::from_secs(120);
    })
    .await;
    w.seed().await;
    let main: SocketAddr = w.s.url.trim_start_matches("http://").parse().unwrap();
    let mut on_main = half_open(main, 150).await;
    let mut on_s3 = half_open(w.s3, 150).await;
    let mut slowest = Duration::ZERO;
    for round in 0..10 {
        // The flood goes on while real clients arrive.
        on_main.extend(half_open(main, 20).await);
        on_s3.extend(half_open(w.s3, 20).await);
        slowest = slowest.max(w.healthy(round).await);
    }
    assert!(
        on_main.len() >= 300 && on_s3.len() >= 300,
        "the flood got in"
    );
    // Each listener keeps at most 16 open: all but those are closed long before the
    // 120 s timeouts could have fired.
    let within = Duration::from_secs(5);
    let (main_closed, s3_closed) = tokio::join!(
        count_closed(&mut on_main, within),
        count_closed(&mut on_s3, within)
    );
    assert!(
        main_closed >= on_main.len() - 16,
        "main: {main_closed} of {} closed",
        on_main.len()
    );
    assert!(
        s3_closed >= on_s3.len() - 16,
        "s3: {s3_closed} of {} closed",
        on_s3.len()
    );
    // And the server is fine afterwards.
    w.healthy(99).await;
    eprintln!("slowest healthy round during the flood: {slowest:?}");
    // Shutdown closes the silent connections at once instead of draining them.
    let stopping = Instant::now();
    w.s.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed_but_requests_in_flight_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let w = start_with_s3(dir.path(), |c| {
        c.connections.header_read_timeout = Duration::from_secs(1);
        c.connections.keep_alive_timeout = Duration::from_secs(5);
    })
    .await;
    w.seed().await;
    let main: SocketAddr = w.s.url.trim_start_matches("http://").parse().unwrap();

    // Silent and slowloris sockets on both listeners; the slowloris ones keep sending a
    // header line every 200 ms, which does not extend their deadline.
    let started = Instant::now();
    let mut silent = Vec::new();
    let mut slow = Vec::new();
    for addr in [main, w.s3] {
        silent.push(TcpStream::connect(addr).await.unwrap());
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let mut closed_after = vec![None; slow.len()];
    while started.elapsed() < Duration::from_secs(10) && closed_after.iter().any(Option::is_none) {
        for (i, s) in slow.iter_mut().enumerate() {
            if closed_after[i].is_none() && s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                closed_after[i] = Some(started.elapsed());
            }
            if closed_after[i].is_none() && closed_by_server(s, Duration::from_millis(1)).await {
                closed_after[i] = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, after) in closed_after.iter().enumerate() {
        let after =
            after.unwrap_or_else(|| panic!("slowloris socket {i} is still open after 10 s"));
        assert!(
            after >= Duration::from_millis(900),
            "closed too early: {after:?}"
        );
    }
    for s in &mut silent {
        assert!(
            closed_by_server(s, Duration::from_secs(10)).await,
            "a silent socket stays open"
        );
    }

    // An idle keep-alive connection lives past the head deadline, up to the idle one.
    let mut kept = TcpStream::connect(main).await.unwrap();
    kept.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    assert!(
        !closed_by_server(&mut kept, Duration::from_secs(2)).await,
        "an idle keep-alive connection was closed at the header deadline"
    );
    assert!(closed_by_server(&mut kept, Duration::from_secs(15)).await);
    assert!(
        idle_since.elapsed() >= Duration::from_secs(4),
        "{:?}",
        idle_since.elapsed()
    );

    // A request in flight is never cut: its body arrives over 6 s, well past both
    // timeouts, and the function still answers.
    let mut slow_body = TcpStream::connect(main).await.unwrap();
    slow_body
        .write_all(
            b"POST /fn/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 12\r\n\r\n",
        )
        .await
        .unwrap();
    for byte in b"twelve bytes" {
        tokio::time::sleep(Duration::from_millis(500)).await;
        slow_body.write_all(&[*byte]).await.unwrap();
    }
    let mut response = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        slow_body.read_to_end(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("twelve bytes"), "{response}");
    w.healthy(0).await;
    w.s.stop().await;
}

/// Reads until the server closes the socket; the bytes received, or `None` if it is
/// still open after `within`.
async fn drain_until_closed(socket: &mut TcpStream, within: Duration) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(total),
            Ok(Ok(n)) => total += n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_response_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let w = start_with_s3(dir.path(), |c| {
        c.connections.send_timeout = Duration::from_secs(1);
    })
    .await;
    w.seed().await;
    // Far more than the sockets' buffers hold.
    const BIG: usize = 64 << 20;
    let r =
        w.s.req(Method::PUT, "/v1/buckets/bucket/objects/big")
            .body(vec![b'x'; BIG])
            .send()
            .await
            .unwrap();
    assert!(r.status().is_success());
    let main: SocketAddr = w.s.url.trim_start_matches("http://").parse().unwrap();
    let mut on_main = TcpStream::connect(main).await.unwrap();
    on_main
        .write_all(
            format!(
                "GET /v1/buckets/bucket/objects/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                w.s.token
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", w.s3.to_string().parse().unwrap());
    sigv4::sign(
        &Method::GET,
        "/bucket/big",
        None,
        &mut headers,
        &w.access,
        &w.secret,
        &sigv4::sha256_hex(b""),
        SystemTime::now(),
    )
    .unwrap();
    let mut request = "GET /bucket/big HTTP/1.1\r\n".to_owned();
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    request.push_str("\r\n");
    let mut on_s3 = TcpStream::connect(w.s3).await.unwrap();
    on_s3.write_all(request.as_bytes()).await.unwrap();
    // Neither client reads; others are served meanwhile.
    for round in 0..5 {
        w.healthy(round).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for (listener, socket) in [("main", &mut on_main), ("s3", &mut on_s3)] {
        let received = drain_until_closed(socket, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{listener}: the stalled download is still open"));
        assert!(
            received < BIG,
            "{listener}: the whole object arrived ({received} bytes): the connection waited"
        );
    }
    w.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_still_drains_requests_in_flight_and_closes_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("sleep", "sleep.wat", FunctionConfig::default())
        .await;
    let main: SocketAddr = s.url.trim_start_matches("http://").parse().unwrap();
    let mut idle = TcpStream::connect(main).await.unwrap();
    let in_flight = {
        let http = s.http.clone();
        let url = format!("{}/fn/sleep", s.url);
        tokio::spawn(async move { http.get(url).send().await?.text().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    s.stop().await;
    assert_eq!(in_flight.await.unwrap().unwrap().trim(), "slept");
    assert!(closed_by_server(&mut idle, Duration::from_secs(1)).await);
    assert!(stopping.elapsed() < Duration::from_secs(10));
}

/// The guest's environment (env.wat prints it) for a request.
async fn env_of(request: reqwest::RequestBuilder) -> String {
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_admin_token_never_reaches_guests() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let private = FunctionConfig {
        public: false,
        ..Default::default()
    };
    s.deploy("private", "env.wat", private).await;
    s.deploy("public", "env.wat", FunctionConfig::default())
        .await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {}", s.token);
        let r = s
            .http
            .get(format!("{}/v1/functions", s.url))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
        for function in ["private", "public"] {
            let env = env_of(
                s.http
                    .get(format!("{}/fn/{function}", s.url))
                    .header("authorization", &auth),
            )
            .await;
            assert!(
                !env.contains(&s.token),
                "{scheme} {function}: token leaked: {env}"
            );
            assert!(
                !env.contains("HTTP_AUTHORIZATION"),
                "{scheme} {function}: {env}"
            );
        }
    }
    // A second Authorization header carrying the token does not slip through either.
    let env = env_of(
        s.http
            .get(format!("{}/fn/public", s.url))
            .header("authorization", "Basic dXNlcjpwdw==")
            .header("authorization", format!("bearer {}", s.token)),
    )
    .await;
    assert!(!env.contains(&s.token), "token leaked: {env}");
    // The guest's own credentials still reach it.
    let env = env_of(
        s.http
            .get(format!("{}/fn/public", s.url))
            .header("authorization", "Bearer user-token"),
    )
    .await;
    assert!(
        env.contains("HTTP_AUTHORIZATION=Bearer user-token\n"),
        "{env}"
    );
    s.stop().await;
}

#[tokio::test]
async fn functions_cannot_claim_the_dashboard_or_metrics_paths() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("f", "echo.wat", FunctionConfig::default()).await;
    for route in [
        "GET /ui/x",
        "/ui/",
        "/ui/{*rest}",
        "GET /metrics/x",
        "/metrics/{x}",
        "/metrics",
    ] {
        let r = s
            .req(Method::POST, "/v1/functions/f/triggers")
            .json(&serde_json::json!({ "route": route }))
            .send()
            .await
            .unwrap();
        let (status, _, message) = error_of(r).await;
        assert_eq!(status, 400, "{route}");
        assert!(message.contains("reserved"), "{route}: {message}");
    }
    // Manifests are held to the same rule.
    let e = Manifest::parse(
        "[functions.f]\nsource = \"f.wat\"\ntriggers = [{ route = \"/ui/login\" }]\n",
        Path::new("."),
    )
    .unwrap_err();
    assert!(e.contains("reserved"), "{e}");
    assert!(s.triggers_of("f").await.is_empty());
    // The main listener's /ui stays the platform's: it says where the dashboard is.
    let r = s.call("/ui").await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("dashboard"));
    assert_eq!(s.send(Method::GET, "/metrics").await.status(), 200);
    // A route next to them is fine.
    let r = s
        .req(Method::POST, "/v1/functions/f/triggers")
        .json(&serde_json::json!({ "route": "/uikit/{*rest}" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    s.stop().await;
}

impl Running {
    async fn triggers_of(&self, function: &str) -> Vec<serde_json::Value> {
        self.get_json(&format!("/v1/triggers?function={function}"))
            .await
    }
}

/// Runs the function (env.wat) and returns the `CIRRUS_TOKEN` it was given.
async fn token_given_to(s: &Running, function: &str) -> String {
    let env = env_of(s.req(Method::GET, &format!("/fn/{function}"))).await;
    env.lines()
        .find_map(|l| l.strip_prefix("CIRRUS_TOKEN="))
        .unwrap_or_else(|| panic!("no CIRRUS_TOKEN in {env}"))
        .to_owned()
}

#[tokio::test]
async fn a_deleted_functions_tokens_stop_working_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let config = FunctionConfig {
        storage: vec!["kv:notes:write".parse().unwrap()],
        ..Default::default()
    };
    s.deploy("writer", "env.wat", config.clone()).await;
    let token = token_given_to(&s, "writer").await;
    let put = |token: String| {
        s.http
            .put(format!("{}/v1/kv/notes/k", s.url))
            .bearer_auth(token)
            .body("v")
            .send()
    };
    assert_eq!(put(token.clone()).await.unwrap().status(), 200);
    assert_eq!(
        s.send(Method::DELETE, "/v1/functions/writer")
            .await
            .status(),
        200
    );
    let (status, code, message) = error_of(put(token.clone()).await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert!(message.contains("deleted"), "{message}");
    // Created again under the same name, with the same grants: still a different function.
    s.deploy("writer", "env.wat", config).await;
    assert_eq!(put(token).await.unwrap().status(), 401);
    let fresh = token_given_to(&s, "writer").await;
    assert_eq!(put(fresh.clone()).await.unwrap().status(), 200);
    // And tokens still expire (an invocation's timeout plus a minute).
    s.clock.advance(Duration::from_secs(600));
    let (status, _, message) = error_of(put(fresh).await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(message.contains("expired"), "{message}");
    s.stop().await;
}

/// Status, body with the function's name replaced, and the header names of an answer.
async fn shape_of(r: reqwest::Response, name: &str) -> (StatusCode, String, Vec<String>) {
    let status = r.status();
    let mut headers: Vec<String> = r
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k != "date")
        .collect();
    headers.sort();
    let body = r.text().await.unwrap().replace(name, "NAME");
    (status, body, headers)
}

#[tokio::test]
async fn a_private_function_and_a_missing_one_look_alike_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let private = FunctionConfig {
        public: false,
        ..Default::default()
    };
    s.deploy("secret", "env.wat", private).await;
    let r = s
        .req(Method::PUT, "/v1/functions/secret/aliases/prod")
        .json(&serde_json::json!({ "version": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .req(Method::POST, "/v1/functions/secret/triggers")
        .json(&serde_json::json!({ "route": "GET /hidden" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for (private, missing) in [
        ("/fn/secret", "/fn/nothing"),
        ("/fn/secret/", "/fn/nothing/"),
        ("/fn/secret/a/b?c=d", "/fn/nothing/a/b?c=d"),
        ("/fn/secret@prod", "/fn/nothing@prod"),
        ("/fn/secret@1", "/fn/nothing@1"),
        ("/fn/secret@9", "/fn/nothing@9"),
    ] {
        let a = shape_of(s.call(private).await, "secret").await;
        let b = shape_of(s.call(missing).await, "nothing").await;
        assert_eq!(a, b, "{private} vs {missing}");
        assert_eq!(a.0, 404, "{private}: {a:?}");
        assert!(!a.2.contains(&"cirrus-version".to_owned()), "{a:?}");
    }
    let a = shape_of(s.call("/hidden").await, "/hidden").await;
    let b = shape_of(s.call("/nowhere").await, "/nowhere").await;
    assert_eq!(a, b);
    assert_eq!(a.0, 404);
    // With the token, all of them open.
    for path in ["/fn/secret", "/fn/secret/", "/fn/secret@prod", "/hidden"] {
        assert_eq!(s.send(Method::GET, path).await.status(), 200, "{path}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_trailing_slash_reaches_the_function_at_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("env", "env.wat", FunctionConfig::default()).await;
    for (path, info, query) in [
        ("/fn/env/", "/", ""),
        ("/fn/env/?a=1", "/", "a=1"),
        ("/fn/env@1/", "/", ""),
        ("/fn/env", "/", ""),
        ("/fn/env/x/", "/x/", ""),
    ] {
        let env = env_of(s.http.get(format!("{}{path}", s.url))).await;
        assert!(
            env.contains(&format!("PATH_INFO={info}\n")),
            "{path}: {env}"
        );
        assert!(
            env.contains(&format!("QUERY_STRING={query}\n")),
            "{path}: {env}"
        );
    }
    let r = s
        .http
        .post(format!("{}/fn/env/", s.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn a_non_utf8_idempotency_key_is_refused_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("echo", "echo.wat", FunctionConfig::default())
        .await;
    let r = s
        .req(Method::POST, "/v1/functions/echo/triggers")
        .json(&serde_json::json!({ "topic": "news" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key = HeaderValue::from_bytes(b"caf\xe9-\xff").unwrap();
    let r = s
        .req(Method::POST, "/v1/functions/echo/invoke")
        .header("x-cirrus-invocation-type", "Event")
        .header("x-cirrus-idempotency-key", key.clone())
        .body("once")
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(message.contains("X-Cirrus-Idempotency-Key"), "{message}");
    let r = s
        .req(Method::POST, "/v1/topics/news")
        .header("x-cirrus-idempotency-key", key)
        .body("once")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
    let status: serde_json::Value = s.get_json("/v1/status").await;
    assert_eq!(status["queued_events"], 0, "{status}");
    // A good key still works.
    let r = invoke_async(&s, "echo", "{}", Some("key-1")).await;
    assert_eq!(r.status(), 202);
    s.stop().await;
}

/// The record of the invocation that answered `r`.
async fn record_of(s: &Running, r: &reqwest::Response) -> serde_json::Value {
    let id = r.headers()["cirrus-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let trace: serde_json::Value = s.get_json(&format!("/v1/trace/{id}")).await;
    trace["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["request_id"] == id.as_str())
        .unwrap()
        .clone()
}

#[tokio::test]
async fn an_all_zero_traceparent_counts_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.deploy("env", "env.wat", FunctionConfig::default()).await;
    let zeros = "0".repeat(32);
    for (traceparent, continued) in [
        (format!("00-{zeros}-0000000000000000-00"), false),
        (format!("00-{zeros}-00f067aa0ba902b7-01"), false),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_owned(),
            false,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            true,
        ),
    ] {
        let r = s
            .http
            .get(format!("{}/fn/env", s.url))
            .header("traceparent", &traceparent)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let trace_id = r.headers()["cirrus-trace-id"].to_str().unwrap().to_owned();
        let record = record_of(&s, &r).await;
        let env = r.text().await.unwrap();
        let given = env
            .lines()
            .find_map(|l| l.strip_prefix("HTTP_TRACEPARENT="))
            .unwrap()
            .to_owned();
        assert_ne!(trace_id, zeros, "{traceparent}");
        assert!(given.starts_with(&format!("00-{trace_id}-")), "{given}");
        assert!(!given.contains("0000000000000000"), "{given}");
        if continued {
            assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(record["parent_span_id"], "00f067aa0ba902b7");
        } else {
            assert_ne!(
                trace_id, "4bf92f3577b34da6a3ce929d0e0e4736",
                "{traceparent}"
            );
            assert!(
                record["parent_span_id"].is_null(),
                "{traceparent}: {record}"
            );
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_manifest_source_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let server = Server::start(
        ServerConfig::new(dir.path().join("data")),
        Arc::new(ManualClock::new(1_700_000_000_000)),
    )
    .await
    .unwrap();
    for (source, what) in [
        ("/dev/zero".to_owned(), "a device"),
        (dir.path().display().to_string(), "a directory"),
        (fifo.display().to_string(), "a FIFO"),
    ] {
        let manifest =
            Manifest::parse(&format!("[functions.f]\nsource = {source:?}\n"), dir.path()).unwrap();
        let e = tokio::time::timeout(Duration::from_secs(10), server.deploy_manifest(&manifest))
            .await
            .unwrap_or_else(|_| panic!("deploying {source} hangs"))
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains(what) && e.contains("not a regular file"),
            "{source}: {e}"
        );
        assert!(e.contains("functions.f"), "{e}");
    }
    assert!(server.state().registry.list().is_empty());
}
