//! Webhook destinations end to end: the real server POSTs a function's asynchronous
//! result (or failure) to an HTTP receiver the test runs, signed, retried while the
//! receiver fails, dead-lettered when it never recovers.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{repo, Received, Up};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An HTTP receiver that answers its first `failures` requests with 500, then 200.
fn receiver(failures: usize) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream);
            let Some(received) = common::read_request(&mut reader) else {
                continue;
            };
            let count = {
                let mut log = log.lock().unwrap();
                log.push(received);
                log.len()
            };
            let status = if count <= failures {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, seen)
}

fn wait_for(what: &str, seen: &Mutex<Vec<Received>>, count: usize) -> Vec<Received> {
    let started = Instant::now();
    loop {
        let now = seen.lock().unwrap().clone();
        if now.len() >= count {
            return now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: {} of {count} requests",
            now.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// HMAC-SHA256, as a receiver computes it (with Python's standard library: a real
/// client of the scheme, not the server's own code).
fn python_hmac(key_hex: &str, message: &[u8]) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hmac, hashlib, sys; key = bytes.fromhex(sys.argv[1]); \
             print(hmac.new(key, sys.stdin.buffer.read(), hashlib.sha256).hexdigest())",
            key_hex,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(message)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn results_reach_a_webhook_signed_and_retried_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let (port, seen) = receiver(2);
    let hook = format!("http://127.0.0.1:{port}/hooks/cirrus");
    up.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
        "--on-success",
        &hook,
        "--max-attempts",
        "3",
    ]);
    up.cli_ok(&["invoke", "echo", "--async", "--data", r#"{"order": 7}"#]);
    let received = wait_for("three POSTs: two failures, then success", &seen, 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "delivered once it answered 200"
    );
    // The function ran once: the retries were of the POST, not of the function.
    let records = up.cli_json(&["invocations", "echo"]);
    assert_eq!(records["items"].as_array().unwrap().len(), 1, "{records}");

    let last = &received[2];
    assert_eq!(last.path, "/hooks/cirrus");
    assert_eq!(last.body, br#"{"order": 7}"#);
    assert_eq!(last.header("ce-type"), Some("dev.cirrus.result"));
    assert_eq!(last.header("ce-source"), Some("/functions/echo"));
    assert_eq!(last.header("ce-specversion"), Some("1.0"));
    // Every attempt is the same CloudEvent: a receiver deduplicates by its id.
    let ids: Vec<_> = received.iter().map(|r| r.header("ce-id")).collect();
    assert!(
        ids.iter().all(|id| id.is_some() && *id == ids[0]),
        "{ids:?}"
    );

    // The signature checks out with the key the CLI hands to receivers.
    let key = up.cli_ok(&["webhook-key", "echo"]).trim().to_owned();
    assert_eq!(key.len(), 64, "{key}");
    let signature = last.header("cirrus-signature").unwrap();
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(t.parse().unwrap()) < 120, "timestamp {t}");
    let id = last.header("ce-id").unwrap();
    let mut signed = format!("{t}.{id}.").into_bytes();
    signed.extend_from_slice(&last.body);
    assert_eq!(v1, python_hmac(&key, &signed));
    let mut tampered = format!("{t}.{id}.").into_bytes();
    tampered.extend_from_slice(br#"{"order": 8}"#);
    assert_ne!(v1, python_hmac(&key, &tampered));
    // Keys are per function: another function's key does not verify it.
    up.cli_ok(&[
        "deploy",
        "other",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    let other = up.cli_ok(&["webhook-key", "other"]).trim().to_owned();
    assert_ne!(v1, python_hmac(&other, &signed));
    assert!(!up.cli(&["webhook-key", "nope"]).status.success());
}

#[test]
fn a_webhook_that_never_answers_ends_in_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let (port, seen) = receiver(usize::MAX);
    // Nothing listens here: connection refused.
    let closed = common::free_port();
    up.cli_ok(&[
        "deploy",
        "failing",
        repo("fixtures/trap.wat").to_str().unwrap(),
        "--on-failure",
        &format!("http://127.0.0.1:{port}/failures"),
        "--max-attempts",
        "1",
    ]);
    up.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
        "--on-success",
        &format!("http://127.0.0.1:{closed}/nobody"),
        "--max-attempts",
        "2",
    ]);
    up.cli_ok(&["invoke", "failing", "--async", "--data", "boom"]);
    up.cli_ok(&["invoke", "echo", "--async", "--data", "hello"]);

    // The failure report reaches the failure webhook (which keeps answering 500)...
    let received = wait_for("the failure report", &seen, 1);
    assert_eq!(received[0].header("ce-type"), Some("dev.cirrus.failure"));
    let report: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(report["function"], "failing");
    assert_eq!(report["event"], "boom");

    // ...and both undeliverable POSTs end in the dead-letter queue, saying why.
    let started = Instant::now();
    let dead = loop {
        let dead = up.cli_json(&["dlq", "ls"]);
        if dead.as_array().map_or(0, Vec::len) == 2 {
            break dead;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{dead}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let errors: Vec<&str> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["last_error"].as_str().unwrap_or(""))
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("answered 500 Internal Server Error")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("/nobody") && e.contains("refused")),
        "{errors:?}"
    );
    // The functions ran once each.
    for function in ["failing", "echo"] {
        let records = up.cli_json(&["invocations", function]);
        assert_eq!(records["items"].as_array().unwrap().len(), 1, "{records}");
    }

    // A destination that is not http(s) is refused at deploy.
    let out = up.cli(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
        "--on-success",
        "ftp://127.0.0.1/x",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http:// or https://"), "{stderr}");
}
