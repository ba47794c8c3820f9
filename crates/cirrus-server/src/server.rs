//! Assembling and running a server: open the store, build the runtime, load the
//! registry, pre-load pinned versions, serve until shutdown, then drain.

use crate::api::{self, AppState, AppStateRef};
use crate::clock::Clock;
use crate::invoker::{Invoker, PayloadLimits};
use crate::records::RecordSink;
use crate::registry::{DeployRequest, Registry};
use crate::scaler::{Scaler, ScalerSettings};
use crate::store::{
    ArtifactCache, ArtifactStore, EventQueue, FsArtifactStore, FunctionStore, RecordStore,
    SqliteStore,
};
use anyhow::Context as _;
use cirrus_api::{DeployResult, Manifest, Qualifier};
use cirrus_runtime::{MemoryBudget, Runtime, RuntimeConfig, WasmExecutor};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Default artifact size limit: room for interpreter-based components (a Python
/// component is ~40 MB).
pub const DEFAULT_MAX_ARTIFACT_BYTES: usize = 100 << 20;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Try wasmtime's pooling allocator (falls back automatically).
    pub pooling: bool,
    pub scaler: ScalerSettings,
    pub payload: PayloadLimits,
    pub max_artifact_bytes: usize,
    /// Asynchronous invocation: event size, prefetch, idempotency window.
    pub queue: crate::queue::QueueSettings,
    /// An OpenTelemetry collector (OTLP/HTTP) to send a span per invocation to.
    pub otlp_endpoint: Option<String>,
    /// The price table usage reports are costed with.
    pub prices: cirrus_api::usage::Prices,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How often idle versions are looked for.
    pub sweep_interval: Duration,
    /// Size limits of the S3-compatible object API.
    pub s3: crate::s3::S3Limits,
    /// Connection caps and timeouts of both listeners.
    pub connections: crate::connections::ConnectionLimits,
    /// What one lineage (a request and everything it leads to) may do.
    pub containment: crate::lineage::Containment,
    /// How long records, logs, dead letters and incomplete uploads are kept.
    pub retention: crate::retention::RetentionSettings,
    /// Linear memory all environments together may hold; `None` derives it from the
    /// host's memory (three quarters of it, or of the cgroup's limit).
    pub memory_budget_bytes: Option<u64>,
    /// CPU-bound guests that may run at once; `None`: one fewer than the host's cores.
    pub cpu_lanes: Option<usize>,
    /// The key secrets are sealed with; `None`: `<data-dir>/secrets.key`, created on
    /// first start. One given here must exist.
    pub secrets_key_file: Option<PathBuf>,
    /// TLS on every listener; `None`: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Cluster mode: shared state in NATS JetStream (see [`crate::cluster`]).
    pub cluster: Option<crate::store::jetstream::ClusterOptions>,
}

/// Environments the instance pool must hold at once: every invocation in flight, plus
/// idle ones kept warm.
fn environment_slots(scaler: &ScalerSettings) -> u32 {
    let in_flight = u32::try_from(scaler.global_concurrency).unwrap_or(u32::MAX);
    in_flight.saturating_add(1_000)
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            pooling: true,
            scaler: ScalerSettings::default(),
            payload: PayloadLimits::default(),
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            prices: crate::billing::default_prices(),
            otlp_endpoint: None,
            queue: crate::queue::QueueSettings::default(),
            drain_timeout: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(1),
            s3: crate::s3::S3Limits::default(),
            connections: crate::connections::ConnectionLimits::default(),
            containment: crate::lineage::Containment::default(),
            retention: crate::retention::RetentionSettings::default(),
            memory_budget_bytes: None,
            cpu_lanes: None,
            secrets_key_file: None,
            tls: None,
            cluster: None,
        }
    }
}

