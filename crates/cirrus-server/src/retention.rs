//! Retention: invocation records and their logs, dead letters and abandoned multipart
//! uploads are removed in the background once they pass their age or count limits.
//!
//! A pass runs every [`RetentionSettings::interval`] and works in small batches (one
//! short transaction each, then a pause), so request-path writers never wait behind it
//! for long. Records are rolled up into hourly usage in the same transaction that
//! deletes them, so usage reports and costs survive pruning. Ages are measured on the
//! injectable clock.

use crate::clock::{rfc3339, Clock};
use crate::s3::blobs::Blobs;
use crate::store::{RecordRule, RetentionStore, StoreResult};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// What is kept, and for how long. `None` keeps that kind forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Invocation records (and their log lines) older than this are removed.
    pub records_max_age: Option<Duration>,
    /// At most this many invocation records are kept: the newest.
    pub max_records: Option<u64>,
    /// At most this many log lines are kept: the newest.
    pub max_log_lines: Option<u64>,
    /// Dead-letter events are removed this long after they failed.
    pub dead_letter_max_age: Option<Duration>,
    /// Multipart uploads neither completed nor aborted this long after they started
    /// are aborted, and their parts' bytes deleted.
    pub incomplete_upload_max_age: Option<Duration>,
    /// Audit log entries older than this are removed.
    pub audit_max_age: Option<Duration>,
    /// How often a pass runs.
    pub interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            // Measured: a record takes about 350 bytes with its indexes, a log line about
            // 180 bytes plus its text, so the caps bound both near 350 and 500 MB.
            records_max_age: Some(30 * DAY),
            max_records: Some(1_000_000),
            max_log_lines: Some(2_000_000),
            // SQS's longest message retention.
            dead_letter_max_age: Some(14 * DAY),
            // What S3's AbortIncompleteMultipartUpload lifecycle rule is usually set to.
            incomplete_upload_max_age: Some(7 * DAY),
            // A year: what audits usually ask to see.
            audit_max_age: Some(366 * DAY),
            interval: Duration::from_secs(60),
        }
    }
}

/// Records (or log lines, or dead letters) per batch: a few milliseconds of work.
const ROW_BATCH: usize = 500;
/// Uploads per batch: each may have up to 10,000 parts.
const UPLOAD_BATCH: usize = 8;
/// Free pages given back per step (4 MiB of 4 KiB pages).
const PAGE_BATCH: u64 = 1024;
/// Between batches the pruner steps aside at least this long, and at least
/// `YIELD_FACTOR` times as long as the batch took: it holds the database's write lock
/// (and a core) at most a third of the time, so a storm of invocations and their records
/// keeps the rest, while pruning still outpaces what even a saturated server records.
const PAUSE: Duration = Duration::from_millis(10);
const YIELD_FACTOR: u32 = 2;

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub records: u64,
    pub log_lines: u64,
    pub dead_letters: u64,
    pub uploads: u64,
    pub audit_entries: u64,
    pub free_pages_released: u64,
}

impl Pruned {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

pub struct Pruner {
    store: Arc<dyn RetentionStore>,
    blobs: Arc<Blobs>,
    clock: Arc<dyn Clock>,
    settings: RetentionSettings,
}

impl Pruner {
    pub fn new(
        store: Arc<dyn RetentionStore>,
        blobs: Arc<Blobs>,
        clock: Arc<dyn Clock>,
        settings: RetentionSettings,
    ) -> Self {
        Self {
            store,
            blobs,
            clock,
            settings,
        }
    }

