//! The process's limit on open files: raised at start, then shared between the
//! listeners' connections and everything else the server keeps open.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept back from the listeners at least: SQLite's files (four connections,
/// each with the database, its WAL and shared memory), artifacts and compiled code
/// being loaded, guests' outbound connections (about one per invocation in flight, 128
/// by default), the OTLP exporter and the runtime's own.
pub const RESERVED_FDS: u64 = 256;

/// Connection caps derived from a generous fd limit stop here: each connection also
/// costs buffers, and a few thousand idle sockets serve any single machine.
pub const MAX_DEFAULT_CONNECTIONS: usize = 8192;

/// Used when the limit is unknown or unlimited.
const UNLIMITED_GUESS: u64 = 1 << 20;

/// Raises the soft limit on open files to the hard one (distributions often start
/// processes at 1,024 with a far higher hard limit). Returns the soft limit in force,
/// `None` when it is unlimited.
pub fn raise_fd_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    // An unlimited hard limit cannot be the soft one: Linux caps open files at nr_open.
    let target = limit.maximum.unwrap_or(UNLIMITED_GUESS);
    if target <= current {
        return Some(current);
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        },
    ) {
        Ok(()) => {
            tracing::info!(from = current, to = target, "raised the open-file limit");
            Some(target)
        }
        Err(e) => {
            tracing::warn!(limit = current, "could not raise the open-file limit: {e}");
            Some(current)
        }
    }
}

/// Memory mappings one environment may need: its linear memories, tables and stack,
/// each split around guard pages and copy-on-write images.
const MAPS_PER_ENVIRONMENT: u64 = 8;

/// Raises `vm.max_map_count` (65,530 on most kernels) when the instance pool sized for
/// `environments` could need more mappings than that and the process may change it
/// (root): without it, a burst of thousands of concurrent invocations fails to map
/// memory long before any configured cap. Otherwise says what to set.
pub fn raise_map_count(environments: u32) {
    const PATH: &str = "/proc/sys/vm/max_map_count";
    // Plus what the rest of the process maps (code, heaps, thread stacks).
    let needed = u64::from(environments) * MAPS_PER_ENVIRONMENT + 16_384;
    let Some(current) = std::fs::read_to_string(PATH)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return;
    };
    if current >= needed {
        return;
    }
    match std::fs::write(PATH, needed.to_string()) {
        Ok(()) => tracing::info!(from = current, to = needed, "raised vm.max_map_count"),
        Err(e) => tracing::warn!(
            current,
            needed,
            "vm.max_map_count may be too low for {environments} environments ({e}); run `sysctl vm.max_map_count={needed}`"
        ),
    }
}

/// Default caps of the main and the S3 listener for an fd limit: what is left after the
/// store's share (a quarter, at least [`RESERVED_FDS`]), half of it to the main listener
/// and a quarter to the S3 one, whose connections may each hold an object file open too.
pub fn connection_caps(fd_limit: Option<u64>) -> (usize, usize) {
    let limit = fd_limit.unwrap_or(UNLIMITED_GUESS);
    let budget = limit.saturating_sub(RESERVED_FDS.max(limit / 4));
    let cap = |share: u64, max: usize| (budget / share).clamp(16, max as u64) as usize;
    (
        cap(2, MAX_DEFAULT_CONNECTIONS),
        cap(4, MAX_DEFAULT_CONNECTIONS / 2),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_the_store_its_share() {
        // 1,024: 256 kept back, 384 + 2 × 192 for the listeners.
        assert_eq!(connection_caps(Some(1024)), (384, 192));
        assert_eq!(connection_caps(Some(20_000)), (7500, 3750));
        assert_eq!(connection_caps(Some(1 << 20)), (8192, 4096));
        assert_eq!(connection_caps(None), (8192, 4096));
        assert_eq!(connection_caps(Some(100)), (16, 16));
    }

    #[test]
    fn raising_never_lowers() {
        let before = getrlimit(Resource::Nofile).current;
        let after = raise_fd_limit();
        assert!(after >= before || after.is_none());
        assert_eq!(raise_fd_limit(), after, "a second call changes nothing");
    }
}
