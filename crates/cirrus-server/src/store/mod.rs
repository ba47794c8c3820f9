//! The storage seam. Each trait is one role; the embedded implementations
//! ([`SqliteStore`], [`FsArtifactStore`]) and the cluster ones ([`jetstream`]) sit
//! beside them. [`conformance`] holds the tests every backend must pass.

mod artifact_cache;
#[cfg(test)]
mod conformance;
mod fs_artifacts;
pub mod jetstream;
mod sqlite;

pub use artifact_cache::ArtifactCache;
pub use fs_artifacts::FsArtifactStore;
pub use sqlite::SqliteStore;

use cirrus_api::{DeadEvent, InvocationRecord, KvEntry, LogLine, Page, VersionInfo};

pub type StoreResult<T> = anyhow::Result<T>;

/// A function as stored: every version (oldest first) and its aliases.
#[derive(Debug, Clone)]
pub struct StoredFunction {
    pub name: String,
    pub versions: Vec<VersionInfo>,
    pub aliases: Vec<(String, u32)>,
    pub triggers: Vec<cirrus_api::TriggerInfo>,
}

/// Where a metadata change stands in its store's history: every write's revision is
/// higher than the revision of every write before it (in SQLite a counter, in JetStream
/// the KV bucket's stream sequence), so a reader can tell an old change from a new one.
pub type Revision = u64;

/// One metadata key changed, as the change feed reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaChange {
    Version(Box<VersionInfo>),
    VersionGone {
        function: String,
        version: u32,
    },
    Alias {
        function: String,
        alias: String,
        version: u32,
    },
    AliasGone {
        function: String,
        alias: String,
    },
    Trigger(Box<cirrus_api::TriggerInfo>),
    TriggerGone {
        function: String,
        id: String,
    },
}

impl MetaChange {
    /// The key this change is about: revisions are compared per key.
    pub fn key(&self) -> String {
        match self {
            Self::Version(v) => version_key(&v.function, v.version),
            Self::VersionGone { function, version } => version_key(function, *version),
            Self::Alias {
                function, alias, ..
            }
            | Self::AliasGone { function, alias } => alias_key(function, alias),
            Self::Trigger(t) => trigger_key(&t.function, &t.id),
            Self::TriggerGone { function, id } => trigger_key(function, id),
        }
    }
}

/// The key names both backends use (JetStream stores under exactly these).
pub fn version_key(function: &str, version: u32) -> String {
    format!("fn.{function}.v.{version}")
}

pub fn alias_key(function: &str, alias: &str) -> String {
    format!("fn.{function}.alias.{alias}")
}

pub fn trigger_key(function: &str, id: &str) -> String {
    format!("fn.{function}.trigger.{id}")
}

/// A change with its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Revised {
    pub revision: Revision,
    pub change: MetaChange,
}

/// The metadata change feed: every change any writer commits, in commit order. A
/// receiver that fell behind gets [`Lagged`] and must read everything again.
pub type MetaFeed = futures_util::stream::BoxStream<'static, Result<Revised, Lagged>>;

/// The feed dropped changes this receiver had not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged;

/// A deploy numbered a version another writer (another node) created first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionTaken;

/// Function metadata. Read whole at start-up (the registry serves reads from memory);
/// written on every management change, before the change is acknowledged; watched, so
/// that a change one node makes reaches every node's registry.
#[async_trait::async_trait]
pub trait FunctionStore: Send + Sync + 'static {
    /// Called once at start-up.
    async fn load_all(&self) -> StoreResult<Vec<StoredFunction>>;
    /// Changes committed from now on, by any writer.
    async fn watch(&self) -> StoreResult<MetaFeed>;
    /// Called when a deploy creates a version; refused if the version exists.
    async fn insert_version(
        &self,
        version: &VersionInfo,
    ) -> StoreResult<Result<Revision, VersionTaken>>;
    /// Called when a function is deleted: its versions, aliases and triggers go; its
    /// records stay. The revision of the last of its keys to go.
    async fn delete_function(&self, name: &str) -> StoreResult<Revision>;
    /// Called when an alias is created or moved.
    async fn set_alias(&self, function: &str, alias: &str, version: u32) -> StoreResult<Revision>;
    /// Called when an alias is deleted.
    async fn delete_alias(&self, function: &str, alias: &str) -> StoreResult<Revision>;
    /// Called when a trigger is added.
    async fn insert_trigger(&self, trigger: &cirrus_api::TriggerInfo) -> StoreResult<Revision>;
    /// Called when a trigger is removed.
    async fn delete_trigger(&self, function: &str, id: &str) -> StoreResult<Revision>;
    /// When each schedule last fired (by trigger id).
    async fn schedule_marks(&self) -> StoreResult<Vec<(String, u64)>>;
    /// Moves a schedule's mark from `previous` (what the caller read; `None`: never
    /// fired) to `fired_ms`, only if it is still `previous`: of several nodes, exactly
    /// one claims each tick. `false` when another writer moved it first.
    async fn claim_schedule_tick(
        &self,
        trigger_id: &str,
        previous: Option<u64>,
        fired_ms: u64,
    ) -> StoreResult<bool>;
}

