//! `cargo bench -p cirrus-server --bench storage`: the S3 API's PUT/GET throughput for
//! 4 KiB and 8 MiB objects, beside this disk's own sequential write speed, and the
//! latency from an upload's 200 to the start of the function its notification fires.
//! Prints figures; asserts nothing (BENCHMARKS.md records them).

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use cirrus_server::s3::sigv4;
use cirrus_server::{Server, ServerConfig, SystemClock};
use reqwest::header::HeaderMap;
use reqwest::Method;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const SMALL: usize = 4 << 10;
const LARGE: usize = 8 << 20;
const WINDOW: Duration = Duration::from_secs(3);
const LARGE_COUNT: usize = 24;
const TRIGGER_SAMPLES: usize = 40;

struct Client {
    http: reqwest::Client,
    base: String,
    host: String,
    access: String,
    secret: String,
}

impl Client {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        sign_payload: bool,
    ) -> reqwest::Response {
        let mut headers = HeaderMap::new();
        headers.insert("host", self.host.parse().unwrap());
        let hash = if sign_payload {
            sigv4::sha256_hex(&body)
        } else {
            "UNSIGNED-PAYLOAD".into()
        };
        sigv4::sign(
            &method,
            path,
            None,
            &mut headers,
            &self.access,
            &self.secret,
            &hash,
            SystemTime::now(),
        )
        .unwrap();
        let response = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{method} {path}: {}",
            response.status()
        );
        response
    }
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

