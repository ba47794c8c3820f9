//! The HTTP gateway: the management API under `/v1` and HTTP triggers under `/fn`.
//! Handlers only parse requests into calls on the registry and the invoker.

mod dlq;
mod functions;
pub(crate) mod invoke;
pub(crate) mod kv;
mod logs;
mod objects;
mod triggers;
pub(crate) mod usage;

use crate::auth::is_authorized;
use crate::error::{error_response, Failure};
use crate::invoker::Invoker;
use crate::records::RecordSink;
use crate::registry::Registry;
use crate::scaler::Scaler;
use crate::store::RecordStore;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::Router;
use cirrus_api::{ApiError, ErrorCode};
use std::sync::Arc;
use tokio::sync::watch;

/// Every route the router serves, as `(method, path)`; `docs/openapi.json` must list
/// exactly these (a test checks both directions). The Lambda API's prefixes
/// (`crate::lambda::PREFIXES`) are not listed: AWS's own reference documents them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/ui"),
    ("GET", "/v1/functions"),
    ("GET", "/v1/functions/{name}"),
    ("PUT", "/v1/functions/{name}"),
    ("DELETE", "/v1/functions/{name}"),
    ("GET", "/v1/functions/{name}/versions"),
    ("GET", "/v1/functions/{name}/aliases"),
    ("PUT", "/v1/functions/{name}/aliases/{alias}"),
    ("DELETE", "/v1/functions/{name}/aliases/{alias}"),
    ("POST", "/v1/functions/{name}/invoke"),
    ("GET", "/v1/functions/{name}/invocations"),
    ("GET", "/v1/functions/{name}/logs"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/status"),
    ("GET", "/v1/runtimes"),
    ("GET", "/v1/trace/{request_id}"),
    ("GET", "/v1/kv/{table}"),
    ("GET", "/v1/kv/{table}/{key}"),
    ("PUT", "/v1/kv/{table}/{key}"),
    ("DELETE", "/v1/kv/{table}/{key}"),
    ("GET", "/v1/buckets"),
    ("PUT", "/v1/buckets/{bucket}"),
    ("DELETE", "/v1/buckets/{bucket}"),
    ("GET", "/v1/buckets/{bucket}/objects"),
    ("GET", "/v1/buckets/{bucket}/objects/{key}"),
    ("HEAD", "/v1/buckets/{bucket}/objects/{key}"),
    ("PUT", "/v1/buckets/{bucket}/objects/{key}"),
    ("DELETE", "/v1/buckets/{bucket}/objects/{key}"),
    ("GET", "/v1/triggers"),
    ("POST", "/v1/functions/{name}/triggers"),
    ("DELETE", "/v1/triggers/{id}"),
    ("POST", "/v1/topics/{topic}"),
    ("GET", "/v1/webhooks/signing-key"),
    ("GET", "/v1/dlq"),
    ("DELETE", "/v1/dlq"),
    ("POST", "/v1/dlq/redrive"),
    ("GET", "/v1/dlq/{id}"),
    ("DELETE", "/v1/dlq/{id}"),
    ("POST", "/v1/dlq/{id}/redrive"),
    ("GET", "/metrics"),
    ("ANY", "/fn/{target}"),
    ("ANY", "/fn/{target}/"),
    ("ANY", "/fn/{target}/{path}"),
];

/// Everything handlers reach.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub scaler: Arc<Scaler>,
    pub invoker: Arc<Invoker>,
    pub records: RecordSink,
    pub record_store: Arc<dyn RecordStore>,
    pub token: String,
    pub max_artifact_bytes: usize,
    pub prices: cirrus_api::usage::Prices,
    /// Accepts asynchronous events (committed before acknowledged).
    pub events: crate::queue::EventSink,
    pub event_queue: Arc<dyn crate::store::EventQueue>,
    /// Wakes the dispatcher (new events, redrives).
    pub wake: Arc<tokio::sync::Notify>,
    pub max_event_bytes: usize,
    pub kv: Arc<dyn crate::store::KvStore>,
    /// KV writes with their change events.
    pub kv_writer: Arc<crate::sources::table::KvWriter>,
    /// The object store, for `/v1/buckets` (the same one the S3 listener serves).
    pub s3: Arc<crate::s3::S3>,
    /// Signs webhook destinations' POSTs.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// How the triggers that hold a connection (broker subscriptions) are doing.
    pub sources: Arc<crate::sources::subscriptions::SourceStates>,
    /// Flips to true when the server starts shutting down; long-lived streams end then.
    pub shutdown: watch::Receiver<bool>,
}

pub type AppStateRef = Arc<AppState>;

