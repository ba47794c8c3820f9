//! Leases: one node of the cluster at a time does a thing (holds an MQTT trigger's
//! session), and another takes over when it stops. A lease is a key of the KV bucket
//! `cirrus_leases`, whose entries expire [`TERM`] after their last write: the holder
//! writes it again every [`RENEW_EVERY`] by compare-and-set on the revision it wrote, so
//! a holder that stops (killed, cut off from NATS) loses the lease at most `TERM` after
//! its last renewal, and a holder whose renewal fails stops at once, well before
//! another node can take the lease.

use super::{open_kv, JetStream};
use crate::store::StoreResult;
use async_nats::jetstream::kv;
use std::time::Duration;

pub const LEASES_BUCKET: &str = "cirrus_leases";
/// How long a lease lasts without renewal.
pub const TERM: Duration = Duration::from_secs(10);
/// How often a holder renews: a renewal may fail twice (and be retried) within a term.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often a node that wants a lease held elsewhere looks again.
const WAIT_BETWEEN_TRIES: Duration = Duration::from_secs(1);

pub struct Leases {
    bucket: kv::Store,
    /// This node's name, the value of the leases it holds.
    node: String,
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
        Ok(Self { bucket, node })
    }

    /// One try at taking `name`: the revision written, or `None` while another node
    /// holds it. A lease this node held before a restart is taken again at once.
    async fn try_take(&self, name: &str) -> StoreResult<Option<u64>> {
        let key = format!("lease.{name}");
        let current = self.bucket.entry(key.clone()).await?;
        let revision = match current {
            Some(e)
                if e.operation == kv::Operation::Put
                    && e.value.as_ref() != self.node.as_bytes() =>
            {
                return Ok(None)
            }
            Some(e) => e.revision,
            None => 0,
        };
        match self
            .bucket
            .update(&key, self.node.clone().into(), revision)
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

    /// Renews `name` (taken at `revision`) until a renewal fails; then it is lost, and
    /// this returns (the holder stops what the lease was for).
    pub async fn hold(&self, name: &str, mut revision: u64) {
        let key = format!("lease.{name}");
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            let renewed = tokio::time::timeout(
                RENEW_EVERY,
                self.bucket.update(&key, self.node.clone().into(), revision),
            )
            .await;
            match renewed {
                Ok(Ok(written)) => revision = written,
                Ok(Err(e)) => {
                    tracing::warn!(lease = name, "lost a lease: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(lease = name, "lost a lease: NATS did not answer in time");
                    return;
                }
            }
        }
    }
}
