//! `cargo bench -p cirrus-server --bench invoke`: cold start, warm latency and
//! throughput for the hello functions, over real HTTP on loopback. Prints figures;
//! asserts nothing (targets live in BENCHMARKS.md, not in tests).
//!
//! Client and server share the machine, so throughput is what both together reach.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use cirrus_api::{FunctionConfig, Qualifier};
use cirrus_server::{ManualClock, Server, ServerConfig};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const COLD_SAMPLES: usize = 200;
const WARM_SAMPLES: usize = 5_000;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(3);
const CONCURRENCY: [usize; 4] = [1, 4, 16, 64];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> String {
    format!("{:>8.1} µs", d.as_secs_f64() * 1e6)
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label:<44} p50 {}  p99 {}  (n={})",
        micros(percentile(&samples, 0.50)),
        micros(percentile(&samples, 0.99)),
        samples.len()
    );
}

fn main() {
    // Benchmarks measure the platform, not backtrace capture on errors.
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
    config.scaler.global_concurrency = 1024;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let server = Server::start(config, clock.clone()).await.unwrap();
    let state = server.state().clone();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut functions = vec![
        (
            "hello-rust",
            "wasi:http component (Rust)",
            examples.join("hello-rust/hello.wasm"),
        ),
        (
            "hello-c",
            "WASI command module (C)",
            examples.join("hello-c/hello.wasm"),
        ),
    ];
    // Built, not committed (~13 MB): measured when `examples/hello-js/build.sh` has run.
    let js = examples.join("hello-js/hello.wasm");
    if js.is_file() {
        functions.push(("hello-js", "wasi:http component (JavaScript)", js));
    } else {
        println!("hello-js skipped: run examples/hello-js/build.sh to measure it");
    }
    for (name, _, path) in &functions {
        let manifest = format!(
            "[functions.{name}]\nsource = {:?}\n",
            path.to_str().unwrap()
        );
        let manifest = cirrus_api::Manifest::parse(&manifest, Path::new("/")).unwrap();
        server.deploy_manifest(&manifest).await.unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    println!(
        "cirrus invoke benchmark — pooling allocator: see server log; {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let health = format!("{url}/v1/health");
    let mut baseline = Vec::with_capacity(WARM_SAMPLES);
    for _ in 0..WARM_SAMPLES {
        let t = Instant::now();
        client
            .get(&health)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        baseline.push(t.elapsed());
    }
    report("HTTP baseline (GET /v1/health, no wasm)", baseline);

    for (name, label, _) in &functions {
        let target = format!("{url}/fn/{name}");
        let version = state.registry.resolve(name, &Qualifier::Latest).unwrap();
        let idle = FunctionConfig::default().idle_timeout + Duration::from_secs(1);

        // Cold: unload (scale to zero), then the first request loads compiled code from
        // the on-disk cache and answers.
        let mut cold = Vec::with_capacity(COLD_SAMPLES);
        for _ in 0..COLD_SAMPLES {
            clock.advance(idle);
            cirrus_server::server::sweep_idle(&state);
            assert!(!state.scaler.is_loaded(name, version.version));
            let t = Instant::now();
            let r = client.get(&target).send().await.unwrap();
            assert_eq!(r.headers()["cirrus-cold-start"], "true");
            r.bytes().await.unwrap();
            cold.push(t.elapsed());
        }
        report(&format!("{name}: cold start to first response"), cold);

        // Warm, sequential, one keep-alive connection.
        let mut warm = Vec::with_capacity(WARM_SAMPLES);
        let mut guest = Vec::with_capacity(WARM_SAMPLES);
        for _ in 0..WARM_SAMPLES {
            let t = Instant::now();
            let r = client.get(&target).send().await.unwrap();
            let ms: f64 = r.headers()["cirrus-duration-ms"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            r.bytes().await.unwrap();
            warm.push(t.elapsed());
            guest.push(Duration::from_secs_f64(ms / 1000.0));
        }
        report(&format!("{name}: warm request, client-side"), warm);
        report(&format!("{name}: warm, instantiate + run ({label})"), guest);

        for concurrency in CONCURRENCY {
            let done = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + THROUGHPUT_WINDOW;
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (client, target, done) = (client.clone(), target.clone(), done.clone());
                    tokio::spawn(async move {
                        while Instant::now() < deadline {
                            let r = client.get(&target).send().await.unwrap();
                            assert!(r.status().is_success());
                            r.bytes().await.unwrap();
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await.unwrap();
            }
            let rps = done.load(Ordering::Relaxed) as f64 / THROUGHPUT_WINDOW.as_secs_f64();
            println!(
                "{:<44} {rps:>10.0} req/s",
                format!("{name}: throughput at concurrency {concurrency}")
            );
        }
    }
    events(&state, &client, &url).await;
    metering_costs(&state);
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

/// What metering adds per invocation: two thread-CPU clock reads per poll of the
/// invocation, and one update of the metric families per record.
fn metering_costs(state: &cirrus_server::api::AppStateRef) {
    const N: u32 = 200_000;
    let t = Instant::now();
    for _ in 0..N {
        std::hint::black_box(rustix::time::clock_gettime(
            rustix::time::ClockId::ThreadCPUTime,
        ));
    }
    let clock_ns = t.elapsed().as_nanos() as f64 / f64::from(N);
    println!(
        "{:<44} {:>8.0} ns per read (2 per poll)",
        "metering: thread CPU clock", clock_ns
    );
    let record: cirrus_api::InvocationRecord = serde_json::from_value(serde_json::json!({
        "request_id": "r", "function": "hello-c", "version": 1, "trigger": "http", "attempt": 1,
        "started_at": "2026-11-22T00:00:00.000Z", "duration_ms": 0.1, "billed_ms": 1, "init_ms": null,
        "memory_mb": 128, "peak_memory_bytes": 65536, "cpu_ms": 0.05, "request_bytes": 0,
        "response_bytes": 10, "cold_start": false, "trace_id": "t", "span_id": "s",
        "parent_span_id": null, "outcome": "success", "status": 200, "error_code": null, "error_message": null
    }))
    .unwrap();
    let t = Instant::now();
    for _ in 0..N {
        state.invoker.metrics.observe(&record);
    }
    let observe_ns = t.elapsed().as_nanos() as f64 / f64::from(N);
    println!(
        "{:<44} {:>8.0} ns per invocation",
        "metering: metric families update", observe_ns
    );
}

/// Asynchronous events: event → function latency on an idle server (acknowledged POST to
/// the guest's log line arriving, which includes the ~15 µs run), and the rate at which
/// durable events are accepted (each one committed before its 202).
async fn events(state: &cirrus_server::api::AppStateRef, client: &reqwest::Client, url: &str) {
    let target = format!("{url}/v1/functions/hello-c/invoke");
    let post = |body: String| {
        client
            .post(&target)
            .bearer_auth(&state.token)
            .header("x-cirrus-invocation-type", "Event")
            .body(body)
            .send()
    };
    let mut live = state.records.follow();
    let mut latency = Vec::with_capacity(COLD_SAMPLES);
    for i in 0..COLD_SAMPLES {
        let t = Instant::now();
        let r = post(i.to_string()).await.unwrap();
        assert_eq!(r.status(), 202);
        let id = r.headers()["cirrus-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        loop {
            match live.recv().await {
                Ok(line) if line.request_id == id => break,
                _ => continue,
            }
        }
        latency.push(t.elapsed());
    }
    report("event → function ran (idle server)", latency);

    for concurrency in [16, 64] {
        let accepted = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + THROUGHPUT_WINDOW;
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, target, token, accepted) = (
                    client.clone(),
                    target.clone(),
                    state.token.clone(),
                    accepted.clone(),
                );
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let r = client
                            .post(&target)
                            .bearer_auth(&token)
                            .header("x-cirrus-invocation-type", "Event")
                            .body("{}")
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 202);
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        let rate = accepted.load(Ordering::Relaxed) as f64 / THROUGHPUT_WINDOW.as_secs_f64();
        println!(
            "{:<44} {rate:>10.0} events/s",
            format!("durable enqueue, {concurrency} clients")
        );
        // Let the dispatcher drain before the next round.
        loop {
            let (queued, _) = state.event_queue.depth().await.unwrap();
            if queued == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
