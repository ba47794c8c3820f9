//! Functions, versions and aliases: deploy logic, and the in-memory view every
//! invocation resolves against (the store is written through, never read per request).

use crate::clock::{rfc3339, Clock};
use crate::error::Failure;
use crate::store::{ArtifactCache, FunctionStore, MetaChange, Revised, Revision, VersionTaken};
use cirrus_api::pipeline::self_loop;
use cirrus_api::spec::{find_cycle, next_functions, validate_alias, validate_name};
use cirrus_api::trigger::RoutePattern;
use cirrus_api::{
    AliasInfo, ApiError, ArtifactKind, DeployResult, ErrorCode, FunctionConfig, FunctionInfo,
    Qualifier, TriggerInfo, TriggerSpec, VersionInfo,
};
use cirrus_runtime::{Artifact, ArtifactError, Runtime};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone)]
struct FunctionEntry {
    versions: BTreeMap<u32, Arc<VersionInfo>>,
    aliases: BTreeMap<String, u32>,
    triggers: Vec<TriggerInfo>,
    /// Tells this function apart from an earlier one of the same name (deleted, then
    /// created again): function tokens name it, so a deleted function's tokens die.
    incarnation: u64,
}

impl FunctionEntry {
    fn new() -> Self {
        Self {
            versions: BTreeMap::new(),
            aliases: BTreeMap::new(),
            triggers: Vec::new(),
            incarnation: new_incarnation(),
        }
    }

    /// A function as the store holds it.
    fn stored(stored: crate::store::StoredFunction, incarnation: u64) -> (String, Self) {
        let entry = Self {
            versions: stored
                .versions
                .into_iter()
                .map(|v| (v.version, Arc::new(v)))
                .collect(),
            aliases: stored.aliases.into_iter().collect(),
            triggers: stored.triggers,
            incarnation,
        };
        (stored.name, entry)
    }

    fn latest(&self) -> Option<&Arc<VersionInfo>> {
        self.versions.values().next_back()
    }

    fn info(&self, name: &str) -> Option<FunctionInfo> {
        let latest = self.latest()?;
        Some(FunctionInfo {
            name: name.to_owned(),
            latest: (**latest).clone(),
            versions: self.versions.len() as u32,
            aliases: self.aliases.clone(),
            triggers: self.triggers.clone(),
        })
    }
}

/// What a deploy brings: a new artifact, or none to keep the current code with new config.
pub struct DeployRequest {
    pub name: String,
    pub config: FunctionConfig,
    pub artifact: Option<Vec<u8>>,
    /// When set, the deploy applies only if the function's newest version is still this
    /// one (`None`: the function must not exist yet), checked under the deploy lock, so
    /// a change computed from what a caller read cannot overwrite one made meanwhile.
    pub expected_latest: Option<Option<u32>>,
}

pub struct Registry {
    functions: RwLock<HashMap<String, FunctionEntry>>,
    store: Arc<dyn FunctionStore>,
    artifacts: Arc<ArtifactCache>,
    runtime: Arc<Runtime>,
    clock: Arc<dyn Clock>,
    max_artifact_bytes: usize,
    /// The newest revision applied per metadata key, so that the change feed's echo of
    /// an older change (this node's own, or one overtaken since) never undoes a newer one.
    revisions: std::sync::Mutex<HashMap<String, Revision>>,
    /// Deploys are rare and must number versions without gaps: one at a time.
    deploy_lock: tokio::sync::Mutex<()>,
    /// The server's invocation capacity, told each function's reservation (that of its
    /// latest version) under the deploy lock, so concurrent deploys cannot over-reserve.
    capacity: std::sync::OnceLock<Arc<crate::admission::Capacity>>,
    /// The native runtimes this host runs, or why it runs none.
    native: std::sync::OnceLock<Result<cirrus_runtime::native::Runtimes, String>>,
    /// The secrets `env` values may reference (`secret:NAME`).
    secrets: std::sync::OnceLock<Arc<crate::secrets::Secrets>>,
}

