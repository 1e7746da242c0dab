//! The HTTP listener: accepts connections up to `--max-connections`, optionally over TLS
//! (`--tls-cert`/`--tls-key`, ALPN `h2` and `http/1.1`, the files re-read when they change),
//! serves the router on each with hyper (HTTP/1.1, and HTTP/2 by prior knowledge or ALPN), and
//! closes the clients that would otherwise hold a connection for nothing.
//!
//! Every connection is in one of three phases, kept in its [`Activity`]:
//!
//! - **head**: from its start (TLS handshake included), or from the first byte after it was
//!   idle, until a request's headers are in. Longer than `--header-timeout`: closed at once.
//!   (On HTTP/2 only the first request has a head phase: an idle HTTP/2 connection also reads
//!   pings and window updates, which are no request; its idle timeout bounds it.)
//! - **busy**: one request or more in flight (HTTP/2: streams), until the last response has
//!   been sent. The handler's own deadlines apply; the request body must arrive within
//!   `--timeout` of the headers, or the request is answered 408 and the connection closed.
//! - **idle**: a keep-alive connection with nothing in flight. Longer than `--idle-timeout`:
//!   closed gracefully (HTTP/2: GOAWAY).
//!
//! When the gateway stops, the listener closes, connections in the head or idle phase are closed
//! at once, and busy ones finish their requests (HTTP/1.1 then closes, HTTP/2 sends GOAWAY)
//! within the shutdown timeout.
//!
//! hyper's own `header_read_timeout` is not used: hyper 1.x starts it again as soon as a
//! response is written, so it would close every idle keep-alive connection after the header
//! timeout, not the idle timeout.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use micro_core::tls::ServerTls;
use micro_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::error::ApiError;

/// Refused connections (and failures to accept) are logged at most this often.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(1);
/// After an accept error that is not the client's (no file descriptors left), the listener
/// waits this long before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The listener's limits, from the gateway options.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// A request's headers must be in within this (`--header-timeout`).
    pub(crate) header_timeout: Duration,
    /// A request's body must be in within this of its headers (`--timeout`).
    pub(crate) body_timeout: Duration,
    /// Keep-alive connections idle this long are closed (`--idle-timeout`).
    pub(crate) idle_timeout: Duration,
    /// Connections served at once (`--max-connections`).
    pub(crate) max_connections: u32,
    /// HTTP/2 streams per connection (`--max-streams`).
    pub(crate) max_streams: u32,
    /// How long in-flight requests may take to finish once stopped.
    pub(crate) drain: Duration,
}

impl Limits {
    /// The limits set by `options`.
    pub(crate) fn of(options: &crate::options::GatewayOptions) -> Limits {
        Limits {
            header_timeout: options.header_timeout,
            body_timeout: options.timeout,
            idle_timeout: options.idle_timeout,
            max_connections: options.max_connections,
            max_streams: options.max_streams,
            drain: options.service.shutdown_timeout,
        }
    }
}

/// ALPN protocols of the HTTPS listener, preferred first.
pub(crate) const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The TLS of the HTTPS listener: `cert` and `key` (PEM), offering [`ALPN`]. The files are read
/// now (an error names the option and the file) and again whenever they change.
pub(crate) fn server_tls(cert: &Path, key: &Path) -> Result<ServerTls> {
    ServerTls::new(cert, key, None)
        .and_then(|tls| tls.with_alpn(&ALPN))
        .map_err(|e| {
            // Core names the service options; the gateway's are --tls-cert and --tls-key.
            let message = e
                .to_string()
                .replace("server-tls-cert", "tls-cert")
                .replace("server-tls-key", "tls-key");
            Error::Option(format!("HTTPS listener: {message}"))
        })
}

/// What every connection of one listener shares.
struct Shared {
    router: axum::Router,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    tls: Option<ServerTls>,
}

