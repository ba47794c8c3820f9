//! Admission and environments: the server's capacity shared fairly between functions
//! ([`crate::admission`]) in front of the environment pools ([`crate::environments`]).

use crate::admission::Capacity;
use crate::environments::{FunctionState, Lease, Pools};
use cirrus_api::{ApiError, VersionInfo};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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

/// Held for the length of one invocation.
pub struct Admission {
    _permit: crate::admission::Permit,
}

pub struct Scaler {
    capacity: Arc<Capacity>,
    pools: Arc<Pools>,
}

impl Scaler {
    pub fn new(pools: Pools, settings: ScalerSettings) -> Self {
        Self {
            capacity: Arc::new(Capacity::new(
                settings.global_concurrency,
                settings.queue_depth,
                settings.queue_timeout,
            )),
            pools: Arc::new(pools),
        }
    }

    pub fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// Waits (boundedly) for room under the function's caps and its share of the host's.
    pub async fn admit(&self, version: &VersionInfo) -> Result<Admission, ApiError> {
        let permit = self
            .capacity
            .admit(&version.function, version.config.max_concurrency)
            .await?;
        Ok(Admission { _permit: permit })
    }

    /// The server's invocation capacity; the registry keeps its reservations current.
    pub fn capacity(&self) -> &Arc<Capacity> {
        &self.capacity
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
        self.capacity.in_flight()
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
