//! Native Lambda runtimes from the CLI: `cirrus runtimes`, `cirrus deploy --runtime
//! --handler` with a zip, and a `cirrus.toml` naming the runtime.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{repo, Up};

/// A zip of fixtures/native/app.py.
fn app_zip(dir: &std::path::Path) -> std::path::PathBuf {
    let source = std::fs::read(repo("fixtures/native/app.py")).unwrap();
    common::package(dir, "app.py", &source)
}

/// Deploys `handler` of `zip` on Python 3.11, with `--allow-host grant` if given and
/// `extra` flags.
fn deploy_python(
    up: &Up,
    name: &str,
    zip: &std::path::Path,
    handler: &str,
    grant: Option<String>,
    extra: &[&str],
) {
    let zip = zip.to_str().unwrap();
    let mut args = vec![
        "deploy",
        name,
        zip,
        "--runtime",
        "python3.11",
        "--handler",
        handler,
    ];
    let grant = grant.map(|host| ["--allow-host".to_owned(), host]);
    if let Some(flags) = &grant {
        args.extend(flags.iter().map(String::as_str));
    }
    args.extend_from_slice(extra);
    up.cli_ok(&args);
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

/// A one-thread HTTP server on the host that answers every request with its path;
/// returns its port.
fn upstream() -> u16 {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream);
            let Some(common::Received { path, .. }) = common::read_request(&mut reader) else {
                continue;
            };
            let body = format!("upstream saw {path}");
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn native_handlers_reach_allowed_hosts_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let zip = app_zip(dir.path());
    let allowed = upstream();
    let other = upstream();
    let deploy = |name: &str, handler: &str, grant: Option<String>| {
        deploy_python(&up, name, &zip, handler, grant, &[]);
    };
    let invoke = |name: &str, event: serde_json::Value| -> serde_json::Value {
        let out = up.cli_ok(&["invoke", name, "--data", &event.to_string()]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let grant = Some(format!("localhost:{allowed}"));
    deploy("fetch", "app.fetch", grant.clone());
    deploy("tunnel", "app.tunnel", grant);
    deploy("closed", "app.fetch", None);

    // Plain HTTP through the proxy, to the granted host:port only.
    let answer = invoke(
        "fetch",
        serde_json::json!({"url": format!("http://localhost:{allowed}/ok")}),
    );
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"], "upstream saw /ok", "{answer}");
    let answer = invoke(
        "fetch",
        serde_json::json!({"url": format!("http://localhost:{other}/no")}),
    );
    assert_eq!(answer["status"], 403, "{answer}");
    assert!(
        answer["body"].as_str().unwrap().contains("allowed_hosts"),
        "{answer}"
    );

    // A CONNECT tunnel (how HTTPS leaves), likewise.
    let answer = invoke(
        "tunnel",
        serde_json::json!({"host": "localhost", "port": allowed}),
    );
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"], "upstream saw /tunnelled", "{answer}");
    let answer = invoke(
        "tunnel",
        serde_json::json!({"host": "localhost", "port": other}),
    );
    assert_ne!(answer["status"], 200, "{answer}");
    assert!(answer["body"].as_str().unwrap().contains("403"), "{answer}");

    // Without a grant, nothing is reachable, not even the host that the others may use.
    let answer = invoke(
        "closed",
        serde_json::json!({"url": format!("http://localhost:{allowed}/ok")}),
    );
    assert_eq!(answer["status"], 403, "{answer}");
}

#[test]
fn native_handlers_with_storage_grants_reach_the_platform() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let zip = app_zip(dir.path());
    for (name, grant) in [("store", "kv:notes:write"), ("reader", "kv:notes:read")] {
        deploy_python(&up, name, &zip, "app.store", None, &["--storage", grant]);
    }
    let invoke = |name: &str, event: serde_json::Value| -> serde_json::Value {
        let out = up.cli_ok(&["invoke", name, "--data", &event.to_string()]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    // Twice: the second call runs in the warm environment, whose stand-in token is
    // replaced by the current invocation's.
    for (key, value) in [("a", 1), ("b", 2)] {
        let answer = invoke(
            "store",
            serde_json::json!({"key": key, "value": {"n": value}}),
        );
        assert_eq!(answer["status"], 200, "{answer}");
        assert_eq!(up.cli_json(&["kv", "get", "notes", key])["n"], value);
    }
    // The grant is enforced: a read grant does not write.
    let answer = invoke("reader", serde_json::json!({"key": "c", "value": 3}));
    assert_eq!(answer["status"], 403, "{answer}");
    assert!(!up.cli(&["kv", "get", "notes", "c"]).status.success());
}

#[test]
fn native_handlers_reach_allowed_hosts_while_they_initialise() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    let allowed = upstream();
    // A module that calls out at import, as an SDK client fetching its configuration does.
    let zip = common::package(
        dir.path(),
        "initcall.py",
        b"import os, urllib.request\n\
          with urllib.request.urlopen(os.environ['INIT_URL'], timeout=10) as r:\n    \
              CONFIG = r.read().decode()\n\
          def handler(event, context):\n    return {'config': CONFIG}\n",
    );
    let env = format!("INIT_URL=http://localhost:{allowed}/init");
    for (name, grant) in [
        ("granted", Some(format!("localhost:{allowed}"))),
        ("denied", None),
    ] {
        deploy_python(&up, name, &zip, "initcall.handler", grant, &["--env", &env]);
    }
    let out = up.cli_ok(&["invoke", "granted", "--data", "{}"]);
    assert!(out.contains("upstream saw /init"), "{out}");
    // Without the grant the import fails, and says why.
    let out = up.cli(&["invoke", "denied", "--data", "{}"]);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("403") || said.contains("Forbidden"), "{said}");
}
