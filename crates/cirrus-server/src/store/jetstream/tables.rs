//! KV tables in a cluster: the JetStream KV bucket `cirrus_tables`, one key per row
//! (`TABLE.KEY` with the row's key in unpadded URL-safe base64, so any key is a valid
//! subject token), read and written by every node.
//!
//! - A row's message is a head (its version, content type, time) and its value. The
//!   version keeps the single node's meaning (1 on create, one more per write); the
//!   compare-and-set that makes writes safe is on the JetStream revision read with it,
//!   so two nodes writing one row at once cannot both win: the loser reads again and
//!   checks its condition against the winner's row.
//! - A delete writes a delete marker by compare-and-set, then removes the row's
//!   messages up to that marker, so listing (the stream's subject index) sees only
//!   live rows and a write that came after the delete survives it.
//! - Change events are made before the row is written (one too large for a message
//!   refuses the write) and queued on the cluster's event queue right after it, with
//!   the key as ordering key: each function sees one key's changes one at a time, in
//!   the order they were queued. The write answers only once they are queued. Two
//!   ways this differs from SQLite's single transaction: a node that dies between the
//!   write and the queueing (milliseconds) loses that change's events; and two writers
//!   of one key within those milliseconds may queue their events in the other order
//!   than their writes (each event names its version, so a handler can tell).

use super::{frame, open_kv, retry, unframe, JetStream};
use crate::store::{EventQueue, KvCondition, KvStore, KvWrite, NewEvent, StoreResult};
use anyhow::Context as _;
use async_nats::jetstream::kv;
use base64::Engine as _;
use cirrus_api::KvEntry;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub const TABLES_BUCKET: &str = "cirrus_tables";
/// Room a row's head takes in its message, at most (its JSON is far shorter).
const HEAD_ROOM: usize = 1024;

#[derive(Serialize, Deserialize)]
struct Head {
    version: u64,
    content_type: Option<String>,
    updated_ms: u64,
}