pub struct Server {
    state: AppStateRef,
    s3: Arc<crate::s3::S3>,
    s3_listener: Option<tokio::net::TcpListener>,
    /// The dashboard's own listener (its own origin, apart from functions' pages).
    dashboard_listener: Option<tokio::net::TcpListener>,
    tls: Option<Arc<crate::tls::Tls>>,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    shutdown_tx: watch::Sender<bool>,
    /// The open-file limit in force (raised at start), which sizes the connection caps.
    fd_limit: Option<u64>,
    pruner: Arc<crate::retention::Pruner>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The cluster's event queue, which the outbox relays publish to.
    cluster_queue: Option<Arc<crate::store::jetstream::events::ClusterQueue>>,
}

impl Server {
    /// Opens (or creates) everything under the data dir. Blocking work runs off the
    /// async runtime.
    pub async fn start(config: ServerConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        config.connections.validate()?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let mut token = crate::auth::load_or_create_token(&data_dir)?;
        let cluster = match &config.cluster {
            Some(options) => {
                let store = crate::store::jetstream::JetStream::connect(options).await?;
                let shared = store.shared_setting("admin-token", &token).await?;
                if shared != token {
                    crate::auth::replace_private_file(
                        &data_dir.join(crate::auth::TOKEN_FILE),
                        format!("{shared}\n").as_bytes(),
                    )?;
                    tracing::info!(
                        "using the cluster's admin token (written to this node's token file)"
                    );
                    token = shared;
                }
                let retention = config
                    .retention
                    .records_max_age
                    .unwrap_or(Duration::from_secs(30 * 86_400));
                store.records_stream(options.replicas, retention).await?;
                let audit_age = config
                    .retention
                    .audit_max_age
                    .unwrap_or(Duration::from_secs(366 * 86_400));
                store.audit_stream(options.replicas, audit_age).await?;
                Some(Arc::new(crate::cluster::Cluster {
                    store,
                    node: crate::cluster::node_id(&data_dir)?,
                }))
            }
            None => None,
        };
        // One set of S3/Lambda keys for the whole cluster, in every node's credentials
        // file (where clients on that machine read them).
        if let Some(cluster) = &cluster {
            let local = crate::s3::credentials::load_or_create_text(&data_dir)?;
            let shared = cluster
                .store
                .shared_setting("s3-credentials", &local)
                .await?;
            if shared != local {
                crate::auth::replace_private_file(
                    &data_dir.join(crate::s3::credentials::CREDENTIALS_FILE),
                    shared.as_bytes(),
                )?;
            }
        }
        let fd_limit = crate::fd_limit::raise_fd_limit();
        let budget = MemoryBudget::new(
            config
                .memory_budget_bytes
                .unwrap_or_else(|| MemoryBudget::for_host().limit()),
        );
        let instances = environment_slots(&config.scaler);
        crate::fd_limit::raise_map_count(instances);
        let runtime_config = RuntimeConfig {
            pooling: config.pooling,
            instances,
            budget: Some(budget.clone()),
            lanes: config.cpu_lanes.map_or_else(
                cirrus_runtime::CpuLanes::for_host,
                cirrus_runtime::CpuLanes::new,
            ),
            ..RuntimeConfig::new(data_dir.join("compiled"))
        };
        let lineage_budget = config.containment.max_lineage_events;
        let secrets_key_file = config.secrets_key_file.clone();
        let admin_token = token.clone();
        // In a cluster, secrets and API keys are the cluster's (see `jetstream::access`).
        let shared_access = cluster.as_ref().map(|c| c.store.clone());
        let clustered = cluster.is_some();
        let (store, artifacts, runtime, blobs, credentials, sealing) =
            tokio::task::spawn_blocking(move || {
                let store = Arc::new(SqliteStore::open(&data_dir.join("cirrus.db"))?);
                store.set_lineage_budget(lineage_budget);
                let artifacts: Arc<dyn ArtifactStore> =
                    Arc::new(FsArtifactStore::open(&data_dir.join("artifacts"))?);
                let runtime = Arc::new(Runtime::new(runtime_config)?);
                // In a cluster the object bytes are the cluster's: opened below.
                let blobs = if clustered {
                    None
                } else {
                    let blobs = crate::s3::blobs::Blobs::open(&data_dir.join("objects"))?;
                    let live = store.live_blobs_blocking()?;
                    let leftovers = blobs.sweep(&live, 0)?;
                    if leftovers > 0 {
                        tracing::info!(
                            blobs = leftovers,
                            "removed object data of uploads interrupted by the last stop"
                        );
                    }
                    Some(Arc::new(blobs))
                };
                let sealing = Arc::new(match &secrets_key_file {
                    Some(path) => crate::secrets::SealingKey::load(path, false)?,
                    None => crate::secrets::SealingKey::load(
                        &data_dir.join(crate::secrets::KEY_FILE),
                        true,
                    )?,
                });
                let credentials = crate::s3::credentials::load_or_create(&data_dir)?;
                anyhow::Ok((store, artifacts, runtime, blobs, credentials, sealing))
            })
            .await??;
        let access: Arc<dyn crate::store::AccessStore> = match shared_access {
            Some(js) => Arc::new(js),
            None => Arc::new(store.clone()),
        };
        let secrets =
            Arc::new(crate::secrets::Secrets::load(sealing.clone(), access.clone()).await?);
        let keys =
            Arc::new(crate::keys::ApiKeys::load(access.clone(), sealing, admin_token).await?);
        let credentials = credentials.with_issued(keys.clone());
        tracing::info!(pooling = runtime.pooling(), "runtime ready");
        let (artifacts, function_store): (Arc<dyn ArtifactStore>, Arc<dyn FunctionStore>) =
            match &cluster {
                Some(cluster) => (
                    Arc::new(cluster.store.clone()),
                    Arc::new(cluster.store.clone()),
                ),
                None => (artifacts, store.clone()),
            };
        let artifacts = Arc::new(ArtifactCache::new(
            &config.data_dir.join("artifacts"),
            artifacts,
        )?);
        let cluster_queue = match &cluster {
            Some(cluster) => {
                let replicas = config.cluster.as_ref().map_or(1, |o| o.replicas);
                let queue = crate::store::jetstream::events::ClusterQueue::open(
                    cluster.store.clone(),
                    replicas,
                    config.queue.idempotency_window,
                    crate::queue::LINEAGE_MEMORY,
                    config.retention.dead_letter_max_age,
                )
                .await?;
                queue.set_lineage_budget(lineage_budget);
                Some(queue)
            }
            None => None,
        };
        let event_queue: Arc<dyn EventQueue> = match &cluster_queue {
            Some(queue) => queue.clone(),
            None => Arc::new(store.clone()),
        };
        let kv: Arc<dyn crate::store::KvStore> = match (&cluster, &cluster_queue) {
            (Some(cluster), Some(queue)) => Arc::new(
                crate::store::jetstream::tables::ClusterTables::open(
                    &cluster.store,
                    config.cluster.as_ref().map_or(1, |o| o.replicas),
                    queue.clone(),
                )
                .await?,
            ),
            _ => Arc::new(store.clone()),
        };
        let (objects, blobs, retention_store): (
            Arc<dyn crate::store::ObjectStore>,
            Arc<crate::s3::blobs::Blobs>,
            Arc<dyn crate::store::RetentionStore>,
        ) = match (&cluster, &cluster_queue, blobs) {
            (Some(cluster), Some(queue), _) => {
                let options = config.cluster.clone().unwrap_or_default();
                let objects = Arc::new(
                    crate::store::jetstream::objects::ClusterObjects::open(
                        &cluster.store,
                        options.replicas,
                        queue.clone(),
                    )
                    .await?,
                );
                let root = config.data_dir.join("objects");
                let shared = objects.clone();
                let blobs = tokio::task::spawn_blocking(move || {
                    crate::s3::blobs::Blobs::open_shared(&root, shared, options.object_cache_bytes)
                })
                .await??;
                let blobs = Arc::new(blobs);
                let retention = Arc::new(crate::store::jetstream::objects::ClusterRetention {
                    local: store.clone(),
                    objects: objects.clone(),
                });
                (objects, blobs, retention)
            }
            (_, _, blobs) => (
                Arc::new(store.clone()),
                blobs.context("the blob directory was not opened")?,
                store.clone(),
            ),
        };
        let record_store: Arc<dyn RecordStore> = match &cluster {
            Some(cluster) => Arc::new(crate::store::jetstream::records::ReplicatedRecords::new(
                store,
                cluster.store.clone(),
                cluster.node.clone(),
            )),
            None => store,
        };
        let recovered = event_queue.recover().await?;
        if recovered > 0 {
            tracing::warn!(
                events = recovered,
                "events interrupted by the last stop will be delivered again"
            );
        }
        let registry = Arc::new(
            Registry::load(
                function_store,
                artifacts.clone(),
                runtime.clone(),
                clock.clone(),
                config.max_artifact_bytes,
            )
            .await?,
        );
        let platform = Arc::new(crate::invoker::PlatformAccess {
            issuer: crate::function_token::TokenIssuer::new(&token),
            lineage: crate::lineage::LineageSigner::new(&token),
            api_authority: std::sync::OnceLock::new(),
            nested: crate::lineage::NestedCalls::new(config.containment.max_lineage_in_flight),
            secrets: secrets.clone(),
        });
        registry.attach_secrets(secrets.clone());
        let spec_for: crate::environments::SpecFor = {
            let platform = platform.clone();
            let max_log_bytes = config.payload.max_log_bytes;
            Arc::new(move |version| platform.environment(version, max_log_bytes))
        };
        // Native runtimes only where they can be confined; otherwise they are refused,
        // with the reason, at deploy and invoke.
        let native = cirrus_runtime::native::host_support().and_then(|()| {
            let runtimes = cirrus_runtime::native::Runtimes::detect();
            cirrus_runtime::native::NativeExecutor::new(
                &config.data_dir.join("native"),
                runtimes.clone(),
            )
            .map(|executor| {
                (
                    Arc::new(executor) as Arc<dyn cirrus_runtime::Executor>,
                    runtimes,
                )
            })
            .map_err(|e| {
                format!(
                    "preparing {}: {e}",
                    config.data_dir.join("native").display()
                )
            })
        });
        match &native {
            Ok((_, runtimes)) => tracing::info!("native runtimes: {}", runtimes.names().join(", ")),
            Err(why) => tracing::warn!("native runtimes are off: {why}"),
        }
        registry.attach_native(
            native
                .as_ref()
                .map(|(_, r)| r.clone())
                .map_err(Clone::clone),
        );
        let pools = crate::environments::Pools::new(
            Arc::new(cirrus_runtime::ByKind {
                wasm: Arc::new(WasmExecutor(runtime.clone())),
                native: native.map(|(executor, _)| executor),
            }),
            artifacts,
            clock.clone(),
            spec_for,
            Some(budget),
            config.scaler.queue_timeout,
        );
        let scaler = Arc::new(Scaler::new(pools, config.scaler.clone()));
        registry.attach_capacity(scaler.capacity().clone());
        let records = RecordSink::start(record_store.clone());
        let invoker = Arc::new(Invoker {
            registry: registry.clone(),
            scaler: scaler.clone(),
            records: records.clone(),
            clock: clock.clone(),
            limits: config.payload.clone(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            otlp: config
                .otlp_endpoint
                .as_deref()
                .map(crate::otlp::OtlpSink::start)
                .transpose()?,
            platform,
        });
        let wake = Arc::new(tokio::sync::Notify::new());
        let events = crate::queue::start_sink(
            event_queue.clone(),
            clock.clone(),
            &config.queue,
            wake.clone(),
        );
        let kv_writer = Arc::new(crate::sources::table::KvWriter {
            kv: kv.clone(),
            registry: registry.clone(),
            clock: clock.clone(),
            wake: wake.clone(),
        });
        let s3 = Arc::new(crate::s3::S3 {
            store: objects,
            blobs,
            credentials,
            notifier: crate::sources::bucket::Notifier::new(registry.clone(), wake.clone()),
            clock: clock.clone(),
            limits: config.s3.clone(),
        });
        let pruner = Arc::new(crate::retention::Pruner::new(
            retention_store,
            s3.blobs.clone(),
            clock.clone(),
            config.retention.clone(),
        ));
        let (shutdown_tx, shutdown) = watch::channel(false);
        let webhooks = Arc::new(crate::webhooks::Webhooks::new(&token)?);
        let state = Arc::new(AppState {
            cluster: cluster.clone(),
            registry,
            scaler,
            invoker,
            records,
            record_store,
            token,
            max_artifact_bytes: config.max_artifact_bytes,
            prices: config.prices.clone(),
            events,
            event_queue,
            wake,
            max_event_bytes: config.queue.max_event_bytes,
            kv_writer,
            kv,
            s3: s3.clone(),
            sources: Arc::default(),
            webhooks,
            shutdown,
            keys,
            secrets,
            audit: Arc::new(crate::audit::Audit::new(access, clock.clone())),
            dashboard_url: std::sync::OnceLock::new(),
        });
        let tls = config.tls.clone().map(crate::tls::Tls::new).transpose()?;
        let server = Self {
            state,
            s3,
            s3_listener: None,
            dashboard_listener: None,
            tls,
            config,
            clock,
            shutdown_tx,
            fd_limit,
            pruner,
            cluster,
            cluster_queue,
        };
        server.compile_missing();
        Ok(server)
    }

    pub fn state(&self) -> &AppStateRef {
        &self.state
    }

    /// Serves the S3-compatible object API on this listener too.
    pub fn with_s3_listener(mut self, listener: tokio::net::TcpListener) -> Self {
        self.s3_listener = Some(listener);
        self
    }

    /// Serves the dashboard (and the management API it calls) on this listener, its own
    /// origin: a function's page on the main listener cannot read the operator's
    /// session. The main listener's `/ui` then points here.
    pub fn with_dashboard_listener(mut self, listener: tokio::net::TcpListener) -> Self {
        if let Ok(addr) = listener.local_addr() {
            let _ = self
                .state
                .dashboard_url
                .set(format!("{}://{addr}/ui", self.scheme()));
        }
        self.dashboard_listener = Some(listener);
        self
    }

    /// `https` when the listeners speak TLS.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn s3(&self) -> &Arc<crate::s3::S3> {
        &self.s3
    }

