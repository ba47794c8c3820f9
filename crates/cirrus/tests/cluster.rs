//! Cluster mode against real NATS: `nats-server -js` processes of the tests' own (one,
//! or a three-server cluster with R3 buckets), two `cirrus up --cluster` nodes each.
#![allow(clippy::unwrap_used)]

mod common;

use cirrus_server::testing::{NatsCluster, NatsServer};
use common::{aws, aws_ok, repo, Up};
use std::process::Command;
use std::time::{Duration, Instant};

/// Two nodes on a nats-server of the test's own (dropped in this order: the nodes, their
/// data dirs, NATS).
struct Pair {
    a: Up,
    b: Up,
    dirs: [tempfile::TempDir; 2],
    nats: NatsServer,
}

fn pair() -> Pair {
    let nats = NatsServer::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = node(dirs[0].path(), &nats.url(), &[]);
    let b = node(dirs[1].path(), &nats.url(), &[]);
    Pair { a, b, dirs, nats }
}

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
    let p = pair();
    let (a, b) = (&p.a, &p.b);
    let [da, db] = &p.dirs;
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
        calls(a) == calls(b)
    });
    assert!(calls(a) >= 4, "both nodes' calls are listed");
    let lines = |up: &Up| {
        up.cli_ok(&["--json", "logs", "echo", "--limit", "1000"])
            .lines()
            .count()
    };
    eventually(Duration::from_secs(5), "A has B's log lines", || {
        lines(a) == lines(b)
    });
    assert!(lines(a) >= 4, "both nodes' log lines");
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
    let p = pair();
    let (a, b) = (&p.a, &p.b);
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
    // S3 writes too, as S3 says so (clients retry it), before anything is read.
    let (status, body) = call("PUT", &format!("{}/photos", a.s3), None, None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("<Code>ServiceUnavailable</Code>"), "{body}");
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

