//! The shared test harness: the server in-process on an ephemeral port, driven over real
//! HTTP with real wasm guests, on a manual clock.

#![allow(dead_code)] // each test binary uses its own part of the harness

use cirrus_api::{DeployResult, ErrorBody, FunctionConfig};
use cirrus_server::{ManualClock, Server, ServerConfig};
use reqwest::{Method, StatusCode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

pub struct Running {
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub sweep: Arc<dyn Fn() -> usize + Send + Sync>,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn start_with(data_dir: &Path, tune: impl FnOnce(&mut ServerConfig)) -> Running {
    let mut config = ServerConfig::new(data_dir);
    config.sweep_interval = Duration::from_secs(3600); // tests sweep explicitly
    tune(&mut config);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let server = Server::start(config, clock.clone())
        .await
        .expect("server starts");
    let token = server.admin_token().to_owned();
    let state = server.state().clone();
    let sweep: Arc<dyn Fn() -> usize + Send + Sync> =
        Arc::new(move || cirrus_server::server::sweep_idle(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        url: format!("http://{addr}"),
        token,
        http: reqwest::Client::new(),
        clock,
        sweep,
        stop: Some(stop),
        task: Some(task),
    }
}

pub async fn start(data_dir: &Path) -> Running {
    start_with(data_dir, |_| {}).await
}

impl Running {
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub async fn deploy_raw(
        &self,
        name: &str,
        artifact: Option<Vec<u8>>,
        config: Option<&FunctionConfig>,
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new();
        if let Some(config) = config {
            form = form.text("config", serde_json::to_string(config).unwrap());
        }
        if let Some(bytes) = artifact {
            form = form.part(
                "artifact",
                reqwest::multipart::Part::bytes(bytes).file_name("f.wasm"),
            );
        }
        self.req(Method::PUT, &format!("/v1/functions/{name}"))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn deploy(
        &self,
        name: &str,
        fixture_name: &str,
        config: FunctionConfig,
    ) -> DeployResult {
        let bytes = std::fs::read(fixture(fixture_name)).unwrap();
        let response = self.deploy_raw(name, Some(bytes), Some(&config)).await;
        assert!(
            response.status().is_success(),
            "deploy {name}: {}",
            response.text().await.unwrap()
        );
        response.json().await.unwrap()
    }

    pub async fn send(&self, method: Method, path: &str) -> reqwest::Response {
        self.req(method, path).send().await.unwrap()
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.send(Method::GET, path).await.json().await.unwrap()
    }

    pub async fn call(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    pub async fn invoke(&self, name: &str, body: &str) -> reqwest::Response {
        self.req(Method::POST, &format!("/v1/functions/{name}/invoke"))
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

pub async fn error_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: ErrorBody = response.json().await.expect("error body is JSON");
    (
        status,
        body.error.code.as_str().to_owned(),
        body.error.message,
    )
}

pub fn small(memory_mb: u32, timeout_ms: u64) -> FunctionConfig {
    FunctionConfig {
        memory_mb,
        timeout: Duration::from_millis(timeout_ms),
        ..Default::default()
    }
}

pub fn example(path: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(path),
    )
    .unwrap()
}

pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    s: &Running,
    what: &str,
    check: impl Fn() -> F,
) -> T {
    for _ in 0..200 {
        if let Some(value) = check().await {
            return value;
        }
        s.clock.advance(Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

pub async fn invoke_async(
    s: &Running,
    name: &str,
    body: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let mut request = s
        .req(Method::POST, &format!("/v1/functions/{name}/invoke"))
        .header("x-cirrus-invocation-type", "Event")
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("x-cirrus-idempotency-key", key);
    }
    request.send().await.unwrap()
}

/// boto3 and the aws CLI, which the Python suites drive (scripts/test installs them).
pub fn python_has_boto3() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import boto3, awscli"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "boto3 and awscli are needed: scripts/test installs them (pip install boto3 awscli)"
    );
}

/// Runs `tests/<dir>/<script>` with `args`; its asserts are the calling test's.
pub async fn python_suite(dir: &str, script: &str, args: &[&std::ffi::OsStr]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir)
        .join(script);
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
