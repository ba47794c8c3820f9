//! Asynchronous invocation: events are committed to the durable queue before they are
//! acknowledged (group commit), then a dispatcher delivers them at least once, within
//! each function's concurrency cap, retrying with exponential backoff and jitter, and
//! parks the ones that exhaust their attempts or age in the dead-letter queue.

use crate::clock::{rfc3339, Clock};
use crate::invoker::{Call, Invoker};
use crate::lineage::{Lineage, MAX_PIPELINE_DEPTH};
use crate::registry::Registry;
use crate::sources::{failed_records, ASYNC_EVENT_TYPE, FAILURE_EVENT_TYPE, RESULT_EVENT_TYPE};
use crate::store::{Enqueued, EventQueue, NewEvent, QueuedEvent};
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Uri};
use cirrus_api::spec::Destination;
use cirrus_api::{ApiError, ErrorCode, Qualifier, Trigger};
use rand::Rng as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

/// Events accepted but not yet committed. Past this, accepting waits (back-pressure).
/// (At most 2048 × 256 KiB = 512 MiB of bodies, in the worst case of a stalled disk.)
const ENQUEUE_BACKLOG: usize = 2_048;
/// Events committed in one transaction at most.
const MAX_COMMIT_BATCH: usize = 1_024;
/// How soon a busy (throttled) function's event is tried again; not counted as an attempt.
const BUSY_RETRY: Duration = Duration::from_millis(250);
/// The longest a retry waits, whatever the backoff says.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// The dispatcher looks for due retries at least this often.
const POLL: Duration = Duration::from_millis(200);
/// A lineage's event count is kept this long after its last event. Longer than any
/// pause inside a live loop (backoff is capped at 15 minutes), so a loop never gets a
/// fresh budget by waiting; short enough that the table stays small.
pub const LINEAGE_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// How often lineages past their memory are forgotten.
const LINEAGE_SWEEP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Largest asynchronous event body (Lambda's limit is 256 KiB).
    pub max_event_bytes: usize,
    /// Events being delivered at once, at most: the rest wait on disk, not in memory.
    /// `None`: as many as the server runs invocations at once (see [`Self::prefetch`]).
    pub prefetch: Option<usize>,
    /// Idempotency keys are remembered this long.
    pub idempotency_window: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_event_bytes: 256 << 10,
            prefetch: None,
            idempotency_window: Duration::from_secs(3600),
        }
    }
}

/// The bounds of the derived prefetch: at least what a small server always had, and at
/// most 1,024 events (256 MiB of bodies at the largest event size) in memory.
const PREFETCH_MIN: usize = 64;
const PREFETCH_MAX: usize = 1_024;

impl QueueSettings {
    /// Events delivered at once on a server running `max_in_flight` invocations at
    /// once. A delivery holds its slot past its invocation (until its record is
    /// committed and the event leaves the queue), so deliveries run at most
    /// slots ÷ that time: a fixed 64 held a backlog's drain to about 5,000 events/s and
    /// a 300 ms function's events to about 200/s, however much capacity the server
    /// had. Following `--max-in-flight` lets events use what synchronous calls can
    /// (admission still shares it between functions).
    pub fn prefetch(&self, max_in_flight: usize) -> usize {
        self.prefetch
            .unwrap_or_else(|| max_in_flight.clamp(PREFETCH_MIN, PREFETCH_MAX))
    }
}

type Reply = oneshot::Sender<Result<Enqueued, String>>;

/// The accepting side: cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<(NewEvent, Reply)>,
    wake: Arc<Notify>,
}

impl EventSink {
    /// Returns once the event is committed (or found to duplicate an earlier one).
    pub async fn enqueue(&self, event: NewEvent) -> Result<Enqueued, ApiError> {
        let (reply, committed) = oneshot::channel();
        self.tx.send((event, reply)).await.map_err(|_| {
            ApiError::new(ErrorCode::Unavailable, "the event queue is shutting down")
        })?;
        let result = committed
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the event queue stopped"))?
            .map_err(|e| {
                tracing::error!("committing events failed: {e}");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the event could not be stored; retry",
                )
            })?;
        self.wake.notify_one();
        Ok(result)
    }
}

