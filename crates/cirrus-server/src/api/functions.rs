//! Function management: deploy, read, delete, versions and aliases.

use super::{parse_json, AppStateRef};
use crate::error::Failure;
use crate::registry::DeployRequest;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use cirrus_api::{AliasTarget, ApiError, ErrorCode, FunctionConfig};

pub async fn list(State(state): State<AppStateRef>) -> Response {
    let mut functions = state.registry.list();
    for function in &mut functions {
        function.triggers = state
            .sources
            .annotate(std::mem::take(&mut function.triggers));
    }
    Json(functions).into_response()
}

pub async fn get(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    Ok(Json(state.registry.get(&name)?).into_response())
}

/// `PUT /v1/functions/{name}` with multipart parts `config` (JSON, optional) and
/// `artifact` (the .wasm/.wat file; optional when only the config changes).
pub async fn deploy(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, Failure> {
    let mut form = form.map_err(|e| {
        ApiError::bad_request(format!(
            "{}: send multipart/form-data with an `artifact` part and/or a `config` part",
            e.body_text()
        ))
    })?;
    let mut config = None;
    let mut artifact = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e, state.max_artifact_bytes)),
        };
        let part = field.name().unwrap_or_default().to_owned();
        let bytes: Bytes = field
            .bytes()
            .await
            .map_err(|e| multipart_error(e, state.max_artifact_bytes))?;
        match part.as_str() {
            "config" => config = Some(parse_json::<FunctionConfig>(&bytes, "config")?),
            "artifact" => artifact = Some(bytes.to_vec()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected form part {other:?}: send `artifact` (the wasm file) and/or `config` (JSON)"
                ))
                .into())
            }
        }
    }
    if config.is_none() && artifact.is_none() {
        return Err(ApiError::bad_request(
            "send an `artifact` part (the wasm file) and/or a `config` part (JSON)",
        )
        .into());
    }
    let exists = state.registry.get(&name).is_ok();
    let config = match config {
        Some(config) => config,
        // A code-only update keeps the current configuration.
        None if exists => state.registry.get(&name)?.latest.config,
        None => FunctionConfig::default(),
    };
    let preload = config.min_loaded > 0;
    let result = state
        .registry
        .deploy(DeployRequest {
            name,
            config,
            artifact,
            expected_latest: None,
        })
        .await?;
    if preload && result.created {
        let (scaler, version) = (state.scaler.clone(), result.function.latest.clone());
        tokio::spawn(async move {
            if let Err(e) = scaler.preload(&version).await {
                tracing::warn!(function = %version.function, "preloading failed: {e}");
            }
        });
    }
    let status = if !exists {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(result)).into_response())
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> Failure {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::InvalidArtifact,
            format!("invalid artifact: the upload exceeds the artifact limit of {limit} bytes"),
        )
        .into()
    } else {
        ApiError::bad_request(format!("invalid multipart body: {}", e.body_text())).into()
    }
}

pub async fn delete(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    let info = state.registry.delete(&name).await?;
    state.scaler.unload_function(&name);
    Ok(Json(info).into_response())
}

pub async fn versions(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    Ok(Json(state.registry.versions(&name)?).into_response())
}

pub async fn aliases(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    Ok(Json(state.registry.aliases(&name)?).into_response())
}

pub async fn set_alias(
    State(state): State<AppStateRef>,
    Path((name, alias)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Failure> {
    let target: AliasTarget = parse_json(&body, "alias body (expected {\"version\": N})")?;
    Ok(Json(
        state
            .registry
            .set_alias(&name, &alias, target.version)
            .await?,
    )
    .into_response())
}

pub async fn delete_alias(
    State(state): State<AppStateRef>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Response, Failure> {
    Ok(Json(state.registry.delete_alias(&name, &alias).await?).into_response())
}
