//! How the listeners take connections: HTTP/1 (and with TLS, HTTP/2 when the client
//! offers it by ALPN) with a cap on open connections, a deadline for every request head
//! (the TLS handshake included), an idle keep-alive timeout, and a graceful drain.
//!
//! Every open connection costs a file descriptor, and a client that connects and then
//! says nothing (or sends a header line now and then: slowloris) would otherwise keep it
//! forever. A connection is always in one of these phases:
//! - *awaiting a head*: since it opened, or since the first byte after an idle spell;
//!   closed once `header_read_timeout` passes;
//! - *idle* between requests: closed once `keep_alive_timeout` passes;
//! - *busy*: from a complete request head until its response is written out; not timed
//!   out (the invocation's own timeout bounds the work), except that a client that stops
//!   reading its response for `send_timeout` is dropped.
//!
//! At the cap, accepting one more connection closes the oldest one that is not busy:
//! it has no request in flight, so nothing is lost, and a flood of silent sockets cannot
//! lock out the clients that do send requests. Only when every connection is busy does
//! accepting wait (new clients then queue in the kernel's backlog).

use crate::fd_limit;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, Response};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Connection limits of both listeners (`cirrus up --max-connections` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections of the main listener; `None` sizes it from the fd limit.
    pub max_connections: Option<usize>,
    /// Open connections of the S3 listener; `None` sizes it from the fd limit.
    pub s3_max_connections: Option<usize>,
    /// How long a client has to send a complete request head, from the moment its
    /// connection opens (or the first byte after an idle spell).
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    pub keep_alive_timeout: Duration,
    /// How long a response may wait for a client that has stopped reading it.
    pub send_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: None,
            s3_max_connections: None,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
        }
    }
}

impl ConnectionLimits {
    /// Zero caps or timeouts would close every connection.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_connections == Some(0) || self.s3_max_connections == Some(0) {
            anyhow::bail!("connection caps must be at least 1");
        }
        if self.header_read_timeout.is_zero()
            || self.keep_alive_timeout.is_zero()
            || self.send_timeout.is_zero()
        {
            anyhow::bail!("the header read, keep-alive and send timeouts must be longer than zero");
        }
        Ok(())
    }

    /// What each listener enforces, given the process's fd limit. Caps set explicitly
    /// are kept, with a warning when they exceed what the descriptors allow.
    pub fn resolve(&self, fd_limit: Option<u64>) -> (ListenerLimits, ListenerLimits) {
        let (main_default, s3_default) = fd_limit::connection_caps(fd_limit);
        let limits = |max_connections| ListenerLimits {
            max_connections,
            header_read_timeout: self.header_read_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            send_timeout: self.send_timeout,
        };
        let main = self.max_connections.unwrap_or(main_default);
        let s3 = self.s3_max_connections.unwrap_or(s3_default);
        if main > main_default || s3 > s3_default {
            tracing::warn!(
                max_connections = main,
                s3_max_connections = s3,
                fd_limit,
                "the connection caps exceed what the file descriptor limit leaves after the store's share: under a flood, accepting may fail (EMFILE) and the store may run short"
            );
        }
        (limits(main), limits(s3))
    }
}

/// What one listener enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub send_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` turns true, then stops accepting and
/// returns once every connection has finished its request in flight and closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    tls: Option<Arc<crate::tls::Tls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(OpenConnections::default());
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let epoch = Instant::now();
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut accept_errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_errors.pause_after(e, &open).await;
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match make_room(&permits, &open, &mut shutdown).await {
                Some(permit) => permit,
                None => break,
            },
        };
        // Small writes (a response head) go out at once.
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Connection::new(next_id, epoch));
        next_id += 1;
        open.insert(conn.clone());
        let opened = Opened {
            open: open.clone(),
            _permit: permit,
        };
        match &tls {
            None => tasks.spawn(run_connection(
                stream,
                Protocol::Http1,
                conn,
                router.clone(),
                limits,
                shutdown.clone(),
                opened,
            )),
            Some(tls) => tasks.spawn(run_tls_connection(
                stream,
                tls.clone(),
                conn,
                router.clone(),
                limits,
                shutdown.clone(),
                opened,
            )),
        };
        // Let the new connection read its head before another accept could choose it
        // for eviction.
        tokio::task::yield_now().await;
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// At the cap: closes the oldest connection with nothing in flight and waits for a slot.
/// The one chosen may turn busy before it sees the request to close; then another is
/// chosen a moment later. `None` when shutdown began meanwhile.
async fn make_room(
    permits: &Arc<Semaphore>,
    open: &OpenConnections,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        open.evict_oldest_idle();
        tokio::select! {
            permit = permits.clone().acquire_owned() => return permit.ok(),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return None,
        }
    }
}

