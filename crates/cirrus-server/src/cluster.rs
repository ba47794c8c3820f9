//! Cluster mode: what a node does differently when its shared state is in NATS
//! JetStream (`cirrus up --cluster`).
//!
//! Shared today: function metadata (deploys, aliases, triggers), artifacts, schedule
//! ticks, the cluster's credentials, invocation records and logs (every node keeps all
//! of them), secrets, API keys, the audit log, the event queue and KV tables. Not yet
//! shared, so refused here with 501 instead of answering from one node's disk: buckets
//! and objects (the S3 API and `/v1/buckets`).
//!
//! A node that has lost NATS refuses management writes with 503 (they could not be
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

/// Path prefixes whose state cluster mode does not share yet.
const NOT_SHARED: &[(&str, &str)] = &[("/v1/buckets", "buckets and objects")];

fn not_shared(path: &str) -> Option<&'static str> {
    NOT_SHARED
        .iter()
        .find(|(prefix, _)| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .map(|(_, what)| *what)
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
            || path.starts_with("/20"))
}

/// The main and dashboard listeners' guard in cluster mode.
pub async fn guard(State(cluster): State<Arc<Cluster>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if let Some(what) = not_shared(path) {
        return crate::error::Failure::from(ApiError::new(
            ErrorCode::NotImplemented,
            format!("{what} are not shared between cluster nodes yet: cluster mode refuses them rather than answer from one node's disk; run a single node (without --cluster) to use them"),
        ))
        .into_response();
    }
    if writes_shared_state(request.method(), path) && !cluster.store.connected() {
        return crate::error::Failure::from(ApiError::new(
            ErrorCode::Unavailable,
            "this node has lost its connection to NATS, where the cluster's state is kept: changes are refused until it reconnects (it does so by itself); invocations of deployed functions go on",
        ))
        .into_response();
    }
    next.run(request).await
}

/// The S3 listener's answer in cluster mode: objects are not shared yet.
pub async fn s3_refused(request: Request) -> Response {
    crate::s3::error::S3Error::not_implemented(&format!(
        "{} {}: the S3 API in cluster mode (objects are not shared between nodes yet)",
        request.method(),
        request.uri().path()
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshared_state_is_named_by_whole_path_segments() {
        assert_eq!(not_shared("/v1/buckets/b/k"), Some("buckets and objects"));
        assert_eq!(not_shared("/v1/buckets"), Some("buckets and objects"));
        assert_eq!(not_shared("/v1/bucketsx"), None);
        assert_eq!(not_shared("/v1/kv/orders/a"), None);
        assert!(writes_shared_state(&Method::PUT, "/v1/kv/orders/a"));
        assert!(!writes_shared_state(&Method::GET, "/v1/kv/orders/a"));
        assert_eq!(not_shared("/v1/functions/f"), None);
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
