//! Rate limiting with governor's GCRA: refuse at once by default, or wait a bounded time.
//! (go-micro's uber wrapper blocked forever ignoring deadlines; here a wait never outlives the
//! call's `grpc-timeout`.)

mod layer;

pub use layer::RateLimitLayer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use tower::Service;

use crate::grpc::grpc_timeout;

pub(crate) type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
    per_second: u32,
    max_wait: Option<Duration>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("per_second", &self.per_second)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    fn new(inner: S, limiter: Arc<Limiter>, per_second: u32, max_wait: Option<Duration>) -> Self {
        RateLimit {
            inner,
            limiter,
            per_second,
            max_wait,
        }
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RateLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // Take the service that was driven to readiness; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        let per_second = self.per_second;
        let budget = self
            .max_wait
            .map(|max| grpc_timeout(request.headers()).map_or(max, |d| d.min(max)));
        Box::pin(async move {
            let mut waited = Duration::ZERO;
            loop {
                let not_until = match limiter.check() {
                    Ok(()) => return inner.call(request).await,
                    Err(not_until) => not_until,
                };
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                match budget {
                    Some(budget) if waited + wait <= budget => {
                        tokio::time::sleep(wait).await;
                        waited += wait;
                    }
                    _ => {
                        let status = tonic::Status::resource_exhausted(format!(
                            "rate limit of {per_second}/s exceeded; retry in {} ms",
                            wait.as_millis().max(1)
                        ));
                        return Ok(status.into_http());
                    }
                }
            }
        })
    }
}
