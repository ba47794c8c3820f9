//! The one `Engine` per process, its linkers and its epoch ticker.

use crate::artifact::{Artifact, ArtifactError};
use crate::cache::CodeCache;
use crate::command::CommandState;
use crate::executor::{BoxFuture, Code, Executor, VersionSpec};
use crate::http::HttpState;
use crate::{CpuLanes, LoadedVersion, MemoryBudget, Pre};
use anyhow::Context as _;
use cirrus_api::ArtifactKind;
use cirrus_api::{ApiError, ErrorCode};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// How often the epoch advances. Guests yield to the scheduler once per tick and
/// timeouts are checked then, so this bounds timeout overshoot; each tick costs one
/// atomic increment.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Pool sizes follow [`RuntimeConfig::instances`], the environments that may exist at
/// once. Slots are reserved as virtual memory up front and made resident only when used.
/// Heavy guests need more than one of some: a componentize-py component has ~75 core
/// instances and several memories, so those pools get a reserve on top.
const POOL_CORE_INSTANCES_RESERVE: u32 = 20_000;
const POOL_MEMORIES_RESERVE: u32 = 2_000;
const POOL_TABLE_ELEMENTS: usize = 100_000;
const POOL_TABLES_PER_MODULE: u32 = 4;
/// Largest linear memory (wasm32's 4 GiB), also the cap of `memory_mb`.
const POOL_MAX_MEMORY: usize = 1 << 32;
/// On instance teardown, up to this much of a slot's written memory is reset in place
/// instead of returned to the kernel (`madvise`, then page faults on the next use); on
/// Linux 6.7+ wasmtime finds those pages with `PAGEMAP_SCAN` wherever they lie. Which
/// size pays depends on the guest. Measured with `scripts/bench-ab` (BENCHMARKS.md, "The
/// fresh path and the pool's resident memory"), CPU per call against 0: 128 KiB saves a
/// C command module 25 % and a WAT one 5 %, and costs a Rust component with `--reuse 1`
/// 6 %, and 2 MiB another 14–27 %. Command modules are always fresh, components rarely:
/// so 128 KiB.
const POOL_MEMORY_KEEP_RESIDENT: usize = 128 << 10;
const POOL_TABLE_KEEP_RESIDENT: usize = 64 << 10;
/// Returning slots to the kernel in batches amortises TLB shootdowns across instances.
const POOL_DECOMMIT_BATCH: usize = 16;

#[derive(Clone)]
pub struct RuntimeConfig {
    /// Where compiled code is cached.
    pub cache_dir: PathBuf,
    /// Try the pooling allocator (falls back to on-demand allocation if the host refuses).
    pub pooling: bool,
    /// Environments (instances with their stores) that may exist at once: invocations in
    /// flight plus idle ones. Sizes the pooling allocator.
    pub instances: u32,
    /// What every environment's linear memory is charged to.
    pub budget: Option<MemoryBudget>,
    /// How many CPU-bound guests run at once.
    pub lanes: CpuLanes,
}

impl RuntimeConfig {
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            pooling: true,
            instances: 1_000,
            budget: None,
            lanes: CpuLanes::for_host(),
        }
    }
}

/// What [`Runtime::prepare`] did.
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    pub kind: ArtifactKind,
    /// Milliseconds spent compiling; zero when the code cache already had it.
    pub compile_ms: u64,
    /// Whether one instance can serve several invocations (false for command modules,
    /// and for components the deploy-time probe caught failing on a second request).
    pub reusable: bool,
}

pub struct Runtime {
    engine: Engine,
    cache: CodeCache,
    http_linker: ComponentLinker<HttpState>,
    command_linker: Linker<CommandState>,
    pooling: bool,
    budget: Option<MemoryBudget>,
    lanes: CpuLanes,
    _ticker: EpochTicker,
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    config.wasm_component_model(true);
    config
}

fn pooling_config(instances: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_add(POOL_CORE_INSTANCES_RESERVE))
        .total_memories(instances.saturating_add(POOL_MEMORIES_RESERVE))
        .total_tables(instances.saturating_mul(2).saturating_add(4_000))
        .total_stacks(instances)
        .table_elements(POOL_TABLE_ELEMENTS)
        .max_tables_per_module(POOL_TABLES_PER_MODULE)
        .max_memory_size(POOL_MAX_MEMORY)
        .linear_memory_keep_resident(POOL_MEMORY_KEEP_RESIDENT)
        .table_keep_resident(POOL_TABLE_KEEP_RESIDENT)
        .decommit_batch_size(POOL_DECOMMIT_BATCH);
    pool
}

