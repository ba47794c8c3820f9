//! Asynchronous events in a cluster: one JetStream work queue that every node delivers
//! from, so an event accepted by one node is run by whichever node is free, and one a
//! dead node was running goes to another.
//!
//! - The stream `cirrus_events` (work-queue retention) holds the waiting events; a
//!   message is the event's head (JSON: who, what, attempts so far, not before) and its
//!   body. Every node pulls from the one durable consumer `cirrus_dispatch`.
//! - A node holds what it pulled until it has written the outcome: it confirms progress
//!   several times within [`ACK_WAIT`], and a delivery it stops confirming (the node died, or lost NATS) is
//!   given to another node [`ACK_WAIT`] later. At least once: the event leaves the
//!   stream only when it is acknowledged, after its invocation record is stored and its
//!   destinations are queued (the dispatcher's order, as on one node).
//! - A retry is the event published again with its attempts and not-before time, then
//!   the old message acknowledged (a crash in between delivers it twice, never not at
//!   all). A message pulled before its time is handed back with a delay (`NAK`).
//! - Dead events go to the stream `cirrus_dead`, one subject per event, so one is found
//!   by its id; redriving publishes them again and deletes them there.
//! - Idempotency keys are the stream's de-duplication (`Nats-Msg-Id`, its window the
//!   server's `--idempotency-window`); the key's first event id is kept in the KV bucket
//!   `cirrus_idempotency` for the duplicate's answer.
//! - Lineage budgets are counts in the KV bucket `cirrus_lineages`, raised by
//!   compare-and-set (exact across nodes) and forgotten a day after their last event.
//! - Events with an ordering key (a KV table's changes to one key, a NATS or
//!   PostgreSQL trigger's messages) go to one of [`ORDER_PARTITIONS`] subjects
//!   `cirrus.ordered.N`, by a hash of the key, each pulled through its own durable
//!   consumer that has at most one delivery outstanding (`max_ack_pending = 1`): a
//!   partition's events run one at a time, in the order queued, on whichever node.
//!   Every node follows every partition (a pull that stays open), so the head of each
//!   goes to one node, which holds it until it is done: a retry (busy or failed) waits
//!   on that node, still confirmed, so the events behind it wait too, as one node's
//!   queue makes them. If the node dies, the head goes to another node, its attempts
//!   counted from JetStream's delivery count. Keys that share a partition wait for each
//!   other's retries: the price of a fixed number of consumers.

use super::{frame, open_kv, retry, unframe, JetStream};
use crate::store::{DeadEvent, Enqueued, EventQueue, NewEvent, QueuedEvent, StoreResult};
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, kv, stream, AckKind};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const EVENTS_STREAM: &str = "cirrus_events";
pub const DEAD_STREAM: &str = "cirrus_dead";
const EVENTS_SUBJECT: &str = "cirrus.events";
const ORDERED_PREFIX: &str = "cirrus.ordered";
/// Partitions of events with an ordering key (one consumer each).
pub const ORDER_PARTITIONS: u32 = 16;
const DEAD_PREFIX: &str = "cirrus.dead";
const CONSUMER: &str = "cirrus_dispatch";
const LINEAGE_BUCKET: &str = "cirrus_lineages";
const IDEMPOTENCY_BUCKET: &str = "cirrus_idempotency";
/// A delivery its node stops confirming goes to another node this long after the last
/// confirmation.
pub const ACK_WAIT: Duration = Duration::from_secs(3);
/// How often a node confirms the deliveries it is still running (well within
/// [`ACK_WAIT`], so a busy moment does not lose one).
const PROGRESS_EVERY: Duration = Duration::from_millis(750);
/// A delivery held longer than this (longer than the longest timeout, 15 minutes, plus
/// recording its outcome) is presumed lost by its task: it is no longer confirmed, so
/// JetStream delivers it again, as SQLite's lease does.
const HOLD_AT_MOST: Duration = Duration::from_secs(20 * 60);
/// How long a pull of waiting events may take (it answers at once when it can).
const PULL_AT_MOST: Duration = Duration::from_secs(5);
/// How long an ordered partition's head may go unconfirmed before another node gets
/// it: longer than an unordered event's wait, so that a NATS hiccup (a reconnection, a
/// leader election) does not start the next node on a head its holder is still
/// running, and the key's order holds; a dead node's ordered events wait this long.
pub const ORDERED_ACK_WAIT: Duration = Duration::from_secs(30);
/// Dead events looked through at most by a listing (newest first).
const DEAD_SCAN: u64 = 100_000;

