//! Lambda's management operations, each onto Cirrus's registry: every change of code
//! or configuration is a deploy (and so an immutable numbered version), aliases are
//! Cirrus aliases, concurrency and asynchronous settings are function config.

use super::package;
use super::shapes::{self, configuration, Target, WASI};
use super::{Ctx, LambdaError, LambdaResult};
use crate::registry::DeployRequest;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cirrus_api::spec::{Destination, LambdaPackage};
use cirrus_api::{FunctionConfig, FunctionInfo, Qualifier, VersionInfo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Lambda's own bounds, checked before Cirrus's (which may be narrower).
const MIN_MEMORY_MB: u32 = 128;
const MAX_MEMORY_MB: u32 = 10_240;
const MAX_TIMEOUT_SECS: u32 = 900;
/// Lambda's defaults for a function created without them.
const DEFAULT_TIMEOUT_SECS: u32 = 3;
const DEFAULT_LIST_ITEMS: usize = 50;
const MAX_LIST_ITEMS: usize = 10_000;

fn ok(status: StatusCode, body: Value) -> LambdaResult<Response> {
    Ok((status, Json(body)).into_response())
}

fn no_content() -> LambdaResult<Response> {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The function, or Lambda's "Function not found" naming its ARN.
fn function(ctx: &Ctx, name: &str) -> LambdaResult<FunctionInfo> {
    ctx.state
        .registry
        .get(name)
        .map_err(|_| LambdaError::not_found(format!("Function not found: {}", ctx.arn(name, None))))
}

/// The version a target names; `shown` is how Lambda labels it.
fn version(ctx: &Ctx, target: &Target) -> LambdaResult<(VersionInfo, String)> {
    let qualifier = target.qualifier();
    let v = ctx
        .state
        .registry
        .resolve(&target.name, &qualifier)
        .map_err(|_| {
            LambdaError::not_found(format!(
                "Function not found: {}",
                ctx.arn(&target.name, target.qualifier.as_deref())
            ))
        })?;
    let shown = match qualifier {
        Qualifier::Latest => "$LATEST".to_owned(),
        _ => v.version.to_string(),
    };
    Ok(((*v).clone(), shown))
}

/// `RevisionId` on an update: the change applies only to the revision the caller saw.
fn check_revision(latest: &VersionInfo, given: Option<&str>) -> LambdaResult<()> {
    match given {
        Some(given) if given != shapes::version_revision(latest) => Err(LambdaError::precondition(
            "The Revision Id provided does not match the latest Revision Id. Call the \
                 GetFunction/GetAlias API to retrieve the latest Revision Id",
        )),
        _ => Ok(()),
    }
}

/// Deploys a change computed from `read`, the newest version the caller saw (`None`
/// when creating): a concurrent change meanwhile makes it a 409, never a silent overwrite.
async fn deploy(
    ctx: &Ctx,
    name: &str,
    config: FunctionConfig,
    artifact: Option<Vec<u8>>,
    read: Option<u32>,
) -> LambdaResult<VersionInfo> {
    let result = ctx
        .state
        .registry
        .deploy(DeployRequest {
            name: name.to_owned(),
            config,
            artifact,
            expected_latest: Some(read),
        })
        .await
        .map_err(|f| LambdaError::from(f.0))?;
    Ok(result.function.latest)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Environment {
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Code {
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    s3_key: Option<String>,
    s3_object_version: Option<String>,
    image_uri: Option<String>,
    #[serde(rename = "SourceKMSKeyArn")]
    source_kms_key_arn: Option<String>,
}

/// What CreateFunction and UpdateFunctionConfiguration share: settings Cirrus has, and
/// settings it refuses unless they ask for what Cirrus does anyway.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Settings {
    runtime: Option<String>,
    role: Option<String>,
    handler: Option<String>,
    description: Option<String>,
    // Signed: a negative number is an out-of-range value, not malformed JSON.
    timeout: Option<i64>,
    memory_size: Option<i64>,
    environment: Option<Environment>,
    revision_id: Option<String>,
    // Refused unless empty or the default.
    vpc_config: Option<Value>,
    dead_letter_config: Option<Value>,
    #[serde(rename = "KMSKeyArn")]
    kms_key_arn: Option<String>,
    tracing_config: Option<Value>,
    layers: Option<Vec<String>>,
    file_system_configs: Option<Vec<Value>>,
    image_config: Option<Value>,
    ephemeral_storage: Option<Value>,
    snap_start: Option<Value>,
    logging_config: Option<Value>,
}

impl Settings {
    /// Refuses what Cirrus cannot do, naming it; nothing has been changed yet.
    fn refuse_unsupported(&self) -> LambdaResult<()> {
        let refuse = |what: &str| {
            Err(LambdaError::invalid(format!(
                "Cirrus does not support {what}: see the README, \"Coming from AWS Lambda\""
            )))
        };
        if self.layers.as_ref().is_some_and(|l| !l.is_empty()) {
            return refuse("layers (Layers)");
        }
        if let Some(vpc) = &self.vpc_config {
            let empty = |k: &str| {
                vpc.get(k)
                    .is_none_or(|v| v.as_array().is_none_or(Vec::is_empty))
            };
            if !empty("SubnetIds") || !empty("SecurityGroupIds") {
                return refuse("VPC configuration (VpcConfig)");
            }
        }
        if self
            .dead_letter_config
            .as_ref()
            .is_some_and(|d| d.get("TargetArn").is_some_and(|t| !t.is_null()))
        {
            return refuse("dead-letter queues by ARN (DeadLetterConfig): failed events wait in Cirrus's own dead-letter queue, and PutFunctionEventInvokeConfig sets an on-failure destination");
        }
        if self.kms_key_arn.as_ref().is_some_and(|k| !k.is_empty()) {
            return refuse("KMS keys (KMSKeyArn)");
        }
        if self
            .tracing_config
            .as_ref()
            .is_some_and(|t| t.get("Mode").and_then(Value::as_str) == Some("Active"))
        {
            return refuse("X-Ray active tracing (TracingConfig): Cirrus continues the caller's W3C traceparent and exports spans over OTLP");
        }
        if self
            .file_system_configs
            .as_ref()
            .is_some_and(|f| !f.is_empty())
        {
            return refuse("file systems (FileSystemConfigs)");
        }
        if self.image_config.is_some() {
            return refuse("container images (ImageConfig)");
        }
        if self
            .ephemeral_storage
            .as_ref()
            .is_some_and(|e| e.get("Size").and_then(Value::as_u64) != Some(512))
        {
            return refuse(
                "ephemeral storage other than 512 MB (EphemeralStorage): guests have no /tmp",
            );
        }
        if self
            .snap_start
            .as_ref()
            .is_some_and(|s| s.get("ApplyOn").and_then(Value::as_str) != Some("None"))
        {
            return refuse("SnapStart: WebAssembly environments start in microseconds without it");
        }
        if let Some(logging) = &self.logging_config {
            let text = logging
                .get("LogFormat")
                .and_then(Value::as_str)
                .is_none_or(|f| f == "Text");
            if !text || logging.get("LogGroup").is_some() {
                return refuse(
                    "logging configuration (LoggingConfig): logs are kept by Cirrus, in text",
                );
            }
        }
        Ok(())
    }

    /// Applies the settings given to `config`, checking Lambda's bounds.
    fn apply(&self, config: &mut FunctionConfig) -> LambdaResult<()> {
        if let Some(mb) = self.memory_size {
            config.memory_mb = in_range("MemorySize", mb, MIN_MEMORY_MB, MAX_MEMORY_MB)?;
        }
        if let Some(secs) = self.timeout {
            let secs = in_range("Timeout", secs, 1, MAX_TIMEOUT_SECS)?;
            config.timeout = Duration::from_secs(u64::from(secs));
        }
        if let Some(description) = &self.description {
            config.description.clone_from(description);
        }
        if let Some(environment) = &self.environment {
            config.env.clone_from(&environment.variables);
        }
        Ok(())
    }
}

/// `value` if it lies in `min..=max`, else Lambda's error naming `field`.
fn in_range(field: &str, value: i64, min: u32, max: u32) -> LambdaResult<u32> {
    u32::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| {
            LambdaError::invalid(format!("{field} {value} is out of range: use {min}-{max}"))
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct CreateFunction {
    function_name: String,
    code: Code,
    #[serde(flatten)]
    settings: Settings,
    #[serde(default)]
    publish: bool,
    package_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    code_signing_config_arn: Option<String>,
    architectures: Option<Vec<String>>,
}

/// The deployment package: inline (`Code.ZipFile`) or an object in Cirrus's own
/// storage (`Code.S3Bucket` and `Code.S3Key`, as uploaded through the S3 API).
async fn package_bytes(ctx: &Ctx, code: &Code) -> LambdaResult<Vec<u8>> {
    if code.image_uri.is_some() {
        return Err(LambdaError::invalid(
            "Cirrus does not support container images (Code.ImageUri): send a zip",
        ));
    }
    if code.source_kms_key_arn.is_some() {
        return Err(LambdaError::invalid(
            "Cirrus does not support KMS keys (Code.SourceKMSKeyArn)",
        ));
    }
    let from_storage = code.s3_bucket.is_some() || code.s3_key.is_some();
    match (&code.zip_file, from_storage) {
        (Some(text), false) => {
            let text = text.clone();
            blocking(move || package::decode_zip_file(&text)).await
        }
        (None, true) => {
            let (Some(bucket), Some(key)) = (&code.s3_bucket, &code.s3_key) else {
                return Err(LambdaError::invalid(
                    "Code.S3Bucket and Code.S3Key go together",
                ));
            };
            if code
                .s3_object_version
                .as_deref()
                .is_some_and(|v| v != "null")
            {
                return Err(LambdaError::invalid(
                    "Cirrus storage keeps one version of an object: omit Code.S3ObjectVersion",
                ));
            }
            stored_package(ctx, bucket, key).await
        }
        (Some(_), true) => Err(LambdaError::invalid(
            "give the code once: Code.ZipFile or Code.S3Bucket with Code.S3Key",
        )),
        (None, false) => Err(LambdaError::invalid(
            "Code.ZipFile (a zip holding the .wasm or .wat file) or Code.S3Bucket and Code.S3Key are required",
        )),
    }
}

/// A package read from Cirrus's object storage, at most the artifact limit.
async fn stored_package(ctx: &Ctx, bucket: &str, key: &str) -> LambdaResult<Vec<u8>> {
    let limit = ctx.state.max_artifact_bytes;
    let object = crate::s3::objects::get(
        &ctx.state.s3,
        &crate::s3::Target::object(bucket, key),
        &axum::http::HeaderMap::new(),
        false,
    )
    .await
    .map_err(|e| {
        LambdaError::invalid(format!(
            "Error occurred while GetObject. S3 Error Code: {}. S3 Error Message: {}",
            e.code, e.message
        ))
    })?;
    let bytes = axum::body::to_bytes(object.into_body(), limit)
        .await
        .map_err(|e| {
            let what = format!("the deployment package s3://{bucket}/{key}");
            LambdaError::from(crate::error::body_error(e, limit, &what))
        })?;
    Ok(bytes.to_vec())
}

fn check_architectures(architectures: Option<&[String]>) -> LambdaResult<()> {
    match architectures {
        None | Some([]) => Ok(()),
        Some([one]) if one == "x86_64" || one == "arm64" => Ok(()),
        Some(other) => Err(LambdaError::invalid(format!(
            "Architectures {other:?}: give one of x86_64 or arm64 (WebAssembly runs on either)"
        ))),
    }
}

pub async fn create(ctx: &Ctx) -> LambdaResult<Response> {
    ctx.allow_query("CreateFunction", &[])?;
    let request: CreateFunction = ctx.json("CreateFunction")?;
    let target = Target::parse(&request.function_name)?;
    if target.qualifier.is_some() {
        return Err(LambdaError::invalid(
            "FunctionName may not carry a qualifier when creating a function",
        ));
    }
    let settings = &request.settings;
    settings.refuse_unsupported()?;
    if request.package_type.as_deref().is_some_and(|p| p != "Zip") {
        return Err(LambdaError::invalid(
            "Cirrus does not support container images (PackageType Image): send a zip",
        ));
    }
    if request.tags.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(LambdaError::invalid(
            "Cirrus does not support tags on functions (Tags)",
        ));
    }
    if request.code_signing_config_arn.is_some() {
        return Err(LambdaError::invalid(
            "Cirrus does not support code signing (CodeSigningConfigArn)",
        ));
    }
    check_architectures(request.architectures.as_deref())?;
    if settings.revision_id.is_some() {
        return Err(LambdaError::bad_content(
            "CreateFunction does not take RevisionId",
        ));
    }
    if ctx.state.registry.get(&target.name).is_ok() {
        return Err(LambdaError::conflict(format!(
            "Function already exist: {}",
            target.name
        )));
    }
    let zip = package_bytes(ctx, &request.code).await?;
    let runtime = runtime_of(ctx, settings.runtime.as_deref())?;
    let (package, artifact) = packaged(
        ctx,
        &runtime,
        zip,
        settings.handler.clone(),
        settings.role.clone(),
    )
    .await?;
    let mut config = FunctionConfig {
        timeout: Duration::from_secs(u64::from(DEFAULT_TIMEOUT_SECS)),
        // Lambda functions answer only signed calls until a URL with AuthType NONE.
        public: false,
        ..FunctionConfig::default()
    };
    settings.apply(&mut config)?;
    config.lambda = Some(package);
    let latest = deploy(ctx, &target.name, config, Some(artifact), None).await?;
    let shown = if request.publish {
        latest.version.to_string()
    } else {
        "$LATEST".to_owned()
    };
    ok(StatusCode::CREATED, configuration(ctx, &latest, &shown))
}

/// The runtime a request names: `wasi` (the default) or a native runtime this host has.
fn runtime_of(ctx: &Ctx, runtime: Option<&str>) -> LambdaResult<String> {
    let runtime = runtime.unwrap_or(WASI);
    if runtime == WASI {
        return Ok(WASI.to_owned());
    }
    match ctx.state.registry.native_runtimes() {
        Ok(runtimes) if runtimes.names().iter().any(|n| n == runtime) => Ok(runtime.to_owned()),
        Ok(runtimes) => Err(LambdaError::invalid(format!(
            "Runtime {runtime:?} is not available here: this server runs {WASI}, {}",
            runtimes.names().join(", ")
        ))),
        Err(why) => Err(LambdaError::invalid(format!(
            "Runtime {runtime:?} is not available here: native runtimes are off on this server ({why}); \
             WebAssembly runs as Runtime \"{WASI}\""
        ))),
    }
}

/// A package as Cirrus keeps it, and the artifact to deploy: for `wasi` the WebAssembly
/// file the handler names; for a native runtime the zip itself, run by `handler`.
async fn packaged(
    ctx: &Ctx,
    runtime: &str,
    zip: Vec<u8>,
    handler: Option<String>,
    role: Option<String>,
) -> LambdaResult<(LambdaPackage, Vec<u8>)> {
    if runtime == WASI {
        let package = open_package(ctx, zip, handler).await?;
        let artifact_sha256 = artifact_sha256(ctx, &package.artifact).await?;
        return Ok((
            LambdaPackage {
                runtime: WASI.to_owned(),
                handler: package.handler,
                role,
                zip_sha256: package.zip_sha256,
                zip_size: package.zip_size,
                artifact_sha256,
            },
            package.artifact,
        ));
    }
    let handler = handler.filter(|h| !h.trim().is_empty()).ok_or_else(|| {
        LambdaError::invalid(format!(
            "Handler is required for {runtime}: module.function (Python), file.export (Node.js) or any name (provided)"
        ))
    })?;
    let (zip_sha256, artifact_sha256, zip) = blocking(move || {
        use base64::Engine as _;
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(&zip);
        Ok((
            base64::engine::general_purpose::STANDARD.encode(digest),
            hex::encode(digest),
            zip,
        ))
    })
    .await?;
    Ok((
        LambdaPackage {
            runtime: runtime.to_owned(),
            handler,
            role,
            zip_sha256,
            zip_size: zip.len() as u64,
            artifact_sha256,
        },
        zip,
    ))
}

/// The artifact's id as the registry will record it (text format is compiled to binary
/// first), so the package's figures can be matched to the code they came with.
async fn artifact_sha256(ctx: &Ctx, bytes: &[u8]) -> LambdaResult<String> {
    let (bytes, limit) = (bytes.to_vec(), ctx.state.max_artifact_bytes);
    blocking(move || {
        cirrus_runtime::Artifact::from_bytes(bytes, limit)
            .map(|artifact| artifact.sha256)
            .map_err(|e| LambdaError::invalid(format!("invalid artifact: {e}")))
    })
    .await
}

/// Runs CPU-heavy work (a large package decoded, inflated, hashed) off the async
/// workers, so a flood of uploads does not stall the invocations they serve.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> LambdaResult<T> + Send + 'static,
) -> LambdaResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LambdaError::from(cirrus_api::ApiError::internal(e.to_string())))?
}

async fn open_package(
    ctx: &Ctx,
    zip: Vec<u8>,
    handler: Option<String>,
) -> LambdaResult<package::Package> {
    let limit = ctx.state.max_artifact_bytes;
    blocking(move || package::open(&zip, handler.as_deref(), limit)).await
}

pub fn get(ctx: &Ctx, name: &str, whole: bool) -> LambdaResult<Response> {
    ctx.allow_query(
        if whole {
            "GetFunction"
        } else {
            "GetFunctionConfiguration"
        },
        &["Qualifier"],
    )?;
    let target = Target::from_request(ctx, name)?;
    let (v, shown) = version(ctx, &target)?;
    let config = configuration(ctx, &v, &shown);
    if !whole {
        return ok(StatusCode::OK, config);
    }
    let mut doc = json!({
        "Configuration": config,
        "Code": {"RepositoryType": "Cirrus"},
    });
    if let Some(n) = v.config.reserved_concurrency {
        doc["Concurrency"] = json!({ "ReservedConcurrentExecutions": n });
    }
    ok(StatusCode::OK, doc)
}

pub async fn delete(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("DeleteFunction", &["Qualifier"])?;
    let target = Target::from_request(ctx, name)?;
    if let Some(q) = &target.qualifier {
        return Err(LambdaError::invalid(format!(
            "Cirrus deletes whole functions (versions are immutable and kept): drop the qualifier {q:?}"
        )));
    }
    function(ctx, &target.name)?;
    ctx.state
        .registry
        .delete(&target.name)
        .await
        .map_err(|f| LambdaError::from(f.0))?;
    ctx.state.scaler.unload_function(&target.name);
    no_content()
}

/// One page of a listing, as `{list: [...], NextMarker}`: `Marker` and `MaxItems` say
/// where it starts (after the item whose key is the marker) and how long it is.
fn paged(ctx: &Ctx, list: &str, items: Vec<(String, Value)>) -> LambdaResult<Response> {
    let max = match ctx.query("MaxItems") {
        None => DEFAULT_LIST_ITEMS,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST_ITEMS).contains(n))
            .ok_or_else(|| {
                LambdaError::invalid(format!(
                    "MaxItems {text:?}: use a number from 1 to {MAX_LIST_ITEMS}"
                ))
            })?,
    };
    let start = match ctx.query("Marker") {
        None | Some("") => 0,
        Some(marker) => items
            .iter()
            .position(|(key, _)| key.as_str() > marker)
            .unwrap_or(items.len()),
    };
    let total = items.len();
    let mut out = Vec::new();
    let mut last = None;
    for (key, item) in items.into_iter().skip(start).take(max) {
        last = Some(key);
        out.push(item);
    }
    let more = start + out.len() < total;
    let mut doc = json!({ list: out });
    if let Some(last) = last.filter(|_| more) {
        doc["NextMarker"] = last.into();
    }
    ok(StatusCode::OK, doc)
}

