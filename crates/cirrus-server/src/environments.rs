//! Execution environments per version: its loaded code, its idle environments (a warm
//! start takes one), starts (cold), retirement, and admission of new environments
//! against the server's memory budget and instance slots.
//!
//! Everything runtime-specific is behind [`cirrus_runtime::Executor`]; this module never
//! names wasmtime, so its tests run on a fake executor.

use crate::clock::Clock;
use crate::store::ArtifactCache;
use cirrus_api::{ApiError, ErrorCode, VersionInfo};
use cirrus_runtime::executor::BoxFuture;
use cirrus_runtime::{
    Code, Environment, EnvironmentSpec, Executor, Invocation, InvokeOutput, MemoryBudget,
    VersionSpec,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OnceCell};

/// Builds the environment-level view of a version (variables, caps) for a new environment.
/// What an environment of a version starts with; an error when it cannot start at all.
pub type SpecFor = Arc<dyn Fn(&VersionInfo) -> Result<EnvironmentSpec, ApiError> + Send + Sync>;

/// Admission memory for a version never started yet (one wasm page); afterwards, what
/// its environments actually held once started.
const FIRST_FOOTPRINT: u64 = 64 << 10;

/// Loaded code is identified by its artifact too: a function deleted and re-created
/// starts again at version 1, and must never find the old code under that number.
type Key = (String, u32, String);

/// The per-function settings that govern its environments.
#[derive(Debug, Clone, Copy)]
struct Policy {
    reuse: u32,
    max_idle: usize,
    idle_timeout_ms: u64,
}