/// An event's head as it travels in a message, before its body.
#[derive(Serialize, Deserialize)]
struct Head {
    id: String,
    function: String,
    qualifier: String,
    content_type: Option<String>,
    traceparent: Option<String>,
    event_type: Option<String>,
    source: Option<String>,
    subject: Option<String>,
    webhook: Option<String>,
    parent_id: Option<String>,
    root_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ordering_key: Option<String>,
    hops: u32,
    trigger: String,
    created_ms: u64,
    /// Attempts made before this message.
    attempts: u32,
    not_before_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed_ms: Option<u64>,
}

/// What a message says besides the event.
#[derive(Default)]
struct State {
    attempts: u32,
    not_before_ms: u64,
    error: Option<String>,
    failed_ms: Option<u64>,
}

/// An event as a message: its head, then its body (see [`frame`]).
fn encode(event: &NewEvent, state: State) -> StoreResult<bytes::Bytes> {
    let head = Head {
        id: event.id.clone(),
        function: event.function.clone(),
        qualifier: event.qualifier.clone(),
        content_type: event.content_type.clone(),
        traceparent: event.traceparent.clone(),
        event_type: event.event_type.clone(),
        source: event.source.clone(),
        subject: event.subject.clone(),
        webhook: event.webhook.clone(),
        parent_id: event.parent_id.clone(),
        root_id: event.root_id.clone(),
        ordering_key: event.ordering_key.clone(),
        hops: event.hops,
        trigger: event.trigger.as_str().to_owned(),
        created_ms: event.created_ms,
        attempts: state.attempts,
        not_before_ms: state.not_before_ms,
        error: state.error,
        failed_ms: state.failed_ms,
    };
    frame(&head, &event.data)
}

fn decode(message: &[u8]) -> StoreResult<(NewEvent, State)> {
    let (head, data) = unframe::<Head>(message, "an event message")?;
    let event = NewEvent {
        id: head.id,
        function: head.function,
        qualifier: head.qualifier,
        content_type: head.content_type,
        traceparent: head.traceparent,
        event_type: head.event_type,
        source: head.source,
        subject: head.subject,
        webhook: head.webhook,
        parent_id: head.parent_id,
        root_id: head.root_id,
        ordering_key: head.ordering_key,
        hops: head.hops,
        trigger: head.trigger.parse().unwrap_or(cirrus_api::Trigger::Async),
        data: data.to_vec(),
        created_ms: head.created_ms,
        idempotency_key: None,
    };
    let state = State {
        attempts: head.attempts,
        not_before_ms: head.not_before_ms,
        error: head.error,
        failed_ms: head.failed_ms,
    };
    Ok((event, state))
}

/// A name made of any text that is safe as a subject token or KV key.
fn token(text: &str) -> String {
    crate::sigv4::sha256_hex(text.as_bytes())[..40].to_owned()
}

/// Where an event waits: the shared subject, or its ordering key's partition.
fn subject_of(event: &NewEvent) -> String {
    match &event.ordering_key {
        Some(key) => format!("{ORDERED_PREFIX}.{}", partition(key)),
        None => EVENTS_SUBJECT.to_owned(),
    }
}

/// The partition of an ordering key.
pub fn partition(key: &str) -> u32 {
    let hash = crate::sigv4::sha256_hex(key.as_bytes());
    u32::from_str_radix(&hash[..8], 16).unwrap_or(0) % ORDER_PARTITIONS
}

fn ordered_consumer(partition: u32) -> String {
    format!("cirrus_ordered_{partition}")
}

fn dead_subject(id: &str) -> String {
    format!("{DEAD_PREFIX}.{}", token(id))
}

/// A delivery this node is running.
struct Held {
    message: jetstream::Message,
    event: NewEvent,
    /// Including the one running.
    attempts: u32,
    since: std::time::Instant,
    /// Pulled through an ordering key's partition.
    ordered: bool,
    /// For an ordered event this node holds and is not running: when to offer it.
    again_at: Option<u64>,
}

