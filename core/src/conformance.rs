//! Shared helpers of the conformance suites (feature `conformance`).

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};

/// How long a suite waits for something that should happen promptly before failing.
pub const PROMPT: Duration = Duration::from_secs(10);

/// A name no other test run uses, so suites can share one real backend.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// The next item of `stream`, or a panic naming `what` when none comes within [`PROMPT`].
pub async fn next<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    match tokio::time::timeout(PROMPT, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: the stream ended"),
        Err(_) => panic!("{what}: nothing arrived within {PROMPT:?}"),
    }
}

/// Polls `check` every 50 ms until it returns true, panicking with `what` after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > until {
            panic!("{what}: not true within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
