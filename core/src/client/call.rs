//! One call: resolve, pick a node that is not ejected, send, retry on another node when that
//! is safe and the retry budget allows it.
//!
//! Which failures are retried (on another node, never the same one):
//! - a connection that failed before any of the request was taken: it reached no handler;
//! - an `UNAVAILABLE` status in the response headers of a trailers-only answer, when the whole
//!   request could be replayed. gRPC's status code guide calls `UNAVAILABLE` "most likely a
//!   transient condition, which can be corrected by retrying", and it is the code gRPC's retry
//!   policies are set to retry: a server answers it to say "not here, not now" (draining,
//!   shedding load, a dependency down) rather than after doing the work. A handler that has
//!   side effects and answers `UNAVAILABLE` anyway breaks that convention.
//!
//! Never retried: a failure after part of the request was taken with no answer (it may have
//! run), any other status (the handler decided), and the deadline (no time is left). Each
//! retry takes a token from the client's [`RetryBudget`](super::RetryBudget), so retries add
//! at most about a fifth to the calls made, whatever fails.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use smallvec::SmallVec;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tower::Service;

use super::Selector;
use super::body::SharedBody;
use super::breaker::{Breaker, BreakerConfig};
use super::budget::{Budget, RetryBudget};
use super::cache::{Cache, Resolved, Target, resolve};
use super::fallback::Fallback;
use super::filter::Filter;
use crate::error::with_causes;
use crate::grpc::grpc_timeout;
use crate::registry::Registry;
use crate::tls::ClientTls;
use crate::{BoxError, Error};

/// The resilience settings of a client, kept when it is rebuilt with other options.
#[derive(Clone, Debug, Default)]
pub(super) struct Resilience {
    pub(super) breaker: BreakerConfig,
    pub(super) budget: RetryBudget,
    pub(super) fallbacks: Vec<Fallback>,
}

pub(super) struct Inner {
    pub(super) registry: Arc<dyn Registry>,
    pub(super) timeout: Duration,
    pub(super) retries: u32,
    pub(super) selector: Selector,
    pub(super) cache: Arc<Cache>,
    pub(super) resilience: Resilience,
    breaker: Arc<Breaker>,
    budget: Budget,
}

impl Inner {
    pub(super) fn new(
        registry: Arc<dyn Registry>,
        timeout: Duration,
        retries: u32,
        selector: Selector,
        tls: Arc<ClientTls>,
        resilience: Resilience,
    ) -> Self {
        let cache = Arc::new(Cache::new(tls));
        Inner {
            registry,
            timeout,
            retries,
            selector,
            breaker: Arc::new(Breaker::new(resilience.breaker, Arc::downgrade(&cache))),
            budget: Budget::new(resilience.budget),
            cache,
            resilience,
        }
    }

    fn index(&self, resolved: &Resolved, len: usize) -> usize {
        match self.selector {
            Selector::RoundRobin => resolved.turn.fetch_add(1, Ordering::Relaxed) % len,
            Selector::Random => fastrand::usize(..len),
        }
    }

    /// The next node: any, when none is ejected (no lock, no allocation); else one not yet
    /// tried and not ejected. When every node is ejected, a first attempt goes to the one whose
    /// last failure is the oldest (the service is never left without a node to try), and a
    /// retry goes nowhere: ejected nodes take no retries.
    fn pick<'a>(&self, resolved: &'a Resolved, tried: &[&str]) -> Option<&'a Target> {
        let targets = &resolved.targets;
        if targets.is_empty() {
            return None;
        }
        if tried.is_empty() && !self.breaker.any_ejected() {
            return Some(&targets[self.index(resolved, targets.len())]);
        }
        let ejected = self.breaker.ejected();
        let healthy: Vec<&Target> = targets
            .iter()
            .filter(|t| {
                !tried.contains(&t.node.address.as_str()) && !ejected.contains_key(&t.node.address)
            })
            .collect();
        if !healthy.is_empty() {
            return Some(healthy[self.index(resolved, healthy.len())]);
        }
        if !tried.is_empty() {
            return None;
        }
        targets
            .iter()
            .min_by_key(|t| ejected.get(&t.node.address).copied())
    }

    /// The fallback answering for calls of `path` on `service`, if any.
    fn fallback(&self, service: &str, path: &str) -> Option<&Fallback> {
        self.resilience
            .fallbacks
            .iter()
            .find(|f| f.covers(service, path))
    }
}

