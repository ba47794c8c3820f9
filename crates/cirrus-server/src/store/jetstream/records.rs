//! Invocation records and logs in a cluster: every node keeps all of them.
//!
//! A node writes its own batches to its SQLite as a single node does (so what it ran is
//! readable at once), and publishes each batch to the stream `cirrus_records`. Every
//! node replays that stream into its own SQLite, skipping its own batches: `cirrus
//! invocations`, `logs`, `trace` and `usage` give the same answers on any node, from a
//! local database, and a record costs one stream message per batch, off the request
//! path. The replica's position (the stream sequence of the last batch written) is
//! stored with the batch in one transaction, so a batch delivered twice is written once.

use super::JetStream;
use crate::store::{HourlyUsage, RecordStore, StoreResult};
use anyhow::Context as _;
use async_nats::jetstream::consumer;
use cirrus_api::{InvocationRecord, LogLine, Page};
use futures_util::StreamExt as _;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

pub const RECORDS_STREAM: &str = "cirrus_records";
const SUBJECT_PREFIX: &str = "cirrus.records";
/// The header naming the node a batch came from.
const NODE_HEADER: &str = "Cirrus-Node";
/// Batches are cut below NATS's default 1 MiB payload limit.
const MAX_MESSAGE_BYTES: usize = 768 << 10;

/// One message of the records stream (written by [`assemble`]).
#[derive(Deserialize)]
struct Batch {
    records: Vec<InvocationRecord>,
    logs: Vec<LogLine>,
}

/// This node's records store: its SQLite, plus publishing what it writes.
pub struct ReplicatedRecords {
    local: Arc<dyn RecordStore>,
    js: JetStream,
    node: String,
    /// The record writer is a plain thread: publishing runs on the server's runtime.
    runtime: tokio::runtime::Handle,
}

impl JetStream {
    /// The records stream, made on first use. Kept `max_age`: a node that joins later
    /// (or was away longer) gets the records of that period.
    pub async fn records_stream(&self, replicas: usize, max_age: Duration) -> StoreResult<()> {
        self.kept_stream(
            RECORDS_STREAM,
            "Cirrus invocation records and logs, by node",
            SUBJECT_PREFIX,
            replicas,
            max_age,
        )
        .await
    }
}

