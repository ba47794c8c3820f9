//! Native Lambda runtimes from the CLI: `cirrus runtimes`, `cirrus deploy --runtime
//! --handler` with a zip, and a `cirrus.toml` naming the runtime.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{repo, Up};

/// A zip of fixtures/native/app.py, made with Python's own zip tool.
fn app_zip(dir: &std::path::Path) -> std::path::PathBuf {
    let zip = dir.join("app.zip");
    let status = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(&zip)
        .arg("app.py")
        .current_dir(repo("fixtures/native"))
        .status()
        .unwrap();
    assert!(status.success());
    zip
}

#[test]
fn the_cli_deploys_and_invokes_a_python_handler() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let runtimes = up.cli_ok(&["runtimes"]);
    assert!(
        runtimes.lines().any(|l| l == "wasi") && runtimes.lines().any(|l| l == "python3.11"),
        "{runtimes}"
    );

    let zip = app_zip(dir.path());
    let out = up.cli_ok(&[
        "deploy",
        "hello",
        zip.to_str().unwrap(),
        "--runtime",
        "python3.11",
        "--handler",
        "app.hello",
    ]);
    assert!(out.contains("deployed hello version 1"), "{out}");
    let answer: serde_json::Value =
        serde_json::from_str(&up.cli_ok(&["invoke", "hello", "--data", "{\"a\":1}"])).unwrap();
    assert_eq!(answer["event"], serde_json::json!({"a": 1}));
    assert_eq!(answer["function_name"], "hello");

    // A handler without its runtime's zip answers why.
    let refused = up.cli(&[
        "deploy",
        "bad",
        zip.to_str().unwrap(),
        "--runtime",
        "python3.11",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("handler"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The manifest names the runtime and handler beside the source.
    let manifest = dir.path().join("cirrus.toml");
    std::fs::write(
        &manifest,
        "[functions.web]\nsource = \"app.zip\"\nruntime = \"python3.11\"\nhandler = \"app.web\"\n",
    )
    .unwrap();
    up.cli_ok(&["deploy", "-f", manifest.to_str().unwrap()]);
    let page = up.curl(&[
        "--data-binary",
        "from toml",
        &format!("{}/fn/web/x?q=7", up.url),
    ]);
    assert_eq!(page, "POST from toml 7");
}