/// The tower service behind [`Client::channel`](super::Client::channel).
#[derive(Clone)]
pub(super) struct Balancer {
    inner: Arc<Inner>,
    service: Arc<str>,
    /// Only this node (its id or address), when pinned.
    node: Option<Arc<str>>,
    /// Only the nodes this filter lets through.
    filter: Option<Arc<Filter>>,
    /// The cache's entry for the service, as the last call found it: used again while the
    /// cache keeps it, without a lookup.
    resolved: Weak<Resolved>,
    /// The gRPC path of the last call, shared with its metrics labels: a channel mostly calls
    /// the same few methods, and this spares allocating each call's.
    path: Option<Arc<str>>,
}

impl Balancer {
    pub(super) fn new(
        inner: Arc<Inner>,
        service: &str,
        node: Option<&str>,
        filter: Option<Arc<Filter>>,
    ) -> Self {
        Balancer {
            inner,
            service: service.into(),
            node: node.map(Into::into),
            filter,
            resolved: Weak::new(),
            path: None,
        }
    }

    /// The service's entry in the cache, if it is resolved.
    fn cached(&mut self) -> Option<Arc<Resolved>> {
        if let Some(resolved) = self.resolved.upgrade()
            && !resolved.retired()
        {
            return Some(resolved);
        }
        let resolved = self.inner.cache.get(&self.service)?;
        self.resolved = Arc::downgrade(&resolved);
        Some(resolved)
    }

    /// `path`, shared with the last call's when it is the same.
    fn path(&mut self, path: &str) -> Arc<str> {
        match &self.path {
            Some(last) if **last == *path => last.clone(),
            _ => self.path.insert(path.into()).clone(),
        }
    }
}

/// What one call needs to know through its attempts.
struct Call<'a> {
    inner: &'a Inner,
    service: &'a Arc<str>,
    /// The gRPC path.
    path: &'a Arc<str>,
    deadline: Instant,
    timeout: Duration,
}

impl Call<'_> {
    fn deadline_exceeded(&self) -> BoxError {
        tonic::Status::deadline_exceeded(format!(
            "call to `{}` timed out after {}",
            self.service,
            humantime::format_duration(self.timeout)
        ))
        .into()
    }
}

