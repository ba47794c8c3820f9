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
/// CloudEvents `type` of a batch of records from a stream source (`batch_size`).
pub const BATCH_EVENT_TYPE: &str = "dev.cirrus.batch";
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

/// One record of a batch: what the event of a single message would have carried.
pub struct Record {
    /// Unique within the source; the function names failed records by it.
    pub id: String,
    pub subject: String,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
    /// When the record was made (RFC 3339).
    pub time: String,
}

/// One event for a batch of records, Lambda's shape for event source mappings:
/// `{"Records": [{"id", "subject", "time", "content_type", "data"}]}` where `data` is
/// inline JSON for a JSON record, a string for UTF-8 text, else `{"base64": "..."}`. The
/// function may answer `{"batchItemFailures": [{"itemIdentifier": ID}]}`, and then only
/// those records are tried again.
pub fn batch_event(
    function: &str,
    trigger: Trigger,
    source: String,
    now_ms: u64,
    records: &[Record],
) -> NewEvent {
    use base64::Engine as _;
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let json = r
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json"));
            let data = match (json, std::str::from_utf8(&r.data)) {
                (true, _) => serde_json::from_slice(&r.data).ok(),
                _ => None,
            }
            .unwrap_or_else(|| match std::str::from_utf8(&r.data) {
                Ok(text) => serde_json::Value::String(text.to_owned()),
                Err(_) => serde_json::json!({
                    "base64": base64::engine::general_purpose::STANDARD.encode(&r.data)
                }),
            });
            serde_json::json!({
                "id": r.id,
                "subject": r.subject,
                "time": r.time,
                "content_type": r.content_type,
                "data": data,
            })
        })
        .collect();
    NewEvent::fired(
        function,
        trigger,
        Some(BATCH_EVENT_TYPE.into()),
        Some(source),
        now_ms,
    )
    .with_json(serde_json::to_vec(&serde_json::json!({ "Records": records })).unwrap_or_default())
}

/// For a batch event the function answered: the batch narrowed to the records it
/// reported as failed (`batchItemFailures`), or `None` when all succeeded. An answer
/// naming no record of the batch fails the whole batch, as Lambda's does.
pub fn failed_records(event: &NewEvent, answer: &[u8]) -> Option<Vec<u8>> {
    if event.event_type.as_deref() != Some(BATCH_EVENT_TYPE) {
        return None;
    }
    let answer: serde_json::Value = serde_json::from_slice(answer).ok()?;
    let failed: Vec<&str> = answer
        .get("batchItemFailures")?
        .as_array()?
        .iter()
        .filter_map(|f| f.get("itemIdentifier")?.as_str())
        .collect();
    if failed.is_empty() {
        return None;
    }
    let mut batch: serde_json::Value = serde_json::from_slice(&event.data).ok()?;
    let records = batch.get_mut("Records")?.as_array_mut()?;
    let all = records.clone();
    records.retain(|r| r["id"].as_str().is_some_and(|id| failed.contains(&id)));
    if records.is_empty() {
        *records = all;
    }
    serde_json::to_vec(&batch).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_carry_records_and_narrow_to_the_failed_ones() {
        let record = |id: &str, ct: Option<&str>, data: &[u8]| Record {
            id: id.into(),
            subject: "s".into(),
            content_type: ct.map(str::to_owned),
            data: data.to_vec(),
            time: "2026-12-06T00:00:00Z".into(),
        };
        let event = batch_event(
            "f",
            Trigger::Nats,
            "/x".into(),
            0,
            &[
                record("1", Some("application/json"), br#"{"a":1}"#),
                record("2", None, b"text"),
                record("3", None, &[0xff, 0x00]),
            ],
        );
        let body: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
        assert_eq!(body["Records"][0]["data"]["a"], 1);
        assert_eq!(body["Records"][1]["data"], "text");
        assert_eq!(body["Records"][2]["data"]["base64"], "/wA=");
        assert_eq!(
            failed_records(&event, br#"{"batchItemFailures": []}"#),
            None
        );
        assert_eq!(failed_records(&event, b"not json"), None);
        let narrowed = failed_records(
            &event,
            br#"{"batchItemFailures": [{"itemIdentifier": "2"}]}"#,
        )
        .unwrap();
        let narrowed: serde_json::Value = serde_json::from_slice(&narrowed).unwrap();
        assert_eq!(narrowed["Records"].as_array().unwrap().len(), 1);
        assert_eq!(narrowed["Records"][0]["id"], "2");
        // Naming nothing of the batch fails all of it.
        let all = failed_records(
            &event,
            br#"{"batchItemFailures": [{"itemIdentifier": "9"}]}"#,
        )
        .unwrap();
        let all: serde_json::Value = serde_json::from_slice(&all).unwrap();
        assert_eq!(all["Records"].as_array().unwrap().len(), 3);
    }
}
