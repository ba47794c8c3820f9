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
//!   live rows and a write that came after the delete survives it. A marker carrying
//!   change events stays until the relay has queued them.
//! - Change events travel in the row's message (or the delete marker), after the
//!   value, so a row is never stored without its events (see [`super::outbox`]): the
//!   writer queues them right after its compare-and-set, the key's next writer queues
//!   them again before its own (which keeps one key's events in write order), and the
//!   relay queues those of rows nobody writes again; each is kept once, its id being
//!   its message id. Each function then sees one key's changes one at a time, in the
//!   order of the writes, on any node.

use super::events::ClusterQueue;
use super::outbox::{self, Outgoing};
use super::{frame, open_kv, retry, unframe, JetStream};
use crate::store::{KvCondition, KvStore, KvWrite, StoreResult};
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
    /// Bytes of sealed change events after the value (see [`super::outbox`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    events: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn row_key(table: &str, key: &str) -> String {
    format!(
        "{table}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    )
}

/// A row's head, its value and the change events it carries.
fn split(message: &[u8]) -> StoreResult<(Head, &[u8], &[u8])> {
    let (head, body) = unframe::<Head>(message, "a row")?;
    anyhow::ensure!(body.len() >= head.events, "a row cut short");
    let (value, events) = body.split_at(body.len() - head.events);
    Ok((head, value, events))
}

fn decode(table: &str, key: &str, message: &[u8]) -> StoreResult<(KvEntry, Vec<u8>)> {
    let (head, value, _) = split(message)?;
    Ok((entry(table, key, &head, value.len()), value.to_vec()))
}

/// The change events a message of the bucket carries (a row's or a delete marker's),
/// for the outbox's relay.
pub fn carried(message: &[u8]) -> StoreResult<Vec<Outgoing>> {
    if message.is_empty() {
        return Ok(Vec::new());
    }
    let (_, _, events) = split(message)?;
    outbox::unseal(events)
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
    /// For delete markers that carry events.
    context: async_nats::jetstream::Context,
    /// Where change events go.
    queue: Arc<ClusterQueue>,
    /// The NATS server's message limit: a row and its change events must fit in one.
    max_payload: usize,
}

/// A row as read, with the revision a write must name.
struct Current {
    revision: u64,
    row: Option<(KvEntry, Vec<u8>)>,
    /// Its message, whose change events a writer replacing it queues first.
    message: Option<kv::Entry>,
}

impl Current {
    /// The events the row's message carries that may not be queued yet.
    fn pending(&self) -> StoreResult<Vec<Outgoing>> {
        outbox::pending(self.message.as_ref(), carried)
    }
}

impl ClusterTables {
    pub async fn open(
        js: &JetStream,
        replicas: usize,
        queue: Arc<ClusterQueue>,
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
            context: js.context.clone(),
            queue,
            max_payload,
        })
    }

    /// The largest value that fits a message with `events` change events (old and new
    /// value inline, base64 at worst).
    fn max_value(&self, events: usize) -> usize {
        let room = self.max_payload.saturating_sub((events + 1) * HEAD_ROOM);
        room * 3 / (3 + 8 * events)
    }

    async fn current(&self, table: &str, key: &str) -> StoreResult<Current> {
        let name = row_key(table, key);
        let found = retry::retried("reading a row", || self.bucket.entry(name.clone())).await?;
        let Some(found) = found else {
            return Ok(Current {
                revision: 0,
                row: None,
                message: None,
            });
        };
        let row = match found.operation {
            kv::Operation::Put => Some(decode(table, key, &found.value)?),
            _ => None,
        };
        Ok(Current {
            revision: found.revision,
            row,
            message: Some(found),
        })
    }

    /// One attempt at a write, with the change events it carries: `None` if another
    /// writer got in between (read again).
    async fn try_write(
        &self,
        table: &str,
        key: &str,
        value: Option<(&[u8], Option<&str>)>,
        condition: &KvCondition,
        now_ms: u64,
        events: &crate::store::KvEventsFn,
    ) -> StoreResult<Option<(KvWrite, Vec<Outgoing>)>> {
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
            let outgoing = self.queue.outgoing(&events(old, None), now_ms).await?;
            let sealed = outbox::seal(&outgoing)?;
            let head = Head {
                version: deleted.version,
                content_type: deleted.content_type.clone(),
                updated_ms: now_ms,
                events: sealed.len(),
            };
            // A delete without events leaves a plain marker, removed at once.
            let marker = match sealed.is_empty() {
                true => bytes::Bytes::new(),
                false => frame(&head, &sealed)?,
            };
            if marker.len() > self.max_payload {
                return Ok(Some((
                    KvWrite::TooLarge(self.max_value(outgoing.len())),
                    Vec::new(),
                )));
            }
            // The replaced row's events go first (see the module's documentation).
            self.queue
                .publish_outgoing(&current.pending()?, true)
                .await?;
            if !super::remove_key_carrying(
                &self.context,
                &self.bucket,
                &name,
                current.revision,
                marker,
            )
            .await?
            {
                return Ok(None);
            }
            return Ok(Some((KvWrite::Done(deleted.clone()), outgoing)));
        };
        let head = Head {
            version: version.unwrap_or(0) + 1,
            content_type: content_type.map(str::to_owned),
            updated_ms: now_ms,
            events: 0,
        };
        let written = entry(table, key, &head, bytes.len());
        let outgoing = self
            .queue
            .outgoing(&events(old, Some((&written, bytes))), now_ms)
            .await?;
        let sealed = outbox::seal(&outgoing)?;
        let head = Head {
            events: sealed.len(),
            ..head
        };
        let mut body = Vec::with_capacity(bytes.len() + sealed.len());
        body.extend_from_slice(bytes);
        body.extend_from_slice(&sealed);
        let message = frame(&head, &body)?;
        // The row and its events are one message: refused whole if they do not fit.
        if message.len() > self.max_payload {
            return Ok(Some((
                KvWrite::TooLarge(self.max_value(outgoing.len())),
                Vec::new(),
            )));
        }
        // The replaced row's events go first: queued before this write's, and not lost
        // with the row's message if its writer died before queueing them.
        self.queue
            .publish_outgoing(&current.pending()?, true)
            .await?;
        match self.bucket.update(&name, message, current.revision).await {
            Ok(_) => Ok(Some((KvWrite::Done(written), outgoing))),
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
            if bytes.len() > self.max_value(0) {
                return Ok(KvWrite::TooLarge(self.max_value(0)));
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
        let Some((written, outgoing)) = done else {
            anyhow::bail!("writing {table}/{key}: too many concurrent writers")
        };
        // The events are stored with the row: one that is not queued now is queued by
        // the key's next writer or the relay.
        if let Err(e) = self.queue.publish_outgoing(&outgoing, false).await {
            tracing::warn!(
                table,
                key,
                "queueing change events failed (they are kept with the row and queued later): {e:#}"
            );
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
