//! PostgreSQL change triggers: the inserts, updates and deletes of a table become
//! events (`{"op", "table", "old", "new", "at"}`), in commit order per primary key.
//!
//! Logical replication would be the natural feed, but it needs `wal_level = logical`,
//! and a stock server runs with `replica` (Debian's PostgreSQL 15 here does), which only
//! a restart changes. So Cirrus installs what it needs in the database instead: a row
//! trigger on the table appends each change, as JSON, to `cirrus.changes` and notifies
//! `cirrus_changes`; Cirrus reads the rows of its trigger in `seq` order, commits their
//! events to the queue, and only then deletes them. A change is in the outbox exactly
//! when its transaction committed, so nothing is missed while Cirrus is away, and two
//! changes of one row are serialised by the row lock, so their `seq` order is their
//! commit order. The event's idempotency key is the change's `seq`: a crash between
//! queueing and deleting cannot deliver it twice.

use super::subscriptions::{commit, Backoff, Context, Reporter};
use super::{batch_event, Record, POSTGRES_EVENT_TYPE};
use crate::store::NewEvent;
use cirrus_api::trigger::PostgresTrigger;
use cirrus_api::{Trigger, TriggerInfo};
use futures_util::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::AsyncMessage;

/// Changes read per round.
const BATCH: i64 = 500;
/// Rounds happen on a notification, and at least this often.
const POLL: Duration = Duration::from_secs(1);

/// The outbox and the capture function, shared by every trigger of a database.
const INSTALL: &str = r#"
CREATE SCHEMA IF NOT EXISTS cirrus;
CREATE TABLE IF NOT EXISTS cirrus.changes (
    seq bigserial PRIMARY KEY, capture text NOT NULL, op text NOT NULL,
    old jsonb, new jsonb, at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS changes_by_capture ON cirrus.changes (capture, seq);
CREATE OR REPLACE FUNCTION cirrus.capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cirrus.changes (capture, op, old, new) VALUES (
        TG_ARGV[0], lower(TG_OP),
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    PERFORM pg_notify('cirrus_changes', TG_ARGV[0]);
    RETURN NULL;
END $$;
"#;

/// Holds the capture until the task is stopped.
pub async fn run(
    context: Arc<Context>,
    trigger: TriggerInfo,
    spec: PostgresTrigger,
    reporter: Arc<Reporter>,
) {
    let mut backoff = Backoff::default();
    loop {
        if let Err(e) = session(&context, &trigger, &spec, &reporter, &mut backoff).await {
            reporter.disconnected(&e);
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

async fn connect(
    spec: &PostgresTrigger,
    capture: &str,
) -> Result<(tokio_postgres::Client, Arc<tokio::sync::Notify>), String> {
    let mut config: tokio_postgres::Config = spec
        .url
        .parse()
        .map_err(|e| format!("PostgreSQL URL: {e}"))?;
    if let Some(var) = &spec.password_env {
        let password = std::env::var(var).map_err(|_| {
            format!("the server's environment has no {var} (the trigger's password_env)")
        })?;
        config.password(password);
    }
    config.application_name("cirrus");
    config.connect_timeout(Duration::from_secs(10));
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to PostgreSQL: {}", chain(&e)))?;
    // The connection delivers notifications; one naming this capture wakes a round (a
    // burst of them, one round). The task ends with the client.
    let wake = Arc::new(tokio::sync::Notify::new());
    let woken = wake.clone();
    let capture = capture.to_owned();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                if n.payload() == capture {
                    wake.notify_one();
                }
            }
        }
        // Closed: the session notices through `is_closed`.
        wake.notify_one();
    });
    Ok((client, woken))
}

async fn session(
    context: &Context,
    trigger: &TriggerInfo,
    spec: &PostgresTrigger,
    reporter: &Reporter,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let (client, woken) = connect(spec, &trigger.id).await?;
    let table = install(&client, &trigger.id, &spec.table).await?;
    let key_columns = primary_key(&client, &table).await?;
    client
        .batch_execute("LISTEN cirrus_changes")
        .await
        .map_err(|e| chain(&e))?;
    reporter.connected();
    backoff.reset();
    loop {
        while drain(
            context,
            trigger,
            spec,
            &client,
            &table,
            &key_columns,
            reporter,
        )
        .await?
            == BATCH
        {}
        tokio::select! {
            () = woken.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        if client.is_closed() {
            return Err("the connection to PostgreSQL closed".into());
        }
    }
}

/// The name of the capture trigger Cirrus puts on the table.
fn capture_name(trigger_id: &str) -> String {
    format!("cirrus_{}", trigger_id.replace('-', "_"))
}

/// Installs the outbox and the table's capture trigger (idempotent); returns the table's
/// name as PostgreSQL prints it. A missing table or one without a primary key is an
/// error saying so.
async fn install(
    client: &tokio_postgres::Client,
    trigger_id: &str,
    table: &str,
) -> Result<String, String> {
    let row = client
        .query_opt(
            "SELECT c.oid::regclass::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
             FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&table],
        )
        .await
        .map_err(|e| format!("looking up table {table:?}: {}", chain(&e)))?;
    let Some(row) = row else {
        return Err(format!("table {table:?} does not exist in this database"));
    };
    let (name, has_key): (String, bool) = (row.get(0), row.get(1));
    if !has_key {
        return Err(format!(
            "table {name} has no primary key: changes are delivered in order per key, so it needs one"
        ));
    }
    // Installed already (a reconnect): no DDL, whose lock would queue the table's writers
    // behind any long transaction.
    let capture = capture_name(trigger_id);
    let installed: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)
                AND to_regclass('cirrus.changes') IS NOT NULL",
            &[&table, &capture],
        )
        .await
        .map_err(|e| chain(&e))?
        .get(0);
    if installed {
        return Ok(name);
    }
    // Concurrent installs (several triggers starting at once) take turns; a table busy
    // for long makes this attempt fail (and retry later) rather than block its writers.
    let ddl = format!(
        "BEGIN; SET LOCAL lock_timeout = '5s'; SELECT pg_advisory_xact_lock(4242004242); {INSTALL}
         CREATE OR REPLACE TRIGGER {capture} AFTER INSERT OR UPDATE OR DELETE ON {name}
             FOR EACH ROW EXECUTE FUNCTION cirrus.capture('{trigger_id}');
         COMMIT;"
    );
    if let Err(e) = client.batch_execute(&ddl).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(format!("installing the capture on {name}: {}", chain(&e)));
    }
    Ok(name)
}

