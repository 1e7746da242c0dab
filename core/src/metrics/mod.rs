//! Prometheus metrics of a process: every call a [`Server`](crate::server::Server) handles,
//! every call a [`Client`](crate::client::Client) sends to a node (with its ejections, recoveries,
//! retries and fallbacks), and every message published or consumed through a broker the
//! [`Catalog`](crate::catalog::Catalog) built. One process-wide set of families, so several
//! servers and clients in one process add to the same series instead of registering twice.
//!
//! Served in Prometheus text format on `/metrics` at `--metrics-address` ([`serve`]); the
//! gateway appends [`render`] to its own `/metrics`. The names, and their labels:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `micro_server_requests_total` | counter | `service`, `endpoint` (gRPC path, or `unknown` for a method the server does not have), `code` |
//! | `micro_server_request_duration_seconds` | histogram | `service`, `endpoint` |
//! | `micro_server_requests_in_flight` | gauge | `service` |
//! | `micro_client_calls_total` | counter | `service`, `endpoint`, `node`, `code` (one per attempt on a node) |
//! | `micro_client_call_duration_seconds` | histogram | `service`, `endpoint`, `node` |
//! | `micro_client_ejections_total` / `micro_client_recoveries_total` | counter | `service`, `node` |
//! | `micro_client_retries_total` | counter | `service` |
//! | `micro_client_fallbacks_total` | counter | `service`, `endpoint` |
//! | `micro_broker_published_total` | counter | `topic`, `result` (`ok`, `error`) |
//! | `micro_broker_consumed_total` | counter | `topic`, `result` (`ok`, `error`, `rejected`, `panicked`, `cancelled`) |
//! | `micro_broker_handler_duration_seconds` | histogram | `topic` |
//!
//! A call's code is the gRPC status it ended with: from the response headers for a
//! trailers-only answer, else from the trailers; a call abandoned before its end (the client
//! went away, a deadline dropped it) is `CANCELLED`. Latency runs until that end, so a streamed
//! call counts its whole stream.

mod body;
mod family;
mod scrape;
#[cfg(test)]
mod tests;

pub use family::escape as escape_label;
pub use scrape::MetricsServer;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tower::Service;

pub(crate) use self::body::NodeCalls;
use self::body::{Recording, ServerCalls, observe};
use self::family::{Counter, Family, Gauge, Histogram};
use crate::Result;
use crate::options::Options;
use crate::wrapper::{HandlerLayer, HandlerService, Wrapper};

pub(crate) static SERVER_REQUESTS: Family<Counter> = Family::new(
    "micro_server_requests_total",
    "gRPC calls handled, by service, endpoint (gRPC path) and the gRPC code they ended with.",
    &["service", "endpoint", "code"],
);
pub(crate) static SERVER_LATENCY: Family<Histogram> = Family::new(
    "micro_server_request_duration_seconds",
    "Time from a call's request to its status (a streamed call: its whole stream).",
    &["service", "endpoint"],
);
pub(crate) static SERVER_IN_FLIGHT: Family<Gauge> = Family::new(
    "micro_server_requests_in_flight",
    "gRPC calls being handled.",
    &["service"],
);
pub(crate) static CLIENT_CALLS: Family<Counter> = Family::new(
    "micro_client_calls_total",
    "Calls sent to a node (each attempt), by service, endpoint, node and the gRPC code they ended with.",
    &["service", "endpoint", "node", "code"],
);
pub(crate) static CLIENT_LATENCY: Family<Histogram> = Family::new(
    "micro_client_call_duration_seconds",
    "Time from sending a call to a node to its status, by service, endpoint and node.",
    &["service", "endpoint", "node"],
);
static CLIENT_EJECTIONS: Family<Counter> = Family::new(
    "micro_client_ejections_total",
    "Nodes taken out of balancing after failing.",
    &["service", "node"],
);
static CLIENT_RECOVERIES: Family<Counter> = Family::new(
    "micro_client_recoveries_total",
    "Ejected nodes that passed a health probe and take calls again.",
    &["service", "node"],
);
static CLIENT_RETRIES: Family<Counter> = Family::new(
    "micro_client_retries_total",
    "Calls retried on another node.",
    &["service"],
);
static CLIENT_FALLBACKS: Family<Counter> = Family::new(
    "micro_client_fallbacks_total",
    "Calls answered by a fallback instead of the service.",
    &["service", "endpoint"],
);
static BROKER_PUBLISHED: Family<Counter> = Family::new(
    "micro_broker_published_total",
    "Messages published, by topic and result (ok, error).",
    &["topic", "result"],
);
static BROKER_CONSUMED: Family<Counter> = Family::new(
    "micro_broker_consumed_total",
    "Deliveries handled, by topic and result (ok, error: redelivered, rejected: dead-lettered, panicked, cancelled).",
    &["topic", "result"],
);
static BROKER_LATENCY: Family<Histogram> = Family::new(
    "micro_broker_handler_duration_seconds",
    "Time a subscriber's handler took for one delivery.",
    &["topic"],
);

