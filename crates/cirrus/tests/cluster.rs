//! Cluster mode against real NATS: `nats-server -js` processes of the tests' own (one,
//! or a three-server cluster with R3 buckets), two `cirrus up --cluster` nodes each.
#![allow(clippy::unwrap_used)]

mod common;

use cirrus_server::testing::{NatsCluster, NatsServer};
use common::{repo, Up};
use std::process::Command;
use std::time::{Duration, Instant};

fn node(dir: &std::path::Path, cluster: &str, extra: &[&str]) -> Up {
    let mut args = vec!["--cluster", cluster];
    args.extend_from_slice(extra);
    Up::start(dir, &args)
}

/// Status and body of a request.
fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(token) = token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    if let Some(body) = body {
        command.args(["--data-binary", body]);
    }
    let out = command.output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

/// Waits (at most `limit`) until `check` holds; how long it took.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

#[test]
fn a_deploy_on_one_node_is_served_by_every_node() {
    let nats = NatsServer::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &nats.url(), &[]);
    let b = node(db.path(), &nats.url(), &[]);
    // One admin token and one set of S3/Lambda keys for the cluster: the first node's.
    assert_eq!(a.admin_token(), b.admin_token());
    assert_eq!(
        std::fs::read_to_string(da.path().join("s3-credentials")).unwrap(),
        std::fs::read_to_string(db.path().join("s3-credentials")).unwrap()
    );

    a.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    let on_b = format!("{}/fn/echo", b.url);
    let took = eventually(Duration::from_secs(5), "B serves A's deploy", || {
        call("POST", &on_b, None, Some("hi")) == (200, "hi".into())
    });
    assert!(
        took < Duration::from_secs(1),
        "served by B within a second: {took:?}"
    );

    // Versions are numbered across the cluster: B's redeploy is version 2, and A sees it.
    let out = b.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
        "--env",
        "K=v",
    ]);
    assert!(out.contains("version 2"), "{out}");
    eventually(Duration::from_secs(5), "A sees version 2", || {
        a.cli_json(&["ls"])[0]["latest"]["version"] == 2
    });
    b.cli_ok(&["alias", "set", "echo", "live", "1"]);
    eventually(Duration::from_secs(5), "A sees B's alias", || {
        call("POST", &format!("{}/fn/echo@live", a.url), None, Some("x")).0 == 200
    });
    // Triggers too: a route added on A answers on B.
    a.cli_ok(&["trigger", "add", "echo", "--route", "POST /shout"]);
    eventually(Duration::from_secs(5), "B serves A's route", || {
        call("POST", &format!("{}/shout", b.url), None, Some("r")) == (200, "r".into())
    });

    // Records and logs: every node answers for the whole cluster.
    let (status, _) = call("POST", &on_b, None, Some("counted"));
    assert_eq!(status, 200);
    let calls = |up: &Up| {
        up.cli_json(&["invocations", "echo", "--limit", "100"])["items"]
            .as_array()
            .unwrap()
            .len()
    };
    eventually(Duration::from_secs(5), "A lists B's invocations", || {
        calls(&a) == calls(&b)
    });
    assert!(calls(&a) >= 4, "both nodes' calls are listed");
    let lines = |up: &Up| {
        up.cli_ok(&["--json", "logs", "echo", "--limit", "1000"])
            .lines()
            .count()
    };
    eventually(Duration::from_secs(5), "A has B's log lines", || {
        lines(&a) == lines(&b)
    });
    assert!(lines(&a) >= 4, "both nodes' log lines");
    eventually(
        Duration::from_secs(5),
        "the same usage on both nodes",
        || a.cli_json(&["usage"])["rows"] == b.cli_json(&["usage"])["rows"],
    );

    // A delete on B ends the function everywhere.
    b.cli_ok(&["rm", "echo"]);
    eventually(Duration::from_secs(5), "A forgets the function", || {
        call("POST", &format!("{}/fn/echo", a.url), None, Some("x")).0 == 404
    });

    // What is not shared yet is refused on every node, with nothing done.
    let (status, body) = call(
        "GET",
        &format!("{}/v1/kv/t", a.url),
        Some(&a.admin_token()),
        None,
    );
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("not shared between cluster nodes"), "{body}");
    let (status, body) = call(
        "PUT",
        &format!("{}/v1/buckets/photos", b.url),
        Some(&b.admin_token()),
        None,
    );
    assert_eq!(status, 501, "{body}");
    let (status, body) = call("PUT", &format!("{}/photos", a.s3), None, None);
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("<Code>NotImplemented</Code>"), "{body}");
}

