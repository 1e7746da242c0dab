//! [`RabbitBroker`]: the [`Broker`] trait over one RabbitMQ connection.

use std::sync::Arc;

use async_trait::async_trait;
use micro_core::broker::{
    Broker, Handler, Message, SubscribeOptions, Subscription, validate_topic,
};
use micro_core::{Error, Result};
use tokio::time::Instant;
use tracing::debug;

use crate::NAME;
use crate::connection::{Connector, Routed};
use crate::headers;
use crate::options::RabbitOptions;
use crate::subscriber;

/// A [`Broker`] on RabbitMQ: topics are routing keys on a durable topic exchange, queue groups
/// are durable queues, messages are persistent and confirmed. Clones share one connection.
#[derive(Clone)]
pub struct RabbitBroker {
    connector: Arc<Connector>,
}

impl std::fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("options", &self.connector.options)
            .finish_non_exhaustive()
    }
}

impl RabbitBroker {
    /// Connects to `options.address` and declares the exchanges. Fails if RabbitMQ cannot be
    /// reached now; once connected, a lost connection is re-established in the background.
    pub async fn connect(options: RabbitOptions) -> Result<Self> {
        Ok(RabbitBroker {
            connector: Connector::connect(options).await?,
        })
    }

    /// The options this broker runs with.
    pub fn options(&self) -> &RabbitOptions {
        &self.connector.options
    }

    /// Stops every subscription and closes the connection without waiting for running handlers:
    /// what they have not acknowledged yet goes back to its queue, for another subscriber (or
    /// this process, next time). Publishing afterwards is an error.
    pub async fn close(&self) {
        self.connector.close().await;
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    fn name(&self) -> &str {
        NAME
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        validate_topic(topic)?;
        let options = &self.connector.options;
        let properties = headers::properties(&message)?;
        let deadline = Instant::now() + options.publish_timeout;
        match self
            .connector
            .publish(
                &options.exchange,
                topic,
                &message.body,
                &properties,
                deadline,
            )
            .await?
        {
            Routed::Queued => Ok(()),
            Routed::Unroutable(reason) if options.require_route => Err(Error::backend_msg(
                "broker",
                NAME,
                format!(
                    "publish to topic {topic:?} on {}: no queue is bound for it ({reason})",
                    self.connector.address
                ),
            )),
            Routed::Unroutable(_) => {
                // go-micro semantics: publishing to a topic nobody subscribes to is not an error.
                debug!(
                    topic,
                    "rabbitmq: no subscriber for topic; message discarded"
                );
                Ok(())
            }
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        handler: Handler,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>> {
        validate_topic(topic)?;
        let subscription =
            subscriber::subscribe(self.connector.clone(), topic, options.queue, handler).await?;
        Ok(Box::new(subscription))
    }
}
