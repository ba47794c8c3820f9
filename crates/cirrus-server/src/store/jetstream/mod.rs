//! The cluster backend: state in NATS JetStream, shared by every Cirrus node.
//!
//! - function metadata (versions, aliases, triggers) and schedule marks: the KV bucket
//!   `cirrus_meta`, one key per item (the names in [`crate::store::version_key`] and its
//!   siblings), watched by every node; a revision is the bucket's stream sequence;
//! - artifacts: the object store `cirrus_artifacts`, named by sha256;
//! - the cluster's credentials (admin token, S3/Lambda keys): `cirrus_meta` keys under
//!   `cluster.`, created by whichever node starts first;
//! - invocation records and logs: the stream `cirrus_records`, replayed by every node
//!   into its own SQLite ([`records`]).

pub mod access;
pub mod events;
mod functions;
pub mod leases;
pub mod objects;
pub mod outbox;
pub mod records;
mod retry;
pub mod tables;

use crate::store::{ArtifactStore, StoreResult};
use anyhow::Context as _;
use async_nats::jetstream::{self, kv, object_store};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;

pub const META_BUCKET: &str = "cirrus_meta";
pub const ARTIFACT_BUCKET: &str = "cirrus_artifacts";

/// How a node reaches NATS: as NATS clients usually take it.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `nats://HOST:PORT`, one or more (any of them will do; the client fails over).
    pub servers: Vec<String>,
    /// A `.creds` file (JWT and NKey seed), as `nats --creds` takes.
    pub creds_file: Option<PathBuf>,
    /// User and password, or a token, when the server uses those instead.
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// CA certificate to trust for TLS to the servers (`tls://` URLs, or required).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key, for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Copies JetStream keeps of each bucket: 1 on one NATS server, 3 on a cluster of
    /// three or more (a bucket survives losing one server).
    pub replicas: usize,
    /// Disk a node may use for copies of stored objects (see [`crate::s3::blobs`]).
    pub object_cache_bytes: u64,
}

impl ClusterOptions {
    pub fn new(servers: &str) -> Self {
        Self {
            servers: servers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            replicas: 1,
            object_cache_bytes: 2 << 30,
            ..Self::default()
        }
    }
}

/// One node's connection to the cluster's state.
#[derive(Clone)]
pub struct JetStream {
    pub client: async_nats::Client,
    pub context: jetstream::Context,
    meta: kv::Store,
    artifacts: object_store::ObjectStore,
    /// Counts the connections made after the first: a watch made on an earlier one ends,
    /// so its reader watches again and reads what it missed (a consumer bound to a lost
    /// server would otherwise take a heartbeat timeout or more to notice).
    reconnects: tokio::sync::watch::Receiver<u64>,
}