impl Registry {
    pub async fn load(
        store: Arc<dyn FunctionStore>,
        artifacts: Arc<ArtifactCache>,
        runtime: Arc<Runtime>,
        clock: Arc<dyn Clock>,
        max_artifact_bytes: usize,
    ) -> anyhow::Result<Self> {
        let mut functions = HashMap::new();
        for stored in store.load_all().await? {
            let (name, entry) = FunctionEntry::stored(stored, new_incarnation());
            functions.insert(name, entry);
        }
        Ok(Self {
            functions: RwLock::new(functions),
            store,
            artifacts,
            runtime,
            clock,
            max_artifact_bytes,
            revisions: std::sync::Mutex::new(HashMap::new()),
            deploy_lock: tokio::sync::Mutex::new(()),
            secrets: std::sync::OnceLock::new(),
            capacity: std::sync::OnceLock::new(),
            native: std::sync::OnceLock::new(),
        })
    }

    /// Connects the server's invocation capacity: from now on deploys check and set
    /// reservations there. The live functions' reservations are set now, in name order;
    /// one that no longer fits (`--max-in-flight` was lowered) is not granted, with a
    /// warning, and only caps its function.
    /// Which native runtimes deploys may name (set once, at start-up).
    pub fn attach_native(&self, native: Result<cirrus_runtime::native::Runtimes, String>) {
        let _ = self.native.set(native);
    }

    /// The native runtimes this server runs, or why it runs none.
    pub fn native_runtimes(&self) -> Result<&cirrus_runtime::native::Runtimes, String> {
        match self.native.get() {
            Some(Ok(runtimes)) => Ok(runtimes),
            Some(Err(why)) => Err(why.clone()),
            None => Err("this server was started without them".to_owned()),
        }
    }

    /// A native package: checked for its runtime, then stored as it is (the zip).
    async fn store_native(
        &self,
        runtime: &str,
        bytes: Vec<u8>,
    ) -> Result<(String, ArtifactKind, u64, u64), Failure> {
        let runtimes = self.native_runtimes().map_err(|why| {
            ApiError::bad_request(format!("native runtimes are off on this server: {why}"))
        })?;
        if bytes.len() > self.max_artifact_bytes {
            return Err(ApiError::new(
                ErrorCode::InvalidArtifact,
                format!(
                    "invalid artifact: the package is {} bytes; the limit is {}",
                    bytes.len(),
                    self.max_artifact_bytes
                ),
            )
            .into());
        }
        cirrus_runtime::native::check_package(runtimes, runtime, &bytes).map_err(|e| {
            ApiError::new(ErrorCode::InvalidArtifact, format!("invalid artifact: {e}"))
        })?;
        use sha2::Digest as _;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        self.artifacts
            .put(&sha256, bytes.into())
            .await
            .map_err(|e| Failure::internal(format!("storing the package: {e:#}")))?;
        Ok((sha256, ArtifactKind::Native, size, 0))
    }

    pub fn attach_secrets(&self, secrets: Arc<crate::secrets::Secrets>) {
        let _ = self.secrets.set(secrets);
    }

    /// Holds off deploys (e.g. while deleting a secret no version may start referencing).
    pub async fn lock_deploys(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.deploy_lock.lock().await
    }

    /// Every `secret:NAME` in the config's `env` names a secret that exists.
    fn check_secrets(&self, config: &FunctionConfig) -> Result<(), ApiError> {
        for (variable, value) in &config.env {
            let Some(secret) = cirrus_api::access::secret_reference(value) else {
                continue;
            };
            let exists = self.secrets.get().is_some_and(|s| s.exists(secret));
            if !exists {
                return Err(ApiError::bad_request(format!(
                    "invalid config: env.{variable} references secret {secret:?}, which does not exist: create it first with `cirrus secret set {secret}`"
                )));
            }
        }
        Ok(())
    }

    pub fn attach_capacity(&self, capacity: Arc<crate::admission::Capacity>) {
        let mut reserved: Vec<(String, u32)> = self
            .read()
            .iter()
            .filter_map(|(name, e)| {
                let reserved = e.latest()?.config.reserved_concurrency?;
                Some((name.clone(), reserved))
            })
            .collect();
        reserved.sort();
        for (name, reserved) in reserved {
            if !capacity.set_reservation(&name, Some(reserved)) {
                tracing::warn!(
                    function = %name,
                    reserved,
                    "reserved_concurrency does not fit under --max-in-flight beside the other reservations: the function shares capacity, capped at its reservation, until room appears"
                );
            }
        }
        let _ = self.capacity.set(capacity);
    }

