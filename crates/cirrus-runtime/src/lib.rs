//! The executors behind the seam: wasmtime for WebAssembly, and [`native`] for Lambda's
//! Python, Node.js and custom runtimes in sandboxed processes.
//!
//! - [`executor`]: the runtime-neutral seam (executor, code, environment) the server uses.
//! - [`engine`]: the one `Engine` per process (pooling allocator behind a probe, epoch
//!   interruption, copy-on-write memory images) and the epoch ticker.
//! - [`artifact`]: recognising what a user uploaded (component, command module, WAT).
//! - [`cache`]: compiled code on disk, keyed by artifact hash + engine fingerprint.
//! - [`limits`]: the per-environment memory cap, per-invocation peak, server budget.
//! - [`pipe`]: bounded in-memory stdout/stderr.
//! - [`http`] and [`command`]: the environments of each guest contract.
//!
//! The server calls [`Runtime::prepare`] at deploy time (compile once, check linking);
//! through [`WasmExecutor`] it loads code on a cold start (deserialize from the cache),
//! starts environments (instances with their stores) and invokes on them.

pub mod artifact;
pub mod cache;
mod command;
pub mod engine;
pub mod executor;
mod http;
pub mod limits;
pub mod native;
pub mod pipe;
mod run;

pub use artifact::{Artifact, ArtifactError};
pub use engine::{Runtime, RuntimeConfig, WasmExecutor};
pub use executor::{
    ByKind, Code, Environment, EnvironmentSpec, Executor, StartFailure, VersionSpec,
};
pub use limits::MemoryBudget;
pub use run::CpuLanes;

use bytes::Bytes;
use cirrus_api::{ApiError, ArtifactKind, LogStream};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A version ready to run: compiled code and its pre-linked instance template.
pub struct LoadedVersion {
    kind: ArtifactKind,
    pre: Pre,
    /// The deploy-time probe found its instances cannot serve a second request.
    single_use: bool,
    budget: Option<MemoryBudget>,
    lanes: CpuLanes,
}

enum Pre {
    Http(wasmtime_wasi_http::p2::bindings::ProxyPre<http::HttpState>),
    Command(wasmtime::InstancePre<command::CommandState>),
}

/// Per-invocation limits, taken from the function's configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: u64,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub max_log_bytes: usize,
}

/// What the platform knows of one invocation, whatever runs it; each contract builds
/// its guest's view from it (request headers for components, CGI variables for command
/// modules, the Runtime API's headers for native handlers).
#[derive(Debug, Clone)]
pub struct InvocationContext {
    pub request_id: String,
    pub function: String,
    pub version: u32,
    /// The event's kind (`http`, `invoke`, `async`, `object`, …).
    pub event_type: &'static str,
    /// 1 for a first try.
    pub attempt: u32,
    /// W3C `traceparent` naming this invocation.
    pub traceparent: String,
    /// When the invocation times out, in milliseconds since the Unix epoch.
    pub deadline_ms: u64,
}

/// One event for one run: a buffered HTTP request plus what the guest may see.
pub struct Invocation {
    pub context: InvocationContext,
    /// Method, path-and-query as the function sees it, headers and the whole body.
    pub request: hyper::Request<Bytes>,
    pub limits: Limits,
    /// Hosts outbound HTTP may reach; empty denies all.
    pub allowed_hosts: Arc<[String]>,
    /// How the guest's calls to the platform itself are marked, when it may make any.
    pub platform: Option<PlatformCalls>,
    /// Resolves if the invocation's caller goes away: the guest is then stopped and the
    /// result is `cancelled`. `None` runs it to its end whatever happens to the caller.
    pub cancelled: Option<Cancelled>,
    /// Where the response goes while it is being written, when the caller takes it
    /// streamed (components only; others answer buffered whatever this says).
    pub stream: Option<ResponseStream>,
    /// The request body as the client sends it, read as the guest reads it (components
    /// on HTTP triggers); `request`'s own body is then empty.
    pub body: Option<RequestBody>,
}

/// A request body still arriving.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, RequestBodyError>;

/// Why a streamed request body stopped short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBodyError {
    /// It grew past the server's request limit (in bytes).
    TooLarge(u64),
    /// The client broke off.
    Broken,
}

impl std::fmt::Display for RequestBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(limit) => write!(f, "the request body exceeds {limit} bytes"),
            Self::Broken => f.write_str("the request body broke off"),
        }
    }
}

impl std::error::Error for RequestBodyError {}

/// A response handed over while the guest is still writing it. A guest that has not
/// finished its body [`STREAM_AFTER`] after answering gets its head sent here and its
/// body piece by piece; one that finishes sooner is answered buffered, as if there were
/// no stream. The body channel is bounded: a client that reads slowly holds the guest
/// back instead of growing the server's memory.
pub struct ResponseStream {
    pub head: tokio::sync::oneshot::Sender<(hyper::StatusCode, hyper::HeaderMap)>,
    pub body: tokio::sync::mpsc::Sender<Bytes>,
}

/// How long a component's body may take before its response is streamed.
pub const STREAM_AFTER: Duration = Duration::from_millis(40);

/// A signal that an invocation's caller has gone.
pub type Cancelled = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Outgoing requests to the platform's own address get these headers (replacing any the
/// guest set), so the platform knows which invocation is calling it.
#[derive(Debug, Clone)]
pub struct PlatformCalls {
    /// `host:port` of the platform's HTTP API. A request to it, or to a loopback name
    /// (`localhost`, `127.x.x.x`, `[::1]`) with its port, is a call to the platform.
    pub authority: String,
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    /// This invocation's storage token (`CIRRUS_TOKEN`). A warm environment still has the
    /// token it started with in its environment; its calls to the platform are sent with
    /// this one instead.
    pub token: Option<String>,
}

/// One line of guest (or platform) output captured during an invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub stream: LogStream,
    pub line: String,
}

/// What one invocation produced, whether it succeeded or not.
pub struct InvokeOutput {
    pub result: Result<hyper::Response<Bytes>, ApiError>,
    pub peak_memory_bytes: u64,
    /// CPU time the invocation's polls took on their threads: instantiation, guest code
    /// and the host calls it makes (thread CPU time, not fuel: see ARCHITECTURE.md).
    pub cpu_time: Duration,
    pub logs: Vec<LogEntry>,
    /// The body's length when it went through [`Invocation::stream`] (`result`'s body is
    /// then empty); whether it ended well is `result`.
    pub streamed_bytes: Option<u64>,
}

impl LoadedVersion {
    pub fn kind(&self) -> ArtifactKind {
        self.kind
    }
}

impl Code for LoadedVersion {
    fn reusable(&self) -> bool {
        matches!(self.pre, Pre::Http(_)) && !self.single_use
    }

    fn start(
        self: Arc<Self>,
        spec: EnvironmentSpec,
    ) -> executor::BoxFuture<'static, Result<Box<dyn Environment>, StartFailure>> {
        Box::pin(async move {
            let budget = self.budget.clone();
            let lanes = self.lanes.clone();
            match &self.pre {
                Pre::Http(pre) => {
                    let env = http::HttpEnvironment::start(pre, spec, budget, lanes).await?;
                    Ok(Box::new(env) as Box<dyn Environment>)
                }
                Pre::Command(pre) => {
                    let env = command::CommandEnvironment::start(pre, spec, budget, lanes).await?;
                    Ok(Box::new(env) as Box<dyn Environment>)
                }
            }
        })
    }
}