pub fn list(ctx: &Ctx) -> LambdaResult<Response> {
    ctx.allow_query(
        "ListFunctions",
        &["Marker", "MaxItems", "FunctionVersion", "MasterRegion"],
    )?;
    if ctx.query("MasterRegion").is_some() {
        return Err(LambdaError::invalid(
            "Cirrus has no Lambda@Edge replicas (MasterRegion)",
        ));
    }
    let all_versions = match ctx.query("FunctionVersion") {
        None => false,
        Some("ALL") => true,
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "FunctionVersion {other:?}: the only value is ALL"
            )))
        }
    };
    let mut functions = ctx.state.registry.list();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    let mut items = Vec::new();
    for f in functions {
        // Keys sort as the listing does, so a marker is a position.
        items.push((
            format!("{}\u{0}", f.name),
            configuration(ctx, &f.latest, "$LATEST"),
        ));
        if all_versions {
            let mut versions = ctx.state.registry.versions(&f.name).unwrap_or_default();
            versions.sort_by_key(|v| v.version);
            for v in versions {
                items.push((
                    format!("{}\u{0}{:010}", f.name, v.version),
                    configuration(ctx, &v, &v.version.to_string()),
                ));
            }
        }
    }
    paged(ctx, "Functions", items)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct UpdateCode {
    #[serde(flatten)]
    code: Code,
    #[serde(default)]
    publish: bool,
    #[serde(default)]
    dry_run: bool,
    revision_id: Option<String>,
    architectures: Option<Vec<String>>,
}

