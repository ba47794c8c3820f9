//! Retention: invocation records and logs, dead letters and abandoned multipart uploads
//! are pruned in the background by age and by count, usage survives as hourly sums, and
//! functions keep answering while a large prune runs. Ages move on the manual clock; the
//! pruner runs every 50 ms of real time, and tests poll for its effect.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;
use common::*;

use cirrus_api::usage::UsageReport;
use cirrus_api::{DeadEvent, FunctionConfig, InvocationRecord, LogLine, Page};
use cirrus_server::retention::RetentionSettings;
use cirrus_server::store::{RecordStore, SqliteStore};
use cirrus_server::{ManualClock, Server, ServerConfig};
use reqwest::{Method, StatusCode};
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const HOUR: Duration = Duration::from_secs(60 * 60);

/// The defaults, run every 50 ms, with no count caps unless a test sets them.
fn retention(tune: impl FnOnce(&mut RetentionSettings)) -> RetentionSettings {
    let mut settings = RetentionSettings {
        max_records: None,
        max_log_lines: None,
        interval: Duration::from_millis(50),
        ..Default::default()
    };
    tune(&mut settings);
    settings
}

/// Polls in real time, without moving the manual clock, until `check` holds.
async fn until<T, F: Future<Output = Option<T>>>(what: &str, check: impl Fn() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Invokes and answers the request id.
async fn invoke_id(s: &Running, name: &str, body: &str) -> String {
    let r = s.invoke(name, body).await;
    r.headers()["cirrus-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Request ids of a function's records, newest first.
async fn recorded(s: &Running, name: &str) -> Vec<String> {
    let page: Page<InvocationRecord> = s
        .get_json(&format!("/v1/functions/{name}/invocations?limit=1000"))
        .await;
    page.items.into_iter().map(|r| r.request_id).collect()
}

async fn log_lines(s: &Running, name: &str, request_id: &str) -> Vec<String> {
    let page: Page<LogLine> = s
        .get_json(&format!(
            "/v1/functions/{name}/logs?request_id={request_id}"
        ))
        .await;
    page.items.into_iter().map(|l| l.line).collect()
}

async fn usage(s: &Running, query: &str) -> serde_json::Value {
    let r = s.send(Method::GET, &format!("/v1/usage?{query}")).await;
    assert_eq!(r.status(), 200, "{query}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn records_and_logs_older_than_the_retention_go_and_newer_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.retention = retention(|_| {})).await;
    s.deploy("logger", "log_input.wat", FunctionConfig::default())
        .await;
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(invoke_id(&s, "logger", &format!("old-{i}\n")).await);
    }
    s.clock.advance(20 * DAY);
    let mut new = Vec::new();
    for i in 0..2 {
        new.push(invoke_id(&s, "logger", &format!("new-{i}\n")).await);
    }
    assert_eq!(recorded(&s, "logger").await.len(), 5);
    assert!(log_lines(&s, "logger", &old[0])
        .await
        .contains(&"old-0".to_owned()));

    // The first three are now 31 days old (the default keeps 30), the others 11.
    s.clock.advance(11 * DAY);
    let left = until("the old records to go", || async {
        let ids = recorded(&s, "logger").await;
        (ids.len() == 2).then_some(ids)
    })
    .await;
    assert_eq!(left, [new[1].clone(), new[0].clone()]);
    for id in &old {
        assert!(log_lines(&s, "logger", id).await.is_empty(), "logs of {id}");
        let trace = s.send(Method::GET, &format!("/v1/trace/{id}")).await;
        assert_eq!(trace.status(), 404, "{id} is gone from traces too");
    }
    for (i, id) in new.iter().enumerate() {
        let lines = log_lines(&s, "logger", id).await;
        assert!(lines.contains(&format!("new-{i}")), "{lines:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn the_record_cap_keeps_the_newest_and_usage_still_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| {
        c.retention = retention(|r| {
            r.records_max_age = None;
            r.max_records = Some(5);
        })
    })
    .await;
    s.deploy("logger", "log_input.wat", FunctionConfig::default())
        .await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(invoke_id(&s, "logger", &format!("call-{i}\n")).await);
    }
    let left = until("the cap to apply", || async {
        let left = recorded(&s, "logger").await;
        (left.len() == 5).then_some(left)
    })
    .await;
    let newest: Vec<String> = ids[3..].iter().rev().cloned().collect();
    assert_eq!(left, newest, "the oldest three go first");
    for id in &ids[..3] {
        assert!(log_lines(&s, "logger", id).await.is_empty(), "logs of {id}");
    }
    assert!(!log_lines(&s, "logger", &ids[3]).await.is_empty());
    // Pruned and kept records of the same hour add up.
    let report: UsageReport = s.get_json("/v1/usage").await;
    assert_eq!(report.total.requests, 8);
    s.stop().await;
}

#[tokio::test]
async fn the_log_line_cap_keeps_the_newest_lines() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| {
        c.retention = retention(|r| {
            r.records_max_age = None;
            r.max_log_lines = Some(4);
        })
    })
    .await;
    s.deploy("logger", "log_input.wat", FunctionConfig::default())
        .await;
    // Each call logs two lines: its body and "echo: done".
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(invoke_id(&s, "logger", &format!("call-{i}\n")).await);
    }
    until("the log cap to apply", || async {
        log_lines(&s, "logger", &ids[1])
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(log_lines(&s, "logger", &ids[0]).await.is_empty());
    for (i, id) in ids.iter().enumerate().skip(2) {
        let lines = log_lines(&s, "logger", id).await;
        assert_eq!(lines, [format!("call-{i}"), "echo: done".into()]);
    }
    assert_eq!(recorded(&s, "logger").await.len(), 4, "records stay");
    s.stop().await;
}

#[tokio::test]
async fn usage_totals_and_costs_are_the_same_after_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let prices = cirrus_server::billing::parse_prices(
        "per_million_requests = \"0.20\"\nper_gb_second = \"0.0000166667\"\nper_cpu_ms = \"0.000001\"\n[free_tier]\nrequests = 3\ngb_seconds = \"0.0001\"\n",
    )
    .unwrap();
    let s = start_with(dir.path(), |c| {
        c.retention = retention(|_| {});
        c.prices = prices;
    })
    .await;
    s.deploy("a", "echo.wat", small(128, 5_000)).await;
    s.deploy("b", "trap.wat", small(64, 5_000)).await;
    s.deploy("c", "log_input.wat", small(256, 5_000)).await;
    // The clock starts at 2023-11-14T22:13:20Z: calls in two hours, two versions of `a`,
    // successes, errors and cold starts.
    for _ in 0..3 {
        assert_eq!(s.invoke("a", "x").await.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(s.invoke("b", "x").await.status(), 502);
    }
    s.clock.advance(HOUR);
    s.deploy("a", "echo.wat", small(512, 5_000)).await;
    for _ in 0..2 {
        assert_eq!(s.invoke("a", "y").await.status(), 200);
        assert_eq!(s.invoke("c", "y").await.status(), 200);
    }
    let queries = [
        "from=2023-11-14&to=2023-11-16&group_by=function",
        "from=2023-11-14&to=2023-11-16&group_by=hour",
        "from=2023-11-14T23:00:00Z&to=2023-11-16&group_by=day",
        "from=2023-11-01&to=2023-12-01",
    ];
    let mut before = Vec::new();
    for q in queries {
        before.push(usage(&s, q).await);
    }
    assert_eq!(before[0]["total"]["requests"], 9);
    let mid_hour = "from=2023-11-14T22:10:00Z&to=2023-11-16";
    assert_eq!(usage(&s, mid_hour).await["total"]["requests"], 9);
    assert_eq!(before[0]["total"]["errors"], 2);
    assert_ne!(before[0]["total"]["cost"], "0");
    assert_ne!(before[0]["free_tier_discount"], "0");

    s.clock.advance(31 * DAY);
    until("every record to go", || async {
        let mut left = 0;
        for f in ["a", "b", "c"] {
            left += recorded(&s, f).await.len();
        }
        (left == 0).then_some(())
    })
    .await;
    for (q, before) in queries.iter().zip(&before) {
        assert_eq!(&usage(&s, q).await, before, "{q}");
    }
    // Kept as hourly sums: a pruned hour counts when it starts in the period, so a
    // period starting inside it (22:10, before the calls at 22:13) no longer has it.
    let inside = usage(&s, mid_hour).await;
    assert_eq!(inside["total"]["requests"], 4, "only the hour from 23:00");
    s.stop().await;
}

#[tokio::test]
async fn dead_letters_go_after_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| c.retention = retention(|_| {})).await;
    let config = FunctionConfig {
        max_attempts: 1,
        ..Default::default()
    };
    s.deploy("failing", "trap.wat", config).await;
    let dead = || async {
        let page: Page<DeadEvent> = s.get_json("/v1/dlq").await;
        page.items
            .into_iter()
            .map(|e| e.request_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(invoke_async(&s, "failing", "1", None).await.status(), 202);
    let first = eventually(&s, "the first dead letter", || async { dead().await.pop() }).await;
    s.clock.advance(10 * DAY);
    assert_eq!(invoke_async(&s, "failing", "2", None).await.status(), 202);
    eventually(&s, "the second dead letter", || async {
        (dead().await.len() == 2).then_some(())
    })
    .await;
    let second = dead().await.into_iter().find(|id| *id != first).unwrap();
    // 15 and 5 days after they failed; the default keeps 14.
    s.clock.advance(5 * DAY);
    until("the first dead letter to go", || async {
        (dead().await == [second.clone()]).then_some(())
    })
    .await;
    let gone = s.send(Method::GET, &format!("/v1/dlq/{first}")).await;
    assert_eq!(gone.status(), 404);
    let status: cirrus_api::ServerStatus = s.get_json("/v1/status").await;
    assert_eq!(status.dead_events, 1);
    s.stop().await;
}

#[tokio::test]
async fn audit_entries_go_after_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), |c| {
        c.retention = retention(|r| r.audit_max_age = Some(30 * DAY))
    })
    .await;
    let audit = || async {
        let page: serde_json::Value = s.get_json("/v1/audit").await;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    s.deploy("old", "echo.wat", FunctionConfig::default()).await;
    eventually(&s, "the first entry", || async {
        (audit().await == ["/v1/functions/old"]).then_some(())
    })
    .await;
    s.clock.advance(20 * DAY);
    s.deploy("new", "echo.wat", FunctionConfig::default()).await;
    eventually(&s, "the second entry", || async {
        (audit().await.len() == 2).then_some(())
    })
    .await;
    // 31 and 11 days old: the first goes, the second stays.
    s.clock.advance(11 * DAY);
    until("the old entry to go", || async {
        (audit().await == ["/v1/functions/new"]).then_some(())
    })
    .await;
    s.stop().await;
}

