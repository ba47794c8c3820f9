//! `cirrus new` in every language, round-tripped: new → build → deploy → call, as a new
//! user would (the CLI run inside the project), against the real server.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::Up;
use std::path::Path;
use std::process::{Command, Output};

/// The CLI run in `dir`, finding the server through its data dir.
fn cli_in(up: &Up, dir: &Path, args: &[&str]) -> Output {
    Command::new(common::BIN)
        .args(args)
        .current_dir(dir)
        .env("CIRRUS_DATA_DIR", &up.data_dir)
        .env_remove("CIRRUS_URL")
        .env_remove("CIRRUS_TOKEN")
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates, builds and deploys `name` from a template, then calls it.
fn round_trip(flags: &[&str], name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), &[]);
    let mut args = vec!["new", name];
    args.extend_from_slice(flags);
    let said = ok(cli_in(&up, dir.path(), &args), "cirrus new");
    assert!(
        said.contains(&format!("cd {name} && cirrus build")),
        "{said}"
    );
    let project = dir.path().join(name);
    for file in ["cirrus.toml", "build.sh", "README.md", ".gitignore"] {
        assert!(
            project.join(file).exists(),
            "{file} in {}",
            project.display()
        );
    }
    ok(cli_in(&up, &project, &["build"]), "cirrus build");
    let deployed = ok(cli_in(&up, &project, &["deploy"]), "cirrus deploy");
    assert!(deployed.contains(name), "{deployed}");
    let answer = up.curl(&["--data", "you", &format!("{}/fn/{name}", up.url)]);
    assert!(answer.starts_with("Hello, you!"), "{name}: {answer}");
}

#[test]
fn a_rust_project_round_trips() {
    round_trip(&["--lang", "rust"], "hello-rs");
}

#[test]
fn a_c_project_round_trips() {
    round_trip(&["--lang", "c"], "hello-c");
}

#[test]
fn a_python_project_round_trips() {
    round_trip(&["--lang", "python"], "hello-py");
}

#[test]
fn a_javascript_project_round_trips() {
    round_trip(&["--lang", "js"], "hello-js");
}

#[test]
fn lambda_handler_projects_round_trip() {
    round_trip(&["--runtime", "python3.11"], "lambda-py");
    round_trip(&["--runtime", "nodejs20.x"], "lambda-node");
}

#[test]
fn cirrus_new_refuses_what_it_cannot_make() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(common::BIN)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["new", "x"]).contains("--lang"));
    assert!(run(&["new", "bad name", "--lang", "rust"]).contains("not a valid name"));
    assert!(run(&["new", "x", "--runtime", "java21"]).contains("no template for the runtime"));
    assert!(run(&["new", "x", "--lang", "cobol"]).contains("rust"));
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    assert!(run(&["new", "taken", "--lang", "c"]).contains("already exists"));
    assert!(run(&["build"]).contains("has no build.sh"));
}

#[test]
fn cirrus_dev_rebuilds_redeploys_and_follows_the_logs_on_save() {
    use std::io::{BufRead as _, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"), &[]);
    ok(
        cli_in(&up, dir.path(), &["new", "live", "--lang", "c"]),
        "cirrus new",
    );
    let project = dir.path().join("live");
    let mut dev = Command::new(common::BIN)
        .arg("dev")
        .current_dir(&project)
        .env("CIRRUS_DATA_DIR", &up.data_dir)
        .env_remove("CIRRUS_URL")
        .env_remove("CIRRUS_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(dev.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(dev.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut seen = Vec::new();
    let mut wait_for = |what: &str, check: &dyn Fn(&str) -> bool| {
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(60) {
            if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                let hit = check(&line);
                seen.push(line);
                if hit {
                    return;
                }
            }
        }
        panic!("cirrus dev never said {what}: {seen:#?}");
    };
    wait_for("deployed", &|l| l.contains("cirrus dev: deployed"));
    let url = format!("{}/fn/live", up.url);
    assert!(up.curl(&["--data", "you", &url]).starts_with("Hello, you!"));
    wait_for("the function's log line", &|l| l.contains("handled POST /"));
    // A save: rebuilt and redeployed without anything else to do.
    let handler = project.join("handler.c");
    let source = std::fs::read_to_string(&handler).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(&handler, source.replace("Hello, %s!", "Howdy, %s!")).unwrap();
    wait_for("redeployed", &|l| l.contains("cirrus dev: redeployed"));
    assert!(up.curl(&["--data", "you", &url]).starts_with("Howdy, you!"));
    let _ = Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status();
    let status = dev.wait().unwrap();
    assert!(
        status.success(),
        "cirrus dev stops cleanly on Ctrl-C: {status}"
    );
}