/// Serves `router` on `listener` (over `tls` when given) until `stopped` completes; then stops
/// accepting, lets in-flight requests finish (at most [`Limits::drain`]) and returns.
pub(crate) async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Option<ServerTls>,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    warn_if_too_few_files(limits.max_connections);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper header timeout (see the module's documentation): the phases do it.
    builder
        .http1()
        .header_read_timeout(None)
        .keep_alive(true)
        .http2()
        .max_concurrent_streams(limits.max_streams);
    let shared = Arc::new(Shared {
        router,
        builder,
        limits,
        tls,
    });
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections as usize));
    let (shutdown, shutting_down) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refusals = Refusals::new(shared.limits.max_connections);
    let mut accept_failed_at: Option<Instant> = None;
    tokio::pin!(stopped);
    loop {
        let log_refusals_at = refusals.next_log();
        tokio::select! {
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        // Refused at accept rather than left queued in the backlog.
                        drop(tcp);
                        refusals.count();
                        continue;
                    };
                    connections.spawn(connection(
                        tcp,
                        peer,
                        permit,
                        shared.clone(),
                        shutting_down.clone(),
                    ));
                }
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "a connection failed before it was accepted");
                }
                Err(e) => {
                    // Out of file descriptors, say: logged once a second, not at every retry.
                    if accept_failed_at.is_none_or(|at| at.elapsed() >= REFUSALS_LOGGED_EVERY) {
                        tracing::error!(error = %e, "cannot accept HTTP connections; retrying");
                        accept_failed_at = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "an HTTP connection task panicked");
                }
            }
            () = tokio::time::sleep_until(log_refusals_at.unwrap_or_else(Instant::now)),
                if log_refusals_at.is_some() => refusals.log(),
        }
    }
    drop(listener);
    if refusals.next_log().is_some() {
        refusals.log();
    }
    let _ = shutdown.send(true);
    let open = connections.len();
    let drained = tokio::time::timeout(shared.limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open,
            still_open = connections.len(),
            "HTTP connections still busy after {}; closed anyway",
            humantime::format_duration(shared.limits.drain)
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Errors of one connection that came and went before it was accepted: not the listener's.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Refused connections: counted, and logged at most once per [`REFUSALS_LOGGED_EVERY`].
struct Refusals {
    max_connections: u32,
    since_logged: u64,
    total: u64,
    logged_at: Option<Instant>,
}

impl Refusals {
    fn new(max_connections: u32) -> Refusals {
        Refusals {
            max_connections,
            since_logged: 0,
            total: 0,
            logged_at: None,
        }
    }

    /// One more refused connection; logged now unless a log line went out less than a second
    /// ago (then [`Refusals::next_log`] says when).
    fn count(&mut self) {
        self.since_logged += 1;
        self.total += 1;
        if self
            .logged_at
            .is_none_or(|at| at.elapsed() >= REFUSALS_LOGGED_EVERY)
        {
            self.log();
        }
    }

    /// When the refusals not logged yet are due.
    fn next_log(&self) -> Option<Instant> {
        (self.since_logged > 0).then(|| {
            self.logged_at
                .map_or_else(Instant::now, |at| at + REFUSALS_LOGGED_EVERY)
        })
    }

    fn log(&mut self) {
        tracing::warn!(
            refused = self.since_logged,
            refused_total = self.total,
            max_connections = self.max_connections,
            "connections refused: --max-connections reached"
        );
        self.since_logged = 0;
        self.logged_at = Some(Instant::now());
    }
}

/// Warns when the process may not open `max_connections` sockets: past its open-file limit,
/// accepting fails and connections wait in the kernel's backlog instead of being refused.
fn warn_if_too_few_files(max_connections: u32) {
    let Some(limit) = open_file_limit() else {
        return;
    };
    // Listeners, the registry, clients to services, log files: a margin for the rest.
    let needed = u64::from(max_connections) + 64;
    if limit < needed {
        tracing::warn!(
            open_file_limit = limit,
            max_connections,
            "the open-file limit (ulimit -n) is lower than --max-connections needs; past about {} connections, new ones wait instead of being refused",
            limit.saturating_sub(64)
        );
    }
}

/// The soft limit of open files (Linux: `/proc/self/limits`), when it can be read.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// One accepted connection, from the first byte to the last: its TLS handshake (within the
/// header timeout), then served until it closes, goes past a deadline of its phase, or the
/// gateway stops (then gracefully).
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    mut shutting_down: watch::Receiver<bool>,
) {
    // Small JSON replies must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    // The header clock starts now: a TLS handshake is part of the time to the headers.
    let activity = Arc::new(Activity::new());
    let Some(tls) = &shared.tls else {
        serve_connection(tcp, peer, permit, activity, shared, shutting_down).await;
        return;
    };
    let handshake_by = Instant::now() + shared.limits.header_timeout;
    let handshake = tokio::time::timeout_at(handshake_by, tls.acceptor().accept(tcp));
    let stream = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no TLS handshake within the header timeout; closed");
                return;
            }
        },
        _ = shutting_down.wait_for(|stop| *stop) => return,
    };
    serve_connection(stream, peer, permit, activity, shared, shutting_down).await;
}

