//! Typed messages: prost messages in, prost messages out.
//!
//! A message that cannot be decoded can never be processed, so its handler answers [`Reject`]:
//! brokers dead-letter a rejected message at once instead of redelivering it.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Broker, Handler, HandlerResult, Message};
use crate::{BoxError, Result};

/// The content type typed messages carry.
pub const PROTOBUF: &str = "application/protobuf";

/// A handler error meaning "never retry this message: dead-letter it now".
#[derive(Debug, thiserror::Error)]
#[error("rejected: {0}")]
pub struct Reject(pub String);

/// Whether a handler error is a [`Reject`].
pub fn is_rejection(error: &BoxError) -> bool {
    error.downcast_ref::<Reject>().is_some()
}

/// A [`Handler`] that decodes each message as `M` before calling `handler`; a message that does
/// not decode is rejected (dead-lettered), naming the type.
pub fn typed<M, F, Fut>(handler: F) -> Handler
where
    M: prost::Message + Default + 'static,
    F: Fn(M, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    decoding(|message: &Message| message.body.clone(), handler)
}

/// A handler of `T` (a broker message, an event) that decodes `body(&item)` as `M` before
/// calling `handler`; a body that does not decode is a [`Reject`] naming the type. What
/// [`typed`] and [`events::typed`](crate::events::typed) build.
pub(crate) fn decoding<T, M, F, Fut>(
    body: fn(&T) -> bytes::Bytes,
    handler: F,
) -> Arc<dyn Fn(T) -> BoxFuture<'static, HandlerResult> + Send + Sync>
where
    T: Send + 'static,
    M: prost::Message + Default + 'static,
    F: Fn(M, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |item: T| {
        let handler = handler.clone();
        let decoded = M::decode(body(&item)).map_err(|e| {
            Reject(format!(
                "cannot decode a {}: {e}",
                std::any::type_name::<M>()
            ))
        });
        Box::pin(async move {
            match decoded {
                Ok(decoded) => handler(decoded, item).await,
                Err(reject) => Err(Box::new(reject) as BoxError),
            }
        })
    })
}

/// `message` encoded as a broker [`Message`] with the protobuf content type.
pub fn encode<M: prost::Message>(message: &M) -> Message {
    Message::new(message.encode_to_vec()).with_header("content-type", PROTOBUF)
}

impl dyn Broker {
    /// Publishes a prost message on `topic`.
    pub async fn publish_message<M: prost::Message>(&self, topic: &str, message: &M) -> Result<()> {
        self.publish(topic, encode(message)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn decodes_or_rejects() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let handler = typed(move |value: prost_types::Duration, _| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push(value.seconds);
                Ok(())
            }
        });
        let good = encode(&prost_types::Duration {
            seconds: 7,
            nanos: 0,
        });
        assert_eq!(good.header["content-type"], PROTOBUF);
        handler(good).await.expect("decodes");
        assert_eq!(*seen.lock().expect("lock"), [7]);
        let error = handler(Message::new(vec![0xff, 0xff, 0xff]))
            .await
            .expect_err("garbage is rejected");
        assert!(is_rejection(&error), "{error}");
        assert!(
            error.to_string().contains("Duration"),
            "names the type: {error}"
        );
    }
}
