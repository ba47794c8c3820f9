//! Leases: one node of the cluster at a time does a thing (holds an MQTT trigger's
//! session), and another takes over when it stops. A lease is a key of the KV bucket
//! `cirrus_leases`, whose entries expire [`TERM`] after their last write: the holder
//! writes it again every [`RENEW_EVERY`] by compare-and-set on the revision it wrote, so
//! a holder that stops (killed, cut off from NATS) loses the lease at most `TERM` after
//! its last renewal. A holder whose renewals keep failing for half a term stops, well
//! before another node can take the lease. The value names the holding process (node
//! id and a per-process nonce), so two nodes started from one copied data directory
//! cannot both hold it. A node that stops gracefully hands its leases back
//! ([`Leases::release_all`], after it has let go of what they were for), so another
//! node takes over within about a second instead of when the term runs out.

use super::{open_kv, JetStream};
use crate::store::StoreResult;
use async_nats::jetstream::kv;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub const LEASES_BUCKET: &str = "cirrus_leases";
/// How long a lease lasts without renewal.
pub const TERM: Duration = Duration::from_secs(10);
/// How often a holder renews.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long a holder goes on retrying failed renewals (a failover) before it gives
/// the lease up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(5);
/// How often a node that wants a lease held elsewhere looks again.
const WAIT_BETWEEN_TRIES: Duration = Duration::from_secs(1);
/// How long handing the leases back at shutdown may take, at most.
const RELEASE_WITHIN: Duration = Duration::from_secs(2);

pub struct Leases {
    bucket: kv::Store,
    /// This process's name: its node's id and a nonce, the value of the leases it holds.
    holder: String,
    /// The leases this process holds, by key, with the revision it last wrote.
    held: Mutex<HashMap<String, u64>>,
}

impl Leases {
    pub async fn open(js: &JetStream, replicas: usize, node: String) -> StoreResult<Self> {
        let bucket = open_kv(
            &js.context,
            LEASES_BUCKET,
            "Cirrus leases: which node does what only one node may",
            replicas,
            TERM,
            false,
        )
        .await?;
        let holder = format!("{node}/{}", uuid::Uuid::new_v4().simple());
        Ok(Self {
            bucket,
            holder,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One try at taking `name`: the revision written, or `None` while another process
    /// holds it.
    async fn try_take(&self, name: &str) -> StoreResult<Option<u64>> {
        let key = format!("lease.{name}");
        let current = self.bucket.entry(key.clone()).await?;
        let revision = match current {
            Some(e)
                if e.operation == kv::Operation::Put
                    && e.value.as_ref() != self.holder.as_bytes() =>
            {
                return Ok(None)
            }
            Some(e) => e.revision,
            None => 0,
        };
        match self
            .bucket
            .update(&key, self.holder.clone().into(), revision)
            .await
        {
            Ok(written) => {
                self.held().insert(key, written);
                Ok(Some(written))
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until this node holds `name`; the revision to renew it from.
    pub async fn take(&self, name: &str) -> u64 {
        loop {
            match self.try_take(name).await {
                Ok(Some(revision)) => return revision,
                Ok(None) => {}
                Err(e) => tracing::debug!(lease = name, "taking a lease: {e:#}"),
            }
            tokio::time::sleep(WAIT_BETWEEN_TRIES).await;
        }
    }

    /// Renews `name` (taken at `revision`) until it is lost: another process wrote it,
    /// or renewals failed for [`GIVE_UP_AFTER`]. Then this returns (the holder stops
    /// what the lease was for).
    pub async fn hold(&self, name: &str, revision: u64) {
        let key = format!("lease.{name}");
        self.renew(&key, name, revision).await;
        self.held().remove(&key);
    }

    async fn renew(&self, key: &str, name: &str, mut revision: u64) {
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY.saturating_sub(renewed_at.elapsed())).await;
            let renewal = tokio::time::timeout(
                RENEW_EVERY,
                self.bucket
                    .update(key, self.holder.clone().into(), revision),
            )
            .await;
            let error = match renewal {
                Ok(Ok(written)) => {
                    revision = written;
                    self.held().insert(key.to_owned(), written);
                    renewed_at = tokio::time::Instant::now();
                    continue;
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(lease = name, "lost a lease: another node holds it");
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "NATS did not answer in time".to_owned(),
            };
            if renewed_at.elapsed() >= GIVE_UP_AFTER {
                tracing::warn!(lease = name, "lost a lease: {error}");
                return;
            }
            tracing::debug!(lease = name, "renewing a lease failed, retrying: {error}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Hands back every lease this process holds (graceful shutdown, once what they
    /// were for has stopped): each is deleted if it is still at the revision this
    /// process wrote, so another node takes it at its next look. Bounded by
    /// [`RELEASE_WITHIN`]; a lease not handed back expires as after a crash.
    pub async fn release_all(&self) {
        let held: Vec<(String, u64)> = self.held().drain().collect();
        let releasing = async {
            for (key, revision) in held {
                match self
                    .bucket
                    .delete_expect_revision(&key, Some(revision))
                    .await
                {
                    Ok(()) => tracing::info!(lease = %key, "handed a lease back"),
                    Err(e) => tracing::warn!(lease = %key, "handing a lease back failed: {e}"),
                }
            }
        };
        if tokio::time::timeout(RELEASE_WITHIN, releasing)
            .await
            .is_err()
        {
            tracing::warn!("handing the leases back took too long; they expire instead");
        }
    }
}