impl Service<http::Request<Body>> for Balancer {
    type Response = http::Response<Body>;
    type Error = BoxError;
    /// The call's future boxed as it is made, then instrumented: wrapping the unboxed future
    /// first would move it once more (it is large: every attempt's state is in it).
    type Future = tracing::instrument::Instrumented<
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        crate::trace::inject(request.headers_mut());
        let (inner, service, node) = (self.inner.clone(), self.service.clone(), self.node.clone());
        let filter = self.filter.clone();
        let timeout =
            grpc_timeout(request.headers()).map_or(inner.timeout, |t| t.min(inner.timeout));
        let deadline = Instant::now() + timeout;
        let path = self.path(request.uri().path());
        // Every call but a service's first finds it resolved: no timer is set for that.
        let cached = self.cached();
        let span = tracing::debug_span!("call", service = %service, endpoint = %path);
        tracing::Instrument::instrument(
            Box::pin(async move {
                let call = Call {
                    inner: &inner,
                    service: &service,
                    path: &path,
                    deadline,
                    timeout,
                };
                let resolved = match cached {
                    Some(resolved) => filtered(&service, resolved, filter.as_deref())?,
                    None => match tokio::time::timeout_at(
                        deadline,
                        resolved(&inner, &service, filter.as_deref()),
                    )
                    .await
                    {
                        Ok(resolved) => resolved?,
                        Err(_) => return Err(call.deadline_exceeded()),
                    },
                };
                let fallback = inner.fallback(&service, &path);
                if let Some(fallback) = fallback
                    && node.is_none()
                    && inner.breaker.open(&resolved.targets)
                {
                    tracing::debug!("every node is ejected; the fallback answers");
                    crate::metrics::degraded(&service, &path);
                    return Ok(fallback.response());
                }
                let result = match &node {
                    Some(node) => pinned(&call, &resolved, node, request).await,
                    None => attempts(&call, &resolved, request).await,
                };
                let Some(fallback) = fallback else {
                    return result;
                };
                let code = match &result {
                    Ok(response) => answered(response),
                    Err(error) => error
                        .downcast_ref::<tonic::Status>()
                        .map_or(Code::Unknown, tonic::Status::code),
                };
                if code != Code::Ok && fallback.answers(code) {
                    tracing::debug!(code = crate::grpc::code_name(code), "the fallback answers");
                    crate::metrics::degraded(&service, &path);
                    return Ok(fallback.response());
                }
                result
            }),
            span,
        )
    }
}

/// The nodes of `service`, through `filter`.
async fn resolved(
    inner: &Inner,
    service: &str,
    filter: Option<&Filter>,
) -> Result<Arc<Resolved>, BoxError> {
    let resolved = resolve(&inner.cache, &inner.registry, service)
        .await
        .map_err(unavailable)?;
    filtered(service, resolved, filter)
}

/// The nodes of `resolved` that `filter` lets through.
fn filtered(
    service: &str,
    resolved: Arc<Resolved>,
    filter: Option<&Filter>,
) -> Result<Arc<Resolved>, BoxError> {
    match filter {
        // `UNAVAILABLE` naming the filter and the versions registered when no node passes.
        Some(filter) => Ok(filter.select(service, resolved)?),
        None => Ok(resolved),
    }
}

/// The code in the headers of a trailers-only answer; `OK` when the status is yet to come.
fn answered(response: &http::Response<Body>) -> Code {
    crate::grpc::status_code(response.headers()).unwrap_or(Code::Ok)
}

/// How one attempt failed.
enum Failed {
    /// The deadline passed: the call's error, as it is.
    Deadline(BoxError),
    /// No answer from the node (a connection failure, a reset).
    Transport(BoxError),
}

