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
