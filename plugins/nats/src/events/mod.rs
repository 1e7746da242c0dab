//! [`Events`] on NATS JetStream: [`NatsEvents`].
//!
//! # How topics, groups and events map onto JetStream
//!
//! - **One stream per topic.** Topic `orders.created` is stored in the stream
//!   `MICRO_EVENTS_orders_2Ecreated` (see [`NatsEvents::stream_name`]), whose one subject is
//!   `micro.events.orders.created` ([`NatsEvents::subject`]). JetStream numbers messages per
//!   stream, so with one stream per topic the stream sequence *is* the topic's sequence
//!   ([`Event::sequence`]: 1, 2, 3, ...). Streams are created on first use (publish or consume)
//!   with file storage and limits retention (every event is kept, unless
//!   [`NatsEvents::with_max_age`] says otherwise), and direct gets allowed.
//! - **Names.** Stream and consumer names cannot hold `.`, `*`, `>` or whitespace, so a topic or
//!   group is escaped: ASCII letters, digits and `-` stay, every other byte becomes `_XX` (its
//!   hex). The escaping is one-to-one, so two topics never share a stream. A name that would
//!   exceed 255 bytes is cut and ends with `_00` and a 64-bit hash of the whole name.
//! - **Groups** are durable pull consumers named after the group ([`NatsEvents::durable_name`]):
//!   every member pulls from the same consumer, so each event goes to one member, and the
//!   consumer's ack floor is the group's position. [`Offset`] is the consumer's deliver policy
//!   (`Latest` → `new`, `Earliest` → `all`, `Time` → `by_start_time`, `Sequence(n)` →
//!   `by_start_sequence`, `Sequence(0)` → `all`), applied when the consumer is created; a group
//!   consumed again with another `ack_wait` or `max_deliveries` has its consumer updated.
//! - **No group**: an ephemeral pull consumer, deleted when the [`EventStream`] is dropped (or,
//!   if the process dies, by the server after ten minutes without a pull).
//! - **Acknowledgement.** Ack policy `explicit`; [`Delivery::ack`] sends `+ACK` and
//!   [`Delivery::nack`] `-NAK`, each waiting for the server to confirm, so an `Ok` from `ack`
//!   means the server recorded it. `ack_wait` is the consumer's `ack_wait`; with `auto_ack` the
//!   event is acknowledged (confirmed) before it is handed over, and `ack`/`nack` do nothing.
//! - **Dead letters.** The consumer's `max_deliver` is `max_deliveries + 1`. On the last allowed
//!   delivery a `nack` publishes the event to [`dead_letter_topic`] and terminates it (`+TERM`);
//!   when the last allowed delivery is not acknowledged in time, JetStream delivers it once more
//!   and that extra delivery is dead-lettered and terminated by whichever member receives it,
//!   without reaching the handler. The dead-letter event has the original's payload and
//!   metadata plus `x-micro-original-id`, `x-micro-original-sequence` and `x-micro-deliveries`,
//!   and the id `<original id>.dead-letter` (so a retried dead-lettering is deduplicated).
//! - **Events as messages.** [`Event::id`] is the `Nats-Msg-Id` header (so a publish retried
//!   after a lost acknowledgement is stored once), each metadata entry a header
//!   `Micro-Meta-<key>` (key and value percent-encoded where NATS headers cannot carry them
//!   as they are, and the `N` of `Nats-` in them, which would hide the server's own headers from
//!   it), [`Event::timestamp`] the time the server stored the message. A message put on
//!   the subject by another client without `Nats-Msg-Id` gets the id `<stream>-<sequence>`.
//! - **Prefetch.** Each consumer pulls up to [`NatsEvents::with_prefetch`] events ahead of the
//!   handler (default 32). Those count as delivered: their `ack_wait` runs while they wait.
//! - **Failures.** Publishing retries lost connections, timeouts and a missing stream until
//!   [`NatsEvents::with_publish_timeout`] (default 30 s), with the same `Nats-Msg-Id`, so a retry
//!   never stores an event twice. A consumer rides out reconnections; what goes wrong meanwhile
//!   is an `Err` item and the stream goes on; it ends when its consumer is deleted.
//!
//! [`Offset`]: micro_core::events::Offset
//! [`Delivery::ack`]: micro_core::events::Delivery::ack
//! [`Delivery::nack`]: micro_core::events::Delivery::nack
//! [`dead_letter_topic`]: micro_core::events::dead_letter_topic

