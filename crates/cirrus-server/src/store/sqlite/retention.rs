//! Pruning in the embedded store: small batches, each one short `IMMEDIATE` transaction,
//! so writers on the request path (the record writer, the queue) wait for at most one
//! batch.

use super::{lock, SqliteStore};
use crate::store::{PrunedRecords, RecordRule, RetentionStore, StoreResult};
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};

/// Tables and indexes retention needs, created on open after the main schema.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS usage_hourly (
    hour TEXT NOT NULL, function TEXT NOT NULL, version INTEGER NOT NULL,
    requests INTEGER NOT NULL, errors INTEGER NOT NULL, cold_starts INTEGER NOT NULL,
    billed_ms INTEGER NOT NULL, mib_ms INTEGER NOT NULL, cpu_us INTEGER NOT NULL,
    PRIMARY KEY (hour, function, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_dead_by_age ON events (failed_ms) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS uploads_by_age ON uploads (created_ms);
"#;

/// Below this many free pages (1 MiB of 4 KiB pages) nothing is given back: the next
/// records reuse them.
const MIN_FREE_PAGES_TO_RELEASE: u64 = 256;

/// Which records one batch removes, as a `WHERE` clause over `invocations` and its one
/// parameter.
enum Batch {
    UpToSeq(i64),
    StartedAtOrBefore(String),
    StartedBefore(String),
}

impl Batch {
    fn clause(&self) -> &'static str {
        match self {
            Batch::UpToSeq(_) => "seq <= ?1",
            Batch::StartedAtOrBefore(_) => "started_at <= ?1",
            Batch::StartedBefore(_) => "started_at < ?1",
        }
    }

    fn param(&self) -> &dyn rusqlite::ToSql {
        match self {
            Batch::UpToSeq(seq) => seq,
            Batch::StartedAtOrBefore(t) | Batch::StartedBefore(t) => t,
        }
    }
}