/// Failed accepts: a peer that gave up is skipped; running out of descriptors (EMFILE,
/// ENFILE) or memory frees an idle connection if there is one and pauses, so the loop
/// never spins, and is logged at most every few seconds.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    const LOG_EVERY: Duration = Duration::from_secs(5);

    async fn pause_after(&mut self, error: io::Error, open: &OpenConnections) {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
        ) {
            return;
        }
        self.unlogged += 1;
        if self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Self::LOG_EVERY)
        {
            tracing::warn!(
                errors = self.unlogged,
                open = open.len(),
                "accepting a connection failed: {error}; closing an idle connection and retrying"
            );
            self.last_logged = Some(Instant::now());
            self.unlogged = 0;
        }
        let freed = open.evict_oldest_idle();
        // An evicted connection releases its descriptor as soon as its task runs.
        let pause = if freed { 5 } else { 100 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

const AWAITING_HEAD: u8 = 0;
const IDLE: u8 = 1;
const BUSY: u8 = 2;
/// The response is complete but may still sit in the write buffer.
const FLUSHING: u8 = 3;
const NOT_BLOCKED: u64 = u64::MAX;

/// One connection's phase, shared by its task, its I/O, its requests and the listener.
struct Connection {
    id: u64,
    epoch: Instant,
    phase: AtomicU8,
    /// When the phase began, in milliseconds since `epoch`.
    since_ms: AtomicU64,
    /// Since when a write has waited for the client to read, or [`NOT_BLOCKED`].
    write_blocked_ms: AtomicU64,
    evict: Notify,
    evicting: AtomicBool,
    /// Requests in flight (several at once over HTTP/2).
    in_flight: AtomicU64,
}

impl Connection {
    fn new(id: u64, epoch: Instant) -> Self {
        let conn = Self {
            id,
            epoch,
            phase: AtomicU8::new(AWAITING_HEAD),
            since_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(NOT_BLOCKED),
            evict: Notify::new(),
            evicting: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
        };
        conn.enter(AWAITING_HEAD);
        conn
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::SeqCst);
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// Notes whether a write had to wait for the client.
    fn wrote<T>(&self, polled: &Poll<T>) {
        let blocked = self.write_blocked_ms.load(Ordering::SeqCst);
        match (polled.is_pending(), blocked == NOT_BLOCKED) {
            (true, true) => self.write_blocked_ms.store(self.now_ms(), Ordering::SeqCst),
            (false, false) => self.write_blocked_ms.store(NOT_BLOCKED, Ordering::SeqCst),
            _ => {}
        }
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::SeqCst)
    }

    /// Nothing in flight: closing it loses nothing.
    fn is_evictable(&self) -> bool {
        matches!(self.phase(), AWAITING_HEAD | IDLE)
    }

    /// When the connection times out, if it does: its phase's deadline, or a response
    /// that has waited too long for the client to read it.
    fn deadline(&self, limits: &ListenerLimits) -> Option<Instant> {
        let at = |ms: u64, timeout| self.epoch + Duration::from_millis(ms) + timeout;
        let phase = match self.phase() {
            AWAITING_HEAD => Some(limits.header_read_timeout),
            IDLE => Some(limits.keep_alive_timeout),
            _ => None,
        }
        .map(|timeout| at(self.since_ms.load(Ordering::SeqCst), timeout));
        let blocked = self.write_blocked_ms.load(Ordering::SeqCst);
        let stalled = (blocked != NOT_BLOCKED).then(|| at(blocked, limits.send_timeout));
        match (phase, stalled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The listener's open connections, oldest first.
#[derive(Default)]
struct OpenConnections(Mutex<BTreeMap<u64, Arc<Connection>>>);

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, conn: Arc<Connection>) {
        self.lock().insert(conn.id, conn);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Asks the oldest connection with nothing in flight to close. Whether one was found.
    fn evict_oldest_idle(&self) -> bool {
        let open = self.lock();
        for conn in open.values() {
            if conn.is_evictable() && !conn.evicting.swap(true, Ordering::SeqCst) {
                conn.evict.notify_one();
                return true;
            }
        }
        false
    }
}

/// Held by a connection's task: leaves the open set and frees the slot when it ends.
struct Opened {
    open: Arc<OpenConnections>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Completes the TLS handshake within the head deadline, then serves what ALPN chose.
async fn run_tls_connection(
    stream: TcpStream,
    tls: Arc<crate::tls::Tls>,
    conn: Arc<Connection>,
    router: Router,
    limits: ListenerLimits,
    shutdown: watch::Receiver<bool>,
    opened: Opened,
) {
    let handshake =
        tokio::time::timeout(limits.header_read_timeout, tls.acceptor().accept(stream)).await;
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(connection = conn.id, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(connection = conn.id, "closed: no TLS handshake in time");
            return;
        }
    };
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    run_connection(stream, protocol, conn, router, limits, shutdown, opened).await
}

async fn run_connection<S>(
    stream: S,
    protocol: Protocol,
    conn: Arc<Connection>,
    router: Router,
    limits: ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
    opened: Opened,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(TrackedIo {
        stream,
        conn: conn.clone(),
    });
    let service = TrackedService {
        inner: TowerToHyperService::new(router),
        conn: conn.clone(),
    };
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    };
    let http = builder.serve_connection(io, service);
    tokio::pin!(http);
    // While busy there may be no deadline; look again this often to pick up a new one.
    let recheck = limits
        .header_read_timeout
        .min(limits.keep_alive_timeout)
        .min(limits.send_timeout);
    let mut draining = false;
    loop {
        let deadline = conn.deadline(&limits);
        let wake = deadline.unwrap_or_else(|| Instant::now() + recheck);
        tokio::select! {
            result = http.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(connection = conn.id, "connection ended: {e}");
                }
                break;
            }
            () = conn.evict.notified() => {
                if conn.is_evictable() {
                    tracing::debug!(connection = conn.id, "closed to make room for a new connection");
                    break;
                }
                conn.evicting.store(false, Ordering::SeqCst);
            }
            () = tokio::time::sleep_until(wake) => {
                if deadline.is_some() && conn.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(connection = conn.id, "closed: no request head in time, idle too long, or its client stopped reading");
                    break;
                }
            }
            _ = shutdown.wait_for(|stop| *stop), if !draining => {
                // Nothing in flight (a partial head included): close now. A request in
                // flight finishes first, and the connection closes after its response.
                if conn.is_evictable() {
                    break;
                }
                http.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
    opened.open.lock().remove(&conn.id);
}

/// The socket, watching for the first byte of a request after an idle spell (the head
/// deadline starts there) and for the end of a response's write (idle starts there).
struct TrackedIo<S> {
    stream: S,
    conn: Arc<Connection>,
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && self.conn.phase() == IDLE
        {
            self.conn.enter(AWAITING_HEAD);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.conn.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.conn.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    /// hyper flushes the socket once its own write buffer is empty.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) && self.conn.phase() == FLUSHING {
            self.conn.enter(IDLE);
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router, marking the connection busy from a request's head to its response's end.
struct TrackedService {
    inner: TowerToHyperService<Router>,
    conn: Arc<Connection>,
}

impl hyper::service::Service<Request<Incoming>> for TrackedService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let busy = Busy::enter(self.conn.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| TrackedBody {
                inner,
                busy: Some(busy),
            }))
        })
    }
}

/// The connection is busy while this lives.
struct Busy(Arc<Connection>);

impl Busy {
    fn enter(conn: Arc<Connection>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        conn.enter(BUSY);
        Self(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The last request in flight ends the busy phase.
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.phase() == BUSY {
            self.0.enter(FLUSHING);
        }
    }
}

/// A response body that ends the connection's busy phase when it ends (or is dropped).
struct TrackedBody {
    inner: Body,
    busy: Option<Busy>,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.busy.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Connections the kernel may queue for a listener before it accepts them. tokio's
/// `TcpListener::bind` asks for 128: a burst of thousands of callers then overflows it,
/// and each dropped SYN costs its client a one-second retransmit. The kernel caps this
/// at `net.core.somaxconn` (4,096 on current kernels).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with a backlog sized for bursts (see [`LISTEN_BACKLOG`]).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
