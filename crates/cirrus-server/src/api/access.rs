//! API keys (`/v1/keys`), secrets (`/v1/secrets`) and the audit log (`/v1/audit`); all
//! need the `admin` scope.

use super::AppStateRef;
use crate::error::{body_error, Failure};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cirrus_api::access::{secret_reference, NewKey};
use cirrus_api::{ApiError, Page};
use std::collections::BTreeMap;

pub async fn create_key(
    State(state): State<AppStateRef>,
    request: Request,
) -> Result<Response, Failure> {
    let body = axum::body::to_bytes(request.into_body(), 64 << 10)
        .await
        .map_err(|e| body_error(e, 64 << 10, "request body"))?;
    let new: NewKey = super::parse_json(&body, "key request")?;
    let now = state.invoker.clock.now_ms();
    let created = state.keys.create(new, now).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub async fn list_keys(
    State(state): State<AppStateRef>,
) -> Json<Page<cirrus_api::access::KeyInfo>> {
    Json(Page {
        items: state.keys.list(),
        next: None,
    })
}

pub async fn revoke_key(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let now = state.invoker.clock.now_ms();
    let revoked = state.keys.revoke(&id, now).await?;
    Ok(Json(revoked).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<usize>,
    before: Option<u64>,
}

pub async fn audit(
    State(state): State<AppStateRef>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let items = state
        .audit
        .list(q.before, limit)
        .await
        .map_err(Failure::internal)?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(Json(Page { items, next }).into_response())
}

/// Which function versions reference each secret (`fn@3`), from every stored version:
/// an alias may move back to any of them.
pub(crate) fn secret_users(registry: &crate::registry::Registry) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for function in registry.list() {
        for version in registry.versions(&function.name).unwrap_or_default() {
            for value in version.config.env.values() {
                if let Some(secret) = secret_reference(value) {
                    let user = format!("{}@{}", version.function, version.version);
                    let list = users.entry(secret.to_owned()).or_default();
                    if !list.contains(&user) {
                        list.push(user);
                    }
                }
            }
        }
    }
    users
}

pub async fn list_secrets(
    State(state): State<AppStateRef>,
) -> Json<Page<cirrus_api::access::SecretInfo>> {
    let mut users = secret_users(&state.registry);
    let items = state
        .secrets
        .list()
        .into_iter()
        .map(|mut s| {
            s.used_by = users.remove(&s.name).unwrap_or_default();
            s
        })
        .collect();
    Json(Page { items, next: None })
}

/// `PUT /v1/secrets/{name}`: the body is the value (UTF-8 text). Creating answers 201,
/// rotating 200; environments started from now on get the new value.
pub async fn set_secret(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, Failure> {
    let limit = crate::secrets::MAX_SECRET_BYTES;
    let body = axum::body::to_bytes(request.into_body(), limit + 1)
        .await
        .map_err(|e| body_error(e, limit, "secret"))?;
    let now = state.invoker.clock.now_ms();
    let (mut info, created) = state.secrets.set(&name, body.to_vec(), now).await?;
    info.used_by = secret_users(&state.registry)
        .remove(&info.name)
        .unwrap_or_default();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

/// Refused while any function version references the secret.
pub async fn delete_secret(
    State(state): State<AppStateRef>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    // Under the deploy lock, so no deploy adds a reference between check and delete.
    let _deploys = state.registry.lock_deploys().await;
    let used_by = secret_users(&state.registry)
        .remove(&name)
        .unwrap_or_default();
    let deleted = state.secrets.delete(&name, &used_by).await?;
    Ok(Json(deleted).into_response())
}
