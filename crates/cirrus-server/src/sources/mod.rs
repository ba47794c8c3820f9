//! Event sources: everything that fires a function besides a direct call. Each source
//! turns what happened (a schedule's tick, a message on a topic, a row or object that
//! changed) into [`NewEvent`]s and hands them to the durable queue, which delivers them
//! at least once with retries, dead letters and destinations.
//!
//! Two shapes:
//! - *in-process* sources fire from a change Cirrus itself commits: [`table`] and
//!   [`bucket`] events are written in the same transaction as the row or object, and
//!   [`topic`] messages as the publish call is answered;
//! - *running* sources are loops started with the server and stopped on shutdown, which
//!   enqueue through an [`crate::queue::EventSink`] and only then mark progress (a
//!   schedule's tick) or acknowledge (a broker's message), so a crash repeats work
//!   instead of losing it: [`schedule`], and the triggers that hold a connection to a
//!   system outside Cirrus, one task each ([`subscriptions`]): [`mqtt`], [`nats`], [`postgres`].
//!
//! Every event is built the same way: [`NewEvent::fired`] for the fields every source
//! sets, then what is particular to the source.

pub mod bucket;
pub mod mqtt;
pub mod nats;
pub mod postgres;
pub mod schedule;
pub mod subscriptions;
pub mod table;
pub mod topic;

use crate::lineage::Lineage;
use crate::store::NewEvent;
use cirrus_api::{Qualifier, Trigger};

/// CloudEvents `type` of an asynchronous invoke.
pub const ASYNC_EVENT_TYPE: &str = "dev.cirrus.invoke";
/// CloudEvents `type` of a message published to a topic.
pub const TOPIC_EVENT_TYPE: &str = "dev.cirrus.topic";
/// CloudEvents `type` of a change to a KV table.
pub const TABLE_EVENT_TYPE: &str = "dev.cirrus.kv.change";
/// CloudEvents `type` of a bucket notification: an object was created or removed.
pub const BUCKET_EVENT_TYPE: &str = "dev.cirrus.bucket.notification";
/// CloudEvents `type` of a schedule tick.
pub const SCHEDULE_EVENT_TYPE: &str = "dev.cirrus.schedule";
/// CloudEvents `type` of a message from an MQTT broker.
pub const MQTT_EVENT_TYPE: &str = "dev.cirrus.mqtt.message";
/// CloudEvents `type` of a message from NATS.
pub const NATS_EVENT_TYPE: &str = "dev.cirrus.nats.message";
/// CloudEvents `type` of a change of a PostgreSQL table's row.
pub const POSTGRES_EVENT_TYPE: &str = "dev.cirrus.postgres.change";
/// CloudEvents `type` of a function's result sent on by an `on_success` destination.
pub const RESULT_EVENT_TYPE: &str = "dev.cirrus.result";
/// CloudEvents `type` of a failure report sent by an `on_failure` destination.
pub const FAILURE_EVENT_TYPE: &str = "dev.cirrus.failure";

impl NewEvent {
    /// An event for `$LATEST` of `function`, fired by `trigger` at `now_ms`, with its
    /// CloudEvents type and source; nothing caused it inside Cirrus (see
    /// [`NewEvent::caused_by`]) and it is neither ordered nor deduplicated.
    pub fn fired(
        function: impl Into<String>,
        trigger: Trigger,
        event_type: Option<String>,
        source: Option<String>,
        now_ms: u64,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            function: function.into(),
            qualifier: Qualifier::Latest.to_string(),
            content_type: None,
            traceparent: None,
            event_type,
            source,
            subject: None,
            webhook: None,
            parent_id: None,
            root_id: None,
            ordering_key: None,
            hops: 0,
            trigger,
            data: Vec::new(),
            created_ms: now_ms,
            idempotency_key: None,
        }
    }

    /// The body, and what it is.
    pub fn with_data(mut self, content_type: Option<String>, data: Vec<u8>) -> Self {
        self.content_type = content_type;
        self.data = data;
        self
    }

    /// A JSON body.
    pub fn with_json(self, data: Vec<u8>) -> Self {
        self.with_data(Some("application/json".into()), data)
    }

    /// The invocation whose work fired this event, if one did: the event joins its
    /// lineage one hop further (loop limits and traces follow it).
    pub fn caused_by(mut self, lineage: Option<&Lineage>) -> Self {
        if let Some(lineage) = lineage {
            self.parent_id = Some(lineage.request_id.clone());
            self.root_id = Some(lineage.root.clone());
            self.hops = lineage.next_hops();
        }
        self
    }

    /// What in the source the event is about (CloudEvents `subject`).
    pub fn with_subject(mut self, subject: String) -> Self {
        self.subject = Some(subject);
        self
    }

    /// Events with the same key are delivered one at a time, in the order queued.
    pub fn ordered_by(mut self, key: String) -> Self {
        self.ordering_key = Some(key);
        self
    }

    /// A second event with the same key for the same function, within the idempotency
    /// window, is not queued again.
    pub fn deduplicated_by(mut self, key: Option<String>) -> Self {
        self.idempotency_key = key;
        self
    }
}
