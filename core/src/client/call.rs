//! One call: resolve, pick a node, send, retry on another node if nothing was taken.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

use super::Selector;
use super::body::SharedBody;
use super::cache::{Cache, Resolved, resolve};
use crate::registry::{Node, Registry};
use crate::wrapper::rate_limit::grpc_timeout;
use crate::{BoxError, Error};

/// How long a node that refused a connection is passed over.
const COOLDOWN: Duration = Duration::from_secs(5);

pub(super) struct Inner {
    pub(super) registry: Arc<dyn Registry>,
    pub(super) timeout: Duration,
    pub(super) retries: u32,
    pub(super) selector: Selector,
    cache: Arc<Cache>,
    channels: Mutex<HashMap<String, Channel>>,
    cooling: Mutex<HashMap<String, Instant>>,
}

impl Inner {
    pub(super) fn new(
        registry: Arc<dyn Registry>,
        timeout: Duration,
        retries: u32,
        selector: Selector,
    ) -> Self {
        Inner {
            registry,
            timeout,
            retries,
            selector,
            cache: Arc::default(),
            channels: Mutex::default(),
            cooling: Mutex::default(),
        }
    }

    /// A lazily connecting channel per address, shared by every call.
    fn channel(&self, address: &str) -> Result<Channel, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Error::invalid("node address", format!("`{address}`: {e}")))?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    fn pick(&self, resolved: &Resolved, tried: &HashSet<String>) -> Option<Node> {
        let now = Instant::now();
        let cooling = self.cooling.lock().unwrap_or_else(|p| p.into_inner());
        let untried: Vec<&Node> = resolved
            .nodes
            .iter()
            .filter(|n| !tried.contains(&n.address))
            .collect();
        let warm: Vec<&Node> = untried
            .iter()
            .copied()
            .filter(|n| cooling.get(&n.address).is_none_or(|until| *until <= now))
            .collect();
        // Prefer nodes that have not failed lately, but try a cooling one over failing the call.
        let candidates = if warm.is_empty() { untried } else { warm };
        if candidates.is_empty() {
            return None;
        }
        let index = match self.selector {
            Selector::RoundRobin => {
                resolved.turn.fetch_add(1, Ordering::Relaxed) % candidates.len()
            }
            Selector::Random => fastrand::usize(..candidates.len()),
        };
        Some(candidates[index].clone())
    }

    fn cool(&self, address: &str) {
        self.cooling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address.to_string(), Instant::now() + COOLDOWN);
        // Drop the channel too: a restarted node may come back on the same address.
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(address);
    }
}

/// The tower service behind [`Client::channel`](super::Client::channel).
#[derive(Clone)]
pub(super) struct Balancer {
    inner: Arc<Inner>,
    service: Arc<str>,
}

impl Balancer {
    pub(super) fn new(inner: Arc<Inner>, service: &str) -> Self {
        Balancer {
            inner,
            service: service.into(),
        }
    }
}

impl Service<http::Request<Body>> for Balancer {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (inner, service) = (self.inner.clone(), self.service.clone());
        let timeout =
            grpc_timeout(request.headers()).map_or(inner.timeout, |t| t.min(inner.timeout));
        let span =
            tracing::debug_span!("call", service = %service, endpoint = %request.uri().path());
        Box::pin(tracing::Instrument::instrument(
            async move {
                match tokio::time::timeout(timeout, attempts(&inner, &service, request)).await {
                    Ok(result) => result,
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                        "call to `{service}` timed out after {}",
                        humantime::format_duration(timeout)
                    ))
                    .into()),
                }
            },
            span,
        ))
    }
}

async fn attempts(
    inner: &Inner,
    service: &str,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError> {
    let resolved = resolve(&inner.cache, &inner.registry, service)
        .await
        .map_err(unavailable)?;
    let (parts, body) = request.into_parts();
    let body = SharedBody::new(body);
    let mut tried = HashSet::new();
    let mut last_error: Option<BoxError> = None;
    for attempt in 0..=inner.retries {
        let Some(node) = inner.pick(&resolved, &tried) else {
            break;
        };
        let channel = inner.channel(&node.address).map_err(unavailable)?;
        let mut request = http::Request::new(body.reader());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        *request.extensions_mut() = parts.extensions.clone();
        match channel.oneshot(request).await {
            Ok(response) => return Ok(response),
            Err(error) if !body.taken() => {
                tracing::warn!(%service, node = %node.id, address = %node.address, attempt, error = %error, "node unreachable; trying another");
                inner.cool(&node.address);
                tried.insert(node.address);
                last_error = Some(error.into());
            }
            Err(error) => {
                // Part of the request was sent: it may have reached the handler, so it is not
                // retried; the node is still passed over by the next calls.
                inner.cool(&node.address);
                return Err(tonic::Status::unavailable(format!("node {} of `{service}` failed during the call (not retried: the request may have reached its handler): {error}", node.address)).into());
            }
        }
    }
    Err(match last_error {
        Some(error) => tonic::Status::unavailable(format!(
            "no node of `{service}` could be reached (tried {}): {error}",
            tried.len()
        ))
        .into(),
        None => unavailable(Error::NoNode {
            service: service.to_string(),
            registry: inner.registry.name().to_string(),
        }),
    })
}

fn unavailable(error: Error) -> BoxError {
    tonic::Status::unavailable(error.to_string()).into()
}