/// Starts the enqueue writer (group commit: what arrived while the last batch was
/// committed goes in the next one) and returns its sink.
pub fn start_sink(
    queue: Arc<dyn EventQueue>,
    clock: Arc<dyn Clock>,
    settings: &QueueSettings,
    wake: Arc<Notify>,
) -> EventSink {
    let (tx, mut rx) = mpsc::channel::<(NewEvent, Reply)>(ENQUEUE_BACKLOG);
    let window = settings.idempotency_window.as_millis() as u64;
    // A thread of its own, committing on it where the store can
    // (`enqueue_on_this_thread`), else waiting here for the async commit.
    let runtime = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("cirrus-enqueue".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(MAX_COMMIT_BATCH);
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                while batch.len() < MAX_COMMIT_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (events, replies): (Vec<NewEvent>, Vec<Reply>) = batch.drain(..).unzip();
                let now = clock.now_ms();
                let committed = match queue.enqueue_on_this_thread(&events, now, window) {
                    Some(committed) => committed,
                    None => runtime.block_on(queue.enqueue(events, now, window)),
                };
                match committed {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        let message = format!("{e:#}");
                        for reply in replies {
                            let _ = reply.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the enqueue writer: {e}");
    }
    EventSink { tx, wake }
}

/// Delivers queued events until shutdown.
pub struct Dispatcher {
    pub queue: Arc<dyn EventQueue>,
    pub invoker: Arc<Invoker>,
    pub registry: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    pub wake: Arc<Notify>,
    /// Where destinations put the events they create.
    pub events: EventSink,
    /// Where `kv:TABLE` destinations write rows.
    pub kv: Arc<crate::sources::table::KvWriter>,
    /// Where `bucket:NAME/KEY` destinations write objects.
    pub s3: Arc<crate::s3::S3>,
    /// How webhook destinations' events are sent.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    pub prefetch: usize,
    /// At shutdown, how long deliveries under way may take to finish.
    pub drain: Duration,
}

impl Dispatcher {
    /// Claims and delivers until shutdown, then waits (at most `drain`) for deliveries
    /// under way, so their records and queue updates are written. Events still running
    /// after that are delivered again on the next start.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.prefetch));
        self.dispatch(&slots, shutdown).await;
        let all = u32::try_from(self.prefetch).unwrap_or(u32::MAX);
        if tokio::time::timeout(self.drain, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                "event deliveries still running at shutdown will be retried on the next start"
            );
        }
    }

    async fn dispatch(
        self: &Arc<Self>,
        slots: &Arc<Semaphore>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut next_lineage_sweep = self.clock.now_ms();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if self.clock.now_ms() >= next_lineage_sweep {
                next_lineage_sweep = self.clock.now_ms() + LINEAGE_SWEEP.as_millis() as u64;
                self.forget_idle_lineages();
            }
            let free = slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                match self.queue.claim(self.clock.now_ms(), free).await {
                    Ok(events) => {
                        claimed = events.len();
                        for event in events {
                            let Ok(permit) = slots.clone().try_acquire_owned() else {
                                break;
                            };
                            let this = self.clone();
                            tokio::spawn(async move {
                                this.deliver(event).await;
                                drop(permit);
                                this.wake.notify_one();
                            });
                        }
                    }
                    Err(e) => tracing::error!("claiming events failed: {e:#}"),
                }
            }
            if claimed > 0 && claimed == free {
                continue; // there may be more ready right now
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Forgets, in the background, the event counts of lineages idle past their memory.
    fn forget_idle_lineages(&self) {
        let (queue, now) = (self.queue.clone(), self.clock.now_ms());
        let idle_since = now.saturating_sub(LINEAGE_MEMORY.as_millis() as u64);
        tokio::spawn(async move {
            match queue.forget_lineages(idle_since).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(lineages = n, "forgot idle lineages"),
                Err(e) => tracing::warn!("forgetting idle lineages failed: {e:#}"),
            }
        });
    }

    async fn deliver(&self, queued: QueuedEvent) {
        let QueuedEvent { event, attempts } = queued;
        let id = event.id.clone();
        let update = match event.webhook.clone() {
            Some(url) => self.post(&event, &url, attempts).await,
            None => self.invoke(&event, attempts).await,
        };
        // A failed update is tried again; if it keeps failing, the event's lease runs out
        // and it is claimed again (at-least-once).
        for pause_ms in [0, 100, 1_000] {
            if pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            match update.apply(self.queue.as_ref(), &id).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(request_id = %id, "updating the event queue failed: {e:#}")
                }
            }
        }
    }

    /// A batch whose function reported some records failed: those are tried again, the
    /// others are done. Destinations wait for the whole batch.
    fn retry_failed_records(
        &self,
        event: &NewEvent,
        attempts: u32,
        failed: Vec<u8>,
        done: &Delivered,
        now: u64,
    ) -> Update {
        let config = &done.version.config;
        let count = serde_json::from_slice::<serde_json::Value>(&failed)
            .ok()
            .and_then(|b| b["Records"].as_array().map(Vec::len))
            .unwrap_or(0);
        let error = format!("the function reported {count} failed records");
        let age = Duration::from_millis(now.saturating_sub(event.created_ms));
        let delay = backoff(config.retry_delay, attempts);
        let then = if attempts >= config.max_attempts || age + delay > config.max_event_age {
            tracing::warn!(request_id = %event.id, function = %event.function, "{error}; they move to the dead-letter queue");
            Update::Kill {
                at: now,
                error: format!("{error} (after {attempts} attempts)"),
            }
        } else {
            self.invoker.metrics.retried(&event.function);
            Update::Retry {
                at: now + delay.as_millis() as u64,
                error,
                counted: true,
            }
        };
        Update::Narrow {
            data: failed,
            then: Box::new(then),
        }
    }

    /// A webhook destination's POST: retried with the producing function's
    /// `max_attempts` and backoff (or the defaults, if it is gone), then dead-lettered.
    /// The function does not run again.
    async fn post(&self, event: &NewEvent, url: &str, attempts: u32) -> Update {
        let now = self.clock.now_ms();
        let Err(error) = self.webhooks.send(event, url, now).await else {
            return Update::Complete;
        };
        let config = self
            .registry
            .resolve(&event.function, &Qualifier::Latest)
            .map(|v| v.config.clone())
            .unwrap_or_default();
        let age = Duration::from_millis(now.saturating_sub(event.created_ms));
        let delay = backoff(config.retry_delay, attempts);
        if attempts >= config.max_attempts || age + delay > config.max_event_age {
            tracing::warn!(request_id = %event.id, function = %event.function, "webhook event moved to the dead-letter queue: {error}");
            return Update::Kill {
                at: now,
                error: format!("{error} (after {attempts} attempts)"),
            };
        }
        Update::Retry {
            at: now + delay.as_millis() as u64,
            error,
            counted: true,
        }
    }

    /// One run of the function for an event, and what the queue records after it
    /// (destinations forwarded first).
    async fn invoke(&self, event: &NewEvent, attempts: u32) -> Update {
        let id = event.id.clone();
        let outcome = self.attempt(event, attempts).await;
        // The attempt's record must be on disk before the queue forgets the event, or a
        // crash in between would leave a delivered event with no trace of it (and unbilled).
        // Concurrent deliveries share the writer's next commit.
        self.invoker.records.flush().await;
        let now = self.clock.now_ms();
        match outcome {
            Ok(done) => {
                if let Some(failed) = failed_records(event, done.response.body()) {
                    return self.retry_failed_records(event, attempts, failed, &done, now);
                }
                // Destinations are queued before the event is completed: a crash in
                // between repeats the step (at least once), never drops the next one.
                let next = done.version.config.on_success.clone();
                match self.forward(event, &next, Forward::Success(&done)).await {
                    Ok(()) => Update::Complete,
                    Err(e) if e.code == ErrorCode::BadRequest => Update::Kill {
                        at: now,
                        error: format!("not forwarded: {}", e.message),
                    }, // Counted, so a destination that keeps failing ends in the DLQ rather
                    // than re-running the function forever.
                    Err(e) => Update::Retry {
                        at: now
                            + backoff(done.version.config.retry_delay, attempts).as_millis() as u64,
                        error: format!("forwarding the result failed: {e}"),
                        counted: true,
                    },
                }
            }
            Err(Next::Busy(error)) => Update::Retry {
                at: now + backoff(BUSY_RETRY, 1).as_millis() as u64,
                error,
                counted: false,
            },
            Err(Next::Retry { at, error }) => {
                self.invoker.metrics.retried(&event.function);
                Update::Retry {
                    at,
                    error,
                    counted: true,
                }
            }
            Err(Next::Dead {
                error,
                on_failure,
                traceparent,
            }) => match on_failure {
                Some(
                    dest @ (Destination::Function(_)
                    | Destination::Topic(_)
                    | Destination::Kv(_)
                    | Destination::Bucket { .. }
                    | Destination::Webhook(_)),
                ) => {
                    let failure = Forward::Failure {
                        error: &error,
                        attempts,
                        traceparent: &traceparent,
                    };
                    match self.forward(event, &[dest], failure).await {
                        Ok(()) => Update::Complete,
                        Err(e) => Update::Kill {
                            at: now,
                            error: format!("{error}; forwarding to on_failure failed: {e}"),
                        },
                    }
                }
                _ => {
                    tracing::warn!(request_id = %id, function = %event.function, "event moved to the dead-letter queue: {error}");
                    Update::Kill { at: now, error }
                }
            },
        }
    }

    /// Queues the events a destination list asks for: a successful run's output, or a
    /// failure report, to functions and to every subscriber of topics.
    async fn forward(
        &self,
        event: &NewEvent,
        destinations: &[Destination],
        what: Forward<'_>,
    ) -> Result<(), ApiError> {
        if destinations.is_empty() {
            return Ok(());
        }
        if event.hops >= MAX_PIPELINE_DEPTH {
            return Err(ApiError::bad_request(format!(
                "pipeline deeper than {MAX_PIPELINE_DEPTH} steps: is there a loop through a topic or on_failure?"
            )));
        }
        let (data, content_type, event_type, traceparent) = match &what {
            Forward::Success(done) => (
                done.response.body().to_vec(),
                done.response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                RESULT_EVENT_TYPE,
                done.traceparent.clone(),
            ),
            Forward::Failure {
                error,
                attempts,
                traceparent,
            } => (
                serde_json::to_vec(&serde_json::json!({
                    "request_id": event.id,
                    "function": event.function,
                    "attempts": attempts,
                    "error": error,
                    "event": match std::str::from_utf8(&event.data) {
                        Ok(text) => serde_json::Value::String(text.to_owned()),
                        Err(_) => {
                            use base64::Engine as _;
                            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(&event.data) })
                        }
                    },
                }))
                .unwrap_or_default(),
                Some("application/json".to_owned()),
                FAILURE_EVENT_TYPE,
                (*traceparent).to_owned(),
            ),
        };
        // What this step causes descends from it.
        let lineage = event_lineage(event);
        let mut targets = Vec::new();
        let mut wrote_rows = false;
        for destination in destinations {
            match destination {
                Destination::Function(name) => targets.push((name.clone(), None)),
                Destination::Topic(topic) => targets.extend(
                    self.registry
                        .subscribers(topic)
                        .into_iter()
                        .map(|function| (function, None)),
                ),
                // Its own event, so a receiver that is down is retried without the
                // function running again; it stays filed under the function.
                Destination::Webhook(url) => {
                    targets.push((event.function.clone(), Some(url.clone())))
                }
                Destination::Kv(table) => {
                    // Keyed by the step's request id: a repeated step rewrites its own row.
                    let written = self
                        .kv
                        .write(
                            table,
                            &event.id,
                            Some((data.clone(), content_type.clone())),
                            crate::store::KvCondition::Any,
                            Some(lineage.clone()),
                        )
                        .await
                        .map_err(|e| {
                            ApiError::new(
                                ErrorCode::Unavailable,
                                format!("writing {table}/{}: {e:#}", event.id),
                            )
                        })?;
                    if let crate::store::KvWrite::TooLarge(limit) = written {
                        return Err(ApiError::bad_request(format!(
                            "the result is larger than the {limit} bytes a row of {table} holds"
                        )));
                    }
                    wrote_rows = true;
                }
                Destination::Bucket { bucket, key } => {
                    let key = object_key(key, event);
                    if key.len() > 1024 {
                        return Err(ApiError::bad_request(format!(
                            "the destination key {key:?} is longer than 1024 bytes"
                        )));
                    }
                    let mut headers = axum::http::HeaderMap::new();
                    if let Some(v) = content_type
                        .as_deref()
                        .and_then(|c| axum::http::HeaderValue::from_str(c).ok())
                    {
                        headers.insert(axum::http::header::CONTENT_TYPE, v);
                    }
                    crate::s3::objects::store(
                        &self.s3,
                        bucket,
                        &key,
                        &headers,
                        None,
                        axum::body::Body::from(data.clone()),
                        Some(lineage.clone()),
                    )
                    .await
                    .map_err(|e| {
                        ApiError::new(
                            ErrorCode::Unavailable,
                            format!("writing object {bucket}/{key}: {}: {}", e.code, e.message),
                        )
                    })?;
                    wrote_rows = true;
                }
                Destination::DeadLetterQueue => {}
            }
        }
        if wrote_rows && targets.is_empty() {
            return Ok(());
        }
        if targets.is_empty() && matches!(what, Forward::Failure { .. }) {
            // A failure nobody receives must not vanish: the dead-letter queue keeps it.
            return Err(ApiError::not_found(
                "no function receives this failure (topic without subscribers)",
            ));
        }
        for (index, (function, webhook)) in targets.into_iter().enumerate() {
            self.events
                .enqueue(NewEvent {
                    traceparent: (!traceparent.is_empty()).then(|| traceparent.clone()),
                    parent_id: Some(event.id.clone()),
                    root_id: Some(lineage.root.clone()),
                    hops: lineage.next_hops(),
                    webhook,
                    // If this step is delivered again (a crash, a failed forward), the
                    // events it already sent on are not sent twice.
                    idempotency_key: Some(format!(
                        "dest:{}:{}:{index}",
                        event.id,
                        attempts_key(&what)
                    )),
                    ..NewEvent::fired(
                        function,
                        Trigger::Destination,
                        Some(event_type.to_owned()),
                        Some(format!("/functions/{}", event.function)),
                        self.clock.now_ms(),
                    )
                    .with_data(content_type.clone(), data.clone())
                })
                .await?;
        }
        Ok(())
    }

    /// One delivery attempt, and what should happen next if it failed.
    async fn attempt(&self, event: &NewEvent, attempts: u32) -> Result<Delivered, Next> {
        let dead = |error: String| Next::Dead {
            error,
            on_failure: None,
            traceparent: String::new(),
        };
        // Changes a function makes to storage carry its lineage; one that keeps
        // triggering itself (writing into its own bucket or table) ends here.
        if event.hops > MAX_PIPELINE_DEPTH {
            return Err(dead(format!(
                "pipeline deeper than {MAX_PIPELINE_DEPTH} steps: does the function write into the bucket or table that triggers it?"
            )));
        }
        let qualifier = Qualifier::parse(&event.qualifier)
            .map_err(|e| dead(format!("invalid qualifier: {e}")))?;
        let version = match self.registry.resolve(&event.function, &qualifier) {
            Ok(version) => version,
            Err(e) => return Err(dead(format!("{}: {}", e.code, e.message))),
        };
        let config = &version.config;
        let dead = |error: String, traceparent: String| Next::Dead {
            error,
            on_failure: config.on_failure.clone(),
            traceparent,
        };
        let now = self.clock.now_ms();
        let age = Duration::from_millis(now.saturating_sub(event.created_ms));
        if age > config.max_event_age {
            return Err(dead(
                format!(
                    "event expired: older than max_event_age ({}) before attempt {attempts}",
                    cirrus_api::duration::format(config.max_event_age)
                ),
                event.traceparent.clone().unwrap_or_default(),
            ));
        }
        let call = Call {
            request_id: Some(event.id.clone()),
            attempt: attempts,
            parent_request_id: event.parent_id.clone(),
            root: event.root_id.clone(),
            hops: event.hops,
            ..Call::new(
                event.function.clone(),
                qualifier,
                event.trigger,
                cloud_event_request(event),
                true,
            )
        };
        let (traceparent, result) = self.invoker.invoke_event(call).await;
        let error = match result {
            // As with Lambda's asynchronous invocations, a server error answer is a failed
            // attempt; other answers are the function's own decision and stand.
            Ok(response) if response.status().is_server_error() => {
                format!("function_error: function answered {}", response.status())
            }
            Ok(response) => {
                return Ok(Delivered {
                    response,
                    traceparent,
                    version: version.clone(),
                })
            }
            // Only a full concurrency cap is "busy"; anything else (a version that cannot
            // load, an exhausted instance pool) is an attempt, retried with backoff.
            Err(e) if e.code == ErrorCode::Throttled => {
                return Err(Next::Busy(format!("{}: {}", e.code, e.message)))
            }
            Err(e) => format!("{}: {}", e.code, e.message),
        };
        if attempts >= config.max_attempts {
            return Err(dead(
                format!("{error} (after {attempts} attempts)"),
                traceparent,
            ));
        }
        let delay = backoff(config.retry_delay, attempts);
        if age + delay > config.max_event_age {
            return Err(dead(
                format!(
                    "{error} (attempt {attempts}; the next would pass max_event_age {})",
                    cirrus_api::duration::format(config.max_event_age)
                ),
                traceparent,
            ));
        }
        Err(Next::Retry {
            at: now + delay.as_millis() as u64,
            error,
        })
    }
}

