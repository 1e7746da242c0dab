//! Event consumers run by the server ([`Server::consume`](super::Server::consume)): each takes
//! one delivery at a time, runs the handler, and settles the delivery by its answer — `Ok` acks,
//! `Err` (or a panic) nacks, a [`Reject`](crate::events::Reject) dead-letters at once. A stream
//! that fails or ends is consumed again, backing off, until the server stops.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::events::{
    ConsumeOptions, Delivery, EventStream, Events, Handler, dead_letter, dead_letter_metadata,
    dead_letter_topic, is_rejection,
};
use crate::{BoxError, Result};

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A consumer the server starts at start.
pub(super) struct Consumption {
    pub(super) events: Arc<dyn Events>,
    pub(super) topic: String,
    pub(super) options: ConsumeOptions,
    pub(super) handler: Handler,
}

/// A started consumer; dropping it stops it too.
pub(super) struct RunningConsumer {
    pub(super) topic: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Consumption {
    /// Starts consuming: an error (a bad topic or group, a backend that cannot be reached) fails
    /// the server's start.
    pub(super) async fn start(self) -> Result<RunningConsumer> {
        let stream = self
            .events
            .consume(&self.topic, self.options.clone())
            .await?;
        let (group, offset) = (&self.options.group, self.options.offset);
        tracing::info!(topic = %self.topic, ?group, ?offset, events = self.events.name(), "consuming");
        let (stop, stopped) = watch::channel(false);
        let topic = self.topic.clone();
        let task = tokio::spawn(self.run(stream, stopped));
        Ok(RunningConsumer { topic, stop, task })
    }

    async fn run(self, mut stream: EventStream, mut stop: watch::Receiver<bool>) {
        let mut backoff = RETRY_FIRST;
        loop {
            let item = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                item = stream.next() => item,
            };
            let ended = match item {
                Some(Ok(delivery)) => {
                    backoff = RETRY_FIRST;
                    self.handle(delivery).await;
                    continue;
                }
                Some(Err(e)) => {
                    let topic = &self.topic;
                    tracing::warn!(%topic, error = %e, retry_in = ?backoff, "event stream failed");
                    false
                }
                None => {
                    let topic = &self.topic;
                    tracing::warn!(%topic, retry_in = ?backoff, "event stream ended; consuming again");
                    true
                }
            };
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
            if ended {
                match self.events.consume(&self.topic, self.options.clone()).await {
                    Ok(again) => stream = again,
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, error = %e, "consuming again failed")
                    }
                }
            }
        }
    }

    /// Runs the handler on one delivery and settles it by the answer.
    async fn handle(&self, delivery: Delivery) {
        let event = delivery.event.clone();
        let span = tracing::info_span!(
            "consume",
            topic = %event.topic,
            id = %event.id,
            sequence = event.sequence,
            deliveries = delivery.deliveries
        );
        let handled = AssertUnwindSafe((self.handler)(event))
            .catch_unwind()
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| Err(BoxError::from("the handler panicked")));
        self.settle(delivery, handled).instrument(span).await;
    }

    async fn settle(&self, delivery: Delivery, handled: std::result::Result<(), BoxError>) {
        let auto_ack = self.options.auto_ack;
        match handled {
            Ok(()) if auto_ack => {}
            Ok(()) => {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!(error = %e, "ack failed; the event will come again");
                }
            }
            Err(error) if is_rejection(&error) => {
                tracing::warn!(%error, "handler rejected the event");
                let dead = if auto_ack {
                    let event = &delivery.event;
                    let topic = dead_letter_topic(&event.topic);
                    let metadata = dead_letter_metadata(event, delivery.deliveries);
                    self.events
                        .publish(&topic, event.payload.clone(), metadata)
                        .await
                        .map(drop)
                } else {
                    dead_letter(&*self.events, delivery).await.map(drop)
                };
                if let Err(e) = dead {
                    tracing::error!(error = %e, "cannot dead-letter a rejected event");
                }
            }
            Err(error) if auto_ack => {
                tracing::warn!(%error, "handler failed; with auto_ack it is not delivered again");
            }
            Err(error) => {
                tracing::warn!(%error, "handler failed; the event will be delivered again");
                if let Err(e) = delivery.nack().await {
                    tracing::warn!(error = %e, "nack failed; the event comes again after ack_wait");
                }
            }
        }
    }
}

impl RunningConsumer {
    /// Stops taking deliveries and waits, at most `timeout`, for the one being handled.
    pub(super) async fn stop(self, timeout: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
            let waited = humantime::format_duration(timeout);
            tracing::warn!(topic = %self.topic, %waited, "a handler still ran; stopped anyway (its event comes again)");
        }
    }
}
