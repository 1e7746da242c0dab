//! One call: resolve, pick a node, send, retry on another node if nothing was taken.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::body::Body;
use tower::{Service, ServiceExt};

use super::Selector;
use super::body::SharedBody;
use super::cache::{Cache, Resolved, Target, resolve};
use crate::error::with_causes;
use crate::grpc::grpc_timeout;
use crate::registry::Registry;
use crate::tls::ClientTls;
use crate::{BoxError, Error};

/// How long a node that refused a connection is passed over.
const COOLDOWN: Duration = Duration::from_secs(5);

pub(super) struct Inner {
    pub(super) registry: Arc<dyn Registry>,
    pub(super) timeout: Duration,
    pub(super) retries: u32,
    pub(super) selector: Selector,
    pub(super) cache: Arc<Cache>,
    /// Addresses that failed lately, and until when they are passed over.
    cooling: Mutex<HashMap<String, Instant>>,
    /// Whether `cooling` may hold anything: lets the common call skip its lock.
    any_cooling: AtomicBool,
}

impl Inner {
    pub(super) fn new(
        registry: Arc<dyn Registry>,
        timeout: Duration,
        retries: u32,
        selector: Selector,
        tls: Arc<ClientTls>,
    ) -> Self {
        Inner {
            registry,
            timeout,
            retries,
            selector,
            cache: Arc::new(Cache::new(tls)),
            cooling: Mutex::default(),
            any_cooling: AtomicBool::new(false),
        }
    }

    fn index(&self, resolved: &Resolved, len: usize) -> usize {
        match self.selector {
            Selector::RoundRobin => resolved.turn.fetch_add(1, Ordering::Relaxed) % len,
            Selector::Random => fastrand::usize(..len),
        }
    }

    /// The next node: any, when nothing failed lately (no lock, no allocation); else one not
    /// yet tried, preferring nodes that are not cooling down.
    fn pick<'a>(&self, resolved: &'a Resolved, tried: &[String]) -> Option<&'a Target> {
        let targets = &resolved.targets;
        if targets.is_empty() {
            return None;
        }
        if tried.is_empty() && !self.any_cooling.load(Ordering::Relaxed) {
            return Some(&targets[self.index(resolved, targets.len())]);
        }
        let now = Instant::now();
        let mut cooling = self.cooling.lock().unwrap_or_else(|p| p.into_inner());
        cooling.retain(|_, until| *until > now);
        if cooling.is_empty() {
            self.any_cooling.store(false, Ordering::Relaxed);
        }
        let untried: Vec<&Target> = targets
            .iter()
            .filter(|t| !tried.contains(&t.node.address))
            .collect();
        let warm: Vec<&Target> = untried
            .iter()
            .copied()
            .filter(|t| !cooling.contains_key(&t.node.address))
            .collect();
        // Prefer nodes that have not failed lately, but try a cooling one over failing the call.
        let candidates = if warm.is_empty() { untried } else { warm };
        (!candidates.is_empty()).then(|| candidates[self.index(resolved, candidates.len())])
    }

    fn cool(&self, address: &str) {
        self.cooling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address.to_string(), Instant::now() + COOLDOWN);
        self.any_cooling.store(true, Ordering::Relaxed);
    }
}

/// The tower service behind [`Client::channel`](super::Client::channel).
#[derive(Clone)]
pub(super) struct Balancer {
    inner: Arc<Inner>,
    service: Arc<str>,
    /// Only this node (its id or address), when pinned.
    node: Option<Arc<str>>,
}