/// A successful attempt.
struct Delivered {
    response: axum::http::Response<bytes::Bytes>,
    traceparent: String,
    version: Arc<cirrus_api::VersionInfo>,
}

enum Forward<'a> {
    Success(&'a Delivered),
    Failure {
        error: &'a str,
        attempts: u32,
        traceparent: &'a str,
    },
}

/// Distinguishes a step's results from its failure report in idempotency keys.
fn attempts_key(what: &Forward<'_>) -> &'static str {
    match what {
        Forward::Success(_) => "ok",
        Forward::Failure { .. } => "failed",
    }
}

/// What the queue records after an attempt.
enum Update {
    Complete,
    /// A batch some of whose records failed: only those stay in the event, then it is
    /// retried (or dead-lettered) as `then` says.
    Narrow {
        data: Vec<u8>,
        then: Box<Update>,
    },
    Retry {
        at: u64,
        error: String,
        counted: bool,
    },
    Kill {
        at: u64,
        error: String,
    },
}

impl Update {
    async fn apply(&self, queue: &dyn EventQueue, id: &str) -> anyhow::Result<()> {
        let mut update = self;
        loop {
            return match update {
                Update::Complete => queue.complete(id).await,
                Update::Retry { at, error, counted } => queue.retry(id, *at, error, *counted).await,
                Update::Kill { at, error } => queue.kill(id, *at, error).await,
                Update::Narrow { data, then } => {
                    queue.set_data(id, data.clone()).await?;
                    update = then;
                    continue;
                }
            };
        }
    }
}

enum Next {
    Busy(String),
    Retry {
        at: u64,
        error: String,
    },
    Dead {
        error: String,
        on_failure: Option<Destination>,
        traceparent: String,
    },
}

/// The lineage of an event's invocation: the root it descends from (itself, when nothing
/// inside Cirrus caused it).
fn event_lineage(event: &NewEvent) -> Lineage {
    Lineage {
        root: event.root_id.clone().unwrap_or_else(|| event.id.clone()),
        request_id: event.id.clone(),
        hops: event.hops,
    }
}

/// Exponential backoff with jitter: `base × 2^(attempt-1)`, scaled by a random factor in
/// [0.5, 1.5) so retries of many failed events spread out, capped at 15 minutes.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let jitter = rand::rng().random_range(0.5..1.5);
    exponential.mul_f64(jitter).min(MAX_BACKOFF)
}

