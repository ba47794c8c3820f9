//! Secrets, API keys and the audit log in a cluster.
//!
//! Secrets and keys are `cirrus_meta` keys (`secret.NAME`, `apikey.ID`), sealed exactly
//! as on one node: every node needs the same secrets key file, which never goes into
//! NATS. Each node keeps them in memory ([`crate::secrets::Secrets`],
//! [`crate::keys::ApiKeys`]) and reads them again when the watch ([`follow`]) says one
//! changed, and every 15 s regardless. The audit log is the stream `cirrus_audit`; an
//! entry's `seq` is its stream sequence.

use super::retry::retried;
use super::JetStream;
use crate::store::{AccessStore, AuditEntry, SealedSecret, StoreResult, StoredKey};
use anyhow::Context as _;
use async_nats::jetstream::kv;
use futures_util::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;

pub const AUDIT_STREAM: &str = "cirrus_audit";
const AUDIT_SUBJECT: &str = "cirrus.audit";

fn secret_key(name: &str) -> String {
    format!("secret.{name}")
}

fn api_key(id: &str) -> String {
    format!("apikey.{id}")
}

impl JetStream {
    /// The audit stream, made on first use, kept `max_age`.
    pub async fn audit_stream(&self, replicas: usize, max_age: Duration) -> StoreResult<()> {
        self.kept_stream(
            AUDIT_STREAM,
            "Cirrus audit log",
            AUDIT_SUBJECT,
            replicas,
            max_age,
        )
        .await
    }

    /// Every live value under `prefix`, decoded.
    async fn values_under<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> StoreResult<Vec<T>> {
        let mut values = Vec::new();
        for key in self.keys_under(prefix).await? {
            if let Some(value) = self.meta.get(&key).await.context("reading access data")? {
                values.push(
                    serde_json::from_slice(&value)
                        .with_context(|| format!("{key} is unreadable"))?,
                );
            }
        }
        Ok(values)
    }
}

#[async_trait::async_trait]
impl AccessStore for JetStream {
    async fn secrets(&self) -> StoreResult<Vec<SealedSecret>> {
        self.values_under("secret.").await
    }

    async fn put_secret(&self, secret: &SealedSecret) -> StoreResult<()> {
        let key = secret_key(&secret.name);
        let value = bytes::Bytes::from(serde_json::to_vec(secret)?);
        retried(&format!("storing {key}"), || {
            self.meta.put(&key, value.clone())
        })
        .await?;
        Ok(())
    }

    async fn delete_secret(&self, name: &str) -> StoreResult<bool> {
        let key = secret_key(name);
        if self
            .meta
            .get(&key)
            .await
            .context("reading a secret")?
            .is_none()
        {
            return Ok(false);
        }
        self.delete_key(&key).await?;
        Ok(true)
    }

    async fn keys(&self) -> StoreResult<Vec<StoredKey>> {
        self.values_under("apikey.").await
    }

    async fn insert_key(&self, stored: &StoredKey) -> StoreResult<()> {
        let key = api_key(&stored.id);
        let value = bytes::Bytes::from(serde_json::to_vec(stored)?);
        retried(&format!("storing {key}"), || {
            self.meta.put(&key, value.clone())
        })
        .await?;
        Ok(())
    }

    async fn revoke_key(&self, id: &str, now_ms: u64) -> StoreResult<bool> {
        let key = api_key(id);
        // Compare-and-set: of two nodes revoking at once, one records the time.
        loop {
            let Some(entry) = self.meta.entry(&key).await.context("reading a key")? else {
                return Ok(false);
            };
            if !matches!(entry.operation, kv::Operation::Put) {
                return Ok(false);
            }
            let mut stored: StoredKey = serde_json::from_slice(&entry.value)
                .with_context(|| format!("{key} is unreadable"))?;
            if stored.revoked_ms.is_some() {
                return Ok(false);
            }
            stored.revoked_ms = Some(now_ms);
            match self
                .meta
                .update(&key, serde_json::to_vec(&stored)?.into(), entry.revision)
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(anyhow::Error::new(e).context(format!("revoking {id}"))),
            }
        }
    }

    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        let payload = bytes::Bytes::from(serde_json::to_vec(entry)?);
        retried("writing the audit log", || async {
            self.context
                .publish(format!("{AUDIT_SUBJECT}.entry"), payload.clone())
                .await?
                .await
        })
        .await?;
        Ok(())
    }

    async fn audit(&self, before: Option<u64>, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        let mut stream = self
            .context
            .get_stream(AUDIT_STREAM)
            .await
            .context("opening the audit stream")?;
        let info = stream.info().await.context("reading the audit stream")?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut seq = before.map_or(last, |b| b.saturating_sub(1).min(last));
        let mut entries = Vec::new();
        while seq >= first.max(1) && entries.len() < limit {
            // A message removed by age is simply absent.
            if let Ok(message) = stream.get_raw_message(seq).await {
                let mut entry: AuditEntry = serde_json::from_slice(&message.payload)
                    .context("an audit entry is unreadable")?;
                entry.seq = seq;
                entries.push(entry);
            }
            seq -= 1;
        }
        Ok(entries)
    }
}

/// Keeps this node's secrets and API keys in step with the cluster's: read again when
/// the watch reports a change (or breaks), and every 15 s.
pub async fn follow(
    js: JetStream,
    secrets: Arc<crate::secrets::Secrets>,
    keys: Arc<crate::keys::ApiKeys>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let reload = || {
        let (secrets, keys) = (secrets.clone(), keys.clone());
        async move {
            let done = match secrets.reload().await {
                Ok(()) => keys.reload().await,
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                tracing::warn!("reading secrets and keys again failed: {e:#}");
            }
        }
    };
    loop {
        // Two watches, not one on both subjects: NATS 2.9 takes one filter per consumer.
        let watch = async {
            let secrets = js.meta.watch("secret.>").await?;
            let keys = js.meta.watch("apikey.>").await?;
            Ok::<_, kv::WatchError>(futures_util::stream::select(secrets, keys))
        }
        .await;
        let mut watch = match watch {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!("watching secrets and keys failed: {e}; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        reload().await;
        let mut every = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(15),
            Duration::from_secs(15),
        );
        loop {
            tokio::select! {
                next = watch.next() => match next {
                    Some(Ok(_)) => reload().await,
                    Some(Err(e)) => {
                        tracing::warn!("the secrets and keys watch failed: {e}; watching again");
                        break;
                    }
                    None => break,
                },
                _ = every.tick() => reload().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