/// The harness's server, with the S3 listener too.
async fn start_with_s3(data_dir: &Path, tune: impl FnOnce(&mut ServerConfig)) -> (Running, String) {
    let mut config = ServerConfig::new(data_dir);
    config.sweep_interval = Duration::from_secs(3600);
    tune(&mut config);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let server = Server::start(config, clock.clone()).await.unwrap();
    let token = server.admin_token().to_owned();
    let s3 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s3_url = format!("http://{}", s3.local_addr().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.with_s3_listener(s3).serve(listener, async move {
        let _ = stopped.await;
    }));
    let running = Running {
        url,
        token,
        http: reqwest::Client::new(),
        clock,
        sweep: Arc::new(|| 0),
        stop: Some(stop),
        task: Some(task),
    };
    (running, s3_url)
}

/// A SigV4-signed request to the S3 listener with the server's own keys.
async fn s3_call(
    s3_url: &str,
    data_dir: &Path,
    method: Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> reqwest::Response {
    use cirrus_server::s3::sigv4::{sha256_hex, sign};
    let keys = std::fs::read_to_string(data_dir.join("s3-credentials")).unwrap();
    let credentials = cirrus_server::s3::credentials::Credentials::parse(&keys).unwrap();
    let (access, secret) = credentials.default_pair().unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    let host = s3_url.trim_start_matches("http://");
    headers.insert("host", host.parse().unwrap());
    sign(
        &method,
        path,
        query,
        &mut headers,
        access,
        secret,
        &sha256_hex(body),
        SystemTime::now(),
    )
    .unwrap();
    let url = match query {
        Some(q) => format!("{s3_url}{path}?{q}"),
        None => format!("{s3_url}{path}"),
    };
    reqwest::Client::new()
        .request(method, url)
        .headers(headers)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

fn blob_files(data_dir: &Path) -> HashSet<PathBuf> {
    std::fs::read_dir(data_dir.join("objects/blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn xml_field(xml: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let start = xml.find(&open).unwrap() + open.len();
    let end = start + xml[start..].find(&format!("</{name}>")).unwrap();
    xml[start..end].to_owned()
}

#[tokio::test]
async fn abandoned_multipart_uploads_expire_and_their_parts_leave_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (s, s3) = start_with_s3(&data, |c| c.retention = retention(|_| {})).await;
    assert!(s
        .send(Method::PUT, "/v1/buckets/box")
        .await
        .status()
        .is_success());
    let call = |method: Method, path: &'static str, query: Option<String>, body: Vec<u8>| {
        let (s3, data) = (s3.clone(), data.clone());
        async move { s3_call(&s3, &data, method, path, query.as_deref(), &body).await }
    };
    // Starts an upload and sends its one part: the upload id, the part's ETag and blob.
    let upload = |key: &'static str, body: &'static [u8]| {
        let call = &call;
        let data = &data;
        async move {
            let created = call(Method::POST, key, Some("uploads".into()), Vec::new()).await;
            assert_eq!(created.status(), 200);
            let id = xml_field(&created.text().await.unwrap(), "UploadId");
            let before = blob_files(data);
            let part = call(
                Method::PUT,
                key,
                Some(format!("partNumber=1&uploadId={id}")),
                body.to_vec(),
            )
            .await;
            assert_eq!(part.status(), 200);
            let etag = part.headers()["etag"].to_str().unwrap().to_owned();
            let blobs: Vec<PathBuf> = blob_files(data).difference(&before).cloned().collect();
            assert_eq!(blobs.len(), 1);
            (id, etag, blobs[0].clone())
        }
    };
    let (old, _, old_blob) = upload("/box/old.bin", b"abandoned bytes").await;
    s.clock.advance(6 * DAY);
    let (new, new_etag, new_blob) = upload("/box/new.bin", b"recent bytes").await;
    // Eight and two days after they started; the default aborts after seven.
    s.clock.advance(2 * DAY);
    until("the old upload to expire", || async {
        let parts = call(
            Method::GET,
            "/box/old.bin",
            Some(format!("uploadId={old}")),
            Vec::new(),
        )
        .await;
        (parts.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(!old_blob.exists(), "the old part's bytes are deleted");
    assert!(new_blob.exists());
    let listing = call(Method::GET, "/box", Some("uploads".into()), Vec::new())
        .await
        .text()
        .await
        .unwrap();
    assert!(
        listing.contains(&new) && !listing.contains(&old),
        "{listing}"
    );
    // The expired upload takes no more parts, and keeps no bytes of one sent late.
    let before = blob_files(&data);
    let late = call(
        Method::PUT,
        "/box/old.bin",
        Some(format!("partNumber=2&uploadId={old}")),
        b"late".to_vec(),
    )
    .await;
    assert_eq!(late.status(), 404);
    assert!(late.text().await.unwrap().contains("NoSuchUpload"));
    until("the late part's bytes to go", || async {
        (blob_files(&data) == before).then_some(())
    })
    .await;
    // The recent one completes.
    let complete = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{new_etag}</ETag></Part></CompleteMultipartUpload>"
    );
    let done = call(
        Method::POST,
        "/box/new.bin",
        Some(format!("uploadId={new}")),
        complete.into_bytes(),
    )
    .await;
    assert_eq!(done.status(), 200);
    let object = call(Method::GET, "/box/new.bin", None, Vec::new()).await;
    assert_eq!(object.bytes().await.unwrap().as_ref(), b"recent bytes");
    s.stop().await;
}

/// Latencies of `healthy` calls made by `clients` callers until `done` (or a bound).
async fn storm(
    s: Arc<Running>,
    clients: usize,
    done: Arc<AtomicBool>,
    max: usize,
) -> Vec<Duration> {
    let mut callers = Vec::new();
    for _ in 0..clients {
        let (s, done) = (s.clone(), done.clone());
        callers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::SeqCst) && latencies.len() < max && Instant::now() < deadline
            {
                let started = Instant::now();
                let r = s.invoke("healthy", "ping").await;
                assert_eq!(r.status(), 200, "the healthy function failed");
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for c in callers {
        all.extend(c.await.unwrap());
    }
    all.sort();
    all
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Writes the history of a noisy function straight into a stopped server's store: `n`
/// records (a real record as template) with a log line each, 20 days before the
/// harness's clock, 100 ms apart.
async fn seed_noisy_history(data: &Path, n: usize) {
    let s = start_with(data, |c| c.retention = retention(|_| {})).await;
    s.deploy("healthy", "echo.wat", FunctionConfig::default())
        .await;
    invoke_id(&s, "healthy", "first").await;
    let page: Page<InvocationRecord> = s.get_json("/v1/functions/healthy/invocations").await;
    let template = page.items[0].clone();
    s.stop().await;
    let history_start = 1_700_000_000_000 - 20 * DAY.as_millis() as u64;
    let store = SqliteStore::open(&data.join("cirrus.db")).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let records: Vec<InvocationRecord> = chunk
            .iter()
            .map(|i| InvocationRecord {
                request_id: format!("noisy-{i}"),
                function: "noisy".into(),
                started_at: cirrus_server::clock::rfc3339(history_start + *i as u64 * 100),
                billed_ms: 1 + (*i as u64 % 7),
                memory_mb: 128,
                cold_start: i % 100 == 0,
                ..template.clone()
            })
            .collect();
        let logs: Vec<LogLine> = records
            .iter()
            .map(|r| LogLine {
                time: r.started_at.clone(),
                function: r.function.clone(),
                version: 1,
                request_id: r.request_id.clone(),
                stream: cirrus_api::LogStream::Stderr,
                line: format!("a line of noise from {}", r.request_id),
            })
            .collect();
        store.write_batch(&records, &logs).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_keep_answering_while_a_large_prune_runs() {
    const NOISY: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // About three hours of history, a hundred thousand calls.
    seed_noisy_history(&data, NOISY).await;
    let s = Arc::new(start_with(&data, |c| c.retention = retention(|_| {})).await);
    let period = "from=2023-10-25&to=2023-10-27&group_by=hour";
    let usage_before = usage(&s, period).await;
    assert_eq!(usage_before["total"]["requests"], NOISY);
    // The same callers for a few seconds without pruning, for comparison.
    let quiet = Arc::new(AtomicBool::new(false));
    let baseline = tokio::spawn(storm(s.clone(), 4, quiet.clone(), 20_000));
    tokio::time::sleep(Duration::from_secs(5)).await;
    quiet.store(true, Ordering::SeqCst);
    let baseline = baseline.await.unwrap();

    // 31 days old now: the next pass prunes all of it while four callers keep calling.
    let done = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(storm(s.clone(), 4, done.clone(), 50_000));
    s.clock.advance(11 * DAY);
    let started = Instant::now();
    until("the noisy history to go", || async {
        recorded(&s, "noisy").await.is_empty().then_some(())
    })
    .await;
    let took = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let during = during.await.unwrap();
    let rate = |calls: &[Duration], over: Duration| calls.len() as f64 / over.as_secs_f64();
    eprintln!(
        "pruned {NOISY} records in {took:.1?}; healthy calls before: {:.0}/s, p50 {:.1?}, p99 {:.1?}; during: {:.0}/s, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        rate(&baseline, Duration::from_secs(5)),
        percentile(&baseline, 50),
        percentile(&baseline, 99),
        rate(&during, took),
        percentile(&during, 50),
        percentile(&during, 99),
        during.last().unwrap(),
    );
    assert!(during.len() >= 20, "the calls overlapped the prune");
    assert!(
        *during.last().unwrap() < Duration::from_secs(2),
        "no call waited behind the prune for long"
    );
    assert_eq!(usage(&s, period).await, usage_before);
    let month = usage(&s, "group_by=function").await;
    let healthy = 1 + baseline.len() + during.len();
    assert_eq!(month["rows"][0]["key"], "healthy");
    assert_eq!(
        month["rows"][0]["requests"], healthy,
        "every call was recorded"
    );
    Arc::into_inner(s).unwrap().stop().await;
}

#[tokio::test]
async fn pruned_pages_go_back_to_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    seed_noisy_history(&data, 30_000).await;
    let size_before = std::fs::metadata(data.join("cirrus.db")).unwrap().len();
    let (pages_before, _) = pages(&data);
    let s = start_with(&data, |c| c.retention = retention(|_| {})).await;
    s.clock.advance(11 * DAY);
    // An eighth of the file stays free for the next records to reuse.
    // The file itself shrinks too, not only SQLite's count of pages, while the server runs.
    let (pages_after, free_after, size_after) = until("the database to shrink", || async {
        let (pages, free) = pages(&data);
        let size = std::fs::metadata(data.join("cirrus.db")).unwrap().len();
        (pages < pages_before / 2 && free <= (pages / 8).max(256) && size < size_before / 2)
            .then_some((pages, free, size))
    })
    .await;
    eprintln!("database: {pages_before} pages ({size_before} bytes) → {pages_after} pages, {free_after} free ({size_after} bytes)");
    assert!(recorded(&s, "noisy").await.is_empty());
    s.stop().await;
}

/// The database's pages, and how many of them are free.
fn pages(data: &Path) -> (u64, u64) {
    let db = rusqlite::Connection::open(data.join("cirrus.db")).unwrap();
    let pragma = |name: &str| -> u64 {
        db.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    };
    (pragma("page_count"), pragma("freelist_count"))
}