impl ReplicatedRecords {
    pub fn new(local: Arc<dyn RecordStore>, js: JetStream, node: String) -> Self {
        Self {
            local,
            js,
            node,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Publishes a batch in messages under the size limit, each acknowledged.
    async fn publish(&self, records: &[InvocationRecord], logs: &[LogLine]) -> StoreResult<()> {
        let subject = format!("{SUBJECT_PREFIX}.{}", self.node);
        for chunk in chunks(records, logs)? {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(NODE_HEADER, self.node.as_str());
            self.js
                .context
                .publish_with_headers(subject.clone(), headers, chunk.into())
                .await?
                .await
                .context("publishing invocation records")?;
        }
        Ok(())
    }
}

/// A batch as messages of at most `MAX_MESSAGE_BYTES` (a single record larger than that
/// goes alone), each a JSON [`Batch`]. Every record and line is serialized once, and the
/// messages are assembled from those pieces.
fn chunks(records: &[InvocationRecord], logs: &[LogLine]) -> StoreResult<Vec<Vec<u8>>> {
    let records = records
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    let logs = logs
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    let (mut held_records, mut held_logs): (Vec<&[u8]>, Vec<&[u8]>) = (Vec::new(), Vec::new());
    let mut size = 0;
    let pieces = records
        .iter()
        .map(|r| (true, r.as_slice()))
        .chain(logs.iter().map(|l| (false, l.as_slice())));
    for (is_record, piece) in pieces {
        if size + piece.len() > MAX_MESSAGE_BYTES && size > 0 {
            out.push(assemble(&held_records, &held_logs));
            held_records.clear();
            held_logs.clear();
            size = 0;
        }
        size += piece.len() + 1;
        if is_record {
            held_records.push(piece);
        } else {
            held_logs.push(piece);
        }
    }
    if size > 0 {
        out.push(assemble(&held_records, &held_logs));
    }
    Ok(out)
}

/// `{"records":[…],"logs":[…]}` from pieces already serialized.
fn assemble(records: &[&[u8]], logs: &[&[u8]]) -> Vec<u8> {
    let mut message = b"{\"records\":[".to_vec();
    message.extend_from_slice(&records.join(&b","[..]));
    message.extend_from_slice(b"],\"logs\":[");
    message.extend_from_slice(&logs.join(&b","[..]));
    message.extend_from_slice(b"]}");
    message
}

impl RecordStore for ReplicatedRecords {
    fn write_batch(&self, records: &[InvocationRecord], logs: &[LogLine]) -> StoreResult<()> {
        self.local.write_batch(records, logs)?;
        // Kept locally whatever happens; the other nodes get it if NATS takes it. Without
        // NATS, waiting would hold up the record queue and, behind it, invocations.
        if !self.js.connected() {
            tracing::warn!(
                records = records.len(),
                "NATS is unreachable: these records stay on this node only"
            );
            return Ok(());
        }
        self.runtime.block_on(async {
            for attempt in 1..=3 {
                match self.publish(records, logs).await {
                    Ok(()) => return Ok(()),
                    Err(e) if attempt < 3 => {
                        tracing::warn!("publishing records: {e:#}; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    fn replication_mark(&self) -> StoreResult<u64> {
        self.local.replication_mark()
    }

    fn write_replicated(
        &self,
        seq: u64,
        records: &[InvocationRecord],
        logs: &[LogLine],
    ) -> StoreResult<bool> {
        self.local.write_replicated(seq, records, logs)
    }

    fn invocations(
        &self,
        function: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<InvocationRecord>> {
        self.local.invocations(function, before, limit)
    }

    fn logs(
        &self,
        function: &str,
        request_id: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<LogLine>> {
        self.local.logs(function, request_id, limit)
    }

    fn trace(&self, trace_id: &str) -> StoreResult<Vec<InvocationRecord>> {
        self.local.trace(trace_id)
    }

    fn trace_of(&self, request_id: &str) -> StoreResult<Option<String>> {
        self.local.trace_of(request_id)
    }

    fn hourly_usage(&self, from: &str, to: &str) -> StoreResult<Vec<HourlyUsage>> {
        self.local.hourly_usage(from, to)
    }
}

/// Replays the other nodes' batches into this node's store until shutdown; their log
/// lines also go to this node's live followers (`logs -f`).
pub async fn replicate(
    js: JetStream,
    store: Arc<dyn RecordStore>,
    node: String,
    live: crate::records::RecordSink,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let result = tokio::select! {
            result = replay(&js, &store, &node, &live) => result,
            _ = shutdown.changed() => return,
        };
        if let Err(e) = result {
            tracing::warn!("replaying other nodes' records: {e:#}; starting again");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn replay(
    js: &JetStream,
    store: &Arc<dyn RecordStore>,
    node: &str,
    live: &crate::records::RecordSink,
) -> StoreResult<()> {
    let mark = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.replication_mark()).await??
    };
    let stream = js
        .context
        .get_stream(RECORDS_STREAM)
        .await
        .context("opening the records stream")?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js.client.new_inbox(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: mark + 1,
            },
            ..Default::default()
        })
        .await
        .context("following the records stream")?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message.context("reading the records stream")?;
        let from = message
            .headers
            .as_ref()
            .and_then(|h| h.get(NODE_HEADER))
            .map(|v| v.as_str().to_owned());
        if from.as_deref() == Some(node) {
            continue;
        }
        let seq = message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        let batch: Batch = match serde_json::from_slice(&message.payload) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(seq, "skipping an unreadable records batch: {e}");
                continue;
            }
        };
        let lines = batch.logs.clone();
        let writer = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            writer.write_replicated(seq, &batch.records, &batch.logs)
        })
        .await??;
        if written {
            live.publish_live(lines);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_batch_is_cut_under_the_limit_and_reads_back_whole() {
        let line = |i: usize| LogLine {
            time: "2026-12-07T00:00:00.000Z".into(),
            function: "f".into(),
            version: 1,
            request_id: format!("r{i}"),
            stream: cirrus_api::LogStream::Stderr,
            line: "x".repeat(100_000),
        };
        let logs: Vec<LogLine> = (0..20).map(line).collect();
        let messages = chunks(&[], &logs).unwrap();
        assert!(messages.len() > 1, "cut into several messages");
        let mut read = Vec::new();
        for message in &messages {
            assert!(message.len() <= MAX_MESSAGE_BYTES + 200_000);
            let batch: Batch = serde_json::from_slice(message).unwrap();
            assert!(batch.records.is_empty());
            read.extend(batch.logs);
        }
        assert_eq!(read, logs);
        assert!(chunks(&[], &[]).unwrap().is_empty());
    }
}