/// Uploaded artifacts, content-addressed by sha256. Read through the store: a node
/// keeps a local copy only as a cache ([`ArtifactCache`]).
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Called at deploy, after validation; durable when it returns. Idempotent.
    async fn put(&self, sha256: &str, bytes: bytes::Bytes) -> StoreResult<()>;
    /// The artifact's bytes, `None` if the store has none under that digest.
    async fn get(&self, sha256: &str) -> StoreResult<Option<bytes::Bytes>>;
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
    /// Cluster mode: the stream sequence of the last batch another node's records came
    /// in (0: none yet); the replica resumes after it.
    fn replication_mark(&self) -> StoreResult<u64>;
    /// Cluster mode: writes another node's batch, which came as stream message `seq`,
    /// and moves the mark to it in the same transaction; `false` (writing nothing) if
    /// the mark is already there, so a batch delivered twice is written once.
    fn write_replicated(
        &self,
        seq: u64,
        records: &[InvocationRecord],
        logs: &[LogLine],
    ) -> StoreResult<bool>;
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
    /// Every invocation of a trace (a request and the events it led to), oldest first.
    fn trace(&self, trace_id: &str) -> StoreResult<Vec<InvocationRecord>>;
    /// The trace a request id belongs to.
    fn trace_of(&self, request_id: &str) -> StoreResult<Option<String>>;
    /// Usage per function and hour of invocations started in `[from, to)` (RFC 3339,
    /// UTC, milliseconds), including functions since deleted. Pruned records count by
    /// their hour's sums: an hour whose start is in `[from, to)`.
    fn hourly_usage(&self, from: &str, to: &str) -> StoreResult<Vec<HourlyUsage>>;
}

/// Which invocation records the pruner removes: those that started before a time, and
/// those older than the newest `keep` (by arrival).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRule {
    /// RFC 3339 (UTC, milliseconds), as `started_at` is stored.
    pub started_before: Option<String>,
    pub keep: Option<u64>,
}

/// What one call of [`RetentionStore::prune_records`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrunedRecords {
    pub records: u64,
    pub log_lines: u64,
}

impl std::ops::AddAssign for PrunedRecords {
    fn add_assign(&mut self, other: Self) {
        self.records += other.records;
        self.log_lines += other.log_lines;
    }
}

/// What the background pruner (`retention.rs`) removes. Each call does one small batch
/// in one short transaction, so no call holds the database's write lock for long; the
/// pruner calls again until a call finds nothing.
pub trait RetentionStore: Send + Sync + 'static {
    /// Removes up to about `limit` of the oldest records the rule selects, with the log
    /// lines of their requests. Their usage is added to the hourly roll-up in the same
    /// transaction, so [`RecordStore::hourly_usage`] answers the same before and after.
    fn prune_records(&self, rule: &RecordRule, limit: usize) -> StoreResult<PrunedRecords>;
    /// Removes up to `limit` of the oldest log lines beyond the newest `keep`.
    fn prune_log_lines(&self, keep: u64, limit: usize) -> StoreResult<u64>;
    /// Removes up to `limit` dead-letter events that failed before `failed_before_ms`.
    fn prune_dead_letters(&self, failed_before_ms: u64, limit: usize) -> StoreResult<u64>;
    /// Removes up to `limit` audit entries written before `before_ms`.
    fn prune_audit(&self, before_ms: u64, limit: usize) -> StoreResult<u64>;
    /// Removes up to `limit` multipart uploads started before `created_before_ms` and
    /// never completed or aborted, with their parts; returns each upload's id and part
    /// blobs, which the caller deletes (as an abort does).
    fn expire_uploads(
        &self,
        created_before_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<(String, Vec<String>)>>;
    /// Gives up to `max_pages` free pages back to the file system, keeping an eighth of
    /// the database free for reuse; returns how many were given back.
    fn release_free_pages(&self, max_pages: u64) -> StoreResult<u64>;
}

