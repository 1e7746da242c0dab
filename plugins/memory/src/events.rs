//! In-process [`Events`]: a log per topic, and per group a position, the deliveries awaiting an
//! ack and those due again.
//!
//! Consumers pull: each stream takes the group's next due redelivery (oldest first), else the
//! next new event. A delivery not acknowledged within its `ack_wait` (a timer task per delivery)
//! or nacked is due again; after `max_deliveries` it is appended to the dead-letter topic with
//! [`dead_letter_metadata`] instead. A group lives as long as the `MemoryEvents`, so a consumer
//! started again in the same process resumes where the group was.
//!
//! **Memory.** By default every event is kept for the life of the process (it is a log:
//! `Earliest` replays all of it). [`MemoryEvents::with_max_events`] caps each topic, dropping its
//! oldest events; a group behind them skips ahead to the oldest kept.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use micro_core::Result;
use micro_core::broker::validate_topic;
use micro_core::events::{
    Acknowledger, ConsumeOptions, Delivery, Event, EventStream, Events, Metadata, Offset,
    dead_letter_metadata, dead_letter_topic, validate_consume,
};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// In-process [`Events`]. Clones share the same topics and groups.
#[derive(Clone)]
pub struct MemoryEvents {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Random per instance, so ids differ between instances and processes.
    instance: u64,
    max_events: Option<usize>,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    next_id: u64,
    next_anonymous: u64,
}

struct Topic {
    /// The sequence of `log[0]`.
    first: u64,
    log: VecDeque<Event>,
    groups: HashMap<String, Group>,
    /// Bumped on every publish and every redelivery that falls due, to wake the consumers.
    changed: watch::Sender<u64>,
}

struct Group {
    /// The next sequence never delivered to the group.
    next: u64,
    /// Delivered and not yet acknowledged, by sequence.
    pending: HashMap<u64, Pending>,
    /// To deliver again, by sequence: the event and its deliveries so far.
    due: BTreeMap<u64, (Event, u32)>,
}

struct Pending {
    event: Event,
    deliveries: u32,
    max_deliveries: u32,
    /// The ack_wait timer, stopped when the delivery is settled first.
    timer: AbortHandle,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.timer.abort();
    }
}

/// What a settled delivery leads to.
enum Settle {
    Ack,
    /// Nacked or timed out: due again, or dead-lettered after the last delivery.
    Fail,
}

impl Topic {
    fn new() -> Self {
        Topic {
            first: 1,
            log: VecDeque::new(),
            groups: HashMap::new(),
            changed: watch::channel(0).0,
        }
    }

    fn next_sequence(&self) -> u64 {
        self.first + self.log.len() as u64
    }

    fn get(&self, sequence: u64) -> Option<&Event> {
        let index = sequence.checked_sub(self.first)?;
        self.log.get(usize::try_from(index).ok()?)
    }

