//! Function metadata in the `cirrus_meta` KV bucket: one key per version, alias and
//! trigger, so that two nodes changing different things never overwrite each other, and
//! a version is created with `create` (refused if another node numbered it first).

use super::retry::{retried, FAILOVER};
use super::{JetStream, META_BUCKET};
use crate::store::{
    alias_key, trigger_key, version_key, FunctionStore, Lagged, MetaChange, MetaFeed, Revised,
    Revision, StoreResult, StoredFunction, VersionTaken,
};
use anyhow::Context as _;
use async_nats::jetstream::kv;
use cirrus_api::{TriggerInfo, VersionInfo};
use futures_util::StreamExt as _;

fn schedule_key(trigger_id: &str) -> String {
    format!("schedule.{trigger_id}")
}

/// What a key names, read back from its parts.
enum MetaKey<'a> {
    Version(&'a str, u32),
    Alias(&'a str, &'a str),
    Trigger(&'a str, &'a str),
}

fn parse_key(key: &str) -> Option<MetaKey<'_>> {
    let rest = key.strip_prefix("fn.")?;
    let (function, rest) = rest.split_once('.')?;
    let (kind, name) = rest.split_once('.')?;
    match kind {
        "v" => Some(MetaKey::Version(function, name.parse().ok()?)),
        "alias" => Some(MetaKey::Alias(function, name)),
        "trigger" => Some(MetaKey::Trigger(function, name)),
        _ => None,
    }
}

/// A KV entry as a metadata change; `None` for keys that are not function metadata.
fn change_of(entry: &kv::Entry) -> StoreResult<Option<MetaChange>> {
    let put = matches!(entry.operation, kv::Operation::Put);
    let Some(key) = parse_key(&entry.key) else {
        return Ok(None);
    };
    let change = match (key, put) {
        (MetaKey::Version(..), true) => MetaChange::Version(Box::new(
            serde_json::from_slice(&entry.value)
                .with_context(|| format!("{} is unreadable", entry.key))?,
        )),
        (MetaKey::Version(function, version), false) => MetaChange::VersionGone {
            function: function.to_owned(),
            version,
        },
        (MetaKey::Alias(function, alias), true) => MetaChange::Alias {
            function: function.to_owned(),
            alias: alias.to_owned(),
            version: std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{} is unreadable", entry.key))?,
        },
        (MetaKey::Alias(function, alias), false) => MetaChange::AliasGone {
            function: function.to_owned(),
            alias: alias.to_owned(),
        },
        (MetaKey::Trigger(..), true) => MetaChange::Trigger(Box::new(
            serde_json::from_slice(&entry.value)
                .with_context(|| format!("{} is unreadable", entry.key))?,
        )),
        (MetaKey::Trigger(function, id), false) => MetaChange::TriggerGone {
            function: function.to_owned(),
            id: id.to_owned(),
        },
    };
    Ok(Some(change))
}

impl JetStream {
    /// Creates a key, retrying through a failover. A retry that finds the key holding
    /// exactly this value finds its own earlier attempt, which had been stored.
    async fn create_once(
        &self,
        key: &str,
        value: bytes::Bytes,
    ) -> StoreResult<Result<Revision, VersionTaken>> {
        let deadline = tokio::time::Instant::now() + FAILOVER;
        let mut retried = false;
        loop {
            match self.meta.create(key, value.clone()).await {
                Ok(revision) => return Ok(Ok(revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if retried {
                        if let Some(entry) = self.meta.entry(key).await? {
                            if entry.value == value {
                                return Ok(Ok(entry.revision));
                            }
                        }
                    }
                    return Ok(Err(VersionTaken));
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!("storing {key}: {e}; retrying");
                    retried = true;
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("storing {key}"))),
            }
        }
    }

    /// Every function, read key by key.
    async fn read_all(&self) -> StoreResult<Vec<StoredFunction>> {
        let mut functions: std::collections::BTreeMap<String, StoredFunction> =
            std::collections::BTreeMap::new();
        let mut entries = Vec::new();
        for key in self.keys_under("fn.").await? {
            // A key deleted between the listing and the read is simply gone.
            if let Some(entry) = self.meta.entry(&key).await.context("reading metadata")? {
                if let Some(change) = change_of(&entry)? {
                    entries.push((entry.revision, change));
                }
            }
        }
        entries.sort_by_key(|(revision, _)| *revision);
        let mut aliases = Vec::new();
        let mut triggers: Vec<TriggerInfo> = Vec::new();
        for (_, change) in entries {
            match change {
                MetaChange::Version(v) => functions
                    .entry(v.function.clone())
                    .or_insert_with(|| StoredFunction {
                        name: v.function.clone(),
                        versions: Vec::new(),
                        aliases: Vec::new(),
                        triggers: Vec::new(),
                    })
                    .versions
                    .push(*v),
                MetaChange::Alias {
                    function,
                    alias,
                    version,
                } => aliases.push((function, alias, version)),
                MetaChange::Trigger(t) => triggers.push(*t),
                _ => {}
            }
        }
        // Aliases and triggers of a function with no version (its delete was cut short)
        // are left out, as the function does not exist.
        for (function, alias, version) in aliases {
            if let Some(f) = functions.get_mut(&function) {
                f.aliases.push((alias, version));
            }
        }
        triggers.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        for trigger in triggers {
            if let Some(f) = functions.get_mut(&trigger.function) {
                f.triggers.push(trigger);
            }
        }
        let mut functions: Vec<StoredFunction> = functions.into_values().collect();
        for f in &mut functions {
            f.versions.sort_by_key(|v| v.version);
            f.aliases.sort();
        }
        Ok(functions)
    }

