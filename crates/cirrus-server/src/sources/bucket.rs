//! Bucket notifications: each object change that a function's bucket trigger matches
//! becomes an event in the durable queue, committed with the change, whose data is the
//! S3 event notification document Lambda functions read (`Records[0].s3.object.key`).

use super::BUCKET_EVENT_TYPE;
use crate::lineage::Lineage;
use crate::registry::Registry;
use crate::store::{NewEvent, ObjectMeta};
use cirrus_api::trigger::BucketEvent;
use cirrus_api::Trigger;
use std::sync::Arc;

pub struct Notifier {
    pub registry: Arc<Registry>,
    /// Wakes the dispatcher once a change with events has committed.
    pub wake: Arc<tokio::sync::Notify>,
    /// S3's `sequencer`: taken inside the change's transaction, so later commits of a
    /// key always carry larger values (seeded from the wall clock, so across restarts too).
    pub sequencer: Arc<std::sync::atomic::AtomicU64>,
}

impl Notifier {
    pub fn new(registry: Arc<Registry>, wake: Arc<tokio::sync::Notify>) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Self {
            registry,
            wake,
            sequencer: Arc::new(std::sync::atomic::AtomicU64::new(seed)),
        }
    }
}

/// The events one change causes, built inside the store's transaction.
pub struct Pending {
    subscribers: Vec<(String, String)>,
    sequencer: Arc<std::sync::atomic::AtomicU64>,
    name: &'static str,
    now_ms: u64,
    lineage: Option<Lineage>,
}

impl Notifier {
    /// Who a change of `key` fires; `name` is S3's event name, e.g. `ObjectCreated:Put`.
    /// `lineage` is that of the invocation that made the change (so a loop through a
    /// bucket stops at the depth limit and within its lineage's event budget).
    pub fn prepare(
        &self,
        bucket: &str,
        key: &str,
        name: &'static str,
        now_ms: u64,
        lineage: Option<Lineage>,
    ) -> Pending {
        let kind = if name.starts_with("ObjectRemoved") {
            BucketEvent::Removed
        } else {
            BucketEvent::Created
        };
        Pending {
            subscribers: self.registry.bucket_subscribers(bucket, key, kind),
            sequencer: self.sequencer.clone(),
            name,
            now_ms,
            lineage,
        }
    }

    pub fn committed(&self, pending: &Pending) {
        if !pending.subscribers.is_empty() {
            self.wake.notify_one();
        }
    }
}

impl Pending {
    /// Called inside the store's transaction.
    pub fn events(&self, object: &ObjectMeta) -> Vec<NewEvent> {
        if self.subscribers.is_empty() {
            return Vec::new();
        }
        let sequencer = self
            .sequencer
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.subscribers
            .iter()
            .map(|(function, trigger_id)| {
                let event = NewEvent::fired(
                    function.clone(),
                    Trigger::Bucket,
                    Some(BUCKET_EVENT_TYPE.into()),
                    Some(format!("/buckets/{}", object.bucket)),
                    self.now_ms,
                )
                .caused_by(self.lineage.as_ref())
                // Changes of one key reach each function in commit order.
                .ordered_by(format!(
                    "bucket:{}:{}:{function}",
                    object.bucket, object.key
                ));
                let data = document(
                    self.name,
                    object,
                    trigger_id,
                    &event.id,
                    self.now_ms,
                    sequencer,
                );
                event.with_json(data)
            })
            .collect()
    }
}

/// S3 encodes keys in notifications like HTML form values (space as `+`).
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' | b'/' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn document(
    name: &str,
    object: &ObjectMeta,
    trigger_id: &str,
    id: &str,
    now_ms: u64,
    sequencer: u64,
) -> Vec<u8> {
    let removed = name.starts_with("ObjectRemoved");
    let mut obj = serde_json::json!({
        "key": form_encode(&object.key),
        "sequencer": format!("{sequencer:016X}"),
    });
    if !removed {
        obj["size"] = serde_json::json!(object.size);
        obj["eTag"] = serde_json::json!(object.etag);
    }
    let record = serde_json::json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": crate::s3::REGION,
        "eventTime": crate::s3::iso_time(now_ms),
        "eventName": name,
        "userIdentity": { "principalId": "cirrus" },
        "requestParameters": { "sourceIPAddress": "127.0.0.1" },
        "responseElements": { "x-amz-request-id": id },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": trigger_id,
            "bucket": {
                "name": object.bucket,
                "ownerIdentity": { "principalId": "cirrus" },
                "arn": format!("arn:aws:s3:::{}", object.bucket),
            },
            "object": obj,
        },
    });
    serde_json::to_vec(&serde_json::json!({ "Records": [record] })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_form_encoded() {
        assert_eq!(form_encode("photos/a b+c.ppm"), "photos/a+b%2Bc.ppm");
        assert_eq!(form_encode("é"), "%C3%A9");
    }
}
