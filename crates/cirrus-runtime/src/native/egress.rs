//! The only way out of a native environment: an HTTP proxy listening inside its network
//! namespace (the runtime finds it through `HTTP_PROXY`/`HTTPS_PROXY`), whose outbound
//! connections are made from the host. It forwards plain HTTP requests and tunnels
//! HTTPS (`CONNECT`) to the hosts in the function's `allowed_hosts`, with the same
//! policy as a WebAssembly function's outbound HTTP, and answers 403 for any other.
//! The sandbox has no other route: a socket to anywhere else finds no network at all.

use crate::http::OutboundPolicy;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The proxy's address inside the sandbox.
pub const ADDRESS: &str = "127.0.0.1:9002";
/// How long reaching an allowed host may take before the runtime gets a 504.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Body = BoxBody<Bytes, hyper::Error>;

/// One environment's proxy; dropping it stops accepting (open tunnels end with the
/// sandbox's processes, which are killed with it).
pub struct Egress {
    policy: Arc<Mutex<Arc<OutboundPolicy>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Egress {
    /// Serves on `listener` (bound inside the sandbox's namespace), denying everything
    /// until [`Egress::allow`] says otherwise. With `platform` (a listener inside the
    /// sandbox at the platform API's port, and the API's real address), a function with
    /// storage grants reaches `CIRRUS_API` there: each request is forwarded to the
    /// platform as a proxied call would be (allowed, marked, its token refreshed).
    pub fn serve(
        listener: std::net::TcpListener,
        platform: Option<(std::net::TcpListener, String)>,
    ) -> std::io::Result<Self> {
        let policy = Arc::new(Mutex::new(Arc::new(OutboundPolicy {
            allowed_hosts: Arc::from(Vec::new()),
            platform: None,
            env_token: None,
        })));
        let proxy = accept(listener, policy.clone(), None)?;
        let forwarder = match platform {
            Some((listener, authority)) => Some(accept(listener, policy.clone(), Some(authority))?),
            None => None,
        };
        let task = tokio::spawn(async move {
            let _ = proxy.await;
            if let Some(forwarder) = forwarder {
                forwarder.abort();
            }
        });
        Ok(Self { policy, task })
    }

    /// The policy for the invocation about to run.
    pub fn allow(&self, policy: OutboundPolicy) {
        *lock(&self.policy) = Arc::new(policy);
    }
}

/// Serves one listener until aborted: as the proxy, or (with `platform`) as the
/// platform's address, turning each request into a proxied one to it.
fn accept(
    listener: std::net::TcpListener,
    policy: Arc<Mutex<Arc<OutboundPolicy>>>,
    platform: Option<String>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (policy, platform) = (policy.clone(), platform.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    // The policy of the invocation running when the request arrives.
                    let policy = lock(&policy).clone();
                    if let Some(authority) = &platform {
                        let path = request
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_owned();
                        if let Ok(uri) = format!("http://{authority}{path}").parse() {
                            *request.uri_mut() = uri;
                        }
                        request.headers_mut().remove(hyper::header::HOST);
                    }
                    async move { Ok::<_, std::convert::Infallible>(handle(&policy, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    }))
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let body = Full::new(Bytes::from(message + "\n"))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn denied(host: &str, port: u16) -> Response<Body> {
    text(
        StatusCode::FORBIDDEN,
        format!(
            "cirrus: {host}:{port} is not in this function's allowed_hosts; \
             grant it with `--allow-host {host}` (or {host}:{port}) at deploy"
        ),
    )
}

async fn connect(host: &str, port: u16) -> Result<tokio::net::TcpStream, Response<Body>> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((name, port)),
    )
    .await
    {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(text(
            StatusCode::BAD_GATEWAY,
            format!("cirrus: cannot reach {host}:{port}: {e}"),
        )),
        Err(_) => Err(text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("cirrus: {host}:{port} did not answer within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

async fn handle(policy: &OutboundPolicy, request: Request<Incoming>) -> Response<Body> {
    if request.method() == Method::CONNECT {
        return tunnel(policy, request).await;
    }
    let uri = request.uri().clone();
    let (Some(host), Some("http")) = (uri.host(), uri.scheme_str()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "cirrus: the proxy takes absolute http:// URLs, and CONNECT for https".to_owned(),
        );
    };
    let port = uri.port_u16().unwrap_or(80);
    if !policy.allows_host(host, port) {
        return denied(host, port);
    }
    let stream = match connect(host, port).await {
        Ok(stream) => stream,
        Err(response) => return response,
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("cirrus: {host}:{port}: {e}"),
                )
            }
        };
    tokio::spawn(connection);
    let (mut parts, body) = request.into_parts();
    for hop in ["proxy-connection", "proxy-authorization", "keep-alive"] {
        parts.headers.remove(hop);
    }
    policy.mark_platform_call(&uri, &mut parts.headers);
    // The origin server gets the path, not the proxy form.
    parts.uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .unwrap_or_default();
    if let (false, Some(authority)) = (
        parts.headers.contains_key(hyper::header::HOST),
        uri.authority(),
    ) {
        if let Ok(value) = authority.as_str().parse() {
            parts.headers.insert(hyper::header::HOST, value);
        }
    }
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(|body| body.boxed()),
        Err(e) => text(
            StatusCode::BAD_GATEWAY,
            format!("cirrus: {host}:{port}: {e}"),
        ),
    }
}

/// `CONNECT host:port`: once allowed and connected, the two sides are joined byte for
/// byte (TLS runs end to end between the runtime and the host).
async fn tunnel(policy: &OutboundPolicy, request: Request<Incoming>) -> Response<Body> {
    let Some((host, port)) = request
        .uri()
        .authority()
        .and_then(|a| Some((a.host().to_owned(), a.port_u16()?)))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "cirrus: CONNECT needs host:port".to_owned(),
        );
    };
    if !policy.allows_host(&host, port) {
        return denied(&host, port);
    }
    // Calls to the platform are marked with the invocation's lineage (loop limits,
    // traces); a tunnel would carry them unmarked.
    if request
        .uri()
        .authority()
        .is_some_and(|a| policy.is_platform(&hyper::Uri::from(a.clone())))
    {
        return text(
            StatusCode::FORBIDDEN,
            "cirrus: call the platform with plain http:// through the proxy, not a tunnel"
                .to_owned(),
        );
    }
    let mut upstream = match connect(&host, port).await {
        Ok(stream) => stream,
        Err(response) => return response,
    };
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(request).await {
            let mut client = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    )
}
