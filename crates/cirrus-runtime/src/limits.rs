//! The memory cap of one environment, the meter of each invocation's peak, and the
//! server-wide budget every environment's memory is charged to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Table growth beyond this is refused: no legitimate guest needs more, and each element
/// costs host memory.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// What the host reads after (or while) one invocation runs: peak linear memory and
/// whether the guest hit its cap or the server's budget. Shared, so it survives a
/// timed-out invocation being dropped.
#[derive(Debug, Default)]
pub struct MemoryStats {
    peak: AtomicU64,
    hit_limit: AtomicBool,
    hit_budget: AtomicBool,
}

impl MemoryStats {
    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
    pub fn hit_limit(&self) -> bool {
        self.hit_limit.load(Ordering::Relaxed)
    }
    /// The guest's growth was refused because the server's memory budget was spent.
    pub fn hit_budget(&self) -> bool {
        self.hit_budget.load(Ordering::Relaxed)
    }
}

/// Linear memory all environments together may hold. Growth past it is refused (the
/// guest sees allocation failure) instead of the host being killed for running out.
#[derive(Debug, Clone)]
pub struct MemoryBudget(Arc<BudgetState>);

#[derive(Debug)]
struct BudgetState {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        Self(Arc::new(BudgetState {
            limit,
            used: AtomicU64::new(0),
        }))
    }

    /// The default: three quarters of what this host (or its cgroup) may use, leaving the
    /// rest for the server itself, buffered bodies and the page cache.
    pub fn for_host() -> Self {
        Self::new(host_memory_bytes() / 4 * 3)
    }

    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }

    pub fn available(&self) -> u64 {
        self.0.limit.saturating_sub(self.used())
    }

    fn try_charge(&self, bytes: u64) -> bool {
        self.0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|&total| total <= self.0.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.0.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Charges memory held outside a wasm store (a native process's, say) until the
    /// returned charge is dropped; `None` when the budget cannot cover it.
    pub fn reserve(&self, bytes: u64) -> Option<Charge> {
        self.try_charge(bytes).then(|| Charge {
            budget: self.clone(),
            bytes,
        })
    }
}

/// Memory charged to a [`MemoryBudget`] until dropped.
#[derive(Debug)]
pub struct Charge {
    budget: MemoryBudget,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Physical memory, or the cgroup (v2 or v1) limit when that is lower.
fn host_memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(4 << 30, |kb| kb << 10);
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
    .fold(total, u64::min)
}

/// A `ResourceLimiter` capping the sum of all linear memories of one store: a component
/// with several core instances gets one budget, as a Lambda function does. It lives as
/// long as the environment, so the cap holds across the invocations it serves.
pub struct MemoryLimiter {
    cap: u64,
    total: u64,
    stats: Arc<MemoryStats>,
    budget: Option<MemoryBudget>,
}

impl MemoryLimiter {
    pub fn new(cap: u64, budget: Option<MemoryBudget>) -> Self {
        Self {
            cap,
            total: 0,
            stats: Arc::default(),
            budget,
        }
    }

    /// Starts metering one invocation: its peak starts at what the environment holds.
    pub fn begin(&mut self) -> Arc<MemoryStats> {
        let stats = Arc::new(MemoryStats::default());
        stats.peak.store(self.total, Ordering::Relaxed);
        self.stats = stats.clone();
        stats
    }

    /// Linear memory the environment holds now.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.total);
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Wasmtime asks before checking the memory's own declared maximum; growth it will
        // refuse anyway must not count against (or be reported as hitting) our cap.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let growth = desired.saturating_sub(current) as u64;
        let total = self.total.saturating_add(growth);
        if total > self.cap {
            self.stats.hit_limit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        if let Some(budget) = &self.budget {
            if !budget.try_charge(growth) {
                self.stats.hit_budget.store(true, Ordering::Relaxed);
                return Ok(false);
            }
        }
        self.total = total;
        self.stats.peak.fetch_max(total, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn caps_the_sum_of_memories_and_tracks_the_peak() {
        let mut l = MemoryLimiter::new(100, None);
        let stats = l.begin();
        assert!(l.memory_growing(0, 60, None).unwrap());
        assert!(l.memory_growing(0, 40, None).unwrap());
        assert_eq!(stats.peak_bytes(), 100);
        assert!(!stats.hit_limit());
        assert!(!l.memory_growing(40, 41, None).unwrap());
        assert!(stats.hit_limit());
        assert_eq!(stats.peak_bytes(), 100);
        // The next invocation on the same environment starts from what it holds.
        let next = l.begin();
        assert_eq!(next.peak_bytes(), 100);
        assert!(!next.hit_limit());
    }

    #[test]
    fn growth_past_the_memorys_own_maximum_is_not_counted() {
        let mut l = MemoryLimiter::new(100, None);
        let stats = l.begin();
        assert!(!l.memory_growing(10, 50, Some(20)).unwrap());
        assert!(!stats.hit_limit());
        assert!(l.memory_growing(0, 100, None).unwrap());
    }

    #[test]
    fn environments_share_the_budget_and_give_it_back_when_retired() {
        let budget = MemoryBudget::new(150);
        let mut a = MemoryLimiter::new(100, Some(budget.clone()));
        let mut b = MemoryLimiter::new(100, Some(budget.clone()));
        assert!(a.memory_growing(0, 100, None).unwrap());
        let stats = b.begin();
        assert!(!b.memory_growing(0, 60, None).unwrap());
        assert!(stats.hit_budget() && !stats.hit_limit());
        assert!(b.memory_growing(0, 50, None).unwrap());
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.used(), 50);
        assert!(b.memory_growing(50, 100, None).unwrap());
    }
}