/// Invocations of `function` this node ran, from its own `/metrics`.
fn runs_here(up: &Up, function: &str) -> u64 {
    let token = up.admin_token();
    let (status, text) = call("GET", &format!("{}/metrics", up.url), Some(&token), None);
    assert_eq!(status, 200, "{text}");
    let label = format!("function=\"{function}\"");
    text.lines()
        .filter(|l| l.starts_with("cirrus_invocations_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Queues `count` asynchronous events for `function` on `url` (four connections), then
/// prints the request ids in the order they were acknowledged.
const ENQUEUE: &str = r#"
import http.client, json, sys, threading
from urllib.parse import urlparse
url, token, function, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
host = urlparse(url)
accepted, failed, lock, todo = [], [], threading.Lock(), iter(range(count))
def send():
    conn = http.client.HTTPConnection(host.hostname, host.port)
    while True:
        with lock:
            i = next(todo, None)
        if i is None or failed:
            return
        conn.request("POST", f"/v1/functions/{function}/invoke", body=str(i),
                     headers={"X-Cirrus-Invocation-Type": "Event",
                              "Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        body = r.read()
        with lock:
            if r.status == 202:
                accepted.append(json.loads(body)["request_id"])
            else:
                failed.append((r.status, body.decode()))
threads = [threading.Thread(target=send) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
assert not failed, failed[:3]
print(json.dumps(accepted))
"#;

/// Every record of `function` on `url`: `{request_id: [[started_at_s, outcome], …]}`.
const RECORDS: &str = r#"
import datetime, json, sys, urllib.request
url, token, function = sys.argv[1:4]
seen, before = {}, None
while True:
    q = f"{url}/v1/functions/{function}/invocations?limit=1000" + (f"&before={before}" if before else "")
    req = urllib.request.Request(q, headers={"authorization": f"Bearer {token}"})
    page = json.load(urllib.request.urlopen(req))
    for r in page["items"]:
        at = datetime.datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")).timestamp()
        seen.setdefault(r["request_id"], []).append([at, r["outcome"]])
    before = page.get("next")
    if not before or not page["items"]:
        break
print(json.dumps(seen))
"#;

#[test]
fn a_node_killed_with_events_queued_loses_none_and_the_other_takes_over() {
    const EVENTS: usize = 10_000;
    let mut p = pair();
    let (a, b) = (&mut p.a, &p.b);
    a.cli_ok(&["deploy", "nap", repo("fixtures/nap.wat").to_str().unwrap()]);
    eventually(Duration::from_secs(5), "B has the function", || {
        b.cli(&["get", "nap"]).status.success()
    });

    // Every event acknowledged by A, while both nodes deliver.
    let token = a.admin_token();
    let out = common::python(ENQUEUE, &[&a.url, &token, &"nap", &EVENTS.to_string()]);
    let accepted: Vec<String> = serde_json::from_str(&out).unwrap();
    assert_eq!(accepted.len(), EVENTS);
    // Spread over the nodes: both have run some (each node's metrics are its own).
    assert!(runs_here(a, "nap") > 0, "A delivers events");
    assert!(runs_here(b, "nap") > 0, "B delivers events A accepted");
    a.child.kill().unwrap(); // SIGKILL
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    a.child.wait().unwrap();

    // The survivor delivers every event: none lost, none dead.
    let records = || -> serde_json::Map<String, serde_json::Value> {
        let out = common::python(RECORDS, &[&b.url, &token, &"nap"]);
        serde_json::from_str(&out).unwrap()
    };
    let delivered = |records: &serde_json::Map<String, serde_json::Value>, id: &String| {
        records
            .get(id)
            .and_then(|r| r.as_array())
            .is_some_and(|r| r.iter().any(|attempt| attempt[1] == "success"))
    };
    let mut all = records();
    let started = Instant::now();
    while accepted.iter().any(|id| !delivered(&all, id)) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{} of {EVENTS} events still undelivered",
            accepted.iter().filter(|id| !delivered(&all, id)).count()
        );
        std::thread::sleep(Duration::from_secs(1));
        all = records();
    }
    let dead = b.cli_json(&["dlq", "ls"]);
    assert_eq!(dead.as_array().map_or(0, Vec::len), 0, "{dead}");

    // Takeover: the events A was running when it died are those left behind the point
    // the queue had reached (events acknowledged later had started before the kill).
    // The survivor starts each of them within 5 s of the kill.
    let first_start = |id: &String| {
        all[id]
            .as_array()
            .unwrap()
            .iter()
            .map(|attempt| attempt[0].as_f64().unwrap())
            .fold(f64::INFINITY, f64::min)
    };
    let reached = accepted
        .iter()
        .rposition(|id| first_start(id) < killed)
        .expect("events were delivered before the kill");
    assert!(
        reached < EVENTS - 500,
        "events were still queued when A was killed (reached {reached})"
    );
    let orphans: Vec<f64> = accepted[..reached]
        .iter()
        .map(first_start)
        .filter(|&at| at > killed)
        .map(|at| at - killed)
        .collect();
    assert!(!orphans.is_empty(), "A was delivering events when it died");
    let takeover = orphans.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "killed with {} of {EVENTS} events delivered; {} were A's, taken over within {takeover:.2} s",
        reached + 1,
        orphans.len()
    );
    assert!(
        takeover < 5.0,
        "the survivor took {takeover:.2} s to take over {} events",
        orphans.len()
    );
}

#[test]
fn failed_events_retry_and_dead_letter_once_for_the_whole_cluster() {
    let p = pair();
    let (a, b) = (&p.a, &p.b);
    let trap = repo("fixtures/trap.wat");
    let trap = trap.to_str().unwrap();
    a.cli_ok(&[
        "deploy",
        "trap",
        trap,
        "--max-attempts",
        "2",
        "--retry-delay",
        "10ms",
    ]);
    eventually(Duration::from_secs(5), "B has the function", || {
        b.cli(&["get", "trap"]).status.success()
    });

    // An idempotency key holds across nodes: B's repeat of A's event is A's event.
    let first = a.cli_json(&[
        "invoke",
        "trap",
        "--async",
        "--idempotency-key",
        "k1",
        "-d",
        "{\"x\":1}",
    ]);
    let again = b.cli_json(&["invoke", "trap", "--async", "--idempotency-key", "k1"]);
    assert_eq!(again["request_id"], first["request_id"]);
    assert_eq!(again["duplicate"], true);
    let id = first["request_id"].as_str().unwrap().to_owned();

    // Two attempts (on either node), then one dead event, listed by both nodes.
    eventually(Duration::from_secs(20), "the event is dead", || {
        b.cli_json(&["dlq", "ls"]).as_array().unwrap().len() == 1
    });
    let dead = a.cli_json(&["dlq", "ls", "--function", "trap"]);
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead[0]["request_id"], id.as_str());
    assert_eq!(dead[0]["attempts"], 2);
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("function_error"),
        "{dead}"
    );
    assert_eq!(a.cli_json(&["dlq", "show", &id])["data"], "{\"x\":1}");
    let trace_len = |up: &Up| {
        up.cli_json(&["trace", &id])["invocations"]
            .as_array()
            .unwrap()
            .len()
    };
    eventually(Duration::from_secs(5), "both attempts recorded", || {
        trace_len(a) == 2 && trace_len(b) == 2
    });

    // Redriven on B: two more attempts, dead again; purged on A.
    assert_eq!(
        b.cli_ok(&["dlq", "redrive", &id]).trim(),
        "redrove 1 event(s)"
    );
    eventually(Duration::from_secs(20), "redriven and dead again", || {
        trace_len(a) == 4 && a.cli_json(&["dlq", "ls"]).as_array().unwrap().len() == 1
    });
    assert_eq!(
        a.cli_ok(&["dlq", "purge", "--all"]).trim(),
        "purged 1 event(s)"
    );
    assert!(b.cli_json(&["dlq", "ls"]).as_array().unwrap().is_empty());
}

#[test]
fn kv_tables_are_the_clusters_and_their_changes_run_on_any_node() {
    let p = pair();
    let (a, b) = (&p.a, &p.b);
    let [da, _] = &p.dirs;
    let token = a.admin_token();
    a.cli_ok(&[
        "deploy",
        "watcher",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    a.cli_ok(&["trigger", "add", "watcher", "--table", "orders"]);
    eventually(Duration::from_secs(5), "B has the trigger", || {
        b.cli_json(&["trigger", "ls", "watcher"])
            .as_array()
            .is_some_and(|t| t.len() == 1)
    });
    let row = |up: &Up, key: &str| format!("{}/v1/kv/orders/{key}", up.url);

    // Rows written on B are read and listed on A.
    const ROWS: usize = 40;
    for i in 0..ROWS {
        let (status, body) = call(
            "PUT",
            &row(b, &format!("k{i}")),
            Some(&token),
            Some(&format!("{{\"n\":{i}}}")),
        );
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        call("GET", &row(a, "k7"), Some(&token), None),
        (200, "{\"n\":7}".into())
    );
    let listed = a.cli_json(&["kv", "ls", "orders", "--limit", "100"]);
    assert_eq!(listed["items"].as_array().unwrap().len(), ROWS, "{listed}");

    // Conditional writes hold across nodes: version 1 is taken once.
    let out = a.cli_ok(&[
        "kv",
        "put",
        "orders",
        "k0",
        "{\"n\":100}",
        "--if-version",
        "1",
    ]);
    assert_eq!(out.trim(), "orders/k0 version 2");
    let refused = b.cli(&[
        "kv",
        "put",
        "orders",
        "k0",
        "{\"n\":200}",
        "--if-version",
        "1",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("conflict"),
        "{refused:?}"
    );
    assert_eq!(
        call("GET", &row(b, "k0"), Some(&token), None).1,
        "{\"n\":100}"
    );

    // A value larger than a NATS message holds is refused whole, saying why.
    let big = da.path().join("big");
    std::fs::write(&big, vec![b'x'; (1 << 20) - 100]).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-X", "PUT", "-w", "\n%{http_code}", "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .arg("--data-binary")
        .arg(format!("@{}", big.display()))
        .arg(row(a, "big"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n413"), "{text}");
    assert!(text.contains("max_payload"), "{text}");
    assert_eq!(call("GET", &row(b, "big"), Some(&token), None).0, 404);

    // A delete on A is gone on B.
    a.cli_ok(&["kv", "rm", "orders", "k39"]);
    assert_eq!(call("GET", &row(b, "k39"), Some(&token), None).0, 404);
    let listed = b.cli_json(&["kv", "ls", "orders", "--limit", "100"]);
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        ROWS - 1,
        "{listed}"
    );

    // Every change ran the trigger once, on either node: B's writes ran on A too.
    let changes = ROWS + 2;
    eventually(Duration::from_secs(30), "every change delivered", || {
        let records = b.cli_json(&["invocations", "watcher", "--limit", "1000"]);
        let items = records["items"].as_array().unwrap();
        items.len() == changes && items.iter().all(|r| r["outcome"] == "success")
    });
    let (on_a, on_b) = (runs_here(a, "watcher"), runs_here(b, "watcher"));
    assert_eq!(on_a + on_b, changes as u64);
    assert!(
        on_a > 0 && on_b > 0,
        "changes written on B ran on A ({on_a}) and B ({on_b})"
    );
}

/// Makes the cluster's event stream refuse every event (`true`: as if each node died
/// right after writing what causes one, before queueing it) or take them again.
fn refuse_events(nats: &NatsServer, refuse: bool) {
    use async_nats::jetstream::stream::DiscardPolicy;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let mut events = js.get_stream("cirrus_events").await.unwrap();
        let mut config = events.info().await.unwrap().config.clone();
        (config.max_bytes, config.discard) = match refuse {
            true => (1, DiscardPolicy::New),
            false => (-1, DiscardPolicy::Old),
        };
        js.update_stream(config).await.unwrap();
    });
}

/// The change events the watcher logged (fixtures/log_then_nap.wat), in the order they
/// ran: (key, op, version).
fn changes(up: &Up, token: &str) -> Vec<(String, String, u64)> {
    let url = format!("{}/v1/functions/watcher/logs?limit=1000", up.url);
    let (status, body) = call("GET", &url, Some(token), None);
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut lines: Vec<(String, serde_json::Value)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| {
            let line = l["line"].as_str()?;
            let change = serde_json::from_str(&line[..=line.rfind('}')?]).ok()?;
            Some((l["time"].as_str()?.to_owned(), change))
        })
        .collect();
    lines.sort_by(|x, y| x.0.cmp(&y.0));
    lines
        .into_iter()
        .map(|(_, c)| {
            (
                c["key"].as_str().unwrap().to_owned(),
                c["op"].as_str().unwrap().to_owned(),
                c["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn changes_and_notifications_survive_a_node_killed_before_it_queued_them() {
    let mut p = pair();
    let token = p.a.admin_token();
    let watcher = repo("fixtures/log_then_nap.wat");
    p.a.cli_ok(&["deploy", "watcher", watcher.to_str().unwrap()]);
    p.a.cli_ok(&["trigger", "add", "watcher", "--table", "orders"]);
    eventually(Duration::from_secs(5), "B has the trigger", || {
        p.b.cli_json(&["trigger", "ls", "watcher"])
            .as_array()
            .is_some_and(|t| t.len() == 1)
    });
    let row = |up: &Up, key: &str| format!("{}/v1/kv/orders/{key}", up.url);
    let write = |up: &Up, method: &str, key: &str, body: Option<&str>| {
        let (status, answer) = call(method, &row(up, key), Some(&token), body);
        assert_eq!(status, 200, "{method} {key}: {answer}");
    };
    // Bucket notifications travel with objects the same way.
    p.a.cli_ok(&[
        "deploy",
        "dropwatch",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    let objects = |up: &Up| format!("{}/v1/buckets/drops", up.url);
    let (status, answer) = call("PUT", &objects(&p.a), Some(&token), None);
    assert!((200..300).contains(&status), "{answer}");
    p.a.cli_ok(&["trigger", "add", "dropwatch", "--bucket", "drops"]);
    let store = |up: &Up, method: &str, key: &str, body: Option<&str>| {
        let url = format!("{}/objects/{key}", objects(up));
        let (status, answer) = call(method, &url, Some(&token), body);
        assert!((200..300).contains(&status), "{method} {key}: {answer}");
    };
    let notified = |up: &Up| {
        up.cli_json(&["invocations", "dropwatch", "--limit", "100"])["items"]
            .as_array()
            .unwrap()
            .len()
    };
    eventually(Duration::from_secs(5), "B has the triggers", || {
        p.b.cli_json(&["trigger", "ls", "dropwatch"])
            .as_array()
            .is_some_and(|t| t.len() == 1)
    });
    write(&p.a, "PUT", "gone", Some("{}"));
    store(&p.a, "PUT", "old", Some("x"));
    eventually(Duration::from_secs(10), "the first changes ran", || {
        changes(&p.b, &token).len() == 1 && notified(&p.b) == 1
    });

    // Rows written, and one deleted, on A, whose events the queue refuses: the writes
    // are answered (the events are stored with the rows), then A is killed.
    refuse_events(&p.nats, true);
    write(&p.a, "PUT", "k", Some("{\"n\":1}"));
    write(&p.a, "PUT", "lone", Some("{}"));
    write(&p.a, "DELETE", "gone", None);
    store(&p.a, "PUT", "new", Some("y"));
    store(&p.a, "DELETE", "old", None);
    p.a.child.kill().unwrap(); // SIGKILL
    p.a.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        (changes(&p.b, &token).len(), notified(&p.b)),
        (1, 1),
        "nothing else could be queued"
    );

    // The queue takes events again; B writes k again at once. Its write queues A's
    // change to k before its own; the relay (B's, once A's lease has run out) queues
    // the other two.
    refuse_events(&p.nats, false);
    write(&p.b, "PUT", "k", Some("{\"n\":2}"));
    let started = Instant::now();
    while changes(&p.b, &token).len() != 5 {
        if started.elapsed() > Duration::from_secs(40) {
            let log: Vec<String> = p.b.stderr.try_iter().collect();
            panic!(
                "not every change ran: {:?}\n{}",
                changes(&p.b, &token),
                log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eventually(Duration::from_secs(10), "every notification ran", || {
        notified(&p.b) == 3
    });
    // Past the relay's delay: whoever queued an event again, it ran once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(notified(&p.b), 3, "each notification once");
    let ran = changes(&p.b, &token);
    assert_eq!(ran.len(), 5, "{ran:?}");
    let of = |key: &str| -> Vec<(String, u64)> {
        ran.iter()
            .filter(|c| c.0 == key)
            .map(|c| (c.1.clone(), c.2))
            .collect()
    };
    let change = |op: &str, version: u64| (op.to_owned(), version);
    assert_eq!(of("k"), [change("insert", 1), change("update", 2)]);
    assert_eq!(of("lone"), [change("insert", 1)]);
    assert_eq!(of("gone"), [change("insert", 1), change("delete", 1)]);
}

#[test]
fn a_nats_subject_trigger_turns_each_message_into_one_event_across_nodes() {
    let p = pair();
    let (nats, a, b) = (&p.nats, &p.a, &p.b);
    a.cli_ok(&[
        "deploy",
        "sensor",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    a.cli_ok(&[
        "trigger",
        "add",
        "sensor",
        "--nats",
        "sensors.*",
        "--broker",
        &nats.url(),
    ]);
    // Every node subscribes (each reports its own connection).
    for up in [&a, &b] {
        eventually(Duration::from_secs(10), "the node subscribes", || {
            up.cli_json(&["trigger", "ls", "sensor"])[0]["state"]["connected"] == true
        });
    }
    const MESSAGES: usize = 20;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        for i in 0..MESSAGES {
            client
                .publish("sensors.kitchen", format!("{i}").into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
    });
    let runs = || {
        b.cli_json(&["invocations", "sensor", "--limit", "1000"])["items"]
            .as_array()
            .unwrap()
            .len()
    };
    eventually(Duration::from_secs(10), "every message ran", || {
        runs() >= MESSAGES
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(runs(), MESSAGES, "one event per message, not one per node");
}

/// Bytes that are not all alike, so that a chunk out of place shows.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn aws_json(up: &Up, home: &std::path::Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&aws_ok(up, home, args)).unwrap()
}

/// Buckets and objects are the cluster's, with the aws CLI on both nodes: an object put
/// through A is read (whole and a range), listed, conditionally overwritten and deleted
/// through B; a multipart upload's parts go through both; bucket notifications of puts
/// through either node run the function on some node.
#[test]
fn objects_are_the_clusters_through_any_node() {
    let p = pair();
    let (a, b) = (&p.a, &p.b);
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    aws_ok(a, home, &["s3", "mb", "s3://photos"]);
    a.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    a.cli_ok(&[
        "trigger", "add", "echo", "--bucket", "photos", "--events", "created",
    ]);

    let bytes = pseudo_random(3 << 20, 7);
    let file = home.join("big.bin");
    std::fs::write(&file, &bytes).unwrap();
    aws_ok(
        a,
        home,
        &["s3", "cp", file.to_str().unwrap(), "s3://photos/big.bin"],
    );
    assert!(aws_ok(b, home, &["s3", "cp", "s3://photos/big.bin", "-"]) == bytes);
    let part = home.join("range.bin");
    aws_ok(
        b,
        home,
        &[
            "s3api",
            "get-object",
            "--bucket",
            "photos",
            "--key",
            "big.bin",
            "--range",
            "bytes=1000000-1000999",
            part.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&part).unwrap() == bytes[1_000_000..1_001_000]);
    let listed = String::from_utf8(aws_ok(b, home, &["s3", "ls", "s3://photos/"])).unwrap();
    assert!(listed.contains("3145728 big.bin"), "{listed}");

    // If-None-Match: * through B sees A's object; If-Match with its ETag replaces it.
    let small = home.join("small.txt");
    std::fs::write(&small, "small").unwrap();
    let refused = aws(
        b,
        home,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "photos",
            "--key",
            "big.bin",
            "--body",
            small.to_str().unwrap(),
            "--if-none-match",
            "*",
        ],
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("PreconditionFailed"),
        "{refused:?}"
    );
    let etag = aws_json(
        a,
        home,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "photos",
            "--key",
            "big.bin",
        ],
    )["ETag"]
        .as_str()
        .unwrap()
        .to_owned();
    aws_ok(
        b,
        home,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "photos",
            "--key",
            "big.bin",
            "--body",
            small.to_str().unwrap(),
            "--if-match",
            &etag,
        ],
    );
    assert_eq!(
        aws_ok(a, home, &["s3", "cp", "s3://photos/big.bin", "-"]),
        b"small"
    );

    // A multipart upload started on A, its parts put through B and A, completed on B.
    let id = aws_json(
        a,
        home,
        &[
            "s3api",
            "create-multipart-upload",
            "--bucket",
            "photos",
            "--key",
            "multi.bin",
        ],
    )["UploadId"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = home.join("part1");
    let first_bytes = pseudo_random(5 << 20, 11);
    std::fs::write(&first, &first_bytes).unwrap();
    let upload_part = |up: &Up, number: &str, path: &std::path::Path| {
        aws_json(
            up,
            home,
            &[
                "s3api",
                "upload-part",
                "--bucket",
                "photos",
                "--key",
                "multi.bin",
                "--upload-id",
                &id,
                "--part-number",
                number,
                "--body",
                path.to_str().unwrap(),
            ],
        )["ETag"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let e1 = upload_part(b, "1", &first);
    let e2 = upload_part(a, "2", &small);
    let listed = aws_json(
        a,
        home,
        &[
            "s3api",
            "list-parts",
            "--bucket",
            "photos",
            "--key",
            "multi.bin",
            "--upload-id",
            &id,
        ],
    );
    assert_eq!(listed["Parts"].as_array().unwrap().len(), 2, "{listed}");
    let parts = serde_json::json!({"Parts": [
        {"ETag": e1, "PartNumber": 1}, {"ETag": e2, "PartNumber": 2},
    ]})
    .to_string();
    aws_ok(
        b,
        home,
        &[
            "s3api",
            "complete-multipart-upload",
            "--bucket",
            "photos",
            "--key",
            "multi.bin",
            "--upload-id",
            &id,
            "--multipart-upload",
            &parts,
        ],
    );
    let mut whole = first_bytes.clone();
    whole.extend_from_slice(b"small");
    assert!(aws_ok(a, home, &["s3", "cp", "s3://photos/multi.bin", "-"]) == whole);

    // Deleted through B: gone on A, and the bucket can go once it is empty.
    aws_ok(b, home, &["s3", "rm", "s3://photos/big.bin"]);
    let head = aws(
        a,
        home,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "photos",
            "--key",
            "big.bin",
        ],
    );
    assert!(!head.status.success());
    let refused = aws(a, home, &["s3", "rb", "s3://photos"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("BucketNotEmpty"),
        "{refused:?}"
    );

    // Three puts (A's, B's replacement, the completed upload), each notified once.
    eventually(Duration::from_secs(20), "three notifications ran", || {
        runs_here(a, "echo") + runs_here(b, "echo") >= 3
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(runs_here(a, "echo") + runs_here(b, "echo"), 3);
    aws_ok(b, home, &["s3", "rm", "s3://photos/multi.bin"]);
    aws_ok(a, home, &["s3", "rb", "s3://photos"]);
    let gone = aws(b, home, &["s3", "ls", "s3://photos/"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NoSuchBucket"),
        "{gone:?}"
    );
}

/// Whether this node holds the trigger's connection now.
fn holds_trigger(up: &Up, function: &str) -> bool {
    up.cli_json(&["trigger", "ls", function])[0]["state"]["connected"] == true
}

/// A pair with `echo` triggered by `sensors/#` on `broker`, its session held by one
/// node (the other standing by, saying so), ten messages run once each. Whether A holds
/// it.
fn held_mqtt_trigger(broker: &common::mosquitto::Mosquitto) -> (Pair, bool) {
    let p = pair();
    p.a.cli_ok(&[
        "deploy",
        "echo",
        repo("fixtures/echo.wat").to_str().unwrap(),
    ]);
    p.a.cli_ok(&[
        "trigger",
        "add",
        "echo",
        "--mqtt",
        "sensors/#",
        "--broker",
        &broker.url(),
    ]);
    eventually(
        Duration::from_secs(30),
        "one node holds the session",
        || holds_trigger(&p.a, "echo") || holds_trigger(&p.b, "echo"),
    );
    // The other stands by, saying so.
    std::thread::sleep(Duration::from_secs(3));
    let a_holds = holds_trigger(&p.a, "echo");
    let standby = if a_holds { &p.b } else { &p.a };
    assert!(
        !holds_trigger(standby, "echo"),
        "both nodes hold the session"
    );
    let state = &standby.cli_json(&["trigger", "ls", "echo"])[0]["state"];
    assert!(
        state["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("standing by"),
        "{state}"
    );

    for i in 0..10 {
        broker.publish(&format!("sensors/{i}"), b"reading", &[]);
    }
    let total = || runs_here(&p.a, "echo") + runs_here(&p.b, "echo");
    eventually(Duration::from_secs(20), "ten events ran", || total() >= 10);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(total(), 10, "one event per message");
    (p, a_holds)
}

/// Publishes ten messages while the holder (A if `a_holds`) is stopped (by `stop`),
/// then waits for the standby to take the session over and run each once: how long
/// after `stop` began.
fn taken_over(
    broker: &common::mosquitto::Mosquitto,
    p: &mut Pair,
    a_holds: bool,
    stop: impl FnOnce(&mut std::process::Child),
) -> Duration {
    let (holder, standby) = if a_holds {
        (&mut p.a, &p.b)
    } else {
        (&mut p.b, &p.a)
    };
    let before = runs_here(standby, "echo");
    let stopping = Instant::now();
    stop(&mut holder.child);
    holder.child.wait().unwrap();
    // What is published meanwhile waits in the broker's session.
    for i in 0..10 {
        broker.publish(&format!("sensors/{i}"), b"later", &[]);
    }
    eventually(Duration::from_secs(30), "the other node takes over", || {
        runs_here(standby, "echo") >= before + 10
    });
    let took = stopping.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(runs_here(standby, "echo"), before + 10, "each message once");
    assert!(holds_trigger(standby, "echo"));
    took
}

/// An MQTT trigger's session is held by one node at a time (a broker keeps one session
/// per client id): each message becomes one event however many nodes run, and when the
/// holder is killed another node takes the session over, with the messages the broker
/// kept for it meanwhile.
#[test]
fn an_mqtt_trigger_is_held_by_one_node_and_taken_over() {
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = common::mosquitto::Mosquitto::start(broker_dir.path());
    let (mut p, a_holds) = held_mqtt_trigger(&broker);
    let took = taken_over(&broker, &mut p, a_holds, |child| child.kill().unwrap());
    eprintln!("took the MQTT session over from a killed node in {took:?}");
}

/// A holder stopping gracefully hands the session back: the other node takes it over
/// well before the lease would have expired (its 10 s term runs from the last renewal,
/// at most 2 s before the stop, so an expired lease is taken 8 s after it at the
/// soonest).
#[test]
fn a_graceful_stop_hands_the_mqtt_session_over_at_once() {
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = common::mosquitto::Mosquitto::start(broker_dir.path());
    let (mut p, a_holds) = held_mqtt_trigger(&broker);
    let took = taken_over(&broker, &mut p, a_holds, |child| {
        common::mosquitto::terminate(child)
    });
    eprintln!("took the MQTT session over from a stopped node in {took:?}");
    assert!(
        took < Duration::from_secs(6),
        "the session was not handed back: taken over {took:?} after the stop"
    );
}
