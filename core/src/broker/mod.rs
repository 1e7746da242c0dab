//! Publish/subscribe messaging.
//!
//! Subscribers that name the same queue share a topic's messages (each message goes to one of
//! them); subscribers without a queue each get every message. A handler's `Err` means the message
//! was not processed: the broker redelivers it, or dead-letters it after a plugin-defined number
//! of attempts, and never drops it silently.
//!
//! A topic is a name every broker routes the same way ([`validate_topic`]): not empty, no
//! whitespace, no wildcard; brokers refuse other topics on publish and subscribe.

#[cfg(feature = "conformance")]
pub mod conformance;
mod deliver;
mod observed;
mod task;
mod topic;
mod typed;

pub use deliver::{Failure, MAX_REASON_LEN, deliver};
pub(crate) use observed::observed;
pub use task::TaskSubscription;
pub use topic::{MAX_TOPIC_LEN, validate_topic};
pub(crate) use typed::decoding;
pub use typed::{PROTOBUF, Reject, encode, is_rejection, typed};

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::{BoxError, Result};

/// A message: string headers and an opaque body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Headers, carried as the backend's message headers.
    pub header: BTreeMap<String, String>,
    /// The payload.
    pub body: Bytes,
}

impl Message {
    /// A message with `body` and no headers.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message {
            header: BTreeMap::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.header.insert(key.into(), value.into());
        self
    }
}

/// What a handler returns: `Err` asks for redelivery.
pub type HandlerResult = std::result::Result<(), BoxError>;

/// A message handler, shared by every delivery of a subscription.
pub type Handler = Arc<dyn Fn(Message) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |message| Box::pin(f(message)))
}

/// How to subscribe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Subscribers with the same queue name share messages; `None` gets every message.
    pub queue: Option<String>,
}

impl SubscribeOptions {
    /// Share messages with every subscriber of the queue `name`.
    pub fn queue(name: impl Into<String>) -> Self {
        SubscribeOptions {
            queue: Some(name.into()),
        }
    }
}

/// A live subscription. Dropping it without [`unsubscribe`](Subscription::unsubscribe) leaves it
/// running for the life of the broker.
#[async_trait]
pub trait Subscription: Send + Sync {
    /// The topic subscribed to.
    fn topic(&self) -> &str;
    /// Stops delivering; messages already handed to the handler finish first.
    async fn unsubscribe(self: Box<Self>) -> Result<()>;
}

/// Publish/subscribe.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The plugin's name.
    fn name(&self) -> &str;
    /// Publishes `message` on `topic`; returns once the backend has taken responsibility for it.
    async fn publish(&self, topic: &str, message: Message) -> Result<()>;
    /// Calls `handler` for messages on `topic`.
    async fn subscribe(
        &self,
        topic: &str,
        handler: Handler,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>>;
}
