//! Buckets and objects in a cluster. Metadata is in the JetStream KV bucket
//! `cirrus_objects`; object bytes in the object store `cirrus_blobs` (one JetStream
//! object per blob, named as the blob directory names it, see [`crate::s3::blobs`]).
//!
//! Keys of `cirrus_objects` (names and keys in unpadded URL-safe base64, so that any
//! of them is one subject token):
//! - `bucket.NAME`: a bucket, with its creation time;
//! - `object.BUCKET.KEY`: an object's metadata, naming its blob;
//! - `upload.ID`, `part.ID.NUMBER`: a multipart upload in progress and its parts;
//! - `done.ID`: a completed upload's receipt, for a day.
//!
//! What one SQLite transaction does on a single node is here a compare-and-set on the
//! key's revision: two nodes writing one object at once cannot both pass a condition
//! (`If-None-Match: *`, `If-Match`) that only one of them should. What spans several
//! keys is ordered so that a crash part-way leaves nothing a client can see wrong:
//! - a completed upload's object is written first, then its upload and parts are
//!   removed (a part record left by a crash is removed by retention with its blob);
//! - a bucket is removed once it holds no object; a put racing that removal on another
//!   node can leave an object under a removed bucket, seen again if the bucket is made
//!   again;
//! - bucket notifications travel in the message of the object's key (its metadata, or
//!   its delete marker), as a KV table row's change events do (see [`super::outbox`]):
//!   queued by the writer right after its compare-and-set, again by the key's next
//!   writer before its own, and by the relay for keys nobody writes again; a node
//!   dying in between loses none.

use super::events::ClusterQueue;
use super::outbox::{self, Outgoing};
use super::{open_kv, retry, JetStream};
use crate::store::{
    BucketDelete, CompleteConflict, Completed, CompletedUpload, NoSuchBucket, NoSuchUpload,
    ObjectEvents, ObjectMeta, ObjectStore, Part, PutCondition, PutRefused, SharedBlobs,
    StoreResult, Upload,
};
use anyhow::Context as _;
use async_nats::jetstream::{self, kv, object_store};
use base64::Engine as _;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub const OBJECTS_BUCKET: &str = "cirrus_objects";
pub const BLOBS_BUCKET: &str = "cirrus_blobs";

/// How long a completed upload's receipt is kept for retries of its completion.
const RECEIPT_MS: u64 = 24 * 3600 * 1000;
/// How long a blob's reader waits for its next chunk before it asks whether the blob
/// is still there.
const CHUNK_WAIT: Duration = Duration::from_secs(10);

