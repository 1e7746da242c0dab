//! The in-process broker. Each subscriber has a queue and a task running its handler one message
//! at a time; queue groups take turns. A failed message is redelivered to its group (or
//! broadcast subscriber) after a short backoff, up to [`MAX_ATTEMPTS`] deliveries, then kept as a
//! dead letter ([`MemoryBroker::dead_letters`]) and logged as an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use micro_core::Result;
use micro_core::broker::{
    Broker, Handler, Message, SubscribeOptions, Subscription, deliver, validate_topic,
};
use tokio::sync::mpsc;

/// Deliveries of one message before it is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;
const BACKOFF: Duration = Duration::from_millis(20);

/// In-process [`Broker`]. Clones share the same broker.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    topics: HashMap<String, Vec<Subscriber>>,
    next_id: u64,
    /// Round-robin position per (topic, queue).
    turns: HashMap<(String, String), usize>,
    dead_letters: Vec<(String, Message)>,
}

struct Subscriber {
    id: u64,
    queue: Option<String>,
    sender: mpsc::UnboundedSender<Delivery>,
}

struct Delivery {
    message: Message,
    attempt: u32,
}

impl Inner {
    /// Hands `message` to every broadcast subscriber and one member of each queue group; with
    /// `only` set, to that subscriber or group alone (a redelivery).
    fn dispatch(&mut self, topic: &str, message: &Message, attempt: u32, only: Option<&Target>) {
        let Some(subscribers) = self.topics.get(topic) else {
            return;
        };
        let mut groups: HashMap<&str, Vec<&Subscriber>> = HashMap::new();
        let mut sends = Vec::new();
        for sub in subscribers {
            match (&sub.queue, only) {
                (None, None) => sends.push(&sub.sender),
                (None, Some(Target::Subscriber(id))) if *id == sub.id => sends.push(&sub.sender),
                (Some(queue), None) => groups.entry(queue).or_default().push(sub),
                (Some(queue), Some(Target::Group(group))) if queue == group => {
                    groups.entry(queue).or_default().push(sub)
                }
                _ => {}
            }
        }
        let mut chosen = Vec::new();
        for (queue, members) in groups {
            let turn = self
                .turns
                .entry((topic.to_string(), queue.to_string()))
                .or_default();
            chosen.push(members[*turn % members.len()].sender.clone());
            *turn = turn.wrapping_add(1);
        }
        for sender in sends.into_iter().cloned().chain(chosen) {
            // A closed sender is a subscriber unsubscribing right now; its group mates remain.
            let _ = sender.send(Delivery {
                message: message.clone(),
                attempt,
            });
        }
    }
}

enum Target {
    Subscriber(u64),
    Group(String),
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryBroker")
            .field("topics", &inner.topics.len())
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A broker with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages that failed [`MAX_ATTEMPTS`] times, with their topics.
    pub fn dead_letters(&self) -> Vec<(String, Message)> {
        self.lock().dead_letters.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &str {
        crate::NAME
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        validate_topic(topic)?;
        self.lock().dispatch(topic, &message, 1, None);
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &str,
        handler: Handler,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>> {
        validate_topic(topic)?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let id = {
            let mut inner = self.lock();
            inner.next_id += 1;
            let id = inner.next_id;
            inner
                .topics
                .entry(topic.to_string())
                .or_default()
                .push(Subscriber {
                    id,
                    queue: options.queue.clone(),
                    sender,
                });
            id
        };
        let target = match options.queue {
            Some(queue) => Target::Group(queue),
            None => Target::Subscriber(id),
        };
        tokio::spawn(run_subscriber(
            Arc::downgrade(&self.inner),
            topic.to_string(),
            target,
            handler,
            receiver,
        ));
        Ok(Box::new(MemorySubscription {
            broker: self.clone(),
            topic: topic.to_string(),
            id,
        }))
    }
}

async fn run_subscriber(
    broker: Weak<Mutex<Inner>>,
    topic: String,
    target: Target,
    handler: Handler,
    mut receiver: mpsc::UnboundedReceiver<Delivery>,
) {
    while let Some(Delivery { message, attempt }) = receiver.recv().await {
        let Err(failure) = deliver(&handler, message.clone()).await else {
            continue;
        };
        let error = failure.reason.as_str();
        let Some(broker) = broker.upgrade() else {
            return;
        };
        if failure.dead_letters(attempt, MAX_ATTEMPTS) {
            tracing::error!(%topic, attempt, %error, "message dead-lettered after {MAX_ATTEMPTS} failed deliveries");
            broker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .dead_letters
                .push((topic.clone(), message));
            continue;
        }
        tracing::warn!(%topic, attempt, %error, "handler failed; redelivering");
        let topic = topic.clone();
        let target = match &target {
            Target::Subscriber(id) => Target::Subscriber(*id),
            Target::Group(queue) => Target::Group(queue.clone()),
        };
        tokio::spawn(async move {
            tokio::time::sleep(BACKOFF * attempt).await;
            broker.lock().unwrap_or_else(|p| p.into_inner()).dispatch(
                &topic,
                &message,
                attempt + 1,
                Some(&target),
            );
        });
    }
}

struct MemorySubscription {
    broker: MemoryBroker,
    topic: String,
    id: u64,
}

#[async_trait]
impl Subscription for MemorySubscription {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn unsubscribe(self: Box<Self>) -> Result<()> {
        // Dropping the sender lets the task finish what it has queued, then end.
        if let Some(subs) = self.broker.lock().topics.get_mut(&self.topic) {
            subs.retain(|s| s.id != self.id);
        }
        Ok(())
    }
}