impl Policy {
    fn of(version: &VersionInfo) -> Self {
        let c = &version.config;
        Self {
            reuse: c.reuse.max(1),
            max_idle: c.max_idle.max(c.min_loaded) as usize,
            idle_timeout_ms: u64::try_from(c.idle_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Environments started, reused and retired since start-up (for `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    pub started: AtomicU64,
    pub reused: AtomicU64,
    pub retired: AtomicU64,
}

struct Idle {
    env: Box<dyn Environment>,
    served: u32,
    since_ms: u64,
}

#[derive(Default)]
struct PoolState {
    /// Most recently used last: a warm start takes the warmest.
    idle: Vec<Idle>,
    /// Started ahead of demand, to land in `idle`; callers may wait for them.
    prestarting: usize,
    /// Callers waiting for one of those: no more wait than there are pre-starts.
    waiting: usize,
    /// Every environment of the version: busy, idle or starting.
    live: usize,
}

/// One version: its code (once loaded) and its environments.
struct VersionPool {
    code: OnceCell<Arc<dyn Code>>,
    state: Mutex<PoolState>,
    /// An environment became idle, or a pre-start ended.
    changed: Notify,
    last_used_ms: AtomicU64,
    in_flight: AtomicUsize,
    footprint: AtomicU64,
    /// Environments kept ready whatever their idleness (`min_loaded` of a live version).
    pinned: AtomicUsize,
    /// No longer listed (its version is gone): what comes back to it is retired.
    removed: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Pools {
    executor: Arc<dyn Executor>,
    artifacts: Arc<ArtifactCache>,
    clock: Arc<dyn Clock>,
    spec_for: SpecFor,
    budget: Option<MemoryBudget>,
    /// How long a new environment may wait for memory or an instance slot.
    wait: Duration,
    /// An environment was retired (memory and an instance slot were given back).
    released: Notify,
    pub counters: Counters,
    versions: Mutex<HashMap<Key, Arc<VersionPool>>>,
}

/// An environment checked out for one invocation. Dropping it gives the environment back
/// to its pool, or retires it.
pub struct Lease {
    env: Option<Box<dyn Environment>>,
    served: u32,
    /// The code's environments serve one call whatever the policy says.
    single_use: bool,
    policy: Policy,
    pool: Arc<VersionPool>,
    pools: Arc<Pools>,
    /// Whether this invocation had to start its environment.
    pub cold: bool,
    /// Time spent loading code and starting the environment, on a cold start.
    pub init: Option<Duration>,
}

impl Lease {
    /// The environment's own (boxed) future, not wrapped in another: an invocation's
    /// state is moved to the heap once.
    pub fn invoke(&mut self, invocation: Invocation) -> BoxFuture<'_, InvokeOutput> {
        self.served += 1;
        let env = self.env.as_mut().expect("a lease holds its environment");
        env.invoke(invocation)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = self.pools.clock.now_ms();
        self.pool.last_used_ms.store(now, Ordering::SeqCst);
        if let Some(env) = self.env.take() {
            let keep = !self.single_use && env.reusable() && self.served < self.policy.reuse;
            self.pools
                .give_back(&self.pool, env, self.served, keep, self.policy, now);
        }
        self.pool.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Uncounts an environment whose start failed or was abandoned.
struct Starting<'a>(Option<(&'a Pools, &'a VersionPool)>);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        if let Some((pools, pool)) = self.0.take() {
            pools.forget(pool);
        }
    }
}

/// Uncounts a caller waiting for a pre-start, however the wait ends.
struct Waiting<'a>(&'a VersionPool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).waiting -= 1;
    }
}

/// Uncounts a background start (a pre-start, or one for `min_loaded`) that did not land,
/// whatever stopped it (a failure, a panic, the runtime shutting down).
struct Landing {
    pool: Arc<VersionPool>,
    prestart: bool,
    armed: bool,
}

impl Drop for Landing {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.pool.state);
            if self.prestart {
                state.prestarting -= 1;
            }
            if self.armed {
                state.live -= 1;
            }
        }
        self.pool.changed.notify_waiters();
    }
}

/// Undoes a version's in-flight count if acquiring fails before a lease exists.
struct Claim(Option<Arc<VersionPool>>);

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Pools {
    pub fn new(
        executor: Arc<dyn Executor>,
        artifacts: Arc<ArtifactCache>,
        clock: Arc<dyn Clock>,
        spec_for: SpecFor,
        budget: Option<MemoryBudget>,
        wait: Duration,
    ) -> Self {
        Self {
            executor,
            artifacts,
            clock,
            spec_for,
            budget,
            wait,
            released: Notify::new(),
            counters: Counters::default(),
            versions: Mutex::new(HashMap::new()),
        }
    }

    pub fn budget(&self) -> Option<&MemoryBudget> {
        self.budget.as_ref()
    }

    fn pool(&self, version: &VersionInfo) -> Arc<VersionPool> {
        let mut versions = lock(&self.versions);
        let pool = versions
            .entry((
                version.function.clone(),
                version.version,
                version.sha256.clone(),
            ))
            .or_insert_with(|| {
                Arc::new(VersionPool {
                    code: OnceCell::new(),
                    state: Mutex::new(PoolState::default()),
                    changed: Notify::new(),
                    last_used_ms: AtomicU64::new(0),
                    in_flight: AtomicUsize::new(0),
                    footprint: AtomicU64::new(FIRST_FOOTPRINT),
                    pinned: AtomicUsize::new(0),
                    removed: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .clone();
        // Under the lock, so the sweeper never drops a pool being used.
        pool.in_flight.fetch_add(1, Ordering::SeqCst);
        pool.last_used_ms
            .store(self.clock.now_ms(), Ordering::SeqCst);
        pool
    }

    async fn code(
        &self,
        pool: &VersionPool,
        version: &VersionInfo,
    ) -> Result<Arc<dyn Code>, ApiError> {
        if let Some(code) = pool.code.get() {
            return Ok(code.clone());
        }
        let spec = VersionSpec {
            function: version.function.clone(),
            version: version.version,
            sha256: version.sha256.clone(),
            kind: version.kind,
            artifact_path: self
                .artifacts
                .local(&version.sha256)
                .await
                .map_err(|e| ApiError::internal(format!("loading the artifact: {e:#}")))?,
            runtime: version.config.lambda.as_ref().map(|p| p.runtime.clone()),
            handler: version.config.lambda.as_ref().map(|p| p.handler.clone()),
        };
        pool.code
            .get_or_try_init(|| self.executor.load(spec))
            .await
            .cloned()
    }

    /// An environment for one invocation: an idle one (warm), one being started ahead
    /// of demand, or a new one (cold).
    pub async fn acquire(self: &Arc<Self>, version: &VersionInfo) -> Result<Lease, ApiError> {
        let started = Instant::now();
        let pool = self.pool(version);
        let mut claim = Claim(Some(pool.clone()));
        let policy = Policy::of(version);
        let code = self.code(&pool, version).await?;
        let single_use = !code.reusable() || policy.reuse == 1;
        // A spare being started may be waited for, boundedly; past that, start one.
        let patience = tokio::time::Instant::now() + self.wait;
        loop {
            let changed = pool.changed.notified();
            tokio::pin!(changed);
            {
                let mut state = lock(&pool.state);
                if let Some(idle) = state.idle.pop() {
                    drop(state);
                    self.counters.reused.fetch_add(1, Ordering::Relaxed);
                    if single_use {
                        self.prestart(&pool, &code, version, policy);
                    }
                    claim.0 = None;
                    return Ok(Lease {
                        env: Some(idle.env),
                        served: idle.served,
                        single_use,
                        policy,
                        pool: pool.clone(),
                        pools: self.clone(),
                        cold: false,
                        init: None,
                    });
                }
                let unclaimed = state.prestarting > state.waiting;
                if !unclaimed || tokio::time::Instant::now() >= patience {
                    state.live += 1;
                    break;
                }
                state.waiting += 1;
                changed.as_mut().enable();
            }
            let _waiting = Waiting(&pool);
            let _ = tokio::time::timeout_at(patience, changed).await;
        }
        let mut starting = Starting(Some((self.as_ref(), &pool)));
        let env = self.start(&pool, &code, version).await?;
        starting.0 = None;
        drop(starting);
        if single_use {
            self.prestart(&pool, &code, version, policy);
        }
        claim.0 = None;
        Ok(Lease {
            env: Some(env),
            served: 0,
            single_use,
            policy,
            pool,
            pools: self.clone(),
            cold: true,
            init: Some(started.elapsed()),
        })
    }

    /// Starts an environment, admitting it against the memory budget and instance slots:
    /// idle environments (of any function, longest idle first) are retired to make room,
    /// else it waits for room, else the caller gets 429.
    async fn start(
        &self,
        pool: &VersionPool,
        code: &Arc<dyn Code>,
        version: &VersionInfo,
    ) -> Result<Box<dyn Environment>, ApiError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let footprint = pool.footprint.load(Ordering::Relaxed);
        if let Some(budget) = self.budget.as_ref().filter(|b| b.limit() < footprint) {
            return Err(ApiError::new(
                ErrorCode::MemoryLimitExceeded,
                format!(
                    "{} needs {} MiB to start, more than the server's whole memory budget of {} MiB",
                    version.function,
                    footprint >> 20,
                    budget.limit() >> 20
                ),
            ));
        }
        // Retiring idle environments for a start that failed for room, at most this many
        // times: one that cannot fit must not flush every warm pool on the server.
        let mut retries = 4;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let room = match &self.budget {
                Some(budget) if budget.available() < footprint => {
                    self.reclaim(|| budget.available() >= footprint)
                }
                _ => true,
            };
            if room {
                match code.clone().start((self.spec_for)(version)?).await {
                    Ok(env) => {
                        self.counters.started.fetch_add(1, Ordering::Relaxed);
                        pool.footprint
                            .store(env.memory_bytes().max(64 << 10), Ordering::Relaxed);
                        return Ok(env);
                    }
                    Err(failure) if failure.capacity => {
                        // Out of instance slots or memory: make room by retiring one idle
                        // environment, or wait for one to end.
                        let mut retired = false;
                        if retries > 0 && self.reclaim(|| std::mem::replace(&mut retired, true)) {
                            retries -= 1;
                            continue;
                        }
                    }
                    Err(failure) => return Err(failure.error),
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(ApiError::new(
                    ErrorCode::Throttled,
                    format!(
                        "no room for another environment of {} (memory budget or instance slots are in use); retry shortly",
                        version.function
                    ),
                ));
            }
        }
    }

    /// Retires idle environments, longest idle first (sparing pinned ones), until
    /// `enough` says so. Returns whether it was reached.
    fn reclaim(&self, mut enough: impl FnMut() -> bool) -> bool {
        loop {
            if enough() {
                return true;
            }
            let oldest = lock(&self.versions)
                .values()
                .filter_map(|pool| {
                    let state = lock(&pool.state);
                    let spare = state.live > pool.pinned.load(Ordering::Relaxed);
                    let since = state.idle.first().filter(|_| spare)?.since_ms;
                    Some((since, pool.clone()))
                })
                .min_by_key(|(since, _)| *since);
            let Some((_, pool)) = oldest else {
                return false;
            };
            let env = {
                let mut state = lock(&pool.state);
                if state.idle.is_empty() {
                    continue;
                }
                state.live -= 1;
                state.idle.remove(0)
            };
            self.retire(env.env);
        }
    }

    fn retire(&self, env: Box<dyn Environment>) {
        drop(env);
        self.counters.retired.fetch_add(1, Ordering::Relaxed);
        self.released.notify_waiters();
    }

    /// An environment that failed to start, or was given up, no longer counts.
    fn forget(&self, pool: &VersionPool) {
        lock(&pool.state).live -= 1;
        pool.changed.notify_waiters();
    }

    fn give_back(
        &self,
        pool: &VersionPool,
        env: Box<dyn Environment>,
        served: u32,
        keep: bool,
        policy: Policy,
        now_ms: u64,
    ) {
        let keep = keep && !pool.removed.load(Ordering::SeqCst);
        let retire = {
            let mut state = lock(&pool.state);
            if keep && state.idle.len() < policy.max_idle {
                state.idle.push(Idle {
                    env,
                    served,
                    since_ms: now_ms,
                });
                None
            } else {
                state.live -= 1;
                Some(env)
            }
        };
        match retire {
            Some(env) => self.retire(env),
            None => {
                pool.changed.notify_one();
                // Someone waiting for room may retire this one now.
                self.released.notify_waiters();
            }
        }
    }

    /// Starts a single-use environment in the background, so the next call finds one
    /// ready: as many spares as invocations in flight, within `max_idle`.
    fn prestart(
        self: &Arc<Self>,
        pool: &Arc<VersionPool>,
        code: &Arc<dyn Code>,
        version: &VersionInfo,
        policy: Policy,
    ) {
        {
            let mut state = lock(&pool.state);
            let spares = state.idle.len() + state.prestarting;
            let wanted = pool.in_flight.load(Ordering::SeqCst).min(policy.max_idle);
            if spares >= wanted {
                return;
            }
            state.prestarting += 1;
            state.live += 1;
        }
        self.spawn_start(pool.clone(), code.clone(), version.clone(), true);
    }

    /// Starts an environment into the idle pool (a pre-start, or `min_loaded`).
    fn spawn_start(
        self: &Arc<Self>,
        pool: Arc<VersionPool>,
        code: Arc<dyn Code>,
        version: VersionInfo,
        prestart: bool,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut landing = Landing {
                pool: pool.clone(),
                prestart,
                armed: true,
            };
            match this.start(&pool, &code, &version).await {
                Ok(env) if pool.removed.load(Ordering::SeqCst) => this.retire(env),
                Ok(env) => {
                    let now = this.clock.now_ms();
                    lock(&pool.state).idle.push(Idle {
                        env,
                        served: 0,
                        since_ms: now,
                    });
                    landing.armed = false;
                }
                Err(e) => {
                    tracing::debug!(function = %version.function, "starting an environment ahead of demand failed: {}", e.message);
                }
            }
        });
    }

    /// Loads a version and starts `min_loaded` environments for it (at start-up and
    /// deploy), waiting for them.
    pub async fn preload(self: &Arc<Self>, version: &VersionInfo) -> Result<(), ApiError> {
        let pool = self.pool(version);
        let _claim = Claim(Some(pool.clone()));
        let code = self.code(&pool, version).await?;
        let wanted = version.config.min_loaded as usize;
        pool.pinned.store(wanted, Ordering::Relaxed);
        loop {
            {
                let mut state = lock(&pool.state);
                if state.live >= wanted {
                    return Ok(());
                }
                state.live += 1;
            }
            let mut starting = Starting(Some((self.as_ref(), &pool)));
            let env = self.start(&pool, &code, version).await?;
            starting.0 = None;
            drop(starting);
            let now = self.clock.now_ms();
            lock(&pool.state).idle.push(Idle {
                env,
                served: 0,
                since_ms: now,
            });
        }
    }

    /// Retires environments idle past their `idle_timeout` (keeping `min_loaded` of live
    /// versions, and starting any missing), and unloads versions with no environments
    /// left, or that no longer exist. `current` answers for a (function, version): its
    /// info and whether `min_loaded` applies, or `None` when it is gone. Returns how many
    /// versions were unloaded.
    pub fn sweep(
        self: &Arc<Self>,
        current: impl Fn(&str, u32) -> Option<(VersionInfo, bool)>,
    ) -> usize {
        let now = self.clock.now_ms();
        let mut retired = Vec::new();
        let mut top_up = Vec::new();
        let unloaded = {
            let mut versions = lock(&self.versions);
            let before = versions.len();
            versions.retain(|(function, number, sha256), pool| {
                let busy = pool.in_flight.load(Ordering::SeqCst) > 0;
                // The same number under other code is a function deleted and re-created.
                let current = current(function, *number).filter(|(v, _)| &v.sha256 == sha256);
                let Some((version, pinned)) = current else {
                    pool.removed.store(true, Ordering::SeqCst);
                    let mut state = lock(&pool.state);
                    state.live -= state.idle.len();
                    retired.extend(state.idle.drain(..).map(|i| i.env));
                    return busy;
                };
                let policy = Policy::of(&version);
                let keep = if pinned {
                    version.config.min_loaded as usize
                } else {
                    0
                };
                pool.pinned.store(keep, Ordering::Relaxed);
                let mut state = lock(&pool.state);
                while state.live > keep
                    && state
                        .idle
                        .first()
                        .is_some_and(|i| now.saturating_sub(i.since_ms) >= policy.idle_timeout_ms)
                {
                    state.live -= 1;
                    retired.push(state.idle.remove(0).env);
                }
                if state.live < keep && pool.code.initialized() {
                    top_up.push((pool.clone(), version, keep - state.live));
                }
                let idle_ms = now.saturating_sub(pool.last_used_ms.load(Ordering::SeqCst));
                // A spare still starting lands in a pool no longer listed, and is dropped.
                let settled = state.live - state.prestarting;
                let kept = busy || settled > 0 || pinned || idle_ms < policy.idle_timeout_ms;
                if !kept {
                    pool.removed.store(true, Ordering::SeqCst);
                }
                kept
            });
            before - versions.len()
        };
        for env in retired {
            self.retire(env);
        }
        for (pool, version, missing) in top_up {
            let Some(code) = pool.code.get().cloned() else {
                continue;
            };
            lock(&pool.state).live += missing;
            for _ in 0..missing {
                self.spawn_start(pool.clone(), code.clone(), version.clone(), false);
            }
        }
        unloaded
    }

    /// Drops every environment and the code of a function (it was deleted).
    pub fn unload_function(&self, function: &str) {
        let removed: Vec<_> = {
            let mut versions = lock(&self.versions);
            let keys: Vec<_> = versions
                .keys()
                .filter(|(f, _, _)| f == function)
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| versions.remove(&k))
                .collect()
        };
        for pool in removed {
            pool.removed.store(true, Ordering::SeqCst);
            let idle: Vec<_> = {
                let mut state = lock(&pool.state);
                state.live -= state.idle.len();
                state.idle.drain(..).collect()
            };
            for i in idle {
                self.retire(i.env);
            }
        }
    }

    /// Per function: loaded versions (sorted), invocations in flight, environments.
    pub fn function_states(&self) -> HashMap<String, FunctionState> {
        let mut states: HashMap<String, FunctionState> = HashMap::new();
        for ((function, version, _), pool) in lock(&self.versions).iter() {
            let state = states.entry(function.clone()).or_default();
            if pool.code.initialized() {
                state.loaded_versions.push(*version);
            }
            state.in_flight += pool.in_flight.load(Ordering::SeqCst);
            let pool_state = lock(&pool.state);
            state.environments += pool_state.live;
            state.idle_environments += pool_state.idle.len();
        }
        for state in states.values_mut() {
            state.loaded_versions.sort_unstable();
        }
        states
    }

    pub fn is_loaded(&self, function: &str, version: u32) -> bool {
        lock(&self.versions)
            .iter()
            .any(|((f, v, _), p)| f == function && *v == version && p.code.initialized())
    }

    pub fn loaded_count(&self) -> usize {
        lock(&self.versions)
            .values()
            .filter(|p| p.code.initialized())
            .count()
    }

    /// Environments alive now, busy or idle.
    pub fn environment_count(&self) -> usize {
        lock(&self.versions)
            .values()
            .map(|p| lock(&p.state).live)
            .sum()
    }
}

#[derive(Debug, Default, Clone)]
pub struct FunctionState {
    pub loaded_versions: Vec<u32>,
    pub in_flight: usize,
    pub environments: usize,
    pub idle_environments: usize,
}

#[cfg(test)]
mod tests {
    //! The pool logic on a fake executor: environments are counters, not sandboxes.
    use super::*;
    use crate::clock::ManualClock;
    use cirrus_api::{ArtifactKind, FunctionConfig};
    use cirrus_runtime::{InvocationContext, Limits, StartFailure};

    struct FakeExecutor {
        reusable: bool,
        started: Arc<AtomicUsize>,
        /// Memory each environment holds, charged to the budget as a wasm guest's is.
        memory: u64,
        budget: Option<MemoryBudget>,
    }

    struct FakeCode {
        reusable: bool,
        started: Arc<AtomicUsize>,
        memory: u64,
        budget: Option<MemoryBudget>,
    }

    struct FakeEnv {
        id: usize,
        reusable: bool,
        memory: u64,
        _charge: Option<cirrus_runtime::limits::Charge>,
    }

    impl Executor for FakeExecutor {
        fn load(&self, _: VersionSpec) -> BoxFuture<'_, Result<Arc<dyn Code>, ApiError>> {
            let code = FakeCode {
                reusable: self.reusable,
                started: self.started.clone(),
                memory: self.memory,
                budget: self.budget.clone(),
            };
            Box::pin(async move { Ok(Arc::new(code) as Arc<dyn Code>) })
        }
    }

    impl Code for FakeCode {
        fn reusable(&self) -> bool {
            self.reusable
        }
        fn start(
            self: Arc<Self>,
            _: EnvironmentSpec,
        ) -> BoxFuture<'static, Result<Box<dyn Environment>, StartFailure>> {
            Box::pin(async move {
                let charge = match &self.budget {
                    None => None,
                    Some(budget) => Some(budget.reserve(self.memory).ok_or(StartFailure {
                        error: ApiError::new(ErrorCode::Throttled, "over budget"),
                        capacity: true,
                    })?),
                };
                let id = self.started.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(Box::new(FakeEnv {
                    id,
                    reusable: true,
                    memory: self.memory,
                    _charge: charge,
                }) as Box<dyn Environment>)
            })
        }
    }

    impl Environment for FakeEnv {
        fn invoke(&mut self, invocation: Invocation) -> BoxFuture<'_, InvokeOutput> {
            // A request to /trap leaves the guest in doubt, as a trap would.
            if invocation.request.uri().path() == "/trap" {
                self.reusable = false;
            }
            let id = self.id;
            Box::pin(async move {
                InvokeOutput {
                    result: Ok(hyper::Response::new(bytes::Bytes::from(id.to_string()))),
                    peak_memory_bytes: 0,
                    cpu_time: Duration::ZERO,
                    logs: Vec::new(),
                    streamed_bytes: None,
                }
            })
        }
        fn reusable(&self) -> bool {
            self.reusable
        }
        fn memory_bytes(&self) -> u64 {
            self.memory
        }
    }

    struct Fixture {
        pools: Arc<Pools>,
        clock: Arc<ManualClock>,
        started: Arc<AtomicUsize>,
    }

    /// Every test version's artifact: the empty one (its digest is `EMPTY_SHA256`).
    struct EmptyArtifacts;
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    #[async_trait::async_trait]
    impl crate::store::ArtifactStore for EmptyArtifacts {
        async fn put(&self, _: &str, _: bytes::Bytes) -> crate::store::StoreResult<()> {
            Ok(())
        }
        async fn get(&self, _: &str) -> crate::store::StoreResult<Option<bytes::Bytes>> {
            Ok(Some(bytes::Bytes::new()))
        }
    }

    fn fixture(reusable: bool, budget: Option<u64>) -> Fixture {
        let started = Arc::new(AtomicUsize::new(0));
        let budget = budget.map(MemoryBudget::new);
        let clock = Arc::new(ManualClock::new(1_000_000));
        let spec_for: SpecFor = Arc::new(|v: &VersionInfo| {
            Ok(EnvironmentSpec {
                env: Vec::new(),
                memory_bytes: v.config.memory_bytes(),
                max_log_bytes: 1024,
                timeout: v.config.timeout,
                token: None,
                allowed_hosts: Vec::new(),
            })
        });
        let pools = Pools::new(
            Arc::new(FakeExecutor {
                reusable,
                started: started.clone(),
                memory: 10 << 20,
                budget: budget.clone(),
            }),
            Arc::new(
                ArtifactCache::new(
                    &tempfile::tempdir().unwrap().keep(),
                    Arc::new(EmptyArtifacts),
                )
                .unwrap(),
            ),
            clock.clone(),
            spec_for,
            budget,
            Duration::from_millis(100),
        );
        Fixture {
            pools: Arc::new(pools),
            clock,
            started,
        }
    }

    fn version(name: &str, config: FunctionConfig) -> VersionInfo {
        VersionInfo {
            function: name.into(),
            version: 1,
            sha256: EMPTY_SHA256.into(),
            kind: ArtifactKind::HttpComponent,
            size_bytes: 1,
            config,
            created_at: String::new(),
        }
    }

    fn invocation(path: &str) -> Invocation {
        Invocation {
            context: InvocationContext {
                request_id: "r".into(),
                function: "f".into(),
                version: 1,
                event_type: "http",
                attempt: 1,
                traceparent: String::new(),
                deadline_ms: 0,
            },
            request: hyper::Request::builder()
                .uri(path)
                .body(bytes::Bytes::new())
                .unwrap(),
            limits: Limits {
                memory_bytes: 1 << 20,
                timeout: Duration::from_secs(1),
                max_response_bytes: 1024,
                max_log_bytes: 1024,
            },
            allowed_hosts: Arc::from(Vec::new()),
            platform: None,
            cancelled: None,
            stream: None,
            body: None,
        }
    }

    /// Runs one call and says which environment served it and whether it was cold.
    async fn call(f: &Fixture, v: &VersionInfo, path: &str) -> (String, bool) {
        let mut lease = f.pools.acquire(v).await.unwrap();
        let out = lease.invoke(invocation(path)).await;
        let body = out.result.unwrap().into_body();
        (String::from_utf8(body.to_vec()).unwrap(), lease.cold)
    }

    #[tokio::test]
    async fn a_warm_call_reuses_the_environment_until_its_reuse_count() {
        let f = fixture(true, None);
        let v = version(
            "f",
            FunctionConfig {
                reuse: 3,
                ..Default::default()
            },
        );
        assert_eq!(call(&f, &v, "/").await, ("1".into(), true));
        assert_eq!(call(&f, &v, "/").await, ("1".into(), false));
        assert_eq!(call(&f, &v, "/").await, ("1".into(), false));
        // Used up after three invocations: retired, and the next call starts anew.
        assert_eq!(call(&f, &v, "/").await, ("2".into(), true));
        let c = &f.pools.counters;
        assert_eq!(c.started.load(Ordering::SeqCst), 2);
        assert_eq!(c.reused.load(Ordering::SeqCst), 2);
        assert_eq!(c.retired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_environment_left_in_doubt_is_never_reused() {
        let f = fixture(true, None);
        let v = version("f", FunctionConfig::default());
        assert_eq!(call(&f, &v, "/trap").await, ("1".into(), true));
        assert_eq!(call(&f, &v, "/").await, ("2".into(), true));
        assert_eq!(call(&f, &v, "/").await, ("2".into(), false));
    }

    #[tokio::test]
    async fn idle_environments_beyond_max_idle_are_retired() {
        let f = fixture(true, None);
        let v = version(
            "f",
            FunctionConfig {
                max_idle: 1,
                ..Default::default()
            },
        );
        let a = f.pools.acquire(&v).await.unwrap();
        let b = f.pools.acquire(&v).await.unwrap();
        let c = f.pools.acquire(&v).await.unwrap();
        assert!(a.cold && b.cold && c.cold);
        assert_eq!(f.pools.environment_count(), 3);
        drop((a, b, c));
        assert_eq!(f.pools.environment_count(), 1);
        assert_eq!(f.pools.counters.retired.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_environment_coming_back_to_a_deleted_version_is_retired() {
        let f = fixture(true, None);
        let v = version("f", FunctionConfig::default());
        let lease = f.pools.acquire(&v).await.unwrap();
        f.pools.unload_function("f");
        drop(lease);
        assert_eq!(f.pools.counters.retired.load(Ordering::SeqCst), 1);
        assert_eq!(f.pools.environment_count(), 0);
    }

    #[tokio::test]
    async fn single_use_environments_are_started_ahead_of_the_next_call() {
        let f = fixture(false, None);
        let v = version("cmd", FunctionConfig::default());
        assert_eq!(call(&f, &v, "/").await, ("1".into(), true));
        // The spare started in the background is what the next call runs on.
        assert_eq!(call(&f, &v, "/").await, ("2".into(), false));
        assert_eq!(call(&f, &v, "/").await, ("3".into(), false));
        // Each environment served one call.
        assert!(f.pools.counters.retired.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test]
    async fn sweeping_retires_idle_environments_but_keeps_min_loaded() {
        let f = fixture(true, None);
        let idle = version(
            "idle",
            FunctionConfig {
                idle_timeout: Duration::from_secs(60),
                ..Default::default()
            },
        );
        let pinned = version(
            "pinned",
            FunctionConfig {
                min_loaded: 2,
                idle_timeout: Duration::from_secs(60),
                ..Default::default()
            },
        );
        call(&f, &idle, "/").await;
        f.pools.preload(&pinned).await.unwrap();
        assert_eq!(f.started.load(Ordering::SeqCst), 3);
        let current = |function: &str, _: u32| {
            let v = if function == "idle" { &idle } else { &pinned };
            Some((v.clone(), v.config.min_loaded > 0))
        };
        f.clock.advance(Duration::from_secs(59));
        assert_eq!(f.pools.sweep(current), 0);
        assert_eq!(f.pools.environment_count(), 3);
        f.clock.advance(Duration::from_secs(2));
        assert_eq!(f.pools.sweep(current), 1, "the idle version unloads");
        assert!(!f.pools.is_loaded("idle", 1));
        assert_eq!(f.pools.environment_count(), 2, "min_loaded stays");
        // Both provisioned environments serve warm calls.
        let a = f.pools.acquire(&pinned).await.unwrap();
        let b = f.pools.acquire(&pinned).await.unwrap();
        assert!(!a.cold && !b.cold);
        // A gone version takes its environments with it.
        drop((a, b));
        f.pools.sweep(|_, _| None);
        assert_eq!(f.pools.environment_count(), 0);
    }

    #[tokio::test]
    async fn new_environments_make_room_by_retiring_idle_ones_or_get_429() {
        // Room for two 10 MiB environments.
        let f = fixture(true, Some(20 << 20));
        let v = |name| version(name, FunctionConfig::default());
        call(&f, &v("a"), "/").await;
        let b = f.pools.acquire(&v("b")).await.unwrap();
        // Full: the idle environment of `a` is retired to make room for `c`.
        let c = f.pools.acquire(&v("c")).await.unwrap();
        assert!(c.cold);
        assert_eq!(f.pools.function_states()["a"].environments, 0);
        assert_eq!(f.pools.counters.retired.load(Ordering::SeqCst), 1);
        // Nothing idle is left to retire: the next caller waits, then gets 429.
        let refused = f.pools.acquire(&v("d")).await.err().unwrap();
        assert_eq!(refused.code, ErrorCode::Throttled);
        // Room again once a busy environment ends and is retired.
        drop(b);
        f.pools.unload_function("b");
        assert!(f.pools.acquire(&v("d")).await.is_ok());
        drop(c);
    }
}
