//! Event sources outside Cirrus, end to end: MQTT triggers against a real mosquitto
//! (started per test on a free port), added with the CLI, fed with `mosquitto_pub`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::mosquitto::Mosquitto;
use common::{repo, Up};
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits until `check` holds (polling), or fails with what it last saw.
fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let started = Instant::now();
    loop {
        let seen = probe();
        if check(&seen) {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: still {seen:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn trigger_state(up: &Up, function: &str) -> serde_json::Value {
    let triggers = up.cli_json(&["trigger", "ls", function]);
    triggers[0]["state"].clone()
}

fn scrape(up: &Up) -> String {
    let token = std::fs::read_to_string(up.data_dir.join("admin.token")).unwrap();
    up.curl(&[
        "-H",
        &format!("Authorization: Bearer {}", token.trim()),
        &format!("{}/metrics", up.url),
    ])
}

fn deploy(up: &Up, name: &str, fixture: &str) {
    up.cli_ok(&[
        "deploy",
        name,
        repo(&format!("fixtures/{fixture}")).to_str().unwrap(),
    ]);
}

#[test]
fn mqtt_messages_become_events_with_topic_as_subject() {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(broker_dir.path());
    let up = Up::start(dir.path(), &[]);
    // One function sees the payloads (stdin to its logs), one the CloudEvent headers
    // (its environment), over MQTT 3.1.1 and 5.
    deploy(&up, "payloads", "log_input.wat");
    deploy(&up, "headers", "env_log.wat");
    let added = up.cli_json(&[
        "trigger",
        "add",
        "payloads",
        "--mqtt",
        "sensors/+/temp",
        "--broker",
        &broker.url(),
    ]);
    assert_eq!(added[0]["mqtt"]["filter"], "sensors/+/temp");
    up.cli_ok(&[
        "trigger",
        "add",
        "headers",
        "--mqtt",
        "sensors/#",
        "--broker",
        &broker.url(),
        "--protocol",
        "5",
    ]);
    for function in ["payloads", "headers"] {
        eventually(
            "the subscription connects",
            || trigger_state(&up, function),
            |s| s["connected"] == true,
        );
    }
    // Subscribing is asynchronous to the broker too; a retained-free first message
    // could race the SUBACK, so wait for it.
    std::thread::sleep(Duration::from_millis(500));

    broker.publish("sensors/kitchen/temp", b"21.5", &[]);
    // Malformed for any JSON reader: delivered as the bytes they are.
    broker.publish("sensors/attic/temp", &[0xff, 0xfe, b'x'], &[]);
    broker.publish(
        "sensors/kitchen/humidity",
        br#"{"rh": 40}"#,
        &[
            "-V",
            "mqttv5",
            "-D",
            "publish",
            "content-type",
            "application/json",
        ],
    );

    let logs = eventually(
        "both temperatures reach `payloads`",
        || up.cli_ok(&["logs", "payloads"]),
        |l| l.contains("21.5") && l.contains("\u{fffd}\u{fffd}x"),
    );
    assert!(
        !logs.contains("rh"),
        "humidity is not under sensors/+/temp: {logs}"
    );
    let headers = eventually(
        "all three messages reach `headers`",
        || up.cli_ok(&["logs", "headers"]),
        |l| l.matches("HTTP_CE_SUBJECT=").count() == 3,
    );
    for subject in [
        "sensors/kitchen/temp",
        "sensors/attic/temp",
        "sensors/kitchen/humidity",
    ] {
        assert!(
            headers.contains(&format!("HTTP_CE_SUBJECT={subject}")),
            "{subject}: {headers}"
        );
    }
    assert!(
        headers.contains("HTTP_CE_TYPE=dev.cirrus.mqtt.message"),
        "{headers}"
    );
    assert!(
        headers.contains(&format!("HTTP_CE_SOURCE={}", broker.url())),
        "{headers}"
    );
    // MQTT 5 carries a content type; 3.1.1 payloads are bytes.
    assert!(
        headers.contains("CONTENT_TYPE=application/json"),
        "{headers}"
    );
    assert!(
        headers.contains("CONTENT_TYPE=application/octet-stream"),
        "{headers}"
    );

    let state = trigger_state(&up, "payloads");
    assert_eq!(state["messages"], 2, "{state}");
    assert_eq!(trigger_state(&up, "headers")["messages"], 3);
    let text = up.cli_ok(&["trigger", "ls"]);
    assert!(text.contains("connected, 2 messages"), "{text}");
    let records = up.cli_json(&["invocations", "headers"]);
    let items = records["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{records}");
    assert!(items.iter().all(|r| r["trigger"] == "mqtt"), "{records}");

    let metrics = scrape(&up);
    for (series, value) in [
        ("cirrus_trigger_messages_total", " 2"),
        ("cirrus_trigger_connected", " 1"),
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)
                && l.contains("function=\"payloads\"")
                && l.contains("kind=\"mqtt\"")
                && l.ends_with(value)),
            "{series} of payloads is not{value}:\n{metrics}"
        );
    }

    // Removing the trigger ends the subscription: later messages go nowhere.
    let id = up.cli_json(&["trigger", "ls", "payloads"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    up.cli_ok(&["trigger", "rm", &id]);
    std::thread::sleep(Duration::from_secs(1));
    broker.publish("sensors/kitchen/temp", b"99.9", &[]);
    eventually(
        "the last message reaches `headers`",
        || up.cli_ok(&["logs", "headers"]),
        |l| l.matches("HTTP_CE_SUBJECT=").count() == 4,
    );
    assert!(!up.cli_ok(&["logs", "payloads"]).contains("99.9"));
    // Topics are UTF-8: the subject arrives as it was published.
    broker.publish("sensors/küche/temp", b"19", &[]);
    eventually(
        "a non-ASCII topic arrives whole",
        || up.cli_ok(&["logs", "headers"]),
        |l| l.contains("HTTP_CE_SUBJECT=sensors/küche/temp"),
    );
    let metrics = scrape(&up);
    assert!(
        !metrics.contains(&id),
        "a removed trigger's series remain:\n{metrics}"
    );
}

#[test]
fn nothing_is_lost_while_cirrus_or_the_broker_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(broker_dir.path());
    let mut up = Up::start(dir.path(), &[]);
    deploy(&up, "payloads", "log_input.wat");
    deploy(&up, "echo", "echo.wat");
    up.cli_ok(&[
        "trigger",
        "add",
        "payloads",
        "--mqtt",
        "plant/+",
        "--broker",
        &broker.url(),
    ]);
    eventually(
        "the subscription connects",
        || trigger_state(&up, "payloads"),
        |s| s["connected"] == true,
    );
    std::thread::sleep(Duration::from_millis(500));

    // Cirrus dies; the broker keeps the persistent session's messages meanwhile.
    let _ = up.child.kill();
    let _ = up.child.wait();
    for i in 0..3 {
        broker.publish(
            &format!("plant/{i}"),
            format!("while-down-{i}").as_bytes(),
            &[],
        );
    }
    drop(up);
    up = Up::start(dir.path(), &[]);
    eventually(
        "messages published while Cirrus was down arrive after it restarts",
        || up.cli_ok(&["logs", "payloads"]),
        |l| (0..3).all(|i| l.contains(&format!("while-down-{i}"))),
    );

    // The broker goes away: the trigger says so, everything else keeps serving.
    let (broker_dir_path, port) = broker.stop();
    let state = eventually(
        "the outage shows in trigger ls",
        || trigger_state(&up, "payloads"),
        |s| s["connected"] == false && s["last_error"].is_string(),
    );
    assert!(
        state["last_error"].as_str().unwrap().contains("127.0.0.1"),
        "{state}"
    );
    assert_eq!(
        up.cli_ok(&["invoke", "echo", "--data", "still here"]),
        "still here"
    );

    // It comes back (same port, same saved sessions): the trigger reconnects by itself.
    let broker = Mosquitto::start_on(&broker_dir_path, port);
    eventually(
        "the trigger reconnects",
        || trigger_state(&up, "payloads"),
        |s| s["connected"] == true,
    );
    broker.publish("plant/9", b"after-outage", &[]);
    eventually(
        "a message after the outage arrives",
        || up.cli_ok(&["logs", "payloads"]),
        |l| l.contains("after-outage"),
    );

    // A message over the event limit (256 KiB) is reported, acknowledged and skipped; the
    // subscription goes on, and a healthy function keeps serving meanwhile.
    broker.publish("plant/huge", &vec![b'x'; 300 << 10], &[]);
    broker.publish("plant/10", b"after-the-huge-one", &[]);
    eventually(
        "the message after the oversized one arrives",
        || up.cli_ok(&["logs", "payloads"]),
        |l| l.contains("after-the-huge-one"),
    );
    let state = trigger_state(&up, "payloads");
    assert!(
        state["last_error"]
            .as_str()
            .unwrap()
            .contains("larger than the event limit"),
        "{state}"
    );
    assert_eq!(state["connected"], true, "{state}");
    assert_eq!(
        up.cli_ok(&["invoke", "echo", "--data", "healthy"]),
        "healthy"
    );
}

#[test]
fn bad_mqtt_triggers_are_refused_at_add_time() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]);
    deploy(&up, "payloads", "log_input.wat");
    let refused = |args: &[&str], why: &str| {
        let mut all = vec!["trigger", "add", "payloads"];
        all.extend_from_slice(args);
        let out = up.cli(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    };
    refused(
        &["--mqtt", "a/#/b", "--broker", "mqtt://127.0.0.1:1"],
        "`#` must be the whole last level",
    );
    refused(
        &["--mqtt", "a+/b", "--broker", "mqtt://127.0.0.1:1"],
        "`+` must be a whole level",
    );
    refused(
        &["--mqtt", "a", "--broker", "tcp://127.0.0.1:1"],
        "use mqtt://HOST[:PORT]",
    );
    refused(
        &["--mqtt", "a", "--broker", "mqtt://user:secret@127.0.0.1:1"],
        "credentials do not belong in the address",
    );
    refused(
        &["--mqtt", "a", "--broker", "mqtt://127.0.0.1:70000"],
        "port",
    );
    refused(
        &["--mqtt", "a", "--broker", "mqtt://h", "--protocol", "4.5"],
        "unknown MQTT protocol",
    );
    // Fields the API does not know are refused, not ignored (a stored password would be
    // shown to anyone who lists triggers).
    let body = r#"{"mqtt":{"filter":"a","broker":"mqtt://127.0.0.1:1","password":"x"}}"#;
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let out = up.curl(&[
        "-w",
        "%{http_code}",
        "-H",
        &format!("Authorization: Bearer {}", token.trim()),
        "-H",
        "Content-Type: application/json",
        "--data",
        body,
        &format!("{}/v1/functions/payloads/triggers", up.url),
    ]);
    assert!(out.ends_with("400") && out.contains("password"), "{out}");
    assert_eq!(
        up.cli_json(&["trigger", "ls", "payloads"]),
        serde_json::json!([])
    );

    // A broker that is not there: the trigger is kept and says why it has no connection.
    up.cli_ok(&[
        "trigger",
        "add",
        "payloads",
        "--mqtt",
        "a",
        "--broker",
        "mqtt://127.0.0.1:1",
    ]);
    let state = eventually(
        "the failed connection shows",
        || trigger_state(&up, "payloads"),
        |s| s["last_error"].is_string(),
    );
    assert_eq!(state["connected"], false);
}