pub async fn update_code(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("UpdateFunctionCode", &[])?;
    let request: UpdateCode = ctx.json("UpdateFunctionCode")?;
    let target = Target::parse(name)?.unqualified("UpdateFunctionCode")?;
    let latest = function(ctx, &target.name)?.latest;
    check_revision(&latest, request.revision_id.as_deref())?;
    check_architectures(request.architectures.as_deref())?;
    let zip = package_bytes(ctx, &request.code).await?;
    // The runtime and handler stay; a function deployed without a handler takes the
    // only wasm file.
    let mut config = latest.config.clone();
    let previous = config.lambda.take();
    let runtime = previous
        .as_ref()
        .map_or(WASI.to_owned(), |p| p.runtime.clone());
    let handler = previous
        .as_ref()
        .map(|p| p.handler.clone())
        .filter(|h| !h.is_empty());
    let (package, artifact) =
        packaged(ctx, &runtime, zip, handler, previous.and_then(|p| p.role)).await?;
    config.lambda = Some(package);
    if request.dry_run {
        // Checked, not deployed: the package opened and the config is valid.
        config
            .validate()
            .map_err(|e| LambdaError::invalid(e.to_string()))?;
        return ok(StatusCode::OK, configuration(ctx, &latest, "$LATEST"));
    }
    let read = latest.version;
    let latest = deploy(ctx, &target.name, config, Some(artifact), Some(read)).await?;
    let shown = if request.publish {
        latest.version.to_string()
    } else {
        "$LATEST".to_owned()
    };
    ok(StatusCode::OK, configuration(ctx, &latest, &shown))
}

