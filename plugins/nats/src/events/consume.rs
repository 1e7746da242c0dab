//! Consuming: creating pull consumers, turning their messages into deliveries, settling them
//! and dead-lettering.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::consumer::FromConsumer;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use micro_core::events::{
    Acknowledger, ConsumeOptions, DEAD_LETTER_SUFFIX, Delivery, Event, dead_letter_metadata,
    dead_letter_topic,
};
use micro_core::{Error, Result};

use super::names::{decode_percent, deliver_policy};
use super::{EPHEMERAL_INACTIVE, ID_HEADER, METADATA_HEADER, NatsEvents, SETTLE_TIMEOUT};

impl NatsEvents {
    /// The pull consumer for `options` on `stream`: the group's durable (created, or updated
    /// to the options' `ack_wait` and `max_deliveries`), or a new ephemeral.
    pub(super) async fn consumer(
        &self,
        topic: &str,
        stream: &stream::Stream,
        options: &ConsumeOptions,
    ) -> Result<jetstream::consumer::PullConsumer> {
        let stream_name = Self::stream_name(topic);
        let max_deliver = i64::from(options.max_deliveries.max(1)) + 1;
        let durable = options.group.as_deref().map(Self::durable_name);
        let config = pull::Config {
            durable_name: durable.clone(),
            description: Some(match &options.group {
                Some(group) => format!("micro events group {group} of topic {topic}"),
                None => format!("micro events consumer of topic {topic}"),
            }),
            deliver_policy: deliver_policy(options.offset),
            ack_policy: AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            max_deliver,
            inactive_threshold: if durable.is_some() {
                Duration::ZERO
            } else {
                EPHEMERAL_INACTIVE
            },
            ..Default::default()
        };
        let Some(durable) = durable else {
            return stream.create_consumer(config).await.map_err(|err| {
                self.err(
                    format!("create a consumer on stream {stream_name} of topic {topic:?}"),
                    err,
                )
            });
        };
        let group = options.group.as_deref().unwrap_or_default();
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(&durable, config)
            .await
            .map_err(|err| {
                self.err(
                    format!("create consumer {durable} of group {group:?} on stream {stream_name}"),
                    err,
                )
            })?;
        let current = &consumer.cached_info().config;
        if current.ack_wait == options.ack_wait && current.max_deliver == max_deliver {
            return Ok(consumer);
        }
        let mut updated = pull::Config {
            ack_wait: options.ack_wait,
            max_deliver,
            ..pull::Config::try_from_consumer_config(current.clone()).map_err(|err| {
                self.err(format!("read consumer {durable} of group {group:?}"), err)
            })?
        };
        updated.durable_name = Some(durable.clone());
        // JetStream 2.9 updates a consumer that is created again with changed settings.
        match stream.create_consumer(updated).await {
            Ok(consumer) => {
                tracing::debug!(%topic, %group, "nats events: group consumer updated");
                Ok(consumer)
            }
            Err(err) => {
                tracing::warn!(
                    %topic, %group, error = %err,
                    "nats events: cannot update the group's ack_wait and max_deliveries; keeping its settings"
                );
                Ok(consumer)
            }
        }
    }

    /// Reads one JetStream message as an event of `topic`.
    pub(super) fn decode(topic: &str, message: &jetstream::Message) -> Result<(Event, u32)> {
        let info = message.info().map_err(|err| Error::Decode {
            what: format!("JetStream metadata of a message of topic {topic:?}"),
            message: err.to_string(),
        })?;
        let mut id = None;
        let mut metadata = BTreeMap::new();
        if let Some(headers) = &message.headers {
            for (name, values) in headers.iter() {
                let name: &str = name.as_ref();
                let Some(value) = values.last() else { continue };
                if name == ID_HEADER {
                    id = Some(value.as_str().to_string());
                } else if let Some(key) = name.strip_prefix(METADATA_HEADER) {
                    metadata.insert(decode_percent(key), decode_percent(value.as_str()));
                }
            }
        }
        let sequence = info.stream_sequence;
        let event = Event {
            id: id.unwrap_or_else(|| format!("{}-{sequence}", info.stream)),
            topic: topic.to_string(),
            sequence,
            timestamp: info.published.into(),
            metadata,
            payload: message.payload.clone(),
        };
        let deliveries = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        Ok((event, deliveries))
    }
}

/// Deletes an ephemeral consumer when its event stream is dropped.
pub(super) struct EphemeralConsumer {
    pub(super) stream: stream::Stream,
    pub(super) name: String,
}

impl Drop for EphemeralConsumer {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the server deletes it once inactive
        };
        let (stream, name) = (self.stream.clone(), std::mem::take(&mut self.name));
        runtime.spawn(async move {
            if let Err(err) = stream.delete_consumer(&name).await {
                tracing::debug!(consumer = %name, error = %err, "nats events: ephemeral consumer not deleted");
            }
        });
    }
}

