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