#[test]
fn concurrency_limits_are_per_node() {
    let nats = NatsServer::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A call over the limit is refused at once instead of waiting for the slot.
    let a = node(da.path(), &nats.url(), &["--queue-timeout", "50ms"]);
    let b = node(db.path(), &nats.url(), &["--queue-timeout", "50ms"]);
    a.cli_ok(&[
        "deploy",
        "sleepy",
        repo("fixtures/sleep.wat").to_str().unwrap(),
        "--concurrency",
        "1",
    ]);
    let (on_a, on_b) = (
        format!("{}/fn/sleepy", a.url),
        format!("{}/fn/sleepy", b.url),
    );
    eventually(Duration::from_secs(5), "B has the function", || {
        call("GET", &on_b, None, None).0 == 200
    });
    let both = |first: String, second: String| {
        let one = std::thread::spawn(move || call("GET", &first, None, None).0);
        std::thread::sleep(Duration::from_millis(100));
        let two = call("GET", &second, None, None).0;
        (one.join().unwrap(), two)
    };
    // One node: the second call finds the only slot taken.
    assert_eq!(both(on_a.clone(), on_a.clone()), (200, 429));
    // Two nodes: each has its own slot.
    assert_eq!(both(on_a, on_b), (200, 200));
}

#[test]
fn schedules_fire_once_per_tick_across_nodes() {
    let nats = NatsServer::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &nats.url(), &[]);
    let b = node(db.path(), &nats.url(), &[]);
    a.cli_ok(&[
        "deploy",
        "tick",
        repo("fixtures/log_input.wat").to_str().unwrap(),
    ]);
    a.cli_ok(&["trigger", "add", "tick", "--schedule", "rate(1 second)"]);
    std::thread::sleep(Duration::from_millis(4500));
    // Every node has every node's logs: the same ticks on both, each tick once.
    let mut times = Vec::new();
    eventually(Duration::from_secs(5), "both nodes have every tick", || {
        times = a.scheduled_times("tick");
        let mut on_b = b.scheduled_times("tick");
        times.sort();
        on_b.sort();
        times == on_b
    });
    let fired = times.len();
    times.sort();
    times.dedup();
    assert_eq!(times.len(), fired, "a tick fired on both nodes: {times:?}");
    assert!(fired >= 3, "the schedule fired: {fired}");
}

#[test]
fn a_node_that_loses_nats_refuses_writes_and_recovers() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), &nats.url(), &[]);
    a.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    let nats_state = || {
        let (_, body) = call("GET", &format!("{}/v1/health", a.url), None, None);
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "ok", "{health}");
        health["cluster"]["nats"].as_str().unwrap().to_owned()
    };
    assert_eq!(nats_state(), "connected");
    nats.stop();
    let deploy = || {
        a.cli(&[
            "deploy",
            "echo",
            repo("fixtures/echo.wat").to_str().unwrap(),
            "--env",
            "K=2",
        ])
    };
    eventually(Duration::from_secs(10), "the node notices", || {
        let out = deploy();
        String::from_utf8_lossy(&out.stderr).contains("lost its connection to NATS")
    });
    assert_eq!(nats_state(), "disconnected");
    // What it knows it still serves.
    assert_eq!(
        call("POST", &format!("{}/fn/echo", a.url), None, Some("up")),
        (200, "up".into())
    );
    nats.resume();
    eventually(Duration::from_secs(20), "writes work again", || {
        deploy().status.success()
    });
    assert_eq!(a.cli_json(&["ls"])[0]["latest"]["version"], 2);
}