fn row_key(table: &str, key: &str) -> String {
    format!(
        "{table}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    )
}

fn decode(table: &str, key: &str, message: &[u8]) -> StoreResult<(KvEntry, Vec<u8>)> {
    let (head, value) = unframe::<Head>(message, "a row")?;
    Ok((entry(table, key, &head, value.len()), value.to_vec()))
}

fn entry(table: &str, key: &str, head: &Head, size: usize) -> KvEntry {
    KvEntry {
        table: table.to_owned(),
        key: key.to_owned(),
        version: head.version,
        content_type: head.content_type.clone(),
        size_bytes: size as u64,
        updated_at: crate::clock::rfc3339(head.updated_ms),
    }
}

/// The cluster's KV tables (see the module's documentation).
pub struct ClusterTables {
    bucket: kv::Store,
    /// Where change events go.
    queue: Arc<dyn EventQueue>,
    /// The NATS server's message limit: a row, and each change event, must fit in one.
    max_payload: usize,
}

/// A row as read, with the revision a write must name.
struct Current {
    revision: u64,
    row: Option<(KvEntry, Vec<u8>)>,
}

impl ClusterTables {
    pub async fn open(
        js: &JetStream,
        replicas: usize,
        queue: Arc<dyn EventQueue>,
    ) -> StoreResult<Self> {
        let bucket = open_kv(
            &js.context,
            TABLES_BUCKET,
            "Cirrus KV tables",
            replicas,
            Duration::ZERO,
            // Read-your-writes: a client reads the row it just wrote, on any node.
            false,
        )
        .await?;
        let max_payload = js.client.server_info().max_payload;
        Ok(Self {
            bucket,
            queue,
            max_payload,
        })
    }

    /// The largest value whose change event (old and new value inline, base64 at
    /// worst) fits a message.
    fn max_event_value(&self) -> usize {
        self.max_payload.saturating_sub(2 * HEAD_ROOM) * 3 / 8
    }

    async fn current(&self, table: &str, key: &str) -> StoreResult<Current> {
        let name = row_key(table, key);
        let found = retry::retried("reading a row", || self.bucket.entry(name.clone())).await?;
        Ok(match found {
            Some(e) if e.operation == kv::Operation::Put => Current {
                revision: e.revision,
                row: Some(decode(table, key, &e.value)?),
            },
            Some(e) => Current {
                revision: e.revision,
                row: None,
            },
            None => Current {
                revision: 0,
                row: None,
            },
        })
    }

    /// One attempt at a write, with the change events it causes: `None` if another
    /// writer got in between (read again).
    async fn try_write(
        &self,
        table: &str,
        key: &str,
        value: Option<(&[u8], Option<&str>)>,
        condition: &KvCondition,
        now_ms: u64,
        events: &crate::store::KvEventsFn,
    ) -> StoreResult<Option<(KvWrite, Vec<NewEvent>)>> {
        let current = self.current(table, key).await?;
        let version = current.row.as_ref().map(|(e, _)| e.version);
        let allowed = match condition {
            KvCondition::Any => true,
            KvCondition::Absent => version.is_none(),
            KvCondition::Version(v) => version == Some(*v),
        };
        if !allowed {
            return Ok(Some((KvWrite::Conflict(version), Vec::new())));
        }
        let old = current.row.as_ref().map(|(e, v)| (e, v.as_slice()));
        let name = row_key(table, key);
        let Some((bytes, content_type)) = value else {
            let Some((deleted, _)) = &current.row else {
                return Ok(Some((KvWrite::Missing, Vec::new())));
            };
            let queued = events(old, None);
            if !super::remove_key(&self.bucket, &name, current.revision).await? {
                return Ok(None);
            }
            return Ok(Some((KvWrite::Done(deleted.clone()), queued)));
        };
        let head = Head {
            version: version.unwrap_or(0) + 1,
            content_type: content_type.map(str::to_owned),
            updated_ms: now_ms,
        };
        let written = entry(table, key, &head, bytes.len());
        // The change events are made before the row is written, so that one too large
        // for a message refuses the write instead of failing after it.
        let queued = events(old, Some((&written, bytes)));
        if queued
            .iter()
            .any(|e| e.data.len() + HEAD_ROOM > self.max_payload)
        {
            return Ok(Some((
                KvWrite::TooLarge(self.max_event_value()),
                Vec::new(),
            )));
        }
        match self
            .bucket
            .update(&name, frame(&head, bytes)?, current.revision)
            .await
        {
            Ok(_) => Ok(Some((KvWrite::Done(written), queued))),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(e).with_context(|| format!("writing {table}/{key}")),
        }
    }

    async fn list(
        &self,
        table: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<KvEntry>> {
        let under = format!("{table}.");
        let mut keys = Vec::new();
        for name in super::kv_keys(&self.bucket, &under).await? {
            let Some(encoded) = name.strip_prefix(&under) else {
                continue;
            };
            let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) else {
                continue;
            };
            let Ok(key) = String::from_utf8(bytes) else {
                continue;
            };
            if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
                keys.push(key);
            }
        }
        keys.sort();
        let mut rows = Vec::new();
        for key in keys {
            if rows.len() >= limit {
                break;
            }
            // A row deleted since the index was read is skipped.
            if let Some((entry, _)) = self.current(table, &key).await?.row {
                rows.push(entry);
            }
        }
        Ok(rows)
    }
}

#[async_trait::async_trait]
impl KvStore for ClusterTables {
    async fn kv_write(
        &self,
        table: &str,
        key: &str,
        value: Option<(Vec<u8>, Option<String>)>,
        condition: KvCondition,
        now_ms: u64,
        events: crate::store::KvEvents,
    ) -> StoreResult<KvWrite> {
        let value = value.as_ref().map(|(v, ct)| (v.as_slice(), ct.as_deref()));
        if let Some((bytes, _)) = value {
            if bytes.len() + HEAD_ROOM > self.max_payload {
                return Ok(KvWrite::TooLarge(self.max_payload - HEAD_ROOM));
            }
        }
        let mut done = None;
        for _ in 0..100 {
            done = self
                .try_write(table, key, value, &condition, now_ms, &*events)
                .await?;
            if done.is_some() {
                break;
            }
            // Lost a race for the row: let the other writer finish.
            let pause = rand::random_range(1..20);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let Some((written, queued)) = done else {
            anyhow::bail!("writing {table}/{key}: too many concurrent writers")
        };
        if !queued.is_empty() {
            self.queue.enqueue(queued, now_ms, 0).await?;
        }
        Ok(written)
    }

    async fn kv_get(&self, table: &str, key: &str) -> StoreResult<Option<(KvEntry, Vec<u8>)>> {
        Ok(self.current(table, key).await?.row)
    }

    async fn kv_list(
        &self,
        table: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<KvEntry>> {
        self.list(table, prefix, after, limit).await
    }
}
