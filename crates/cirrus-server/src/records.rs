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
/// How long the writer lets a batch gather before committing it (see `writer`); a
/// flush cuts it short. Measured with `scripts/bench-ab` (BENCHMARKS.md, "Records
/// committed in larger batches"): 40 ms took 5 % off the server's CPU per request
/// against 10 ms.
const LINGER: std::time::Duration = std::time::Duration::from_millis(40);
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
    /// The writer thread, woken by a flush from its linger.
    writer: Option<std::thread::Thread>,
}

impl RecordSink {
    /// Starts the writer thread; it ends when every sink is dropped, after writing
    /// what it holds.
    pub fn start(store: Arc<dyn RecordStore>) -> Self {
        Self::start_lingering(store, LINGER)
    }

    fn start_lingering(store: Arc<dyn RecordStore>, linger: std::time::Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (live, _) = broadcast::channel(FOLLOW_BUFFER);
        let spawned = std::thread::Builder::new()
            .name("cirrus-records".into())
            .spawn(move || writer(store, rx, linger));
        let writer = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(e) => {
                tracing::error!("cannot start the record writer: {e}");
                None
            }
        };
        Self { tx, live, writer }
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
            // The flush is queued before the writer is woken, so a writer lingering now
            // finds it; one woken early for nothing just commits a smaller batch.
            if let Some(writer) = &self.writer {
                writer.unpark();
            }
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

fn writer(
    store: Arc<dyn RecordStore>,
    mut rx: mpsc::Receiver<Message>,
    linger: std::time::Duration,
) {
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
                // someone is waiting for it. Parked, not asleep, so a flush sent
                // meanwhile (an event delivery waits for one) ends the wait.
                if next.is_none() && flushes.is_empty() && !lingered {
                    lingered = true;
                    std::thread::park_timeout(linger);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use std::time::Duration;

    #[tokio::test]
    async fn a_flush_ends_the_writers_linger() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("cirrus.db")).unwrap());
        // A linger no test would wait out: the writer parks for it after the record.
        let sink = RecordSink::start_lingering(store.clone(), Duration::from_secs(600));
        sink.record(crate::testing::invocation_record(1), Vec::new())
            .await;
        // Time for the writer to take the record and start lingering (a record and a
        // flush found queued together are committed at once, with no linger to end).
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::time::timeout(Duration::from_secs(30), sink.flush())
            .await
            .expect("the flush waited out the writer's linger");
        let page = store.invocations("f", None, 10).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].request_id, "r1");
    }
}
