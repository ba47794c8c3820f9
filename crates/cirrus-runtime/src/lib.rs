//! Everything wasmtime, nothing else.
//!
//! - [`engine`]: the one `Engine` per process (pooling allocator behind a probe, epoch
//!   interruption, copy-on-write memory images) and the epoch ticker.
//! - [`artifact`]: recognising what a user uploaded (component, command module, WAT).
//! - [`cache`]: compiled code on disk, keyed by artifact hash + engine fingerprint.
//! - [`limits`]: the per-invocation memory cap and peak-memory meter.
//! - [`pipe`]: bounded in-memory stdout/stderr.
//! - [`http`] and [`command`]: running one invocation of each guest contract.
//!
//! The server calls [`Runtime::prepare`] at deploy time (compile once, check linking),
//! [`Runtime::load`] on a cold start (deserialize from the cache) and
//! [`LoadedVersion::invoke`] for every invocation (fresh instance and store each time).

pub mod artifact;
pub mod cache;
mod command;
pub mod engine;
mod http;
pub mod limits;
pub mod pipe;
mod run;

pub use artifact::{Artifact, ArtifactError};
pub use engine::{Runtime, RuntimeConfig};

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

/// One event for one run: a buffered HTTP request plus what the guest may see.
pub struct Invocation {
    /// Method, path-and-query as the function sees it, headers and the whole body.
    pub request: hyper::Request<Bytes>,
    /// The guest's environment: the function's `env` plus the platform's `CIRRUS_*`.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Hosts outbound HTTP may reach; empty denies all.
    pub allowed_hosts: Arc<[String]>,
    /// How the guest's calls to the platform itself are marked, when it may make any.
    pub platform: Option<PlatformCalls>,
    /// Resolves if the invocation's caller goes away: the guest is then stopped and the
    /// result is `cancelled`. `None` runs it to its end whatever happens to the caller.
    pub cancelled: Option<Cancelled>,
}

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
}

impl LoadedVersion {
    pub fn kind(&self) -> ArtifactKind {
        self.kind
    }

    /// Runs one invocation in a fresh instance. Never panics on guest misbehaviour:
    /// traps, timeouts and limit breaches come back as errors in [`InvokeOutput::result`].
    pub async fn invoke(&self, invocation: Invocation) -> InvokeOutput {
        match &self.pre {
            Pre::Http(pre) => http::invoke(pre, invocation).await,
            Pre::Command(pre) => command::invoke(pre, invocation).await,
        }
    }
}
