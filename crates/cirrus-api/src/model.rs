//! What the management API returns. Times are RFC 3339 strings in UTC.

use crate::spec::FunctionConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The two guest contracts Cirrus runs (see DESIGN.md, "Function contract").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// A component exporting `wasi:http/incoming-handler`.
    HttpComponent,
    /// A WASI preview-1 command module (CGI-style: stdin in, stdout out).
    Command,
    /// A Lambda deployment package (zip) for a native runtime (Python, Node.js,
    /// `provided`), run as a sandboxed process through the Lambda Runtime API.
    Native,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::HttpComponent => "http_component",
            ArtifactKind::Command => "command",
            ArtifactKind::Native => "native",
        }
    }
}

impl std::str::FromStr for ArtifactKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http_component" => Ok(Self::HttpComponent),
            "command" => Ok(Self::Command),
            "native" => Ok(Self::Native),
            other => Err(format!("unknown artifact kind {other:?}")),
        }
    }
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub function: String,
    pub version: u32,
    pub sha256: String,
    pub kind: ArtifactKind,
    pub size_bytes: u64,
    pub config: FunctionConfig,
    pub created_at: String,
}

/// A function: its newest version (`$LATEST`), how many versions exist and its aliases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub latest: VersionInfo,
    pub versions: u32,
    pub aliases: BTreeMap<String, u32>,
    #[serde(default)]
    pub triggers: Vec<crate::trigger::TriggerInfo>,
}

/// `GET /v1/runtimes`: the runtimes deploys may name on this server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimesInfo {
    /// `wasi` (WebAssembly), then the native Lambda runtimes this host has.
    pub runtimes: Vec<String>,
    /// Why native runtimes are off, when they are.
    pub native_off: Option<String>,
}

/// The answer to a deploy: the function as it now is, and whether a version was created
/// (deploying an unchanged artifact and config is a no-op).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployResult {
    pub function: FunctionInfo,
    pub version: u32,
    pub created: bool,
    /// Time spent compiling the artifact to native code (0 when the cache had it).
    pub compile_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasInfo {
    pub function: String,
    pub alias: String,
    pub version: u32,
}

/// Body of `PUT /v1/functions/{name}/aliases/{alias}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasTarget {
    pub version: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Error,
}

/// What triggered an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A request to `/fn/{name}/...`.
    Http,
    /// `POST /v1/functions/{name}/invoke`.
    Invoke,
    /// An asynchronous event from the durable queue (`X-Cirrus-Invocation-Type: Event`).
    Async,
    /// A message published to a topic the function subscribes to.
    Topic,
    /// A tick of a schedule.
    Schedule,
    /// Another function's result or failure, sent by its `on_success`/`on_failure`.
    Destination,
    /// A change of a KV table.
    Table,
    /// An object created in or removed from a bucket.
    Bucket,
    /// A message from an MQTT broker.
    Mqtt,
    /// A message from NATS (a core subject or a JetStream consumer).
    Nats,
    /// A row changed in a PostgreSQL table.
    Postgres,
}

impl std::str::FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(Self::Http),
            "invoke" => Ok(Self::Invoke),
            "async" => Ok(Self::Async),
            "topic" => Ok(Self::Topic),
            "schedule" => Ok(Self::Schedule),
            "destination" => Ok(Self::Destination),
            "table" => Ok(Self::Table),
            "bucket" => Ok(Self::Bucket),
            "mqtt" => Ok(Self::Mqtt),
            "nats" => Ok(Self::Nats),
            "postgres" => Ok(Self::Postgres),
            other => Err(format!("unknown trigger {other:?}")),
        }
    }
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Invoke => "invoke",
            Trigger::Async => "async",
            Trigger::Topic => "topic",
            Trigger::Schedule => "schedule",
            Trigger::Destination => "destination",
            Trigger::Table => "table",
            Trigger::Bucket => "bucket",
            Trigger::Mqtt => "mqtt",
            Trigger::Nats => "nats",
            Trigger::Postgres => "postgres",
        }
    }
}

/// The record every invocation leaves, successful or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub request_id: String,
    pub function: String,
    pub version: u32,
    pub trigger: Trigger,
    /// 1 for the first try of an event; every retry of it shares the request id.
    pub attempt: u32,
    /// For an event a destination created: the request id of the invocation whose result
    /// (or failure) it carries.
    pub parent_request_id: Option<String>,
    pub started_at: String,
    /// Wall time from admission to the end of the guest's run, in milliseconds.
    pub duration_ms: f64,
    /// Duration rounded up to the next whole millisecond (at least 1), as billed.
    pub billed_ms: u64,
    /// Time spent loading the version first (cold starts only).
    pub init_ms: Option<f64>,
    pub memory_mb: u32,
    pub peak_memory_bytes: u64,
    /// CPU time the invocation took on the host's threads, in milliseconds.
    pub cpu_ms: f64,
    /// Size of the event (request body) and of the response body.
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub cold_start: bool,
    /// W3C trace this invocation belongs to, and the caller's span in it (if it sent a
    /// `traceparent`).
    pub trace_id: String,
    /// This invocation's own span in the trace (the parent of what the guest calls).
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub outcome: Outcome,
    /// HTTP status the caller received.
    pub status: u16,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// A page of a newest-first listing; pass `next` back as `?before=` for the following page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines the platform writes about an invocation (traps, limits).
    Platform,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Platform => "platform",
        }
    }
}