pub async fn update_configuration(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("UpdateFunctionConfiguration", &[])?;
    let settings: Settings = ctx.json("UpdateFunctionConfiguration")?;
    let target = Target::parse(name)?.unqualified("UpdateFunctionConfiguration")?;
    let latest = function(ctx, &target.name)?.latest;
    check_revision(&latest, settings.revision_id.as_deref())?;
    settings.refuse_unsupported()?;
    let mut config = latest.config.clone();
    let current_runtime = config.lambda.as_ref().map_or(WASI, |p| p.runtime.as_str());
    if let Some(runtime) = settings.runtime.as_deref() {
        if runtime != current_runtime {
            return Err(LambdaError::invalid(format!(
                "the function runs {current_runtime}: a new runtime needs new code (delete and create the function)"
            )));
        }
    }
    let native = current_runtime != WASI;
    if let Some(handler) = settings.handler.as_deref() {
        let current = config.lambda.as_ref().map_or("", |p| p.handler.as_str());
        if native && !handler.trim().is_empty() {
            // A native handler is configuration: the code stays.
            if let Some(package) = config.lambda.as_mut() {
                package.handler = handler.to_owned();
            }
        } else if handler != current {
            return Err(LambdaError::invalid(format!(
                "the handler names the file in the deployment package ({current:?}): to run \
                 another file, update the code with a zip whose only wasm file it is"
            )));
        }
    }
    settings.apply(&mut config)?;
    if let Some(role) = &settings.role {
        match config.lambda.as_mut() {
            Some(package) => package.role = Some(role.clone()),
            None => return Err(LambdaError::invalid(
                "this function was not deployed through the Lambda API, so it has no Role to set",
            )),
        }
    }
    let read = latest.version;
    let latest = deploy(ctx, &target.name, config, None, Some(read)).await?;
    ok(StatusCode::OK, configuration(ctx, &latest, "$LATEST"))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Publish {
    code_sha256: Option<String>,
    description: Option<String>,
    revision_id: Option<String>,
}

/// Every change already made a numbered version, so publishing names the newest one.
pub fn publish(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("PublishVersion", &[])?;
    let request: Publish = ctx.json("PublishVersion")?;
    let target = Target::parse(name)?.unqualified("PublishVersion")?;
    let latest = function(ctx, &target.name)?.latest;
    check_revision(&latest, request.revision_id.as_deref())?;
    if let Some(expected) = request.code_sha256.as_deref() {
        let current = configuration(ctx, &latest, "$LATEST");
        if current["CodeSha256"].as_str() != Some(expected) {
            return Err(LambdaError::invalid(
                "CodeSha256 does not match the function's current code",
            ));
        }
    }
    if request
        .description
        .as_deref()
        .is_some_and(|d| !d.is_empty() && d != latest.config.description)
    {
        return Err(LambdaError::invalid(
            "versions share their function's Description in Cirrus: set it with UpdateFunctionConfiguration",
        ));
    }
    ok(
        StatusCode::CREATED,
        configuration(ctx, &latest, &latest.version.to_string()),
    )
}

pub fn list_versions(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("ListVersionsByFunction", &["Marker", "MaxItems"])?;
    let target = Target::parse(name)?.unqualified("ListVersionsByFunction")?;
    let f = function(ctx, &target.name)?;
    let mut versions = ctx.state.registry.versions(&f.name).unwrap_or_default();
    versions.sort_by_key(|v| v.version);
    // `$` sorts before digits: $LATEST comes first, and is a marker like any other.
    let mut items = vec![(
        "$LATEST".to_owned(),
        configuration(ctx, &f.latest, "$LATEST"),
    )];
    for v in &versions {
        items.push((
            format!("{:010}", v.version),
            configuration(ctx, v, &v.version.to_string()),
        ));
    }
    paged(ctx, "Versions", items)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct AliasRequest {
    name: Option<String>,
    function_version: Option<String>,
    description: Option<String>,
    routing_config: Option<Value>,
    revision_id: Option<String>,
}

impl AliasRequest {
    fn refuse_unsupported(&self) -> LambdaResult<()> {
        if self.description.as_deref().is_some_and(|d| !d.is_empty()) {
            return Err(LambdaError::invalid("Cirrus aliases have no Description"));
        }
        if self.routing_config.as_ref().is_some_and(|r| {
            r.get("AdditionalVersionWeights")
                .and_then(Value::as_object)
                .is_some_and(|w| !w.is_empty())
        }) {
            return Err(LambdaError::invalid(
                "Cirrus aliases point at one version: weighted routing (RoutingConfig) is not supported",
            ));
        }
        Ok(())
    }
}

/// An alias's target: a version number (Cirrus aliases never follow `$LATEST`).
fn alias_version(ctx: &Ctx, function: &str, text: &str) -> LambdaResult<u32> {
    let version: u32 = text.parse().map_err(|_| {
        LambdaError::invalid(format!(
            "FunctionVersion {text:?}: an alias points at a numbered version (publish one first)"
        ))
    })?;
    ctx.state
        .registry
        .resolve(function, &Qualifier::Version(version))
        .map_err(|_| {
            LambdaError::not_found(format!(
                "Function not found: {}",
                ctx.arn(function, Some(text))
            ))
        })?;
    Ok(version)
}

fn alias_of(ctx: &Ctx, function: &str, alias: &str) -> LambdaResult<u32> {
    let f = self::function(ctx, function)?;
    f.aliases.get(alias).copied().ok_or_else(|| {
        LambdaError::not_found(format!(
            "Alias not found: {}",
            ctx.arn(function, Some(alias))
        ))
    })
}

async fn set_alias(ctx: &Ctx, function: &str, alias: &str, version: u32) -> LambdaResult<()> {
    ctx.state
        .registry
        .set_alias(function, alias, version)
        .await
        .map_err(|f| LambdaError::from(f.0))?;
    Ok(())
}

pub async fn create_alias(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("CreateAlias", &[])?;
    let request: AliasRequest = ctx.json("CreateAlias")?;
    request.refuse_unsupported()?;
    let target = Target::parse(name)?.unqualified("CreateAlias")?;
    let f = function(ctx, &target.name)?;
    let alias = request
        .name
        .as_deref()
        .ok_or_else(|| LambdaError::invalid("Name is required"))?;
    cirrus_api::spec::validate_alias(alias).map_err(|e| LambdaError::invalid(e.message))?;
    if f.aliases.contains_key(alias) {
        return Err(LambdaError::conflict(format!(
            "Alias already exists: {}",
            ctx.arn(&f.name, Some(alias))
        )));
    }
    let text = request
        .function_version
        .as_deref()
        .ok_or_else(|| LambdaError::invalid("FunctionVersion is required"))?;
    let version = alias_version(ctx, &f.name, text)?;
    set_alias(ctx, &f.name, alias, version).await?;
    ok(
        StatusCode::CREATED,
        shapes::alias(ctx, &f.name, alias, version),
    )
}

pub fn get_alias(ctx: &Ctx, name: &str, alias: &str) -> LambdaResult<Response> {
    ctx.allow_query("GetAlias", &[])?;
    let target = Target::parse(name)?.unqualified("GetAlias")?;
    let version = alias_of(ctx, &target.name, alias)?;
    ok(
        StatusCode::OK,
        shapes::alias(ctx, &target.name, alias, version),
    )
}

pub async fn update_alias(ctx: &Ctx, name: &str, alias: &str) -> LambdaResult<Response> {
    ctx.allow_query("UpdateAlias", &[])?;
    let request: AliasRequest = ctx.json("UpdateAlias")?;
    request.refuse_unsupported()?;
    if request.name.is_some() {
        return Err(LambdaError::bad_content(
            "UpdateAlias takes the alias name in its path",
        ));
    }
    let target = Target::parse(name)?.unqualified("UpdateAlias")?;
    let current = alias_of(ctx, &target.name, alias)?;
    if let Some(given) = request.revision_id.as_deref() {
        let revision = shapes::revision_id(&[&target.name, alias, &current.to_string()]);
        if given != revision {
            return Err(LambdaError::precondition(
                "The Revision Id provided does not match the latest Revision Id. Call the \
                 GetFunction/GetAlias API to retrieve the latest Revision Id",
            ));
        }
    }
    let version = match request.function_version.as_deref() {
        Some(text) => alias_version(ctx, &target.name, text)?,
        None => current,
    };
    if version != current {
        set_alias(ctx, &target.name, alias, version).await?;
    }
    ok(
        StatusCode::OK,
        shapes::alias(ctx, &target.name, alias, version),
    )
}

pub async fn delete_alias(ctx: &Ctx, name: &str, alias: &str) -> LambdaResult<Response> {
    ctx.allow_query("DeleteAlias", &[])?;
    let target = Target::parse(name)?.unqualified("DeleteAlias")?;
    alias_of(ctx, &target.name, alias)?;
    ctx.state
        .registry
        .delete_alias(&target.name, alias)
        .await
        .map_err(|f| LambdaError::from(f.0))?;
    no_content()
}

pub fn list_aliases(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("ListAliases", &["FunctionVersion", "Marker", "MaxItems"])?;
    let target = Target::parse(name)?.unqualified("ListAliases")?;
    let f = function(ctx, &target.name)?;
    let only: Option<u32> = match ctx.query("FunctionVersion") {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| {
            LambdaError::invalid(format!("FunctionVersion {text:?} is not a version number"))
        })?),
    };
    let items = f
        .aliases
        .iter()
        .filter(|(_, v)| only.is_none_or(|o| o == **v))
        .map(|(a, v)| (a.clone(), shapes::alias(ctx, &f.name, a, *v)))
        .collect();
    paged(ctx, "Aliases", items)
}

