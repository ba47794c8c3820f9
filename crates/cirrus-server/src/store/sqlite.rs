use super::{
    Enqueued, EventQueue, HourlyUsage, KvCondition, KvStore, KvWrite, NewEvent, QueuedEvent,
    RecordStore, StoreResult,
};
use anyhow::Context as _;
use cirrus_api::{DeadEvent, InvocationRecord, KvEntry, LogLine, Outcome, Page, Trigger};
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

mod access;
mod functions;
mod objects;
mod retention;

/// The stored form of [`FunctionConfig`]; bump when its meaning changes so old rows can
/// be migrated instead of misread.
const SPEC_VERSION: i64 = 1;
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL, kind TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, spec_version INTEGER NOT NULL, config TEXT NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (function, version));
CREATE TABLE IF NOT EXISTS triggers (
    id TEXT PRIMARY KEY, function TEXT NOT NULL, spec TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS schedule_marks (trigger_id TEXT PRIMARY KEY, fired_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (function TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (function, alias));
CREATE TABLE IF NOT EXISTS invocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, function TEXT NOT NULL,
    version INTEGER NOT NULL, trigger TEXT NOT NULL, started_at TEXT NOT NULL,
    duration_ms REAL NOT NULL, billed_ms INTEGER NOT NULL, init_ms REAL, memory_mb INTEGER NOT NULL,
    peak_memory_bytes INTEGER NOT NULL, cold_start INTEGER NOT NULL, outcome TEXT NOT NULL,
    status INTEGER NOT NULL, error_code TEXT, error_message TEXT);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (function, seq);
CREATE INDEX IF NOT EXISTS invocations_by_start ON invocations (started_at);
CREATE INDEX IF NOT EXISTS invocations_by_request ON invocations (request_id);
CREATE TABLE IF NOT EXISTS record_replication (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, function TEXT NOT NULL, version INTEGER NOT NULL,
    request_id TEXT NOT NULL, time TEXT NOT NULL, stream TEXT NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs (function, seq);
CREATE INDEX IF NOT EXISTS logs_by_request ON logs (request_id, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, function TEXT NOT NULL,
        qualifier TEXT NOT NULL, content_type TEXT, traceparent TEXT, event_type TEXT, source TEXT,
        data BLOB NOT NULL, lease_until_ms INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,not_before_ms INTEGER NOT NULL, state TEXT NOT NULL, last_error TEXT, failed_ms INTEGER);
CREATE INDEX IF NOT EXISTS events_ready ON events (state, not_before_ms, seq);
CREATE INDEX IF NOT EXISTS events_by_function ON events (function, state);
CREATE TABLE IF NOT EXISTS kv (
    tbl TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, content_type TEXT,
    value BLOB NOT NULL, updated_ms INTEGER NOT NULL, PRIMARY KEY (tbl, key));
CREATE TABLE IF NOT EXISTS lineages (
    root TEXT PRIMARY KEY, events INTEGER NOT NULL, last_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS lineages_by_age ON lineages (last_ms);
CREATE TABLE IF NOT EXISTS idempotency (
    function TEXT NOT NULL, key TEXT NOT NULL, request_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
        PRIMARY KEY (function, key));
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_ms);
CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    content_type TEXT, metadata TEXT NOT NULL, checksum TEXT, modified_ms INTEGER NOT NULL,
    blob TEXT NOT NULL, PRIMARY KEY (bucket, key));
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, content_type TEXT,
    metadata TEXT NOT NULL, checksum_algorithm TEXT, created_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS uploads_by_bucket ON uploads (bucket, key, created_ms);
CREATE TABLE IF NOT EXISTS upload_parts (
    upload_id TEXT NOT NULL, number INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    checksum TEXT, modified_ms INTEGER NOT NULL, blob TEXT NOT NULL, PRIMARY KEY (upload_id, number));
CREATE TABLE IF NOT EXISTS completed_uploads (
    id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, parts TEXT NOT NULL,
    etag TEXT NOT NULL, checksum TEXT, completed_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS completed_uploads_by_age ON completed_uploads (completed_ms);
"#;

/// The embedded store: one SQLite database in WAL mode. Metadata and records use separate
/// connections so the batch writer never waits behind a management read.
/// Tells a delivered event's waiter that it left the queue (or why not).
type Completion = tokio::sync::oneshot::Sender<Result<(), String>>;

pub struct SqliteStore {
    /// Shared with the blocking tasks the async metadata calls run on.
    meta: Arc<Mutex<Connection>>,
    /// Metadata changes, sent in commit order with their revisions (see `functions.rs`).
    feed: tokio::sync::broadcast::Sender<super::Revised>,
    revision: Arc<AtomicU64>,
    /// The record writer's connection.
    records: Mutex<Connection>,
    /// API reads of records, logs and usage: a long scan never holds up the writer.
    reads: Mutex<Connection>,
    queue: Mutex<Connection>,
    /// Delivered events waiting to leave the queue, with who waits for it: whichever
    /// call takes the queue's lock first removes them all in one transaction.
    completions: Mutex<Vec<(String, Completion)>>,
    /// Events one lineage may create (see [`EventQueue::enqueue`]).
    lineage_budget: AtomicU64,
}

fn open(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    // Incremental auto-vacuum takes effect only on a new database, and only before WAL
    // mode is set: pruning can then give free pages back to the file system
    // (`RetentionStore::release_free_pages`). Older databases reuse theirs.
    // WAL: readers never block the writer. NORMAL sync is durable across process crashes
    // (the WAL is fsynced at checkpoints); busy_timeout covers the two connections meeting.
    conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;")?;
    // Plans that do not depend on bound values. Otherwise a statement whose plan looked
    // at one (SQLite's planner reads a bound `LIMIT ?`) is compiled again on every run:
    // every claim of the queue was, 6 % of the CPU while a backlog drained.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

const RECORD_COLUMNS: &str = "seq, request_id, function, version, trigger, started_at, duration_ms, billed_ms,
    init_ms, memory_mb, peak_memory_bytes, cold_start, outcome, status, error_code, error_message, cpu_us,
    request_bytes, response_bytes, trace_id, parent_span_id, span_id, attempt, parent_request_id";

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, InvocationRecord)> {
    let trigger: String = row.get(4)?;
    let outcome: String = row.get(12)?;
    Ok((
        row.get(0)?,
        InvocationRecord {
            request_id: row.get(1)?,
            function: row.get(2)?,
            version: row.get(3)?,
            trigger: trigger.parse().unwrap_or(Trigger::Invoke),
            attempt: row.get(22)?,
            parent_request_id: row.get(23)?,
            started_at: row.get(5)?,
            duration_ms: row.get(6)?,
            billed_ms: row.get(7)?,
            init_ms: row.get(8)?,
            memory_mb: row.get(9)?,
            peak_memory_bytes: row.get(10)?,
            cold_start: row.get(11)?,
            outcome: if outcome == "success" {
                Outcome::Success
            } else {
                Outcome::Error
            },
            status: row.get(13)?,
            error_code: row.get(14)?,
            error_message: row.get(15)?,
            cpu_ms: row.get::<_, i64>(16)? as f64 / 1000.0,
            request_bytes: row.get(17)?,
            response_bytes: row.get(18)?,
            trace_id: row.get(19)?,
            parent_span_id: row.get(20)?,
            span_id: row.get(21)?,
        },
    ))
}

/// Columns added after the first schema, with their definitions; added to older
/// databases on open.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("invocations", "cpu_us", "INTEGER NOT NULL DEFAULT 0"),
    ("invocations", "request_bytes", "INTEGER NOT NULL DEFAULT 0"),
    (
        "invocations",
        "response_bytes",
        "INTEGER NOT NULL DEFAULT 0",
    ),
    ("invocations", "trace_id", "TEXT NOT NULL DEFAULT ''"),
    ("invocations", "parent_span_id", "TEXT"),
    ("invocations", "span_id", "TEXT NOT NULL DEFAULT ''"),
    ("invocations", "attempt", "INTEGER NOT NULL DEFAULT 1"),
    ("events", "lease_until_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("events", "parent_id", "TEXT"),
    ("events", "trigger", "TEXT NOT NULL DEFAULT 'async'"),
    ("events", "ordering_key", "TEXT"),
    ("events", "hops", "INTEGER NOT NULL DEFAULT 0"),
    ("invocations", "parent_request_id", "TEXT"),
    ("objects", "parts", "TEXT"),
    ("uploads", "checksum_type", "TEXT"),
    ("events", "root_id", "TEXT"),
    ("events", "subject", "TEXT"),
    ("events", "webhook", "TEXT"),
];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in ADDED_COLUMNS {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let exists = stmt
            .query_map([], |row| row.get::<_, String>(1))?
            .any(|name| name.as_deref() == Ok(column));
        if !exists {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `write` with its commit fsynced (`synchronous=FULL`), for what the queue
/// acknowledges: an accepted event, an operator's redrive or purge must survive power
/// loss too. A delivery's own updates (claim, outcome) are not fsynced: one lost to a
/// power cut means the event is delivered again (at least once), and the WAL is
/// written in order, so the next fsync makes them durable too. An fsync per delivery
/// held deliveries to about 2,300 a second.
fn durable<T>(
    conn: &mut Connection,
    write: impl FnOnce(&mut Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    conn.execute_batch("PRAGMA synchronous=FULL")?;
    let result = write(conn);
    let relaxed = conn.execute_batch("PRAGMA synchronous=NORMAL");
    let value = result?;
    relaxed?;
    Ok(value)
}

/// Runs `call` on a blocking thread: SQLite calls block.
async fn off<T: Send + 'static>(
    store: &Arc<SqliteStore>,
    call: impl FnOnce(&SqliteStore) -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(&store)).await?
}

impl SqliteStore {
    pub fn open(path: &Path) -> StoreResult<Self> {
        let meta = open(path)?;
        meta.execute_batch(SCHEMA).context("creating the schema")?;
        migrate(&meta).context("migrating the schema")?;
        // Indexes on added columns come after the migration that adds them.
        meta.execute_batch(
            "CREATE INDEX IF NOT EXISTS invocations_by_trace ON invocations (trace_id);
             -- The claim's one-at-a-time-per-key check (every broker message has a key).
             CREATE INDEX IF NOT EXISTS events_by_ordering_key ON events (ordering_key, seq)
                 WHERE ordering_key IS NOT NULL;",
        )?;
        meta.execute_batch(retention::SCHEMA)
            .context("creating the retention schema")?;
        meta.execute_batch(access::SCHEMA)
            .context("creating the access schema")?;
        let records = open(path)?;
        let reads = open(path)?;
        // The queue connection stays at synchronous=NORMAL (a commit survives a crash of
        // the process); what is acknowledged to a caller is made `durable` (fsynced).
        let queue = open(path)?;
        Ok(Self {
            meta: Arc::new(Mutex::new(meta)),
            feed: tokio::sync::broadcast::channel(functions::FEED_CAPACITY).0,
            revision: Arc::new(AtomicU64::new(0)),
            records: Mutex::new(records),
            reads: Mutex::new(reads),
            queue: Mutex::new(queue),
            completions: Mutex::new(Vec::new()),
            lineage_budget: AtomicU64::new(crate::lineage::DEFAULT_MAX_LINEAGE_EVENTS),
        })
    }

    /// Sets how many events one lineage may create before the rest are parked dead.
    pub fn set_lineage_budget(&self, events: u64) {
        self.lineage_budget.store(events, Ordering::Relaxed);
    }

    pub(crate) fn lineage_budget(&self) -> u64 {
        self.lineage_budget.load(Ordering::Relaxed)
    }
}

/// Inserts a batch of records and log lines inside `tx`.
fn insert_batch(
    tx: &rusqlite::Transaction<'_>,
    records: &[InvocationRecord],
    logs: &[LogLine],
) -> StoreResult<()> {
    {
        let mut insert = tx.prepare_cached(
                "INSERT INTO invocations (request_id, function, version, trigger, started_at, duration_ms,
                 billed_ms, init_ms, memory_mb, peak_memory_bytes, cold_start, outcome, status, error_code,
                                  error_message, cpu_us, request_bytes, response_bytes, trace_id, parent_span_id, span_id, attempt,
                 parent_request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",)?;
        for r in records {
            insert.execute(params![
                r.request_id,
                r.function,
                r.version,
                r.trigger.as_str(),
                r.started_at,
                r.duration_ms,
                r.billed_ms,
                r.init_ms,
                r.memory_mb,
                r.peak_memory_bytes,
                r.cold_start,
                match r.outcome {
                    Outcome::Success => "success",
                    Outcome::Error => "error",
                },
                r.status,
                r.error_code,
                r.error_message,
                (r.cpu_ms * 1000.0).round() as i64,
                r.request_bytes,
                r.response_bytes,
                r.trace_id,
                r.parent_span_id,
                r.span_id,
                r.attempt,
                r.parent_request_id
            ])?;
        }
        let mut insert = tx.prepare_cached(
                "INSERT INTO logs (function, version, request_id, time, stream, line) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
        for l in logs {
            insert.execute(params![
                l.function,
                l.version,
                l.request_id,
                l.time,
                l.stream.as_str(),
                l.line
            ])?;
        }
    }
    Ok(())
}

impl RecordStore for SqliteStore {
    fn write_batch(&self, records: &[InvocationRecord], logs: &[LogLine]) -> StoreResult<()> {
        let mut conn = lock(&self.records);
        // IMMEDIATE: take the write lock up front, so a concurrent commit on another
        // connection makes us wait (busy_timeout) instead of failing a read-to-write upgrade.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        insert_batch(&tx, records, logs)?;
        tx.commit()?;
        Ok(())
    }

    fn replication_mark(&self) -> StoreResult<u64> {
        let conn = lock(&self.reads);
        let mark: Option<u64> = conn
            .query_row("SELECT seq FROM record_replication WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(mark.unwrap_or(0))
    }

    fn write_replicated(
        &self,
        seq: u64,
        records: &[InvocationRecord],
        logs: &[LogLine],
    ) -> StoreResult<bool> {
        let mut conn = lock(&self.records);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mark: Option<u64> = tx
            .query_row("SELECT seq FROM record_replication WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        if mark.is_some_and(|mark| seq <= mark) {
            return Ok(false);
        }
        insert_batch(&tx, records, logs)?;
        tx.execute(
            "INSERT INTO record_replication (id, seq) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
            [seq],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn invocations(
        &self,
        function: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<InvocationRecord>> {
        let before: i64 = match before {
            Some(cursor) => cursor.parse().context("invalid `before` cursor")?,
            None => i64::MAX,
        };
        let conn = lock(&self.reads);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM invocations WHERE function = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
        ))?;
        let mut last_seq = None;
        let rows = stmt.query_map(params![function, before, limit as i64], record_from_row)?;
        let mut items = Vec::new();
        for row in rows {
            let (seq, record) = row?;
            last_seq = Some(seq);
            items.push(record);
        }
        let next = if items.len() == limit {
            last_seq.filter(|&seq| {
                conn.query_row(
                    "SELECT 1 FROM invocations WHERE function = ?1 AND seq < ?2 LIMIT 1",
                    params![function, seq],
                    |_| Ok(()),
                )
                .optional()
                .ok()
                .flatten()
                .is_some()
            })
        } else {
            None
        };
        Ok(Page {
            items,
            next: next.map(|s| s.to_string()),
        })
    }

    fn logs(
        &self,
        function: &str,
        request_id: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<LogLine>> {
        let conn = lock(&self.reads);
        let mut stmt = conn.prepare_cached(
            "SELECT function, version, request_id, time, stream, line FROM logs
             WHERE function = ?1 AND (?2 IS NULL OR request_id = ?2) ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![function, request_id, limit as i64], |row| {
            let stream: String = row.get(4)?;
            Ok(LogLine {
                function: row.get(0)?,
                version: row.get(1)?,
                request_id: row.get(2)?,
                time: row.get(3)?,
                stream: stream.parse().unwrap_or(cirrus_api::LogStream::Platform),
                line: row.get(5)?,
            })
        })?;
        let mut lines = rows.collect::<Result<Vec<_>, _>>()?;
        lines.reverse();
        Ok(lines)
    }

    fn trace(&self, trace_id: &str) -> StoreResult<Vec<InvocationRecord>> {
        let conn = lock(&self.reads);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM invocations WHERE trace_id = ?1 ORDER BY seq LIMIT 10000"
        ))?;
        let rows = stmt.query_map([trace_id], record_from_row)?;
        Ok(rows
            .map(|r| r.map(|(_, record)| record))
            .collect::<Result<_, _>>()?)
    }

    fn trace_of(&self, request_id: &str) -> StoreResult<Option<String>> {
        Ok(lock(&self.reads)
            .query_row(
                "SELECT trace_id FROM invocations WHERE request_id = ?1 LIMIT 1",
                [request_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn hourly_usage(&self, from: &str, to: &str) -> StoreResult<Vec<HourlyUsage>> {
        // Pruned records live on as hourly sums: an hour counts when it starts in the
        // period. One statement, one snapshot: a prune committing meanwhile moves records
        // into the sums without being seen twice or not at all.
        let (first_hour, end_hour) = (hour_from(from)?, hour_from(to)?);
        let conn = lock(&self.reads);
        let mut stmt = conn.prepare_cached(
            "SELECT function, hour, sum(requests), sum(errors), sum(cold_starts), sum(billed_ms),
                 sum(mib_ms), sum(cpu_us)
             FROM (SELECT function, substr(started_at, 1, 13) AS hour, count(*) AS requests,
                       sum(outcome = 'error') AS errors, sum(cold_start) AS cold_starts,
                       sum(billed_ms) AS billed_ms, sum(billed_ms * memory_mb) AS mib_ms,
                       sum(cpu_us) AS cpu_us
                   FROM invocations WHERE started_at >= ?1 AND started_at < ?2
                   GROUP BY function, hour
                   UNION ALL
                   SELECT function, hour, requests, errors, cold_starts, billed_ms, mib_ms, cpu_us
                   FROM usage_hourly WHERE hour >= ?3 AND hour < ?4)
             GROUP BY function, hour ORDER BY hour, function",
        )?;
        let rows = stmt.query_map(params![from, to, first_hour, end_hour], |row| {
            Ok(HourlyUsage {
                function: row.get(0)?,
                hour: row.get(1)?,
                requests: row.get(2)?,
                errors: row.get(3)?,
                cold_starts: row.get(4)?,
                billed_ms: row.get(5)?,
                mib_ms: row.get(6)?,
                cpu_us: row.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The first whole hour (`YYYY-MM-DDTHH`, UTC) starting at or after an RFC 3339 time.
fn hour_from(time: &str) -> StoreResult<String> {
    const HOUR_MS: u64 = 3_600_000;
    let at = humantime::parse_rfc3339_weak(time)
        .with_context(|| format!("{time:?} is not an RFC 3339 time"))?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let hour = ms.div_ceil(HOUR_MS) * HOUR_MS;
    let text = crate::clock::rfc3339(hour);
    Ok(text.get(..13).unwrap_or(&text).to_owned())
}

/// How long a claimed event may stay running before it is presumed lost: longer than the
/// longest timeout (15 minutes) plus the time to record the outcome.
const DELIVERY_LEASE_MS: u64 = 20 * 60 * 1000;

/// Queues one event inside the caller's transaction. An event some invocation caused
/// counts against its lineage, in the same transaction (so the count is exact and
/// survives restarts); past `budget` it goes straight to the dead-letter queue, saying why.
fn insert_event(tx: &rusqlite::Transaction<'_>, e: &NewEvent, budget: u64) -> rusqlite::Result<()> {
    let mut dead = None;
    if let Some(root) = &e.root_id {
        let created: u64 = tx
            .prepare_cached(
                "INSERT INTO lineages (root, events, last_ms) VALUES (?1, 1, ?2)
                 ON CONFLICT (root) DO UPDATE SET events = events + 1, last_ms = excluded.last_ms
                 RETURNING events",
            )?
            .query_row(params![root, e.created_ms], |r| r.get(0))?;
        if created > budget {
            dead = Some(crate::lineage::budget_exhausted(root, budget));
        }
    }
    tx.prepare_cached(
        "INSERT INTO events (id, function, qualifier, content_type, traceparent, data, created_ms, not_before_ms,
         state, event_type, source, parent_id, trigger, ordering_key, hops, root_id, last_error, failed_ms, subject, webhook)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, CASE WHEN ?14 IS NULL THEN 'pending' ELSE 'dead' END,
                 ?8, ?9, ?10, ?11, ?12, ?13, ?15, ?14, CASE WHEN ?14 IS NULL THEN NULL ELSE ?7 END, ?16, ?17)",
    )?
    .execute(params![
        e.id,
        e.function,
        e.qualifier,
        e.content_type,
        e.traceparent,
        e.data,
        e.created_ms,
        e.event_type,
        e.source,
        e.parent_id,
        e.trigger.as_str(),
        e.ordering_key,
        e.hops,
        dead,
        e.root_id,
        e.subject,
        e.webhook
    ])?;
    Ok(())
}

const EVENT_COLUMNS: &str =
    "id, function, qualifier, content_type, traceparent, data, created_ms, attempts, event_type, source, parent_id, trigger, hops, root_id, subject, webhook";

fn queued_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedEvent> {
    Ok(QueuedEvent {
        event: NewEvent {
            id: row.get(0)?,
            function: row.get(1)?,
            qualifier: row.get(2)?,
            content_type: row.get(3)?,
            traceparent: row.get(4)?,
            data: row.get(5)?,
            created_ms: row.get(6)?,
            event_type: row.get(8)?,
            source: row.get(9)?,
            subject: row.get(14)?,
            webhook: row.get(15)?,
            parent_id: row.get(10)?,
            root_id: row.get(13)?,
            ordering_key: None,
            trigger: row.get::<_, String>(11)?.parse().unwrap_or(Trigger::Async),
            hops: row.get(12)?,
            idempotency_key: None,
        },
        attempts: row.get(7)?,
    })
}

fn dead_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadEvent> {
    Ok(DeadEvent {
        request_id: row.get(0)?,
        function: row.get(1)?,
        qualifier: row.get(2)?,
        content_type: row.get(3)?,
        size_bytes: row.get(4)?,
        accepted_at: crate::clock::rfc3339(row.get(5)?),
        attempts: row.get(6)?,
        last_error: row.get::<_, Option<String>>(7)?.unwrap_or_default(),
        failed_at: crate::clock::rfc3339(row.get::<_, Option<u64>>(8)?.unwrap_or(0)),
        data: None,
    })
}

const DEAD_COLUMNS: &str =
    "id, function, qualifier, content_type, length(data), created_ms, attempts, last_error, failed_ms";

/// `WHERE` clause and parameters selecting dead events by id and/or function.
fn dead_filter(id: Option<&str>, function: Option<&str>) -> (String, Vec<String>) {
    let mut clause = String::from("state = 'dead'");
    let mut params = Vec::new();
    if let Some(id) = id {
        clause.push_str(" AND id = ?");
        params.push(id.to_owned());
    }
    if let Some(function) = function {
        clause.push_str(" AND function = ?");
        params.push(function.to_owned());
    }
    (clause, params)
}

/// The event queue's calls, run on the calling thread (see the async [`EventQueue`]
/// below, which runs them on blocking threads).
impl SqliteStore {
    pub(crate) fn enqueue_blocking(
        &self,
        events: &[NewEvent],
        now_ms: u64,
        idempotency_window_ms: u64,
    ) -> StoreResult<Vec<Enqueued>> {
        durable(&mut lock(&self.queue), |conn| {
            // IMMEDIATE: take the write lock up front, so a concurrent commit on another
            // connection makes us wait (busy_timeout) instead of failing a read-to-write upgrade.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut results = Vec::with_capacity(events.len());
            {
                let mut seen = tx.prepare_cached(
                "SELECT request_id, created_ms FROM idempotency WHERE function = ?1 AND key = ?2",
            )?;
                let mut remember = tx.prepare_cached(
                "INSERT INTO idempotency (function, key, request_id, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (function, key) DO UPDATE SET request_id = excluded.request_id, created_ms = excluded.created_ms",
            )?;
                for e in events {
                    if let Some(key) = &e.idempotency_key {
                        let earlier: Option<(String, u64)> = seen
                            .query_row(params![e.function, key], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()?;
                        if let Some((id, at)) = earlier {
                            if now_ms.saturating_sub(at) < idempotency_window_ms {
                                results.push(Enqueued::Duplicate(id));
                                continue;
                            }
                        }
                        remember.execute(params![e.function, key, e.id, e.created_ms])?;
                    }
                    insert_event(&tx, e, self.lineage_budget())?;
                    results.push(Enqueued::New);
                }
                tx.execute(
                    "DELETE FROM idempotency WHERE created_ms < ?1",
                    [now_ms.saturating_sub(idempotency_window_ms) as i64],
                )?;
            }
            tx.commit()?;
            Ok(results)
        })
    }

    pub(crate) fn recover_blocking(&self) -> StoreResult<u64> {
        Ok(lock(&self.queue).execute(
            "UPDATE events SET state = 'pending' WHERE state = 'running'",
            [],
        )? as u64)
    }

    pub(crate) fn claim_blocking(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<QueuedEvent>> {
        let mut conn = lock(&self.queue);
        let lease = now_ms + DELIVERY_LEASE_MS;
        // One transaction, two updates: one query ORing their conditions made SQLite
        // sort every waiting event on each claim (25 ms with 84,000 waiting); the ready
        // events' select walks `events_ready` in order and stops at its limit (0.01 ms).
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // A running event whose lease ran out was lost by its delivery (the queue update
        // after it failed): it is claimed again, like one interrupted by a restart. They
        // are few (at most the deliveries in flight).
        let mut claimed = tx
            .prepare_cached(&format!(
                "UPDATE events SET attempts = attempts + 1, lease_until_ms = ?3
                 WHERE seq IN (SELECT seq FROM events
                               WHERE state = 'running' AND lease_until_ms <= ?1
                               ORDER BY seq LIMIT ?2)
                 RETURNING {EVENT_COLUMNS}"
            ))?
            .query_map(params![now_ms, limit as i64, lease], queued_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let room = limit.saturating_sub(claimed.len());
        if room > 0 {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE events SET state = 'running', attempts = attempts + 1, lease_until_ms = ?3
                 WHERE seq IN (SELECT seq FROM events
                               WHERE state = 'pending' AND not_before_ms <= ?1
                                 -- per ordering key, one at a time and oldest first
                                 AND (ordering_key IS NULL OR NOT EXISTS (
                                      SELECT 1 FROM events AS earlier
                                      WHERE earlier.ordering_key = events.ordering_key
                                        AND earlier.seq < events.seq AND earlier.state != 'dead'))
                               ORDER BY not_before_ms, seq LIMIT ?2)
                 RETURNING {EVENT_COLUMNS}"
            ))?;
            let rows = stmt.query_map(params![now_ms, room as i64, lease], queued_from_row)?;
            for row in rows {
                claimed.push(row?);
            }
        }
        tx.commit()?;
        Ok(claimed)
    }

    pub(crate) fn set_data_blocking(&self, id: &str, data: &[u8]) -> StoreResult<()> {
        lock(&self.queue).execute(
            "UPDATE events SET data = ?2 WHERE id = ?1",
            params![id, data],
        )?;
        Ok(())
    }

    fn waiting_completions(&self) -> MutexGuard<'_, Vec<(String, Completion)>> {
        self.completions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes every delivered event waiting in `completions` in one transaction (a
    /// group commit: one transaction per delivery held SQLite's deliveries to about
    /// 4,500 a second, most of it the transactions' own cost), and tells each waiter.
    /// Nothing to do when another call took them first.
    fn complete_waiting_blocking(&self) {
        let mut conn = lock(&self.queue);
        let waiting = std::mem::take(&mut *self.waiting_completions());
        if waiting.is_empty() {
            return;
        }
        let removed = (|| -> StoreResult<()> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut delete = tx.prepare_cached("DELETE FROM events WHERE id = ?1")?;
                for (id, _) in &waiting {
                    delete.execute([id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })()
        .map_err(|e| format!("{e:#}"));
        for (_, done) in waiting {
            let _ = done.send(removed.clone());
        }
    }

    pub(crate) fn retry_blocking(
        &self,
        id: &str,
        not_before_ms: u64,
        error: &str,
        count_attempt: bool,
    ) -> StoreResult<()> {
        lock(&self.queue).execute(
            "UPDATE events SET state = 'pending', not_before_ms = ?2, last_error = ?3,
             attempts = attempts - ?4 WHERE id = ?1",
            params![id, not_before_ms, error, if count_attempt { 0 } else { 1 }],
        )?;
        Ok(())
    }

    pub(crate) fn kill_blocking(&self, id: &str, now_ms: u64, error: &str) -> StoreResult<()> {
        lock(&self.queue).execute(
            "UPDATE events SET state = 'dead', last_error = ?2, failed_ms = ?3 WHERE id = ?1",
            params![id, error, now_ms],
        )?;
        Ok(())
    }

    pub(crate) fn next_ready_ms_blocking(&self) -> StoreResult<Option<u64>> {
        Ok(lock(&self.queue).query_row(
            "SELECT min(not_before_ms) FROM events WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    pub(crate) fn depth_blocking(&self) -> StoreResult<(u64, u64)> {
        let conn = lock(&self.queue);
        let mut stmt = conn.prepare_cached(
            "SELECT state = 'dead', count(*) FROM events GROUP BY state = 'dead'",
        )?;
        let mut depth = (0, 0);
        for row in stmt.query_map([], |r| Ok((r.get::<_, bool>(0)?, r.get::<_, u64>(1)?)))? {
            match row? {
                (false, n) => depth.0 = n,
                (true, n) => depth.1 = n,
            }
        }
        Ok(depth)
    }

    pub(crate) fn dead_blocking(
        &self,
        function: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeadEvent>> {
        let (clause, params) = dead_filter(None, function);
        let conn = lock(&self.queue);
        let mut stmt = conn.prepare(&format!(
            "SELECT {DEAD_COLUMNS} FROM events WHERE {clause} ORDER BY failed_ms DESC, seq DESC LIMIT {limit}"
        ))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params), dead_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn dead_event_blocking(
        &self,
        id: &str,
    ) -> StoreResult<Option<(DeadEvent, Vec<u8>)>> {
        let conn = lock(&self.queue);
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {DEAD_COLUMNS}, data FROM events WHERE state = 'dead' AND id = ?1"
                ),
                [id],
                |row| Ok((dead_from_row(row)?, row.get(9)?)),
            )
            .optional()?)
    }

    pub(crate) fn redrive_blocking(
        &self,
        id: Option<&str>,
        function: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<u64> {
        let (clause, mut params) = dead_filter(id, function);
        durable(&mut lock(&self.queue), |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Redriving is the operator's "go on": the lineages of the events it brings back
            // start counting again (a loop still there stops after another budget).
            tx.execute(
            &format!(
                "DELETE FROM lineages WHERE root IN (SELECT root_id FROM events WHERE {clause} AND root_id IS NOT NULL)"
            ),
            rusqlite::params_from_iter(&params),
        )?;
            params.insert(0, now_ms.to_string());
            let sql = format!(
            "UPDATE events SET state = 'pending', attempts = 0, created_ms = ?1, not_before_ms = ?1,
             failed_ms = NULL WHERE {clause}"
        );
            let redriven = tx.execute(&sql, rusqlite::params_from_iter(params))? as u64;
            tx.commit()?;
            Ok(redriven)
        })
    }

    pub(crate) fn forget_lineages_blocking(&self, idle_since_ms: u64) -> StoreResult<u64> {
        Ok(lock(&self.queue).execute(
            "DELETE FROM lineages WHERE last_ms < ?1",
            [idle_since_ms as i64],
        )? as u64)
    }

    pub(crate) fn purge_blocking(
        &self,
        id: Option<&str>,
        function: Option<&str>,
    ) -> StoreResult<u64> {
        let (clause, params) = dead_filter(id, function);
        let sql = format!("DELETE FROM events WHERE {clause}");
        durable(&mut lock(&self.queue), |conn| {
            Ok(conn.execute(&sql, rusqlite::params_from_iter(params))? as u64)
        })
    }
}

fn kv_entry(
    table: &str,
    key: &str,
    version: u64,
    content_type: Option<String>,
    size: usize,
    updated_ms: u64,
) -> KvEntry {
    KvEntry {
        table: table.to_owned(),
        key: key.to_owned(),
        version,
        content_type,
        size_bytes: size as u64,
        updated_at: crate::clock::rfc3339(updated_ms),
    }
}

/// One row with its value, on any connection or transaction.
fn read_kv(conn: &Connection, table: &str, key: &str) -> StoreResult<Option<(KvEntry, Vec<u8>)>> {
    Ok(conn
        .query_row(
            "SELECT version, content_type, value, updated_ms FROM kv WHERE tbl = ?1 AND key = ?2",
            params![table, key],
            |r| {
                let value: Vec<u8> = r.get(2)?;
                Ok((
                    kv_entry(table, key, r.get(0)?, r.get(1)?, value.len(), r.get(3)?),
                    value,
                ))
            },
        )
        .optional()?)
}

/// The queue's SQLite calls run on blocking threads, off the async runtime.
#[async_trait::async_trait]
impl EventQueue for Arc<SqliteStore> {
    async fn enqueue(
        &self,
        events: Vec<NewEvent>,
        now_ms: u64,
        idempotency_window_ms: u64,
    ) -> StoreResult<Vec<Enqueued>> {
        off(self, move |s| {
            s.enqueue_blocking(&events, now_ms, idempotency_window_ms)
        })
        .await
    }

    fn enqueue_on_this_thread(
        &self,
        events: &[NewEvent],
        now_ms: u64,
        idempotency_window_ms: u64,
    ) -> Option<StoreResult<Vec<Enqueued>>> {
        Some(self.enqueue_blocking(events, now_ms, idempotency_window_ms))
    }

    async fn recover(&self) -> StoreResult<u64> {
        off(self, |s| s.recover_blocking()).await
    }

    async fn claim(&self, now_ms: u64, limit: usize) -> StoreResult<Vec<QueuedEvent>> {
        off(self, move |s| s.claim_blocking(now_ms, limit)).await
    }

    async fn complete(&self, id: &str) -> StoreResult<()> {
        let (done, finished) = tokio::sync::oneshot::channel();
        self.waiting_completions().push((id.to_owned(), done));
        off(self, |s| {
            s.complete_waiting_blocking();
            Ok(())
        })
        .await?;
        finished
            .await
            .map_err(|_| anyhow::anyhow!("the event's completion was dropped"))?
            .map_err(anyhow::Error::msg)
    }

    async fn retry(
        &self,
        id: &str,
        not_before_ms: u64,
        error: &str,
        count_attempt: bool,
    ) -> StoreResult<()> {
        let (id, error) = (id.to_owned(), error.to_owned());
        off(self, move |s| {
            s.retry_blocking(&id, not_before_ms, &error, count_attempt)
        })
        .await
    }

    async fn kill(&self, id: &str, now_ms: u64, error: &str) -> StoreResult<()> {
        let (id, error) = (id.to_owned(), error.to_owned());
        off(self, move |s| s.kill_blocking(&id, now_ms, &error)).await
    }

    async fn set_data(&self, id: &str, data: Vec<u8>) -> StoreResult<()> {
        let id = id.to_owned();
        off(self, move |s| s.set_data_blocking(&id, &data)).await
    }

    async fn next_ready_ms(&self) -> StoreResult<Option<u64>> {
        off(self, |s| s.next_ready_ms_blocking()).await
    }

    async fn depth(&self) -> StoreResult<(u64, u64)> {
        off(self, |s| s.depth_blocking()).await
    }

    async fn dead(&self, function: Option<&str>, limit: usize) -> StoreResult<Vec<DeadEvent>> {
        let function = function.map(str::to_owned);
        off(self, move |s| s.dead_blocking(function.as_deref(), limit)).await
    }

    async fn dead_event(&self, id: &str) -> StoreResult<Option<(DeadEvent, Vec<u8>)>> {
        let id = id.to_owned();
        off(self, move |s| s.dead_event_blocking(&id)).await
    }

    async fn redrive(
        &self,
        id: Option<&str>,
        function: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<u64> {
        let (id, function) = (id.map(str::to_owned), function.map(str::to_owned));
        off(self, move |s| {
            s.redrive_blocking(id.as_deref(), function.as_deref(), now_ms)
        })
        .await
    }

    async fn purge(&self, id: Option<&str>, function: Option<&str>) -> StoreResult<u64> {
        let (id, function) = (id.map(str::to_owned), function.map(str::to_owned));
        off(self, move |s| {
            s.purge_blocking(id.as_deref(), function.as_deref())
        })
        .await
    }

    async fn forget_lineages(&self, idle_since_ms: u64) -> StoreResult<u64> {
        off(self, move |s| s.forget_lineages_blocking(idle_since_ms)).await
    }
}

/// KV tables' calls, run on the calling thread (see the async [`KvStore`] below).
impl SqliteStore {
    pub(crate) fn kv_write_blocking(
        &self,
        table: &str,
        key: &str,
        value: Option<(&[u8], Option<&str>)>,
        condition: KvCondition,
        now_ms: u64,
        events: &crate::store::KvEventsFn,
    ) -> StoreResult<KvWrite> {
        let mut conn = lock(&self.queue);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let old = read_kv(&tx, table, key)?;
        let current = old.as_ref().map(|(e, _)| e.version);
        let allowed = match condition {
            KvCondition::Any => true,
            KvCondition::Absent => current.is_none(),
            KvCondition::Version(v) => current == Some(v),
        };
        if !allowed {
            return Ok(KvWrite::Conflict(current));
        }
        let old_ref = old.as_ref().map(|(e, v)| (e, v.as_slice()));
        let (written, queued) = match value {
            Some((bytes, content_type)) => {
                let entry = kv_entry(
                    table,
                    key,
                    current.unwrap_or(0) + 1,
                    content_type.map(str::to_owned),
                    bytes.len(),
                    now_ms,
                );
                tx.execute(
                    "INSERT INTO kv (tbl, key, version, content_type, value, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (tbl, key) DO UPDATE SET version = excluded.version,
                     content_type = excluded.content_type, value = excluded.value, updated_ms = excluded.updated_ms",
                    params![table, key, entry.version, entry.content_type, bytes, now_ms],
                )?;
                let queued = events(old_ref, Some((&entry, bytes)));
                (entry, queued)
            }
            None => {
                let Some((entry, _)) = &old else {
                    return Ok(KvWrite::Missing);
                };
                tx.execute(
                    "DELETE FROM kv WHERE tbl = ?1 AND key = ?2",
                    params![table, key],
                )?;
                (entry.clone(), events(old_ref, None))
            }
        };
        for e in &queued {
            insert_event(&tx, e, self.lineage_budget())?;
        }
        tx.commit()?;
        Ok(KvWrite::Done(written))
    }

    pub(crate) fn kv_get_blocking(
        &self,
        table: &str,
        key: &str,
    ) -> StoreResult<Option<(KvEntry, Vec<u8>)>> {
        read_kv(&lock(&self.reads), table, key)
    }

    pub(crate) fn kv_list_blocking(
        &self,
        table: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<KvEntry>> {
        let conn = lock(&self.reads);
        let mut stmt = conn.prepare_cached(
            "SELECT key, version, content_type, length(value), updated_ms FROM kv
             WHERE tbl = ?1 AND substr(key, 1, length(?2)) = ?2 AND key > ?3 ORDER BY key LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![table, prefix, after.unwrap_or(""), limit as i64],
            |r| {
                let key: String = r.get(0)?;
                Ok(kv_entry(
                    table,
                    &key,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, i64>(3)? as usize,
                    r.get(4)?,
                ))
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[async_trait::async_trait]
impl KvStore for Arc<SqliteStore> {
    async fn kv_write(
        &self,
        table: &str,
        key: &str,
        value: Option<(Vec<u8>, Option<String>)>,
        condition: KvCondition,
        now_ms: u64,
        events: crate::store::KvEvents,
    ) -> StoreResult<KvWrite> {
        let (table, key) = (table.to_owned(), key.to_owned());
        off(self, move |s| {
            let value = value.as_ref().map(|(v, ct)| (v.as_slice(), ct.as_deref()));
            s.kv_write_blocking(&table, &key, value, condition, now_ms, &*events)
        })
        .await
    }

    async fn kv_get(&self, table: &str, key: &str) -> StoreResult<Option<(KvEntry, Vec<u8>)>> {
        let (table, key) = (table.to_owned(), key.to_owned());
        off(self, move |s| s.kv_get_blocking(&table, &key)).await
    }

    async fn kv_list(
        &self,
        table: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<KvEntry>> {
        let (table, prefix, after) = (
            table.to_owned(),
            prefix.to_owned(),
            after.map(str::to_owned),
        );
        off(self, move |s| {
            s.kv_list_blocking(&table, &prefix, after.as_deref(), limit)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, root: Option<&str>, now_ms: u64) -> NewEvent {
        NewEvent {
            id: id.into(),
            function: "f".into(),
            qualifier: "$LATEST".into(),
            content_type: None,
            traceparent: None,
            event_type: None,
            source: None,
            subject: None,
            webhook: None,
            parent_id: root.map(str::to_owned),
            root_id: root.map(str::to_owned),
            ordering_key: None,
            hops: u32::from(root.is_some()),
            trigger: Trigger::Async,
            data: Vec::new(),
            created_ms: now_ms,
            idempotency_key: None,
        }
    }

    /// Without the planner's stability guarantee SQLite compiled every claim (and
    /// every statement with a `LIMIT ?`) again on each run, because the planner had
    /// looked at the bound limit: 6 % of the server's CPU while the queue drained.
    #[test]
    fn statements_with_bound_limits_are_compiled_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cirrus.db")).unwrap();
        let events: Vec<NewEvent> = (0..50).map(|i| event(&format!("e{i}"), None, 10)).collect();
        store.enqueue_blocking(&events, 10, 1000).unwrap();
        for connection in [&store.meta, &store.records, &store.reads, &store.queue] {
            let conn = lock(connection);
            let mut stmt = conn
                .prepare("SELECT seq FROM events WHERE state = 'pending' AND not_before_ms <= ?1 ORDER BY not_before_ms, seq LIMIT ?2")
                .unwrap();
            for run in 0..10i64 {
                let seqs: Vec<i64> = stmt
                    .query_map(params![100 + run, run + 1], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert_eq!(seqs.len() as i64, run + 1);
            }
            assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
        }
        for claimed in 0..5u64 {
            assert_eq!(store.claim_blocking(100 + claimed, 3).unwrap().len(), 3);
        }
    }

    #[test]
    fn only_acknowledged_queue_writes_are_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cirrus.db")).unwrap();
        let synchronous = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        let (normal, full) = (1, 2);
        assert_eq!(synchronous(&lock(&store.queue)), normal);
        let during = durable(&mut lock(&store.queue), |conn| Ok(synchronous(conn))).unwrap();
        assert_eq!(during, full);
        // A failed write still leaves the connection relaxed for the deliveries.
        let failed: StoreResult<()> = durable(&mut lock(&store.queue), |conn| {
            conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(())
        });
        assert!(failed.is_err());
        assert_eq!(synchronous(&lock(&store.queue)), normal);
        store
            .enqueue_blocking(&[event("a", None, 10)], 10, 1000)
            .unwrap();
        assert_eq!(synchronous(&lock(&store.queue)), normal);
        assert_eq!(store.depth_blocking().unwrap(), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_completions_share_transactions_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("cirrus.db")).unwrap());
        let events: Vec<NewEvent> = (0..300)
            .map(|i| event(&format!("e{i}"), None, 10))
            .collect();
        store.enqueue_blocking(&events, 10, 1000).unwrap();
        let claimed = EventQueue::claim(&store, 10, 300).await.unwrap();
        assert_eq!(claimed.len(), 300);
        let completing: Vec<_> = claimed
            .into_iter()
            .map(|q| {
                let store = store.clone();
                tokio::spawn(async move { store.complete(&q.event.id).await })
            })
            .collect();
        for done in completing {
            done.await.unwrap().unwrap();
        }
        assert_eq!(store.depth_blocking().unwrap(), (0, 0));
        assert!(store.waiting_completions().is_empty());
    }

    #[test]
    fn lineages_count_their_events_until_forgotten_or_redriven() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cirrus.db")).unwrap();
        store.set_lineage_budget(2);
        let batch = [
            event("root", None, 10),
            event("a", Some("root"), 10),
            event("b", Some("root"), 10),
            event("c", Some("root"), 10),
            event("other", Some("elsewhere"), 10),
        ];
        store.enqueue_blocking(&batch, 10, 1000).unwrap();
        // The event starting a lineage is not counted; the third it causes is parked.
        assert_eq!(store.depth_blocking().unwrap(), (4, 1));
        let dead = store.dead_blocking(None, 10).unwrap();
        assert_eq!(dead[0].request_id, "c");
        assert!(
            dead[0]
                .last_error
                .starts_with("lineage budget exhausted: request root"),
            "{}",
            dead[0].last_error
        );
        // Still counting, and a lineage idle since before the cut-off is forgotten.
        store
            .enqueue_blocking(&[event("d", Some("root"), 20)], 20, 1000)
            .unwrap();
        assert_eq!(store.depth_blocking().unwrap(), (4, 2));
        assert_eq!(
            store.forget_lineages_blocking(15).unwrap(),
            1,
            "only `elsewhere`"
        );
        assert_eq!(store.forget_lineages_blocking(25).unwrap(), 1);
        store
            .enqueue_blocking(&[event("e", Some("root"), 30)], 30, 1000)
            .unwrap();
        assert_eq!(store.depth_blocking().unwrap(), (5, 2));
        // Redriving an event gives its lineage a fresh budget.
        store
            .enqueue_blocking(&[event("f", Some("root"), 30)], 30, 1000)
            .unwrap();
        store
            .enqueue_blocking(&[event("g", Some("root"), 30)], 30, 1000)
            .unwrap();
        assert_eq!(store.depth_blocking().unwrap(), (6, 3));
        assert_eq!(store.redrive_blocking(Some("g"), None, 40).unwrap(), 1);
        store
            .enqueue_blocking(&[event("h", Some("root"), 40)], 40, 1000)
            .unwrap();
        assert_eq!(store.depth_blocking().unwrap(), (8, 2));
    }
}
