//! The AWS Lambda API (`/2015-03-31/functions/...` and its siblings) on the main
//! listener, so Lambda clients (boto3, the aws CLI, the SDKs) deploy and invoke Cirrus
//! functions with only `--endpoint-url` changed.
//!
//! Requests are signed with SigV4 for service `lambda` against the same key pairs as
//! the S3 API, or carry the admin bearer token. Each operation maps onto what Cirrus
//! already has: a function's versions, aliases and config, the invoker and the durable
//! queue. Operations Cirrus does not implement are refused by name, with no effect.

mod error;
mod eventstream;
mod functions;
mod invoke;
mod package;
mod shapes;

pub use error::{LambdaError, LambdaResult};

use crate::api::AppStateRef;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use cirrus_api::access::Need;
use std::collections::HashMap;

/// The account id in every ARN Cirrus gives out (there is one account: this server).
pub const ACCOUNT: &str = "000000000000";
/// The region in ARNs when a request names none (bearer-token requests).
pub const DEFAULT_REGION: &str = "us-east-1";

/// The API-version prefixes Lambda's REST paths start with.
pub const PREFIXES: &[&str] = &[
    "2014-11-13",
    "2015-03-31",
    "2016-08-19",
    "2017-03-31",
    "2017-10-31",
    "2018-10-31",
    "2019-09-25",
    "2019-09-30",
    "2020-04-22",
    "2020-06-30",
    "2021-07-20",
    "2021-10-31",
    "2021-11-15",
    "2023-06-30",
    "2024-08-31",
    "2025-11-30",
    "2025-12-01",
];

/// Routes for every prefix. Each is a prefix of its own (not `/{version}/...`), so
/// custom HTTP routes keep every other path.
pub fn router() -> Router<AppStateRef> {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router
            .route(&format!("/{prefix}/{{*rest}}"), any(handle))
            .route(&format!("/{prefix}"), any(handle));
    }
    router
}

/// One request: who is asking, for what, and the answer.
pub(crate) struct Ctx {
    pub state: AppStateRef,
    pub method: Method,
    pub headers: HeaderMap,
    pub query: HashMap<String, String>,
    pub body: Bytes,
    /// The region the client signed for; ARNs carry it.
    pub region: String,
}

impl Ctx {
    /// The ARN of `function`, qualified when `qualifier` is given.
    pub fn arn(&self, function: &str, qualifier: Option<&str>) -> String {
        let mut arn = format!(
            "arn:aws:lambda:{}:{ACCOUNT}:function:{function}",
            self.region
        );
        if let Some(q) = qualifier {
            arn.push(':');
            arn.push_str(q);
        }
        arn
    }

