//! Cluster mode: what a node does differently when its shared state is in NATS
//! JetStream (`cirrus up --cluster`).
//!
//! Shared: function metadata (deploys, aliases, triggers), artifacts, schedule ticks,
//! the cluster's credentials, invocation records and logs (every node keeps all of
//! them), secrets, API keys, the audit log, the event queue, KV tables, buckets and
//! objects.
//!
//! A node that has lost NATS refuses writes of shared state with 503 (they could not be
//! stored) and serves invocations of what it already knows; it reconnects by itself.

use crate::store::jetstream::JetStream;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cirrus_api::{ApiError, ErrorCode};
use std::sync::Arc;

pub struct Cluster {
    pub store: JetStream,
    /// This node's name in the cluster (kept in `<data-dir>/node.id`).
    pub node: String,
}

/// This node's name: made once, kept in the data dir, so that after a restart the node
/// still recognises the records it published itself.
pub fn node_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    crate::auth::replace_private_file(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// A request that changes state stored in NATS.
fn writes_shared_state(method: &Method, path: &str) -> bool {
    let reads = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    !reads
        && !path.ends_with("/invoke")
        && !path.ends_with("invocations")
        && (path.starts_with("/v1/functions")
            || path.starts_with("/v1/triggers")
            || path.starts_with("/v1/kv")
            || path.starts_with("/v1/dlq")
            || path.starts_with("/v1/buckets")
            || path.starts_with("/20"))
}

/// The answer to a write while NATS is unreachable.
const NATS_LOST: &str = "this node has lost its connection to NATS, where the cluster's state is kept: changes are refused until it reconnects (it does so by itself); invocations of deployed functions go on";

/// The main and dashboard listeners' guard in cluster mode.
pub async fn guard(State(cluster): State<Arc<Cluster>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if writes_shared_state(request.method(), path) && !cluster.store.connected() {
        return crate::error::Failure::from(ApiError::new(ErrorCode::Unavailable, NATS_LOST))
            .into_response();
    }
    next.run(request).await
}

/// The S3 listener's guard in cluster mode: every write is of shared state.
pub async fn s3_guard(
    State(cluster): State<Arc<Cluster>>,
    request: Request,
    next: Next,
) -> Response {
    let reads = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !reads && !cluster.store.connected() {
        return crate::s3::error::S3Error::unavailable(NATS_LOST).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_state_writes_are_told_from_reads_and_invocations() {
        assert!(writes_shared_state(&Method::PUT, "/v1/buckets/b"));
        assert!(writes_shared_state(&Method::PUT, "/v1/kv/orders/a"));
        assert!(!writes_shared_state(&Method::GET, "/v1/kv/orders/a"));
        assert!(writes_shared_state(&Method::PUT, "/v1/functions/f"));
        assert!(!writes_shared_state(
            &Method::POST,
            "/v1/functions/f/invoke"
        ));
        assert!(!writes_shared_state(&Method::GET, "/v1/functions"));
        assert!(writes_shared_state(&Method::DELETE, "/v1/triggers/t"));
        assert!(writes_shared_state(&Method::POST, "/2015-03-31/functions"));
        assert!(!writes_shared_state(
            &Method::POST,
            "/2015-03-31/functions/f/invocations"
        ));
    }
}