impl JetStream {
    /// Connects and opens (creating on first use) the buckets. Keeps retrying the
    /// connection in the background once it has been made; the first one must succeed.
    pub async fn connect(options: &ClusterOptions) -> StoreResult<Self> {
        anyhow::ensure!(
            !options.servers.is_empty(),
            "--cluster needs at least one nats://HOST:PORT"
        );
        let (reconnected, reconnects) = tokio::sync::watch::channel(0u64);
        let reconnected = std::sync::Arc::new(reconnected);
        let mut connect = async_nats::ConnectOptions::new()
            .name("cirrus")
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let reconnected = reconnected.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            tracing::warn!("lost the connection to NATS; reconnecting")
                        }
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            reconnected.send_modify(|n| *n += 1);
                        }
                        other => tracing::debug!("NATS: {other}"),
                    }
                }
            });
        if let Some(creds) = &options.creds_file {
            connect = connect
                .credentials_file(creds)
                .await
                .with_context(|| format!("reading NATS credentials {}", creds.display()))?;
        }
        if let (Some(user), Some(password)) = (&options.user, &options.password) {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &options.token {
            connect = connect.token(token.clone());
        }
        if let Some(ca) = &options.tls_ca {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        let servers = options.servers.join(", ");
        let client = connect
            .connect(options.servers.as_slice())
            .await
            .with_context(|| format!("connecting to NATS at {servers}"))?;
        let context = jetstream::new(client.clone());
        let meta = open_kv(
            &context,
            META_BUCKET,
            "Cirrus function metadata",
            options.replicas,
            Duration::ZERO,
            false,
        )
        .await
        .with_context(|| format!("on {servers}: is JetStream enabled (nats-server -js)?"))?;
        let artifacts = retry::within(retry::FORMING, "JetStream is not ready yet", || {
            context.create_object_store(object_store::Config {
                bucket: ARTIFACT_BUCKET.into(),
                description: Some("Cirrus artifacts, by sha256".into()),
                num_replicas: options.replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
        })
        .await
        .with_context(|| format!("opening the JetStream object store {ARTIFACT_BUCKET}"))?;
        let mut reconnects = reconnects;
        reconnects.mark_unchanged();
        Ok(Self {
            client,
            context,
            meta,
            artifacts,
            reconnects,
        })
    }

    /// A stream of `SUBJECTS.>` kept `max_age` (made on first use, the same by every
    /// node), waiting for a NATS cluster that is still forming.
    pub(crate) async fn kept_stream(
        &self,
        name: &str,
        description: &str,
        subjects: &str,
        replicas: usize,
        max_age: Duration,
    ) -> StoreResult<()> {
        retry::within(retry::FORMING, "JetStream is not ready yet", || {
            self.context.create_stream(jetstream::stream::Config {
                name: name.into(),
                description: Some(description.into()),
                subjects: vec![format!("{subjects}.>")],
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                max_age,
                ..Default::default()
            })
        })
        .await
        .with_context(|| format!("opening the JetStream stream {name}"))?;
        Ok(())
    }

    /// Whether the connection to NATS is up now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The cluster-wide value of a setting: the one stored, or `candidate` if this node
    /// is the first to store one.
    pub async fn shared_setting(&self, name: &str, candidate: &str) -> StoreResult<String> {
        let key = format!("cluster.{name}");
        match self.meta.create(&key, candidate.to_owned().into()).await {
            Ok(_) => Ok(candidate.to_owned()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let value = self
                    .meta
                    .get(&key)
                    .await?
                    .with_context(|| format!("{key} vanished while it was read"))?;
                Ok(String::from_utf8(value.to_vec()).context("a shared setting is not UTF-8")?)
            }
            Err(e) => Err(e).with_context(|| format!("storing {key}")),
        }
    }
}

/// Every key of a KV bucket starting with `prefix` that holds a message (its value, or
/// the marker of its delete). Read from the bucket stream's subject index: no consumer
/// to create, so it answers as soon as the stream has a leader, also mid-failover.
pub(crate) async fn kv_keys(store: &kv::Store, prefix: &str) -> StoreResult<Vec<String>> {
    use futures_util::TryStreamExt as _;
    let bucket = &store.name;
    let counted: Vec<(String, usize)> = store
        .stream
        .info_with_subjects(format!("$KV.{bucket}.{prefix}>"))
        .await
        .with_context(|| format!("listing the keys of {bucket}"))?
        .try_collect()
        .await
        .with_context(|| format!("listing the keys of {bucket}"))?;
    let strip = format!("$KV.{bucket}.");
    Ok(counted
        .into_iter()
        .filter_map(|(subject, _)| subject.strip_prefix(&strip).map(str::to_owned))
        .collect())
}

/// Deletes `key` if it is still at `revision` (0: holds no message), then removes its
/// messages up to the delete marker, so the subject index (which listings read) no
/// longer has it while a write that came after the delete stays. `false` when another
/// writer changed the key first.
pub(crate) async fn remove_key(store: &kv::Store, key: &str, revision: u64) -> StoreResult<bool> {
    match store.delete_expect_revision(key, Some(revision)).await {
        Ok(()) => {}
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("deleting {key} from {}", store.name)),
    }
    purge_below_marker(store, key).await?;
    Ok(true)
}

/// [`remove_key`] with a delete marker that carries `payload` (the events of the
/// delete, see [`outbox`]; the KV client's delete sends none), published on `context`.
pub(crate) async fn remove_key_carrying(
    context: &jetstream::Context,
    store: &kv::Store,
    key: &str,
    revision: u64,
    payload: bytes::Bytes,
) -> StoreResult<bool> {
    use async_nats::jetstream::context::PublishErrorKind;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("KV-Operation", "DEL");
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        revision.to_string().as_str(),
    );
    let subject = format!("$KV.{}.{key}", store.name);
    let carries = !payload.is_empty();
    let deleted = async {
        context
            .publish_with_headers(subject.clone(), headers, payload)
            .await?
            .await
    };
    let marker = match deleted.await {
        Ok(ack) => ack.sequence,
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("deleting {key} from {}", store.name)),
    };
    // A marker that carries events stays until the relay has read them (and removes it
    // then); one without goes with the rest. A later write of the key stays.
    let keep_from = if carries { marker } else { marker + 1 };
    store
        .stream
        .purge()
        .filter(subject)
        .sequence(keep_from)
        .await
        .with_context(|| format!("removing the deleted {key} from {}", store.name))?;
    Ok(true)
}

