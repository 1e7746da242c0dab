//! The `/metrics` HTTP endpoint on `metrics-address`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::{Error, Result};

/// The content type of the Prometheus text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client may take to send its request head: a scraper sends it at once, and a
/// connection that sends nothing must not be held forever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP server of `/metrics` on `metrics-address`, served while it is kept (stopped, with
/// its open connections, when dropped).
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on (the real port when `metrics-address` asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

/// Binds `address` and serves `/metrics` there.
pub(crate) async fn bind(address: &str) -> Result<MetricsServer> {
    let listener = TcpListener::bind(address).await.map_err(|e| {
        Error::Option(format!(
            "metrics-address: cannot listen on {address}: {e}; give a free HOST:PORT (port 0 \
             picks one) or unset --metrics-address / MICRO_METRICS_ADDRESS"
        ))
    })?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "serving metrics on http://{local}/metrics");
    Ok(MetricsServer {
        address: local,
        task: tokio::spawn(accept(listener)),
    })
}

async fn accept(listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(async move {
                        let served = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service_fn(answer))
                            .await;
                        if let Err(e) = served {
                            tracing::debug!("metrics connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, say: pause instead of spinning on the error.
                    tracing::warn!("metrics-address: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn answer<B>(
    request: http::Request<B>,
) -> std::result::Result<http::Response<String>, Infallible> {
    let (status, body) = if request.uri().path() != "/metrics" {
        (
            http::StatusCode::NOT_FOUND,
            format!(
                "no page {}: metrics are at /metrics\n",
                request.uri().path()
            ),
        )
    } else if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        (
            http::StatusCode::METHOD_NOT_ALLOWED,
            format!("{} /metrics: only GET is served\n", request.method()),
        )
    } else {
        (http::StatusCode::OK, super::render())
    };
    let content_type = if status == http::StatusCode::OK {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    if status == http::StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
    }
    Ok(response)
}