mod consume;
mod names;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use async_nats::jetstream::context::{GetStreamErrorKind, Publish, PublishErrorKind};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::{HeaderMap, HeaderValue};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use micro_core::broker::validate_topic;
use micro_core::events::{ConsumeOptions, Event, EventStream, Events, Metadata, validate_consume};
use micro_core::{Error, Result};

use crate::NAME;
use crate::conn::Conn;
use consume::{EphemeralConsumer, Pump};
use names::{encode_key, encode_value, escape_name, new_id};

const COMPONENT: &str = "events";
/// Starts every stream name.
const STREAM_PREFIX: &str = "MICRO_EVENTS_";
/// Starts every subject: `micro.events.<topic>`.
const SUBJECT_PREFIX: &str = "micro.events.";
/// The header holding the event id.
const ID_HEADER: &str = "Nats-Msg-Id";
/// Starts the header of each metadata entry.
const METADATA_HEADER: &str = "Micro-Meta-";
/// The longest stream or consumer name JetStream stores (a directory name on disk).
const MAX_NAME_LEN: usize = 255;
/// How long the server keeps an ephemeral consumer nobody pulls from.
const EPHEMERAL_INACTIVE: Duration = Duration::from_secs(600);
/// How long a pull request waits at the server before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// How long an ack, nak or term waits for the server's confirmation.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_PREFETCH: usize = 32;
const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// First and longest pause between publish retries.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Durable event streams on NATS JetStream: one stream per topic, a durable pull consumer per
/// group. The module documentation has the whole mapping. Cheap to clone; clones share the
/// connection.
///
/// ```no_run
/// # async fn run() -> micro_core::Result<()> {
/// use micro_core::Events;
/// use micro_core::events::{ConsumeOptions, Offset};
/// use micro_nats::NatsEvents;
///
/// let events = NatsEvents::connect("nats://127.0.0.1:4222").await?;
/// events.publish("orders.created", "order 1".into(), Default::default()).await?;
/// let mut stream = events
///     .consume("orders.created", ConsumeOptions::group("billing").with_offset(Offset::Earliest))
///     .await?;
/// # drop(stream);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NatsEvents {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// The servers, for errors (password hidden).
    address: Arc<str>,
    /// Streams known to exist, by stream name.
    streams: Arc<Mutex<HashMap<String, stream::Stream>>>,
    prefetch: usize,
    max_age: Duration,
    publish_timeout: Duration,
    /// `publish` answers the local time instead of reading the stored time back.
    local_publish_time: bool,
}

impl fmt::Debug for NatsEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsEvents")
            .field("address", &self.address)
            .field("state", &self.client.connection_state())
            .field("prefetch", &self.prefetch)
            .field("max_age", &self.max_age)
            .field("publish_timeout", &self.publish_timeout)
            .field("local_publish_time", &self.local_publish_time)
            .finish_non_exhaustive()
    }
}

impl NatsEvents {
    /// Connects to the NATS servers at `address` (comma-separated URLs; blank:
    /// `nats://127.0.0.1:4222`). JetStream must be enabled on the server (`nats-server -js`).
    /// The client reconnects by itself after the connection is lost.
    pub async fn connect(address: &str) -> Result<Self> {
        let conn = Conn::connect(COMPONENT, address).await?;
        tracing::debug!(address = %conn.address, "nats events: connected");
        Ok(NatsEvents {
            jetstream: conn.jetstream,
            address: conn.address.into(),
            ..Self::from_client(conn.client)
        })
    }

    /// Events over a client the caller already has.
    pub fn from_client(client: async_nats::Client) -> Self {
        let info = client.server_info();
        NatsEvents {
            jetstream: jetstream::new(client.clone()),
            address: format!("{}:{}", info.host, info.port).into(),
            client,
            streams: Arc::default(),
            prefetch: DEFAULT_PREFETCH,
            max_age: Duration::ZERO,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            local_publish_time: false,
        }
    }