/// The pooling allocator reserves its slots when the engine is created; a host with a
/// low virtual-memory limit refuses, and then on-demand allocation still works.
fn build_engine(pooling: bool, instances: u32) -> anyhow::Result<(Engine, bool)> {
    if pooling {
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
            instances,
        )));
        match Engine::new(&config) {
            Ok(engine) => return Ok((engine, true)),
            Err(e) => {
                tracing::warn!("pooling allocator unavailable, using on-demand allocation: {e:#}")
            }
        }
    }
    let engine = Engine::new(&base_config())
        .map_err(anyhow::Error::from)
        .context("creating the wasmtime engine")?;
    Ok((engine, false))
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let (engine, pooling) = build_engine(config.pooling, config.instances.max(1))?;
        let cache = CodeCache::new(&config.cache_dir, &engine)
            .with_context(|| format!("creating code cache {}", config.cache_dir.display()))?;

        let mut http_linker = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut http_linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut http_linker)?;

        let mut command_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut command_linker, |s: &mut CommandState| {
            &mut s.wasi
        })?;

        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            engine,
            cache,
            http_linker,
            command_linker,
            pooling,
            budget: config.budget,
            lanes: config.lanes,
            _ticker: ticker,
        })
    }

    pub fn pooling(&self) -> bool {
        self.pooling
    }

    pub fn cache(&self) -> &CodeCache {
        &self.cache
    }

    pub fn budget(&self) -> Option<&MemoryBudget> {
        self.budget.as_ref()
    }

    /// Deploy-time work, blocking (run it off the async runtime): compile the artifact
    /// unless the cache has it, prove it links against what Cirrus provides, and store
    /// the compiled code so no request ever compiles.
    pub fn prepare(&self, artifact: &Artifact) -> Result<Prepared, ArtifactError> {
        if self.cache.contains(&artifact.sha256) {
            if let Ok(loaded) = self.load_cached(&artifact.sha256, artifact.kind) {
                return Ok(Prepared {
                    kind: artifact.kind,
                    compile_ms: 0,
                    reusable: self.probe(&artifact.sha256, &loaded)?,
                });
            }
        }
        let started = Instant::now();
        let code = match artifact.kind {
            ArtifactKind::HttpComponent => {
                let component = Component::new(&self.engine, &artifact.binary)
                    .map_err(|e| ArtifactError::Compile(format!("{e:#}")))?;
                self.link_component(&component)?;
                component.serialize()
            }
            ArtifactKind::Command => {
                let module = Module::new(&self.engine, &artifact.binary)
                    .map_err(|e| ArtifactError::Compile(format!("{e:#}")))?;
                self.link_module(&module)?;
                module.serialize()
            }
            ArtifactKind::Native => {
                return Err(ArtifactError::Compile(
                    "a native package is not WebAssembly".into(),
                ))
            }
        }
        .map_err(|e| ArtifactError::Compile(format!("serializing compiled code: {e:#}")))?;
        let compile_ms = started.elapsed().as_millis() as u64;
        self.cache
            .store(&artifact.sha256, &code)
            .map_err(|e| ArtifactError::Storage(e.to_string()))?;
        let loaded = self
            .load_cached(&artifact.sha256, artifact.kind)
            .map_err(|e| ArtifactError::Compile(format!("loading compiled code: {e:#}")))?;
        let reusable = self.probe(&artifact.sha256, &loaded)?;
        Ok(Prepared {
            kind: artifact.kind,
            compile_ms,
            reusable,
        })
    }

    /// Cold-start work, blocking: load compiled code from the cache (mmap) and pre-link
    /// it. If the cache lost the entry, recompile from the stored artifact once.
    /// Returns the loaded version and whether it had to compile.
    pub fn load(
        &self,
        sha256: &str,
        kind: ArtifactKind,
        artifact_path: &Path,
    ) -> anyhow::Result<(LoadedVersion, bool)> {
        if self.cache.contains(sha256) {
            match self.load_cached(sha256, kind) {
                Ok(mut loaded) => {
                    // Code cached before the reuse probe existed is judged on first load.
                    if kind == ArtifactKind::HttpComponent && !self.cache.probed(sha256) {
                        loaded.single_use = !self.probe(sha256, &loaded)?;
                    }
                    return Ok((loaded, false));
                }
                Err(e) => {
                    tracing::warn!(sha256, "cached code unusable, recompiling: {e:#}");
                    self.cache.evict(sha256);
                }
            }
        }
        let compiled = self.ensure_compiled(sha256, artifact_path)?;
        Ok((self.load_cached(sha256, kind)?, compiled))
    }

    /// Compiles a stored artifact into the code cache unless it is there already (it is
    /// not after a wasmtime upgrade changes the engine fingerprint). Blocking. Returns
    /// whether it compiled.
    pub fn ensure_compiled(&self, sha256: &str, artifact_path: &Path) -> anyhow::Result<bool> {
        if self.cache.contains(sha256) {
            return Ok(false);
        }
        let bytes = std::fs::read(artifact_path)
            .with_context(|| format!("reading artifact {}", artifact_path.display()))?;
        let artifact = Artifact::from_bytes(bytes, usize::MAX)?;
        anyhow::ensure!(
            artifact.sha256 == sha256,
            "artifact {sha256} is corrupt on disk (hash mismatch)"
        );
        self.prepare(&artifact)?;
        Ok(true)
    }

    /// Whether the code's instances can serve several invocations: the reuse probe's
    /// verdict, run once per artifact (and engine) and remembered next to its code.
    fn probe(&self, sha256: &str, loaded: &LoadedVersion) -> Result<bool, ArtifactError> {
        let Pre::Http(pre) = &loaded.pre else {
            return Ok(false);
        };
        if self.cache.probed(sha256) {
            return Ok(!self.cache.single_use(sha256));
        }
        let reusable = crate::http::probe_reuse(pre, &self.lanes);
        if !reusable {
            tracing::warn!(
                sha256,
                "this component fails when one instance serves a second request: each call gets a fresh instance"
            );
        }
        self.cache
            .mark_probed(sha256, reusable)
            .map_err(|e| ArtifactError::Storage(e.to_string()))?;
        Ok(reusable)
    }

    fn load_cached(&self, sha256: &str, kind: ArtifactKind) -> anyhow::Result<LoadedVersion> {
        let path = self.cache.path(sha256);
        let pre = match kind {
            ArtifactKind::HttpComponent => Pre::Http(
                self.link_component(&crate::cache::deserialize_component(&self.engine, &path)?)?,
            ),
            ArtifactKind::Command => Pre::Command(
                self.link_module(&crate::cache::deserialize_module(&self.engine, &path)?)?,
            ),
            ArtifactKind::Native => anyhow::bail!("a native package is not WebAssembly"),
        };
        Ok(LoadedVersion {
            kind,
            pre,
            single_use: self.cache.single_use(sha256),
            budget: self.budget.clone(),
            lanes: self.lanes.clone(),
        })
    }

    fn link_component(&self, component: &Component) -> Result<ProxyPre<HttpState>, ArtifactError> {
        let pre = self.http_linker.instantiate_pre(component).map_err(|e| {
            ArtifactError::Link(format!(
                "component cannot be linked: {e:#}; Cirrus provides the wasi:http/proxy world and WASI 0.2 interfaces"
            ))
        })?;
        ProxyPre::new(pre).map_err(|e| {
            // A Rust `fn main` for wasm32-wasip2 (and any WASI 0.2 program) is a command.
            let command = component
                .component_type()
                .exports(&self.engine)
                .any(|(name, _)| name.starts_with("wasi:cli/run"));
            if command {
                return ArtifactError::Link(
                    "this component is a WASI 0.2 command (it exports wasi:cli/run, as a Rust `fn main` built for wasm32-wasip2 does); Cirrus runs HTTP handlers: export wasi:http/incoming-handler instead, e.g. from the project `cirrus new NAME --lang rust` makes".to_owned(),
                );
            }
            ArtifactError::Link(format!(
                "component does not export wasi:http/incoming-handler ({e:#}); build it for the wasi:http/proxy world (`cirrus new NAME --lang rust|python|js` makes a project that does)"
            ))
        })
    }

    fn link_module(
        &self,
        module: &Module,
    ) -> Result<wasmtime::InstancePre<CommandState>, ArtifactError> {
        match module.get_export("_start") {
            Some(wasmtime::ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
            _ => {
                return Err(ArtifactError::Link(
                    "module has no `_start` function: build a WASI command module (e.g. clang --target=wasm32-wasi) or a wasi:http component".into(),
                ))
            }
        }
        self.command_linker.instantiate_pre(module).map_err(|e| {
            ArtifactError::Link(format!(
                "module cannot be linked: {e:#}; command modules may import only wasi_snapshot_preview1"
            ))
        })
    }
}

/// The executor of wasm guests (components and command modules) over one [`Runtime`].
pub struct WasmExecutor(pub Arc<Runtime>);

impl Executor for WasmExecutor {
    fn load(&self, version: VersionSpec) -> BoxFuture<'_, Result<Arc<dyn Code>, ApiError>> {
        let runtime = self.0.clone();
        Box::pin(async move {
            let label = format!("{} version {}", version.function, version.version);
            let (loaded, recompiled) = tokio::task::spawn_blocking(move || {
                runtime.load(&version.sha256, version.kind, &version.artifact_path)
            })
            .await
            .map_err(|e| ApiError::internal(format!("loading {label}: {e}")))?
            .map_err(|e| {
                tracing::error!("loading {label}: {e:#}");
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("{label} could not be loaded: {e:#}"),
                )
            })?;
            tracing::debug!(%label, recompiled, "loaded");
            Ok(Arc::new(loaded) as Arc<dyn Code>)
        })
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cirrus-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })
            .ok();
        Self {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
