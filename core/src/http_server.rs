//! The small HTTP/1.1 servers a process may run beside its gRPC server (`/metrics` on
//! `metrics-address`, profiles on `debug-address`): one accept loop, a request-head timeout, and
//! a handle that stops the listener and every open connection when dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How long a client may take to send its request head: a connection that sends nothing must
/// not be held forever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server; dropping it closes the listener and every connection (and with them any
/// request being answered).
#[derive(Debug)]
pub(crate) struct HttpServer {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Serves `handler` on `listener` until dropped; `what` names it in the logs.
    pub(crate) fn spawn<F, Fut, B>(listener: TcpListener, what: &'static str, handler: F) -> Self
    where
        F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let address = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        HttpServer {
            address,
            task: tokio::spawn(accept(listener, what, handler)),
        }
    }

    /// The address it listens on (the real port when port 0 was asked for).
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept<F, Fut, B>(listener: TcpListener, what: &'static str, handler: F)
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let handler = handler.clone();
                    connections.spawn(async move {
                        let served = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service_fn(handler))
                            .await;
                        if let Err(e) = served {
                            tracing::debug!(%peer, error = %e, "{what} connection ended");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, say: pause instead of spinning on the error.
                    tracing::warn!(error = %e, "{what}: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
