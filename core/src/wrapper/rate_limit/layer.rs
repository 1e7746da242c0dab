use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{Quota, RateLimiter};
use tower::Layer;

use super::{Limiter, RateLimit};

/// Limits calls to `n` per second with a burst, on a server (all handlers or one endpoint) or
/// a client. Over the limit a call is answered `RESOURCE_EXHAUSTED` at once, or, built with
/// [`wait`](RateLimitLayer::wait), waits for a permit no longer than the bound and the call's
/// own deadline. Every service made by one layer shares one limiter.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
    per_second: NonZeroU32,
    max_wait: Option<Duration>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("per_second", &self.per_second)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// `n` calls per second, burst of `n` (`n` is raised to 1 when 0).
    pub fn per_second(n: u32) -> Self {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self::with_quota(n, n, None)
    }

    /// The same rate with a burst of `burst` calls (raised to 1 when 0).
    pub fn burst(self, burst: u32) -> Self {
        Self::with_quota(
            self.per_second,
            NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
            self.max_wait,
        )
    }

    /// Over the limit, wait up to `max` (and never past the call's deadline) instead of
    /// refusing at once.
    pub fn wait(mut self, max: Duration) -> Self {
        self.max_wait = Some(max);
        self
    }

    fn with_quota(per_second: NonZeroU32, burst: NonZeroU32, max_wait: Option<Duration>) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        RateLimitLayer {
            limiter: Arc::new(RateLimiter::direct(quota)),
            per_second,
            max_wait,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(
            inner,
            self.limiter.clone(),
            self.per_second.get(),
            self.max_wait,
        )
    }
}