/// An event accepted for asynchronous delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The request id every attempt's invocation record carries; also the CloudEvent id.
    pub id: String,
    pub function: String,
    /// `$LATEST`, a version number or an alias, resolved at each attempt.
    pub qualifier: String,
    pub content_type: Option<String>,
    pub traceparent: Option<String>,
    /// CloudEvents `type` and `source`; default to an asynchronous invoke's.
    pub event_type: Option<String>,
    pub source: Option<String>,
    /// CloudEvents `subject`: what in the source the event is about (an MQTT topic).
    pub subject: Option<String>,
    /// Set for a webhook destination's POST: the event goes to this URL, not to
    /// `function` (the function whose result it carries).
    pub webhook: Option<String>,
    /// The invocation that caused this event (whose result, failure or write it carries).
    pub parent_id: Option<String>,
    /// The request the event's lineage started with; `None` when nothing inside Cirrus
    /// caused the event (it starts a lineage of its own). Events with a root count
    /// against that lineage's event budget.
    pub root_id: Option<String>,
    /// Events with the same ordering key are delivered one at a time, in order.
    pub ordering_key: Option<String>,
    /// Steps between this event and the request its lineage started with.
    pub hops: u32,
    /// What produced the event: async invoke, topic, schedule or destination.
    pub trigger: cirrus_api::Trigger,
    pub data: Vec<u8>,
    pub created_ms: u64,
    pub idempotency_key: Option<String>,
}

/// An event claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub event: NewEvent,
    /// Attempts including the one now starting.
    pub attempts: u32,
}

/// What enqueueing one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    New,
    /// The idempotency key matched this earlier event, which stands.
    Duplicate(String),
}

/// The durable queue of asynchronous events. Writes are committed before they return:
/// an event is acknowledged only once it is stored. Each backend owns its blocking
/// (SQLite runs its calls on blocking threads; JetStream's are network requests).
#[async_trait::async_trait]
pub trait EventQueue: Send + Sync + 'static {
    /// Called by the enqueue writer with a batch, committed together; keys seen within
    /// `idempotency_window_ms` are duplicates. Every way of queueing events (this, KV
    /// writes, object changes) counts an event with a `root_id` against that lineage
    /// in the same commit; past the store's lineage budget the event is recorded dead,
    /// with the reason, instead of pending.
    async fn enqueue(
        &self,
        events: Vec<NewEvent>,
        now_ms: u64,
        idempotency_window_ms: u64,
    ) -> StoreResult<Vec<Enqueued>>;
    /// `enqueue` on the calling thread, which may block, where the backend's work is
    /// blocking anyway (SQLite); `None` where it is not (then `enqueue`). The enqueue
    /// writer's own thread uses it: a hop to the blocking pool per commit, among the
    /// deliveries' updates, cut SQLite's accepted events from about 18,000 to 2,600 a
    /// second (`scripts/bench-cluster`).
    fn enqueue_on_this_thread(
        &self,
        _events: &[NewEvent],
        _now_ms: u64,
        _idempotency_window_ms: u64,
    ) -> Option<StoreResult<Vec<Enqueued>>> {
        None
    }
    /// Called once at start-up: events that were running when the server stopped are
    /// ready again (at-least-once delivery). Returns how many.
    async fn recover(&self) -> StoreResult<u64>;
    /// Called by the dispatcher: marks up to `limit` events ready at `now_ms` as running,
    /// counting an attempt, oldest first.
    async fn claim(&self, now_ms: u64, limit: usize) -> StoreResult<Vec<QueuedEvent>>;
    /// The event was delivered: it leaves the queue (its records remain).
    async fn complete(&self, id: &str) -> StoreResult<()>;
    /// Try again at `not_before_ms`; `count_attempt = false` gives back the attempt
    /// (the function was only busy).
    async fn retry(
        &self,
        id: &str,
        not_before_ms: u64,
        error: &str,
        count_attempt: bool,
    ) -> StoreResult<()>;
    /// Attempts are exhausted or the event expired: park it in the dead-letter queue.
    async fn kill(&self, id: &str, now_ms: u64, error: &str) -> StoreResult<()>;
    /// Replaces an event's body (a batch narrowed to its failed records).
    async fn set_data(&self, id: &str, data: Vec<u8>) -> StoreResult<()>;
    /// When the earliest waiting event becomes ready, if any is waiting.
    async fn next_ready_ms(&self) -> StoreResult<Option<u64>>;
    /// Events waiting or running, and events in the dead-letter queue.
    async fn depth(&self) -> StoreResult<(u64, u64)>;
    /// Dead-letter queue, newest failure first.
    async fn dead(&self, function: Option<&str>, limit: usize) -> StoreResult<Vec<DeadEvent>>;
    /// One dead event with its body.
    async fn dead_event(&self, id: &str) -> StoreResult<Option<(DeadEvent, Vec<u8>)>>;
    /// Dead events (one, or all of a function, or all) go back to the queue with fresh
    /// attempts and age, and their lineages with a fresh event budget.
    async fn redrive(
        &self,
        id: Option<&str>,
        function: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<u64>;
    /// Dead events (one, or all of a function, or all) are deleted.
    async fn purge(&self, id: Option<&str>, function: Option<&str>) -> StoreResult<u64>;
    /// Called periodically: forgets the event counts of lineages that created nothing
    /// since `idle_since_ms`. Returns how many.
    async fn forget_lineages(&self, idle_since_ms: u64) -> StoreResult<u64>;
}