    fn wake(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The first sequence a new group or consumer reads from `offset`.
    fn start(&self, offset: Offset) -> u64 {
        match offset {
            Offset::Latest => self.next_sequence(),
            Offset::Earliest => self.first,
            Offset::Sequence(n) => n.max(self.first),
            Offset::Time(at) => {
                self.first + self.log.partition_point(|event| event.timestamp < at) as u64
            }
        }
    }
}

impl State {
    fn append(
        &mut self,
        shared: &Shared,
        topic: &str,
        payload: Bytes,
        metadata: BTreeMap<String, String>,
    ) -> Event {
        self.next_id += 1;
        let id = format!("{:016x}-{:x}", shared.instance, self.next_id);
        let log = self
            .topics
            .entry(topic.to_string())
            .or_insert_with(Topic::new);
        // Never earlier than the event before, so a topic's timestamps are in order.
        let now = SystemTime::now();
        let timestamp = log.log.back().map_or(now, |last| last.timestamp.max(now));
        let event = Event {
            id,
            topic: topic.to_string(),
            sequence: log.next_sequence(),
            timestamp,
            metadata,
            payload,
        };
        log.log.push_back(event.clone());
        if let Some(max) = shared.max_events {
            while log.log.len() > max.max(1) {
                log.log.pop_front();
                log.first += 1;
            }
        }
        log.wake();
        event
    }
}

impl std::fmt::Debug for MemoryEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("MemoryEvents")
            .field("topics", &state.topics.len())
            .field("max_events", &self.shared.max_events)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEvents {
    /// Events with no topics, keeping every event for the life of the process.
    pub fn new() -> Self {
        MemoryEvents {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                instance: RandomState::new().hash_one(std::process::id()),
                max_events: None,
            }),
        }
    }

    /// The same events keeping at most `max` events per topic (at least 1): the oldest are
    /// dropped as new ones come. Call before publishing.
    pub fn with_max_events(self, max: usize) -> Self {
        MemoryEvents {
            shared: Arc::new(Shared {
                state: Mutex::new(std::mem::take(&mut *self.shared.lock())),
                instance: self.shared.instance,
                max_events: Some(max.max(1)),
            }),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next delivery for `consumer`, if one is ready: a due redelivery first, else the next
    /// new event. Starts the ack_wait timer of what it hands out.
    fn take(self: &Arc<Self>, consumer: &Consumer) -> Option<Delivery> {
        let mut state = self.lock();
        let topic = state.topics.get_mut(&consumer.topic)?;
        let first = topic.first;
        let next_new = topic.next_sequence();
        let group = topic.groups.get_mut(&consumer.group)?;
        let (event, deliveries) = if let Some((_, due)) = group.due.pop_first() {
            (due.0, due.1 + 1)
        } else {
            group.next = group.next.max(first);
            if group.next >= next_new {
                return None;
            }
            let sequence = group.next;
            group.next += 1;
            (topic.get(sequence)?.clone(), 1)
        };
        let options = &consumer.options;
        if !options.auto_ack {
            let expiry = Settler {
                shared: Arc::downgrade(self),
                topic: consumer.topic.clone(),
                group: consumer.group.clone(),
                sequence: event.sequence,
                deliveries,
            };
            let ack_wait = options.ack_wait;
            let timer = tokio::spawn(async move {
                tokio::time::sleep(ack_wait).await;
                expiry.settle(Settle::Fail);
            })
            .abort_handle();
            let group = topic.groups.get_mut(&consumer.group)?;
            group.pending.insert(
                event.sequence,
                Pending {
                    event: event.clone(),
                    deliveries,
                    max_deliveries: options.max_deliveries.max(1),
                    timer,
                },
            );
        }
        let acknowledger = Settler {
            shared: if options.auto_ack {
                Weak::new()
            } else {
                Arc::downgrade(self)
            },
            topic: consumer.topic.clone(),
            group: consumer.group.clone(),
            sequence: event.sequence,
            deliveries,
        };
        Some(Delivery::new(event, deliveries, Box::new(acknowledger)))
    }
}

/// Settles one delivery: its ack and nack, and its ack_wait timer. A weak reference, so a
/// timer or a delivery outliving the events settles nothing.
struct Settler {
    shared: Weak<Shared>,
    topic: String,
    group: String,
    sequence: u64,
    deliveries: u32,
}

impl Settler {
    fn settle(&self, settle: Settle) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut state = shared.lock();
        let Some(topic) = state.topics.get_mut(&self.topic) else {
            return;
        };
        let Some(group) = topic.groups.get_mut(&self.group) else {
            return; // a consumer without a group that has stopped: it remembers nothing
        };
        let dead = match settle {
            Settle::Ack => {
                // Late acks count too: the event was processed, whoever holds it now.
                group.pending.remove(&self.sequence);
                group.due.remove(&self.sequence);
                None
            }
            Settle::Fail => {
                // Only the delivery still awaited: a stale nack or timer changes nothing.
                match group.pending.get(&self.sequence) {
                    Some(pending) if pending.deliveries == self.deliveries => {}
                    _ => return,
                }
                let Some(pending) = group.pending.remove(&self.sequence) else {
                    return;
                };
                if pending.deliveries >= pending.max_deliveries {
                    Some(pending)
                } else {
                    group
                        .due
                        .insert(self.sequence, (pending.event.clone(), pending.deliveries));
                    topic.wake();
                    None
                }
            }
        };
        if let Some(dead) = dead {
            let letter = state.append(
                &shared,
                &dead_letter_topic(&self.topic),
                dead.event.payload.clone(),
                dead_letter_metadata(&dead.event, dead.deliveries),
            );
            tracing::warn!(
                topic = %self.topic,
                group = %self.group,
                sequence = dead.event.sequence,
                deliveries = dead.deliveries,
                dead_letter = %letter.topic,
                "event dead-lettered after its last delivery"
            );
        }
    }
}

