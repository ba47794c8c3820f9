//! The HTTP gateway: the management API under `/v1` and HTTP triggers under `/fn`.
//! Handlers only parse requests into calls on the registry and the invoker.

mod access;
mod dlq;
mod functions;
pub(crate) mod invoke;
pub(crate) mod kv;
mod logs;
mod objects;
mod triggers;
pub(crate) mod usage;

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

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Open,
    /// A key with the scope (`admin` ⊇ `deploy` ⊇ `read`).
    Read,
    Deploy,
    Admin,
    /// `invoke:NAME` for the `{name}` in the path (or `deploy`/`admin`).
    Invoke,
    /// Tables and buckets: `read` to read, `deploy` to write, or a function's token
    /// within its storage grants.
    Storage,
    /// HTTP triggers: anyone for a public function; `invoke:NAME` for a private one.
    Function,
}

/// Every route the router serves, as `(method, path, what it asks of its caller)`;
/// `docs/openapi.json` must list exactly these (a test checks both directions). The
/// Lambda API's prefixes (`crate::lambda::PREFIXES`) are not listed: AWS's own
/// reference documents them.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/v1/health", Access::Open),
    ("GET", "/ui", Access::Open),
    ("GET", "/v1/functions", Access::Read),
    ("GET", "/v1/functions/{name}", Access::Read),
    ("PUT", "/v1/functions/{name}", Access::Deploy),
    ("DELETE", "/v1/functions/{name}", Access::Deploy),
    ("GET", "/v1/functions/{name}/versions", Access::Read),
    ("GET", "/v1/functions/{name}/aliases", Access::Read),
    (
        "PUT",
        "/v1/functions/{name}/aliases/{alias}",
        Access::Deploy,
    ),
    (
        "DELETE",
        "/v1/functions/{name}/aliases/{alias}",
        Access::Deploy,
    ),
    ("POST", "/v1/functions/{name}/invoke", Access::Invoke),
    ("GET", "/v1/functions/{name}/invocations", Access::Read),
    ("GET", "/v1/functions/{name}/logs", Access::Read),
    ("GET", "/v1/usage", Access::Read),
    ("GET", "/v1/status", Access::Read),
    ("GET", "/v1/runtimes", Access::Read),
    ("GET", "/v1/trace/{request_id}", Access::Read),
    ("GET", "/v1/kv/{table}", Access::Storage),
    ("GET", "/v1/kv/{table}/{key}", Access::Storage),
    ("PUT", "/v1/kv/{table}/{key}", Access::Storage),
    ("DELETE", "/v1/kv/{table}/{key}", Access::Storage),
    ("GET", "/v1/buckets", Access::Read),
    ("PUT", "/v1/buckets/{bucket}", Access::Deploy),
    ("DELETE", "/v1/buckets/{bucket}", Access::Deploy),
    ("GET", "/v1/buckets/{bucket}/objects", Access::Storage),
    ("GET", "/v1/buckets/{bucket}/objects/{key}", Access::Storage),
    (
        "HEAD",
        "/v1/buckets/{bucket}/objects/{key}",
        Access::Storage,
    ),
    ("PUT", "/v1/buckets/{bucket}/objects/{key}", Access::Storage),
    (
        "DELETE",
        "/v1/buckets/{bucket}/objects/{key}",
        Access::Storage,
    ),
    ("GET", "/v1/triggers", Access::Read),
    ("POST", "/v1/functions/{name}/triggers", Access::Deploy),
    ("DELETE", "/v1/triggers/{id}", Access::Deploy),
    ("POST", "/v1/topics/{topic}", Access::Deploy),
    ("GET", "/v1/webhooks/signing-key", Access::Admin),
    ("GET", "/v1/dlq", Access::Read),
    ("DELETE", "/v1/dlq", Access::Deploy),
    ("POST", "/v1/dlq/redrive", Access::Deploy),
    ("GET", "/v1/dlq/{id}", Access::Read),
    ("DELETE", "/v1/dlq/{id}", Access::Deploy),
    ("POST", "/v1/dlq/{id}/redrive", Access::Deploy),
    ("GET", "/v1/keys", Access::Admin),
    ("POST", "/v1/keys", Access::Admin),
    ("DELETE", "/v1/keys/{id}", Access::Admin),
    ("GET", "/v1/audit", Access::Admin),
    ("GET", "/v1/secrets", Access::Admin),
    ("PUT", "/v1/secrets/{name}", Access::Admin),
    ("DELETE", "/v1/secrets/{name}", Access::Admin),
    ("GET", "/metrics", Access::Read),
    ("ANY", "/fn/{target}", Access::Function),
    ("ANY", "/fn/{target}/", Access::Function),
    ("ANY", "/fn/{target}/{path}", Access::Function),
];