    /// Refuses query parameters the operation does not take: ignoring one would do
    /// something other than what was asked.
    pub fn allow_query(&self, operation: &str, allowed: &[&str]) -> LambdaResult<()> {
        match self.query.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(LambdaError::invalid(format!(
                "{operation} does not take the query parameter {unknown:?}{}",
                if allowed.is_empty() {
                    String::new()
                } else {
                    format!(" (it takes {})", allowed.join(", "))
                }
            ))),
            None => Ok(()),
        }
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// The body as the operation's JSON input (an empty body is `{}`).
    pub fn json<T: serde::de::DeserializeOwned>(&self, operation: &str) -> LambdaResult<T> {
        let body: &[u8] = if self.body.is_empty() {
            b"{}"
        } else {
            &self.body
        };
        serde_json::from_slice(body)
            .map_err(|e| LambdaError::bad_content(format!("invalid {operation} request: {e}")))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn handle(State(state): State<AppStateRef>, request: Request) -> Response {
    match serve(state, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn serve(state: AppStateRef, request: Request) -> LambdaResult<Response> {
    let (parts, body) = request.into_parts();
    let bearer = state
        .keys
        .authenticate(&parts.headers, state.invoker.clock.now_ms())
        .map_err(LambdaError::from)?;
    if bearer.is_none() {
        crate::sigv4::precheck(&state.s3.credentials, &parts.headers, parts.uri.query())?;
    }
    // The largest request is a deployment package, base64 in JSON.
    let limit = state.max_artifact_bytes / 3 * 4 + (1 << 20);
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| LambdaError::from(crate::error::body_error(e, limit, "request body")))?;
    let (region, principal) = if let Some(principal) = bearer {
        (DEFAULT_REGION.to_owned(), principal)
    } else {
        // A package-sized body takes a while to hash: off the async workers.
        let hash = if body.len() > 1 << 20 {
            let body = body.clone();
            tokio::task::spawn_blocking(move || crate::sigv4::sha256_hex(&body))
                .await
                .map_err(|e| LambdaError::from(cirrus_api::ApiError::internal(e.to_string())))?
        } else {
            crate::sigv4::sha256_hex(&body)
        };
        let verified = crate::sigv4::verify(
            &state.s3.credentials,
            &crate::sigv4::SignedRequest {
                method: &parts.method,
                path: parts.uri.path(),
                query: parts.uri.query(),
                headers: &parts.headers,
            },
            "lambda",
            Some(&hash),
            std::time::SystemTime::now(),
        )?;
        let region = if verified.region.is_empty() {
            DEFAULT_REGION.to_owned()
        } else {
            verified.region
        };
        (region, verified.principal)
    };
    let mut query = HashMap::new();
    for pair in parts.uri.query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |t: &str| {
            crate::api::invoke::percent_decode(&t.replace('+', " "))
                .ok_or_else(|| LambdaError::invalid(format!("malformed query parameter {t:?}")))
        };
        query.insert(decode(k)?, decode(v)?);
    }
    let path = parts.uri.path().to_owned();
    let segments: Vec<String> = parts
        .uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            crate::api::invoke::percent_decode(s)
                .ok_or_else(|| LambdaError::invalid(format!("malformed path segment {s:?}")))
        })
        .collect::<LambdaResult<_>>()?;
    let ctx = Ctx {
        state,
        method: parts.method,
        headers: parts.headers,
        query,
        body,
        region,
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let need = need(&ctx.method, &segments);
    if !principal.scope.allows(need) {
        let refused = LambdaError::new(
            "AccessDeniedException",
            axum::http::StatusCode::FORBIDDEN,
            format!(
                "{} has scope {}; {} /{} needs scope {need}",
                principal.actor,
                principal.scope,
                ctx.method,
                segments.join("/")
            ),
        );
        if crate::audit::Audit::records(&ctx.method) {
            ctx.state
                .audit
                .record(&principal.actor, ctx.method.as_str(), &path, 403);
        }
        return Err(refused);
    }
    let result = route(&ctx, &segments).await;
    if crate::audit::Audit::records(&ctx.method) && !matches!(need, Need::Invoke(_)) {
        let status = match &result {
            Ok(response) => response.status().as_u16(),
            Err(e) => e.status.as_u16(),
        };
        ctx.state
            .audit
            .record(&principal.actor, ctx.method.as_str(), &path, status);
    }
    result
}

/// What a Lambda operation asks of its caller: Invoke `invoke:NAME`, reads `read`,
/// changes `deploy`.
fn need<'a>(method: &Method, path: &[&'a str]) -> Need<'a> {
    match path {
        [_, "functions", name, "invocations" | "response-streaming-invocations"] => {
            Need::Invoke(name)
        }
        _ if *method == Method::GET || *method == Method::HEAD => Need::Read,
        _ => Need::Deploy,
    }
}