fn percentile(mut samples: Vec<Duration>, p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// Writes `files` files of `mib` MiB each (1 MiB writes), fsyncing each: what the disk
/// itself sustains, in one long stream or in object-sized pieces.
fn disk_write_speed(dir: &Path, files: usize, mib: usize) -> f64 {
    let block = vec![7u8; 1 << 20];
    let started = Instant::now();
    for i in 0..files {
        let path = dir.join(format!("disk-speed-{i}"));
        let mut file = std::fs::File::create(&path).unwrap();
        for _ in 0..mib {
            file.write_all(&block).unwrap();
        }
        file.sync_all().unwrap();
    }
    let speed = mib_per_s((files * mib) << 20, started.elapsed());
    for i in 0..files {
        std::fs::remove_file(dir.join(format!("disk-speed-{i}"))).unwrap();
    }
    speed
}

async fn small_ops(client: &Arc<Client>, method: Method, concurrency: usize) -> (f64, Duration) {
    let deadline = Instant::now() + WINDOW;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let method = method.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let path = format!("/bench/small/{worker}-{}", i % 64);
                let body = if method == Method::PUT {
                    vec![1u8; SMALL]
                } else {
                    Vec::new()
                };
                let t = Instant::now();
                client
                    .send(method.clone(), &path, body, true)
                    .await
                    .bytes()
                    .await
                    .unwrap();
                latencies.push(t.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / WINDOW.as_secs_f64();
    (rate, percentile(all, 0.5))
}

fn main() {
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path());
    config.sweep_interval = Duration::from_secs(3600);
    let server = Server::start(config, Arc::new(SystemClock)).await.unwrap();
    let token = server.admin_token().to_owned();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let manifest = format!(
        "[functions.on-upload]\nsource = {:?}\ntriggers = [{{ bucket = {{ name = \"bench\", prefix = \"trigger/\" }} }}]\n",
        examples.join("echo.wat").to_str().unwrap()
    );
    let manifest = cirrus_api::Manifest::parse(&manifest, Path::new("/")).unwrap();
    server.deploy_manifest(&manifest).await.unwrap();
    let s3_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s3_addr = s3_listener.local_addr().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .with_s3_listener(s3_listener)
            .serve(listener, async move {
                let _ = stopped.await;
            }),
    );
    let keys = std::fs::read_to_string(dir.path().join("s3-credentials")).unwrap();
    let credentials = cirrus_server::s3::credentials::Credentials::parse(&keys).unwrap();
    let (access, secret) = credentials.default_pair().unwrap();
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap(),
        base: format!("http://{s3_addr}"),
        host: s3_addr.to_string(),
        access: access.to_owned(),
        secret: secret.to_owned(),
    });
    client.send(Method::PUT, "/bench", Vec::new(), true).await;
    println!(
        "cirrus storage benchmark — {} cores; objects are fsynced before 200",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "disk sequential write (one 256 MiB file, fsync):   {:>8.1} MiB/s",
        disk_write_speed(dir.path(), 1, 256)
    );
    println!(
        "disk sequential write (8 MiB files, fsync each):   {:>8.1} MiB/s",
        disk_write_speed(dir.path(), 24, 8)
    );

    let large = vec![42u8; LARGE];
    for (label, signed) in [
        ("UNSIGNED-PAYLOAD", false),
        ("SHA-256 signed payload", true),
    ] {
        let started = Instant::now();
        for i in 0..LARGE_COUNT {
            client
                .send(
                    Method::PUT,
                    &format!("/bench/large/{i}"),
                    large.clone(),
                    signed,
                )
                .await;
        }
        println!(
            "PUT 8 MiB, one at a time ({label:<22}): {:>8.1} MiB/s",
            mib_per_s(LARGE * LARGE_COUNT, started.elapsed())
        );
    }
    let started = Instant::now();
    for i in 0..LARGE_COUNT {
        let bytes = client
            .send(Method::GET, &format!("/bench/large/{i}"), Vec::new(), true)
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes.len(), LARGE);
    }
    println!(
        "GET 8 MiB, one at a time:                          {:>8.1} MiB/s",
        mib_per_s(LARGE * LARGE_COUNT, started.elapsed())
    );

    for concurrency in [1, 16] {
        let (rate, p50) = small_ops(&client, Method::PUT, concurrency).await;
        println!("PUT 4 KiB, {concurrency:>2} in flight:                          {rate:>8.0} ops/s  p50 {:>7.2} ms", p50.as_secs_f64() * 1e3);
    }
    for concurrency in [1, 16] {
        let (rate, p50) = small_ops(&client, Method::GET, concurrency).await;
        println!("GET 4 KiB, {concurrency:>2} in flight:                          {rate:>8.0} ops/s  p50 {:>7.2} ms", p50.as_secs_f64() * 1e3);
    }

    // Upload → trigger start: from sending the PUT to the invocation's recorded start
    // (milliseconds: records carry millisecond times).
    let http = reqwest::Client::new();
    let newest = || {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let page: serde_json::Value = http
                .get(format!("{url}/v1/functions/on-upload/invocations?limit=1"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let item = &page["items"][0];
            item["request_id"].as_str().map(|id| {
                (
                    id.to_owned(),
                    item["started_at"].as_str().unwrap().to_owned(),
                )
            })
        }
    };
    let mut latencies = Vec::new();
    for i in 0..TRIGGER_SAMPLES {
        let before = newest().await.map(|(id, _)| id);
        // The notification commits with the object, before the 200: measure from the
        // moment the PUT is sent.
        let sent = chrono::Utc::now();
        client
            .send(
                Method::PUT,
                &format!("/bench/trigger/{i}"),
                vec![1u8; SMALL],
                true,
            )
            .await;
        let started = loop {
            if let Some((id, at)) = newest().await {
                if Some(&id) != before.as_ref() {
                    break chrono::DateTime::parse_from_rfc3339(&at).unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let gap = (started.timestamp_micros() - sent.timestamp_micros()).max(0) as u64;
        latencies.push(Duration::from_micros(gap));
    }
    println!(
        "upload → trigger start (PUT sent → function starts): p50 {:>6.2} ms  p90 {:>6.2} ms  (n={TRIGGER_SAMPLES})",
        percentile(latencies.clone(), 0.5).as_secs_f64() * 1e3,
        percentile(latencies, 0.9).as_secs_f64() * 1e3
    );
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