/// A KV write: the precondition it needs and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCondition {
    /// Unconditional.
    Any,
    /// Only if the key does not exist.
    Absent,
    /// Only if the key is at this version.
    Version(u64),
}

/// The outcome of a KV write: the entry now (or as deleted), its old value, and its
/// change events, already committed in the same transaction.
#[derive(Debug, Clone)]
pub enum KvWrite {
    Done(KvEntry),
    /// The precondition failed; the current version, if the key exists.
    Conflict(Option<u64>),
    /// Delete of a missing key.
    Missing,
    /// The value is larger than this store holds (bytes): nothing was written.
    TooLarge(usize),
}

/// What a KV write's change events are made from: the row before and after it (each
/// `None` when there is none), called by the store with the rows it read and wrote.
pub type KvEvents = Box<KvEventsFn>;
pub type KvEventsFn =
    dyn Fn(Option<(&KvEntry, &[u8])>, Option<(&KvEntry, &[u8])>) -> Vec<NewEvent> + Send + Sync;

/// KV tables, in the same database as the event queue so that a change and the events
/// it causes commit together.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Writes `(value, content type)` (or deletes, with `None`) and queues
    /// `events(old, new)` with it.
    async fn kv_write(
        &self,
        table: &str,
        key: &str,
        value: Option<(Vec<u8>, Option<String>)>,
        condition: KvCondition,
        now_ms: u64,
        events: KvEvents,
    ) -> StoreResult<KvWrite>;
    async fn kv_get(&self, table: &str, key: &str) -> StoreResult<Option<(KvEntry, Vec<u8>)>>;
    /// Keys in order, after `after`, starting with `prefix`.
    async fn kv_list(
        &self,
        table: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<KvEntry>>;
}

/// An object's metadata as stored; its bytes are in the blob file `blob`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Without quotes: the MD5 in hex, or `md5-of-part-md5s-N` for multipart objects.
    pub etag: String,
    pub content_type: Option<String>,
    /// `x-amz-meta-*` headers, names without the prefix.
    pub metadata: Vec<(String, String)>,
    /// The checksum the client sent and the server verified: `(algorithm, base64)`.
    pub checksum: Option<(String, String)>,
    pub modified_ms: u64,
    pub blob: String,
    /// For an object completed from a multipart upload, the sizes of its parts in order
    /// (GET `?partNumber=N`); empty otherwise.
    pub parts: Vec<u64>,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Upload {
    pub id: String,
    pub bucket: String,
    pub key: String,
    pub content_type: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub checksum_algorithm: Option<String>,
    /// `COMPOSITE` (a checksum of the parts' checksums) or `FULL_OBJECT`.
    pub checksum_type: Option<String>,
    pub created_ms: u64,
}