async fn route(ctx: &Ctx, path: &[&str]) -> LambdaResult<Response> {
    use functions as f;
    let m = &ctx.method;
    let get = m == Method::GET;
    let put = m == Method::PUT;
    let post = m == Method::POST;
    let delete = m == Method::DELETE;
    match path {
        ["2015-03-31", "functions"] | ["2015-03-31", "functions", ""] if post => {
            f::create(ctx).await
        }
        ["2015-03-31", "functions"] | ["2015-03-31", "functions", ""] if get => f::list(ctx),
        ["2015-03-31", "functions", name] if get => f::get(ctx, name, true),
        ["2015-03-31", "functions", name] if delete => f::delete(ctx, name).await,
        ["2015-03-31", "functions", name, "configuration"] if get => f::get(ctx, name, false),
        ["2015-03-31", "functions", name, "configuration"] if put => {
            f::update_configuration(ctx, name).await
        }
        ["2015-03-31", "functions", name, "code"] if put => f::update_code(ctx, name).await,
        ["2015-03-31", "functions", name, "versions"] if post => f::publish(ctx, name),
        ["2015-03-31", "functions", name, "versions"] if get => f::list_versions(ctx, name),
        ["2015-03-31", "functions", name, "aliases"] if post => f::create_alias(ctx, name).await,
        ["2015-03-31", "functions", name, "aliases"] if get => f::list_aliases(ctx, name),
        ["2015-03-31", "functions", name, "aliases", alias] if get => {
            f::get_alias(ctx, name, alias)
        }
        ["2015-03-31", "functions", name, "aliases", alias] if put => {
            f::update_alias(ctx, name, alias).await
        }
        ["2015-03-31", "functions", name, "aliases", alias] if delete => {
            f::delete_alias(ctx, name, alias).await
        }
        ["2015-03-31", "functions", name, "invocations"] if post => invoke::invoke(ctx, name).await,
        ["2021-11-15", "functions", name, "response-streaming-invocations"] if post => {
            invoke::invoke_with_response_stream(ctx, name).await
        }
        ["2017-10-31", "functions", name, "concurrency"] if put => {
            f::put_concurrency(ctx, name).await
        }
        ["2017-10-31", "functions", name, "concurrency"] if delete => {
            f::delete_concurrency(ctx, name).await
        }
        ["2019-09-30", "functions", name, "concurrency"] if get => f::get_concurrency(ctx, name),
        ["2019-09-25", "functions", name, "event-invoke-config"] if put || post => {
            f::put_event_invoke_config(ctx, name, put).await
        }
        ["2019-09-25", "functions", name, "event-invoke-config"] if get => {
            f::get_event_invoke_config(ctx, name)
        }
        ["2019-09-25", "functions", name, "event-invoke-config"] if delete => {
            f::delete_event_invoke_config(ctx, name).await
        }
        ["2021-10-31", "functions", name, "url"] if post || put => {
            f::put_url_config(ctx, name, post).await
        }
        ["2021-10-31", "functions", name, "url"] if get => f::get_url_config(ctx, name),
        ["2021-10-31", "functions", name, "url"] if delete => f::delete_url_config(ctx, name).await,
        _ => Err(unimplemented(m, path)),
    }
}

/// The error for everything else, naming the operation when it is one of Lambda's.
fn unimplemented(method: &Method, path: &[&str]) -> LambdaError {
    let m = method.as_str();
    let rest = if path.len() > 1 { &path[1..] } else { &[][..] };
    let name = match (m, rest) {
        ("GET", ["layers", ..]) => Some("ListLayers / GetLayerVersion (layers)"),
        (_, ["layers", ..]) => Some("PublishLayerVersion / DeleteLayerVersion (layers)"),
        ("GET", ["event-source-mappings", ..]) => {
            Some("ListEventSourceMappings / GetEventSourceMapping")
        }
        ("POST", ["event-source-mappings", ..]) => Some("CreateEventSourceMapping"),
        (_, ["event-source-mappings", ..]) => {
            Some("UpdateEventSourceMapping / DeleteEventSourceMapping")
        }
        ("GET", ["functions", _, "policy", ..]) => Some("GetPolicy"),
        ("POST", ["functions", _, "policy", ..]) => Some("AddPermission"),
        ("DELETE", ["functions", _, "policy", ..]) => Some("RemovePermission"),
        ("GET", ["tags", ..]) => Some("ListTags"),
        ("POST", ["tags", ..]) => Some("TagResource"),
        ("DELETE", ["tags", ..]) => Some("UntagResource"),
        (_, ["account-settings", ..]) => Some("GetAccountSettings"),
        (_, ["functions", _, "provisioned-concurrency", ..]) => {
            Some("ProvisionedConcurrencyConfig operations (use min_loaded)")
        }
        (_, ["provisioned-concurrency", ..]) => Some("ListProvisionedConcurrencyConfigs"),
        (_, ["functions", _, "invoke-async", ..]) => Some("InvokeAsync (use Invoke with Event)"),
        (_, ["functions", _, "code-signing-config"]) => Some("code signing"),
        (_, ["code-signing-configs", ..]) => Some("code signing"),
        (_, ["functions", _, "urls"]) => Some("ListFunctionUrlConfigs"),
        (_, ["functions", _, "event-invoke-config", "list"]) => {
            Some("ListFunctionEventInvokeConfigs")
        }
        (_, ["functions", _, "recursion-config"]) => Some("recursion configuration"),
        (_, ["functions", _, "runtime-management-config"]) => {
            Some("runtime management configuration")
        }
        (_, ["functions", _, "function-scaling-config"]) => Some("function scaling configuration"),
        (_, ["functions", _, "code-signing-config", ..]) => Some("code signing"),
        _ => None,
    };
    let at = format!("{m} /{}", path.join("/"));
    match name {
        Some(name) => LambdaError::not_implemented(format!(
            "Cirrus does not implement the Lambda operation {name} ({at})"
        )),
        None => LambdaError::not_implemented(format!(
            "{at} is not a Lambda operation Cirrus implements (see the README, \"Coming from AWS Lambda\")"
        )),
    }
}