/// Serves HTTP on `io` (plain TCP or TLS) until it closes, a phase deadline passes, or the
/// gateway stops.
async fn serve_connection<S>(
    io: S,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
    mut shutting_down: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched {
        io,
        activity: activity.clone(),
        _permit: permit,
    });
    let service = PerConnection {
        router: shared.router.clone(),
        peer,
        activity: activity.clone(),
        body_timeout: shared.limits.body_timeout,
    };
    let connection = shared.builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let expired = activity.expired(shared.limits.header_timeout, shared.limits.idle_timeout);
    tokio::pin!(expired);
    let (mut closing, mut close_by) = (false, None);
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            expired = &mut expired, if close_by.is_none() => match expired {
                Expired::Head => {
                    tracing::debug!(%peer, "no request headers within the header timeout; closed");
                    return;
                }
                Expired::Idle => {
                    tracing::debug!(%peer, "idle past the idle timeout; closing");
                    if !closing {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    // A client that does not take part in a graceful close (HTTP/2) is cut.
                    close_by = Some(Instant::now() + shared.limits.header_timeout);
                }
            },
            _ = shutting_down.wait_for(|stop| *stop), if !closing => {
                // Nothing in flight to finish (hyper would go on waiting for the headers of a
                // request that was never finished): closed now.
                if activity.awaiting_head() {
                    tracing::debug!(%peer, "stopping: closed a connection with no request in flight");
                    return;
                }
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(close_by.unwrap_or_else(Instant::now)), if close_by.is_some() => {
                tracing::debug!(%peer, "no graceful close in time; closed");
                return;
            }
        }
    }
}

/// The phase of one connection.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request's headers since then.
    Head(Instant),
    /// This many requests in flight.
    Busy(usize),
    /// Nothing in flight since then.
    Idle(Instant),
}

/// Which deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expired {
    Head,
    Idle,
}

/// The phase of one connection, moved by its reads and its requests, and the deadline watch
/// over it.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    /// Told when a deadline may have moved earlier (a request ended, a byte came while idle).
    changed: Notify,
    /// Whether the connection turned out to speak HTTP/2 (known from its first request).
    http2: AtomicBool,
}

