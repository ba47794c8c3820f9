//! The memory cap of one invocation, and the meter of its peak.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Table growth beyond this is refused: no legitimate guest needs more, and each element
/// costs host memory.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// What the host reads after (or while) a guest runs: peak linear memory and whether
/// the guest hit its cap. Shared, so it survives a timed-out invocation being dropped.
#[derive(Debug, Default)]
pub struct MemoryStats {
    peak: AtomicU64,
    hit_limit: AtomicBool,
}

impl MemoryStats {
    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
    pub fn hit_limit(&self) -> bool {
        self.hit_limit.load(Ordering::Relaxed)
    }
}

/// A `ResourceLimiter` capping the sum of all linear memories of one store: a component
/// with several core instances gets one budget, as a Lambda function does.
pub struct MemoryLimiter {
    cap: u64,
    total: u64,
    stats: Arc<MemoryStats>,
}

impl MemoryLimiter {
    pub fn new(cap: u64) -> (Self, Arc<MemoryStats>) {
        let stats = Arc::new(MemoryStats::default());
        let limiter = Self {
            cap,
            total: 0,
            stats: stats.clone(),
        };
        (limiter, stats)
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
        let (mut l, stats) = MemoryLimiter::new(100);
        assert!(l.memory_growing(0, 60, None).unwrap());
        assert!(l.memory_growing(0, 40, None).unwrap());
        assert_eq!(stats.peak_bytes(), 100);
        assert!(!stats.hit_limit());
        assert!(!l.memory_growing(40, 41, None).unwrap());
        assert!(stats.hit_limit());
        assert_eq!(stats.peak_bytes(), 100);
    }

    #[test]
    fn growth_past_the_memorys_own_maximum_is_not_counted() {
        let (mut l, stats) = MemoryLimiter::new(100);
        assert!(!l.memory_growing(10, 50, Some(20)).unwrap());
        assert!(!stats.hit_limit());
        assert!(l.memory_growing(0, 100, None).unwrap());
    }
}
