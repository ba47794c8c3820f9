//! Events that travel inside the write that causes them, so the write and its events
//! are one message: JetStream's answer to SQLite's "a change and its events commit in
//! one transaction". A KV table row (or its delete marker) carries its change events
//! sealed at the end of its message; once the compare-and-set has stored it, the events
//! are as durable as the row, and three publishers put them on the event queue, each
//! with `Nats-Msg-Id` = the event's id so that the stream keeps one copy whoever gets
//! there first (within its de-duplication window, an hour):
//!
//! 1. the writer, right after its compare-and-set (the usual path, at once);
//! 2. the next writer of the same key, before its own compare-and-set: so one key's
//!    events reach the queue in the order of their writes, whatever the timing, and a
//!    row a dead writer left is not replaced (and its message dropped, the bucket
//!    keeping one per key) before its events are out;
//! 3. the relay: one node at a time (a lease) follows the bucket's stream from a
//!    checkpoint and publishes the events of every message a little after it was
//!    written, for the rows nobody writes again.
//!
//! A writer that dies between its compare-and-set and its publish therefore loses
//! nothing: its events are published by (2) or (3) within [`SETTLE`] plus, when the dead
//! node held the relay's lease, the lease's term.

use super::events::ClusterQueue;
use super::leases::Leases;
use super::{frame, open_kv, unframe, JetStream};
use crate::store::StoreResult;
use anyhow::Context as _;
use async_nats::jetstream::{consumer, kv};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The relay's checkpoints: for each followed bucket, the last stream sequence whose
/// events it has published.
pub const OUTBOX_BUCKET: &str = "cirrus_outbox";
/// How long after a message was written the relay publishes its events: the writer
/// normally has by then (the relay's copy is dropped as a duplicate).
pub const SETTLE: Duration = Duration::from_secs(1);
/// The replaced row's events are published again by its next writer only if it was
/// written less than this long ago: older ones the relay has long published, and
/// publishing them again would outlast the stream's de-duplication window (an hour)
/// and deliver them twice.
pub const REPUBLISH_WITHIN: Duration = Duration::from_secs(10 * 60);
/// How often the relay saves its checkpoint while it is busy.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// One event as it will be published: where to, its id (the message id that
/// de-duplicates it), and its message.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub subject: String,
    pub id: String,
    pub payload: bytes::Bytes,
}

#[derive(Serialize, Deserialize)]
struct SealedHead {
    subject: String,
    id: String,
}

/// The events as bytes a message carries: each its length (4 bytes, big-endian) and
/// its [`frame`] (subject and id, then the event's message).
pub fn seal(outgoing: &[Outgoing]) -> StoreResult<Vec<u8>> {
    let mut sealed = Vec::new();
    for event in outgoing {
        let framed = frame(
            &SealedHead {
                subject: event.subject.clone(),
                id: event.id.clone(),
            },
            &event.payload,
        )?;
        sealed.extend_from_slice(&u32::try_from(framed.len())?.to_be_bytes());
        sealed.extend_from_slice(&framed);
    }
    Ok(sealed)
}

/// The events [`seal`] made.
pub fn unseal(mut sealed: &[u8]) -> StoreResult<Vec<Outgoing>> {
    let mut outgoing = Vec::new();
    while !sealed.is_empty() {
        let (len, rest) = sealed
            .split_first_chunk::<4>()
            .context("sealed events cut short")?;
        let len = u32::from_be_bytes(*len) as usize;
        anyhow::ensure!(rest.len() >= len, "sealed events cut short");
        let (framed, rest) = rest.split_at(len);
        let (head, payload) = unframe::<SealedHead>(framed, "a sealed event")?;
        outgoing.push(Outgoing {
            subject: head.subject,
            id: head.id,
            payload: bytes::Bytes::copy_from_slice(payload),
        });
        sealed = rest;
    }
    Ok(outgoing)
}