/// Sends `request` to `target`, recording the attempt, and telling the breaker how the node
/// did.
async fn send(
    call: &Call<'_>,
    target: &Target,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Failed> {
    let (inner, service) = (call.inner, call.service);
    let record = target.metrics.call(service, call.path);
    let started = Instant::now();
    let unresponsive = |record: crate::metrics::ClientCall| {
        record.failed(Code::DeadlineExceeded);
        if started.elapsed() >= inner.breaker.config.unresponsive_after {
            inner
                .breaker
                .failed(service, target, "no response before the call's deadline");
        }
    };
    match tokio::time::timeout_at(call.deadline, target.link.send(request)).await {
        Err(_) => {
            unresponsive(record);
            Err(Failed::Deadline(call.deadline_exceeded()))
        }
        Ok(Err(error)) => {
            record.failed(Code::Unavailable);
            inner.breaker.failed(
                service,
                target,
                &format!("connection failed: {}", with_causes(&*error)),
            );
            Err(Failed::Transport(error))
        }
        Ok(Ok(response)) => {
            let code = answered(&response);
            // An error answered once the deadline has passed is the deadline's. The node's own
            // timer (tonic answers CANCELLED "Timeout expired" when `grpc-timeout` runs out) can
            // beat ours on a busy machine: `timeout_at` looks at the answer before the clock.
            if code != Code::Ok && Instant::now() >= call.deadline {
                unresponsive(record);
                return Err(Failed::Deadline(call.deadline_exceeded()));
            }
            if code == Code::Unavailable {
                inner
                    .breaker
                    .failed(service, target, "the node answered UNAVAILABLE");
            } else {
                inner.breaker.succeeded(service, target);
            }
            Ok(record.response(response))
        }
    }
}

async fn attempts(
    call: &Call<'_>,
    resolved: &Resolved,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError> {
    let (inner, service) = (call.inner, call.service);
    inner.budget.deposit();
    if inner.retries == 0 || resolved.targets.len() < 2 {
        // No other node to retry on: send the request as it is, without the retry machinery.
        let target = inner
            .pick(resolved, &[])
            .ok_or_else(|| no_node(inner, service))?;
        return send(call, target, request)
            .await
            .map_err(|failed| node_failed(failed, service, target));
    }
    let (parts, body) = request.into_parts();
    let body = SharedBody::new(body);
    // The nodes tried, inline: the default two retries make three attempts at most.
    let mut tried: SmallVec<[&str; 4]> = SmallVec::new();
    // What the call ends with if no further attempt is made.
    let mut last: Option<Result<http::Response<Body>, BoxError>> = None;
    let mut budget_spent = false;
    for attempt in 0..=inner.retries {
        let Some(target) = inner.pick(resolved, &tried) else {
            break;
        };
        if attempt > 0 {
            if !inner.budget.withdraw() {
                budget_spent = true;
                tracing::debug!(%service, "retry budget spent; not retried");
                break;
            }
            crate::metrics::retried(service);
        }
        // Each attempt's own head; the extensions stay behind: nothing below the balancer reads
        // them (hyper takes only the head and body), and copying them cost two allocations.
        let mut request = http::Request::new(body.reader());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        let (node, address) = (&target.node.id, &target.node.address);
        tried.push(address);
        match send(call, target, request).await {
            Ok(response) if answered(&response) == Code::Unavailable && body.replayable() => {
                tracing::debug!(%service, %node, %address, attempt, "node answered UNAVAILABLE; trying another");
                last = Some(Ok(response));
            }
            Ok(response) => return Ok(response),
            Err(Failed::Deadline(error)) => return Err(error),
            Err(Failed::Transport(error)) if !body.taken() => {
                tracing::warn!(%service, %node, %address, attempt, error = %with_causes(&*error), "node unreachable; trying another");
                last = Some(Err(with_causes(&*error).into()));
            }
            Err(Failed::Transport(error)) => {
                // Part of the request was sent: it may have reached the handler, so it is not
                // retried; the breaker has ejected the node for the next calls.
                return Err(tonic::Status::unavailable(format!("node {address} of `{service}` failed during the call (not retried: the request may have reached its handler): {}", with_causes(&*error))).into());
            }
        }
    }
    let spent = if budget_spent {
        "; the retry budget allowed no more retries"
    } else {
        ""
    };
    match last {
        Some(Ok(response)) => Ok(response),
        Some(Err(error)) => Err(tonic::Status::unavailable(format!(
            "no node of `{service}` could be reached (tried {}{spent}): {error}",
            tried.len()
        ))
        .into()),
        None => Err(no_node(inner, service)),
    }
}

/// The caller's error for a failed attempt that is not retried.
fn node_failed(failed: Failed, service: &str, target: &Target) -> BoxError {
    match failed {
        Failed::Deadline(error) => error,
        Failed::Transport(error) => tonic::Status::unavailable(format!(
            "node {} of `{service}` failed: {}",
            target.node.address,
            with_causes(&*error)
        ))
        .into(),
    }
}

/// A call to one chosen node: no balancing, no retry on another node.
async fn pinned(
    call: &Call<'_>,
    resolved: &Resolved,
    node: &str,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError> {
    let service = call.service;
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
    send(call, target, request)
        .await
        .map_err(|failed| node_failed(failed, service, target))
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
