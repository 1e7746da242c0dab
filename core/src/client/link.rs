//! One node's HTTP/2 connection, called without a queue in front of it.
//!
//! A tonic `Channel` hands every call to a worker task through a `tower::buffer::Buffer`: the
//! request crosses an mpsc channel with a oneshot for its answer and a clone of the caller's
//! span (entered in the worker, then closed), then passes four boxed layers (`AddOrigin`,
//! `UserAgent`, `GrpcTimeout`, `Reconnect`) before it reaches hyper's `SendRequest`. The
//! Buffer is there because `Reconnect` needs `&mut self`; hyper's `SendRequest` itself is cheap
//! to clone and may be called from any task. So a `Link` keeps the live `SendRequest` and calls
//! it from the caller's task, and only reconnecting — the one thing the Buffer guarded — takes
//! a lock that waits. The client keeps the call's deadline itself, so no second timer runs
//! here for `grpc-timeout` (tonic's `GrpcTimeout` armed one on every call that sent it).
//!
//! Dialling is lazy (the first call connects), with TCP_NODELAY and a 3 s connect timeout, as
//! the client's tonic channels had; a connection that closes is replaced by the next call.
//! Calls that find a dial under way wait for it and share its outcome, so a node that refuses
//! connections is dialled once per failure, not once per waiting caller.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tonic::body::Body;

use crate::BoxError;
use crate::tls::ClientTls;

/// How long a dial may take before the call fails (tonic's channels here had the same).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `user-agent` of every call (gRPC asks clients to send one; after the first call HPACK sends
/// it as one index byte).
const USER_AGENT: http::HeaderValue =
    http::HeaderValue::from_static(concat!("micro/", env!("CARGO_PKG_VERSION")));

/// A lazily connected HTTP/2 connection to one node. Cheap to clone; clones share it.
#[derive(Clone)]
pub(crate) struct Link(Arc<Shared>);

struct Shared {
    /// `host:port`, as registered.
    address: Arc<str>,
    /// `https` over TLS, else `http` (`:scheme`).
    scheme: Scheme,
    /// The request URI's authority (`:authority`), made once from `address`.
    authority: Authority,
    /// TLS for a node registered as secure: the client's settings and the node's name in errors.
    tls: Option<(Arc<ClientTls>, Arc<str>)>,
    /// The live connection, if any: what every call reads.
    live: RwLock<Option<http2::SendRequest<Body>>>,
    /// Held while dialling; holds the last dial's failure for the calls that waited on it.
    dialling: tokio::sync::Mutex<Option<ConnectFailed>>,
    /// Dials finished, successful or not: a call that sees this move while it waited for
    /// `dialling` takes that dial's outcome instead of dialling again.
    dials: AtomicU64,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("address", &self.0.address)
            .field("tls", &self.0.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link to `address` (`host:port`) in plaintext; connects on its first call.
    pub(crate) fn plain(address: &str) -> Result<Self, http::uri::InvalidUri> {
        Self::new(address, None)
    }

    /// A link to `address` over TLS with `tls`'s settings; `what` names the node in errors.
    pub(crate) fn tls(
        address: &str,
        tls: Arc<ClientTls>,
        what: &str,
    ) -> Result<Self, http::uri::InvalidUri> {
        Self::new(address, Some((tls, what.into())))
    }

    fn new(
        address: &str,
        tls: Option<(Arc<ClientTls>, Arc<str>)>,
    ) -> Result<Self, http::uri::InvalidUri> {
        Ok(Link(Arc::new(Shared {
            address: address.into(),
            scheme: if tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            authority: address.parse()?,
            tls,
            live: RwLock::new(None),
            dialling: tokio::sync::Mutex::new(None),
            dials: AtomicU64::new(0),
        })))
    }

    /// Sends `request` (its URI may be a path alone: the node's scheme and authority are set
    /// here) over the live connection, dialling one first when there is none.
    pub(crate) async fn send(
        &self,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        self.address(&mut request)?;
        request
            .headers_mut()
            .insert(http::header::USER_AGENT, USER_AGENT);
        let mut sender = match self.live() {
            Some(sender) => sender,
            // Boxed: the dial's state (a TLS handshake) stays out of every call's future.
            None => Box::pin(self.connect()).await?,
        };
        let response = sender.send_request(request).await?;
        Ok(response.map(Body::new))
    }

    /// Gives `request`'s URI this node's scheme and authority.
    fn address(&self, request: &mut http::Request<Body>) -> Result<(), BoxError> {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(self.0.scheme.clone());
        parts.authority = Some(self.0.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = http::Uri::from_parts(parts)?;
        Ok(())
    }

    /// The live connection, unless there is none or it has closed.
    fn live(&self) -> Option<http2::SendRequest<Body>> {
        let live = self
            .0
            .live
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        live.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// The live connection, dialled if need be: one dial at a time, its outcome shared with
    /// the calls that waited for it.
    async fn connect(&self) -> Result<http2::SendRequest<Body>, BoxError> {
        let seen = self.0.dials.load(Ordering::Acquire);
        let mut dialling = self.0.dialling.lock().await;
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        if self.0.dials.load(Ordering::Acquire) != seen
            && let Some(failed) = dialling.as_ref()
        {
            return Err(failed.clone().into());
        }
        let outcome = self.dial().await;
        self.0.dials.fetch_add(1, Ordering::Release);
        match outcome {
            Ok(sender) => {
                *dialling = None;
                let mut live = self.0.live.write().unwrap_or_else(|p| p.into_inner());
                *live = Some(sender.clone());
                Ok(sender)
            }
            Err(error) => {
                let failed = ConnectFailed(Arc::from(error));
                *dialling = Some(failed.clone());
                Err(failed.into())
            }
        }
    }

    /// A new connection: TCP (and TLS), the HTTP/2 handshake, and its task spawned.
    async fn dial(&self) -> Result<http2::SendRequest<Body>, BoxError> {
        let address = &*self.0.address;
        let handshake = async {
            let builder = {
                let mut builder = http2::Builder::new(TokioExecutor::new());
                builder.timer(TokioTimer::new());
                builder
            };
            Ok::<_, BoxError>(match &self.0.tls {
                None => {
                    let tcp = TcpStream::connect(address).await?;
                    tcp.set_nodelay(true)?;
                    spawn(builder.handshake(TokioIo::new(tcp)).await?)
                }
                Some((tls, what)) => {
                    let stream = tls.connect(address, what).await?;
                    spawn(builder.handshake(TokioIo::new(stream)).await?)
                }
            })
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(sender) => sender,
            Err(_) => Err(format!(
                "no connection to {address} within {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            )
            .into()),
        }
    }
}

/// Runs a connection on its own task; the sender is what calls use.
fn spawn<T>(
    (sender, connection): (
        http2::SendRequest<Body>,
        http2::Connection<TokioIo<T>, Body, TokioExecutor>,
    ),
) -> http2::SendRequest<Body>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %crate::error::with_causes(&error), "connection to a node ended");
        }
    });
    sender
}

