//! The S3-compatible object API, driven by the real clients people use: the `aws` CLI
//! and boto3 (installed from PyPI by scripts/test), path-style.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::python_has_boto3;

use cirrus_server::{ManualClock, Server, ServerConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

struct Running {
    url: String,
    s3: String,
    token: String,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

async fn start(data_dir: &Path, tune: impl FnOnce(&mut ServerConfig)) -> Running {
    let mut config = ServerConfig::new(data_dir);
    config.sweep_interval = Duration::from_secs(3600);
    tune(&mut config);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let server = Server::start(config, clock).await.expect("server starts");
    let token = server.admin_token().to_owned();
    let s3 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s3_url = format!("http://{}", s3.local_addr().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.with_s3_listener(s3).serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        url,
        s3: s3_url,
        token,
        data_dir: data_dir.to_owned(),
        stop: Some(stop),
        task: Some(task),
    }
}

/// Runs one of the Python suites in tests/s3 against the server.
async fn python_suite(server: &Running, script: &str, data: &Path) {
    let credentials = data.join("s3-credentials");
    common::python_suite("s3", script, &[server.s3.as_ref(), credentials.as_os_str()]).await;
}

/// The aws CLI against the server: its own config (path-style), the server's keys file.
fn aws(server: &Running, home: &Path, args: &[&str]) -> Output {
    let config = home.join("aws-config");
    if !config.exists() {
        std::fs::write(
            &config,
            "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n",
        )
        .unwrap();
    }
    Command::new("aws")
        .args(["--endpoint-url", &server.s3])
        .args(args)
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            server.data_dir.join("s3-credentials"),
        )
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("the aws CLI runs")
}

fn aws_ok(server: &Running, home: &Path, args: &[&str]) -> String {
    let out = aws(server, home, args);
    assert!(
        out.status.success(),
        "aws {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every operation in botocore's S3 model that Cirrus does not implement is refused with
/// no side effect, and the S3 behaviours SDKs rely on hold (tests/s3/conformance.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conformance_and_no_side_effects() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, |c| c.s3.min_part_bytes = 1024).await;
    python_suite(&server, "conformance.py", &data).await;
    server.stop().await;
}

/// Metadata sent as raw UTF-8 (curl signs the bytes it sends) is kept and answered
/// RFC 2047-encoded, never dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_metadata_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, |_| {}).await;
    let keys = std::fs::read_to_string(data.join("s3-credentials")).unwrap();
    let key_of = |name: &str| {
        keys.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches([' ', '=']).trim().to_owned())
            .unwrap()
    };
    let user = format!(
        "{}:{}",
        key_of("aws_access_key_id"),
        key_of("aws_secret_access_key")
    );
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
                &user,
            ])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    curl(&["-X", "PUT", &format!("{}/meta", server.s3)]);
    let body = dir.path().join("body");
    std::fs::write(&body, b"m").unwrap();
    let put = curl(&[
        "-T",
        body.to_str().unwrap(),
        "-H",
        "x-amz-meta-city: Zürich",
        "-w",
        "%{http_code}",
        &format!("{}/meta/o", server.s3),
    ]);
    assert_eq!(put, "200", "{put}");
    let head = curl(&["-I", &format!("{}/meta/o", server.s3)]);
    assert!(
        head.contains("x-amz-meta-city: =?UTF-8?B?WsO8cmljaA==?="),
        "{head}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_copies_lists_and_removes() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), |_| {}).await;
    let home = dir.path();
    let small = home.join("small file.txt");
    std::fs::write(&small, b"small and plain\n").unwrap();
    // 20 MiB: the CLI uploads it in 8 MiB parts, several at once, and downloads it with
    // concurrent ranged GETs.
    let big = home.join("big.bin");
    let big_bytes = pseudo_random(20 << 20, 7);
    std::fs::write(&big, &big_bytes).unwrap();

    let s = &server;
    aws_ok(s, home, &["s3", "mb", "s3://photos"]);
    aws_ok(
        s,
        home,
        &[
            "s3",
            "cp",
            small.to_str().unwrap(),
            "s3://photos/docs/small file.txt",
        ],
    );
    aws_ok(
        s,
        home,
        &["s3", "cp", big.to_str().unwrap(), "s3://photos/big.bin"],
    );
    let top = aws_ok(s, home, &["s3", "ls", "s3://photos/"]);
    assert!(top.contains("PRE docs/"), "{top}");
    assert!(top.contains(&format!("{} big.bin", 20 << 20)), "{top}");
    let all = aws_ok(s, home, &["s3", "ls", "--recursive", "s3://photos"]);
    assert!(
        all.contains("docs/small file.txt") && all.contains("big.bin"),
        "{all}"
    );
    let buckets = aws_ok(s, home, &["s3", "ls"]);
    assert!(buckets.contains("photos"), "{buckets}");

    let head = aws_ok(
        s,
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
    let head: serde_json::Value = serde_json::from_str(&head).unwrap();
    assert_eq!(head["ContentLength"], 20 << 20);
    assert!(head["ETag"].as_str().unwrap().ends_with("-3\""), "{head}");

    let down = home.join("down.bin");
    aws_ok(
        s,
        home,
        &["s3", "cp", "s3://photos/big.bin", down.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&down).unwrap() == big_bytes,
        "the download differs"
    );
    let down_small = home.join("down.txt");
    aws_ok(
        s,
        home,
        &[
            "s3",
            "cp",
            "s3://photos/docs/small file.txt",
            down_small.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&down_small).unwrap(), b"small and plain\n");

    // A server-side copy of a large object: the CLI uses UploadPartCopy with ranges.
    aws_ok(
        s,
        home,
        &[
            "s3",
            "cp",
            "s3://photos/big.bin",
            "s3://photos/copies/big.bin",
        ],
    );
    let copied = home.join("copied.bin");
    aws_ok(
        s,
        home,
        &[
            "s3",
            "cp",
            "s3://photos/copies/big.bin",
            copied.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&copied).unwrap() == big_bytes,
        "the server-side copy differs"
    );

    let refused = aws(s, home, &["s3", "rb", "s3://photos"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("BucketNotEmpty"));
    aws_ok(s, home, &["s3", "rm", "s3://photos/big.bin"]);
    aws_ok(s, home, &["s3", "rm", "--recursive", "s3://photos/docs/"]);
    aws_ok(s, home, &["s3", "rm", "--recursive", "s3://photos/copies/"]);
    assert_eq!(
        aws_ok(s, home, &["s3", "ls", "--recursive", "s3://photos"]).trim(),
        ""
    );
    aws_ok(s, home, &["s3", "rb", "s3://photos"]);

    // A wrong key is told apart from a wrong signature.
    std::fs::write(
        home.join("bad-credentials"),
        "[default]\naws_access_key_id = NOPE\naws_secret_access_key = x\n",
    )
    .unwrap();
    let out = Command::new("aws")
        .args(["--endpoint-url", &s.s3, "s3", "ls"])
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("bad-credentials"))
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidAccessKeyId"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_operations_errors_and_durability() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, |_| {}).await;
    python_suite(&server, "boto3_suite.py", &data).await;
    // Nothing the keys named became a path: the data dir holds blobs named by the
    // server, and interrupted uploads left nothing behind.
    let mut names = Vec::new();
    for entry in walk(&data) {
        names.push(
            entry
                .strip_prefix(&data)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    assert!(
        names
            .iter()
            .all(|n| !n.contains("escape") && !n.contains("passwd") && !n.contains("space")),
        "{names:?}"
    );
    assert!(!dir.path().join("escape.txt").exists());
    server.stop().await;

    // Objects survive a restart; blobs nothing refers to are swept.
    std::fs::write(data.join("objects/blobs/orphan"), b"left by a crash").unwrap();
    let again = start(&data, |_| {}).await;
    assert!(!data.join("objects/blobs/orphan").exists());
    let home = dir.path();
    let got = home.join("a.txt");
    aws_ok(
        &again,
        home,
        &["s3", "cp", "s3://box/a.txt", got.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&got).unwrap(), b"hello world");
    again.stop().await;
}

/// Cluster mode keeps buckets and objects in JetStream: the same suites hold there,
/// run against one node, and what they stored is read through a second node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suites_hold_with_objects_in_jetstream() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    // Each suite on a cluster of its own, as each has a server of its own above.
    let nats = cirrus_server::testing::NatsServer::start();
    let first = cirrus_server::testing::NatsServer::start();
    let in_cluster = |nats: &cirrus_server::testing::NatsServer| {
        let url = nats.url();
        move |c: &mut ServerConfig| {
            c.s3.min_part_bytes = 1024;
            c.cluster = Some(cirrus_server::store::jetstream::ClusterOptions::new(&url));
        }
    };
    let data = dir.path().join("c");
    let server = start(&data, in_cluster(&first)).await;
    python_suite(&server, "conformance.py", &data).await;
    server.stop().await;

    let a_data = dir.path().join("a");
    let a = start(&a_data, in_cluster(&nats)).await;
    python_suite(&a, "boto3_suite.py", &a_data).await;
    let b_data = dir.path().join("b");
    let b = start(&b_data, in_cluster(&nats)).await;
    let home = dir.path();
    let got = home.join("a.txt");
    aws_ok(
        &b,
        home,
        &["s3", "cp", "s3://box/a.txt", got.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&got).unwrap(), b"hello world");
    // A's copies of the bytes are a cache: without them A reads them from JetStream.
    a.stop().await;
    let a = start(&a_data, in_cluster(&nats)).await;
    std::fs::remove_file(&got).unwrap();
    aws_ok(
        &a,
        home,
        &["s3", "cp", "s3://box/a.txt", got.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&got).unwrap(), b"hello world");
    a.stop().await;
    b.stop().await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uploads_are_refused_and_nothing_changes() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), |c| {
        c.s3.max_object_bytes = 2 << 20;
        c.s3.max_part_bytes = 1 << 20;
    })
    .await;
    let home = dir.path();
    let s = &server;
    aws_ok(s, home, &["s3", "mb", "s3://limits"]);
    let fits = home.join("fits.bin");
    std::fs::write(&fits, pseudo_random(1 << 20, 3)).unwrap();
    aws_ok(
        s,
        home,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "limits",
            "--key",
            "k",
            "--body",
            fits.to_str().unwrap(),
        ],
    );
    let big = home.join("big.bin");
    std::fs::write(&big, pseudo_random(3 << 20, 5)).unwrap();
    let out = aws(
        s,
        home,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "limits",
            "--key",
            "k",
            "--body",
            big.to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("EntityTooLarge"),
        "{out:?}"
    );
    let upload = aws_ok(
        s,
        home,
        &[
            "s3api",
            "create-multipart-upload",
            "--bucket",
            "limits",
            "--key",
            "m",
        ],
    );
    let upload: serde_json::Value = serde_json::from_str(&upload).unwrap();
    let id = upload["UploadId"].as_str().unwrap();
    let part = home.join("part.bin");
    std::fs::write(&part, pseudo_random((1 << 20) + 1, 9)).unwrap();
    let out = aws(
        s,
        home,
        &[
            "s3api",
            "upload-part",
            "--bucket",
            "limits",
            "--key",
            "m",
            "--upload-id",
            id,
            "--part-number",
            "1",
            "--body",
            part.to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("EntityTooLarge"),
        "{out:?}"
    );
    let parts = aws_ok(
        s,
        home,
        &[
            "s3api",
            "list-parts",
            "--bucket",
            "limits",
            "--key",
            "m",
            "--upload-id",
            id,
        ],
    );
    assert!(!parts.contains("PartNumber"), "{parts}");
    // The object stored before is unchanged.
    let got = home.join("got.bin");
    aws_ok(
        s,
        home,
        &["s3", "cp", "s3://limits/k", got.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&fits).unwrap());
    // The management API is untouched by all this.
    let health = reqwest::Client::new()
        .get(format!("{}/v1/health", server.url))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    server.stop().await;
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

impl Running {
    async fn deploy(
        &self,
        name: &str,
        artifact: &str,
        config: serde_json::Value,
        triggers: &[serde_json::Value],
    ) {
        let form = reqwest::multipart::Form::new()
            .text("config", config.to_string())
            .part(
                "artifact",
                reqwest::multipart::Part::bytes(std::fs::read(repo(artifact)).unwrap())
                    .file_name("f.wasm"),
            );
        let http = reqwest::Client::new();
        let response = http
            .put(format!("{}/v1/functions/{name}", self.url))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
        for trigger in triggers {
            let response = http
                .post(format!("{}/v1/functions/{name}/triggers", self.url))
                .bearer_auth(&self.token)
                .json(trigger)
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "{}",
                response.text().await.unwrap()
            );
        }
    }

    async fn get(&self, path: &str, bearer: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap()
    }
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_notifications_reach_functions_as_s3_events() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), |_| {}).await;
    let (s, home) = (&server, dir.path());
    aws_ok(s, home, &["s3", "mb", "s3://inbox"]);
    aws_ok(s, home, &["s3", "mb", "s3://outbox"]);
    // A command module without HTTP takes part through its destination: the event it
    // echoes becomes an object named after the object that fired it.
    s.deploy(
        "copier",
        "fixtures/echo.wat",
        serde_json::json!({ "on_success": ["bucket:outbox/copies/{key}"] }),
        &[serde_json::json!({ "bucket": { "name": "inbox", "events": ["created"], "prefix": "in/", "suffix": ".txt" } })],
    )
    .await;
    s.deploy(
        "watcher",
        "fixtures/echo.wat",
        serde_json::json!({ "on_success": ["kv:removals"] }),
        &[serde_json::json!({ "bucket": { "name": "inbox", "events": ["removed"] } })],
    )
    .await;
    let file = home.join("a b.txt");
    std::fs::write(&file, b"twelve bytes").unwrap();
    aws_ok(
        s,
        home,
        &["s3", "cp", file.to_str().unwrap(), "s3://inbox/in/a b.txt"],
    );
    aws_ok(
        s,
        home,
        &["s3", "cp", file.to_str().unwrap(), "s3://inbox/other/a.txt"],
    );
    aws_ok(
        s,
        home,
        &["s3", "cp", file.to_str().unwrap(), "s3://inbox/in/a.bin"],
    );

    let copy = eventually("the copy", || async {
        let r = s
            .get("/v1/buckets/outbox/objects/copies/in/a%20b.txt", &s.token)
            .await;
        if r.status().is_success() {
            Some(r.bytes().await.unwrap())
        } else {
            None
        }
    })
    .await;
    let event: serde_json::Value = serde_json::from_slice(&copy).unwrap();
    let record = &event["Records"][0];
    assert_eq!(record["eventSource"], "aws:s3");
    assert_eq!(record["eventName"], "ObjectCreated:Put");
    assert_eq!(record["s3"]["bucket"]["name"], "inbox");
    assert_eq!(record["s3"]["bucket"]["arn"], "arn:aws:s3:::inbox");
    assert_eq!(
        record["s3"]["object"]["key"], "in/a+b.txt",
        "keys are form-encoded, as S3 does"
    );
    assert_eq!(record["s3"]["object"]["size"], 12);
    assert_eq!(record["s3"]["object"]["eTag"], md5_hex(b"twelve bytes"));

    aws_ok(s, home, &["s3", "rm", "s3://inbox/in/a b.txt"]);
    let removal = eventually("the removal event", || async {
        let page: serde_json::Value = s
            .get("/v1/kv/removals", &s.token)
            .await
            .json()
            .await
            .unwrap();
        let key = page["items"][0]["key"].as_str()?.to_owned();
        Some(
            s.get(&format!("/v1/kv/removals/{key}"), &s.token)
                .await
                .json::<serde_json::Value>()
                .await
                .unwrap(),
        )
    })
    .await;
    assert_eq!(removal["Records"][0]["eventName"], "ObjectRemoved:Delete");
    assert_eq!(removal["Records"][0]["s3"]["object"]["key"], "in/a+b.txt");
    // Only the object under in/ ending in .txt was copied.
    let listed: serde_json::Value = s
        .get("/v1/buckets/outbox/objects", &s.token)
        .await
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["copies/in/a b.txt"]);
    server.stop().await;
}