    pub fn admin_token(&self) -> &str {
        &self.state.token
    }

    pub fn router(&self) -> axum::Router {
        self.guarded(api::router(self.state.clone()))
    }

    /// In cluster mode, `router` behind the cluster's guard (see [`crate::cluster`]).
    fn guarded(&self, router: axum::Router) -> axum::Router {
        match &self.cluster {
            Some(cluster) => router.layer(axum::middleware::from_fn_with_state(
                cluster.clone(),
                crate::cluster::guard,
            )),
            None => router,
        }
    }

    /// Whether this node keeps its shared state in NATS JetStream.
    pub fn clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Compiles, in the background, live versions whose code is not in the cache (after
    /// a wasmtime upgrade, or a cleared cache), so requests do not pay for it.
    fn compile_missing(&self) {
        let runtime = self.state.registry.runtime().clone();
        let artifacts = self.state.registry.artifacts().clone();
        let missing: Vec<_> = self
            .state
            .registry
            .live_versions()
            .into_iter()
            .filter(|v| !runtime.cache().contains(&v.sha256))
            .collect();
        if missing.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for v in missing {
                let compiled = match artifacts.local(&v.sha256).await {
                    Ok(path) => {
                        let runtime = runtime.clone();
                        let sha256 = v.sha256.clone();
                        tokio::task::spawn_blocking(move || runtime.ensure_compiled(&sha256, &path))
                            .await
                            .unwrap_or_else(|e| Err(anyhow::anyhow!("compiling task failed: {e}")))
                    }
                    Err(e) => Err(e),
                };
                match compiled {
                    Ok(_) => {
                        tracing::info!(function = %v.function, version = v.version, "compiled into the code cache")
                    }
                    Err(e) => {
                        tracing::warn!(function = %v.function, version = v.version, "compiling failed: {e:#}")
                    }
                }
            }
        });
    }

    /// Versions of functions with `min_loaded > 0` get their environments before traffic
    /// arrives.
    async fn preload_pinned(&self) {
        for version in self.state.registry.live_versions() {
            if version.config.min_loaded > 0 {
                if let Err(e) = self.state.scaler.preload(&version).await {
                    tracing::warn!(function = %version.function, version = version.version, "preloading failed: {e}");
                }
            }
        }
    }

    /// Deploys every function of a manifest (unchanged ones are left as they are).
    pub async fn deploy_manifest(&self, manifest: &Manifest) -> anyhow::Result<Vec<DeployResult>> {
        let mut results = Vec::new();
        for name in manifest.deploy_order() {
            let Some(function) = manifest.functions.get(&name) else {
                continue;
            };
            let name = &name;
            let source = function.source.clone();
            let limit = self.config.max_artifact_bytes as u64;
            let bytes = tokio::task::spawn_blocking(move || {
                cirrus_api::manifest::read_artifact(&source, limit)
            })
            .await?
            .with_context(|| format!("functions.{name}: reading {}", function.source.display()))?;
            // Triggers the manifest drops go first: see `remove_stale_triggers`.
            self.state
                .registry
                .remove_stale_triggers(name, &function.triggers)
                .await
                .map_err(|f| anyhow::anyhow!("functions.{name}.triggers: {}", f.0.message))?;
            let result = self
                .state
                .registry
                .deploy(DeployRequest {
                    name: name.clone(),
                    config: function.config.clone(),
                    artifact: Some(bytes),
                    expected_latest: None,
                })
                .await
                .map_err(|f| anyhow::anyhow!("functions.{name}: {}", f.0.message))?;
            self.state
                .registry
                .sync_triggers(name, &function.triggers)
                .await
                .map_err(|f| anyhow::anyhow!("functions.{name}.triggers: {}", f.0.message))?;
            // `min_loaded` environments are started by `serve`, once the API's address
            // (which functions with storage grants are given) is known.
            results.push(result);
        }
        Ok(results)
    }

    /// Serves until `shutdown` resolves, then stops accepting, waits for in-flight
    /// requests (at most `drain_timeout`) and flushes records.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = self.router();
        let state = self.state.clone();
        if let Ok(mut addr) = listener.local_addr() {
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let _ = state.invoker.platform.api_authority.set(addr.to_string());
        }
        // Before the first request is accepted, and after the address is known: a pinned
        // environment keeps the variables it starts with.
        self.preload_pinned().await;
        let dispatcher = Arc::new(crate::queue::Dispatcher {
            queue: state.event_queue.clone(),
            invoker: state.invoker.clone(),
            registry: state.registry.clone(),
            clock: self.clock.clone(),
            wake: state.wake.clone(),
            events: state.events.clone(),
            kv: state.kv_writer.clone(),
            s3: state.s3.clone(),
            webhooks: state.webhooks.clone(),
            prefetch: self
                .config
                .queue
                .prefetch(self.config.scaler.global_concurrency),
            drain: self.config.drain_timeout,
        });
        let dispatching = tokio::spawn(dispatcher.run(state.shutdown.clone()));
        let following = tokio::spawn(state.registry.clone().follow(state.shutdown.clone()));
        let access_following = self.cluster.as_ref().map(|cluster| {
            tokio::spawn(crate::store::jetstream::access::follow(
                cluster.store.clone(),
                state.secrets.clone(),
                state.keys.clone(),
                state.shutdown.clone(),
            ))
        });
        let replicating = self.cluster.as_ref().map(|cluster| {
            tokio::spawn(crate::store::jetstream::records::replicate(
                cluster.store.clone(),
                state.record_store.clone(),
                cluster.node.clone(),
                state.records.clone(),
                state.shutdown.clone(),
            ))
        });
        let scheduler = crate::sources::schedule::Scheduler {
            registry: state.registry.clone(),
            store: state.registry.store().clone(),
            events: state.events.clone(),
            clock: self.clock.clone(),
        };
        let scheduling = tokio::spawn(scheduler.run(state.shutdown.clone()));
        let leases = match &self.cluster {
            Some(cluster) => Some(Arc::new(
                crate::store::jetstream::leases::Leases::open(
                    &cluster.store,
                    self.config.cluster.as_ref().map_or(1, |o| o.replicas),
                    cluster.node.clone(),
                )
                .await?,
            )),
            None => None,
        };
        // One node at a time relays the events that table rows and objects carry (see
        // `outbox`).
        let mut relaying = Vec::new();
        if let (Some(cluster), Some(queue), Some(leases)) =
            (&self.cluster, &self.cluster_queue, &leases)
        {
            use crate::store::jetstream::{objects, outbox, tables};
            let carriers: [(&'static str, outbox::CarriedFn); 2] = [
                (tables::TABLES_BUCKET, tables::carried),
                (objects::OBJECTS_BUCKET, objects::carried),
            ];
            for (bucket, carried) in carriers {
                relaying.push(tokio::spawn(outbox::relay(
                    cluster.store.clone(),
                    self.config.cluster.as_ref().map_or(1, |o| o.replicas),
                    bucket,
                    carried,
                    queue.clone(),
                    leases.clone(),
                    state.shutdown.clone(),
                )));
            }
        }
        let subscriptions = tokio::spawn(crate::sources::subscriptions::run(
            Arc::new(crate::sources::subscriptions::Context {
                registry: state.registry.clone(),
                events: state.events.clone(),
                clock: self.clock.clone(),
                states: state.sources.clone(),
                metrics: state.invoker.metrics.clone(),
                max_event_bytes: state.max_event_bytes,
                leases,
            }),
            state.shutdown.clone(),
        ));
        let sweeper = tokio::spawn(sweeper(
            state.clone(),
            self.config.sweep_interval,
            state.shutdown.clone(),
        ));
        let (main_limits, s3_limits) = self.config.connections.resolve(self.fd_limit);
        tracing::info!(
            max_connections = main_limits.max_connections,
            s3_max_connections = s3_limits.max_connections,
            fd_limit = self.fd_limit,
            "connection caps"
        );
        let pruning = tokio::spawn(self.pruner.clone().run(state.shutdown.clone()));
        let sweeping_blobs = self.cluster.as_ref().map(|_| {
            tokio::spawn(sweep_shared_blobs(
                self.s3.clone(),
                self.clock.clone(),
                state.shutdown.clone(),
            ))
        });
        let reloading = self
            .tls
            .clone()
            .map(|tls| tokio::spawn(tls.watch(state.shutdown.clone())));
        let s3_router = match &self.cluster {
            Some(cluster) => crate::s3::router(self.s3.clone()).layer(
                axum::middleware::from_fn_with_state(cluster.clone(), crate::cluster::s3_guard),
            ),
            None => crate::s3::router(self.s3.clone()),
        };
        let dashboard_router = self.guarded(api::dashboard_router(state.clone()));
        let objects = self.s3_listener.map(|listener| {
            tokio::spawn(crate::connections::serve(
                listener,
                s3_router,
                s3_limits,
                self.tls.clone(),
                state.shutdown.clone(),
            ))
        });
        let dashboard = self.dashboard_listener.map(|listener| {
            tokio::spawn(crate::connections::serve(
                listener,
                dashboard_router,
                main_limits,
                self.tls.clone(),
                state.shutdown.clone(),
            ))
        });
        let serving = crate::connections::serve(
            listener,
            router,
            main_limits,
            self.tls.clone(),
            state.shutdown.clone(),
        );
        tokio::pin!(serving);
        let drain_timeout = self.config.drain_timeout;
        // Serving ends only once shutdown has begun and its connections have closed.
        tokio::select! {
            () = &mut serving => {}
            () = shutdown => {
                tracing::info!("shutting down: draining in-flight requests");
                let _ = self.shutdown_tx.send(true);
                if tokio::time::timeout(drain_timeout, &mut serving).await.is_err() {
                    tracing::warn!(
                        "drain timeout of {drain_timeout:?} passed with requests still in flight"
                    );
                }
            }
        }
        sweeper.abort();
        pruning.abort();
        if let Some(sweeping) = sweeping_blobs {
            sweeping.abort();
        }
        if let Some(reloading) = reloading {
            reloading.abort();
        }
        if let Some(dashboard) = dashboard {
            let _ = tokio::time::timeout(drain_timeout, dashboard).await;
        }
        scheduling.abort();
        following.abort();
        if let Some(task) = access_following {
            task.abort();
        }
        if let Some(replicating) = replicating {
            replicating.abort();
        }
        for relay in relaying {
            relay.abort();
        }
        // It closes its connections and hands its leases back (bounded: a lease not
        // handed back expires).
        if tokio::time::timeout(Duration::from_secs(5), subscriptions)
            .await
            .is_err()
        {
            tracing::warn!("the triggers' connections did not stop in time");
        }
        if let Some(objects) = objects {
            // Uploads in flight finish (or the drain timeout above has passed).
            let _ = tokio::time::timeout(drain_timeout, objects).await;
        }
        // The dispatcher stopped claiming when shutdown began; wait for its deliveries.
        let _ = dispatching.await;
        state.records.flush().await;
        Ok(())
    }
}

