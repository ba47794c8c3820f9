//! The Cirrus server: everything between a socket and the runtime.
//!
//! - [`server`]: assembling the pieces, serving, graceful shutdown.
//! - [`connections`]: how both listeners accept and serve connections (caps, header and
//!   idle timeouts, eviction of idle connections at the cap); [`fd_limit`]: the
//!   open-file limit that sizes the caps.
//! - [`api`]: the HTTP gateway (management API under `/v1`, HTTP triggers under `/fn`).
//! - [`invoker`]: the one place an invocation is executed and recorded.
//! - [`queue`]: durable asynchronous invocation: group-committed enqueue, dispatcher,
//!   retries with backoff, dead-letter queue.
//! - [`lineage`]: what an invocation descends from; the depth, width and time limits
//!   that stop functions calling or triggering themselves forever.
//! - [`scheduler`]: schedule triggers (rate and cron) firing durable events.
//! - [`scaler`]: admission, loading, idle unloading; [`admission`]: the server's
//!   invocation capacity shared fairly (reservations, fair shares, per-function queues).
//! - [`registry`]: functions, versions, aliases; deploy logic.
//! - [`billing`]: price tables and usage reports (exact decimals).
//! - [`metrics`]: Prometheus metrics.
//! - [`s3`]: the S3-compatible object API on its own listener, and bucket notifications.
//! - [`records`]: batched, off-request-path writing of invocation records and logs.
//! - [`retention`]: background pruning of records, logs, dead letters and abandoned
//!   uploads, with usage rolled up first.
//! - [`store`]: the storage traits, their embedded (SQLite + files) implementations and
//!   the cluster ones (NATS JetStream).
//! - [`trace`]: W3C trace context; [`otlp`]: optional span export.
//! - [`cluster`]: what a node does differently in cluster mode (NATS JetStream).
//! - [`auth`], [`clock`], [`error`]: the admin token, injectable time, error answers.

pub mod admission;
pub mod api;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod clock;
pub mod cloudevents;
pub mod cluster;
pub mod connections;
pub mod cors;
pub mod environments;
pub mod error;
pub mod fd_limit;
pub mod function_token;
#[doc(hidden)]
pub mod fuzzing;
pub mod invoker;
pub mod keys;
pub mod lambda;
pub mod lineage;
pub mod metrics;
pub mod otlp;
pub mod queue;
pub mod records;
pub mod registry;
pub mod retention;
pub mod s3;
pub mod scaler;
pub mod secrets;
pub mod server;
pub mod sigv4;
pub mod sources;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub mod trace;
pub mod webhooks;

pub use clock::{Clock, ManualClock, SystemClock};
pub use server::{Server, ServerConfig};
