//! The seam between the server and each kind of runtime, shaped like Lambda's lifecycle:
//! *prepare* at deploy, *load* a version's code, *start* an environment from it (a cold
//! start), *invoke* on an environment (warm when it already existed), *retire* it (drop).
//!
//! Nothing here names wasmtime: the scaler and invoker hold these traits, the wasm
//! executor ([`crate::WasmExecutor`]) is one implementation and a native-process runtime
//! is another; tests use a fake.

use crate::{Invocation, InvokeOutput};
use cirrus_api::{ApiError, ArtifactKind};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A version as an executor needs to know it to load its code.
#[derive(Debug, Clone)]
pub struct VersionSpec {
    pub function: String,
    pub version: u32,
    pub sha256: String,
    pub kind: ArtifactKind,
    /// Where the uploaded artifact is, should compiled code have to be rebuilt.
    pub artifact_path: PathBuf,
    /// Native code only: the Lambda runtime (`python3.11`) and handler (`app.handler`).
    pub runtime: Option<String>,
    pub handler: Option<String>,
}

/// What an environment is started with: what stays the same for every invocation it
/// serves.
#[derive(Debug, Clone)]
pub struct EnvironmentSpec {
    /// The function's own variables plus the platform's environment-level `CIRRUS_*`.
    pub env: Vec<(String, String)>,
    /// Linear memory cap (all memories together), held across every invocation.
    pub memory_bytes: u64,
    /// Guest output kept per invocation.
    pub max_log_bytes: usize,
    /// Bounds guest code run while starting (component initialisers).
    pub timeout: std::time::Duration,
    /// The token of the invocation that starts the environment, handed over as
    /// `CIRRUS_TOKEN` where the contract puts it in the environment.
    pub token: Option<String>,
    /// The hosts the function may reach while its environment starts (a native
    /// runtime's init, before any invocation's own policy applies).
    pub allowed_hosts: Vec<String>,
}

/// Why an environment could not be started.
#[derive(Debug, Clone)]
pub struct StartFailure {
    pub error: ApiError,
    /// The host was out of room (instance slots, memory): retiring idle environments or
    /// waiting may help, unlike a guest that fails to initialise.
    pub capacity: bool,
}

impl From<ApiError> for StartFailure {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            capacity: false,
        }
    }
}

/// The executor for each kind of code: WebAssembly, or native when this host can
/// confine native runtimes (else `native` says why not).
pub struct ByKind {
    pub wasm: Arc<dyn Executor>,
    pub native: Result<Arc<dyn Executor>, String>,
}

impl Executor for ByKind {
    fn load(&self, version: VersionSpec) -> BoxFuture<'_, Result<Arc<dyn Code>, ApiError>> {
        match (version.kind, &self.native) {
            (ArtifactKind::Native, Ok(native)) => native.load(version),
            (ArtifactKind::Native, Err(why)) => {
                let why = why.clone();
                Box::pin(async move {
                    Err(ApiError::new(
                        cirrus_api::ErrorCode::Unavailable,
                        format!("native runtimes are off on this server: {why}"),
                    ))
                })
            }
            _ => self.wasm.load(version),
        }
    }
}

pub trait Executor: Send + Sync + 'static {
    /// Cold-start work that is shared by every environment of a version: get its code
    /// ready (from the compiled-code cache, recompiling if it was lost).
    fn load(&self, version: VersionSpec) -> BoxFuture<'_, Result<Arc<dyn Code>, ApiError>>;
}

/// A version's code, ready to start environments.
pub trait Code: Send + Sync + 'static {
    /// Whether one environment may serve more than one invocation at all (a command
    /// module's `_start` runs once per instance, so its environments cannot).
    fn reusable(&self) -> bool;

    /// Starts an environment: instantiate, link, run the guest's initialisation.
    fn start(
        self: Arc<Self>,
        spec: EnvironmentSpec,
    ) -> BoxFuture<'static, Result<Box<dyn Environment>, StartFailure>>;
}

/// A live sandbox of one version. Serves one invocation at a time; dropping it retires it.
pub trait Environment: Send + 'static {
    /// Runs one invocation. Never panics on guest misbehaviour: traps, timeouts and limit
    /// breaches come back as errors in [`InvokeOutput::result`].
    fn invoke(&mut self, invocation: Invocation) -> BoxFuture<'_, InvokeOutput>;

    /// Whether it may serve another invocation: false once one trapped, timed out, ran
    /// out of memory, was cancelled or otherwise left the guest in an unknown state.
    fn reusable(&self) -> bool;

    /// Linear memory it holds now.
    fn memory_bytes(&self) -> u64;
}