/// Uploads a 2x2 PPM as `p.ppm` with the aws CLI; returns its bytes.
fn upload_tiny_photo(s: &Running, home: &Path, bucket: &str) -> Vec<u8> {
    let mut photo = b"P6\n2 2\n255\n".to_vec();
    photo.extend_from_slice(&[9; 12]);
    std::fs::write(home.join("p.ppm"), &photo).unwrap();
    let target = format!("s3://{bucket}/p.ppm");
    aws_ok(
        s,
        home,
        &["s3", "cp", home.join("p.ppm").to_str().unwrap(), &target],
    );
    photo
}

fn md5_hex(bytes: &[u8]) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.md5(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_tokens_reach_exactly_their_grants() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), |_| {}).await;
    let (s, home) = (&server, dir.path());
    aws_ok(s, home, &["s3", "mb", "s3://uploads"]);
    aws_ok(s, home, &["s3", "mb", "s3://thumbnails"]);
    // The thumbnail example may read uploads and write photos, but not thumbnails.
    s.deploy(
        "thumbnail",
        "examples/storage/thumbnail.wasm",
        serde_json::json!({ "storage": ["bucket:uploads:read", "kv:photos:write"], "max_attempts": 1 }),
        &[serde_json::json!({ "bucket": { "name": "uploads", "events": ["created"] } })],
    )
    .await;
    let photo = upload_tiny_photo(s, home, "uploads");
    let logs = eventually("the refused write", || async {
        let logs: serde_json::Value = s
            .get("/v1/functions/thumbnail/logs", &s.token)
            .await
            .json()
            .await
            .unwrap();
        let text = logs.to_string();
        text.contains("HTTP 403").then_some(text)
    })
    .await;
    assert!(
        logs.contains("bucket:thumbnails:write"),
        "the 403 names the missing grant: {logs}"
    );
    assert_eq!(s.get("/v1/kv/photos/p.ppm", &s.token).await.status(), 404);
    assert_eq!(
        s.get("/v1/buckets/thumbnails/objects/p.ppm", &s.token)
            .await
            .status(),
        404
    );

    // Tokens are checked: a made-up one is refused, and grants are not the admin's.
    let forged = s
        .get(
            "/v1/buckets/uploads/objects/p.ppm",
            "cft1.eyJmIjoieCJ9.AAAA",
        )
        .await;
    assert_eq!(forged.status(), 401);
    let admin = s.get("/v1/buckets/uploads/objects/p.ppm", &s.token).await;
    assert_eq!(admin.status(), 200);
    assert_eq!(admin.bytes().await.unwrap().as_ref(), photo.as_slice());
    let bad_grant = reqwest::Client::new()
        .put(format!("{}/v1/functions/other", s.url))
        .bearer_auth(&s.token)
        .multipart(
            reqwest::multipart::Form::new()
                .text("config", r#"{"storage": ["bucket:uploads:admin"]}"#)
                .part(
                    "artifact",
                    reqwest::multipart::Part::bytes(
                        std::fs::read(repo("fixtures/echo.wat")).unwrap(),
                    )
                    .file_name("f.wasm"),
                ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad_grant.status(), 400);
    assert!(bad_grant
        .text()
        .await
        .unwrap()
        .contains("invalid storage grant"));

    // A genuine token (a function's, which env.wat prints) opens exactly its grants.
    s.deploy(
        "probe",
        "fixtures/env.wat",
        serde_json::json!({ "storage": ["kv:photos:write", "bucket:uploads:read"] }),
        &[],
    )
    .await;
    let env = s.get("/fn/probe", &s.token).await.text().await.unwrap();
    let token = env
        .lines()
        .find_map(|l| l.strip_prefix("CIRRUS_TOKEN="))
        .unwrap_or_else(|| panic!("no token in {env}"))
        .to_owned();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: &str| {
        http.request(method, format!("{}{path}", s.url))
            .bearer_auth(token)
            .body("{}")
            .header("content-type", "application/json")
            .send()
    };
    use reqwest::Method as M;
    for (method, path, want) in [
        (M::PUT, "/v1/kv/photos/k", 200),
        (M::GET, "/v1/kv/photos/k", 403),
        (M::PUT, "/v1/kv/secret/k", 403),
        (M::GET, "/v1/kv/photos%2F..%2Fsecret/k", 403),
        (M::HEAD, "/v1/buckets/uploads/objects/p.ppm", 200),
        (M::GET, "/v1/buckets/uploads/objects", 200),
        (M::PUT, "/v1/buckets/uploads/objects/p.ppm", 403),
        (M::DELETE, "/v1/buckets/uploads/objects/p.ppm", 403),
        (M::GET, "/v1/buckets/thumbnails/objects", 403),
        (M::GET, "/v1/functions", 401),
        (M::GET, "/metrics", 401),
    ] {
        let response = call(method.clone(), path, &token).await.unwrap();
        assert_eq!(response.status().as_u16(), want, "{method} {path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_writing_into_its_own_trigger_stops_at_the_depth_limit() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), |_| {}).await;
    let (s, home) = (&server, dir.path());
    aws_ok(s, home, &["s3", "mb", "s3://loop"]);
    // The thumbnail example told to write its thumbnails into the bucket it watches.
    s.deploy(
        "thumbnail",
        "examples/storage/thumbnail.wasm",
        serde_json::json!({
            "storage": ["bucket:loop:read", "bucket:loop:write", "kv:photos:write"],
            "env": { "THUMB_BUCKET": "loop" },
            "max_attempts": 1
        }),
        &[serde_json::json!({ "bucket": { "name": "loop", "events": ["created"] } })],
    )
    .await;
    upload_tiny_photo(s, home, "loop");
    let dead = eventually("the loop to be cut", || async {
        let dead: serde_json::Value = s.get("/v1/dlq", &s.token).await.json().await.unwrap();
        let text = dead.to_string();
        text.contains("pipeline deeper than").then_some(text)
    })
    .await;
    assert!(dead.contains("triggers it"), "{dead}");
    let row: serde_json::Value = s
        .get("/v1/kv/photos/p.ppm", &s.token)
        .await
        .json()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again: serde_json::Value = s
        .get("/v1/kv/photos/p.ppm", &s.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(row, again, "the function stopped running");
    server.stop().await;
}

/// A PUT with a `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` body (as the Java, Go and Rust SDKs
/// send), chunk signatures chained from the request's, over real HTTP.
async fn signed_chunked_put(
    s: &Running,
    key: &str,
    data: &[u8],
    tamper: bool,
) -> reqwest::Response {
    use cirrus_server::s3::sigv4::{self, sign, signing_key, Signing};
    let keys = std::fs::read_to_string(s.data_dir.join("s3-credentials")).unwrap();
    let credentials = cirrus_server::s3::credentials::Credentials::parse(&keys).unwrap();
    let (access, secret) = credentials.default_pair().unwrap();
    let chunks: Vec<&[u8]> = data
        .chunks(64 << 10)
        .chain(std::iter::once(&[][..]))
        .collect();
    let encoded_len: usize = chunks
        .iter()
        .map(|c| format!("{:x};chunk-signature=", c.len()).len() + 64 + 2 + c.len() + 2)
        .sum();
    let host = s.s3.trim_start_matches("http://").to_owned();
    let path = format!("/box/{key}");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("host", host.parse().unwrap());
    headers.insert("content-encoding", "aws-chunked".parse().unwrap());
    headers.insert("content-length", encoded_len.to_string().parse().unwrap());
    headers.insert(
        "x-amz-decoded-content-length",
        data.len().to_string().parse().unwrap(),
    );
    let now = std::time::SystemTime::now();
    sign(
        &reqwest::Method::PUT,
        &path,
        None,
        &mut headers,
        access,
        secret,
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        now,
    )
    .unwrap();
    let authorization = headers["authorization"].to_str().unwrap().to_owned();
    let amz_date = headers["x-amz-date"].to_str().unwrap().to_owned();
    let signing = Signing {
        key: signing_key(secret, &amz_date[..8], "us-east-1", "s3"),
        scope: format!("{}/us-east-1/s3/aws4_request", &amz_date[..8]),
        seed: authorization
            .rsplit_once("Signature=")
            .unwrap()
            .1
            .to_owned(),
        amz_date,
    };
    let mut body = Vec::with_capacity(encoded_len);
    let mut previous = signing.seed.clone();
    for chunk in chunks {
        let signature = signing.chunk_signature(&previous, &sigv4::sha256_hex(chunk));
        body.extend_from_slice(
            format!("{:x};chunk-signature={signature}\r\n", chunk.len()).as_bytes(),
        );
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
        previous = signature;
    }
    assert_eq!(body.len(), encoded_len);
    if tamper {
        body[100] ^= 1;
    }
    reqwest::Client::new()
        .put(format!("{}{path}", s.s3))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_aws_chunked_bodies_are_checked_chunk_by_chunk() {
    python_has_boto3();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("data"), |_| {}).await;
    let (s, home) = (&server, dir.path());
    aws_ok(s, home, &["s3", "mb", "s3://box"]);
    let data = pseudo_random(200_000, 11);
    let response = signed_chunked_put(s, "signed.bin", &data, false).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let got = home.join("got.bin");
    aws_ok(
        s,
        home,
        &["s3", "cp", "s3://box/signed.bin", got.to_str().unwrap()],
    );
    assert!(std::fs::read(&got).unwrap() == data);
    let response = signed_chunked_put(s, "tampered.bin", &data, true).await;
    assert_eq!(response.status(), 403);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("<Code>SignatureDoesNotMatch</Code>"));
    let out = aws(
        s,
        home,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "box",
            "--key",
            "tampered.bin",
        ],
    );
    assert!(
        !out.status.success(),
        "a body with a bad chunk signature was stored"
    );
    server.stop().await;
}
