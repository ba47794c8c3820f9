//! Native Lambda runtimes: unmodified Python, Node.js and custom-runtime (`provided`)
//! handlers, each environment a sandboxed process speaking the Lambda Runtime API.
//!
//! An environment is one process tree in a bubblewrap sandbox and its own cgroups
//! (memory, pids, CPU accounting). Starting it (a cold start) runs the runtime until it
//! first asks for an event; each invocation hands it one event through the Runtime API
//! and waits for the answer. It stays warm between invocations, blocked in that request
//! (no CPU), and is retired by dropping it, which kills everything in its cgroups.

mod cgroup;
mod egress;
mod runtime_api;
mod sandbox;
mod seccomp;
mod streaming;

use crate::executor::{BoxFuture, Code, Environment, EnvironmentSpec, Executor, StartFailure};
use crate::{Invocation, InvokeOutput, LogEntry, VersionSpec};
use bytes::Bytes;
use cirrus_api::{ApiError, ErrorCode, LogStream};
use runtime_api::{Init, Reply, RuntimeApi};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

const PYTHON_BOOTSTRAP: &str = include_str!("bootstrap.py");
const NODE_BOOTSTRAP: &str = include_str!("bootstrap.mjs");
/// Lambda's limit on a runtime's initialisation.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// A deployment package unzips to at most this (Lambda's 250 MB).
const MAX_UNZIPPED: u64 = 250 << 20;

/// The runtimes this host can run, by Lambda's names.
#[derive(Debug, Clone, Default)]
pub struct Runtimes {
    /// `python3.11` → `/usr/bin/python3.11`.
    interpreters: BTreeMap<String, PathBuf>,
}

impl Runtimes {
    /// Looks for the host's Python (by minor version) and Node.js (by major version).
    pub fn detect() -> Self {
        let mut interpreters = BTreeMap::new();
        for minor in 8..=14 {
            let path = PathBuf::from(format!("/usr/bin/python3.{minor}"));
            if path.exists() {
                interpreters.insert(format!("python3.{minor}"), path);
            }
        }
        let node = PathBuf::from("/usr/bin/node");
        if let Ok(out) = std::process::Command::new(&node).arg("--version").output() {
            let version = String::from_utf8_lossy(&out.stdout);
            if let Some(major) = version.trim().trim_start_matches('v').split('.').next() {
                interpreters.insert(format!("nodejs{major}.x"), node);
            }
        }
        Self { interpreters }
    }

    /// Every runtime name this host accepts.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.interpreters.keys().cloned().collect();
        names.extend([
            "provided".to_owned(),
            "provided.al2023".to_owned(),
            "provided.al2".to_owned(),
        ]);
        names
    }

    /// The command that runs `runtime` inside the sandbox.
    fn command(&self, runtime: &str) -> Result<Vec<String>, String> {
        if runtime.starts_with("provided") && self.names().iter().any(|n| n == runtime) {
            return Ok(vec!["/var/task/bootstrap".to_owned()]);
        }
        let path = self.interpreters.get(runtime).ok_or_else(|| {
            format!(
                "runtime {runtime:?} is not available on this host; it has {}",
                self.names().join(", ")
            )
        })?;
        let path = path.display().to_string();
        Ok(if runtime.starts_with("python") {
            vec![
                path,
                "-I".into(),
                "-S".into(),
                "/opt/cirrus/bootstrap.py".into(),
            ]
        } else {
            vec![path, "/opt/cirrus/bootstrap.mjs".into()]
        })
    }
}

/// Why native runtimes cannot run here, if they cannot: the host must be able to
/// confine them (bubblewrap and cgroups), never run them unconfined.
pub fn host_support() -> Result<(), String> {
    sandbox::check()?;
    cgroup::check()
}

/// Checks a package for `runtime` at deploy time: the runtime exists here, the zip
/// opens and holds what the runtime runs (a `bootstrap` for `provided`).
pub fn check_package(runtimes: &Runtimes, runtime: &str, zip: &[u8]) -> Result<(), String> {
    runtimes.command(runtime)?;
    let archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| format!("Could not unzip uploaded file: {e}"))?;
    if runtime.starts_with("provided") && archive.index_for_name("bootstrap").is_none() {
        return Err(
            "a provided runtime's package needs an executable `bootstrap` at its root".into(),
        );
    }
    Ok(())
}

