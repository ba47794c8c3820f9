//! Plumbing shared by both guest contracts: deadlines, classifying failures, and turning
//! captured output into log lines.

use crate::limits::MemoryStats;
use crate::pipe::CappedPipe;
use crate::{Limits, LogEntry};
use cirrus_api::{ApiError, ErrorCode, LogStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{Store, UpdateDeadline};

/// Raised from the epoch callback when an invocation outlives its timeout.
#[derive(Debug)]
pub(crate) struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invocation exceeded its timeout")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Epoch ticks a guest may run before it counts as CPU-bound and must queue for a
/// [`CpuLanes`] permit at each further tick. Short invocations (most of them) never do.
const FREE_TICKS: u32 = 2;

/// The CPU-bound guests that may run at once: one fewer than the host's cores, so a core
/// is always left for the HTTP server and for short invocations, whatever spins.
/// Waiting guests take turns in arrival order (a fair time slice of one tick each).
#[derive(Clone)]
pub struct CpuLanes(Arc<Semaphore>);

impl CpuLanes {
    pub fn new(lanes: usize) -> Self {
        Self(Arc::new(Semaphore::new(lanes.max(1))))
    }

    pub fn for_host() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores.saturating_sub(1))
    }
}

/// Yields to the scheduler on every epoch tick, so a CPU-bound guest shares its worker
/// thread with everyone else; past [`FREE_TICKS`] of running without waiting on anything,
/// each slice needs a CPU lane; traps once the deadline passes. The returned guard gives
/// back the lane whenever the guest waits on a host call (see [`metered`]) and when the
/// invocation ends (an environment outlives it).
pub(crate) fn arm_deadline<T: 'static>(
    store: &mut Store<T>,
    timeout: Duration,
    lanes: &CpuLanes,
) -> LaneGuard {
    let deadline = Instant::now() + timeout;
    let state = Arc::new(LaneState::default());
    let (lanes, shared) = (lanes.0.clone(), state.clone());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            return Err(wasmtime::Error::new(DeadlineExceeded));
        }
        // The Pending this yield causes is ours, not a wait on I/O.
        shared.yielding.store(true, Ordering::Relaxed);
        let ticks = shared.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        if ticks <= FREE_TICKS {
            return Ok(UpdateDeadline::Yield(1));
        }
        // Give up the lane before queueing for the next slice, so waiters take turns.
        shared.release();
        let (lanes, shared) = (lanes.clone(), shared.clone());
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                // A free lane must not mean running on without a pause: others queued
                // on this worker get their turn first, as with a plain yield.
                tokio::task::yield_now().await;
                if let Ok(permit) = lanes.acquire_owned().await {
                    *lock(&shared.permit) = Some(permit);
                }
            }),
        ))
    });
    LaneGuard(state)
}

#[derive(Default)]
struct LaneState {
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    /// Epoch ticks since the guest last waited on a host call.
    ticks: AtomicU32,
    /// Set by the epoch callback when it makes the guest yield.
    yielding: AtomicBool,
}

impl LaneState {
    fn release(&self) {
        drop(lock(&self.permit).take());
    }
}

/// An invocation's CPU-lane state; dropping it gives back any lane.
pub(crate) struct LaneGuard(Arc<LaneState>);

