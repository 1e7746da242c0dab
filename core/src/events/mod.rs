//! Durable event streams: publish to a topic, consume from an offset, replay.
//!
//! Unlike the [`Broker`](crate::Broker), which forgets a message once delivered, an [`Events`]
//! backend keeps every event of a topic in order, numbered by a per-topic sequence, so a
//! consumer can start from the first event, the next one, a time or a sequence number.
//!
//! - **Groups.** Consumers naming the same [`ConsumeOptions::group`] share the topic's events
//!   (each event to one of them) and the group remembers its position: a group that is consumed
//!   again (a restarted process) resumes after its last acknowledged event. The group's
//!   [`Offset`] applies when the group is first created; after that it resumes. A consumer with
//!   no group gets every event from its offset and remembers nothing.
//! - **Acknowledgement.** Each [`Delivery`] is [`ack`](Delivery::ack)ed when processed. One not
//!   acked within [`ConsumeOptions::ack_wait`], or [`nack`](Delivery::nack)ed, is delivered
//!   again (to any consumer of the group); after [`ConsumeOptions::max_deliveries`] deliveries it
//!   is published to [`dead_letter_topic`] and not delivered again. Other events keep flowing
//!   meanwhile. With [`ConsumeOptions::auto_ack`] an event is acknowledged as it is delivered.
//! - **At least once.** An event can be delivered twice (a consumer that dies after processing
//!   but before its ack); handlers should be idempotent, for example by [`Event::id`].

#[cfg(feature = "conformance")]
pub mod conformance;
mod dead_letter;
mod group;
mod typed;

pub use crate::broker::{Reject, is_rejection};
pub use dead_letter::{
    DELIVERIES, ORIGINAL_ID, ORIGINAL_SEQUENCE, dead_letter, dead_letter_metadata,
};
pub use group::{validate_consume, validate_group};
pub use typed::{Handler, handler, protobuf_metadata, typed};

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::Result;

/// The suffix of the topic an event goes to after too many deliveries.
pub const DEAD_LETTER_SUFFIX: &str = ".dead-letter";

/// Where events of `topic` go after [`ConsumeOptions::max_deliveries`]: `<topic>.dead-letter`.
/// Its events carry the original's id, sequence and delivery count in metadata
/// (`x-micro-original-id`, `x-micro-original-sequence`, `x-micro-deliveries`).
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}{DEAD_LETTER_SUFFIX}")
}

/// An event's free-form string metadata.
pub type Metadata = BTreeMap<String, String>;

/// One stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Unique id, assigned on publish.
    pub id: String,
    /// The topic it was published to.
    pub topic: String,
    /// Its position in the topic: 1 for the first event, then one more for each.
    pub sequence: u64,
    /// When it was published.
    pub timestamp: SystemTime,
    /// Free-form string metadata.
    pub metadata: Metadata,
    /// The payload.
    pub payload: Bytes,
}

/// Where a consumer (or a new group) starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offset {
    /// Only events published after the consumer starts.
    #[default]
    Latest,
    /// Every stored event, from the first.
    Earliest,
    /// The first event published at or after this time.
    Time(SystemTime),
    /// The event with this sequence number, and those after it.
    Sequence(u64),
}

/// How to consume a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Consumers with the same group share the events and the group's position; `None`: a
    /// consumer of its own that remembers nothing.
    pub group: Option<String>,
    /// Where to start (for a group: when it is first created).
    pub offset: Offset,
    /// Acknowledge each event as it is delivered (no redelivery).
    pub auto_ack: bool,
    /// How long a delivery may stay unacknowledged before it is delivered again.
    pub ack_wait: Duration,
    /// Deliveries of one event before it goes to the dead-letter topic (at least 1).
    pub max_deliveries: u32,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            group: None,
            offset: Offset::Latest,
            auto_ack: false,
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
        }
    }
}

impl ConsumeOptions {
    /// Options for a member of `group`, otherwise the defaults.
    pub fn group(group: impl Into<String>) -> Self {
        ConsumeOptions {
            group: Some(group.into()),
            ..Default::default()
        }
    }

    /// The same options starting at `offset`.
    pub fn with_offset(mut self, offset: Offset) -> Self {
        self.offset = offset;
        self
    }

    /// The same options with `ack_wait`.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// The same options with `max_deliveries` (raised to 1 when 0).
    pub fn with_max_deliveries(mut self, max_deliveries: u32) -> Self {
        self.max_deliveries = max_deliveries.max(1);
        self
    }

    /// The same options acknowledging each event as it is delivered.
    pub fn with_auto_ack(mut self) -> Self {
        self.auto_ack = true;
        self
    }
}

/// How a backend settles one delivery; what [`Delivery::ack`] and [`Delivery::nack`] call.
#[async_trait]
pub trait Acknowledger: Send + Sync {
    /// The event was processed: never deliver it to this group again.
    async fn ack(&self) -> Result<()>;
    /// The event was not processed: deliver it again (counting a delivery).
    async fn nack(&self) -> Result<()>;
}

/// An event handed to a consumer, to be acknowledged.
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// How many times it has been delivered to this group, this one included (1 the first
    /// time).
    pub deliveries: u32,
    acknowledger: Box<dyn Acknowledger>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event)
            .field("deliveries", &self.deliveries)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery of `event`, settled through `acknowledger` (for backend authors).
    pub fn new(event: Event, deliveries: u32, acknowledger: Box<dyn Acknowledger>) -> Self {
        Delivery {
            event,
            deliveries,
            acknowledger,
        }
    }

    /// Processed: the group will not see it again.
    pub async fn ack(self) -> Result<()> {
        self.acknowledger.ack().await
    }

    /// Not processed: deliver it again, or dead-letter it after the last allowed delivery.
    pub async fn nack(self) -> Result<()> {
        self.acknowledger.nack().await
    }
}

/// The deliveries of one consumer. Dropping it stops the consumer; what it held unacknowledged
/// is delivered again after `ack_wait`.
pub type EventStream = BoxStream<'static, Result<Delivery>>;

/// A durable event stream backend.
#[async_trait]
pub trait Events: Send + Sync + 'static {
    /// The plugin's name (`memory`, `nats`, ...).
    fn name(&self) -> &str;

    /// Appends an event to `topic` and returns it as stored (id, sequence, timestamp).
    async fn publish(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<Event>;

    /// Starts a consumer of `topic`. Errors for an invalid topic or group name (the rules of
    /// [`validate_topic`](crate::broker::validate_topic) and [`validate_group`]); an unreachable
    /// backend is an error here or an `Err` item on the stream.
    async fn consume(&self, topic: &str, options: ConsumeOptions) -> Result<EventStream>;
}
