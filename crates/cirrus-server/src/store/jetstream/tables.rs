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
//! - Change events are queued on the cluster's event queue right after the row is
//!   written, with the key as ordering key: each function sees one key's changes in
//!   the order they were written, whichever node wrote them. The write answers only
//!   once they are queued; a node that dies between the two (milliseconds) loses that
//!   change's events, the one way this differs from SQLite's single transaction.

use super::{open_kv, retry, JetStream};
use crate::store::{EventQueue, KvCondition, KvStore, KvWrite, NewEvent, StoreResult};
use anyhow::Context as _;
use async_nats::jetstream::{kv, stream};
use base64::Engine as _;
use cirrus_api::KvEntry;
use futures_util::StreamExt as _;
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

fn encode(head: &Head, value: &[u8]) -> StoreResult<bytes::Bytes> {
    let head = serde_json::to_vec(head)?;
    let mut message = Vec::with_capacity(4 + head.len() + value.len());
    message.extend_from_slice(&u32::try_from(head.len())?.to_be_bytes());
    message.extend_from_slice(&head);
    message.extend_from_slice(value);
    Ok(message.into())
}

fn decode(table: &str, key: &str, message: &[u8]) -> StoreResult<(KvEntry, Vec<u8>)> {
    let (len, rest) = message
        .split_first_chunk::<4>()
        .context("a row without its head")?;
    let len = u32::from_be_bytes(*len) as usize;
    anyhow::ensure!(rest.len() >= len, "a row cut short");
    let (head, value) = rest.split_at(len);
    let head: Head = serde_json::from_slice(head).context("a row's head")?;
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
    stream: stream::Stream,
    /// Where change events go.
    queue: Arc<dyn EventQueue>,
    /// The largest value a row can hold: the NATS server's message limit less the head.
    max_value: usize,
    /// The table's callers are blocking threads: JetStream is reached on this runtime.
    runtime: tokio::runtime::Handle,
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
        )
        .await?;
        let stream = js
            .context
            .get_stream(format!("KV_{TABLES_BUCKET}"))
            .await
            .context("opening the KV tables' stream")?;
        let max_payload = js.client.server_info().max_payload;
        Ok(Self {
            bucket,
            stream,
            queue,
            max_value: max_payload.saturating_sub(HEAD_ROOM),
            runtime: tokio::runtime::Handle::current(),
        })
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

    /// One attempt at a write: `None` if another writer got in between (read again).
    async fn try_write(
        &self,
        table: &str,
        key: &str,
        value: Option<(&[u8], Option<&str>)>,
        condition: &KvCondition,
        now_ms: u64,
    ) -> StoreResult<Option<(KvWrite, Option<(KvEntry, Vec<u8>)>, Option<Vec<u8>>)>> {
        let current = self.current(table, key).await?;
        let version = current.row.as_ref().map(|(e, _)| e.version);
        let allowed = match condition {
            KvCondition::Any => true,
            KvCondition::Absent => version.is_none(),
            KvCondition::Version(v) => version == Some(*v),
        };
        if !allowed {
            return Ok(Some((KvWrite::Conflict(version), None, None)));
        }
        let name = row_key(table, key);
        match value {
            Some((bytes, content_type)) => {
                let head = Head {
                    version: version.unwrap_or(0) + 1,
                    content_type: content_type.map(str::to_owned),
                    updated_ms: now_ms,
                };
                let message = encode(&head, bytes)?;
                if self
                    .bucket
                    .update(&name, message, current.revision)
                    .await
                    .is_err()
                {
                    return Ok(None);
                }
                let written = entry(table, key, &head, bytes.len());
                Ok(Some((
                    KvWrite::Done(written),
                    current.row,
                    Some(bytes.to_vec()),
                )))
            }
            None => {
                let Some((old, _)) = &current.row else {
                    return Ok(Some((KvWrite::Missing, None, None)));
                };
                let old = old.clone();
                if self
                    .bucket
                    .delete_expect_revision(&name, Some(current.revision))
                    .await
                    .is_err()
                {
                    return Ok(None);
                }
                // Gone from the subject index too, up to the marker: a write that came
                // after it stays.
                let marker = self.current(table, key).await?;
                if marker.row.is_none() {
                    self.stream
                        .purge()
                        .filter(format!("$KV.{TABLES_BUCKET}.{name}"))
                        .sequence(marker.revision + 1)
                        .await
                        .context("removing a deleted row")?;
                }
                Ok(Some((KvWrite::Done(old), current.row, None)))
            }
        }
    }

    async fn list(
        &self,
        table: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<KvEntry>> {
        let filter = format!("$KV.{TABLES_BUCKET}.{table}.*");
        let mut subjects = self
            .stream
            .info_with_subjects(&filter)
            .await
            .context("listing a table")?;
        let cut = format!("$KV.{TABLES_BUCKET}.{table}.");
        let mut keys = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _) = entry.context("listing a table")?;
            let Some(encoded) = subject.strip_prefix(&cut) else {
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

impl KvStore for ClusterTables {
    fn kv_write(
        &self,
        table: &str,
        key: &str,
        value: Option<(&[u8], Option<&str>)>,
        condition: KvCondition,
        now_ms: u64,
        events: &dyn Fn(Option<(&KvEntry, &[u8])>, Option<(&KvEntry, &[u8])>) -> Vec<NewEvent>,
    ) -> StoreResult<KvWrite> {
        if let Some((bytes, _)) = value {
            if bytes.len() > self.max_value {
                return Ok(KvWrite::TooLarge(self.max_value));
            }
        }
        let (written, old, new) = self.runtime.block_on(async {
            for _ in 0..100 {
                if let Some(done) = self
                    .try_write(table, key, value, &condition, now_ms)
                    .await?
                {
                    return Ok(done);
                }
            }
            anyhow::bail!("writing {table}/{key}: too many concurrent writers")
        })?;
        let KvWrite::Done(entry) = &written else {
            return Ok(written);
        };
        let old = old.as_ref().map(|(e, v)| (e, v.as_slice()));
        let queued = events(old, new.as_deref().map(|v| (entry, v)));
        if !queued.is_empty() {
            self.queue.enqueue(&queued, now_ms, 0)?;
        }
        Ok(written)
    }

    fn kv_get(&self, table: &str, key: &str) -> StoreResult<Option<(KvEntry, Vec<u8>)>> {
        Ok(self.runtime.block_on(self.current(table, key))?.row)
    }

    fn kv_list(
        &self,
        table: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<KvEntry>> {
        self.runtime
            .block_on(self.list(table, prefix, after, limit))
    }
}
