//! `cirrus deploy` on the real binary: a redeploy keeps what its flags do not name and
//! says so; `--remove-*` and `--reset` take grants, hosts, variables and destinations
//! away (and the guest really loses them); a manifest is declarative.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{repo, Up};
use std::time::{Duration, Instant};

fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn config(up: &Up, name: &str) -> serde_json::Value {
    up.cli_json(&["get", name])["latest"]["config"].clone()
}

fn failure(up: &Up, args: &[&str]) -> String {
    let out = up.cli(args);
    assert!(!out.status.success(), "cirrus {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// POSTs the feedback form to the example (through `/fn`), answering the status.
fn post_feedback(up: &Up, function: &str) -> String {
    up.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data",
        "name=Ada&email=ada%40example.com&message=hello",
        &format!("{}/fn/{function}", up.url),
    ])
}

#[test]
fn removing_a_storage_grant_takes_the_guests_access_away() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let wasm = repo("examples/storage/feedback.wasm");
    let wasm = wasm.to_str().unwrap();
    up.cli_ok(&[
        "deploy",
        "fb",
        wasm,
        "--storage",
        "kv:feedback:write",
        "--storage",
        "kv:other:read",
    ]);
    assert_eq!(post_feedback(&up, "fb"), "201", "the grant lets it store");

    // A redeploy without flags changes nothing, and says what it keeps.
    let out = up.cli_ok(&["deploy", "fb", wasm]);
    assert!(out.contains("unchanged fb version 1"), "{out}");
    assert!(
        out.contains("kept from version 1: storage kv:feedback:write, kv:other:read"),
        "{out}"
    );
    assert!(
        out.contains("--remove-storage"),
        "the output says how to drop it: {out}"
    );

    // Removing one grant: the other is kept and named, the removed one is named.
    let out = up.cli_ok(&[
        "deploy",
        "fb",
        wasm,
        "--remove-storage",
        "kv:feedback:write",
    ]);
    assert!(out.contains("deployed fb version 2"), "{out}");
    assert!(
        out.contains("kept from version 1: storage kv:other:read"),
        "{out}"
    );
    assert!(out.contains("removed: storage kv:feedback:write"), "{out}");
    assert_eq!(
        config(&up, "fb")["storage"],
        serde_json::json!(["kv:other:read"])
    );
    // The guest still has a token (for kv:other), and the API refuses the write with 403.
    assert_eq!(post_feedback(&up, "fb"), "502");
    let logs = eventually("the guest's log of the refusal", || {
        let logs = up.cli_ok(&["logs", "fb"]);
        logs.contains("storing feedback failed: HTTP 403")
            .then_some(logs)
    });
    assert!(
        logs.contains("kv:feedback:write"),
        "the 403 names the grant: {logs}"
    );
    let rows = up.cli_json(&["kv", "ls", "feedback"]);
    assert_eq!(
        rows["items"].as_array().unwrap().len(),
        1,
        "only the first post was stored"
    );

    // Removing what is not there is an error naming what is, and deploys nothing.
    let err = failure(
        &up,
        &[
            "deploy",
            "fb",
            wasm,
            "--remove-storage",
            "kv:feedback:write",
        ],
    );
    assert!(
        err.contains("fb version 2 does not have it (it has kv:other:read)"),
        "{err}"
    );
    let err = failure(
        &up,
        &[
            "deploy",
            "fb",
            wasm,
            "--storage",
            "kv:x:read",
            "--remove-storage",
            "kv:x:read",
        ],
    );
    assert!(err.contains("also adds it"), "{err}");
    assert_eq!(
        up.cli_json(&["versions", "fb"]).as_array().unwrap().len(),
        2
    );

    // --reset storage drops every grant: no token at all any more.
    let out = up.cli_json(&["deploy", "fb", wasm, "--reset", "storage"]);
    assert_eq!(out[0]["version"], 3);
    assert_eq!(out[0]["previous_version"], 2);
    assert_eq!(
        out[0]["removed"]["storage"],
        serde_json::json!(["kv:other:read"])
    );
    assert_eq!(out[0]["kept"], serde_json::json!({}));
    assert_eq!(config(&up, "fb")["storage"], serde_json::json!([]));
    assert_eq!(post_feedback(&up, "fb"), "502");
    eventually("the guest's log of the missing token", || {
        let logs = up.cli_ok(&["logs", "fb"]);
        (logs.matches("storing feedback failed").count() >= 2).then_some(())
    });
    let rows = up.cli_json(&["kv", "ls", "feedback"]);
    assert_eq!(rows["items"].as_array().unwrap().len(), 1);

    // A grant given again works again.
    up.cli_ok(&["deploy", "fb", wasm, "--storage", "kv:feedback:write"]);
    assert_eq!(post_feedback(&up, "fb"), "201");
}