#[async_trait]
impl Acknowledger for Settler {
    async fn ack(&self) -> Result<()> {
        self.settle(Settle::Ack);
        Ok(())
    }

    async fn nack(&self) -> Result<()> {
        self.settle(Settle::Fail);
        Ok(())
    }
}

/// One consumer: the group it takes from (its own, removed on drop, when it has none).
struct Consumer {
    shared: Arc<Shared>,
    topic: String,
    group: String,
    anonymous: bool,
    options: ConsumeOptions,
    changes: watch::Receiver<u64>,
}

impl Consumer {
    async fn next(&mut self) -> Delivery {
        loop {
            self.changes.borrow_and_update();
            if let Some(delivery) = self.shared.take(self) {
                return delivery;
            }
            if self.changes.changed().await.is_err() {
                // The topic's sender lives as long as the events; without it nothing comes.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.anonymous {
            let mut state = self.shared.lock();
            if let Some(topic) = state.topics.get_mut(&self.topic) {
                topic.groups.remove(&self.group);
            }
        }
    }
}

#[async_trait]
impl Events for MemoryEvents {
    fn name(&self) -> &str {
        crate::NAME
    }

    async fn publish(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<Event> {
        validate_topic(topic)?;
        Ok(self
            .shared
            .lock()
            .append(&self.shared, topic, payload, metadata))
    }

    async fn consume(&self, topic: &str, options: ConsumeOptions) -> Result<EventStream> {
        validate_consume(topic, &options)?;
        let consumer = {
            let mut state = self.shared.lock();
            state.next_anonymous += 1;
            let anonymous_name = format!("\0consumer-{}", state.next_anonymous);
            let log = state
                .topics
                .entry(topic.to_string())
                .or_insert_with(Topic::new);
            let (group, anonymous) = match &options.group {
                Some(group) => (group.clone(), false),
                None => (anonymous_name, true),
            };
            let start = log.start(options.offset);
            log.groups.entry(group.clone()).or_insert_with(|| Group {
                next: start,
                pending: HashMap::new(),
                due: BTreeMap::new(),
            });
            Consumer {
                shared: self.shared.clone(),
                topic: topic.to_string(),
                group,
                anonymous,
                options,
                changes: log.changed.subscribe(),
            }
        };
        let (group, offset) = (&consumer.options.group, consumer.options.offset);
        tracing::debug!(%topic, ?group, ?offset, "memory events: consuming");
        Ok(
            futures::stream::unfold(consumer, |mut consumer| async move {
                let delivery = consumer.next().await;
                Some((Ok(delivery), consumer))
            })
            .boxed(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_at_most_max_events_per_topic() {
        let events = MemoryEvents::new().with_max_events(3);
        for n in 0..5 {
            events
                .publish("capped", Bytes::from(format!("e{n}")), BTreeMap::new())
                .await
                .expect("publish");
        }
        let mut stream = events
            .consume(
                "capped",
                ConsumeOptions::default().with_offset(Offset::Earliest),
            )
            .await
            .expect("consume");
        for sequence in 3..=5 {
            let delivery = stream.next().await.expect("item").expect("delivery");
            assert_eq!(delivery.event.sequence, sequence, "the oldest kept first");
            delivery.ack().await.expect("ack");
        }
    }
}