/// The oldest `limit` records beyond the newest `keep`, if there are any.
fn over_cap(tx: &Transaction<'_>, keep: u64, limit: usize) -> rusqlite::Result<Option<Batch>> {
    let newest: Option<i64> = tx.query_row("SELECT max(seq) FROM invocations", [], |r| r.get(0))?;
    let Some(cap) = newest.map(|n| n.saturating_sub(keep as i64)) else {
        return Ok(None);
    };
    // Sequence numbers only grow, so everything at or below `cap` is beyond the newest
    // `keep` (gaps left by earlier pruning make it keep fewer, never more).
    let any = tx
        .prepare_cached("SELECT 1 FROM invocations WHERE seq <= ?1 LIMIT 1")?
        .exists([cap])?;
    if !any {
        return Ok(None);
    }
    let bound: Option<i64> = tx
        .prepare_cached(
            "SELECT seq FROM invocations WHERE seq <= ?1 ORDER BY seq LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![cap, limit.saturating_sub(1) as i64], |r| r.get(0))
        .optional()?;
    Ok(Some(Batch::UpToSeq(bound.unwrap_or(cap))))
}

/// The oldest `limit` records started before `cutoff`, if there are any.
fn too_old(tx: &Transaction<'_>, cutoff: &str, limit: usize) -> rusqlite::Result<Option<Batch>> {
    let any = tx
        .prepare_cached("SELECT 1 FROM invocations WHERE started_at < ?1 LIMIT 1")?
        .exists([cutoff])?;
    if !any {
        return Ok(None);
    }
    let bound: Option<String> = tx
        .prepare_cached(
            "SELECT started_at FROM invocations WHERE started_at < ?1
             ORDER BY started_at LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![cutoff, limit.saturating_sub(1) as i64], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(Some(match bound {
        Some(t) => Batch::StartedAtOrBefore(t),
        None => Batch::StartedBefore(cutoff.to_owned()),
    }))
}

/// Rolls up, then deletes, the records of one batch and the logs of requests left with
/// no record.
fn remove_records(tx: &Transaction<'_>, batch: &Batch) -> rusqlite::Result<PrunedRecords> {
    let clause = batch.clause();
    let requests: Vec<String> = {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT DISTINCT request_id FROM invocations WHERE {clause}"
        ))?;
        let rows = stmt.query_map([batch.param()], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    // The sums are the ones `hourly_usage` computes from records, per version too, so
    // billing reads the same totals once the records are gone.
    tx.prepare_cached(&format!(
        "INSERT INTO usage_hourly (hour, function, version, requests, errors, cold_starts,
             billed_ms, mib_ms, cpu_us)
         SELECT substr(started_at, 1, 13), function, version, count(*), sum(outcome = 'error'),
             sum(cold_start), sum(billed_ms), sum(billed_ms * memory_mb), sum(cpu_us)
         FROM invocations WHERE {clause} GROUP BY 1, 2, 3
         ON CONFLICT (hour, function, version) DO UPDATE SET
             requests = requests + excluded.requests, errors = errors + excluded.errors,
             cold_starts = cold_starts + excluded.cold_starts,
             billed_ms = billed_ms + excluded.billed_ms, mib_ms = mib_ms + excluded.mib_ms,
             cpu_us = cpu_us + excluded.cpu_us"
    ))?
    .execute([batch.param()])?;
    let records = tx
        .prepare_cached(&format!("DELETE FROM invocations WHERE {clause}"))?
        .execute([batch.param()])?;
    // Attempts of one asynchronous event share a request id: its logs go with the last
    // of its records.
    let mut log_lines = 0;
    let mut drop_logs = tx.prepare_cached(
        "DELETE FROM logs WHERE request_id = ?1
         AND NOT EXISTS (SELECT 1 FROM invocations WHERE request_id = ?1)",
    )?;
    for request in &requests {
        log_lines += drop_logs.execute([request])?;
    }
    Ok(PrunedRecords {
        records: records as u64,
        log_lines: log_lines as u64,
    })
}

impl RetentionStore for SqliteStore {
    fn prune_records(&self, rule: &RecordRule, limit: usize) -> StoreResult<PrunedRecords> {
        // The record writer's connection: a batch and a write of new records take turns
        // on its mutex instead of polling SQLite's lock.
        let mut conn = lock(&self.records);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut batch = match rule.keep {
            Some(keep) => over_cap(&tx, keep, limit)?,
            None => None,
        };
        if batch.is_none() {
            if let Some(cutoff) = &rule.started_before {
                batch = too_old(&tx, cutoff, limit)?;
            }
        }
        let Some(batch) = batch else {
            return Ok(PrunedRecords::default());
        };
        let pruned = remove_records(&tx, &batch)?;
        tx.commit()?;
        Ok(pruned)
    }

    fn prune_log_lines(&self, keep: u64, limit: usize) -> StoreResult<u64> {
        let mut conn = lock(&self.records);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let newest: Option<i64> = tx.query_row("SELECT max(seq) FROM logs", [], |r| r.get(0))?;
        let Some(cap) = newest.map(|n| n.saturating_sub(keep as i64)) else {
            return Ok(0);
        };
        let bound: Option<i64> = tx
            .prepare_cached("SELECT seq FROM logs WHERE seq <= ?1 ORDER BY seq LIMIT 1 OFFSET ?2")?
            .query_row(params![cap, limit.saturating_sub(1) as i64], |r| r.get(0))
            .optional()?;
        let removed = tx
            .prepare_cached("DELETE FROM logs WHERE seq <= ?1")?
            .execute([bound.unwrap_or(cap)])?;
        tx.commit()?;
        Ok(removed as u64)
    }

    fn prune_dead_letters(&self, failed_before_ms: u64, limit: usize) -> StoreResult<u64> {
        let removed = lock(&self.queue)
            .prepare_cached(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events
                 WHERE state = 'dead' AND failed_ms < ?1 ORDER BY failed_ms LIMIT ?2)",
            )?
            .execute(params![failed_before_ms as i64, limit as i64])?;
        Ok(removed as u64)
    }

    fn prune_audit(&self, before_ms: u64, limit: usize) -> StoreResult<u64> {
        let removed = lock(&self.meta)
            .prepare_cached(
                "DELETE FROM audit WHERE seq IN (SELECT seq FROM audit
                 WHERE time_ms < ?1 ORDER BY seq LIMIT ?2)",
            )?
            .execute(params![before_ms as i64, limit as i64])?;
        Ok(removed as u64)
    }

    fn expire_uploads(
        &self,
        created_before_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<(String, Vec<String>)>> {
        // The queue's connection, like every other upload change, so an expiry and an
        // UploadPart, Complete or Abort of the same upload are ordered: whichever commits
        // second finds the upload gone.
        let mut conn = lock(&self.queue);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM uploads WHERE created_ms < ?1 ORDER BY created_ms LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![created_before_ms as i64, limit as i64], |r| {
                r.get(0)
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut expired = Vec::with_capacity(ids.len());
        for id in ids {
            let blobs: Vec<String> = {
                let mut stmt =
                    tx.prepare_cached("SELECT blob FROM upload_parts WHERE upload_id = ?1")?;
                let rows = stmt.query_map([&id], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            tx.prepare_cached("DELETE FROM upload_parts WHERE upload_id = ?1")?
                .execute([&id])?;
            tx.prepare_cached("DELETE FROM uploads WHERE id = ?1")?
                .execute([&id])?;
            expired.push((id, blobs));
        }
        tx.commit()?;
        Ok(expired)
    }

    fn release_free_pages(&self, max_pages: u64) -> StoreResult<u64> {
        let conn = lock(&self.records);
        let pragma = |name: &str| -> rusqlite::Result<u64> {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        };
        // Databases created before retention existed have no free-page map (auto_vacuum
        // NONE): SQLite still reuses their free pages, it cannot hand them back.
        if pragma("auto_vacuum")? != 2 {
            return Ok(0);
        }
        let (free, pages) = (pragma("freelist_count")?, pragma("page_count")?);
        // An eighth of the file stays free for the next records to reuse.
        let spare = free.saturating_sub(pages / 8);
        if free < MIN_FREE_PAGES_TO_RELEASE || spare == 0 {
            return Ok(0);
        }
        // The pragma frees one page per step: run it to its end.
        let mut vacuum = conn.prepare(&format!(
            "PRAGMA incremental_vacuum({})",
            spare.min(max_pages)
        ))?;
        let mut steps = vacuum.query([])?;
        while steps.next()?.is_some() {}
        drop(steps);
        drop(vacuum);
        // The file shrinks when the WAL is checkpointed; an idle server might not write
        // enough to reach the next automatic one. PASSIVE never waits for readers.
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(free.saturating_sub(pragma("freelist_count")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RecordStore;
    use cirrus_api::LogLine;

    #[test]
    fn pruned_pages_go_back_to_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cirrus.db")).unwrap();
        for chunk in (0..20_000).collect::<Vec<_>>().chunks(1000) {
            let records: Vec<_> = chunk
                .iter()
                .map(|&i| crate::testing::invocation_record(i))
                .collect();
            let logs: Vec<LogLine> = Vec::new();
            store.write_batch(&records, &logs).unwrap();
        }
        let pages = |name: &str| -> u64 {
            lock(&store.records)
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .unwrap()
        };
        let before = pages("page_count");
        let rule = RecordRule {
            started_before: None,
            keep: Some(1),
        };
        while store.prune_records(&rule, 500).unwrap().records > 0 {}
        assert_eq!(
            pages("page_count"),
            before,
            "freed pages stay in the file at first"
        );
        let free = pages("freelist_count");
        assert!(free > before / 2);
        let mut released = 0;
        loop {
            let n = store.release_free_pages(100).unwrap();
            assert!(n <= 100);
            if n == 0 {
                break;
            }
            released += n;
        }
        let (after, free_after) = (pages("page_count"), pages("freelist_count"));
        assert!(after <= before - released, "pointer-map pages go too");
        assert!(after < before / 2, "{before} → {after} pages");
        assert!(free_after <= (after / 8).max(MIN_FREE_PAGES_TO_RELEASE));
    }
}
