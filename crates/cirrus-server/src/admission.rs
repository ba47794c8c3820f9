//! Admission: how the server's invocation capacity (`--max-in-flight`) is shared between
//! functions, so that one hot function cannot starve the others.
//!
//! - **Reserved pools.** A function's `reserved_concurrency` (Lambda's reserved
//!   concurrency) sets that many invocations aside for it alone, and is also its cap. The
//!   rest of `--max-in-flight` is *shared* by the functions without a reservation.
//! - **Fair share.** A function without a reservation holds at most the shared capacity
//!   less a headroom (a quarter of it, between 1 and 64), so another function always
//!   finds room at once, however hot the first one is. With a shared capacity of 1 there
//!   is nothing to split: one function may take it.
//! - **Per-function queues.** A caller that finds no room waits in its function's own
//!   queue (`--queue-depth` places, at most `--queue-timeout`), then gets 429 `throttled`.
//!   One function's waiters never take another's places.
//! - **Max-min handoff.** Capacity that frees goes to the waiting function with the fewest
//!   invocations in flight (oldest waiter first on a tie); within a function, first come
//!   first served.
//!
//! Everything is decided under one short-held lock: the state is a few counters and the
//! queues, and each decision touches only the functions that have callers waiting.

use cirrus_api::{ApiError, ErrorCode};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// Most invocations one function without a reservation may hold of `shared`: all but a
/// headroom of a quarter (between 1 and 64), so others find room at once. At 1 (or 0)
/// there is nothing to keep back without idling the only slot.
pub fn fair_share(shared: usize) -> usize {
    if shared <= 1 {
        shared
    } else {
        shared - (shared / 4).clamp(1, 64)
    }
}

/// Capacity no reservation may take: a tenth of `--max-in-flight`, at least 1, so
/// functions without a reservation can always run.
pub fn min_unreserved(total: usize) -> usize {
    total.div_ceil(10).max(1)
}

/// The server's invocation capacity and everyone waiting for it.
pub struct Capacity {
    total: usize,
    queue_depth: usize,
    queue_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    functions: HashMap<Arc<str>, Function>,
    /// Functions with callers in their queue: the only ones a handoff looks at.
    waiting: Vec<Arc<str>>,
    in_flight: usize,
    /// Invocations holding shared (not reserved) capacity.
    shared_in_flight: usize,
    /// Sum of the granted reservations.
    reserved: usize,
    next_ticket: u64,
}

/// Kept while a function has invocations in flight, callers waiting or a reservation.
#[derive(Default)]
struct Function {
    in_flight: usize,
    reservation: Option<Reservation>,
    queue: VecDeque<Waiter>,
}

#[derive(Debug, Clone, Copy)]
struct Reservation {
    size: usize,
    /// False for a stored reservation that no longer fits at start-up (`--max-in-flight`
    /// was lowered): the function then shares capacity, still capped at `size`.
    granted: bool,
}

struct Waiter {
    ticket: u64,
    /// The called version's `max_concurrency`.
    cap: Option<usize>,
    grant: oneshot::Sender<Permit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Shared,
    Reserved,
}

/// What keeps a caller from starting now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocked {
    /// The version's `max_concurrency`.
    Cap(usize),
    Reserved(usize),
    FairShare {
        share: usize,
        shared: usize,
    },
    /// All shared capacity is taken.
    Server {
        shared: usize,
        reserved: usize,
    },
    /// Callers of the same function wait ahead (FIFO).
    Queue(usize),
}

/// One invocation's hold on capacity; dropping it hands the capacity on.
pub struct Permit {
    /// `None` once the capacity was returned another way.
    capacity: Option<Arc<Capacity>>,
    function: Arc<str>,
    pool: Pool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(capacity) = self.capacity.take() {
            let mut state = capacity.lock();
            state.give_back(&self.function, self.pool);
            capacity.hand_off(&mut state);
        }
    }
}

/// A place in a function's queue. However the wait ends — granted, timed out, or the
/// caller's future dropped — the place is given up, and a grant that arrived meanwhile
/// is returned rather than leaked.
struct Waiting<'a> {
    capacity: &'a Arc<Capacity>,
    function: Arc<str>,
    ticket: u64,
    grant: oneshot::Receiver<Permit>,
    settled: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let withdrawn = self.capacity.lock().withdraw(&self.function, self.ticket);
        if !withdrawn {
            // Granted after all: dropping the permit (outside the lock) returns it.
            drop(self.grant.try_recv());
        }
    }
}

