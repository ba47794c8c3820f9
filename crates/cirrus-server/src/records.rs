//! Invocation records and logs leave the request path through a bounded channel; one
//! writer thread commits them in batches, and live log followers get them at once.

use crate::store::RecordStore;
use cirrus_api::{InvocationRecord, LogLine};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Records waiting for the writer. Past this, invocations wait for room rather than
/// lose a record (back-pressure, not data loss).
const QUEUE_CAPACITY: usize = 16_384;
/// At most this many records go into one transaction.
const MAX_BATCH: usize = 1_024;
/// How long the writer lets a batch gather before committing it (see `writer`).
const LINGER: std::time::Duration = std::time::Duration::from_millis(10);
/// Live log lines kept for slow followers; a follower further behind skips ahead.
const FOLLOW_BUFFER: usize = 4_096;

enum Message {
    Record(Box<InvocationRecord>, Vec<LogLine>),
    Flush(oneshot::Sender<()>),
}

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct RecordSink {
    tx: mpsc::Sender<Message>,
    live: broadcast::Sender<Arc<LogLine>>,
}

impl RecordSink {
    /// Starts the writer thread; it ends when every sink is dropped, after writing
    /// what it holds.
    pub fn start(store: Arc<dyn RecordStore>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (live, _) = broadcast::channel(FOLLOW_BUFFER);
        let spawned = std::thread::Builder::new()
            .name("cirrus-records".into())
            .spawn(move || writer(store, rx));
        if let Err(e) = spawned {
            tracing::error!("cannot start the record writer: {e}");
        }
        Self { tx, live }
    }

    /// Hands a record and its log lines to the writer; waits only if the queue is full.
    /// The record is boxed before the future is made, so the future (part of every
    /// invocation's state) holds a pointer, not the record.
    pub fn record(
        &self,
        record: InvocationRecord,
        logs: Vec<LogLine>,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        // Followers subscribe before reading history; queueing before broadcasting means
        // a line is always in one or the other for them.
        let live: Vec<Arc<LogLine>> = if self.live.receiver_count() > 0 {
            logs.iter().cloned().map(Arc::new).collect()
        } else {
            Vec::new()
        };
        let message = Message::Record(Box::new(record), logs);
        async move {
            if self.tx.send(message).await.is_err() {
                tracing::error!("record writer has stopped; an invocation record was dropped");
            }
            for line in live {
                let _ = self.live.send(line);
            }
        }
    }

    /// Resolves once everything sent before this call is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Hands log lines written elsewhere (another cluster node's) to live followers.
    pub fn publish_live(&self, lines: Vec<LogLine>) {
        if self.live.receiver_count() > 0 {
            for line in lines {
                let _ = self.live.send(Arc::new(line));
            }
        }
    }

    pub fn follow(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.live.subscribe()
    }
}

fn writer(store: Arc<dyn RecordStore>, mut rx: mpsc::Receiver<Message>) {
    let mut records = Vec::new();
    let mut logs = Vec::new();
    let mut flushes = Vec::new();
    let mut lingered = false;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record, mut lines) => {
                    records.push(*record);
                    logs.append(&mut lines);
                }
                Message::Flush(done) => flushes.push(done),
            }
            if records.len() < MAX_BATCH {
                next = rx.try_recv().ok();
                // Under load the queue empties as fast as the writer reads it, and every
                // transaction costs WAL writes and checkpoints (a quarter of the server's
                // CPU at 16k invocations/s): let a batch gather for a moment unless
                // someone is waiting for it.
                if next.is_none() && flushes.is_empty() && !lingered {
                    lingered = true;
                    std::thread::sleep(LINGER);
                    next = rx.try_recv().ok();
                }
            }
        }
        lingered = false;
        if !records.is_empty() || !logs.is_empty() {
            if let Err(e) = store.write_batch(&records, &logs) {
                tracing::error!(
                    records = records.len(),
                    "writing invocation records failed: {e:#}"
                );
            }
            records.clear();
            logs.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}
