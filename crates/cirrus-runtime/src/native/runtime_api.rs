//! The Lambda Runtime API (`2018-06-01`) one environment's runtime talks to: it asks
//! for the next event, then posts that event's response or error (or, while starting,
//! an init error). Served on a listener inside the environment's own network
//! namespace, so the runtime reaches it at `127.0.0.1:9001` and nothing else.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

/// The runtime's address inside its sandbox.
pub const ADDRESS: &str = "127.0.0.1:9001";
const PREFIX: &str = "/2018-06-01/runtime";
/// Bodies the runtime posts (a response is at most Lambda's 6 MB, with room).
const MAX_BODY: usize = 8 << 20;

/// One event for the runtime, and where its answer goes.
pub struct Event {
    pub request_id: String,
    pub body: Bytes,
    pub headers: Vec<(&'static str, String)>,
    pub reply: oneshot::Sender<Reply>,
}

/// What the runtime answered.
#[derive(Debug)]
pub enum Reply {
    Response(Bytes),
    /// Lambda's error document, and `Lambda-Runtime-Function-Error-Type`.
    Error {
        document: Bytes,
        kind: String,
    },
    /// A response posted in streaming mode (`Lambda-Runtime-Function-Response-Mode:
    /// streaming`): its body as it arrives, an error in its trailers. The runtime's
    /// request is answered once `done` is sent (or dropped).
    Stream {
        content_type: Option<String>,
        body: Incoming,
        done: oneshot::Sender<()>,
    },
}

/// How far the runtime got while starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    Starting,
    /// It asked for its first event: initialisation is done.
    Ready,
    /// It reported an init error (the document).
    Failed(String),
}

struct Shared {
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    /// The event handed out and not yet answered.
    current: Mutex<Option<(String, oneshot::Sender<Reply>)>>,
    init: watch::Sender<Init>,
}

/// The host side of one environment's Runtime API.
pub struct RuntimeApi {
    pub events: mpsc::Sender<Event>,
    pub init: watch::Receiver<Init>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RuntimeApi {
    /// Serves the API on `listener` until dropped.
    pub fn serve(listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (events, receiver) = mpsc::channel(1);
        let (init_tx, init) = watch::channel(Init::Starting);
        let shared = Arc::new(Shared {
            events: tokio::sync::Mutex::new(receiver),
            current: Mutex::new(None),
            init: init_tx,
        });
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&shared, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { events, init, task })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return answer(StatusCode::NOT_FOUND, "{\"errorMessage\":\"unknown path\"}");
    };
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["invocation", "next"]) => next(shared).await,
        (&Method::POST, ["invocation", id, outcome @ ("response" | "error")]) => {
            let kind = request
                .headers()
                .get("lambda-runtime-function-error-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("Unhandled")
                .to_owned();
            let id = (*id).to_owned();
            let error = *outcome == "error";
            let streaming = !error
                && request
                    .headers()
                    .get("lambda-runtime-function-response-mode")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"streaming"));
            if streaming {
                let Some(reply) = take_waiting(shared, &id) else {
                    return answer(
                        StatusCode::BAD_REQUEST,
                        "{\"errorMessage\":\"unknown request id\"}",
                    );
                };
                let content_type = request
                    .headers()
                    .get(hyper::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let (done, finished) = oneshot::channel();
                let _ = reply.send(Reply::Stream {
                    content_type,
                    body: request.into_body(),
                    done,
                });
                // Answered when the invocation has read the whole stream.
                let _ = finished.await;
                return answer(StatusCode::ACCEPTED, "{\"status\":\"OK\"}");
            }
            let Some(body) = read(request).await else {
                return answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "{\"errorMessage\":\"too large\"}",
                );
            };
            let Some(reply) = take_waiting(shared, &id) else {
                return answer(
                    StatusCode::BAD_REQUEST,
                    "{\"errorMessage\":\"unknown request id\"}",
                );
            };
            let _ = reply.send(if error {
                Reply::Error {
                    document: body,
                    kind,
                }
            } else {
                Reply::Response(body)
            });
            answer(StatusCode::ACCEPTED, "{\"status\":\"OK\"}")
        }
        (&Method::POST, ["init", "error"]) => {
            let body = read(request).await.unwrap_or_default();
            shared
                .init
                .send_replace(Init::Failed(String::from_utf8_lossy(&body).into_owned()));
            answer(StatusCode::ACCEPTED, "{\"status\":\"OK\"}")
        }
        _ => answer(StatusCode::NOT_FOUND, "{\"errorMessage\":\"unknown path\"}"),
    }
}

/// The reply slot of the event handed out as `id`, if that is the one waiting.
fn take_waiting(shared: &Shared, id: &str) -> Option<oneshot::Sender<Reply>> {
    let mut current = lock(&shared.current);
    match current.take() {
        Some((current_id, reply)) if current_id == id => Some(reply),
        other => {
            *current = other;
            None
        }
    }
}

async fn read(request: Request<Incoming>) -> Option<Bytes> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_BODY);
    limited.collect().await.ok().map(|b| b.to_bytes())
}

/// `GET /invocation/next`: the first one marks initialisation done; each waits for an
/// event.
async fn next(shared: &Shared) -> Response<Full<Bytes>> {
    shared.init.send_if_modified(|init| {
        if *init == Init::Starting {
            *init = Init::Ready;
            true
        } else {
            false
        }
    });
    let event = shared.events.lock().await.recv().await;
    let Some(event) = event else {
        return answer(
            StatusCode::GONE,
            "{\"errorMessage\":\"environment retired\"}",
        );
    };
    *lock(&shared.current) = Some((event.request_id.clone(), event.reply));
    let mut response = Response::new(Full::new(event.body));
    let headers = response.headers_mut();
    if let Ok(id) = event.request_id.parse() {
        headers.insert("lambda-runtime-aws-request-id", id);
    }
    for (name, value) in event.headers {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    }
    response
}