/// Changes the newest config of a function (a new version, as every change is).
async fn reconfigure(
    ctx: &Ctx,
    name: &str,
    change: impl FnOnce(&mut FunctionConfig) -> LambdaResult<()>,
) -> LambdaResult<VersionInfo> {
    let latest = function(ctx, name)?.latest;
    let mut config = latest.config.clone();
    change(&mut config)?;
    if config == latest.config {
        return Ok(latest);
    }
    deploy(ctx, name, config, None, Some(latest.version)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct Concurrency {
    reserved_concurrent_executions: i64,
}

pub async fn put_concurrency(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("PutFunctionConcurrency", &[])?;
    let request: Concurrency = ctx.json("PutFunctionConcurrency")?;
    let target = Target::parse(name)?.unqualified("PutFunctionConcurrency")?;
    let n = in_range(
        "ReservedConcurrentExecutions",
        request.reserved_concurrent_executions,
        0,
        u32::MAX,
    )?;
    reconfigure(ctx, &target.name, |config| {
        if config.max_concurrency.is_some_and(|max| n > max) {
            // The reservation is the function's cap as well, as in Lambda.
            config.max_concurrency = Some(n);
        }
        config.reserved_concurrency = Some(n);
        Ok(())
    })
    .await?;
    ok(StatusCode::OK, json!({ "ReservedConcurrentExecutions": n }))
}

pub async fn delete_concurrency(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("DeleteFunctionConcurrency", &[])?;
    let target = Target::parse(name)?.unqualified("DeleteFunctionConcurrency")?;
    reconfigure(ctx, &target.name, |config| {
        config.reserved_concurrency = None;
        Ok(())
    })
    .await?;
    no_content()
}

pub fn get_concurrency(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("GetFunctionConcurrency", &[])?;
    let target = Target::parse(name)?.unqualified("GetFunctionConcurrency")?;
    let latest = function(ctx, &target.name)?.latest;
    ok(
        StatusCode::OK,
        match latest.config.reserved_concurrency {
            Some(n) => json!({ "ReservedConcurrentExecutions": n }),
            None => json!({}),
        },
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct DestinationTarget {
    destination: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct DestinationConfig {
    on_success: Option<DestinationTarget>,
    on_failure: Option<DestinationTarget>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct EventInvokeConfig {
    maximum_retry_attempts: Option<i64>,
    maximum_event_age_in_seconds: Option<i64>,
    destination_config: Option<DestinationConfig>,
}

/// Lambda's bounds on asynchronous settings.
const MAX_RETRY_ATTEMPTS: u32 = 2;
const MIN_EVENT_AGE_SECS: u32 = 60;
const MAX_EVENT_AGE_SECS: u32 = 21_600;

/// A destination ARN as a Cirrus destination: another function (by ARN or name) that
/// exists.
fn destination(ctx: &Ctx, text: &str) -> LambdaResult<Destination> {
    if text.starts_with("arn:") && !text.starts_with("arn:aws:lambda:") {
        return Err(LambdaError::invalid(format!(
            "destination {text:?}: Cirrus sends results to functions (a Lambda function ARN); \
             SQS, SNS and EventBridge destinations are not supported"
        )));
    }
    let target = Target::parse(text)?;
    if target.qualifier.is_some() {
        return Err(LambdaError::invalid(format!(
            "destination {text:?}: name the function without a qualifier"
        )));
    }
    if ctx.state.registry.get(&target.name).is_err() {
        return Err(LambdaError::invalid(format!(
            "The destination ARN {text} is invalid: there is no such function"
        )));
    }
    Ok(Destination::Function(target.name))
}

fn destination_arn(ctx: &Ctx, d: &Destination) -> Value {
    match d {
        Destination::Function(name) => ctx.arn(name, None).into(),
        other => format!("cirrus:{other}").into(),
    }
}

pub async fn put_event_invoke_config(
    ctx: &Ctx,
    name: &str,
    replace: bool,
) -> LambdaResult<Response> {
    let operation = if replace {
        "PutFunctionEventInvokeConfig"
    } else {
        "UpdateFunctionEventInvokeConfig"
    };
    ctx.allow_query(operation, &["Qualifier"])?;
    let request: EventInvokeConfig = ctx.json(operation)?;
    let target = Target::from_request(ctx, name)?.unqualified(operation)?;
    let defaults = FunctionConfig::default();
    let latest = reconfigure(ctx, &target.name, |config| {
        if replace {
            config.max_attempts = defaults.max_attempts;
            config.max_event_age = defaults.max_event_age;
            config.on_success.clear();
            config.on_failure = None;
        }
        if let Some(retries) = request.maximum_retry_attempts {
            config.max_attempts =
                in_range("MaximumRetryAttempts", retries, 0, MAX_RETRY_ATTEMPTS)? + 1;
        }
        if let Some(age) = request.maximum_event_age_in_seconds {
            let age = in_range(
                "MaximumEventAgeInSeconds",
                age,
                MIN_EVENT_AGE_SECS,
                MAX_EVENT_AGE_SECS,
            )?;
            config.max_event_age = Duration::from_secs(u64::from(age));
        }
        if let Some(destinations) = &request.destination_config {
            if let Some(arn) = destinations
                .on_success
                .as_ref()
                .and_then(|d| d.destination.as_deref())
            {
                config.on_success = vec![destination(ctx, arn)?];
            }
            if let Some(arn) = destinations
                .on_failure
                .as_ref()
                .and_then(|d| d.destination.as_deref())
            {
                config.on_failure = Some(destination(ctx, arn)?);
            }
        }
        Ok(())
    })
    .await?;
    ok(StatusCode::OK, event_invoke_config(ctx, &latest))
}

fn event_invoke_config(ctx: &Ctx, v: &VersionInfo) -> Value {
    let mut destinations = json!({});
    if let Some(first) = v.config.on_success.first() {
        destinations["OnSuccess"] = json!({ "Destination": destination_arn(ctx, first) });
    }
    if let Some(failure) = &v.config.on_failure {
        destinations["OnFailure"] = json!({ "Destination": destination_arn(ctx, failure) });
    }
    let modified = chrono::DateTime::parse_from_rfc3339(&v.created_at)
        .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
    json!({
        "LastModified": modified,
        "FunctionArn": ctx.arn(&v.function, Some("$LATEST")),
        "MaximumRetryAttempts": v.config.max_attempts.saturating_sub(1),
        "MaximumEventAgeInSeconds": v.config.max_event_age.as_secs(),
        "DestinationConfig": destinations,
    })
}

pub fn get_event_invoke_config(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("GetFunctionEventInvokeConfig", &["Qualifier"])?;
    let target = Target::from_request(ctx, name)?.unqualified("GetFunctionEventInvokeConfig")?;
    let latest = function(ctx, &target.name)?.latest;
    // Lambda's defaults are Cirrus's: settings equal to them are no config at all.
    let defaults = FunctionConfig::default();
    let c = &latest.config;
    if c.max_attempts == defaults.max_attempts
        && c.max_event_age == defaults.max_event_age
        && c.on_success.is_empty()
        && c.on_failure.is_none()
    {
        return Err(LambdaError::not_found(format!(
            "The function {} doesn't have an EventInvokeConfig",
            ctx.arn(&target.name, Some("$LATEST"))
        )));
    }
    ok(StatusCode::OK, event_invoke_config(ctx, &latest))
}

pub async fn delete_event_invoke_config(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("DeleteFunctionEventInvokeConfig", &["Qualifier"])?;
    let target = Target::from_request(ctx, name)?.unqualified("DeleteFunctionEventInvokeConfig")?;
    let defaults = FunctionConfig::default();
    reconfigure(ctx, &target.name, |config| {
        config.max_attempts = defaults.max_attempts;
        config.max_event_age = defaults.max_event_age;
        config.on_success.clear();
        config.on_failure = None;
        Ok(())
    })
    .await?;
    no_content()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct UrlConfig {
    auth_type: Option<String>,
    cors: Option<LambdaCors>,
    invoke_mode: Option<String>,
}

/// Lambda's `Cors` shape of a function URL, kept as the function's `cors` setting.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct LambdaCors {
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_origins: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    max_age: u32,
}

impl From<LambdaCors> for cirrus_api::cors::Cors {
    fn from(c: LambdaCors) -> Self {
        Self {
            allow_origins: c.allow_origins,
            allow_methods: c.allow_methods,
            allow_headers: c.allow_headers,
            expose_headers: c.expose_headers,
            max_age: c.max_age,
            allow_credentials: c.allow_credentials,
        }
    }
}

impl From<&cirrus_api::cors::Cors> for LambdaCors {
    fn from(c: &cirrus_api::cors::Cors) -> Self {
        Self {
            allow_credentials: c.allow_credentials,
            allow_headers: c.allow_headers.clone(),
            allow_methods: c.allow_methods.clone(),
            allow_origins: c.allow_origins.clone(),
            expose_headers: c.expose_headers.clone(),
            max_age: c.max_age,
        }
    }
}

/// The function's URL: its `/fn/` address on the host the client called.
fn function_url(ctx: &Ctx, name: &str) -> String {
    let host = ctx.header("host").unwrap_or("127.0.0.1");
    format!("http://{host}/fn/{name}/")
}

fn url_config(ctx: &Ctx, v: &VersionInfo) -> Value {
    let time = shapes::lambda_time(&v.created_at);
    let mut config = json!({
        "FunctionUrl": function_url(ctx, &v.function),
        "FunctionArn": ctx.arn(&v.function, None),
        "AuthType": if v.config.public { "NONE" } else { "AWS_IAM" },
        "CreationTime": time,
        "LastModifiedTime": time,
        "InvokeMode": "BUFFERED",
    });
    if let Some(cors) = &v.config.cors {
        config["Cors"] = json!(LambdaCors::from(cors));
    }
    config
}

/// Every function has its URL (`/fn/NAME/`); `AuthType` only says whether it answers
/// without credentials (`NONE`) or needs the admin token (`AWS_IAM`).
pub async fn put_url_config(ctx: &Ctx, name: &str, create: bool) -> LambdaResult<Response> {
    let operation = if create {
        "CreateFunctionUrlConfig"
    } else {
        "UpdateFunctionUrlConfig"
    };
    ctx.allow_query(operation, &["Qualifier"])?;
    let request: UrlConfig = ctx.json(operation)?;
    let target = Target::from_request(ctx, name)?.unqualified(operation)?;
    let cors = request.cors.map(cirrus_api::cors::Cors::from);
    if let Some(cors) = &cors {
        cors.validate()
            .map_err(|e| LambdaError::invalid(format!("Cors: {e}")))?;
    }
    if request
        .invoke_mode
        .as_deref()
        .is_some_and(|m| m != "BUFFERED")
    {
        return Err(LambdaError::invalid(
            "Cirrus function URLs answer buffered: InvokeMode RESPONSE_STREAM is not supported",
        ));
    }
    let public = match request.auth_type.as_deref() {
        Some("NONE") => Some(true),
        Some("AWS_IAM") => Some(false),
        None if !create => None,
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "AuthType {other:?}: use NONE (public) or AWS_IAM (the admin token)"
            )))
        }
        None => return Err(LambdaError::invalid("AuthType is required")),
    };
    let latest = reconfigure(ctx, &target.name, |config| {
        // A public function has its URL config already (AuthType NONE).
        if create && config.public {
            return Err(LambdaError::conflict(format!(
                "Failed to create function url config for [functionArn = {}]. Error message: FunctionUrlConfig exists for this Lambda function",
                ctx.arn(name, None)
            )));
        }
        if let Some(public) = public {
            config.public = public;
        }
        if let Some(cors) = cors {
            config.cors = Some(cors);
        }
        Ok(())
    })
    .await?;
    let status = if create {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, url_config(ctx, &latest))
}

pub fn get_url_config(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("GetFunctionUrlConfig", &["Qualifier"])?;
    let target = Target::from_request(ctx, name)?.unqualified("GetFunctionUrlConfig")?;
    let latest = function(ctx, &target.name)?.latest;
    ok(StatusCode::OK, url_config(ctx, &latest))
}

pub async fn delete_url_config(ctx: &Ctx, name: &str) -> LambdaResult<Response> {
    ctx.allow_query("DeleteFunctionUrlConfig", &["Qualifier"])?;
    let target = Target::from_request(ctx, name)?.unqualified("DeleteFunctionUrlConfig")?;
    reconfigure(ctx, &target.name, |config| {
        config.public = false;
        config.cors = None;
        Ok(())
    })
    .await?;
    no_content()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request structs flatten shared parts; an unknown field is still an error.
    #[test]
    fn unknown_fields_are_refused_through_flattened_parts() {
        let create = r#"{"FunctionName":"f","Code":{"ZipFile":""},"Timeout":3,"Colour":"red"}"#;
        let e = serde_json::from_str::<CreateFunction>(create)
            .err()
            .unwrap();
        assert!(e.to_string().contains("Colour"), "{e}");
        let ok = r#"{"FunctionName":"f","Code":{"ZipFile":""},"Timeout":3,"Publish":true}"#;
        assert!(serde_json::from_str::<CreateFunction>(ok).is_ok());
        let code = r#"{"ZipFile":"","Publish":true,"Colour":"red"}"#;
        let e = serde_json::from_str::<UpdateCode>(code).err().unwrap();
        assert!(e.to_string().contains("Colour"), "{e}");
        let ok = r#"{"ZipFile":"","Publish":true,"DryRun":false}"#;
        assert!(serde_json::from_str::<UpdateCode>(ok).is_ok());
    }
}