/// How often a cluster node sweeps the cluster's object bytes.
const SHARED_BLOB_SWEEP: Duration = Duration::from_secs(3600);

/// Removes the cluster's object bytes that no object or part names (what writes cut off
/// by a node's stop left, see [`crate::s3::blobs::Blobs::sweep`]): at start, then every
/// [`SHARED_BLOB_SWEEP`] until shutdown.
async fn sweep_shared_blobs(
    s3: Arc<crate::s3::S3>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (blobs, now) = (s3.blobs.clone(), clock.now_ms());
        let swept = match s3.store.live_blobs().await {
            Ok(live) => tokio::task::spawn_blocking(move || blobs.sweep(&live, now))
                .await
                .unwrap_or_else(|e| Err(e.into())),
            Err(e) => Err(e),
        };
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::info!(blobs = n, "removed object data of interrupted uploads"),
            Err(e) => tracing::warn!("sweeping the cluster's object data failed: {e:#}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SHARED_BLOB_SWEEP) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Unloads versions idle past their function's `idle_timeout`, once. The background
/// sweeper calls this periodically; tests and benchmarks call it with a manual clock.
pub fn sweep_idle(state: &AppState) -> usize {
    let registry = &state.registry;
    state.scaler.sweep(|function, version| {
        let v = registry
            .resolve(function, &Qualifier::Version(version))
            .ok()?;
        let pinned = v.config.min_loaded > 0 && registry.is_live(function, version);
        Some((v.as_ref().clone(), pinned))
    })
}

async fn sweeper(state: AppStateRef, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let unloaded = sweep_idle(&state);
                if unloaded > 0 {
                    tracing::debug!(unloaded, "unloaded idle versions");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
