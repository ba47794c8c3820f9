//! `cirrus up`'s retention flags, end to end on the real binary.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{repo, Up};
use std::time::{Duration, Instant};

#[test]
fn retention_flags_prune_at_start_and_keep_usage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let echo = repo("fixtures/echo.wat");
    let up = Up::start(&data, &[]);
    up.cli_ok(&["deploy", "echo", echo.to_str().unwrap()]);
    for _ in 0..5 {
        up.cli_ok(&["invoke", "echo", "-d", "x"]);
    }
    // Listing waits for the record writer, so all five are on disk.
    let listed = up.cli_json(&["invocations", "echo"]);
    assert_eq!(listed["items"].as_array().unwrap().len(), 5, "{listed}");
    drop(up);

    // A pass runs at start: only the newest two records stay, usage still counts five.
    let up = Up::start(&data, &["--max-records", "2", "--record-retention", "off"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = up.cli_json(&["invocations", "echo"]);
        if listed["items"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let usage = up.cli_json(&["usage"]);
    assert_eq!(usage["total"]["requests"], 5, "{usage}");

    let refused = std::process::Command::new(common::BIN)
        .args(["up", "--max-log-lines", "0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("--max-log-lines") && message.contains("off"),
        "{message}"
    );
}
