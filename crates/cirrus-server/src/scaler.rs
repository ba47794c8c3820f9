//! Admission and environments: per-function and global concurrency caps with bounded
//! wait queues in front of the environment pools ([`crate::environments`]).

use crate::environments::{FunctionState, Lease, Pools};
use cirrus_api::{ApiError, ErrorCode, VersionInfo};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct ScalerSettings {
    /// Invocations in flight across all functions.
    pub global_concurrency: usize,
    /// Callers that may wait for a slot, per function and globally; beyond that, 429.
    pub queue_depth: usize,
    /// How long a queued caller waits before getting 429.
    pub queue_timeout: Duration,
}

impl Default for ScalerSettings {
    fn default() -> Self {
        Self {
            global_concurrency: 128,
            queue_depth: 64,
            queue_timeout: Duration::from_secs(2),
        }
    }
}

/// A concurrency cap with a bounded, time-limited wait queue.
struct Gate {
    capacity: usize,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Decrements the wait count however the wait ends (including the caller going away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            permits: Arc::new(Semaphore::new(capacity)),
            waiting: AtomicUsize::new(0),
        }
    }

    async fn enter(
        &self,
        settings: &ScalerSettings,
        what: &str,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let throttled = || {
            ApiError::new(
                ErrorCode::Throttled,
                format!(
                    "{what} is at its concurrency limit of {}; retry later",
                    self.capacity
                ),
            )
        };
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= settings.queue_depth {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(throttled());
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(settings.queue_timeout, self.permits.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(throttled()),
        }
    }

    fn in_flight(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }
}

/// Held for the length of one invocation.
pub struct Admission {
    _global: OwnedSemaphorePermit,
    _function: Option<OwnedSemaphorePermit>,
}

pub struct Scaler {
    settings: ScalerSettings,
    global: Gate,
    /// Keyed by function and cap, so versions with different caps never replace each
    /// other's gate (which would reset its count); versions sharing a cap share a gate.
    functions: Mutex<HashMap<(String, usize), Arc<Gate>>>,
    pools: Arc<Pools>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Scaler {
    pub fn new(pools: Pools, settings: ScalerSettings) -> Self {
        Self {
            global: Gate::new(settings.global_concurrency),
            settings,
            functions: Mutex::new(HashMap::new()),
            pools: Arc::new(pools),
        }
    }

    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// Waits (boundedly) for room under the function's and the host's caps.
    pub async fn admit(&self, version: &VersionInfo) -> Result<Admission, ApiError> {
        let function = match version.config.max_concurrency {
            Some(cap) => {
                let gate = self.function_gate(&version.function, cap as usize);
                Some(
                    gate.enter(&self.settings, &format!("function {:?}", version.function))
                        .await?,
                )
            }
            None => None,
        };
        let global = self.global.enter(&self.settings, "the server").await?;
        Ok(Admission {
            _global: global,
            _function: function,
        })
    }

    fn function_gate(&self, name: &str, capacity: usize) -> Arc<Gate> {
        lock(&self.functions)
            .entry((name.to_owned(), capacity))
            .or_insert_with(|| Arc::new(Gate::new(capacity)))
            .clone()
    }

    /// An environment for one invocation: warm when one was idle, else started (cold).
    pub async fn ready(&self, version: &VersionInfo) -> Result<Lease, ApiError> {
        self.pools.acquire(version).await
    }

    /// Loads a version and starts its `min_loaded` environments ahead of traffic.
    pub async fn preload(&self, version: &VersionInfo) -> Result<(), ApiError> {
        self.pools.preload(version).await
    }

    /// Retires idle environments and unloads versions; see [`Pools::sweep`].
    pub fn sweep(&self, current: impl Fn(&str, u32) -> Option<(VersionInfo, bool)>) -> usize {
        self.pools.sweep(current)
    }

    /// Drops every environment of a function (it was deleted).
    pub fn unload_function(&self, function: &str) {
        self.pools.unload_function(function);
        lock(&self.functions).retain(|(f, _), _| f != function);
    }

    pub fn function_states(&self) -> HashMap<String, FunctionState> {
        self.pools.function_states()
    }

    pub fn is_loaded(&self, function: &str, version: u32) -> bool {
        self.pools.is_loaded(function, version)
    }

    pub fn loaded_count(&self) -> usize {
        self.pools.loaded_count()
    }

    pub fn in_flight(&self) -> usize {
        self.global.in_flight()
    }

    /// Current figures for `/metrics`.
    pub fn live(&self) -> crate::metrics::Live {
        let counters = &self.pools.counters;
        let budget = self.pools.budget();
        crate::metrics::Live {
            in_flight: self.in_flight(),
            loaded: self.loaded_count(),
            environments: self.pools.environment_count(),
            started: counters.started.load(Ordering::Relaxed),
            reused: counters.reused.load(Ordering::Relaxed),
            retired: counters.retired.load(Ordering::Relaxed),
            budget_bytes: budget.map_or(0, |b| b.limit()),
            budget_used_bytes: budget.map_or(0, |b| b.used()),
        }
    }
}
