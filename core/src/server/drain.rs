//! Counting the calls in the user's handlers, so that a stopping server keeps serving (and
//! answering health checks with NOT_SERVING) until they are done, and only then stops accepting.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::http;
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::wrapper::HandlerService;

/// How many calls are in the handlers now.
#[derive(Debug, Clone)]
pub(super) struct InFlight(watch::Sender<usize>);

impl InFlight {
    /// Completes when no call is in the handlers (at once if none is).
    pub(super) async fn idle(&self) {
        let mut count = self.0.subscribe();
        // The sender is `self`: the channel cannot close while this waits.
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// The number of calls in the handlers.
    pub(super) fn count(&self) -> usize {
        *self.0.borrow()
    }

    fn enter(&self) -> Entered {
        self.0.send_modify(|n| *n += 1);
        Entered(self.0.clone())
    }
}

/// One call counted until it is dropped: answered, failed or cancelled alike.
struct Entered(watch::Sender<usize>);

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// `handlers`, counting the calls in them (until each returns its response head).
pub(super) fn counted(handlers: HandlerService) -> (HandlerService, InFlight) {
    let in_flight = InFlight(watch::Sender::new(0));
    let service = Counted {
        inner: handlers,
        in_flight: in_flight.clone(),
    };
    (BoxCloneSyncService::new(service), in_flight)
}

#[derive(Clone)]
struct Counted {
    inner: HandlerService,
    in_flight: InFlight,
}

impl Service<http::Request<Body>> for Counted {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let entered = self.in_flight.enter();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(entered);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_calls_until_they_answer_or_are_dropped() {
        let (gate_tx, gate) = watch::channel(false);
        let slow = tower::service_fn(move |_request: http::Request<Body>| {
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, Infallible>(http::Response::new(Body::empty()))
            }
        });
        let (mut counted, in_flight) = counted(BoxCloneSyncService::new(slow));
        assert_eq!(in_flight.count(), 0);
        in_flight.idle().await;
        let answered = tokio::spawn(counted.call(http::Request::new(Body::empty())));
        let cancelled = counted.call(http::Request::new(Body::empty()));
        assert_eq!(in_flight.count(), 2);
        drop(cancelled);
        assert_eq!(
            in_flight.count(),
            1,
            "a dropped call is no longer in flight"
        );
        let idle = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.idle().await }
        });
        assert!(!idle.is_finished());
        let _ = gate_tx.send(true);
        answered.await.expect("call task").expect("answer");
        idle.await.expect("idle once the call answered");
        assert_eq!(in_flight.count(), 0);
    }
}