/// A JetStream time as milliseconds since the Unix epoch.
pub fn unix_ms(time: async_nats::datetime::DateTime) -> u64 {
    (time.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// Reads the events a message of a followed bucket carries.
pub type CarriedFn = fn(&[u8]) -> StoreResult<Vec<Outgoing>>;

/// The events a key's current message carries, if it was written recently enough that
/// they may not be queued yet: what its next writer queues before replacing it (older
/// ones the relay has queued, see [`REPUBLISH_WITHIN`]).
/// Read only by a writer about to replace the key, never on the read path.
pub fn pending(entry: Option<&kv::Entry>, carried: CarriedFn) -> StoreResult<Vec<Outgoing>> {
    let Some(entry) = entry else {
        return Ok(Vec::new());
    };
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    if now >= unix_ms(entry.created) + REPUBLISH_WITHIN.as_millis() as u64 {
        return Ok(Vec::new());
    }
    carried(&entry.value)
}

/// Relays the events carried by the messages of KV bucket `bucket` while this node
/// holds the relay's lease (see the module's documentation), until shutdown.
pub async fn relay(
    js: JetStream,
    replicas: usize,
    bucket: &'static str,
    carried: CarriedFn,
    queue: Arc<ClusterQueue>,
    leases: Arc<Leases>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let lease = format!("outbox.{bucket}");
    let checkpoints = loop {
        let opened = open_kv(
            &js.context,
            OUTBOX_BUCKET,
            "Cirrus outbox relays' checkpoints",
            replicas,
            Duration::ZERO,
            false,
        );
        tokio::select! {
            opened = opened => match opened {
                Ok(store) => break store,
                Err(e) => tracing::warn!("opening {OUTBOX_BUCKET}: {e:#}"),
            },
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    loop {
        let revision = tokio::select! {
            revision = leases.take(&lease) => revision,
            _ = shutdown.changed() => return,
        };
        tracing::info!(bucket, "relaying the events written with the bucket's rows");
        let relaying = async {
            loop {
                if let Err(e) = follow(&js, bucket, carried, &queue, &checkpoints).await {
                    tracing::warn!(bucket, "relaying events: {e:#}; starting again");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            () = leases.hold(&lease, revision) => {}
            () = relaying => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Follows the bucket's stream from the checkpoint, publishing what its messages carry.
async fn follow(
    js: &JetStream,
    bucket: &str,
    carried: CarriedFn,
    queue: &ClusterQueue,
    checkpoints: &kv::Store,
) -> StoreResult<()> {
    let done = checkpoints
        .get(bucket)
        .await
        .context("reading the relay's checkpoint")?
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let stream = js
        .context
        .get_stream(format!("KV_{bucket}"))
        .await
        .with_context(|| format!("opening the stream of {bucket}"))?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js.client.new_inbox(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: done + 1,
            },
            ..Default::default()
        })
        .await
        .with_context(|| format!("following the stream of {bucket}"))?;
    let mut messages = consumer.messages().await?;
    let mut saved = (done, tokio::time::Instant::now());
    while let Some(message) = messages.next().await {
        let message = message.with_context(|| format!("reading the stream of {bucket}"))?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let due = unix_ms(info.published) + SETTLE.as_millis() as u64;
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        if due > now {
            // The time is the NATS server's: a node whose clock runs behind it waits
            // at most SETTLE, not the difference.
            let wait = Duration::from_millis(due - now).min(SETTLE);
            tokio::time::sleep(wait).await;
        }
        match carried(&message.payload) {
            Ok(outgoing) if !outgoing.is_empty() => {
                queue.publish_outgoing(&outgoing, true).await?;
                if is_delete(&message) {
                    // A delete marker is kept only for what it carries: it goes now, as
                    // the markers of deletes without events go at once (the bucket's
                    // subject index, which listings read, then holds live keys only).
                    // A later write of the key is above it and stays.
                    stream
                        .purge()
                        .filter(message.subject.to_string())
                        .sequence(sequence + 1)
                        .await
                        .with_context(|| format!("removing a delete marker from {bucket}"))?;
                }
            }
            Ok(_) => {}
            // Not ours to read (and nothing a writer could have sealed into).
            Err(e) => tracing::warn!(bucket, sequence, "skipping an unreadable message: {e:#}"),
        }
        if pending == 0 || saved.1.elapsed() >= CHECKPOINT_EVERY {
            checkpoints
                .put(bucket, sequence.to_string().into())
                .await
                .context("saving the relay's checkpoint")?;
            saved = (sequence, tokio::time::Instant::now());
        }
    }
    Ok(())
}

/// Whether a message of a KV bucket is a delete marker.
fn is_delete(message: &async_nats::Message) -> bool {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| op.as_str() == "DEL")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sealed_events_read_back_whole_and_in_order() {
        let outgoing: Vec<Outgoing> = (0..3)
            .map(|i| Outgoing {
                subject: format!("cirrus.ordered.{i}"),
                id: format!("id-{i}"),
                payload: bytes::Bytes::from(vec![i as u8; 10 * i]),
            })
            .collect();
        let sealed = seal(&outgoing).unwrap();
        assert_eq!(unseal(&sealed).unwrap(), outgoing);
        assert!(unseal(&[]).unwrap().is_empty());
        assert!(unseal(&sealed[..sealed.len() - 1]).is_err());
    }
}
