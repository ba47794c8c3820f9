//! Function metadata in SQLite, behind the async [`FunctionStore`]: each call runs on a
//! blocking thread, and each commit is announced on the in-process change feed (one
//! node has one writer, so the feed only ever carries this process's own changes).

use super::{lock, SqliteStore, SPEC_VERSION};
use crate::store::FunctionStore;
use crate::store::{
    Lagged, MetaChange, MetaFeed, Revised, Revision, StoreResult, StoredFunction, VersionTaken,
};
use anyhow::Context as _;
use cirrus_api::{FunctionConfig, TriggerInfo, VersionInfo};
use futures_util::StreamExt as _;
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Changes a slow feed reader may fall behind by before it must read everything again.
pub(super) const FEED_CAPACITY: usize = 1024;

fn version_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(VersionInfo, i64)> {
    let kind: String = row.get(3)?;
    let config: String = row.get(6)?;
    let bad = |e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    };
    let info = VersionInfo {
        function: row.get(0)?,
        version: row.get(1)?,
        sha256: row.get(2)?,
        kind: kind.parse().map_err(bad)?,
        size_bytes: row.get(4)?,
        config: serde_json::from_str::<FunctionConfig>(&config).map_err(|e| bad(e.to_string()))?,
        created_at: row.get(7)?,
    };
    Ok((info, row.get(5)?))
}

/// What a blocking metadata call works with: the connection, and the feed its commits
/// are announced on.
struct Meta {
    conn: Arc<Mutex<Connection>>,
    feed: tokio::sync::broadcast::Sender<Revised>,
    revision: Arc<AtomicU64>,
}

impl Meta {
    /// Runs `write` under the connection's lock and announces the changes it reports,
    /// still under the lock, so revisions follow commit order.
    fn write<T>(
        &self,
        write: impl FnOnce(&mut Connection) -> StoreResult<(T, Vec<MetaChange>)>,
    ) -> StoreResult<(T, Revision)> {
        let mut conn = lock(&self.conn);
        let (value, changes) = write(&mut conn)?;
        let mut revision = self.revision.load(Ordering::SeqCst);
        for change in changes {
            revision = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
            // No receiver is not an error: nothing is following yet.
            let _ = self.feed.send(Revised { revision, change });
        }
        Ok((value, revision))
    }
}

impl SqliteStore {
    fn meta(&self) -> Meta {
        Meta {
            conn: self.meta.clone(),
            feed: self.feed.clone(),
            revision: self.revision.clone(),
        }
    }

    /// Runs a metadata call on a blocking thread.
    async fn on_meta<T: Send + 'static>(
        &self,
        call: impl FnOnce(Meta) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let meta = self.meta();
        tokio::task::spawn_blocking(move || call(meta))
            .await
            .context("the store's blocking task failed")?
    }
}

/// Every stored function, or only `function`.
fn load(conn: &Connection, function: Option<&str>) -> StoreResult<Vec<StoredFunction>> {
    let mut functions: Vec<StoredFunction> = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT function, version, sha256, kind, size_bytes, spec_version, config, created_at
         FROM versions WHERE ?1 IS NULL OR function = ?1 ORDER BY function, version",
    )?;
    for row in stmt.query_map([function], version_from_row)? {
        let (info, spec_version) = row?;
        anyhow::ensure!(
            spec_version <= SPEC_VERSION,
            "{} version {} was stored by a newer Cirrus (spec version {spec_version})",
            info.function,
            info.version
        );
        match functions.last_mut() {
            Some(f) if f.name == info.function => f.versions.push(info),
            _ => functions.push(StoredFunction {
                name: info.function.clone(),
                versions: vec![info],
                aliases: Vec::new(),
                triggers: Vec::new(),
            }),
        }
    }
    let mut stmt = conn.prepare(
        "SELECT function, alias, version FROM aliases WHERE ?1 IS NULL OR function = ?1
         ORDER BY alias",
    )?;
    let aliases = stmt.query_map([function], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u32>(2)?,
        ))
    })?;
    for alias in aliases {
        let (function, alias, version) = alias?;
        if let Some(f) = functions.iter_mut().find(|f| f.name == function) {
            f.aliases.push((alias, version));
        }
    }
    for trigger in triggers(conn, function)? {
        if let Some(f) = functions.iter_mut().find(|f| f.name == trigger.function) {
            f.triggers.push(trigger);
        }
    }
    Ok(functions)
}