impl Balancer {
    pub(super) fn new(inner: Arc<Inner>, service: &str, node: Option<&str>) -> Self {
        Balancer {
            inner,
            service: service.into(),
            node: node.map(Into::into),
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
        let (inner, service, node) = (self.inner.clone(), self.service.clone(), self.node.clone());
        let timeout =
            grpc_timeout(request.headers()).map_or(inner.timeout, |t| t.min(inner.timeout));
        let span =
            tracing::debug_span!("call", service = %service, endpoint = %request.uri().path());
        Box::pin(tracing::Instrument::instrument(
            async move {
                let call = async {
                    match &node {
                        Some(node) => pinned(&inner, &service, node, request).await,
                        None => attempts(&inner, &service, request).await,
                    }
                };
                match tokio::time::timeout(timeout, call).await {
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
    if inner.retries == 0 || resolved.targets.len() < 2 {
        // No other node to retry on: send the request as it is, without the retry machinery.
        let target = inner
            .pick(&resolved, &[])
            .ok_or_else(|| no_node(inner, service))?;
        return send_once(inner, service, target, request).await;
    }
    let (parts, body) = request.into_parts();
    let body = SharedBody::new(body);
    let mut tried: Vec<String> = Vec::new();
    let mut last_error: Option<BoxError> = None;
    for attempt in 0..=inner.retries {
        let Some(target) = inner.pick(&resolved, &tried) else {
            break;
        };
        let mut request = http::Request::new(body.reader());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        *request.extensions_mut() = parts.extensions.clone();
        let (node, address) = (&target.node.id, &target.node.address);
        match target.channel.clone().oneshot(request).await {
            Ok(response) => return Ok(response),
            Err(error) if !body.taken() => {
                if let Some(late) = deadline_passed(&error, service) {
                    return Err(late);
                }
                tracing::warn!(%service, %node, %address, attempt, error = %with_causes(&error), "node unreachable; trying another");
                inner.cool(address);
                tried.push(address.clone());
                last_error = Some(with_causes(&error).into());
            }
            Err(error) => {
                if let Some(late) = deadline_passed(&error, service) {
                    return Err(late);
                }
                // Part of the request was sent: it may have reached the handler, so it is not
                // retried; the node is still passed over by the next calls.
                inner.cool(address);
                return Err(tonic::Status::unavailable(format!("node {address} of `{service}` failed during the call (not retried: the request may have reached its handler): {}", with_causes(&error))).into());
            }
        }
    }
    Err(match last_error {
        Some(error) => tonic::Status::unavailable(format!(
            "no node of `{service}` could be reached (tried {}): {error}",
            tried.len()
        ))
        .into(),
        None => no_node(inner, service),
    })
}

/// Sends `request` to `target` alone; a failure cools the node, unless it was the deadline.
async fn send_once(
    inner: &Inner,
    service: &str,
    target: &Target,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError> {
    target
        .channel
        .clone()
        .oneshot(request)
        .await
        .map_err(|error| {
            if let Some(late) = deadline_passed(&error, service) {
                return late;
            }
            inner.cool(&target.node.address);
            tonic::Status::unavailable(format!(
                "node {} of `{service}` failed: {}",
                target.node.address,
                with_causes(&error)
            ))
            .into()
        })
}

/// A call to one chosen node: no balancing, no retry on another node.
async fn pinned(
    inner: &Inner,
    service: &str,
    node: &str,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError> {
    let resolved = resolve(&inner.cache, &inner.registry, service)
        .await
        .map_err(unavailable)?;
    let Some(target) = resolved
        .targets
        .iter()
        .find(|t| t.node.id == node || t.node.address == node)
    else {
        let known: Vec<String> = resolved
            .targets
            .iter()
            .map(|t| format!("{} ({})", t.node.id, t.node.address))
            .collect();
        return Err(tonic::Status::not_found(format!(
            "`{service}` has no node `{node}`; its nodes: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
        .into());
    };
    send_once(inner, service, target, request).await
}

/// `DEADLINE_EXCEEDED` when `error` is the call's deadline expiring in the channel (tonic
/// enforces `grpc-timeout` there): the node is not at fault, so it is neither cooled nor
/// retried, and the caller learns it was the deadline rather than an unreachable node.
fn deadline_passed(error: &tonic::transport::Error, service: &str) -> Option<BoxError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<tonic::TimeoutExpired>() {
            return Some(
                tonic::Status::deadline_exceeded(format!(
                    "call to `{service}` passed its deadline"
                ))
                .into(),
            );
        }
        source = cause.source();
    }
    None
}

fn no_node(inner: &Inner, service: &str) -> BoxError {
    unavailable(Error::NoNode {
        service: service.to_string(),
        registry: inner.registry.name().to_string(),
    })
}

fn unavailable(error: Error) -> BoxError {
    tonic::Status::unavailable(error.to_string()).into()
}