/// What a completed multipart upload answered, kept for a day so that a client retrying
/// CompleteMultipartUpload after a lost response gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompletedUpload {
    pub bucket: String,
    pub key: String,
    /// The completion's part list, `number:etag` joined by `,`.
    pub parts: String,
    pub etag: String,
    pub checksum: Option<(String, String)>,
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    pub number: u32,
    pub size: u64,
    pub etag: String,
    pub checksum: Option<(String, String)>,
    pub modified_ms: u64,
    pub blob: String,
}

/// What deleting a bucket found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketDelete {
    /// With the blobs of the multipart uploads still in progress, which went with it (as
    /// S3 deletes a bucket that holds only incomplete uploads).
    Deleted(Vec<String>),
    Missing,
    NotEmpty,
}

/// What an object change's notifications are made from: the object written or removed.
pub type ObjectEvents = Box<dyn Fn(&ObjectMeta) -> Vec<NewEvent> + Send + Sync>;

/// Bucket and object metadata, in the same database as the event queue so an object
/// change and its notifications commit together. Object bytes live in blob files the
/// caller has made durable before it records them here.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// `false` when the bucket already exists.
    async fn create_bucket(&self, name: &str, now_ms: u64) -> StoreResult<bool>;
    async fn delete_bucket(&self, name: &str) -> StoreResult<BucketDelete>;
    /// Every bucket with its creation time, by name.
    async fn list_buckets(&self) -> StoreResult<Vec<(String, u64)>>;
    async fn bucket_exists(&self, name: &str) -> StoreResult<bool>;
    /// Records an object (replacing any under its key) if `condition` holds, and queues
    /// `events(new)`, in one transaction. Returns the replaced object, whose blob the
    /// caller removes.
    async fn put_object(
        &self,
        object: &ObjectMeta,
        condition: &PutCondition,
        events: ObjectEvents,
    ) -> StoreResult<Result<Option<ObjectMeta>, PutRefused>>;
    async fn get_object(&self, bucket: &str, key: &str) -> StoreResult<Option<ObjectMeta>>;
    /// Removes an object and queues `events(old)` in one transaction; the removed object
    /// (whose blob the caller removes), if there was one.
    async fn delete_object(
        &self,
        bucket: &str,
        key: &str,
        events: ObjectEvents,
    ) -> StoreResult<Option<ObjectMeta>>;
    /// Objects in key order with keys after `after` (when given) and at or after `from`.
    async fn list_objects(
        &self,
        bucket: &str,
        from: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ObjectMeta>>;
    async fn create_upload(&self, upload: &Upload) -> StoreResult<Result<(), NoSuchBucket>>;
    async fn get_upload(&self, id: &str) -> StoreResult<Option<Upload>>;
    /// Uploads of a bucket in progress, by key then start.
    async fn list_uploads(&self, bucket: &str, prefix: &str) -> StoreResult<Vec<Upload>>;
    /// Records a part; the part it replaced (same number), whose blob the caller removes.
    /// `NoSuchUpload` when the upload is gone (completed or aborted meanwhile).
    async fn put_part(
        &self,
        upload_id: &str,
        part: &Part,
    ) -> StoreResult<Result<Option<Part>, NoSuchUpload>>;
    /// Parts by number.
    async fn parts(&self, upload_id: &str) -> StoreResult<Vec<Part>>;
    /// Removes the upload and its parts; returns the parts (whose blobs the caller
    /// removes once it no longer needs them), or `None` when it was gone already.
    async fn finish_upload(&self, upload_id: &str) -> StoreResult<Option<Vec<Part>>>;
    /// Completes a multipart upload in one transaction: if the upload still exists and
    /// each `(number, blob)` is still the part recorded under that number, records the
    /// object (queueing `events(object)`) and removes the upload and its parts, keeping
    /// `receipt` (see [`CompletedUpload`]).
    async fn complete_upload(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        object: &ObjectMeta,
        condition: &PutCondition,
        receipt: &CompletedUpload,
        events: ObjectEvents,
    ) -> StoreResult<Result<Completed, CompleteConflict>>;
    /// The receipt of an upload completed in the last day.
    async fn completed_upload(&self, upload_id: &str) -> StoreResult<Option<CompletedUpload>>;
    /// Every blob an object or part refers to; the rest are leftovers of interrupted writes.
    async fn live_blobs(&self) -> StoreResult<std::collections::HashSet<String>>;
}