/// Everything handlers reach.
pub struct AppState {
    /// Cluster mode's shared state, or `None` on a single node.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
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
    /// API keys beside the admin token.
    pub keys: Arc<crate::keys::ApiKeys>,
    /// Secrets functions' environments reference.
    pub secrets: Arc<crate::secrets::Secrets>,
    pub audit: Arc<crate::audit::Audit>,
    /// Where the dashboard is served, when on a listener of its own.
    pub dashboard_url: std::sync::OnceLock<String>,
}

pub type AppStateRef = Arc<AppState>;

/// The main listener: everything but the dashboard page, which lives on an origin of
/// its own ([`dashboard_router`]).
pub fn router(state: AppStateRef) -> Router {
    Router::new()
        .route("/ui", get(dashboard_elsewhere))
        .merge(api_routes(state.clone()))
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

/// The dashboard's listener: the page and the management API it calls, and nothing a
/// function controls, so no function's page shares the dashboard's origin (and its
/// session storage, where the token is kept).
pub fn dashboard_router(state: AppStateRef) -> Router {
    Router::new()
        // The page is static and holds no data; it asks for the token and every API
        // call it makes carries it.
        .route("/ui", get(dashboard))
        .route(
            "/ui/uPlot.iife.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS) }),
        )
        .route(
            "/ui/uPlot.min.css",
            get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS) }),
        )
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .merge(api_routes(state.clone()))
        .layer(DefaultBodyLimit::disable())
        .fallback(not_here)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_here(request: Request) -> Failure {
    ApiError::not_found(format!(
        "no route for {} {} on the dashboard's listener: functions, custom routes and the Lambda API are served on the main listener",
        request.method(),
        request.uri().path()
    ))
    .into()
}

/// `/ui` on the main listener: the dashboard is not served where functions' pages are.
async fn dashboard_elsewhere(State(state): State<AppStateRef>) -> Failure {
    match state.dashboard_url.get() {
        Some(url) => ApiError::not_found(format!(
            "the dashboard is served on an origin of its own, apart from functions' pages: open {url}"
        )),
        None => ApiError::not_found(
            "the dashboard is off (cirrus up --dashboard-listen off); start the server with --dashboard-listen ADDR to serve it on an origin of its own",
        ),
    }
    .into()
}