    /// How many events each consumer pulls ahead of its handler (at least 1; default 32). They
    /// count as delivered while they wait, so keep `prefetch` × handling time under `ack_wait`.
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Events older than `max_age` are dropped by the streams this creates (default: zero, kept
    /// forever). Streams that already exist keep their setting.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How long `publish` keeps retrying while the server cannot be reached (default 30 s).
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// `publish` returns this host's time taken just before sending instead of reading back the
    /// time the server stored the event with: one round trip fewer, about twice the publish
    /// throughput (`cargo bench -p micro-nats --bench events`). Consumers still see the server's
    /// time, which is later by the publish latency plus any clock skew between the hosts, so
    /// the returned event no longer equals the delivered one and `Offset::Time` of a returned
    /// timestamp is only as exact as the clocks agree. Off by default.
    pub fn with_local_publish_time(mut self) -> Self {
        self.local_publish_time = true;
        self
    }

    /// The NATS client, shared by the clones of this value.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream stream holding `topic`: `MICRO_EVENTS_` and the escaped topic.
    pub fn stream_name(topic: &str) -> String {
        escape_name(STREAM_PREFIX, topic)
    }

    /// The subject events of `topic` are published on: `micro.events.<topic>`.
    pub fn subject(topic: &str) -> String {
        format!("{SUBJECT_PREFIX}{topic}")
    }

    /// The durable consumer of `group`: the escaped group name.
    pub fn durable_name(group: &str) -> String {
        escape_name("", group)
    }

    /// Deletes the stream of `topic` with every event and group position in it; `Ok` when there
    /// was none. For tests and operators.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let name = Self::stream_name(topic);
        self.forget(&name);
        match self.jetstream.delete_stream(&name).await {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.kind(),
                    GetStreamErrorKind::JetStream(e) if e.code() == 404
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(self.err(format!("delete stream {name} of topic {topic:?}"), err)),
        }
    }

    /// A backend error saying what failed, with the server address.
    fn err(&self, what: impl fmt::Display, source: impl Into<micro_core::BoxError>) -> Error {
        Error::backend(
            COMPONENT,
            NAME,
            format!("{what} (nats at {})", self.address),
            source,
        )
    }

    /// A backend error described by a message, with the server address.
    fn err_msg(&self, what: impl fmt::Display) -> Error {
        Error::backend_msg(
            COMPONENT,
            NAME,
            format!("{what} (nats at {})", self.address),
        )
    }