pub struct NativeExecutor {
    /// Unpacked code, by artifact id, and the bootstraps.
    root: PathBuf,
    runtimes: Runtimes,
    /// The compiled seccomp filters every sandbox loads.
    seccomp: Arc<[PathBuf]>,
}

impl NativeExecutor {
    pub fn new(root: &Path, runtimes: Runtimes) -> std::io::Result<Self> {
        let bootstraps = root.join("bootstrap");
        std::fs::create_dir_all(&bootstraps)?;
        std::fs::write(bootstraps.join("bootstrap.py"), PYTHON_BOOTSTRAP)?;
        std::fs::write(bootstraps.join("bootstrap.mjs"), NODE_BOOTSTRAP)?;
        std::fs::create_dir_all(root.join("code"))?;
        let filters = root.join("seccomp");
        std::fs::create_dir_all(&filters)?;
        let seccomp = seccomp::write(&filters).map_err(std::io::Error::other)?;
        Ok(Self {
            root: root.to_owned(),
            runtimes,
            seccomp: seccomp.into(),
        })
    }
}

impl Executor for NativeExecutor {
    fn load(&self, version: VersionSpec) -> BoxFuture<'_, Result<Arc<dyn Code>, ApiError>> {
        Box::pin(async move {
            let runtime = version.runtime.clone().unwrap_or_default();
            let command = self
                .runtimes
                .command(&runtime)
                .map_err(ApiError::bad_request)?;
            let dir = self.root.join("code").join(&version.sha256);
            let zip = version.artifact_path.clone();
            let target = dir.clone();
            tokio::task::spawn_blocking(move || unpack(&zip, &target))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(format!("unpacking the package: {e}")))?;
            Ok(Arc::new(NativeCode {
                dir,
                bootstraps: self.root.join("bootstrap"),
                command,
                handler: version.handler.clone().unwrap_or_default(),
                function: version.function.clone(),
                version: version.version,
                seccomp: self.seccomp.clone(),
            }) as Arc<dyn Code>)
        })
    }
}

/// Unpacks a zip once (into a temporary directory renamed into place), with the
/// executable bits it carries and a cap on its unzipped size.
fn unpack(zip: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    let staging = tempfile::tempdir_in(parent)?;
    let mut archive =
        zip::ZipArchive::new(std::fs::File::open(zip)?).map_err(std::io::Error::other)?;
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(std::io::Error::other)?;
        let Some(relative) = entry.enclosed_name() else {
            continue;
        };
        let path = staging.path().join(relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&path)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut data = Vec::new();
        (&mut entry)
            .take(MAX_UNZIPPED - total + 1)
            .read_to_end(&mut data)?;
        total += data.len() as u64;
        if total > MAX_UNZIPPED {
            return Err(std::io::Error::other(
                "the package unzips to more than 250 MB",
            ));
        }
        std::fs::write(&path, data)?;
        use std::os::unix::fs::PermissionsExt as _;
        let executable = entry.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))?;
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, dir) {
        let _ = std::fs::remove_dir_all(&staged);
        if !dir.exists() {
            return Err(e);
        }
    }
    Ok(())
}

struct NativeCode {
    dir: PathBuf,
    bootstraps: PathBuf,
    command: Vec<String>,
    handler: String,
    function: String,
    version: u32,
    seccomp: Arc<[PathBuf]>,
}

static ENVIRONMENTS: AtomicU64 = AtomicU64::new(0);

/// Lines of one stream, kept until the invocation they belong to collects them.
type Logs = Arc<Mutex<(Vec<LogEntry>, usize)>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn collect(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    kind: LogStream,
    logs: Logs,
    max: usize,
) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut logs = lock(&logs);
            if logs.1 + line.len() > max {
                continue;
            }
            logs.1 += line.len();
            logs.0.push(LogEntry { stream: kind, line });
        }
    });
}

impl Code for NativeCode {
    fn reusable(&self) -> bool {
        true
    }