/// A dial's failure, shared by the calls that waited for that dial. Shows as the failure
/// itself, causes included.
#[derive(Clone, Debug)]
struct ConnectFailed(Arc<dyn StdError + Send + Sync>);

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for ConnectFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// A `Link` as a tonic channel, for the breaker's health probes (the calls' own path uses
/// [`Link::send`] without the box).
impl tower::Service<http::Request<Body>> for Link {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let link = self.clone();
        Box::pin(async move { link.send(request).await })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures::StreamExt;
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    /// A gRPC health server on `listener`, counting the connections it accepts, until the
    /// sender is used or dropped (then it closes its connections).
    fn serve(
        listener: TcpListener,
        accepted: Arc<AtomicUsize>,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (_, health) = tonic_health::server::health_reporter();
        let incoming = TcpListenerStream::new(listener).inspect(move |_| {
            accepted.fetch_add(1, Ordering::SeqCst);
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        (serving, stop)
    }

    async fn check(link: &Link) -> Result<ServingStatus, tonic::Status> {
        let reply = HealthClient::new(link.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok(reply.get_ref().status())
    }

    #[tokio::test]
    async fn connects_on_the_first_call_once_for_all_callers_and_again_after_a_restart() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("its address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (serving, stop) = serve(listener, accepted.clone());
        let link = Link::plain(&address.to_string()).expect("an address");
        tokio::task::yield_now().await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "dialled before any call"
        );

        let calls = futures::future::join_all((0..16).map(|_| check(&link))).await;
        for answer in calls {
            assert_eq!(answer.expect("a health answer"), ServingStatus::Serving);
        }
        assert_eq!(
            check(&link).await.expect("answered"),
            ServingStatus::Serving
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "17 calls, 16 of them at once, share one connection"
        );

        // The node restarts on the same address: the old connection closes, a call dials anew.
        drop(stop);
        serving.await.expect("the server stopped");
        let listener = TcpListener::bind(address)
            .await
            .expect("the same port again");
        let accepted = Arc::new(AtomicUsize::new(0));
        let _server = serve(listener, accepted.clone());
        let mut answer = check(&link).await;
        for _ in 0..50 {
            if answer.is_ok() {
                break;
            }
            // The first call may go out on the old connection before its close is read.
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer = check(&link).await;
        }
        assert_eq!(
            answer.expect("answered after the restart"),
            ServingStatus::Serving
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_dial_fails_the_call_naming_the_cause_and_the_next_call_dials_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("its address");
        drop(listener);
        let link = Link::plain(&address.to_string()).expect("an address");
        let error = check(&link).await.expect_err("nothing listens");
        assert!(
            error
                .message()
                .to_lowercase()
                .contains("connection refused"),
            "{error}"
        );

        let listener = TcpListener::bind(address)
            .await
            .expect("the same port again");
        let accepted = Arc::new(AtomicUsize::new(0));
        let _server = serve(listener, accepted.clone());
        assert_eq!(
            check(&link).await.expect("answered"),
            ServingStatus::Serving
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_address_that_is_no_authority_is_refused() {
        assert!(Link::plain("not an address").is_err());
        assert!(Link::plain("[::1]:50051").is_ok());
    }
}