/// Turns the messages of one pull consumer into deliveries.
pub(super) struct Pump {
    pub(super) events: NatsEvents,
    pub(super) topic: String,
    pub(super) messages: pull::Stream,
    pub(super) max_deliveries: u32,
    pub(super) auto_ack: bool,
    pub(super) _ephemeral: Option<EphemeralConsumer>,
}

impl Pump {
    /// The next delivery or error; `None` when the consumer is gone.
    pub(super) async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(err) if err.kind() == MessagesErrorKind::MissingHeartbeat => continue,
                Err(err) => {
                    tracing::debug!(topic = %self.topic, error = %err, "nats events: pull failed");
                    return Some(Err(self
                        .events
                        .err(format!("consume topic {:?}", self.topic), err)));
                }
            };
            match self.deliver(message).await {
                Ok(Some(delivery)) => return Some(Ok(delivery)),
                Ok(None) => continue,
                Err(err) => return Some(Err(err)),
            }
        }
    }

    async fn deliver(&self, message: jetstream::Message) -> Result<Option<Delivery>> {
        let (event, deliveries) = NatsEvents::decode(&self.topic, &message)?;
        let Some(reply) = message.reply.clone() else {
            return Err(self.events.err_msg(format!(
                "event {} of topic {:?} came without an ack subject",
                event.id, self.topic
            )));
        };
        let settle = Settle {
            events: self.events.clone(),
            reply,
            topic: self.topic.clone(),
            sequence: event.sequence,
        };
        if deliveries > self.max_deliveries {
            // The last allowed delivery was not acknowledged in time.
            dead_letter(&self.events, &self.topic, &event, self.max_deliveries).await?;
            settle.send(AckKind::Term).await?;
            return Ok(None);
        }
        if self.auto_ack {
            settle.send(AckKind::Ack).await?;
        }
        let acknowledger = NatsAcknowledger {
            settle,
            last: (deliveries >= self.max_deliveries).then(|| event.clone()),
            deliveries,
            settled: self.auto_ack,
        };
        Ok(Some(Delivery::new(
            event,
            deliveries,
            Box::new(acknowledger),
        )))
    }
}

/// Publishes `event` of `topic` to the dead-letter topic after `deliveries`.
async fn dead_letter(
    events: &NatsEvents,
    topic: &str,
    event: &Event,
    deliveries: u32,
) -> Result<Event> {
    let metadata = dead_letter_metadata(event, deliveries);
    let target = dead_letter_topic(topic);
    let id = format!("{}{DEAD_LETTER_SUFFIX}", event.id);
    let dead = events
        .append(&target, id, event.payload.clone(), metadata)
        .await?;
    tracing::warn!(
        %topic,
        id = %event.id,
        sequence = event.sequence,
        deliveries,
        dead_letter_topic = %target,
        "nats events: event dead-lettered"
    );
    Ok(dead)
}

/// Sends `+ACK`, `-NAK` or `+TERM` for one delivery and waits for the server's confirmation.
struct Settle {
    events: NatsEvents,
    reply: Subject,
    topic: String,
    sequence: u64,
}

impl Settle {
    async fn send(&self, kind: AckKind) -> Result<()> {
        let what = match kind {
            AckKind::Ack => "ack",
            AckKind::Nak(_) => "nack",
            AckKind::Term => "terminate",
            _ => "settle",
        };
        let request = (self.events.client).request(self.reply.clone(), Bytes::from(kind));
        let failed = |why: String| {
            self.events.err_msg(format!(
                "{what} event {} of topic {:?}: {why}",
                self.sequence, self.topic
            ))
        };
        match tokio::time::timeout(SETTLE_TIMEOUT, request).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(failed(err.to_string())),
            Err(_) => Err(failed(format!("no confirmation within {SETTLE_TIMEOUT:?}"))),
        }
    }
}

/// What [`Delivery::ack`] and [`Delivery::nack`] call for a JetStream delivery.
struct NatsAcknowledger {
    settle: Settle,
    /// The event, on its last allowed delivery: a nack dead-letters it.
    last: Option<Event>,
    deliveries: u32,
    /// Already acknowledged (auto-ack).
    settled: bool,
}

#[async_trait]
impl Acknowledger for NatsAcknowledger {
    async fn ack(&self) -> Result<()> {
        if self.settled {
            return Ok(());
        }
        self.settle.send(AckKind::Ack).await
    }

    async fn nack(&self) -> Result<()> {
        if self.settled {
            return Ok(());
        }
        match &self.last {
            Some(event) => {
                let settle = &self.settle;
                dead_letter(&settle.events, &settle.topic, event, self.deliveries).await?;
                self.settle.send(AckKind::Term).await
            }
            None => self.settle.send(AckKind::Nak(None)).await,
        }
    }
}