impl Capacity {
    pub fn new(total: usize, queue_depth: usize, queue_timeout: Duration) -> Self {
        Self {
            total,
            queue_depth,
            queue_timeout,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Invocations in flight across all functions.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Room for one invocation of `function`, waiting (boundedly) for it. `max_concurrency`
    /// is the called version's cap.
    pub async fn admit(
        self: &Arc<Self>,
        function: &str,
        max_concurrency: Option<u32>,
    ) -> Result<Permit, ApiError> {
        let cap = max_concurrency.map(|c| c as usize);
        let (name, ticket, grant) = {
            let mut state = self.lock();
            let name = state.name(function);
            let queued = state.functions.get(function).map_or(0, |f| f.queue.len());
            let room = state.room(self.total, function, cap);
            if let (Ok(pool), 0) = (room, queued) {
                state.take(&name, pool);
                return Ok(self.permit(name, pool));
            }
            let blocked = room.err().unwrap_or(Blocked::Queue(queued));
            // A reservation of 0 switches the function off: waiting cannot help.
            if queued >= self.queue_depth || matches!(blocked, Blocked::Reserved(0)) {
                let error = self.throttled(function, blocked, Wait::QueueFull);
                state.tidy(function);
                return Err(error);
            }
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            let (tx, rx) = oneshot::channel();
            let entry = state.functions.entry(name.clone()).or_default();
            entry.queue.push_back(Waiter {
                ticket,
                cap,
                grant: tx,
            });
            if entry.queue.len() == 1 {
                state.waiting.push(name.clone());
            }
            (name, ticket, rx)
        };
        let mut waiting = Waiting {
            capacity: self,
            function: name,
            ticket,
            grant,
            settled: false,
        };
        if let Ok(Ok(permit)) = tokio::time::timeout(self.queue_timeout, &mut waiting.grant).await {
            waiting.settled = true;
            return Ok(permit);
        }
        waiting.settled = true;
        let blocked = {
            let mut state = self.lock();
            if state.withdraw(function, ticket) {
                let ahead = state.functions.get(function).map_or(0, |f| f.queue.len());
                Some(
                    state
                        .room(self.total, function, cap)
                        .err()
                        .unwrap_or(Blocked::Queue(ahead)),
                )
            } else {
                None
            }
        };
        match blocked {
            Some(blocked) => Err(self.throttled(function, blocked, Wait::TimedOut)),
            // The grant raced the timeout: take it rather than hand it back.
            None => waiting.grant.try_recv().map_err(|_| {
                ApiError::internal(format!("admission of {function:?} lost its grant"))
            }),
        }
    }

    fn permit(self: &Arc<Self>, function: Arc<str>, pool: Pool) -> Permit {
        Permit {
            capacity: Some(self.clone()),
            function,
            pool,
        }
    }

    /// Gives waiting callers the room there is: each time to the function with the fewest
    /// invocations in flight whose next caller can start. Called whenever room may
    /// have appeared (a permit returned, a reservation changed).
    fn hand_off(self: &Arc<Self>, state: &mut State) {
        loop {
            let mut best: Option<(usize, u64, usize, Pool)> = None;
            for (index, name) in state.waiting.iter().enumerate() {
                let Some(function) = state.functions.get(name) else {
                    continue;
                };
                let Some(head) = function.queue.front() else {
                    continue;
                };
                if let Ok(pool) = state.room(self.total, name, head.cap) {
                    let rank = (function.in_flight, head.ticket);
                    if best.is_none_or(|(n, t, _, _)| rank < (n, t)) {
                        best = Some((rank.0, rank.1, index, pool));
                    }
                }
            }
            let Some((_, _, index, pool)) = best else {
                return;
            };
            let name = state.waiting[index].clone();
            let Some(function) = state.functions.get_mut(&name) else {
                return;
            };
            let Some(waiter) = function.queue.pop_front() else {
                return;
            };
            if function.queue.is_empty() {
                state.waiting.swap_remove(index);
            }
            state.take(&name, pool);
            if let Err(mut permit) = waiter.grant.send(self.permit(name.clone(), pool)) {
                // The waiter is gone without having withdrawn (its `Waiting` withdraws
                // first, so this should not happen): return the capacity here, since
                // the permit's own drop would take the lock held now.
                permit.capacity = None;
                state.give_back(&name, pool);
            }
        }
    }

    /// Whether a reservation of `reserved` for `function` fits beside the other
    /// functions' reservations; the error says by how much it does not.
    pub fn check_reservation(&self, function: &str, reserved: Option<u32>) -> Result<(), String> {
        let Some(reserved) = reserved else {
            return Ok(());
        };
        let state = self.lock();
        let own = state
            .functions
            .get(function)
            .and_then(|f| f.reservation)
            .filter(|r| r.granted)
            .map_or(0, |r| r.size);
        let others = state.reserved - own;
        let keep = min_unreserved(self.total);
        let room = self.total.saturating_sub(keep).saturating_sub(others);
        if reserved as usize <= room {
            return Ok(());
        }
        Err(format!(
            "{reserved} does not fit: the server runs {} invocations at once (--max-in-flight), \
             at least {keep} of them stay unreserved, and other functions reserve {others}, \
             so at most {room} can be reserved for {function:?}",
            self.total
        ))
    }

    /// Sets (or with `None` removes) `function`'s reservation. Returns false when it does
    /// not fit (only possible at start-up after `--max-in-flight` was lowered: deploys
    /// call [`Capacity::check_reservation`] first); the function then shares capacity,
    /// still capped at its reservation, until room appears.
    pub fn set_reservation(self: &Arc<Self>, function: &str, reserved: Option<u32>) -> bool {
        let mut state = self.lock();
        let name = state.name(function);
        if let Some(old) = state.functions.get(function).and_then(|f| f.reservation) {
            if old.granted {
                state.reserved -= old.size;
            }
        }
        let limit = self.total.saturating_sub(min_unreserved(self.total));
        let reservation = reserved.map(|size| Reservation {
            size: size as usize,
            granted: state.reserved + size as usize <= limit,
        });
        if let Some(r) = reservation.filter(|r| r.granted) {
            state.reserved += r.size;
        }
        state.functions.entry(name).or_default().reservation = reservation;
        state.tidy(function);
        state.grant_pending_reservations(limit);
        // Shared capacity and this function's cap changed: waiters may fit now.
        self.hand_off(&mut state);
        reservation.is_none_or(|r| r.granted)
    }

    fn throttled(&self, function: &str, blocked: Blocked, wait: Wait) -> ApiError {
        let switched_off = matches!(blocked, Blocked::Reserved(0));
        let reason = match blocked {
            Blocked::Cap(cap) => {
                format!(
                    "function {function:?} is at its concurrency limit of {cap} (max_concurrency)"
                )
            }
            Blocked::Reserved(0) => {
                format!("function {function:?} is switched off: its reserved concurrency is 0")
            }
            Blocked::Reserved(size) => {
                format!("function {function:?} is at its reserved concurrency of {size}")
            }
            Blocked::FairShare { share, shared } => format!(
                "function {function:?} holds its fair share of the server: {share} of the \
                 {shared} invocations shared by functions without a reservation"
            ),
            Blocked::Server {
                shared,
                reserved: 0,
            } => format!("the server is at its concurrency limit of {shared} (--max-in-flight)"),
            Blocked::Server { shared, reserved } => format!(
                "the server is at its concurrency limit: {shared} invocations shared by \
                 functions without a reservation (--max-in-flight {}, {reserved} reserved)",
                self.total
            ),
            Blocked::Queue(ahead) => {
                format!("function {function:?} has {ahead} callers waiting ahead")
            }
        };
        let wait = match wait {
            _ if switched_off => String::new(),
            Wait::QueueFull if self.queue_depth == 0 => String::new(),
            Wait::QueueFull => format!(
                ", and all {} places in its queue are taken (--queue-depth)",
                self.queue_depth
            ),
            Wait::TimedOut => format!(
                ", still after waiting {} (--queue-timeout)",
                cirrus_api::duration::format(self.queue_timeout)
            ),
        };
        ApiError::new(ErrorCode::Throttled, format!("{reason}{wait}; retry later"))
    }
}

#[derive(Debug, Clone, Copy)]
enum Wait {
    QueueFull,
    TimedOut,
}

impl State {
    /// The map's own key for `function`, so permits and queues share one allocation.
    fn name(&self, function: &str) -> Arc<str> {
        self.functions
            .get_key_value(function)
            .map_or_else(|| Arc::from(function), |(k, _)| k.clone())
    }

    /// Which pool a caller of `function` (whose version has `cap`) would start in now.
    fn room(&self, total: usize, function: &str, cap: Option<usize>) -> Result<Pool, Blocked> {
        let entry = self.functions.get(function);
        let in_flight = entry.map_or(0, |f| f.in_flight);
        if let Some(cap) = cap.filter(|&cap| in_flight >= cap) {
            return Err(Blocked::Cap(cap));
        }
        let reservation = entry.and_then(|f| f.reservation);
        if let Some(r) = reservation {
            if in_flight >= r.size {
                return Err(Blocked::Reserved(r.size));
            }
            if r.granted {
                return Ok(Pool::Reserved);
            }
        }
        let shared = total.saturating_sub(self.reserved);
        let share = fair_share(shared);
        if in_flight >= share && share < shared {
            return Err(Blocked::FairShare { share, shared });
        }
        if self.shared_in_flight >= shared {
            return Err(Blocked::Server {
                shared,
                reserved: self.reserved,
            });
        }
        Ok(Pool::Shared)
    }

    /// Grants, in name order, reservations that did not fit when they were set, now
    /// that others may have shrunk.
    fn grant_pending_reservations(&mut self, limit: usize) {
        let mut pending: Vec<(Arc<str>, usize)> = self
            .functions
            .iter()
            .filter_map(|(name, f)| {
                let r = f.reservation.filter(|r| !r.granted)?;
                Some((name.clone(), r.size))
            })
            .collect();
        pending.sort();
        for (name, size) in pending {
            if self.reserved + size <= limit {
                self.reserved += size;
                if let Some(r) = self
                    .functions
                    .get_mut(&name)
                    .and_then(|f| f.reservation.as_mut())
                {
                    r.granted = true;
                }
            }
        }
    }

    fn take(&mut self, name: &Arc<str>, pool: Pool) {
        self.functions.entry(name.clone()).or_default().in_flight += 1;
        self.in_flight += 1;
        if pool == Pool::Shared {
            self.shared_in_flight += 1;
        }
    }

    fn give_back(&mut self, function: &str, pool: Pool) {
        if let Some(entry) = self.functions.get_mut(function) {
            entry.in_flight -= 1;
        }
        self.in_flight -= 1;
        if pool == Pool::Shared {
            self.shared_in_flight -= 1;
        }
        self.tidy(function);
    }

    /// Takes a waiter out of its queue; false when it is no longer there (it was granted).
    fn withdraw(&mut self, function: &str, ticket: u64) -> bool {
        let Some(entry) = self.functions.get_mut(function) else {
            return false;
        };
        let Some(index) = entry.queue.iter().position(|w| w.ticket == ticket) else {
            return false;
        };
        entry.queue.remove(index);
        if entry.queue.is_empty() {
            self.waiting.retain(|n| &**n != function);
        }
        self.tidy(function);
        true
    }

    /// Forgets a function that holds nothing, so deleted functions leave no trace.
    fn tidy(&mut self, function: &str) {
        if self
            .functions
            .get(function)
            .is_some_and(|f| f.in_flight == 0 && f.queue.is_empty() && f.reservation.is_none())
        {
            self.functions.remove(function);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    const LONG: Duration = Duration::from_secs(3600);

    type Admit = Pin<Box<dyn Future<Output = Result<Permit, ApiError>>>>;

    fn capacity(total: usize, queue_depth: usize) -> Arc<Capacity> {
        Arc::new(Capacity::new(total, queue_depth, LONG))
    }

    /// An admission decided without waiting: admitted, or refused with a full queue.
    fn now(capacity: &Arc<Capacity>, function: &str) -> Result<Permit, ApiError> {
        capacity
            .admit(function, None)
            .now_or_never()
            .unwrap_or_else(|| panic!("a caller of {function} was queued"))
    }

    /// A caller that has to wait: polled once, so it holds its place in the queue.
    fn queued(capacity: &Arc<Capacity>, function: &str) -> Admit {
        let (c, f) = (capacity.clone(), function.to_owned());
        let mut admit: Admit = Box::pin(async move { c.admit(&f, None).await });
        assert!(
            poll(&mut admit).is_none(),
            "a caller of {function} had room"
        );
        admit
    }

    fn poll(admit: &mut Admit) -> Option<Result<Permit, ApiError>> {
        match admit
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        }
    }

    fn granted(admit: &mut Admit) -> Permit {
        poll(admit)
            .expect("the waiter was let in")
            .expect("the waiter was let in")
    }

    fn in_flight(capacity: &Capacity, function: &str) -> usize {
        capacity
            .lock()
            .functions
            .get(function)
            .map_or(0, |f| f.in_flight)
    }

    #[test]
    fn fair_share_keeps_headroom_and_tiny_caps_stay_usable() {
        assert_eq!(fair_share(0), 0);
        assert_eq!(fair_share(1), 1);
        assert_eq!(fair_share(2), 1);
        assert_eq!(fair_share(4), 3);
        assert_eq!(fair_share(16), 12);
        assert_eq!(fair_share(128), 96);
        assert_eq!(fair_share(10_000), 10_000 - 64);
        assert_eq!(min_unreserved(1), 1);
        assert_eq!(min_unreserved(16), 2);
        assert_eq!(min_unreserved(128), 13);
    }

    #[tokio::test]
    async fn one_function_leaves_others_room() {
        let c = capacity(16, 4);
        let hot: Vec<_> = (0..12).map(|_| now(&c, "hot").unwrap()).collect();
        let mut hot_waiters: Vec<_> = (0..4).map(|_| queued(&c, "hot")).collect();
        let error = now(&c, "hot").err().unwrap();
        assert_eq!(error.code, ErrorCode::Throttled);
        assert_eq!(
            error.message,
            "function \"hot\" holds its fair share of the server: 12 of the 16 invocations \
             shared by functions without a reservation, and all 4 places in its queue are \
             taken (--queue-depth); retry later"
        );
        // The hot function's full queue takes none of another function's room or places.
        let others: Vec<_> = (0..4).map(|_| now(&c, "other").unwrap()).collect();
        let mut third = queued(&c, "third");
        drop(others);
        // Freed room goes to the function with the fewest in flight, not the longest queue.
        let _third = granted(&mut third);
        assert!(hot_waiters.iter_mut().all(|w| poll(w).is_none()));
        assert_eq!(c.in_flight(), 13);
        drop(hot);
        let hot: Vec<_> = hot_waiters.iter_mut().map(granted).collect();
        assert_eq!(hot.len(), 4);
    }

    #[tokio::test]
    async fn freed_room_goes_to_the_function_with_fewest_in_flight() {
        let c = capacity(5, 8);
        let mut a: Vec<_> = (0..3).map(|_| now(&c, "a").unwrap()).collect();
        let mut b = vec![now(&c, "b").unwrap()];
        let x = now(&c, "x").unwrap();
        // Full: a waits first, then b.
        let mut a_waiter = queued(&c, "a");
        let mut b_waiter = queued(&c, "b");
        drop(a.pop());
        // a has 2 in flight, b 1: b goes first although a waited longer.
        assert!(poll(&mut a_waiter).is_none());
        b.push(granted(&mut b_waiter));
        assert_eq!((in_flight(&c, "a"), in_flight(&c, "b")), (2, 2));
        // A tie goes to the caller who waited longest.
        let mut b_waiter = queued(&c, "b");
        drop(x);
        let _a = granted(&mut a_waiter);
        assert!(poll(&mut b_waiter).is_none());
    }

    #[tokio::test]
    async fn callers_of_one_function_are_served_in_order() {
        // 2 in all: a fair share of 1.
        let c = capacity(2, 8);
        let first = now(&c, "a").unwrap();
        let mut second = queued(&c, "a");
        let mut third = queued(&c, "a");
        drop(first);
        assert!(poll(&mut third).is_none());
        drop(granted(&mut second));
        let _third = granted(&mut third);
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_leaks_nothing() {
        let c = capacity(2, 8);
        let held = now(&c, "a").unwrap();
        // Gone while waiting: its place is freed.
        let waiter = queued(&c, "a");
        assert_eq!(c.lock().functions["a"].queue.len(), 1);
        drop(waiter);
        assert_eq!(c.lock().functions["a"].queue.len(), 0);
        assert!(c.lock().waiting.is_empty());
        // Gone after it was let in but before it looked: the permit comes back.
        let waiter = queued(&c, "a");
        drop(held);
        assert_eq!(c.in_flight(), 1);
        drop(waiter);
        assert_eq!(c.in_flight(), 0);
        assert!(
            c.lock().functions.is_empty(),
            "idle functions leave nothing"
        );
        // All of the capacity is there again.
        let both = (now(&c, "a").unwrap(), now(&c, "b").unwrap());
        assert_eq!(c.in_flight(), 2);
        drop(both);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn waits_are_bounded_by_depth_and_time() {
        let c = Arc::new(Capacity::new(1, 1, Duration::from_millis(100)));
        let held = now(&c, "a").unwrap();
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.admit("a", None).await.map(drop) }
        });
        tokio::task::yield_now().await;
        let full = now(&c, "a").err().unwrap();
        assert!(
            full.message.contains("all 1 places in its queue are taken"),
            "{}",
            full.message
        );
        // Another function has its own place.
        let mut b = queued(&c, "b");
        let timed_out = waiter.await.unwrap().err().unwrap();
        assert_eq!(timed_out.code, ErrorCode::Throttled);
        assert_eq!(
            timed_out.message,
            "the server is at its concurrency limit of 1 (--max-in-flight), still after \
             waiting 100ms (--queue-timeout); retry later"
        );
        assert_eq!(c.lock().functions["a"].queue.len(), 0);
        drop(held);
        let _b = granted(&mut b);
    }

    #[tokio::test]
    async fn max_concurrency_caps_a_function() {
        let c = capacity(16, 0);
        let held = c.admit("a", Some(1)).now_or_never().unwrap().unwrap();
        let error = c.admit("a", Some(1)).now_or_never().unwrap().err().unwrap();
        assert_eq!(
            error.message,
            "function \"a\" is at its concurrency limit of 1 (max_concurrency); retry later"
        );
        // A version without the cap is not held back by it, but its calls count against
        // the cap of a version that has one: the cap is the function's.
        let uncapped = now(&c, "a").unwrap();
        drop(held);
        assert!(c.admit("a", Some(1)).now_or_never().unwrap().is_err());
        drop(uncapped);
        assert!(c.admit("a", Some(1)).now_or_never().unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_reservation_is_kept_for_its_function_and_caps_it() {
        let c = capacity(16, 1);
        assert!(c.set_reservation("r", Some(3)));
        // 13 shared: the hot function takes its share (10), another the rest.
        let _hot: Vec<_> = (0..10).map(|_| now(&c, "hot").unwrap()).collect();
        let _other: Vec<_> = (0..3).map(|_| now(&c, "other").unwrap()).collect();
        let r: Vec<_> = (0..3).map(|_| now(&c, "r").unwrap()).collect();
        let mut r_waiter = queued(&c, "r");
        let error = now(&c, "r").err().unwrap();
        assert!(
            error.message.contains("at its reserved concurrency of 3"),
            "{}",
            error.message
        );
        drop(r);
        let _r = granted(&mut r_waiter);
        assert_eq!(c.in_flight(), 14);
    }

    #[tokio::test]
    async fn reservations_must_leave_a_tenth_unreserved() {
        let c = capacity(16, 0);
        assert!(c.check_reservation("a", Some(10)).is_ok());
        assert!(c.set_reservation("a", Some(10)));
        assert_eq!(
            c.check_reservation("b", Some(5)).unwrap_err(),
            "5 does not fit: the server runs 16 invocations at once (--max-in-flight), at \
             least 2 of them stay unreserved, and other functions reserve 10, so at most 4 \
             can be reserved for \"b\""
        );
        assert!(c.check_reservation("b", Some(4)).is_ok());
        // A function's own reservation does not count against its new one.
        assert!(c.check_reservation("a", Some(14)).is_ok());
        assert!(c.check_reservation("a", Some(15)).is_err());
        // A reservation that does not fit (start-up after lowering --max-in-flight) is
        // not granted, but still caps its function.
        assert!(!c.set_reservation("b", Some(5)));
        let _b: Vec<_> = (0..5).map(|_| now(&c, "b").unwrap()).collect();
        assert!(now(&c, "b").is_err());
        // Once room appears, it is granted.
        c.set_reservation("a", None);
        assert!(c.lock().functions["b"].reservation.unwrap().granted);
        assert!(c.check_reservation("b", Some(14)).is_ok());
        assert!(c.check_reservation("c", Some(10)).is_err());
    }

    #[tokio::test]
    async fn a_new_reservation_admits_its_waiters_at_once() {
        let c = capacity(4, 4);
        let _other: Vec<_> = (0..3).map(|_| now(&c, "other").unwrap()).collect();
        let _x = now(&c, "x").unwrap();
        let mut waiter = queued(&c, "r");
        assert!(c.set_reservation("r", Some(1)));
        let _r = granted(&mut waiter);
        // Its cap holds from now on.
        assert!(c.admit("r", None).now_or_never().is_none());
        assert_eq!(c.lock().functions["r"].queue.len(), 0);
    }
}
