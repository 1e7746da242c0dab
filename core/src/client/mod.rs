//! The client: resolves a service through the [`Registry`], picks a node, and is a
//! `tower::Service` that tonic-generated clients take:
//!
//! ```ignore
//! let mut greeter = GreeterClient::new(client.channel("greeter"));
//! ```
//!
//! Nodes are cached per service and kept fresh by a registry watch (the task ends when the
//! client is dropped or the watch ends). Each call has a timeout (the client's, or the caller's
//! `grpc-timeout` when shorter). A call is retried on another node only when it never reached a
//! handler: the connection failed before any of the request was taken (go-micro retried calls
//! that had already run, #2133), or the node answered `UNAVAILABLE` before any reply (`call.rs`
//! says why); a [`RetryBudget`] keeps retries to about a fifth of the calls.
//!
//! A node that fails is ejected from balancing and probed out of band with gRPC health checks
//! until it answers `SERVING` ([`BreakerConfig`]); a [`Fallback`] can answer instead of a
//! service whose nodes are all ejected, or instead of chosen error codes.
//!
//! A node registered with `secure=true` is dialled over TLS, verified against `client-tls-ca`
//! (or the system's roots) and presenting `client-tls-cert` when set; one it cannot verify
//! fails the call with `UNAVAILABLE` naming the node and `--client-tls-ca`, never a plaintext
//! or unverified fallback.

mod body;
mod breaker;
mod budget;
mod cache;
mod call;
mod fallback;
mod filter;
mod link;

pub use breaker::BreakerConfig;
pub use budget::RetryBudget;
pub use fallback::Fallback;
pub use filter::Filter;

use std::sync::Arc;
use std::time::Duration;

use tonic::body::Body;
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::options::Options;
use crate::registry::Registry;
use crate::tls::ClientTls;
use crate::wrapper::{CallLayer, CallService, Wrapper, apply};

/// How the client picks a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Selector {
    /// In turn (the default).
    #[default]
    RoundRobin,
    /// At random.
    Random,
}

/// A client of services in a registry. Cheap to clone; clones share the cache and connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<call::Inner>,
    wrappers: Vec<Wrapper<CallService>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("wrappers", &self.wrappers.len())
            .finish_non_exhaustive()
    }
}

/// A channel to one service, to hand to a tonic-generated client. Its errors are gRPC
/// statuses: `UNAVAILABLE` naming the service and registry when no node answers,
/// `DEADLINE_EXCEEDED` when the call times out.
#[derive(Clone)]
pub struct ServiceChannel(CallService);

impl std::fmt::Debug for ServiceChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceChannel")
    }
}

impl Service<http::Request<Body>> for ServiceChannel {
    type Response = http::Response<Body>;
    type Error = tonic::Status;
    /// The wrapped call's own future with its error mapped: no second allocation per call.
    type Future = futures::future::MapErr<
        <CallService as Service<http::Request<Body>>>::Future,
        fn(crate::BoxError) -> tonic::Status,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(tonic::Status::from_error)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        futures::TryFutureExt::map_err(self.0.call(request), tonic::Status::from_error)
    }
}

impl Client {
    /// A client resolving through `registry`, with the timeout and retries of `options`.
    pub fn new(options: &Options, registry: Arc<dyn Registry>) -> Self {
        Client {
            inner: Arc::new(call::Inner::new(
                registry,
                options.client_timeout,
                options.client_retries,
                Selector::RoundRobin,
                Arc::new(ClientTls::from_options(options)),
                call::Resilience::default(),
            )),
            wrappers: Vec::new(),
        }
    }

    /// Picks nodes with `selector`.
    pub fn selector(self, selector: Selector) -> Self {
        self.rebuild(|inner| inner.selector = selector)
    }

    /// Sets the per-call timeout.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.rebuild(|inner| inner.timeout = timeout)
    }

    /// Ejects failing nodes as `config` says (on by default: [`BreakerConfig::default`]);
    /// `BreakerConfig::off()` turns ejection off.
    pub fn breaker(self, config: BreakerConfig) -> Self {
        self.rebuild(|inner| inner.resilience.breaker = config)
    }

    /// Limits retries to `budget` ([`RetryBudget::default`]: about 20 % of calls).
    pub fn retry_budget(self, budget: RetryBudget) -> Self {
        self.rebuild(|inner| inner.resilience.budget = budget)
    }

    /// Answers calls of the fallback's service (or endpoint) with its reply when they fail
    /// with its codes or find every node ejected. The first fallback added that covers a call
    /// answers it.
    pub fn fallback(self, fallback: Fallback) -> Self {
        self.rebuild(|inner| inner.resilience.fallbacks.push(fallback))
    }

    /// Wraps every call with `layer` (first added runs first).
    pub fn wrap(mut self, layer: impl CallLayer) -> Self {
        self.wrappers.push(layer.into_wrapper());
        self
    }

    /// A channel to the service named `service`.
    pub fn channel(&self, service: &str) -> ServiceChannel {
        self.balanced(service, None)
    }

    /// A channel to the nodes of `service` that `filter` lets through (a version, metadata):
    /// `client.channel_with("greeter", Filter::version("v2"))`.
    pub fn channel_with(&self, service: &str, filter: Filter) -> ServiceChannel {
        let base = BoxCloneSyncService::new(call::Balancer::new(
            self.inner.clone(),
            service,
            None,
            Some(Arc::new(filter)),
        ));
        ServiceChannel(apply(&self.wrappers, base))
    }

    /// A channel to one node of `service`, named by its id or address (as `micro call --node`
    /// takes it): no balancing and no retry elsewhere; `NOT_FOUND` listing the nodes when the
    /// service has no such node.
    pub fn node_channel(&self, service: &str, node: &str) -> ServiceChannel {
        self.balanced(service, Some(node))
    }

    fn balanced(&self, service: &str, node: Option<&str>) -> ServiceChannel {
        let base =
            BoxCloneSyncService::new(call::Balancer::new(self.inner.clone(), service, node, None));
        ServiceChannel(apply(&self.wrappers, base))
    }

    /// The registry this client resolves through.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.inner.registry
    }

    fn rebuild(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings {
            timeout: self.inner.timeout,
            selector: self.inner.selector,
            resilience: self.inner.resilience.clone(),
        };
        change(&mut settings);
        let inner = call::Inner::new(
            self.inner.registry.clone(),
            settings.timeout,
            self.inner.retries,
            settings.selector,
            self.inner.cache.tls.clone(),
            settings.resilience,
        );
        Client {
            inner: Arc::new(inner),
            wrappers: self.wrappers,
        }
    }
}

/// What the builder methods change before the client's state is made afresh.
struct Settings {
    timeout: Duration,
    selector: Selector,
    resilience: call::Resilience,
}
