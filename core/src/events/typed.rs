//! Event handlers, and typed ones over prost messages: what
//! [`Server::consume`](crate::Server::consume) runs for each delivery.
//!
//! A handler's `Ok` acknowledges the event, an `Err` asks for it again (a nack, counting a
//! delivery), and a [`Reject`](super::Reject) (what [`typed`] answers for a payload that does
//! not decode) dead-letters it at once: it could never be processed.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Event, Events};
use crate::Result;
use crate::broker::{HandlerResult, PROTOBUF, decoding};

/// An event handler, shared by every delivery of a consumer: `Ok` acks, `Err` nacks, a
/// [`Reject`](super::Reject) dead-letters at once.
pub type Handler = Arc<dyn Fn(Event) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |event| Box::pin(f(event)))
}

/// A [`Handler`] that decodes each payload as `M` before calling `handler`; a payload that does
/// not decode is a [`Reject`](super::Reject) naming the type (dead-lettered at once, never
/// redelivered).
pub fn typed<M, F, Fut>(handler: F) -> Handler
where
    M: prost::Message + Default + 'static,
    F: Fn(M, Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    decoding(|event: &Event| event.payload.clone(), handler)
}

/// The metadata typed events carry: `content-type: application/protobuf`.
pub fn protobuf_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([("content-type".to_string(), PROTOBUF.to_string())])
}

impl dyn Events {
    /// Publishes a prost message on `topic` (with [`protobuf_metadata`]) and returns the event
    /// as stored.
    pub async fn publish_message<M: prost::Message>(
        &self,
        topic: &str,
        message: &M,
    ) -> Result<Event> {
        self.publish(topic, message.encode_to_vec().into(), protobuf_metadata())
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::BoxError;
    use crate::broker::is_rejection;

    fn event(payload: Vec<u8>) -> Event {
        Event {
            id: "e1".into(),
            topic: "t".into(),
            sequence: 1,
            timestamp: SystemTime::now(),
            metadata: protobuf_metadata(),
            payload: payload.into(),
        }
    }

    #[tokio::test]
    async fn decodes_or_rejects_naming_the_type() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let handler = typed(move |value: prost_types::Duration, event: Event| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .expect("lock")
                    .push((value.seconds, event.sequence));
                Ok(())
            }
        });
        let good = prost::Message::encode_to_vec(&prost_types::Duration {
            seconds: 7,
            nanos: 0,
        });
        handler(event(good)).await.expect("decodes");
        assert_eq!(*seen.lock().expect("lock"), [(7, 1)]);
        let error = handler(event(vec![0xff, 0xff, 0xff]))
            .await
            .expect_err("garbage is rejected");
        assert!(is_rejection(&error), "{error}");
        assert!(
            error.to_string().contains("Duration"),
            "names the type: {error}"
        );
        let plain = super::handler(|_| async { Err::<(), BoxError>("busy".into()) });
        let error = plain(event(Vec::new())).await.expect_err("fails");
        assert!(!is_rejection(&error), "a plain error is not a rejection");
    }
}
