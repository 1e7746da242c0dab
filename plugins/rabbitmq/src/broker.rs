//! [`RabbitBroker`]: the [`Broker`] trait over one RabbitMQ connection.

use std::sync::Arc;

use async_trait::async_trait;
use micro_core::broker::{Broker, Handler, Message, SubscribeOptions, Subscription};
use micro_core::{Error, Result};
use tokio::time::Instant;
use tracing::debug;

use crate::NAME;
use crate::config::RabbitConfig;
use crate::connection::{Connector, Routed};
use crate::headers;
use crate::subscriber::RabbitSubscription;

/// A [`Broker`] on RabbitMQ: topics are routing keys on a durable topic exchange, queue groups
/// are durable queues, messages are persistent and confirmed. Clones share one connection.
#[derive(Clone)]
pub struct RabbitBroker {
    connector: Arc<Connector>,
}

impl RabbitBroker {
    /// Connects to `config.address` and declares the exchanges. Fails if RabbitMQ cannot be
    /// reached now; once connected, a lost connection is re-established in the background.
    pub async fn connect(config: RabbitConfig) -> Result<Self> {
        Ok(RabbitBroker {
            connector: Connector::connect(config).await?,
        })
    }

    /// The configuration this broker runs with.
    pub fn config(&self) -> &RabbitConfig {
        &self.connector.config
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
        let config = &self.connector.config;
        let properties = headers::properties(&message)?;
        let deadline = Instant::now() + config.publish_timeout;
        match self
            .connector
            .publish(
                &config.exchange,
                topic,
                &message.body,
                &properties,
                deadline,
            )
            .await?
        {
            Routed::Queued => Ok(()),
            Routed::Unroutable(reason) if config.require_route => Err(Error::backend_msg(
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
        let subscription =
            RabbitSubscription::start(self.connector.clone(), topic, options.queue, handler)
                .await?;
        Ok(Box::new(subscription))
    }
}
