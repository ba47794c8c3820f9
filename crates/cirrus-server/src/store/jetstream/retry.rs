//! Waiting out what JetStream briefly cannot do: a NATS cluster electing its first
//! leader while nodes start, or a stream electing a new one after losing a server.

use crate::store::StoreResult;
use std::time::Duration;

/// How long a write or read keeps trying while a stream fails over: the caller waits
/// instead of failing.
pub const FAILOVER: Duration = Duration::from_secs(20);
/// How long a starting node waits for JetStream to take its streams.
pub const FORMING: Duration = Duration::from_secs(30);

/// Runs `attempt` until it succeeds or `limit` has passed, logging each failure.
pub async fn within<T, E, F>(
    limit: Duration,
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("{what}: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// An idempotent write (or read) through a failover, its last error given `what`.
pub async fn retried<T, E, F>(what: &str, attempt: impl FnMut() -> F) -> StoreResult<T>
where
    E: std::error::Error + Send + Sync + 'static,
    F: std::future::Future<Output = Result<T, E>>,
{
    within(FAILOVER, what, attempt)
        .await
        .map_err(|e| anyhow::Error::new(e).context(what.to_owned()))
}
