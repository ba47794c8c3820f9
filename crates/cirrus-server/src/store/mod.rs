//! The storage seam. Each trait is one role; the embedded implementations
//! ([`SqliteStore`], [`FsArtifactStore`]) sit beside them, and a cluster implementation
//! (NATS JetStream) will arrive behind the same traits.

mod fs_artifacts;
mod sqlite;

pub use fs_artifacts::FsArtifactStore;
pub use sqlite::SqliteStore;

use cirrus_api::{InvocationRecord, LogLine, Page, VersionInfo};
use std::path::PathBuf;

pub type StoreResult<T> = anyhow::Result<T>;

/// A function as stored: every version (oldest first) and its aliases.
#[derive(Debug, Clone)]
pub struct StoredFunction {
    pub name: String,
    pub versions: Vec<VersionInfo>,
    pub aliases: Vec<(String, u32)>,
}

/// Function metadata. Read whole at start-up (the registry serves reads from memory);
/// written on every management change, before the change is acknowledged.
pub trait FunctionStore: Send + Sync + 'static {
    /// Called once at start-up.
    fn load_all(&self) -> StoreResult<Vec<StoredFunction>>;
    /// Called when a deploy creates a version.
    fn insert_version(&self, version: &VersionInfo) -> StoreResult<()>;
    /// Called when a function is deleted: its versions and aliases go; its records stay.
    fn delete_function(&self, name: &str) -> StoreResult<()>;
    /// Called when an alias is created or moved.
    fn set_alias(&self, function: &str, alias: &str, version: u32) -> StoreResult<()>;
    /// Called when an alias is deleted.
    fn delete_alias(&self, function: &str, alias: &str) -> StoreResult<()>;
}

/// Uploaded artifacts, content-addressed by sha256.
pub trait ArtifactStore: Send + Sync + 'static {
    /// Called at deploy, after validation; durable when it returns. Idempotent.
    fn put(&self, sha256: &str, bytes: &[u8]) -> StoreResult<()>;
    /// Where the runtime reads an artifact from when it must recompile.
    fn path(&self, sha256: &str) -> PathBuf;
}

/// Usage of one function in one hour (UTC), summed by the store in integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyUsage {
    pub function: String,
    /// `YYYY-MM-DDTHH`
    pub hour: String,
    pub requests: u64,
    pub errors: u64,
    pub cold_starts: u64,
    pub billed_ms: u64,
    /// Billed milliseconds × configured MiB, summed: GB-seconds × 1,024,000.
    pub mib_ms: u64,
    pub cpu_us: u64,
}

/// Invocation records and logs. Written in batches by the record writer, never on a
/// request path; read by the management API.
pub trait RecordStore: Send + Sync + 'static {
    /// Called by the record writer with everything that arrived since its last batch.
    fn write_batch(&self, records: &[InvocationRecord], logs: &[LogLine]) -> StoreResult<()>;
    /// Newest first; `before` is the `next` cursor of the previous page.
    fn invocations(
        &self,
        function: &str,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<InvocationRecord>>;
    /// Newest `limit` lines of a function (optionally one request), returned oldest first.
    fn logs(
        &self,
        function: &str,
        request_id: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<LogLine>>;
    /// Usage per function and hour of invocations started in `[from, to)` (RFC 3339,
    /// UTC, milliseconds), including functions since deleted.
    fn hourly_usage(&self, from: &str, to: &str) -> StoreResult<Vec<HourlyUsage>>;
}