    fn start(
        self: Arc<Self>,
        spec: EnvironmentSpec,
    ) -> BoxFuture<'static, Result<Box<dyn Environment>, StartFailure>> {
        Box::pin(async move {
            let id = format!(
                "{}-{}-{}",
                std::process::id(),
                ENVIRONMENTS.fetch_add(1, Ordering::Relaxed),
                self.function
            );
            let failed = |what: &str, e: &dyn std::fmt::Display| {
                StartFailure::from(ApiError::internal(format!("{what}: {e}")))
            };
            let cgroup = cgroup::Cgroup::create(&id, spec.memory_bytes)
                .map_err(|e| failed("creating the environment's cgroups", &e))?;
            let mut env = lambda_env(&self, &spec);
            env.extend(spec.env.iter().cloned());
            // With storage grants: the platform API answers at its own port inside the
            // sandbox too (see `egress`), and `CIRRUS_TOKEN` is the stand-in each call's
            // token replaces, as for WebAssembly functions.
            let platform = platform_address(&env);
            if let Some(token) = &spec.token {
                env.push(("CIRRUS_TOKEN".into(), token.clone()));
            }
            if let Some((_, inside)) = &platform {
                for (name, value) in env.iter_mut() {
                    if name == "CIRRUS_API" {
                        *value = format!("http://{inside}");
                    }
                }
            }
            let procs = cgroup.procs_files();
            let mut command = sandbox::command(&sandbox::Spec {
                code: &self.dir,
                bootstraps: &self.bootstraps,
                command: &self.command,
                env: &env,
                cgroup_procs: &procs,
                seccomp: &self.seccomp,
            });
            command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let mut child = command
                .spawn()
                .map_err(|e| failed("starting the sandbox", &e))?;
            let logs: Logs = Arc::new(Mutex::new((Vec::new(), 0)));
            if let Some(out) = child.stdout.take() {
                collect(out, LogStream::Stdout, logs.clone(), spec.max_log_bytes);
            }
            if let Some(err) = child.stderr.take() {
                collect(err, LogStream::Stderr, logs.clone(), spec.max_log_bytes);
            }
            let pid = child
                .id()
                .ok_or_else(|| failed("starting the sandbox", &"no pid"))?;
            let init_pid = sandbox::child_of(pid)
                .await
                .map_err(|e| failed("starting the sandbox", &e))?;
            let mut addresses = vec![runtime_api::ADDRESS.to_owned(), egress::ADDRESS.to_owned()];
            addresses.extend(platform.iter().map(|(_, inside)| inside.clone()));
            let mut listeners = sandbox::listen_in(init_pid, addresses)
                .await
                .map_err(|e| failed("opening the Runtime API", &e))?
                .into_iter();
            let (Some(listener), Some(proxy)) = (listeners.next(), listeners.next()) else {
                return Err(failed("opening the Runtime API", &"no listener"));
            };
            let forwarder = listeners
                .next()
                .zip(platform.map(|(authority, _)| authority));
            let api =
                RuntimeApi::serve(listener).map_err(|e| failed("opening the Runtime API", &e))?;
            let egress = egress::Egress::serve(proxy, forwarder)
                .map_err(|e| failed("opening the egress proxy", &e))?;
            // Init may call out too (an SDK client fetching its configuration): with the
            // function's own grants, until an invocation brings its policy.
            egress.allow(crate::http::OutboundPolicy {
                allowed_hosts: spec.allowed_hosts.clone().into(),
                platform: None,
                env_token: None,
            });
            if let Some(mut stdin) = child.stdin.take() {
                // Lets bubblewrap run the runtime (`--block-fd 0`).
                stdin
                    .write_all(b"\n")
                    .await
                    .map_err(|e| failed("starting the runtime", &e))?;
            }
            let mut init = api.init.clone();
            let ready = tokio::time::timeout(INIT_TIMEOUT.max(spec.timeout), async {
                loop {
                    match &*init.borrow_and_update() {
                        Init::Ready => return Ok(()),
                        Init::Failed(document) => return Err(init_error(document)),
                        Init::Starting => {}
                    }
                    tokio::select! {
                        changed = init.changed() => if changed.is_err() {
                            return Err(ApiError::internal("the Runtime API stopped"));
                        },
                        status = child.wait() => {
                            let document = match &*init.borrow() {
                                Init::Failed(document) => document.clone(),
                                _ => String::new(),
                            };
                            if !document.is_empty() {
                                return Err(init_error(&document));
                            }
                            return Err(exited(status.ok(), &cgroup, "while starting"));
                        }
                    }
                }
            })
            .await;
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorCode::Timeout,
                        "the runtime did not finish initialising within its time limit",
                    )
                    .into())
                }
            }
            Ok(Box::new(NativeEnvironment {
                child,
                cgroup,
                api,
                egress,
                logs,
                broken: false,
                arn_base: format!(
                    "arn:aws:lambda:us-east-1:000000000000:function:{}",
                    self.function
                ),
                init_logs: true,
                env_token: spec.token.clone(),
                streamed: None,
            }) as Box<dyn Environment>)
        })
    }
}