#[test]
fn env_vars_hosts_and_destinations_can_be_removed_and_the_output_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let env = repo("fixtures/env.wat");
    let env = env.to_str().unwrap();
    up.cli_ok(&[
        "deploy",
        "e",
        env,
        "--memory",
        "64",
        "--env",
        "KEEP=1",
        "--env",
        "SECRET=hunter2",
        "--allow-host",
        "a.example",
        "--allow-host",
        "b.example",
        "--concurrency",
        "3",
    ]);
    let seen = up.cli_ok(&["invoke", "e"]);
    assert!(
        seen.contains("KEEP=1") && seen.contains("SECRET=hunter2"),
        "{seen}"
    );

    let out = up.cli_json(&[
        "deploy",
        "e",
        env,
        "--remove-env",
        "SECRET",
        "--remove-allow-host",
        "a.example",
        "--reset",
        "max_concurrency",
    ]);
    let out = &out[0];
    assert_eq!(
        (out["version"].as_u64(), out["previous_version"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(out["created"], true);
    assert_eq!(out["removed"]["env"], serde_json::json!(["SECRET"]));
    assert_eq!(
        out["removed"]["allowed_hosts"],
        serde_json::json!(["a.example"])
    );
    assert_eq!(out["removed"]["max_concurrency"], 3);
    assert_eq!(
        out["kept"]["env"],
        serde_json::json!(["KEEP"]),
        "names only, never values"
    );
    assert_eq!(
        out["kept"]["allowed_hosts"],
        serde_json::json!(["b.example"])
    );
    assert_eq!(out["kept"]["memory_mb"], 64);
    assert!(!out["kept"].to_string().contains("hunter2"));
    let c = config(&up, "e");
    assert_eq!(c["env"], serde_json::json!({"KEEP": "1"}));
    assert_eq!(c["allowed_hosts"], serde_json::json!(["b.example"]));
    assert_eq!(c["max_concurrency"], serde_json::Value::Null);
    let seen = up.cli_ok(&["invoke", "e"]);
    assert!(
        seen.contains("KEEP=1") && !seen.contains("SECRET"),
        "the guest lost it: {seen}"
    );

    // Setting a flag names that setting: it is not "kept"; the rest is.
    let out = up.cli_ok(&[
        "deploy",
        "e",
        env,
        "--env",
        "KEEP=2",
        "--reset",
        "allowed_hosts",
    ]);
    assert!(out.contains("deployed e version 3"), "{out}");
    assert!(out.contains("kept from version 2: memory_mb 64"), "{out}");
    assert!(out.contains("removed: allowed_hosts b.example"), "{out}");
    assert!(!out.contains("env KEEP"), "KEEP was set, not kept: {out}");
    assert_eq!(config(&up, "e")["allowed_hosts"], serde_json::json!([]));
    let err = failure(&up, &["deploy", "e", env, "--remove-env", "NOPE"]);
    assert!(
        err.contains("e version 3 has no such variable (it has KEEP)"),
        "{err}"
    );
    let err = failure(&up, &["deploy", "e", env, "--reset", "colour"]);
    assert!(
        err.contains("unknown setting") && err.contains("storage"),
        "{err}"
    );

    // Destinations: both rows written, then one destination removed; async runs after
    // that write only to the one kept.
    let echo = repo("fixtures/echo.wat");
    let echo = echo.to_str().unwrap();
    up.cli_ok(&[
        "deploy",
        "p",
        echo,
        "--on-success",
        "kv:results",
        "--on-success",
        "kv:audit",
        "--on-failure",
        "kv:failures",
    ]);
    let rows = |table: &str| {
        up.cli_json(&["kv", "ls", table])["items"]
            .as_array()
            .unwrap()
            .len()
    };
    up.cli_ok(&["invoke", "p", "--async", "-d", "{\"n\":1}"]);
    eventually("the first rows", || {
        (rows("results") == 1 && rows("audit") == 1).then_some(())
    });
    let out = up.cli_ok(&[
        "deploy",
        "p",
        echo,
        "--remove-on-success",
        "kv:results",
        "--reset",
        "on_failure",
    ]);
    assert!(
        out.contains("kept from version 1: on_success kv:audit"),
        "{out}"
    );
    assert!(
        out.contains("on_success kv:results") && out.contains("on_failure kv:failures"),
        "{out}"
    );
    let c = config(&up, "p");
    assert_eq!(c["on_success"], serde_json::json!(["kv:audit"]));
    assert_eq!(c["on_failure"], serde_json::Value::Null);
    up.cli_ok(&["invoke", "p", "--async", "-d", "{\"n\":2}"]);
    eventually("the second audit row", || {
        (rows("audit") == 2).then_some(())
    });
    assert_eq!(rows("results"), 1, "the removed destination got nothing");
}

#[test]
fn a_manifest_deploy_removes_what_the_manifest_no_longer_lists() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), &[]);
    let echo = repo("fixtures/echo.wat");
    let manifest = dir.path().join("cirrus.toml");
    let write = |body: &str| {
        std::fs::write(
            &manifest,
            format!(
                "[functions.m]\nsource = {:?}\n{body}",
                echo.to_str().unwrap()
            ),
        )
        .unwrap();
    };
    let manifest_arg = manifest.to_str().unwrap();
    write(
        "memory_mb = 64\nenv = { A = \"1\" }\nallowed_hosts = [\"a.example\"]\n\
         storage = [\"kv:t:write\"]\non_success = [\"topic:b\"]\non_failure = \"kv:failed\"\n\
         triggers = [{ topic = \"a\" }]\n",
    );
    let out = up.cli_ok(&["deploy", "-f", manifest_arg]);
    assert!(
        out.contains("deployed m version 1") && !out.contains("kept"),
        "{out}"
    );

    // The same function, its destination and subscription swapped: the old trigger goes
    // before the new config lands, so this is not mistaken for a loop midway.
    write("on_success = [\"topic:a\"]\ntriggers = [{ topic = \"b\" }]\n");
    let out = up.cli_json(&["deploy", "-f", manifest_arg]);
    let out = &out[0];
    assert_eq!(out["version"], 2);
    assert_eq!(
        out["kept"],
        serde_json::json!({}),
        "a manifest keeps nothing unasked"
    );
    for (setting, value) in [
        ("env", serde_json::json!(["A"])),
        ("allowed_hosts", serde_json::json!(["a.example"])),
        ("storage", serde_json::json!(["kv:t:write"])),
        ("on_success", serde_json::json!(["topic:b"])),
        ("on_failure", serde_json::json!("kv:failed")),
    ] {
        assert_eq!(out["removed"][setting], value, "{setting}: {out}");
    }
    let c = config(&up, "m");
    assert_eq!(c["memory_mb"], 128);
    assert_eq!(c["env"], serde_json::json!({}));
    assert_eq!(c["allowed_hosts"], serde_json::json!([]));
    assert_eq!(c["storage"], serde_json::json!([]));
    assert_eq!(c["on_success"], serde_json::json!(["topic:a"]));
    assert_eq!(c["on_failure"], serde_json::Value::Null);
    let triggers = up.cli_json(&["trigger", "ls", "m"]);
    assert_eq!(triggers.as_array().unwrap().len(), 1);
    assert_eq!(triggers[0]["topic"], "b");

    // A manifest whose function feeds its own topic is refused before anything changes.
    write("on_success = [\"topic:b\"]\ntriggers = [{ topic = \"b\" }]\n");
    let err = failure(&up, &["deploy", "-f", manifest_arg]);
    assert!(
        err.contains("functions.m.on_success") && err.contains("one-function loop"),
        "{err}"
    );
    assert_eq!(up.cli_json(&["versions", "m"]).as_array().unwrap().len(), 2);
    // Manifests are edited in the file, not with removal flags.
    write("");
    let err = failure(
        &up,
        &[
            "deploy",
            "-f",
            manifest_arg,
            "--remove-storage",
            "kv:t:write",
        ],
    );
    assert!(err.contains("a manifest is edited in the file"), "{err}");

    // `cirrus up --app` deploys the same way: swap back on a restart.
    drop(up);
    write("on_success = [\"topic:b\"]\ntriggers = [{ topic = \"a\" }]\n");
    let up = Up::start(&dir.path().join("data"), &["--app", manifest_arg]);
    let c = config(&up, "m");
    assert_eq!(c["on_success"], serde_json::json!(["topic:b"]));
    let triggers = up.cli_json(&["trigger", "ls", "m"]);
    assert_eq!(triggers.as_array().unwrap().len(), 1);
    assert_eq!(triggers[0]["topic"], "a");
}
