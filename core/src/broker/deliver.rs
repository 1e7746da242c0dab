//! One delivery to a handler, and what its failure calls for: what every broker that retries
//! runs for each message.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use super::{Handler, Message, is_rejection};

/// How a handler failed a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The handler's error, or what it panicked with.
    pub reason: String,
    /// Whether the handler [`Reject`](super::Reject)ed the message: retrying cannot help.
    pub rejected: bool,
}

/// The longest reason, in bytes, a dead letter carries in its headers.
pub const MAX_REASON_LEN: usize = 1024;

impl Failure {
    /// The reason as a dead letter's header carries it: control characters as spaces, cut to
    /// [`MAX_REASON_LEN`] bytes.
    pub fn header_reason(&self) -> String {
        let mut reason: String = self
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if reason.len() > MAX_REASON_LEN {
            let mut cut = MAX_REASON_LEN;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        reason
    }

    /// Whether the message is dead-lettered now, after delivery `attempt` (from 1) of at most
    /// `max_attempts`, rather than retried.
    pub fn dead_letters(&self, attempt: u32, max_attempts: u32) -> bool {
        self.rejected || attempt >= max_attempts
    }
}

/// Runs `handler` on `message`. A panic, in the call or in the future it returns, is a failure
/// to retry, like an error.
pub async fn deliver(handler: &Handler, message: Message) -> Result<(), Failure> {
    let panicked = |panic: Box<dyn std::any::Any + Send>| Failure {
        reason: panic_text(panic.as_ref()),
        rejected: false,
    };
    let future =
        std::panic::catch_unwind(AssertUnwindSafe(|| handler(message))).map_err(panicked)?;
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure {
            reason: e.to_string(),
            rejected: is_rejection(&e),
        }),
        Err(panic) => Err(panicked(panic)),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into());
    format!("the handler panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Reject, handler};

    #[tokio::test]
    async fn errors_rejections_and_panics_are_failures() {
        let ok = handler(|_| async { Ok(()) });
        assert_eq!(deliver(&ok, Message::default()).await, Ok(()));
        let rejecting = handler(|_| async { Err(Reject("bad".into()).into()) });
        let failure = deliver(&rejecting, Message::default()).await.unwrap_err();
        assert!(
            failure.rejected && failure.dead_letters(1, 5),
            "{failure:?}"
        );
        let panicking = handler(|_| async { panic!("boom") });
        let failure = deliver(&panicking, Message::default()).await.unwrap_err();
        assert_eq!(failure.reason, "the handler panicked: boom");
        assert!(!failure.dead_letters(4, 5) && failure.dead_letters(5, 5));
        let long = Failure {
            reason: format!("a\nb{}", "é".repeat(MAX_REASON_LEN)),
            rejected: false,
        };
        let header = long.header_reason();
        assert!(
            header.starts_with("a b") && header.len() <= MAX_REASON_LEN,
            "{header}"
        );
    }
}