/// Where a function with storage grants reaches the platform: its address
/// (`CIRRUS_API`) and the address inside the sandbox that stands for it, on the same
/// port unless that is one the sandbox uses already.
fn platform_address(env: &[(String, String)]) -> Option<(String, String)> {
    let api = env.iter().find(|(k, _)| k == "CIRRUS_API")?.1.as_str();
    let authority = api
        .strip_prefix("http://")?
        .trim_end_matches('/')
        .to_owned();
    let port: u16 = authority.rsplit_once(':')?.1.parse().ok()?;
    let taken = [runtime_api::ADDRESS, egress::ADDRESS]
        .iter()
        .any(|a| a.ends_with(&format!(":{port}")));
    let inside = format!("127.0.0.1:{}", if taken { 9003 } else { port });
    Some((authority, inside))
}

/// What Lambda sets in every environment.
fn lambda_env(code: &NativeCode, spec: &EnvironmentSpec) -> Vec<(String, String)> {
    let memory_mb = (spec.memory_bytes >> 20).to_string();
    let proxy = format!("http://{}", egress::ADDRESS);
    [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api::ADDRESS.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", code.function.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", code.version.to_string()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", code.function),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "cirrus".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_EXECUTION_ENV", "AWS_Lambda_cirrus".to_owned()),
        ("LAMBDA_TASK_ROOT", "/var/task".to_owned()),
        ("LAMBDA_RUNTIME_DIR", "/opt/cirrus".to_owned()),
        ("_HANDLER", code.handler.clone()),
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME", "/tmp".to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("TZ", ":UTC".to_owned()),
        // The sandbox's one way out (see `egress`); the Runtime API is reached directly.
        ("HTTP_PROXY", proxy.clone()),
        ("HTTPS_PROXY", proxy.clone()),
        ("http_proxy", proxy.clone()),
        ("https_proxy", proxy),
        ("NO_PROXY", "127.0.0.1".to_owned()),
        ("no_proxy", "127.0.0.1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The error document a runtime posted; one that is not Lambda's JSON shape is
/// wrapped in it, typed by `Lambda-Runtime-Function-Error-Type`.
fn error_document(document: &[u8], kind: &str) -> String {
    let text = String::from_utf8_lossy(document);
    let shaped = serde_json::from_str::<serde_json::Value>(&text)
        .is_ok_and(|d| d.get("errorType").is_some_and(serde_json::Value::is_string));
    if shaped {
        return text.into_owned();
    }
    serde_json::json!({ "errorType": kind, "errorMessage": text, "stackTrace": [] }).to_string()
}

/// An init failure the runtime reported: its error document, as the function's error.
fn init_error(document: &str) -> ApiError {
    ApiError::new(ErrorCode::FunctionError, document.to_owned())
}

/// The runtime process ended: out of memory, or exited.
fn exited(
    status: Option<std::process::ExitStatus>,
    cgroup: &cgroup::Cgroup,
    when: &str,
) -> ApiError {
    if cgroup.oom_killed() {
        return ApiError::new(
            ErrorCode::MemoryLimitExceeded,
            format!("the runtime ran out of memory {when} and was killed; raise `memory_mb`"),
        );
    }
    let status = status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
    ApiError::new(
        ErrorCode::FunctionError,
        format!("function exited with status {status} {when} (Runtime exited with error)"),
    )
}

struct NativeEnvironment {
    child: tokio::process::Child,
    cgroup: cgroup::Cgroup,
    api: RuntimeApi,
    egress: egress::Egress,
    logs: Logs,
    broken: bool,
    arn_base: String,
    /// The first invocation also gets what the runtime logged while starting.
    init_logs: bool,
    /// The stand-in `CIRRUS_TOKEN` the environment started with.
    env_token: Option<String>,
    /// Body bytes the last invocation streamed to its caller.
    streamed: Option<u64>,
}

impl NativeEnvironment {
    fn take_logs(&mut self) -> Vec<LogEntry> {
        self.init_logs = false;
        let mut logs = lock(&self.logs);
        logs.1 = 0;
        std::mem::take(&mut logs.0)
    }

    async fn run(
        &mut self,
        mut invocation: Invocation,
    ) -> Result<hyper::Response<Bytes>, ApiError> {
        let stream = invocation.stream.take();
        let context = &invocation.context;
        let mut headers = vec![
            (
                "lambda-runtime-deadline-ms",
                context.deadline_ms.to_string(),
            ),
            (
                "lambda-runtime-invoked-function-arn",
                format!("{}:{}", self.arn_base, context.version),
            ),
            ("lambda-runtime-trace-id", context.traceparent.clone()),
        ];
        if let Some(client) = invocation
            .request
            .headers()
            .get("cirrus-client-context")
            .and_then(|v| v.to_str().ok())
        {
            use base64::Engine as _;
            if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(client) {
                headers.push((
                    "lambda-runtime-client-context",
                    String::from_utf8_lossy(&raw).into_owned(),
                ));
            }
        }
        // HTTP calls (`/fn/`, routes) arrive as API Gateway HTTP API (v2) events, as a
        // function URL delivers them; everything else is the event as sent.
        let http = context.event_type == "http";
        let body = if http {
            http_event(&invocation.request, &context.request_id)
        } else {
            invocation.request.body().clone()
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let event = runtime_api::Event {
            request_id: context.request_id.clone(),
            body,
            headers,
            reply,
        };
        if self.api.events.send(event).await.is_err() {
            self.broken = true;
            return Err(ApiError::internal("the environment's Runtime API is gone"));
        }
        let timeout = invocation.limits.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || {
            ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "function did not finish within its timeout of {}; raise `timeout` or make it faster",
                    cirrus_api::duration::format(timeout)
                ),
            )
        };
        let cancelled = async {
            match invocation.cancelled {
                Some(cancelled) => cancelled.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cancelled);
        let reply = tokio::select! {
            reply = answer => reply,
            status = self.child.wait() => {
                self.broken = true;
                return Err(exited(status.ok(), &self.cgroup, "during the invocation"));
            }
            () = tokio::time::sleep_until(deadline) => {
                self.broken = true;
                return Err(timed_out());
            }
            () = &mut cancelled => {
                self.broken = true;
                return Err(ApiError::new(ErrorCode::Cancelled, "the caller went away"));
            }
        };
        match reply {
            Ok(Reply::Response(body)) if http => Ok(http_response(body)),
            Ok(Reply::Response(body)) => {
                let mut response = hyper::Response::new(body);
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                Ok(response)
            }
            Ok(Reply::Error { document, kind }) => Err(ApiError::new(
                ErrorCode::FunctionError,
                error_document(&document, &kind),
            )),
            Ok(Reply::Stream {
                content_type,
                body,
                done,
            }) => {
                let limit = invocation.limits.max_response_bytes;
                let mut sent = None;
                let forwarding =
                    streaming::forward(content_type, body, stream, limit, http, &mut sent);
                let result = tokio::select! {
                    result = forwarding => result,
                    status = self.child.wait() => {
                        self.broken = true;
                        Err(exited(status.ok(), &self.cgroup, "during the invocation"))
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        self.broken = true;
                        Err(timed_out())
                    }
                    () = &mut cancelled => {
                        self.broken = true;
                        Err(ApiError::new(ErrorCode::Cancelled, "the caller went away"))
                    }
                };
                if result
                    .as_ref()
                    .is_err_and(|e| e.code == ErrorCode::Cancelled)
                {
                    self.broken = true;
                }
                self.streamed = sent;
                // The runtime's POST is answered now.
                drop(done);
                result
            }
            Err(_) => {
                self.broken = true;
                let status = self.child.wait().await.ok();
                Err(exited(status, &self.cgroup, "during the invocation"))
            }
        }
    }
}

impl Environment for NativeEnvironment {
    fn invoke(&mut self, invocation: Invocation) -> BoxFuture<'_, InvokeOutput> {
        Box::pin(async move {
            if !self.init_logs {
                self.take_logs();
            }
            self.egress.allow(crate::http::OutboundPolicy {
                allowed_hosts: invocation.allowed_hosts.clone(),
                platform: invocation.platform.clone(),
                env_token: self.env_token.clone(),
            });
            self.cgroup.reset_peak();
            self.streamed = None;
            let cpu_before = self.cgroup.cpu_ns();
            let result = self.run(invocation).await;
            // Output written just before the answer may still be on its way through the
            // pipes: let the readers run before the lines are taken.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            let cpu = self.cgroup.cpu_ns().saturating_sub(cpu_before);
            InvokeOutput {
                result,
                peak_memory_bytes: self.cgroup.peak_memory(),
                cpu_time: Duration::from_nanos(cpu),
                logs: self.take_logs(),
                streamed_bytes: self.streamed,
            }
        })
    }

    fn reusable(&self) -> bool {
        !self.broken
    }

    fn memory_bytes(&self) -> u64 {
        self.cgroup.memory()
    }
}

/// An HTTP request as an API Gateway HTTP API payload (version 2.0).
fn http_event(request: &hyper::Request<Bytes>, request_id: &str) -> Bytes {
    use base64::Engine as _;
    let mut headers = serde_json::Map::new();
    let mut cookies = Vec::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == hyper::header::COOKIE {
            cookies.extend(value.split(';').map(|c| c.trim().to_owned()));
            continue;
        }
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::String(joined)) => {
                joined.push(',');
                joined.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), value.into());
            }
        }
    }
    let query = request.uri().query().unwrap_or("");
    let mut parameters = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        parameters.insert(k.to_owned(), v.into());
    }
    let (body, encoded) = match std::str::from_utf8(request.body()) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(request.body()),
            true,
        ),
    };
    let path = request.uri().path();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut event = serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "cirrus",
            "domainName": request.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
            "http": {
                "method": request.method().as_str(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "",
                "userAgent": request.headers().get(hyper::header::USER_AGENT).and_then(|h| h.to_str().ok()).unwrap_or(""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": now,
        },
        "isBase64Encoded": encoded,
    });
    if !cookies.is_empty() {
        event["cookies"] = cookies.into();
    }
    if !parameters.is_empty() {
        event["queryStringParameters"] = parameters.into();
    }
    if !request.body().is_empty() {
        event["body"] = body.into();
    }
    Bytes::from(event.to_string())
}