    /// Refuses a reservation that would leave too little of the server unreserved.
    fn check_reservation(&self, name: &str, config: &FunctionConfig) -> Result<(), ApiError> {
        match self.capacity.get() {
            Some(capacity) => capacity
                .check_reservation(name, config.reserved_concurrency)
                .map_err(|e| {
                    ApiError::bad_request(format!("invalid config: reserved_concurrency: {e}"))
                }),
            None => Ok(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, FunctionEntry>> {
        self.functions.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, FunctionEntry>> {
        self.functions.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> &Arc<dyn FunctionStore> {
        &self.store
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn artifacts(&self) -> &Arc<ArtifactCache> {
        &self.artifacts
    }

    /// The hot-path lookup: which version a request names.
    pub fn resolve(&self, name: &str, qualifier: &Qualifier) -> Result<Arc<VersionInfo>, ApiError> {
        let functions = self.read();
        let entry = functions
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("function {name:?} does not exist")))?;
        let version = match qualifier {
            Qualifier::Latest => {
                return entry.latest().cloned().ok_or_else(|| {
                    ApiError::not_found(format!("function {name:?} has no versions"))
                })
            }
            Qualifier::Version(v) => *v,
            Qualifier::Alias(alias) => *entry.aliases.get(alias).ok_or_else(|| {
                ApiError::not_found(format!("function {name:?} has no alias {alias:?}"))
            })?,
        };
        entry.versions.get(&version).cloned().ok_or_else(|| {
            ApiError::not_found(format!("function {name:?} has no version {version}"))
        })
    }

    /// Which incarnation of the function `name` exists now, if any.
    pub fn incarnation(&self, name: &str) -> Option<u64> {
        self.read().get(name).map(|e| e.incarnation)
    }

    pub fn get(&self, name: &str) -> Result<FunctionInfo, ApiError> {
        self.read()
            .get(name)
            .and_then(|e| e.info(name))
            .ok_or_else(|| ApiError::not_found(format!("function {name:?} does not exist")))
    }

    pub fn list(&self) -> Vec<FunctionInfo> {
        let functions = self.read();
        let mut list: Vec<_> = functions.iter().filter_map(|(n, e)| e.info(n)).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    pub fn versions(&self, name: &str) -> Result<Vec<VersionInfo>, ApiError> {
        let functions = self.read();
        let entry = functions
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("function {name:?} does not exist")))?;
        Ok(entry.versions.values().map(|v| (**v).clone()).collect())
    }

    /// Whether `$LATEST` or an alias points at this version.
    pub fn is_live(&self, name: &str, version: u32) -> bool {
        self.read().get(name).is_some_and(|e| {
            e.latest().is_some_and(|l| l.version == version)
                || e.aliases.values().any(|&v| v == version)
        })
    }

    /// Every version any qualifier currently points at, for pre-loading.
    pub fn live_versions(&self) -> Vec<Arc<VersionInfo>> {
        let functions = self.read();
        let mut live = Vec::new();
        for entry in functions.values() {
            live.extend(entry.latest().cloned());
            live.extend(
                entry
                    .aliases
                    .values()
                    .filter_map(|v| entry.versions.get(v).cloned()),
            );
        }
        live
    }

    /// Validates, compiles (once, into the code cache) and records a new version.
    /// Deploying the same artifact and config as `$LATEST` creates nothing.
    pub async fn deploy(&self, request: DeployRequest) -> Result<DeployResult, Failure> {
        let DeployRequest {
            name,
            mut config,
            artifact,
            expected_latest,
        } = request;
        validate_name(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        config
            .validate()
            .map_err(|e| ApiError::bad_request(format!("invalid config: {e}")))?;
        // Early, to spare the compile; checked again under the deploy lock.
        self.check_reservation(&name, &config)?;
        self.check_secrets(&config)?;

        // A native runtime's package is stored as it is; WebAssembly is compiled.
        let native_runtime = config
            .lambda
            .as_ref()
            .map(|p| p.runtime.clone())
            .filter(|r| r != "wasi");
        let (artifact, native) = match (&native_runtime, artifact) {
            (Some(runtime), Some(bytes)) => (None, Some(self.store_native(runtime, bytes).await?)),
            (_, artifact) => (artifact, None),
        };
        let artifact = match artifact {
            Some(bytes) => {
                let limit = self.max_artifact_bytes;
                let artifact =
                    tokio::task::spawn_blocking(move || Artifact::from_bytes(bytes, limit))
                        .await
                        .map_err(|e| Failure::internal(format!("artifact check failed: {e}")))?
                        .map_err(invalid_artifact)?;
                Some(artifact)
            }
            None => None,
        };

        let (sha256, kind, size_bytes, compile_ms) = if let Some(native) = native {
            // The package's figures, as the Lambda API reports them: the zip is the
            // artifact.
            if let Some(package) = config.lambda.as_mut() {
                if package.artifact_sha256 != native.0 {
                    use base64::Engine as _;
                    let raw = hex::decode(&native.0).unwrap_or_default();
                    package.zip_sha256 = base64::engine::general_purpose::STANDARD.encode(raw);
                    package.zip_size = native.2;
                    package.artifact_sha256 = native.0.clone();
                }
            }
            native
        } else {
            match artifact {
                Some(artifact) => {
                    let runtime = self.runtime.clone();
                    let (artifact, compile_ms) = tokio::task::spawn_blocking(move || {
                        let prepared = runtime.prepare(&artifact).map_err(invalid_artifact)?;
                        Ok::<_, Failure>((artifact, prepared.compile_ms))
                    })
                    .await
                    .map_err(|e| Failure::internal(format!("compilation task failed: {e}")))??;
                    let size = artifact.binary.len() as u64;
                    self.artifacts
                        .put(&artifact.sha256, artifact.binary.into())
                        .await
                        .map_err(|e| Failure::internal(format!("storing the artifact: {e:#}")))?;
                    (artifact.sha256, artifact.kind, size, compile_ms)
                }
                None => {
                    let latest = self.resolve(&name, &Qualifier::Latest).map_err(|_| {
                        ApiError::bad_request(format!(
                        "function {name:?} does not exist yet: the first deploy needs an artifact"
                    ))
                    })?;
                    (latest.sha256.clone(), latest.kind, latest.size_bytes, 0)
                }
            }
        };

        let _serial = self.deploy_lock.lock().await;
        self.check_secrets(&config)?;
        if let Some(expected) = expected_latest {
            let current = self
                .resolve(&name, &Qualifier::Latest)
                .ok()
                .map(|v| v.version);
            if current != expected {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    match (expected, current) {
                        (None, Some(_)) => format!("function {name:?} already exists"),
                        _ => format!(
                            "function {name:?} was changed by another request since it was read; read it again and retry"
                        ),
                    },
                )
                .into());
            }
        }
        let triggers: Vec<TriggerInfo> = self
            .read()
            .get(&name)
            .map(|e| e.triggers.clone())
            .unwrap_or_default();
        let specs: Vec<TriggerSpec> = triggers.iter().map(|t| t.spec.clone()).collect();
        if let Some(found) = self_loop(&name, &config, &specs) {
            let hint = triggers
                .iter()
                .find(|t| Some(&t.spec) == found.trigger.as_ref())
                .map(|t| {
                    format!(
                        "; choose another destination or remove trigger {} first",
                        t.id
                    )
                })
                .unwrap_or_default();
            return Err(ApiError::bad_request(format!("invalid config: {found}{hint}")).into());
        }
        let graph: Vec<(String, Vec<String>)> = {
            let functions = self.read();
            let mut graph: Vec<(String, Vec<String>)> = functions
                .iter()
                .filter(|(n, _)| **n != name)
                .filter_map(|(n, e)| e.latest().map(|v| (n.clone(), next_functions(&v.config))))
                .collect();
            graph.push((name.clone(), next_functions(&config)));
            graph
        };
        if let Some(cycle) = find_cycle(&graph) {
            return Err(ApiError::bad_request(format!(
                "invalid config: on_success would make a pipeline cycle: {}",
                cycle.join(" → ")
            ))
            .into());
        }
        let latest = self.resolve(&name, &Qualifier::Latest).ok();
        if let Some(latest) = &latest {
            if latest.sha256 == sha256 && latest.config == config {
                let function = self.get(&name)?;
                return Ok(DeployResult {
                    version: latest.version,
                    function,
                    created: false,
                    compile_ms,
                });
            }
        }
        self.check_reservation(&name, &config)?;
        let version = VersionInfo {
            function: name.clone(),
            version: latest.map_or(1, |l| l.version + 1),
            sha256,
            kind,
            size_bytes,
            config,
            created_at: rfc3339(self.clock.now_ms()),
        };
        let revision = match self
            .store
            .insert_version(&version)
            .await
            .map_err(|e| Failure::internal(format!("recording the version: {e:#}")))?
        {
            Ok(revision) => revision,
            Err(VersionTaken) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "version {} of {name:?} was just created by another deploy (on another node); deploy again",
                        version.version
                    ),
                )
                .into())
            }
        };
        let number = version.version;
        // Through the feed's own door: if a newer change to the key arrived meanwhile,
        // it stands. `apply` also sets the function's reservation.
        self.apply(Revised {
            revision,
            change: MetaChange::Version(Box::new(version)),
        });
        tracing::info!(function = %name, version = number, "deployed");
        Ok(DeployResult {
            function: self.get(&name)?,
            version: number,
            created: true,
            compile_ms,
        })
    }

    pub async fn delete(&self, name: &str) -> Result<FunctionInfo, Failure> {
        let _serial = self.deploy_lock.lock().await;
        let info = self.get(name)?;
        let revision = self
            .store
            .delete_function(name)
            .await
            .map_err(|e| Failure::internal(format!("deleting {name}: {e:#}")))?;
        let gone = self
            .read()
            .get(name)
            .map(|entry| entry_gone(name, entry))
            .unwrap_or_default();
        for change in gone {
            self.apply(Revised { revision, change });
        }
        if let Some(capacity) = self.capacity.get() {
            capacity.set_reservation(name, None);
        }
        Ok(info)
    }

    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: u32,
    ) -> Result<AliasInfo, Failure> {
        validate_alias(alias).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let _serial = self.deploy_lock.lock().await;
        self.resolve(name, &Qualifier::Version(version))?;
        let revision = self
            .store
            .set_alias(name, alias, version)
            .await
            .map_err(|e| Failure::internal(format!("storing alias: {e:#}")))?;
        self.apply(Revised {
            revision,
            change: MetaChange::Alias {
                function: name.to_owned(),
                alias: alias.to_owned(),
                version,
            },
        });
        Ok(AliasInfo {
            function: name.to_owned(),
            alias: alias.to_owned(),
            version,
        })
    }

    pub async fn delete_alias(&self, name: &str, alias: &str) -> Result<AliasInfo, Failure> {
        let _serial = self.deploy_lock.lock().await;
        let version = self
            .read()
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("function {name:?} does not exist")))?
            .aliases
            .get(alias)
            .copied()
            .ok_or_else(|| {
                ApiError::not_found(format!("function {name:?} has no alias {alias:?}"))
            })?;
        let revision = self
            .store
            .delete_alias(name, alias)
            .await
            .map_err(|e| Failure::internal(format!("deleting alias: {e:#}")))?;
        self.apply(Revised {
            revision,
            change: MetaChange::AliasGone {
                function: name.to_owned(),
                alias: alias.to_owned(),
            },
        });
        Ok(AliasInfo {
            function: name.to_owned(),
            alias: alias.to_owned(),
            version,
        })
    }

    pub fn aliases(&self, name: &str) -> Result<Vec<AliasInfo>, ApiError> {
        let functions = self.read();
        let entry = functions
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("function {name:?} does not exist")))?;
        Ok(entry
            .aliases
            .iter()
            .map(|(alias, &version)| AliasInfo {
                function: name.to_owned(),
                alias: alias.clone(),
                version,
            })
            .collect())
    }
}