#[test]
fn a_three_server_nats_cluster_loses_one_server_and_nothing_else() {
    let mut nats = NatsCluster::start();
    let urls = nats.urls();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &urls, &["--cluster-replicas", "3"]);
    let b = node(db.path(), &urls, &["--cluster-replicas", "3"]);
    a.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    nats.servers[0].stop();
    // Acknowledged state survives, writes still succeed, and both nodes follow them.
    let out = b.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
        "--env",
        "K=2",
    ]);
    assert!(out.contains("version 2"), "{out}");
    // A node whose watch was served by the lost server notices by the watch's missed
    // heartbeats (about 10 s), then reads everything again.
    eventually(Duration::from_secs(30), "A sees version 2", || {
        a.cli_json(&["ls"])[0]["latest"]["version"] == 2
    });
    assert_eq!(
        call("POST", &format!("{}/fn/echo@1", b.url), None, Some("v1")),
        (200, "v1".into())
    );
    // A node started now, with one NATS server down, reads everything.
    let dc = tempfile::tempdir().unwrap();
    let c = node(dc.path(), &urls, &["--cluster-replicas", "3"]);
    assert_eq!(c.cli_json(&["ls"])[0]["latest"]["version"], 2);
    assert_eq!(
        call("POST", &format!("{}/fn/echo", c.url), None, Some("c")),
        (200, "c".into())
    );
}

#[test]
fn secrets_keys_and_the_audit_log_are_the_clusters() {
    let nats = NatsServer::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &nats.url(), &[]);
    // Every node seals with the same key, which never goes into NATS: B is given A's.
    let key_file = da.path().join("secrets.key");
    let b = node(
        db.path(),
        &nats.url(),
        &["--secrets-key-file", key_file.to_str().unwrap()],
    );
    let said = a.set_secret("db-password", "hunter2");
    assert!(said.contains("created"), "{said}");
    // B knows it at once: a deploy there may reference it, and A's environments
    // resolve it.
    eventually(Duration::from_secs(5), "B knows the secret", || {
        b.cli_json(&["secret", "ls"]).as_array().map_or(0, Vec::len) == 1
    });
    b.cli_ok(&[
        "deploy",
        "app",
        repo("fixtures/env.wat").to_str().unwrap(),
        "--env",
        "DB_PASSWORD=secret:db-password",
    ]);
    eventually(
        Duration::from_secs(5),
        "A runs B's deploy with the secret",
        || {
            let out = a.cli(&["invoke", "app"]);
            String::from_utf8_lossy(&out.stdout).contains("DB_PASSWORD=hunter2")
        },
    );

    // A key made on A opens B; revoked on B, A refuses it.
    let key = a.cli_json(&["key", "create", "--scope", "read"]);
    let token = key["token"].as_str().unwrap().to_owned();
    let id = key["id"].as_str().unwrap().to_owned();
    let list = |up: &Up| {
        call(
            "GET",
            &format!("{}/v1/functions", up.url),
            Some(&token),
            None,
        )
        .0
    };
    eventually(Duration::from_secs(5), "B accepts A's key", || {
        list(&b) == 200
    });
    b.cli_ok(&["key", "revoke", &id]);
    eventually(Duration::from_secs(5), "A refuses the revoked key", || {
        list(&a) == 401
    });

    // One audit log: B lists what was done on A.
    let audit = b.cli_json(&["audit", "--limit", "100"]);
    let entries = audit.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["method"] == "PUT" && e["path"] == "/v1/secrets/db-password"),
        "{audit:#}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["method"] == "DELETE" && e["path"] == format!("/v1/keys/{id}")),
        "{audit:#}"
    );
}
