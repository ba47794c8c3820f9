//! Admission and loading: the server's capacity shared fairly between functions (see
//! [`crate::admission`]), loaded versions kept warm, idle versions unloaded (scale to zero).

use crate::admission::Capacity;
use crate::clock::Clock;
use crate::store::ArtifactStore;
use cirrus_api::{ApiError, ErrorCode, VersionInfo};
use cirrus_runtime::{LoadedVersion, Runtime};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

#[derive(Debug, Clone)]
pub struct ScalerSettings {
    /// Invocations in flight across all functions.
    pub global_concurrency: usize,
    /// Callers that may wait for room, per function; beyond that, 429.
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

/// A loaded (or loading) version.
struct Slot {
    loaded: OnceCell<Arc<LoadedVersion>>,
    last_used_ms: AtomicU64,
    in_flight: AtomicUsize,
}

/// Keeps a slot's in-flight count and last use up to date for the sweeper.
pub struct Lease {
    slot: Arc<Slot>,
    clock: Arc<dyn Clock>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot
            .last_used_ms
            .store(self.clock.now_ms(), Ordering::SeqCst);
        self.slot.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A loaded version ready to invoke, and whether getting it was a cold start.
pub struct Ready {
    pub version: Arc<LoadedVersion>,
    pub lease: Lease,
    /// Time spent loading, when this invocation had to load (or wait for a load).
    pub init: Option<Duration>,
}

/// Loaded code is identified by its artifact too: a function deleted and re-created
/// starts again at version 1, and must never find the old code under that number.
type SlotKey = (String, u32, String);

/// What the sweeper needs to know about a loaded version.
pub struct Retention {
    pub idle_timeout: Duration,
    /// Kept loaded whatever its idleness (`min_loaded` on a version still in use).
    pub pinned: bool,
}

pub struct Scaler {
    runtime: Arc<Runtime>,
    artifacts: Arc<dyn ArtifactStore>,
    clock: Arc<dyn Clock>,
    capacity: Arc<Capacity>,
    slots: Mutex<HashMap<SlotKey, Arc<Slot>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Scaler {
    pub fn new(
        runtime: Arc<Runtime>,
        artifacts: Arc<dyn ArtifactStore>,
        clock: Arc<dyn Clock>,
        settings: ScalerSettings,
    ) -> Self {
        Self {
            capacity: Arc::new(Capacity::new(
                settings.global_concurrency,
                settings.queue_depth,
                settings.queue_timeout,
            )),
            runtime,
            artifacts,
            clock,
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Waits (boundedly) for room under the function's and the host's caps.
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

    /// The loaded version, loading it first if needed (a cold start). Concurrent cold
    /// callers share one load.
    pub async fn ready(&self, version: &VersionInfo) -> Result<Ready, ApiError> {
        let slot = {
            let mut slots = lock(&self.slots);
            let slot = slots
                .entry((
                    version.function.clone(),
                    version.version,
                    version.sha256.clone(),
                ))
                .or_insert_with(|| {
                    Arc::new(Slot {
                        loaded: OnceCell::new(),
                        last_used_ms: AtomicU64::new(0),
                        in_flight: AtomicUsize::new(0),
                    })
                })
                .clone();
            // Under the lock, so the sweeper never drops a slot being leased.
            slot.in_flight.fetch_add(1, Ordering::SeqCst);
            slot.last_used_ms
                .store(self.clock.now_ms(), Ordering::SeqCst);
            slot
        };
        let lease = Lease {
            slot: slot.clone(),
            clock: self.clock.clone(),
        };
        if let Some(loaded) = slot.loaded.get() {
            return Ok(Ready {
                version: loaded.clone(),
                lease,
                init: None,
            });
        }
        let started = Instant::now();
        let loaded = slot
            .loaded
            .get_or_try_init(|| self.load(version))
            .await?
            .clone();
        Ok(Ready {
            version: loaded,
            lease,
            init: Some(started.elapsed()),
        })
    }

    async fn load(&self, version: &VersionInfo) -> Result<Arc<LoadedVersion>, ApiError> {
        let runtime = self.runtime.clone();
        let path = self.artifacts.path(&version.sha256);
        let (sha256, kind) = (version.sha256.clone(), version.kind);
        let label = format!("{} version {}", version.function, version.version);
        let (loaded, recompiled) =
            tokio::task::spawn_blocking(move || runtime.load(&sha256, kind, &path))
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
        Ok(Arc::new(loaded))
    }

    /// Loads a version ahead of traffic (start-up, `min_loaded`).
    pub async fn preload(&self, version: &VersionInfo) -> Result<(), ApiError> {
        self.ready(version).await.map(drop)
    }

    /// Unloads versions idle for longer than their `idle_timeout`, keeping pinned and
    /// busy ones. `retention` answers for a (function, version); `None` means it no
    /// longer exists. Returns how many versions were unloaded.
    pub fn sweep(&self, retention: impl Fn(&str, u32) -> Option<Retention>) -> usize {
        let now = self.clock.now_ms();
        let mut slots = lock(&self.slots);
        let before = slots.len();
        slots.retain(|(function, version, _), slot| {
            let Some(retention) = retention(function, *version) else {
                return false;
            };
            if retention.pinned || slot.in_flight.load(Ordering::SeqCst) > 0 {
                return true;
            }
            let idle_ms = u64::try_from(retention.idle_timeout.as_millis()).unwrap_or(u64::MAX);
            now.saturating_sub(slot.last_used_ms.load(Ordering::SeqCst)) < idle_ms
        });
        before - slots.len()
    }

    /// Drops every loaded version of a function (it was deleted).
    pub fn unload_function(&self, function: &str) {
        lock(&self.slots).retain(|(f, _, _), _| f != function);
    }

    /// Per function: loaded versions (sorted) and invocations in flight.
    pub fn function_states(&self) -> HashMap<String, (Vec<u32>, usize)> {
        let mut states: HashMap<String, (Vec<u32>, usize)> = HashMap::new();
        for ((function, version, _), slot) in lock(&self.slots).iter() {
            let state = states.entry(function.clone()).or_default();
            if slot.loaded.initialized() {
                state.0.push(*version);
            }
            state.1 += slot.in_flight.load(Ordering::SeqCst);
        }
        for state in states.values_mut() {
            state.0.sort_unstable();
        }
        states
    }

    pub fn is_loaded(&self, function: &str, version: u32) -> bool {
        lock(&self.slots)
            .iter()
            .any(|((f, v, _), s)| f == function && *v == version && s.loaded.initialized())
    }

    pub fn loaded_count(&self) -> usize {
        lock(&self.slots)
            .values()
            .filter(|s| s.loaded.initialized())
            .count()
    }

    pub fn in_flight(&self) -> usize {
        self.capacity.in_flight()
    }
}
