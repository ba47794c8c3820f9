//! Writing KV rows together with their change events: for the API and for `kv:TABLE`
//! destinations alike.

use super::TABLE_EVENT_TYPE;
use crate::clock::Clock;
use crate::lineage::Lineage;
use crate::registry::Registry;
use crate::store::{KvCondition, KvStore, KvWrite, NewEvent};
use cirrus_api::{KvEntry, Trigger};
use std::sync::Arc;
use tokio::sync::Notify;

pub struct KvWriter {
    pub kv: Arc<dyn KvStore>,
    pub registry: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    /// Wakes the dispatcher for the change events.
    pub wake: Arc<Notify>,
}

impl KvWriter {
    /// Writes (or deletes, with `value = None`) a row and queues a change event for every
    /// function with a trigger on the table, in one transaction. `lineage` is that of the
    /// invocation that wrote the row (a function with its token, a destination step).
    pub async fn write(
        &self,
        table: &str,
        key: &str,
        value: Option<(Vec<u8>, Option<String>)>,
        cond: KvCondition,
        lineage: Option<Lineage>,
    ) -> anyhow::Result<KvWrite> {
        let subscribers = self.registry.table_subscribers(table);
        let now = self.clock.now_ms();
        let (t, k) = (table.to_owned(), key.to_owned());
        let events: crate::store::KvEvents = Box::new(
            move |old: Option<(&KvEntry, &[u8])>,
                  new: Option<(&KvEntry, &[u8])>|
                  -> Vec<NewEvent> {
                let op = match (old, new) {
                    (None, Some(_)) => "insert",
                    (Some(_), Some(_)) => "update",
                    _ => "delete",
                };
                let data = change(op, old, new, &t, &k);
                subscribers
                    .iter()
                    .map(|function| {
                        NewEvent::fired(
                            function.clone(),
                            Trigger::Table,
                            Some(TABLE_EVENT_TYPE.into()),
                            Some(format!("/kv/{t}")),
                            now,
                        )
                        .with_json(data.clone())
                        .caused_by(lineage.as_ref())
                        // Changes of one key reach each function in commit order.
                        .ordered_by(format!("kv:{t}:{k}:{function}"))
                    })
                    .collect()
            },
        );
        let written = self
            .kv
            .kv_write(table, key, value, cond, now, events)
            .await?;
        self.wake.notify_one();
        Ok(written)
    }
}

/// The change event's body: what happened, with the old and new values (JSON values
/// inline, text as strings, bytes as base64).
pub fn change(
    op: &str,
    old: Option<(&KvEntry, &[u8])>,
    new: Option<(&KvEntry, &[u8])>,
    table: &str,
    key: &str,
) -> Vec<u8> {
    let value = |v: Option<(&KvEntry, &[u8])>| -> serde_json::Value {
        let Some((entry, bytes)) = v else {
            return serde_json::Value::Null;
        };
        let json = entry
            .content_type
            .as_deref()
            .is_some_and(|c| c.contains("json"));
        if json {
            if let Ok(v) = serde_json::from_slice(bytes) {
                return v;
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::Value::String(text.to_owned()),
            Err(_) => {
                use base64::Engine as _;
                serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
            }
        }
    };
    let version = new.or(old).map(|(e, _)| e.version);
    serde_json::to_vec(&serde_json::json!({
        "table": table, "key": key, "op": op, "version": version,
        "old": value(old), "new": value(new),
    }))
    .unwrap_or_default()
}