impl Activity {
    /// A connection just accepted: waiting for its first request's headers.
    fn new() -> Activity {
        Activity {
            phase: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
            http2: AtomicBool::new(false),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The phase is a plain value, valid whatever a panicking holder did.
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: on an idle HTTP/1 connection, that starts a request's header clock.
    fn read(&self) {
        if self.http2.load(Ordering::Relaxed) {
            return;
        }
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// Whether the connection is waiting for a request's headers, with nothing in flight.
    fn awaiting_head(&self) -> bool {
        matches!(*self.phase(), Phase::Head(_))
    }

    /// A request's headers are in (an HTTP/2 request when `http2`). (No notification: this
    /// only removes a deadline, which the watch finds when it wakes.)
    fn request_started(self: &Arc<Self>, http2: bool) -> InFlight {
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        };
        InFlight(self.clone())
    }

    /// A response was sent (or given up on).
    fn request_ended(&self) {
        let mut phase = self.phase();
        match *phase {
            Phase::Busy(n) if n > 1 => *phase = Phase::Busy(n - 1),
            _ => {
                *phase = Phase::Idle(Instant::now());
                drop(phase);
                self.changed.notify_one();
            }
        }
    }

    /// The deadline of the current phase, and what passing it means.
    fn deadline(
        &self,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<(Instant, Expired)> {
        match *self.phase() {
            Phase::Head(since) => Some((since + header_timeout, Expired::Head)),
            Phase::Idle(since) => Some((since + idle_timeout, Expired::Idle)),
            Phase::Busy(_) => None,
        }
    }

    /// Completes when the connection goes past the deadline of its phase.
    async fn expired(&self, header_timeout: Duration, idle_timeout: Duration) -> Expired {
        let sleep = tokio::time::sleep(idle_timeout);
        tokio::pin!(sleep);
        loop {
            let changed = self.changed.notified();
            match self.deadline(header_timeout, idle_timeout) {
                Some((at, expired)) if at <= Instant::now() => return expired,
                Some((at, _)) => {
                    sleep.as_mut().reset(at);
                    tokio::select! {
                        () = changed => {}
                        () = &mut sleep => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// One request in flight on a connection, until its response body is done or dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A connection's IO, marking its [`Activity`] on every read, and holding its place under
/// `--max-connections` (an upgraded WebSocket keeps it until it closes).
struct Watched<S> {
    io: S,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.activity.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The router as one connection's hyper service: it adds the peer's `ConnectInfo`, bounds the
/// time the request body may take, and keeps the connection busy until the response is sent.
#[derive(Clone)]
struct PerConnection {
    router: axum::Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl hyper::service::Service<http::Request<Incoming>> for PerConnection {
    type Response = http::Response<Tracked>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let http1 = request.version() <= http::Version::HTTP_11;
        let in_flight = self.activity.request_started(!http1);
        let timed_out = Arc::new(AtomicBool::new(false));
        let body_timeout = self.body_timeout;
        let mut request = request.map(|body| Deadline {
            body,
            at: Instant::now() + body_timeout,
            sleep: None,
            timed_out: timed_out.clone(),
            timeout: body_timeout,
        });
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let router = self.router.clone();
        Box::pin(async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let response = if timed_out.load(Ordering::Acquire) {
                body_timed_out(&response, body_timeout, http1)
            } else {
                response
            };
            Ok(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// The answer to a request whose body did not arrive in time: 408, keeping the CORS headers
/// of the answer it replaces, and (HTTP/1) closing the connection.
fn body_timed_out(replaced: &Response, timeout: Duration, http1: bool) -> Response {
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        tonic::Code::DeadlineExceeded,
        format!(
            "the request body did not arrive within {} (--timeout)",
            humantime::format_duration(timeout)
        ),
    )
    .into_response();
    for (name, value) in replaced.headers() {
        if name.as_str().starts_with("access-control-") || name == header::VARY {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    if http1 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that must arrive by a deadline; past it, reading fails with [`BodyTimeout`]
/// and `timed_out` is set.
struct Deadline<B = Incoming> {
    body: B,
    at: Instant,
    /// Made on the first wait only: a body already received needs no timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
    timeout: Duration,
}

/// A request body that did not arrive within the call timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} (--timeout)", humantime::format_duration(*.0))]
pub(crate) struct BodyTimeout(Duration);

/// The [`BodyTimeout`] behind a body-reading error (axum and `Limited` wrap it), if that is
/// what it is: for readers of the body that want to say 408 themselves.
pub(crate) fn body_timeout<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a BodyTimeout> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(timeout) = error.downcast_ref::<BodyTimeout>() {
            return Some(timeout);
        }
        next = error.source();
    }
    None
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let at = this.at;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        ready!(sleep.as_mut().poll(cx));
        this.timed_out.store(true, Ordering::Release);
        Poll::Ready(Some(Err(BodyTimeout(this.timeout).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its request [`InFlight`] until it is sent or dropped.
struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn phases_move_the_deadline() {
        let (header, idle) = (Duration::from_secs(2), Duration::from_secs(60));
        let activity = Arc::new(Activity::new());
        let started = Instant::now();
        assert_eq!(
            activity.expired(header, idle).await,
            Expired::Head,
            "a new connection that sends nothing"
        );
        assert_eq!(started.elapsed(), header);

        let activity = Arc::new(Activity::new());
        let request = activity.request_started(false);
        let watch = activity.expired(header, idle);
        tokio::pin!(watch);
        // Busy: no deadline at all, however long the request takes.
        assert!(
            tokio::time::timeout(idle * 2, watch.as_mut())
                .await
                .is_err()
        );
        drop(request);
        // Idle: the idle timeout, not the header timeout.
        assert!(
            tokio::time::timeout(header * 2, watch.as_mut())
                .await
                .is_err(),
            "an idle connection outlives the header timeout"
        );
        activity.read();
        let head_since = Instant::now();
        assert_eq!(watch.await, Expired::Head);
        assert_eq!(
            head_since.elapsed(),
            header,
            "the header clock starts at the first byte"
        );

        let activity = Arc::new(Activity::new());
        drop(activity.request_started(false));
        let idle_since = Instant::now();
        assert_eq!(activity.expired(header, idle).await, Expired::Idle);
        assert_eq!(idle_since.elapsed(), idle);

        // HTTP/2: frames read while idle (pings, window updates) start no header clock.
        let activity = Arc::new(Activity::new());
        drop(activity.request_started(true));
        let idle_since = Instant::now();
        let watch = activity.expired(header, idle);
        tokio::pin!(watch);
        assert!(tokio::time::timeout(header, watch.as_mut()).await.is_err());
        activity.read();
        assert_eq!(watch.await, Expired::Idle);
        assert_eq!(idle_since.elapsed(), idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_timeout_is_found_behind_the_readers_wrappers() {
        use http_body_util::BodyExt;
        /// A body whose client never sends the rest.
        struct Stalled;
        impl Body for Stalled {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
                Poll::Pending
            }
        }
        let timed_out = Arc::new(AtomicBool::new(false));
        let body = axum::body::Body::new(Deadline {
            body: Stalled,
            at: Instant::now() + Duration::from_secs(2),
            sleep: None,
            timed_out: timed_out.clone(),
            timeout: Duration::from_secs(2),
        });
        let error = http_body_util::Limited::new(body, 1024)
            .collect()
            .await
            .expect_err("the deadline passes");
        let found = body_timeout(error.as_ref()).expect("a BodyTimeout in the chain");
        assert_eq!(found.0, Duration::from_secs(2));
        assert!(timed_out.load(Ordering::Acquire));
        assert!(body_timeout(&std::io::Error::other("other")).is_none());
    }

    #[test]
    fn refusals_are_logged_once_a_second() {
        let mut refusals = Refusals::new(50);
        refusals.count();
        assert_eq!(
            refusals.since_logged, 0,
            "the first refusal is logged at once"
        );
        refusals.count();
        refusals.count();
        assert_eq!((refusals.since_logged, refusals.total), (2, 3));
        let due = refusals.next_log().expect("a log line is due");
        assert!(due > Instant::now() + Duration::from_millis(900));
    }
}
