//! The `/metrics` HTTP endpoint on `metrics-address`.

use std::convert::Infallible;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::http_server::HttpServer;
use crate::{Error, Result};

/// The content type of the Prometheus text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The HTTP server of `/metrics` on `metrics-address`, served while it is kept (stopped, with
/// its open connections, when dropped).
#[derive(Debug)]
pub struct MetricsServer(HttpServer);

impl MetricsServer {
    /// The address it listens on (the real port when `metrics-address` asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.0.address()
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
    Ok(MetricsServer(HttpServer::spawn(
        listener, "metrics", answer,
    )))
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
