//! Every broker the catalog builds, observed: the publisher's trace context carried in the
//! message headers and continued by each delivery, and publishes and deliveries counted by
//! topic and result, with the handler's latency (see [`crate::metrics`]).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument;

use super::{
    Broker, Handler, HandlerResult, Message, SubscribeOptions, Subscription, is_rejection,
    validate_topic,
};
use crate::Result;

/// The topic label of a publish refused for its topic: one label for every bad name, so
/// garbage topics cannot grow the set of series.
const INVALID_TOPIC: &str = "invalid";

/// `broker`, observed.
pub(crate) fn observed(broker: Arc<dyn Broker>) -> Arc<dyn Broker> {
    Arc::new(Observed { inner: broker })
}

struct Observed {
    inner: Arc<dyn Broker>,
}

#[async_trait]
impl Broker for Observed {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn publish(&self, topic: &str, mut message: Message) -> Result<()> {
        crate::trace::inject_message(&mut message);
        let result = self.inner.publish(topic, message).await;
        let label = if validate_topic(topic).is_ok() {
            topic
        } else {
            INVALID_TOPIC
        };
        crate::metrics::published(label, result.is_ok());
        result
    }

    async fn subscribe(
        &self,
        topic: &str,
        handler: Handler,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>> {
        let name: Arc<str> = topic.into();
        let observed: Handler = Arc::new(move |message: Message| {
            let span = crate::trace::message_span(&name, &message);
            let handler = handler.clone();
            let mut delivery = Delivery {
                topic: name.clone(),
                started: Instant::now(),
                result: None,
            };
            Box::pin(
                async move {
                    let result: HandlerResult = handler(message).await;
                    delivery.ended(&result);
                    result
                }
                .instrument(span),
            )
        });
        self.inner.subscribe(topic, observed, options).await
    }
}

/// One delivery, counted when it is dropped: with its result, or as `panicked` when the handler
/// panicked (the broker's `deliver` catches it and retries) or `cancelled` when it was dropped
/// unfinished (an unsubscribe, a stopping process).
struct Delivery {
    topic: Arc<str>,
    started: Instant,
    result: Option<&'static str>,
}

impl Delivery {
    /// The handler returned `result`.
    fn ended(&mut self, result: &HandlerResult) {
        self.result = Some(match result {
            Ok(()) => "ok",
            Err(e) if is_rejection(e) => "rejected",
            Err(_) => "error",
        });
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let result = self.result.unwrap_or(if std::thread::panicking() {
            "panicked"
        } else {
            "cancelled"
        });
        crate::metrics::consumed(&self.topic, result, self.started.elapsed());
    }
}