/// The event as the guest receives it: a CloudEvents 1.0 `POST` in binary mode.
pub(crate) fn cloud_event_request(event: &NewEvent) -> Request<Body> {
    let mut request = Request::new(Body::from(event.data.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = Uri::from_static("/");
    let headers = request.headers_mut();
    // Values as their bytes: a subject (an MQTT topic) may be any UTF-8, which HTTP
    // allows in a value; control characters are still refused.
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.insert(name, value);
        }
    };
    set("ce-specversion", "1.0");
    set("ce-id", &event.id);
    set(
        "ce-type",
        event.event_type.as_deref().unwrap_or(ASYNC_EVENT_TYPE),
    );
    let source = format!("/functions/{}", event.function);
    set("ce-source", event.source.as_deref().unwrap_or(&source));
    set("ce-time", &rfc3339(event.created_ms));
    if let Some(subject) = &event.subject {
        set("ce-subject", subject);
    }
    set(
        "content-type",
        event
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream"),
    );
    // An event that came without a trace gets one of its own, derived from its id, so
    // every attempt and redrive of it shares one trace id (`cirrus trace` shows them
    // all) instead of starting a new trace each time.
    let own;
    let traceparent = match &event.traceparent {
        Some(traceparent) => traceparent.as_str(),
        None => {
            own = crate::trace::event_traceparent(&event.id);
            own.as_str()
        }
    };
    set("traceparent", traceparent);
    set("host", "localhost");
    request
}