/// A handler's answer to an HTTP event: `{statusCode, headers, cookies, body,
/// isBase64Encoded}`, or (as API Gateway does) any other JSON value as a 200 JSON body.
fn http_response(answer: Bytes) -> hyper::Response<Bytes> {
    use base64::Engine as _;
    let shaped = serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .filter(|v| v.get("statusCode").is_some());
    let Some(doc) = shaped else {
        let mut response = hyper::Response::new(answer);
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return response;
    };
    let body = match doc.get("body") {
        Some(serde_json::Value::String(text)) if doc["isBase64Encoded"] == true => {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap_or_default()
        }
        Some(serde_json::Value::String(text)) => text.clone().into_bytes(),
        Some(serde_json::Value::Null) | None => Vec::new(),
        Some(other) => other.to_string().into_bytes(),
    };
    let mut response = hyper::Response::new(Bytes::from(body));
    let status = doc["statusCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok());
    *response.status_mut() = status
        .and_then(|s| hyper::StatusCode::from_u16(s).ok())
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(headers) = doc.get("headers").and_then(serde_json::Value::as_object) {
        for (name, value) in headers {
            let value = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            if let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::try_from(name.as_str()),
                hyper::header::HeaderValue::try_from(value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    if let Some(cookies) = doc.get("cookies").and_then(serde_json::Value::as_array) {
        for cookie in cookies.iter().filter_map(serde_json::Value::as_str) {
            if let Ok(value) = hyper::header::HeaderValue::try_from(cookie) {
                response
                    .headers_mut()
                    .append(hyper::header::SET_COOKIE, value);
            }
        }
    }
    response
}