/// Object bytes shared by every node (cluster mode). A blob is written to the local
/// blob directory, then stored here before the object that names it is recorded; a
/// node that lacks a blob reads it from here into that directory, which is then only a
/// cache. Blob names are never reused, so a cached copy is never stale. Called from
/// blocking threads.
pub trait SharedBlobs: Send + Sync + 'static {
    /// Stores the file as blob `name`; durable when it returns.
    fn upload(&self, name: &str, file: &std::path::Path) -> StoreResult<()>;
    /// Writes blob `name` into `into`; `false` when there is no such blob.
    fn download(&self, name: &str, into: &mut std::fs::File) -> StoreResult<bool>;
    /// Removes blob `name` (a missing blob is fine).
    fn remove(&self, name: &str) -> StoreResult<()>;
    /// Every stored blob's name, for the sweep of blobs no object or part names.
    fn stored(&self) -> StoreResult<Vec<String>>;
    /// Removes stored bytes that belong to no blob (an upload cut off before the blob
    /// was named) and were last written before `before_ms`; returns how many pieces.
    fn sweep_unnamed(&self, before_ms: u64) -> StoreResult<usize>;
}

/// A completed upload: every part blob it held (the caller removes them) and the object
/// the new one replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub part_blobs: Vec<String>,
    pub replaced: Option<ObjectMeta>,
}

/// Why a multipart upload could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteConflict {
    NoSuchUpload,
    NoSuchBucket,
    /// The part was replaced (or is gone) since the caller read it.
    PartChanged(u32),
    /// The write's condition did not hold; `true` when there was no object at all.
    PreconditionFailed {
        missing: bool,
    },
}

/// S3's conditional writes: `If-None-Match: *` and `If-Match: "etag"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    Any,
    /// Only if no object has the key.
    Absent,
    /// Only if the object under the key has this ETag.
    Etag(String),
}

/// Why an object was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutRefused {
    NoSuchBucket,
    /// The condition did not hold; `true` when there was no object at all.
    PreconditionFailed {
        missing: bool,
    },
}

/// The bucket named does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSuchBucket;

/// The multipart upload named does not exist (any more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSuchUpload;

/// A secret as stored: its value sealed with the secrets key (see `crate::secrets`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SealedSecret {
    pub name: String,
    /// Which key sealed it (a fingerprint), so a wrong key file is named at start-up.
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// An API key as stored: the bearer secret only as a hash; the AWS secret access key
/// sealed like a secret (SigV4 needs it back).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    pub scope: String,
    pub token_sha256: String,
    pub access_key_id: String,
    pub sealed_aws_secret: SealedSecret,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

/// One management action: who did what, when, and how it ended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AuditEntry {
    pub seq: u64,
    pub time_ms: u64,
    /// `admin-token`, `key:ID`, `aws:ACCESS_KEY_ID` or `anonymous`.
    pub actor: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// Secrets, API keys and the audit log.
#[async_trait::async_trait]
pub trait AccessStore: Send + Sync + 'static {
    async fn secrets(&self) -> StoreResult<Vec<SealedSecret>>;
    /// Creates or replaces a secret.
    async fn put_secret(&self, secret: &SealedSecret) -> StoreResult<()>;
    /// Whether it existed.
    async fn delete_secret(&self, name: &str) -> StoreResult<bool>;
    async fn keys(&self) -> StoreResult<Vec<StoredKey>>;
    async fn insert_key(&self, key: &StoredKey) -> StoreResult<()>;
    /// Whether the key existed and was not revoked before.
    async fn revoke_key(&self, id: &str, now_ms: u64) -> StoreResult<bool>;
    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()>;
    /// The newest entries first, below `before` (a `seq`) when given.
    async fn audit(&self, before: Option<u64>, limit: usize) -> StoreResult<Vec<AuditEntry>>;
}
