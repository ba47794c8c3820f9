//! The audit log: every management action that changes something (and every refused
//! attempt at one), with who made it, what it was, when, and how it ended. Writing is
//! off the request path; a write that fails is logged, never turned into a failed
//! request (the action already happened).

use crate::clock::Clock;
use crate::store::{AccessStore, AuditEntry};
use std::sync::Arc;

pub struct Audit {
    store: Arc<dyn AccessStore>,
    clock: Arc<dyn Clock>,
}

impl Audit {
    pub fn new(store: Arc<dyn AccessStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Whether a request of this method is an action worth recording (reads are not).
    pub fn records(method: &axum::http::Method) -> bool {
        !matches!(
            *method,
            axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
        )
    }

    pub fn record(&self, actor: &str, method: &str, path: &str, status: u16) {
        let entry = AuditEntry {
            seq: 0,
            time_ms: self.clock.now_ms(),
            actor: actor.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            status,
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.append_audit(&entry).await {
                tracing::error!(
                    actor = %entry.actor,
                    method = %entry.method,
                    path = %entry.path,
                    "writing the audit log failed: {e:#}"
                );
            }
        });
    }

    /// The newest entries first.
    pub async fn list(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<cirrus_api::access::AuditRecord>> {
        Ok(self
            .store
            .audit(before, limit)
            .await?
            .into_iter()
            .map(|e| cirrus_api::access::AuditRecord {
                seq: e.seq,
                time: crate::clock::rfc3339(e.time_ms),
                actor: e.actor,
                method: e.method,
                path: e.path,
                status: e.status,
            })
            .collect())
    }
}