/// Removes the messages of a deleted `key` below its delete marker.
async fn purge_below_marker(store: &kv::Store, key: &str) -> StoreResult<()> {
    let marker = retry::retried("reading a delete marker", || store.entry(key.to_owned())).await?;
    if let Some(marker) = marker.filter(|m| m.operation != kv::Operation::Put) {
        store
            .stream
            .purge()
            .filter(format!("$KV.{}.{key}", store.name))
            .sequence(marker.revision + 1)
            .await
            .with_context(|| format!("removing the deleted {key} from {}", store.name))?;
    }
    Ok(())
}

/// A message of a head (JSON) and a body: the head's length (4 bytes, big-endian), the
/// head, the body. Events and table rows travel so, their bytes never re-encoded.
pub(crate) fn frame(head: &impl serde::Serialize, body: &[u8]) -> StoreResult<bytes::Bytes> {
    let head = serde_json::to_vec(head)?;
    let mut message = Vec::with_capacity(4 + head.len() + body.len());
    message.extend_from_slice(&u32::try_from(head.len())?.to_be_bytes());
    message.extend_from_slice(&head);
    message.extend_from_slice(body);
    Ok(message.into())
}

/// The head and body of a [`frame`]d message; `what` names it in errors.
pub(crate) fn unframe<'a, H: serde::de::DeserializeOwned>(
    message: &'a [u8],
    what: &str,
) -> StoreResult<(H, &'a [u8])> {
    let (len, rest) = message
        .split_first_chunk::<4>()
        .with_context(|| format!("{what} without its head"))?;
    let len = u32::from_be_bytes(*len) as usize;
    anyhow::ensure!(rest.len() >= len, "{what} cut short");
    let (head, body) = rest.split_at(len);
    let head = serde_json::from_slice(head).with_context(|| format!("{what}'s head"))?;
    Ok((head, body))
}