    /// Every key of the metadata bucket starting with `prefix` (see [`super::kv_keys`]).
    pub(super) async fn keys_under(&self, prefix: &str) -> StoreResult<Vec<String>> {
        super::kv_keys(&self.meta, prefix).await
    }

    /// Deletes a key, returning the revision of its delete marker (the KV client's own
    /// delete does not tell it).
    pub(super) async fn delete_key(&self, key: &str) -> StoreResult<Revision> {
        let ack = retried(&format!("deleting {key}"), || async {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("KV-Operation", "DEL");
            self.context
                .publish_with_headers(format!("$KV.{META_BUCKET}.{key}"), headers, "".into())
                .await?
                .await
        })
        .await?;
        Ok(ack.sequence)
    }
}

#[async_trait::async_trait]
impl FunctionStore for JetStream {
    async fn load_all(&self) -> StoreResult<Vec<StoredFunction>> {
        // Reads, too, wait out a failover rather than fail a starting node.
        super::retry::within(FAILOVER, "reading function metadata", || self.read_all()).await
    }

    async fn watch(&self) -> StoreResult<MetaFeed> {
        let watch = self
            .meta
            .watch("fn.>")
            .await
            .context("watching function metadata")?;
        let mut reconnects = self.reconnects.clone();
        reconnects.mark_unchanged();
        // Ends at the next reconnection: the reader watches again and reads afresh.
        let reconnected = async move {
            let _ = reconnects.changed().await;
        };
        Ok(watch
            .take_until(reconnected)
            .filter_map(|entry| async move {
                match entry {
                    Ok(entry) => match change_of(&entry) {
                        Ok(change) => change.map(|change| {
                            Ok(Revised {
                                revision: entry.revision,
                                change,
                            })
                        }),
                        Err(e) => {
                            tracing::warn!("skipping unreadable metadata: {e:#}");
                            None
                        }
                    },
                    // The watch broke (the connection, or its consumer): read afresh.
                    Err(e) => {
                        tracing::warn!("the metadata watch failed: {e}");
                        Some(Err(Lagged))
                    }
                }
            })
            .boxed())
    }

    async fn insert_version(&self, v: &VersionInfo) -> StoreResult<Result<Revision, VersionTaken>> {
        let key = version_key(&v.function, v.version);
        self.create_once(&key, serde_json::to_vec(v)?.into()).await
    }

    async fn delete_function(&self, name: &str) -> StoreResult<Revision> {
        let prefix = format!("fn.{name}.");
        let mut keys = Vec::new();
        for key in self.keys_under(&prefix).await? {
            let live = self.meta.entry(&key).await.context("reading metadata")?;
            if live.is_some_and(|e| matches!(e.operation, kv::Operation::Put)) {
                keys.push(key);
            }
        }
        // Versions last: a node reading in between still sees a function, not stray
        // aliases or triggers.
        keys.sort_by_key(|k| matches!(parse_key(k), Some(MetaKey::Version(..))));
        let mut revision = 0;
        for key in keys {
            if let Some(MetaKey::Trigger(_, id)) = parse_key(&key) {
                self.delete_key(&schedule_key(id)).await?;
            }
            revision = self.delete_key(&key).await?;
        }
        Ok(revision)
    }

    async fn set_alias(&self, function: &str, alias: &str, version: u32) -> StoreResult<Revision> {
        let key = alias_key(function, alias);
        let value = bytes::Bytes::from(version.to_string());
        retried(&format!("storing {key}"), || {
            self.meta.put(&key, value.clone())
        })
        .await
    }

    async fn delete_alias(&self, function: &str, alias: &str) -> StoreResult<Revision> {
        self.delete_key(&alias_key(function, alias)).await
    }

    async fn insert_trigger(&self, trigger: &TriggerInfo) -> StoreResult<Revision> {
        let key = trigger_key(&trigger.function, &trigger.id);
        let value = bytes::Bytes::from(serde_json::to_vec(trigger)?);
        retried(&format!("storing {key}"), || {
            self.meta.put(&key, value.clone())
        })
        .await
    }

    async fn delete_trigger(&self, function: &str, id: &str) -> StoreResult<Revision> {
        self.delete_key(&schedule_key(id)).await?;
        self.delete_key(&trigger_key(function, id)).await
    }

    async fn schedule_marks(&self) -> StoreResult<Vec<(String, u64)>> {
        let mut marks = Vec::new();
        for key in self.keys_under("schedule.").await? {
            if let Some(value) = self.meta.get(&key).await.context("reading schedules")? {
                if let Some(mark) = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                {
                    marks.push((key["schedule.".len()..].to_owned(), mark));
                }
            }
        }
        Ok(marks)
    }

    async fn claim_schedule_tick(
        &self,
        trigger_id: &str,
        previous: Option<u64>,
        fired_ms: u64,
    ) -> StoreResult<bool> {
        let key = schedule_key(trigger_id);
        let value: bytes::Bytes = fired_ms.to_string().into();
        let current = self.meta.entry(&key).await.context("reading a schedule")?;
        let current = current.filter(|e| matches!(e.operation, kv::Operation::Put));
        let stored = current
            .as_ref()
            .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<u64>().ok());
        if stored != previous {
            return Ok(false);
        }
        let written = match current {
            Some(entry) => self
                .meta
                .update(&key, value, entry.revision)
                .await
                .map(|_| true)
                .or_else(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                    _ => Err(anyhow::Error::new(e)),
                }),
            None => self
                .meta
                .create(&key, value)
                .await
                .map(|_| true)
                .or_else(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => Ok(false),
                    _ => Err(anyhow::Error::new(e)),
                }),
        };
        written.with_context(|| format!("claiming {key}"))
    }
}
