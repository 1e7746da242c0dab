//! Applying a wrapper to one endpoint only.

use std::task::{Context, Poll};

use tower::Service;

/// Sends requests for one gRPC path (`/greeter.v1.Greeter/SayHello`) to `wrapped`, every other
/// request to `plain`. Both are the same handlers; only `wrapped` has the endpoint's layer.
#[derive(Clone, Debug)]
pub struct OnPath<S> {
    path: String,
    wrapped: S,
    plain: S,
}

impl<S> OnPath<S> {
    /// Routes `path` through `wrapped`, the rest through `plain`.
    pub fn new(path: impl Into<String>, wrapped: S, plain: S) -> Self {
        OnPath {
            path: path.into(),
            wrapped,
            plain,
        }
    }
}

impl<S, B> Service<http::Request<B>> for OnPath<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both must be ready: which one the next request needs is not known yet.
        match self.wrapped.poll_ready(cx)? {
            Poll::Ready(()) => self.plain.poll_ready(cx),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == self.path {
            self.wrapped.call(request)
        } else {
            self.plain.call(request)
        }
    }
}
