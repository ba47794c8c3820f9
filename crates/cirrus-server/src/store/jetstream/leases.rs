//! Leases: one node of the cluster at a time does a thing (holds an MQTT trigger's
//! session), and another takes over when it stops. A lease is a key of the KV bucket
//! `cirrus_leases`, whose entries expire [`TERM`] after their last write: the holder
//! writes it again every [`RENEW_EVERY`] by compare-and-set on the revision it wrote, so
//! a holder that stops (killed, cut off from NATS) loses the lease at most `TERM` after
//! its last renewal. A holder whose renewals keep failing for half a term stops, well
//! before another node can take the lease. The value names the holding process (node
//! id and a per-process nonce), so two nodes started from one copied data directory
//! cannot both hold it.

use super::{open_kv, JetStream};
use crate::store::StoreResult;
use async_nats::jetstream::kv;
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

pub struct Leases {
    bucket: kv::Store,
    /// This process's name: its node's id and a nonce, the value of the leases it holds.
    holder: String,
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
        Ok(Self { bucket, holder })
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
            Ok(written) => Ok(Some(written)),
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
    pub async fn hold(&self, name: &str, mut revision: u64) {
        let key = format!("lease.{name}");
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY.saturating_sub(renewed_at.elapsed())).await;
            let renewal = tokio::time::timeout(
                RENEW_EVERY,
                self.bucket
                    .update(&key, self.holder.clone().into(), revision),
            )
            .await;
            let error = match renewal {
                Ok(Ok(written)) => {
                    revision = written;
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
}