/// The cluster's event queue (see the module's documentation).
pub struct ClusterQueue {
    js: JetStream,
    consumer: consumer::PullConsumer,
    lineages: kv::Store,
    idempotency: kv::Store,
    held: Arc<Mutex<HashMap<String, Held>>>,
    budget: AtomicU64,
}

impl ClusterQueue {
    /// Opens (making on first use) the streams, buckets and consumer, and starts
    /// confirming this node's deliveries.
    /// A node's queue as the tests open it: one replica, a minute's idempotency window,
    /// an hour's lineage memory.
    #[cfg(test)]
    pub(crate) async fn open_for_test(js: JetStream) -> Arc<Self> {
        Self::open(
            js,
            1,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            None,
        )
        .await
        .expect("opening the events stream")
    }

    pub async fn open(
        js: JetStream,
        replicas: usize,
        idempotency_window: Duration,
        lineage_memory: Duration,
        dead_max_age: Option<Duration>,
    ) -> StoreResult<Arc<Self>> {
        let events = retry::within(retry::FORMING, "JetStream is not ready yet", || {
            js.context.get_or_create_stream(stream::Config {
                name: EVENTS_STREAM.into(),
                description: Some("Cirrus asynchronous events waiting for delivery".into()),
                subjects: vec![EVENTS_SUBJECT.into(), format!("{ORDERED_PREFIX}.*")],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                duplicate_window: idempotency_window,
                ..Default::default()
            })
        })
        .await
        .with_context(|| format!("opening the JetStream stream {EVENTS_STREAM}"))?;
        retry::within(retry::FORMING, "JetStream is not ready yet", || {
            js.context.get_or_create_stream(stream::Config {
                name: DEAD_STREAM.into(),
                description: Some("Cirrus dead-letter queue".into()),
                subjects: vec![format!("{DEAD_PREFIX}.*")],
                // An event killed again (after a redrive) replaces its earlier copy.
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                // Dead events are removed this long after they failed (the retention
                // setting), as on one node.
                max_age: dead_max_age.unwrap_or(Duration::ZERO),
                ..Default::default()
            })
        })
        .await
        .with_context(|| format!("opening the JetStream stream {DEAD_STREAM}"))?;
        let consumer = retry::within(retry::FORMING, "JetStream is not ready yet", || {
            events.get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    description: Some("Cirrus nodes delivering events".into()),
                    filter_subject: EVENTS_SUBJECT.into(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    // Attempts are counted in the events themselves.
                    max_deliver: -1,
                    // Events handed back until their time count as pending.
                    max_ack_pending: 1_000_000,
                    ..Default::default()
                },
            )
        })
        .await
        .with_context(|| format!("opening the JetStream consumer {CONSUMER}"))?;
        let mut partitions = Vec::new();
        for partition in 0..ORDER_PARTITIONS {
            let name = ordered_consumer(partition);
            let consumer = retry::within(retry::FORMING, "JetStream is not ready yet", || {
                events.get_or_create_consumer(
                    &name,
                    consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        description: Some("Cirrus nodes delivering ordered events".into()),
                        filter_subject: format!("{ORDERED_PREFIX}.{partition}"),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: ORDERED_ACK_WAIT,
                        max_deliver: -1,
                        // One at a time: the partition's order.
                        max_ack_pending: 1,
                        ..Default::default()
                    },
                )
            })
            .await
            .with_context(|| format!("opening the JetStream consumer {name}"))?;
            partitions.push(consumer);
        }
        let lineages = open_kv(
            &js.context,
            LINEAGE_BUCKET,
            "Cirrus lineage event counts",
            replicas,
            lineage_memory,
            false,
        )
        .await?;
        let idempotency = open_kv(
            &js.context,
            IDEMPOTENCY_BUCKET,
            "Cirrus idempotency keys: the first event of each",
            replicas,
            idempotency_window,
            false,
        )
        .await?;
        let queue = Arc::new(Self {
            js,
            consumer,
            lineages,
            idempotency,
            held: Arc::default(),
            budget: AtomicU64::new(crate::lineage::DEFAULT_MAX_LINEAGE_EVENTS),
        });
        tokio::spawn(confirm_progress(Arc::downgrade(&queue.held)));
        for consumer in partitions {
            tokio::spawn(follow_partition(Arc::downgrade(&queue), consumer));
        }
        Ok(queue)
    }

    /// Sets how many events one lineage may create before the rest are parked dead.
    pub fn set_lineage_budget(&self, events: u64) {
        self.budget.store(events, Ordering::Relaxed);
    }

    fn take(&self, id: &str) -> Option<Held> {
        self.lock_held().remove(id)
    }

    /// Publishes to the events stream, waiting for JetStream to have it.
    async fn publish(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        msg_id: Option<&str>,
    ) -> StoreResult<jetstream::publish::PublishAck> {
        Ok(self.publish_counted(subject, payload, msg_id).await?.0)
    }

    /// [`Self::publish`], also saying whether it took more than one try (an earlier
    /// try may have been stored, its answer lost).
    async fn publish_counted(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        msg_id: Option<&str>,
    ) -> StoreResult<(jetstream::publish::PublishAck, bool)> {
        let mut tries = 0;
        let ack = retry::retried("publishing an event", || {
            tries += 1;
            self.publish_once(subject, msg_id, payload.clone())
        })
        .await?;
        Ok((ack, tries > 1))
    }

    /// One try at publishing to the events stream, waiting for JetStream's answer.
    async fn publish_once(
        &self,
        subject: &str,
        msg_id: Option<&str>,
        payload: bytes::Bytes,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        }
        self.js
            .context
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await?
            .await
    }

    /// `events` as a write carries them until they are queued (see [`super::outbox`]):
    /// encoded as they will be published, lineage budgets counted now, so that an event
    /// past its budget goes to the dead-letter stream instead. Events with an
    /// idempotency key are not carried so (their key is their message id).
    pub(crate) async fn outgoing(
        &self,
        events: &[NewEvent],
        now_ms: u64,
    ) -> StoreResult<Vec<super::outbox::Outgoing>> {
        anyhow::ensure!(
            events.iter().all(|e| e.idempotency_key.is_none()),
            "an event with an idempotency key cannot travel with a write"
        );
        let refs: Vec<&NewEvent> = events.iter().collect();
        let mut over = self.over_budget(&refs).await?;
        let mut outgoing = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let (subject, state) = match over.remove(&index) {
                Some(reason) => (
                    dead_subject(&event.id),
                    State {
                        error: Some(reason),
                        failed_ms: Some(now_ms),
                        ..State::default()
                    },
                ),
                None => (subject_of(event), State::default()),
            };
            outgoing.push(super::outbox::Outgoing {
                subject,
                id: event.id.clone(),
                payload: encode(event, state)?,
            });
        }
        Ok(outgoing)
    }

    /// Publishes events a write carried, one after another (their order is their key's),
    /// each with its id as message id, so the stream keeps one copy however many nodes
    /// publish it. `through_failover`: keep trying while a stream fails over (otherwise
    /// one try: the outbox's other publishers cover a failure).
    pub(crate) async fn publish_outgoing(
        &self,
        outgoing: &[super::outbox::Outgoing],
        through_failover: bool,
    ) -> StoreResult<()> {
        for event in outgoing {
            if through_failover {
                self.publish(&event.subject, event.payload.clone(), Some(&event.id))
                    .await?;
            } else {
                self.publish_once(&event.subject, Some(&event.id), event.payload.clone())
                    .await
                    .context("publishing an event")?;
            }
        }
        Ok(())
    }

    /// Counts `events` against `root`'s lineage; returns the count before them.
    async fn count_lineage(&self, root: &str, events: u64) -> StoreResult<u64> {
        let key = token(root);
        for _ in 0..100 {
            let entry = self.lineages.entry(&key).await?;
            let before = entry
                .as_ref()
                .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            let value = bytes::Bytes::from((before + events).to_string());
            let written = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    self.lineages.update(&key, value, e.revision).await.is_ok()
                }
                _ => self.lineages.create(&key, value).await.is_ok(),
            };
            if written {
                return Ok(before);
            }
        }
        anyhow::bail!("counting lineage {root}: too many concurrent writers")
    }

    /// Which events of a batch are past their lineage's budget (their reason, by index).
    async fn over_budget(&self, events: &[&NewEvent]) -> StoreResult<HashMap<usize, String>> {
        let budget = self.budget.load(Ordering::Relaxed);
        let mut by_root: HashMap<&str, Vec<usize>> = HashMap::new();
        for (index, event) in events.iter().enumerate() {
            if let Some(root) = &event.root_id {
                by_root.entry(root).or_default().push(index);
            }
        }
        let mut over = HashMap::new();
        for (root, indices) in by_root {
            let before = self.count_lineage(root, indices.len() as u64).await?;
            for (n, index) in indices.into_iter().enumerate() {
                if before + n as u64 + 1 > budget {
                    over.insert(index, crate::lineage::budget_exhausted(root, budget));
                }
            }
        }
        Ok(over)
    }

    async fn enqueue_shared(
        &self,
        events: &[&NewEvent],
        now_ms: u64,
    ) -> StoreResult<Vec<Enqueued>> {
        let mut over = self.over_budget(events).await?;
        let mut results = Vec::with_capacity(events.len());
        // Plain events are sent one after another and their acknowledgements awaited
        // together (one round trip for the batch, as SQLite's group commit); one whose
        // acknowledgement fails is published again on its own.
        let mut sent = Vec::new();
        for (index, event) in events.iter().enumerate() {
            if let Some(reason) = over.remove(&index) {
                let dead = State {
                    error: Some(reason),
                    failed_ms: Some(now_ms),
                    ..State::default()
                };
                self.publish(&dead_subject(&event.id), encode(event, dead)?, None)
                    .await?;
                results.push(Enqueued::New);
                continue;
            }
            let payload = encode(event, State::default())?;
            let subject = subject_of(event);
            let Some(key) = &event.idempotency_key else {
                if event.ordering_key.is_some() {
                    // Stored before the next one is sent: a failed send retried later
                    // must not land behind its key's later events.
                    self.publish(&subject, payload, None).await?;
                    results.push(Enqueued::New);
                    continue;
                }
                let ack = self
                    .js
                    .context
                    .publish(subject.clone(), payload.clone())
                    .await;
                sent.push((subject, payload, ack));
                results.push(Enqueued::New);
                continue;
            };
            let key = token(&format!("{}\n{key}", event.function));
            let (ack, retried) = self.publish_counted(&subject, payload, Some(&key)).await?;
            // A duplicate of our own earlier try (stored, its answer lost) is this event.
            if ack.duplicate && !retried {
                results.push(Enqueued::Duplicate(
                    self.first_of(&key, ack.sequence).await?,
                ));
            } else {
                self.idempotency
                    .put(&key, event.id.clone().into())
                    .await
                    .context("remembering an idempotency key")?;
                results.push(Enqueued::New);
            }
        }
        for (subject, payload, ack) in sent {
            let stored = match ack {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                self.publish(&subject, payload, None).await?;
            }
        }
        Ok(results)
    }

    /// The event an idempotency key was first used for: recorded by its writer (who
    /// may be a moment behind the stream's de-duplication), or, if that writer died
    /// before recording it, read from the stream while it still waits there.
    async fn first_of(&self, key: &str, sequence: u64) -> StoreResult<String> {
        for _ in 0..50 {
            if let Some(id) = self.idempotency.get(key).await? {
                return Ok(String::from_utf8_lossy(&id).into_owned());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let events = self.js.context.get_stream(EVENTS_STREAM).await?;
        let message = events
            .get_raw_message(sequence)
            .await
            .context("an idempotency key's first event is neither recorded nor waiting")?;
        let (first, _) = decode(&message.payload)?;
        self.idempotency
            .put(key, first.id.clone().into())
            .await
            .context("remembering an idempotency key")?;
        Ok(first.id)
    }

    /// Pulls up to `limit` events from the shared consumer and holds them. A pull that
    /// fails or takes too long (its end lost in a reconnection) ends with what came.
    async fn pull(&self, now_ms: u64, limit: usize) -> StoreResult<Vec<QueuedEvent>> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(limit)
            .messages()
            .await
            .context("pulling events")?;
        let deadline = tokio::time::Instant::now() + PULL_AT_MOST;
        let mut claimed = Vec::new();
        loop {
            let message = match tokio::time::timeout_at(deadline, batch.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::warn!("pulling events: {e}");
                    break;
                }
                Err(_) => {
                    tracing::warn!("pulling events: no answer within {PULL_AT_MOST:?}");
                    break;
                }
            };
            let Some((event, state)) = readable(&message).await else {
                continue;
            };
            if state.not_before_ms > now_ms {
                let wait = Duration::from_millis(state.not_before_ms - now_ms);
                let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
                continue;
            }
            let attempts = state.attempts + 1;
            let queued = QueuedEvent {
                event: event.clone(),
                attempts,
            };
            if self.hold(message, event, attempts, false, None) {
                claimed.push(queued);
            }
        }
        Ok(claimed)
    }

    fn hold(
        &self,
        message: jetstream::Message,
        event: NewEvent,
        attempts: u32,
        ordered: bool,
        again_at: Option<u64>,
    ) -> bool {
        let mut held = self.lock_held();
        if let Some(h) = held.get_mut(&event.id) {
            // Delivered again while this node still runs it (its confirmations were
            // late): confirm the new delivery, run it once.
            h.message = message;
            return false;
        }
        held.insert(
            event.id.clone(),
            Held {
                message,
                event,
                attempts,
                since: std::time::Instant::now(),
                ordered,
                again_at,
            },
        );
        true
    }

    /// Ordered events this node holds that are due (a partition's new head, or one
    /// whose retry time has come).
    fn offer_again(&self, now_ms: u64, limit: usize) -> Vec<QueuedEvent> {
        let mut held = self.lock_held();
        let mut due = Vec::new();
        for h in held.values_mut() {
            if due.len() >= limit {
                break;
            }
            if h.again_at.is_some_and(|at| at <= now_ms) {
                h.again_at = None;
                h.since = std::time::Instant::now();
                due.push(QueuedEvent {
                    event: h.event.clone(),
                    attempts: h.attempts,
                });
            }
        }
        due
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends a held delivery with `next` published first (a retry or the dead copy),
    /// then the message acknowledged. If that fails the message is handed back, to be
    /// delivered again.
    async fn settle(&self, held: Held, next: Option<(String, bytes::Bytes)>) -> StoreResult<()> {
        if let Some((subject, payload)) = next {
            if let Err(e) = self.publish(&subject, payload, None).await {
                // Nothing took its place: delivered again.
                let _ = held.message.ack_with(AckKind::Nak(None)).await;
                return Err(e);
            }
        }
        // If this fails, JetStream delivers the old message again after its wait: a
        // repeat, never a loss.
        held.message
            .double_ack()
            .await
            .map_err(|e| anyhow::anyhow!("acknowledging event {}: {e}", held.event.id))
    }

    /// The dead events matching `id` and/or `function`, newest first, with their
    /// stream sequences.
    async fn dead_matching(
        &self,
        id: Option<&str>,
        function: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(u64, NewEvent, State)>> {
        let stream = self.js.context.get_stream(DEAD_STREAM).await?;
        let mut found = Vec::new();
        if let Some(id) = id {
            match stream
                .get_last_raw_message_by_subject(&dead_subject(id))
                .await
            {
                Ok(message) => {
                    let (event, state) = decode(&message.payload)?;
                    if function.is_none_or(|f| f == event.function) {
                        found.push((message.sequence, event, state));
                    }
                }
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(e).context("reading the dead-letter queue"),
            }
            return Ok(found);
        }
        let info = stream.get_info().await?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut seq = last;
        while seq >= first.max(1) && last - seq < DEAD_SCAN && found.len() < limit {
            match stream.get_raw_message(seq).await {
                Ok(message) => {
                    let (event, state) = decode(&message.payload)?;
                    if function.is_none_or(|f| f == event.function) {
                        found.push((seq, event, state));
                    }
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(e).context("reading the dead-letter queue"),
            }
            seq -= 1;
        }
        Ok(found)
    }
}

/// An event message, or `None` for one that cannot be read (dropped, with a log line).
async fn readable(message: &jetstream::Message) -> Option<(NewEvent, State)> {
    match decode(&message.payload) {
        Ok(decoded) => Some(decoded),
        Err(e) => {
            tracing::error!("dropping an unreadable event message: {e:#}");
            let _ = message.ack_with(AckKind::Term).await;
            None
        }
    }
}

/// Keeps a pull open on an ordering partition: its head, when this node gets it, is
/// held and offered to the dispatcher when due.
async fn follow_partition(queue: std::sync::Weak<ClusterQueue>, consumer: consumer::PullConsumer) {
    loop {
        let messages = consumer
            .stream()
            .max_messages_per_batch(1)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        match messages {
            Ok(mut messages) => {
                while let Some(message) = messages.next().await {
                    let Some(queue) = queue.upgrade() else { return };
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::debug!("following an ordered partition: {e}");
                            break;
                        }
                    };
                    let Some((event, state)) = readable(&message).await else {
                        continue;
                    };
                    // Earlier deliveries of this message were attempts on a node that
                    // stopped.
                    let delivered = message.info().map_or(1, |i| i.delivered.max(1));
                    let attempts = state.attempts + u32::try_from(delivered).unwrap_or(u32::MAX);
                    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                    let due = state.not_before_ms.max(now);
                    queue.hold(message, event, attempts, true, Some(due));
                }
            }
            Err(e) => tracing::warn!("following an ordered partition: {e}"),
        }
        if queue.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Confirms, every [`PROGRESS_EVERY`], the deliveries this node is running, so that JetStream
/// gives them to another node only when this one stops.
async fn confirm_progress(held: std::sync::Weak<Mutex<HashMap<String, Held>>>) {
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let Some(held) = held.upgrade() else { return };
        let running: Vec<jetstream::Message> = {
            let mut held = held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            held.retain(|id, h| {
                let lost = h.since.elapsed() > HOLD_AT_MOST;
                if lost {
                    tracing::warn!(request_id = %id, "an event's delivery outlived its lease; it will be delivered again");
                }
                !lost
            });
            held.values().map(|h| h.message.clone()).collect()
        };
        drop(held);
        for message in running {
            if let Err(e) = message.ack_with(AckKind::Progress).await {
                tracing::debug!("confirming an event's delivery: {e}");
            }
        }
    }
}

fn dead_event(event: &NewEvent, state: &State) -> DeadEvent {
    DeadEvent {
        request_id: event.id.clone(),
        function: event.function.clone(),
        qualifier: event.qualifier.clone(),
        attempts: state.attempts,
        accepted_at: crate::clock::rfc3339(event.created_ms),
        failed_at: crate::clock::rfc3339(state.failed_ms.unwrap_or(0)),
        last_error: state.error.clone().unwrap_or_default(),
        content_type: event.content_type.clone(),
        size_bytes: event.data.len() as u64,
        data: None,
    }
}

#[async_trait::async_trait]
impl EventQueue for ClusterQueue {
    async fn enqueue(
        &self,
        events: Vec<NewEvent>,
        now_ms: u64,
        _idempotency_window_ms: u64,
    ) -> StoreResult<Vec<Enqueued>> {
        // The window is the stream's de-duplication window and the idempotency bucket's
        // age, both set when they were made.
        let events: Vec<&NewEvent> = events.iter().collect();
        self.enqueue_shared(&events, now_ms).await
    }

    async fn recover(&self) -> StoreResult<u64> {
        // Deliveries a stopped node held come back by themselves after ACK_WAIT.
        Ok(0)
    }

    async fn claim(&self, now_ms: u64, limit: usize) -> StoreResult<Vec<QueuedEvent>> {
        let mut claimed = self.offer_again(now_ms, limit);
        if claimed.len() < limit {
            let room = limit - claimed.len();
            match self.pull(now_ms, room).await {
                Ok(pulled) => claimed.extend(pulled),
                // What was offered is held: hand it out, or it would wait for its lease.
                Err(e) if !claimed.is_empty() => tracing::warn!("pulling events: {e:#}"),
                Err(e) => return Err(e),
            }
        }
        Ok(claimed)
    }

    async fn complete(&self, id: &str) -> StoreResult<()> {
        match self.take(id) {
            Some(held) => self.settle(held, None).await,
            None => Ok(()),
        }
    }

    async fn retry(
        &self,
        id: &str,
        not_before_ms: u64,
        error: &str,
        count_attempt: bool,
    ) -> StoreResult<()> {
        let taken = {
            let mut held = self.lock_held();
            let Some(h) = held.get_mut(id) else {
                return Ok(());
            };
            if h.ordered {
                // It keeps its partition's head: this node offers it again when due,
                // still confirming it, so the events behind it wait.
                h.again_at = Some(not_before_ms);
                h.attempts += u32::from(count_attempt);
                h.since = std::time::Instant::now();
                return Ok(());
            }
            held.remove(id)
        };
        let Some(h) = taken else {
            return Ok(());
        };
        let state = State {
            attempts: h.attempts - u32::from(!count_attempt),
            not_before_ms,
            error: Some(error.to_owned()),
            failed_ms: None,
        };
        let next = encode(&h.event, state)?;
        let subject = subject_of(&h.event);
        self.settle(h, Some((subject, next))).await
    }

    async fn kill(&self, id: &str, now_ms: u64, error: &str) -> StoreResult<()> {
        let Some(held) = self.take(id) else {
            return Ok(());
        };
        let state = State {
            attempts: held.attempts,
            not_before_ms: 0,
            error: Some(error.to_owned()),
            failed_ms: Some(now_ms),
        };
        let dead = encode(&held.event, state)?;
        self.settle(held, Some((dead_subject(id), dead))).await
    }

    async fn set_data(&self, id: &str, data: Vec<u8>) -> StoreResult<()> {
        if let Some(h) = self.lock_held().get_mut(id) {
            h.event.data = data;
        }
        Ok(())
    }

    async fn next_ready_ms(&self) -> StoreResult<Option<u64>> {
        // JetStream holds the waiting events' times; the dispatcher polls.
        Ok(None)
    }

    async fn depth(&self) -> StoreResult<(u64, u64)> {
        {
            let events = self.js.context.get_stream(EVENTS_STREAM).await?;
            let dead = self.js.context.get_stream(DEAD_STREAM).await?;
            Ok((
                events.cached_info().state.messages,
                dead.cached_info().state.messages,
            ))
        }
    }

    async fn dead(&self, function: Option<&str>, limit: usize) -> StoreResult<Vec<DeadEvent>> {
        Ok(self
            .dead_matching(None, function, limit)
            .await?
            .iter()
            .map(|(_, event, state)| dead_event(event, state))
            .collect())
    }

    async fn dead_event(&self, id: &str) -> StoreResult<Option<(DeadEvent, Vec<u8>)>> {
        let found = self.dead_matching(Some(id), None, 1).await?;
        Ok(found
            .into_iter()
            .next()
            .map(|(_, event, state)| (dead_event(&event, &state), event.data)))
    }

    async fn redrive(
        &self,
        id: Option<&str>,
        function: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<u64> {
        {
            let stream = self.js.context.get_stream(DEAD_STREAM).await?;
            let mut count = 0;
            for (seq, mut event, _) in self.dead_matching(id, function, usize::MAX).await? {
                // The operator's "go on": fresh attempts and age, and a fresh budget
                // for the lineage (a loop still there stops after another one).
                if let Some(root) = &event.root_id {
                    self.lineages.purge(token(root)).await?;
                }
                event.created_ms = now_ms;
                let subject = subject_of(&event);
                self.publish(&subject, encode(&event, State::default())?, None)
                    .await?;
                stream.delete_message(seq).await?;
                count += 1;
            }
            Ok(count)
        }
    }

    async fn purge(&self, id: Option<&str>, function: Option<&str>) -> StoreResult<u64> {
        {
            let stream = self.js.context.get_stream(DEAD_STREAM).await?;
            let mut count = 0;
            for (seq, ..) in self.dead_matching(id, function, usize::MAX).await? {
                stream.delete_message(seq).await?;
                count += 1;
            }
            Ok(count)
        }
    }

    async fn forget_lineages(&self, _idle_since_ms: u64) -> StoreResult<u64> {
        // The bucket's age limit forgets them.
        Ok(0)
    }
}