    /// Runs a pass at once and then every interval, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let s = &self.settings;
        let age = |a: Option<Duration>| {
            a.map_or("forever".into(), |a| {
                humantime::format_duration(a).to_string()
            })
        };
        let count = |c: Option<u64>| c.map_or("no limit".into(), |c| c.to_string());
        tracing::info!(
            records = %age(s.records_max_age),
            max_records = %count(s.max_records),
            max_log_lines = %count(s.max_log_lines),
            dead_letters = %age(s.dead_letter_max_age),
            incomplete_uploads = %age(s.incomplete_upload_max_age),
            audit = %age(s.audit_max_age),
            "retention"
        );
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let pruned = self.prune(&shutdown).await;
                    if !pruned.is_empty() {
                        tracing::info!(
                            records = pruned.records,
                            log_lines = pruned.log_lines,
                            dead_letters = pruned.dead_letters,
                            uploads = pruned.uploads,
                            audit_entries = pruned.audit_entries,
                            free_pages_released = pruned.free_pages_released,
                            "retention: pruned"
                        );
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One pass: everything due now, batch by batch; stops early at shutdown. A kind that
    /// fails is logged and tried again next pass; the others go on.
    pub async fn prune(&self, shutdown: &watch::Receiver<bool>) -> Pruned {
        let now = self.clock.now_ms();
        let before = |age: Duration| now.saturating_sub(age.as_millis() as u64);
        let s = &self.settings;
        let mut pruned = Pruned::default();

        // Dead letters and uploads first: they are few, and a flood of new records or
        // log lines that keeps the caps busy must not hold them up.
        if let Some(age) = s.dead_letter_max_age {
            let cutoff = before(age);
            pruned.dead_letters = self
                .until_done(shutdown, move |store| {
                    store.prune_dead_letters(cutoff, ROW_BATCH)
                })
                .await
                .unwrap_or_else(failed("dead letters"));
        }
        if let Some(age) = s.audit_max_age {
            let cutoff = before(age);
            pruned.audit_entries = self
                .until_done(shutdown, move |store| store.prune_audit(cutoff, ROW_BATCH))
                .await
                .unwrap_or_else(failed("audit entries"));
        }
        if let Some(age) = s.incomplete_upload_max_age {
            let cutoff = before(age);
            let blobs = self.blobs.clone();
            pruned.uploads = self
                .until_done(shutdown, move |store| {
                    let expired = store.expire_uploads(cutoff, UPLOAD_BATCH)?;
                    // After the commit, as an abort does: a Complete racing with this
                    // either committed first or now finds the upload gone.
                    for (id, parts) in &expired {
                        tracing::info!(
                            upload = %id,
                            parts = parts.len(),
                            "retention: expired an incomplete multipart upload"
                        );
                        for blob in parts {
                            blobs.remove(blob);
                        }
                    }
                    Ok(expired.len() as u64)
                })
                .await
                .unwrap_or_else(failed("incomplete uploads"));
        }
        let rule = RecordRule {
            started_before: s.records_max_age.map(|age| rfc3339(before(age))),
            keep: s.max_records,
        };
        if rule.started_before.is_some() || rule.keep.is_some() {
            let records = self
                .until_done(shutdown, move |store| store.prune_records(&rule, ROW_BATCH))
                .await
                .unwrap_or_else(failed("records"));
            pruned.records = records.records;
            pruned.log_lines = records.log_lines;
        }
        if let Some(keep) = s.max_log_lines {
            pruned.log_lines += self
                .until_done(shutdown, move |store| {
                    store.prune_log_lines(keep, ROW_BATCH)
                })
                .await
                .unwrap_or_else(failed("log lines"));
        }
        // Every pass, not only one that pruned: a pass cut short (an error, a shutdown)
        // leaves its free pages to the next.
        pruned.free_pages_released = self
            .until_done(shutdown, |store| store.release_free_pages(PAGE_BATCH))
            .await
            .unwrap_or_else(failed("free pages"));
        pruned
    }

    /// Runs `step` on the blocking pool until it removes nothing, pausing between steps;
    /// the sum of what the steps removed.
    async fn until_done<T>(
        &self,
        shutdown: &watch::Receiver<bool>,
        step: impl Fn(&dyn RetentionStore) -> StoreResult<T> + Send + Sync + 'static,
    ) -> anyhow::Result<T>
    where
        T: Copy + Default + PartialEq + std::ops::AddAssign + Send + 'static,
    {
        let step = Arc::new(step);
        let mut total = T::default();
        loop {
            let (store, step) = (self.store.clone(), step.clone());
            let started = std::time::Instant::now();
            let done = tokio::task::spawn_blocking(move || step(&*store)).await??;
            total += done;
            if done == T::default() || *shutdown.borrow() {
                return Ok(total);
            }
            tokio::time::sleep((started.elapsed() * YIELD_FACTOR).max(PAUSE)).await;
        }
    }
}

/// Logs a kind's failure; what its earlier batches removed is not counted.
fn failed<T: Default>(kind: &'static str) -> impl FnOnce(anyhow::Error) -> T {
    move |e| {
        tracing::warn!("retention: pruning {kind} failed, will try again: {e:#}");
        T::default()
    }
}