fn triggers(conn: &Connection, function: Option<&str>) -> StoreResult<Vec<TriggerInfo>> {
    let mut stmt = conn.prepare(
        "SELECT id, function, spec, created_at FROM triggers
         WHERE ?1 IS NULL OR function = ?1 ORDER BY created_at, id",
    )?;
    let rows = stmt.query_map([function], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut found = Vec::new();
    for row in rows {
        let (id, function, spec, created_at) = row?;
        let spec =
            serde_json::from_str(&spec).with_context(|| format!("trigger {id} is unreadable"))?;
        found.push(TriggerInfo {
            id,
            function,
            spec,
            created_at,
            state: None,
        });
    }
    Ok(found)
}

#[async_trait::async_trait]
impl FunctionStore for SqliteStore {
    async fn load_all(&self) -> StoreResult<Vec<StoredFunction>> {
        self.on_meta(|meta| load(&lock(&meta.conn), None)).await
    }

    async fn watch(&self) -> StoreResult<MetaFeed> {
        let feed = tokio_stream_of(self.feed.subscribe());
        Ok(feed)
    }

    async fn insert_version(&self, v: &VersionInfo) -> StoreResult<Result<Revision, VersionTaken>> {
        let v = v.clone();
        let config = serde_json::to_string(&v.config)?;
        self.on_meta(move |meta| {
            let (inserted, revision) = meta.write(|conn| {
                let inserted = conn.execute(
                    "INSERT INTO versions (function, version, sha256, kind, size_bytes, spec_version, config, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                    params![
                        v.function,
                        v.version,
                        v.sha256,
                        v.kind.as_str(),
                        v.size_bytes,
                        SPEC_VERSION,
                        config,
                        v.created_at
                    ],
                )? == 1;
                let changes = if inserted {
                    vec![MetaChange::Version(Box::new(v))]
                } else {
                    Vec::new()
                };
                Ok((inserted, changes))
            })?;
            Ok(if inserted { Ok(revision) } else { Err(VersionTaken) })
        })
        .await
    }

    async fn delete_function(&self, name: &str) -> StoreResult<Revision> {
        let name = name.to_owned();
        self.on_meta(move |meta| {
            let ((), revision) = meta.write(|conn| {
                let stored = load(conn, Some(&name))?.into_iter().next();
                // IMMEDIATE: take the write lock up front, so a concurrent commit on
                // another connection makes us wait (busy_timeout) instead of failing a
                // read-to-write upgrade.
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                tx.execute("DELETE FROM aliases WHERE function = ?1", [&name])?;
                tx.execute(
                    "DELETE FROM schedule_marks WHERE trigger_id IN (SELECT id FROM triggers WHERE function = ?1)",
                    [&name],
                )?;
                tx.execute("DELETE FROM triggers WHERE function = ?1", [&name])?;
                tx.execute("DELETE FROM versions WHERE function = ?1", [&name])?;
                tx.commit()?;
                Ok(((), stored.map(gone).unwrap_or_default()))
            })?;
            Ok(revision)
        })
        .await
    }

    async fn set_alias(&self, function: &str, alias: &str, version: u32) -> StoreResult<Revision> {
        let (function, alias) = (function.to_owned(), alias.to_owned());
        self.on_meta(move |meta| {
            let ((), revision) = meta.write(|conn| {
                conn.execute(
                    "INSERT INTO aliases (function, alias, version) VALUES (?1, ?2, ?3)
                     ON CONFLICT (function, alias) DO UPDATE SET version = excluded.version",
                    params![function, alias, version],
                )?;
                Ok((
                    (),
                    vec![MetaChange::Alias {
                        function,
                        alias,
                        version,
                    }],
                ))
            })?;
            Ok(revision)
        })
        .await
    }

    async fn delete_alias(&self, function: &str, alias: &str) -> StoreResult<Revision> {
        let (function, alias) = (function.to_owned(), alias.to_owned());
        self.on_meta(move |meta| {
            let ((), revision) = meta.write(|conn| {
                conn.execute(
                    "DELETE FROM aliases WHERE function = ?1 AND alias = ?2",
                    [&function, &alias],
                )?;
                Ok(((), vec![MetaChange::AliasGone { function, alias }]))
            })?;
            Ok(revision)
        })
        .await
    }

    async fn insert_trigger(&self, t: &TriggerInfo) -> StoreResult<Revision> {
        let t = t.clone();
        let spec = serde_json::to_string(&t.spec)?;
        self.on_meta(move |meta| {
            let ((), revision) = meta.write(|conn| {
                conn.execute(
                    "INSERT INTO triggers (id, function, spec, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![t.id, t.function, spec, t.created_at],
                )?;
                Ok(((), vec![MetaChange::Trigger(Box::new(t))]))
            })?;
            Ok(revision)
        })
        .await
    }

    async fn delete_trigger(&self, function: &str, id: &str) -> StoreResult<Revision> {
        let (function, id) = (function.to_owned(), id.to_owned());
        self.on_meta(move |meta| {
            let ((), revision) = meta.write(|conn| {
                conn.execute("DELETE FROM triggers WHERE id = ?1", [&id])?;
                conn.execute("DELETE FROM schedule_marks WHERE trigger_id = ?1", [&id])?;
                Ok(((), vec![MetaChange::TriggerGone { function, id }]))
            })?;
            Ok(revision)
        })
        .await
    }

    async fn schedule_marks(&self) -> StoreResult<Vec<(String, u64)>> {
        self.on_meta(|meta| {
            let conn = lock(&meta.conn);
            let mut stmt = conn.prepare("SELECT trigger_id, fired_ms FROM schedule_marks")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn claim_schedule_tick(
        &self,
        trigger_id: &str,
        previous: Option<u64>,
        fired_ms: u64,
    ) -> StoreResult<bool> {
        let id = trigger_id.to_owned();
        self.on_meta(move |meta| {
            let conn = lock(&meta.conn);
            let current: Option<u64> = conn
                .query_row(
                    "SELECT fired_ms FROM schedule_marks WHERE trigger_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?;
            if current != previous {
                return Ok(false);
            }
            conn.execute(
                "INSERT INTO schedule_marks (trigger_id, fired_ms) VALUES (?1, ?2)
                 ON CONFLICT (trigger_id) DO UPDATE SET fired_ms = excluded.fired_ms",
                params![id, fired_ms],
            )?;
            Ok(true)
        })
        .await
    }
}

/// The changes that remove a stored function, key by key.
fn gone(f: StoredFunction) -> Vec<MetaChange> {
    let name = f.name;
    let aliases = f
        .aliases
        .into_iter()
        .map(|(alias, _)| MetaChange::AliasGone {
            function: name.clone(),
            alias,
        });
    let triggers = f.triggers.into_iter().map(|t| MetaChange::TriggerGone {
        function: name.clone(),
        id: t.id,
    });
    let versions = f.versions.into_iter().map(|v| MetaChange::VersionGone {
        function: name.clone(),
        version: v.version,
    });
    aliases.chain(triggers).chain(versions).collect()
}

/// The broadcast receiver as a feed: a lagging receiver gets `Lagged`, then the feed ends.
fn tokio_stream_of(rx: tokio::sync::broadcast::Receiver<Revised>) -> MetaFeed {
    futures_util::stream::unfold((rx, false), |(mut rx, ended)| async move {
        if ended {
            return None;
        }
        match rx.recv().await {
            Ok(revised) => Some((Ok(revised), (rx, false))),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Some((Err(Lagged), (rx, true)))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    })
    .boxed()
}