impl LaneGuard {
    /// The guest's future returned `Pending`: unless the epoch callback made it yield,
    /// it waits on a host call (I/O, a timer, another function). It then holds no lane
    /// (a lane held while waiting could deadlock a call chain) and is no longer CPU-bound.
    fn waiting(&self) {
        if !self.0.yielding.swap(false, Ordering::Relaxed) {
            self.0.release();
            self.0.ticks.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Grace on top of the epoch deadline for the outer timer, which only matters when the
/// guest is parked in a host call (never polled, so never interrupted by epochs).
pub(crate) const TIMEOUT_GRACE: Duration = Duration::from_millis(50);

pub(crate) fn timeout_error(limits: &Limits) -> ApiError {
    ApiError::new(
        ErrorCode::Timeout,
        format!(
            "function did not finish within its timeout of {}; raise `timeout` or make it faster",
            cirrus_api::duration::format(limits.timeout)
        ),
    )
}

/// Notes in the logs that the invocation ran out of time, and says so to the caller.
pub(crate) fn timed_out(logs: &mut Vec<LogEntry>, limits: &Limits) -> ApiError {
    platform(
        logs,
        format!(
            "timed out after {}",
            cirrus_api::duration::format(limits.timeout)
        ),
    );
    timeout_error(limits)
}

/// Notes in the logs that the caller went away, and says so.
pub(crate) fn caller_gone(logs: &mut Vec<LogEntry>) -> ApiError {
    platform(logs, "cancelled: the caller went away".to_owned());
    cancelled_error()
}

pub(crate) fn cancelled_error() -> ApiError {
    ApiError::new(
        ErrorCode::Cancelled,
        "the caller went away (its invocation ended), so this call was stopped",
    )
}

/// Runs `run` until it finishes or `cancelled` resolves (then `None`).
///
/// This and [`metered`] take the future pinned where the caller keeps it: an `async fn`
/// holding a future by value keeps room for it twice (as its argument and as its pinned
/// local), and each such wrapper doubled the invocation's state, which is copied to the
/// heap on every call.
pub(crate) async fn unless_cancelled<F: std::future::Future>(
    run: std::pin::Pin<&mut F>,
    cancelled: Option<crate::Cancelled>,
) -> Option<F::Output> {
    match cancelled {
        None => Some(run.await),
        Some(cancelled) => tokio::select! {
            done = run => Some(done),
            () = cancelled => None,
        },
    }
}

/// Growth refused because every environment together reached the server's budget: the
/// host's problem, not the guest's, so the caller is told to retry.
pub(crate) fn budget_error() -> ApiError {
    ApiError::new(
        ErrorCode::Throttled,
        "the server's memory budget is spent (other functions hold it); retry shortly",
    )
}

pub(crate) fn memory_error(limits: &Limits) -> ApiError {
    ApiError::new(
        ErrorCode::MemoryLimitExceeded,
        format!(
            "function needed more than its memory limit of {} MiB; raise `memory_mb`",
            limits.memory_bytes >> 20
        ),
    )
}

/// Turns a wasmtime error from instantiating or running a guest into what the caller
/// sees, writing the full detail (backtrace included) to the invocation's logs.
pub(crate) fn classify(
    err: &wasmtime::Error,
    stats: &MemoryStats,
    limits: &Limits,
    logs: &mut Vec<LogEntry>,
) -> ApiError {
    if err.downcast_ref::<DeadlineExceeded>().is_some() {
        return timed_out(logs, limits);
    }
    // `{:#}` gives the cause chain with the guest's wasm backtrace, not the host's.
    platform(logs, format!("error: {err:#}"));
    if stats.hit_limit() {
        return memory_error(limits);
    }
    if stats.hit_budget() {
        return budget_error();
    }
    if err.is::<wasmtime::PoolConcurrencyLimitError>() {
        // The instance pool is exhausted: a host capacity problem, not the guest's.
        return ApiError::new(
            ErrorCode::Throttled,
            format!("no instance slot free: {err}; retry shortly"),
        );
    }
    let summary = match err.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("function trapped: {trap}"),
        None => format!("function failed: {err}"),
    };
    ApiError::new(
        ErrorCode::FunctionError,
        format!("{summary} (see the function's logs)"),
    )
}

/// A guest failure that is not a wasmtime error (non-zero exit, no response): still
/// reported as running out of memory when the guest hit its cap on the way, since that
/// is how guests usually react to a refused allocation.
pub(crate) fn guest_failure(
    message: String,
    stats: &MemoryStats,
    limits: &Limits,
    logs: &mut Vec<LogEntry>,
) -> ApiError {
    platform(logs, message.clone());
    if stats.hit_limit() {
        return memory_error(limits);
    }
    if stats.hit_budget() {
        return budget_error();
    }
    ApiError::new(ErrorCode::FunctionError, message)
}

pub(crate) fn platform(logs: &mut Vec<LogEntry>, line: String) {
    logs.push(LogEntry {
        stream: LogStream::Platform,
        line,
    });
}

/// Splits captured output into log lines (lossy UTF-8), noting truncation, and empties
/// the pipe for the environment's next invocation.
pub(crate) fn drain_logs(
    pipe: &CappedPipe,
    stream: LogStream,
    limit: usize,
    logs: &mut Vec<LogEntry>,
) {
    let (bytes, overflowed) = pipe.take();
    if bytes.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&bytes);
    for line in text.lines() {
        logs.push(LogEntry {
            stream,
            line: line.to_owned(),
        });
    }
    if overflowed {
        platform(
            logs,
            format!("{} output truncated at {limit} bytes", stream.as_str()),
        );
    }
}

/// CPU time of the calling thread (user + system).
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A poll shorter than this (wall time) counts its wall time as CPU time: the thread is
/// rarely preempted in so short a window, and reading its CPU clock a second time is a
/// system call (the thread CPU clock has no vDSO path), which cost 3 % of the server's
/// time at 30,000 calls/s.
const SHORT_POLL: Duration = Duration::from_micros(200);

/// Runs `future`, adding the CPU time its polls take to `cpu`. The guest may move between
/// worker threads at every yield, so each poll is measured on the thread running it.
/// With a lane guard, a guest that waits gives up its CPU lane.
pub(crate) async fn metered<F: std::future::Future>(
    mut future: std::pin::Pin<&mut F>,
    cpu: &mut Duration,
    lane: Option<&LaneGuard>,
) -> F::Output {
    std::future::poll_fn(|cx| {
        let (start, started) = (thread_cpu_time(), std::time::Instant::now());
        let poll = future.as_mut().poll(cx);
        let wall = started.elapsed();
        *cpu += if wall < SHORT_POLL {
            wall
        } else {
            thread_cpu_time().saturating_sub(start)
        };
        if let (std::task::Poll::Pending, Some(lane)) = (&poll, lane) {
            lane.waiting();
        }
        poll
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_guest_that_waits_gives_up_its_lane_but_a_yielding_one_keeps_its_turn() {
        let lanes = CpuLanes::new(1);
        let guard = LaneGuard(Arc::new(LaneState::default()));
        let take = |guard: &LaneGuard| {
            *lock(&guard.0.permit) = Some(lanes.0.clone().try_acquire_owned().unwrap());
            guard.0.ticks.store(5, Ordering::Relaxed);
        };
        // The epoch callback made it yield: still CPU-bound, the lane stays with it.
        take(&guard);
        guard.0.yielding.store(true, Ordering::Relaxed);
        guard.waiting();
        assert_eq!(lanes.0.available_permits(), 0);
        assert_eq!(guard.0.ticks.load(Ordering::Relaxed), 5);
        // It waits on a host call (another function, say): the lane is free for others
        // (one of which may be that function) and its CPU-bound count starts over.
        guard.waiting();
        assert_eq!(lanes.0.available_permits(), 1);
        assert_eq!(guard.0.ticks.load(Ordering::Relaxed), 0);
        // The invocation ends holding a lane: dropping the guard gives it back.
        *lock(&guard.0.permit) = Some(lanes.0.clone().try_acquire_owned().unwrap());
        drop(guard);
        assert_eq!(lanes.0.available_permits(), 1);
    }

    #[tokio::test]
    async fn metering_counts_cpu_spent_in_polls_but_not_sleep() {
        let mut cpu = Duration::ZERO;
        metered(
            std::pin::pin!(async {
                // Spin for 20 ms of this thread's CPU time (not wall time: on a loaded
                // machine the thread may wait for a core much longer than it runs).
                let start = thread_cpu_time();
                while thread_cpu_time().saturating_sub(start) < Duration::from_millis(20) {
                    std::hint::black_box(0u64);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }),
            &mut cpu,
            None,
        )
        .await;
        assert!(cpu >= Duration::from_millis(20), "{cpu:?}");
        assert!(
            cpu < Duration::from_millis(45),
            "sleeping is not CPU: {cpu:?}"
        );
    }
}