/// `/v1` (management and storage), `/v1/health` and `/metrics`, on both listeners.
fn api_routes(state: AppStateRef) -> Router<AppStateRef> {
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
        .route("/v1/keys", get(access::list_keys).post(access::create_key))
        .route("/v1/keys/{id}", axum::routing::delete(access::revoke_key))
        .route("/v1/audit", get(access::audit))
        .route("/v1/secrets", get(access::list_secrets))
        .route(
            "/v1/secrets/{name}",
            put(access::set_secret).delete(access::delete_secret),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
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
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/v1/health", get(health))
        .merge(management)
        .merge(storage)
}

/// The dashboard: one static page, embedded in the binary, with the chart library it
/// draws with (uPlot, MIT; see ui/vendor/README.md).
const DASHBOARD: &str = include_str!("../../ui/index.html");
const UPLOT_JS: &str = include_str!("../../ui/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../ui/vendor/uPlot.min.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            // Versioned with the binary: a day is plenty, and a restart may change it.
            (axum::http::header::CACHE_CONTROL, "public, max-age=86400"),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn dashboard() -> Response {
    (
        [
                        (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
            // The page talks only to this server and may not be framed.
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
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

/// `ok` while the node serves invocations; in a cluster also the node's name and its
/// NATS connection (a node without NATS still serves, and refuses changes).
async fn health(State(state): State<AppStateRef>) -> axum::Json<serde_json::Value> {
    let mut health = serde_json::json!({ "status": "ok" });
    if let Some(cluster) = &state.cluster {
        health["cluster"] = serde_json::json!({
            "node": cluster.node,
            "nats": if cluster.store.connected() { "connected" } else { "disconnected" },
        });
    }
    axum::Json(health)
}

async fn status(
    State(state): State<AppStateRef>,
) -> Result<axum::Json<cirrus_api::ServerStatus>, Failure> {
    let (queued_events, dead_events) =
        state.event_queue.depth().await.map_err(Failure::internal)?;
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
    let depth = state.event_queue.depth().await.map_err(Failure::internal)?;
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

/// What the route `(method, matched path)` asks of its caller.
pub fn route_access(method: &axum::http::Method, matched: &str) -> Option<Access> {
    let path = matched.replace("{*", "{");
    let find = |m: &str| {
        ROUTES
            .iter()
            .find(|(rm, rp, _)| *rm == m && *rp == path)
            .map(|(_, _, access)| *access)
    };
    find(method.as_str()).or_else(|| {
        (*method == axum::http::Method::HEAD)
            .then(|| find("GET"))
            .flatten()
    })
}

/// The one gate of the management and storage routes: finds who is calling (the admin
/// token, an API key, or on storage routes a function's token), checks the scope the
/// route declares in [`ROUTES`], and writes actions (not reads) to the audit log.
async fn authorize(
    State(state): State<AppStateRef>,
    matched: axum::extract::MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let Some(access) = route_access(&method, matched.as_str()) else {
        // Every route is declared (a test checks); refuse rather than guess.
        return error_response(ApiError::internal(format!(
            "route {} {} declares no access",
            method,
            matched.as_str()
        )));
    };
    let now = state.invoker.clock.now_ms();
    let audited = crate::audit::Audit::records(&method);
    let principal = match state.keys.authenticate(request.headers(), now) {
        Ok(Some(principal)) => principal,
        Ok(None) if access == Access::Storage && bearer_is_function_token(request.headers()) => {
            // Functions' own storage calls are data, not management: not audited.
            return require_grant(state, request, next).await;
        }
        Ok(None) => {
            if audited {
                state.audit.record("anonymous", method.as_str(), &path, 401);
            }
            return error_response(ApiError::new(
                ErrorCode::Unauthorized,
                "missing or wrong credentials: send `Authorization: Bearer <token>` with the admin token (in <data-dir>/admin.token) or an API key (`cirrus key create`)",
            ));
        }
        Err(refused) => {
            if audited {
                state.audit.record("unknown", method.as_str(), &path, 401);
            }
            return error_response(refused);
        }
    };
    let name = request
        .uri()
        .path()
        .strip_prefix("/v1/functions/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
        .to_owned();
    let writes = !matches!(method, axum::http::Method::GET | axum::http::Method::HEAD);
    let need = match access {
        Access::Open | Access::Function | Access::Read => cirrus_api::access::Need::Read,
        Access::Deploy => cirrus_api::access::Need::Deploy,
        Access::Admin => cirrus_api::access::Need::Admin,
        Access::Invoke => cirrus_api::access::Need::Invoke(&name),
        Access::Storage if writes => cirrus_api::access::Need::Deploy,
        Access::Storage => cirrus_api::access::Need::Read,
    };
    if !principal.scope.allows(need) {
        if audited {
            state
                .audit
                .record(&principal.actor, method.as_str(), &path, 403);
        }
        return error_response(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "{} has scope {}; {method} {path} needs scope {need}",
                principal.actor, principal.scope
            ),
        ));
    }
    let actor = principal.actor.clone();
    let mut request = request;
    request.extensions_mut().insert(principal);
    let response = next.run(request).await;
    if audited {
        state
            .audit
            .record(&actor, method.as_str(), &path, response.status().as_u16());
    }
    response
}

fn bearer_is_function_token(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .filter_map(crate::auth::bearer_token)
        .any(crate::function_token::TokenIssuer::is_function_token)
}

/// A function token whose grants cover the table or bucket the request names (reads:
/// GET and HEAD; writes: the rest).
async fn require_grant(state: AppStateRef, request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .filter_map(crate::auth::bearer_token)
        .find(|t| crate::function_token::TokenIssuer::is_function_token(t))
        .unwrap_or("");
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