/// Opens (making on first use) the KV bucket `bucket`, its entries forgotten `max_age`
/// after their last write (zero: kept). `direct` lets any replica answer a read (fast,
/// possibly a moment behind the leader); without it reads go to the leader, so a reader
/// sees every write acknowledged before it. The bucket's stream is made the way the KV
/// client makes it: the client's own `create_key_value` first asks for account details
/// that Debian's NATS 2.9 answers in a shape the client cannot read. A bucket made
/// earlier with other settings is used as it is (the first node's settings hold).
pub(crate) async fn open_kv(
    context: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
    max_age: Duration,
    direct: bool,
) -> StoreResult<kv::Store> {
    let name = format!("KV_{bucket}");
    let config = jetstream::stream::Config {
        name: name.clone(),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: direct,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    retry::within(retry::FORMING, "JetStream is not ready yet", || async {
        match context.create_stream(config.clone()).await {
            Ok(_) => Ok(()),
            Err(e) => match context.get_stream(&name).await {
                Ok(stream) => {
                    tracing::warn!(
                        "KV bucket {bucket} is used with the settings it was made with: {e}"
                    );
                    read_from_leader_if_asked(context, stream.cached_info(), direct).await;
                    Ok(())
                }
                Err(_) => Err(e),
            },
        }
    })
    .await
    .with_context(|| {
        format!("opening the JetStream KV bucket {bucket} (with {replicas} replicas)")
    })?;
    context
        .get_key_value(bucket)
        .await
        .with_context(|| format!("opening the JetStream KV bucket {bucket}"))
}

/// An existing bucket keeps the settings it was made with (replicas and ages are the
/// operator's to change), except direct reads: a bucket the code reads from its leader
/// for correctness (a watch started after a stale read misses the newer value) is made
/// so, as a bucket made by an older version may allow any replica to answer.
async fn read_from_leader_if_asked(
    context: &jetstream::Context,
    info: &jetstream::stream::Info,
    direct: bool,
) {
    if direct || !info.config.allow_direct {
        return;
    }
    let mut config = info.config.clone();
    config.allow_direct = false;
    match context.update_stream(config).await {
        Ok(_) => tracing::info!(
            "stream {}: reads now go to its leader (allow_direct off)",
            info.config.name
        ),
        Err(e) => tracing::warn!(
            "stream {} still allows direct reads, and a node may read a stale value \
             from a replica: {e}",
            info.config.name
        ),
    }
}

#[async_trait::async_trait]
impl ArtifactStore for JetStream {
    async fn put(&self, sha256: &str, bytes: bytes::Bytes) -> StoreResult<()> {
        if self.artifacts.info(sha256).await.is_ok() {
            return Ok(());
        }
        retry::retried(
            &format!("storing artifact {sha256} in JetStream"),
            || async {
                let mut reader: &[u8] = &bytes;
                self.artifacts.put(sha256, &mut reader).await
            },
        )
        .await?;
        Ok(())
    }

    async fn get(&self, sha256: &str) -> StoreResult<Option<bytes::Bytes>> {
        // A read waits out a failover as a write does.
        retry::within(retry::FAILOVER, "reading an artifact", || {
            self.read_artifact(sha256)
        })
        .await
    }
}

impl JetStream {
    async fn read_artifact(&self, sha256: &str) -> StoreResult<Option<bytes::Bytes>> {
        let mut object = match self.artifacts.get(sha256).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading artifact {sha256} from JetStream"))
            }
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("reading artifact {sha256} from JetStream"))?;
        Ok(Some(bytes.into()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::NatsServer;

    async fn allows_direct(context: &jetstream::Context, bucket: &str) -> bool {
        let stream = context.get_stream(format!("KV_{bucket}")).await.unwrap();
        stream.cached_info().config.allow_direct
    }

    /// A bucket an older version made with direct reads is switched to leader reads
    /// where the code asks for them, never the other way; its values and other
    /// settings survive.
    #[tokio::test]
    async fn an_existing_bucket_gets_leader_reads_when_asked() {
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let context = jetstream::new(client);
        let day = Duration::from_secs(86_400);

        let old = open_kv(&context, "b", "a bucket", 1, day, true)
            .await
            .unwrap();
        old.put("k", "v1".into()).await.unwrap();
        assert!(allows_direct(&context, "b").await);

        let reopened = open_kv(&context, "b", "a bucket", 1, day, false)
            .await
            .unwrap();
        assert!(!allows_direct(&context, "b").await);
        let value = reopened.get("k").await.unwrap().unwrap();
        assert_eq!(&value[..], b"v1");
        let info = context.get_stream("KV_b").await.unwrap();
        assert_eq!(info.cached_info().config.max_age, day, "ages are kept");

        open_kv(&context, "b", "a bucket", 1, day, true)
            .await
            .unwrap();
        assert!(
            !allows_direct(&context, "b").await,
            "leader reads are never switched off by a node"
        );
    }
}