/// The table's primary key columns, in key order.
async fn primary_key(client: &tokio_postgres::Client, table: &str) -> Result<Vec<String>, String> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary
             ORDER BY array_position(i.indkey, a.attnum)",
            &[&table],
        )
        .await
        .map_err(|e| chain(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Moves one batch of changes from the outbox to the queue; returns how many.
async fn drain(
    context: &Context,
    trigger: &TriggerInfo,
    spec: &PostgresTrigger,
    client: &tokio_postgres::Client,
    table: &str,
    key_columns: &[String],
    reporter: &Reporter,
) -> Result<i64, String> {
    let (batch_size, window) =
        cirrus_api::trigger::batching(spec.batch_size, spec.batch_window.as_deref())?;
    let rows = client
        .query(
            "SELECT seq, op, old, new, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    (extract(epoch FROM clock_timestamp() - at) * 1000)::bigint
             FROM cirrus.changes WHERE capture = $1 ORDER BY seq LIMIT $2",
            &[&trigger.id, &BATCH],
        )
        .await
        .map_err(|e| format!("reading changes: {}", chain(&e)))?;
    let changes: Vec<Change> = rows
        .iter()
        .map(|row| {
            let old: Option<serde_json::Value> = row.get(2);
            let new: Option<serde_json::Value> = row.get(3);
            let keyed = new.as_ref().or(old.as_ref());
            let key: Vec<&serde_json::Value> = key_columns
                .iter()
                .map(|c| {
                    keyed
                        .and_then(|r| r.get(c))
                        .unwrap_or(&serde_json::Value::Null)
                })
                .collect();
            let key = serde_json::to_string(&key).unwrap_or_default();
            let at: String = row.get(4);
            Change {
                seq: row.get(0),
                key,
                age_ms: row.get(5),
                data: serde_json::json!({ "op": row.get::<_, String>(1), "table": table,
                                          "old": old, "new": new, "at": at }),
                at,
            }
        })
        .collect();
    let source = format!("/postgres/{table}");
    let mut done = Vec::with_capacity(changes.len());
    if batch_size > 1 {
        // A batch that is not full waits out its window, counted from its oldest change.
        let full = changes.len() >= batch_size as usize;
        let due = changes
            .first()
            .is_some_and(|c| c.age_ms >= window.as_millis() as i64);
        if !full && !due {
            return Ok(0);
        }
        for chunk in changes.chunks(batch_size as usize) {
            let records: Vec<Record> = chunk
                .iter()
                .map(|c| Record {
                    id: c.seq.to_string(),
                    subject: table.to_owned(),
                    content_type: Some("application/json".into()),
                    data: serde_json::to_vec(&c.data).unwrap_or_default(),
                    time: c.at.clone(),
                })
                .collect();
            let (first, last) = (chunk[0].seq, chunk[chunk.len() - 1].seq);
            let event = batch_event(
                &trigger.function,
                Trigger::Postgres,
                source.clone(),
                context.clock.now_ms(),
                &records,
            )
            // Batches of one table are delivered one at a time, in order (a change's
            // key may be in the next batch too).
            .ordered_by(format!("pg:{}", trigger.id))
            .deduplicated_by(Some(format!("pg:{}:{first}-{last}", trigger.id)))
            .with_subject(table.to_owned());
            commit(context, reporter, event).await;
            done.extend(chunk.iter().map(|c| c.seq));
        }
    } else {
        for change in &changes {
            let event = NewEvent::fired(
                trigger.function.clone(),
                Trigger::Postgres,
                Some(POSTGRES_EVENT_TYPE.into()),
                Some(source.clone()),
                context.clock.now_ms(),
            )
            .with_json(serde_json::to_vec(&change.data).unwrap_or_default())
            .ordered_by(format!("pg:{}:{}", trigger.id, change.key))
            .deduplicated_by(Some(format!("pg:{}:{}", trigger.id, change.seq)))
            .with_subject(table.to_owned());
            commit(context, reporter, event).await;
            done.push(change.seq);
        }
    }
    if !done.is_empty() {
        client
            .execute(
                "DELETE FROM cirrus.changes WHERE capture = $1 AND seq = ANY($2)",
                &[&trigger.id, &done],
            )
            .await
            .map_err(|e| format!("removing delivered changes: {}", chain(&e)))?;
    }
    Ok(rows.len() as i64)
}

/// One row of the outbox.
struct Change {
    seq: i64,
    /// The primary key's values, as JSON.
    key: String,
    age_ms: i64,
    at: String,
    data: serde_json::Value,
}

/// Removes what Cirrus installed for a trigger that is gone: its capture on the table
/// and its undelivered changes. Best effort: the table may be gone too.
pub async fn uninstall(trigger_id: &str, spec: &PostgresTrigger) -> Result<(), String> {
    let (client, _woken) = connect(spec, trigger_id).await?;
    let capture = capture_name(trigger_id);
    let table: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&spec.table])
        .await
        .ok()
        .and_then(|r| r.get(0));
    if let Some(table) = table {
        client
            .batch_execute(&format!(
                "SET lock_timeout = '5s'; DROP TRIGGER IF EXISTS {capture} ON {table}"
            ))
            .await
            .map_err(|e| chain(&e))?;
    }
    client
        .execute(
            "DELETE FROM cirrus.changes WHERE capture = $1",
            &[&trigger_id],
        )
        .await
        .map_err(|e| chain(&e))?;
    Ok(())
}

/// A PostgreSQL error with its detail (the server's message), which `Display` omits.
fn chain(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}