impl std::str::FromStr for LogStream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "stderr" => Ok(Self::Stderr),
            "platform" => Ok(Self::Platform),
            other => Err(format!("unknown log stream {other:?}")),
        }
    }
}

/// One line a guest (or the platform, about the guest) wrote during an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub time: String,
    pub function: String,
    pub version: u32,
    pub request_id: String,
    pub stream: LogStream,
    pub line: String,
}

/// Which version of a function a request names: `name`, `name@3` or `name@prod`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Qualifier {
    Latest,
    Version(u32),
    Alias(String),
}

impl Qualifier {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "" | "$LATEST" | "latest" => Ok(Qualifier::Latest),
            t if t.chars().all(|c| c.is_ascii_digit()) => t
                .parse()
                .map(Qualifier::Version)
                .map_err(|_| format!("version {t:?} is out of range")),
            t => {
                crate::spec::validate_alias(t).map_err(|e| e.message)?;
                Ok(Qualifier::Alias(t.to_owned()))
            }
        }
    }

    /// Splits `name@qualifier` into its parts.
    pub fn split(target: &str) -> Result<(&str, Qualifier), String> {
        match target.split_once('@') {
            Some((name, q)) => Ok((name, Qualifier::parse(q)?)),
            None => Ok((target, Qualifier::Latest)),
        }
    }
}

impl fmt::Display for Qualifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Qualifier::Latest => f.write_str("$LATEST"),
            Qualifier::Version(v) => write!(f, "{v}"),
            Qualifier::Alias(a) => f.write_str(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers() {
        assert_eq!(
            Qualifier::split("hello").unwrap(),
            ("hello", Qualifier::Latest)
        );
        assert_eq!(
            Qualifier::split("hello@3").unwrap(),
            ("hello", Qualifier::Version(3))
        );
        assert_eq!(
            Qualifier::split("hello@prod").unwrap(),
            ("hello", Qualifier::Alias("prod".into()))
        );
        assert_eq!(
            Qualifier::split("hello@$LATEST").unwrap(),
            ("hello", Qualifier::Latest)
        );
        assert!(Qualifier::split("hello@a/b").is_err());
        assert!(Qualifier::parse("99999999999").is_err());
    }
}

/// Live state of the server (`GET /v1/status`), for dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub in_flight: usize,
    pub loaded_versions: usize,
    pub pooling_allocator: bool,
    /// Asynchronous events waiting or being delivered, and in the dead-letter queue.
    pub queued_events: u64,
    pub dead_events: u64,
    pub functions: Vec<FunctionStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionStatus {
    pub name: String,
    /// Versions loaded now (warm); empty means scaled to zero.
    pub loaded: Vec<u32>,
    pub in_flight: usize,
    /// Execution environments alive now (busy or idle), and how many of them are idle.
    #[serde(default)]
    pub environments: usize,
    #[serde(default)]
    pub idle_environments: usize,
}

/// The answer to an asynchronous invoke: the event is durable and will be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub request_id: String,
    /// True when an idempotency key matched an event accepted earlier.
    pub duplicate: bool,
}

/// An event in the dead-letter queue, with why it got there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadEvent {
    pub request_id: String,
    pub function: String,
    pub qualifier: String,
    pub attempts: u32,
    pub accepted_at: String,
    pub failed_at: String,
    pub last_error: String,
    pub content_type: Option<String>,
    pub size_bytes: u64,
    /// The event body, when it is UTF-8 text (in `GET /v1/dlq/{id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// How many events an operation touched (redrive, purge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affected {
    pub count: u64,
}

/// A row of a KV table (`GET /v1/kv/{table}` lists these; the value itself is the body of
/// `GET /v1/kv/{table}/{key}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub table: String,
    pub key: String,
    /// Starts at 1 and grows by one with every write; conditional writes name it.
    pub version: u64,
    pub content_type: Option<String>,
    pub size_bytes: u64,
    pub updated_at: String,
}

/// A bucket of the object store (`GET /v1/buckets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketInfo {
    pub name: String,
    pub created_at: String,
}

/// An object's metadata (`GET /v1/buckets/{bucket}/objects` lists these; the bytes are
/// the body of `GET /v1/buckets/{bucket}/objects/{key}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// The MD5 of the bytes in hex, or S3's `…-N` form for multipart uploads.
    pub etag: String,
    pub content_type: Option<String>,
    pub last_modified: String,
}