pub fn router(state: AppStateRef) -> Router {
    // Multipart framing on top of the artifact itself.
    let deploy_limit = state.max_artifact_bytes + (1 << 20);
    let management = Router::new()
        .route("/v1/functions", get(functions::list))
        .route(
            "/v1/functions/{name}",
            get(functions::get)
                .put(functions::deploy)
                .delete(functions::delete)
                .layer(DefaultBodyLimit::max(deploy_limit)),
        )
        .route("/v1/functions/{name}/versions", get(functions::versions))
        .route("/v1/functions/{name}/aliases", get(functions::aliases))
        .route(
            "/v1/functions/{name}/aliases/{alias}",
            put(functions::set_alias).delete(functions::delete_alias),
        )
        .route("/v1/functions/{name}/invoke", post(invoke::invoke_api))
        .route("/v1/functions/{name}/invocations", get(logs::invocations))
        .route("/v1/functions/{name}/logs", get(logs::logs))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/status", get(status))
        .route("/v1/runtimes", get(runtimes))
        .route("/v1/trace/{request_id}", get(logs::trace))
        .route("/v1/triggers", get(triggers::list))
        .route("/v1/functions/{name}/triggers", post(triggers::add))
        .route("/v1/triggers/{id}", axum::routing::delete(triggers::remove))
        .route("/v1/topics/{topic}", post(triggers::publish))
        .route("/v1/buckets", get(objects::list_buckets))
        .route(
            "/v1/buckets/{bucket}",
            put(objects::create_bucket).delete(objects::delete_bucket),
        )
        .route("/v1/webhooks/signing-key", get(webhook_key))
        .route("/v1/dlq", get(dlq::list).delete(dlq::purge_all))
        .route("/v1/dlq/redrive", post(dlq::redrive_all))
        .route("/v1/dlq/{id}", get(dlq::show).delete(dlq::purge_one))
        .route("/v1/dlq/{id}/redrive", post(dlq::redrive_one))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // Storage also answers functions presenting a token within their grants.
    let storage = Router::new()
        .route("/v1/kv/{table}", get(kv::list))
        .route(
            // Keys may contain '/': the rest of the path is the key.
            "/v1/kv/{table}/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/buckets/{bucket}/objects", get(objects::list))
        .route(
            "/v1/buckets/{bucket}/objects/{*key}",
            get(objects::get)
                .head(objects::get)
                .put(objects::put)
                .delete(objects::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_grant));
    Router::new()
        .route("/v1/health", get(health))
        // The page is static and holds no data; it asks for the admin token and every
        // API call it makes carries it.
        .route("/ui", get(dashboard))
        .merge(management)
        .merge(storage)
        // The AWS Lambda API, under its own date prefixes (documented by AWS, not here).
        .merge(crate::lambda::router())
        .route("/fn/{target}", any(invoke::http_trigger))
        // `{*path}` needs at least one character: `/fn/NAME/` is the function's `/`.
        .route("/fn/{target}/", any(invoke::http_trigger))
        .route("/fn/{target}/{*path}", any(invoke::http_trigger))
        // Invocation bodies are limited by the invoker, per its own setting.
        .layer(DefaultBodyLimit::disable())
        .fallback(triggers::custom_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The dashboard: one static page, embedded in the binary.
const DASHBOARD: &str = include_str!("../../ui/index.html");

async fn dashboard() -> Response {
    (
        [
                        (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
            // The page talks only to this server and may not be framed.
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (axum::http::header::X_FRAME_OPTIONS, "DENY"),
            (axum::http::header::REFERRER_POLICY, "no-referrer"),],
        DASHBOARD,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookKeyQuery {
    function: String,
}

/// `GET /v1/webhooks/signing-key?function=NAME`: the key that function's webhook
/// destinations sign with, for the receivers that check them.
async fn webhook_key(
    State(state): State<AppStateRef>,
    q: Result<axum::extract::Query<WebhookKeyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let axum::extract::Query(q) = q.map_err(|e| {
        cirrus_api::ApiError::bad_request(format!(
            "invalid query: {}: give ?function=NAME",
            e.body_text()
        ))
    })?;
    state.registry.get(&q.function)?;
    Ok(axum::Json(serde_json::json!({
        "function": q.function,
        "key": state.webhooks.key_hex(&q.function),
        "header": crate::webhooks::SIGNATURE_HEADER,
        "scheme": "t=UNIX_SECONDS,v1=hex(HMAC-SHA256(hex_decode(key), \"{t}.{ce-id}.{body}\"))",
    }))
    .into_response())
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn status(
    State(state): State<AppStateRef>,
) -> Result<axum::Json<cirrus_api::ServerStatus>, Failure> {
    let queue = state.event_queue.clone();
    let (queued_events, dead_events) = tokio::task::spawn_blocking(move || queue.depth())
        .await
        .map_err(Failure::internal)?
        .map_err(Failure::internal)?;
    let mut live = state.scaler.function_states();
    let functions = state
        .registry
        .list()
        .into_iter()
        .map(|f| {
            let live = live.remove(&f.name).unwrap_or_default();
            cirrus_api::FunctionStatus {
                name: f.name,
                loaded: live.loaded_versions,
                in_flight: live.in_flight,
                environments: live.environments,
                idle_environments: live.idle_environments,
            }
        })
        .collect();
    Ok(axum::Json(cirrus_api::ServerStatus {
        in_flight: state.scaler.in_flight(),
        loaded_versions: state.scaler.loaded_count(),
        pooling_allocator: state.registry.runtime().pooling(),
        queued_events,
        dead_events,
        functions,
    }))
}

async fn runtimes(State(state): State<AppStateRef>) -> axum::Json<cirrus_api::RuntimesInfo> {
    let mut runtimes = vec!["wasi".to_owned()];
    let native_off = match state.registry.native_runtimes() {
        Ok(native) => {
            runtimes.extend(native.names());
            None
        }
        Err(why) => Some(why),
    };
    axum::Json(cirrus_api::RuntimesInfo {
        runtimes,
        native_off,
    })
}

async fn metrics(State(state): State<AppStateRef>) -> Result<Response, Failure> {
    let queue = state.event_queue.clone();
    let depth = tokio::task::spawn_blocking(move || queue.depth())
        .await
        .map_err(Failure::internal)?
        .map_err(Failure::internal)?;
    let text = state.invoker.metrics.render(&state.scaler.live(), depth);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn require_token(State(state): State<AppStateRef>, request: Request, next: Next) -> Response {
    if is_authorized(request.headers(), &state.token) {
        next.run(request).await
    } else {
        error_response(ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong admin token: send `Authorization: Bearer <token>` (the token is in <data-dir>/admin.token)",
        ))
    }
}

/// The admin token, or a function token whose grants cover the table or bucket the
/// request names (reads: GET and HEAD; writes: the rest).
async fn require_grant(State(state): State<AppStateRef>, request: Request, next: Next) -> Response {
    if is_authorized(request.headers(), &state.token) {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(crate::auth::bearer_token)
        .unwrap_or("");
    if !crate::function_token::TokenIssuer::is_function_token(bearer) {
        return require_token(State(state), request, next).await;
    }
    let Some(claims) = state
        .invoker
        .platform
        .issuer
        .verify(bearer, state.invoker.clock.now_ms())
    else {
        return error_response(ApiError::new(
            ErrorCode::Unauthorized,
            "the function token is invalid or has expired (tokens last an invocation's timeout plus a minute)",
        ));
    };
    if state.registry.incarnation(&claims.function) != Some(claims.incarnation) {
        return error_response(ApiError::new(
            ErrorCode::Unauthorized,
            format!(
                "the function token was issued to function {:?}, which has since been deleted",
                claims.function
            ),
        ));
    }
    let mut segments = request.uri().path().trim_start_matches('/').split('/');
    let resource = match (segments.next(), segments.next(), segments.next()) {
        (Some("v1"), Some("kv"), Some(table)) => cirrus_api::grant::Resource::Kv(table.to_owned()),
        (Some("v1"), Some("buckets"), Some(bucket)) => {
            cirrus_api::grant::Resource::Bucket(bucket.to_owned())
        }
        _ => {
            return error_response(ApiError::new(
                ErrorCode::Forbidden,
                "function tokens reach only /v1/kv and /v1/buckets",
            ))
        }
    };
    let access = match *request.method() {
        axum::http::Method::GET | axum::http::Method::HEAD => cirrus_api::grant::Access::Read,
        _ => cirrus_api::grant::Access::Write,
    };
    if claims.allows(&resource, access) {
        let mut request = request;
        request.extensions_mut().insert(claims);
        return next.run(request).await;
    }
    let wanted = cirrus_api::grant::Grant { resource, access };
    error_response(ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "function {} may not do this: it needs the storage grant \"{wanted}\" (it has {:?})",
            claims.function,
            claims
                .grants
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        ),
    ))
}

async fn method_not_allowed(request: Request) -> Failure {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .into()
}

/// A header's value as text, if present and printable.
pub(crate) fn header(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads a JSON body with errors a user can act on (axum's own rejections are plain text).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid {what}: {e}")).into())
}
