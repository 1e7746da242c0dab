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

/// Awaits `attempt`, which must fail, and asserts its error names each of `names` (addresses,
/// say); returns the error's text for further checks.
pub async fn error_naming<T, E: std::fmt::Display>(
    names: &[&str],
    attempt: impl std::future::Future<Output = Result<T, E>>,
) -> String {
    let text = match attempt.await {
        Ok(_) => panic!("expected an error naming {names:?}, got Ok"),
        Err(err) => err.to_string(),
    };
    for name in names {
        assert!(text.contains(name), "names {name}: {text}");
    }
    text
}

/// [`error_naming`], and the error comes within `within`: a prompt failure, not a hang.
pub async fn prompt_error<T, E: std::fmt::Display>(
    within: Duration,
    names: &[&str],
    attempt: impl std::future::Future<Output = Result<T, E>>,
) -> String {
    let started = Instant::now();
    let text = error_naming(names, attempt).await;
    assert!(
        started.elapsed() < within,
        "took {:?} (want < {within:?}): {text}",
        started.elapsed()
    );
    text
}
