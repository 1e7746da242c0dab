//! Waiting on a condition with a deadline, never a fixed sleep.

use std::time::{Duration, Instant};

/// Polls an async `check` until it is true, panicking with `what` after a deadline: the one
/// the conformance suites of `micro-core` use. A check that is not async reads
/// `|| async { condition }`.
pub use micro_core::conformance::eventually;

/// Polls `check` every 25 ms, blocking the thread, until it is true; panics naming `what` after
/// `deadline`. Returns how long it took. For tests without a runtime (processes, raw HTTP).
pub fn wait_until(deadline: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    started.elapsed()
}
