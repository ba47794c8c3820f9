//! The CLI explains itself: a missing token, a mistyped function, a manifest key or a
//! schedule field each get a message that says what is wrong and what would be right.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{repo, Up};
use std::process::Command;

fn failing(out: std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_cli_says_what_is_wrong_and_what_would_be_right() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), &[]);
    up.cli_ok(&[
        "deploy",
        "hello",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);

    // No token anywhere: where it looked, and how to pass one.
    let empty = dir.path().join("elsewhere");
    std::fs::create_dir(&empty).unwrap();
    let err = failing(
        Command::new(common::BIN)
            .args(["ls"])
            .env("CIRRUS_URL", &up.url)
            .env("CIRRUS_DATA_DIR", &empty)
            .env_remove("CIRRUS_TOKEN")
            .output()
            .unwrap(),
    );
    assert!(err.contains("needs a token, and none was found"), "{err}");
    assert!(
        err.contains(&empty.join("admin.token").display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("--token") && err.contains("CIRRUS_TOKEN"),
        "{err}"
    );

    // A mistyped function: did you mean, for invoke, logs and invocations.
    for args in [
        vec!["invoke", "helo"],
        vec!["logs", "helo"],
        vec!["invocations", "helo"],
    ] {
        let err = failing(up.cli(&args));
        assert!(
            err.contains("function \"helo\" does not exist; did you mean \"hello\"?"),
            "{args:?}: {err}"
        );
    }

    // A manifest key: which, where, the closest and all the valid ones.
    let manifest = dir.path().join("cirrus.toml");
    std::fs::write(
        &manifest,
        format!(
            "[functions.hello]\nsource = {:?}\nmemroy_mb = 64\n",
            repo("fixtures/echo.wat").to_str().unwrap()
        ),
    )
    .unwrap();
    let err = failing(up.cli(&["deploy", "-f", manifest.to_str().unwrap()]));
    assert!(
        err.contains(
            "functions.hello.memroy_mb (line 3): unknown key; did you mean \"memory_mb\"?"
        ),
        "{err}"
    );
    assert!(
        err.contains("Valid keys: source, runtime, handler, triggers"),
        "{err}"
    );

    // The natural first try in Rust, a `fn main` for wasm32-wasip2: what it is, and the
    // recipe that works.
    let command = repo("fixtures/rust-main/rust-main.wasm");
    let err = failing(up.cli(&["deploy", "main", command.to_str().unwrap()]));
    assert!(err.contains("is a WASI 0.2 command"), "{err}");
    assert!(err.contains("cirrus new NAME --lang rust"), "{err}");

    // A schedule: the field and its range, with the input as given; AWS's forms work.
    let err = failing(up.cli(&["trigger", "add", "hello", "--schedule", "0 25 * * *"]));
    assert!(
        err.contains("\"0 25 * * *\": the hour field \"25\" is out of range: hour takes 0-23"),
        "{err}"
    );
    up.cli_ok(&[
        "trigger",
        "add",
        "hello",
        "--schedule",
        "cron(0 9 ? * MON-FRI *)",
    ]);
    up.cli_ok(&["trigger", "add", "hello", "--schedule", "rate(1 day)"]);
    let listed = up.cli_ok(&["trigger", "ls", "hello"]);
    assert!(listed.contains("cron(0 9 ? * MON-FRI *)"), "{listed}");
}