    fn forget(&self, name: &str) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.remove(name);
        }
    }

    /// The stream of `topic`, created when missing.
    async fn stream(&self, topic: &str) -> Result<stream::Stream> {
        let name = Self::stream_name(topic);
        if let Some(stream) = self.streams.lock().ok().and_then(|s| s.get(&name).cloned()) {
            return Ok(stream);
        }
        let subject = Self::subject(topic);
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!("micro events of topic {topic}")),
            subjects: vec![subject.clone()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: self.max_age,
            allow_direct: true,
            ..Default::default()
        };
        let stream = self
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|err| self.err(format!("create stream {name} for topic {topic:?}"), err))?;
        if !stream.cached_info().config.subjects.contains(&subject) {
            return Err(self.err_msg(format!(
                "stream {name} exists but does not hold subject {subject} of topic {topic:?} \
                 (its subjects: {:?})",
                stream.cached_info().config.subjects
            )));
        }
        tracing::debug!(stream = %name, %topic, "nats events: stream ready");
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(name, stream.clone());
        }
        Ok(stream)
    }

    /// Stores an event with `id` on `topic` (already validated), retrying what a reconnection
    /// fixes until the publish timeout.
    async fn append(
        &self,
        topic: &str,
        id: String,
        payload: Bytes,
        metadata: BTreeMap<String, String>,
    ) -> Result<Event> {
        let subject = Self::subject(topic);
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        for (key, value) in &metadata {
            let name = format!("{METADATA_HEADER}{}", encode_key(key));
            headers.insert(name.as_str(), HeaderValue::from(encode_value(value)));
        }
        // The server drops a connection that sends more than its max_payload, so refuse it here.
        let size = payload.len()
            + "NATS/1.0\r\n\r\n".len()
            + headers
                .iter()
                .flat_map(|(name, values)| {
                    let name: &str = name.as_ref();
                    values
                        .iter()
                        .map(move |v| name.len() + v.as_str().len() + 4)
                })
                .sum::<usize>();
        let max = self.client.server_info().max_payload;
        if max > 0 && size > max {
            return Err(Error::invalid(
                "event",
                format!(
                    "event for topic {topic:?} is {size} bytes with its headers, over the \
                     server's max_payload of {max} bytes"
                ),
            ));
        }
        let sent_at = SystemTime::now();
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        let mut pause = RETRY_FIRST;
        let mut attempt = 0u32;
        let (stream, ack) = loop {
            attempt += 1;
            let failure = match self.stream(topic).await {
                Err(err) => err,
                Ok(stream) => {
                    let publish = Publish::build()
                        .payload(payload.clone())
                        .headers(headers.clone());
                    let sent = self.jetstream.send_publish(subject.clone(), publish).await;
                    let acked = match sent {
                        Ok(future) => future.await,
                        Err(err) => Err(err),
                    };
                    match acked {
                        Ok(ack) => break (stream, ack),
                        Err(err) => {
                            if err.kind() == PublishErrorKind::StreamNotFound {
                                // Deleted behind our back, or JetStream not back yet.
                                self.forget(&Self::stream_name(topic));
                            }
                            let permanent = matches!(
                                err.kind(),
                                PublishErrorKind::Other
                                    | PublishErrorKind::WrongLastMessageId
                                    | PublishErrorKind::WrongLastSequence
                            );
                            let err = self.err(
                                format!("publish event {id} to topic {topic:?} ({subject})"),
                                err,
                            );
                            if permanent {
                                return Err(err);
                            }
                            err
                        }
                    }
                }
            };
            if tokio::time::Instant::now() + pause > deadline {
                tracing::warn!(%topic, %id, attempt, error = %failure, "nats events: publish gave up");
                return Err(failure);
            }
            tracing::debug!(%topic, %id, attempt, error = %failure, "nats events: publish retried");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        };
        if ack.duplicate {
            tracing::debug!(%topic, %id, sequence = ack.sequence, "nats events: publish deduplicated");
        }
        let timestamp = if self.local_publish_time {
            sent_at
        } else {
            self.stored_time(&stream, ack.sequence, deadline).await
        };
        Ok(Event {
            id,
            topic: topic.to_string(),
            sequence: ack.sequence,
            timestamp,
            metadata,
            payload,
        })
    }

    /// When the server stored message `sequence` of `stream`: what consumers will see as the
    /// event's timestamp. The event is stored whatever happens here, so when the server cannot
    /// say by `deadline` this answers the local time rather than an error.
    async fn stored_time(
        &self,
        stream: &stream::Stream,
        sequence: u64,
        deadline: tokio::time::Instant,
    ) -> SystemTime {
        let mut pause = RETRY_FIRST;
        loop {
            let time = if stream.cached_info().config.allow_direct {
                stream
                    .direct_get(sequence)
                    .await
                    .map(|m| m.time)
                    .map_err(|e| e.to_string())
            } else {
                stream
                    .get_raw_message(sequence)
                    .await
                    .map(|m| m.time)
                    .map_err(|e| e.to_string())
            };
            match time {
                Ok(time) => return time.into(),
                Err(err) if tokio::time::Instant::now() + pause > deadline => {
                    tracing::warn!(
                        stream = %stream.cached_info().config.name,
                        sequence,
                        error = %err,
                        "nats events: cannot read the stored time of a published event; using the local time"
                    );
                    return SystemTime::now();
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

#[async_trait]
impl Events for NatsEvents {
    fn name(&self) -> &str {
        NAME
    }

    async fn publish(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<Event> {
        validate_topic(topic)?;
        self.append(topic, new_id(), payload, metadata).await
    }

    async fn consume(&self, topic: &str, options: ConsumeOptions) -> Result<EventStream> {
        validate_consume(topic, &options)?;
        let mut stream = self.stream(topic).await?;
        let consumer = match self.consumer(topic, &stream, &options).await {
            Ok(consumer) => consumer,
            Err(err) => {
                // The stream may have been deleted since it was cached: look it up once more.
                tracing::debug!(%topic, error = %err, "nats events: consumer not created; retrying");
                self.forget(&Self::stream_name(topic));
                stream = self.stream(topic).await?;
                self.consumer(topic, &stream, &options).await?
            }
        };
        let config = &consumer.cached_info().config;
        // max_deliver is max_deliveries + 1: the extra delivery is the one dead-lettered.
        let max_deliveries = match config.max_deliver {
            n if n > 1 => u32::try_from(n - 1).unwrap_or(u32::MAX),
            1 => 1,
            _ => u32::MAX,
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.prefetch)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|err| {
                self.err(
                    format!(
                        "pull from consumer {} on stream {}",
                        consumer.cached_info().name,
                        Self::stream_name(topic)
                    ),
                    err,
                )
            })?;
        let ephemeral = options.group.is_none().then(|| EphemeralConsumer {
            stream: stream.clone(),
            name: consumer.cached_info().name.clone(),
        });
        tracing::debug!(
            %topic,
            group = ?options.group,
            consumer = %consumer.cached_info().name,
            "nats events: consuming"
        );
        let pump = Pump {
            events: self.clone(),
            topic: topic.to_string(),
            messages,
            max_deliveries,
            auto_ack: options.auto_ack,
            _ephemeral: ephemeral,
        };
        Ok(futures::stream::unfold(pump, |mut pump| async move {
            let item = pump.next().await?;
            Some((item, pump))
        })
        .boxed())
    }
}
