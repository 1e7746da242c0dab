//! Wrappers: tower layers around every handler of a [`Server`](crate::server::Server) or every
//! call of a [`Client`](crate::client::Client).
//!
//! Any `tower::Layer` over [`HandlerService`] (server) or [`CallService`] (client) can wrap; a
//! layer written generically over `http::Request`/`http::Response`, like [`RateLimitLayer`],
//! works on both sides. Wrappers added first run first (outermost).

pub mod auth;
mod endpoint;
pub mod rate_limit;

pub use endpoint::OnPath;
pub use rate_limit::{RateLimit, RateLimitLayer};

use std::convert::Infallible;
use std::sync::Arc;

use tonic::body::Body;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

use crate::BoxError;

/// What a server wrapper wraps: the gRPC handlers, as one HTTP service.
pub type HandlerService =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// What a client wrapper wraps: a call to a resolved service.
pub type CallService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// A type-erased layer over `S`, so wrappers of different types can be kept in one list.
pub struct Wrapper<S>(Arc<dyn Fn(S) -> S + Send + Sync>);

impl<S> std::fmt::Debug for Wrapper<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wrapper")
    }
}

impl<S> Clone for Wrapper<S> {
    fn clone(&self) -> Self {
        Wrapper(self.0.clone())
    }
}

impl<S> Wrapper<S> {
    /// Applies the wrapper.
    pub fn wrap(&self, service: S) -> S {
        (self.0)(service)
    }
}

/// A tower layer that can wrap the server's handlers: `Server::wrap(layer)`.
pub trait HandlerLayer: Send + Sync + 'static {
    /// The layer, type-erased.
    fn into_wrapper(self) -> Wrapper<HandlerService>;
}

impl<L> HandlerLayer for L
where
    L: Layer<HandlerService> + Send + Sync + 'static,
    L::Service: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send + 'static,
{
    fn into_wrapper(self) -> Wrapper<HandlerService> {
        Wrapper(Arc::new(move |inner| {
            BoxCloneSyncService::new(self.layer(inner))
        }))
    }
}

/// A tower layer that can wrap the client's calls: `Client::wrap(layer)`.
pub trait CallLayer: Send + Sync + 'static {
    /// The layer, type-erased.
    fn into_wrapper(self) -> Wrapper<CallService>;
}

impl<L> CallLayer for L
where
    L: Layer<CallService> + Send + Sync + 'static,
    L::Service: Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as Service<http::Request<Body>>>::Error: Into<BoxError>,
    <L::Service as Service<http::Request<Body>>>::Future: Send + 'static,
{
    fn into_wrapper(self) -> Wrapper<CallService> {
        Wrapper(Arc::new(move |inner| {
            BoxCloneSyncService::new(tower::ServiceExt::map_err(self.layer(inner), Into::into))
        }))
    }
}

/// Applies `wrappers` so the first one is outermost.
pub(crate) fn apply<S>(wrappers: &[Wrapper<S>], service: S) -> S {
    wrappers
        .iter()
        .rev()
        .fold(service, |inner, wrapper| wrapper.wrap(inner))
}