/// A `bucket:` destination's key: `{request_id}` is the step's request id; `{key}` the
/// key of the object whose notification the step handled (else the request id).
fn object_key(template: &str, event: &NewEvent) -> String {
    let source_key = (event.trigger == Trigger::Bucket)
        .then(|| {
            let doc: serde_json::Value = serde_json::from_slice(&event.data).ok()?;
            let encoded = doc["Records"][0]["s3"]["object"]["key"]
                .as_str()?
                .replace('+', " ");
            percent_encoding::percent_decode_str(&encoded)
                .decode_utf8()
                .ok()
                .map(|k| k.into_owned())
        })
        .flatten();
    template
        .replace("{request_id}", &event.id)
        .replace("{key}", source_key.as_deref().unwrap_or(&event.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_in_flight_follow_the_servers_capacity_within_bounds() {
        let derived = QueueSettings::default();
        assert_eq!(derived.prefetch(128), 128, "the default --max-in-flight");
        assert_eq!(derived.prefetch(8), PREFETCH_MIN);
        assert_eq!(derived.prefetch(10_000), PREFETCH_MAX);
        let set = QueueSettings {
            prefetch: Some(16),
            ..QueueSettings::default()
        };
        assert_eq!(set.prefetch(10_000), 16, "a set prefetch is kept");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for _ in 0..100 {
            let first = backoff(Duration::from_secs(1), 1);
            assert!(
                first >= Duration::from_millis(500) && first < Duration::from_millis(1500),
                "{first:?}"
            );
            let third = backoff(Duration::from_secs(1), 3);
            assert!(
                third >= Duration::from_secs(2) && third < Duration::from_secs(6),
                "{third:?}"
            );
            assert!(backoff(Duration::from_secs(60), 30) <= MAX_BACKOFF);
        }
    }

    #[test]
    fn events_reach_guests_as_binary_cloudevents() {
        let event = NewEvent {
            id: "abc".into(),
            ..NewEvent::fired("f", Trigger::Async, None, None, 0).with_json(b"{}".to_vec())
        }
        .with_subject("sensors/küche/temp".into());
        let r = cloud_event_request(&event);
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.headers()["ce-specversion"], "1.0");
        assert_eq!(r.headers()["ce-id"], "abc");
        assert_eq!(r.headers()["ce-type"], ASYNC_EVENT_TYPE);
        assert_eq!(r.headers()["ce-source"], "/functions/f");
        assert_eq!(r.headers()["ce-time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(
            r.headers()["ce-subject"].as_bytes(),
            "sensors/küche/temp".as_bytes()
        );
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
