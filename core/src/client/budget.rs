//! The retry budget: retries may add at most a fraction of the calls, so they cannot multiply
//! an outage (a token bucket in the style of Finagle's `RetryBudget` and Envoy's retry budgets).

use std::sync::Mutex;
use std::time::Instant;

/// How many retries a client may make: each call deposits `ratio` of a token, each retry
/// withdraws one, and `min_per_second` tokens are added per second whatever the traffic, so a
/// client making few calls can still retry now and then. The balance is capped at
/// `max(10, min_per_second)` tokens: a long healthy spell does not bank enough to retry every
/// call of the outage that follows.
///
/// The default (`ratio` 0.2, `min_per_second` 5) lets retries add at most about 20 % to the
/// calls a client makes in a steady stream, plus 5 a second and a first burst of 10.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// The share of calls that may be retried (0.2: one retry per five calls).
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic.
    pub min_per_second: f64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 5.0,
        }
    }
}

impl RetryBudget {
    /// No retries at all (every failure is the caller's).
    pub fn none() -> Self {
        RetryBudget {
            ratio: 0.0,
            min_per_second: 0.0,
        }
    }

    /// The most tokens the bucket holds (and what it starts with).
    pub fn cap(&self) -> f64 {
        if self.ratio <= 0.0 && self.min_per_second <= 0.0 {
            0.0
        } else {
            self.min_per_second.max(10.0)
        }
    }
}

/// The bucket of one client.
pub(super) struct Budget {
    config: RetryBudget,
    state: Mutex<State>,
}

struct State {
    balance: f64,
    refilled: Instant,
}

impl Budget {
    pub(super) fn new(config: RetryBudget) -> Self {
        Budget {
            config,
            state: Mutex::new(State {
                balance: config.cap(),
                refilled: Instant::now(),
            }),
        }
    }

    /// A call is made: deposits its share.
    pub(super) fn deposit(&self) {
        if self.config.ratio <= 0.0 {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.balance = (state.balance + self.config.ratio).min(self.config.cap());
    }

    /// Whether a retry may be made now; if so its token is taken.
    pub(super) fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    fn withdraw_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.refilled = state.refilled.max(now);
        state.balance =
            (state.balance + elapsed * self.config.min_per_second).min(self.config.cap());
        if state.balance >= 1.0 {
            state.balance -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_fifth_of_calls_after_the_first_burst() {
        let budget = Budget::new(RetryBudget {
            ratio: 0.2,
            min_per_second: 0.0,
        });
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                retries += 1;
            }
        }
        assert!((200..=211).contains(&retries), "{retries}");
    }

    #[test]
    fn the_minimum_refills_with_time() {
        let budget = Budget::new(RetryBudget {
            ratio: 0.0,
            min_per_second: 5.0,
        });
        let start = Instant::now();
        while budget.withdraw_at(start) {}
        assert!(!budget.withdraw_at(start));
        let later = start + std::time::Duration::from_secs(1);
        let mut allowed = 0;
        while budget.withdraw_at(later) {
            allowed += 1;
        }
        assert_eq!(allowed, 5);
        let none = Budget::new(RetryBudget::none());
        assert!(!none.withdraw());
    }
}