/// The IoT example (`examples/iot`) as a user runs it: its manifest deployed, devices
/// publishing with `mosquitto_pub`, the aggregates in a KV table, the hourly rollup.
#[test]
fn iot_example_aggregates_readings_and_rolls_them_up() {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(broker_dir.path());
    let up = Up::start(dir.path(), &[]);
    // The example's manifest, pointed at this test's broker.
    let example = repo("examples/iot");
    let manifest = std::fs::read_to_string(example.join("cirrus.toml"))
        .unwrap()
        .replace("mqtt://127.0.0.1:1883", &broker.url())
        .replace("source = \"", &format!("source = \"{}/", example.display()));
    let path = dir.path().join("iot.toml");
    std::fs::write(&path, manifest).unwrap();
    up.cli_ok(&["deploy", "-f", path.to_str().unwrap()]);
    eventually(
        "the readings subscription connects",
        || trigger_state(&up, "readings"),
        |s| s["connected"] == true,
    );
    std::thread::sleep(Duration::from_millis(500));

    broker.publish("sensors/kitchen/temp", b"21.0", &[]);
    broker.publish("sensors/kitchen/temp", br#"{"celsius": 23.0}"#, &[]);
    broker.publish("sensors/attic/temp", b"10.5", &[]);
    // Invalid: not a number, out of range, not a device name.
    broker.publish("sensors/kitchen/temp", b"hot", &[]);
    broker.publish("sensors/garage/temp", b"500", &[]);
    broker.publish("sensors/bad device/temp", b"20", &[]);

    let rows = |device: &str| -> Vec<serde_json::Value> {
        let listed = up.cli_json(&["kv", "ls", "readings"]);
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap().to_owned())
            .filter(|k| k.ends_with(&format!("/{device}")))
            .map(|k| up.cli_json(&["kv", "get", "readings", &k]))
            .collect()
    };
    let total = |rows: &[serde_json::Value], field: &str| -> f64 {
        rows.iter().map(|r| r[field].as_f64().unwrap()).sum()
    };
    let kitchen = eventually(
        "both kitchen readings are aggregated",
        || rows("kitchen"),
        |r| total(r, "count") == 2.0,
    );
    assert_eq!(total(&kitchen, "sum"), 44.0, "{kitchen:?}");
    if kitchen.len() == 1 {
        assert_eq!(kitchen[0]["min"], 21.0);
        assert_eq!(kitchen[0]["max"], 23.0);
    }
    let attic = eventually(
        "the attic reading is aggregated",
        || rows("attic"),
        |r| r.len() == 1,
    );
    assert!(rows("garage").is_empty());

    // The three invalid readings were answered 400 with their reason, not retried.
    let records = eventually(
        "six readings were handled",
        || up.cli_json(&["invocations", "readings"]),
        |r| r["items"].as_array().unwrap().len() == 6,
    );
    let rejected = records["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 400)
        .count();
    assert_eq!(rejected, 3, "{records}");
    let logs = up.cli_ok(&["logs", "readings"]);
    for why in [
        "is not JSON",
        "outside -50..150",
        "is not sensors/DEVICE/temp",
    ] {
        assert!(logs.contains(why), "{why}: {logs}");
    }

    // The hourly rollup: the schedule is there; its event for the next tick rolls up
    // the attic's hour.
    let schedules = up.cli_json(&["trigger", "ls", "rollup"]);
    assert_eq!(schedules[0]["schedule"], "0 * * * *", "{schedules}");
    let hour = attic[0]["hour"].as_str().unwrap().to_owned();
    let tick =
        humantime::parse_rfc3339(&format!("{hour}:00:00Z")).unwrap() + Duration::from_secs(3600);
    let event = serde_json::json!({
        "trigger": schedules[0]["id"],
        "schedule": "0 * * * *",
        "scheduled_time": humantime::format_rfc3339(tick).to_string(),
    });
    up.cli_ok(&["invoke", "rollup", "--data", &event.to_string()]);
    let rollup = up.cli_json(&["kv", "get", "rollups", &hour]);
    assert_eq!(rollup["hour"], hour.as_str());
    assert_eq!(rollup["devices"]["attic"]["count"], 1, "{rollup}");
    assert_eq!(rollup["devices"]["attic"]["avg"], 10.5, "{rollup}");
    assert!(rollup["devices"].get("garage").is_none(), "{rollup}");
}

/// A nats-server with JetStream on a free port (stopped when dropped), and a client.
struct Nats {
    server: cirrus_server::testing::NatsServer,
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
}

impl Nats {
    fn start() -> Nats {
        let server = cirrus_server::testing::NatsServer::start();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime
            .block_on(async_nats::connect(server.url()))
            .expect("the test connects to nats-server");
        Nats {
            server,
            runtime,
            client,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Publishes on a core subject (a stream holding it keeps it too), and waits until
    /// the server has it.
    fn publish(&self, subject: &str, payload: &'static [u8]) {
        self.runtime.block_on(async {
            self.client
                .publish(subject.to_owned(), payload.into())
                .await
                .unwrap();
            self.client.flush().await.unwrap();
        });
    }

    /// Publishes into JetStream and waits for the stream's acknowledgement.
    fn publish_durably(&self, subject: &str, payload: &'static [u8]) {
        self.runtime.block_on(async {
            let js = async_nats::jetstream::new(self.client.clone());
            js.publish(subject.to_owned(), payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
    }

    fn create_stream(&self, name: &str, subjects: &[&str]) {
        self.runtime.block_on(async {
            let js = async_nats::jetstream::new(self.client.clone());
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.to_owned(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
        });
    }
}

#[test]
fn nats_subjects_and_jetstream_consumers_become_events() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start();
    nats.create_stream("ORDERS", &["orders.>"]);
    let mut up = Up::start(dir.path(), &[]);
    deploy(&up, "core", "env_log.wat");
    deploy(&up, "durable", "log_input.wat");
    up.cli_ok(&[
        "trigger",
        "add",
        "core",
        "--nats",
        "sensors.*",
        "--broker",
        &nats.url(),
    ]);
    up.cli_ok(&[
        "trigger",
        "add",
        "durable",
        "--nats",
        "orders.>",
        "--broker",
        &nats.url(),
        "--stream",
        "ORDERS",
    ]);
    for function in ["core", "durable"] {
        eventually(
            "the subscription connects",
            || trigger_state(&up, function),
            |s| s["connected"] == true,
        );
    }
    std::thread::sleep(Duration::from_millis(300));

    nats.publish("sensors.kitchen", b"21.5");
    nats.publish("sensors.kitchen.extra", b"not matched: * is one token");
    nats.publish_durably("orders.created", b"order-1");
    let headers = eventually(
        "the core message arrives",
        || up.cli_ok(&["logs", "core"]),
        |l| l.contains("HTTP_CE_SUBJECT=sensors.kitchen"),
    );
    assert!(
        headers.contains("HTTP_CE_TYPE=dev.cirrus.nats.message"),
        "{headers}"
    );
    assert!(!headers.contains("sensors.kitchen.extra"), "{headers}");
    eventually(
        "the stream's message arrives",
        || up.cli_ok(&["logs", "durable"]),
        |l| l.contains("order-1"),
    );

    // Cirrus dies: the durable consumer keeps what the stream receives meanwhile.
    let _ = up.child.kill();
    let _ = up.child.wait();
    nats.publish_durably("orders.created", b"order-2-while-down");
    nats.publish_durably("orders.shipped", b"order-3-while-down");
    drop(up);
    up = Up::start(dir.path(), &[]);
    eventually(
        "messages stored while Cirrus was down arrive after it restarts",
        || up.cli_ok(&["logs", "durable"]),
        |l| l.contains("order-2-while-down") && l.contains("order-3-while-down"),
    );
    let records = up.cli_json(&["invocations", "durable"]);
    let items = records["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "each message once: {records}");
    assert!(items.iter().all(|r| r["trigger"] == "nats"), "{records}");
    assert_eq!(trigger_state(&up, "durable")["messages"], 2);

    // Batches: three messages, one invocation with three records.
    nats.create_stream("READINGS", &["readings.>"]);
    deploy(&up, "batched", "log_input.wat");
    up.cli_ok(&[
        "trigger",
        "add",
        "batched",
        "--nats",
        "readings.>",
        "--broker",
        &nats.url(),
        "--stream",
        "READINGS",
        "--batch-size",
        "3",
        "--batch-window",
        "5s",
    ]);
    eventually(
        "the batching consumer connects",
        || trigger_state(&up, "batched"),
        |s| s["connected"] == true,
    );
    std::thread::sleep(Duration::from_millis(500));
    for reading in [&b"r-1"[..], b"r-2", b"r-3"] {
        nats.publish_durably("readings.kitchen", reading);
    }
    let logs = eventually(
        "one batch arrives",
        || up.cli_ok(&["logs", "batched"]),
        |l| l.contains("r-3"),
    );
    assert!(logs.contains(r#""Records""#), "{logs}");
    assert!(
        ["r-1", "r-2", "r-3"].iter().all(|r| logs.contains(r)),
        "{logs}"
    );
    let batches = up.cli_json(&["invocations", "batched"]);
    assert_eq!(batches["items"].as_array().unwrap().len(), 1, "{batches}");

    // A stream that does not exist: the trigger is kept and says so.
    deploy(&up, "lost", "log_input.wat");
    up.cli_ok(&[
        "trigger",
        "add",
        "lost",
        "--nats",
        "nowhere.>",
        "--broker",
        &nats.url(),
        "--stream",
        "MISSING",
    ]);
    let state = eventually(
        "the missing stream shows",
        || trigger_state(&up, "lost"),
        |s| s["last_error"].is_string(),
    );
    assert!(
        state["last_error"].as_str().unwrap().contains("MISSING"),
        "{state}"
    );
    assert_eq!(state["connected"], false);

    // Bad subjects and names are refused when added.
    for (args, why) in [
        (
            vec!["--nats", "a..b", "--broker", "nats://127.0.0.1:1"],
            "a token is empty",
        ),
        (
            vec!["--nats", "a.>.b", "--broker", "nats://127.0.0.1:1"],
            "`>` must be the whole last token",
        ),
        (
            vec!["--nats", "a", "--broker", "http://127.0.0.1:1"],
            "use nats://HOST[:PORT]",
        ),
        (
            vec![
                "--nats",
                "a",
                "--broker",
                "nats://127.0.0.1:1",
                "--stream",
                "A.B",
            ],
            "invalid stream",
        ),
    ] {
        let mut all = vec!["trigger", "add", "lost"];
        all.extend(args.iter().copied());
        let out = up.cli(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}

/// The machine's PostgreSQL (127.0.0.1:5432, database `test`), started if it is down.
fn postgres_up() {
    if std::net::TcpStream::connect("127.0.0.1:5432").is_ok() {
        return;
    }
    let versions = std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL is installed (Debian's postgresql)")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    for version in versions {
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "start"])
            .status();
    }
    let started = Instant::now();
    while std::net::TcpStream::connect("127.0.0.1:5432").is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "PostgreSQL did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs SQL with psql, the real client.
fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        ])
        .output()
        .expect("psql runs (Debian's postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn postgres_changes_become_events_in_commit_order_per_key() {
    postgres_up();
    let dir = tempfile::tempdir().unwrap();
    let suffix = format!(
        "{}_{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() % 1000
    );
    let table = format!("orders_{suffix}");
    let keyless = format!("notes_{suffix}");
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, status text); CREATE TABLE {keyless} (body text);"
    ));
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let mut up = Up::start(dir.path(), &[]);
    deploy(&up, "changes", "log_input.wat");
    up.cli_ok(&[
        "trigger",
        "add",
        "changes",
        "--postgres",
        url,
        "--table",
        &table,
    ]);
    eventually(
        "the capture is installed",
        || trigger_state(&up, "changes"),
        |s| s["connected"] == true,
    );

    psql(&format!("INSERT INTO {table} VALUES (1, 'new')"));
    psql(&format!("UPDATE {table} SET status = 'paid' WHERE id = 1"));
    psql(&format!(
        "BEGIN; INSERT INTO {table} VALUES (2, 'new'), (3, 'new'); DELETE FROM {table} WHERE id = 1; COMMIT;"
    ));
    // Rolled back: never delivered.
    psql(&format!(
        "BEGIN; INSERT INTO {table} VALUES (9, 'ghost'); ROLLBACK;"
    ));
    let logs = eventually(
        "five changes arrive",
        || up.cli_ok(&["logs", "changes"]),
        |l| l.matches("\"op\":").count() == 5,
    );
    assert!(!logs.contains("ghost"), "{logs}");
    let at = |needle: &str| {
        logs.find(needle)
            .unwrap_or_else(|| panic!("{needle} not in {logs}"))
    };
    let insert = at(r#""new":{"id":1,"status":"new"},"old":null,"op":"insert""#);
    let update =
        at(r#""new":{"id":1,"status":"paid"},"old":{"id":1,"status":"new"},"op":"update""#);
    let delete = at(r#""new":null,"old":{"id":1,"status":"paid"},"op":"delete""#);
    assert!(
        insert < update && update < delete,
        "one key's changes in commit order: {logs}"
    );
    assert!(logs.contains(&format!(r#""table":"{table}""#)), "{logs}");

    // Cirrus dies; changes committed meanwhile wait in the outbox.
    let _ = up.child.kill();
    let _ = up.child.wait();
    psql(&format!(
        "UPDATE {table} SET status = 'shipped-while-down' WHERE id = 2"
    ));
    drop(up);
    up = Up::start(dir.path(), &[]);
    eventually(
        "the change made while Cirrus was down arrives",
        || up.cli_ok(&["logs", "changes"]),
        |l| l.contains("shipped-while-down"),
    );
    let records = up.cli_json(&["invocations", "changes"]);
    let items = records["items"].as_array().unwrap();
    assert_eq!(items.len(), 6, "each change once: {records}");
    assert!(
        items.iter().all(|r| r["trigger"] == "postgres"),
        "{records}"
    );
    assert_eq!(psql("SELECT count(*) FROM cirrus.changes WHERE op = 'update' AND new->>'status' = 'shipped-while-down'").trim(), "0");

    // Removing the trigger removes the capture from the table.
    let id = up.cli_json(&["trigger", "ls", "changes"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let installed = format!(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = '{table}'::regclass AND tgname LIKE 'cirrus_%'"
    );
    assert_eq!(psql(&installed).trim(), "1");
    up.cli_ok(&["trigger", "rm", &id]);
    let started = Instant::now();
    while psql(&installed).trim() != "0" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the capture stayed on {table}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A table that does not exist, one without a primary key: the trigger says why.
    deploy(&up, "missing", "log_input.wat");
    deploy(&up, "keyless", "log_input.wat");
    up.cli_ok(&[
        "trigger",
        "add",
        "missing",
        "--postgres",
        url,
        "--table",
        "no_such_table_anywhere",
    ]);
    up.cli_ok(&[
        "trigger",
        "add",
        "keyless",
        "--postgres",
        url,
        "--table",
        &keyless,
    ]);
    for (function, why) in [
        ("missing", "does not exist"),
        ("keyless", "has no primary key"),
    ] {
        let state = eventually(
            "the error shows",
            || trigger_state(&up, function),
            |s| s["last_error"].is_string(),
        );
        assert!(
            state["last_error"].as_str().unwrap().contains(why),
            "{state}"
        );
        assert_eq!(state["connected"], false);
    }
    // A password in the URL or a table name that is not one: refused when added.
    for (args, why) in [
        (
            vec![
                "--postgres",
                "postgres://u:secret@127.0.0.1/test",
                "--table",
                "t",
            ],
            "password_env",
        ),
        (
            vec!["--postgres", url, "--table", "t; DROP TABLE x"],
            "invalid table",
        ),
        (
            vec!["--postgres", "mysql://127.0.0.1/test", "--table", "t"],
            "use postgres://",
        ),
    ] {
        let mut all = vec!["trigger", "add", "missing"];
        all.extend(args.iter().copied());
        let out = up.cli(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    drop(up);
    psql(&format!("DROP TABLE {table}; DROP TABLE {keyless};"));
}

/// A Python handler (native runtime) that reports every record whose row has status
/// "bad" as failed, and logs the ids of each batch it gets.
const BATCH_HANDLER: &str = r#"
import json

def handler(event, context):
    ids = [r["id"] for r in event["Records"]]
    print("batch " + json.dumps(ids), flush=True)
    bad = [r["id"] for r in event["Records"] if (r["data"].get("new") or {}).get("status") == "bad"]
    return {"batchItemFailures": [{"itemIdentifier": i} for i in bad]}
"#;

#[test]
fn batches_retry_only_the_records_the_function_reports_failed() {
    postgres_up();
    let dir = tempfile::tempdir().unwrap();
    let table = format!("batched_{}", std::process::id());
    psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, status text)"
    ));
    let up = Up::start(dir.path(), &[]);
    let zip = common::package(dir.path(), "app.py", BATCH_HANDLER.as_bytes());
    up.cli_ok(&[
        "deploy",
        "batches",
        zip.to_str().unwrap(),
        "--runtime",
        "python3.11",
        "--handler",
        "app.handler",
        "--max-attempts",
        "2",
        "--retry-delay",
        "1s",
    ]);
    up.cli_ok(&[
        "trigger",
        "add",
        "batches",
        "--postgres",
        "postgres://postgres@127.0.0.1:5432/test",
        "--table",
        &table,
        "--batch-size",
        "3",
        "--batch-window",
        "30s",
    ]);
    eventually(
        "the capture is installed",
        || trigger_state(&up, "batches"),
        |s| s["connected"] == true,
    );
    // Three changes fill a batch at once (no waiting out the window).
    psql(&format!(
        "INSERT INTO {table} VALUES (1, 'good'), (2, 'bad'), (3, 'good')"
    ));
    let dead = eventually(
        "the bad record ends in the dead-letter queue",
        || up.cli_json(&["dlq", "ls"]),
        |d| d.as_array().is_some_and(|d| d.len() == 1),
    );
    let logs = up.cli_ok(&["logs", "batches"]);
    let batches: Vec<&str> = logs
        .lines()
        .filter_map(|l| l.split("batch ").nth(1))
        .collect();
    assert_eq!(
        batches.len(),
        2,
        "one batch, then its failed record again: {logs}"
    );
    let first: Vec<String> = serde_json::from_str(batches[0]).unwrap();
    let second: Vec<String> = serde_json::from_str(batches[1]).unwrap();
    assert_eq!(first.len(), 3, "{logs}");
    assert_eq!(second.len(), 1, "{logs}");
    assert_eq!(
        second[0], first[1],
        "the retry carries only the bad record: {logs}"
    );
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("1 failed records"),
        "{dead}"
    );
    let shown = up.cli_json(&["dlq", "show", dead[0]["request_id"].as_str().unwrap()]);
    let data = shown["data"].as_str().unwrap_or_default().to_owned();
    assert!(
        data.contains("\"bad\"") && !data.contains("\"good\""),
        "{shown}"
    );
    drop(up);
    psql(&format!("DROP TABLE {table}"));
}
