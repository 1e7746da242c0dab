//! Rate limiting per client IP. Keys are pruned on a timer (governor's keyed limiter otherwise
//! grows by one entry per client for ever).

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// A limiter of `rate` requests per second with a burst, per client IP.
pub struct ClientLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for ClientLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("clients", &self.limiter.len())
            .finish()
    }
}

impl ClientLimiter {
    /// `rate` per second, `burst` at once (each raised to 1 when 0).
    pub fn new(rate: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        ClientLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }

    /// `Ok` to proceed, or the whole seconds to wait for `Retry-After`: at least 1, also when the
    /// next permit is due by the time this is computed (a `Retry-After: 0` invites a busy loop).
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        self.limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }

    /// Forgets clients whose state is back to fresh.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// How many clients are tracked.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_excess_and_forgets_idle_clients() {
        let limiter = ClientLimiter::new(1000, 2);
        let one: IpAddr = [10, 0, 0, 1].into();
        assert!(limiter.check(one).is_ok());
        assert!(limiter.check(one).is_ok());
        assert_eq!(
            limiter.check(one),
            Err(1),
            "third at once is refused, retry after 1 s"
        );
        for i in 0..2000u32 {
            let _ = limiter.check(IpAddr::from(i.to_be_bytes()));
        }
        assert!(limiter.tracked() >= 2000);
        std::thread::sleep(std::time::Duration::from_millis(50));
        limiter.prune();
        assert!(
            limiter.tracked() < 10,
            "idle clients are pruned, {} left",
            limiter.tracked()
        );
    }
}