fn token(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn untoken(token: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn bucket_key(name: &str) -> String {
    format!("bucket.{}", token(name))
}

fn objects_of(bucket: &str) -> String {
    format!("object.{}.", token(bucket))
}

fn object_key(bucket: &str, key: &str) -> String {
    format!("{}{}", objects_of(bucket), token(key))
}

fn upload_key(id: &str) -> String {
    format!("upload.{}", token(id))
}

fn parts_of(id: &str) -> String {
    format!("part.{}.", token(id))
}

fn part_key(id: &str, number: u32) -> String {
    format!("{}{number}", parts_of(id))
}

fn receipt_key(id: &str) -> String {
    format!("done.{}", token(id))
}

#[derive(Serialize, Deserialize)]
struct BucketRecord {
    created_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Receipt {
    receipt: CompletedUpload,
    completed_ms: u64,
}

/// A key's value as read, with the revision a write must name (0: never written or
/// removed).
struct Read<T> {
    revision: u64,
    value: Option<T>,
    /// Its message, whose notifications a writer replacing it queues first.
    message: Option<kv::Entry>,
}

impl<T> Read<T> {
    /// The notifications the key's message carries that may not be queued yet.
    fn pending(&self) -> StoreResult<Vec<Outgoing>> {
        outbox::pending(self.message.as_ref(), carried)
    }
}

/// An object's metadata as stored: with the notifications its write caused.
#[derive(Serialize)]
struct Carrying<'a> {
    #[serde(flatten)]
    object: Option<&'a ObjectMeta>,
    /// Sealed (see [`outbox::seal`]), in standard base64.
    #[serde(skip_serializing_if = "String::is_empty")]
    events: String,
}

#[derive(Deserialize)]
struct Carried {
    #[serde(default)]
    events: String,
}

/// The notifications a message of `cirrus_objects` carries (an object's metadata or
/// its delete marker; other keys carry none), for the outbox's relay.
pub fn carried(message: &[u8]) -> StoreResult<Vec<Outgoing>> {
    // Most messages carry none: they are not parsed again.
    const FIELD: &[u8] = b"\"events\":";
    if !message.windows(FIELD.len()).any(|w| w == FIELD) {
        return Ok(Vec::new());
    }
    let carried: Carried =
        serde_json::from_slice(message).context("a message of cirrus_objects")?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(carried.events)
        .context("the notifications an object carries")?;
    outbox::unseal(&sealed)
}

fn condition_holds(condition: &PutCondition, current: Option<&ObjectMeta>) -> bool {
    match (condition, current) {
        (PutCondition::Any, _) => true,
        (PutCondition::Absent, current) => current.is_none(),
        (PutCondition::Etag(etag), Some(current)) => current.etag == *etag,
        (PutCondition::Etag(_), None) => false,
    }
}

/// The cluster's buckets and objects (see the module's documentation), and the shared
/// store of their bytes.
pub struct ClusterObjects {
    meta: kv::Store,
    /// For delete markers that carry notifications.
    context: jetstream::Context,
    blobs: object_store::ObjectStore,
    /// The object store's stream, to remove deleted blobs' markers.
    blob_stream: jetstream::stream::Stream,
    /// Where bucket notifications go.
    queue: Arc<ClusterQueue>,
    /// The largest chunk a blob is stored in: fewer round trips than the client's
    /// default, and within the server's message limit.
    chunk: usize,
    /// The store's callers are blocking threads: JetStream is reached on this runtime.
    runtime: tokio::runtime::Handle,
}

impl ClusterObjects {
    pub async fn open(
        js: &JetStream,
        replicas: usize,
        queue: Arc<ClusterQueue>,
    ) -> StoreResult<Self> {
        let meta = open_kv(
            &js.context,
            OBJECTS_BUCKET,
            "Cirrus buckets, objects and multipart uploads",
            replicas,
            Duration::ZERO,
            // Read-your-writes: a client reads the object it just wrote, on any node.
            false,
        )
        .await?;
        let blobs = retry::within(retry::FORMING, "JetStream is not ready yet", || {
            js.context.create_object_store(object_store::Config {
                bucket: BLOBS_BUCKET.into(),
                description: Some("Cirrus object bytes, one object per blob".into()),
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
        })
        .await
        .with_context(|| format!("opening the JetStream object store {BLOBS_BUCKET}"))?;
        let blob_stream = retry::within(retry::FORMING, "JetStream is not ready yet", || {
            js.context.get_stream(format!("OBJ_{BLOBS_BUCKET}"))
        })
        .await
        .with_context(|| format!("opening the stream of {BLOBS_BUCKET}"))?;
        let max_payload = js.client.server_info().max_payload;
        Ok(Self {
            meta,
            context: js.context.clone(),
            blobs,
            blob_stream,
            queue,
            chunk: (max_payload / 2).clamp(64 << 10, 4 << 20),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> StoreResult<Read<T>> {
        let found = retry::retried("reading object metadata", || {
            self.meta.entry(key.to_owned())
        })
        .await?;
        let Some(found) = found else {
            return Ok(Read {
                revision: 0,
                value: None,
                message: None,
            });
        };
        let value = match found.operation {
            kv::Operation::Put => Some(
                serde_json::from_slice(&found.value)
                    .with_context(|| format!("{OBJECTS_BUCKET} {key} is not readable"))?,
            ),
            _ => None,
        };
        Ok(Read {
            revision: found.revision,
            value,
            message: Some(found),
        })
    }

    /// `events` as an object's key carries them.
    async fn seal(
        &self,
        events: Vec<crate::store::NewEvent>,
    ) -> StoreResult<(Vec<Outgoing>, String)> {
        if events.is_empty() {
            return Ok((Vec::new(), String::new()));
        }
        let now = events.iter().map(|e| e.created_ms).max().unwrap_or(0);
        let outgoing = self.queue.outgoing(&events, now).await?;
        let sealed = base64::engine::general_purpose::STANDARD.encode(outbox::seal(&outgoing)?);
        Ok((outgoing, sealed))
    }

    /// Writes `value` if `key` is still at `revision`; `false` when another writer got
    /// in between.
    async fn write_at(
        &self,
        key: &str,
        value: &impl Serialize,
        revision: u64,
    ) -> StoreResult<bool> {
        match self
            .meta
            .update(key, serde_json::to_vec(value)?.into(), revision)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(e).with_context(|| format!("writing {key} to {OBJECTS_BUCKET}")),
        }
    }

    /// Removes `key` whatever it holds (a key already gone is fine).
    async fn remove(&self, key: &str) -> StoreResult<()> {
        for _ in 0..100 {
            let current = self.read::<serde_json::Value>(key).await?;
            if current.value.is_none()
                || super::remove_key(&self.meta, key, current.revision).await?
            {
                return Ok(());
            }
        }
        anyhow::bail!("removing {key}: too many concurrent writers")
    }

    /// Keys under `prefix` that hold a value, without the prefix.
    async fn keys(&self, prefix: &str) -> StoreResult<Vec<String>> {
        Ok(super::kv_keys(&self.meta, prefix)
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_owned))
            .collect())
    }

    /// Every value under `prefix` (keys removed meanwhile are skipped).
    async fn values<T: DeserializeOwned>(&self, prefix: &str) -> StoreResult<Vec<T>> {
        let mut values = Vec::new();
        for rest in self.keys(prefix).await? {
            if let Some(v) = self.read(&format!("{prefix}{rest}")).await?.value {
                values.push(v);
            }
        }
        Ok(values)
    }

    /// Runs `attempt` until it is not beaten by another writer (`None`), pausing a
    /// random moment between tries so that racing writers spread out.
    async fn until_won<T, F>(&self, what: &str, mut attempt: impl FnMut() -> F) -> StoreResult<T>
    where
        F: std::future::Future<Output = StoreResult<Option<T>>>,
    {
        for _ in 0..100 {
            if let Some(done) = attempt().await? {
                return Ok(done);
            }
            let pause = rand::random_range(1..20);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        anyhow::bail!("{what}: too many concurrent writers")
    }

    /// Puts back an upload a completion claimed but could not complete.
    async fn restore(&self, key: &str, upload: &Upload) {
        if let Err(e) = self.write_at(key, upload, 0).await {
            tracing::error!(upload = upload.id, "restoring an upload failed: {e:#}");
        }
    }

    /// Queues a change's notifications. The change is stored already, with them, so a
    /// failure here must not fail it (its caller would remove the bytes the object
    /// names): it is logged, and the key's next writer or the relay queues them.
    async fn notify(&self, outgoing: &[Outgoing]) {
        if let Err(e) = self.queue.publish_outgoing(outgoing, false).await {
            tracing::warn!(
                events = outgoing.len(),
                "queueing bucket notifications failed (they are kept with the object and queued later): {e:#}"
            );
        }
    }

    async fn has_bucket(&self, name: &str) -> StoreResult<bool> {
        Ok(self
            .read::<BucketRecord>(&bucket_key(name))
            .await?
            .value
            .is_some())
    }

    /// [`Self::write_at`] for an object. A write whose answer was lost (a timeout, a
    /// failover) is read back: an object that was stored must never be reported as not
    /// stored, since the caller would then remove the bytes it names.
    async fn write_object(
        &self,
        key: &str,
        object: &ObjectMeta,
        revision: u64,
        events: &str,
    ) -> StoreResult<bool> {
        let carrying = Carrying {
            object: Some(object),
            events: events.to_owned(),
        };
        match self.write_at(key, &carrying, revision).await {
            Err(e) => match self.read::<ObjectMeta>(key).await?.value {
                Some(stored) if stored.blob == object.blob => Ok(true),
                _ => Err(e),
            },
            written => written,
        }
    }

    async fn try_put(
        &self,
        object: &ObjectMeta,
        condition: &PutCondition,
        events: &str,
    ) -> StoreResult<Option<Result<Option<ObjectMeta>, PutRefused>>> {
        if !self.has_bucket(&object.bucket).await? {
            return Ok(Some(Err(PutRefused::NoSuchBucket)));
        }
        let key = object_key(&object.bucket, &object.key);
        let old = self.read::<ObjectMeta>(&key).await?;
        if !condition_holds(condition, old.value.as_ref()) {
            return Ok(Some(Err(PutRefused::PreconditionFailed {
                missing: old.value.is_none(),
            })));
        }
        // The replaced key's notifications go first: not lost with its message if its
        // writer died before queueing them.
        self.queue.publish_outgoing(&old.pending()?, true).await?;
        Ok(self
            .write_object(&key, object, old.revision, events)
            .await?
            .then_some(Ok(old.value)))
    }

    /// One attempt at completing an upload; `None` when another writer changed the
    /// upload first (read again).
    async fn try_complete(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        object: &ObjectMeta,
        condition: &PutCondition,
        events: &str,
    ) -> StoreResult<Option<Result<Completed, CompleteConflict>>> {
        let claimed = upload_key(upload_id);
        let upload = self.read::<Upload>(&claimed).await?;
        let Some(record) = upload.value else {
            return Ok(Some(Err(CompleteConflict::NoSuchUpload)));
        };
        if !self.has_bucket(&object.bucket).await? {
            return Ok(Some(Err(CompleteConflict::NoSuchBucket)));
        }
        let held: Vec<Part> = self.values(&parts_of(upload_id)).await?;
        if let Some((number, _)) = parts
            .iter()
            .find(|(n, b)| !held.iter().any(|p| p.number == *n && p.blob == *b))
        {
            return Ok(Some(Err(CompleteConflict::PartChanged(*number))));
        }
        let key = object_key(&object.bucket, &object.key);
        let mut replaced = self.read::<ObjectMeta>(&key).await?;
        if !condition_holds(condition, replaced.value.as_ref()) {
            return Ok(Some(Err(CompleteConflict::PreconditionFailed {
                missing: replaced.value.is_none(),
            })));
        }
        // The upload is claimed by removing it: of two completions (or a completion and
        // an abort) racing on different nodes, one wins, and no part is recorded after.
        if !super::remove_key(&self.meta, &claimed, upload.revision).await? {
            return Ok(None);
        }
        for _ in 0..100 {
            let queued = match replaced.pending() {
                Ok(pending) => self.queue.publish_outgoing(&pending, true).await,
                Err(e) => Err(e),
            };
            if let Err(e) = queued {
                self.restore(&claimed, &record).await;
                return Err(e);
            }
            match self
                .write_object(&key, object, replaced.revision, events)
                .await
            {
                Ok(true) => {
                    return Ok(Some(Ok(Completed {
                        part_blobs: held.into_iter().map(|p| p.blob).collect(),
                        replaced: replaced.value,
                    })))
                }
                Ok(false) => {}
                Err(e) => {
                    self.restore(&claimed, &record).await;
                    return Err(e);
                }
            }
            // Another writer of the key got in between: its object decides the condition.
            replaced = self.read::<ObjectMeta>(&key).await?;
            if !condition_holds(condition, replaced.value.as_ref()) {
                self.restore(&claimed, &record).await;
                return Ok(Some(Err(CompleteConflict::PreconditionFailed {
                    missing: replaced.value.is_none(),
                })));
            }
        }
        self.restore(&claimed, &record).await;
        anyhow::bail!("completing upload {upload_id}: too many concurrent writers of its key")
    }

    /// Removes an upload and its parts; the parts removed.
    async fn drop_upload(&self, id: &str) -> StoreResult<Vec<Part>> {
        self.remove(&upload_key(id)).await?;
        let parts: Vec<Part> = self.values(&parts_of(id)).await?;
        for part in &parts {
            self.remove(&part_key(id, part.number)).await?;
        }
        Ok(parts)
    }

    /// Removes up to `limit` uploads started before `created_before_ms`, with their
    /// parts (and parts left without an upload by a crash), and receipts older than a
    /// day: the cluster's share of [`crate::store::RetentionStore::expire_uploads`].
    pub fn expire_uploads(
        &self,
        created_before_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<(String, Vec<String>)>> {
        self.runtime.block_on(async {
            let mut expired = Vec::new();
            let uploads: Vec<Upload> = self.values("upload.").await?;
            let open: HashSet<String> = uploads.iter().map(|u| token(&u.id)).collect();
            for upload in uploads {
                if expired.len() >= limit {
                    return Ok(expired);
                }
                if upload.created_ms < created_before_ms {
                    let parts = self.drop_upload(&upload.id).await?;
                    expired.push((upload.id, parts.into_iter().map(|p| p.blob).collect()));
                }
            }
            // Parts whose upload is gone: a completion or abort that crashed part-way,
            // or a part recorded while its upload was being completed. Only parts as old
            // as an expired upload, whose upload is still gone when read again: an
            // upload made since the listing above is not taken for gone.
            for rest in self.keys("part.").await? {
                let Some((id, _)) = rest.split_once('.') else {
                    continue;
                };
                if open.contains(id) || expired.len() >= limit {
                    continue;
                }
                let key = format!("part.{rest}");
                let part = self.read::<Part>(&key).await?;
                let Some(value) = part.value else {
                    continue;
                };
                let upload = self.read::<Upload>(&format!("upload.{id}")).await?;
                if value.modified_ms >= created_before_ms || upload.value.is_some() {
                    continue;
                }
                if super::remove_key(&self.meta, &key, part.revision).await? {
                    expired.push((untoken(id).unwrap_or_default(), vec![value.blob]));
                }
            }
            let now =
                created_before_ms.max(crate::clock::Clock::now_ms(&crate::clock::SystemClock));
            for rest in self.keys("done.").await? {
                let key = format!("done.{rest}");
                if let Some(r) = self.read::<Receipt>(&key).await?.value {
                    if r.completed_ms + RECEIPT_MS < now {
                        self.remove(&key).await?;
                    }
                }
            }
            Ok(expired)
        })
    }
}

#[async_trait::async_trait]
impl ObjectStore for ClusterObjects {
    async fn create_bucket(&self, name: &str, now_ms: u64) -> StoreResult<bool> {
        let record = serde_json::to_vec(&BucketRecord { created_ms: now_ms })?;
        let key = bucket_key(name);
        let current = self.read::<BucketRecord>(&key).await?;
        if current.value.is_some() {
            return Ok(false);
        }
        match self
            .meta
            .update(&key, record.into(), current.revision)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(e).with_context(|| format!("creating bucket {name}")),
        }
    }

    async fn delete_bucket(&self, name: &str) -> StoreResult<BucketDelete> {
        let key = bucket_key(name);
        let current = self.read::<BucketRecord>(&key).await?;
        if current.value.is_none() {
            return Ok(BucketDelete::Missing);
        }
        let objects = objects_of(name);
        for rest in self.keys(&objects).await? {
            let object = self.read::<ObjectMeta>(&format!("{objects}{rest}")).await?;
            if object.value.is_some() {
                return Ok(BucketDelete::NotEmpty);
            }
        }
        // Uploads still in progress go with the bucket, as in S3.
        let mut part_blobs = Vec::new();
        for upload in self.values::<Upload>("upload.").await? {
            if upload.bucket == name {
                let parts = self.drop_upload(&upload.id).await?;
                part_blobs.extend(parts.into_iter().map(|p| p.blob));
            }
        }
        // Lost to another node's delete (or re-creation) of the bucket: either way
        // it was deleted, and the uploads removed here are gone.
        super::remove_key(&self.meta, &key, current.revision).await?;
        Ok(BucketDelete::Deleted(part_blobs))
    }

    async fn list_buckets(&self) -> StoreResult<Vec<(String, u64)>> {
        let mut buckets = Vec::new();
        for rest in self.keys("bucket.").await? {
            let (Some(name), Some(record)) = (
                untoken(&rest),
                self.read::<BucketRecord>(&format!("bucket.{rest}"))
                    .await?
                    .value,
            ) else {
                continue;
            };
            buckets.push((name, record.created_ms));
        }
        buckets.sort();
        Ok(buckets)
    }

    async fn bucket_exists(&self, name: &str) -> StoreResult<bool> {
        self.has_bucket(name).await
    }

    async fn put_object(
        &self,
        object: &ObjectMeta,
        condition: &PutCondition,
        events: ObjectEvents,
    ) -> StoreResult<Result<Option<ObjectMeta>, PutRefused>> {
        let (outgoing, sealed) = self.seal(events(object)).await?;
        let put = self
            .until_won("storing an object", || {
                self.try_put(object, condition, &sealed)
            })
            .await?;
        if put.is_ok() {
            self.notify(&outgoing).await;
        }
        Ok(put)
    }

    async fn get_object(&self, bucket: &str, key: &str) -> StoreResult<Option<ObjectMeta>> {
        Ok(self.read(&object_key(bucket, key)).await?.value)
    }

    async fn delete_object(
        &self,
        bucket: &str,
        key: &str,
        events: ObjectEvents,
    ) -> StoreResult<Option<ObjectMeta>> {
        let name = object_key(bucket, key);
        let removed = self
            .until_won("removing an object", || async {
                let current = self.read::<ObjectMeta>(&name).await?;
                let Some(old) = current.value.clone() else {
                    return Ok(Some(None));
                };
                let (outgoing, sealed) = self.seal(events(&old)).await?;
                let marker = match sealed.is_empty() {
                    true => bytes::Bytes::new(),
                    false => serde_json::to_vec(&Carrying {
                        object: None,
                        events: sealed,
                    })?
                    .into(),
                };
                self.queue
                    .publish_outgoing(&current.pending()?, true)
                    .await?;
                Ok(super::remove_key_carrying(
                    &self.context,
                    &self.meta,
                    &name,
                    current.revision,
                    marker,
                )
                .await?
                .then_some(Some((old, outgoing))))
            })
            .await?;
        Ok(match removed {
            Some((old, outgoing)) => {
                self.notify(&outgoing).await;
                Some(old)
            }
            None => None,
        })
    }

    async fn list_objects(
        &self,
        bucket: &str,
        from: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ObjectMeta>> {
        let objects = objects_of(bucket);
        let mut keys: Vec<String> = self
            .keys(&objects)
            .await?
            .iter()
            .filter_map(|t| untoken(t))
            .filter(|k| k.as_str() >= from && after.is_none_or(|a| k.as_str() > a))
            .collect();
        keys.sort();
        let mut listed = Vec::new();
        for key in keys {
            if listed.len() >= limit {
                break;
            }
            // An object removed since the index was read is skipped.
            if let Some(object) = self.read(&object_key(bucket, &key)).await?.value {
                listed.push(object);
            }
        }
        Ok(listed)
    }

    async fn create_upload(&self, upload: &Upload) -> StoreResult<Result<(), NoSuchBucket>> {
        if !self.has_bucket(&upload.bucket).await? {
            return Ok(Err(NoSuchBucket));
        }
        anyhow::ensure!(
            self.write_at(&upload_key(&upload.id), upload, 0).await?,
            "upload id {} is taken",
            upload.id
        );
        Ok(Ok(()))
    }

    async fn get_upload(&self, id: &str) -> StoreResult<Option<Upload>> {
        Ok(self.read(&upload_key(id)).await?.value)
    }

    async fn list_uploads(&self, bucket: &str, prefix: &str) -> StoreResult<Vec<Upload>> {
        let mut uploads: Vec<Upload> = self
            .values("upload.")
            .await?
            .into_iter()
            .filter(|u: &Upload| u.bucket == bucket && u.key.starts_with(prefix))
            .collect();
        uploads.sort_by(|a, b| (&a.key, a.created_ms, &a.id).cmp(&(&b.key, b.created_ms, &b.id)));
        Ok(uploads)
    }

    async fn put_part(
        &self,
        upload_id: &str,
        part: &Part,
    ) -> StoreResult<Result<Option<Part>, NoSuchUpload>> {
        let key = part_key(upload_id, part.number);
        self.until_won("recording a part", || async {
            if self
                .read::<Upload>(&upload_key(upload_id))
                .await?
                .value
                .is_none()
            {
                return Ok(Some(Err(NoSuchUpload)));
            }
            let old = self.read::<Part>(&key).await?;
            Ok(self
                .write_at(&key, part, old.revision)
                .await?
                .then_some(Ok(old.value)))
        })
        .await
    }

    async fn parts(&self, upload_id: &str) -> StoreResult<Vec<Part>> {
        let mut parts: Vec<Part> = self.values(&parts_of(upload_id)).await?;
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }

    async fn finish_upload(&self, upload_id: &str) -> StoreResult<Option<Vec<Part>>> {
        let key = upload_key(upload_id);
        let current = self.read::<Upload>(&key).await?;
        if current.value.is_none() || !super::remove_key(&self.meta, &key, current.revision).await?
        {
            return Ok(None);
        }
        let mut parts = self.drop_upload(upload_id).await?;
        parts.sort_by_key(|p| p.number);
        Ok(Some(parts))
    }

    async fn complete_upload(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        object: &ObjectMeta,
        condition: &PutCondition,
        receipt: &CompletedUpload,
        events: ObjectEvents,
    ) -> StoreResult<Result<Completed, CompleteConflict>> {
        let (outgoing, sealed) = self.seal(events(object)).await?;
        let outcome: Result<Completed, CompleteConflict> = {
            let mut outcome = self
                .until_won("completing an upload", || {
                    self.try_complete(upload_id, parts, object, condition, &sealed)
                })
                .await?;
            if let Ok(done) = &mut outcome {
                // The object is stored: what follows tidies up, and a failure of it
                // is logged rather than fail the completion (retention removes what
                // is left).
                let receipt = Receipt {
                    receipt: receipt.clone(),
                    completed_ms: object.modified_ms,
                };
                let key = receipt_key(upload_id);
                if let Err(e) = self.write_at(&key, &receipt, 0).await {
                    tracing::warn!(
                        upload = upload_id,
                        "keeping a completion's receipt failed: {e:#}"
                    );
                }
                match self.drop_upload(upload_id).await {
                    Ok(dropped) => {
                        for part in dropped {
                            if !done.part_blobs.contains(&part.blob) {
                                done.part_blobs.push(part.blob);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(
                        upload = upload_id,
                        "removing a completed upload's parts failed: {e:#}"
                    ),
                }
            }
            outcome
        };
        if outcome.is_ok() {
            self.notify(&outgoing).await;
        }
        Ok(outcome)
    }

    async fn completed_upload(&self, upload_id: &str) -> StoreResult<Option<CompletedUpload>> {
        let found = self.read::<Receipt>(&receipt_key(upload_id)).await?;
        Ok(found.value.map(|r| r.receipt))
    }

    async fn live_blobs(&self) -> StoreResult<HashSet<String>> {
        let mut live = HashSet::new();
        for object in self.values::<ObjectMeta>("object.").await? {
            live.insert(object.blob);
        }
        for part in self.values::<Part>("part.").await? {
            live.insert(part.blob);
        }
        Ok(live)
    }
}

impl SharedBlobs for ClusterObjects {
    fn upload(&self, name: &str, file: &std::path::Path) -> StoreResult<()> {
        let what = format!("storing blob {name} in JetStream");
        self.runtime
            .block_on(retry::within(retry::FAILOVER, &what, || async {
                let mut file = tokio::fs::File::open(file).await?;
                let meta = object_store::ObjectMetadata {
                    name: name.to_owned(),
                    chunk_size: Some(self.chunk),
                    ..Default::default()
                };
                self.blobs.put(meta, &mut file).await?;
                anyhow::Ok(())
            }))
            .context(what)
    }

    fn download(&self, name: &str, into: &mut std::fs::File) -> StoreResult<bool> {
        self.runtime.block_on(async {
            use tokio::io::AsyncReadExt as _;
            let mut object = match self.blobs.get(name).await {
                Ok(object) => object,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e).with_context(|| format!("reading blob {name}")),
            };
            let mut buf = vec![0u8; self.chunk];
            loop {
                let Ok(read) = tokio::time::timeout(CHUNK_WAIT, object.read(&mut buf)).await else {
                    // A blob removed while it is read leaves its reader waiting for
                    // chunks that are gone.
                    return match self.blobs.info(name).await {
                        Ok(info) if !info.deleted => {
                            anyhow::bail!("reading blob {name}: no data for {CHUNK_WAIT:?}")
                        }
                        _ => Ok(false),
                    };
                };
                let n = read.with_context(|| format!("reading blob {name}"))?;
                if n == 0 {
                    return Ok(true);
                }
                std::io::Write::write_all(into, &buf[..n])?;
            }
        })
    }

    fn remove(&self, name: &str) -> StoreResult<()> {
        self.runtime.block_on(async {
            match self.blobs.delete(name).await {
                Ok(()) => {}
                Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing blob {name}")),
            }
            // The delete leaves a marker per blob; blob names are never reused, so it
            // goes too and the store does not grow with every blob ever written.
            let marker = format!(
                "$O.{BLOBS_BUCKET}.M.{}",
                base64::engine::general_purpose::URL_SAFE.encode(name)
            );
            self.blob_stream
                .purge()
                .filter(marker)
                .await
                .with_context(|| format!("removing blob {name}'s marker"))?;
            Ok(())
        })
    }

    fn stored(&self) -> StoreResult<Vec<String>> {
        use futures_util::TryStreamExt as _;
        self.runtime.block_on(async {
            let list = self.blobs.list().await.context("listing blobs")?;
            let infos: Vec<object_store::ObjectInfo> =
                list.try_collect().await.context("listing blobs")?;
            Ok(infos
                .into_iter()
                .filter(|i| !i.deleted)
                .map(|i| i.name)
                .collect())
        })
    }

    fn sweep_unnamed(&self, before_ms: u64) -> StoreResult<usize> {
        self.runtime.block_on(self.sweep_unnamed_chunks(before_ms))
    }
}

impl ClusterObjects {
    /// [`SharedBlobs::sweep_unnamed`]: an object store writes a blob's chunks under a
    /// subject of their own (`$O.BUCKET.C.NUID`) and then the metadata naming that NUID,
    /// so an upload cut off part-way leaves chunks no metadata names. The chunk
    /// subjects are listed before the metadata, so a blob finished meanwhile is seen
    /// named; one still being written has a chunk newer than `before_ms`.
    async fn sweep_unnamed_chunks(&self, before_ms: u64) -> StoreResult<usize> {
        use futures_util::TryStreamExt as _;
        let prefix = format!("$O.{BLOBS_BUCKET}.C.");
        let subjects: Vec<(String, usize)> = self
            .blob_stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .context("listing blob chunks")?
            .try_collect()
            .await
            .context("listing blob chunks")?;
        let named: HashSet<String> = self
            .blobs
            .list()
            .await
            .context("listing blobs")?
            .map_ok(|info| info.nuid)
            .try_collect()
            .await
            .context("listing blobs")?;
        let mut removed = 0;
        for (subject, _) in subjects {
            let Some(nuid) = subject.strip_prefix(&prefix) else {
                continue;
            };
            if named.contains(nuid) {
                continue;
            }
            let last = match self
                .blob_stream
                .get_last_raw_message_by_subject(&subject)
                .await
            {
                Ok(last) => last,
                // Purged meanwhile (the blob was replaced or removed).
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    continue
                }
                Err(e) => return Err(e).context("reading a blob chunk"),
            };
            if outbox::unix_ms(last.time) >= before_ms {
                continue;
            }
            self.blob_stream
                .purge()
                .filter(&subject)
                .await
                .with_context(|| format!("removing the unnamed chunks {subject}"))?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// What the pruner removes on a cluster node: records and logs from the node's own
/// replica (`local`), incomplete uploads from the cluster's store. Dead letters and the
/// audit log are streams with a maximum age, which JetStream prunes itself.
pub struct ClusterRetention {
    pub local: Arc<dyn crate::store::RetentionStore>,
    pub objects: Arc<ClusterObjects>,
}

impl crate::store::RetentionStore for ClusterRetention {
    fn prune_records(
        &self,
        rule: &crate::store::RecordRule,
        limit: usize,
    ) -> StoreResult<crate::store::PrunedRecords> {
        self.local.prune_records(rule, limit)
    }

    fn prune_log_lines(&self, keep: u64, limit: usize) -> StoreResult<u64> {
        self.local.prune_log_lines(keep, limit)
    }

    fn prune_dead_letters(&self, _failed_before_ms: u64, _limit: usize) -> StoreResult<u64> {
        Ok(0)
    }

    fn prune_audit(&self, _before_ms: u64, _limit: usize) -> StoreResult<u64> {
        Ok(0)
    }

    fn expire_uploads(
        &self,
        created_before_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<(String, Vec<String>)>> {
        self.objects.expire_uploads(created_before_ms, limit)
    }

    fn release_free_pages(&self, max_pages: u64) -> StoreResult<u64> {
        self.local.release_free_pages(max_pages)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::NatsServer;

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    /// Chunks an upload cut off part-way left (no metadata names them) are removed
    /// once they are older than the cut-off, never while they are newer; a named
    /// blob's chunks are never touched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_no_blob_names_are_swept_once_old() {
        let nats = NatsServer::start();
        let js = JetStream::connect(&super::super::ClusterOptions::new(&nats.url()))
            .await
            .unwrap();
        let queue = ClusterQueue::open_for_test(js.clone()).await;
        let objects = Arc::new(ClusterObjects::open(&js, 1, queue).await.unwrap());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blob");
        std::fs::write(&file, vec![7u8; 300 << 10]).unwrap();
        let uploader = objects.clone();
        tokio::task::spawn_blocking(move || uploader.upload("named", &file))
            .await
            .unwrap()
            .unwrap();
        let orphan = format!("$O.{BLOBS_BUCKET}.C.cut0ff");
        for _ in 0..3 {
            js.context
                .publish(orphan.clone(), vec![1u8; 1024].into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let chunks = |objects: Arc<ClusterObjects>| async move {
            use futures_util::TryStreamExt as _;
            objects
                .blob_stream
                .info_with_subjects(format!("$O.{BLOBS_BUCKET}.C.>"))
                .await
                .unwrap()
                .try_collect::<Vec<(String, usize)>>()
                .await
                .unwrap()
                .len()
        };
        assert_eq!(
            chunks(objects.clone()).await,
            2,
            "the named blob's and the orphan's"
        );

        let an_hour_ago = now_ms() - 3_600_000;
        assert_eq!(objects.sweep_unnamed_chunks(an_hour_ago).await.unwrap(), 0);
        assert_eq!(
            chunks(objects.clone()).await,
            2,
            "a fresh upload may be in progress"
        );

        let later = now_ms() + 60_000;
        assert_eq!(objects.sweep_unnamed_chunks(later).await.unwrap(), 1);
        assert_eq!(chunks(objects.clone()).await, 1);
        let reader = objects.clone();
        let copy = dir.path().join("copy");
        let into = copy.clone();
        let found = tokio::task::spawn_blocking(move || {
            reader.download("named", &mut std::fs::File::create(into).unwrap())
        })
        .await
        .unwrap()
        .unwrap();
        assert!(found);
        assert_eq!(std::fs::read(copy).unwrap(), vec![7u8; 300 << 10]);
        assert_eq!(objects.sweep_unnamed_chunks(later).await.unwrap(), 0);
    }
}