impl Registry {
    /// Adds a trigger after checking it and, for routes, that no other route of any
    /// function has the same shape and an overlapping method.
    pub async fn add_trigger(
        &self,
        function: &str,
        spec: TriggerSpec,
    ) -> Result<TriggerInfo, Failure> {
        spec.validate().map_err(ApiError::bad_request)?;
        let _serial = self.deploy_lock.lock().await;
        let latest = self.get(function)?.latest;
        if let Some(found) = self_loop(function, &latest.config, std::slice::from_ref(&spec)) {
            return Err(ApiError::bad_request(format!(
                "this trigger would make a one-function loop: version {} of {function:?} sends its {} results to {}, which the trigger would deliver back to it; change the destination first",
                latest.version, found.field, found.destination
            ))
            .into());
        }
        // Adding what is already there is a no-op (manifests re-declare their triggers).
        if let Some(same) = self
            .read()
            .get(function)
            .and_then(|e| e.triggers.iter().find(|t| t.spec == spec).cloned())
        {
            return Ok(same);
        }
        if let TriggerSpec::Route(route) = &spec {
            let pattern = RoutePattern::parse(route).map_err(ApiError::bad_request)?;
            for existing in self.read().values().flat_map(|e| &e.triggers) {
                if let TriggerSpec::Route(other) = &existing.spec {
                    if RoutePattern::parse(other).is_ok_and(|o| o.conflicts_with(&pattern)) {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            format!("route {route:?} conflicts with {other:?} of function {:?} (trigger {})", existing.function, existing.id),
                        )
                        .into());
                    }
                }
            }
        }
        let trigger = TriggerInfo {
            id: uuid::Uuid::now_v7().to_string(),
            function: function.to_owned(),
            spec,
            created_at: rfc3339(self.clock.now_ms()),
            state: None,
        };
        let revision = self
            .store
            .insert_trigger(&trigger)
            .await
            .map_err(|e| Failure::internal(format!("storing trigger: {e:#}")))?;
        self.apply(Revised {
            revision,
            change: MetaChange::Trigger(Box::new(trigger.clone())),
        });
        Ok(trigger)
    }

    pub async fn remove_trigger(&self, id: &str) -> Result<TriggerInfo, Failure> {
        let _serial = self.deploy_lock.lock().await;
        let trigger = self
            .read()
            .values()
            .flat_map(|e| &e.triggers)
            .find(|t| t.id == id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no trigger {id:?}")))?;
        let revision = self
            .store
            .delete_trigger(&trigger.function, id)
            .await
            .map_err(|e| Failure::internal(format!("deleting trigger: {e:#}")))?;
        self.apply(Revised {
            revision,
            change: MetaChange::TriggerGone {
                function: trigger.function.clone(),
                id: id.to_owned(),
            },
        });
        Ok(trigger)
    }

    /// Removes the triggers of `function` that are not in `specs` (none if it does not
    /// exist yet). A manifest deploy does this before deploying the new config, so a
    /// config that publishes to a topic the function used to subscribe to is not refused
    /// as a loop with the trigger the manifest is dropping.
    pub async fn remove_stale_triggers(
        &self,
        function: &str,
        specs: &[TriggerSpec],
    ) -> Result<(), Failure> {
        let current = self.get(function).map(|f| f.triggers).unwrap_or_default();
        for stale in current.iter().filter(|t| !specs.contains(&t.spec)) {
            self.remove_trigger(&stale.id).await?;
        }
        Ok(())
    }

    /// Makes a function's triggers exactly `specs` (for manifests).
    pub async fn sync_triggers(
        &self,
        function: &str,
        specs: &[TriggerSpec],
    ) -> Result<(), Failure> {
        self.get(function)?;
        self.remove_stale_triggers(function, specs).await?;
        for spec in specs {
            self.add_trigger(function, spec.clone()).await?;
        }
        Ok(())
    }

    pub fn triggers(&self, function: Option<&str>) -> Vec<TriggerInfo> {
        let functions = self.read();
        let mut all: Vec<TriggerInfo> = functions
            .values()
            .flat_map(|e| e.triggers.iter().cloned())
            .filter(|t| function.is_none_or(|f| t.function == f))
            .collect();
        all.sort_by(|a, b| (&a.function, &a.created_at).cmp(&(&b.function, &b.created_at)));
        all
    }

    /// The function whose route matches, preferring routes with more literal segments.
    pub fn route(&self, method: &str, path: &str) -> Option<String> {
        let functions = self.read();
        functions
            .values()
            .flat_map(|e| &e.triggers)
            .filter_map(|t| match &t.spec {
                TriggerSpec::Route(route) => {
                    let pattern = RoutePattern::parse(route).ok()?;
                    let (params, literals) = pattern.matches(method, path)?;
                    // More literal segments win, then an exact method, then the older trigger.
                    let exact = usize::from(pattern.method.as_deref() == Some(method));
                    Some((
                        (literals, exact, params.len()),
                        t.created_at.clone(),
                        t.function.clone(),
                    ))
                }
                _ => None,
            })
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)))
            .map(|(_, _, function)| function)
    }

    /// Functions with a trigger on a KV table.
    pub fn table_subscribers(&self, table: &str) -> Vec<String> {
        self.functions_triggered_by(&TriggerSpec::Table(table.to_owned()))
    }

    /// Functions (with the trigger's id) that a change of `key` in `bucket` fires.
    pub fn bucket_subscribers(
        &self,
        bucket: &str,
        key: &str,
        event: cirrus_api::trigger::BucketEvent,
    ) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = self
            .read()
            .values()
            .flat_map(|e| &e.triggers)
            .filter(|t| matches!(&t.spec, TriggerSpec::Bucket(b) if b.matches(bucket, key, event)))
            .map(|t| (t.function.clone(), t.id.clone()))
            .collect();
        found.sort();
        found
    }

    /// Functions subscribed to a topic.
    pub fn subscribers(&self, topic: &str) -> Vec<String> {
        self.functions_triggered_by(&TriggerSpec::Topic(topic.to_owned()))
    }

    /// Functions with exactly this trigger, sorted, once each.
    fn functions_triggered_by(&self, spec: &TriggerSpec) -> Vec<String> {
        let mut names: Vec<String> = self
            .read()
            .values()
            .flat_map(|e| &e.triggers)
            .filter(|t| &t.spec == spec)
            .map(|t| t.function.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn invalid_artifact(e: ArtifactError) -> Failure {
    match e {
        ArtifactError::Storage(_) => Failure::internal(e),
        _ => ApiError::new(ErrorCode::InvalidArtifact, format!("invalid artifact: {e}")).into(),
    }
}

/// Random, never 0 (0 stands for no function in tokens minted during a delete).
/// The changes that remove a function as this registry holds it, key by key.
fn entry_gone(name: &str, entry: &FunctionEntry) -> Vec<MetaChange> {
    let aliases = entry.aliases.keys().map(|alias| MetaChange::AliasGone {
        function: name.to_owned(),
        alias: alias.clone(),
    });
    let triggers = entry.triggers.iter().map(|t| MetaChange::TriggerGone {
        function: name.to_owned(),
        id: t.id.clone(),
    });
    let versions = entry
        .versions
        .keys()
        .map(|&version| MetaChange::VersionGone {
            function: name.to_owned(),
            version,
        });
    aliases.chain(triggers).chain(versions).collect()
}

fn new_incarnation() -> u64 {
    rand::random::<u64>().max(1)
}

/// How often a node reads all metadata again even though its feed seems well.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Following the store's change feed: what other nodes change reaches this registry.
impl Registry {
    /// Applies one change (this node's own, or one from the feed), unless this registry
    /// already holds its key at that revision or a newer one. Whether it changed anything.
    pub fn apply(&self, revised: Revised) -> bool {
        let function = match &revised.change {
            MetaChange::Version(v) => v.function.clone(),
            MetaChange::VersionGone { function, .. }
            | MetaChange::Alias { function, .. }
            | MetaChange::AliasGone { function, .. }
            | MetaChange::TriggerGone { function, .. } => function.clone(),
            MetaChange::Trigger(t) => t.function.clone(),
        };
        let reserved = {
            // The revision is checked and the change made under the one write lock: a
            // caller whose change was found already applied (the feed's echo got there
            // first) must then see it in the map, not a moment before it lands.
            let mut functions = self.write();
            {
                let mut revisions = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
                let known = revisions.entry(revised.change.key()).or_insert(0);
                if revised.revision <= *known {
                    return false;
                }
                *known = revised.revision;
            }
            match revised.change {
                MetaChange::Version(v) => {
                    functions
                        .entry(function.clone())
                        .or_insert_with(FunctionEntry::new)
                        .versions
                        .insert(v.version, Arc::new(*v));
                }
                MetaChange::VersionGone { version, .. } => {
                    if let Some(entry) = functions.get_mut(&function) {
                        entry.versions.remove(&version);
                        if entry.versions.is_empty() {
                            functions.remove(&function);
                        }
                    }
                }
                MetaChange::Alias { alias, version, .. } => {
                    if let Some(entry) = functions.get_mut(&function) {
                        entry.aliases.insert(alias, version);
                    }
                }
                MetaChange::AliasGone { alias, .. } => {
                    if let Some(entry) = functions.get_mut(&function) {
                        entry.aliases.remove(&alias);
                    }
                }
                MetaChange::Trigger(trigger) => {
                    if let Some(entry) = functions.get_mut(&function) {
                        entry.triggers.retain(|t| t.id != trigger.id);
                        entry.triggers.push(*trigger);
                    }
                }
                MetaChange::TriggerGone { id, .. } => {
                    if let Some(entry) = functions.get_mut(&function) {
                        entry.triggers.retain(|t| t.id != id);
                    }
                }
            }
            functions
                .get(&function)
                .and_then(|e| e.latest())
                .and_then(|v| v.config.reserved_concurrency)
        };
        if let Some(capacity) = self.capacity.get() {
            capacity.set_reservation(&function, reserved);
        }
        true
    }

    /// Reads every function again (after the feed dropped changes), keeping the
    /// incarnation of those that are still there.
    async fn reload(&self) -> anyhow::Result<()> {
        // No local change in flight (they hold the lock from store write to apply), so
        // none is read before it is written and then undone by this replacement.
        let _serial = self.deploy_lock.lock().await;
        let stored = self.store.load_all().await?;
        let mut functions = self.write();
        let mut fresh = HashMap::new();
        for stored in stored {
            let incarnation = functions
                .get(&stored.name)
                .map_or_else(new_incarnation, |e| e.incarnation);
            let (name, entry) = FunctionEntry::stored(stored, incarnation);
            fresh.insert(name, entry);
        }
        *functions = fresh;
        Ok(())
    }

    /// Applies the store's change feed until shutdown; a feed that drops changes or
    /// breaks is opened again after everything is read afresh.
    pub async fn follow(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        use futures_util::StreamExt as _;
        // Each time the feed is (re)opened, everything is read afresh: what changed
        // before the watch began (since start-up, or while the feed was down) is not lost.
        loop {
            let mut feed = match self.store.watch().await {
                Ok(feed) => feed,
                Err(e) => {
                    tracing::warn!("watching function metadata failed: {e:#}; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            if let Err(e) = self.reload().await {
                // Missed changes must not stay missed: watch again, then read again.
                tracing::warn!("reading function metadata again failed: {e:#}; retrying");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            let mut reconcile = tokio::time::interval_at(
                tokio::time::Instant::now() + RECONCILE_EVERY,
                RECONCILE_EVERY,
            );
            loop {
                let next = tokio::select! {
                    next = feed.next() => next,
                    _ = reconcile.tick() => {
                        // A watch can stall without failing (its consumer on a server
                        // that went away, until heartbeats say so): this bounds how long
                        // a node can serve a stale view.
                        if let Err(e) = self.reload().await {
                            tracing::debug!("reconciling function metadata failed: {e:#}");
                        }
                        continue;
                    }
                    _ = shutdown.changed() => return,
                };
                match next {
                    Some(Ok(revised)) => {
                        let key = revised.change.key();
                        if self.apply(revised) {
                            tracing::debug!(%key, "applied a metadata change from the store");
                        }
                    }
                    Some(Err(crate::store::Lagged)) => {
                        tracing::warn!(
                            "the metadata feed dropped changes; reading everything again"
                        );
                        break;
                    }
                    None => {
                        tracing::warn!("the metadata feed ended; watching again");
                        break;
                    }
                }
            }
        }
    }
}