/// The server wrapper counting every call of `service`'s handlers: by endpoint and code, its
/// latency, and the calls in flight.
pub fn server_layer(service: &str) -> Wrapper<HandlerService> {
    let calls = Arc::new(ServerCalls::new(service));
    tower::layer::layer_fn(move |inner: HandlerService| Counted {
        inner,
        calls: calls.clone(),
    })
    .into_wrapper()
}

/// Serves `/metrics` on `options.metrics_address`; `None` when it is not set.
pub async fn serve(options: &Options) -> Result<Option<MetricsServer>> {
    match options.metrics_address.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(address) => scrape::bind(address).await.map(Some),
    }
}

/// The process's metrics in Prometheus text format (the gateway appends them to its own).
pub fn render() -> String {
    let mut out = String::new();
    SERVER_REQUESTS.render(&mut out);
    SERVER_LATENCY.render(&mut out);
    SERVER_IN_FLIGHT.render(&mut out);
    CLIENT_CALLS.render(&mut out);
    CLIENT_LATENCY.render(&mut out);
    CLIENT_EJECTIONS.render(&mut out);
    CLIENT_RECOVERIES.render(&mut out);
    CLIENT_RETRIES.render(&mut out);
    CLIENT_FALLBACKS.render(&mut out);
    BROKER_PUBLISHED.render(&mut out);
    BROKER_CONSUMED.render(&mut out);
    BROKER_LATENCY.render(&mut out);
    out
}

/// The content type [`render`]'s text is served with (`text/plain; version=0.0.4`).
pub const CONTENT_TYPE: &str = scrape::CONTENT_TYPE;

/// The handlers of one service, counted.
#[derive(Clone)]
struct Counted {
    inner: HandlerService,
    /// Shared by the clones the server makes of its handlers for each call.
    calls: Arc<ServerCalls>,
}

impl Service<http::Request<Body>> for Counted {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Started before the handler runs, and moved into its future: a call dropped before it
        // answers still leaves the in-flight gauge and counts as CANCELLED.
        let recording = Recording::server(&self.calls, request.uri().path());
        let handled = self.inner.call(request);
        Box::pin(async move {
            let response = match handled.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(observe(response, recording))
        })
    }
}

/// One client call to one node, recorded when it ends.
pub(crate) struct ClientCall(Recording);

/// Starts recording a call of `endpoint` (its gRPC path) on `node` of `service`, finding its
/// series in the families (a client keeps them per node: [`NodeCalls::call`]).
#[cfg(test)]
pub(crate) fn client_call(service: Arc<str>, endpoint: Arc<str>, node: Arc<str>) -> ClientCall {
    ClientCall(Recording::client(Arc::new(body::Endpoint::new(
        service,
        endpoint,
        Some(node),
    ))))
}

impl NodeCalls {
    /// Starts recording a call of `endpoint` (its gRPC path) of `service` on this node: an
    /// endpoint called before finds its series without a family lookup.
    pub(crate) fn call(&self, service: &Arc<str>, endpoint: &Arc<str>) -> ClientCall {
        ClientCall(Recording::client(self.endpoint(service, endpoint)))
    }
}

impl ClientCall {
    /// The node answered: recorded with the gRPC code the response ends with.
    pub(crate) fn response(self, response: http::Response<Body>) -> http::Response<Body> {
        observe(response, self.0)
    }

    /// The call failed with `code` before any response.
    pub(crate) fn failed(mut self, code: tonic::Code) {
        self.0.finish(code);
    }
}

/// A node of `service` was ejected from its balancing.
pub(crate) fn ejected(service: &str, node: &str) {
    CLIENT_EJECTIONS.inc(&[service, node]);
}

/// An ejected node of `service` passed a health probe and takes calls again.
pub(crate) fn recovered(service: &str, node: &str) {
    CLIENT_RECOVERIES.inc(&[service, node]);
}

/// A call to `service` was retried on another node.
pub(crate) fn retried(service: &str) {
    CLIENT_RETRIES.inc(&[service]);
}

/// A call of `endpoint` on `service` was answered by a fallback instead of the service.
pub(crate) fn degraded(service: &str, endpoint: &str) {
    CLIENT_FALLBACKS.inc(&[service, endpoint]);
}

/// A publish on `topic` returned (`ok`: the backend took the message).
pub(crate) fn published(topic: &str, ok: bool) {
    BROKER_PUBLISHED.inc(&[topic, if ok { "ok" } else { "error" }]);
}

/// A delivery on `topic` was handled in `elapsed` with `result` (see the table above).
pub(crate) fn consumed(topic: &str, result: &str, elapsed: Duration) {
    BROKER_CONSUMED.inc(&[topic, result]);
    BROKER_LATENCY.observe(&[topic], elapsed);
}
